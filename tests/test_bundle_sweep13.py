"""cmrsdk.bundle and cmrsdk.engines after red team 13 (runs/redteam13/README.md): label and region
names remapped by name (F3), manifest fields checked against each other and the artifact (F4),
symbolic-link artifacts (F12), unknown keys warned of (F13), engine messages that name the real
blocker (F16), ZIP archives and byte-order marks (F17)."""

from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cmrsdk import DEMO_BUNDLE, Pipeline
from cmrsdk.bundle import MANIFEST_NAME, load_bundle, sha256_file
from cmrsdk.engines import backend_missing
from cmrsdk.engines.base import Engine
from cmrsdk.errors import BackendUnavailableError, BundleError, CmrWarning, InputError

pytest.importorskip("onnxruntime")

#: ACDC's label order: channel 1 is the RV, channel 3 the LV cavity
ACDC_LABELS = {"0": "background", "1": "RVBP", "2": "LVM", "3": "LVBP"}
#: canonical channel k of a model answering in ACDC's order is its channel ACDC_ORDER[k]
ACDC_ORDER = [0, 3, 2, 1]


def _edit(path: Path, edit) -> Path:
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    edit(manifest)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return path


@pytest.fixture()
def demo_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped demo bundle that a test may edit."""
    return Path(shutil.copytree(DEMO_BUNDLE, tmp_path / "bundle"))


def _slices(n: int = 3, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, size, size)).astype(np.float32)


# -- F3: labels and regions by name ------------------------------------------------------------


def test_labels_declared_in_acdc_order_are_put_in_cmrsdk_order_at_the_engine(demo_copy: Path):
    """The same model declared in ACDC's order: its channels come out permuted, LV and RV swapped."""
    _edit(demo_copy, lambda m: m.update(labels=ACDC_LABELS))
    acdc, canonical = load_bundle(demo_copy), load_bundle(DEMO_BUNDLE)
    assert acdc.labels == canonical.labels == {0: "background", 1: "LVBP", 2: "LVM", 3: "RVBP"}
    assert acdc.models["baseline"].output_order == (0, 3, 2, 1)
    x = _slices()
    ours, theirs = acdc.engine("baseline", "onnx").run(x), canonical.engine("baseline", "onnx").run(x)
    np.testing.assert_array_equal(ours, theirs[:, ACDC_ORDER])
    assert ours.flags.c_contiguous


