"""cmrsdk.chirality: the side a stack is seen from, and side-aware bundles seeing the radiological view."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmrsdk.chirality import seen_from_apex
from cmrsdk.io import read_study
from cmrsdk.layout import Orientation, turn_stack
from cmrsdk.regions import APEX_RAS
from cmrsdk.types import Stack, Study


def _flip_columns(stack: Stack) -> Stack:
    return turn_stack(stack, Orientation(flip_cols=True))


def _oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """A double-oblique short-axis affine seen from the apex: the slice index runs toward the
    apex, and columns x rows (the line of sight) points from the apex to the base."""
    n = -APEX_RAS
    u = np.cross(n, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)  # so that u x v = n
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = APEX_RAS * spacing[0], v * spacing[1], u * spacing[2]
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def _viewed_from_apex(stack: Stack) -> Stack:
    return Stack(stack.pixels, stack.spacing, affine=_oblique_affine(stack.spacing), labels=stack.labels)


def test_the_side_follows_the_scanner_orientation():
    affine = _oblique_affine((8.0, 1.5, 1.5))
    assert seen_from_apex(affine) is True
    stack = Stack(np.zeros((3, 5, 7), np.float32), (8.0, 1.5, 1.5), affine=affine)
    assert seen_from_apex(_flip_columns(stack).affine) is False
    assert seen_from_apex(np.diag([8.0, 1.5, 1.5, 1.0])) is None  # axis-aligned: ACDC's NIfTI
    assert seen_from_apex(np.zeros((4, 4))) is None


def test_flipping_keeps_every_voxel_where_it_is_in_the_scanner():
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((3, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 4, (3, 5, 7)).astype(np.uint8)
    stack = Stack(pixels, (8.0, 1.5, 1.2), affine=_oblique_affine((8.0, 1.5, 1.2)), labels=labels)
    flipped = _flip_columns(stack)
    z, y, x = 2, 1, 5
    here = stack.affine @ [z, y, x, 1.0]
    there = flipped.affine @ [z, y, 7 - 1 - x, 1.0]
    np.testing.assert_allclose(here, there, atol=1e-9)
    assert flipped.pixels[z, y, 7 - 1 - x] == pixels[z, y, x] and flipped.labels[z, y, 1] == labels[z, y, 5]
    again = _flip_columns(flipped)
    np.testing.assert_array_equal(again.pixels, pixels)
    np.testing.assert_allclose(again.affine, stack.affine, atol=1e-12)


def test_the_shared_scanner_series_are_seen_from_the_apex(shared_data):
    # M&Ms (NIfTI with the scanner's orientation) and Sunnybrook (GE DICOM): the radiological
    # view; ACDC's NIfTI files carry no orientation at all
    for folder in sorted((shared_data / "mnms").glob("[A-Z]*")) + sorted((shared_data / "sunnybrook").glob("SCD*")):
        study = read_study(folder)
        assert all(seen_from_apex(stack.affine) is True for stack in study.phases), folder.name
    assert seen_from_apex(read_study(shared_data / "acdc" / "training" / "patient001").ed.affine) is None


@pytest.fixture(scope="module")
def side_aware_bundle(tmp_path_factory) -> Path:
    """The demo bundle, its U-Net recorded as trained without flips ([train] mirror = false)."""
    from cmrsdk import DEMO_BUNDLE

    out = tmp_path_factory.mktemp("bundles") / "side_aware"
    shutil.copytree(DEMO_BUNDLE, out)
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["models"]["baseline"].setdefault("training", {}).setdefault("config", {})
    config.setdefault("train", {})["mirror"] = False
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def test_a_side_aware_bundle_sees_a_stack_seen_from_the_base_flipped(side_aware_bundle):
    pytest.importorskip("onnxruntime")
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.phantom import cine_phantom

    phantom = cine_phantom(0, n_phases=2)
    study = Study(
        phases=tuple(_viewed_from_apex(s) for s in phantom.phases), ed_index=phantom.ed_index, es_index=phantom.es_index
    )
    from_base = Study(phases=tuple(_flip_columns(s) for s in study.phases), ed_index=0, es_index=1)
    aware = Pipeline(side_aware_bundle, threads=1)
    assert aware.side_aware and not Pipeline(DEMO_BUNDLE, threads=1).side_aware
    straight, flipped = aware.segment_study(study), aware.segment_study(from_base)
    for a, b, stack in zip(straight.phases, flipped.phases, from_base.phases):
        assert a.labels.any()
        # the networks saw the same pixels: the same masks, mirrored onto the stack's own grid
        np.testing.assert_array_equal(b.labels, a.labels[:, :, ::-1])
        assert b.stack is stack and b.provenance["columns_flipped"] and "columns_flipped" not in a.provenance
    assert straight.measures.lvedv_ml > 0 and flipped.measures.lvedv_ml == pytest.approx(straight.measures.lvedv_ml)
    one = aware.segment(from_base.phases[0])
    np.testing.assert_array_equal(one.labels, flipped.phases[0].labels)
    # a bundle trained with flips takes every stack as it is stored
    plain = Pipeline(DEMO_BUNDLE, threads=1).segment(from_base.phases[0])
    assert "columns_flipped" not in plain.provenance


def test_test_time_mirroring_only_turns_a_side_aware_unet_by_half(side_aware_bundle):
    pytest.importorskip("onnxruntime")
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.phantom import cine_phantom

    stack = cine_phantom(0, n_phases=2).phases[0]
    batches: dict[str, list[int]] = {}
    for name, bundle in (("aware", side_aware_bundle), ("plain", DEMO_BUNDLE)):
        pipeline = Pipeline(bundle, threads=1, mirroring=True)
        engine = pipeline._engines["baseline"]
        run, seen = engine.run, batches.setdefault(name, [])
        engine.run = lambda x, run=run, seen=seen: seen.append(x.shape[0]) or run(x)
        pipeline.segment(stack)
    z = stack.pixels.shape[0]
    # the segmenting pass over every slice: 2 views (none, half-turn) against 4 (none, W, H, both)
    assert 2 * z in batches["aware"] and 4 * z not in batches["aware"]
    assert 4 * z in batches["plain"]
