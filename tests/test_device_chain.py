"""cmrsdk.device_chain: the pipeline's stages as torch tensor work, checked on the CPU against the host path.

On the CPU the chain runs the same torch code it runs on a GPU; CUDA itself is exercised by
benchmarks/gpu_check.sh where a device is lent.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmrsdk import DEMO_BUNDLE  # noqa: E402
from cmrsdk.device_chain import DevicePipeline, inverse_matrix, resampling_matrix  # noqa: E402
from cmrsdk.errors import InputError  # noqa: E402
from cmrsdk.phantom import cine_phantom  # noqa: E402
from cmrsdk.pipeline import Pipeline  # noqa: E402
from cmrsdk.preprocess import SliceTransform, resample_argmax, resample_stack  # noqa: E402
from cmrsdk.regions import regions_from_areas, segmentation_regions  # noqa: E402
from cmrsdk.types import Stack  # noqa: E402


@pytest.fixture(scope="module")
def phantom():
    return cine_phantom(0, n_phases=2)


@pytest.mark.parametrize(("n", "m", "order"), [(208, 141, 3), (97, 130, 3), (64, 64, 1), (50, 31, 0)])
def test_the_resampling_matrix_is_the_native_kernel(n: int, m: int, order: int):
    rng = np.random.default_rng(n)
    image = rng.normal(size=(2, n, 7)).astype(np.float32)
    a = resampling_matrix(n, m, 1.0, order)
    assert a.shape == (m, n) and a.dtype == np.float32
    native = resample_stack(image, (1.0, 1.0), shape=(m, 7), order=order)
    assert np.allclose(np.einsum("mn,znx->zmx", a, image), native, atol=2e-5)


@pytest.mark.parametrize(("native", "resampled", "offset", "size"), [(216, 240, 56, 128), (256, 200, -12, 224)])
def test_the_inverse_matrix_is_resample_argmax(native: int, resampled: int, offset: int, size: int):
    rng = np.random.default_rng(native)
    probabilities = rng.random((2, 4, size, size)).astype(np.float32)
    transform = SliceTransform(
        native_shape=(native, native),
        native_spacing=(1.0, 1.0),
        resampled_shape=(resampled, resampled),
        target_spacing=(1.0, 1.0),
        offset=(offset, offset),
        size=(size, size),
    )
    expected = resample_argmax(probabilities, transform)
    m, inside = inverse_matrix(native, resampled, offset, size)
    values = m @ probabilities @ m.T  # (Z, C, Y, X)
    labels = values.argmax(1).astype(np.uint8) * (inside[:, None] & inside[None, :])
    assert inside.any() and inside.all() == (offset <= 0 and offset + size >= resampled)
    assert np.mean(labels == expected) > 0.9999  # float summation order only


def test_regions_from_areas_equal_the_rule_on_the_label_map(phantom):
    speck = np.zeros((1, *phantom.ed.labels.shape[1:]), np.uint8)
    speck[0, :2, :2] = 1  # a slice below the apex with a speck: under min_pixels, so non-cardiac
    labels = np.concatenate([phantom.ed.labels, speck])
    heart = (labels > 0).sum(axis=(1, 2))
    lv = ((labels == 1) | (labels == 2)).sum(axis=(1, 2))
    for min_pixels in (0, 20):
        assert np.array_equal(regions_from_areas(heart, lv, min_pixels), segmentation_regions(labels, min_pixels))
    assert regions_from_areas(heart, lv, 20)[-1] == 0 and regions_from_areas(heart, lv, 0)[-1] != 0
    with pytest.raises(InputError, match="must be \\(Z,\\) alike"):
        regions_from_areas(heart, lv[:-1])


#: the chain on the CPU everywhere, and on CUDA where there is a GPU (benchmarks/gpu_check.sh)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["routed", "baseline"])
def test_the_chain_gives_the_host_pipelines_labels(phantom, mode: str, device: str):
    pipe = Pipeline(DEMO_BUNDLE, backend="torchscript", mode=mode)
    chain = DevicePipeline(pipe.bundle, mode=mode, device=device)
    if device == "cpu":
        assert chain._engines == pipe._engines  # the same engines, loaded once
    for stack in (phantom.ed, phantom.es) if mode == "routed" else (phantom.ed,):
        host, on_device = pipe.segment(stack), chain.segment(stack)
        assert on_device.labels.dtype == np.uint8 and on_device.labels.shape == stack.pixels.shape
        # CUDA convolutions may use TF32 (cuDNN's default): a looser bound there
        assert np.mean(host.labels == on_device.labels) > (0.9995 if device == "cpu" else 0.999)
        if mode == "routed":
            assert np.array_equal(host.regions, on_device.regions)
        assert set(on_device.timings_ms) >= {"preprocess", "locate", "segment", "postprocess", "total"}
        assert on_device.provenance["chain"] == f"device ({device})"
    # an all-zero stack: no heart, no mask, as on the host
    blank = type(phantom.ed)(np.zeros_like(phantom.ed.pixels), phantom.ed.spacing)
    assert not chain.segment(blank).labels.any()
    if mode == "baseline":
        return
    # a study: located once on ED, ED and ES found from the volume curve, as on the host
    study_host, study_device = pipe.segment_study(phantom), chain.segment_study(phantom)
    assert (study_device.ed_index, study_device.es_index) == (study_host.ed_index, study_host.es_index)
    assert study_device.measures.lvef_pct == pytest.approx(study_host.measures.lvef_pct, abs=0.5)
    # a heart far off the image centre: the chain moves its window to the masks, as the host does
    import dataclasses

    widths = ((0, 0), (0, 0), (0, 200))  # the heart about 156 mm left of the image centre
    far = dataclasses.replace(phantom.ed, pixels=np.pad(phantom.ed.pixels, widths), labels=None)
    host, on_device = pipe.segment(far), chain.segment(far)
    assert host.provenance["window_centre_px"] == on_device.provenance["window_centre_px"]
    assert np.mean(host.labels == on_device.labels) > (0.9995 if device == "cpu" else 0.999)


def test_the_chain_mirrors_like_the_host(phantom):
    pipe = Pipeline(DEMO_BUNDLE, backend="torchscript", mirroring=True)
    host, device = pipe.segment(phantom.ed), DevicePipeline(pipe.bundle, mirroring=True).segment(phantom.ed)
    assert np.mean(host.labels == device.labels) > 0.9995


def test_the_chain_needs_tensor_engines():
    pytest.importorskip("onnxruntime")
    with pytest.raises(InputError, match=r"engines that take device tensors.*\['onnx'\]"):
        DevicePipeline(DEMO_BUNDLE, backend="onnx")
    with pytest.raises(InputError, match="not by a caller's regions"):
        DevicePipeline(DEMO_BUNDLE, regions_from="caller")
    with pytest.raises(InputError, match="not by a 'region_source'"):
        DevicePipeline(DEMO_BUNDLE).segment(cine_phantom(0, n_phases=2).ed, region_source=lambda s, i: None)
    with pytest.raises(InputError, match=r"training grid \(1\.52\d*, 1\.52\d*\) mm only.*segment_spacing=None"):
        DevicePipeline(DEMO_BUNDLE, segment_spacing=1.25)
    assert DevicePipeline(DEMO_BUNDLE, mode="baseline", segment_spacing=1.25).segment_spacing is None


@pytest.mark.parametrize("device", DEVICES)
def test_the_chain_feeds_a_2_5d_unet_its_neighbours_as_the_host_does(tmp_path, device: str):
    """A 2.5D baseline reading the slice before (tests/_bundles.py): the chain's device-side
    `context_slices` gives the host's labels, heart crop and mirroring included."""
    from _bundles import build_neighbour_bundle

    bundle = build_neighbour_bundle(tmp_path / "neighbour", 0)
    yy, xx = np.mgrid[:96, :96]
    pixels = np.stack([((yy - 40) ** 2 + (xx - 50) ** 2 <= (4 + 3 * z) ** 2).astype(np.float32) for z in range(5)])
    stack = Stack(pixels, (8.0, 2.0, 2.0))
    for options in ({}, {"mirroring": True, "heart_crop": (64, 64)}):
        common = {"mode": "baseline", "largest_component": False, "backend": "torchscript", **options}
        host = Pipeline(bundle, **common).segment(stack).labels
        assert host[1:].any() and not np.array_equal(host[1], host[2])
        chain = DevicePipeline(bundle, device=device, **common)
        np.testing.assert_array_equal(chain.segment(stack).labels, host)


@pytest.mark.parametrize("device", DEVICES)
def test_the_chain_takes_the_bundles_heart_search(tmp_path, device: str):
    """A bundle whose manifest says "largest": host and chain locate the heart by it, and agree."""
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["preprocessing"]["heart_search"] = "largest"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    stack = cine_phantom(0, n_phases=2).ed
    host = Pipeline(bundle, backend="torchscript")
    assert host.bundle.preprocessing.heart_search == "largest"
    chain = DevicePipeline(host.bundle, device=device)
    np.testing.assert_array_equal(chain.segment(stack).labels, host.segment(stack).labels)
