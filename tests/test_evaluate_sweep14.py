"""`cmrsdk evaluate` on a researcher's own labelled data (red team 14, runs/redteam14): cases keyed
uniquely, nothing skipped unseen, every unusable study named up front, output whole or not at all,
failures and unannotated structures counted rather than hidden, no p-value from one subject."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cmrsdk.cli import main
from cmrsdk.errors import CmrWarning, InputError
from cmrsdk.evaluation import SliceScore, improvement_table, regional_table
from cmrsdk.evaluation.cases import find_case_folders
from cmrsdk.evaluation.figures import bland_altman_title
from cmrsdk.evaluation.stats import agreement
from cmrsdk.io import write_acdc_patient
from cmrsdk.labels import APEX, BASE, MIDDLE, RVBP
from cmrsdk.synth import synthetic_study


def _patient(folder: Path, seed: int, *, es_empty: bool = False, no_rv: bool = False) -> Path:
    """A small synthetic ACDC patient folder; the ES label map emptied or the RV removed on request."""
    study = synthetic_study(seed=seed, shape=(96, 96))
    phases = list(study.phases)
    for t, stack in enumerate(phases):
        labels = stack.labels.copy()
        if no_rv:
            labels[labels == RVBP] = 0
        if es_empty and t == study.es_index:
            labels[:] = 0
        phases[t] = dataclasses.replace(stack, labels=labels)
    return write_acdc_patient(folder, dataclasses.replace(study, phases=tuple(phases)))


def _evaluate(bundle: Path, data: list[Path], out: Path, *modes: str, extra: tuple[str, ...] = ()) -> int:
    argv = ["evaluate", "--data", *map(str, data), "-o", str(out), "--bundle", str(bundle)]
    return main([*argv, "--modes", *(modes or ("baseline", "oracle")), "--heart-crop", "32", "32", *extra])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_cases_of_one_name_under_two_roots_stay_two_cases(routing_bundle, tmp_path):
    """F1: site1/patient001 and site2/patient001 shared one case key, so both rows got one reference."""
    _patient(tmp_path / "siteA" / "patient001", 21)
    _patient(tmp_path / "siteB" / "patient001", 22)
    out = tmp_path / "eval"
    assert _evaluate(routing_bundle, [tmp_path / "siteA", tmp_path / "siteB"], out, "oracle") == 0
    rows = {r["case"]: r for r in _rows(out / "case_measures.csv")}
    assert set(rows) == {"siteA_patient001", "siteB_patient001"}
    assert rows["siteA_patient001"]["reference_lvedv_ml"] != rows["siteB_patient001"]["reference_lvedv_ml"]
    report = (out / "report.md").read_text()
    assert f"| siteA_patient001 | {tmp_path / 'siteA' / 'patient001'} |" in report
    # the library never merges either: one name twice is refused
    from cmrsdk.evaluation import evaluate

    study = synthetic_study(seed=3, shape=(64, 64))
    with pytest.raises(InputError, match="case name 'c' is given twice"):
        evaluate({}, [("c", study), ("c", study)], progress=False)


def test_folders_not_recognised_are_listed_not_dropped(routing_bundle, tmp_path, capsys):
    """F3: 'info.cfg' or 'Info.cfg.txt' made a patient vanish from the cohort without a word."""
    data = tmp_path / "data"
    _patient(data / "patient001", 1)
    (_patient(data / "patient002", 2) / "Info.cfg").rename(data / "patient002" / "info.cfg")
    (_patient(data / "patient003", 3) / "Info.cfg").rename(data / "patient003" / "Info.cfg.txt")
    (data / "notes").mkdir()  # no NIfTI file: not an attempt at a case, not listed
    found = find_case_folders(data)
    assert [p.name for p in found.folders] == ["patient001"]
    assert [(p.name, "'info.cfg'" in r or "'Info.cfg.txt'" in r) for p, r in found.skipped] == [
        ("patient002", True),
        ("patient003", True),
    ]
    out = tmp_path / "eval"
    assert _evaluate(routing_bundle, [data], out, "oracle") == 0
    captured = capsys.readouterr()
    assert f"cmrsdk: warning: skipped {data / 'patient002'}: holds 'info.cfg', not 'Info.cfg'" in captured.err
    assert "1 studies evaluated" in captured.out and "2 folders skipped" in captured.out
    report = (out / "report.md").read_text()
    assert f"- skipped: {data / 'patient003'}: holds 'Info.cfg.txt'" in report


def test_every_that_keeps_no_folder_says_how_many_were_found(tmp_path, capsys):
    """F17: '--every 5' over two patients said there were no patient folders at all."""
    for i in (1, 2):
        _patient(tmp_path / "data" / f"patient00{i}", i)
    assert main(["evaluate", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "o"), "--every", "5"]) == 2
    err = capsys.readouterr().err
    assert "2 case folders found under" in err and "--every 5 keeps none" in err
    assert not (tmp_path / "o").exists()


def test_every_unusable_study_is_named_before_any_is_segmented(routing_bundle, tmp_path, capsys):
    """F4: only the first problem was named, and a missing ES label map read as 'no labels at ED and ES'."""
    data = tmp_path / "data"
    _patient(data / "patient001", 1)
    for gt in _patient(data / "patient002", 2).glob("*_gt.nii.gz"):
        gt.unlink()
    es_label = sorted(_patient(data / "patient003", 3).glob("*_gt.nii.gz"))[-1]
    es_label.unlink()
    out = tmp_path / "eval"
    assert _evaluate(routing_bundle, [data], out) == 2
    err = capsys.readouterr().err
    assert err.count("cmrsdk: error:") == 3 and "2 of 3 studies cannot be evaluated" in err
    assert "patient002: ED label map patient002_frame01_gt.nii.gz not found" in err
    assert f"patient003: ES label map {es_label.name} not found" in err and "ED label map patient003" not in err
    assert "--skip-unreadable evaluates the other 1" in err and not out.exists()
    assert _evaluate(routing_bundle, [data], out, extra=("--skip-unreadable",)) == 0
    report = (out / "report.md").read_text()
    assert "**2 folders not evaluated**" in report and f"- skipped: {data / 'patient003'}: ES label map" in report


def test_label_maps_holding_no_label_are_refused_naming_them_and_nothing_is_written(routing_bundle, tmp_path, capsys):
    """F7: all-zero labels gave 'no cardiac slices scored for method' after half the files were written;
    a failed run now leaves the earlier evaluation in OUT as it was."""
    out = tmp_path / "eval"
    _patient(tmp_path / "good" / "patient001", 1)
    assert _evaluate(routing_bundle, [tmp_path / "good"], out, "oracle") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    folder = _patient(tmp_path / "bad" / "patient001", 1)
    for gt in folder.glob("*_gt.nii.gz"):
        import nibabel as nib

        image = nib.load(gt)
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine, image.header), gt)
    capsys.readouterr()
    assert _evaluate(routing_bundle, [tmp_path / "bad"], out, "oracle") == 2
    err = capsys.readouterr().err
    assert "patient001_frame01_gt.nii.gz and patient001_frame" in err and "hold no label (every voxel 0)" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not any(p.name.startswith(".cmrsdk-") for p in tmp_path.iterdir())  # no staging folder left


def test_a_second_run_replaces_the_first_run_s_files_and_foreign_files_are_refused(routing_bundle, tmp_path, capsys):
    """F6: table1_baseline.csv and bland_altman_*_baseline.png of a first run survived a second one."""
    _patient(tmp_path / "data" / "patient001", 1)
    out = tmp_path / "eval"
    assert _evaluate(routing_bundle, [tmp_path / "data"], out, "baseline", "oracle") == 0
    assert (out / "table1_baseline.csv").is_file() and (out / "table3.csv").is_file()
    assert _evaluate(routing_bundle, [tmp_path / "data"], out, "oracle") == 0
    names = {p.name for p in out.iterdir()}
    assert "table1_oracle.csv" in names and not {"table1_baseline.csv", "table3.csv"} & names
    assert not any("baseline" in n for n in names)
    (out / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    assert _evaluate(routing_bundle, [tmp_path / "data"], out, "oracle") == 2
    assert "holds 1 entries an evaluation does not write (my_notes.txt)" in capsys.readouterr().err
    assert (out / "my_notes.txt").read_text() == "mine"


def test_failed_segmentations_are_counted_next_to_the_means(routing_bundle, tmp_path):
    """F5: HD95 inf was dropped from the mean while 'cases' still counted it; a NaN EF left the
    agreement without a word. The routing bundle's baseline U-Net answers background everywhere."""
    for i in (1, 2):
        _patient(tmp_path / "data" / f"patient00{i}", i)
    out = tmp_path / "eval"
    assert _evaluate(routing_bundle, [tmp_path / "data"], out, "baseline") == 0
    report = (out / "report.md").read_text()
    assert "| baseline | ED | LVBP | 0.00 | – | – | 2 | 2 |" in report
    assert "- baseline, patient001, ES: no predicted LVBP (Dice 0.00)" in report
    rows = {r["quantity"]: r for r in _rows(out / "agreement.csv")}
    assert rows["lvef_pct"]["n"] == "0" and rows["lvef_pct"]["excluded"] == "2"
    assert "- baseline, patient002: lvef_pct, rvef_pct (no predicted LV at ED and ES)" in report or (
        "- baseline, patient002: lvef_pct (no predicted LV at ED and ES)" in report
    )


