"""The study page a clinician opens: report.html beside report.json, one self-contained file.

It shows what report.json holds, in the order a reader looks for it: the measures with units,
indexed values and published adult ranges; the quality flags in words; the ED and ES montage
(`cmrsdk.montage`); the region and confidence of every slice; the LV and RV volume curves over
the cine with ED and ES marked; provenance and timings. Numbers come from the ``report`` dict
(so the page and report.json never disagree); pictures from the segmentation itself.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import _html
from .montage import montage_drawing_ms, study_montage_png
from .pipeline import StudySegmentation
from .reference_ranges import (
    INDEXED_RANGES,
    REFERENCE_RANGES,
    SOURCES,
    ReferenceRange,
    body_surface_area_m2,
    unused_biometrics,
)
from .types import Study

__all__ = ["QUALITY_FLAG_TEXT", "MEASURE_ROWS", "volume_curve_svg", "render_report_html", "write_report_html"]

#: each quality flag of `cmrsdk.metrics.quality_flags`, as a sentence.
QUALITY_FLAG_TEXT: dict[str, str] = {
    "no_lv": "No LV blood pool was found on any slice.",
    "no_rv": "No RV blood pool was found on any slice.",
    "basal_coverage": "The most basal slice already holds LV blood pool: the stack may not cover the base, "
    "so volumes may be underestimated.",
    "apical_coverage": "The most apical slice still holds LV blood pool: the stack may not cover the apex.",
    "apical_truncation": "The LV blood pool stops abruptly toward the apex, with slices beyond it: an apical "
    "piece may be missing or drawn as another structure (LV volumes and mass too small); check the apex.",
    "lv_gap": "A slice without LV blood pool lies between slices with it.",
    "rv_gap": "A slice without RV blood pool lies between slices with it.",
    "lvbp_fragments": "On at least one slice the LV blood pool falls into several pieces.",
    "lvm_fragments": "On at least one slice the LV myocardium falls into several pieces.",
    "rvbp_fragments": "On at least one slice the RV blood pool falls into several pieces.",
    "single_slice": "One slice only: no volume can be measured from it.",
    "slice_gap": "The slice positions leave a gap (a slice missing): each slice counts with the distance "
    "to its neighbours, so the volumes are measured at the stack's real size; check the missing slice. "
    "The labels NIfTI holds an empty slice in the gap (one slice step per file, each slice where it was "
    "acquired): its voxels sum to less than these volumes.",
    "repeated_slice": "A slice position is in the stack twice (a repeated breath-hold, or a copied slice): "
    "it is counted twice in the volumes.",
    "blank_image": "Every pixel is zero: nothing was segmented.",
    "thick_slices": "The slices lie over 12 mm apart, beyond the 5-10 mm the networks were trained and tested on: "
    "the basal and apical slices, and the RV above all, are less certain; check the picture.",
    "thin_slices": "The slices lie under 3 mm apart, closer than any short-axis cine's (5-10 mm): a 3-D "
    "acquisition, voxel sizes lost by a converter (1 mm written), or a cine's phases stacked as slices; the "
    "volumes are measured with that spacing: check the voxel sizes and the input.",
    "field_edge": "The masks reach the edge of the field the networks saw: part of the heart may lie outside it.",
    "low_confidence": "The networks were less certain of this stack than of any in their test sets (an image "
    "unlike their training data's: another scanner, sequence or artefact); the masks look like a heart and were "
    "kept: check every contour.",
    "lv_not_ringed": "On a slice away from the base the LV blood pool is not ringed by myocardium (under 60 % "
    "of its border): not an LV a reader would draw (an RV or atrium drawn as LV, or a failed slice); check "
    "the LV contours.",
    "small_heart": "The LV is smaller than any the networks were trained on (a child's heart, or pixel sizes "
    "misstated): the study was segmented again as if its pixels were larger, so the heart lay at a trained "
    "size, and measured with its own; check every contour.",
    "large_heart": "The LV is larger than any the networks were trained on (a hugely dilated heart, or pixel "
    "sizes misstated): the study was segmented again as if its pixels were smaller, so the heart lay at a "
    "trained size within the analysed field, and measured with its own; check every contour.",
}
#: each study flag of `cmrsdk.report.study_report`, as a sentence.
STUDY_FLAG_TEXT: dict[str, str] = {
    "single_phase": "One phase only: nothing says where in the cardiac cycle it lies, so its volumes are "
    "those of that phase, with no stroke volume or ejection fraction.",
    "no_volume_change": "The LV volume is the same in every phase (a static series): no end-systole was "
    "found, so no end-systolic volume, stroke volume or ejection fraction.",
    "lv_esv_exceeds_edv": "The LV measures larger at ES than at ED: no ejection can be measured (a failed "
    "segmentation, or a ventricle that barely ejects); LV stroke volume and ejection fraction are withheld.",
    "rv_esv_exceeds_edv": "The RV measures larger at ES than at ED: no ejection can be measured (a failed "
    "segmentation, or a ventricle that barely ejects); RV stroke volume and ejection fraction are withheld.",
    "ed_es_swapped": "Both ventricles measure larger at the phase the input names ES than at the one it names "
    "ED: ED and ES look swapped in the input (Info.cfg, file names, the DICOM's phases). The volumes and the "
    "LV mass are given at the phases as named and are not marked against the ranges; check which is which.",
    "phase_without_lv": "A phase of the cine shows no LV while others do (a blank frame, a failed "
    "segmentation): it was never taken for end-systole.",
    "ed_es_coverage_differs": "ED and ES hold other slice positions: the volumes compare unlike stacks, "
    "and the rule for the ES basal RV is not applied.",
    "lv_not_found": "No LV blood pool was found at ED or ES (a heart the networks did not find, a blank or "
    "unusual image): the LV measures there are not measured, not 0 mL.",
    "rv_not_found": "No RV blood pool was found at ED or ES, or none beside an LV: the RV measures there are not "
    "measured, not 0 mL.",
    "es_basal_rv_uncertain": "The most basal end-systolic RV slice lies near the rule that tells ventricle from "
    "atrium where the valve plane descends (cmrsdk.systole: kept from 0.4 of that slice's RV area at ED): the "
    "decision is close, and the RV's end-systolic measures hang on it; check that slice.",
    "es_lv_lost": "End-systole has no LV on three or more slices where end-diastole's LV is large: an LV "
    "does not empty in systole, so the end-systolic volume, stroke volume and ejection fraction are likely "
    "wrong; check the end-systolic contours.",
    "lvedv_below_adult": "The LV end-diastolic volume is under 40 mL, smaller than an adult's: the voxel "
    "sizes may be misstated (a file that lost its pixel spacing or slice spacing) or the heart is a "
    "child's; check the voxel sizes before reading any volume.",
    "ed_es_off_curve": "The ED or ES the input names is far from the LV volume curve's largest or smallest phase "
    "(over 1.2 times): the measures are read at the named phases; check that the input names the right ones.",
    "rv_es_differs": "The RV is far smaller on another phase than at the LV's end-systole: RVESV and RVEF are "
    "read at the LV's end-systole and may be wrong; check the RV contours on the curve's phases.",
}

#: (key in report["measures"], what it is, unit), in reading order.
MEASURE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("lvedv_ml", "LV end-diastolic volume", "mL"),
    ("lvesv_ml", "LV end-systolic volume", "mL"),
    ("lvsv_ml", "LV stroke volume", "mL"),
    ("lvef_pct", "LV ejection fraction", "%"),
    ("lv_mass_g", "LV mass (at ED, 1.05 g/mL)", "g"),
    ("rvedv_ml", "RV end-diastolic volume", "mL"),
    ("rvesv_ml", "RV end-systolic volume", "mL"),
    ("rvsv_ml", "RV stroke volume", "mL"),
    ("rvef_pct", "RV ejection fraction", "%"),
)
#: the rows of a one-phase study (`cmrsdk.report.study_report`'s ``lv_volume_ml``, ``rv_volume_ml``):
#: nothing says which phase it is, so no end-diastolic name and no ED range.
SINGLE_PHASE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("lv_volume_ml", "LV blood-pool volume (the one phase)", "mL"),
    ("lv_mass_g", "LV mass (1.05 g/mL)", "g"),
    ("rv_volume_ml", "RV blood-pool volume (the one phase)", "mL"),
)
#: the curves' colours: Okabe-Ito vermillion and blue, apart for colour-blind readers and on white
#: (the picture's RV yellow, `cmrsdk.montage.STRUCTURE_COLOURS`, would not show on a white plot)
_COLOURS = {"LV": "#d55e00", "RV": "#0072b2"}


def _single(report: Mapping[str, Any]) -> bool:
    return "single_phase" in report.get("flags", []) or len(report.get("phases", [])) == 1


def _with_unit(value: Any, unit: str, digits: int = 1) -> str:
    """``"59.0 %"``, or ``"–"`` alone for an unknown value (no unit after a dash)."""
    text = _number(value, digits)
    return text if text == "–" else f"{text} {unit}"


def _number(value: Any, digits: int = 1) -> str:
    """``value`` to ``digits`` decimals, halves rounded up as a reader rounds report.json's number
    (its 98.85 mL shows 98.9, where binary rounding gave 98.8: sweep 32)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    try:
        return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))
    except InvalidOperation:  # beyond the decimal context's 28 digits: no measure, but never a crash
        return f"{float(value):.{digits}f}"


