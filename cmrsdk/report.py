"""What a segmented study tells a reader: the JSON report, the overlay montage (drawn by `cmrsdk.montage`)
and, for a study with a known ground truth, the agreement with it.

Pure functions from a `StudySegmentation` to a dict or a figure file; the CLI writes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .labels import LABEL_NAMES, REGION_NAMES, STRUCTURES
from .metrics import (
    ES_LV_LOST_SLICES,
    cardiac_measures,
    dice,
    es_lv_lost_slices,
    quality_flags,
    slice_gaps,
    ventricles_not_found,
)
from .pipeline import Segmentation, StudySegmentation
from .reference_ranges import body_surface_area_m2, indexed_measures, unused_biometrics
from .types import SINGLE_PHASE, Stack, Study
from ._warn import warn

__all__ = ["study_report", "save_overlay", "ground_truth_agreement"]


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: unknown numbers become null."""
    return None if value is None or not math.isfinite(value) else round(float(value), 3)


def _phase_flags(seg: Segmentation) -> list[str]:
    """Quality flags of the labels plus those of the geometry and the input."""
    dy, dx = seg.stack.spacing[1:]
    flags = set(quality_flags(seg.labels, pixel_mm2=dy * dx)) | set(seg.flags)
    if seg.stack.shape[0] < 2:
        flags.add("single_slice")  # no volume from one slice
    if slice_gaps(_positions(seg)):
        flags.add("slice_gap")
    if seg.stack.pixels.size and not np.any(seg.stack.pixels):
        flags.add("blank_image")  # all zero: never labelled
    if _repeated_slice(seg):
        flags.add("repeated_slice")
    if seg.stack.shape[0] >= 2 and seg.stack.spacing[0] > THICK_SLICE_MM:
        flags.add("thick_slices")
    if seg.stack.shape[0] >= 2 and seg.stack.spacing[0] < THIN_SLICE_MM:
        flags.add("thin_slices")
    return sorted(flags)


#: an LVEDV under this (mL) is smaller than an adult's (the 100 shared ACDC patients' smallest: 49
#: mL): voxel sizes misstated (sweep 27: an ACDC NIfTI with its pixdim lost measured 14.4 mL for
#: 289.9, unflagged), or a child's heart
MIN_ADULT_LVEDV_ML = 40.0


#: slices further apart than this (mm) lie outside what the networks were trained and tested on
#: (ACDC 5-10 mm, M&Ms 9.6-10, Sunnybrook 10): at 20 mm sweep 15 saw the RVEDV move by up to 93 mL
THICK_SLICE_MM = 12.0

#: slices closer than this (mm) are no short-axis cine's (5-10 mm): a 3-D acquisition, voxel sizes
#: lost (a re-save that wrote 1 mm), or a cine's phases stacked as slices (sweep 28: SimpleITK's
#: series reader on a whole cine folder gave 240 slices 0.46 mm apart, LVEDV 145 mL for 187)
THIN_SLICE_MM = 3.0


#: neighbouring slices closer than this share of the median step are one position acquired twice.
REPEAT_RATIO = 0.25


def _repeated_slice(seg: Segmentation) -> bool:
    """Whether a slice is in the stack twice: two positions much closer than the slice step (a
    breath-hold repeated, kept beside the first), or neighbours with identical pixels (a slice
    copied by an export): either is counted twice in the volumes."""
    positions = np.sort(_positions(seg))
    steps = np.diff(positions)
    if len(steps) >= 2 and np.median(steps) > 0 and np.any(steps < REPEAT_RATIO * np.median(steps)):
        return True
    pixels = seg.stack.pixels
    return any(np.any(pixels[z]) and np.array_equal(pixels[z], pixels[z + 1]) for z in range(len(pixels) - 1))


def _same_positions(a: Segmentation, b: Segmentation, atol_mm: float = 0.5) -> bool:
    pa, pb = np.sort(_positions(a)), np.sort(_positions(b))
    return pa.shape == pb.shape and bool(np.allclose(pa, pb, atol=atol_mm))


def _positions(seg: Segmentation) -> np.ndarray:
    """float64 (Z,) slice positions in mm (a `Stack` always has them once made)."""
    return np.asarray(seg.stack.slice_positions, dtype=np.float64)