def test_structures_and_phases_not_annotated_are_left_out_not_charged(routing_bundle, tmp_path, capsys):
    """F8: an empty ES label map (ED-only annotation) charged the model with every ES voxel it drew,
    and LV-only contours scored the RV 0.00 and entered RVEDV 0 mL into the agreement."""
    _patient(tmp_path / "data" / "patient001", 1, es_empty=True)
    _patient(tmp_path / "data" / "patient002", 2, no_rv=True)
    out = tmp_path / "eval"
    assert _evaluate(routing_bundle, [tmp_path / "data"], out, "oracle") == 0
    err = capsys.readouterr().err
    assert "cmrsdk: warning: patient001: ES label map patient001_frame" in err and "ES not annotated" in err
    assert "cmrsdk: warning: patient002: no RVBP in the reference at ED or ES" in err
    cases = _rows(out / "case_scores.csv")
    assert all(math.isnan(float(r["dice"])) for r in cases if r["case"] == "patient001" and r["phase"] == "ES")
    assert all(math.isnan(float(r["dice"])) for r in cases if r["case"] == "patient002" and r["label"] == "RVBP")
    assert all(not math.isnan(float(r["dice"])) for r in cases if r["case"] == "patient001" and r["phase"] == "ED")
    reference = {r["case"]: r for r in _rows(out / "case_measures.csv")}
    assert (
        reference["patient001"]["reference_lvesv_ml"] == "nan"
        and reference["patient002"]["reference_rvedv_ml"] == "nan"
    )
    assert float(reference["patient001"]["reference_lvedv_ml"]) > 0
    slices = _rows(out / "slice_dice.csv")
    assert all(r["dice_RVBP"] == "nan" for r in slices if r["case"] == "patient002")
    report = (out / "report.md").read_text()
    assert "- patient001: ES (no label at all)" in report and "- patient002: RVBP at ED; RVBP at ES" in report
    assert "oracle, patient002: rvedv_ml (not annotated: RVBP at ED)" in report