def _range_text(r: ReferenceRange | None) -> str:
    if r is None:
        return "–"
    return f"{r.men[0]:g}–{r.men[1]:g} / {r.women[0]:g}–{r.women[1]:g}"


#: under this age (years) the adult ranges do not apply: values are shown unmarked
ADULT_AGE_YEARS = 18.0

#: where the age is unknown (NIfTI, ACDC folders, anonymised DICOM), a patient under this height
#: (cm) or weight (kg) may be a child, and the adult ranges are not marked either: a 110 cm,
#: 18 kg child's LVEDV of 49 mL was marked low against 83-187 (sweep 17)
CHILD_HEIGHT_CM = 150.0
CHILD_WEIGHT_KG = 40.0


def _possibly_child(height_cm: float | None, weight_kg: float | None) -> str:
    """Why a patient of unknown age may be a child ("" when nothing says so): a height under
    `CHILD_HEIGHT_CM` or a weight under `CHILD_WEIGHT_KG` that is used (not set aside by
    `unused_biometrics`: a height in inches is no child's, and silenced every mark, sweep 32)."""
    unused = unused_biometrics(height_cm, weight_kg)
    if height_cm is not None and "height_cm" not in unused and height_cm < CHILD_HEIGHT_CM:
        return f"height {height_cm:g} cm"
    if weight_kg is not None and "weight_kg" not in unused and weight_kg < CHILD_WEIGHT_KG:
        return f"weight {weight_kg:g} kg"
    return ""