def _phase_name(seg: Segmentation, index: int, result: StudySegmentation) -> str | None:
    """A study of two phases: "ED" and "ES" as the pipeline chose them. A cine: each frame its
    reader's name, "frame N" where that name claims ED or ES (a reader names a cine's first
    frame ED before the volume curve is known); ``ed_index`` and ``es_index`` say which. One
    phase: `SINGLE_PHASE` (a reader names it ED by default, not because it is)."""
    if len(result.phases) == 1:
        return SINGLE_PHASE
    if len(result.phases) <= 2 and index in (result.ed_index, result.es_index):
        return "ED" if index == result.ed_index else "ES"
    return f"frame {index}" if seg.stack.phase in ("ED", "ES") else seg.stack.phase


def _phase_entry(seg: Segmentation, name: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "phase": name,
        "source": seg.stack.source,
        "shape_zyx": list(seg.stack.shape),
        "spacing_mm": [round(s, 4) for s in seg.stack.spacing],
        "volumes_ml": {k: _finite(v) for k, v in seg.volumes_ml().items()},
        "quality_flags": _phase_flags(seg),
        "slice_positions_mm": [round(float(p), 3) for p in _positions(seg)],
        "slice_gaps": slice_gaps(_positions(seg)),
        "timings_ms": {k: round(v, 2) for k, v in seg.timings_ms.items()},
    }
    if "network_window" in seg.provenance:
        # where this phase's U-Net window sat (`cmrsdk.pipeline.network_window`): a re-implementation
        # checks its crop against it (docs/CONTRACT.md)
        entry["network_window"] = seg.provenance["network_window"]
    confidence = seg.region_confidence
    if seg.regions is not None and confidence is not None:
        entry["slices"] = [
            {"index": z, "region": REGION_NAMES[int(r)], "confidence": round(float(c), 4)}
            for z, (r, c) in enumerate(zip(seg.regions, confidence))
        ]
    return entry


