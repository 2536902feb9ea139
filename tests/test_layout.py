"""cmrsdk.layout: exact in-plane turns of a stack, the training layout, and the pipeline's option."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cmrsdk.io import read_study
from cmrsdk.layout import Orientation, display_orientation, training_layout_turn, turn_stack, unturn_labels
from cmrsdk.types import Stack

ORIENTATIONS = [Orientation(*flags) for flags in itertools.product((False, True), repeat=3)]


def _oblique_stack() -> Stack:
    """A (4, 10, 7) stack with labelled voxels and an oblique short-axis affine (RAS+)."""
    rng = np.random.default_rng(2)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([8.0, 1.3, 1.6])
    affine[:3, 3] = [20.0, -5.0, 40.0]
    labels = rng.integers(0, 4, size=(4, 10, 7)).astype(np.uint8)
    pixels = rng.random((4, 10, 7)).astype(np.float32)
    return Stack(pixels=pixels, spacing=(8.0, 1.3, 1.6), affine=affine, labels=labels)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_a_turned_stack_keeps_every_voxel_where_it_is(orientation: Orientation) -> None:
    stack = _oblique_stack()
    turned = turn_stack(stack, orientation)
    expected = (stack.shape[2], stack.shape[1]) if orientation.transpose else stack.shape[1:]
    assert turned.pixels.shape[1:] == expected
    np.testing.assert_allclose(np.linalg.norm(turned.affine[:3, :3], axis=0), turned.spacing)
    # each voxel of the turned stack shows the stored voxel at the same scanner position
    inverse = np.linalg.inv(stack.affine)
    for index in np.ndindex(turned.pixels.shape):
        z, y, x = np.rint(inverse @ turned.affine @ [*index, 1.0])[:3].astype(int)
        assert turned.pixels[index] == stack.pixels[z, y, x] and turned.labels[index] == stack.labels[z, y, x]
    np.testing.assert_array_equal(unturn_labels(turned.labels, orientation), stack.labels)


def test_the_training_layout_is_the_radiological_view_upside_down(shared_data) -> None:
    assert training_layout_turn(np.diag([-1.5, -1.5, 10.0, 1.0])) is None  # axis-aligned: tells nothing
    mnms = read_study(shared_data / "mnms" / "L8N7Z0").ed
    view = display_orientation(mnms.affine)
    assert training_layout_turn(mnms.affine) == Orientation(view.transpose, not view.flip_rows, view.flip_cols)
    # turned so, the RV lies to the image left of the LV and below it, as in ACDC's files
    turned = turn_stack(mnms, training_layout_turn(mnms.affine))
    lv, rv = (np.argwhere(turned.labels == code)[:, 1:].mean(0) for code in (1, 3))
    assert rv[1] < lv[1] and rv[0] > lv[0]
    acdc = read_study(shared_data / "acdc" / "training" / "patient001").ed
    lv, rv = (np.argwhere(acdc.labels == code)[:, 1:].mean(0) for code in (1, 3))
    assert rv[1] < lv[1] and rv[0] > lv[0]


def test_the_pipeline_segments_the_turned_stack_and_turns_the_labels_back(shared_data) -> None:
    pytest.importorskip("onnxruntime")
    from cmrsdk import DEMO_BUNDLE, Pipeline

    study = read_study(shared_data / "mnms" / "L8N7Z0")
    turn = training_layout_turn(study.ed.affine)
    on = Pipeline(DEMO_BUNDLE, threads=2, training_layout=True)
    off = Pipeline(DEMO_BUNDLE, threads=2)
    result = on.segment_study(study)
    turned = off.segment_study(
        type(study)(phases=tuple(turn_stack(s, turn) for s in study.phases), ed_index=0, es_index=1)
    )
    for mine, theirs, stack in zip(result.phases, turned.phases, study.phases):
        assert mine.stack is stack and mine.labels.shape == stack.shape
        np.testing.assert_array_equal(mine.labels, unturn_labels(theirs.labels, turn))
        assert mine.provenance["in_plane_turn"] == {"transpose": True, "flip_rows": True, "flip_cols": True}
        assert mine.provenance["training_layout"] is True
    assert result.measures.lvedv_ml == pytest.approx(turned.measures.lvedv_ml)
    single = on.segment(study.ed)
    np.testing.assert_array_equal(single.labels, unturn_labels(off.segment(turn_stack(study.ed, turn)).labels, turn))
    # an axis-aligned stack (ACDC) is segmented as stored
    acdc = read_study(shared_data / "acdc" / "training" / "patient001")
    np.testing.assert_array_equal(on.segment(acdc.ed).labels, off.segment(acdc.ed).labels)
    assert "in_plane_turn" not in on.segment(acdc.ed).provenance
    with pytest.raises(Exception, match="'training_layout' must be True or False"):
        Pipeline(DEMO_BUNDLE, training_layout="yes")  # type: ignore[arg-type]


def test_the_command_line_option_reaches_the_report(shared_data, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import json

    from cmrsdk.cli import main

    out = tmp_path / "out"
    subject = shared_data / "mnms" / "L8N7Z0"
    assert main(["segment", str(subject), "-o", str(out), "--training-layout", "--no-overlay", "--no-report-html"]) == 0
    provenance = json.loads((out / "report.json").read_text())["provenance"]
    assert provenance["training_layout"] is True
    assert provenance["in_plane_turn"] == {"transpose": True, "flip_rows": True, "flip_cols": True}
