"""A heart far off the image centre in a large field of view (sweep 40, finding 2).

The pipeline's window (224 px x 1.52 mm = 341 mm) is centred on the image centre; a heart wholly
outside it was never found (``lv_not_found``). Where that first pass shows no LV, the whole field is
now searched window by window (`cmrsdk.heart.search_field`) and the study segmented where the heart
is. A study whose heart the first pass finds never runs the search, so it is segmented exactly as
before; a field of noise still holds no heart.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cmrsdk import heart
from cmrsdk.errors import InputError
from cmrsdk.labels import LVBP
from cmrsdk.types import Study

# ---------------------------------------------------------------------------- pure functions


def test_field_tiles_cover_the_field_in_half_window_steps():
    assert heart.field_tiles(200, 224) == [0]
    assert heart.field_tiles(224, 224) == [0]
    assert heart.field_tiles(450, 224) == [0, 112, 224, 226]
    tiles = heart.field_tiles(1000, 224)
    assert tiles[0] == 0 and tiles[-1] == 1000 - 224
    assert max(np.diff(tiles)) <= 112  # anything up to half a window across lies whole in one
    with pytest.raises(InputError, match="'field' and 'window' must be positive"):
        heart.field_tiles(0, 224)


def _threshold_segmenter(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: LVBP where the (first channel's) pixel v is above 1, with probability
    v / (v + 1) (the brighter, the surer), else background with probability 1."""
    v = batch[:, :1]
    lv = np.where(v > 1.0, v / (v + 1.0), 0.0)
    return np.concatenate([1.0 - lv, lv, np.zeros_like(lv), np.zeros_like(lv)], axis=1).astype(np.float32)


