"""The cmrsdk command: segment, evaluate, info, inspect, and one clear line per failure."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cmrsdk.cli import main
from cmrsdk.io import read_study, write_acdc_patient, write_dicom_series
from cmrsdk.synth import synthetic_study


def test_segment_dicom_writes_every_output(routing_bundle, tmp_path, capsys):
    study = synthetic_study(seed=2)
    write_dicom_series(tmp_path / "dicom", study)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "dicom"), "-o", str(out), "--bundle", str(routing_bundle)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "labels_ED.nii.gz",
        "labels_ES.nii.gz",
        "overlay.png",
        "report.html",
        "report.json",
        "seg_ED.dcm",
        "seg_ES.dcm",
        "sr.dcm",
    ]
    report = json.loads((out / "report.json").read_text())
    ed = read_study(tmp_path / "dicom").phases[report["ed_index"]]
    labels = np.asarray(nib.load(out / "labels_ED.nii.gz").dataobj)
    assert labels.shape == ed.shape[::-1]  # NIfTI stores (X, Y, Z)
    np.testing.assert_allclose(nib.load(out / "labels_ED.nii.gz").affine[:3, 3], ed.affine[:3, 3], atol=1e-3)
    assert pydicom.dcmread(out / "seg_ED.dcm").Modality == "SEG"
    assert set(report["measures"]) >= {"lvedv_ml", "lvef_pct", "lv_mass_g", "rvef_pct"}
    assert len(report["phases"][0]["slices"]) == ed.shape[0]
    assert (out / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert "report.html" in report["outputs"] and "<table" in (out / "report.html").read_text()
    assert "LVEF" in capsys.readouterr().out
    # the SR: each phase's volumes reference that phase's SEG, the report's flags come as caveats
    import highdicom as hd

    sr = hd.sr.srread(out / "sr.dcm").content
    uid = {p: pydicom.dcmread(out / f"seg_{p}.dcm", stop_before_pixels=True).SOPInstanceUID for p in ("ED", "ES")}
    refs = {
        str(g.tracking_identifier): (
            g.referenced_segment.referenced_sop_instance_uid,
            float(g.get_measurements()[0].value),
        )
        for g in sr.get_volumetric_roi_measurement_groups()
    }
    expected = {
        f"{name} at {phase}": (uid[phase], pytest.approx(report["measures"][key], abs=1e-3))
        for key, name, phase in [
            ("lvedv_ml", "LV blood pool", "ED"),
            ("lvesv_ml", "LV blood pool", "ES"),
            ("lv_mass_g", "LV myocardium", "ED"),
            ("rvedv_ml", "RV blood pool", "ED"),
            ("rvesv_ml", "RV blood pool", "ES"),
        ]
        if report["measures"][key] is not None
    }
    assert refs == expected and "LV blood pool at ED" in refs
    caveats = {
        str(g.tracking_identifier): sorted(q.value.value for q in g.get_qualitative_evaluations())
        for g in sr.get_image_measurement_groups()
        if g.get_qualitative_evaluations()
    }
    ed_flags = sorted(report["phases"][report["ed_index"]]["quality_flags"])
    assert caveats.get("Quality caveats at ED", []) == ed_flags
    assert caveats.get("Quality caveats", []) == sorted(report["flags"])
    # provenance a PACS can read: the bundle in the algorithm's version, code, runtime, arithmetic
    # and options in its parameters, the same in the SEG, the SR, report.json and report.html
    prov = report["provenance"]
    assert len(prov["code_sha256"]) == 64 and prov["runtimes"] and prov["precision"] == "fp32"
    version = f"{prov['cmrsdk']} bundle {prov['manifest_sha256'][:16]}"
    seg = pydicom.dcmread(out / "seg_ED.dcm", stop_before_pixels=True)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == version
    parameters = dict(item.split("=", 1) for item in algorithm.AlgorithmParameters.split(","))
    assert parameters["code_sha256"] == prov["code_sha256"] and parameters["precision"] == "fp32"
    assert (
        parameters["mirroring"] == str(prov["mirroring"]) and parameters["manifest_sha256"] == prov["manifest_sha256"]
    )
    assert list(seg.SoftwareVersions) == [prov["cmrsdk"], f"code {prov['code_sha256'][:16]}"]

    def texts(items) -> list[tuple[str, str]]:
        found = []
        for item in items:
            if "TextValue" in item:
                found.append((item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue))
            found += texts(item.get("ContentSequence", []))
        return found

    said = texts(pydicom.dcmread(out / "sr.dcm").ContentSequence)
    assert ("Algorithm Version", version) in said
    assert ("Algorithm Parameters", "precision=fp32") in said
    page = (out / "report.html").read_text()
    assert "precision" in page and prov["code_sha256"] in page


def test_segment_no_report_html(routing_bundle, tmp_path):
    write_acdc_patient(tmp_path / "patient901", synthetic_study(seed=6))
    out = tmp_path / "out"
    assert (
        main(
            [
                "segment",
                str(tmp_path / "patient901"),
                "-o",
                str(out),
                "--bundle",
                str(routing_bundle),
                "--mode",
                "baseline",
                "--no-report-html",
            ]
        )
        == 0
    )
    assert not (out / "report.html").exists()
    assert "report.html" not in json.loads((out / "report.json").read_text())["outputs"]


def test_several_studies_one_failure_carries_on(routing_bundle, tmp_path, capsys):
    write_acdc_patient(tmp_path / "patient900", synthetic_study(seed=4))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    code = main(
        [
            "segment",
            str(tmp_path / "patient900"),
            str(tmp_path / "broken.nii.gz"),
            "-o",
            str(tmp_path / "out"),
            "--bundle",
            str(routing_bundle),
            "--mode",
            "baseline",
            "--full-window",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("cmrsdk: error:") == 1 and "broken.nii.gz" in err
    assert (tmp_path / "out" / "patient900" / "report.json").is_file()
    assert not (tmp_path / "out" / "broken").exists()


def test_evaluate_writes_tables_and_figures(routing_bundle, tmp_path):
    for i in range(2):
        write_acdc_patient(tmp_path / "data" / f"patient90{i}", synthetic_study(seed=10 + i))
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(tmp_path / "data"),
                "-o",
                str(out),
                "--bundle",
                str(routing_bundle),
                "--modes",
                "baseline",
                "oracle",
                "--heart-crop",
                "32",
                "32",
            ]
        )
        == 0
    )
    report = (out / "report.md").read_text()
    assert "Table 1" in report and "Table 3" in report and "figure2.png" in report
    assert (out / "figure2.png").is_file() and (out / "table3.csv").is_file()
    page = (out / "report.html").read_text()  # the same tables and figures, one self-contained page
    assert "<h2>Table 1" in page and page.count("data:image/png;base64,") >= 2 and 'src="figure2.png"' not in page
    rows = (out / "slice_dice.csv").read_text().splitlines()
    px = ",".join(f"{k}_px_{n}" for k in ("truth", "predicted") for n in ("LVBP", "LVM", "RVBP"))
    assert rows[0] == f"method,case,phase,slice_index,region,position,dice_LVBP,dice_LVM,dice_RVBP,{px}"
    assert len(rows) > 20 and (out / "zero_dice.csv").is_file() and "Where the Dice is lost" in report
    import csv

    cases = list(csv.DictReader((out / "case_scores.csv").open()))
    # 2 methods x 2 studies x ED, ES x 3 structures, each with Dice, HD95 and MSD
    assert len(cases) == 24 and set(cases[0]) == {"method", "case", "phase", "label", "dice", "hd95_mm", "msd_mm"}
    oracle = [r for r in cases if r["method"] == "oracle" and r["label"] == "LVBP"]
    assert all(0.0 <= float(r["dice"]) <= 1.0 and float(r["hd95_mm"]) >= 0.0 for r in oracle)
    measures = list(csv.DictReader((out / "case_measures.csv").open()))
    assert len(measures) == 4 and {"lvef_pct", "reference_lvef_pct"} <= set(measures[0])
    assert "HD95" in report


def test_info_and_inspect(routing_bundle, tmp_path, capsys):
    assert main(["info", str(routing_bundle)]) == 0
    out = capsys.readouterr().out
    assert "routing: non-cardiac -> baseline" in out and "classifier: classifier" in out
    assert "pipeline defaults: no heart crop; segments on the training grid" in out
    write_dicom_series(tmp_path / "dicom", synthetic_study(seed=5))
    assert main(["inspect", str(tmp_path / "dicom")]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["format"] == "dicom" and found["phases"] == 2


def test_info_names_the_shipped_bundle_s_precision_checks(capsys):
    from cmrsdk import DEMO_BUNDLE

    assert main(["info", str(DEMO_BUNDLE)]) == 0
    out = capsys.readouterr().out
    assert "precision check bf16-openvino on openvino: worst Dice drop 0.04 points over 386 held-out slices" in out
    assert "precision check bf16 on torchscript: worst Dice drop 0.15 points" in out
    assert sum(line.endswith("): passed") for line in out.splitlines()) == 2
    assert "pipeline defaults: heart crop (128, 128) px (search mean); segments on the training grid" in out


def test_tampered_bundle_is_refused_with_one_line(routing_bundle, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(routing_bundle, bad)
    onnx = next(bad.glob("*.onnx"))
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert onnx.name in err and err.startswith("cmrsdk: error:")


def test_version(capsys):
    import re
    import tomllib
    from pathlib import Path

    import cmrsdk
    from cmrsdk._version import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"cmrsdk {__version__}\n"
    assert cmrsdk.__version__ == __version__ and re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    # one source of truth: pyproject reads the version from cmrsdk/_version.py; the changelog's
    # newest entry is that version
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cmrsdk._version.__version__"}
    entries = re.findall(r"^## (\S+)", (root / "CHANGELOG.md").read_text(), re.M)
    assert entries[0] == __version__ and len(entries) == len(set(entries))


def test_counts_and_the_evaluation_folder_are_checked_before_any_work(tmp_path, capsys):
    """--threads 0 was taken for a study's error after the bundle loaded ('0 of 1 studies
    segmented'); --every 0 silently kept every case; `evaluate -o FILE` failed after the whole
    evaluation with a traceback."""
    for argv in (
        ["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--threads", "0"],
        ["evaluate", "--data", str(tmp_path), "-o", str(tmp_path / "o"), "--every", "-1"],
        ["evaluate", "--data", str(tmp_path), "-o", str(tmp_path / "o"), "--threads", "x"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "expected a whole number >= 1" in capsys.readouterr().err
    blocker = tmp_path / "result.txt"
    blocker.write_text("keep")
    assert main(["evaluate", "--data", str(tmp_path), "-o", str(blocker)]) == 2
    assert capsys.readouterr().err == f"cmrsdk: error: {blocker}: output folder is a file, not a folder\n"
    assert blocker.read_text() == "keep"


def test_an_unreadable_bundle_file_is_one_error_naming_it(tmp_path, monkeypatch):
    """A model file the user may not read (chmod 000 as another user) gave a PermissionError
    traceback; the manifest's normalization was checked only at the first study."""
    import json
    import shutil

    from cmrsdk import DEMO_BUNDLE, bundle
    from cmrsdk.errors import BundleError

    def denied(path, chunk=1 << 20):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bundle, "sha256_file", denied)
    with pytest.raises(BundleError, match=r"baseline\.\w+: bundle file cannot be read \(Permission denied\)"):
        bundle.load_bundle(DEMO_BUNDLE)
    monkeypatch.undo()
    copy = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocessing"]["normalization"] = "foo"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest\.json: 'preprocessing\.normalization' is 'foo', expected one of"):
        bundle.load_bundle(copy)


