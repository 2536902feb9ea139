"""scripts/missed_probabilities.py: the U-Net's own probabilities on the slices the pipeline leaves empty."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from missed_probabilities import auc, rows_of, summary  # noqa: E402

import cmrsdk  # noqa: E402
from cmrsdk import Pipeline  # noqa: E402
from cmrsdk.io import read_study  # noqa: E402


def test_auc_is_mann_whitney_u_over_the_pairs() -> None:
    rng = np.random.default_rng(0)
    positive, negative = rng.random(17).round(1), rng.random(23).round(1)  # ties on purpose
    u = mannwhitneyu(positive, negative, alternative="two-sided").statistic
    assert auc(positive, negative) == pytest.approx(u / (17 * 23))
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert np.isnan(auc(np.array([]), np.array([0.5])))


def test_summary_counts_misses_and_what_the_network_drew() -> None:
    def row(label: str, manual: int, drawn: int, network: int, p: float) -> dict:
        return dict(label=label, manual_px=manual, drawn_px=drawn, network_px=network, max_probability=p)

    rows = [
        row("RVBP", 40, 0, 12, 0.7),  # a miss the network drew and the pipeline removed
        row("RVBP", 30, 0, 0, 0.3),  # a miss the network never drew
        row("RVBP", 0, 0, 0, 0.1),  # both empty
        row("RVBP", 50, 45, 50, 0.99),  # drawn: neither a miss nor empty
    ]
    line = next(s for s in summary(rows).splitlines() if s.startswith("| RVBP"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:3] == ["2", "1"]
    assert cells[3] == "0.500 [0.400, 0.600]"
    assert cells[4] == "1"
    assert cells[6] == "1.00"


def test_rows_read_the_pipelines_own_passes(shared_data: Path) -> None:
    folder = shared_data / "acdc" / "training" / "patient005"
    pipeline = Pipeline(cmrsdk.DEMO_BUNDLE, systolic_base=False, threads=2)
    rows = rows_of("shipped", str(folder), pipeline)
    result = pipeline.segment_study(read_study(folder))
    z = result.ed.labels.shape[0]
    assert len(rows) == 2 * z * 3  # ED and ES, every slice, three structures
    for r in rows:
        seg = result.ed if r["phase"] == "ED" else result.es
        code = {"LVBP": 1, "LVM": 2, "RVBP": 3}[r["label"]]
        assert r["drawn_px"] == int((seg.labels[r["slice"]] == code).sum())
        assert r["manual_px"] == int((seg.stack.labels[r["slice"]] == code).sum())
        if r["network_px"]:  # an argmax pixel holds at least a quarter of four classes' probability
            assert r["max_probability"] >= 0.25
    # the mid-ventricular slices hold all three, drawn by the network with near certainty
    middle = [r for r in rows if r["phase"] == "ED" and r["slice"] == z // 2]
    assert all(r["network_px"] > 100 and r["max_probability"] > 0.99 for r in middle)