def test_a_model_trained_in_acdc_order_gives_the_canonical_masks(demo_copy: Path, tmp_path: Path):
    """A model that really answers in ACDC's order, with a manifest that says so, segments exactly
    like the canonical model: the permutation happens before the heart search, the regions and
    the clean-up."""
    torch = pytest.importorskip("torch")
    from cmrsdk.phantom import cine_phantom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        canonical = torch.jit.load(str(DEMO_BUNDLE / "baseline.pt"))

    class AcdcOrder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = canonical

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.net(x)
            return torch.cat([p[:, 0:1], p[:, 3:4], p[:, 2:3], p[:, 1:2]], dim=1)  # ACDC_ORDER

    path = demo_copy / "baseline.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(AcdcOrder()), str(path))

    def acdc(m):
        m["labels"] = ACDC_LABELS
        artifacts = m["models"]["baseline"]["artifacts"]
        artifacts.pop("onnx")
        artifacts["torchscript"].update(sha256=sha256_file(path), size=path.stat().st_size)

    _edit(demo_copy, acdc)
    (demo_copy / "baseline.onnx").unlink()
    study = cine_phantom(0, n_phases=2)
    stack = study.phases[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = Pipeline(demo_copy, backend="torchscript").segment(stack)
        theirs = Pipeline(DEMO_BUNDLE, backend="torchscript").segment(stack)
    assert ours.labels.any() and set(np.unique(ours.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_array_equal(ours.regions, theirs.regions)


def test_forward_tensor_of_the_device_chain_answers_in_cmrsdk_order(demo_copy: Path):
    torch = pytest.importorskip("torch")
    _edit(demo_copy, lambda m: m.update(labels=ACDC_LABELS))
    x = _slices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = load_bundle(demo_copy).engine("baseline", "torchscript")
        theirs = load_bundle(DEMO_BUNDLE).engine("baseline", "torchscript")
        with torch.inference_mode():
            a = ours.forward_tensor(torch.from_numpy(x)).numpy()
            b = theirs.forward_tensor(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(a, b[:, ACDC_ORDER])
    np.testing.assert_array_equal(ours.run(x), a)  # run permutes once, not twice


def test_regions_in_another_order_remap_the_routing_and_the_classifier(routing_bundle: Path, tmp_path: Path):
    """A classifier trained with 1 apex ... 3 base, routing keyed by its own codes."""
    other = Path(shutil.copytree(routing_bundle, tmp_path / "regions"))
    _edit(
        other,
        lambda m: m.update(
            regions={"0": "non-cardiac", "1": "apex", "2": "middle", "3": "base"},
            routing={"0": "baseline", "1": "apex", "2": "middle", "3": "base"},
        ),
    )
    ours, theirs = load_bundle(other), load_bundle(routing_bundle)
    assert ours.routing == theirs.routing == {0: "baseline", 1: "base", 2: "middle", 3: "apex"}
    assert ours.regions == {0: "non-cardiac", 1: "base", 2: "middle", 3: "apex"}
    assert ours.models["classifier"].output_order == (0, 3, 2, 1)
    assert ours.models["baseline"].output_order == (0, 1, 2, 3)
    x = np.stack([np.full((1, 64, 64), v / 3, np.float32) for v in range(4)])
    np.testing.assert_array_equal(
        ours.engine("classifier", "onnx").run(x), theirs.engine("classifier", "onnx").run(x)[:, [0, 3, 2, 1]]
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("labels", {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}, r"'labels.1' is 'RV', not one of cmrsdk's"),
        ("labels", {"0": "background", "1": "LVBP", "2": "LVBP", "3": "RVBP"}, r"'labels' names 'LVBP' twice"),
        ("labels", {"0": "background", "1": "LVBP", "2": "LVM", "4": "RVBP"}, r"'labels' has codes \[0, 1, 2, 4\]"),
        (
            "labels",
            {"0": "background", "1": "LVBP", "2": "LVM"},
            r"'labels' has codes \[0, 1, 2\] and lacks \['RVBP'\]",
        ),
        ("regions", {"0": "non-cardiac", "1": "heart"}, r"'regions.1' is 'heart', not one of cmrsdk's"),
    ],
)
def test_unknown_duplicated_or_missing_names_are_refused(demo_copy: Path, field: str, value, message: str):
    _edit(demo_copy, lambda m: m.update({field: value}))
    with pytest.raises(BundleError, match=r"manifest\.json: " + message):
        load_bundle(demo_copy)


# -- F4: the manifest against itself and the artifact ------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["models"]["baseline"].update(num_outputs=3), r"'models.baseline.num_outputs' is 3.*'labels': 4"),
        (
            lambda m: m["models"]["baseline"].update(output_shape=["N", 7, "H", "W"]),
            r"'models.baseline.output_shape' is \['N', 7, 'H', 'W'\], expected \['N', 4, 224, 224\]",
        ),
        (
            lambda m: m["preprocessing"].update(size=[256, 256]),
            r"'models.baseline.input_shape' is \['N', 1, 224, 224\]: its \(H, W\) must be 'preprocessing.size'",
        ),
        (
            lambda m: (
                m["preprocessing"].update(size=[200, 200]),
                m["models"]["baseline"].update(input_shape=["N", 1, 200, 200], output_shape=["N", 4, 200, 200]),
            ),
            r"'preprocessing.size' is \[200, 200\], but 'models.baseline.architecture' .* divides the image by 16: "
            r"give multiples of 16, e.g. \[192, 192\]",
        ),
        (
            lambda m: m["preprocessing"].update(heart_crop=[100, 128]),
            r"'preprocessing.heart_crop' is \[100, 128\].*multiples of 16",
        ),
        (lambda m: m.update(routing={}), r"'routing' is empty"),
    ],
)
def test_inconsistent_manifest_fields_are_refused_at_load(demo_copy: Path, edit, message: str):
    _edit(demo_copy, edit)
    with pytest.raises(BundleError, match=r"manifest\.json: " + message):
        load_bundle(demo_copy)


def test_input_channels_are_checked_against_the_artifact_when_the_engine_is_made(demo_copy: Path):
    _edit(demo_copy, lambda m: m["models"]["baseline"].update(input_shape=["N", 3, 224, 224]))
    bundle = load_bundle(demo_copy)  # an ONNX graph is opened only by its engine
    with pytest.raises(
        BundleError, match=r"'models.baseline.input_shape' gives 3 input channel\(s\), but baseline.onnx reads 1"
    ):
        bundle.engine("baseline", "onnx")


class _ThreeChannels(Engine):
    backend = "onnx"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)


def test_an_answer_with_another_channel_count_is_one_bundle_error(tmp_path: Path):
    engine = _ThreeChannels(tmp_path / "m.onnx", "cpu", "fp32")
    engine.output_order = (0, 1, 2, 3)
    with pytest.raises(BundleError, match=r"m\.onnx: the model answers 3 channels.*declares 4 \('num_outputs'"):
        engine.run(np.zeros((1, 1, 8, 8), np.float32))


# -- F12: symbolic links -----------------------------------------------------------------------


def test_an_artifact_linked_outside_the_bundle_is_read_and_its_target_checked(demo_copy: Path, tmp_path: Path):
    store = tmp_path / "dvc-cache"
    store.mkdir()
    shutil.move(demo_copy / "baseline.onnx", store / "ab12cd")  # DVC's cache names have no suffix
    (demo_copy / "baseline.onnx").symlink_to(store / "ab12cd")
    bundle = load_bundle(demo_copy)
    assert bundle.models["baseline"].artifacts["onnx"].path == demo_copy.resolve() / "baseline.onnx"
    x = _slices()
    np.testing.assert_array_equal(
        bundle.engine("baseline", "onnx").run(x), load_bundle(DEMO_BUNDLE).engine("baseline", "onnx").run(x)
    )
    data = bytearray((store / "ab12cd").read_bytes())
    data[len(data) // 2] ^= 1
    (store / "ab12cd").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"baseline\.onnx: sha256 is .*modified"):
        load_bundle(demo_copy)
    (store / "ab12cd").unlink()
    with pytest.raises(BundleError, match=r"baseline\.onnx: the onnx artifact is a symbolic link to .*ab12cd.*missing"):
        load_bundle(demo_copy)


