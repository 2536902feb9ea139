"""A heart far from the image centre: the field the networks saw (`preprocess.window_field`), the
``field_edge`` flag (`metrics.reaches_field_edge`) and the pipeline moving its window to the heart."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cmrsdk.errors import InputError
from cmrsdk.labels import LVBP, RVBP
from cmrsdk.metrics import dice, reaches_field_edge
from cmrsdk.preprocess import SliceTransform, prepare_slices, resample_argmax, window_field


@pytest.mark.parametrize(
    "native, spacing, centre",
    [((256, 208), (1.37, 1.37), None), ((300, 420), (0.9, 1.1), (40.0, 380.0)), ((90, 70), (2.0, 2.0), None)],
)
def test_window_field_is_what_resample_argmax_can_label(native, spacing, centre):
    """Certain foreground everywhere in the window: the labelled native pixels are exactly the
    rectangle `window_field` names (windows inside, across and larger than the image)."""
    pixels = np.random.default_rng(0).normal(size=(1, *native)).astype(np.float32)
    _, transform = prepare_slices(pixels, spacing, target_spacing=(1.52, 1.52), size=(128, 128), centre=centre)
    probabilities = np.zeros((1, 2, 128, 128), np.float32)
    probabilities[:, 1] = 1.0
    labelled = np.argwhere(resample_argmax(probabilities, transform)[0] > 0)
    y0, y1, x0, x1 = window_field(transform)
    assert (labelled.min(0).tolist(), labelled.max(0).tolist()) == ([y0, x0], [y1, x1])
    assert len(labelled) == (y1 - y0 + 1) * (x1 - x0 + 1)


def test_window_field_of_a_window_beside_the_image_is_none():
    transform = SliceTransform((50, 50), (1.0, 1.0), (50, 50), (1.0, 1.0), offset=(60, 0), size=(32, 32))
    assert window_field(transform) is None
    with pytest.raises(InputError, match="SliceTransform"):
        window_field((0, 10, 0, 10))  # type: ignore[arg-type]


def test_reaches_field_edge():
    labels = np.zeros((2, 40, 40), np.uint8)
    labels[1, 10:20, 10:20] = LVBP
    assert not reaches_field_edge(labels, (5, 30, 5, 30))
    assert reaches_field_edge(labels, (10, 30, 5, 30))  # first row of the field
    assert reaches_field_edge(labels, (0, 30, 0, 19))  # last column
    assert not reaches_field_edge(labels, (21, 39, 0, 39))  # the mask lies outside the field
    assert not reaches_field_edge(labels, None)


def _pad(study, widths):
    """The study with every phase padded by ``widths`` ((before, after) for z, y, x), the labels
    alike and the affine's origin moved, so the anatomy stays where it was in the scanner."""

    def one(stack):
        affine = stack.affine.copy()
        affine[:3, 3] -= affine[:3, 1] * widths[1][0] + affine[:3, 2] * widths[2][0]
        labels = None if stack.labels is None else np.pad(stack.labels, widths)
        return dataclasses.replace(stack, pixels=np.pad(stack.pixels, widths), labels=labels, affine=affine)

    return dataclasses.replace(study, phases=tuple(one(s) for s in study.phases))


def test_a_heart_far_off_the_image_centre_is_found_again(shared_data):
    """Held-out patient005 with 260 empty columns on the right (406 mm; the heart about 200 mm left
    of the image centre): the first window cuts the RV (its Dice was 8.5 with a fixed window,
    flagged ``field_edge``); moved to the masks, the segmentation matches the unpadded one."""
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.io import read_acdc_patient
    from cmrsdk.report import study_report

    study = read_acdc_patient(shared_data / "acdc" / "training" / "patient005")
    pipeline = Pipeline(DEMO_BUNDLE, threads=1)
    plain = pipeline.segment_study(study)
    padded = pipeline.segment_study(_pad(study, ((0, 0), (0, 0), (0, 260))))
    for phase, reference in zip(padded.phases, plain.phases):
        assert phase.flags == () and reference.flags == ()
        assert "window_centre_px" in phase.provenance and "window_centre_px" not in reference.provenance
        truth = phase.stack.labels
        for label in (LVBP, RVBP):
            assert dice(phase.labels, truth, label) > dice(reference.labels, reference.stack.labels, label) - 0.02
    assert abs(padded.measures.rvef_pct - plain.measures.rvef_pct) < 2.0
    assert "field_edge" not in {f for p in study_report(padded)["phases"] for f in p["quality_flags"]}


def test_a_window_held_in_place_flags_the_cut_heart(shared_data):
    """The same padded study with the window kept at the image centre (as every phase after the
    first is, once the first placed it): the cut RV is flagged in the report."""
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.io import read_acdc_patient
    from cmrsdk.report import study_report

    study = _pad(read_acdc_patient(shared_data / "acdc" / "training" / "patient005"), ((0, 0), (0, 0), (0, 260)))
    pipeline = Pipeline(DEMO_BUNDLE, threads=1)
    held, _, centre = pipeline._segment_stack(study.ed, None, pipeline_unset(), window_centre=None)
    assert centre is None and held.flags == ("field_edge",)
    assert dice(held.labels, study.ed.labels, RVBP) < 0.5
    moved = pipeline.segment_study(study)
    assert moved.ed.flags == ()
    report = study_report(dataclasses.replace(moved, phases=(held, moved.es)))
    assert "field_edge" in report["phases"][0]["quality_flags"]


def pipeline_unset():
    from cmrsdk.pipeline import _UNSET

    return _UNSET
