"""Region decoding: turn the classifier's per-slice probabilities into one region per slice.

A short-axis stack crosses the heart once, so its true regions always read, along the stack,
non-cardiac*, base+, middle+, apex+, non-cardiac* (or the same from apex to base): that is how
ground-truth regions are defined (`cmrsdk.regions`). ``independent`` decoding takes each slice's
most probable region, as the paper does; ``monotone`` decoding takes the most probable sequence
of that form (a 5-state left-to-right Viterbi pass in each direction, O(Z)), so that one
uncertain slice cannot be routed to a region out of place.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import InputError
from .labels import APEX, BASE, MIDDLE, NON_CARDIAC

__all__ = ["Decoding", "DECODINGS", "decode_regions"]

Decoding = Literal["independent", "monotone"]
DECODINGS: tuple[str, ...] = ("independent", "monotone")

#: the states of one pass through the heart, in order; each emits the region beside it
_BASE_TO_APEX = (NON_CARDIAC, BASE, MIDDLE, APEX, NON_CARDIAC)
_APEX_TO_BASE = (NON_CARDIAC, APEX, MIDDLE, BASE, NON_CARDIAC)


def _best_path(log_p: np.ndarray, regions: tuple[int, ...]) -> tuple[float, np.ndarray]:
    """Most probable non-decreasing state sequence; returns (log-probability, regions (Z,))."""
    z, s = log_p.shape[0], len(regions)
    emit = log_p[:, regions]  # (Z, S)
    score = np.full((z, s), -np.inf)
    back = np.zeros((z, s), np.intp)
    score[0] = emit[0]
    for k in range(1, z):
        # best predecessor of state j is the best of states 0..j (stay or move forward)
        best = np.maximum.accumulate(score[k - 1])
        arg = np.zeros(s, np.intp)
        for j in range(1, s):
            arg[j] = j if score[k - 1, j] >= best[j - 1] else arg[j - 1]
        score[k] = best + emit[k]
        back[k] = arg
    state = int(score[-1].argmax())
    total = float(score[-1, state])
    path = np.empty(z, np.intp)
    for k in range(z - 1, -1, -1):
        path[k] = state
        state = int(back[k, state])
    return total, np.asarray(regions, np.uint8)[path]


def decode_regions(probabilities: np.ndarray, decoding: Decoding = "monotone") -> np.ndarray:
    """One region per slice from the classifier's probabilities.

    Parameters
    ----------
    probabilities : float (Z, 4) region probabilities (non-cardiac, base, middle, apex), slices in
        the stack's order.
    decoding : "independent" (argmax per slice) or "monotone" (the most probable sequence that
        crosses the heart once, in either direction).

    Returns
    -------
    uint8 (Z,) region codes.
    """
    if decoding not in DECODINGS:
        raise InputError(f"'decoding' must be one of {', '.join(DECODINGS)}, got {decoding!r}")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 4:
        raise InputError(f"'probabilities' must be (Z, 4), got shape {p.shape}")
    if p.shape[0] == 0 or decoding == "independent":
        independent: np.ndarray = p.argmax(1).astype(np.uint8)
        return independent
    log_p = np.log(np.clip(p, 1e-12, None))
    down = _best_path(log_p, _BASE_TO_APEX)
    up = _best_path(log_p, _APEX_TO_BASE)
    return (down if down[0] >= up[0] else up)[1]