def study_report(result: StudySegmentation, study: Study | None = None) -> dict[str, Any]:
    """The JSON-ready report of one study.

    Holds the regions per slice, volumes (mL), EF (%), LV mass (g), quality flags, timings (ms)
    and provenance; NaN values (EF of an empty ventricle, SV and EF of a one-phase study,
    volumes of a one-slice stack) are written as null. ``ed_index`` and ``es_index``: which of
    ``phases`` are ED and ES, both null for a one-phase study (flag ``single_phase``: no ED or ES
    was determined, its one phase is ``phases[0]``). ``ed_es_from``: "input" (the study named
    ED and ES), "lv_volume" (the pipeline chose them from the LV volume curve), or null (one
    phase, or no ``study`` given). Study flags: ``single_phase`` (the one phase's blood-pool
    volumes are ``lv_volume_ml`` and ``rv_volume_ml``; every ED and ES measure is null, and so are
    ``ed_index`` and ``es_index``, as nothing says which phase it is), ``no_volume_change`` (ED
    and ES are one phase: the LV volume never changes; ESV, SV and EF null),
    ``phase_without_lv`` (a phase of the cine shows no LV while others do: never taken for ES),
    ``ed_es_coverage_differs`` (ED and ES hold other slice positions: the ES basal RV rule is not
    applied, and the volumes compare unlike stacks), and
    ``lv_esv_exceeds_edv`` / ``rv_esv_exceeds_edv`` (a ventricle larger at ES than at ED: its SV
    and EF are withheld as null, its volumes kept), ``es_lv_lost`` (ES has no LV on
    `cmrsdk.metrics.ES_LV_LOST_SLICES` or more slices where ED's is large: a failed end-systole)
    and ``lvedv_below_adult`` (LVEDV under `MIN_ADULT_LVEDV_ML`: voxel sizes misstated, or a
    child), ``ed_es_swapped`` (the input named ED and ES, and both ventricles measure larger at its
    ES: the names are likely the wrong way round; volumes kept as named, SV and EF withheld); phase
    flags add ``single_slice``, ``slice_gap`` (``slice_gaps`` gives each gap's size),
    ``repeated_slice`` (a position twice, or neighbours with identical pixels: counted twice) and
    ``blank_image`` (all zero, never labelled), ``thick_slices`` / ``thin_slices`` (slices over
    `THICK_SLICE_MM` or under `THIN_SLICE_MM` apart), ``lv_not_ringed`` (`cmrsdk.metrics.quality_flags`
    given the pixel area) and the pipeline's own (`Segmentation.flags`:
    ``field_edge``) to :func:`cmrsdk.metrics.quality_flags`.
    ``es_basal_rv_dropped_slice``: where the pipeline judged ES's basal RV (`cmrsdk.systole`),
    the slice whose RV it left out as atrium, or null. With a ``study`` whose height and weight
    are known and used (`cmrsdk.reference_ranges.unused_biometrics`), ``body_surface_area_m2``
    (Mosteller) and ``indexed_measures`` (`cmrsdk.reference_ranges.INDEXED`: mL/m², g/m²), else null.
    """
    single = len(result.phases) == 1
    measures = {k: _finite(v) for k, v in result.measures.as_dict().items()}
    # one phase: no ES, so volumes at that phase only; SV and EF are null, never 0
    flags = ["single_phase"] if single else []
    if single:
        # a reader calls its one phase ED by default: its volumes are of an unknown phase, never
        # EDVs to be compared with an ED range or coded as end-diastolic in the SR
        measures["lv_volume_ml"], measures["rv_volume_ml"] = measures["lvedv_ml"], measures["rvedv_ml"]
        for key in ("lvedv_ml", "lvesv_ml", "rvedv_ml", "rvesv_ml"):
            measures[key] = None
    curve = np.asarray(result.lv_volume_curve_ml, dtype=np.float64)
    if not single and not _same_positions(result.ed, result.es):
        # ED and ES cover the heart differently (a slice missing at one of them): the volumes
        # compare unlike stacks, and the ES basal RV rule (`cmrsdk.systole`) is not applied
        flags.append("ed_es_coverage_differs")
    if not single and (curve == 0).any() and (curve > 0).any():
        # a phase without an LV in a cine with one (a blank frame, a failed segmentation): left
        # out of the choice of ES (`Pipeline.segment_study`), and said here
        flags.append("phase_without_lv")
    if not single and result.ed_index == result.es_index and (curve > 0).any():
        # the LV volume never changes (a static series, frames repeated): no ES was found, and
        # (an LV found at no phase is ``lv_not_found``'s, not a heart that does not beat: sweep 40)
        # an EF of 0 % would read as a heart that does not beat
        # an ES volume would be the ED volume again: withheld as SV and EF are
        for key in ("lvesv_ml", "lvsv_ml", "lvef_pct", "rvesv_ml", "rvsv_ml", "rvef_pct"):
            measures[key] = None
        flags.append("no_volume_change")
    flags += _not_found(result, measures, single)
    phases = [_phase_entry(seg, _phase_name(seg, i, result)) for i, seg in enumerate(result.phases)]
    rv_es = _rv_smallest_elsewhere([p["volumes_ml"]["RVBP"] for p in phases], result.es_index)
    if rv_es is not None:
        flags.append("rv_es_differs")
    named = _named_off_curve(result, study)
    if named is not None:
        flags.append("ed_es_off_curve")
    measured = result.measured if result.measured is not None else result.measures
    for side in ("lv", "rv"):
        stroke = _finite(getattr(measured, f"{side}sv_ml"))
        if stroke is not None and stroke < 0:
            # a ventricle measured larger at ES than at ED: a failed segmentation, or one that
            # barely ejects (held-out ACDC patient020: manual RVEF 3.9 %, measured -2.9 %); a
            # negative EF is never real, so SV and EF are withheld (null) and flagged, volumes kept
            measures[f"{side}sv_ml"] = measures[f"{side}ef_pct"] = None
            flags.append(f"{side}_esv_exceeds_edv")
    if {"lv_esv_exceeds_edv", "rv_esv_exceeds_edv"} <= set(flags) and _ed_es_from(result, study) == "input":
        # both ventricles "eject" backwards: the signature of ED and ES named the wrong way round
        # (an Info.cfg with ED 12, ES 1: LV 223 -> 290 mL, RV 69 -> 140; sweep 32), not of a failed mask
        flags.append("ed_es_swapped")
    if not single and "ed_es_coverage_differs" not in flags:
        if es_lv_lost_slices(result.ed.labels, result.es.labels) >= ES_LV_LOST_SLICES:
            flags.append("es_lv_lost")
    lvedv = measures.get("lvedv_ml")
    if lvedv is not None and 0 < lvedv < MIN_ADULT_LVEDV_ML:
        flags.append("lvedv_below_adult")
    report: dict[str, Any] = {
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        # one phase: neither ED nor ES was determined (a reader names it ED by default); an index
        # 0 read as "phase 0 is ED", as an EDV of it read as end-diastolic
        "ed_index": None if single else result.ed_index,
        "es_index": None if single else result.es_index,
        "ed_es_from": _ed_es_from(result, study),
        "flags": flags,
        "measures": measures,
        "lv_volume_curve_ml": [_finite(v) for v in result.lv_volume_curve_ml],
        "phases": phases,
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
        "provenance": {k: v for k, v in result.phases[0].provenance.items() if k != "network_window"},
    }
    if rv_es is not None:
        report["rv_smallest_index"], report["rv_volume_curve_ml"] = rv_es
    if named is not None:
        report["lv_largest_index"], report["lv_smallest_index"] = named
    if not single and "systolic_base_rv_dropped_slice" in result.es.provenance:
        # the most basal ES RV left out as atrium (cmrsdk.systole): which slice, None for none
        report["es_basal_rv_dropped_slice"] = result.es.provenance["systolic_base_rv_dropped_slice"]
        other = _basal_rv_other_decision(result.es.provenance, measures)
        if other is not None:
            report["es_basal_rv_other_decision"] = other
            flags.append("es_basal_rv_uncertain")
    report["body_surface_area_m2"] = None  # unknown without a study's height and weight
    report["indexed_measures"] = {k: None for k in indexed_measures(measures, None)}
    if study is not None:
        info = study.info
        report["study"] = {k: v for k, v in vars(info).items() if v not in (None, "")}
        for why in dict.fromkeys(unused_biometrics(info.height_cm, info.weight_kg).values()):
            # kept in "study" as the input gives it; the caller collects the warning into report["warnings"]
            warn(f"{info.source or 'study'}: {why}: no body surface area or indexed values", stacklevel=2)
        bsa = body_surface_area_m2(info.height_cm, info.weight_kg)
        report["body_surface_area_m2"] = None if bsa is None else round(bsa, 4)
        report["indexed_measures"] = {k: _finite(v) for k, v in indexed_measures(measures, bsa).items()}
    return report


