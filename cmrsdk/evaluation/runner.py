"""Running an evaluation: segment labelled studies with each method, score them, write the report.

`evaluate` segments ED and ES of every study with each method's `cmrsdk.Pipeline` and keeps every
score raw (`EvaluationResult`); `write_evaluation` derives the tables (`cmrsdk.evaluation.stats`),
the figures (`cmrsdk.evaluation.figures`) and the report from it. Routing by regions known from
elsewhere -- the ground truth's (the "oracle", `ground_truth_regions`), another classifier's
stored predictions -- is a method whose pipeline gets a region source handed in.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..labels import STRUCTURES
from ..errors import CmrWarning, InputError
from ..io._atomic import atomic_path
from ..regions import slice_regions
from .cases import check_ground_truth, not_annotated
from .figures import save_bland_altman, save_dice_along_heart
from .sources import ground_truth_regions
from .stats import (
    MIN_SUBJECTS,
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

# At run time, not under TYPE_CHECKING: typing.get_type_hints resolves the public signatures
# (sweep 48). Importing the package has loaded cmrsdk.pipeline already, so this costs nothing.
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
    sources : case -> where its study was read from (`StudyInfo.source`).
    not_annotated : case -> {(phase, structure)} the reference leaves empty in a whole phase
        (`cmrsdk.evaluation.cases.not_annotated`): left out of the Dice scores (NaN) and of the
        reference measures that need them (NaN).
    warnings : case -> the warnings raised while scoring it (cmrsdk's, one line each).
    notes : remarks on the whole evaluation for the top of the report (a bundle whose routing
        cannot change a segmentation).
    """

    scores: list[SliceScore]
    regions: dict[str, tuple[np.ndarray, np.ndarray]]
    measures: dict[str, list[tuple[str, CardiacMeasures]]]
    latency_ms: dict[str, list[float]]
    cases: list[dict[str, object]] = field(default_factory=list)
    false_positive_ml: dict[str, list[float]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    not_annotated: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


#: (phase, structure) each measure needs annotated in the reference.
_NEEDS = {
    "lvedv_ml": (("ED", "LVBP"),),
    "lvesv_ml": (("ES", "LVBP"),),
    "lvsv_ml": (("ED", "LVBP"), ("ES", "LVBP")),
    "lvef_pct": (("ED", "LVBP"), ("ES", "LVBP")),
    "lv_mass_g": (("ED", "LVM"),),
    "rvedv_ml": (("ED", "RVBP"),),
    "rvesv_ml": (("ES", "RVBP"),),
    "rvsv_ml": (("ED", "RVBP"), ("ES", "RVBP")),
    "rvef_pct": (("ED", "RVBP"), ("ES", "RVBP")),
}


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
    studies : (case name, `Study` whose ED and ES stacks carry ground-truth labels); case names
        must be distinct (two studies are never merged into one reference).
    region_sources : method name -> the region source its routed pipeline routes by (see
        `cmrsdk.pipeline.RegionSource`), e.g. ``{"oracle": ground_truth_regions}``; methods not
        named route as their pipeline does.
    progress : show a tqdm progress bar over the studies.

    A structure the reference leaves empty in a whole phase was not annotated: it is left out of
    that phase's scores and of the measures that need it, with a warning in ``warnings``. cmrsdk
    warnings raised while segmenting are recorded per case in ``warnings``, not shown.

    Raises
    ------
    InputError
        A case name given twice, a region source for an unknown method.
    ReadError
        A study without label maps at ED or ES, or whose label maps hold no label.
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
    sources_of: dict[str, str] = {}
    for case, study in items:
        where = study.info.source or case
        if case in sources_of:
            raise InputError(
                f"case name {case!r} is given twice ({sources_of[case]} and {where}): each case needs its own name, "
                "or the two would share one reference"
            )
        sources_of[case] = where
        check_ground_truth(study, where)  # every study's problem before any is segmented
    missing_of: dict[str, set[tuple[str, str]]] = {}
    case_warnings: dict[str, list[str]] = {}
    if progress:
        from tqdm import tqdm

        items = tqdm(items, unit="study", desc="evaluate")
    for case, study in items:
        ed, es = study.ed, study.es
        missing, notes = not_annotated(study)
        missing_of[case] = missing
        reference = cardiac_measures(
            _truth(ed, case),
            _truth(es, case),
            ed.spacing,
            es.spacing,
            ed_positions=ed.slice_positions,
            es_positions=es.slice_positions,
        )
        # a volume of a structure nobody drew is unknown, not 0 mL
        undrawn = {key: float("nan") for key, needs in _NEEDS.items() if missing & set(needs)}
        measures["reference"].append((case, CardiacMeasures(**{**reference.as_dict(), **undrawn})))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CmrWarning)
            _segment_and_score(
                case,
                study,
                missing,
                pipelines,
                sources,
                scores=scores,
                cases=cases,
                true_regions=true_regions,
                pred_regions=pred_regions,
                measures=measures,
                latency=latency,
                false_positive=false_positive,
            )
        for w in caught:
            if not issubclass(w.category, CmrWarning):  # not the study's: shown as it would have been
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        said = [" ".join(str(w.message).split()) for w in caught if issubclass(w.category, CmrWarning)]
        case_warnings[case] = list(dict.fromkeys([*notes, *said]))
    regions = {
        m: (np.concatenate(true_regions[m]), np.concatenate(pred_regions[m])) for m in pipelines if true_regions[m]
    }
    return EvaluationResult(
        scores,
        regions,
        measures,
        latency,
        cases,
        false_positive,
        sources=sources_of,
        not_annotated=missing_of,
        warnings={case: said for case, said in case_warnings.items() if said},
        notes=_routing_notes(pipelines, sources),
    )


