"""The input checks that several modules share: one spacing validator, one label-map checker.

Each raises `cmrsdk.errors.InputError` naming the parameter, the value received and what was
expected, and returns the value in the form the caller computes with.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["check_spacing", "check_label_map"]


def check_spacing(spacing: Any, name: str = "spacing") -> tuple[float, float, float]:
    """``spacing`` as (dz, dy, dx) floats in mm, each finite and positive.

    Raises
    ------
    InputError
        Not three numbers, or one of them not finite and positive.
    """
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise InputError(f"'{name}' must be (dz, dy, dx) in mm, got {spacing!r}") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"'{name}' must be three finite positive mm values (dz, dy, dx), got {spacing!r}")
    return values[0], values[1], values[2]


def check_label_map(labels: Any, name: str = "labels") -> np.ndarray:
    """``labels`` as a 3-D (Z, Y, X) integer (or boolean) array, not copied where it already is one.

    Raises
    ------
    InputError
        Not 3-D, or not of an integer or boolean dtype.
    """
    array = np.asarray(labels)
    if array.ndim != 3:
        raise InputError(f"'{name}' must be 3-D (Z, Y, X), got shape {array.shape}")
    if array.dtype.kind not in "uib":
        raise InputError(f"'{name}' must hold integer labels (uint8 canonical labels), got dtype {array.dtype}")
    return array
