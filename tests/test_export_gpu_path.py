"""The GPU-machine path of export/: slice packs, carried caches, --set and time budgets, weights-only
export and held-out classifier probabilities (export.portable, export.data.open_cache,
export.train, export.predict)."""

from __future__ import annotations

import csv
import io
import json
import lzma
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmrsdk.errors import InputError, ReadError  # noqa: E402
from export import portable  # noqa: E402
from export.data import CACHE_VERSION, SliceSet, load_cache, open_cache, synthetic_slices, write_cache  # noqa: E402
from export.predict import classifier_probabilities  # noqa: E402
from export.train import (  # noqa: E402
    REPO_ROOT,
    _datasets,
    average_weights,
    export_weights,
    load_config,
    load_trained_model,
    main,
    train,
)

SEGMENTATION = """
[experiment]
task = "segmentation"
seed = 0
[data]
source = "synthetic"
size = 32
synthetic_slices = 24
[model]
name = "unet"
kwargs = {{ features = [4, 8], deep_supervision = true }}
[train]
iterations = {iterations}
batch_size = 4
patch = 32
lr = 0.01
checkpoint_every = {checkpoint_every}
val_every = {val_every}
val_max_slices = 8
threads = 1
"""

CLASSIFICATION = """
[experiment]
task = "classification"
seed = 0
[data]
source = "synthetic"
size = 48
synthetic_slices = 32
[model]
name = "shufflenet_v2"
kwargs = { width = 0.5, input_size = 48 }
[train]
iterations = 2
batch_size = 8
optimizer = "adam"
lr = 5e-4
weight_decay = 0.0
augment = false
checkpoint_every = 2
val_every = 2
threads = 1
"""


