"""Slice samplers: which slices make up each training batch.

A sampler holds one probability per slice and draws each batch with replacement from it,
as nnU-Net's data loader does (a batch is a set of random draws, not an epoch permutation).

- :func:`uniform_weights`: every slice equally likely.
- :func:`region_weights`: the paper's region-aware sampler. A cardiac slice at base-to-apex
  position ``t`` in [0, 1] has weight ``p_min + (p_max - p_min) * (2 t - 1) ** 2`` (the base
  and the apex favoured over the middle); the cardiac weights are then scaled so that the
  cardiac slices together keep the probability mass they have under uniform sampling, which
  leaves every non-cardiac slice at exactly ``1 / N``. Only the ratio ``p_max / p_min``
  matters: 4 is the paper's "low" level, 20 its "high".
- :func:`favour_non_cardiac`: either of them with the non-cardiac slices (above the base, below
  the apex: few in ACDC, 54 of 1,516 training slices) drawn ``factor`` times as often, so that
  "no heart here" is learnt on more than 4 % of the draws.
- Foreground oversampling (nnU-Net): with ``foreground_fraction`` f > 0, the last
  ``round(f * B)`` draws of every batch come only from slices holding foreground (with the
  same weights renormalised over them), and are flagged so that the patch crop is centred on
  a foreground pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmrsdk.errors import InputError
from cmrsdk.labels import NON_CARDIAC

__all__ = ["Batch", "SliceSampler", "favour_non_cardiac", "region_weights", "uniform_weights"]


def uniform_weights(n: int) -> np.ndarray:
    """float64 (n,) probabilities, all ``1 / n``."""
    if n < 1:
        raise InputError(f"'n' must be a positive slice count, got {n}")
    return np.full(n, 1.0 / n)


def region_weights(
    regions: np.ndarray, positions: np.ndarray, *, p_min: float = 1.0, p_max: float = 20.0
) -> np.ndarray:
    """The region-aware sampling probabilities.

    Parameters
    ----------
    regions : uint8 (N,) slice regions (0 non-cardiac, 1 base, 2 middle, 3 apex).
    positions : float64 (N,) base-to-apex position t in [0, 1] of cardiac slices; ignored
        (may be NaN) for non-cardiac slices.
    p_min, p_max : the quadratic's value at the middle (t = 0.5) and at the ends (t = 0, 1);
        0 < p_min <= p_max.

    Returns
    -------
    float64 (N,) probabilities summing to 1; non-cardiac slices have exactly ``1 / N``.
    """
    regions = np.asarray(regions)
    positions = np.asarray(positions, dtype=np.float64)
    if regions.ndim != 1 or positions.shape != regions.shape or regions.size == 0:
        raise InputError(
            f"'regions' and 'positions' must be non-empty 1-D arrays of one length, "
            f"got shapes {regions.shape} and {positions.shape}"
        )
    if not 0 < p_min <= p_max:
        raise InputError(f"'p_min' and 'p_max' must satisfy 0 < p_min <= p_max, got {p_min} and {p_max}")
    n = regions.size
    cardiac = regions != NON_CARDIAC
    t = positions[cardiac]
    if not np.all((t >= 0) & (t <= 1)):
        raise InputError(
            f"'positions' of cardiac slices must lie in [0, 1], got range "
            f"[{np.nanmin(t) if t.size else 'none'}, {np.nanmax(t) if t.size else 'none'}]"
        )
    weights = np.full(n, 1.0 / n)
    if t.size:
        raw = p_min + (p_max - p_min) * (2.0 * t - 1.0) ** 2
        # scale so the cardiac slices keep their uniform mass n_cardiac / N
        weights[cardiac] = raw / raw.sum() * (t.size / n)
    return weights


def favour_non_cardiac(weights: np.ndarray, regions: np.ndarray, factor: float) -> np.ndarray:
    """float64 (N,) probabilities: ``weights`` (N,) with every non-cardiac slice's multiplied by
    ``factor`` (> 0), renormalised to sum to 1. ``regions``: uint8 (N,) as in :func:`region_weights`."""
    weights, regions = np.asarray(weights, dtype=np.float64), np.asarray(regions)
    if weights.shape != regions.shape or weights.ndim != 1:
        raise InputError(f"'weights' and 'regions' must be 1-D of one length, got {weights.shape} and {regions.shape}")
    if not factor > 0:
        raise InputError(f"'factor' must be positive, got {factor}")
    scaled = np.where(regions == NON_CARDIAC, weights * factor, weights)
    return scaled / scaled.sum()


@dataclass(frozen=True)
class Batch:
    """One drawn batch: ``indices`` int64 (B,) slice indices, ``foreground`` bool (B,) crop flags."""

    indices: np.ndarray
    foreground: np.ndarray


class SliceSampler:
    """Draws batches of slice indices with replacement.

    Parameters
    ----------
    weights : float64 (N,) non-negative slice weights (normalised here).
    has_foreground : bool (N,) whether each slice holds any label; needed when
        ``foreground_fraction > 0``.
    foreground_fraction : share of every batch forced to slices with foreground (nnU-Net: 1/3).
    seed : seed of the sampler's own generator (give each DDP rank its own).
    """

    def __init__(
        self,
        weights: np.ndarray,
        *,
        has_foreground: np.ndarray | None = None,
        foreground_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if (
            weights.ndim != 1
            or weights.size == 0
            or not np.all(np.isfinite(weights))
            or np.any(weights < 0)
            or weights.sum() <= 0
        ):
            raise InputError(
                f"'weights' must be a non-empty 1-D array of finite non-negative values with a "
                f"positive sum, got shape {weights.shape}"
            )
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"'foreground_fraction' must lie in [0, 1], got {foreground_fraction}")
        self.probabilities = weights / weights.sum()
        self.foreground_fraction = float(foreground_fraction)
        self.fg_probabilities: np.ndarray | None = None
        if foreground_fraction > 0:
            if has_foreground is None or np.asarray(has_foreground).shape != weights.shape:
                raise InputError(
                    f"'has_foreground' must be a bool array of shape {weights.shape} when "
                    f"'foreground_fraction' > 0, got {None if has_foreground is None else np.shape(has_foreground)}"
                )
            fg = self.probabilities * np.asarray(has_foreground, dtype=bool)
            if fg.sum() <= 0:
                raise InputError(
                    "'has_foreground' marks no slice with positive weight, so no batch can be "
                    "forced to foreground; set 'foreground_fraction' to 0"
                )
            self.fg_probabilities = fg / fg.sum()
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.probabilities.size

    def sample(self, batch_size: int) -> Batch:
        """Draw one batch of ``batch_size`` slices."""
        if batch_size < 1:
            raise InputError(f"'batch_size' must be positive, got {batch_size}")
        n = self.probabilities.size
        forced = int(round(self.foreground_fraction * batch_size)) if self.fg_probabilities is not None else 0
        free = self.rng.choice(n, size=batch_size - forced, p=self.probabilities)
        fg = self.rng.choice(n, size=forced, p=self.fg_probabilities) if forced else np.empty(0, dtype=np.int64)
        return Batch(
            np.concatenate([free, fg]).astype(np.int64),
            np.concatenate([np.zeros(batch_size - forced, bool), np.ones(forced, bool)]),
        )

    def state_dict(self) -> dict[str, object]:
        """The generator state, so that a resumed run draws what an uninterrupted one would."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`."""
        self.rng.bit_generator.state = state["rng"]
