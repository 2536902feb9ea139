"""Running an evaluation: segment labelled studies with each method, score them, write the report.

`evaluate` segments ED and ES of every study with each method's `cmrsdk.Pipeline` and keeps every
score raw (`EvaluationResult`); `write_evaluation` derives the tables (`cmrsdk.evaluation.stats`),
the figures (`cmrsdk.evaluation.figures`) and the report from it. Routing by regions known from
elsewhere -- the ground truth's (the "oracle", `ground_truth_regions`), another classifier's
stored predictions -- is a method whose pipeline gets a region source handed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from ..errors import InputError
from ..io._atomic import atomic_path
from ..regions import slice_regions
from .figures import save_bland_altman, save_dice_along_heart
from .stats import (
    STRUCTURE_NAMES,
    SliceScore,
    agreement,
    case_scores,
    classifier_table,
    dice_along_heart,
    false_positive_ml,
    improvement_table,
    regional_table,
    score_stack,
    zero_dice_table,
)
from .tables import markdown_table, write_csv

if TYPE_CHECKING:
    from ..metrics import CardiacMeasures
    from ..pipeline import Pipeline, RegionSource
    from ..types import Stack, Study

__all__ = ["EvaluationResult", "evaluate", "write_evaluation"]


@dataclass
class EvaluationResult:
    """Everything measured by `evaluate`, kept raw so that every table is derived from it.

    Attributes
    ----------
    scores : one `SliceScore` per slice, phase, case and method.
    regions : method -> (true regions, predicted regions), int64 (N,) each, over every slice
        the method routed (routed pipelines, whatever their region source).
    measures : method -> [(case, measured CardiacMeasures)]; "reference" holds the ground truth's.
    latency_ms : method -> per-study wall time of segmenting ED and ES, ms.
    cases : rows of :func:`case_scores` (Dice, HD95, MSD per case, phase, structure, method).
    false_positive_ml : method -> per study, the foreground volume (mL, ED + ES) predicted on
        slices the ground truth leaves empty (above the base, below the apex): no heart, no mask.
    """

    scores: list[SliceScore]
    regions: dict[str, tuple[np.ndarray, np.ndarray]]
    measures: dict[str, list[tuple[str, CardiacMeasures]]]
    latency_ms: dict[str, list[float]]
    cases: list[dict[str, object]] = field(default_factory=list)
    false_positive_ml: dict[str, list[float]] = field(default_factory=dict)


def evaluate(
    pipelines: Mapping[str, Pipeline],
    studies: Iterable[tuple[str, Study]],
    *,
    region_sources: Mapping[str, RegionSource] | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Segment ED and ES of labelled studies with each pipeline and score every slice.

    Parameters
    ----------
    pipelines : method name -> `cmrsdk.pipeline.Pipeline` (e.g. "baseline", "routed", "oracle");
        one pipeline may serve several methods.
    studies : (case name, `Study` whose ED and ES stacks carry ground-truth labels).
    region_sources : method name -> the region source its routed pipeline routes by (see
        `cmrsdk.pipeline.RegionSource`), e.g. ``{"oracle": ground_truth_regions}``; methods not
        named route as their pipeline does.
    progress : show a tqdm progress bar over the studies.
    """
    from ..metrics import cardiac_measures

    sources = dict(region_sources or {})
    unknown = sorted(set(sources) - set(pipelines))
    if unknown:
        raise InputError(f"'region_sources' names methods {unknown} that are not in 'pipelines' ({sorted(pipelines)})")

    scores: list[SliceScore] = []
    cases: list[dict[str, object]] = []
    true_regions: dict[str, list[np.ndarray]] = {m: [] for m in pipelines}
    pred_regions: dict[str, list[np.ndarray]] = {m: [] for m in pipelines}
    measures: dict[str, list[tuple[str, CardiacMeasures]]] = {m: [] for m in (*pipelines, "reference")}
    latency: dict[str, list[float]] = {m: [] for m in pipelines}
    false_positive: dict[str, list[float]] = {m: [] for m in pipelines}
    items: Iterable[tuple[str, Study]] = list(studies)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, unit="study", desc="evaluate")
    for case, study in items:
        ed, es = study.ed, study.es
        if ed.labels is None or es.labels is None:
            raise InputError(f"study {case!r} has no ground-truth labels at ED and ES: it cannot be evaluated")
        measures["reference"].append(
            (
                case,
                cardiac_measures(
                    ed.labels,
                    es.labels,
                    ed.spacing,
                    es.spacing,
                    ed_positions=ed.slice_positions,
                    es_positions=es.slice_positions,
                ),
            )
        )
        for method, pipeline in pipelines.items():
            result = pipeline.segment_study(study, region_source=sources.get(method))
            latency[method].append(result.timings_ms["wall"])
            # as measured: a withheld negative EF counts against the method, not out of the test
            measures[method].append((case, result.measured or result.measures))
            truths = [_truth(seg.stack, case) for seg in (result.ed, result.es)]
            false_positive[method].append(
                sum(
                    (
                        false_positive_ml(seg.labels, truth, seg.stack.spacing)
                        for seg, truth in zip((result.ed, result.es), truths)
                    ),
                    0.0,
                )
            )
            for seg, truth in zip((result.ed, result.es), truths):
                scores += score_stack(seg.labels, truth, method=method, case=case, phase=seg.stack.phase or "")
                cases += case_scores(
                    seg.labels, truth, seg.stack.spacing, method=method, case=case, phase=seg.stack.phase or ""
                )
                if seg.regions is not None:
                    true_regions[method].append(slice_regions(truth).astype(np.int64))
                    pred_regions[method].append(seg.regions.astype(np.int64))
    regions = {
        m: (np.concatenate(true_regions[m]), np.concatenate(pred_regions[m])) for m in pipelines if true_regions[m]
    }
    return EvaluationResult(scores, regions, measures, latency, cases, false_positive)


