"""The evaluation's figures as PNG files: Dice from base to apex (the paper's Figure 2), Bland-Altman.

matplotlib (``cmrsdk[io]``) is imported on the first call, with the Agg backend: no display needed.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io._atomic import atomic_path
from .stats import STRUCTURE_NAMES, agreement

__all__ = ["save_dice_along_heart", "save_bland_altman", "bland_altman_title"]


def save_dice_along_heart(path: str | Path, curves: dict[str, np.ndarray], *, title: str = "") -> Path:
    """Figure 2: mean interpolated Dice base→apex per method, one panel per label (PNG).

    ``curves`` maps a method name to its (S, 3, P) array from `dice_along_heart`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for j, name in enumerate(STRUCTURE_NAMES):
        ax = axes[j]
        for method, c in curves.items():
            grid = np.linspace(0, 100, c.shape[-1])
            with warnings.catch_warnings():
                # a structure nobody annotated has no curve: NaN, drawn as nothing
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(grid, np.nanmean(c[:, j], axis=0) * 100.0, label=method)
        ax.set_title(name)
        ax.set_xlabel("position base → apex (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice (%)")
    axes[-1].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def save_bland_altman(
    path: str | Path, measured: Sequence[float], reference: Sequence[float], *, quantity: str
) -> Path:
    """A Bland-Altman plot of one quantity (e.g. "LVEF (%)") with bias and limits of agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, r = np.asarray(measured, float), np.asarray(reference, float)
    stats_ = agreement(m, r)
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.scatter((m + r) / 2, m - r, s=12)
    for key, style in (("bias", "-"), ("loa_low", "--"), ("loa_high", "--")):
        if math.isfinite(stats_[key]):
            ax.axhline(stats_[key], color="k", linestyle=style, linewidth=1)
    ax.set_xlabel(f"mean of automatic and manual {quantity}")
    ax.set_ylabel(f"automatic − manual {quantity}")
    ax.set_title(bland_altman_title(stats_), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def bland_altman_title(stats_: dict[str, float]) -> str:
    """The figure's title from `agreement`'s dict: bias and limits, n used and left out; no NaN text."""
    n, excluded = int(stats_["n"]), int(stats_.get("excluded", 0))
    left_out = f", {excluded} left out (no value)" if excluded else ""
    if not math.isfinite(stats_["bias"]):
        return f"n = {n}: no limits of agreement{left_out}"
    return f"bias {stats_['bias']:.2f}, LoA [{stats_['loa_low']:.2f}, {stats_['loa_high']:.2f}], n = {n}{left_out}"


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