#: the measures of each ventricle read at ED, at ES, and from both phases
_SIDE_MEASURES = {
    "lv": (("lvedv_ml", "lv_mass_g", "lv_volume_ml"), ("lvesv_ml",), ("lvsv_ml", "lvef_pct")),
    "rv": (("rvedv_ml", "rv_volume_ml"), ("rvesv_ml",), ("rvsv_ml", "rvef_pct")),
}


def _not_found(result: StudySegmentation, measures: dict[str, Any], single: bool) -> list[str]:
    """``lv_not_found`` / ``rv_not_found``: ED or ES (or the one phase) shows none of that
    ventricle's blood pool (`cmrsdk.metrics.ventricles_not_found`), so its measures there are
    not measured, never 0 mL. Sets those measures, and SV and EF, to None in ``measures``
    (``lv_volume_ml`` and ``rv_volume_ml`` of a one-phase study too)."""
    phases = [result.ed] if single else [result.ed, result.es]
    missing = ventricles_not_found([(seg.labels, seg.volumes_ml()) for seg in phases])
    flags = []
    for side in ("lv", "rv"):
        if not any(missing[side]):
            continue
        flags.append(f"{side}_not_found")
        at_ed, at_es, both = _SIDE_MEASURES[side]
        gone = both + (at_ed if missing[side][0] else ()) + (at_es if len(phases) > 1 and missing[side][1] else ())
        for key in gone:
            if key in measures:
                measures[key] = None
    return flags


