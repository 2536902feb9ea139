"""The data model's own checks (cmrsdk.types): a Stack or Study built in Python meets the bounds the
readers apply to file headers, so a wrong unit or a wrong type is an error, never a silent 0 mL."""

from __future__ import annotations

import numpy as np
import pytest

from cmrsdk import Stack, Study
from cmrsdk.errors import InputError


def _pixels(z: int = 4) -> np.ndarray:
    return np.random.default_rng(0).random((z, 16, 16), dtype=np.float32)


@pytest.mark.parametrize(
    "spacing, positions, message",
    [
        (
            (8.0, 0.0015625, 0.0015625),
            None,
            r"'spacing' \(dy, dx\) \[0\.0015625, 0\.0015625\] mm is outside 0\.3\.\.20\.0",
        ),
        # centimetres (sweep 10: 0 mL for every structure, flagged only no_lv / no_rv)
        ((1.0, 0.15625, 0.15625), None, r"\[0\.15625, 0\.15625\] mm is outside 0\.3\.\.20\.0 mm: .*centimetres"),
        # (dx, dy, dz) order: 1.56 x 10 mm pixels
        ((1.5625, 1.5625, 10.0), None, r"pixels of 1\.5625 x 10 mm, more than 3 times .* slice spacing first"),
        # positions in cm beside a spacing in mm (sweep 10: LVEDV 29.0 mL for 290.4, no flag)
        (
            (10.0, 1.5, 1.5),
            [0.0, 1.0, 2.0, 3.0],
            r"'slice_positions' are 1 mm apart \(median\) but 'spacing' dz is 10 mm",
        ),
        ((1000.0, 1.5, 1.5), None, r"'spacing' dz 1000\.0 mm is outside 0\.05\.\.100\.0"),
        ((8.0, 1.5, 1.5), [0.0, 0.008, 0.016, 0.024], r"'slice_positions' are 0\.008 mm apart \(median\)"),
        ((8.0, 1.5, 1.5), [5.0, 5.0, 5.0, 5.0], r"'slice_positions' are 0 mm apart .*every slice at one place"),
        ((8.0, 1.5, 1.5), [0.0, 8.0, np.nan, 24.0], r"'slice_positions' must be finite"),
    ],
)
def test_a_stack_in_other_units_is_refused(spacing, positions, message):
    """Spacing in metres gave LVEDV 0.0 mL, dz 1000 gave 29,143 mL, positions in metres 0.29 mL."""
    with pytest.raises(InputError, match=message):
        Stack(_pixels(), spacing, slice_positions=positions, source="case7")


def test_a_one_slice_stack_keeps_its_placeholder_step():
    assert Stack(_pixels(1), (1.0, 1.5, 1.5)).slice_positions.tolist() == [0.0]


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.ones((2, 8, 8), bool), r"must be real intensities, got dtype bool"),
        (np.ones((2, 8, 8), np.complex64), r"must be real intensities, got dtype complex64"),
        (np.full((2, 8, 8), 1e300), r"hold values beyond float32's range \(3\.4e38\) \(slice 0 of 2\)"),
    ],
)
def test_pixels_that_are_no_intensities_are_refused(pixels, message):
    with pytest.raises(InputError, match=message):
        Stack(pixels, (8.0, 1.5, 1.5))


def test_nan_pixels_name_the_source_and_slice():
    pixels = _pixels()
    pixels[2, 3, 3] = np.nan
    with pytest.raises(InputError, match=r"from case7 hold NaN or infinite values \(slice 2 of 4\)"):
        Stack(pixels, (8.0, 1.5, 1.5), source="case7")


@pytest.mark.parametrize(
    "labels, message",
    [(300, r"labels 0\.\.3 .*got values 0\.\.300"), (-1, r"got values -1\.\.0"), (1.7, "integer labels")],
)
def test_labels_outside_the_canonical_set_are_refused(labels, message):
    """300 wrapped to 44 and -1 to 255 through uint8; 1.7 became 1."""
    array = np.zeros((4, 16, 16), np.int32 if isinstance(labels, int) else np.float64)
    array[1, 2, 2] = labels
    with pytest.raises(InputError, match=message):
        Stack(_pixels(), (8.0, 1.5, 1.5), labels=array)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ed_index": 0.0}, r"'ed_index' must be a phase index \(int\) or None, got 0\.0"),
        ({"es_index": "0"}, r"'es_index' must be a phase index \(int\) or None, got '0'"),
        ({"ed_index": True}, r"'ed_index' must be a phase index \(int\) or None, got True"),
    ],
)
def test_study_indices_are_integers(kwargs, message):
    stack = Stack(_pixels(), (8.0, 1.5, 1.5))
    with pytest.raises(InputError, match=message):
        Study((stack, stack), **kwargs)
    assert Study((stack, stack), ed_index=np.int64(1)).ed is stack


def test_study_phases_are_stacks():
    with pytest.raises(InputError, match=r"'phases' must be cmrsdk\.Stack objects, got ndarray at 0"):
        Study((_pixels(), _pixels()))


def test_an_array_larger_than_any_cine_is_refused_as_the_readers_refuse_its_header():
    # sweep 10: a 5000-pixel-wide Stack was segmented through the API; the readers refuse > 2048
    with pytest.raises(InputError, match=r"are 16 x 5000 pixels, more than 2048 a side: not a cine MR image"):
        Stack(np.zeros((2, 16, 5000), np.float32), (8.0, 1.5, 1.5))
    assert Stack(np.zeros((2, 16, 2048), np.float32), (8.0, 1.5, 1.5)).shape == (2, 16, 2048)


def test_integer_labels_message_names_the_argument_once():
    with pytest.raises(InputError, match=r"^'labels' must hold integer labels"):
        Stack(_pixels(), (8.0, 1.5, 1.5), labels=np.zeros((4, 16, 16), np.float32))
