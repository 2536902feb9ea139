"""cmrsdk.grid and Pipeline(segment_spacing=...): segmenting on a grid finer than the training one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cmrsdk.bundle import Preprocessing, load_bundle
from cmrsdk.errors import BundleError, InputError
from cmrsdk.grid import move_centre, segment_grid
from cmrsdk.labels import BASE
from cmrsdk.preprocess import prepare_slices

#: a development fold's preprocessing (68 patients' median spacing)
FOLD = Preprocessing((1.4844, 1.4844), (224, 224), "robust_zscore", (128, 128))


def test_a_finer_grid_keeps_the_field_of_view_and_the_areas():
    grid = segment_grid(FOLD, FOLD.heart_crop, (1.25, 1.25))
    assert grid.preprocessing.target_spacing == (1.25, 1.25)
    # 224 x 1.4844 / 1.25 = 266 -> 272 and 128 -> 152 -> 160: multiples of 16, the same mm
    assert grid.preprocessing.size == (272, 272) and grid.heart_crop == (160, 160)
    assert grid.preprocessing.normalization == "robust_zscore"
    assert grid.area_ratio == pytest.approx((1.4844 / 1.25) ** 2)
    assert grid.pixels(20) == 28 and grid.pixels(0) == 0
    assert segment_grid(FOLD, None, (1.25, 1.25)).heart_crop is None
    assert segment_grid(FOLD, FOLD.heart_crop, (1.4844, 1.4844)) is None  # the training grid itself


@pytest.mark.parametrize("spacing", [(2.0, 2.0), (1.25, 1.6), (0.0, 1.25), (-1.0, -1.0)])
def test_a_coarser_or_impossible_grid_is_refused(spacing):
    with pytest.raises(InputError, match="segment_spacing"):
        segment_grid(FOLD, FOLD.heart_crop, spacing)


def test_move_centre_finds_the_same_native_point_on_another_grid():
    # a bright disc at native pixel (70, 120) of a 160 x 200 slice of 1.1 x 1.3 mm
    yy, xx = np.mgrid[:160, :200]
    pixels = np.where((yy - 70) ** 2 + ((xx - 120) * 1.3 / 1.1) ** 2 < 12**2, 1000.0, 10.0)[None].astype(np.float32)
    centres = []
    prepared = []
    for spacing, size in (((1.4844, 1.4844), (224, 224)), ((1.25, 1.25), (272, 272))):
        images, transform = prepare_slices(
            pixels, (1.1, 1.3), target_spacing=spacing, size=size, normalization="minmax"
        )
        bright = images[0, 0] > 0.5
        centres.append(tuple(float(np.mean(i)) for i in np.nonzero(bright)))
        prepared.append(transform)
    moved = move_centre(centres[0], prepared[0], prepared[1])
    np.testing.assert_allclose(moved, centres[1], atol=0.6)  # within a pixel of the finer grid
    back = move_centre(moved, prepared[1], prepared[0])
    np.testing.assert_allclose(back, centres[0], atol=1e-9)


def _counting(pipeline):
    """Record the (H, W) each engine is fed, per model name."""
    seen: dict[str, set] = {}
    for name, engine in pipeline._engines.items():

        def run(batch, name=name, inner=engine.run):
            seen.setdefault(name, set()).add(tuple(batch.shape[-2:]))
            return inner(batch)

        engine.run = run
    return seen


def test_routed_slices_go_to_the_finer_grid_and_the_base_to_the_training_grid(routing_bundle):
    from cmrsdk.pipeline import Pipeline
    from cmrsdk.types import Stack

    # the routing bundle: 2 mm, 64 x 64 window, a classifier that reads the slice's mean; these
    # levels route slice 0 to the apex, 1 to the middle, 2 to the base and 3 to the baseline
    # (non-cardiac; tests/test_pipeline.py)
    levels = np.asarray([1.0, 2 / 3, 1 / 3, 0.0], np.float32)
    # lifted by 1: an all-zero slice would be a quarter of the stack, a zero background the
    # normalisation leaves out (stage 44); the z-scores, and so the routes, are the same
    stack = Stack(1.0 + np.ones((4, 100, 100), np.float32) * levels[:, None, None], (8.0, 1.5, 1.5))
    plain = Pipeline(routing_bundle, largest_component=False, region_decoding="independent", backend="onnx")
    fine = Pipeline(
        routing_bundle, largest_component=False, region_decoding="independent", backend="onnx", segment_spacing=1.0
    )
    assert plain.segment_spacing is None and fine.segment_spacing == (1.0, 1.0)
    seen = _counting(fine)
    a, b = plain.segment(stack), fine.segment(stack)
    np.testing.assert_array_equal(a.regions, b.regions)
    np.testing.assert_array_equal(b.regions, [3, 2, BASE, 0])
    # the region models answer their label everywhere: the same labels on either grid, up to a
    # native pixel at the window's edge (the windows' offsets round to whole pixels of each grid)
    np.testing.assert_array_equal(a.labels[:, 15:85, 15:85], b.labels[:, 15:85, 15:85])
    assert np.mean(a.labels != b.labels) < 0.02
    assert seen["base"] == {(64, 64)}  # the training grid
    for name in ("middle", "apex", "baseline"):  # 2 mm -> 1 mm: 128 px, the same 128 mm
        assert seen[name] == {(128, 128)}, name
    assert b.provenance["segment_spacing"] == [1.0, 1.0] and a.provenance["segment_spacing"] is None


def test_baseline_mode_stays_on_the_training_grid(routing_bundle):
    from cmrsdk.pipeline import Pipeline

    pipeline = Pipeline(routing_bundle, mode="baseline", segment_spacing=1.0, backend="onnx")
    assert pipeline.segment_spacing is None
    with pytest.raises(InputError, match="coarser"):
        Pipeline(routing_bundle, mode="baseline", segment_spacing=3.0, backend="onnx")


@pytest.mark.parametrize("value", ["fine", (1.0,), (1.0, "a"), float("nan"), True])
def test_bad_segment_spacing_values_are_one_clear_error(routing_bundle, value):
    from cmrsdk.pipeline import Pipeline

    with pytest.raises(InputError, match="segment_spacing"):
        Pipeline(routing_bundle, segment_spacing=value, backend="onnx")


def test_the_manifest_names_the_grid_and_bad_ones_are_refused(routing_bundle, tmp_path, capsys):
    from cmrsdk.pipeline import Pipeline

    bundle = tmp_path / "bundle"
    shutil.copytree(routing_bundle, bundle)
    manifest = bundle / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["preprocessing"]["segment_spacing"] = [1.0, 1.0]
    manifest.write_text(json.dumps(raw))
    loaded = load_bundle(bundle)
    assert loaded.preprocessing.segment_spacing == (1.0, 1.0)
    assert loaded.preprocessing.to_json()["segment_spacing"] == [1.0, 1.0]
    assert Pipeline(loaded, backend="onnx").segment_spacing == (1.0, 1.0)  # the bundle's default
    assert Pipeline(loaded, backend="onnx", segment_spacing=None).segment_spacing is None
    from cmrsdk.cli import main

    assert main(["info", str(bundle)]) == 0
    assert "segment grid (1.0, 1.0) mm (routed)" in capsys.readouterr().out
    for bad in ([3.0, 3.0], [1.0], "1.0", [True, 1.0]):
        raw["preprocessing"]["segment_spacing"] = bad
        manifest.write_text(json.dumps(raw))
        with pytest.raises(BundleError, match="segment_spacing"):
            load_bundle(bundle)


def test_on_real_slices_the_base_is_the_training_grid_s_and_the_rest_changes(shared_data):
    """ACDC patient005 (held out): the slices both pipelines call base get identical labels, the
    finer grid's own slices do not all keep them, and baseline mode is untouched."""
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.io import read_acdc_patient

    study = read_acdc_patient(shared_data / "acdc" / "training" / "patient005")
    options = dict(largest_component=False, systolic_base=False, threads=2)
    training = Pipeline(DEMO_BUNDLE, segment_spacing=None, **options).segment_study(study)
    fine = Pipeline(DEMO_BUNDLE, segment_spacing=1.25, **options).segment_study(study)
    for a, b in ((training.ed, fine.ed), (training.es, fine.es)):
        both_base = np.flatnonzero((a.regions == BASE) & (b.regions == BASE))
        assert len(both_base) >= 1
        np.testing.assert_array_equal(a.labels[both_base], b.labels[both_base])
        rest = np.flatnonzero(b.regions > BASE)
        assert np.any(a.labels[rest] != b.labels[rest])
        # the same heart: every structure's volume within 10 % on either grid
        for label in (1, 2, 3):
            va, vb = (np.sum(x.labels == label) for x in (a, b))
            assert abs(int(va) - int(vb)) <= 0.1 * max(int(va), 1)
    baseline = [Pipeline(DEMO_BUNDLE, mode="baseline", segment_spacing=s, **options) for s in (None, 1.25)]
    np.testing.assert_array_equal(*(p.segment(study.ed).labels for p in baseline))
