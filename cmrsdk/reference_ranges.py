"""Published adult reference ranges for the measures of a short-axis cine, and body surface area.

Each range is the source's mean ± 2 SD (about the central 95 % of its healthy volunteers), for
men and for women, from 1.5 T bSSFP short-axis stacks analysed by slice summation, as cmrsdk
measures. They are a reader's orientation, not a diagnosis: ranges differ between sources
with age, ethnicity, field strength and whether papillary muscles count as blood pool (cmrsdk
follows ACDC: they do). Quantities without a source here show no range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ReferenceRange",
    "REFERENCE_RANGES",
    "INDEXED_RANGES",
    "SOURCES",
    "PLAUSIBLE",
    "PLAUSIBLE_BMI",
    "INDEXED",
    "implausible",
    "unused_biometrics",
    "body_surface_area_m2",
    "indexed_measures",
]


@dataclass(frozen=True)
class ReferenceRange:
    """Mean ± 2 SD for men and women, in the quantity's unit, and the key of its source in `SOURCES`."""

    men: tuple[float, float]
    women: tuple[float, float]
    source: str

    def outside(self, value: float, sex: str | None = None) -> str:
        """ "low" or "high" when ``value`` is outside the range of ``sex`` ("M" or "F"), or outside
        both sexes' ranges where the sex is unknown (None); "" otherwise."""
        if not math.isfinite(value):
            return ""
        low, high = {"M": self.men, "F": self.women}.get(
            sex or "",
            (
                min(self.men[0], self.women[0]),
                max(self.men[1], self.women[1]),
            ),
        )
        if value < low:
            return "low"
        if value > high:
            return "high"
        return ""


def _range(mean: float, sd: float) -> tuple[float, float]:
    return (round(mean - 2 * sd, 1), round(mean + 2 * sd, 1))


SOURCES: dict[str, str] = {
    "hudsmith2005": "Hudsmith LE et al. Normal human left and right ventricular and left atrial dimensions using "
    "steady state free precession magnetic resonance imaging. J Cardiovasc Magn Reson 2005;7:775-782 "
    "(108 volunteers, 1.5 T bSSFP)",
    "alfakih2003": "Alfakih K et al. Normal human left and right ventricular dimensions for MRI as assessed by turbo "
    "gradient echo and steady-state free precession imaging sequences. J Magn Reson Imaging "
    "2003;17:323-329 (60 volunteers, SSFP values)",
    "chuang2014": "Chuang ML et al. CMR reference values for left ventricular volumes, mass and ejection fraction using "
    "computer-aided analysis: the Framingham Heart Study. J Magn Reson Imaging 2014;39:895-900 "
    "(685 healthy adults, bSSFP)",
}

#: absolute measures (keys of `cmrsdk.metrics.CardiacMeasures`).
REFERENCE_RANGES: dict[str, ReferenceRange] = {
    "lvedv_ml": ReferenceRange(_range(160, 29), _range(135, 26), "hudsmith2005"),
    "lvesv_ml": ReferenceRange(_range(50, 16), _range(42, 12), "hudsmith2005"),
    "lvef_pct": ReferenceRange(_range(71, 6), _range(73, 6), "chuang2014"),
    "rvedv_ml": ReferenceRange(_range(190, 33), _range(148, 35), "hudsmith2005"),
    "rvesv_ml": ReferenceRange(_range(78, 20), _range(56, 18), "hudsmith2005"),
}

#: measures indexed to body surface area (per m^2).
INDEXED_RANGES: dict[str, ReferenceRange] = {
    "lvedv_ml": ReferenceRange(_range(82.3, 14.7), _range(77.7, 10.8), "alfakih2003"),
    "lv_mass_g": ReferenceRange(_range(64.7, 9.3), _range(52.0, 7.4), "alfakih2003"),
    "rvedv_ml": ReferenceRange(_range(86.2, 14.1), _range(75.2, 13.8), "alfakih2003"),
}


