"""cmrsdk.bundle: verification on load (tamper tests), the manifest's view, lazy shared engines."""

from __future__ import annotations

import json
import pickle
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmrsdk.bundle import FORMAT_VERSION, MANIFEST_NAME, Bundle, Preprocessing, load_bundle, sha256_file  # noqa: E402
from cmrsdk.engines import available_backends, backend_missing  # noqa: E402
from cmrsdk.errors import BackendUnavailableError, BundleError, InputError  # noqa: E402
from export.bundle import build_bundle  # noqa: E402
from _bundles import built_once  # noqa: E402
from export.models import unet  # noqa: E402

SIZE = (32, 32)
#: what "auto" runs a bundle's fp32 ONNX artifact with here: OpenVINO where installed, else ONNX Runtime
CPU_AUTO = available_backends("cpu")[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Two small U-Nets' bundle, built once for the run (`built_once`) and read only: tests that
    change it take a copy (`bundle_dir`)."""

    def build(folder: Path) -> None:
        torch.manual_seed(3)
        models = {
            "baseline": (unet(features=(8, 16, 32)), {"kind": "segmentation", "metrics": {"dice": 0.5}}),
            "apex": (unet(features=(4, 8, 16)), {"kind": "segmentation"}),
        }
        build_bundle(
            models,
            {0: "baseline", 1: "baseline", 2: "baseline", 3: "apex"},
            Preprocessing((1.25, 1.25), SIZE, "robust_zscore"),
            folder / "bundle",
            formats=("torchscript", "onnx"),
        )

    return built_once(tmp_path_factory, "test-bundle-source", build) / "bundle"


@pytest.fixture()
def bundle_dir(source: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle that a test may damage."""
    return Path(shutil.copytree(source, tmp_path / "bundle"))


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    edit(manifest)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_loaded_bundle_exposes_the_manifest(source: Path):
    bundle = load_bundle(source)
    assert bundle.routing == {0: "baseline", 1: "baseline", 2: "baseline", 3: "apex"}
    assert bundle.preprocessing == Preprocessing((1.25, 1.25), (32, 32), "robust_zscore")
    assert bundle.labels == {0: "background", 1: "LVBP", 2: "LVM", 3: "RVBP"}
    assert bundle.regions == {0: "non-cardiac", 1: "base", 2: "middle", 3: "apex"}
    assert bundle.classifier is None
    assert sorted(bundle.models) == ["apex", "baseline"]
    baseline = bundle.models["baseline"]
    assert baseline.kind == "segmentation" and baseline.num_outputs == 4
    assert sorted(baseline.artifacts) == ["onnx", "torchscript"]
    onnx = baseline.artifacts["onnx"]
    assert onnx.sha256 == sha256_file(onnx.path) and onnx.size == onnx.path.stat().st_size
    assert baseline.record["metrics"] == {"dice": 0.5}
    # the manifest file itself is accepted as the path too
    assert load_bundle(source / MANIFEST_NAME).routing == bundle.routing


@pytest.mark.parametrize("artifact", ["baseline.onnx", "apex.pt"])
def test_a_modified_byte_is_refused_naming_the_file(bundle_dir: Path, artifact: str):
    path = bundle_dir / artifact
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{artifact}: sha256 is .*modified"):
        load_bundle(bundle_dir)


def test_a_truncated_file_is_refused_naming_the_file(bundle_dir: Path):
    path = bundle_dir / "baseline.pt"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError, match=r"baseline\.pt: size is \d+ bytes.*truncated"):
        load_bundle(bundle_dir)


def test_a_missing_artifact_is_refused_naming_the_file(bundle_dir: Path):
    (bundle_dir / "apex.onnx").unlink()
    with pytest.raises(BundleError, match=r"apex\.onnx: the onnx artifact .* is missing"):
        load_bundle(bundle_dir)


