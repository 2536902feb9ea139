"""Routing by regions from elsewhere: Pipeline.segment(stack, region_source=...), export.experiment.StoredRegions
and region sources handed to cmrsdk.evaluation.evaluate.

Uses the recognisable routing bundle of tests/_bundles.py: the base model answers LVBP, the
middle model LVM, the apex model RVBP and the baseline background, so the output labels tell
which model segmented each slice.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from _bundles import ANSWER  # noqa: E402
from cmrsdk.errors import InputError  # noqa: E402
from cmrsdk.labels import APEX, BASE, MIDDLE, NON_CARDIAC  # noqa: E402
from cmrsdk.pipeline import Pipeline  # noqa: E402
from cmrsdk.types import Stack  # noqa: E402
from export.experiment import StoredRegions  # noqa: E402


def _flat_stack(n: int, source: str = "", phase: str | None = None) -> Stack:
    # every slice the same intensity: the bundle's own classifier would give one region to all
    return Stack(np.full((n, 100, 100), 0.5, np.float32), (8.0, 1.5, 1.5), phase=phase, source=source)


def _one_hot(regions: list[int]) -> np.ndarray:
    return np.eye(4, dtype=np.float32)[regions]


def test_region_source_replaces_the_classifier(routing_bundle):
    wanted = [NON_CARDIAC, BASE, MIDDLE, MIDDLE, APEX]
    calls = []

    def source(stack, images):
        calls.append(images.shape)
        return _one_hot(wanted)

    pipeline = Pipeline(routing_bundle, mode="routed", largest_component=False)
    seg = pipeline.segment(_flat_stack(5), region_source=source)
    assert calls and calls[0][0] == 5 and calls[0][1] == 1  # preprocessed (Z, 1, H, W) slices
    assert seg.regions.tolist() == wanted
    for z, region in enumerate(wanted):
        expected = ANSWER[pipeline.bundle.routing[region]]
        assert np.all(seg.labels[z, 15:85, 15:85] == expected), f"slice {z} not segmented by region {region}'s model"
    assert seg.provenance["region_source"].endswith("<locals>.source")  # a plain function: its qualified name
    assert seg.provenance["region_decoding"] == "monotone"  # probabilities are decoded as the classifier's


def test_region_source_output_is_checked(routing_bundle):
    pipeline = Pipeline(routing_bundle, mode="routed")
    with pytest.raises(InputError, match=r"\(2, 4\).*5 slices"):
        pipeline.segment(_flat_stack(5), region_source=lambda stack, images: np.ones((2, 4), np.float32))
    with pytest.raises(InputError, match="finite"):
        pipeline.segment(
            _flat_stack(3), region_source=lambda stack, images: np.full((images.shape[0], 4), np.nan, np.float32)
        )
    with pytest.raises(InputError, match="callable"):
        pipeline.segment(_flat_stack(3), region_source="not a function")


def test_stored_regions_match_stacks_by_case_folder_and_phase(routing_bundle):
    # two stacks of two cases; rows stored out of order, as a pack may hold them
    predictions = {
        "cases": np.array(["acdc/patient005"] * 3 + ["mnms/A1B2C3"] * 2),
        "phases": np.array(["ED", "ED", "ED", "ES", "ES"]),
        "z": np.array([2, 0, 1, 1, 0]),
        "classifier_x": np.concatenate([_one_hot([APEX, BASE, MIDDLE]), _one_hot([MIDDLE, BASE])]),
    }
    source = StoredRegions(predictions, "classifier_x")
    pipeline = Pipeline(routing_bundle, mode="routed", largest_component=False, region_decoding="independent")
    acdc = pipeline.segment(
        _flat_stack(3, "/data/acdc/patient005/patient005_frame01.nii.gz", "ED"), region_source=source
    )
    assert acdc.regions.tolist() == [BASE, MIDDLE, APEX]  # sorted by z
    mnms = pipeline.segment(_flat_stack(2, "/data/mnms/A1B2C3/A1B2C3_sa_ES.nii.gz", "ES"), region_source=source)
    assert mnms.regions.tolist() == [BASE, MIDDLE]
    assert mnms.provenance["region_source"] == "stored predictions of classifier_x"
    with pytest.raises(InputError, match="patient010"):
        pipeline.segment(_flat_stack(3, "/data/acdc/patient010/patient010_frame01.nii.gz", "ED"), region_source=source)
    with pytest.raises(InputError, match="4 slices"):
        pipeline.segment(_flat_stack(4, "/data/acdc/patient005/patient005_frame01.nii.gz", "ED"), region_source=source)
    with pytest.raises(InputError, match="classifier_y"):
        StoredRegions(predictions, "classifier_y")


def test_evaluate_hands_each_method_its_region_source(routing_bundle):
    from cmrsdk.evaluation import evaluate, ground_truth_regions
    from cmrsdk.regions import slice_regions
    from cmrsdk.synth import synthetic_study

    pipeline = Pipeline(routing_bundle, mode="routed", largest_component=False)
    study = synthetic_study(seed=4)
    # one pipeline, two methods: its own classifier and the ground truth's regions
    result = evaluate(
        {"routed": pipeline, "oracle": pipeline},
        [("case", study)],
        region_sources={"oracle": ground_truth_regions},
        progress=False,
    )
    truth, routed_by = result.regions["oracle"]
    np.testing.assert_array_equal(
        truth, np.concatenate([slice_regions(study.ed.labels), slice_regions(study.es.labels)])
    )
    np.testing.assert_array_equal(routed_by, truth)  # the oracle routes by the ground truth exactly
    assert not np.array_equal(result.regions["routed"][1], truth)  # the flat classifier of the test bundle does not
    with pytest.raises(InputError, match=r"'region_sources' names methods \['oracel'\]"):
        evaluate({"oracle": pipeline}, [], region_sources={"oracel": ground_truth_regions}, progress=False)
