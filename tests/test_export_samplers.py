"""export.samplers: the region-aware weights, analytically and over 100,000 draws."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cmrsdk.errors import InputError
from export.samplers import SliceSampler, favour_non_cardiac, region_weights, uniform_weights


def _cohort() -> tuple[np.ndarray, np.ndarray]:
    """Three stacks of 12 slices: 2 non-cardiac at each end, 8 cardiac in 2/4/2 regions."""
    regions, positions = [], []
    for _ in range(3):
        regions += [0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0]
        positions += [np.nan, np.nan, *np.linspace(0, 1, 8), np.nan, np.nan]
    return np.array(regions, np.uint8), np.array(positions)


@pytest.mark.parametrize("p_max", [4.0, 20.0])
def test_region_weights_follow_the_quadratic_and_keep_non_cardiac_mass(p_max: float) -> None:
    regions, positions = _cohort()
    p = region_weights(regions, positions, p_min=1.0, p_max=p_max)
    n = regions.size
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(p[regions == 0], 1.0 / n, rtol=0, atol=1e-15)
    cardiac = regions != 0
    t = positions[cardiac]
    quadratic = 1.0 + (p_max - 1.0) * (2 * t - 1) ** 2
    np.testing.assert_allclose(p[cardiac] / p[cardiac].min(), quadratic / quadratic.min(), rtol=1e-12)
    # the base and apex ends are p_max / p_min times as likely as the most central slices' minimum
    ends = p[cardiac][np.isin(t, [0.0, 1.0])]
    assert ends.max() / ends.min() == pytest.approx(1.0)
    assert ends[0] / p[cardiac].min() == pytest.approx(p_max / quadratic.min(), rel=1e-12)


def test_100000_draws_match_the_analytic_frequencies() -> None:
    regions, positions = _cohort()
    p = region_weights(regions, positions, p_min=1.0, p_max=20.0)
    sampler = SliceSampler(p, seed=1234)
    draws = np.concatenate([sampler.sample(1000).indices for _ in range(100)])
    assert draws.size == 100_000
    observed = np.bincount(draws, minlength=p.size)
    chi2, p_value = stats.chisquare(observed, f_exp=p * draws.size)
    assert p_value > 0.001, (chi2, p_value)
    # the non-cardiac share is what uniform sampling gives: 12 of 36 slices, within 4 sigma
    share = observed[regions == 0].sum() / draws.size
    sigma = np.sqrt((1 / 3) * (2 / 3) / draws.size)
    assert abs(share - 1 / 3) < 4 * sigma
    # and a uniform sampler would fail the same test against these weights
    uniform = np.bincount(SliceSampler(uniform_weights(p.size), seed=1).sample(100_000).indices, minlength=p.size)
    assert stats.chisquare(uniform, f_exp=p * 100_000).pvalue < 1e-10


def test_non_cardiac_slices_drawn_factor_times_as_often() -> None:
    regions, positions = _cohort()
    p = favour_non_cardiac(uniform_weights(regions.size), regions, 4.0)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    # 12 non-cardiac slices at weight 4 against 24 cardiac at 1: a share of 48 / 72
    assert p[regions == 0].sum() == pytest.approx(48 / 72)
    assert p[regions == 0].max() / p[regions != 0].max() == pytest.approx(4.0)
    q = favour_non_cardiac(region_weights(regions, positions), regions, 2.0)
    base = region_weights(regions, positions)
    np.testing.assert_allclose(q[regions != 0] / q[regions != 0].sum(), base[regions != 0] / base[regions != 0].sum())
    with pytest.raises(InputError, match="'factor' must be positive"):
        favour_non_cardiac(p, regions, 0.0)


def test_foreground_fraction_forces_the_batch_tail_onto_labelled_slices() -> None:
    regions, positions = _cohort()
    sampler = SliceSampler(
        uniform_weights(regions.size), has_foreground=regions != 0, foreground_fraction=1 / 3, seed=0
    )
    for _ in range(50):
        batch = sampler.sample(12)
        assert batch.foreground.tolist() == [False] * 8 + [True] * 4
        assert np.all(regions[batch.indices[8:]] != 0)


def test_sampler_state_round_trips() -> None:
    sampler = SliceSampler(uniform_weights(10), seed=5)
    sampler.sample(7)
    state = sampler.state_dict()
    expected = sampler.sample(7).indices
    other = SliceSampler(uniform_weights(10), seed=99)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.sample(7).indices, expected)


def test_bad_sampler_input_raises() -> None:
    regions, positions = _cohort()
    with pytest.raises(InputError, match="0 < p_min <= p_max"):
        region_weights(regions, positions, p_min=5.0, p_max=4.0)
    bad = positions.copy()
    bad[3] = 1.5
    with pytest.raises(InputError, match=r"'positions' of cardiac slices must lie in \[0, 1\]"):
        region_weights(regions, bad)
    with pytest.raises(InputError, match="'has_foreground' must be a bool array"):
        SliceSampler(uniform_weights(4), foreground_fraction=0.5)
    with pytest.raises(InputError, match="'weights' must be a non-empty 1-D array"):
        SliceSampler(np.array([-1.0, 2.0]))
