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

Each group's finding site is the ventricle (SCT 87878005 / 53085002). A measure that is unknown
(null in ``report.json``: one phase gives no SV or EF, one slice no volume, a static cine no
ESV) is left out, never written as zero. A one-phase study's volumes (``lv_volume_ml``,
``rv_volume_ml``) are of a phase nothing names, so they are coded as a plain volume, never as
end-diastolic. The evidence is the source images of ED and ES, repaired as for the SEG by
:func:`cmrsdk.io._dicom_out.derivation_sources`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import InputError, WriteError
from ._atomic import atomic_path

__all__ = ["write_measurement_report", "SR_MEASURES"]

#: report.json measure key -> (group, concept, unit); concepts and units are built on first use.
SR_MEASURES: dict[str, tuple[str, str, str]] = {
    "lvedv_ml": ("lv", "LN:18026-5:Left Ventricular End Diastolic Volume", "ml"),
    "lvesv_ml": ("lv", "LN:18148-7:Left Ventricular End Systolic Volume", "ml"),
    "lvsv_ml": ("lv", "SCT:90096001:Stroke Volume", "ml"),
    "lvef_pct": ("lv", "SCT:70822001:Cardiac ejection fraction", "%"),
    "lv_mass_g": ("lv", "LN:18087-7:Left Ventricle Mass", "g"),
    # PS3.16 CID 3835's own RV codes: a phase in the concept, not only in a time point's free text
    "rvedv_ml": ("rv", "LN:8822-9:Right Ventricular ED Volume", "ml"),
    "rvesv_ml": ("rv", "LN:8824-5:Right Ventricular ES Volume", "ml"),
    "rvsv_ml": ("rv", "SCT:90096001:Stroke Volume", "ml"),
    "rvef_pct": ("rv", "SCT:70822001:Cardiac ejection fraction", "%"),
    # a one-phase study (cmrsdk.report.study_report): the blood-pool volume of a phase nothing names
    "lv_volume_ml": ("lv", "SCT:118565006:Volume", "ml"),
    "rv_volume_ml": ("rv", "SCT:118565006:Volume", "ml"),
}

_UNITS = {"ml": "milliliter", "%": "percent", "g": "gram"}
#: group key -> (tracking identifier text, finding site (SCT code, meaning))
_GROUPS = {
    "lv": ("Left ventricle", ("87878005", "Left ventricle")),
    "rv": ("Right ventricle", ("53085002", "Right ventricle")),
}


def _known(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def write_measurement_report(
    path: str | Path,
    measures: Mapping[str, float | None],
    source_files: Sequence[str | Path],
    *,
    series_number: int = 903,
    series_description: str = "cmrsdk cardiac measurements",
    series_instance_uid: str | None = None,
) -> Path:
    """Write the study's cardiac measures as a DICOM Comprehensive 3D SR (TID 1500 measurement report).

    Parameters
    ----------
    path : the .dcm file to write (through a temporary name, then renamed).
    measures : report.json's ``measures``: keys of :data:`SR_MEASURES` (``lvedv_ml``, ``lvef_pct``,
        ``lv_mass_g``, ...) to mL, %, g; None or NaN for unknown measures (left out).
    source_files : the DICOM source images the measures come from (ED and ES slices); the
        first gives the patient and study the report joins.
    series_number, series_description, series_instance_uid : of the new SR series.

    Returns
    -------
    The path written.

    Raises
    ------
    InputError : no source files, or no known measure at all.
    ReadError : a source file that cannot be read.
    WriteError : highdicom refuses to build the report, or the file cannot be written.
    """
    import highdicom as hd  # optional dependency (cmrsdk[io])
    from pydicom.sr.coding import Code

    from .. import __version__
    from ._dicom_out import derivation_sources, device_observer

    if not source_files:
        raise InputError(f"{path}: 'source_files' is empty; a DICOM SR needs the source images it reports on")
    unknown = sorted(set(measures) - set(SR_MEASURES))
    known = {k: float(v) for k, v in measures.items() if k in SR_MEASURES and _known(v)}  # type: ignore[arg-type,unused-ignore]
    if not known:
        raise InputError(f"{path}: no measure is known ({dict(measures)}); nothing to report")
    del unknown  # other keys of report.json's measures (none today) are simply not coded
    sources = derivation_sources(source_files)

    def code(text: str) -> Code:
        scheme, value, meaning = text.split(":", 2)
        return Code(value, {"LN": "LN", "SCT": "SCT"}[scheme], meaning)

    algorithm = hd.sr.AlgorithmIdentification(name="cmrsdk", version=__version__)
    groups = []
    for group, (label, (site_value, site_meaning)) in _GROUPS.items():
        items = [
            hd.sr.Measurement(
                name=code(concept), value=known[key], unit=Code(unit, "UCUM", _UNITS[unit]), algorithm_id=algorithm
            )
            for key, (where, concept, unit) in SR_MEASURES.items()
            if where == group and key in known
        ]
        if not items:
            continue
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
                finding_sites=[hd.sr.FindingSite(anatomic_location=Code(site_value, "SCT", site_meaning))],
                algorithm_id=algorithm,
                measurements=items,
            )
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # source UIDs invalid per VR UI are referenced verbatim
            report = hd.sr.MeasurementReport(
                observation_context=hd.sr.ObservationContext(observer_device_context=device_observer()),
                procedure_reported=Code("241620005", "SCT", "Cardiac MRI"),
                imaging_measurements=groups,
            )
            sr = hd.sr.Comprehensive3DSR(
                evidence=sources,
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
    with atomic_path(path) as temporary:
        sr.save_as(str(temporary))
    return Path(path)
