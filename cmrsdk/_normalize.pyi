"""Type stubs of cmrsdk._normalize (csrc/normalize.pyx); call it through cmrsdk.preprocess.normalize.

Arrays are flat: x float32 (N,) C-contiguous, mask uint8 (N,) or None; results float32 (N,).
"""

import numpy as np
import numpy.typing as npt

EPSILON: float

def zscore(
    x: npt.NDArray[np.float32], mask: npt.NDArray[np.uint8] | None = ..., threads: int = ...
) -> npt.NDArray[np.float32]: ...
def robust_zscore(
    x: npt.NDArray[np.float32],
    mask: npt.NDArray[np.uint8] | None = ...,
    lower: float = ...,
    upper: float = ...,
    threads: int = ...,
) -> npt.NDArray[np.float32]: ...
def minmax(
    x: npt.NDArray[np.float32], mask: npt.NDArray[np.uint8] | None = ..., threads: int = ...
) -> npt.NDArray[np.float32]: ...
def percentiles(
    x: npt.NDArray[np.float32],
    mask: npt.NDArray[np.uint8] | None = ...,
    lower: float = ...,
    upper: float = ...,
    threads: int = ...,
) -> tuple[float, float]: ...
