"""DICOM Structured Report of a study's cardiac measures: a TID 1500 measurement report (highdicom).

The report holds the ventricular volumes, stroke volumes, ejection fractions and the LV mass
that ``report.json`` gives, coded so that a PACS or reporting system can read them without
cmrsdk:

| measure | concept (coding scheme) | unit (UCUM) | measurement group |
|---|---|---|---|
| LVEDV | Left Ventricular End Diastolic Volume (LN 18026-5) | ml | Left ventricle |
| LVESV | Left Ventricular End Systolic Volume (LN 18148-7) | ml | Left ventricle |
| LVSV | Stroke Volume (SCT 90096001) | ml | Left ventricle |
| LVEF | Cardiac ejection fraction (SCT 70822001) | % | Left ventricle |
| LV mass | Left Ventricle Mass (LN 18087-7) | g | Left ventricle |
| RVEDV | Right Ventricular ED Volume (LN 8822-9, PS3.16 CID 3835) | ml | Right ventricle |
| RVESV | Right Ventricular ES Volume (LN 8824-5, PS3.16 CID 3835) | ml | Right ventricle |
| RVSV, RVEF | Stroke Volume, Cardiac ejection fraction | ml, % | Right ventricle |
| LV, RV volume of a one-phase study | Volume (SCT 118565006), no time point | ml | Left / Right ventricle |

Each group's finding site is the ventricle (SCT 87878005 / 53085002). Given the study's DICOM
SEGs, a measure read from one segment at one phase (an ED or ES volume, the LV mass, a one-phase
volume) is reported in a volumetric group (TID 1411, "LV blood pool at ED", ...) that references
that segment of that SEG, and the SEGs join the evidence; stroke volumes and ejection fractions,
read from two phases, stay in the ventricles' groups. The report's quality flags (``report.json``'s
``flags`` and each phase's ``quality_flags``) are coded as qualitative evaluations, "Quality
caveat" = the flag, in groups named "Quality caveats" (the study's) and "Quality caveats at ED"
(a phase's), under the local coding scheme ``99CMRSDK`` (PS3.16 8.2's private designators), as
:data:`SR_CAVEATS` codes them. A measure that is unknown
(null in ``report.json``: one phase gives no SV or EF, one slice no volume, a static cine no
ESV) is left out, never written as zero. A one-phase study's volumes (``lv_volume_ml``,
``rv_volume_ml``) are of a phase nothing names, so they are coded as a plain volume, never as
end-diastolic. The evidence is the source images of ED and ES, repaired as for the SEG by
:func:`cmrsdk.io._dicom_out.derivation_sources`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, WriteError
from ..labels import LVBP, LVM, RVBP
from ..metrics import CardiacMeasures
from ..types import SINGLE_PHASE
from ._atomic import atomic_path
from .._warn import quiet

__all__ = ["write_measurement_report", "SR_MEASURES", "SR_CAVEATS", "SEGMENT_MEASURES"]

#: report.json measure key -> (group, concept, unit); concepts and units are built on first use.
SR_MEASURES: dict[str, tuple[str, str, str]] = {
    # PS3.16's cardiac CT/MR codes: volumes CID 3835 (a phase and a ventricle in the concept),
    # ejection fractions CID 3833 ("by MR"); a reader looking a measure up by code finds each
    # alone, without reading the group's finding site (sweep 35: the echo codes 18026-5 and
    # 18148-7, and one generic EF for both ventricles, before 0.14.6)
    "lvedv_ml": ("lv", "LN:8821-1:Left Ventricular ED Volume", "ml"),
    "lvesv_ml": ("lv", "LN:8823-7:Left Ventricular ES Volume", "ml"),
    "lvsv_ml": ("lv", "SCT:90096001:Stroke Volume", "ml"),  # CID 3835's, with a finding site on the item
    "lvef_pct": ("lv", "LN:8811-2:Left ventricular ejection fraction by MR", "%"),
    "lv_mass_g": ("lv", "LN:18087-7:Left Ventricle Mass", "g"),  # no CT/MR context group has a mass
    "rvedv_ml": ("rv", "LN:8822-9:Right Ventricular ED Volume", "ml"),
    "rvesv_ml": ("rv", "LN:8824-5:Right Ventricular ES Volume", "ml"),
    "rvsv_ml": ("rv", "SCT:90096001:Stroke Volume", "ml"),
    "rvef_pct": ("rv", "LN:8818-7:Right ventricular ejection fraction by MR", "%"),
    # a one-phase study (cmrsdk.report.study_report): the blood-pool volume of a phase nothing names
    "lv_volume_ml": ("lv", "SCT:118565006:Volume", "ml"),
    "rv_volume_ml": ("rv", "SCT:118565006:Volume", "ml"),
}

#: report.json measure key -> (phase of the SEG, segment number = canonical label) it is read from;
#: the LV mass of a one-phase study is of that phase (``_segment_of``)
SEGMENT_MEASURES: dict[str, tuple[str, int]] = {
    "lvedv_ml": ("ED", LVBP),
    "lvesv_ml": ("ES", LVBP),
    "lv_mass_g": ("ED", LVM),
    "rvedv_ml": ("ED", RVBP),
    "rvesv_ml": ("ES", RVBP),
    "lv_volume_ml": (SINGLE_PHASE, LVBP),
    "rv_volume_ml": (SINGLE_PHASE, RVBP),
}
_SEGMENT_GROUPS = {LVBP: ("LV blood pool", "lv"), LVM: ("LV myocardium", "lv"), RVBP: ("RV blood pool", "rv")}

#: quality flag (`cmrsdk.report.study_report`) -> (code value, at most 16 characters; meaning, at
#: most 64), coded under ``99CMRSDK``; the report's page (`cmrsdk.report_html`) says each in full.
SR_CAVEATS: dict[str, tuple[str, str]] = {
    "no_lv": ("no_lv", "No LV blood pool on any slice"),
    "no_rv": ("no_rv", "No RV blood pool on any slice"),
    "basal_coverage": ("basal_coverage", "Basal slice holds LV: stack may miss the base"),
    "apical_coverage": ("apical_coverage", "Apical slice holds LV: stack may miss the apex"),
    "apical_truncation": ("apical_cut", "LV stops abruptly before the last apical slice"),
    "lv_gap": ("lv_gap", "A slice without LV between slices with it"),
    "rv_gap": ("rv_gap", "A slice without RV between slices with it"),
    "lvbp_fragments": ("lvbp_fragments", "LV blood pool in several pieces on a slice"),
    "lvm_fragments": ("lvm_fragments", "LV myocardium in several pieces on a slice"),
    "rvbp_fragments": ("rvbp_fragments", "RV blood pool in several pieces on a slice"),
    "single_slice": ("single_slice", "One slice: no volume"),
    "slice_gap": ("slice_gap", "Slice positions leave a gap"),
    "blank_image": ("blank_image", "All pixels zero: not segmented"),
    "repeated_slice": ("repeated_slice", "A slice position acquired twice"),
    "thick_slices": ("thick_slices", "Slices over 12 mm apart: outside the validated 5-10 mm"),
    "thin_slices": ("thin_slices", "Slices under 3 mm apart: no short-axis cine's spacing"),
    "field_edge": ("field_edge", "Heart reaches the edge of the analysed field"),
    "low_confidence": ("low_confidence", "Networks less certain than on any test stack"),
    "lv_not_ringed": ("lv_not_ringed", "LV blood pool not ringed by myocardium on a slice"),
    "small_heart": ("small_heart", "LV smaller than any trained on: segmented enlarged"),
    "large_heart": ("large_heart", "LV larger than any trained on: segmented shrunk"),
    "single_phase": ("single_phase", "One phase: no SV or EF"),
    "no_volume_change": ("no_volume_change", "LV volume never changes: no ES, SV or EF"),
    "lv_esv_exceeds_edv": ("lv_esv_gt_edv", "LV larger at ES than at ED: SV and EF withheld"),
    "rv_esv_exceeds_edv": ("rv_esv_gt_edv", "RV larger at ES than at ED: SV and EF withheld"),
    "ed_es_swapped": ("ed_es_swapped", "Both ventricles larger at ES: ED and ES likely swapped"),
    "ed_es_coverage_differs": ("ed_es_coverage", "ED and ES stacks cover the heart differently"),
    "phase_without_lv": ("phase_without_lv", "A phase without LV, left out of the ES choice"),
    "lv_not_found": ("lv_not_found", "No LV blood pool at ED or ES: not measured there"),
    "rv_not_found": ("rv_not_found", "No RV blood pool (or no LV) at ED or ES: not measured there"),
    "rv_es_differs": ("rv_es_differs", "RV far smaller on another phase than at the LV's ES"),
    "es_basal_rv_uncertain": ("es_basal_rv_near", "Most basal ES RV slice near the atrium rule's bound"),
    "ed_es_off_curve": ("ed_es_off_curve", "Named ED or ES far from the LV volume curve's extremes"),
    "es_lv_lost": ("es_lv_lost", "ES has no LV on 3+ slices where ED's LV is large"),
    "lvedv_below_adult": ("lvedv_lt_adult", "LVEDV under 40 mL: voxel sizes misstated, or a child"),
}
_LOCAL = "99CMRSDK"

_UNITS = {"ml": "milliliter", "%": "percent", "g": "gram"}
#: group key -> (tracking identifier text, finding site (SCT code, meaning))
_GROUPS = {
    "lv": ("Left ventricle", ("87878005", "Left ventricle")),
    "rv": ("Right ventricle", ("53085002", "Right ventricle")),
}


def _known_measures(measures: Mapping[str, Any] | CardiacMeasures, path: str | Path) -> dict[str, float]:
    """The known measures of ``measures`` as floats; None and NaN are unknown. A key the SR does
    not code, a value that is not a number, a negative volume or mass and an EF outside 0-100 %
    are refused: left out or written, the report a PACS keeps would be silently wrong."""
    if isinstance(measures, CardiacMeasures):
        measures = measures.as_dict()
    if not isinstance(measures, Mapping):
        raise InputError(
            f"{path}: 'measures' must be a mapping of measure names to numbers, got {type(measures).__name__}"
        )
    unknown = sorted(str(k) for k in measures if k not in SR_MEASURES)
    if unknown:
        raise InputError(f"{path}: measure(s) {unknown} are not coded in the SR; known: {sorted(SR_MEASURES)}")
    known = {}
    for key, value in measures.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"{path}: measure '{key}' must be a number or None, got {value!r}")
        number = float(value)
        if math.isnan(number):
            continue
        unit = SR_MEASURES[key][2]
        low, high = (0.0, 100.0) if unit == "%" else (0.0, math.inf)
        if not low <= number <= high:
            raise InputError(f"{path}: measure '{key}' is {number:g} {unit}, outside {low:g}-{high:g} {unit}")
        known[key] = number
    return known


def _segment_of(key: str, segmentations: Mapping[str, object]) -> tuple[str, int] | None:
    """The (phase, segment number) a measure is read from, where that phase's SEG is given."""
    if key not in SEGMENT_MEASURES:
        return None
    phase, number = SEGMENT_MEASURES[key]
    if key == "lv_mass_g" and "ED" not in segmentations:
        phase = SINGLE_PHASE  # a one-phase study's mass is of its one phase
    return (phase, number) if phase in segmentations else None


