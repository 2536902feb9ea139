"""One row of clinical measures per study, and the cohort's measures.csv.

The volumes, EF and mass are `segment`'s report.json values unchanged; what a cohort adds is
indexing to body surface area (Mosteller), heart rate and cardiac output, and the quality flags
of the ED and ES phases in one cell.

Units are in the column names (``_ml``, ``_pct``, ``_g``, ``_m2``, ``_l_min``, ``_bpm``, ``_cm``,
``_kg``). Rounding (`DECIMALS`, at most this many decimals, trailing zeros dropped): the measures
as report.json gives them (3 decimals: volumes in mL, EF in %, mass in g), BSA 4 decimals, the
indexed values, cardiac output and index 3, height, weight and heart rate 4 (as the file or list
gives them, to 4), seconds 3. Unknown values are empty cells. The CSV holds only the header row
and one row per study (no comment lines, so that any CSV reader takes it).

A one-phase study (flag ``single_phase``) has no ED or ES: its volumes are in ``lv_volume_ml`` and
``rv_volume_ml`` (empty for every other study), its ED/ES measures empty, as in report.json.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io._atomic import atomic_path
from ..reference_ranges import (
    INDEXED,
    PLAUSIBLE,
    PLAUSIBLE_BMI,
    body_surface_area_m2,
    implausible,
    indexed_measures,
    unused_biometrics,
)

__all__ = [
    "COLUMNS",
    "MEASURES",
    "SINGLE_PHASE_MEASURES",
    "INDEXED",
    "DECIMALS",
    "bsa_mosteller",
    "measures_row",
    "write_measures_csv",
]

#: segment's measures, in report.json's names and units (mL, %, g)
MEASURES = ("lvedv_ml", "lvesv_ml", "lvsv_ml", "lvef_pct", "lv_mass_g", "rvedv_ml", "rvesv_ml", "rvsv_ml", "rvef_pct")
#: a one-phase study's blood-pool volumes (mL), at a phase nothing names ED or ES
SINGLE_PHASE_MEASURES = ("lv_volume_ml", "rv_volume_ml")

COLUMNS = (
    "study_id",
    "source",
    "status",
    "error",
    *MEASURES,
    *SINGLE_PHASE_MEASURES,
    "height_cm",
    "weight_kg",
    "bsa_m2",
    *INDEXED.values(),
    "heart_rate_bpm",
    "cardiac_output_l_min",
    "cardiac_index_l_min_m2",
    "quality_flags",
    "notes",
    "phases",
    "ed_phase",
    "es_phase",
    "seconds",
    "bundle_sha256",
    "options_key",
    "outputs",
)


#: column -> the most decimals its numbers are written with (report.json's measures have 3)
DECIMALS: dict[str, int] = {
    **{name: 3 for name in (*MEASURES, *SINGLE_PHASE_MEASURES)},
    "height_cm": 4,
    "weight_kg": 4,
    "bsa_m2": 4,
    **{name: 3 for name in INDEXED.values()},
    "heart_rate_bpm": 4,
    "cardiac_output_l_min": 3,
    "cardiac_index_l_min_m2": 3,
    "seconds": 3,
}


def bsa_mosteller(height_cm: float, weight_kg: float) -> float:
    """Body surface area in m² by Mosteller's formula, sqrt(height cm x weight kg / 3600).

    For a height and weight the caller vouches for. Values that may be missing or wrong (a study's
    header) go through `measures_row` (`cmrsdk.reference_ranges.body_surface_area_m2`), which
    gives no BSA (None) for them instead.

    Raises
    ------
    InputError
        A height or weight that is not a real number, not finite, not positive, or outside the
        plausible range (`cmrsdk.reference_ranges.PLAUSIBLE`: 50-250 cm, 2-400 kg), or a pair whose
        body-mass index no person has (`PLAUSIBLE_BMI`): a value in another unit (metres, inches,
        pounds), never a BSA from it.
    """
    given = {"height_cm": height_cm, "weight_kg": weight_kg}
    for name, value in given.items():
        unit = name.rsplit("_", 1)[1]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"'{name}' must be a number in {unit}, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"'{name}' must be a positive, finite number of {unit}, got {float(value):g} {unit}")
        lo, hi = PLAUSIBLE[name]
        if not lo <= value <= hi:
            raise InputError(
                f"'{name}' {float(value):g} {unit} is outside the plausible {lo:g}-{hi:g} {unit}: "
                "in another unit (metres, inches, pounds)?"
            )
    height, weight = float(height_cm), float(weight_kg)
    bmi = weight / (height / 100.0) ** 2
    lo, hi = PLAUSIBLE_BMI
    if not lo <= bmi <= hi:
        raise InputError(
            f"'height_cm' {height:g} cm with 'weight_kg' {weight:g} kg is a body-mass index of {bmi:.1f} kg/m², "
            f"outside {lo:g}-{hi:g}: one of them in another unit?"
        )
    return math.sqrt(height * weight / 3600.0)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def measures_row(
    report: Mapping[str, Any],
    *,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    heart_rate_bpm: float | None = None,
) -> dict[str, Any]:
    """The measure columns of one study from its `segment` report.

    Parameters
    ----------
    report : `cmrsdk.report.study_report`'s dict (``measures``, ``phases``, ``ed_index``, ``es_index``, ``study``).
    height_cm, weight_kg, heart_rate_bpm : override the study's own (``report["study"]``) when given.

    Returns
    -------
    dict with the columns of `MEASURES` and `SINGLE_PHASE_MEASURES`, biometrics, BSA-indexed values (when height and weight
    are known and plausible), heart rate and cardiac output (LVSV x HR), ``quality_flags``
    (``ED:flag;ES:flag``), ``notes`` (biometrics set aside), ``phases``, ``ed_phase``, ``es_phase``.
    Unknown values are None.
    """
    measures = report.get("measures", {})
    row: dict[str, Any] = {name: _number(measures.get(name)) for name in (*MEASURES, *SINGLE_PHASE_MEASURES)}
    study = report.get("study", {}) or {}
    given = {
        "height_cm": height_cm if height_cm is not None else study.get("height_cm"),
        "weight_kg": weight_kg if weight_kg is not None else study.get("weight_kg"),
        "heart_rate_bpm": heart_rate_bpm,
    }
    height, weight = _number(given["height_cm"]), _number(given["weight_kg"])
    unused = unused_biometrics(height, weight)  # the rule report.json and report.html apply
    heart_rate = _number(given["heart_rate_bpm"])
    if why := implausible("heart_rate_bpm", heart_rate):
        unused["heart_rate_bpm"] = why
    notes = list(dict.fromkeys(unused.values()))  # a pair set aside together is said once
    for name, value in (("height_cm", height), ("weight_kg", weight), ("heart_rate_bpm", heart_rate)):
        row[name] = None if name in unused else value
    bsa = body_surface_area_m2(row["height_cm"], row["weight_kg"])
    row["bsa_m2"] = None if bsa is None else round(bsa, DECIMALS["bsa_m2"])
    for indexed, value in indexed_measures(row, bsa).items():
        row[indexed] = None if value is None else round(value, DECIMALS[indexed])
    output = (
        None
        if row["heart_rate_bpm"] is None or row["lvsv_ml"] is None
        else row["lvsv_ml"] * row["heart_rate_bpm"] / 1000.0
    )
    row["cardiac_output_l_min"] = None if output is None else round(output, DECIMALS["cardiac_output_l_min"])
    row["cardiac_index_l_min_m2"] = (
        None if output is None or bsa is None else round(output / bsa, DECIMALS["cardiac_index_l_min_m2"])
    )
    phases = report.get("phases", [])
    flags = []
    # a one-phase study's phase is neither ED nor ES (report.json's measures say so): its flags are
    # the phase's, and no column names it ED (sweep 32)
    single = "single_phase" in report.get("flags", [])
    named = (
        # its ed_index is null (0.14.7: no ED was determined); 0.14.6's reports gave 0
        (("phase", 0 if len(phases) == 1 else report.get("ed_index")),)
        if single
        else (("ED", report.get("ed_index")), ("ES", report.get("es_index")))
    )
    for label, index in named:
        if index is not None and 0 <= index < len(phases):
            flags += [f"{label}:{flag}" for flag in phases[index].get("quality_flags", [])]
    flags += list(report.get("flags", []))  # the study's own: single_phase, rv_esv_exceeds_edv, ...
    row["quality_flags"] = ";".join(flags)
    row["notes"] = "; ".join(notes)
    row["phases"] = len(phases)
    row["ed_phase"], row["es_phase"] = (None, None) if single else (report.get("ed_index"), report.get("es_index"))
    return row


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(round(value, DECIMALS.get(column, 4)))
    return str(value)


def write_measures_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts keyed by `COLUMNS`) as CSV, atomically: readers see the old table or the new one.

    Unknown values are empty cells; columns missing from a row are empty; numbers are rounded
    to `DECIMALS` (4 decimals for a column it does not name); a path's bytes that are not UTF-8
    are written as backslash escapes.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c), c) for c in COLUMNS])
    path = Path(path)
    with atomic_path(path) as temporary:
        # a study folder named in another encoding (old shares, CDs) holds bytes UTF-8 cannot
        # write: they are written as escapes (\udcfc), the table still complete
        temporary.write_text(buffer.getvalue(), encoding="utf-8", errors="backslashreplace")
    return path
