"""The fuzz harnesses' view of an input: typed values read off the fuzzer's bytes.

Plain Python rather than atheris' FuzzedDataProvider, so that the test suite can drive the
harnesses with seeded random bytes where atheris is not installed; libFuzzer's mutations work
on the bytes either way.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Data"]


class Data:
    """A thin layer over atheris' FuzzedDataProvider, or over plain bytes without atheris."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        span = hi - lo + 1
        width = max(1, (span.bit_length() + 7) // 8)
        raw = int.from_bytes(self.take(width).ljust(width, b"\0"), "little")
        return lo + raw % span

    def pick(self, values: list):  # type: ignore[no-untyped-def]
        return values[self.int(0, len(values) - 1)]

    def bool(self) -> bool:
        return self.int(0, 1) == 1

    def float(self) -> float:
        """A float: mostly ordinary values, sometimes raw IEEE bits (NaN, inf, subnormals)."""
        kind = self.int(0, 7)
        if kind == 0:
            return float(np.frombuffer(self.take(8).ljust(8, b"\0"), "<f8")[0])
        if kind == 1:
            return self.pick([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-300, 1e300, 5e-324, -1.0])
        return self.int(1, 4000) / self.int(1, 1000)

    def rest(self, n: int) -> bytes:
        """n bytes: what is left, repeated as needed (zeros when nothing is left)."""
        chunk = self.take(n)
        if len(chunk) == n:
            return chunk
        if not chunk:
            return bytes(n)
        return (chunk * (n // len(chunk) + 1))[:n]