def _segment_and_score(
    case: str,
    study: Study,
    missing: set[tuple[str, str]],
    pipelines: Mapping[str, Pipeline],
    sources: Mapping[str, RegionSource],
    *,
    scores: list[SliceScore],
    cases: list[dict[str, object]],
    true_regions: dict[str, list[np.ndarray]],
    pred_regions: dict[str, list[np.ndarray]],
    measures: dict[str, list[tuple[str, CardiacMeasures]]],
    latency: dict[str, list[float]],
    false_positive: dict[str, list[float]],
) -> None:
    """One study under every method, its rows appended to the lists of `evaluate`."""
    nan = float("nan")
    blank = {phase: {j for j, name in enumerate(STRUCTURE_NAMES) if (phase, name) in missing} for phase in ("ED", "ES")}
    # a phase nobody annotated has no heart to route by, score against or find false positives beside
    annotated = {phase for phase in ("ED", "ES") if len(blank[phase]) < len(STRUCTURE_NAMES)}
    for method, pipeline in pipelines.items():
        result = pipeline.segment_study(study, region_source=sources.get(method))
        latency[method].append(result.timings_ms["wall"])
        # as measured: a withheld negative EF counts against the method, not out of the test
        measures[method].append((case, result.measured or result.measures))
        truths = [_truth(seg.stack, case) for seg in (result.ed, result.es)]
        false_positive[method].append(
            sum(
                (
                    false_positive_ml(
                        seg.labels,
                        truth,
                        seg.stack.spacing,
                        [code for j, code in enumerate(STRUCTURES) if j not in blank[phase]],
                    )
                    for seg, truth, phase in zip((result.ed, result.es), truths, ("ED", "ES"))
                    if phase in annotated
                ),
                0.0,
            )
        )
        for seg, truth, phase in zip((result.ed, result.es), truths, ("ED", "ES")):
            rows = score_stack(seg.labels, truth, method=method, case=case, phase=seg.stack.phase or phase)
            if blank[phase]:  # not annotated: NaN, left out like a label absent from both masks
                rows = [
                    dataclasses.replace(r, dice=tuple(nan if j in blank[phase] else d for j, d in enumerate(r.dice)))  # type: ignore[arg-type]
                    for r in rows
                ]
            scores += rows
            for row in case_scores(
                seg.labels, truth, seg.stack.spacing, method=method, case=case, phase=seg.stack.phase or phase
            ):
                if (phase, row["label"]) in missing:
                    row.update(dice=nan, hd95_mm=nan, msd_mm=nan)
                cases.append(row)
            if seg.regions is not None and phase in annotated:
                true_regions[method].append(slice_regions(truth).astype(np.int64))
                pred_regions[method].append(seg.regions.astype(np.int64))


