"""Canonical label and region codes (fixed conventions of the design)."""

from __future__ import annotations

__all__ = [
    "BACKGROUND",
    "LVBP",
    "LVM",
    "RVBP",
    "LABEL_NAMES",
    "STRUCTURES",
    "NON_CARDIAC",
    "BASE",
    "MIDDLE",
    "APEX",
    "REGION_NAMES",
]

BACKGROUND, LVBP, LVM, RVBP = 0, 1, 2, 3
#: label code -> name; readers map every dataset's own convention onto these codes.
LABEL_NAMES: dict[int, str] = {BACKGROUND: "background", LVBP: "LVBP", LVM: "LVM", RVBP: "RVBP"}
#: the foreground structures, in label order.
STRUCTURES: tuple[int, ...] = (LVBP, LVM, RVBP)

NON_CARDIAC, BASE, MIDDLE, APEX = 0, 1, 2, 3
#: region code -> name, as the slice classifier predicts them.
REGION_NAMES: dict[int, str] = {NON_CARDIAC: "non-cardiac", BASE: "base", MIDDLE: "middle", APEX: "apex"}