def _flagged(value: float | None, r: ReferenceRange | None, sex: str | None = None) -> tuple[str, str]:
    """The value's cell as ("html", markup), marked when outside the range of the patient's
    ``sex`` ("M" / "F"), or of both sexes where it is unknown.

    Judged by the value as shown (one decimal, as the range bounds): 58.96 shows "59.0" beside
    "59–83" and is not marked low, where the reader could not see why it was."""
    text = _number(value)
    where = r.outside(float(text), sex) if (r is not None and value is not None and text != "–") else ""
    if not where:
        return ("html", _html.escape(text))
    arrow = "↓" if where == "low" else "↑"
    whose = {"M": "men", "F": "women"}.get(sex or "", "both sexes")
    return (
        "html",
        f'<span class="{where}" title="outside the published range for {whose}">{_html.escape(text)} {arrow}</span>',
    )


def _measures_section(report: Mapping[str, Any], study: Study | None) -> str:
    measures = report.get("measures", {})
    info = study.info if study is not None else None
    height, weight = getattr(info, "height_cm", None), getattr(info, "weight_kg", None)
    sex, age = getattr(info, "sex", None), getattr(info, "age_years", None)
    small = _possibly_child(height, weight) if age is None else ""
    swapped = "ed_es_swapped" in report.get("flags", [])
    child = (age is not None and age < ADULT_AGE_YEARS) or bool(small)
    bsa = body_surface_area_m2(height, weight)
    header = ["measure", "value", "unit", "adult range, men / women"]
    if bsa is not None:
        header += ["indexed (/m² BSA)", "indexed range, men / women"]
    rows = []
    used_sources: list[str] = []
    for key, title, unit in SINGLE_PHASE_ROWS if _single(report) else MEASURE_ROWS:
        value = measures.get(key)
        ref = REFERENCE_RANGES.get(key)
        row: list[object] = [title, _flagged(value, None if child or swapped else ref, sex), unit, _range_text(ref)]
        if ref is not None and ref.source not in used_sources:
            used_sources.append(ref.source)
        if bsa is not None:
            indexed = value / bsa if value is not None and unit in ("mL", "g") else None
            iref = INDEXED_RANGES.get(key) if indexed is not None else None
            row += [
                _flagged(indexed, None if child or swapped else iref, sex) if indexed is not None else "–",
                _range_text(iref) if indexed is not None else "–",
            ]
            if iref is not None and iref.source not in used_sources:
                used_sources.append(iref.source)
        rows.append(row)
    parts = ["<h2>Measures</h2>", _html.table(header, rows, numeric=[1, 4] if bsa is not None else [1], cls="measures")]
    parts.append(f'<p class="small">{_html.escape(_bsa_text(bsa, height, weight))}</p>')
    notes = "; ".join(f"[{i + 1}] {_html.escape(SOURCES[s])}" for i, s in enumerate(used_sources))
    marked = (
        "not marked: ED and ES look swapped in the input"
        if swapped
        else f"not marked: the patient is {age:g} years old and the ranges are adults'"
        if child and age is not None
        else f"not marked: the age is not known and the {small} may be a child's"
        if child
        else f"values outside the {'men' if sex == 'M' else 'women'}'s range are marked ↑ ↓"
        if sex in ("M", "F")
        else "values outside both are marked ↑ ↓: the patient's sex is not known"
    )
    ranges = (
        f"Ranges are the published mean ± 2 SD of healthy adults, men / women ({marked}); "
        if used_sources
        else "No reference range applies to these measures; "
    )
    parts.append(
        f'<p class="small">{ranges}volumes by slice summation with papillary muscles in '
        f"the blood pool, as ACDC labels them.{f' Sources: {notes}.' if notes else ''}</p>"
    )
    return "\n".join(parts)


