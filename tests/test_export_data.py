"""export.data: splits, synthetic slices, and the on-disk cache against on-the-fly preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmrsdk.errors import InputError, ReadError
from export.data import (
    acdc_patients,
    build_cache,
    load_cache,
    prepare_stack,
    split_patients,
    synthetic_slices,
    training_subset,
)


def test_split_is_patient_level_fixed_and_seeded() -> None:
    patients = [f"patient{i:03d}" for i in range(1, 101)]
    split = split_patients(patients, test_every=5, val_fraction=0.15, seed=0)
    assert split["test"] == [f"patient{i:03d}" for i in range(5, 101, 5)]
    assert len(split["val"]) == 12 and len(split["train"]) == 68
    assert not set(split["train"]) & set(split["val"]) and sorted(sum(split.values(), [])) == patients
    assert split_patients(patients, seed=0) == split
    assert split_patients(patients, seed=1)["val"] != split["val"]
    assert split_patients(patients, seed=1)["test"] == split["test"]
    with pytest.raises(InputError, match="'val_fraction' must lie in"):
        split_patients(patients, val_fraction=1.5)
    with pytest.raises(InputError, match="does not end in its number"):
        split_patients(["patientX"])


def test_training_subset_keeps_each_group_share_and_nests() -> None:
    train = split_patients([f"patient{i:03d}" for i in range(1, 101)], seed=0)["train"]
    per_group = {g: sum((int(p[-3:]) - 1) // 20 == g for p in train) for g in range(5)}
    small, half = training_subset(train, 17), training_subset(train, 34)
    assert len(small) == 17 and len(half) == 34 and set(small) < set(half) < set(train)
    for subset in (small, half):
        for group, count in per_group.items():
            share = sum((int(p[-3:]) - 1) // 20 == group for p in subset)
            assert abs(share - count * len(subset) / len(train)) < 1  # each group in proportion
    assert training_subset(train, 68) == sorted(train)
    assert training_subset(train, 17, seed=0) == small and training_subset(train, 17, seed=1) != small
    with pytest.raises(InputError, match=r"'train_patients' must lie in \[1, 68\]"):
        training_subset(train, 69)


def test_synthetic_slices_are_seeded_and_labelled() -> None:
    a, b = synthetic_slices(16, size=32, seed=3), synthetic_slices(16, size=32, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (16, 32, 32) and a.labels.dtype == np.uint8
    cardiac = a.regions != 0
    assert np.array_equal(cardiac, a.labels.reshape(16, -1).max(1) > 0)
    assert set(np.unique(a.labels[cardiac])) == {0, 1, 2, 3}
    assert np.all(np.isnan(a.positions[~cardiac]))


def test_missing_cache_and_data_raise(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="is not a slice cache"):
        load_cache(tmp_path)
    with pytest.raises(ReadError, match="holds no ACDC 'patientNNN' folder"):
        acdc_patients(tmp_path)


def test_cache_equals_preprocessing_on_the_fly(shared_data: Path, tmp_path: Path) -> None:
    from cmrsdk.io import read_acdc_patient

    root = shared_data / "acdc"
    splits = {"train": ["patient001", "patient002"], "val": ["patient003"], "test": []}
    cached = build_cache(root, tmp_path / "cache", splits=splits, size=160)
    # the target spacing is the median in-plane spacing of the train patients' stacks
    spacings = [read_acdc_patient(root / "training" / p).ed.spacing[1:] for p in splits["train"]]
    spacings += [read_acdc_patient(root / "training" / p).es.spacing[1:] for p in splits["train"]]
    target = tuple(float(v) for v in np.median(np.array(spacings), axis=0))
    assert tuple(cached.meta["target_spacing"]) == pytest.approx(target)
    assert load_cache(tmp_path / "cache").meta == cached.meta
    study = read_acdc_patient(root / "training" / "patient003")
    images, labels, regions, positions = prepare_stack(study.es, target_spacing=target, size=160)
    rows = np.flatnonzero((cached.cases == "patient003") & (cached.phases == "ES"))
    np.testing.assert_array_equal(cached.images[rows], images)
    np.testing.assert_array_equal(cached.labels[rows], labels)
    np.testing.assert_array_equal(cached.regions[rows], regions)
    np.testing.assert_array_equal(cached.positions[rows], positions)
    np.testing.assert_array_equal(cached.z[rows], np.arange(len(rows)))
    # the window holds (nearly) every labelled pixel: ACDC hearts sit near the image centre
    native = (study.es.labels > 0).sum() * np.prod(study.es.spacing[1:])
    window = (labels > 0).sum() * np.prod(target)
    assert window == pytest.approx(native, rel=0.05)
    assert len(cached) == sum(
        read_acdc_patient(root / "training" / p).ed.shape[0] * 2 for p in ["patient001", "patient002", "patient003"]
    )


def test_neighbours_stay_in_their_stack_and_repeat_its_ends() -> None:
    from export.data import SliceSet

    # two stacks of 3 and 2 slices, stored out of order; each image holds its global row number
    cases = np.array(["a", "b", "a", "a", "b"])
    phases = np.array(["ED"] * 5)
    z = np.array([1, 1, 0, 2, 0])
    images = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    labels = np.zeros((5, 4, 4), np.uint8)
    slices = SliceSet(images, labels, cases, phases, np.zeros(5, np.uint8), np.full(5, np.nan), z)
    np.testing.assert_array_equal(slices.neighbours(1), [[2, 0, 3], [4, 1, 1], [2, 2, 0], [0, 3, 3], [4, 4, 1]])
    np.testing.assert_array_equal(slices.neighbours(0), np.arange(5)[:, None])
    wide = slices.with_context(1)
    assert wide.images.shape == (5, 3, 4, 4)
    np.testing.assert_array_equal(wide.images[:, :, 0, 0], slices.neighbours(1))
    # a region selection after the neighbours keeps them; one before would lose them
    with pytest.raises(InputError, match="stack a ED is incomplete"):
        slices.subset(np.array([0, 3])).neighbours(1)


def test_heart_centres_are_each_stacks_label_centroid() -> None:
    from export.data import SliceSet

    # stack (a, ED): a labelled square on slice 0, nothing on slice 1 (past the apex); (a, ES) unlabelled
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[0, 2:4, 4:8] = 3
    slices = SliceSet(
        np.zeros((3, 8, 8), np.float32), labels, np.array(["a"] * 3), np.array(["ED", "ED", "ES"]),
        np.array([1, 0, 0], np.uint8), np.full(3, np.nan), np.array([0, 1, 0]),
    )  # fmt: skip
    centres = slices.heart_centres()
    np.testing.assert_array_equal(centres[:2], [[2.5, 5.5], [2.5, 5.5]])
    assert np.isnan(centres[2]).all()


def test_training_neighbours_are_the_pipelines(shared_data: Path) -> None:
    """`SliceSet.neighbours` (training) and `cmrsdk.preprocess.context_slices` (inference) give a
    real stack's slices the same neighbours."""
    from cmrsdk.io import read_acdc_patient
    from cmrsdk.preprocess import context_slices
    from export.data import stack_slices

    study = read_acdc_patient(shared_data / "acdc" / "training" / "patient001")
    slices = stack_slices([("patient001", "ED", study.ed)], target_spacing=(1.5, 1.5), size=128)
    runtime = context_slices(slices.images[:, None], 1)
    np.testing.assert_array_equal(slices.with_context(1).images, runtime)
    assert runtime.shape == (study.ed.shape[0], 3, 128, 128)
