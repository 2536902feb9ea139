"""Evaluation outputs as text: CSV files and GitHub Markdown tables."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..io._atomic import atomic_path
from .stats import STRUCTURE_NAMES, SliceScore

__all__ = ["write_csv", "markdown_table"]


def _slice_row(score: SliceScore) -> dict[str, object]:
    """A `SliceScore` as a flat row: ``dice_<label>``, ``truth_px_<label>`` and
    ``predicted_px_<label>`` columns per structure (pixel counts empty where unknown)."""
    row = asdict(score)
    values = row.pop("dice")
    row.update({f"dice_{name}": value for name, value in zip(STRUCTURE_NAMES, values)})
    for key, column in (("truth_pixels", "truth_px"), ("predicted_pixels", "predicted_px")):
        counts = row.pop(key)
        row.update({f"{column}_{name}": "" if counts is None else counts[j] for j, name in enumerate(STRUCTURE_NAMES)})
    return row


def write_csv(path: str | Path, rows: Sequence[dict[str, object]] | Sequence[SliceScore]) -> Path:
    """Rows (dicts or `SliceScore`s, one ``dice_<label>`` column per structure) as a CSV file with a header."""
    path = Path(path)
    dict_rows = [_slice_row(r) if isinstance(r, SliceScore) else dict(r) for r in rows]
    if not dict_rows:
        raise InputError(f"nothing to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict_rows[0]))
        writer.writeheader()
        writer.writerows(dict_rows)
    return path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return (
            "–" if not math.isfinite(value) else f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"
        )
    return str(value)


def markdown_table(rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (floats to two decimals, NaN as an en dash)."""
    if not rows:
        return ""
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
