"""What a segmented study tells a reader: the JSON report and the overlay montage.

Pure functions from a `StudySegmentation` to a dict or a figure file; the CLI writes them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .io._atomic import atomic_path
from .labels import LABEL_NAMES, REGION_NAMES
from .metrics import quality_flags, slice_gaps
from .pipeline import Segmentation, StudySegmentation
from .types import Study

__all__ = ["study_report", "save_overlay"]

#: RGBA colour of each structure in overlays: LVBP red, LVM green, RVBP blue (the ACDC figures' habit).
LABEL_COLOURS: dict[int, tuple[float, float, float, float]] = {
    1: (0.95, 0.20, 0.15, 0.45),
    2: (0.15, 0.80, 0.25, 0.45),
    3: (0.20, 0.45, 0.95, 0.45),
}


def _finite(value: float) -> float | None:
    """JSON has no NaN: unknown numbers become null."""
    return None if value is None or not math.isfinite(value) else round(float(value), 3)


#: longest side, in pixels, of each image drawn in the overlay: a bounded figure whatever the input.
OVERLAY_MAX_PIXELS = 256


def _phase_flags(seg: Segmentation) -> list[str]:
    """Quality flags of the labels plus those of the geometry and the input."""
    flags = set(quality_flags(seg.labels))
    if seg.stack.shape[0] < 2:
        flags.add("single_slice")  # no volume from one slice
    if slice_gaps(seg.stack.slice_positions):
        flags.add("slice_gap")
    if seg.stack.pixels.size and not np.any(seg.stack.pixels):
        flags.add("blank_image")  # all zero: never labelled
    return sorted(flags)


def _phase_entry(seg: Segmentation) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "phase": seg.stack.phase,
        "source": seg.stack.source,
        "shape_zyx": list(seg.stack.shape),
        "spacing_mm": [round(s, 4) for s in seg.stack.spacing],
        "volumes_ml": {k: _finite(v) for k, v in seg.volumes_ml().items()},
        "quality_flags": _phase_flags(seg),
        "slice_positions_mm": [round(float(p), 3) for p in seg.stack.slice_positions],
        "slice_gaps": slice_gaps(seg.stack.slice_positions),
        "timings_ms": {k: round(v, 2) for k, v in seg.timings_ms.items()},
    }
    if seg.regions is not None:
        confidence = seg.region_confidence
        entry["slices"] = [
            {"index": z, "region": REGION_NAMES[int(r)], "confidence": round(float(c), 4)}
            for z, (r, c) in enumerate(zip(seg.regions, confidence))
        ]
    return entry


def study_report(result: StudySegmentation, study: Study | None = None) -> dict[str, Any]:
    """The JSON-ready report of one study.

    Holds the regions per slice, volumes (mL), EF (%), LV mass (g), quality flags, timings (ms)
    and provenance; NaN values (EF of an empty ventricle, SV and EF of a one-phase study,
    volumes of a one-slice stack) are written as null. Study flags: ``single_phase``; phase
    flags add ``single_slice``, ``slice_gap`` (``slice_gaps`` gives each gap's size) and
    ``blank_image`` (all zero, never labelled) to :func:`cmrsdk.metrics.quality_flags`.
    """
    single = len(result.phases) == 1
    report: dict[str, Any] = {
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "ed_index": result.ed_index,
        "es_index": None if single else result.es_index,
        # one phase: no ES, so volumes at that phase only; SV and EF are null, never 0
        "flags": ["single_phase"] if single else [],
        "measures": {k: _finite(v) for k, v in result.measures.as_dict().items()},
        "lv_volume_curve_ml": [_finite(v) for v in result.lv_volume_curve_ml],
        "phases": [_phase_entry(seg) for seg in result.phases],
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
        "provenance": result.phases[0].provenance,
    }
    if study is not None:
        info = study.info
        report["study"] = {k: v for k, v in vars(info).items() if v not in (None, "")}
    return report


def save_overlay(path: str | Path, result: StudySegmentation, *, max_slices: int = 12, dpi: int = 110) -> Path:
    """A montage PNG: ED on the top row, ES below, structures in colour, region on each slice.

    Parameters
    ----------
    path : output .png path (written to a temporary name, then renamed).
    result : the segmented study.
    max_slices : at most this many slices per phase, evenly spread from base to apex.

    Returns
    -------
    The path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: scanner consoles and CI have no display
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = [("ED", result.ed)] if len(result.phases) == 1 else [("ED", result.ed), ("ES", result.es)]
    z = max(seg.labels.shape[0] for _, seg in rows)
    cols = min(z, max_slices)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.8 * len(rows)), squeeze=False, facecolor="black")
    for row, (name, seg) in enumerate(rows):
        picks = np.unique(np.linspace(0, seg.labels.shape[0] - 1, cols).round().astype(int))
        for col in range(cols):
            ax = axes[row, col]
            ax.set_axis_off()
            if col >= len(picks):
                continue
            k = picks[col]
            # every image drawn at most OVERLAY_MAX_PIXELS a side: memory and time stay bounded
            step = max(1, -(-max(seg.labels.shape[1:]) // OVERLAY_MAX_PIXELS))
            image = seg.stack.pixels[k, ::step, ::step]
            lo, hi = np.percentile(image, (1, 99)) if image.size else (0.0, 1.0)
            ax.imshow(image, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
            rgba = np.zeros((*image.shape, 4), np.float32)
            for label, colour in LABEL_COLOURS.items():
                rgba[seg.labels[k, ::step, ::step] == label] = colour
            ax.imshow(rgba, interpolation="nearest")
            region = REGION_NAMES[int(seg.regions[k])] if seg.regions is not None else ""
            ax.set_title(f"{name} z{k} {region}", color="white", fontsize=7)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, facecolor="black")
    finally:
        plt.close(fig)
    return path
