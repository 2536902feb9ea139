"""export.train: every model type learns on synthetic slices; checkpoints round-trip; resume is exact."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmrsdk.errors import InputError, ReadError  # noqa: E402
from export.train import REPO_ROOT, classification_metrics, load_config, load_trained_model, train  # noqa: E402

SEGMENTATION = """
[experiment]
task = "segmentation"
seed = 0
[data]
source = "synthetic"
size = 48
synthetic_slices = 48
[model]
name = "unet"
kwargs = {{ features = [8, 16, 32], deep_supervision = true }}
[sampler]
kind = "{sampler}"
[train]
iterations = {iterations}
batch_size = 8
patch = 32
lr = 0.01
checkpoint_every = 10
val_every = {val_every}
threads = 1
"""

CLASSIFICATION = """
[experiment]
task = "classification"
seed = 0
[data]
source = "synthetic"
size = 48
synthetic_slices = 48
[model]
name = "{name}"
kwargs = {{ input_size = 48 }}
[train]
iterations = {iterations}
batch_size = 16
optimizer = "adam"
lr = 5e-4
weight_decay = 0.0
augment = false
checkpoint_every = 10
val_every = {iterations}
threads = 1
"""


def _config(tmp_path: Path, text: str, name: str = "run") -> dict:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_config(path)


def _log(path: Path) -> list[dict[str, str]]:
    with (path / "log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("sampler", "slice_dice", "crop"),
    [("uniform", 0.0, "random"), ("region", 0.0, "random"), ("uniform", 0.5, "random"), ("uniform", 0.0, "heart")],
)
def test_unet_loss_falls_and_checkpoint_round_trips(tmp_path: Path, sampler: str, slice_dice: float, crop: str) -> None:
    config = _config(tmp_path, SEGMENTATION.format(sampler=sampler, iterations=40, val_every=40))
    config["train"]["slice_dice"] = slice_dice
    config["train"]["crop"] = crop
    result = train(config, out=tmp_path / "out", progress=False)
    rows = _log(tmp_path / "out")
    assert [int(r["iteration"]) for r in rows] == [10, 20, 30, 40]
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])
    # an untrained U-Net scores about 0.03 (see the demo smoke run); 40 iterations learn the discs
    assert max(result["metrics"][f"dice_{s}"] for s in ("LVBP", "LVM", "RVBP")) > 0.25
    model, meta = load_trained_model(result["checkpoint"])
    assert meta["iteration"] == 40 and meta["task"] == "segmentation"
    assert meta["model"] == {"name": "unet", "kwargs": {"features": [8, 16, 32], "deep_supervision": True}}
    assert meta["preprocessing"]["size"] == 48
    x = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    state = torch.load(result["checkpoint"], weights_only=False)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model(x).shape == (2, 4, 48, 48)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    config = _config(tmp_path, SEGMENTATION.format(sampler="uniform", iterations=20, val_every=20))
    straight = train(config, out=tmp_path / "a", progress=False)
    train(config, out=tmp_path / "b", max_iterations=10, progress=False)
    resumed = train(config, out=tmp_path / "b", resume=True, progress=False)
    assert resumed["iteration"] == 20
    a = torch.load(straight["checkpoint"], weights_only=False)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [r["train_loss"] for r in _log(tmp_path / "a")] == [r["train_loss"] for r in _log(tmp_path / "b")]


def test_swa_averages_snapshots_resumes_exactly_and_is_what_loads(tmp_path: Path) -> None:
    """SWA from 40 % of the schedule, every 5 iterations of 20: the average of the weights at 10, 15
    and 20 (snapshots taken by resuming a copy), kept across a resume, and what the export loads."""
    text = SEGMENTATION.format(sampler="uniform", iterations=20, val_every=20)
    config = _config(tmp_path, text.replace("threads = 1", "threads = 1\nswa_start = 0.4\nswa_every = 5"))
    snapshots = []
    for stop in (10, 15, 20):
        part = train(config, out=tmp_path / "steps", max_iterations=stop, resume=True, progress=False)
        snapshots.append(torch.load(part["checkpoint"], weights_only=False)["state_dict"])
    state = torch.load(part["checkpoint"], weights_only=False)
    assert state["swa_averaged"] == 3
    straight = torch.load(train(config, out=tmp_path / "straight", progress=False)["checkpoint"], weights_only=False)
    model, _ = load_trained_model(part["checkpoint"])
    for key, value in model.state_dict().items():
        mean = sum(s[key] for s in snapshots) / 3
        torch.testing.assert_close(value, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(straight["swa_state_dict"][key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(state["state_dict"]["head.weight"], state["swa_state_dict"]["head.weight"])


@pytest.mark.parametrize("name", ["shufflenet_v2", "squeezenet"])
def test_classifier_loss_falls(tmp_path: Path, name: str) -> None:
    config = _config(tmp_path, CLASSIFICATION.format(name=name, iterations=30))
    result = train(config, out=tmp_path / "out", progress=False)
    rows = _log(tmp_path / "out")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0 and "recall_apex" in result["metrics"]


def test_classification_metrics_against_hand_counts() -> None:
    target = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    predicted = np.array([0, 0, 1, 1, 1, 2, 2, 3, 2, 0])
    m = classification_metrics(predicted, target)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision_non-cardiac"] == pytest.approx(2 / 3) and m["recall_non-cardiac"] == pytest.approx(2 / 3)
    assert m["precision_base"] == pytest.approx(2 / 3) and m["recall_middle"] == pytest.approx(3 / 4)
    assert m["precision_apex"] == 0.0
    assert m["recall"] == pytest.approx(m["accuracy"])  # support-weighted recall is accuracy


def test_bad_configuration_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 3\n")
    with pytest.raises(ReadError, match="key 'epochs' of \\[train\\] is unknown"):
        load_config(path)
    path.write_text('[experiment]\ntask = "detection"\n')
    with pytest.raises(ReadError, match="'task' is 'detection'"):
        load_config(path)
    config = _config(tmp_path, SEGMENTATION.format(sampler="gaussian", iterations=2, val_every=2))
    with pytest.raises(InputError, match="\\[sampler\\] 'kind' is 'gaussian'"):
        train(config, out=tmp_path / "out", progress=False)
    config = _config(tmp_path, SEGMENTATION.format(sampler="uniform", iterations=2, val_every=2))
    config["train"]["slice_dice"] = 1.5
    with pytest.raises(InputError, match="\\[train\\] 'slice_dice' is 1.5"):
        train(config, out=tmp_path / "out", progress=False)
    config["train"]["slice_dice"], config["train"]["crop"] = 0.0, "centre"
    with pytest.raises(InputError, match="\\[train\\] 'crop' must be \"random\" or \"heart\", got 'centre'"):
        train(config, out=tmp_path / "out", progress=False)
    config["train"]["crop"], config["train"]["heart_jitter"] = "heart", -4
    with pytest.raises(InputError, match="'heart_jitter' must be a number of pixels >= 0, got -4"):
        train(config, out=tmp_path / "out", progress=False)


def test_every_shipped_configuration_loads() -> None:
    configs = sorted((REPO_ROOT / "export" / "configs").glob("*.toml"))
    assert len(configs) >= 19
    for path in configs:
        config = load_config(path)
        assert config["experiment"]["name"] == path.stem


def test_torchrun_two_gloo_processes(tmp_path: Path) -> None:
    (tmp_path / "ddp.toml").write_text(SEGMENTATION.format(sampler="uniform", iterations=2, val_every=2))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "export.train",
            str(tmp_path / "ddp.toml"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "done: iteration 2" in done.stdout
    state = torch.load(tmp_path / "out" / "last.pt", weights_only=False)
    assert len(state["sampler"]) == 2 and state["sampler"][0] != state["sampler"][1]


def test_unreadable_checkpoint_raises(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ReadError, match="cannot be read as a training checkpoint"):
        load_trained_model(path)
    torch.save({"weights": 1}, path)
    with pytest.raises(ReadError, match="is not an export.train checkpoint"):
        load_trained_model(path)


def test_a_finished_schedule_is_not_restarted_by_resume(tmp_path: Path) -> None:
    config = _config(tmp_path, SEGMENTATION.format(sampler="uniform", iterations=40, val_every=40))
    first = train(config, out=tmp_path / "out", progress=False, time_budget=1e-3)
    assert first["iteration"] == 1  # out of time after the first step: annealed, validated, saved
    state = torch.load(first["checkpoint"], weights_only=False)
    assert state["finished"] and state["iteration"] == 1
    rows = _log(tmp_path / "out")
    again = train(config, out=tmp_path / "out", resume=True, progress=False)
    assert again["iteration"] == 1 and _log(tmp_path / "out") == rows


def test_mixed_precision_choices() -> None:
    from contextlib import nullcontext

    from export.train import _autocast

    bf16 = _autocast("bf16", torch.device("cpu"))
    assert isinstance(bf16, torch.autocast) and bf16.fast_dtype == torch.bfloat16
    assert isinstance(_autocast("off", torch.device("cpu")), nullcontext)
    with bf16:
        y = torch.nn.functional.conv2d(torch.randn(1, 1, 8, 8), torch.randn(2, 1, 3, 3))
    assert y.dtype == torch.bfloat16
    with pytest.raises(InputError, match="'amp'"):
        _autocast("int8", torch.device("cpu"))


def test_schedule_steps_poly_learning_rate_and_time_budget() -> None:
    import time

    from export.train import _learning_rate, _schedule_progress

    sgd = {"optimizer": "sgd", "lr": 0.01, "poly_power": 0.9}
    assert _learning_rate(sgd, 0.0) == pytest.approx(0.01)
    assert _learning_rate(sgd, 0.5) == pytest.approx(0.01 * 0.5**0.9)
    assert _learning_rate(sgd, 1.0) == 0.0
    assert _learning_rate({"optimizer": "adam", "lr": 3e-4, "poly_power": 0.9}, 0.7) == pytest.approx(3e-4)
    assert _schedule_progress(1, 100, None, None) == 0.0
    assert _schedule_progress(51, 100, None, None) == pytest.approx(0.5)
    # half the time budget gone at iteration 11 of 100: the time fraction leads
    deadline = time.perf_counter() + 50.0
    assert _schedule_progress(11, 100, deadline, 100.0) == pytest.approx(0.5, abs=0.01)
    assert _schedule_progress(11, 100, time.perf_counter() - 1.0, 100.0) == 1.0  # past the deadline: capped


def test_warm_start_from_a_bundle_archive(tmp_path: Path) -> None:
    """`init` may name a bundle's TorchScript archive: a machine with only the repository continues
    from the shipped models; an archive of another architecture is refused naming the file."""
    from export.bundle import ProbabilityModel
    from export.models import get_model
    from export.train import _warm_start

    torch.manual_seed(0)
    shipped = get_model("unet", features=[8, 16, 32], deep_supervision=True).eval()
    path = tmp_path / "baseline.pt"
    torch.jit.trace(ProbabilityModel(shipped), torch.zeros(1, 1, 32, 32)).save(str(path))
    torch.manual_seed(1)
    net = get_model("unet", features=[8, 16, 32], deep_supervision=True)
    _warm_start(net, path, torch.device("cpu"))
    for key, value in shipped.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    with pytest.raises(ReadError, match="do not fit"):
        _warm_start(get_model("unet", features=[8, 16], deep_supervision=True), path, torch.device("cpu"))


def test_a_2d_archive_warm_starts_its_2_5d_twin_as_the_same_function(tmp_path: Path) -> None:
    """The widened first convolution reads the centre channel with the 2D weights and the
    neighbours with zeros: whatever the neighbours hold, the twin answers as the 2D model did."""
    from export.bundle import ProbabilityModel
    from export.models import get_model
    from export.train import _warm_start

    torch.manual_seed(0)
    flat = get_model("unet", features=[8, 16, 32], deep_supervision=True).eval()
    path = tmp_path / "baseline.pt"
    torch.jit.trace(ProbabilityModel(flat), torch.zeros(1, 1, 32, 32)).save(str(path))
    twin = get_model("unet", in_channels=3, features=[8, 16, 32], deep_supervision=True).eval()
    _warm_start(twin, path, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(twin(x), flat(x[:, 1:2]), rtol=1e-5, atol=1e-5)
    first = next(m for m in twin.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert first.shape[1] == 3 and not first[:, 0].any() and not first[:, 2].any() and first[:, 1].abs().sum() > 0


def test_a_2_5d_unet_trains_on_stack_neighbours(tmp_path: Path) -> None:
    """[data] context = 1 feeds (B, 3, h, w) batches to a U-Net with in_channels 3; the checkpoint
    records the context; a context the model cannot read is refused naming both keys."""
    text = SEGMENTATION.format(sampler="uniform", iterations=10, val_every=10)
    text = text.replace("synthetic_slices = 48", "synthetic_slices = 48\ncontext = 1")
    config = _config(tmp_path, text.replace("kwargs = { features", "kwargs = { in_channels = 3, features"))
    result = train(config, out=tmp_path / "out", progress=False)
    assert result["iteration"] == 10 and 0.0 <= result["metrics"]["dice_mean"] <= 1.0
    model, meta = load_trained_model(result["checkpoint"])
    assert meta["preprocessing"]["context"] == 1
    assert model(torch.zeros(1, 3, 48, 48)).shape == (1, 4, 48, 48)
    with pytest.raises(InputError, match=r"'in_channels' is 1, but \[data\] 'context' 1 feeds 3 channels"):
        train(_config(tmp_path, text, "flat"), out=tmp_path / "flat", progress=False)


def test_without_flips_the_bundle_knows_its_unet_is_side_aware(tmp_path: Path) -> None:
    from cmrsdk.bundle import load_bundle
    from export.bundle import main as bundle_main
    from export.train import augment_config

    spec = dict(load_config(REPO_ROOT / "export" / "configs" / "bundle_baseline.toml")["train"])
    assert augment_config(spec).p_mirror == 0.5
    spec["mirror"] = False
    unflipped = augment_config(spec)
    assert unflipped.p_mirror == 0.0 and unflipped.p_contrast == 0.3 and unflipped.p_rotation == 0.2
    spec["mirror"] = "no"
    with pytest.raises(InputError, match="\\[train\\] 'mirror' must be true or false, got 'no'"):
        augment_config(spec)
    # trained so, the run's configuration travels into the bundle, where the pipeline reads it
    for mirror in (False, True):
        config = _config(tmp_path, SEGMENTATION.format(sampler="uniform", iterations=2, val_every=2))
        config["train"]["mirror"] = mirror
        result = train(config, out=tmp_path / f"run_{mirror}", progress=False)
        out = tmp_path / f"bundle_{mirror}"
        assert (
            bundle_main(["--checkpoints", f"baseline={result['checkpoint']}", "--formats", "onnx", "-o", str(out)]) == 0
        )
        assert load_bundle(out).models["baseline"].side_aware is (not mirror)
