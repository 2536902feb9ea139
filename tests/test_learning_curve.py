"""scripts/learning_curve.py: runs scored on their fold's shared label-slices, slope per doubling."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from learning_curve import mean_dice, scored, slope_per_doubling  # noqa: E402

HEADER = "bundle,case,phase,slice,region,label,dice\n"


def test_runs_share_their_folds_label_slices(tmp_path: Path) -> None:
    (tmp_path / "n17.csv").write_text(HEADER + "a,p1,ED,5,3,RVBP,0.4000\n" + "a,p1,ED,6,3,RVBP,0.0000\n")
    (tmp_path / "n68.csv").write_text(HEADER + "b,p1,ED,5,3,RVBP,0.8000\n")  # slice 6 left empty: right
    (tmp_path / "other.csv").write_text(HEADER + "c,p9,ES,2,2,LVM,0.5000\n")  # another fold's patients
    runs = [
        ("f1", 17, str(tmp_path / "n17.csv")),
        ("f1", 68, str(tmp_path / "n68.csv")),
        ("f2", 68, str(tmp_path / "other.csv")),
    ]
    tables = scored(runs)
    assert tables[0][3] == {("p1", "ED", 5, 3, "RVBP"): 0.4, ("p1", "ED", 6, 3, "RVBP"): 0.0}
    assert tables[1][3] == {("p1", "ED", 5, 3, "RVBP"): 0.8, ("p1", "ED", 6, 3, "RVBP"): 1.0}
    assert set(tables[2][3]) == {("p9", "ES", 2, 2, "LVM")}  # folds do not mix
    assert mean_dice(tables[0][3], 3, "RVBP") == pytest.approx(0.2)
    assert mean_dice(tables[1][3], None, None) == pytest.approx(0.9)
    assert mean_dice(tables[1][3], 1, "RVBP") != mean_dice(tables[1][3], 1, "RVBP")  # none there: NaN


def test_slope_per_doubling_removes_each_folds_level() -> None:
    # fold a sits 10 points above fold b; both gain 2 points per doubling (17 -> 68: two doublings)
    points = [("a", 17, 80.0), ("a", 68, 84.0), ("b", 17, 70.0), ("b", 34, 72.0), ("b", 68, 74.0)]
    assert slope_per_doubling(points) == pytest.approx(2.0)
    assert slope_per_doubling([("a", 17, 80.0), ("a", 68, 80.0), ("a", 68, 80.0)]) == pytest.approx(0.0)
