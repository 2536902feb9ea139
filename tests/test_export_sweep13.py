"""Red-team sweep 13 on export/: no folder lost to --overwrite or a re-run, no empty bundle, no raw
torch traceback for a window the U-Net's strides do not divide, TOML on Python 3.10 (F1, F5, F6,
F11, F14)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from cmrsdk.bundle import MANIFEST_NAME, Preprocessing, load_bundle  # noqa: E402
from cmrsdk.engines.tensorrt import tensorrt_missing  # noqa: E402
from cmrsdk.errors import InputError, WriteError  # noqa: E402
from export.bundle import FORMATS, build_bundle  # noqa: E402
from export.bundle import main as bundle_main  # noqa: E402
from export.models import get_model, unet  # noqa: E402
from export.train import REPO_ROOT, load_config, train  # noqa: E402
from export.train import main as train_main  # noqa: E402
from _bundles import built_once  # noqa: E402

SIZE = (32, 32)
PRE = Preprocessing((1.5625, 1.5625), SIZE, "robust_zscore")
TINY = """
[experiment]
task = "segmentation"
seed = 0
[data]
source = "synthetic"
size = {size}
synthetic_slices = 16
[model]
name = "unet"
kwargs = {{ features = [4, 8, 16] }}
[train]
iterations = 2
batch_size = 4
patch = 32
checkpoint_every = 2
val_every = 2
val_max_slices = 8
threads = 1
amp = "off"
"""


def _models() -> dict:
    torch.manual_seed(0)
    return {"m": (unet(features=(4, 8)), {"kind": "segmentation"})}


def _checkpoint(path: Path, features: tuple[int, ...] = (4, 8, 16), size: int = 32) -> Path:
    """A training checkpoint as export.train writes it (what load_checkpoint reads)."""
    torch.manual_seed(5)
    kwargs = {"features": list(features)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "task": "segmentation",
            "model": {"name": "unet", "kwargs": kwargs},
            "state_dict": get_model("unet", **kwargs).state_dict(),
            "iteration": 3,
            "config": {},
            "metrics": {},
            "preprocessing": {"target_spacing": [1.25, 1.25], "size": size, "normalization": "zscore"},
        },
        path,
    )
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    """`_models()` exported to ONNX, built once for the run (`built_once`) and read only: the
    earlier bundle that the --overwrite tests replace, each in a copy of its own."""

    def build(folder: Path) -> None:
        build_bundle(_models(), {0: "m"}, PRE, folder / "bundle", formats=("onnx",))

    return built_once(tmp_path_factory, "sweep13-onnx", build) / "bundle"


# -- F1: --overwrite replaces only a bundle, never an input, and never loses the earlier one -------------


def test_overwrite_refuses_a_folder_that_is_not_a_bundle_and_keeps_it(tmp_path: Path, capsys) -> None:
    precious = tmp_path / "precious"
    (precious / "important.txt").parent.mkdir()
    (precious / "important.txt").write_text("my notes\n")
    checkpoint = _checkpoint(precious / "sub" / "last.pt")
    before = _tree(precious)
    args = ["--checkpoints", f"baseline={checkpoint}", "--formats", "onnx", "--overwrite", "-o", str(precious)]
    assert bundle_main(args) == 1
    err = capsys.readouterr().err
    assert f"{precious}: output folder is or holds the input {checkpoint}" in err and "Traceback" not in err
    assert _tree(precious) == before
    # a folder holding no input, but no bundle either: refused, naming what it holds
    other = tmp_path / "notes"
    other.mkdir()
    (other / "important.txt").write_text("my notes\n")
    with pytest.raises(
        WriteError,
        match=r"notes: --overwrite replaces only a cmrsdk bundle, and this folder holds no bundle manifest\.json; it holds important\.txt:",
    ):
        build_bundle(_models(), {0: "m"}, PRE, other, formats=("onnx",), overwrite=True)
    assert _tree(other) == {"important.txt": b"my notes\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "precious"]  # no staging left


def test_overwrite_replaces_a_bundle_but_not_one_holding_other_files_or_the_input(
    tmp_path: Path, capsys, onnx_bundle: Path
) -> None:
    out = Path(shutil.copytree(onnx_bundle, tmp_path / "bundle"))
    assert set(json.loads((out / MANIFEST_NAME).read_text())["models"]["m"]["artifacts"]) == {"onnx"}
    build_bundle(_models(), {0: "m"}, PRE, out, formats=("torchscript",), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["m.pt", MANIFEST_NAME]  # replaced whole, not merged
    assert set(load_bundle(out).models["m"].artifacts) == {"torchscript"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging or retired folder left
    # a file the manifest does not name: refused, naming it
    (out / "README.txt").write_text("release notes\n")
    with pytest.raises(WriteError, match=r"also holds 1 entries its manifest does not name \(README\.txt\)"):
        build_bundle(_models(), {0: "m"}, PRE, out, formats=("onnx",), overwrite=True)
    (out / "README.txt").unlink()
    # rebuilt from its own TorchScript archive: the input lies in -o, refused before any export
    before = _tree(out)
    args = ["--checkpoints", f"baseline={out / 'm.pt'}", "--formats", "onnx", "--overwrite", "-o", str(out)]
    assert bundle_main(args) == 1
    assert f"is or holds the input {out / 'm.pt'}" in capsys.readouterr().err
    assert _tree(out) == before


def test_a_failed_swap_leaves_the_earlier_bundle_in_place(tmp_path: Path, monkeypatch, onnx_bundle: Path) -> None:
    out = Path(shutil.copytree(onnx_bundle, tmp_path / "bundle"))
    before = _tree(out)
    real_rename, real_replace = os.rename, os.replace

    def failing(move):
        def wrapped(src, dst, *args, **kwargs):
            if Path(src).name.startswith(".bundle."):  # the staged new bundle moving into place
                raise OSError(28, "No space left on device")
            return move(src, dst, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(os, "rename", failing(real_rename))
    monkeypatch.setattr(os, "replace", failing(real_replace))
    with pytest.raises(WriteError, match=r"bundle: output folder could not be replaced \(No space left on device\)"):
        build_bundle(_models(), {0: "m"}, PRE, out, formats=("torchscript",), overwrite=True)
    monkeypatch.undo()
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# -- F5: aoti is written when asked; formats that leave nothing to write are refused ---------------------


def test_formats_that_write_nothing_are_refused(tmp_path: Path, capsys) -> None:
    if tensorrt_missing() is None:
        pytest.skip("torch-tensorrt and a GPU are here: tensorrt would be written")
    with pytest.raises(InputError, match=r"'formats' \('tensorrt',\) leave no artifact .*tensorrt: "):
        build_bundle(_models(), {0: "m"}, PRE, tmp_path / "b", formats=("tensorrt",))
    checkpoint = _checkpoint(tmp_path / "run" / "last.pt")
    assert (
        bundle_main(["--checkpoints", f"baseline={checkpoint}", "--formats", "tensorrt", "-o", str(tmp_path / "c")])
        == 1
    )
    captured = capsys.readouterr()
    assert "leave no artifact" in captured.err and "bundle written" not in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    from export.bundle import DEFAULT_FORMATS  # aoti compiles C++ (tens of seconds a model): only when named

    assert "aoti" in FORMATS and "aoti" not in DEFAULT_FORMATS


# `--formats aoti` writing a checked package: tests/test_export_aoti.py (one compilation for both)


# -- F6: a run folder is not overwritten by a re-run, and --resume needs a checkpoint -----------------------


def test_a_rerun_without_resume_is_refused_and_resume_needs_a_checkpoint(tmp_path: Path, capsys) -> None:
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY.format(size=32))
    run = tmp_path / "run"
    train(load_config(config_path), out=run, max_iterations=1, progress=False)
    before = _tree(run)
    with pytest.raises(InputError, match=rf"run folder {run} already holds a training run \(last.pt\); --resume"):
        train(load_config(config_path), out=run, progress=False)
    assert train_main([str(config_path), "--out", str(run), "--no-progress"]) == 1
    assert "--resume continues it" in capsys.readouterr().err
    assert _tree(run) == before
    # --resume where there is no checkpoint (a mistyped --out): refused, nothing created
    typo = tmp_path / "rnu"
    assert train_main([str(config_path), "--out", str(typo), "--resume", "--no-progress"]) == 1
    assert f"run folder {typo} holds no checkpoint (last.pt) to continue" in capsys.readouterr().err
    assert not typo.exists()
    # --resume-or-start: a recipe run again continues, and the first time starts
    assert train_main([str(config_path), "--out", str(run), "--resume-or-start", "--no-progress"]) == 0
    assert torch.load(run / "last.pt", weights_only=False)["iteration"] == 2
    assert train_main([str(config_path), "--out", str(typo), "--resume-or-start", "--no-progress"]) == 0
    assert (typo / "last.pt").is_file()


# -- F11: Python 3.10 reads TOML through tomli --------------------------------------------------------------


def test_without_tomllib_the_trainer_uses_tomli_or_says_so(tmp_path: Path) -> None:
    """Python 3.10 simulated: tomllib hidden; first no tomli (one clear error), then tomli (the
    standard library's parser under its package name) reads a configuration."""
    (tmp_path / "tomli_stub").mkdir()
    # tomli is the package tomllib was taken from: the standard library's copy, loaded under another name
    (tmp_path / "tomli_stub" / "tomli.py").write_text(
        "import importlib.util, os, sys\n"
        "where = os.path.join(os.path.dirname(os.__file__), 'tomllib')\n"
        "spec = importlib.util.spec_from_file_location('_tomllib_copy', os.path.join(where, '__init__.py'), "
        "submodule_search_locations=[where])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['_tomllib_copy'] = module\n"
        "spec.loader.exec_module(module)\n"
        "loads, load, TOMLDecodeError = module.loads, module.load, module.TOMLDecodeError\n"
    )
    (tmp_path / "tiny.toml").write_text(TINY.format(size=32))
    script = f"""
import sys
sys.modules["tomllib"] = None
sys.modules["tomli"] = None
try:
    import export.train
except ModuleNotFoundError as exc:
    print("ERROR", exc)
for name in [n for n in sys.modules if n.startswith("export")]:
    del sys.modules[name]
del sys.modules["tomli"]
sys.path.insert(0, {str(tmp_path / "tomli_stub")!r})
from export.train import load_config
print("SIZE", load_config({str(tmp_path / "tiny.toml")!r})["data"]["size"])
"""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ERROR export.train reads TOML configurations: on Python 3.10 it needs the package 'tomli'" in done.stdout
    assert "SIZE 32" in done.stdout


# -- F14: a window the U-Net's strides do not divide is refused at argument and configuration time --------


def test_bundle_window_not_divisible_by_the_unet_strides_is_refused(tmp_path: Path, capsys) -> None:
    checkpoint = _checkpoint(tmp_path / "run" / "last.pt", features=[4, 8, 16, 32, 64], size=224)
    base = ["--checkpoints", f"baseline={checkpoint}", "--formats", "onnx"]
    assert bundle_main([*base, "--size", "200", "200", "-o", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "--size 200 200: model 'baseline' is a U-Net of 5 stages" in err and "Traceback" not in err
    assert "multiples of 16; nearest valid: 192 192 or 208 208" in err
    assert bundle_main([*base, "--heart-crop", "100", "100", "-o", str(tmp_path / "b")]) == 1
    assert "--heart-crop 100 100: model 'baseline'" in (err := capsys.readouterr().err) and "96 96 or 112 112" in err
    three = {"m": (unet(features=(4, 8, 16)), {"kind": "segmentation"})}
    with pytest.raises(
        InputError, match=r"preprocessing.size 30 32: model 'm' .* multiples of 4; nearest valid: 28 32 or 32 32"
    ):
        build_bundle(three, {0: "m"}, Preprocessing((1.5, 1.5), (30, 32), "zscore"), tmp_path / "c")
    crop = Preprocessing((1.5, 1.5), (32, 32), "zscore", heart_crop=(2, 16))
    with pytest.raises(InputError, match=r"preprocessing.heart_crop 2 16: .* nearest valid: 4 16$"):
        build_bundle(three, {0: "m"}, crop, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_training_window_not_divisible_by_the_unet_strides_is_refused(tmp_path: Path) -> None:
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY.format(size=50))
    with pytest.raises(
        InputError,
        match=r"\[data\] 'size' is 50: .*features \[4, 8, 16\]\) need a multiple of 4; nearest valid: 48 or 52",
    ):
        train(load_config(config_path), out=tmp_path / "run", progress=False)
    config = load_config(config_path)
    config["data"]["size"], config["train"]["patch"] = 48, 30
    with pytest.raises(InputError, match=r"\[train\] 'patch' is 30: .* nearest valid: 28 or 32"):
        train(config, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
