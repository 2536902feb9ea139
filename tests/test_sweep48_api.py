"""Sweep 48, the public Python API's contracts (runs/redteam48/FINDINGS.md 5, 8, 9, 10, 12), and
sweep 47's report wording (runs/redteam47/FINDINGS.md 3 and 9)."""

from __future__ import annotations

import ast
import importlib
import inspect
import shutil
import subprocess
import sys
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cmrsdk
from cmrsdk import DEMO_BUNDLE
from cmrsdk.errors import BackendUnavailableError, InputError

ROOT = Path(__file__).resolve().parents[1]

# -- 5: create_engine's engines refuse sizes the network cannot take ------------------------------

needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")


@pytest.fixture(scope="module")
def lone_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo U-Net's ONNX file alone in a folder: no manifest beside it."""
    path = tmp_path_factory.mktemp("lone") / "unet.onnx"
    shutil.copyfile(DEMO_BUNDLE / "baseline.onnx", path)
    return path


@needs_onnx
def test_create_engine_on_a_bundle_file_refuses_a_bad_size_as_bundle_engine_does(capfd: pytest.CaptureFixture[str]):
    from cmrsdk.engines import create_engine

    engine = create_engine(DEMO_BUNDLE / "baseline.onnx", "onnx", intra_op_threads=1)
    assert engine.multiple == 16  # the manifest's unet features [16, 32, 64, 160, 320]: 4 halvings
    bundled = cmrsdk.load_bundle(DEMO_BUNDLE).engine("baseline", backend="onnx", threads=1)
    batch = np.zeros((1, 1, 100, 100), np.float32)
    with pytest.raises(InputError) as direct:
        engine.run(batch)
    with pytest.raises(InputError) as via_bundle:
        bundled.run(batch)
    assert str(direct.value) == str(via_bundle.value)
    assert "multiples of 16 for baseline.onnx" in str(direct.value) and "(96, 96)" in str(direct.value)
    assert "onnxruntime" not in capfd.readouterr().err
    out = engine.run(np.zeros((2, 1, 96, 112), np.float32))
    assert out.shape == (2, 4, 96, 112) and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


@needs_onnx
def test_create_engine_takes_multiple(lone_onnx: Path):
    from cmrsdk.engines import create_engine

    assert create_engine(lone_onnx, "onnx", intra_op_threads=1).multiple is None
    engine = create_engine(lone_onnx, "onnx", intra_op_threads=1, multiple=16)
    assert engine.multiple == 16
    with pytest.raises(
        InputError, match=r"multiples of 16 for unet\.onnx .*got \(100, 100\); e\.g\. crop or pad to \(96, 96\)"
    ):
        engine.run(np.zeros((1, 1, 100, 100), np.float32))
    for bad in (0, -16, True, 16.0, "16"):
        with pytest.raises(InputError, match=r"'multiple' must be a positive int or None, got "):
            create_engine(lone_onnx, "onnx", multiple=bad)


@needs_onnx
def test_a_runtime_failure_is_one_input_error_naming_file_shape_and_message(
    lone_onnx: Path, capfd: pytest.CaptureFixture[str]
):
    from cmrsdk.engines import create_engine

    engine = create_engine(lone_onnx, "onnx", intra_op_threads=1)
    capfd.readouterr()
    with pytest.raises(InputError) as caught:
        engine.run(np.zeros((1, 1, 100, 100), np.float32))
    text = str(caught.value)
    assert text.startswith(
        f"{lone_onnx} (onnx) cannot run a batch of shape (1, 1, 100, 100): the runtime failed (Fail: "
    )
    assert "Concat node" in text and "multiple=16" in text  # ONNX Runtime's own message, and the remedy
    assert type(caught.value.__cause__).__module__.startswith("onnxruntime")
    assert capfd.readouterr().err == ""  # the failure is said once, not also logged by ONNX Runtime
    with pytest.raises(InputError, match=r"cannot run a batch of shape \(1, 1, 100, 100\)"):
        engine.run(np.zeros((0, 1, 100, 100), np.float32))  # the empty batch learns its shape from one slice


class _Failing:
    """An engine whose runtime raises ``error``."""

    @staticmethod
    def make(error: BaseException):
        from cmrsdk.engines import Engine

        class Failing(Engine):
            backend = "onnx"

            def _infer(self, batch: np.ndarray) -> np.ndarray:
                raise error

        return Failing("/models/m.onnx", "cpu", "fp32")