def test_a_missing_manifest_or_directory_is_refused(bundle_dir: Path, tmp_path: Path):
    with pytest.raises(BundleError, match=r"nowhere: not a bundle directory"):
        load_bundle(tmp_path / "nowhere")
    (bundle_dir / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: the bundle manifest is missing"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, "1", True, None])
def test_a_wrong_format_version_is_refused(bundle_dir: Path, version):
    _edit_manifest(bundle_dir, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match=rf"manifest\.json: 'format_version' is {version!r}".replace("'", "\\'")):
        load_bundle(bundle_dir)


def test_a_wrong_format_name_is_refused(bundle_dir: Path):
    _edit_manifest(bundle_dir, lambda m: m.update(format="other"))
    with pytest.raises(BundleError, match=r"manifest\.json: 'format' is 'other', expected 'cmrsdk-bundle'"):
        load_bundle(bundle_dir)


def test_malformed_json_is_refused(bundle_dir: Path):
    text = (bundle_dir / MANIFEST_NAME).read_text()
    (bundle_dir / MANIFEST_NAME).write_text(text[: len(text) // 2])
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(bundle_dir)
    (bundle_dir / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(BundleError, match=r"manifest\.json: the manifest must be a JSON object, got list"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("routing"), r"'routing' is missing"),
        (lambda m: m["preprocessing"].update(size=[32]), r"'preprocessing.size' must be two positive ints"),
        (
            lambda m: m["preprocessing"].update(target_spacing=[1.0, -1.0]),
            r"'preprocessing.target_spacing' must be two finite positive",
        ),
        (lambda m: m["models"]["apex"].update(kind="detector"), r"'models.apex.kind' is 'detector'"),
        (
            lambda m: m["models"]["apex"]["artifacts"]["onnx"].pop("sha256"),
            r"'models.apex.artifacts.onnx.sha256' is missing",
        ),
        (
            lambda m: m["models"]["apex"]["artifacts"]["onnx"].update(size="12"),
            r"'models.apex.artifacts.onnx.size' has the wrong type str",
        ),
        (lambda m: m["models"]["apex"]["artifacts"].update(caffe={}), r"unknown key 'caffe'"),
        (
            lambda m: m["models"]["apex"]["artifacts"]["onnx"].update(file="../apex.onnx"),
            r"expected a file name inside the bundle",
        ),
        (lambda m: m["routing"].update({"3": "ghost"}), r"'routing.3' names 'ghost'"),
        (lambda m: m["routing"].update({"x": "apex"}), r"'routing' keys must be integer codes"),
        (lambda m: m["routing"].update({"7": "apex"}), r"'routing' has region code 7"),
        (lambda m: m.update(classifier="baseline"), r"'classifier' names 'baseline'"),
    ],
)
def test_malformed_manifest_fields_are_refused(bundle_dir: Path, edit, message: str):
    _edit_manifest(bundle_dir, edit)
    with pytest.raises(BundleError, match=r"manifest\.json: .*" + message):
        load_bundle(bundle_dir)


def test_engines_are_made_once_and_shared_between_threads(source: Path):
    bundle = load_bundle(source)
    engines: list[object] = [None] * 8
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()  # all threads ask at once
        engines[i] = bundle.engine("baseline")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e is engines[0] for e in engines)
    assert engines[0].backend == CPU_AUTO  # "auto" on the CPU (see cmrsdk.engines.AUTO_ORDER)
    assert bundle.engine("baseline", "torchscript") is not engines[0]
    assert bundle.engine("baseline", "torchscript") is bundle.engine("baseline", "torchscript")


def test_engines_of_a_bundle_agree(source: Path):
    bundle = load_bundle(source)
    x = np.random.default_rng(5).standard_normal((6, 1, *SIZE)).astype(np.float32)
    for name in bundle.models:
        np.testing.assert_allclose(
            bundle.engine(name, "onnx").run(x), bundle.engine(name, "torchscript").run(x), atol=1e-4, rtol=0
        )


def test_an_artifact_changed_after_loading_is_refused_when_its_engine_is_made(bundle_dir: Path):
    bundle = load_bundle(bundle_dir)
    path = bundle_dir / "apex.onnx"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match=r"apex\.onnx: sha256"):
        bundle.engine("apex", "onnx")


def test_engine_selection_errors(source: Path):
    bundle = load_bundle(source)
    with pytest.raises(InputError, match=r"'model_name' 'ghost' is not in the bundle .*\['apex', 'baseline'\]"):
        bundle.engine("ghost")
    with pytest.raises(InputError, match="'fp16' is not offered by the 'onnx' backend"):
        bundle.engine("apex", "onnx", fp16=True)
    with pytest.raises(InputError, match="'backend' must be .*'mxnet'"):
        bundle.engine("apex", "mxnet")
    with pytest.raises(
        BackendUnavailableError,
        match=r"no engine for model 'apex' on device 'cpu'.*tensorrt: TensorRT needs a CUDA GPU",
    ):  # the missing device first, not the missing file (sweep 13, F16)
        bundle.engine("apex", "tensorrt")
    if backend_missing("torchscript", "cuda") is not None and backend_missing("onnx", "cuda") is not None:
        with pytest.raises(
            BackendUnavailableError, match="device 'cuda'.*tensorrt.*torchscript: no CUDA GPU.*onnxruntime-gpu"
        ):
            bundle.engine("apex", device="cuda")


# -- precision and input sizes (issue 16) -------------------------------------------------------


