"""cohort.png: what a reader looks at before trusting a cohort's table.

Distributions of LVEF and RVEF, of the ventricular volumes and of LV mass, with the count,
median and interquartile range in each title, and the counts of statuses and quality flags.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io._atomic import atomic_path

__all__ = ["save_cohort_figure"]


def _values(rows: Sequence[Mapping[str, Any]], column: str) -> np.ndarray:
    values = [r.get(column) for r in rows if r.get("status") == "ok"]
    return np.array([float(v) for v in values if isinstance(v, (int, float))], dtype=np.float64)


def _title(name: str, values: np.ndarray, unit: str) -> str:
    if values.size == 0:
        return f"{name}: no values"
    q1, median, q3 = np.percentile(values, (25, 50, 75))
    return f"{name} (n={values.size})\nmedian {median:.1f} {unit} [IQR {q1:.1f}-{q3:.1f}]"


def save_cohort_figure(path: str | Path, rows: Sequence[Mapping[str, Any]], *, dpi: int = 100) -> Path:
    """Draw the cohort's figure from the table's rows (dicts keyed by `cmrsdk.cohort.table.COLUMNS`).

    Panels: LVEF, RVEF (%, with the usual normal ranges shaded), LV and RV EDV and ESV (mL),
    LV mass (g), and a bar chart of statuses and of the quality flags (ED and ES counted apart).
    Only "ok" rows enter the distributions. Written to a temporary name, then renamed.

    Returns
    -------
    The path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: batches run on servers
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for ax, column, name, normal in (
        (axes[0, 0], "lvef_pct", "LVEF", (52, 72)),
        (axes[0, 1], "rvef_pct", "RVEF", (45, 70)),
    ):
        values = _values(rows, column)
        ax.axvspan(*normal, color="tab:green", alpha=0.12, label=f"typical adult range {normal[0]}-{normal[1]} %")
        if values.size:
            ax.hist(values, bins=np.linspace(0, 100, 41), color="tab:blue")
        ax.set_title(_title(name, values, "%"), fontsize=9)
        ax.set_xlabel(f"{name} (%)")
        ax.set_ylabel("studies")
        ax.legend(fontsize=7, loc="upper left")
    for ax, (lv, rv, name) in (
        (axes[0, 2], ("lvedv_ml", "rvedv_ml", "EDV")),
        (axes[1, 0], ("lvesv_ml", "rvesv_ml", "ESV")),
    ):
        both = np.concatenate([_values(rows, lv), _values(rows, rv)])
        bins = np.linspace(both.min(), both.max() + 1e-6, 31) if both.size else 30  # one scale for LV and RV
        for column, colour in ((lv, "tab:red"), (rv, "tab:blue")):
            values = _values(rows, column)
            if values.size:
                ax.hist(
                    values, bins=bins, alpha=0.55, color=colour, label=_title(column[:2].upper() + name, values, "mL")
                )
        ax.set_title(f"{name}: LV red, RV blue", fontsize=9)
        ax.set_xlabel(f"{name} (mL)")
        ax.set_ylabel("studies")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    mass = _values(rows, "lv_mass_g")
    if mass.size:
        axes[1, 1].hist(mass, bins=30, color="tab:green")
    axes[1, 1].set_title(_title("LV mass", mass, "g"), fontsize=9)
    axes[1, 1].set_xlabel("LV mass (g)")
    axes[1, 1].set_ylabel("studies")
    counts: Counter[str] = Counter(f"status {r.get('status')}" for r in rows)
    for r in rows:
        counts.update(flag for flag in str(r.get("quality_flags") or "").split(";") if flag)
    names = sorted(counts, key=lambda n: (not n.startswith("status"), n))
    ax = axes[1, 2]
    bars = ax.barh(
        range(len(names)),
        [counts[n] for n in names],
        color=["tab:gray" if n.startswith("status") else "tab:orange" for n in names],
    )
    ax.bar_label(bars, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(f"statuses and quality flags ({len(rows)} studies)", fontsize=9)
    ax.set_xlabel("studies")
    fig.suptitle(f"cmrsdk cohort: {sum(1 for r in rows if r.get('status') == 'ok')} of {len(rows)} studies measured")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path