def write_measurement_report(
    path: str | Path,
    measures: Mapping[str, float | None] | CardiacMeasures,
    source_files: Sequence[str | Path],
    *,
    segmentations: Mapping[str, str | Path] | None = None,
    quality_flags: Mapping[str, Sequence[str]] | None = None,
    series_number: int = 903,
    series_description: str = "cmrsdk cardiac measurements",
    series_instance_uid: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write the study's cardiac measures as a DICOM Comprehensive 3D SR (TID 1500 measurement report).

    Parameters
    ----------
    path : the .dcm file to write (through a temporary name, then renamed).
    measures : report.json's ``measures``: keys of :data:`SR_MEASURES` (``lvedv_ml``, ``lvef_pct``,
        ``lv_mass_g``, ...) to mL, %, g; None or NaN for unknown measures (left out); or a
        `cmrsdk.metrics.CardiacMeasures` (``result.measures``).
    source_files : the DICOM source images the measures come from (ED and ES slices); the
        first gives the patient and study the report joins.
    segmentations : the study's DICOM SEG files by phase, ``"ED"`` / ``"ES"``, or
        ``cmrsdk.types.SINGLE_PHASE`` for a one-phase study; each segment number is a canonical label
        (`cmrsdk.io.write_dicom_seg`). The measures read from one segment reference it
        (:data:`SEGMENT_MEASURES`). None: every measure in the ventricles' groups, no reference.
    quality_flags : flags by scope: ``"study"`` (report.json's ``flags``) and phase names
        (each phase's ``quality_flags``), coded by :data:`SR_CAVEATS`.
    series_number, series_description, series_instance_uid : of the new SR series.
    provenance : the pipeline's (report.json's): the algorithm identification then names the
        bundle in its version and the code, runtime, precision and options in its parameters,
        as the SEGs do; None: cmrsdk's version alone.

    Returns
    -------
    The path written.

    Raises
    ------
    InputError : no source files, or neither a known measure nor a quality flag (a study where
        nothing was measured gets a report of its caveats alone: they say why); a measure the SR
        does not code, not a number, a negative volume or mass, or an EF outside 0-100 %.
    ReadError : a source or SEG file that cannot be read.
    WriteError : highdicom refuses to build the report, or the file cannot be written.
    """
    import highdicom as hd  # optional dependency (cmrsdk[io])
    from pydicom.sr.coding import Code

    from ._dataset import read_dataset
    from ._dicom_out import algorithm_parameters, algorithm_version, derivation_sources, device_observer

    if not source_files:
        raise InputError(f"{path}: 'source_files' is empty; a DICOM SR needs the source images it reports on")
    known = _known_measures(measures, path)
    flags = {scope: list(found) for scope, found in (quality_flags or {}).items() if found}
    if not known and not flags:
        raise InputError(f"{path}: no measure is known ({dict(measures)}) and no caveat; nothing to report")
    segs = {phase: read_dataset(Path(file)) for phase, file in (segmentations or {}).items()}
    sources = derivation_sources(source_files)

    def code(text: str) -> Code:
        scheme, value, meaning = text.split(":", 2)
        return Code(value, {"LN": "LN", "SCT": "SCT"}[scheme], meaning)

    def measurement(key: str) -> Any:
        group, concept, unit = SR_MEASURES[key]
        return hd.sr.Measurement(  # the site on each item too: stroke volumes share one code
            name=code(concept),
            value=known[key],
            unit=Code(unit, "UCUM", _UNITS[unit]),
            algorithm_id=algorithm,
            finding_sites=site(group),
        )

    def site(group: str) -> list[Any]:
        value, meaning = _GROUPS[group][1]
        return [hd.sr.FindingSite(anatomic_location=Code(value, "SCT", meaning))]

    def time_point(phase: str) -> Any:
        return None if phase == SINGLE_PHASE else hd.sr.TimePointContext(time_point=phase)

    parameters = [f"{key}={value}" for key, value in algorithm_parameters(provenance).items()]
    algorithm = hd.sr.AlgorithmIdentification(
        name="cmrsdk", version=algorithm_version(provenance), parameters=parameters or None
    )
    with quiet():  # the SEGs' and sources' UIDs are read: pydicom's notices about them are not news
        on_segment = {key: where for key in known if (where := _segment_of(key, segs)) is not None}
        groups: list[Any] = []
        for group, (label, _) in _GROUPS.items():
            items = [
                measurement(k)
                for k, (g, _, _) in SR_MEASURES.items()
                if g == group and k in known and k not in on_segment
            ]
            if items:
                groups.append(
                    hd.sr.MeasurementsAndQualitativeEvaluations(
                        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
                        finding_sites=site(group),
                        algorithm_id=algorithm,
                        measurements=items,
                    )
                )
        for (phase, number), keys in _by_segment(on_segment).items():
            name, group = _SEGMENT_GROUPS[number]
            label = name if phase == SINGLE_PHASE else f"{name} at {phase}"
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
                    referenced_segment=_referenced_segment(hd, segs[phase], number),
                    time_point_context=time_point(phase),
                    finding_sites=site(group),
                    algorithm_id=algorithm,
                    measurements=[measurement(k) for k in keys],
                )
            )
        caveat = Code("caveat", _LOCAL, "Quality caveat")
        for scope, found in flags.items():
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=hd.UID(),
                        identifier="Quality caveats" if scope == "study" else f"Quality caveats at {scope}",
                    ),
                    time_point_context=None if scope == "study" else time_point(scope),
                    algorithm_id=algorithm,
                    qualitative_evaluations=[
                        hd.sr.QualitativeEvaluation(name=caveat, value=Code(value, _LOCAL, meaning))
                        for value, meaning in map(_caveat, found)
                    ],
                )
            )
    try:
        with quiet():  # source UIDs invalid per VR UI are referenced verbatim
            report = hd.sr.MeasurementReport(
                observation_context=hd.sr.ObservationContext(observer_device_context=device_observer()),
                procedure_reported=Code("241620005", "SCT", "Cardiac MRI"),
                imaging_measurements=groups,
            )
            sr = hd.sr.Comprehensive3DSR(
                evidence=[*sources, *segs.values()],
                content=report[0],
                series_number=series_number,
                series_instance_uid=series_instance_uid or hd.UID(),
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="cmrsdk",
                series_description=series_description[:64],
                is_complete=True,
                is_final=False,
                is_verified=False,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise WriteError(f"{path}: DICOM SR cannot be built ({type(exc).__name__}: {exc})") from exc
    if flags:  # the private coding scheme named where it is used (PS3.3 C.12.1.1.5)
        sr.CodingSchemeIdentificationSequence = [_local_scheme()]
    with atomic_path(path) as temporary:
        sr.save_as(str(temporary))
    return Path(path)


def _local_scheme() -> Any:
    """The CodingSchemeIdentificationSequence item naming ``99CMRSDK`` for a reader to look up
    (dciodvfy still warns that it is no defined term: it knows PS3.16's schemes only)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = _LOCAL
    item.CodingSchemeName = "cmrsdk quality caveats"
    item.CodingSchemeResponsibleOrganization = "cmrsdk"
    return item


def _caveat(flag: str) -> tuple[str, str]:
    """A flag's (code value, meaning); one without an entry keeps its name (a flag added later
    must not stop the report being written)."""
    return SR_CAVEATS.get(flag, (flag[:16], flag.replace("_", " ")[:64]))


def _by_segment(on_segment: Mapping[str, tuple[str, int]]) -> dict[tuple[str, int], list[str]]:
    """Measure keys grouped by the (phase, segment) they are read from, in SR_MEASURES' order."""
    grouped: dict[tuple[str, int], list[str]] = {}
    for key in SR_MEASURES:
        if key in on_segment:
            grouped.setdefault(on_segment[key], []).append(key)
    return grouped


def _referenced_segment(hd: Any, seg: Any, number: int) -> Any:
    """The SR's reference to one segment: its frames where it has any, else its source series
    (an empty segment, such as a study without an RV, has no frames to name)."""
    if any(int(item.ReferencedSegmentNumber) == number for item in _segment_identifications(seg)):
        return hd.sr.ReferencedSegment.from_segmentation(seg, number)
    series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(series),
    )


def _segment_identifications(seg: Any) -> list[Any]:
    """Each frame's SegmentIdentificationSequence item of a SEG dataset."""
    return [
        frame.SegmentIdentificationSequence[0]
        for frame in getattr(seg, "PerFrameFunctionalGroupsSequence", [])
        if "SegmentIdentificationSequence" in frame
    ]