def _routing_notes(pipelines: Mapping[str, Pipeline], sources: Mapping[str, RegionSource]) -> list[str]:
    """A note where routing cannot change anything: every region of every method's bundle goes to one U-Net."""
    weights: set[tuple[str, ...]] = set()
    names: set[str] = set()
    for pipeline in pipelines.values():
        bundle = getattr(pipeline, "bundle", None)
        routing = getattr(bundle, "routing", None)
        if not routing:
            return []
        for name in set(routing.values()):
            names.add(name)
            # the same weights under two names (region models copied from the baseline) are one U-Net
            weights.add(tuple(sorted(a.sha256 for a in bundle.models[name].artifacts.values())))  # type: ignore[union-attr]
    routed = [m for m, p in pipelines.items() if getattr(p, "mode", "") == "routed" or m in sources]
    if len(weights) != 1 or not routed:
        return []
    # Methods given regions (the oracle) still differ where those regions call a slice cardiac or
    # non-cardiac otherwise than the rule on the masks (a non-cardiac slice gets no mask), and the
    # heart is located on the slices they call middle (sweep 47).
    alike = [m for m in pipelines if m not in sources]
    given = [m for m in pipelines if m in sources]
    said = []
    if len(alike) > 1:
        said.append(f"{_joined(alike)} segment alike")
    elif alike and alike[0] != "baseline":  # "baseline segments as the baseline" said nothing (sweep 49)
        said.append(f"{alike[0]} segments as the baseline")
    if given:
        whose = "ground-truth regions"
        if any(sources[m] is not ground_truth_regions for m in given):
            whose = "regions handed in"
        than = "them" if len(alike) > 1 else "it" if said else alike[0] if alike else "the baseline"
        said.append(
            f"{_joined(given)} {'differs' if len(given) == 1 else 'differ'} from {than} where its {whose} call a "
            "slice cardiac or non-cardiac otherwise than the rule does, or centre the heart's window elsewhere"
        )
    return [
        f"this bundle routes every region to one U-Net ({', '.join(sorted(names))}): routing changes no slice, "
        f"so {'; '.join(said)}"
    ]


