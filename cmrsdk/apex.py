"""The apical RV's prior: where the RV is small, the argmax is tilted toward it.

At the apex the RV is a sliver of 8 to 200 pixels beside the LV, and a U-Net that segments one
slice at a time under-calls it on patients it has not trained on: of the held-out apical slices
whose RV scores 0, nearly all are RVs missed, not RVs drawn where there is none
(docs/RESULTS.md, "Where the Dice is lost"), and the RVs it finds are drawn too small. Rule: on
slices routed to the apex, the RV's probability is multiplied by `APICAL_RV_WEIGHT` before the
argmax, a prior shift toward the class the network under-calls there. Base and middle slices,
and every slice in baseline mode (no regions), are left as they are.

Where the weight comes from (docs/RESULTS.md, Session 25): two development folds' U-Nets, each
segmenting the 12 patients it never saw, argmax redone per weight: apical RVBP Dice 52.4 at 1,
56.4 at 2, 57.5 at 3, 58.1 at 4 and 57.3 at 16; all label-slices 86.44 at 1 and 86.67 at 4;
base and middle unchanged. On the held-out sets (Session 25) it lifts ACDC's apical RVBP 69.93 ->
72.80 but grows RVs already drawn past the apex (foreground on empty slices 0.99 -> 1.01 mL per
study, M&Ms -0.37), so `cmrsdk.Pipeline` applies it only when asked (``apical_rv_weight``).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError
from .labels import APEX, RVBP

__all__ = ["APICAL_RV_WEIGHT", "check_apical_rv_weight", "weigh_apical_rv"]

#: the RV's probability on apical slices is multiplied by this before the argmax
APICAL_RV_WEIGHT = 4.0


def check_apical_rv_weight(weight: object) -> float:
    """``weight`` as a float, or an `InputError` naming it: finite and positive (1: no prior)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise InputError(f"'apical_rv_weight' must be a finite number above 0 (1: no prior), got {weight!r}")
    return float(weight)


def weigh_apical_rv(probabilities: np.ndarray, regions: np.ndarray, weight: float = APICAL_RV_WEIGHT) -> np.ndarray:
    """Tilt the argmax toward the RV on apical slices, in place.

    Parameters
    ----------
    probabilities : float32 (Z, C, H, W), C > RVBP: class probabilities of a stack's slices in
        the network window (`cmrsdk.labels` order), before the argmax; changed in place.
    regions : uint8 (Z,): each slice's region (`cmrsdk.labels` region codes); the RV channel of
        the slices whose region is `APEX` is multiplied by ``weight``.
    weight : finite, above 0; 1 leaves the probabilities as they are.

    Returns
    -------
    ``probabilities`` (the same array). The values stop summing to 1 on the slices changed: they
    are meant for the argmax only.
    """
    if probabilities.ndim != 4 or probabilities.shape[1] <= RVBP or regions.shape != probabilities.shape[:1]:
        raise InputError(
            f"weigh_apical_rv needs (Z, C > {RVBP}, H, W) probabilities and (Z,) regions, got "
            f"{probabilities.shape} and {regions.shape}"
        )
    apex = np.flatnonzero(regions == APEX)
    if weight != 1.0 and len(apex):
        probabilities[apex, RVBP] *= np.float32(weight)
    return probabilities