def test_segment_series_reads_the_named_series_of_one_dicom_study(routing_bundle, tmp_path, capsys):
    """--series: the part of an exam the reader would not choose (here a second, smaller cine);
    refused with several inputs and for non-DICOM input, before any study is read."""
    write_dicom_series(tmp_path / "exam" / "cine", synthetic_study(seed=2))
    write_dicom_series(tmp_path / "exam" / "other", synthetic_study(seed=3, n_slices=4), series_description="other")
    other = str(pydicom.dcmread(next((tmp_path / "exam" / "other").glob("*.dcm"))).SeriesInstanceUID)
    out = tmp_path / "out"
    args = ["--bundle", str(routing_bundle), "--no-overlay"]
    assert main(["segment", str(tmp_path / "exam"), "-o", str(out), "--series", other, *args]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["study"]["series_uid"] == other and len(report["phases"][0]["slices"]) == 4
    capsys.readouterr()
    assert (
        main(["segment", str(tmp_path / "exam"), str(tmp_path / "exam"), "-o", str(out), "--series", other, *args]) == 2
    )
    assert f"--series {other} names a series of one study: give one DICOM input, not 2" in capsys.readouterr().err
    write_acdc_patient(tmp_path / "patient001", synthetic_study(seed=1))
    assert main(["segment", str(tmp_path / "patient001"), "-o", str(tmp_path / "o2"), "--series", other, *args]) == 1
    assert "selects a DICOM series; this input is not DICOM" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_a_package_that_is_installed_but_does_not_load_is_not_sent_to_pip(tmp_path, monkeypatch):
    """Sweep 20: under a memory cap (ulimit -v) scipy's and torch's shared objects failed to map,
    and the error said to install them (they were installed); a MemoryError said "please report
    this". Now the loader's reason, and "out of memory" with the limit."""
    from cmrsdk.cli import _error_line
    from cmrsdk.engines.base import import_runtime
    from cmrsdk.errors import BackendUnavailableError

    refused = ImportError("libscipy.so: failed to map segment from shared object", name="scipy.special._ufuncs")
    line = _error_line("study", refused)
    assert "cannot be loaded" in line and "failed to map segment" in line and "pip install" not in line
    absent = ModuleNotFoundError("No module named 'highdicom'", name="highdicom")
    assert "pip install 'cmrsdk[io]'" in _error_line("study", absent)
    assert _error_line("study", MemoryError()).startswith("cmrsdk: error: study: out of memory")

    (tmp_path / "brokenruntime").mkdir()
    (tmp_path / "brokenruntime" / "__init__.py").write_text(
        "raise ImportError('libruntime.so: cannot allocate memory')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailableError, match="installed but cannot be loaded .ImportError: libruntime.so"):
        import_runtime("brokenruntime", "onnx", "ONNX Runtime", "pip install onnxruntime")
    with pytest.raises(BackendUnavailableError, match="needs ONNX Runtime, which is not installed: pip install"):
        import_runtime("no_such_runtime_here", "onnx", "ONNX Runtime", "pip install onnxruntime")


def test_a_runtime_refused_threads_is_not_blamed_on_the_model():
    """Sweep 20: under a process limit (ulimit -u 4) OpenVINO's compile failed with "Resource
    temporarily unavailable" and cmrsdk said the model could not be compiled."""
    from cmrsdk.engines.base import load_failure
    from cmrsdk.errors import BackendUnavailableError, BundleError

    refused = load_failure("b/baseline.onnx", "OpenVINO cannot compile it for the CPU", RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:112: plugin.cpp:54: Resource temporarily unavailable"))  # fmt: skip
    assert isinstance(refused, BackendUnavailableError) and "ulimit -u" in str(refused)
    broken = load_failure(
        "b/baseline.onnx", "cannot be loaded as an ONNX model", RuntimeError("protobuf parsing failed")
    )
    assert isinstance(broken, BundleError) and "protobuf parsing failed" in str(broken)


def test_an_inference_runtime_out_of_memory_is_said_as_such() -> None:
    """OpenVINO's allocation failure under ulimit -v (sweep 26) read "unexpected RuntimeError ...
    (please report this)", as if a bug; MemoryError was already said as out of memory."""
    from cmrsdk.cli import _error_line

    openvino = RuntimeError(
        "Exception from src/inference/src/cpp/infer_request.cpp:224: [CPU] Concat node with name 'node_cat_3' "
        "Check 'ptr' failed at src/plugins/intel_cpu/src/cpu_memory.cpp:257: Failed to allocate 12845056 bytes of memory"
    )
    line = _error_line("cohort/patient001", openvino)
    assert line.startswith("cmrsdk: error: cohort/patient001: out of memory") and "report" not in line
    assert "please report this" in _error_line("x", RuntimeError("a shape mismatch"))
