"""Clinical measures and overlap scores from canonical label maps.

Labels are uint8 (Z, Y, X) with 0 background, 1 LVBP, 2 LVM, 3 RVBP; spacing is
(dz, dy, dx) in mm, so a voxel holds dz*dy*dx mm^3 = dz*dy*dx / 1000 mL. Volumes use slice
summation (Simpson's disc method as clinical software applies it to short-axis stacks).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from ._checks import check_label_map, check_spacing, check_stack_geometry
from .errors import InputError
from .labels import LABEL_NAMES, LVBP, LVM, RVBP, STRUCTURES
from .regions import labelled_slices_base_to_apex

__all__ = [
    "MYOCARDIAL_DENSITY_G_PER_ML",
    "dice",
    "slice_dice",
    "surface_distances",
    "volumes_ml",
    "slice_thicknesses_mm",
    "slice_gaps",
    "CardiacMeasures",
    "cardiac_measures",
    "withhold_unreal",
    "withhold_not_found",
    "ventricles_not_found",
    "MIN_BLOOD_POOL_ML",
    "quality_flags",
    "APICAL_TRUNCATION_RATIO",
    "LV_RING_MIN",
    "LV_RING_MIN_MM2",
    "ES_LV_LOST_SLICES",
    "es_lv_lost_slices",
    "ringed_by_myocardium",
    "heart_like",
    "reaches_field_edge",
]

#: density of myocardium used for LV mass (g/mL), as in SCMR post-processing guidelines.
MYOCARDIAL_DENSITY_G_PER_ML = 1.05


def _check_pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction = check_label_map(prediction, "prediction")
    truth = check_label_map(truth, "truth")
    if prediction.shape != truth.shape:
        raise InputError(f"'prediction' shape {prediction.shape} differs from 'truth' shape {truth.shape}")
    return prediction, truth


def _check_structures(labels: Sequence[int]) -> None:
    """Refuse a label that is no structure: a typo (9, "LV") scored NaN, absent from both masks."""
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label not in STRUCTURES:
            raise InputError(f"'label' must be 1 (LVBP), 2 (LVM) or 3 (RVBP), got {label!r}")


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of one label over a whole stack.

    Parameters
    ----------
    prediction, truth : integer (Z, Y, X) label maps of the same shape.
    label : the label code (1 LVBP, 2 LVM, 3 RVBP).

    Returns
    -------
    2|P ∩ T| / (|P| + |T|) in [0, 1]; NaN when the label is absent from both.
    """
    prediction, truth = _check_pair(prediction, truth)
    _check_structures([label])
    p, t = prediction == label, truth == label
    total = int(p.sum()) + int(t.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def slice_dice(prediction: np.ndarray, truth: np.ndarray, labels: Sequence[int] = STRUCTURES) -> np.ndarray:
    """Dice of every slice and label.

    Convention: a slice where the label is absent from both masks scores NaN (no evidence
    either way) and is left out of means; one where exactly one mask has it scores 0.

    Parameters
    ----------
    prediction, truth : integer (Z, Y, X) label maps of the same shape.
    labels : label codes, one output column each.

    Returns
    -------
    float64 (Z, len(labels)).
    """
    prediction, truth = _check_pair(prediction, truth)
    _check_structures(labels)
    out = np.empty((prediction.shape[0], len(labels)), dtype=np.float64)
    for j, label in enumerate(labels):
        p = (prediction == label).reshape(prediction.shape[0], -1)
        t = (truth == label).reshape(truth.shape[0], -1)
        total = p.sum(1) + t.sum(1)
        overlap = np.logical_and(p, t).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.where(total > 0, 2.0 * overlap / total, np.nan)
    return out


#: a step this much longer than the median step between slice positions is a gap (a missing slice).
GAP_RATIO = 1.5


def _positions(slice_positions: Sequence[float] | np.ndarray, n_slices: int) -> np.ndarray:
    positions = np.asarray(slice_positions, dtype=np.float64)
    if positions.shape != (n_slices,) or not np.all(np.isfinite(positions)):
        raise InputError(f"'slice_positions' must be {n_slices} finite mm values, got shape {positions.shape}")
    return np.sort(positions)


def slice_thicknesses_mm(slice_positions: Sequence[float] | np.ndarray) -> np.ndarray:
    """The length of the stack each slice stands for, from the slice positions.

    Each slice reaches half-way to each neighbour; an end slice reaches as far outwards as its
    one step inwards. Even steps give every slice the step; a missing slice (a step of two)
    makes its two neighbours 1.5 steps each, so the missing slice is counted at the mean of
    its neighbours' areas instead of not at all, and uneven steps count at their real size.

    Parameters
    ----------
    slice_positions : float (Z,) positions along the slice normal in mm, any order.

    Returns
    -------
    float64 (Z,) in mm, in the order of ``slice_positions``; NaN for a single slice (a slice
    alone has no thickness to measure a volume with).
    """
    raw = np.asarray(slice_positions, dtype=np.float64)
    if raw.ndim != 1 or not np.all(np.isfinite(raw)):
        raise InputError(f"'slice_positions' must be (Z,) finite mm values, got {raw!r}")
    if raw.size < 2:
        return np.full(raw.shape, np.nan)
    order = np.argsort(raw, kind="stable")
    steps = np.diff(raw[order])
    left = np.concatenate([[steps[0]], steps])
    right = np.concatenate([steps, [steps[-1]]])
    thickness = np.empty_like(raw)
    thickness[order] = (left + right) / 2.0
    return thickness


def slice_gaps(slice_positions: Sequence[float] | np.ndarray, ratio: float = GAP_RATIO) -> list[dict[str, float]]:
    """Steps between neighbouring slices longer than ``ratio`` times the median step.

    Returns
    -------
    One dict per gap, base order of the sorted positions: ``after_mm`` (position of the slice
    before the gap), ``step_mm``, ``missing_slices`` (step / median - 1, rounded).
    """
    positions = np.sort(np.asarray(slice_positions, dtype=np.float64))
    if positions.size < 3:
        return []
    steps = np.diff(positions)
    median = float(np.median(steps))
    if median <= 0:
        return []
    return [
        {
            "after_mm": round(float(positions[i]), 3),
            "step_mm": round(float(steps[i]), 3),
            "missing_slices": int(round(steps[i] / median)) - 1,
        }
        for i in np.flatnonzero(steps > ratio * median)
    ]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-connected neighbour outside it (the stack's edges count as outside)."""
    from scipy import ndimage  # optional dependency (cmrsdk[io])

    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    surface: np.ndarray = mask & ~eroded
    return surface


def surface_distances(
    prediction: np.ndarray, truth: np.ndarray, label: int, spacing: Sequence[float]
) -> tuple[float, float]:
    """HD95 and mean surface distance (mm) of one label, as the ACDC challenge reports them.

    The surface of a mask is its voxels with a 6-connected neighbour outside it. Every surface
    voxel of each mask is measured to the nearest surface voxel of the other (exact Euclidean
    distance transform, anisotropic ``spacing``).

    Parameters
    ----------
    prediction, truth : integer (Z, Y, X) label maps of the same shape.
    label : the label code (1 LVBP, 2 LVM, 3 RVBP).
    spacing : (dz, dy, dx) in mm.

    Returns
    -------
    (hd95, msd) in mm: ``hd95`` the larger of the two directed 95th percentiles, ``msd`` the
    mean of both directions' distances together. (NaN, NaN) when the label is absent from
    both masks; (inf, inf) when it is absent from exactly one.
    """
    from scipy import ndimage  # optional dependency (cmrsdk[io])

    prediction, truth = _check_pair(prediction, truth)
    spacing = check_spacing(spacing)
    p_surface, t_surface = _surface(prediction == label), _surface(truth == label)
    if not p_surface.any() and not t_surface.any():
        return float("nan"), float("nan")
    if not p_surface.any() or not t_surface.any():
        return float("inf"), float("inf")
    to_truth = ndimage.distance_transform_edt(~t_surface, sampling=spacing)[p_surface]
    to_prediction = ndimage.distance_transform_edt(~p_surface, sampling=spacing)[t_surface]
    hd95 = max(float(np.percentile(to_truth, 95)), float(np.percentile(to_prediction, 95)))
    return hd95, float(np.concatenate([to_truth, to_prediction]).mean())


def volumes_ml(
    labels: np.ndarray, spacing: Sequence[float], slice_positions: Sequence[float] | np.ndarray | None = None
) -> dict[str, float]:
    """Volume of each structure in mL.

    Parameters
    ----------
    labels : integer (Z, Y, X) canonical label map.
    spacing : (dz, dy, dx) in mm.
    slice_positions : optional float (Z,) slice positions along the normal in mm; each slice
        then counts with its own thickness (:func:`slice_thicknesses_mm`) instead of ``dz``,
        and a single slice gives NaN (no volume).

    Returns
    -------
    {"LVBP": mL, "LVM": mL, "RVBP": mL}

    Raises
    ------
    InputError : labels not canonical (0..3); a spacing or positions a `cmrsdk.Stack` would
        refuse (metres, centimetres beside mm, every slice at one place), positions further apart
        than dz excepted (dz may be the slice thickness: the positions count).
    """
    labels = check_label_map(labels, "labels", canonical=True)
    spacing = check_spacing(spacing)
    # the bounds a Stack keeps: positions in cm beside a spacing in mm, or all at one place,
    # gave volumes 10 times too small or 0 mL (sweep 48); positions further apart than dz are
    # taken, they count instead of dz (a slice thickness given as dz: sweep 49)
    given = np.arange(labels.shape[0]) * spacing[0] if slice_positions is None else slice_positions
    check_stack_geometry(spacing, _positions(given, labels.shape[0]), "", what="volumes_ml", thickness_as_dz=True)
    if slice_positions is None:
        voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
        counts = np.bincount(labels.ravel(), minlength=4)
        return {LABEL_NAMES[label]: float(counts[label]) * voxel_ml for label in STRUCTURES}
    if labels.shape[0] < 2:  # no slice, or one: no thickness to weigh it by
        return {LABEL_NAMES[label]: float("nan") for label in STRUCTURES}
    thickness = slice_thicknesses_mm(slice_positions)
    area_ml = spacing[1] * spacing[2] / 1000.0
    per_slice = np.stack([(labels == label).sum(axis=(1, 2)) for label in STRUCTURES])
    totals = per_slice.astype(np.float64) @ thickness * area_ml
    return {LABEL_NAMES[label]: float(v) for label, v in zip(STRUCTURES, totals)}


@dataclass(frozen=True)
class CardiacMeasures:
    """Ventricular volumes (mL), ejection fractions (%) and LV mass (g) of one ED/ES pair.

    EF is NaN when the end-diastolic volume is zero. LV mass is taken at ED.
    """

    lvedv_ml: float
    lvesv_ml: float
    lvsv_ml: float
    lvef_pct: float
    lv_mass_g: float
    rvedv_ml: float
    rvesv_ml: float
    rvsv_ml: float
    rvef_pct: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict of the measures, NaN where unknown (`as_json` for JSON, which has no NaN)."""
        return asdict(self)

    def as_json(self) -> dict[str, float | None]:
        """The measures as report.json writes them: unknown ones (NaN) as None, so that
        `cmrsdk.io.write_json` (which refuses NaN) takes them."""
        return {k: v if math.isfinite(v) else None for k, v in asdict(self).items()}


def _ejection_fraction(edv: float, esv: float) -> float:
    # NaN compares False: an unknown volume gives an unknown EF. No ventricle empties to 0 mL: an
    # empty ES mask is a failed segmentation, and its "100 %" would be a silently wrong number.
    return 100.0 * (edv - esv) / edv if edv > 0 and esv > 0 else float("nan")


def _stroke_volume(edv: float, esv: float) -> float:
    # as the EF: an empty mask at ED or ES is a failed segmentation, not a ventricle of 0 mL
    return edv - esv if edv > 0 and esv > 0 else float("nan")


def cardiac_measures(
    ed_labels: np.ndarray,
    es_labels: np.ndarray | None,
    ed_spacing: Sequence[float],
    es_spacing: Sequence[float] | None = None,
    *,
    ed_positions: Sequence[float] | np.ndarray | None = None,
    es_positions: Sequence[float] | np.ndarray | None = None,
) -> CardiacMeasures:
    """LV and RV volumes, stroke volumes, ejection fractions and LV mass.

    Parameters
    ----------
    ed_labels, es_labels : integer (Z, Y, X) canonical label maps at ED and ES (their
        shapes may differ when the phases come from different series). ``es_labels`` None
        (one phase only): the ES volumes, SV and EF are NaN, never 0.
    ed_spacing, es_spacing : (dz, dy, dx) in mm; ``es_spacing`` defaults to ``ed_spacing``.
    ed_positions, es_positions : optional (Z,) slice positions in mm (see :func:`volumes_ml`);
        ``es_positions`` defaults to ``ed_positions`` when the shapes agree.
    """
    nan = float("nan")
    ed = volumes_ml(ed_labels, ed_spacing, ed_positions)
    if es_labels is None:
        es = {name: nan for name in ed}
    else:
        if es_positions is None and ed_positions is not None and np.shape(es_labels)[0] == np.shape(ed_labels)[0]:
            es_positions = ed_positions
        es = volumes_ml(es_labels, ed_spacing if es_spacing is None else es_spacing, es_positions)
    return CardiacMeasures(
        lvedv_ml=ed["LVBP"],
        lvesv_ml=es["LVBP"],
        lvsv_ml=_stroke_volume(ed["LVBP"], es["LVBP"]),
        lvef_pct=_ejection_fraction(ed["LVBP"], es["LVBP"]),
        lv_mass_g=ed["LVM"] * MYOCARDIAL_DENSITY_G_PER_ML,
        rvedv_ml=ed["RVBP"],
        rvesv_ml=es["RVBP"],
        rvsv_ml=_stroke_volume(ed["RVBP"], es["RVBP"]),
        rvef_pct=_ejection_fraction(ed["RVBP"], es["RVBP"]),
    )


def withhold_unreal(measures: CardiacMeasures, *, same_phase: bool = False) -> CardiacMeasures:
    """``measures`` with the stroke volumes and EFs that cannot be real set to NaN, volumes kept:
    both where ED and ES are one phase (``same_phase``: no ES was found, and 0 % would read as a
    heart that does not beat), and a ventricle's where it is larger at ES than at ED (a failed
    segmentation, or one that barely ejects: held-out ACDC patient020, manual RVEF 3.9 %,
    measured -2.9 %). The report flags each (``no_volume_change``, ``lv_esv_exceeds_edv``,
    ``rv_esv_exceeds_edv``)."""
    nan = float("nan")
    withheld = {}
    for side in ("lv", "rv"):
        if same_phase or getattr(measures, f"{side}sv_ml") < 0:
            withheld[f"{side}sv_ml"] = withheld[f"{side}ef_pct"] = nan
    return replace(measures, **withheld)


#: a blood pool under this volume (mL) at a phase is not a ventricle found there: a few stray
#: pixels (a model that failed, an image without a heart) read as "RVEDV 0.07 mL, RVEF 0 %";
#: the smallest ventricle of the 208 shared label maps holds 10.3 mL (ACDC patient030's RV at ES)
MIN_BLOOD_POOL_ML = 1.0

#: the measures of each ventricle read at ED, at ES, and from both phases (`CardiacMeasures` keys)
VENTRICLE_MEASURES = {
    "lv": (("lvedv_ml", "lv_mass_g"), ("lvesv_ml",), ("lvsv_ml", "lvef_pct")),
    "rv": (("rvedv_ml",), ("rvesv_ml",), ("rvsv_ml", "rvef_pct")),
}


def ventricles_not_found(phases: Sequence[tuple[np.ndarray, Mapping[str, float]]]) -> dict[str, list[bool]]:
    """For ``"lv"`` and ``"rv"``, whether each phase shows none of that ventricle's blood pool, or
    less than `MIN_BLOOD_POOL_ML`: its measures there are not measured, never 0 mL (a heart the
    networks did not find, a blank image).

    An RV drawn where neither LV blood pool nor myocardium was found is not found either: in a
    short-axis cine the RV wraps the LV, and a blob alone is what the networks drew elsewhere
    (sweep 40: a heart outside the networks' field gave "RVEDV 5.469 mL, RVEF 1.786 %").

    Parameters
    ----------
    phases : (uint8 (Z, Y, X) canonical labels, their `volumes_ml`) of ED and ES, or of the one phase.
    """
    no_lv = [max(volumes["LVBP"], volumes["LVM"]) < MIN_BLOOD_POOL_ML for _, volumes in phases]
    missing = {}
    for side, code in (("lv", LVBP), ("rv", RVBP)):
        name = LABEL_NAMES[code]
        gone = [not np.any(labels == code) or volumes[name] < MIN_BLOOD_POOL_ML for labels, volumes in phases]
        missing[side] = [rv or none for rv, none in zip(gone, no_lv)] if side == "rv" else gone
    return missing


def withhold_not_found(measures: CardiacMeasures, missing: Mapping[str, Sequence[bool]]) -> CardiacMeasures:
    """``measures`` with a ventricle's measures at each phase it was not found (`ventricles_not_found`
    of ED and ES, or of the one phase) set to NaN, and its SV and EF with them."""
    withheld = {}
    for side, (at_ed, at_es, both) in VENTRICLE_MEASURES.items():
        ed_gone = missing[side][0]
        es_gone = len(missing[side]) > 1 and missing[side][1]
        if ed_gone or es_gone:
            withheld.update(dict.fromkeys(both + (at_ed if ed_gone else ()) + (at_es if es_gone else ()), float("nan")))
    return replace(measures, **withheld)


def _components_2d(mask: np.ndarray) -> int:
    """Number of 4-connected components of a 2-D boolean mask."""
    from scipy import ndimage  # optional dependency (cmrsdk[io]); only the quality flags need it

    return int(ndimage.label(mask)[1])


def ringed_by_myocardium(labels: np.ndarray, structure: int = LVBP) -> float:
    """The fraction of the pixels just outside ``structure`` (in-plane 4-neighbours, every slice)
    that are LV myocardium; NaN where the structure is absent. labels: canonical (..., Y, X).

    An LV blood pool lies inside its myocardium, an RV does not: on the 208 shared label maps the
    LV's border is 98-100 % myocardium, the RV's at most 43 %."""
    inside = np.asarray(labels) == structure
    if not inside.any():
        return float("nan")
    ring = np.zeros_like(inside)
    ring[..., 1:, :] |= inside[..., :-1, :]
    ring[..., :-1, :] |= inside[..., 1:, :]
    ring[..., :, 1:] |= inside[..., :, :-1]
    ring[..., :, :-1] |= inside[..., :, 1:]
    ring &= ~inside
    return float(np.count_nonzero(np.asarray(labels)[ring] == LVM)) / max(int(np.count_nonzero(ring)), 1)


#: `heart_like`: an LV blood pool this much ringed by myocardium, on at least this many slices
#: of at least this many pixels. The shipped U-Net's guesses on noise images hold at most one such
#: slice (0-374 foreground pixels in all); real stacks 7-20 slices, rings 0.96-1.0.
HEART_RING, HEART_SLICES, HEART_SLICE_PIXELS = 0.8, 3, 20


def heart_like(labels: np.ndarray) -> bool:
    """Whether masks look like a heart: an LV blood pool ringed by its myocardium over several
    slices. What keeps a real stack the networks were unsure of (a scanner or sequence unlike
    the training data's) from being emptied as a guess on noise. labels: canonical (Z, Y, X)."""
    labels = np.asarray(labels)
    slices = int(np.count_nonzero((labels == LVBP).sum(axis=(-2, -1)) >= HEART_SLICE_PIXELS))
    ring = ringed_by_myocardium(labels)
    return slices >= HEART_SLICES and math.isfinite(ring) and ring >= HEART_RING


#: an LV blood pool whose most apical slice keeps this fraction of its largest area, with slices
#: beyond it, stops abruptly (`quality_flags`): 3 of the 208 shared manual label maps (an HCM
#: cavity kept to the apex: ACDC patient047 ED and ES at 0.86 and 0.84, patient054 ES at 0.68;
#: every other at most 0.39), and on the held-out predictions the phases that lost their apical
#: slices (patient050 ED and ES, 0.58 and 0.68; patient055 ED, 0.52; sweep 17).
APICAL_TRUNCATION_RATIO = 0.5


#: `quality_flags`' ``lv_not_ringed``: an LV blood pool slice of at least `LV_RING_MIN_MM2`, other
#: than the most basal such slice (the outflow tract opens the ring there), whose border is less
#: than this share myocardium: not an LV a reader would draw. The 208 shared manual label maps: at
#: least 0.99. Sweep 27's degraded held-out inputs: failed segmentations down to 0.00; at 0.6 it
#: marked 33 of 132 grossly wrong studies, 3 of the 30 no other flag marked, and 4 of 85
#: studies measured within limits.
LV_RING_MIN, LV_RING_MIN_MM2 = 0.6, 200.0

#: `es_lv_lost_slices` at or above this: the ES phase lost its LV on slices where ED holds a large
#: one (`ES_LV_LOST_AREA` of its largest), as an LV does not empty in systole. The 104 shared
#: manual ED/ES pairs: at most 2 such slices (a base that descends); sweep 27's degraded inputs:
#: 23 of 132 grossly wrong studies, 2 that no other flag marked, no alarm on a study within limits.
ES_LV_LOST_SLICES, ES_LV_LOST_AREA = 3, 0.3


def es_lv_lost_slices(ed_labels: np.ndarray, es_labels: np.ndarray) -> int:
    """Slices where ED's LV blood pool holds at least `ES_LV_LOST_AREA` of its largest slice area
    and ES's holds none; 0 where the two differ in shape (they image other positions).

    Parameters
    ----------
    ed_labels, es_labels : integer (Z, Y, X) canonical label maps of one stack at ED and ES.
    """
    ed, es = np.asarray(ed_labels), np.asarray(es_labels)
    if ed.shape != es.shape or ed.ndim != 3:
        return 0
    ed_area = (ed == LVBP).reshape(ed.shape[0], -1).sum(1)
    es_area = (es == LVBP).reshape(es.shape[0], -1).sum(1)
    if not ed_area.any():
        return 0
    return int(np.count_nonzero((ed_area >= ES_LV_LOST_AREA * ed_area.max()) & (es_area == 0)))


def _lv_not_ringed(labels: np.ndarray, base_first: bool, pixel_mm2: float) -> bool:
    """Whether an LV blood pool slice away from the base is ringed by myocardium under `LV_RING_MIN`."""
    area = (labels == LVBP).sum(axis=(1, 2)) * pixel_mm2
    large = np.flatnonzero(area >= LV_RING_MIN_MM2)
    if large.size < 2:
        return False
    basal = large[0] if base_first else large[-1]
    return any(ringed_by_myocardium(labels[z]) < LV_RING_MIN for z in large if z != basal)


def quality_flags(labels: np.ndarray, base_first: bool | None = None, pixel_mm2: float | None = None) -> list[str]:
    """Automatic quality-control flags in the manner of UK Biobank pipelines.

    Flags
    -----
    - ``no_lv`` / ``no_rv``: the structure is absent from the whole stack.
    - ``basal_coverage``: the most basal slice of the stack already holds LV blood pool,
      so the heart may extend beyond the stack (volumes underestimated).
    - ``apical_coverage``: the most apical slice of the stack holds LV blood pool.
    - ``apical_truncation``: the LV blood pool ends toward the apex on a slice holding at least
      `APICAL_TRUNCATION_RATIO` of its largest area, with slices beyond it: an apex the networks
      drew as something else (an infarcted apex drawn as RV, then cleaned up) or missed.
    - ``lv_gap`` / ``rv_gap``: a slice without the structure between slices with it.
    - ``<structure>_fragments``: a slice where the structure falls into several pieces.
    - ``lv_not_ringed`` (with ``pixel_mm2``): an LV blood pool slice away from the base whose
      border is less than `LV_RING_MIN` myocardium (an RV or atrium drawn as LV, a failed slice).

    Parameters
    ----------
    labels : integer (Z, Y, X) canonical label map.
    base_first : True when slice 0 is the most basal, False when it is the most apical;
        None finds it from the anatomy, as `cmrsdk.regions` does.
    pixel_mm2 : the in-plane pixel area (dy * dx, mm²); None leaves ``lv_not_ringed`` out.

    Returns
    -------
    Sorted list of flag names; empty when nothing is suspicious.
    """
    labels = check_label_map(labels, "labels", canonical=True)
    flags: set[str] = set()
    for code, name in ((LVBP, "lv"), (RVBP, "rv")):
        present = (labels == code).any(axis=(1, 2))  # (Z,), also for a stack of no slices
        if not present.any():
            flags.add(f"no_{name}")
            continue
        idx = np.flatnonzero(present)
        if np.any(~present[idx[0] : idx[-1] + 1]):
            flags.add(f"{name}_gap")
    lvbp_present = (labels == LVBP).any(axis=(1, 2))
    if lvbp_present.any() and labels.shape[0] > 1:
        if base_first is None:
            # the same anatomical rule as the ground-truth regions (cmrsdk.regions)
            order = labelled_slices_base_to_apex(labels)
            base_first = bool(order[0] <= order[-1])
        base, apex = (0, -1) if base_first else (-1, 0)
        if lvbp_present[base]:
            flags.add("basal_coverage")
        if lvbp_present[apex]:
            flags.add("apical_coverage")
        area = (labels == LVBP).sum(axis=(1, 2))
        toward_apex = area if base_first else area[::-1]
        last = int(np.flatnonzero(toward_apex)[-1])
        if last < len(toward_apex) - 1 and toward_apex[last] >= APICAL_TRUNCATION_RATIO * toward_apex.max():
            flags.add("apical_truncation")
        if pixel_mm2 is not None and _lv_not_ringed(labels, base_first, pixel_mm2):
            flags.add("lv_not_ringed")
    for code in STRUCTURES:
        for z in np.flatnonzero((labels == code).any(axis=(1, 2))):
            if _components_2d(labels[z] == code) > 1:
                flags.add(f"{LABEL_NAMES[code].lower()}_fragments")
                break
    return sorted(flags)


def reaches_field_edge(labels: np.ndarray, field: tuple[int, int, int, int] | None) -> bool:
    """Whether any structure touches the border of the field the networks saw.

    A mask on the first or last row or column of that field (the network window, within the image)
    is a heart the field cut: the part outside was never segmented, so volumes are too small.

    Parameters
    ----------
    labels : integer (Z, Y, X) canonical label map.
    field : (y0, y1, x0, x1) first and last native row and column the networks saw, inclusive
        (`cmrsdk.preprocess.window_field`); None where they saw nothing (never true then).
    """
    labels = check_label_map(labels, "labels")
    if field is None:
        return False
    y0, y1, x0, x1 = (int(v) for v in field)
    inside = labels[:, y0 : y1 + 1, x0 : x1 + 1] > 0
    if not inside.size:
        return False
    return bool(inside[:, 0].any() or inside[:, -1].any() or inside[:, :, 0].any() or inside[:, :, -1].any())
