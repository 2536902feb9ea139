"""scripts/compare_results.py: the one-line summary of a `cmrsdk evaluate` folder."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from compare_results import summarise  # noqa: E402

HEADER = "method,case,phase,slice_index,region,position,dice_LVBP,dice_LVM,dice_RVBP\n"


def test_summary_pools_every_scored_slice_and_counts_the_zeros(tmp_path: Path) -> None:
    (tmp_path / "slice_dice.csv").write_text(
        HEADER
        + "routed,p1,ED,0,1,0.0,0.9,0.8,0.0\n"  # base: RV drawn where none is labelled
        + "routed,p1,ED,1,2,0.5,1.0,0.9,0.7\n"
        + "routed,p1,ED,2,3,1.0,0.6,nan,nan\n"
        + "routed,p1,ED,3,0,nan,nan,nan,0.0\n"  # non-cardiac: counted in "all" only
    )
    (tmp_path / "agreement.csv").write_text(
        "method,quantity,n,bias,sd,loa_low,loa_high\nrouted,lvef_pct,1,1.5,1,-0.5,3.5\n"
    )
    (line,) = summarise(str(tmp_path))
    assert "base 90.00 / 80.00 / 0.00 | middle 100.00 / 90.00 / 70.00 | apex 60.00 / nan / nan" in line
    assert "all 61.25" in line  # (0.9 + 0.8 + 0 + 1 + 0.9 + 0.7 + 0.6 + 0) / 8 scored values
    assert "zeros 1" in line and "LVEF +1.50 [-0.5, +3.5]" in line
