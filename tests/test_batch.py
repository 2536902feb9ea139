"""Batches that cannot lose work, and the shared Sunnybrook series through the command to SEG and SR.

Each kind runs the real ``cmrsdk segment`` (in-process, or as a subprocess where signals and
pipes are the point) and asserts the exit code, the error and summary lines and the files
left behind. ``BATCH_KINDS`` counts them for the corpus (tests/test_corpus.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cmrsdk import DEMO_BUNDLE
from cmrsdk.cli import main, study_folder_names
from cmrsdk.io import write_dicom_series
from cmrsdk.synth import synthetic_study

ROOT = Path(__file__).resolve().parents[1]
ACDC = "acdc/training/patient001"
FAST = ["--mode", "baseline", "--no-overlay", "--no-report-html"]

#: the batch and output kinds of the corpus, each a test below.
BATCH_KINDS = [
    "same_folder_names",
    "one_failure_carries_on",
    "output_is_a_file",
    "output_under_a_file",
    "output_cannot_be_created",
    "rerun_replaces_earlier_result",
    "foreign_files_refused",
    "no_overlay",
    "overlay_bounded",
    "missing_input",
    "same_input_twice",
    "sigterm_leaves_nothing",
    "interrupt_keeps_earlier_result",
    "broken_pipe",
    "heart_crop_not_multiple",
    "folder_of_nifti_files",
    "folder_of_subjects",
    "inspect_folder_of_nifti",
]


def _nifti(shared_data: Path, target: Path, frame: str = "01") -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shared_data / ACDC / f"patient001_frame{frame}.nii.gz", target)
    return target


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*")]


def test_study_folder_names_disambiguate() -> None:
    names = study_folder_names(
        [
            Path("/a/site1/DICOM"),
            Path("/a/site2/DICOM"),
            Path("/b/p1.nii.gz"),
            Path("/b/p1.nii.gz"),
            Path("/x/y/IMG.NII.GZ"),
        ]
    )
    assert names == ["site1_DICOM", "site2_DICOM", "p1", "p1-2", "IMG"]


def test_same_folder_names(tmp_path, capsys):
    a, b = tmp_path / "site1" / "DICOM", tmp_path / "site2" / "DICOM"
    write_dicom_series(a, synthetic_study(seed=3, n_slices=6, shape=(64, 64), n_phases=2))
    write_dicom_series(b, synthetic_study(seed=4, n_slices=6, shape=(64, 64), n_phases=2))
    out = tmp_path / "out"
    assert main(["segment", str(a), str(b), "-o", str(out), *FAST]) == 0
    assert _names(out) == ["site1_DICOM", "site2_DICOM"]
    reports = [json.loads((out / n / "report.json").read_text()) for n in _names(out)]
    assert reports[0]["measures"]["lvedv_ml"] != reports[1]["measures"]["lvedv_ml"]  # two studies, not one twice
    assert "cmrsdk: 2 of 2 studies segmented, 0 failed" in capsys.readouterr().err


def test_one_failure_carries_on(shared_data, tmp_path, capsys, monkeypatch):
    good1 = _nifti(shared_data, tmp_path / "in" / "good1.nii.gz")
    bad = tmp_path / "in" / "bad.nii.gz"
    bad.write_text("garbage")
    good2 = _nifti(shared_data, tmp_path / "in" / "good2.nii.gz", "12")
    crash = tmp_path / "in" / "crash.nii.gz"
    shutil.copy(good1, crash)
    import cmrsdk.pipeline

    real = cmrsdk.pipeline.Pipeline.segment_study

    def segment_study(self, study):
        if "crash" in study.phases[0].source:
            raise RuntimeError("engine fell over")  # not a cmrsdk error: must not stop the batch either
        return real(self, study)

    monkeypatch.setattr(cmrsdk.pipeline.Pipeline, "segment_study", segment_study)
    out = tmp_path / "out"
    code = main(["segment", str(good1), str(bad), str(crash), str(good2), "-o", str(out), *FAST])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    errors = [line for line in err if line.startswith("cmrsdk: error:")]
    assert errors[0].startswith(f"cmrsdk: error: {bad}: not a readable NIfTI file")
    assert errors[1] == (f"cmrsdk: error: {crash}: unexpected RuntimeError: engine fell over (please report this)")
    assert err[-1] == "cmrsdk: 2 of 4 studies segmented, 2 failed"
    assert _names(out) == ["good1", "good2"]
    assert _hidden(out) == []


def test_output_is_a_file(shared_data, tmp_path, capsys):
    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    started = time.perf_counter()
    assert main(["segment", str(image), "-o", str(target), *FAST]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"cmrsdk: error: {image}: {target}: output folder is a file, not a folder"
    )
    assert target.read_text() == "keep me"
    assert time.perf_counter() - started < 30  # found before the bundle is loaded


def test_output_under_a_file(shared_data, tmp_path, capsys):
    images = [_nifti(shared_data, tmp_path / "in" / f"{n}.nii.gz") for n in "ab"]
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["segment", *map(str, images), "-o", str(blocker / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err == f"cmrsdk: error: {blocker}/out: output folder lies under {blocker}, which is a file, not a folder\n"


def test_output_cannot_be_created(shared_data, tmp_path, capsys):
    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    target = Path("/proc/self/cmrsdk-out")  # not writable, even by root
    assert main(["segment", str(image), "-o", str(target), *FAST]) == 1
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith(f"cmrsdk: error: {image}: {target}: output folder cannot be written")


def test_output_names_at_the_limit_links_and_the_current_folder(shared_data, tmp_path, capsys, monkeypatch):
    """A folder name of 230 characters (the staging folder beside it took its name plus 40: the
    write failed after the segmentation); a link to an earlier result (replaced beside the
    link before 0.10.0, the old result left); `-o .` (the staging folder was made inside it and
    the rename failed after the work); a path longer than the system holds (a traceback)."""
    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    long_name = tmp_path / ("L" * 230)
    assert main(["segment", str(image), "-o", str(long_name), *FAST]) == 0
    assert (long_name / "report.json").is_file()
    target = tmp_path / "target"
    assert main(["segment", str(image), "-o", str(target), *FAST]) == 0
    (tmp_path / "link").symlink_to(target)
    assert main(["segment", str(image), "-o", str(tmp_path / "link"), *FAST]) == 0
    assert (tmp_path / "link").is_symlink() and (target / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing left beside
    capsys.readouterr()
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["segment", str(image), "-o", ".", *FAST]) == 1
    assert "output folder is the current folder or holds it" in capsys.readouterr().err
    assert list(here.iterdir()) == []
    deep = tmp_path.joinpath(*["d" * 200] * 22)
    assert main(["segment", str(image), "-o", str(deep), *FAST]) == 1
    assert "output folder cannot be used (File name too long)" in capsys.readouterr().err
    # what a run killed outright left beside its output: removed once stale, a fresh one kept
    old, fresh = tmp_path / ".cmrsdk-staging-999999999-abcd1234", tmp_path / ".cmrsdk-staging-999999998-abcd1234"
    for left in (old, fresh):
        (left / "labels_ED.nii.gz").parent.mkdir()
        (left / "labels_ED.nii.gz").write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert main(["segment", str(image), "-o", str(target), *FAST]) == 0
    assert not old.exists() and fresh.is_dir()


def test_rerun_replaces_earlier_result(shared_data, tmp_path, capsys):
    # first a DICOM study (SEG + SR), then a NIfTI one into the same folder: no SEG may survive
    dicom = tmp_path / "dicom"
    write_dicom_series(dicom, synthetic_study(seed=3, n_slices=6, shape=(64, 64), n_phases=2))
    out = tmp_path / "out"
    assert main(["segment", str(dicom), "-o", str(out), *FAST]) == 0
    assert _names(out) == ["labels_ED.nii.gz", "labels_ES.nii.gz", "report.json", "seg_ED.dcm", "seg_ES.dcm", "sr.dcm"]
    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    assert main(["segment", str(image), "-o", str(out), *FAST]) == 0
    assert _names(out) == ["labels.nii.gz", "report.json"]
    assert json.loads((out / "report.json").read_text())["study"]["source"] == str(image)
    assert _hidden(tmp_path) == []


def test_foreign_files_refused(shared_data, tmp_path, capsys):
    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    assert main(["segment", str(image), "-o", str(out), *FAST]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"cmrsdk: error: {image}: {out}: output folder holds 1 entries cmrsdk did not write (thesis.docx); a study's "
        "folder is replaced whole, so choose a new or empty folder"
    )
    assert _names(out) == ["thesis.docx"]


def test_no_overlay(shared_data, tmp_path):
    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    assert main(["segment", str(image), "-o", str(tmp_path / "out"), "--mode", "baseline", "--no-overlay"]) == 0
    assert "overlay.png" not in _names(tmp_path / "out")


def test_overlay_bounded(shared_data, tmp_path):
    # a 1024 x 1024 stack: the montage resamples a window around the heart to fixed-size tiles
    image = nib.load(shared_data / ACDC / "patient001_frame01.nii.gz")
    data = np.asanyarray(image.dataobj)[:, :, 3:6]
    big = np.kron(data, np.ones((4, 4, 1), data.dtype))[:1024, :1024]
    affine = image.affine.copy()
    affine[:3, :2] *= 0.4 / np.linalg.norm(affine[:3, 0])  # 0.4 mm pixels: fine, yet a cine's
    header = image.header.copy()
    header.set_data_shape(big.shape)
    header.set_zooms((0.4, 0.4, 10.0))
    nib.save(nib.Nifti1Image(big, affine, header), tmp_path / "big.nii.gz")
    assert main(["segment", str(tmp_path / "big.nii.gz"), "-o", str(tmp_path / "out"), "--mode", "baseline"]) == 0
    from PIL import Image

    with Image.open(tmp_path / "out" / "overlay.png") as png:
        width, height = png.size
    # 3 slices of one phase: one line of 144 px tiles plus heading and legend, whatever the input size
    assert height <= 400 and width <= 4 * 160


def test_missing_input(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["segment", str(missing), "-o", str(tmp_path / "out"), *FAST]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"cmrsdk: error: {missing}: no such file or directory", "cmrsdk: 0 of 1 studies segmented, 1 failed"]
    assert not (tmp_path / "out").exists()


def test_same_input_twice(shared_data, tmp_path):
    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    assert main(["segment", str(image), str(image), "-o", str(tmp_path / "out"), *FAST]) == 0
    assert _names(tmp_path / "out") == ["a", "a-2"]


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [sys.executable, "-m", "cmrsdk.cli", *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_leaves_nothing(shared_data, tmp_path, stop):
    # SIGTERM (a scheduler) or SIGHUP (the terminal or ssh session gone; sweep 20: killed
    # outright, it left a hidden staging folder of patient data) while the study is read and
    # segmented: no study folder, no staging folder
    results = tmp_path / "results"
    out = results / "study"
    source = shared_data / "sunnybrook" / "SCD0000101"
    # SIGHUP as a terminal's child gets it (not ignored, as a nohup'd test runner would pass on)
    process = _cli(
        "segment", str(source), "-o", str(out), "--mode", "baseline",
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 120
    # the output checks create `results` once the handlers are in place, before any compute
    while not results.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(stop)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + stop, err
    assert f"cmrsdk: interrupted ({stop.name})" in err and "Traceback" not in err
    assert _names(results) == [] and _hidden(tmp_path) == []


def test_a_nohup_run_keeps_running_through_a_hang_up():
    """Under nohup (SIGHUP ignored) a hang-up must not stop a run: only SIGTERM is taken over."""
    from cmrsdk.study import stop_signals

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert stop_signals() == (signal.SIGTERM,)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert stop_signals() == (signal.SIGTERM, signal.SIGHUP)
    finally:
        signal.signal(signal.SIGHUP, before)


def test_interrupt_keeps_earlier_result(shared_data, tmp_path, monkeypatch):
    import cmrsdk.io

    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), *FAST]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the outputs are written

    monkeypatch.setattr(cmrsdk.io, "write_json", interrupted)
    assert main(["segment", str(image), "-o", str(out), *FAST]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier result, untouched
    assert _hidden(tmp_path) == []


def test_broken_pipe(shared_data, tmp_path):
    source = shared_data / "sunnybrook" / "SCD0000101"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    result = subprocess.run(
        f"{sys.executable} -m cmrsdk.cli inspect {source} {source} | head -n 1",
        shell=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout == "{\n"
    assert result.stderr == ""


def test_heart_crop_not_multiple(shared_data, tmp_path, capsys):
    image = _nifti(shared_data, tmp_path / "in" / "a.nii.gz")
    assert main(["segment", str(image), "-o", str(tmp_path / "out"), "--heart-crop", "100", "100"]) == 2
    assert capsys.readouterr().err == (
        "cmrsdk: error: 'heart_crop' (100, 100) must be multiples of 16 pixels (the U-Nets "
        "downsample by 16), e.g. (96, 96)\n"
    )
    assert not (tmp_path / "out").exists() or _names(tmp_path / "out") == []


def test_folder_of_nifti_files(shared_data, tmp_path, capsys):
    folder = tmp_path / "niftis"
    _nifti(shared_data, folder / "a_ed.nii.gz")
    _nifti(shared_data, folder / "B_ES.NII.GZ", "12")
    shutil.copy(shared_data / ACDC / "patient001_frame01_gt.nii.gz", folder / "a_ed_gt.nii.gz")
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), *FAST]) == 0
    assert _names(out) == ["B_ES", "a_ed"]  # label maps (_gt) are not studies
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("one phase only" in line and "no SV or EF" in line for line in lines)


def test_folder_of_subjects(shared_data, tmp_path):
    cohort = tmp_path / "cohort"
    for name in ("patient001", "patient002"):
        shutil.copytree(shared_data / "acdc" / "training" / name, cohort / name)
    out = tmp_path / "out"
    assert main(["segment", str(cohort), "-o", str(out), *FAST]) == 0
    assert _names(out) == ["patient001", "patient002"]
    for name in ("patient001", "patient002"):
        report = json.loads((out / name / "report.json").read_text())
        assert report["measures"]["lvef_pct"] is not None and report["flags"] == []


def test_inspect_folder_of_nifti(shared_data, tmp_path, capsys):
    folder = tmp_path / "niftis"
    _nifti(shared_data, folder / "A.NII.GZ")
    _nifti(shared_data, folder / "b.nii.gz", "12")
    assert main(["inspect", str(folder), str(tmp_path / "nowhere")]) == 1
    captured = capsys.readouterr()
    described = json.loads("[" + captured.out.replace("}\n{", "},\n{") + "]")
    assert [d["path"] for d in described] == [str(folder / "A.NII.GZ"), str(folder / "b.nii.gz")]
    assert [d["format"] for d in described] == ["nifti", "nifti"] and described[0]["slices"] == 10
    assert captured.err == f"cmrsdk: error: {tmp_path / 'nowhere'}: no such file or directory\n"


# -- the shared Sunnybrook series: SEG and SR a PACS accepts ------------------------------------


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("series", ["SCD0000101"])  # SCD0000201, the same scanner: read in 4 other test files
def test_sunnybrook_to_seg_and_sr(shared_data, tmp_path, series, capsys):
    import warnings

    import highdicom as hd

    source = shared_data / "sunnybrook" / series
    out = tmp_path / "out"
    # one U-Net, one pass a slice: the outputs under test are written alike whatever the mode
    # (tests/test_cli.py reads a routed bundle's SEG and SR); 32 s -> half of it here
    fast = ["--mode", "baseline", "--no-mirroring"]
    assert main(["segment", str(source), "-o", str(out), "--bundle", str(DEMO_BUNDLE), *fast]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{source}: LVEF ") and "Traceback" not in captured.err
    assert _names(out) == [
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
    assert any("'PatientBirthDate' value '00000000'" in w for w in report["warnings"])
    assert any("'FrameOfReferenceUID' (0020,0052) differs" in w for w in report["warnings"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in source.glob("*.dcm")}
        segs = {phase: hd.seg.segread(out / f"seg_{phase}.dcm") for phase in ("ED", "ES")}
        sr = hd.sr.srread(out / "sr.dcm")
    assert {s.SeriesNumber for s in segs.values()} == {901, 902}
    assert {s.SeriesDescription for s in segs.values()} == {"cmrsdk segmentation ED", "cmrsdk segmentation ES"}
    assert segs["ED"].SeriesInstanceUID != segs["ES"].SeriesInstanceUID
    for phase, seg in segs.items():
        index = report["ed_index"] if phase == "ED" else report["es_index"]
        n_slices = report["phases"][index]["shape_zyx"][0]
        assert [d.segment_label for d in seg.SegmentSequence] == ["LVBP", "LVM", "RVBP"]
        assert seg.PatientID == series and seg.PatientBirthDate == "" and seg.StudyDate == ""
        referenced = [
            item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        ]
        assert len(referenced) == n_slices and set(referenced) <= set(sources)
        # the SEG's pixels are the NIfTI labels: same voxels per structure
        labels = np.asarray(nib.load(out / f"labels_{phase}.nii.gz").dataobj).transpose(2, 1, 0)
        array = seg.get_volume(combine_segments=True, allow_missing_positions=True, dtype=np.uint8).array
        assert sorted(np.bincount(array.ravel(), minlength=4)[1:].tolist()) == sorted(
            np.bincount(labels.ravel(), minlength=4)[1:].tolist()
        )
    measured = {}
    for group in [*sr.content.get_image_measurement_groups(), *sr.content.get_volumetric_roi_measurement_groups()]:
        for item in group.get_measurements():
            measured.setdefault(str(group.tracking_identifier), []).append((item.name.meaning, round(item.value, 3)))
    m = report["measures"]
    assert ("Left Ventricular ED Volume", round(m["lvedv_ml"], 3)) in measured["LV blood pool at ED"]
    assert ("Left ventricular ejection fraction by MR", round(m["lvef_pct"], 3)) in measured["Left ventricle"]
    assert ("Left Ventricle Mass", round(m["lv_mass_g"], 3)) in measured["LV myocardium at ED"]
    assert ("Right Ventricular ES Volume", round(m["rvesv_ml"], 3)) in measured["RV blood pool at ES"]
    # each of those groups references its own phase's SEG
    refs = {
        str(g.tracking_identifier): g.referenced_segment for g in sr.content.get_volumetric_roi_measurement_groups()
    }
    assert refs["RV blood pool at ES"].referenced_sop_instance_uid == segs["ES"].SOPInstanceUID
    assert refs["LV myocardium at ED"].referenced_segment_numbers == [2]
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed: SEG and SR were read back by highdicom but not validated")
    source_uids: set[str] = set()

    def collect(dataset, element):
        if element.VR == "UI":
            source_uids.update(str(v) for v in (element.value if element.VM > 1 else [element.value]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for file in source.glob("*.dcm"):
            pydicom.dcmread(file, stop_before_pixels=True).walk(collect)
    for name in ("seg_ED.dcm", "seg_ES.dcm", "sr.dcm"):
        errors = [e for e in _dciodvfy_errors(out / name) if "contains invalid data values" not in e]
        # the only errors left are UIDs of the archive (leading zeros), which the outputs must reference verbatim
        for error in errors:
            match = re.search(r"UI \[1\] = <([0-9.]+)> - Leading zeroes", error)
            assert match and match.group(1) in source_uids, error


def test_synthetic_series_seg_and_sr_pass_dciodvfy(tmp_path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    dicom = tmp_path / "dicom"
    write_dicom_series(dicom, synthetic_study(seed=1, n_slices=6, shape=(64, 64), n_phases=2))
    out = tmp_path / "out"
    assert main(["segment", str(dicom), "-o", str(out), *FAST]) == 0
    for path in [next(dicom.glob("*.dcm")), out / "seg_ED.dcm", out / "seg_ES.dcm", out / "sr.dcm"]:
        assert _dciodvfy_errors(path) == [], path