def test_engine_run_wraps_what_a_runtime_raises():
    with pytest.raises(InputError) as caught:
        _Failing.make(RuntimeError("shape\nmismatch in node 7")).run(np.zeros((3, 1, 8, 8), np.float32))
    assert str(caught.value).startswith(
        "/models/m.onnx (onnx) cannot run a batch of shape (3, 1, 8, 8): the runtime failed "
        "(RuntimeError: shape mismatch in node 7)"
    )
    with pytest.raises(
        BackendUnavailableError, match=r"the system refused threads or memory \(RuntimeError: std::bad_alloc"
    ):
        _Failing.make(RuntimeError("std::bad_alloc")).run(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(MemoryError):  # clear by itself: not renamed
        _Failing.make(MemoryError()).run(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="^already a cmrsdk error$"):
        _Failing.make(InputError("already a cmrsdk error")).run(np.zeros((1, 1, 8, 8), np.float32))


# -- 8: cmrsdk.read_study is typed for type checkers, and still lazy at run time ------------------


def test_read_study_has_a_type_checking_import_and_stays_lazy():
    tree = ast.parse((ROOT / "cmrsdk" / "__init__.py").read_text(encoding="utf-8"))
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    ]
    assert blocks, "cmrsdk/__init__.py has no 'if TYPE_CHECKING:' block: read_study is Any to mypy"
    namespace: dict[str, object] = {"__name__": "cmrsdk", "__package__": "cmrsdk"}
    for block in blocks:
        exec(compile(ast.Module(body=block.body, type_ignores=[]), "cmrsdk/__init__.py", "exec"), namespace)
    import cmrsdk.io

    assert namespace["read_study"] is cmrsdk.io.read_study  # what a type checker sees: `-> Study`
    assert typing.get_type_hints(cmrsdk.io.read_study)["return"] is cmrsdk.Study
    lazy = subprocess.run(
        [sys.executable, "-c", "import sys, cmrsdk; print(sorted({'pydicom', 'nibabel'} & set(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert lazy.stdout.strip() == "[]"


# -- 9: typing.get_type_hints resolves every public callable --------------------------------------

PUBLIC = ("cmrsdk", "cmrsdk.io", "cmrsdk.evaluation", "cmrsdk.metrics", "cmrsdk.engines", "cmrsdk.cohort")


def _public_callables() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not callable(obj) or typing.get_origin(obj) is not None:  # aliases (Mode, Decoding) are no callables
                continue
            found.append((f"{module_name}.{name}", obj))
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    function = member.fget if isinstance(member, property) else member
                    if inspect.isfunction(function):
                        found.append((f"{module_name}.{name}.{attr}", function))
    import cmrsdk.study

    found.append(("cmrsdk.study.segment_one", cmrsdk.study.segment_one))
    return found


def test_get_type_hints_resolves_every_public_callable():
    failures = []
    for name, obj in _public_callables():
        try:
            typing.get_type_hints(obj)
        except Exception as exc:  # noqa: BLE001 - every failure is listed
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    assert failures == []


def test_the_hints_of_the_finding_resolve_to_the_real_types():
    import cmrsdk.study
    from cmrsdk.evaluation import EvaluationResult, evaluate
    from cmrsdk.metrics import CardiacMeasures
    from cmrsdk.pipeline import Pipeline

    hint = typing.get_type_hints(evaluate)["pipelines"]
    assert typing.get_origin(hint) is Mapping and typing.get_args(hint) == (str, Pipeline)
    assert typing.get_type_hints(EvaluationResult)["measures"] == dict[str, list[tuple[str, CardiacMeasures]]]
    assert typing.get_type_hints(cmrsdk.study.segment_one)["pipeline"] is Pipeline


def test_importing_evaluation_loads_no_runtime():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, cmrsdk.evaluation, cmrsdk.study; "
            "print(sorted({'torch', 'onnxruntime', 'openvino'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"


# -- 10: bsa_mosteller refuses what no body measures ----------------------------------------------


def test_bsa_mosteller_computes_and_refuses_impossible_values():
    from cmrsdk.cohort import bsa_mosteller

    assert bsa_mosteller(180.0, 80.0) == pytest.approx(2.0)
    assert bsa_mosteller(np.int64(184), np.float32(95.0)) == pytest.approx(2.2035325174717877)
    refused = {
        (-184.0, -95.0): r"^'height_cm' must be a positive, finite number of cm, got -184 cm$",
        (184.0, 0.0): r"^'weight_kg' must be a positive, finite number of kg, got 0 kg$",
        (float("nan"), 95.0): r"^'height_cm' must be a positive, finite number of cm, got nan cm$",
        (184.0, float("inf")): r"^'weight_kg' must be a positive, finite number of kg, got inf kg$",
        (1.84, 95.0): r"^'height_cm' 1\.84 cm is outside the plausible 50-250 cm: in another unit",
        (184.0, 950.0): r"^'weight_kg' 950 kg is outside the plausible 2-400 kg: in another unit",
        (72.4, 95.0): r"^'height_cm' 72\.4 cm with 'weight_kg' 95 kg is a body-mass index of 181\.2 kg/m²",
        (None, 95.0): r"^'height_cm' must be a number in cm, got None$",
        ("184", 95.0): r"^'height_cm' must be a number in cm, got '184'$",
        (184.0, True): r"^'weight_kg' must be a number in kg, got True$",
    }
    for (height, weight), message in refused.items():
        with pytest.raises(InputError, match=message):
            bsa_mosteller(height, weight)  # type: ignore[arg-type]


def test_a_missing_or_implausible_height_still_gives_no_bsa_in_a_row():
    from cmrsdk.cohort.table import measures_row

    report = {"measures": {"lvedv_ml": 150.0}, "study": {"height_cm": None, "weight_kg": 80.0}}
    assert measures_row(report)["bsa_m2"] is None
    row = measures_row(report, height_cm=1.84)
    assert row["bsa_m2"] is None and row["height_cm"] is None and "height_cm 1.84 outside 50-250" in row["notes"]
    assert measures_row(report, height_cm=180.0)["bsa_m2"] == 2.0


# -- 12: preprocess.normalize on float64 ----------------------------------------------------------


def test_normalize_keeps_the_spread_of_float64_far_from_zero():
    from cmrsdk.preprocess import normalize

    x = np.array([1e8, 1e8 + 1, 1e8 + 2])
    np.testing.assert_allclose(normalize(x, "zscore", threads=1), (x - x.mean()) / x.std(), atol=1e-6)
    np.testing.assert_allclose(normalize(x, "minmax", threads=1), [0.0, 0.5, 1.0], atol=1e-7)
    y = 1e12 + np.arange(1000, dtype=np.float64) * 0.5
    np.testing.assert_allclose(normalize(y, "zscore", threads=1), (y - y.mean()) / y.std(), atol=1e-5)
    lo, hi = np.percentile(y, [0.5, 99.5])
    clipped = np.clip(y, lo, hi)
    np.testing.assert_allclose(normalize(y, threads=1), (clipped - clipped.mean()) / clipped.std(), atol=1e-5)
    # a float64 copy of float32 pixels gives the float32 answer
    z = np.random.default_rng(5).normal(300.0, 80.0, (4, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(normalize(z.astype(np.float64), threads=1), normalize(z, threads=1), atol=2e-6)


def test_normalize_refuses_float64_beyond_float32_as_stack_does_without_a_numpy_warning():
    from cmrsdk.preprocess import normalize

    pixels = np.full((2, 64, 64), 100.0)
    pixels[1, 3, 4] = 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered in cast" came first
        with pytest.raises(InputError) as by_normalize:
            normalize(pixels, threads=1)
        with pytest.raises(InputError) as by_stack:
            cmrsdk.Stack(pixels, (10.0, 1.5, 1.5))
        with pytest.raises(InputError, match=r"NaN or infinite"):
            normalize(np.array([np.nan, 1e39, 1.0]), threads=1)
    phrase = "values beyond float32's range (3.4e38)"
    assert phrase in str(by_stack.value)
    assert str(by_normalize.value) == (
        f"cannot normalise 'pixels' of shape (2, 64, 64) (robust_zscore): 'pixels' hold {phrase}, e.g. 1e+39"
    )


# -- sweep 47, 3 and 9: what report.md says ---------------------------------------------------------


def _one_unet_pipeline(mode: str) -> SimpleNamespace:
    models = {"baseline": SimpleNamespace(artifacts={"onnx": SimpleNamespace(sha256="aa")})}
    return SimpleNamespace(
        bundle=SimpleNamespace(routing=dict.fromkeys(range(4), "baseline"), models=models), mode=mode
    )


def test_the_one_unet_note_says_the_oracle_differs_on_cardiac_calls():
    from cmrsdk.evaluation import ground_truth_regions
    from cmrsdk.evaluation.runner import _routing_notes

    pipelines = {m: _one_unet_pipeline(m if m != "oracle" else "routed") for m in ("baseline", "routed", "oracle")}
    assert _routing_notes(pipelines, {"oracle": ground_truth_regions}) == [
        "this bundle routes every region to one U-Net (baseline): routing changes no slice, so baseline and routed "
        "segment alike; oracle differs from them where its ground-truth regions call a slice cardiac or "
        "non-cardiac otherwise than the rule does, or centre the heart's window elsewhere"
    ]
    shipped = (ROOT / "docs" / "results" / "shipped" / "acdc_heldout" / "report.md").read_text(encoding="utf-8")
    assert f"**Note:** {_routing_notes(pipelines, {'oracle': ground_truth_regions})[0]}." in shipped
    # baseline and oracle only: nothing to say of the baseline itself (sweep 49)
    two = {m: _one_unet_pipeline(m if m != "oracle" else "routed") for m in ("baseline", "oracle")}
    assert _routing_notes(two, {"oracle": ground_truth_regions})[0].endswith(
        "routing changes no slice, so oracle differs from baseline where its ground-truth regions call a slice "
        "cardiac or non-cardiac otherwise than the rule does, or centre the heart's window elsewhere"
    )
    alone = {"oracle": _one_unet_pipeline("routed")}
    assert _routing_notes(alone, {"oracle": lambda stack, images: images})[0].endswith(
        "so oracle differs from the baseline where its regions handed in call a slice cardiac or "
        "non-cardiac otherwise than the rule does, or centre the heart's window elsewhere"
    )


def test_the_p_value_headings_say_at_least_min_subjects(tmp_path: Path):
    from cmrsdk.evaluation import MIN_SUBJECTS, EvaluationResult, SliceScore, write_evaluation
    from cmrsdk.metrics import CardiacMeasures

    rng = np.random.default_rng(48)
    scores, measures = [], {}
    for method in ("baseline", "routed", "reference"):
        measures[method] = []
        for case in "abcd":
            measures[method].append((case, CardiacMeasures(150.0, 60.0, 90.0, 60.0, 120.0, 160.0, 70.0, 90.0, 56.25)))
            if method == "reference":
                continue
            for index, region in enumerate((1, 2, 2, 3)):
                dice = tuple(float(v) for v in rng.uniform(0.6, 0.95, 3))
                scores.append(SliceScore(method, case, "ED", index, region, index / 3, dice))  # type: ignore[arg-type]
    result = EvaluationResult(scores, {}, measures, {"baseline": [1.0] * 4, "routed": [1.0] * 4})
    report = write_evaluation(result, tmp_path / "eval").read_text(encoding="utf-8")
    headings = [line for line in report.splitlines() if line.startswith(("## Table 1", "## Table 3"))]
    assert headings == [
        "## Table 1: mean (SD) Dice per region, n slices; * p < 0.01 (Welch's t-test against the middle; "
        f"p-values given where at least {MIN_SUBJECTS} subjects)",
        "## Table 3: change against baseline (mean and SD, points of %); * p < 0.01 (paired t-test; "
        f"p-values given where at least {MIN_SUBJECTS} subjects)",
    ]
    shipped = (ROOT / "docs" / "results" / "shipped" / "acdc_heldout" / "report.md").read_text(encoding="utf-8")
    assert all(heading in shipped.splitlines() for heading in headings)


def test_device_pipeline_without_torch_names_the_extra(monkeypatch):
    """Sweep 50: the README's DevicePipeline line without torch raised a bare ModuleNotFoundError."""
    import sys

    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.device_chain import DevicePipeline
    from cmrsdk.errors import BackendUnavailableError

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(
        BackendUnavailableError, match=r"DevicePipeline needs PyTorch, .* pip install 'cmrsdk\[torch\]'"
    ):
        DevicePipeline(DEMO_BUNDLE)
