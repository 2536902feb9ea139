"""cmrsdk.routing: monotone region decoding against brute force and argmax."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrsdk.errors import InputError
from cmrsdk.routing import decode_regions

ORDERS = ((0, 1, 2, 3, 0), (0, 3, 2, 1, 0))


def _crosses_once(regions) -> bool:
    """True when the sequence reads NC*, then regions in one of the two orders, then NC*."""
    for order in ORDERS:
        state = 0
        ok = True
        for r in regions:
            # advance to the first state >= current whose region is r
            nxt = next((s for s in range(state, 5) if order[s] == r), None)
            if nxt is None:
                ok = False
                break
            state = nxt
        if ok:
            return True
    return False


def _brute_force(p: np.ndarray) -> float:
    log_p = np.log(np.clip(p, 1e-12, None))
    return max(
        sum(log_p[z, r] for z, r in enumerate(seq))
        for seq in itertools.product(range(4), repeat=p.shape[0])
        if _crosses_once(seq)
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_monotone_decoding_is_the_best_valid_sequence(z, seed):
    p = np.random.default_rng(seed).dirichlet(np.ones(4), size=z)
    decoded = decode_regions(p)
    assert _crosses_once(decoded)
    score = sum(np.log(np.clip(p[k, r], 1e-12, None)) for k, r in enumerate(decoded))
    assert score == pytest.approx(_brute_force(p))


def test_a_stray_slice_is_put_back_in_place_in_either_direction():
    regions = [0, 1, 1, 2, 2, 2, 3, 2, 3, 0]  # one apex-side slice called middle
    p = np.full((10, 4), 0.02)
    p[np.arange(10), regions] = 0.94
    p[7] = [0.02, 0.02, 0.50, 0.46]
    np.testing.assert_array_equal(decode_regions(p), [0, 1, 1, 2, 2, 2, 3, 3, 3, 0])
    np.testing.assert_array_equal(decode_regions(p[::-1]), [0, 1, 1, 2, 2, 2, 3, 3, 3, 0][::-1])
    np.testing.assert_array_equal(decode_regions(p, "independent"), regions)


def test_valid_argmax_is_kept_and_bad_input_refused():
    p = np.eye(4)[[0, 1, 2, 2, 3]] * 0.9 + 0.025
    np.testing.assert_array_equal(decode_regions(p), [0, 1, 2, 2, 3])
    assert decode_regions(np.zeros((0, 4))).shape == (0,)
    with pytest.raises(InputError, match="'decoding'"):
        decode_regions(p, "viterbi")
    with pytest.raises(InputError, match=r"\(Z, 4\)"):
        decode_regions(np.zeros((3, 3)))