def test_search_field_finds_a_blob_in_a_corner_and_nothing_in_an_empty_field():
    field = np.zeros((3, 1, 450, 400), np.float32)
    field[:, :, 380:400, 330:350] = 2.0  # 400 px blob, centre (389.5, 339.5)
    calls: list[tuple[int, ...]] = []

    def model(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return _threshold_segmenter(batch)

    assert heart.search_field(field, model, (224, 224)) == pytest.approx((389.5, 339.5))
    assert {c for c in calls} == {(1, 1, 224, 224)}  # the central slice of each window, one call each
    assert len(calls) == len(heart.field_tiles(450, 224)) * len(heart.field_tiles(400, 224))
    assert heart.search_field(np.zeros_like(field), _threshold_segmenter, (224, 224)) is None
    small = field.copy()
    small[:, :, 380:400, 330:350] = 0.0
    small[:, :, 390:395, 340:345] = 2.0  # 25 px: under MIN_HEART_PIXELS
    assert heart.search_field(small, _threshold_segmenter, (224, 224)) is None
    with pytest.raises(InputError, match="'size' must be"):
        heart.search_field(field, _threshold_segmenter, (500, 224))


def test_search_field_takes_the_window_the_model_is_surest_of_not_the_largest():
    field = np.zeros((2, 1, 300, 600), np.float32)
    field[:, :, 20:60, 20:60] = 2.0  # 1,600 px at p = 0.67: a large guess, as on noise
    field[:, :, 250:280, 500:530] = 9.0  # 900 px at p = 0.9: the heart
    assert heart.search_field(field, _threshold_segmenter, (224, 224)) == pytest.approx((264.5, 514.5))
    # equally sure: the window holding more of it (here all: a window cutting it off holds less)
    field[:, :, 20:60, 20:60] = 0.0
    field[:, :, 250:280, 500:530] = 2.0
    assert heart.search_field(field, _threshold_segmenter, (224, 224)) == pytest.approx((264.5, 514.5))


# ------------------------------------------------------------------- the pipeline, real data


def _rayleigh(rng: np.random.Generator, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
    return np.hypot(rng.normal(0.0, sigma, shape), rng.normal(0.0, sigma, shape)).astype(np.float32)


def _in_corner(study: Study, factor: float, seed: int) -> Study:
    """Every phase's matrix enlarged ``factor`` times at the same pixel size, the original field at
    rows and columns 0.. (so the affine, which maps index (0, 0, 0), is unchanged and every pixel
    stays where it was in the scanner), the new area Rayleigh background at the image's own
    noise level (from its darkest tenth)."""
    rng = np.random.default_rng(seed)
    phases = []
    for stack in study.phases:
        z, ny, nx = stack.pixels.shape
        dark = stack.pixels[stack.pixels <= np.percentile(stack.pixels, 10)].astype(np.float64)
        sigma = max(float(np.sqrt(np.mean(dark**2) / 2.0)), 1.0)
        pixels = _rayleigh(rng, sigma, (z, round(factor * ny), round(factor * nx)))
        pixels[:, :ny, :nx] = stack.pixels
        phases.append(replace(stack, pixels=pixels, labels=None))
    return replace(study, phases=tuple(phases))


@pytest.fixture(scope="module")
def pipeline():
    pytest.importorskip("onnxruntime")
    from cmrsdk import DEMO_BUNDLE, Pipeline

    return Pipeline(DEMO_BUNDLE)


@pytest.fixture(scope="module")
def patient045(shared_data):
    from cmrsdk.io.nifti import read_acdc_patient

    folder = shared_data / "acdc" / "training" / "patient045"  # held out from training
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return read_acdc_patient(folder)


class _Spy:
    """Counts `Pipeline._search_field` calls, then does what it does (nothing where it is absent)."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, pipeline, stack):
        self.calls += 1
        return None if self.real is None else self.real(pipeline, stack)


@pytest.fixture
def spy(monkeypatch):
    from cmrsdk import Pipeline

    watch = _Spy(getattr(Pipeline, "_search_field", None))
    monkeypatch.setattr(Pipeline, "_search_field", lambda self, stack: watch(self, stack), raising=False)
    return watch


def test_heart_in_the_corner_of_a_2x_field_is_found_and_measured_as_unpadded(pipeline, patient045, spy):
    original = pipeline.segment_study(patient045)
    # the heart found in the first pass: no field search, so the masks are those of before it
    assert spy.calls == 0
    assert all("heart_search" not in s.provenance for s in original.phases)
    assert original.measures.lvedv_ml == pytest.approx(224.1, abs=0.5)  # held-out 045 before the search

    padded = _in_corner(patient045, 2.0, seed=45)
    assert padded.phases[0].pixels.shape[1:] == (512, 416)
    result = pipeline.segment_study(padded)
    for seg in result.phases:
        assert np.any(seg.labels == LVBP)  # before the field search: lv_not_found
        assert not seg.labels[:, 256:, :].any() and not seg.labels[:, :, 208:].any()  # only in the corner
    got, want = result.measures, original.measures
    assert got.lvedv_ml == pytest.approx(want.lvedv_ml, rel=0.03)
    assert got.lvesv_ml == pytest.approx(want.lvesv_ml, rel=0.03)
    assert got.lvef_pct == pytest.approx(want.lvef_pct, abs=2.0)
    assert got.rvedv_ml == pytest.approx(want.rvedv_ml, rel=0.05)
    assert spy.calls == 1  # ED searched; ES segmented in the window found there
    assert result.ed.provenance["heart_search"] == "field"


@pytest.mark.parametrize("kind", ["noise", "constant", "blank"])
def test_a_large_field_without_a_heart_still_holds_none(pipeline, spy, kind):
    """tests/test_demo_bundle.py's images without a heart, in a field the window does not cover:
    4 slices of 300 x 300 px at 1.5 mm (450 mm), 295 px on the networks' grid, 4 windows to search."""
    from cmrsdk.types import Stack

    rng = np.random.default_rng(7)
    pixels = {
        "noise": _rayleigh(rng, 40.0, (4, 300, 300)),  # the search finds "LV" there; the second pass does not
        "constant": np.full((4, 300, 300), 300.0, np.float32),
        "blank": np.zeros((4, 300, 300), np.float32),
    }[kind]
    stack = Stack(pixels=pixels, spacing=(10.0, 1.5, 1.5), phase="ED")
    result = pipeline.segment_study(Study(phases=(stack,), ed_index=0, es_index=0))
    assert spy.calls == 1  # the first pass found no LV, and the field is larger than the window
    assert not result.ed.labels.any(), (kind, np.bincount(result.ed.labels.ravel()))
    assert "heart_search" not in result.ed.provenance