#: the one plausibility rule for patient data (report.json, report.html, `cmrsdk batch`'s table):
#: outside these a value is a unit mistake (PatientSize in cm, weight in g, height in m), not a person.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "height_cm": (50.0, 250.0),
    "weight_kg": (2.0, 400.0),
    "heart_rate_bpm": (20.0, 250.0),
}


#: a height and a weight whose body-mass index (kg/m^2) is outside this are not one person's: one of
#: them is in another unit. Each alone passes `PLAUSIBLE` where a height in inches meets a weight in
#: kg (72.4 "cm" and 95 kg: 181 kg/m^2, indexing every volume 59 % high; sweep 32); a weight in pounds
#: at an adult height (209.4 "kg" at 184 cm: 62 kg/m^2) stays inside, as real patients do.
PLAUSIBLE_BMI = (8.0, 100.0)

#: measure (report.json's name) -> its body-surface-area-indexed name (per m^2)
INDEXED = {
    "lvedv_ml": "lvedvi_ml_m2",
    "lvesv_ml": "lvesvi_ml_m2",
    "lvsv_ml": "lvsvi_ml_m2",
    "lv_mass_g": "lv_massi_g_m2",
    "rvedv_ml": "rvedvi_ml_m2",
    "rvesv_ml": "rvesvi_ml_m2",
    "rvsv_ml": "rvsvi_ml_m2",
}


def implausible(name: str, value: float | None) -> str:
    """Why ``value`` of ``name`` (a key of `PLAUSIBLE`) is not used, "" when it is plausible or unknown."""
    if value is None:
        return ""
    if value == 0:  # what many consoles store for "not entered"
        return f"{name} 0 (not entered), not used"
    lo, hi = PLAUSIBLE[name]
    if not math.isfinite(value) or not lo <= value <= hi:
        return f"{name} {value:g} outside {lo:g}-{hi:g}, not used"
    return ""


def unused_biometrics(height_cm: float | None, weight_kg: float | None) -> dict[str, str]:
    """Why the height or the weight is set aside, by name ("height_cm", "weight_kg"); empty where
    both are used or unknown. Each is judged alone (`implausible`), then the pair by its body-mass
    index (`PLAUSIBLE_BMI`): a pair no person has sets both aside, with one reason."""
    why = {
        name: text
        for name, value in (("height_cm", height_cm), ("weight_kg", weight_kg))
        if (text := implausible(name, value))
    }
    if why or height_cm is None or weight_kg is None:
        return why
    bmi = weight_kg / (height_cm / 100.0) ** 2
    lo, hi = PLAUSIBLE_BMI
    if lo <= bmi <= hi:
        return {}
    side = f"under {lo:g}" if bmi < lo else f"over {hi:g}"
    text = (
        f"height {height_cm:g} cm with weight {weight_kg:g} kg is a body-mass index of {bmi:.1f} kg/m², "
        f"{side} (one of them in another unit?), neither used"
    )
    return {"height_cm": text, "weight_kg": text}


def body_surface_area_m2(height_cm: float | None, weight_kg: float | None) -> float | None:
    """Mosteller's body surface area, sqrt(height cm x weight kg / 3600) in m^2; None when either is
    unknown or set aside (`unused_biometrics`: a BSA of 20 m^2 from a height in the wrong unit indexes nothing)."""
    if height_cm is None or weight_kg is None or unused_biometrics(height_cm, weight_kg):
        return None
    return math.sqrt(height_cm * weight_kg / 3600.0)


def indexed_measures(measures: Mapping[str, float | None], bsa_m2: float | None) -> dict[str, float | None]:
    """Each measure of `INDEXED` divided by the body surface area (m^2), under its indexed name;
    None where the measure or the BSA is unknown. measures: report.json's ``measures`` (mL, g)."""
    values = {indexed: measures.get(name) for name, indexed in INDEXED.items()}
    return {indexed: None if bsa_m2 is None or v is None else float(v) / bsa_m2 for indexed, v in values.items()}