#: the ES basal RV rule's ratios (`cmrsdk.systole`) it decides by a narrow margin: there the RV's
#: measures are given the other way too (``es_basal_rv_uncertain``). On the 20 held-out ACDC
#: patients and 4 M&Ms subjects, 6 of 24 most basal ES RV slices fall in it, 2 of them decided
#: against the manual contours (M&Ms H1N8S6 0.39, patient030 0.51); outside it, 2 of 18 (0.65, 0.84).
#: Sweep 15 moved H1N8S6's RVEF from 67.1 to 52-56 % with a noise level or a 15 degree turn.
UNCERTAIN_BASAL_RV = (0.3, 0.55)


def _basal_rv_other_decision(provenance: dict[str, Any], measures: dict[str, Any]) -> dict[str, Any] | None:
    """RVESV and RVEF had the ES basal RV rule decided the other way, where its ratio lies in
    `UNCERTAIN_BASAL_RV` and the RV is measured; else None."""
    ratio = provenance.get("systolic_base_rv_ratio")
    rvedv, rvesv = _finite(measures.get("rvedv_ml")), _finite(measures.get("rvesv_ml"))
    if ratio is None or not UNCERTAIN_BASAL_RV[0] <= ratio < UNCERTAIN_BASAL_RV[1] or not rvedv or rvesv is None:
        return None
    dropped = provenance.get("systolic_base_rv_dropped_slice") is not None
    other = rvesv + provenance["systolic_base_rv_ml"] if dropped else rvesv - provenance["systolic_base_rv_ml"]
    return {
        "slice": provenance["systolic_base_rv_slice"],
        "area_ratio": round(float(ratio), 3),
        "decided": "left out as atrium" if dropped else "kept as ventricle",
        "rvesv_ml": round(other, 3),
        "rvef_pct": round(100.0 * (rvedv - other) / rvedv, 3),
    }


#: the RV's smallest volume, this much below the RV at the LV's end-systole, flags ``rv_es_differs``
RV_ES_RATIO = 1.2


def _rv_smallest_elsewhere(rv_ml: list[float | None], es_index: int) -> tuple[int, list[float | None]] | None:
    """A cine whose RV is smallest far from the LV's ES: (that phase's index, the RV volume
    curve, mL) where the RV at the LV's ES is over `RV_ES_RATIO` times its smallest volume
    (Sunnybrook SCD0000201: 103 mL at the LV's ES, 63 mL four frames later), else None.

    ``rv_ml`` is each phase's RV blood-pool volume as report.json gives it (None where one
    slice gives none). The RVESV stays the one at the LV's ES (one ES per study, as the reference
    ranges assume); the flag says that the RV ejects on another beat of the curve, or that its
    contours fail there."""
    if len(rv_ml) <= 2:
        return None
    curve = np.array([np.nan if v is None else v for v in rv_ml], dtype=np.float64)
    beating = np.flatnonzero(np.isfinite(curve) & (curve > 0))
    at_es = curve[es_index]
    if not len(beating) or not np.isfinite(at_es) or at_es <= 0:
        return None
    smallest = int(beating[np.argmin(curve[beating])])
    if at_es <= RV_ES_RATIO * curve[smallest]:
        return None
    return smallest, list(rv_ml)


#: a cine's named ES holding this many times the LV curve's smallest volume, or its named ED this
#: many times less than the largest, flags ``ed_es_off_curve``
LV_NAMED_RATIO = 1.2


def _named_off_curve(result: StudySegmentation, study: Study | None) -> tuple[int, int] | None:
    """(largest, smallest) phase of the LV volume curve where a cine's input named an ED or ES
    far from them (over `LV_NAMED_RATIO`), else None: Sunnybrook SCD0000101 with ES named three
    frames late measured LVEF 8.8 % for 29.8 %, flagged only for its RV (sweep 15)."""
    if _ed_es_from(result, study) != "input" or len(result.phases) <= 2:
        return None
    curve = np.asarray(result.lv_volume_curve_ml, dtype=np.float64)
    beating = np.flatnonzero(np.isfinite(curve) & (curve > 0))
    if len(beating) <= 2:
        return None
    largest = int(beating[np.argmax(curve[beating])])
    smallest = int(beating[np.argmin(curve[beating])])
    at_ed, at_es = curve[result.ed_index], curve[result.es_index]
    late_es = not np.isfinite(at_es) or at_es > LV_NAMED_RATIO * curve[smallest]
    small_ed = not np.isfinite(at_ed) or at_ed * LV_NAMED_RATIO < curve[largest]
    return (largest, smallest) if late_es or small_ed else None


