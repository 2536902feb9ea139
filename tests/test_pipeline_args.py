"""Pipeline's constructor arguments and `read_study`'s: odd values are refused by name; a Pipeline
(and its Bundle) pickles by its directory and arguments, so spawn workers can receive one."""

from __future__ import annotations

import multiprocessing
import pickle
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from cmrsdk import DEMO_BUNDLE, Pipeline  # noqa: E402
from cmrsdk.bundle import Bundle, load_bundle  # noqa: E402
from cmrsdk.errors import BundleError, InputError, ReadError  # noqa: E402
from cmrsdk.io import read_study  # noqa: E402
from cmrsdk.phantom import cine_phantom  # noqa: E402


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(DEMO_BUNDLE)


@pytest.fixture(scope="module")
def study():
    return cine_phantom(0, n_phases=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heart_crop": "x"}, r"'heart_crop' must be two positive integers \(h, w\), None or 'bundle', got 'x'"),
        ({"heart_crop": 128}, r"'heart_crop' must be two positive integers .*got 128$"),
        ({"heart_crop": (128,)}, r"'heart_crop' must be two positive integers .*got \(128,\)"),
        ({"heart_crop": (128.7, 128.2)}, r"'heart_crop' must be two positive integers .*got \(128\.7, 128\.2\)"),
        ({"heart_crop": (True, 128)}, r"'heart_crop' must be two positive integers"),
        ({"heart_crop": (0, 0)}, r"'heart_crop' must be \(h, w\) within the bundle's window"),
        ({"engine_options": [1, 2]}, r"'engine_options' must be a mapping .*got \[1, 2\]"),
        ({"largest_component": "no"}, r"'largest_component' must be True or False, got 'no'"),
        # sweep 10: accepted here and refused only at the first segment
        ({"threads": 0}, r"'threads' must be a positive whole number of threads or None \(all cores\), got 0"),
        ({"threads": -1}, r"'threads' must be a positive whole number .*got -1"),
        ({"threads": 2.5}, r"'threads' must be a positive whole number .*got 2\.5"),
        ({"segment_spacing": 0.01}, r"'segment_spacing' \(0\.01, 0\.01\) mm would grow .* at least \(0\.02\d*, "),
    ],
)
def test_odd_constructor_arguments_are_refused_by_name(bundle: Bundle, options, message: str):
    with pytest.raises(InputError, match=message):
        Pipeline(bundle, **options)


@pytest.mark.parametrize("value", [None, 123, b"some/bundle", np.zeros((4, 64, 64))])
def test_a_bundle_that_is_neither_a_bundle_nor_a_path_is_refused(value):
    # the type, not the value: an array's repr would fill the screen (sweep 10)
    with pytest.raises(
        InputError,
        match=rf"'bundle' must be a Bundle or the path of a bundle directory, got {re.escape(type(value).__name__)}$",
    ):
        Pipeline(value)


def test_heart_crop_takes_two_integers_of_any_integer_type(bundle: Bundle):
    assert Pipeline(bundle, heart_crop=[np.int64(96), 128]).heart_crop == (96, 128)
    assert Pipeline(bundle, heart_crop=None).heart_crop is None
    assert Pipeline(bundle, engine_options={}, largest_component=False).largest_component is False


def test_a_pickled_pipeline_segments_as_the_original(bundle: Bundle, study):
    options = dict(backend="onnx", heart_crop=(96, 96), apical_rv_weight=1.5, segment_spacing=None, threads=1)
    pipeline = Pipeline(bundle, **options)
    back = pickle.loads(pickle.dumps(pipeline))
    assert back is not pipeline and back.bundle.path == pipeline.bundle.path
    assert (back.heart_crop, back.apical_rv_weight, back.threads) == ((96, 96), 1.5, 1)
    assert {k: e.backend for k, e in back._engines.items()} == {"baseline": "onnx"}
    expected, got = pipeline.segment_study(study), back.segment_study(study)
    for a, b in zip(expected.phases, got.phases, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
    assert got.measures.lvef_pct == expected.measures.lvef_pct


def test_a_spawn_worker_receives_a_pipeline(bundle: Bundle, study):
    pipeline = Pipeline(bundle, backend="onnx")
    expected = pipeline.segment(study.phases[0])
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = pool.submit(pipeline.segment, study.phases[0]).result(timeout=300)
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_a_pipeline_on_a_bundle_without_a_directory_cannot_be_pickled(bundle: Bundle, tmp_path: Path):
    b = bundle
    orphan = Bundle(
        tmp_path / "nowhere", b.manifest, b.preprocessing, b.routing, b.classifier, b.labels, b.regions, b.models
    )
    pipeline = Pipeline(orphan, backend="onnx")
    with pytest.raises(BundleError, match=r"nowhere cannot be pickled: it is rebuilt from its directory"):
        pickle.dumps(pipeline)


# -- read_study ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, 123, "", b"some/study", ["some/study"]])
def test_read_study_refuses_what_is_not_a_path(path):
    with pytest.raises(
        InputError, match=rf"'path' must be a non-empty str or os.PathLike path, got {re.escape(repr(path))}"
    ):
        read_study(path)


def test_read_study_refuses_a_device_file():
    with pytest.raises(ReadError, match=r"^/dev/null: not a regular file or a directory"):
        read_study("/dev/null")


def test_read_study_refuses_options_the_format_does_not_take(shared_data: Path):
    patient = shared_data / "acdc" / "training" / "patient001"
    with pytest.raises(
        InputError, match=r"options \['series_uid'\] do not apply to .*patient001 \(acdc\): it takes \['convention'\]"
    ):
        read_study(patient, series_uid="1.2.3")
    with pytest.raises(InputError, match=r"options \['bogus'\] do not apply"):
        read_study(patient / "patient001_frame01.nii.gz", bogus=1)
    # an option given as None is not given
    assert len(read_study(patient, series_uid=None).phases) == 2
