"""Sweep 31: the shipped bundle run from an integrator's own code.

An engine refuses a height or width its U-Net cannot take, instead of handing it to a runtime
that may answer with an earlier call's probabilities (OpenVINO with a thread count set did, for
a 100 x 100 batch after a 96 x 96 one); each phase's report entry records where the U-Net window
sat, and that record with the documented primitives (docs/CONTRACT.md) gives the pipeline's masks.
"""

from __future__ import annotations

import numpy as np
import pytest

from cmrsdk import Pipeline, load_bundle, preprocess
from cmrsdk.cli import DEMO_BUNDLE
from cmrsdk.engines import create_engine
from cmrsdk.errors import InputError
from cmrsdk.pipeline import HALF_TURN_AXES, mirrored
from cmrsdk.report import study_report


def test_an_openvino_engine_refuses_a_size_off_the_unets_stride_rather_than_repeat_its_last_answer(tmp_path):
    pytest.importorskip("openvino")
    # in its bundle folder the stride is read from the manifest: refused before OpenVINO sees it (sweep 48)
    engine = create_engine(DEMO_BUNDLE / "baseline.onnx", "openvino", threads=1)
    with pytest.raises(InputError, match=r"multiples of 16 for baseline\.onnx .* got \(100, 100\)"):
        engine.run(np.zeros((1, 1, 100, 100), np.float32))
    # a lone file, no stride known: OpenVINO answers with its last call's output, which is refused
    lone = tmp_path / "baseline.onnx"
    lone.write_bytes((DEMO_BUNDLE / "baseline.onnx").read_bytes())
    engine = create_engine(lone, "openvino", threads=1)
    engine.run(np.zeros((3, 1, 128, 128), np.float32))
    with pytest.raises(InputError, match=r"answered shape \(3, 4, 128, 128\) for a batch of shape \(1, 1, 100, 100\)"):
        engine.run(np.zeros((1, 1, 100, 100), np.float32))


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_a_bundles_unet_engine_names_the_sizes_it_takes(backend):
    engine = load_bundle(DEMO_BUNDLE).engine("baseline", backend=backend)
    assert engine.multiple == 16  # unet(features=(16, 32, 64, 128, 256)): four halvings
    with pytest.raises(InputError, match=r"multiples of 16 .* got \(100, 120\); e.g. crop or pad to \(96, 112\)"):
        engine.run(np.zeros((2, 1, 100, 120), np.float32))
    assert engine.run(np.zeros((2, 1, 96, 112), np.float32)).shape == (2, 4, 96, 112)


def test_the_recorded_network_window_reproduces_the_pipelines_masks(shared_data):
    """An integrator's check: the stack prepared as docs/CONTRACT.md says, cut at the phase's
    ``network_window`` (padded with the stack's darkest value), the U-Net averaged with its
    half-turn, back to the native grid and cleaned up, gives the pipeline's ED masks exactly."""
    from cmrsdk.io import read_acdc_patient

    study = read_acdc_patient(shared_data / "acdc" / "training" / "patient005")
    bundle = load_bundle(DEMO_BUNDLE)
    result = Pipeline(bundle, backend="onnx").segment_study(study)
    report = study_report(result, study)
    ed_window, es_window = (phase["network_window"] for phase in report["phases"])
    assert ed_window == es_window  # ES is cropped around ED's heart (one grid)
    assert "network_window" not in report["provenance"]  # a phase's, not the study's
    assert ed_window["size"] == list(bundle.preprocessing.heart_crop)

    ed, pre = study.ed, bundle.preprocessing
    resampled = tuple(ed_window["resampled_shape"])
    assert resampled == preprocess.resampled_shape(ed.shape[1:], ed.spacing[1:], pre.target_spacing)
    full, _ = preprocess.prepare_slices(
        ed.pixels, ed.spacing[1:], target_spacing=pre.target_spacing, size=resampled, normalization=pre.normalization
    )
    normalised = full[:, 0]
    (oy, ox), (h, w) = ed_window["offset_yx"], ed_window["size"]
    window = np.full((ed.shape[0], 1, h, w), preprocess.background_value(normalised), np.float32)
    ys, ye, xs, xe = max(oy, 0), min(oy + h, resampled[0]), max(ox, 0), min(ox + w, resampled[1])
    window[:, 0, ys - oy : ye - oy, xs - ox : xe - ox] = normalised[:, ys:ye, xs:xe]
    probabilities = mirrored(bundle.engine("baseline", backend="onnx").run, window, HALF_TURN_AXES)
    seen = preprocess.SliceTransform(
        ed.shape[1:], tuple(ed.spacing[1:]), resampled, tuple(ed_window["target_spacing_mm"]), (oy, ox), (h, w)
    )
    labels = preprocess.resample_argmax(probabilities, seen)
    labels = preprocess.reattach_displaced_slices(labels, preprocess.largest_component(labels), ed.spacing[1:])
    assert labels.any()
    np.testing.assert_array_equal(labels, result.ed.labels)
