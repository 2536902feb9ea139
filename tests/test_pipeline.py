"""cmrsdk.pipeline: routing, modes, geometry, determinism and thread safety.

The routing tests use a bundle whose models are recognisable by their answer: the baseline
U-Net says "background" everywhere, the base model "LVBP", the middle model "LVM" and the apex
model "RVBP"; the classifier's region follows the slice's mean intensity. So every output label
tells which model segmented the slice.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("torch")

from _bundles import ANSWER  # noqa: E402
from cmrsdk.errors import InputError  # noqa: E402
from cmrsdk.evaluation import ground_truth_regions  # noqa: E402
from cmrsdk.labels import APEX, BASE, MIDDLE, NON_CARDIAC  # noqa: E402
from cmrsdk.pipeline import Pipeline  # noqa: E402
from cmrsdk.regions import slice_regions  # noqa: E402
from cmrsdk.synth import synthetic_study  # noqa: E402
from cmrsdk.types import Stack  # noqa: E402


def _stepped_stack(levels: list[float]) -> Stack:
    """A stack whose slice z is uniformly levels[z]; 100 px at 1.5 mm outgrow the 64 px window.

    With levels spanning 0..1, min-max normalisation keeps them, so the slice means seen by the
    MeanClassifier are the levels and the region of each slice is round(3 x level).
    """
    pixels = np.ones((len(levels), 100, 100), np.float32) * np.asarray(levels, np.float32)[:, None, None]
    return Stack(pixels, (8.0, 1.5, 1.5))


def test_routed_mode_sends_each_slice_to_its_region_model(routing_bundle):
    pipeline = Pipeline(
        routing_bundle, mode="routed", largest_component=False, backend="onnx", region_decoding="independent"
    )
    stack = _stepped_stack([1.0, 2 / 3, 1 / 3, 0.0, 1 / 3])
    seg = pipeline.segment(stack)
    assert seg.labels.shape == stack.shape and seg.labels.dtype == np.uint8
    np.testing.assert_array_equal(seg.regions, [APEX, MIDDLE, BASE, NON_CARDIAC, BASE])
    for z, region in enumerate(seg.regions):
        expected = ANSWER[pipeline.bundle.routing[int(region)]]
        assert np.all(seg.labels[z, 15:85, 15:85] == expected), f"slice {z} routed to region {region}"
        assert np.all(seg.labels[z, :5] == 0)  # outside the network window: background
    np.testing.assert_allclose(seg.region_probabilities.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(seg.region_confidence, seg.region_probabilities.max(1))
    assert set(seg.timings_ms) == {"preprocess", "classify", "locate", "segment", "postprocess", "total"}


def test_monotone_decoding_routes_by_the_decoded_sequence(routing_bundle):
    from cmrsdk.routing import decode_regions

    pipeline = Pipeline(routing_bundle, mode="routed", largest_component=False)  # monotone by default
    seg = pipeline.segment(_stepped_stack([0.0, 1 / 3, 2 / 3, 1 / 3, 1.0, 0.0]))
    np.testing.assert_array_equal(seg.regions, decode_regions(seg.region_probabilities, "monotone"))
    # the per-slice argmax (non-cardiac, base, middle, base, apex, non-cardiac) does not cross the heart once
    assert not np.array_equal(seg.regions, seg.region_probabilities.argmax(1))
    for z, region in enumerate(seg.regions):
        assert np.all(seg.labels[z, 15:85, 15:85] == ANSWER[pipeline.bundle.routing[int(region)]])
    assert seg.provenance["region_decoding"] == "monotone"


def test_baseline_mode_uses_only_the_baseline(routing_bundle):
    pipeline = Pipeline(routing_bundle, mode="baseline", largest_component=False)
    seg = pipeline.segment(_stepped_stack([0.0, 1.0, 0.5]))
    assert seg.regions is None and seg.region_probabilities is None
    assert np.all(seg.labels == ANSWER["baseline"])
    assert set(pipeline.provenance["backends"]) == {"baseline"}


def test_ground_truth_regions_route_as_handed_in(routing_bundle):
    study = synthetic_study(seed=3)
    stack = study.ed
    pipeline = Pipeline(routing_bundle, mode="routed", regions_from="caller", largest_component=False)
    assert "classifier" not in pipeline.provenance["backends"]  # regions come from the caller: none loaded
    seg = pipeline.segment(stack, region_source=ground_truth_regions)
    truth = slice_regions(stack.labels)
    np.testing.assert_array_equal(seg.regions, truth)
    np.testing.assert_array_equal(seg.region_probabilities, np.eye(4, dtype=np.float32)[truth])
    y, x = stack.shape[1] // 2, stack.shape[2] // 2
    for z, region in enumerate(truth):
        assert seg.labels[z, y, x] == ANSWER[pipeline.bundle.routing[int(region)]]
    assert seg.provenance["region_source"] == "ground truth" and seg.provenance["regions_from"] == "region_source"
    assert seg.provenance["region_decoding"] is None  # region codes are used as they are
    assert pipeline.provenance["region_source"] is None  # the pipeline's own provenance is unchanged
    with pytest.raises(InputError, match="oracle.*labels"):
        pipeline.segment(stack.with_labels(None), region_source=ground_truth_regions)
    with pytest.raises(InputError, match="needs a 'region_source'"):
        pipeline.segment(stack)
    with pytest.raises(InputError, match="'oracle' is no longer a mode.*ground_truth_regions"):
        Pipeline(routing_bundle, mode="oracle")


def test_region_codes_with_a_gap_are_not_decoded(routing_bundle):
    # ground truth with an unlabelled slice inside the heart: monotone decoding would fill the gap
    pipeline = Pipeline(routing_bundle, mode="routed", largest_component=False)
    wanted = np.array([BASE, NON_CARDIAC, MIDDLE, APEX], np.uint8)
    seg = pipeline.segment(_stepped_stack([0.5, 0.5, 0.5, 0.5]), region_source=lambda stack, images: wanted)
    np.testing.assert_array_equal(seg.regions, wanted)
    with pytest.raises(InputError, match=r"region codes of shape \(4,\).*3 slices.*0\.\.3"):
        pipeline.segment(_stepped_stack([0.5, 0.5, 0.5]), region_source=lambda stack, images: wanted)
    # the values named, not the shape that is right (sweep 10)
    with pytest.raises(InputError, match=r"region codes of values 4\.\.7 for the 4 slices .*codes in 0\.\.3"):
        pipeline.segment(_stepped_stack([0.5] * 4), region_source=lambda stack, images: wanted + 4)


def test_labels_cover_the_native_grid_outside_the_window_as_background(routing_bundle):
    # 200 x 200 px at 1 mm resample to 100 x 100 at 2 mm; the 64 x 64 window covers the centre
    pixels = np.ones((2, 200, 200), np.float32)
    pixels[0] = 0.0
    pipeline = Pipeline(routing_bundle, mode="routed", regions_from="caller", largest_component=False)
    labels = np.zeros((2, 200, 200), np.uint8)
    labels[:, 90:110, 90:110] = 1
    seg = pipeline.segment(Stack(pixels, (10.0, 1.0, 1.0), labels=labels), region_source=ground_truth_regions)
    assert seg.labels.shape == (2, 200, 200)
    assert np.all(seg.labels[:, :20, :] == 0) and np.all(seg.labels[:, :, -20:] == 0)
    inside = seg.labels[:, 100 - 60 : 100 + 60, 100 - 60 : 100 + 60]
    assert np.all(inside > 0)  # routed to base (2 slices: base and apex regions) → labels 1 and 3
    window_rows = np.flatnonzero(seg.labels[0, :, 100] > 0)
    assert 126 <= len(window_rows) <= 130  # 64 px x 2 mm = 128 mm = 128 native px


def test_segment_study_finds_ed_and_es_from_the_volume_curve(routing_bundle):
    study = synthetic_study(seed=1, n_phases=6)
    unlabelled = type(study)(phases=study.phases, info=study.info)  # ED/ES unknown
    pipeline = Pipeline(routing_bundle, mode="routed", regions_from="caller", largest_component=False)
    result = pipeline.segment_study(unlabelled, region_source=ground_truth_regions)
    assert len(result.phases) == 6 and result.lv_volume_curve_ml.shape == (6,)
    assert result.ed_index == int(result.lv_volume_curve_ml.argmax())
    assert result.es_index == int(result.lv_volume_curve_ml.argmin())
    assert result.measures.lvedv_ml == pytest.approx(result.lv_volume_curve_ml.max())


def test_a_blank_frame_is_never_taken_for_end_systole(routing_bundle):
    """A cine with one all-zero frame (a frame lost in export): it has no LV, so its 0 mL is not
    ES; the report says a phase shows no LV, and the measures are those of the true ED and ES."""
    import dataclasses

    from cmrsdk.pipeline import _ed_es
    from cmrsdk.report import study_report
    from cmrsdk.types import Study

    assert _ed_es(np.array([120.0, 80.0, 0.0, 60.0, 100.0])) == (0, 3)
    assert _ed_es(np.array([0.0, 0.0])) == (0, 0)
    assert _ed_es(np.array([np.nan, np.nan])) == (0, 0)
    assert _ed_es(np.array([np.nan, 50.0, 40.0])) == (1, 2)
    study = synthetic_study(seed=1, n_phases=6)
    phases = list(study.phases)
    blank = np.zeros_like(phases[3].pixels)
    phases[3] = dataclasses.replace(phases[3], pixels=blank, labels=np.zeros(blank.shape, np.uint8))
    pipeline = Pipeline(routing_bundle, mode="routed", regions_from="caller", largest_component=False)
    result = pipeline.segment_study(Study(tuple(phases), info=study.info), region_source=ground_truth_regions)
    curve = result.lv_volume_curve_ml
    assert curve[3] == 0 and curve.min() == 0 and result.es_index != 3
    assert result.es_index == int(np.argmin(np.where(curve > 0, curve, np.inf)))
    assert result.measured.lvsv_ml == pytest.approx(curve.max() - curve[result.es_index])
    # this stand-in bundle's curve is flat outside the blank frame: ED and ES one phase, SV withheld
    assert result.ed_index == result.es_index and np.isnan(result.measures.lvsv_ml)
    report = study_report(result)
    assert "phase_without_lv" in report["flags"] and "blank_image" in report["phases"][3]["quality_flags"]
    # a cine's frames keep their frame names; ed_index and es_index say which are ED and ES
    names = [p["phase"] for p in report["phases"]]
    assert names.count("ED") == 0 and names[0] == "frame 0" and names[result.ed_index] == f"frame {result.ed_index}"


def test_unlike_ed_and_es_stacks_and_repeated_slices_are_flagged(routing_bundle):
    """A slice missing at ES moved LVEF by up to 8 points with no flag (the ES basal RV rule
    silently off); a slice copied into a stack added 8-15 % to every volume, unflagged."""
    import dataclasses

    from cmrsdk.report import study_report
    from cmrsdk.types import Study

    study = synthetic_study(seed=2, n_phases=2)
    ed, es = study.phases
    pipeline = Pipeline(routing_bundle, mode="routed", regions_from="caller", largest_component=False)
    plain = study_report(pipeline.segment_study(study, region_source=ground_truth_regions))
    assert "ed_es_coverage_differs" not in plain["flags"]
    assert all("repeated_slice" not in p["quality_flags"] for p in plain["phases"])
    short = dataclasses.replace(es, pixels=es.pixels[1:], labels=es.labels[1:], slice_positions=es.slice_positions[1:])
    report = study_report(
        pipeline.segment_study(Study((ed, short), ed_index=0, es_index=1), region_source=ground_truth_regions)
    )
    assert "ed_es_coverage_differs" in report["flags"]
    copied = np.concatenate([ed.pixels[:3], ed.pixels[2:3], ed.pixels[3:-1]])  # slice 2 twice, the last dropped
    twice = dataclasses.replace(
        ed, pixels=copied, labels=np.concatenate([ed.labels[:3], ed.labels[2:3], ed.labels[3:-1]])
    )
    report = study_report(
        pipeline.segment_study(Study((twice, es), ed_index=0, es_index=1), region_source=ground_truth_regions)
    )
    assert "repeated_slice" in report["phases"][0]["quality_flags"]
    assert "repeated_slice" not in report["phases"][1]["quality_flags"]
    close = np.array(ed.slice_positions, dtype=np.float64)
    close[4] = close[3] + 0.05 * (close[1] - close[0])  # a breath-hold repeated 0.05 steps off
    report = study_report(
        pipeline.segment_study(
            Study((dataclasses.replace(ed, slice_positions=close), es), ed_index=0, es_index=1),
            region_source=ground_truth_regions,
        )
    )
    assert "repeated_slice" in report["phases"][0]["quality_flags"]


def test_concurrent_calls_give_the_serial_results(routing_bundle):
    pipeline = Pipeline(routing_bundle, mode="routed")
    stacks = [synthetic_study(seed=s).ed for s in range(4)]
    serial = [pipeline.segment(s).labels for s in stacks]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda s: pipeline.segment(s).labels, stacks * 2))
    for a, b in zip(serial * 2, parallel):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments(routing_bundle):
    with pytest.raises(InputError, match="'mode'"):
        Pipeline(routing_bundle, mode="fast")
    pipeline = Pipeline(routing_bundle, mode="baseline")
    with pytest.raises(InputError, match="'stack' must be a cmrsdk.Stack"):
        pipeline.segment(np.zeros((2, 8, 8), np.float32))


@pytest.fixture(scope="module")
def threshold_bundle(tmp_path_factory):
    """Built once for the run, shared by the pytest-xdist workers (read only)."""
    from _bundles import build_threshold_bundle, built_once

    return built_once(tmp_path_factory, "threshold-bundle", lambda f: build_threshold_bundle(f / "threshold")) / (
        "threshold"
    )


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_heart_crop_narrows_the_window_around_the_heart(threshold_bundle, backend):
    bundle = threshold_bundle
    pixels = np.zeros((3, 96, 96), np.float32)  # 2 mm pixels: the bundle's grid, no resampling
    pixels[:, 10:20, 60:70] = 1.0  # the "heart", off-centre
    pixels[:, 80:90, 5:15] = 1.0  # a bright spot far from it, in the middle slice too
    pixels[1, 80:90, 5:15] = 0.0  # ... except in the middle slice, which locates the heart
    stack = Stack(pixels, (8.0, 2.0, 2.0))
    full = Pipeline(bundle, mode="baseline", largest_component=False, backend=backend).segment(stack)
    assert full.labels[0, 85, 10] == 1 and full.labels[0, 15, 65] == 1
    cropped = Pipeline(bundle, mode="baseline", largest_component=False, heart_crop=(32, 32), backend=backend).segment(
        stack
    )
    np.testing.assert_array_equal(cropped.labels[:, 10:20, 60:70], 1)  # the heart is kept
    assert cropped.labels[0, 85, 10] == 0  # outside the 32 x 32 window around the heart
    assert np.count_nonzero(cropped.labels) == 3 * 100
    assert cropped.provenance["heart_crop"] == [32, 32]
    # no slice with a heart-sized foreground (25 px < MIN_HEART_PIXELS): the full window is used
    empty_middle = np.zeros_like(pixels)
    empty_middle[:, 83:88, 8:13] = 1.0
    fallback = Pipeline(bundle, mode="baseline", largest_component=False, heart_crop=(32, 32), backend=backend).segment(
        Stack(empty_middle, (8.0, 2.0, 2.0))
    )
    assert fallback.labels[0, 85, 10] == 1
    with pytest.raises(InputError, match="'heart_crop'"):
        Pipeline(bundle, mode="baseline", heart_crop=(128, 32))


@pytest.fixture(scope="module")
def neighbour_bundles(tmp_path_factory):
    """channel -> a bundle whose 2.5D baseline thresholds that channel only (tests/_bundles.py);
    built once for the run, shared by the pytest-xdist workers (read only)."""
    from _bundles import build_neighbour_bundle, built_once

    from cmrsdk.bundle import load_bundle

    def build(root) -> None:
        for c in (0, 2):
            build_neighbour_bundle(root / f"channel{c}", c)

    root = built_once(tmp_path_factory, "neighbour-bundles", build)
    return {c: load_bundle(root / f"channel{c}") for c in (0, 2)}


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_a_2_5d_unet_reads_each_slice_between_its_stack_neighbours(threshold_bundle, neighbour_bundles, backend):
    """A 2.5D baseline that thresholds only the slice before (channel 0) or after (channel 2) gives
    slice z the 2D model's mask of slice z - 1 or z + 1, the ends repeating; the manifest and the
    engines carry the three channels; the heart crop's locating pass and mirroring read them too."""
    pixels = np.zeros((5, 96, 96), np.float32)
    for z in range(5):  # a disc that grows slice by slice: every slice's mask differs
        yy, xx = np.mgrid[:96, :96]
        pixels[z][(yy - 40) ** 2 + (xx - 50) ** 2 <= (4 + 3 * z) ** 2] = 1.0
    stack = Stack(pixels, (8.0, 2.0, 2.0))
    flat = Pipeline(threshold_bundle, mode="baseline", largest_component=False, backend=backend).segment(stack).labels
    for channel, shift in ((0, -1), (2, +1)):
        bundle = neighbour_bundles[channel]
        assert bundle.models["baseline"].channels == 3 and bundle.models["baseline"].context == 1
        assert bundle.manifest["models"]["baseline"]["input_shape"] == ["N", 3, 96, 96]
        expected = flat[np.clip(np.arange(5) + shift, 0, 4)]
        for options in ({}, {"mirroring": True}, {"heart_crop": (64, 64)}):
            pipeline = Pipeline(bundle, mode="baseline", largest_component=False, backend=backend, **options)
            np.testing.assert_array_equal(pipeline.segment(stack).labels, expected, err_msg=str(options))
        with pytest.raises(InputError, match=r"\(N, 3, H, W\): baseline\.\w+ reads 3 channel"):
            pipeline._engines["baseline"].run(np.zeros((1, 1, 96, 96), np.float32))


