"""What a segmented study tells a reader: the JSON report and the overlay montage (drawn by `cmrsdk.montage`).

Pure functions from a `StudySegmentation` to a dict or a figure file; the CLI writes them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .labels import LABEL_NAMES, REGION_NAMES
from .metrics import quality_flags
from .pipeline import Segmentation, StudySegmentation
from .types import Study

__all__ = ["study_report", "save_overlay"]


def _finite(value: float) -> float | None:
    """JSON has no NaN: unknown numbers become null."""
    return None if value is None or not math.isfinite(value) else round(float(value), 3)


def _phase_entry(seg: Segmentation) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "phase": seg.stack.phase,
        "source": seg.stack.source,
        "shape_zyx": list(seg.stack.shape),
        "spacing_mm": [round(s, 4) for s in seg.stack.spacing],
        "volumes_ml": {k: _finite(v) for k, v in seg.volumes_ml().items()},
        "quality_flags": quality_flags(seg.labels),
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
    and provenance; NaN values (EF of an empty ventricle) are written as null.
    """
    report: dict[str, Any] = {
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "ed_index": result.ed_index,
        "es_index": result.es_index,
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
    """A montage PNG: ED above, ES below, zoomed on the heart, radiologically oriented (`cmrsdk.montage`).

    Parameters
    ----------
    path : output .png path (written to a temporary name, then renamed).
    result : the segmented study.
    max_slices : at most this many slices per phase, evenly spread over the heart.
    dpi : scales the tiles (110 gives 144 px tiles); kept for callers of the matplotlib version.

    Returns
    -------
    The path written.
    """
    from .montage import save_png_bytes, study_montage_png

    tile = max(64, min(320, int(round(144 * dpi / 110))))
    return save_png_bytes(path, study_montage_png(result, max_slices=max_slices, tile=tile))
