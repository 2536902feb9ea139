"""Type stubs of cmrsdk._native (csrc/native/*.cpp); call it through cmrsdk.preprocess."""

import numpy as np
import numpy.typing as npt

def resample(
    pixels: npt.NDArray[np.uint8 | np.int16 | np.uint16 | np.float32 | np.float64],
    out_y: int,
    out_x: int,
    order: int,
    threads: int,
) -> tuple[npt.NDArray[np.float32], int]:
    """(Z, Y, X) any strides -> (float32 (Z, out_y, out_x), status: 0 finite, 1 input not finite,
    2 finite input whose result overflowed float32)."""

def resample_argmax(
    probabilities: npt.NDArray[np.float32],
    native_y: int,
    native_x: int,
    resampled_y: int,
    resampled_x: int,
    offset_y: int,
    offset_x: int,
    threads: int,
) -> tuple[npt.NDArray[np.uint8], bool]:
    """float32 C-contiguous (Z, C, H, W) -> (uint8 (Z, native_y, native_x), all input finite)."""

def largest_component(labels: npt.NDArray[np.uint8], connectivity: int, threads: int) -> npt.NDArray[np.uint8]:
    """uint8 C-contiguous (Z, Y, X) -> uint8 (Z, Y, X), largest component of every label kept."""

def _parallel_for_probe(
    n: int, threads: int, grain: int, fail_at: int, failure: str, throw_in_block: int
) -> tuple[list[tuple[int, int]], int]:
    """Test hook of cmr::parallel_for (tests/test_parallel.py): (block calls sorted, threads started)."""
