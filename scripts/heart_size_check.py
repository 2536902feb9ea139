"""Hearts of other sizes: the held-out ACDC studies with their pixels claimed smaller or larger.

Each study's in-plane pixel spacing is multiplied by a factor f (f < 1: the heart f times its size
a side in mm, as a child's; f > 1: larger, as a hugely dilated heart's) and its manual labels go
with it, so the expected errors at any f are those at f = 1. Prints, per f, the median absolute
error of LVEDV, RVEDV and LV mass (%) and the studies with a large error (LVEDV or RVEDV beyond
20 or 25 %, LV mass beyond 20 %, LVEF or RVEF beyond 10 or 15 points, or not measured), with the
shipped bundle's pipeline as it is and with `rescale_heart=False` (docs/RESULTS.md, Session 41).

    python scripts/heart_size_check.py [--acdc ../shared/data/acdc/training] [--factors 0.5,1.0,1.5]

About 4 minutes for the default factors on two cores.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np

from cmrsdk import DEMO_BUNDLE, Pipeline
from cmrsdk.heart_size import rescaled
from cmrsdk.io import read_acdc_patient
from cmrsdk.metrics import cardiac_measures

REPO = Path(__file__).resolve().parent.parent
LIMITS = {"lvedv_ml": 20.0, "rvedv_ml": 25.0, "lv_mass_g": 20.0, "lvef_pct": 10.0, "rvef_pct": 15.0}


def errors(measures, truth) -> dict[str, float]:
    """Per measure: % error for volumes and mass, points for EF; NaN where not measured."""
    out = {}
    for key in LIMITS:
        value, true = getattr(measures, key), getattr(truth, key)
        if value is None or not math.isfinite(value):
            out[key] = math.nan
        else:
            out[key] = value - true if key.endswith("pct") else 100.0 * (value / true - 1.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acdc", type=Path, default=REPO.parent / "shared" / "data" / "acdc" / "training")
    parser.add_argument("--factors", default="0.5,0.6,0.7,1.0,1.3,1.5,1.6")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    pipelines = {"rescaled": Pipeline(DEMO_BUNDLE), "one pass": Pipeline(DEMO_BUNDLE, rescale_heart=False)}
    studies = [read_acdc_patient(args.acdc / f"patient{i:03d}") for i in range(5, 101, 5)]
    print("f     method    LVEDV  RVEDV  LV mass (median |error| %)  large-error studies")
    for factor in (float(f) for f in args.factors.split(",")):
        scaled = [rescaled(study, 1.0 / factor) for study in studies]
        truths = [cardiac_measures(s.ed.labels, s.es.labels, s.ed.spacing, s.es.spacing) for s in scaled]
        for name, pipeline in pipelines.items():
            found = [errors(pipeline.segment_study(s).measures, t) for s, t in zip(scaled, truths)]
            large = sum(any(not abs(e[k]) <= LIMITS[k] for k in LIMITS) for e in found)
            med = [np.nanmedian([abs(e[k]) for e in found]) for k in ("lvedv_ml", "rvedv_ml", "lv_mass_g")]
            print(
                f"{factor:<5g} {name:9s} {med[0]:5.1f}  {med[1]:5.1f}  {med[2]:5.1f}                       "
                f"{large} of {len(found)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
