"""Regional evaluation in the manner of the paper: slice Dice by region, Tables 1-3, Figure 2.

Scores are kept as one row per slice (`SliceScore`), so every table is a grouping of the same
rows. Slice Dice convention (`cmrsdk.metrics.slice_dice`): NaN where a label is absent from both
masks, and such slices are left out of that label's statistics; ground-truth regions follow
`cmrsdk.regions` (labelled slices split 20/60/20 base to apex, unlabelled slices non-cardiac).
Statistics need scipy (``cmrsdk[io]``).
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError
from .io._atomic import atomic_path
from .labels import APEX, BASE, LABEL_NAMES, MIDDLE, NON_CARDIAC, REGION_NAMES, STRUCTURES
from .metrics import dice, slice_dice, surface_distances
from .regions import slice_positions, slice_regions

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .types import Study

__all__ = [
    "SIGNIFICANCE",
    "SliceScore",
    "score_stack",
    "regional_table",
    "classifier_table",
    "improvement_table",
    "dice_along_heart",
    "agreement",
    "write_csv",
    "markdown_table",
    "save_dice_along_heart",
    "save_bland_altman",
    "case_scores",
    "EvaluationResult",
    "evaluate",
    "write_evaluation",
]

#: the p-value under which a difference is marked significant, as in the paper.
SIGNIFICANCE = 0.01
STRUCTURE_NAMES = tuple(LABEL_NAMES[s] for s in STRUCTURES)


@dataclass(frozen=True)
class SliceScore:
    """The Dice of one slice of one stack under one method.

    ``dice`` is (LVBP, LVM, RVBP) in [0, 1] or NaN; ``region`` the ground-truth region code;
    ``position`` t in [0, 1] from base to apex (NaN for non-cardiac slices).
    """

    method: str
    case: str
    phase: str
    slice_index: int
    region: int
    position: float
    dice: tuple[float, float, float]


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
    return [
        SliceScore(method, case, phase, z, int(regions[z]), float(positions[z]), tuple(float(v) for v in scores[z]))  # type: ignore[arg-type]
        for z in range(truth.shape[0])
    ]


def _select(scores: Iterable[SliceScore], method: str, region: int) -> np.ndarray:
    """float64 (N, 3) Dice of one method's slices in one region."""
    rows = [s.dice for s in scores if s.method == method and s.region == region]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


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
    ``<region>_sd``, ``<region>_n`` and for base and apex ``<region>_p`` (Welch's
    unequal-variance t-test of that region's slices against the middle's) and
    ``<region>_significant`` (p < `SIGNIFICANCE`).
    """
    by_region = {r: _select(scores, method, r) for r in (BASE, MIDDLE, APEX)}
    if not any(len(v) for v in by_region.values()):
        raise InputError(f"no cardiac slices scored for method {method!r}")
    table = []
    for j, name in enumerate(STRUCTURE_NAMES):
        row: dict[str, object] = {"label": name}
        for region, values in by_region.items():
            v = values[:, j][np.isfinite(values[:, j])] * 100.0
            key = REGION_NAMES[region]
            row[f"{key}_mean"] = float(v.mean()) if len(v) else float("nan")
            row[f"{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            row[f"{key}_n"] = int(len(v))
        for region in (BASE, APEX):
            p = _welch(by_region[region][:, j], by_region[MIDDLE][:, j])
            row[f"{REGION_NAMES[region]}_p"] = p
            row[f"{REGION_NAMES[region]}_significant"] = bool(p < SIGNIFICANCE)
        table.append(row)
    return table


def classifier_table(true_regions: np.ndarray, predicted_regions: np.ndarray) -> dict[str, object]:
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
        raise InputError(f"'true_regions' and 'predicted_regions' must be equal-length and non-empty, got {t.shape} and {p.shape}")
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
    either side are dropped; ``p`` is the paired Student's t-test of the two means.
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
            p = float(stats.ttest_rel(b, a).pvalue) if len(a) > 1 and np.any(a != b) else float("nan")
            table.append({
                "method": method,
                "region": REGION_NAMES[region],
                "label": name,
                "n": int(len(a)),
                "mean_change": float(b.mean() - a.mean()) if len(a) else float("nan"),
                "sd_change": float(a.std(ddof=1) - b.std(ddof=1)) if len(a) > 1 else float("nan"),
                "p": p,
                "significant": bool(p < SIGNIFICANCE),
            })
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


def agreement(measured: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Bland-Altman agreement: bias (mean of measured - reference) and 95% limits of agreement."""
    m = np.asarray(measured, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape or m.ndim != 1:
        raise InputError(f"'measured' and 'reference' must be 1-D and of equal length, got {m.shape} and {r.shape}")
    ok = np.isfinite(m) & np.isfinite(r)
    diff = m[ok] - r[ok]
    if len(diff) < 2:
        return {"n": float(len(diff)), "bias": float("nan"), "sd": float("nan"), "loa_low": float("nan"), "loa_high": float("nan")}
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return {"n": float(len(diff)), "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


# -- outputs -------------------------------------------------------------------------------

def _slice_row(score: SliceScore) -> dict[str, object]:
    """A `SliceScore` as a flat row: one ``dice_<label>`` column per structure."""
    row = asdict(score)
    values = row.pop("dice")
    row.update({f"dice_{name}": value for name, value in zip(STRUCTURE_NAMES, values)})
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
        return "–" if not math.isfinite(value) else f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (floats to two decimals, NaN as an en dash)."""
    if not rows:
        return ""
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


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
            with np.errstate(all="ignore"):
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


def save_bland_altman(path: str | Path, measured: Sequence[float], reference: Sequence[float], *, quantity: str) -> Path:
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
    ax.set_title(f"bias {stats_['bias']:.2f}, LoA [{stats_['loa_low']:.2f}, {stats_['loa_high']:.2f}]", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def case_scores(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], *, method: str, case: str,
                phase: str) -> list[dict[str, object]]:
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
        rows.append({"method": method, "case": case, "phase": phase, "label": name,
                     "dice": dice(prediction, truth, label), "hd95_mm": hd95, "msd_mm": msd})
    return rows


# -- running an evaluation -----------------------------------------------------------------

@dataclass
class EvaluationResult:
    """Everything measured by `evaluate`, kept raw so that every table is derived from it.

    Attributes
    ----------
    scores : one `SliceScore` per slice, phase, case and method.
    regions : method -> (true regions, predicted regions), int64 (N,) each, over every slice
        the method routed (routed and oracle modes).
    measures : method -> [(case, measured CardiacMeasures)]; "reference" holds the ground truth's.
    latency_ms : method -> per-study wall time of segmenting ED and ES, ms.
    cases : rows of :func:`case_scores` (Dice, HD95, MSD per case, phase, structure, method).
    false_positive_ml : method -> per study, the foreground volume (mL, ED + ES) predicted on
        slices the ground truth leaves empty (above the base, below the apex): no heart, no mask.
    """

    scores: list[SliceScore]
    regions: dict[str, tuple[np.ndarray, np.ndarray]]
    measures: dict[str, list[tuple[str, object]]]
    latency_ms: dict[str, list[float]]
    cases: list[dict[str, object]] = field(default_factory=list)
    false_positive_ml: dict[str, list[float]] = field(default_factory=dict)


def false_positive_ml(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Foreground volume (mL) predicted on slices whose ground truth holds no label.

    prediction, truth : integer (Z, Y, X) label maps; spacing : (dz, dy, dx) mm.
    """
    empty = ~(np.asarray(truth) > 0).any(axis=(1, 2))
    return float((np.asarray(prediction)[empty] > 0).sum() * float(np.prod(spacing)) / 1000.0)


def evaluate(pipelines: Mapping[str, Pipeline], studies: Iterable[tuple[str, Study]], *, progress: bool = True) -> EvaluationResult:
    """Segment ED and ES of labelled studies with each pipeline and score every slice.

    Parameters
    ----------
    pipelines : method name -> `cmrsdk.pipeline.Pipeline` (e.g. "baseline", "routed", "oracle").
    studies : (case name, `Study` whose ED and ES stacks carry ground-truth labels).
    progress : show a tqdm progress bar over the studies.
    """
    from .metrics import cardiac_measures

    scores: list[SliceScore] = []
    cases: list[dict[str, object]] = []
    true_regions: dict[str, list[np.ndarray]] = {m: [] for m in pipelines}
    pred_regions: dict[str, list[np.ndarray]] = {m: [] for m in pipelines}
    measures: dict[str, list[tuple[str, object]]] = {m: [] for m in (*pipelines, "reference")}
    latency: dict[str, list[float]] = {m: [] for m in pipelines}
    false_positive: dict[str, list[float]] = {m: [] for m in pipelines}
    items = list(studies)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, unit="study", desc="evaluate")
    for case, study in items:
        ed, es = study.ed, study.es
        if ed.labels is None or es.labels is None:
            raise InputError(f"study {case!r} has no ground-truth labels at ED and ES: it cannot be evaluated")
        measures["reference"].append((case, cardiac_measures(ed.labels, es.labels, ed.spacing, es.spacing,
                                                                      ed_positions=ed.slice_positions, es_positions=es.slice_positions)))
        for method, pipeline in pipelines.items():
            result = pipeline.segment_study(study)
            latency[method].append(result.timings_ms["wall"])
            measures[method].append((case, result.measures))
            false_positive[method].append(sum(false_positive_ml(s.labels, s.stack.labels, s.stack.spacing)
                                              for s in (result.ed, result.es)))
            for seg in (result.ed, result.es):
                truth = seg.stack.labels
                scores += score_stack(seg.labels, truth, method=method, case=case, phase=seg.stack.phase or "")
                cases += case_scores(seg.labels, truth, seg.stack.spacing, method=method, case=case, phase=seg.stack.phase or "")
                if seg.regions is not None:
                    true_regions[method].append(slice_regions(truth).astype(np.int64))
                    pred_regions[method].append(seg.regions.astype(np.int64))
    regions = {m: (np.concatenate(true_regions[m]), np.concatenate(pred_regions[m])) for m in pipelines if true_regions[m]}
    return EvaluationResult(scores, regions, measures, latency, cases, false_positive)


def write_evaluation(result: EvaluationResult, out_dir: str | Path, *, baseline: str = "baseline", title: str = "") -> Path:
    """Tables 1-3, Figure 2 and volume agreement as CSV, Markdown and PNG; returns report.md.

    Written: ``slice_dice.csv`` (one ``dice_<label>`` column per structure), ``case_scores.csv``
    (Dice, HD95 and mean surface distance per case, phase and structure), ``case_measures.csv``
    (volumes, EF, mass per case and method beside the ground truth's), ``table1_<method>.csv``, ``table2.csv`` (+ confusion matrices in
    the Markdown), ``table3.csv`` (when ``baseline`` was evaluated), ``agreement.csv``,
    ``figure2.png``, ``bland_altman_<quantity>_<method>.png``, ``report.md`` and ``report.html`` (the
    same, with the figures inlined: one file to open in a browser).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(result.latency_ms)
    md = [f"# {title or 'cmrsdk evaluation'}", ""]
    n_cases = len(result.measures["reference"])
    md += [f"{n_cases} studies (ED and ES), methods: {', '.join(methods)}. Slice Dice in %, NaN (label absent in "
           "both masks) left out; regions from the ground truth (20/60/20 base to apex).", ""]
    write_csv(out / "slice_dice.csv", result.scores)
    if result.cases:
        write_csv(out / "case_scores.csv", result.cases)
        md += ["## Per-case scores: mean Dice (%), HD95 and mean surface distance (mm) per structure and phase", ""]
        summary = []
        for method in methods:
            for phase in sorted({str(r["phase"]) for r in result.cases}):
                for name in STRUCTURE_NAMES:
                    rows_ = [r for r in result.cases if r["method"] == method and r["phase"] == phase and r["label"] == name]
                    def mean(key: str) -> float:
                        values = np.array([float(r[key]) for r in rows_], dtype=np.float64)  # type: ignore[arg-type]
                        values = values[np.isfinite(values)]
                        return float(values.mean()) if values.size else float("nan")
                    summary.append({"method": method, "phase": phase, "label": name, "dice_pct": 100 * mean("dice"),
                                    "hd95_mm": mean("hd95_mm"), "msd_mm": mean("msd_mm"), "cases": len(rows_)})
        md += [markdown_table(summary), ""]
    measure_rows = []
    reference_by_case = {case: m for case, m in result.measures["reference"]}
    for method in methods:
        for case, measured in result.measures[method]:
            row: dict[str, object] = {"method": method, "case": case}
            for key, value in measured.as_dict().items():  # type: ignore[attr-defined]
                row[key] = value
                row[f"reference_{key}"] = getattr(reference_by_case[case], key)
            measure_rows.append(row)
    if measure_rows:
        write_csv(out / "case_measures.csv", measure_rows)

    md += ["## Table 1: mean (SD) Dice per region; * p < 0.01 (Welch's t-test against the middle)", ""]
    for method in methods:
        table = regional_table(result.scores, method)
        write_csv(out / f"table1_{method}.csv", table)
        rows = []
        for r in table:
            cell = {}
            for region in ("base", "middle", "apex"):
                star = "*" if r.get(f"{region}_significant") else ""
                cell[region] = f"{r[f'{region}_mean']:.2f}{star} ({r[f'{region}_sd']:.2f}) n={r[f'{region}_n']}"
            rows.append({"method": method, "label": r["label"], **cell})
        md += [markdown_table(rows), ""]

    if result.regions:
        md += ["## Table 2: region classification (weighted precision and recall, %)", ""]
        rows = []
        for method, (t, p) in result.regions.items():
            c = classifier_table(t, p)
            rows.append({"method": method, "precision": c["precision"], "recall": c["recall"], "accuracy": c["accuracy"],
                         "confusion (rows true nc/base/mid/apex)": " / ".join(",".join(str(v) for v in row) for row in c["confusion"])})
        write_csv(out / "table2.csv", rows)
        md += [markdown_table(rows), ""]

    if baseline in methods and len(methods) > 1:
        md += [f"## Table 3: change against {baseline} (mean and SD, points of %); * p < 0.01 (paired t-test)", ""]
        rows3 = [row for m in methods if m != baseline for row in improvement_table(result.scores, baseline, m)]
        write_csv(out / "table3.csv", rows3)
        for row in rows3:
            row["mean_change"] = f"{row['mean_change']:+.2f}{'*' if row['significant'] else ''}"
        md += [markdown_table(rows3, ["method", "region", "label", "n", "mean_change", "sd_change", "p"]), ""]

    curves = {m: dice_along_heart(result.scores, m) for m in methods}
    save_dice_along_heart(out / "figure2.png", curves, title=title)
    md += ["## Figure 2: Dice from base to apex", "", "![Dice along the heart](figure2.png)", ""]

    md += ["## Volumes and EF against the ground truth (Bland-Altman)", ""]
    reference = {case: m for case, m in result.measures["reference"]}
    rows = []
    for method in methods:
        for quantity in ("lvedv_ml", "lvesv_ml", "lvef_pct", "lv_mass_g", "rvedv_ml", "rvesv_ml", "rvef_pct"):
            pairs = [(getattr(m, quantity), getattr(reference[case], quantity)) for case, m in result.measures[method]]
            a = agreement([p[0] for p in pairs], [p[1] for p in pairs])
            rows.append({"method": method, "quantity": quantity, **a})
            if quantity in ("lvef_pct", "rvef_pct"):
                save_bland_altman(out / f"bland_altman_{quantity}_{method}.png", [p[0] for p in pairs], [p[1] for p in pairs], quantity=quantity)
    write_csv(out / "agreement.csv", rows)
    md += [markdown_table(rows), ""]
    md += [f"![Bland-Altman {q} {m}](bland_altman_{q}_{m}.png)" for m in methods for q in ("lvef_pct", "rvef_pct")] + [""]

    if result.false_positive_ml:
        md += ["## No heart, no mask: foreground predicted on slices the ground truth leaves empty (mL per study, ED + ES)", ""]
        md += [markdown_table([{"method": m, "mean_ml": float(np.mean(v)), "max_ml": float(np.max(v)), "studies": len(v)}
                               for m, v in result.false_positive_ml.items() if v]), ""]

    md += ["## Latency per ED+ES pair (ms, median)", ""]
    md += [markdown_table([{"method": m, "median_ms": float(np.median(v)), "studies": len(v)} for m, v in result.latency_ms.items()]), ""]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(md))
    # the same tables and figures as one self-contained page, for a reader with a browser
    from ._html import markdown_to_html, write_page

    write_page(out / "report.html", title or "cmrsdk evaluation", markdown_to_html("\n".join(md), out))
    return report