def _write_config(tmp_path: Path, text: str, name: str = "run") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _log(run: Path) -> list[dict[str, str]]:
    with (run / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def segmentation_checkpoint(tmp_path_factory) -> Path:
    """A tiny U-Net trained 3 iterations on synthetic slices."""
    tmp = tmp_path_factory.mktemp("segmentation")
    config = load_config(_write_config(tmp, SEGMENTATION.format(iterations=3, checkpoint_every=3, val_every=3)))
    result = train(config, out=tmp / "out", progress=False)
    assert result["iteration"] == 3
    return Path(result["checkpoint"])


@pytest.fixture(scope="module")
def classification_checkpoint(tmp_path_factory) -> Path:
    """A ShuffleNet V2 (width 0.5) region classifier trained 2 iterations on synthetic slices."""
    tmp = tmp_path_factory.mktemp("classification")
    result = train(load_config(_write_config(tmp, CLASSIFICATION)), out=tmp / "out", progress=False)
    assert result["iteration"] == 2
    return Path(result["checkpoint"])


# -- export.portable ------------------------------------------------------------------------------------


def _slices_with_flat(n: int = 12, size: int = 32, flat_index: int = 5, flat_value: float = 0.75) -> SliceSet:
    s = synthetic_slices(n, size=size, seed=3)
    images = np.array(s.images, dtype=np.float32, copy=True)
    images[flat_index] = np.float32(flat_value)
    meta = dict(s.meta, version=CACHE_VERSION, splits={"train": ["synthetic000"], "val": ["synthetic001"], "test": []})
    return SliceSet(images, s.labels, s.cases, s.phases, s.regions, s.positions, s.z, meta)


def test_pack_unpack_round_trip(tmp_path: Path) -> None:
    original = _slices_with_flat()
    assert np.isnan(original.positions).any() and (~np.isnan(original.positions)).any()
    path = tmp_path / "sub" / "slices.npz.xz"
    stats = portable.pack(original, path)
    assert path.is_file() and not path.with_name(path.name + ".tmp").exists()
    assert stats["bytes"] == path.stat().st_size
    # 8 bits per pixel, compressed: far below the float32 images alone
    assert stats["bytes"] < original.images.nbytes / 2

    back = portable.unpack(path)
    assert len(back) == len(original)
    # everything but the images is exact
    assert back.labels.dtype == np.uint8 and np.array_equal(back.labels, original.labels)
    assert back.cases.tolist() == original.cases.tolist()
    assert back.phases.tolist() == original.phases.tolist()
    assert back.regions.tolist() == original.regions.tolist()
    assert back.z.dtype == np.int64 and back.z.tolist() == original.z.tolist()
    assert np.array_equal(np.isnan(back.positions), np.isnan(original.positions))
    np.testing.assert_array_equal(back.positions, original.positions)  # NaN == NaN here
    assert back.meta == {**original.meta, "quantized_bits": 8}

    # images: within half a quantisation step of each slice's own range
    assert back.images.dtype == np.float32 and back.images.shape == original.images.shape
    error = back.images.astype(np.float64) - original.images.astype(np.float64)
    span = original.images.max(axis=(1, 2)).astype(np.float64) - original.images.min(axis=(1, 2))
    per_slice = np.abs(error).max(axis=(1, 2))
    assert np.all(per_slice <= span / 255 / 2 + 1e-5), (per_slice, span / 510)
    assert np.abs(error).max() <= stats["max_error"] + 1e-6
    assert stats["max_error"] == pytest.approx(np.abs(error).max(), rel=1e-4, abs=1e-7)
    assert stats["rms_error"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-4)
    assert 0 < stats["rms_error"] < stats["max_error"]
    # a flat slice comes back exactly
    assert np.array_equal(back.images[5], original.images[5])
    assert per_slice[5] == 0.0


def test_unpack_rejects_corrupt_and_truncated_packs(tmp_path: Path) -> None:
    good = tmp_path / "good.npz.xz"
    portable.pack(synthetic_slices(4, size=16, seed=1), good)
    data = good.read_bytes()
    candidates = {
        "truncated.npz.xz": data[: len(data) // 2],
        "empty.npz.xz": b"",
        "garbage.npz.xz": bytes(range(256)) * 4,
        "flipped.npz.xz": data[:40] + bytes([data[40] ^ 0xFF]) + data[41:],
        "text.npz.xz": lzma.compress(b"not an npz at all"),
    }
    # a well-formed npz missing the pack's arrays
    buffer = io.BytesIO()
    np.savez(buffer, q=np.zeros((1, 4, 4), np.uint8))
    candidates["incomplete.npz.xz"] = lzma.compress(buffer.getvalue())
    for name, content in candidates.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ReadError, match="is not a slice pack written by export.portable") as info:
            portable.unpack(path)
        assert info.value.path == str(path), name
        assert str(path) in str(info.value)
    with pytest.raises(ReadError, match="missing.npz.xz"):
        portable.unpack(tmp_path / "missing.npz.xz")


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


def _truncated_npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, q=np.zeros((2, 8, 8), np.uint8), lo=np.zeros(2, np.float32))
    raw = buffer.getvalue()
    return raw[: len(raw) // 2]


@pytest.mark.parametrize("payload", ["empty", "truncated_npz", "npy"])
def test_unpack_rejects_well_compressed_non_packs(tmp_path: Path, payload: str) -> None:
    content = {"empty": b"", "truncated_npz": _truncated_npz_bytes(), "npy": _npy_bytes()}[payload]
    path = tmp_path / f"{payload}.npz.xz"
    path.write_bytes(lzma.compress(content))
    with pytest.raises(ReadError, match="is not a slice pack written by export.portable"):
        portable.unpack(path)


def test_cli_unpack_writes_a_loadable_cache(tmp_path: Path, capsys) -> None:
    original = _slices_with_flat(n=10)
    pack_path = tmp_path / "acdc.npz.xz"
    portable.pack(original, pack_path)
    cache = tmp_path / "cache" / "acdc_32"
    assert portable.main(["unpack", str(pack_path), str(cache)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"slices": 10}
    loaded = load_cache(cache)
    assert len(loaded) == len(original) == 10
    assert loaded.meta["quantized_bits"] == 8 and loaded.meta["size"] == 32
    assert np.array_equal(loaded.labels, original.labels)
    assert loaded.cases.tolist() == original.cases.tolist()
    np.testing.assert_allclose(loaded.images, original.images, atol=float(np.ptp(original.images)) / 255)
    assert not list(cache.parent.glob("*.tmp-*"))

    # and back: pack-cache of that cache re-packs the same slices (8-bit values are a fixed point)
    repacked = tmp_path / "again.npz.xz"
    assert portable.main(["pack-cache", str(cache), str(repacked)]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["bytes"] == repacked.stat().st_size
    again = portable.unpack(repacked)
    np.testing.assert_allclose(again.images, loaded.images, rtol=0, atol=1e-5)
    assert np.array_equal(again.labels, loaded.labels)


# -- export.data.open_cache without the raw data --------------------------------------------------


def _patient_cache(tmp_path: Path, cases: tuple[str, ...], size: int = 32) -> Path:
    s = synthetic_slices(4 * len(cases), size=size, seed=2)
    names = np.repeat(np.asarray(cases), 4)
    meta = {
        "version": CACHE_VERSION,
        "source": "elsewhere",
        "size": size,
        "normalization": "robust_zscore",
        "target_spacing": [1.25, 1.25],
        "splits": {"train": list(cases[:-1]), "val": [cases[-1]], "test": []},
    }
    cache = tmp_path / "cache"
    write_cache(cache, SliceSet(s.images, s.labels, names, s.phases, s.regions, s.positions, s.z, meta))
    return cache


def test_open_cache_trusts_a_carried_cache_when_root_is_absent(tmp_path: Path) -> None:
    cache = _patient_cache(tmp_path, ("patient001", "patient003"))
    root = tmp_path / "no_raw_data"
    slices = open_cache(root, cache, size=32, normalization="robust_zscore", test_every=5)
    expected = load_cache(cache)
    assert len(slices) == 8
    assert slices.cases.tolist() == ["patient001"] * 4 + ["patient003"] * 4
    assert np.array_equal(slices.images, expected.images)
    assert slices.meta["splits"] == {"train": ["patient001"], "val": ["patient003"], "test": []}
    assert not root.exists()  # nothing rebuilt
    # test_every=3 would make patient003 a test patient
    with pytest.raises(ReadError, match="patient003"):
        open_cache(root, cache, size=32, test_every=3)


def test_open_cache_rejects_a_mismatched_carried_cache(tmp_path: Path) -> None:
    cache = _patient_cache(tmp_path, ("patient001", "patient003"))
    root = tmp_path / "no_raw_data"
    with pytest.raises(ReadError, match="size 32") as info:
        open_cache(root, cache, size=224)
    assert info.value.path == str(cache) and "is not there to rebuild it" in str(info.value)
    with pytest.raises(ReadError, match="normalization 'robust_zscore'"):
        open_cache(root, cache, size=32, normalization="zscore")


def test_open_cache_rejects_a_carried_cache_holding_test_patients(tmp_path: Path) -> None:
    cache = _patient_cache(tmp_path, ("patient001", "patient005"))
    root = tmp_path / "no_raw_data"
    with pytest.raises(ReadError, match="patient005"):
        open_cache(root, cache, size=32, test_every=5)
    # no test split: the same cache is fine; another period that spares 1 and 5 too
    assert len(open_cache(root, cache, size=32, test_every=0)) == 8
    assert len(open_cache(root, cache, size=32, test_every=4)) == 8


def test_train_patients_keeps_a_stratified_subset_and_the_validation_patients(tmp_path: Path) -> None:
    cases = ("patient001", "patient002", "patient021", "patient022", "patient041")  # 041: validation
    cache = _patient_cache(tmp_path, cases)
    config = load_config(REPO_ROOT / "export" / "configs" / "bundle_baseline.toml")
    config["data"].update(root=str(tmp_path / "no_raw_data"), cache=str(cache), size=32)
    config["data"]["train_patients"] = 2
    train_set, val_set = _datasets(config, rank=0)
    kept = set(train_set.cases.tolist())
    assert len(kept) == 2 and {int(p[-3:]) <= 20 for p in kept} == {True, False}  # one per group
    assert set(val_set.cases.tolist()) == {"patient041"}
    for bad in (-1, 2.5, True):
        config["data"]["train_patients"] = bad
        with pytest.raises(InputError, match=f"'train_patients' must be a whole number >= 0 .*got {bad!r}"):
            _datasets(config, rank=0)
    config["data"]["train_patients"] = 5
    with pytest.raises(InputError, match=r"'train_patients' must lie in \[1, 4\]"):
        _datasets(config, rank=0)


def test_open_cache_without_root_or_cache_raises(tmp_path: Path) -> None:
    with pytest.raises(ReadError):
        open_cache(tmp_path / "no_raw_data", tmp_path / "no_cache", size=32)


# -- export.train: --set and time budgets ----------------------------------------------------------


def test_main_set_overrides_train_three_iterations(tmp_path: Path, capsys) -> None:
    config = _write_config(tmp_path, SEGMENTATION.format(iterations=500, checkpoint_every=100, val_every=250))
    out = tmp_path / "out"
    code = main(
        [
            str(config),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            "train.iterations=3",
            "--set",
            "train.val_every=3",
            "--set",
            "train.checkpoint_every=1000",
            "--set",
            'experiment.name="overridden"',
        ]
    )
    assert code == 0
    assert "done: iteration 3," in capsys.readouterr().out
    rows = _log(out)
    assert [int(r["iteration"]) for r in rows] == [3]
    assert rows[0]["val_dice_mean"] != ""  # validated at val_every = 3
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert state["iteration"] == 3
    assert state["config"]["train"]["iterations"] == 3 and state["config"]["train"]["val_every"] == 3
    assert state["config"]["train"]["checkpoint_every"] == 1000
    assert state["config"]["experiment"]["name"] == "overridden"


@pytest.mark.parametrize(
    "item", ["trainiterations=3", "train.iterations", "train.iterations=three", "train.iterations=[1,", "nosuch.key=1"]
)
def test_main_malformed_set_exits_2(tmp_path: Path, item: str, capsys) -> None:
    config = _write_config(tmp_path, SEGMENTATION.format(iterations=1, checkpoint_every=1, val_every=1))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main([str(config), "--out", str(out), "--device", "cpu", "--no-progress", "--set", item])
    assert info.value.code == 2
    assert "--set" in capsys.readouterr().err
    assert not out.exists()  # rejected before anything ran


def test_main_set_unknown_key_exits_2(tmp_path: Path) -> None:
    config = _write_config(tmp_path, SEGMENTATION.format(iterations=1, checkpoint_every=1, val_every=1))
    with pytest.raises(SystemExit) as info:
        main(
            [
                str(config),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                "--no-progress",
                "--set",
                "train.iteratons=3",
            ]
        )
    assert info.value.code == 2


def test_time_budget_stops_early_annealed_and_saved(tmp_path: Path) -> None:
    config = load_config(
        _write_config(tmp_path, SEGMENTATION.format(iterations=100000, checkpoint_every=100000, val_every=100000))
    )
    out = tmp_path / "out"
    started = time.perf_counter()
    result = train(config, out=out, progress=False, time_budget=0.5)
    elapsed = time.perf_counter() - started
    reached = result["iteration"]
    assert 1 <= reached < 100000
    assert elapsed < 20, elapsed  # 100000 iterations would take hours
    assert result["checkpoint"] == str(out / "last.pt")
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert state["iteration"] == reached
    assert state["metrics"] == result["metrics"] and "dice_mean" in result["metrics"]
    rows = _log(out)
    assert rows, "no log row written"
    assert int(rows[-1]["iteration"]) == reached and rows[-1]["lr"] == "0"
    assert rows[-1]["val_dice_mean"] != ""
    model, meta = load_trained_model(out / "last.pt")
    assert meta["iteration"] == reached


def test_time_budget_on_a_finished_run_resumes_to_nothing(tmp_path: Path) -> None:
    config = load_config(_write_config(tmp_path, SEGMENTATION.format(iterations=2, checkpoint_every=2, val_every=2)))
    out = tmp_path / "out"
    assert train(config, out=out, progress=False)["iteration"] == 2
    result = train(config, out=out, resume=True, progress=False, time_budget=5.0)
    assert result["iteration"] == 2


# -- export.train.export_weights ---------------------------------------------------------------------


def test_export_weights_float16_round_trip(tmp_path: Path, segmentation_checkpoint: Path) -> None:
    target = tmp_path / "weights" / "model.pt"
    target.parent.mkdir()
    size = export_weights(segmentation_checkpoint, target)
    assert size == target.stat().st_size
    assert size < segmentation_checkpoint.stat().st_size
    original_state = torch.load(segmentation_checkpoint, map_location="cpu", weights_only=False)
    slim = torch.load(target, map_location="cpu", weights_only=False)
    assert not {"optimizer", "scaler", "sampler", "rng"} & set(slim)
    assert slim["weights_dtype"] == "float16"
    floats = [k for k, v in original_state["state_dict"].items() if v.is_floating_point()]
    assert floats and set(slim["state_dict"]) == set(original_state["state_dict"])
    for key, value in slim["state_dict"].items():
        if key in floats:
            assert value.dtype == torch.float16, key
            assert torch.equal(value, original_state["state_dict"][key].to(torch.float16)), key

    original, original_meta = load_trained_model(segmentation_checkpoint)
    exported, exported_meta = load_trained_model(target)
    assert all(p.dtype == torch.float32 for p in exported.parameters())
    for key in ("task", "model", "iteration", "preprocessing", "config"):
        assert exported_meta[key] == original_meta[key], key
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = original(x), exported(x)
    assert a.shape == b.shape == (3, 4, 32, 32)
    assert not torch.equal(a, b)  # the weights really were rounded
    assert float((a - b).norm() / a.norm()) < 1e-2


def test_export_weights_keeps_integer_buffers(tmp_path: Path, classification_checkpoint: Path) -> None:
    target = tmp_path / "model.pt"
    export_weights(classification_checkpoint, target)
    state = torch.load(classification_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    slim = torch.load(target, map_location="cpu", weights_only=False)["state_dict"]
    integers = [k for k, v in state.items() if not v.is_floating_point()]
    assert integers  # BatchNorm's num_batches_tracked
    for key in integers:
        assert slim[key].dtype == state[key].dtype and torch.equal(slim[key], state[key])
    original, _ = load_trained_model(classification_checkpoint)
    exported, meta = load_trained_model(target)
    assert meta["task"] == "classification" and meta["iteration"] == 2
    x = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = original(x), exported(x)
    assert float((a - b).norm() / a.norm()) < 1e-2


def test_average_weights_is_the_element_wise_mean(tmp_path: Path, segmentation_checkpoint: Path) -> None:
    state = torch.load(segmentation_checkpoint, map_location="cpu", weights_only=False)
    shifted = dict(
        state, state_dict={k: v + 2.0 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    )
    torch.save(shifted, tmp_path / "shifted.pt")
    target = tmp_path / "mean.pt"
    size = average_weights([segmentation_checkpoint, tmp_path / "shifted.pt"], target, dtype=torch.float32)
    assert size == target.stat().st_size
    mean = torch.load(target, map_location="cpu", weights_only=False)
    assert mean["averaged_from"] == [str(segmentation_checkpoint), str(tmp_path / "shifted.pt")]
    assert mean["iteration"] == 2 * state["iteration"] and mean["weights_dtype"] == "float32"
    assert not {"optimizer", "scaler", "sampler", "rng"} & set(mean)
    for key, value in state["state_dict"].items():
        expected = value + 1.0 if value.is_floating_point() else value
        torch.testing.assert_close(mean["state_dict"][key], expected, rtol=0, atol=1e-6)
    model, meta = load_trained_model(target)  # loads as any checkpoint does
    assert meta["model"] == state["model"] and all(p.dtype == torch.float32 for p in model.parameters())


def test_average_weights_refuses_what_cannot_be_averaged(
    tmp_path: Path, segmentation_checkpoint: Path, classification_checkpoint: Path
) -> None:
    with pytest.raises(InputError, match="at least two checkpoints, got 1"):
        average_weights([segmentation_checkpoint], tmp_path / "a.pt")
    with pytest.raises(InputError, match="differs from"):
        average_weights([segmentation_checkpoint, classification_checkpoint], tmp_path / "b.pt")
    state = torch.load(classification_checkpoint, map_location="cpu", weights_only=False)
    integer = next(k for k, v in state["state_dict"].items() if not v.is_floating_point())
    state["state_dict"][integer] = state["state_dict"][integer] + 1
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(InputError, match=f"integer tensor '{integer}' differs"):
        average_weights([classification_checkpoint, tmp_path / "other.pt"], tmp_path / "c.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ReadError, match="junk.pt"):
        average_weights([segmentation_checkpoint, tmp_path / "junk.pt"], tmp_path / "d.pt")
    assert not list(tmp_path.glob("[abcd].pt"))  # nothing half-written


# -- export.predict --------------------------------------------------------------------------------


def test_classifier_probabilities(classification_checkpoint: Path, segmentation_checkpoint: Path) -> None:
    images = synthetic_slices(6, size=48, seed=5).images
    probabilities = classifier_probabilities(classification_checkpoint, images)
    assert probabilities.dtype == np.float32 and probabilities.shape == (6, 4)
    assert np.all(probabilities >= 0) and np.all(probabilities <= 1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # the checkpoint's own model, by hand
    model, _ = load_trained_model(classification_checkpoint)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(np.ascontiguousarray(images))[:, None]), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    # batches split anywhere give the same rows
    np.testing.assert_allclose(
        classifier_probabilities(classification_checkpoint, images, batch=4), probabilities, rtol=1e-4, atol=1e-6
    )
    with pytest.raises(ValueError, match="segmentation checkpoint, not a region classifier"):
        classifier_probabilities(segmentation_checkpoint, images[:, :32, :32])


def test_predict_command_writes_and_updates(tmp_path: Path, classification_checkpoint: Path) -> None:
    import shutil

    from export.predict import main as predict_main

    pack_path = tmp_path / "heldout.npz.xz"
    portable.pack(synthetic_slices(6, size=48, seed=5), pack_path)
    run = classification_checkpoint.parent
    out = tmp_path / "predictions.npz"
    assert predict_main([str(pack_path), str(run), "-o", str(out), "--device", "cpu"]) == 0
    first = dict(np.load(out))
    assert set(first) == {"cases", "phases", "z", "regions", run.name} and first[run.name].shape == (6, 4)
    other = tmp_path / "classifier_other"
    shutil.copytree(run, other)
    assert predict_main([str(pack_path), str(other), "-o", str(out), "--update", "--device", "cpu"]) == 0
    second = dict(np.load(out))
    assert set(second) == set(first) | {"classifier_other"}
    np.testing.assert_array_equal(second[run.name], first[run.name])  # kept, not recomputed
    np.testing.assert_allclose(second["classifier_other"], first[run.name], rtol=1e-5)  # the same weights
    assert predict_main([str(pack_path), str(other), "-o", str(out), "--device", "cpu"]) == 0  # no --update: replaced
    assert set(np.load(out)) == {"cases", "phases", "z", "regions", "classifier_other"}
    other_pack = tmp_path / "other.npz.xz"
    portable.pack(synthetic_slices(8, size=48, seed=6), other_pack)
    with pytest.raises(SystemExit):
        predict_main([str(other_pack), str(run), "-o", str(out), "--update", "--device", "cpu"])
