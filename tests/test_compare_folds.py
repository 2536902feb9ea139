"""scripts/compare_folds.py: paired label-slice differences and their patient bootstrap."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from compare_folds import bootstrap, paired_differences, read_folds, read_slices  # noqa: E402

HEADER = "bundle,case,phase,slice,region,label,dice\n"


def test_pairs_label_slices_and_counts_an_empty_answer_as_right(tmp_path: Path) -> None:
    (tmp_path / "ref.csv").write_text(
        HEADER
        + "r,p1,ED,0,1,RVBP,0.0000\n"  # RV drawn where the annotators saw atrium
        + "r,p1,ED,5,3,RVBP,0.5000\n"
        + "r,p2,ES,4,3,LVBP,0.8000\n"
    )
    (tmp_path / "cand.csv").write_text(
        HEADER
        + "c,p1,ED,5,3,RVBP,0.7000\n"  # p1 ED 0 left empty: right, Dice 1
        + "c,p2,ES,4,3,LVBP,0.6000\n"
        + "c,p2,ES,6,3,RVBP,0.0000\n"  # drawn past the apex, where the reference left it empty
    )
    d = paired_differences(read_slices(str(tmp_path / "ref.csv")), read_slices(str(tmp_path / "cand.csv")))
    assert d == pytest.approx(
        {
            ("p1", "ED", 0, 1, "RVBP"): 1.0,
            ("p1", "ED", 5, 3, "RVBP"): 0.2,
            ("p2", "ES", 4, 3, "LVBP"): -0.2,
            ("p2", "ES", 6, 3, "RVBP"): -1.0,
        }
    )
    mean, low, high = bootstrap(d, draws=4000)
    assert mean == pytest.approx(0.0)
    # two patients: a draw is p1 twice (+0.6), p2 twice (-0.6) or one of each (0.0)
    assert low == pytest.approx(-0.6) and high == pytest.approx(0.6)


def test_a_patient_weighs_by_its_label_slices(tmp_path: Path) -> None:
    d = {("p1", "ED", z, 2, "LVM"): 0.1 for z in range(3)} | {("p2", "ED", 0, 2, "LVM"): -0.3}
    mean, low, high = bootstrap(d, draws=4000)
    assert mean == pytest.approx(0.0)  # (0.3 - 0.3) / 4
    assert low == pytest.approx(-0.3) and high == pytest.approx(0.1)


def test_dev_fold_writes_the_slices_it_scores(shared_data, tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("onnxruntime")
    import dev_fold

    from cmrsdk import DEMO_BUNDLE

    patient = shared_data / "acdc" / "training" / "patient005"
    out = tmp_path / "slices.csv"
    argv = ["dev_fold.py", "--fold", str(DEMO_BUNDLE), str(patient), "--ratios", "0.4", "--slices", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    dev_fold.main()
    printed = capsys.readouterr().out
    slices = read_slices(str(out))
    # the printed pooled mean at the shipped ratio (0.4) is the mean of the rows written
    line = next(x for x in printed.splitlines() if "ratio 0.40" in x)
    pooled = float(line.split("all ")[1].split()[0])
    assert len(slices) == int(line.split("(n ")[1].split(")")[0]) > 20
    assert pooled == pytest.approx(100 * sum(slices.values()) / len(slices), abs=0.006)
    assert {k[0] for k in slices} == {"patient005"} and {k[1] for k in slices} == {"ED", "ES"}
    # --slice-gap-mm probes the clean-up's gap criterion for the run (off by default in the pipeline)
    from cmrsdk import preprocess

    monkeypatch.setattr(preprocess, "MAX_SLICE_GAP_MM", None)
    monkeypatch.setattr(sys, "argv", [*argv, "--slice-gap-mm", "5"])
    dev_fold.main()
    assert preprocess.MAX_SLICE_GAP_MM == 5.0
    assert read_slices(str(out)) == slices  # patient005 loses no slice to the clean-up either way


def test_reads_cmrsdk_evaluate_slice_dice_of_one_method(tmp_path: Path) -> None:
    head = "method,case,phase,slice_index,region,position,dice_LVBP,dice_LVM,dice_RVBP\n"
    (tmp_path / "slice_dice.csv").write_text(
        head
        + "baseline,p1,ED,0,1,0.0,0.5,0.5,0.5\n"
        + "routed,p1,ED,0,1,0.0,0.97,0.88,nan\n"  # no RV in either mask: not scored
        + "routed,p1,ES,7,3,1.0,0.0,0.25,0.6\n"
    )
    got = read_slices(str(tmp_path / "slice_dice.csv"))
    assert got == pytest.approx(
        {
            ("p1", "ED", 0, 1, "LVBP"): 0.97,
            ("p1", "ED", 0, 1, "LVM"): 0.88,
            ("p1", "ES", 7, 3, "LVBP"): 0.0,
            ("p1", "ES", 7, 3, "LVM"): 0.25,
            ("p1", "ES", 7, 3, "RVBP"): 0.6,
        }
    )
    assert read_slices(str(tmp_path / "slice_dice.csv"), "baseline")[("p1", "ED", 0, 1, "RVBP")] == 0.5
    with pytest.raises(SystemExit, match="oracle"):
        read_slices(str(tmp_path / "slice_dice.csv"), "oracle")


def test_pools_folds_and_refuses_a_patient_read_twice(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(HEADER + "r,p1,ED,0,1,LVBP,0.9000\n")
    (tmp_path / "b.csv").write_text(HEADER + "r,p2,ES,3,2,RVBP,0.8000\n")
    a, b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    assert read_folds(f"{a},{b}") == {("p1", "ED", 0, 1, "LVBP"): 0.9, ("p2", "ES", 3, 2, "RVBP"): 0.8}
    with pytest.raises(SystemExit, match="already read"):
        read_folds(f"{a},{a}")
