"""The basal slice at end-systole: where the valve plane has moved into it, its RV is left out.

In systole the base of the heart descends toward the apex (the through-plane motion the paper
names as a cause of basal errors): the most basal slice that cut the right ventricle at ED cuts
the tricuspid annulus and the atrium at ES, and annotators (ACDC's protocol) leave its RV out. A
U-Net that sees one slice at a time still draws a piece of RV there on patients it has not
trained on: on the 20 held-out ACDC patients, 7 ES slices, most of the basal RV's shortfall
(docs/RESULTS.md, Session 18).

What tells them apart is the study, not the slice: such a piece is small against the same
slice's RV at ED, while a basal slice that still cuts the ventricle keeps most of its area (the
RV shortens more than it narrows). Rule: at ES, the most basal slice holding RV keeps it only
where its area is at least `SYSTOLIC_BASE_RATIO` of the RV area on the same slice at ED.

Where the ratio comes from (docs/RESULTS.md, Session 19): a U-Net trained on 68 patients,
segmenting the 12 it never saw, drew RV on 3 ES slices the annotators left without one, at
0.02, 0.29 and 0.38 of the ED area; the manual labels of the 80 training patients give the true
most basal ES RV 0.36 to 1.03 of its ED area (median 0.71; 5 of 80 below 0.4).
"""

from __future__ import annotations

import numpy as np

from ._checks import check_label_map
from .errors import InputError
from .labels import RVBP
from .regions import labelled_slices_base_to_apex

__all__ = ["SYSTOLIC_BASE_RATIO", "basal_rv_ratio", "drop_systolic_atrium"]

#: the most basal ES slice keeps its RV when its area is at least this fraction of the ED area
SYSTOLIC_BASE_RATIO = 0.4


def drop_systolic_atrium(
    ed: np.ndarray, es: np.ndarray, *, ratio: float = SYSTOLIC_BASE_RATIO, toward_apex: int | None = None
) -> tuple[np.ndarray, int | None]:
    """The ES labels with the RV removed from the most basal ES RV slice where the valve plane moved in.

    Parameters
    ----------
    ed, es : uint8 (Z, Y, X) canonical labels (0 bg, 1 LVBP, 2 LVM, 3 RVBP) of one study's ED and
        ES on the same grid (same slices, same pixels).
    ratio : the fraction of its ED area (pixels on the same slice) below which the most basal ES
        RV is dropped; 0 drops nothing.
    toward_apex : +1 / -1 when the stack's orientation says which way the index runs
        (`cmrsdk.regions.index_toward_apex`), None to read it from the ED masks' areas.

    Returns
    -------
    (labels, z): uint8 (Z, Y, X) ES labels (a copy where a slice changed, ``es`` itself
    otherwise) and the index of the slice whose RV was dropped, or None.
    """
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"'ratio' must be in [0, 1), got {ratio}")
    found = basal_rv_ratio(ed, es, toward_apex=toward_apex)
    if found is None or found[1] >= ratio:
        return es, None
    z = found[0]
    dropped = es.copy()
    dropped[z][dropped[z] == RVBP] = 0
    return dropped, z


def basal_rv_ratio(ed: np.ndarray, es: np.ndarray, *, toward_apex: int | None = None) -> tuple[int, float] | None:
    """The most basal ES slice holding RV and its RV area as a fraction of the same slice's at
    ED (inf where ED holds none there), or None where ES holds no RV: what `drop_systolic_atrium`
    decides by. ed, es: uint8 (Z, Y, X) canonical labels on one grid; ``toward_apex`` as there."""
    ed, es = check_label_map(ed), check_label_map(es)
    if ed.shape != es.shape:
        raise InputError(f"ED and ES labels must share a grid, got shapes {ed.shape} and {es.shape}")
    rv_ed = (ed == RVBP).sum(axis=(1, 2))
    rv_es = (es == RVBP).sum(axis=(1, 2))
    for z in labelled_slices_base_to_apex(ed, toward_apex):
        if rv_es[z]:
            return int(z), float(rv_es[z] / rv_ed[z]) if rv_ed[z] else float("inf")
    return None