def _truth(stack: Stack, case: str) -> np.ndarray:
    """The ground-truth labels of one of a study's stacks, uint8 (Z, Y, X)."""
    if stack.labels is None:
        raise InputError(
            f"study {case!r} has no ground-truth labels at {stack.phase or 'a phase'}: it cannot be evaluated"
        )
    return stack.labels


def write_evaluation(
    result: EvaluationResult, out_dir: str | Path, *, baseline: str = "baseline", title: str = ""
) -> Path:
    """Tables 1-3, Figure 2 and volume agreement as CSV, Markdown and PNG; returns report.md.

    Written: ``slice_dice.csv`` (one ``dice_<label>`` column per structure), ``case_scores.csv``
    (Dice, HD95 and mean surface distance per case, phase and structure), ``case_measures.csv``
    (volumes, EF, mass per case and method beside the ground truth's), ``table1_<method>.csv``, ``table2.csv`` (+ confusion matrices in
    the Markdown), ``table3.csv`` (when ``baseline`` was evaluated), ``agreement.csv``,
    ``zero_dice.csv`` (`zero_dice_table`: the slices scoring 0, by cause),
    ``figure2.png``, ``bland_altman_<quantity>_<method>.png``, ``report.md`` and ``report.html`` (the
    same, with the figures inlined: one file to open in a browser).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(result.latency_ms)
    md = [f"# {title or 'cmrsdk evaluation'}", ""]
    n_cases = len(result.measures["reference"])
    md += [
        f"{n_cases} studies (ED and ES), methods: {', '.join(methods)}. Slice Dice in %, NaN (label absent in "
        "both masks) left out; regions from the ground truth (20/60/20 base to apex).",
        "",
    ]
    write_csv(out / "slice_dice.csv", result.scores)
    if result.cases:
        write_csv(out / "case_scores.csv", result.cases)
        md += ["## Per-case scores: mean Dice (%), HD95 and mean surface distance (mm) per structure and phase", ""]
        summary = []
        for method in methods:
            for phase in sorted({str(r["phase"]) for r in result.cases}):
                for name in STRUCTURE_NAMES:
                    rows_ = [
                        r for r in result.cases if r["method"] == method and r["phase"] == phase and r["label"] == name
                    ]

                    def mean(key: str) -> float:
                        values = np.array([float(r[key]) for r in rows_], dtype=np.float64)  # type: ignore[arg-type]
                        values = values[np.isfinite(values)]
                        return float(values.mean()) if values.size else float("nan")

                    summary.append(
                        {
                            "method": method,
                            "phase": phase,
                            "label": name,
                            "dice_pct": 100 * mean("dice"),
                            "hd95_mm": mean("hd95_mm"),
                            "msd_mm": mean("msd_mm"),
                            "cases": len(rows_),
                        }
                    )
        md += [markdown_table(summary), ""]
    measure_rows = []
    reference_by_case = {case: m for case, m in result.measures["reference"]}
    for method in methods:
        for case, measured in result.measures[method]:
            row: dict[str, object] = {"method": method, "case": case}
            for key, value in measured.as_dict().items():
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

    md += [
        "## Where the Dice is lost: slices scoring 0, by cause",
        "",
        "drawn: the model drew the label where the annotators left it out; missed: they drew it and "
        "the model did not; apart: both hold it without overlap. The last column is the mean Dice (%) "
        "over the slices scoring above 0.",
        "",
    ]
    zero_rows = [{"method": m, **row} for m in methods for row in zero_dice_table(result.scores, m)]
    write_csv(out / "zero_dice.csv", zero_rows)
    md += [markdown_table([r for r in zero_rows if r["zero"]]) if any(r["zero"] for r in zero_rows) else "none", ""]

    if result.regions:
        md += ["## Table 2: region classification (weighted precision and recall, %)", ""]
        rows = []
        for method, (t, p) in result.regions.items():
            c = classifier_table(t, p)
            rows.append(
                {
                    "method": method,
                    "precision": c["precision"],
                    "recall": c["recall"],
                    "accuracy": c["accuracy"],
                    "confusion (rows true nc/base/mid/apex)": " / ".join(
                        ",".join(str(v) for v in row) for row in c["confusion"]
                    ),
                }
            )
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
                save_bland_altman(
                    out / f"bland_altman_{quantity}_{method}.png",
                    [p[0] for p in pairs],
                    [p[1] for p in pairs],
                    quantity=quantity,
                )
    write_csv(out / "agreement.csv", rows)
    md += [markdown_table(rows), ""]
    md += [f"![Bland-Altman {q} {m}](bland_altman_{q}_{m}.png)" for m in methods for q in ("lvef_pct", "rvef_pct")] + [
        ""
    ]

    if result.false_positive_ml:
        md += [
            "## No heart, no mask: foreground predicted on slices the ground truth leaves empty (mL per study, ED + ES)",
            "",
        ]
        md += [
            markdown_table(
                [
                    {"method": m, "mean_ml": float(np.mean(v)), "max_ml": float(np.max(v)), "studies": len(v)}
                    for m, v in result.false_positive_ml.items()
                    if v
                ]
            ),
            "",
        ]

    md += ["## Latency per ED+ES pair (ms, median)", ""]
    md += [
        markdown_table(
            [{"method": m, "median_ms": float(np.median(v)), "studies": len(v)} for m, v in result.latency_ms.items()]
        ),
        "",
    ]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(md))
    # the same tables and figures as one self-contained page, for a reader with a browser
    from .._html import markdown_to_html, write_page

    write_page(out / "report.html", title or "cmrsdk evaluation", markdown_to_html("\n".join(md), out))
    return report