def _joined(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def _truth(stack: Stack, case: str) -> np.ndarray:
    """The ground-truth labels of one of a study's stacks, uint8 (Z, Y, X)."""
    if stack.labels is None:
        raise InputError(
            f"study {case!r} has no ground-truth labels at {stack.phase or 'a phase'}: it cannot be evaluated"
        )
    return stack.labels


def write_evaluation(
    result: EvaluationResult,
    out_dir: str | Path,
    *,
    baseline: str = "baseline",
    title: str = "",
    skipped: Sequence[tuple[str, str]] = (),
) -> Path:
    """Tables 1-3, Figure 2 and volume agreement as CSV, Markdown and PNG; returns report.md.

    Written: ``slice_dice.csv`` (one ``dice_<label>`` column per structure), ``case_scores.csv``
    (Dice, HD95 and mean surface distance per case, phase and structure), ``case_measures.csv``
    (volumes, EF, mass per case and method beside the ground truth's), ``table1_<method>.csv``, ``table2.csv`` (+ confusion matrices in
    the Markdown), ``table3.csv`` (when ``baseline`` was evaluated), ``agreement.csv``,
    ``zero_dice.csv`` (`zero_dice_table`: the slices scoring 0, by cause),
    ``figure2.png``, ``bland_altman_<quantity>_<method>.png``, ``report.md`` and ``report.html`` (the
    same, with the figures inlined: one file to open in a browser).

    The files go into ``out_dir`` as they are made; `cmrsdk evaluate` hands a staging folder
    (`cmrsdk.evaluation.output.staged_output`) so that OUT is replaced whole or not at all.

    Parameters
    ----------
    skipped : (folder, reason) of the studies not evaluated, listed at the top of the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(result.latency_ms)
    md = [f"# {title or 'cmrsdk evaluation'}", ""]
    n_cases = len(result.measures["reference"])
    md += [
        f"{n_cases} studies (ED and ES), methods: {', '.join(methods)}. Slice Dice in %, NaN (label absent in "
        "both masks, or not annotated) left out; regions from the ground truth (20/60/20 base to apex).",
        "",
    ]
    md += [f"**Note:** {note}." for note in result.notes] + ([""] if result.notes else [])
    if skipped:
        md += [f"**{len(skipped)} folders not evaluated**, left out of every table:", ""]
        md += [f"- skipped: {path}: {' '.join(reason.split())}" for path, reason in skipped] + [""]
    missing = {case: m for case, m in result.not_annotated.items() if m}
    if missing:
        md += ["**Not annotated** (left out of the Dice scores and of the volume agreement, not charged to the model):"]
        md += [""] + [f"- {case}: {_describe_missing(m)}" for case, m in missing.items()] + [""]
    if n_cases < MIN_SUBJECTS:
        md += [
            f"**Too few subjects for tests:** p-values need at least {MIN_SUBJECTS} subjects (slices of one heart "
            f"are not independent); with {n_cases}, Tables 1 and 3 give none (–).",
            "",
        ]
    write_csv(out / "slice_dice.csv", result.scores)
    if result.cases:
        write_csv(out / "case_scores.csv", result.cases)
        md += _case_summary(result.cases, methods)
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

    md += [
        "## Table 1: mean (SD) Dice per region, n slices; * p < 0.01 (Welch's t-test against the middle; "
        f"p-values given where at least {MIN_SUBJECTS} subjects)",
        "",
    ]
    for method in methods:
        table = regional_table(result.scores, method)
        write_csv(out / f"table1_{method}.csv", table)
        rows = []
        for r in table:
            cell = {}
            for region in ("base", "middle", "apex"):
                star = "*" if r.get(f"{region}_significant") else ""
                mean, sd = _number(r[f"{region}_mean"]), _number(r[f"{region}_sd"])
                cell[region] = f"{mean}{star} ({sd}) n={r[f'{region}_n']}" if r[f"{region}_n"] else "–"
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
        md += [
            f"## Table 3: change against {baseline} (mean and SD, points of %); * p < 0.01 (paired t-test; "
            f"p-values given where at least {MIN_SUBJECTS} subjects)",
            "",
        ]
        rows3 = [row for m in methods if m != baseline for row in improvement_table(result.scores, baseline, m)]
        write_csv(out / "table3.csv", rows3)
        for row in rows3:
            change = float(row["mean_change"])  # type: ignore[arg-type]
            star = "*" if row["significant"] else ""
            row["mean_change"] = f"{change:+.2f}{star}" if math.isfinite(change) else "–"
        md += [markdown_table(rows3, ["method", "region", "label", "n", "subjects", "mean_change", "sd_change", "p"])]
        md += [""]

    curves = {m: dice_along_heart(result.scores, m) for m in methods}
    save_dice_along_heart(out / "figure2.png", curves, title=title)
    md += ["## Figure 2: Dice from base to apex", "", "![Dice along the heart](figure2.png)", ""]

    md += _agreement_section(result, methods, out)

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
    if result.sources:
        md += ["## Cases: where each was read from", ""]
        md += [
            markdown_table(
                [
                    {"case": case, "folder": source, "warnings": len(result.warnings.get(case, []))}
                    for case, source in result.sources.items()
                ]
            ),
            "",
        ]
    if result.warnings:
        md += ["## Warnings per study", ""]
        for case, said in result.warnings.items():
            md += [f"- {case}: {message}" for message in said]
        md += [""]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(md))
    # the same tables and figures as one self-contained page, for a reader with a browser
    from .._html import markdown_to_html, write_page

    write_page(out / "report.html", title or "cmrsdk evaluation", markdown_to_html("\n".join(md), out))
    return report


def _number(value: object) -> str:
    """A float to two decimals, NaN as an en dash (as `markdown_table` writes it)."""
    return f"{value:.2f}" if isinstance(value, float) and math.isfinite(value) else "–"


def _describe_missing(missing: set[tuple[str, str]]) -> str:
    """``ES (no label at all); RVBP at ED`` from {(phase, structure)}."""
    parts = []
    for phase in ("ED", "ES"):
        names = [name for name in STRUCTURE_NAMES if (phase, name) in missing]
        if len(names) == len(STRUCTURE_NAMES):
            parts.append(f"{phase} (no label at all)")
        elif names:
            parts.append(f"{', '.join(names)} at {phase}")
    return "; ".join(parts)


def _case_summary(rows: list[dict[str, object]], methods: list[str]) -> list[str]:
    """The per-case summary: means over the cases scored, infinite HD95 counted and named, not hidden."""
    md = ["## Per-case scores: mean Dice (%), HD95 and mean surface distance (mm) per structure and phase", ""]
    summary = []
    infinite = []
    for method in methods:
        for phase in sorted({str(r["phase"]) for r in rows}):
            for name in STRUCTURE_NAMES:
                chosen = [r for r in rows if r["method"] == method and r["phase"] == phase and r["label"] == name]
                # NaN Dice: not annotated (or absent from both masks): no case to score
                scored = [r for r in chosen if math.isfinite(float(r["dice"]))]  # type: ignore[arg-type]
                lost = [r for r in scored if not math.isfinite(float(r["hd95_mm"]))]  # type: ignore[arg-type]
                infinite += lost

                def mean(key: str) -> float:
                    values = np.array([float(r[key]) for r in scored], dtype=np.float64)  # type: ignore[arg-type]
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
                        "cases": len(scored),
                        "hd95_left_out": len(lost),
                    }
                )
    md += [markdown_table(summary), ""]
    if infinite:
        md += [
            f"hd95_left_out: {len(infinite)} case scores with the structure in the reference only: HD95 and mean "
            "surface distance infinite, left out of those means (their Dice counts):",
            "",
        ]
        md += [
            f"- {r['method']}, {r['case']}, {r['phase']}: no predicted {r['label']} (Dice {float(r['dice']):.2f})"  # type: ignore[arg-type]
            for r in infinite
        ]
        md += [""]
    return md


#: the measures compared with the reference in the agreement table and its figures.
_AGREEMENT = ("lvedv_ml", "lvesv_ml", "lvef_pct", "lv_mass_g", "rvedv_ml", "rvesv_ml", "rvef_pct")


def _agreement_section(result: EvaluationResult, methods: list[str], out: Path) -> list[str]:
    """Bland-Altman rows with n used and n left out, each case left out named with the reason."""
    md = ["## Volumes and EF against the ground truth (Bland-Altman)", ""]
    reference = {case: m for case, m in result.measures["reference"]}
    rows = []
    left_out: dict[tuple[str, str, str], list[str]] = {}
    for method in methods:
        for quantity in _AGREEMENT:
            pairs = [
                (case, float(getattr(m, quantity)), float(getattr(reference[case], quantity)))
                for case, m in result.measures[method]
            ]
            a = agreement([p[1] for p in pairs], [p[2] for p in pairs])
            rows.append({"method": method, "quantity": quantity, **a})
            for case, measured, truth in pairs:
                if not (math.isfinite(measured) and math.isfinite(truth)):
                    why = _why_no_value(result, method, case, quantity, truth)
                    left_out.setdefault((method, case, why), []).append(quantity)
            if quantity in ("lvef_pct", "rvef_pct"):
                save_bland_altman(
                    out / f"bland_altman_{quantity}_{method}.png",
                    [p[1] for p in pairs],
                    [p[2] for p in pairs],
                    quantity=quantity,
                )
    write_csv(out / "agreement.csv", rows)
    md += [markdown_table(rows), ""]
    if left_out:
        md += ["excluded: the cases left out of a row, and why:", ""]
        md += [
            f"- {method}, {case}: {', '.join(quantities)} ({why})"
            for (method, case, why), quantities in left_out.items()
        ]
        md += [""]
    md += [f"![Bland-Altman {q} {m}](bland_altman_{q}_{m}.png)" for m in methods for q in ("lvef_pct", "rvef_pct")]
    return md + [""]


def _why_no_value(result: EvaluationResult, method: str, case: str, quantity: str, truth: float) -> str:
    """Why a (measured, reference) pair has no number: not annotated, or what the method failed to find."""
    if not math.isfinite(truth):
        needs = set(_NEEDS[quantity]) & result.not_annotated.get(case, set())
        if needs:
            return "not annotated: " + ", ".join(f"{name} at {phase}" for phase, name in sorted(needs))
        return "no reference value"
    measured = dict(result.measures[method])[case]
    side = "lv" if quantity.startswith("lv") else "rv"
    empty = [phase for phase in ("ED", "ES") if not getattr(measured, f"{side}{phase.lower()}v_ml") > 0]
    if empty:
        return f"no predicted {'LV' if side == 'lv' else 'RV'} at {' and '.join(empty)}"
    return "no measured value"
