"""Regional evaluation statistics in the manner of the paper: slice Dice by region, Tables 1-3.

Scores are kept as one row per slice (`SliceScore`), so every table is a grouping of the same
rows. Slice Dice convention (`cmrsdk.metrics.slice_dice`): NaN where a label is absent from both
masks, and such slices are left out of that label's statistics; ground-truth regions follow
`cmrsdk.regions` (labelled slices split 20/60/20 base to apex, unlabelled slices non-cardiac).
The tests need scipy (``cmrsdk[io]``); everything here is pure: no file is read or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..labels import (
    APEX,
    BASE,
    LABEL_NAMES,
    MIDDLE,
    NON_CARDIAC,
    REGION_NAMES,
    STRUCTURES,
)
from ..metrics import dice, slice_dice, surface_distances
from ..regions import slice_positions, slice_regions

__all__ = [
    "SIGNIFICANCE",
    "MIN_SUBJECTS",
    "STRUCTURE_NAMES",
    "SliceScore",
    "score_stack",
    "regional_table",
    "classifier_table",
    "improvement_table",
    "dice_along_heart",
    "agreement",
    "case_scores",
    "false_positive_ml",
    "zero_dice_table",
]

#: the p-value under which a difference is marked significant, as in the paper.
SIGNIFICANCE = 0.01
#: the fewest subjects (cases) a test needs before its p-value is given: slices of one heart are
#: not independent, so a t-test over the slices of one or two subjects claims far too much.
MIN_SUBJECTS = 3
#: names of the scored structures, in the order of `SliceScore.dice`: LVBP, LVM, RVBP.
STRUCTURE_NAMES = tuple(LABEL_NAMES[s] for s in STRUCTURES)


@dataclass(frozen=True)
class SliceScore:
    """The Dice of one slice of one stack under one method.

    ``dice`` is (LVBP, LVM, RVBP) in [0, 1] or NaN; ``region`` the ground-truth region code;
    ``position`` t in [0, 1] from base to apex (NaN for non-cardiac slices); ``truth_pixels``
    and ``predicted_pixels`` the (LVBP, LVM, RVBP) pixel counts of the slice in each mask, where
    known (they tell a slice the annotators left without a label from one the model missed).
    """

    method: str
    case: str
    phase: str
    slice_index: int
    region: int
    position: float
    dice: tuple[float, float, float]
    truth_pixels: tuple[int, int, int] | None = None
    predicted_pixels: tuple[int, int, int] | None = None


def score_stack(prediction: np.ndarray, truth: np.ndarray, *, method: str, case: str, phase: str) -> list[SliceScore]:
    """Per-slice Dice of one stack, each slice tagged with its ground-truth region.

    Parameters
    ----------
    prediction, truth : uint8 (Z, Y, X) canonical label maps on the same grid.
    method, case, phase : tags carried into every row.
    """
    scores = slice_dice(prediction, truth)
    regions = slice_regions(truth)
    positions = slice_positions(truth)

    def pixels(labels: np.ndarray, z: int) -> tuple[int, int, int]:
        counts = np.bincount(labels[z].ravel(), minlength=max(STRUCTURES) + 1)
        return tuple(int(counts[s]) for s in STRUCTURES)  # type: ignore[return-value]

    return [
        SliceScore(
            method,
            case,
            phase,
            z,
            int(regions[z]),
            float(positions[z]),
            tuple(float(v) for v in scores[z]),  # type: ignore[arg-type]
            pixels(truth, z),
            pixels(prediction, z),
        )
        for z in range(truth.shape[0])
    ]


def _select(scores: Iterable[SliceScore], method: str, region: int) -> np.ndarray:
    """float64 (N, 3) Dice of one method's slices in one region."""
    rows = [s.dice for s in scores if s.method == method and s.region == region]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _subjects(scores: Iterable[SliceScore], method: str, region: int, label: int) -> int:
    """How many cases have a Dice of structure ``label`` (index into `STRUCTURE_NAMES`) in one region."""
    return len({s.case for s in scores if s.method == method and s.region == region and math.isfinite(s.dice[label])})