def test_int8_is_asked_for_not_chosen(source: Path):
    bundle = load_bundle(source)
    assert bundle.select_artifact("apex").key == "onnx"  # auto on the CPU: fp32 ONNX first
    with pytest.raises(
        BackendUnavailableError,
        match=r"no engine for model 'apex' on device 'cpu' in int8: "
        r"(openvino: has no int8 path \(int8 runs on onnx\); )?onnx: the bundle has no 'onnx-int8' artifact.*"
        r"add them with: python -m export\.quantize.*torchscript: has no int8 path \(int8 runs on onnx\)",
    ):
        bundle.select_artifact("apex", precision="int8")
    with pytest.raises(InputError, match=r"'precision' must be one of \('fp32', 'fp16', 'bf16', 'int8'\), got 'int4'"):
        bundle.select_artifact("apex", precision="int4")
    with pytest.raises(InputError, match="'fp16' asks for half precision but 'precision' is 'int8'"):
        bundle.select_artifact("apex", fp16=True, precision="int8")


def test_an_artifact_that_cannot_run_the_shape_is_passed_over(bundle_dir: Path):
    # the ONNX artifact says it runs the full window only: auto falls back to TorchScript for
    # the heart crop, and asking for ONNX by name says why it cannot
    _edit_manifest(
        bundle_dir,
        lambda m: m["models"]["apex"]["artifacts"]["onnx"].update(input_hw={"min": [32, 32], "max": [32, 32]}),
    )
    bundle = load_bundle(bundle_dir)
    assert bundle.models["apex"].artifacts["onnx"].input_hw == ((32, 32), (32, 32))
    assert bundle.select_artifact("apex", shapes=[(32, 32)]).key == "onnx"
    assert bundle.select_artifact("apex", shapes=[(32, 32), (16, 16)]).key == "torchscript"
    with pytest.raises(
        BackendUnavailableError, match=r"'onnx' artifact of 'apex' runs \(H, W\) from 32x32 to 32x32, not 16x16"
    ):
        bundle.select_artifact("apex", "onnx", shapes=[(16, 16)])
    from cmrsdk.pipeline import Pipeline

    pipe = Pipeline(bundle, mode="baseline", heart_crop=(16, 16))
    assert pipe.provenance["backends"] == {"baseline": CPU_AUTO}  # baseline's ONNX has no limit
    pipe = Pipeline(bundle, mode="routed", regions_from="caller", heart_crop=(16, 16))
    assert pipe.provenance["backends"] == {"apex": "torchscript", "baseline": CPU_AUTO}
    assert (
        Pipeline(bundle, mode="routed", regions_from="caller", heart_crop=None).provenance["backends"]["apex"]
        == CPU_AUTO
    )


@pytest.mark.parametrize(
    ("input_hw", "message"),
    [
        ({"min": [32, 32]}, r"got \{'min': \[32, 32\]\}"),
        ({"min": [40, 32], "max": [32, 32]}, r"got \{'min': \[40, 32\]"),
        ({"min": [0, 16], "max": [32, 32]}, r"got \{'min': \[0, 16\]"),
        ([16, 32], r"got \[16, 32\]"),
    ],
)
def test_malformed_input_hw_is_refused(bundle_dir: Path, input_hw, message: str):
    _edit_manifest(bundle_dir, lambda m: m["models"]["apex"]["artifacts"]["onnx"].update(input_hw=input_hw))
    with pytest.raises(
        BundleError, match=rf"'models\.apex\.artifacts\.onnx\.input_hw' must be .*min <= max, {message}"
    ):
        load_bundle(bundle_dir)


def _with_tensorrt(bundle_dir: Path, **entry) -> None:
    """Register a stand-in 'tensorrt-fp32' artifact (a copy of the ONNX file, valid hash) for apex."""
    fake = bundle_dir / "apex.fp32.ep"
    shutil.copy(bundle_dir / "apex.onnx", fake)

    def edit(m):
        m["models"]["apex"]["artifacts"]["tensorrt-fp32"] = {
            "file": fake.name,
            "format": "tensorrt",
            "precision": "fp32",
            "sha256": sha256_file(fake),
            "size": fake.stat().st_size,
            **entry,
        }
        m["models"]["apex"]["tensorrt_max_batch"] = 8

    _edit_manifest(bundle_dir, edit)


