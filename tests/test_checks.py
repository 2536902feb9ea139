"""The shared input checks (cmrsdk._checks): one spacing validator, one label-map checker."""

from __future__ import annotations

import numpy as np
import pytest

from cmrsdk._checks import check_label_map, check_spacing
from cmrsdk.errors import InputError


def test_check_spacing_returns_three_floats_and_names_the_parameter():
    assert check_spacing((8, np.float32(1.5), "1.25")) == (8.0, 1.5, 1.25)
    assert all(type(v) is float for v in check_spacing(np.array([10.0, 1.0, 1.0])))
    for bad in ((1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (np.nan, 1.0, 1.0), (np.inf, 1.0, 1.0)):
        with pytest.raises(InputError, match=r"'voxel' must be three finite positive mm values \(dz, dy, dx\)"):
            check_spacing(bad, "voxel")
    for bad in (None, 3.0, ("a", 1.0, 1.0)):
        with pytest.raises(InputError, match=r"'spacing' must be \(dz, dy, dx\) in mm"):
            check_spacing(bad)


def test_check_label_map_takes_3d_integer_or_bool_maps_without_copying():
    labels = np.zeros((2, 3, 4), np.uint8)
    assert check_label_map(labels) is labels
    assert check_label_map(np.zeros((1, 2, 2), bool)).dtype == np.bool_
    assert check_label_map([[[0, 1]]]).shape == (1, 1, 2)
    with pytest.raises(InputError, match=r"'truth' must be 3-D \(Z, Y, X\), got shape \(2, 3\)"):
        check_label_map(np.zeros((2, 3), np.uint8), "truth")
    with pytest.raises(InputError, match=r"'labels' must hold integer labels .* got dtype float32"):
        check_label_map(np.zeros((1, 2, 2), np.float32))
