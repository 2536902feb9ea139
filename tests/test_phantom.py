"""The embedded example: a bSSFP short-axis cine phantom with an exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from cmrsdk.errors import InputError
from cmrsdk.labels import LVBP, LVM, RVBP
from cmrsdk.metrics import cardiac_measures
from cmrsdk.phantom import cine_phantom, cycle_contraction


@pytest.fixture(scope="module")
def cine():
    return cine_phantom(0, n_phases=20)


def test_cycle_contraction_shape():
    c = cycle_contraction(25)
    assert c[0] == 0.0 and 0.95 < c.max() <= 1.0 and 0.3 < np.argmax(c) / 25 < 0.4  # frames need not fall on ES
    assert c[-1] < 0.1 and np.all(c >= 0)
    np.testing.assert_array_equal(cycle_contraction(2), [0.0, 1.0])
    with pytest.raises(InputError, match="'n_phases' must be at least 2"):
        cycle_contraction(1)


def test_phantom_is_deterministic():
    a, b = cine_phantom(1, n_phases=2), cine_phantom(1, n_phases=2)
    np.testing.assert_array_equal(a.ed.pixels, b.ed.pixels)
    np.testing.assert_array_equal(a.es.labels, b.es.labels)


def test_cine_with_physiological_volumes(cine):
    assert len(cine.phases) == 20 and cine.is_cine and cine.ed_index == 0
    assert 5 <= cine.es_index <= 9  # ES at about 35 % of the cycle
    m = cardiac_measures(cine.ed.labels, cine.es.labels, cine.ed.spacing, cine.es.spacing)
    # a healthy adult (Hudsmith 2005 ranges; LV mass 1.05 g/mL)
    assert 90 < m.lvedv_ml < 190 and 50 < m.lvef_pct < 70 and 80 < m.lv_mass_g < 180
    assert 90 < m.rvedv_ml < 220 and 40 < m.rvef_pct < 65
    assert cine.info.height_cm and cine.info.weight_kg


def test_bssfp_contrast_and_rician_background(cine):
    ed = cine.ed
    blood = np.median(ed.pixels[ed.labels == LVBP])
    myocardium = np.median(ed.pixels[ed.labels == LVM])
    assert 2.3 < blood / myocardium < 4.0  # bright blood, dark muscle
    assert np.median(ed.pixels[ed.labels == RVBP]) > 2 * myocardium
    corner = ed.pixels[:, :8, :8]  # air outside the body: Rician noise, never negative
    assert corner.min() >= 0 and 0 < corner.mean() < 0.15 * blood


def test_through_plane_motion_and_partial_volume(cine):
    ed, es = cine.ed, cine.es
    present = lambda stack: np.flatnonzero((stack.labels == LVM).reshape(stack.shape[0], -1).any(1))
    # planned as ACDC's stacks: the first slice is ventricle at ED; the base descends at systole,
    # so at ES the same slice shows atrium (no label); the stack reaches below the apex
    assert present(ed)[0] == 0 and present(es)[0] == 1
    assert not es.labels[0].any() and not ed.labels[-1].any() and not es.labels[-1].any()
    # the RV is a crescent beside the LV: on the reader's left of the LV centre on a middle slice
    z = present(ed)[len(present(ed)) // 2]
    rv_cols = np.nonzero(ed.labels[z] == RVBP)[1]
    lv_cols = np.nonzero(ed.labels[z] == LVBP)[1]
    assert rv_cols.mean() < lv_cols.mean()


def test_bad_arguments():
    with pytest.raises(InputError, match="'seed'"):
        cine_phantom(-1)
    with pytest.raises(InputError, match="'n_phases'"):
        cine_phantom(0, n_phases=1)
    with pytest.raises(InputError, match="'noise'"):
        cine_phantom(0, n_phases=2, noise=2.0)