def test_nan_pixels_are_refused_and_an_empty_stack_gives_empty_labels(routing_bundle):
    pipeline = Pipeline(routing_bundle, mode="routed")
    pixels = np.random.default_rng(0).random((3, 40, 40), dtype=np.float32)
    pixels[1, 5, 5] = np.nan
    with pytest.raises(InputError, match=r"'pixels' from array hold NaN or infinite values \(slice 1 of 3\)"):
        pipeline.segment(Stack(pixels, (8.0, 1.5, 1.5)))
    empty = pipeline.segment(Stack(np.zeros((0, 40, 40), np.float32), (8.0, 1.5, 1.5)))
    assert empty.labels.shape == (0, 40, 40) and empty.regions.shape == (0,)


class _HeartOnBrightSlices:
    """A stand-in baseline engine: foreground (LVBP) in a 20 x 20 square at (30, 40) on slices
    whose mean is above 0.5, background elsewhere; records which slices it was asked about."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def run(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros((images.shape[0], 4, *images.shape[2:]), np.float32)
        out[:, 0] = 1.0
        for i, image in enumerate(images):
            self.seen.append(float(image.mean()))
            if image.mean() > 0.5:
                out[i, 0, 20:40, 30:50], out[i, 1, 20:40, 30:50] = 0.0, 1.0
        return out


def test_locate_falls_back_to_the_central_slices_when_the_middle_shows_no_heart(routing_bundle):
    pipeline = Pipeline(routing_bundle, mode="routed")
    fake = _HeartOnBrightSlices()
    pipeline._engines[pipeline._baseline] = fake
    levels = [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1]  # heart on slices 0-5; 6 and 7 empty
    images = np.asarray(levels, np.float32)[:, None, None, None] * np.ones((8, 1, 64, 64), np.float32)
    wrong_middle = np.array([BASE] * 6 + [MIDDLE] * 2, np.uint8)  # as on ACDC patient100 ES
    assert pipeline._locate(images, wrong_middle) == (29.5, 39.5)
    assert fake.seen[:2] == [pytest.approx(0.1)] * 2 and len(fake.seen) == 4  # slices 6, 7 (no heart), then 3, 4
    fake.seen.clear()
    assert pipeline._locate(np.zeros((8, 1, 64, 64), np.float32), wrong_middle) is None
    assert len(fake.seen) == 6  # gives up after LOCATE_TRIES groups: (6, 7), (3, 4), (2, 5)


def _tapering_heart() -> Stack:
    """Seven 64 x 64 slices at the bundle's 2 mm: no heart on 0 and 6 (slice 0 holds a 2 x 2 speck),
    bright squares shrinking from side 14 (slice 1, basal) to 6 (slice 5, apical)."""
    pixels = np.zeros((7, 64, 64), np.float32)
    for z, side in zip(range(1, 6), (14, 12, 10, 8, 6)):
        pixels[z, 30 - side // 2 : 30 - side // 2 + side, 30 - side // 2 : 30 - side // 2 + side] = 1.0
    pixels[0, 5:7, 5:7] = 1.0  # 4 px < MIN_SLICE_PIXELS: a speck, not a heart
    return Stack(pixels, (8.0, 2.0, 2.0))


def test_regions_from_the_segmentation_route_by_the_ground_truth_rule(tmp_path):
    from _bundles import build_segmentation_routed_bundle
    from cmrsdk import load_bundle

    bundle = load_bundle(build_segmentation_routed_bundle(tmp_path / "seg"))
    assert bundle.regions_from == "segmentation" and bundle.classifier is None
    pipeline = Pipeline(bundle, mode="routed", largest_component=False)
    result = pipeline.segment(_tapering_heart())
    # n = 5 cardiac slices -> 1 base / 3 middle / 1 apex, base first because the heart narrows
    np.testing.assert_array_equal(result.regions, [NON_CARDIAC, BASE, MIDDLE, MIDDLE, MIDDLE, APEX, NON_CARDIAC])
    assert (result.labels[0] == 0).all() and (result.labels[6] == 0).all()  # no heart, no mask
    assert (result.labels[1] == 2).all() and (result.labels[5] == 3).all()  # base and apex models
    assert np.count_nonzero(result.labels[3] == 1) == 10 * 10  # middle: the baseline's own mask
    np.testing.assert_array_equal(result.region_probabilities.argmax(1), result.regions)
    assert result.provenance["regions_from"] == "segmentation"
    # a scanner orientation with the index running toward the base outranks the narrowing
    toward_base = np.diag([8.0, 2.0, 2.0, 1.0])
    toward_base[:3, 0] = 8.0 * np.array([1.0, -1.0, 1.0]) / np.sqrt(3.0)
    stack = _tapering_heart()
    oriented = pipeline.segment(Stack(stack.pixels, stack.spacing, affine=toward_base))
    np.testing.assert_array_equal(oriented.regions, [NON_CARDIAC, APEX, MIDDLE, MIDDLE, MIDDLE, BASE, NON_CARDIAC])
    # the classifier is refused where the bundle has none; baseline mode keeps the speck
    with pytest.raises(InputError, match="regions from the classifier need one"):
        Pipeline(bundle, mode="routed", regions_from="classifier")
    baseline = Pipeline(bundle, mode="baseline", largest_component=False).segment(_tapering_heart())
    assert np.count_nonzero(baseline.labels[0]) == 4 and baseline.regions is None


def test_regions_from_the_segmentation_on_a_classifier_bundle(routing_bundle):
    # the routing bundle's baseline says background everywhere: no slice holds heart
    pipeline = Pipeline(routing_bundle, mode="routed", regions_from="segmentation")
    result = pipeline.segment(_stepped_stack([0.0, 0.4, 0.7, 1.0]))
    assert (result.regions == NON_CARDIAC).all() and not result.labels.any()
    with pytest.raises(InputError, match="'regions_from'"):
        Pipeline(routing_bundle, regions_from="scanner")


def test_a_study_is_located_once_and_every_phase_shares_the_crop(threshold_bundle):
    from cmrsdk.types import Study

    calls = []

    class Counting(Pipeline):
        def _locate(self, images, regions):
            calls.append(images.shape[0])
            return super()._locate(images, regions)

    def phase(top: int, left: int, name: str, side: int = 96) -> Stack:
        pixels = np.zeros((3, side, side), np.float32)  # 2 mm pixels: the bundle's grid
        pixels[:, top : top + 10, left : left + 10] = 1.0  # the "heart" (the threshold model's foreground)
        return Stack(pixels, (8.0, 2.0, 2.0), phase=name)

    # the heart moves between the phases, as it never does that much: ES is cropped around ED's centre
    ed, es = phase(10, 60, "ED"), phase(60, 10, "ES")
    # a 10 x 10 px "heart" is smaller than any real one: no second pass at a larger size here
    pipeline = Counting(
        threshold_bundle,
        mode="baseline",
        largest_component=False,
        heart_crop=(32, 32),
        backend="onnx",
        rescale_heart=False,
    )
    result = pipeline.segment_study(Study((ed, es), ed_index=0, es_index=1))
    assert calls == [3]  # one search, on ED
    np.testing.assert_array_equal(result.ed.labels[:, 10:20, 60:70], 1)
    assert not result.es.labels.any()  # ES's square lies outside the 32 x 32 window around ED's heart
    alone = pipeline.segment(es)  # a lone stack is located on its own
    assert calls == [3, 3] and np.count_nonzero(alone.labels[:, 60:70, 10:20]) == 3 * 100
    # a phase on another grid (here one more slice) is located on its own
    calls.clear()
    es_other_grid = Stack(np.concatenate([es.pixels, es.pixels[:1]]), es.spacing, phase="ES")
    result = pipeline.segment_study(Study((ed, es_other_grid), ed_index=0, es_index=1))
    assert calls == [3, 4] and np.count_nonzero(result.es.labels[:, 60:70, 10:20]) == 4 * 100
    # ED found first, whatever its place in the study
    calls.clear()
    result = pipeline.segment_study(Study((es, ed), ed_index=1, es_index=0))
    assert calls == [3] and result.ed.labels.any() and not result.es.labels.any()
    # and the segmentations keep the study's time order (ES first here), so they pair with its phases
    assert (result.ed_index, result.es_index) == (1, 0)
    assert [r.stack.phase for r in result.phases] == ["ES", "ED"]


def test_mirrored_averages_the_flipped_answers_flipped_back():
    from cmrsdk.pipeline import MIRROR_AXES, mirrored

    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 1, 8, 6)).astype(np.float32)
    calls = []

    def left_half(batch: np.ndarray) -> np.ndarray:
        """Probability 1 of class 1 where a pixel lies in the left half of the batch it is given."""
        calls.append(batch.shape)
        out = np.zeros((batch.shape[0], 2, *batch.shape[2:]), np.float32)
        out[:, 1, :, :3], out[:, 0, :, 3:] = 1.0, 1.0
        return out

    p = mirrored(left_half, images)
    assert calls == [(12, 1, 8, 6)]  # one engine call of 4N slices
    # the W flips see the left half where the unflipped slices see the right: flipped back and
    # averaged, every pixel gets class 1 in exactly two of the four passes
    assert p.shape == (3, 2, 8, 6) and p.dtype == np.float32 and np.allclose(p, 0.5)
    # a map that is the same in every flip (here: a function of the pixel's own value) is unchanged
    square = lambda b: np.concatenate([b**2 / (1 + b**2), 1 / (1 + b**2)], axis=1)  # noqa: E731
    assert np.allclose(mirrored(square, images), square(images), atol=1e-6)
    assert len(MIRROR_AXES) == 4 and MIRROR_AXES[0] == ()


def test_mirroring_runs_four_passes_per_unet_the_half_turn_two_and_says_so(threshold_bundle):
    from cmrsdk.synth import synthetic_study

    stack = synthetic_study(seed=3).ed
    labels = {}
    for mirroring, passes in ((False, 1), ("half_turn", 2), (True, 4)):
        pipeline = Pipeline(threshold_bundle, mode="baseline", heart_crop=None, mirroring=mirroring)
        seen = []
        engine = pipeline._engines[pipeline._baseline]
        run = engine.run
        engine.run = lambda batch, run=run, seen=seen: seen.append(batch.shape[0]) or run(batch)  # type: ignore[method-assign]
        try:
            result = pipeline.segment(stack)
        finally:
            engine.run = run  # type: ignore[method-assign]
        assert seen == [passes * stack.shape[0]]
        assert result.provenance["mirroring"] == mirroring
        labels[mirroring] = result.labels
    # a pixel-wise threshold model answers the same in every flip: mirroring changes nothing
    assert np.array_equal(labels[False], labels[True]) and np.array_equal(labels[False], labels["half_turn"])
    with pytest.raises(InputError, match="'mirroring' must be False, 'half_turn' or True, got 'yes'"):
        Pipeline(threshold_bundle, mirroring="yes")
    with pytest.raises(InputError, match="'mirroring' must be False, 'half_turn' or True, got 1"):
        Pipeline(threshold_bundle, mirroring=1)  # type: ignore[arg-type]


def test_a_studys_regions_are_found_once_and_route_its_other_phases(region_demo_bundle):
    """With regions from the segmentation, ED (the first phase) takes the baseline pass and its
    region U-Nets' second pass; every other phase on its grid runs each slice once, through the
    U-Net of that slice's region at ED, and names its own regions from its own masks."""
    pytest.importorskip("onnxruntime")
    from cmrsdk.labels import BASE, MIDDLE
    from cmrsdk.phantom import cine_phantom

    passes: list[tuple[str, int]] = []

    class Counting(Pipeline):
        def _unet(self, name, images, index=None):
            passes.append((name, images.shape[0] if index is None else len(index)))
            return super()._unet(name, images, index)

    study = cine_phantom(0, n_phases=2)
    pipeline = Counting(region_demo_bundle, threads=1)
    assert pipeline.regions_from == "segmentation"
    result = pipeline.segment_study(study)
    z = study.ed.pixels.shape[0]
    ed_regions = result.ed.regions
    routed = {r: pipeline.bundle.routing.get(r, "baseline") for r in (BASE, MIDDLE)}
    assert routed[BASE] != "baseline" and (ed_regions == BASE).any()
    # ED: the baseline on every slice, then its base and apex slices again (the search for the
    # heart calls the engine directly, not through _unet)
    again = [
        r for r in (BASE, 3) if (ed_regions == r).any() and pipeline.bundle.routing.get(r, "baseline") != "baseline"
    ]
    assert passes[0] == ("baseline", z)
    assert [n for _, n in passes[1 : 1 + len(again)]] == [int((ed_regions == r).sum()) for r in again]
    # ES (the passes after ED's): z slices in all, each through its ED region's U-Net
    es_passes = passes[1 + len(again) :]
    assert sum(n for _, n in es_passes) == z
    assert dict(es_passes).get(routed[BASE]) == int((ed_regions == BASE).sum())
    assert result.es.regions is not None and result.es.regions.shape == (z,)
    # a lone stack still routes by its own baseline pass
    passes.clear()
    pipeline.segment(study.es)
    assert passes[0] == ("baseline", z) and sum(n for _, n in passes) > z


def test_the_api_withholds_what_the_report_withholds(shared_data):
    """ED and ES handed in swapped gave LVEF -30 % and RVEF -103 % in `result.measures` (the report
    already withheld them); ED and ES one phase gave 0 % and two phases. Now NaN, as measured kept."""
    import dataclasses

    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.io import read_acdc_patient

    study = read_acdc_patient(shared_data / "acdc" / "training" / "patient001")
    pipeline = Pipeline(DEMO_BUNDLE, threads=1)
    swapped = pipeline.segment_study(dataclasses.replace(study, ed_index=1, es_index=0))
    assert np.isnan(swapped.measures.lvef_pct) and np.isnan(swapped.measures.rvsv_ml)
    assert swapped.measured.lvef_pct < 0 and swapped.measures.lvedv_ml == swapped.measured.lvedv_ml
    same = pipeline.segment_study(dataclasses.replace(study, ed_index=0, es_index=0))
    assert len(same.phases) == 1 and np.isnan(same.measures.lvef_pct) and same.measures.lvedv_ml > 100