def test_an_artifact_in_a_sub_folder_is_still_refused(demo_copy: Path):
    _edit(demo_copy, lambda m: m["models"]["baseline"]["artifacts"]["onnx"].update(file="../bundle/baseline.onnx"))
    load_bundle(demo_copy)  # ../bundle/x is x: the same directory
    _edit(demo_copy, lambda m: m["models"]["baseline"]["artifacts"]["onnx"].update(file="sub/baseline.onnx"))
    with pytest.raises(BundleError, match=r"'models.baseline.artifacts.onnx.file' is 'sub/baseline.onnx', expected"):
        load_bundle(demo_copy)


# -- F13: unknown keys --------------------------------------------------------------------------


def test_unknown_keys_are_warned_of_with_the_nearest_known_one(demo_copy: Path):
    def typos(m):
        m["preprocessing"]["heartcrop"] = m["preprocessing"].pop("heart_crop")
        m["region_from"] = "classifier"
        m["models"]["baseline"]["vendor_note"] = "x"

    _edit(demo_copy, typos)
    with pytest.warns(CmrWarning) as record:
        bundle = load_bundle(demo_copy)
    messages = [str(w.message) for w in record if issubclass(w.category, CmrWarning)]
    assert any("unknown key 'preprocessing.heartcrop' is ignored; did you mean 'heart_crop'?" in m for m in messages)
    assert any("unknown key 'region_from' is ignored; did you mean 'regions_from'?" in m for m in messages)
    assert any("unknown key 'models.baseline.vendor_note'" in m for m in messages)
    assert bundle.preprocessing.heart_crop is None


def test_the_shipped_bundle_loads_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_bundle(DEMO_BUNDLE)


# -- F16: engine messages -----------------------------------------------------------------------


def test_a_missing_aoti_artifact_names_export_aoti():
    with pytest.raises(BackendUnavailableError, match=r"no 'aoti' artifact .*add one with: python -m export\.aoti"):
        load_bundle(DEMO_BUNDLE).engine("baseline", "aoti")


def test_tensorrt_on_the_cpu_says_a_cuda_gpu_is_needed_before_the_missing_file():
    with pytest.raises(BackendUnavailableError, match=r"tensorrt: TensorRT needs a CUDA GPU") as info:
        load_bundle(DEMO_BUNDLE).engine("baseline", "tensorrt", "cpu")
    assert "artifact" not in str(info.value)
    assert "CUDA GPU" in str(backend_missing("tensorrt", "cpu"))


@pytest.mark.parametrize("backend", ["tensorrt", "aoti", "openvino", "torchscript"])
def test_int8_on_a_backend_without_an_int8_path_says_so_not_quantize(backend: str):
    from cmrsdk.bundle import precision_missing

    assert precision_missing(backend, "int8") == f"backend {backend!r} has no int8 path; int8 runs on 'onnx'"
    with pytest.raises(InputError, match=rf"backend '{backend}' has no int8 path; int8 runs on 'onnx'") as info:
        Pipeline(DEMO_BUNDLE, backend=backend, precision="int8")
    assert "quantize" not in str(info.value)
    assert precision_missing("onnx", "int8") is None and precision_missing("auto", "int8") is None


# -- F17: ZIP archives and byte-order marks -------------------------------------------------------


def test_a_zipped_bundle_is_named_as_an_archive(tmp_path: Path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(DEMO_BUNDLE / MANIFEST_NAME, f"bundle/{MANIFEST_NAME}")
    with pytest.raises(BundleError, match=r"bundle\.zip: a ZIP archive, not a bundle directory: unpack it first"):
        load_bundle(archive)


def test_a_manifest_with_a_byte_order_mark_is_read(demo_copy: Path):
    path = demo_copy / MANIFEST_NAME
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_bundle(demo_copy).routing == load_bundle(DEMO_BUNDLE).routing


def test_info_says_when_a_bundle_declares_its_labels_in_another_order(
    demo_copy: Path, capsys: pytest.CaptureFixture[str]
):
    from cmrsdk.cli import main

    assert main(["info", str(DEMO_BUNDLE)]) == 0
    assert "labels: 0 background, 1 LVBP, 2 LVM, 3 RVBP\n" in capsys.readouterr().out
    _edit(demo_copy, lambda m: m.update(labels=ACDC_LABELS))
    assert main(["info", str(demo_copy)]) == 0
    assert (
        "labels: 0 background, 1 RVBP, 2 LVM, 3 LVBP (the outputs are put in cmrsdk's order: 1 LVBP, 2 LVM, 3 RVBP)"
        in capsys.readouterr().out
    )
