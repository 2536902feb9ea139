"""examples/cpp: the C++ program, built against the torch wheel's libtorch, segments as cmrsdk does.

The program is built once per checkout under build/examples_cpp (ninja: later runs only relink
when the source changed) and run on real held-out ACDC slices prepared as the pipeline prepares
them; its label maps are compared with the argmax of the Python TorchScript engine's
probabilities on the same slices, and with ONNX Runtime's.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmrsdk.bundle import load_bundle  # noqa: E402
from cmrsdk.cli import DEMO_BUNDLE  # noqa: E402
from cmrsdk.engines import create_engine  # noqa: E402
from cmrsdk.preprocess import prepare_slices  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "examples" / "cpp"
BUILD = REPO / "build" / "examples_cpp"
ACDC = REPO.parent / "shared" / "data" / "acdc" / "training"


def _missing() -> str | None:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not on PATH: the C++ example cannot be built here"
    include = Path(torch.__file__).parent / "include" / "torch" / "script.h"
    if not include.is_file():
        return f"this torch install has no libtorch headers ({include} is missing)"
    return None


@pytest.fixture(scope="module")
def program() -> Path:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    t = time.perf_counter()
    subprocess.run(
        [
            "cmake",
            "-S",
            str(SOURCE),
            "-B",
            str(BUILD),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    build = subprocess.run(["cmake", "--build", str(BUILD)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    print(f"examples/cpp configured and built in {time.perf_counter() - t:.1f} s")
    return BUILD / "segment_slice"


@pytest.fixture(scope="module")
def slices() -> np.ndarray:
    """float32 (6, 1, 224, 224): slices of a held-out ACDC patient as the demo bundle prepares them."""
    folder = ACDC / "patient005"
    if not folder.is_dir():
        pytest.skip(f"the real ACDC data is not here ({folder})")
    from cmrsdk.io import read_acdc_patient

    stack = read_acdc_patient(folder).ed
    pre = load_bundle(DEMO_BUNDLE).preprocessing
    images, _ = prepare_slices(
        stack.pixels,
        stack.spacing[1:],
        target_spacing=pre.target_spacing,
        size=pre.size,
        normalization=pre.normalization,
    )
    middle = len(images) // 2
    return np.ascontiguousarray(images[middle - 3 : middle + 3])


def _python_labels(backend: str, suffix: str, x: np.ndarray) -> np.ndarray:
    engine = create_engine(DEMO_BUNDLE / f"baseline{suffix}", backend)
    return engine.run(x).argmax(1).astype(np.uint8)


def test_cpp_labels_match_the_python_engines(program: Path, slices: np.ndarray, tmp_path: Path):
    np.save(tmp_path / "slices.npy", slices[:, 0])  # (N, H, W)
    run = subprocess.run(
        [
            str(program),
            str(DEMO_BUNDLE / "baseline.pt"),
            str(tmp_path / "slices.npy"),
            str(tmp_path / "labels.npy"),
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "segmented 6 slice(s) of 224 x 224" in run.stdout
    labels = np.load(tmp_path / "labels.npy")
    assert labels.dtype == np.uint8 and labels.shape == (6, 224, 224)
    reference = _python_labels("torchscript", ".pt", slices)
    # the same libtorch on the same archive: every pixel is the same, and the slices hold heart
    assert np.array_equal(labels, reference)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # ONNX Runtime's arithmetic differs in the last bits: near-ties may flip, nothing more
    assert (labels == _python_labels("onnx", ".onnx", slices)).mean() > 0.999


def test_cpp_reads_one_raw_slice(program: Path, slices: np.ndarray, tmp_path: Path):
    one = slices[2, 0]
    one.astype("<f4").tofile(tmp_path / "slice.raw")
    run = subprocess.run(
        [
            str(program),
            str(DEMO_BUNDLE / "baseline.pt"),
            str(tmp_path / "slice.raw"),
            str(tmp_path / "labels.raw"),
            "--shape",
            "224",
            "224",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    labels = np.fromfile(tmp_path / "labels.raw", np.uint8).reshape(224, 224)
    assert np.array_equal(labels, _python_labels("torchscript", ".pt", slices[2:3])[0])


@pytest.mark.parametrize(
    "write, args, message",
    [
        (lambda p: np.save(p, np.zeros((2, 224, 224), np.float64)), (), "dtype must be little-endian float32"),
        (lambda p: np.save(p, np.zeros((2, 100, 224), np.float32)), (), "multiples of 16"),
        (lambda p: np.zeros(1000, np.float32).tofile(p), ("--shape", "224", "224"), "not a whole number"),
        (lambda p: np.zeros(224 * 224, np.float32).tofile(p), (), "needs --shape"),
    ],
)
def test_cpp_refuses_bad_input_with_a_message(program: Path, tmp_path: Path, write, args, message):
    path = tmp_path / ("in.npy" if not args and "needs" not in message else "in.raw")
    write(path)
    run = subprocess.run(
        [str(program), str(DEMO_BUNDLE / "baseline.pt"), str(path), str(tmp_path / "out.npy"), *args],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and message in run.stderr, run.stderr
    assert not (tmp_path / "out.npy").exists()


def test_cpp_refuses_a_model_that_is_not_torchscript(program: Path, slices: np.ndarray, tmp_path: Path):
    np.save(tmp_path / "slices.npy", slices[:1, 0])
    run = subprocess.run(
        [str(program), str(DEMO_BUNDLE / "baseline.onnx"), str(tmp_path / "slices.npy"), str(tmp_path / "labels.npy")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "error: libtorch:" in run.stderr
