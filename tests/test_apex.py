"""cmrsdk.apex: the apical RV's prior, alone and in the pipeline (host and device chain)."""

from __future__ import annotations

import numpy as np
import pytest

from cmrsdk import DEMO_BUNDLE, Pipeline
from cmrsdk.apex import APICAL_RV_WEIGHT, check_apical_rv_weight, weigh_apical_rv
from cmrsdk.cli import main
from cmrsdk.errors import InputError
from cmrsdk.labels import APEX, BASE, MIDDLE, NON_CARDIAC, RVBP
from cmrsdk.phantom import cine_phantom


def _probabilities(z: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    p = rng.random((z, 4, 8, 8)).astype(np.float32)
    return p / p.sum(1, keepdims=True)


def test_only_the_rv_of_apical_slices_is_weighted():
    p = _probabilities()
    regions = np.array([NON_CARDIAC, BASE, MIDDLE, APEX], np.uint8)
    out = weigh_apical_rv(p.copy(), regions, 4.0)
    np.testing.assert_array_equal(out[:3], p[:3])
    np.testing.assert_array_equal(out[3, :RVBP], p[3, :RVBP])
    np.testing.assert_allclose(out[3, RVBP], 4.0 * p[3, RVBP], rtol=1e-6)
    np.testing.assert_array_equal(weigh_apical_rv(p.copy(), regions, 1.0), p)


def test_the_argmax_tilts_toward_the_rv_where_it_was_a_close_second():
    p = np.zeros((1, 4, 1, 3), np.float32)
    p[0, :, 0, 0] = [0.6, 0.1, 0.1, 0.2]  # RV x 4 = 0.8 > 0.6: now RV
    p[0, :, 0, 1] = [0.9, 0.0, 0.0, 0.1]  # RV x 4 = 0.4 < 0.9: still background
    p[0, :, 0, 2] = [0.1, 0.5, 0.3, 0.1]  # RV x 4 = 0.4 < 0.5: still LVBP
    labels = weigh_apical_rv(p, np.array([APEX], np.uint8), APICAL_RV_WEIGHT).argmax(1)
    np.testing.assert_array_equal(labels[0, 0], [RVBP, 0, 1])


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), True, "4"])
def test_a_bad_weight_is_one_clear_error(weight):
    with pytest.raises(InputError, match="'apical_rv_weight' must be a finite number above 0"):
        check_apical_rv_weight(weight)
    with pytest.raises(InputError, match="apical_rv_weight"):
        Pipeline(DEMO_BUNDLE, apical_rv_weight=weight)


def test_bad_shapes_are_one_clear_error():
    with pytest.raises(InputError, match="weigh_apical_rv needs"):
        weigh_apical_rv(_probabilities(), np.zeros(3, np.uint8))
    with pytest.raises(InputError, match="weigh_apical_rv needs"):
        weigh_apical_rv(np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, np.uint8))


@pytest.fixture(scope="module")
def phantom():
    return cine_phantom(0, n_phases=2)


def test_the_pipeline_changes_apical_slices_only_and_records_the_weight(phantom):
    # the phantom's apex has no RV: a weight far past the designed one, and no clean-up, to see it move
    plain = Pipeline(DEMO_BUNDLE, apical_rv_weight=1.0, largest_component=False).segment(phantom.ed)
    tilted = Pipeline(DEMO_BUNDLE, apical_rv_weight=1e6, largest_component=False).segment(phantom.ed)
    assert plain.provenance["apical_rv_weight"] == 1.0 and tilted.provenance["apical_rv_weight"] == 1e6
    np.testing.assert_array_equal(plain.regions, tilted.regions)
    apex = plain.regions == APEX
    assert apex.any()
    np.testing.assert_array_equal(plain.labels[~apex], tilted.labels[~apex])
    rv_plain, rv_tilted = ((s.labels[apex] == RVBP).sum() for s in (plain, tilted))
    assert rv_tilted > rv_plain  # a weight this large must move the phantom's apical argmax


def test_baseline_mode_has_no_regions_so_no_prior(phantom):
    plain = Pipeline(DEMO_BUNDLE, mode="baseline").segment(phantom.ed)
    tilted = Pipeline(DEMO_BUNDLE, mode="baseline", apical_rv_weight=50.0).segment(phantom.ed)
    np.testing.assert_array_equal(plain.labels, tilted.labels)
    assert tilted.provenance["apical_rv_weight"] is None


def test_the_device_chain_weighs_as_the_host(phantom):
    pytest.importorskip("torch")
    from cmrsdk.device_chain import DevicePipeline

    options = {"apical_rv_weight": 1e6, "largest_component": False}
    host = Pipeline(DEMO_BUNDLE, backend="torchscript", **options)
    a, b = host.segment(phantom.ed), DevicePipeline(host.bundle, **options).segment(phantom.ed)
    assert np.mean(a.labels == b.labels) > 0.9995
    apex = a.regions == APEX
    plain = Pipeline(DEMO_BUNDLE, largest_component=False).segment(phantom.ed)
    assert (b.labels[apex] == RVBP).sum() > (plain.labels[apex] == RVBP).sum()


def test_the_command_line_refuses_a_bad_weight(tmp_path, capsys):
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "out"), "--apical-rv-weight", "0"]) == 2
    assert "'apical_rv_weight' must be a finite number above 0" in capsys.readouterr().err