def test_no_p_value_from_too_few_subjects_and_no_nan_text(routing_bundle, tmp_path):
    """F9: one patient's slices gave 'p = 0.004 *' in Table 1, '37.04 (nan)' and a figure titled 'bias nan'."""
    rng = np.random.default_rng(7)
    scores = [
        SliceScore(method, f"c{case}", "ED", z, region, z / 7, tuple(float(v) for v in rng.uniform(lo, lo + 0.05, 3)))
        for method, shift in (("a", 0.0), ("b", 0.2))
        for case in range(2)
        for z, (region, lo) in enumerate([(BASE, 0.5 + shift)] * 6 + [(MIDDLE, 0.95)] * 6 + [(APEX, 0.4 + shift)] * 6)
    ]
    row = regional_table(scores, "a")[0]
    assert row["base_subjects"] == 2 and math.isnan(row["base_p"]) and row["base_significant"] is False
    change = improvement_table(scores, "a", "b")[0]
    assert change["subjects"] == 2 and math.isnan(change["p"]) and change["mean_change"] == pytest.approx(20, abs=3)
    three = scores + [dataclasses.replace(s, case="c2") for s in scores if s.case == "c0"]
    assert regional_table(three, "a")[0]["base_significant"] is True
    assert bland_altman_title(agreement([60.0], [55.0])) == "n = 1: no limits of agreement"
    assert bland_altman_title(agreement([60.0, 50, math.nan], [55.0, 52, 40])).endswith("n = 2, 1 left out (no value)")
    _patient(tmp_path / "data" / "patient001", 1)
    out = tmp_path / "eval"
    assert _evaluate(routing_bundle, [tmp_path / "data"], out, "baseline", "oracle") == 0
    report = (out / "report.md").read_text()
    assert "nan" not in report.lower().replace("nan (label absent", "")
    assert not re.search(r"\d\*", report)  # no star on any mean or change
    assert "**Too few subjects for tests:** p-values need at least 3 subjects" in report
    assert "| baseline | lvedv_ml | 1 | 0 | – |" in report


