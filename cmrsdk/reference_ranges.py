"""Published adult reference ranges for the measures of a short-axis cine, and body surface area.

Each range is the source's mean ± 2 SD (about the central 95 % of its healthy volunteers), for
men and for women, from 1.5 T bSSFP short-axis stacks analysed by slice summation, as cmrsdk
measures. They are a reader's orientation, not a diagnosis: ranges differ between sources
with age, ethnicity, field strength and whether papillary muscles count as blood pool (cmrsdk
follows ACDC: they do). Quantities without a source here show no range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "ReferenceRange",
    "REFERENCE_RANGES",
    "INDEXED_RANGES",
    "SOURCES",
    "PLAUSIBLE",
    "implausible",
    "body_surface_area_m2",
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


def implausible(name: str, value: float | None) -> str:
    """Why ``value`` of ``name`` (a key of `PLAUSIBLE`) is not used, "" when it is plausible or unknown."""
    if value is None:
        return ""
    lo, hi = PLAUSIBLE[name]
    if not math.isfinite(value) or not lo <= value <= hi:
        return f"{name} {value:g} outside {lo:g}-{hi:g}, not used"
    return ""


def body_surface_area_m2(height_cm: float | None, weight_kg: float | None) -> float | None:
    """Mosteller's body surface area, sqrt(height cm x weight kg / 3600) in m^2; None when either is
    unknown or outside `PLAUSIBLE` (a BSA of 20 m^2 from a height in the wrong unit indexes nothing)."""
    if height_cm is None or weight_kg is None:
        return None
    if implausible("height_cm", height_cm) or implausible("weight_kg", weight_kg):
        return None
    return math.sqrt(height_cm * weight_kg / 3600.0)