def _ed_es_from(result: StudySegmentation, study: Study | None) -> str | None:
    """Who named ED and ES: "input", "lv_volume" (`Pipeline.segment_study` from the LV volume curve),
    or None where unknown (no ``study``) or meaningless (one phase)."""
    if study is None or len(result.phases) == 1:
        return None
    return "input" if study.ed_index is not None and study.es_index is not None else "lv_volume"


def save_overlay(path: str | Path, result: StudySegmentation, *, max_slices: int = 12, dpi: int = 110) -> Path:
    """A montage PNG: ED above, ES below (one row for one phase), base to apex, zoomed on the heart (`cmrsdk.montage`).

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


def _truth_on_grid(truth: Stack, stack: Stack) -> np.ndarray:
    """``truth.labels`` reordered onto ``stack``'s slices (readers may store the slices in reverse order).

    Each slice of ``stack`` is matched to the truth slice whose centre lies at the same place in
    the world (through both affines); in-plane the grids must be the same.
    """
    if truth.labels is None:
        raise InputError(f"the ground truth {truth.source or 'stack'} carries no labels")
    same_plane = np.allclose(truth.affine[:3, 1:3], stack.affine[:3, 1:3], atol=1e-3)
    if truth.shape != stack.shape or not same_plane:
        raise InputError(
            f"the ground truth grid {truth.shape} does not match the segmented stack {stack.shape} "
            f"from {stack.source or 'memory'}"
        )
    centres = stack.affine @ np.stack(
        [np.arange(stack.shape[0]), np.zeros(stack.shape[0]), np.zeros(stack.shape[0]), np.ones(stack.shape[0])]
    )
    index = np.rint((np.linalg.inv(truth.affine) @ centres)[0]).astype(int)
    if sorted(index.tolist()) != list(range(truth.shape[0])):
        raise InputError(
            f"the ground truth slices do not line up with those of {stack.source or 'the segmented stack'}"
        )
    return truth.labels[index]


def ground_truth_agreement(result: StudySegmentation, truth: Study) -> dict[str, float]:
    """Dice of the segmentation against a known ground truth, and the truth's own measures.

    Parameters
    ----------
    result : the segmented study; its phases must be ``truth``'s phases (same count and order),
        possibly read back from files that store the slices in another order.
    truth : the study with ground-truth labels on every phase (e.g. `cmrsdk.phantom.cine_phantom`).

    Returns
    -------
    {"Dice LVBP ED": ..., ..., "true LVEF (%)": ...}: Dice in [0, 1] at the ED and ES frames the
    pipeline chose; the truth's LVEDV, LVESV (mL), LVEF and RVEF (%) at its own ED and ES.
    """
    if len(result.phases) != len(truth.phases):
        raise InputError(f"the ground truth has {len(truth.phases)} phases, the segmentation {len(result.phases)}")
    out: dict[str, float] = {}
    for name, index in (("ED", result.ed_index), ("ES", result.es_index)):
        seg = result.phases[index]
        labels = _truth_on_grid(truth.phases[index], seg.stack)
        for code in STRUCTURES:
            out[f"Dice {LABEL_NAMES[code]} {name}"] = round(dice(seg.labels, labels, code), 4)
    ed, es = truth.ed, truth.es
    if ed.labels is None or es.labels is None:
        raise InputError(f"the ground truth {truth.info.source or ''} has no labels at ED and ES")
    true = cardiac_measures(ed.labels, es.labels, ed.spacing, es.spacing)
    out.update(
        {
            "true LVEDV (mL)": round(true.lvedv_ml, 1),
            "true LVESV (mL)": round(true.lvesv_ml, 1),
            "true LVEF (%)": round(true.lvef_pct, 1),
            "true RVEF (%)": round(true.rvef_pct, 1),
        }
    )
    return out