def test_a_bundle_routing_every_region_to_one_unet_is_said_once(routing_bundle, tmp_path):
    """F10: with the shipped bundle, baseline, routed and oracle segment alike and nothing said so."""
    from cmrsdk.evaluation.runner import _routing_notes

    def pipeline(routing: dict[int, str], mode: str, hashes: dict[str, str]) -> SimpleNamespace:
        models = {name: SimpleNamespace(artifacts={"onnx": SimpleNamespace(sha256=h)}) for name, h in hashes.items()}
        return SimpleNamespace(bundle=SimpleNamespace(routing=routing, models=models), mode=mode)

    one = pipeline({0: "baseline", 1: "baseline", 2: "baseline", 3: "baseline"}, "routed", {"baseline": "aa"})
    base = pipeline({0: "baseline", 1: "baseline", 2: "baseline", 3: "baseline"}, "baseline", {"baseline": "aa"})
    notes = _routing_notes({"baseline": base, "routed": one}, {})
    assert notes == [
        "this bundle routes every region to one U-Net (baseline): routing changes no slice, so baseline and routed "
        "segment alike"
    ]
    copies = pipeline(
        {0: "baseline", 1: "base", 2: "baseline", 3: "apex"},
        "routed",
        dict.fromkeys(["baseline", "base", "apex"], "aa"),
    )
    assert _routing_notes({"routed": copies}, {}) != []  # the same weights under three names are one U-Net
    two = pipeline({0: "baseline", 1: "base"}, "routed", {"baseline": "aa", "base": "bb"})
    assert _routing_notes({"routed": two}, {}) == [] and _routing_notes({"baseline": base}, {}) == []
    _patient(tmp_path / "data" / "patient001", 1)
    assert _evaluate(routing_bundle, [tmp_path / "data"], tmp_path / "eval", "baseline", "oracle") == 0
    assert "routes every region to one U-Net" not in (tmp_path / "eval" / "report.md").read_text()


def test_reader_warnings_are_cmrsdk_lines_and_listed_per_study(routing_bundle, tmp_path, capsys, monkeypatch):
    """F16: warnings that change the numbers came as raw Python warnings and were not in report.md."""
    import cmrsdk.io

    read = cmrsdk.io.read_study

    def warned(path, **options):
        warnings.warn(f"{path}/patient001_frame01.nii.gz: pixdim\nand affine disagree", CmrWarning, stacklevel=2)
        return read(path, **options)

    monkeypatch.setattr(cmrsdk.io, "read_study", warned)
    folder = _patient(tmp_path / "data" / "patient001", 1)
    out = tmp_path / "eval"
    assert _evaluate(routing_bundle, [tmp_path / "data"], out, "oracle") == 0
    err = capsys.readouterr().err
    assert f"cmrsdk: warning: {folder}/patient001_frame01.nii.gz: pixdim and affine disagree\n" in err
    assert "CmrWarning" not in err
    report = (out / "report.md").read_text()
    assert f"## Warnings per study\n\n- patient001: {folder}/patient001_frame01.nii.gz: pixdim and affine" in report


def test_false_positives_count_only_the_structures_the_reference_annotated() -> None:
    """LV-only contours: an RV drawn on a slice without LV is no false positive (review 16)."""
    import numpy as np

    from cmrsdk.evaluation.stats import false_positive_ml

    truth = np.zeros((3, 4, 4), np.uint8)
    truth[1, 1:3, 1:3] = 1  # LV on the middle slice only
    prediction = truth.copy()
    prediction[0, :2, :2] = 3  # RV on the first slice: 4 voxels
    prediction[2, :1, :1] = 1  # LV on the last: 1 voxel
    spacing = (10.0, 1.0, 1.0)  # 0.01 mL a voxel
    assert false_positive_ml(prediction, truth, spacing) == pytest.approx(0.05)
    assert false_positive_ml(prediction, truth, spacing, labels=[1, 2]) == pytest.approx(0.01)