def test_auto_on_cuda_skips_a_tensorrt_engine_built_for_the_full_window(bundle_dir: Path, monkeypatch):
    import cmrsdk.bundle as bundle_module

    _with_tensorrt(bundle_dir)  # no input_hw: a TensorRT artifact from before dynamic sizes
    made = []
    monkeypatch.setattr(bundle_module, "backend_missing", lambda backend, device="cpu": None)  # pretend a GPU
    monkeypatch.setattr(
        bundle_module,
        "create_engine",
        lambda path, backend, device, **options: (
            made.append((path.name, backend, options)) or SimpleNamespace(channels=None, num_outputs=None)
        ),  # a graph that records neither
    )
    bundle = load_bundle(bundle_dir)
    assert bundle.models["apex"].artifacts["tensorrt-fp32"].input_hw == (SIZE, SIZE)
    assert bundle.select_artifact("apex", device="cuda", shapes=[SIZE]).key == "tensorrt-fp32"
    assert bundle.select_artifact("apex", device="cuda", shapes=[SIZE, (16, 16)]).key == "torchscript"
    # the engine gets the manifest's batch limit, so the pipeline's larger batches are split
    engine = bundle.engine("apex", "tensorrt", "cuda", shapes=[SIZE])
    assert made[-1] == ("apex.fp32.ep", "tensorrt", {"precision": "fp32", "max_batch": 8})
    assert engine.channels == 1  # the manifest's input_shape: run refuses other channel counts


def test_a_tensorrt_engine_with_dynamic_sizes_is_chosen_for_the_crop(bundle_dir: Path, monkeypatch):
    import cmrsdk.bundle as bundle_module

    _with_tensorrt(bundle_dir, input_hw={"min": [16, 16], "max": list(SIZE)})
    monkeypatch.setattr(bundle_module, "backend_missing", lambda backend, device="cpu": None)
    bundle = load_bundle(bundle_dir)
    assert bundle.select_artifact("apex", device="cuda", shapes=[SIZE, (16, 16)]).key == "tensorrt-fp32"
    assert bundle.select_artifact("apex", device="cuda", shapes=[(8, 8)]).key == "torchscript"


@pytest.mark.parametrize(
    ("shape", "why"), [(["N", 2, 64, 64], "odd positive int"), (["N", "C", 64, 64], "odd positive int")]
)
def test_a_model_input_channel_count_must_be_a_slice_and_its_neighbours(bundle_dir: Path, shape, why):
    _edit_manifest(bundle_dir, lambda m: m["models"]["apex"].update(input_shape=shape))
    with pytest.raises(BundleError, match=rf"models\.apex\.input_shape.*{why}"):
        load_bundle(bundle_dir)


def test_the_heart_search_is_read_from_the_manifest_and_checked(tmp_path: Path) -> None:
    from cmrsdk import DEMO_BUNDLE

    assert "heart_search" not in Preprocessing((1.5, 1.5), (224, 224), "robust_zscore").to_json()
    assert (
        Preprocessing((1.5, 1.5), (224, 224), "robust_zscore", (128, 128), "largest").to_json()["heart_search"]
        == "largest"
    )
    assert load_bundle(DEMO_BUNDLE).preprocessing.heart_search == "mean"  # manifests without it
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["preprocessing"]["heart_search"] = "median"
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError, match=r"'preprocessing\.heart_search' must be one of \('mean', 'largest'\), got 'median'"
    ):
        load_bundle(bundle)


def test_a_pickled_bundle_is_loaded_again_from_its_directory(source: Path):
    bundle = load_bundle(source)
    bundle.engine("baseline", "onnx")  # engines and their lock do not travel: they are made again
    back = pickle.loads(pickle.dumps(bundle))
    assert back.path == bundle.path and back.manifest == bundle.manifest
    assert back.manifest_sha256 == bundle.manifest_sha256 and back.routing == bundle.routing
    x = np.random.default_rng(6).standard_normal((3, 1, *SIZE)).astype(np.float32)
    np.testing.assert_array_equal(back.engine("baseline", "onnx").run(x), bundle.engine("baseline", "onnx").run(x))


def test_a_pickled_bundle_whose_manifest_changed_is_refused(bundle_dir: Path):
    data = pickle.dumps(load_bundle(bundle_dir))
    _edit_manifest(bundle_dir, lambda m: m.update(regions_from="segmentation"))
    with pytest.raises(BundleError, match=r"manifest's sha256 is .*the bundle changed after it was pickled"):
        pickle.loads(data)


def test_a_bundle_without_a_directory_cannot_be_pickled(source: Path, tmp_path: Path):
    b = load_bundle(source)
    orphan = Bundle(
        tmp_path / "nowhere", b.manifest, b.preprocessing, b.routing, b.classifier, b.labels, b.regions, b.models
    )
    with pytest.raises(BundleError, match=r"nowhere cannot be pickled: it is rebuilt from its directory"):
        pickle.dumps(orphan)
