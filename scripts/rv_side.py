"""Which side of the LV each bundle draws the RV on, on a development fold's validation patients.

A measurement probe for stage 21 (docs/RESULTS.md, Session 24). Per phase, the manual RV's
direction from the LV (their centroids on the slice with the largest manual RV) defines the RV's
side; every RV pixel a bundle draws (before the largest-component clean-up) is counted on that
side or the other by its position relative to the drawn LV's centroid on the same slice. Prints
the slices with more than 20 px and a fifth of their RV on the far side, and each bundle's totals.

    python scripts/rv_side.py cache/acdc_224_s10 runs/dev68_s10_ref_bundle runs/dev68_s10_chiral_bundle
"""

from __future__ import annotations

import json
import sys

import numpy as np

from cmrsdk import Pipeline
from cmrsdk.io import read_study
from cmrsdk.labels import LVBP, LVM, RVBP

ACDC = "../shared/data/acdc/training"


def main(cache: str, bundles: list[str]) -> None:
    validation = json.load(open(f"{cache}/meta.json"))["splits"]["val"]
    for bundle in bundles:
        raw = Pipeline(bundle, threads=1, largest_component=False)
        near = far = 0
        for patient in validation:
            result = raw.segment_study(read_study(f"{ACDC}/{patient}"))
            for phase in ("ed", "es"):
                x = getattr(result, phase)
                drawn, manual = x.labels, x.stack.labels  # (Z, H, W) uint8 each
                z0 = int(np.argmax((manual == RVBP).sum((1, 2))))
                side = np.argwhere(manual[z0] == RVBP).mean(0) - np.argwhere(np.isin(manual[z0], (LVBP, LVM))).mean(0)
                for z in range(drawn.shape[0]):
                    lv, rv = np.argwhere(np.isin(drawn[z], (LVBP, LVM))), np.argwhere(drawn[z] == RVBP)
                    if len(lv) == 0 or len(rv) == 0:
                        continue
                    on_side = (rv - lv.mean(0)) @ side > 0
                    n_near, n_far = int(on_side.sum()), int((~on_side).sum())
                    near, far = near + n_near, far + n_far
                    if n_far > 20 and n_far > 0.2 * len(rv):
                        print(
                            f"{bundle} {patient} {phase.upper()} slice {z}: {n_near} px on the RV's side, "
                            f"{n_far} on the far side (manual RV {int((manual[z] == RVBP).sum())} px)"
                        )
        print(f"{bundle}: RV px on the RV's side {near}, on the far side {far}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