def _welch(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def regional_table(scores: Sequence[SliceScore], method: str) -> list[dict[str, object]]:
    """Table 1: mean and SD of Dice (%) per region and label, Welch's t-test against the middle.

    Returns
    -------
    One row per label: ``label``, and for each of base, middle, apex ``<region>_mean``,
    ``<region>_sd``, ``<region>_n`` (slices), ``<region>_subjects`` (cases) and for base and apex
    ``<region>_p`` (Welch's unequal-variance t-test of that region's slices against the middle's;
    NaN where either side holds fewer than `MIN_SUBJECTS` cases) and ``<region>_significant``
    (p < `SIGNIFICANCE`).
    """
    by_region = {r: _select(scores, method, r) for r in (BASE, MIDDLE, APEX)}
    if not any(len(v) for v in by_region.values()):
        raise InputError(f"no cardiac slices scored for method {method!r}")
    table = []
    for j, name in enumerate(STRUCTURE_NAMES):
        row: dict[str, object] = {"label": name}
        subjects = {region: _subjects(scores, method, region, j) for region in by_region}
        for region, values in by_region.items():
            v = values[:, j][np.isfinite(values[:, j])] * 100.0
            key = REGION_NAMES[region]
            row[f"{key}_mean"] = float(v.mean()) if len(v) else float("nan")
            row[f"{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            row[f"{key}_n"] = int(len(v))
            row[f"{key}_subjects"] = subjects[region]
        for region in (BASE, APEX):
            few = min(subjects[region], subjects[MIDDLE])
            p = _welch(by_region[region][:, j], by_region[MIDDLE][:, j]) if few >= MIN_SUBJECTS else float("nan")
            row[f"{REGION_NAMES[region]}_p"] = p
            row[f"{REGION_NAMES[region]}_significant"] = bool(p < SIGNIFICANCE)
        table.append(row)
    return table


def zero_dice_table(scores: Sequence[SliceScore], method: str) -> list[dict[str, object]]:
    """Where the Dice is lost: the slices of one method scoring 0, per region and label, by cause.

    A slice scores 0 when only one mask holds the label ("drawn": the model drew it where the
    annotators left it out; "missed": they drew it and the model did not) or when both hold it
    without overlap ("apart"). ``mean_pct`` is the region's mean Dice, ``mean_without_zero_pct``
    the mean over the slices scoring above 0: the gap between them is what the zeros cost.
    Slices without pixel counts (`SliceScore.truth_pixels` None) count as "apart".

    Returns
    -------
    One row per region (base, middle, apex) and label: ``region``, ``label``, ``scored`` (slices
    with a Dice), ``zero``, ``drawn``, ``missed``, ``apart``, ``mean_pct``, ``mean_without_zero_pct``.
    """
    rows: list[dict[str, object]] = []
    for region in (BASE, MIDDLE, APEX):
        chosen = [s for s in scores if s.method == method and s.region == region]
        for j, name in enumerate(STRUCTURE_NAMES):
            scored = [s for s in chosen if math.isfinite(s.dice[j])]
            zero = [s for s in scored if s.dice[j] == 0.0]
            drawn = sum(1 for s in zero if s.truth_pixels is not None and s.truth_pixels[j] == 0)
            missed = sum(1 for s in zero if s.predicted_pixels is not None and s.predicted_pixels[j] == 0)
            values = np.array([s.dice[j] for s in scored], dtype=np.float64) * 100.0
            rows.append(
                {
                    "region": REGION_NAMES[region],
                    "label": name,
                    "scored": len(scored),
                    "zero": len(zero),
                    "drawn": drawn,
                    "missed": missed,
                    "apart": len(zero) - drawn - missed,
                    "mean_pct": float(values.mean()) if len(values) else float("nan"),
                    "mean_without_zero_pct": float(values[values > 0].mean()) if (values > 0).any() else float("nan"),
                }
            )
    return rows


def classifier_table(true_regions: np.ndarray, predicted_regions: np.ndarray) -> dict[str, Any]:
    """Table 2 for one classifier: weighted-average precision and recall (%) and the confusion matrix.

    Parameters
    ----------
    true_regions, predicted_regions : integer (N,) region codes 0..3 of the same slices.

    Returns
    -------
    ``precision`` and ``recall`` (support-weighted averages over the four regions, %),
    ``accuracy`` (%), ``confusion`` int64 (4, 4) with rows true and columns predicted.
    """
    t = np.asarray(true_regions, dtype=np.int64).ravel()
    p = np.asarray(predicted_regions, dtype=np.int64).ravel()
    if t.shape != p.shape or t.size == 0:
        raise InputError(
            f"'true_regions' and 'predicted_regions' must be equal-length and non-empty, got {t.shape} and {p.shape}"
        )
    n = len(REGION_NAMES)
    if t.min() < 0 or p.min() < 0 or t.max() >= n or p.max() >= n:
        raise InputError(f"region codes must be in 0..{n - 1}")
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (t, p), 1)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    diag = np.diag(confusion).astype(np.float64)
    precision = np.divide(diag, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(diag, support, out=np.zeros(n), where=support > 0)
    weights = support / support.sum()
    return {
        "precision": float((precision * weights).sum() * 100.0),
        "recall": float((recall * weights).sum() * 100.0),
        "accuracy": float(diag.sum() / t.size * 100.0),
        "confusion": confusion,
    }


def improvement_table(scores: Sequence[SliceScore], baseline: str, method: str) -> list[dict[str, object]]:
    """Table 3: change of mean and SD of Dice (points of %) against the baseline at base and apex.

    Positive ``mean_change`` is a higher mean, positive ``sd_change`` a smaller spread (the
    paper's sign convention). Slices are paired by (case, phase, slice); pairs with a NaN on
    either side are dropped; ``n`` counts the pairs, ``subjects`` their cases; ``p`` is the paired
    Student's t-test of the two means, NaN below `MIN_SUBJECTS` cases.
    """
    from scipy import stats

    def keyed(name: str) -> dict[tuple[str, str, int], SliceScore]:
        return {(s.case, s.phase, s.slice_index): s for s in scores if s.method == name}

    base_rows, method_rows = keyed(baseline), keyed(method)
    common = sorted(set(base_rows) & set(method_rows))
    if not common:
        raise InputError(f"no slices scored by both {baseline!r} and {method!r}")
    table = []
    for region in (BASE, APEX):
        keys = [k for k in common if base_rows[k].region == region]
        for j, name in enumerate(STRUCTURE_NAMES):
            a = np.array([base_rows[k].dice[j] for k in keys], dtype=np.float64) * 100.0
            b = np.array([method_rows[k].dice[j] for k in keys], dtype=np.float64) * 100.0
            ok = np.isfinite(a) & np.isfinite(b)
            a, b = a[ok], b[ok]
            subjects = len({k[0] for k, kept in zip(keys, ok) if kept})
            testable = len(a) > 1 and np.any(a != b) and subjects >= MIN_SUBJECTS
            p = float(stats.ttest_rel(b, a).pvalue) if testable else float("nan")
            table.append(
                {
                    "method": method,
                    "region": REGION_NAMES[region],
                    "label": name,
                    "n": int(len(a)),
                    "subjects": subjects,
                    "mean_change": float(b.mean() - a.mean()) if len(a) else float("nan"),
                    "sd_change": float(a.std(ddof=1) - b.std(ddof=1)) if len(a) > 1 else float("nan"),
                    "p": p,
                    "significant": bool(p < SIGNIFICANCE),
                }
            )
    return table


def dice_along_heart(scores: Sequence[SliceScore], method: str, points: int = 101) -> np.ndarray:
    """Figure 2's curves: each stack's slice Dice interpolated onto ``points`` positions base→apex.

    Returns
    -------
    float64 (S, 3, points): one curve per stack (case, phase) and label; NaN where a stack has
    fewer than two finite values of that label.
    """
    grid = np.linspace(0.0, 1.0, points)
    stacks: dict[tuple[str, str], list[SliceScore]] = {}
    for s in scores:
        if s.method == method and s.region != NON_CARDIAC and math.isfinite(s.position):
            stacks.setdefault((s.case, s.phase), []).append(s)
    curves = np.full((len(stacks), 3, points), np.nan)
    for i, rows in enumerate(stacks.values()):
        rows.sort(key=lambda s: s.position)
        t = np.array([s.position for s in rows])
        d = np.array([s.dice for s in rows], dtype=np.float64)
        for j in range(3):
            ok = np.isfinite(d[:, j])
            if ok.sum() >= 2:
                curves[i, j] = np.interp(grid, t[ok], d[ok, j])
    return curves


def agreement(measured: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Bland-Altman agreement: bias (mean of measured - reference) and 95% limits of agreement.

    Returns
    -------
    ``n`` (pairs used, an int), ``excluded`` (pairs with a NaN or infinite value on either side,
    left out: an int), ``bias``, ``sd``, ``loa_low``, ``loa_high`` (NaN below 2 pairs).
    """
    m = np.asarray(measured, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape or m.ndim != 1:
        raise InputError(f"'measured' and 'reference' must be 1-D and of equal length, got {m.shape} and {r.shape}")
    ok = np.isfinite(m) & np.isfinite(r)
    diff = m[ok] - r[ok]
    counts = {"n": int(len(diff)), "excluded": int((~ok).sum())}
    if len(diff) < 2:
        return {
            **counts,
            "bias": float("nan"),
            "sd": float("nan"),
            "loa_low": float("nan"),
            "loa_high": float("nan"),
        }
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return {**counts, "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def case_scores(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], *, method: str, case: str, phase: str
) -> list[dict[str, object]]:
    """Whole-stack Dice, HD95 and mean surface distance of each structure, as ACDC reports them.

    Parameters
    ----------
    prediction, truth : uint8 (Z, Y, X) canonical label maps on the same grid.
    spacing : (dz, dy, dx) in mm.
    method, case, phase : tags carried into every row.

    Returns
    -------
    One row per structure: method, case, phase, label, dice (0..1), hd95_mm, msd_mm (NaN where
    the structure is absent from both, inf where absent from one).
    """
    rows: list[dict[str, object]] = []
    for label, name in zip(STRUCTURES, STRUCTURE_NAMES):
        hd95, msd = surface_distances(prediction, truth, label, spacing)
        rows.append(
            {
                "method": method,
                "case": case,
                "phase": phase,
                "label": name,
                "dice": dice(prediction, truth, label),
                "hd95_mm": hd95,
                "msd_mm": msd,
            }
        )
    return rows


def false_positive_ml(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, float, float],
    labels: Sequence[int] | None = None,
) -> float:
    """Foreground volume (mL) predicted on slices whose ground truth holds no label.

    prediction, truth : integer (Z, Y, X) label maps; spacing : (dz, dy, dx) mm; labels : the
    predicted labels that count (those the reference annotated: an RV drawn beside LV-only
    contours is not a false positive), None for every foreground label.
    """
    empty = ~(np.asarray(truth) > 0).any(axis=(1, 2))
    predicted = np.asarray(prediction)[empty]
    drawn = predicted > 0 if labels is None else np.isin(predicted, list(labels))
    return float(drawn.sum() * float(np.prod(spacing)) / 1000.0)