def _bsa_text(bsa: float | None, height: float | None, weight: float | None) -> str:
    """Where the BSA comes from, or why there is none, naming what is known and what is set aside."""
    if bsa is not None:
        return f"Body surface area {bsa:.2f} m² (Mosteller) from height {height:g} cm and weight {weight:g} kg."
    if height is None and weight is None:
        return "Height and weight are not known: no indexed values."
    unused = unused_biometrics(height, weight)
    said = []
    for name, value, unit in (("height", height, "cm"), ("weight", weight, "kg")):
        why = unused.get(f"{name}_{unit}", "")
        if value is None:
            said.append(f"{name} is not known")
        elif why and value == 0:
            said.append(f"{name} 0 {unit} means not entered, and is not used")
        elif why and "body-mass index" in why:
            if why not in said:
                said.append(why)
        elif why:
            said.append(f"{name} {value:g} {unit} is not a plausible {name} (a unit mistake?) and is not used")
        else:
            said.append(f"{name} {value:g} {unit}")
    text = "; ".join(said)
    return f"{text[:1].upper()}{text[1:]}: no body surface area, so no indexed values."


def _ed_es(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The report's ED and ES phase entries (a cine's other frames are not measured)."""
    phases = report.get("phases", [])
    picked = [
        phases[i]
        for i in dict.fromkeys((report.get("ed_index"), report.get("es_index")))
        if isinstance(i, int) and 0 <= i < len(phases)
    ]
    return picked or list(phases[:2])


def _phase_name(report: Mapping[str, Any], phase: Mapping[str, Any]) -> str:
    """ "ED" / "ES" for the chosen frames (readers name a cine's frames "frame 7"), else the phase's own name."""
    phases = report.get("phases", [])
    if len(phases) == 1:  # nothing says which phase of the cycle it is
        return str(phase.get("phase") or "single phase")
    for key, name in (("ed_index", "ED"), ("es_index", "ES")):
        index = report.get(key)
        if isinstance(index, int) and 0 <= index < len(phases) and phases[index] is phase:
            return name if len(phases) <= 2 or phase.get("phase") in (None, name) else f"{name} ({phase.get('phase')})"
    return str(phase.get("phase") or "")


#: (key in report["study"], what it is): the identifiers a reader matches the page to the patient by
_IDENTIFIERS = (
    ("patient_id", "Patient ID"),
    ("study_date", "study date"),
    ("accession_number", "accession"),
    ("study_uid", "study UID"),
    ("series_uid", "series UID"),
)


def _identifiers(info: Mapping[str, Any]) -> str:
    """One line of the study's identifiers, or one saying the input carried none (NIfTI)."""
    known = [f"{name} {info[key]}" for key, name in _IDENTIFIERS if info.get(key)]
    text = " · ".join(known) if known else "The input carries no patient or study identifiers."
    return f'<p class="sub">{_html.escape(text)}</p>'


def _flag_detail(flag: str, report: Mapping[str, Any]) -> str:
    """The figures a study flag's sentence goes on with, where the report holds them."""
    if flag == "ed_es_off_curve" and "lv_smallest_index" in report:
        curve = report.get("lv_volume_curve_ml") or []
        named = [
            (i, curve[i]) for i in (report.get("ed_index"), report.get("es_index")) if i is not None and i < len(curve)
        ]
        at = ", ".join(f"phase {i}: {v:.1f} mL" for i, v in named if v is not None)
        big, small = report["lv_largest_index"], report["lv_smallest_index"]
        return (
            f" Named ED and ES: {at}; the curve's largest phase {big} ({curve[big]:.1f} mL), "
            f"smallest phase {small} ({curve[small]:.1f} mL)."
        )
    other = report.get("es_basal_rv_other_decision")
    if flag != "es_basal_rv_uncertain" or not other:
        return ""
    return (
        f" Slice {other['slice']}: its RV is {other['area_ratio']:.2f} of its area at ED and was "
        f"{other['decided']}; decided the other way, RVESV {other['rvesv_ml']:.1f} mL and RVEF {other['rvef_pct']:.1f} %."
    )


def _flags_section(report: Mapping[str, Any]) -> str:
    items = [
        f"<li><b>Study</b>: {_html.escape(STUDY_FLAG_TEXT.get(flag, flag.replace('_', ' ')) + _flag_detail(flag, report))}</li>"
        for flag in report.get("flags", [])
    ]
    for phase in _ed_es(report):
        for flag in phase.get("quality_flags", []):
            text = QUALITY_FLAG_TEXT.get(flag, flag.replace("_", " "))
            items.append(f"<li><b>{_html.escape(_phase_name(report, phase))}</b>: {_html.escape(text)}</li>")
    if not items:
        where = "" if _single(report) else " at ED or ES"
        return (
            f'<h2>Quality checks</h2><p class="ok">No automatic quality flag was raised{where}. The checks see '
            "coverage, gaps, pieces and implausible volumes, not every wrong contour: check the picture.</p>"
        )
    return '<h2>Quality checks</h2><ul class="flags">' + "".join(items) + "</ul>"


def _slices_section(report: Mapping[str, Any]) -> str:
    chosen = [p for p in _ed_es(report) if p.get("slices")]
    if not chosen:
        return ""
    depth = max(len(p["slices"]) for p in chosen)
    header = ["z"] + [h for p in chosen for h in (f"{_phase_name(report, p)} region", "confidence")]
    rows = []
    for z in range(depth):
        row: list[object] = [z]
        for p in chosen:
            s = p["slices"][z] if z < len(p["slices"]) else None
            row += [s["region"], f"{s['confidence']:.2f}"] if s else ["", ""]
        rows.append(row)
    source = (report.get("provenance") or {}).get("regions_from") or "classifier"
    if source == "segmentation":
        title, note = (
            "regions from the segmentation",
            "Regions by the ground-truth rule (20 / 60 / 20 % of the slices "
            "holding heart, base to apex) applied to the baseline U-Net's masks; a rule, so confidence is 1.",
        )
    else:
        title, note = (
            "slice classifier",
            "Confidence: the classifier's probability of the region the slice was routed by.",
        )
    return (
        f"<h3>Region of each slice ({title})</h3>"
        + _html.table(header, rows, numeric=[0, 2, 4])
        + f'<p class="small">{note}</p>'
    )


def volume_curve_svg(
    lv: Sequence[float | None],
    rv: Sequence[float | None],
    times_ms: Sequence[float] | None,
    ed_index: int,
    es_index: int,
    *,
    width: int = 520,
    height: int = 260,
) -> str:
    """Inline SVG of the LV and RV blood-pool volume (mL) over the phases, ED and ES marked.

    ``times_ms`` : trigger time of each phase (x axis in ms), or None for the phase number.
    """
    n = len(lv)
    xs = list(times_ms) if times_ms is not None and len(times_ms) == n else list(range(n))
    values = [v for v in (*lv, *rv) if v is not None and math.isfinite(v)]
    top = max(values) * 1.1 if values and max(values) > 0 else 1.0  # all 0 mL (no heart found): an empty chart
    left, right, upper, lower = 48, 12, 30, 36  # the legend in the top margin, never over the curves
    span = (max(xs) - min(xs)) or 1.0

    def px(x: float) -> float:
        return left + (x - min(xs)) / span * (width - left - right)

    def py(v: float) -> float:
        return upper + (1 - v / top) * (height - upper - lower)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="LV and RV volume over the cardiac cycle" font-size="11" font-family="sans-serif">'
    ]
    parts.append(
        f'<rect x="{left}" y="{upper}" width="{width - left - right}" height="{height - upper - lower}" fill="#fff" stroke="#888"/>'
    )
    step = 10 ** math.floor(math.log10(top / 2)) if top > 0 else 1
    step = step * (5 if top / step > 25 else 2 if top / step > 10 else 1)
    tick = 0.0
    while tick <= top:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
        tick += step
    xstep = 10 ** math.floor(math.log10(span / 2)) if span > 0 else 1
    xstep = xstep * (5 if span / xstep > 25 else 2 if span / xstep > 10 else 1)
    tick = math.ceil(min(xs) / xstep) * xstep
    while tick <= max(xs):
        parts.append(
            f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{height - lower}" y2="{height - lower + 4}" stroke="#888"/>'
            f'<text x="{px(tick):.1f}" y="{height - lower + 15}" text-anchor="middle">{tick:g}</text>'
        )
        tick += xstep
    for index, label in ((ed_index, "ED"), (es_index, "ES")):
        if 0 <= index < n:
            x = px(xs[index])
            # the label to the line's left where it would run off the plot's right edge
            anchor, dx = ("end", -3) if x > width - right - 24 else ("start", 3)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{upper}" y2="{height - lower}" stroke="#444" stroke-dasharray="4 3"/>'
                f'<text x="{x + dx:.1f}" y="{upper + 11}" font-weight="bold" text-anchor="{anchor}">{label}</text>'
            )
    for name, series in (("LV", lv), ("RV", rv)):
        points = [(px(x), py(v)) for x, v in zip(xs, series) if v is not None and math.isfinite(v)]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{_COLOURS[name]}" stroke-width="2"/>')
        for x, y in points:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{_COLOURS[name]}"/>')
    axis = "trigger time (ms)" if times_ms is not None and len(times_ms) == n else "phase"
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">{axis}</text>')
    parts.append(
        f'<text x="12" y="{(upper + height - lower) / 2}" text-anchor="middle" transform="rotate(-90 12 {(upper + height - lower) / 2})">volume (mL)</text>'
    )
    for i, name in enumerate(("LV", "RV")):
        x, y = left + 130 * i, 18
        parts.append(
            f'<line x1="{x}" x2="{x + 18}" y1="{y - 4}" y2="{y - 4}" stroke="{_COLOURS[name]}" stroke-width="2"/>'
            f'<text x="{x + 22}" y="{y}">{name} blood pool</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _curve_section(report: Mapping[str, Any], study: Study | None) -> str:
    phases = report.get("phases", [])
    if len(phases) == 1:
        return (
            "<h2>Volume over the cardiac cycle</h2><p>The study holds one phase only, so there is no volume "
            "curve, and nothing says whether that phase is end-diastole, end-systole or another.</p>"
        )
    if len(phases) < 3:
        chosen = {
            "input": "ED and ES were given by the input",
            "lv_volume": "the input did not say which is ED and which ES: ED is the phase with the larger LV "
            "volume, ES the one with the smaller",
        }.get(str(report.get("ed_es_from")), "")
        return (
            "<h2>Volume over the cardiac cycle</h2><p>The study holds ED and ES only (no full cine), so there is "
            f"no volume curve{'; ' + chosen if chosen else ''}.</p>"
        )
    lv = [p["volumes_ml"].get("LVBP") for p in phases]
    rv = [p["volumes_ml"].get("RVBP") for p in phases]
    times = None
    if study is not None and study.trigger_times_ms is not None and len(study.trigger_times_ms) == len(phases):
        times = [float(t) for t in study.trigger_times_ms]
    svg = volume_curve_svg(lv, rv, times, int(report["ed_index"]), int(report["es_index"]))
    given = study is not None and study.ed_index is not None and study.es_index is not None
    chosen = "ED and ES as given by the input" if given else "ED at the largest and ES at the smallest LV volume"
    return (
        f"<h2>Volume over the cardiac cycle</h2><figure>{svg}<figcaption>LV and RV blood-pool volume of each of "
        f"the {len(phases)} phases; {chosen}.</figcaption></figure>"
    )


#: report.json provenance keys the page shows, in this order, with their row names: everything
#: that decides a mask or a number besides the images (the rest of the provenance is in report.json)
PROVENANCE_ROWS = (
    ("bundle", "bundle"), ("manifest_sha256", "manifest sha256"), ("code_sha256", "cmrsdk code sha256"),
    ("backends", "backends"), ("device", "device"), ("precision", "precision"), ("mode", "mode"),
    ("mirroring", "test-time mirroring"), ("heart_crop", "heart crop (px)"), ("rescale_heart", "heart-size rule"),
    ("heart_scale", "heart scale applied"), ("training_layout", "training layout"),
    ("segment_spacing", "segmentation grid (mm)"), ("regions_from", "regions from"),
    ("region_decoding", "region decoding"), ("apical_rv_weight", "apical RV weight"),
    ("systolic_base", "systolic base rule"), ("largest_component", "largest component clean-up"),
)  # fmt: skip


def _provenance_section(report: Mapping[str, Any], extra_timings_ms: Mapping[str, float]) -> str:
    prov = report.get("provenance", {})
    import numpy

    # the runtimes that ran (recorded by the pipeline), not whatever this process can import
    versions = {"cmrsdk": prov.get("cmrsdk"), "python": platform.python_version(), "numpy": numpy.__version__}
    versions.update(prov.get("runtimes") or {})

    def shown(value: Any) -> Any:
        if isinstance(value, Mapping):
            return ", ".join(f"{k}: {v}" for k, v in sorted(value.items()))
        if isinstance(value, (list, tuple)):
            return " x ".join(str(v) for v in value)
        return value

    rows = [(name, shown(prov.get(key))) for key, name in PROVENANCE_ROWS]
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    timings = dict(report.get("timings_ms", {}))
    timings.update({k: round(v, 2) for k, v in extra_timings_ms.items()})
    order = ["read", "preprocess", "classify", "locate", "segment", "postprocess", "total", "wall", "montage"]
    trows = [(k, _number(timings[k])) for k in order if k in timings] + [
        (k, _number(v)) for k, v in timings.items() if k not in order
    ]
    return (
        '<div class="grid"><div><h2>Provenance</h2>'
        + _html.table(["", ""], [(k, "–" if v is None or v == "" else v) for k, v in rows])
        + "</div><div><h2>Timings (ms)</h2>"
        + _html.table(["stage", "ms"], trows, numeric=[1])
        + '<p class="small">Summed over the phases segmented; "wall" is the whole study, "montage" drawing '
        "the picture above.</p></div></div>"
    )


def render_report_html(
    result: StudySegmentation,
    report: Mapping[str, Any],
    *,
    study: Study | None = None,
    ground_truth: Mapping[str, float] | None = None,
    title: str | None = None,
) -> tuple[str, str]:
    """The page's title and body (HTML) for one study.

    Parameters
    ----------
    result : the segmented study (the montage is drawn from it).
    report : its report dict (`cmrsdk.report.study_report`), the source of every number shown.
    study : the input study, for patient data (height, weight) and trigger times.
    ground_truth : optional "what the truth says" lines, e.g. {"Dice LVBP": 0.93}, for studies
        with a known ground truth (the embedded example); default ``report["ground_truth"]``.
    title : page title; default from the patient id or source.
    """
    montage = study_montage_png(result)
    montage_ms = montage_drawing_ms(result) or 0.0
    info = report.get("study", {})
    # the file's name, not its whole path, where nothing else names the study
    name = title or info.get("patient_id") or Path(str(info.get("source") or "study")).name
    m = report.get("measures", {})
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if _single(report):  # one phase of unknown place in the cycle: no EDV, no EF
        headline = (
            f"<p>LV volume {_with_unit(m.get('lv_volume_ml'), 'mL')} · LV mass {_with_unit(m.get('lv_mass_g'), 'g')} · "
            f"RV volume {_with_unit(m.get('rv_volume_ml'), 'mL')} (one phase)</p>"
        )
    else:
        headline = (
            f"<p><b>LVEF {_with_unit(m.get('lvef_pct'), '%')}</b> · LVEDV {_with_unit(m.get('lvedv_ml'), 'mL')} · "
            f"LV mass {_with_unit(m.get('lv_mass_g'), 'g')} · <b>RVEF {_with_unit(m.get('rvef_pct'), '%')}</b> · "
            f"RVEDV {_with_unit(m.get('rvedv_ml'), 'mL')}</p>"
        )
    described = ", ".join(
        [str(info[k]) for k in ("series_description", "manufacturer") if info.get(k)]
        + ([f"diagnosis group {info['group']}"] if info.get("group") else [])
    )
    kind = "one short-axis stack" if _single(report) else "short-axis cine"
    body = [
        f"<h1>Cardiac MRI segmentation: {_html.escape(name)}</h1>",
        f'<p class="sub">{_html.escape(f"{kind}, {described}" if described else kind)} · generated {generated} by cmrsdk '
        f"{_html.escape(report.get('provenance', {}).get('cmrsdk', ''))}</p>",
        _identifiers(info),
        '<p class="banner">Automatic segmentation: check the contours below before using any number.</p>',
        headline,
        _measures_section(report, study),
    ]
    ground_truth = ground_truth if ground_truth is not None else report.get("ground_truth")
    if ground_truth:
        body.append(
            "<h2>Against the known ground truth</h2>"
            + _html.table(
                ["", "value"],
                [(k, _number(v, 3 if k.startswith("Dice") else 1)) for k, v in ground_truth.items()],
                numeric=[1],
            )
        )
    body.append(_flags_section(report))
    shown = "Slices of the one phase" if _single(report) else "ED and ES slices"
    body.append(
        f"<h2>{shown}</h2><figure>"
        + _html.img_tag(montage, f"{shown} with the segmentation")
        + "<figcaption>Zoomed on the heart, one window for all phases shown; slices from base to apex, each "
        "labelled z (its index as stored), its position in mm and its region; the classifier's probability "
        "only where below 1.</figcaption></figure>"
    )
    body.append(_slices_section(report))
    body.append(_curve_section(report, study))
    body.append(_provenance_section(report, {"montage": montage_ms}))
    return f"cmrsdk report: {name}", "\n".join(b for b in body if b)


def write_report_html(
    path: str | Path,
    result: StudySegmentation,
    report: Mapping[str, Any],
    *,
    study: Study | None = None,
    ground_truth: Mapping[str, float] | None = None,
) -> Path:
    """Write the study's self-contained report.html (see `render_report_html`); returns the path."""
    title, body = render_report_html(result, report, study=study, ground_truth=ground_truth)
    return _html.write_page(path, title, body)
