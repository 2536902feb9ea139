"""Train a segmentation U-Net or a slice-region classifier from a TOML configuration.

Command line::

    python -m export.train CONFIG [--resume | --resume-or-start] [--max-iterations N] [--out DIR]
        [--device cpu|cuda]
    torchrun --nproc_per_node 2 -m export.train CONFIG        # DistributedDataParallel

Every relative path in a configuration is taken from the repository root (the folder above
``export/``), so the command works from any directory. See ``export/configs/*.toml`` and
``export/README.md`` for the keys. Outputs, in the run directory:

- ``last.pt``: checkpoint, written every ``checkpoint_every`` iterations and at the end,
  atomically (temporary file + rename); ``--resume`` continues from it exactly (model,
  optimiser, AMP scaler, sampler and augmentation generators). A run directory that holds one
  is never overwritten: without ``--resume`` the command refuses it, and ``--resume`` refuses a
  directory without one (``--resume-or-start`` starts there instead, for recipes run again).
- with ``[train] swa_start`` below 1: the checkpoint also holds the stochastic weight average
  (Izmailov et al. 2018, ``torch.optim.swa_utils.AveragedModel``) of the weights taken every
  ``swa_every`` iterations from that fraction of the schedule on; :func:`load_trained_model`
  and the export use the average. SWA widens the minimum the run ends in, which is what
  carries to scanners and vendors the training set lacks.
- ``log.csv``: iteration, learning rate, mean training loss and seconds per iteration since
  the previous row, and validation Dice per label (segmentation) or accuracy, weighted and
  per-class precision / recall (classification) where a validation ran.

Segmentation: Dice + cross-entropy with deep supervision, SGD (Nesterov), polynomial decay,
random patches with augmentation. Classification: cross-entropy (class-weighted as an
option), Adam, whole slices with augmentation. The forward pass runs in mixed precision
(``[train] amp``, default "auto"): float16 autocast with a gradient scaler on CUDA, bfloat16
autocast on a CPU with native bf16 (about half the step time here), float32 elsewhere. Under torchrun each process draws ``batch_size /
world_size`` slices per iteration with its own sampler seed; the gloo backend is used on CPU.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import pickle
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is the standard library's copy of tomli (3.11+)
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "export.train reads TOML configurations: on Python 3.10 it needs the package 'tomli' "
            "(pip install tomli); Python 3.11 and later have it built in (tomllib)",
            name="tomli",
        ) from None

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cmrsdk.errors import CmrError, InputError, ReadError
from cmrsdk.labels import LABEL_NAMES, REGION_NAMES, STRUCTURES

from .augment import AugmentConfig, augment_batch, crop_centres
from .data import SliceSet, concatenate, open_cache, synthetic_slices, synthetic_study_slices, training_subset
from .losses import DeepSupervisionLoss, DiceCELoss
from .models import UNet, get_model
from .models.grow import grow_unet_weights
from .samplers import SliceSampler, favour_non_cardiac, region_weights, uniform_weights

__all__ = [
    "REPO_ROOT",
    "DEFAULTS",
    "load_config",
    "run_directory",
    "train",
    "load_trained_model",
    "export_weights",
    "main",
]

#: the repository root; relative paths in configurations are taken from here.
REPO_ROOT = Path(__file__).resolve().parents[1]

#: every configuration key and its default; a configuration overrides some of them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {"name": "", "task": "segmentation", "seed": 0},
    "data": {
        "source": "acdc",
        "root": "../shared/data/acdc",
        "cache": "cache/acdc_224",
        "size": 224,
        "normalization": "robust_zscore",
        "test_every": 5,
        "val_fraction": 0.15,
        "split_seed": 0,
        "regions": [0, 1, 2, 3],
        "synthetic_slices": 64,
        "synthetic_studies": 0,
        "train_patients": 0,  # > 0: only so many training patients (export.data.training_subset), 0: all
        "context": 0,  # 2.5D: stack neighbours each side fed as channels; [model] in_channels = 2 context + 1
    },
    "model": {"name": "unet", "kwargs": {}},
    "sampler": {"kind": "uniform", "p_min": 1.0, "p_max": 20.0, "foreground_fraction": 0.33, "non_cardiac_weight": 1.0},
    "train": {
        "iterations": 1000,
        "batch_size": 16,
        "patch": 128,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.99,
        "weight_decay": 3e-5,
        "poly_power": 0.9,
        "grad_clip": 12.0,
        "class_weighted": False,
        "augment": True,
        # false: no flips, so the network may learn the RV's side of the septum; every stack in
        # ../shared is stored in the radiological view (seen from the apex, RV on the image left)
        # and the pipeline flips a stack whose scanner orientation says otherwise (cmrsdk.chirality)
        "mirror": True,
        "checkpoint_every": 100,
        "val_every": 250,
        "val_max_slices": 600,
        "val_batch": 16,
        "threads": 0,
        "out": "",
        "init": "",
        "amp": "auto",
        "swa_start": 1.0,  # fraction of the schedule from which weights are averaged; 1 = no SWA
        "swa_every": 50,
        "slice_dice": 0.0,  # share of the Dice term given to per-slice Dice (the evaluated metric)
        # "random": patches not forced to foreground are placed anywhere in the window (nnU-Net);
        # "heart": centred on their stack's heart, moved by up to heart_jitter pixels per axis,
        # as the pipeline's heart crop shows every slice to the U-Net (segmentation only)
        "crop": "random",
        "heart_jitter": 16.0,
    },
}


def augment_config(spec: dict[str, Any]) -> AugmentConfig:
    """The augmentation a ``[train]`` section asks for: the scheme ``augment`` names, without
    flips where ``mirror`` is false."""
    augment = AugmentConfig.named(spec["augment"])
    if not isinstance(spec["mirror"], bool):
        raise InputError(f"[train] 'mirror' must be true or false, got {spec['mirror']!r}")
    return augment if spec["mirror"] else dataclasses.replace(augment, p_mirror=0.0)


def _heart_crops(spec: dict[str, Any], task: str, slices: SliceSet) -> tuple[torch.Tensor | None, float]:
    """``[train] crop``: float64 (N, 2) heart centres of the training slices and the jitter in
    pixels for "heart", (None, 0) for "random"."""
    crop, jitter = spec["crop"], spec["heart_jitter"]
    if crop not in ("random", "heart"):
        raise InputError(f'[train] \'crop\' must be "random" or "heart", got {crop!r}')
    if not isinstance(jitter, (int, float)) or isinstance(jitter, bool) or not jitter >= 0:
        raise InputError(f"[train] 'heart_jitter' must be a number of pixels >= 0, got {jitter!r}")
    if crop == "random" or task != "segmentation":
        return None, 0.0
    return torch.from_numpy(slices.heart_centres()), float(jitter)


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML configuration and fill in :data:`DEFAULTS`.

    Raises
    ------
    ReadError : the file is missing or not TOML, or names a section or key that does not exist.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ReadError(path, f"cannot be read as a TOML configuration: {exc}") from exc
    config = {section: dict(values) for section, values in DEFAULTS.items()}
    for section, values in raw.items():
        if section not in DEFAULTS or not isinstance(values, dict):
            raise ReadError(path, f"section [{section}] is unknown, expected one of {sorted(DEFAULTS)}")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ReadError(
                    path, f"key '{key}' of [{section}] is unknown, expected one of {sorted(DEFAULTS[section])}"
                )
            config[section][key] = value
    task = config["experiment"]["task"]
    if task not in ("segmentation", "classification"):
        raise ReadError(path, f"[experiment] 'task' is {task!r}, expected 'segmentation' or 'classification'")
    if not config["experiment"]["name"]:
        config["experiment"]["name"] = path.stem
    return config


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


def run_directory(config: dict[str, dict[str, Any]], out: str | Path | None = None) -> Path:
    """The run directory `train` writes: ``out``, else [train] 'out', else ``runs/<experiment name>``
    (relative paths from the repository root)."""
    return _resolve(out or config["train"]["out"] or f"runs/{config['experiment']['name']}")


def _check_sizes(config: dict[str, dict[str, Any]]) -> None:
    """Refuse a [data] 'size' or [train] 'patch' that a segmentation U-Net's strides do not divide
    (its skip connections would not line up: a torch error at the first validation), before any data
    is read; names the key and the nearest valid values."""
    if config["experiment"]["task"] != "segmentation":
        return
    net = get_model(config["model"]["name"], **dict(config["model"]["kwargs"]))
    divisor = getattr(net, "divisor", None)
    if not isinstance(divisor, int) or divisor <= 1:
        return
    for section, key in (("data", "size"), ("train", "patch")):
        value = config[section][key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(f"[{section}] '{key}' must be a whole number of pixels > 0, got {value!r}")
        if value % divisor:
            below, above = max(divisor, value // divisor * divisor), (value // divisor + 1) * divisor
            nearest = f"{below} or {above}" if below != above else str(above)
            raise InputError(
                f"[{section}] '{key}' is {value}: the U-Net's {len(net.features)} stages (features "
                f"{list(net.features)}) need a multiple of {divisor}; nearest valid: {nearest}"
            )


# -- distributed ------------------------------------------------------------------------------------


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class _DeepSupervised(nn.Module):
    """Routes ``forward`` to ``UNet.forward_all`` so DDP's gradient hooks see every output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.forward_all(x)


# -- data ---------------------------------------------------------------------------------------------


def _datasets(config: dict[str, dict[str, Any]], rank: int) -> tuple[SliceSet, SliceSet]:
    """(train, validation) slices, loaded into memory, restricted to the configured regions."""
    data = config["data"]
    if data["source"] == "synthetic":
        slices = synthetic_slices(
            int(data["synthetic_slices"]), size=int(data["size"]), seed=int(config["experiment"]["seed"])
        )
        cases = np.unique(slices.cases)
        val_cases = cases[-max(1, len(cases) // 4) :]
        slices = slices.with_context(int(data["context"]))
        train_set = slices.select(cases=[c for c in cases if c not in val_cases])
        val_set = slices.select(cases=val_cases)
    elif data["source"] == "acdc":
        kwargs = dict(
            size=int(data["size"]),
            normalization=data["normalization"],
            test_every=int(data["test_every"]),
            val_fraction=float(data["val_fraction"]),
            seed=int(data["split_seed"]),
        )
        # rank 0 builds the cache; the others wait for it, then read it
        if rank == 0:
            slices = open_cache(_resolve(data["root"]), _resolve(data["cache"]), **kwargs)
        if dist.is_initialized():
            dist.barrier()
        if rank != 0:
            slices = open_cache(_resolve(data["root"]), _resolve(data["cache"]), **kwargs)
        splits = dict(slices.meta["splits"])
        subset = data["train_patients"]
        if not isinstance(subset, int) or isinstance(subset, bool) or subset < 0:
            raise InputError(f"[data] 'train_patients' must be a whole number >= 0 (0: all), got {subset!r}")
        if subset > 0:
            # the learning curve: the split's validation patients kept, fewer training patients
            splits["train"] = training_subset(splits["train"], subset, seed=int(data["split_seed"]))
        # neighbours come from the whole stack, before the regions are selected
        slices = slices.with_context(int(data["context"]))
        train_set, val_set = slices.select(cases=splits["train"]), slices.select(cases=splits["val"])
        if int(data.get("synthetic_studies", 0)) > 0:
            # the phantom of cmrsdk.synth (the embedded example's kind of image) mixed into training only
            synthetic = synthetic_study_slices(
                int(data["synthetic_studies"]),
                target_spacing=tuple(slices.meta["target_spacing"]),
                size=int(data["size"]),
                normalization=data["normalization"],
            ).with_context(int(data["context"]))
            train_set = concatenate(train_set, synthetic)
    else:
        raise InputError(f"[data] 'source' is {data['source']!r}, expected 'acdc' or 'synthetic'")
    if config["experiment"]["task"] == "segmentation":
        train_set = train_set.select(regions=data["regions"])
        val_set = val_set.select(regions=data["regions"])
    # val_fraction = 0 is the final recipe's run on every non-test patient: no validation set
    wants_val = data["source"] != "acdc" or float(data["val_fraction"]) > 0
    if len(train_set) == 0 or (wants_val and len(val_set) == 0):
        raise InputError(
            f"[data] 'regions' {data['regions']} leave {len(train_set)} training and "
            f"{len(val_set)} validation slices; both must be non-empty"
        )
    return train_set, val_set


def _sampler(config: dict[str, dict[str, Any]], slices: SliceSet, seed: int) -> SliceSampler:
    spec = config["sampler"]
    if spec["kind"] == "uniform":
        weights = uniform_weights(len(slices))
    elif spec["kind"] == "region":
        weights = region_weights(
            slices.regions, slices.positions, p_min=float(spec["p_min"]), p_max=float(spec["p_max"])
        )
    else:
        raise InputError(f"[sampler] 'kind' is {spec['kind']!r}, expected 'uniform' or 'region'")
    if float(spec["non_cardiac_weight"]) != 1.0:
        weights = favour_non_cardiac(weights, slices.regions, float(spec["non_cardiac_weight"]))
    fraction = float(spec["foreground_fraction"]) if config["experiment"]["task"] == "segmentation" else 0.0
    if fraction > 0 and not slices.has_foreground.any():
        fraction = 0.0  # a non-cardiac-only set has nothing to force
    return SliceSampler(weights, has_foreground=slices.has_foreground, foreground_fraction=fraction, seed=seed)


# -- evaluation ------------------------------------------------------------------------------------


@torch.no_grad()
def _predict(model: nn.Module, images: np.ndarray, device: torch.device, batch: int) -> torch.Tensor:
    """Logits of ``model`` over float32 (N, H, W) slices or (N, C, H, W) 2.5D slices, on the CPU."""
    outputs = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch]))
        x = (x if x.ndim == 4 else x[:, None]).to(device)
        with torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext():
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs)


def segmentation_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Dice per structure, pooled over all slices (sum of overlaps / sum of sizes), in [0, 1].

    predicted, target : int64 (N, H, W) labels. A structure absent from both scores NaN.
    """
    metrics: dict[str, float] = {}
    for label in STRUCTURES:
        p, t = predicted == label, target == label
        denominator = int(p.sum() + t.sum())
        metrics[f"dice_{LABEL_NAMES[label]}"] = 2 * int((p & t).sum()) / denominator if denominator else math.nan
    metrics["dice_mean"] = float(np.nanmean([metrics[f"dice_{LABEL_NAMES[s]}"] for s in STRUCTURES]))
    return metrics


def classification_metrics(predicted: np.ndarray, target: np.ndarray, num_classes: int = 4) -> dict[str, float]:
    """Accuracy, per-class and support-weighted precision and recall (the paper's averages).

    predicted, target : int (N,) class indices. A class never predicted has precision 0.
    """
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (target, predicted), 1)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(np.diag(confusion) / confusion.sum(0))
        recall = np.nan_to_num(np.diag(confusion) / support)
    weights = support / max(support.sum(), 1)
    metrics = {
        "accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
        "precision": float((precision * weights).sum()),
        "recall": float((recall * weights).sum()),
    }
    for c in range(num_classes):
        metrics[f"precision_{REGION_NAMES.get(c, c)}"] = float(precision[c])
        metrics[f"recall_{REGION_NAMES.get(c, c)}"] = float(recall[c])
    return metrics


def _validate(
    task: str, model: nn.Module, val_set: SliceSet, device: torch.device, train: dict[str, Any]
) -> dict[str, float]:
    # a fixed, evenly spaced subset keeps validation cheap and comparable between rows
    index = np.linspace(0, len(val_set) - 1, min(len(val_set), int(train["val_max_slices"]))).round().astype(int)
    index = np.unique(index)
    was_training = model.training
    model.eval()
    logits = _predict(model, val_set.images[index], device, int(train["val_batch"]))
    model.train(was_training)
    if task == "segmentation":
        target = torch.from_numpy(np.asarray(val_set.labels[index])).long()
        metrics = {"loss": float(DiceCELoss()(logits, target))}
        metrics.update(segmentation_metrics(logits.argmax(1), target))
    else:
        target = torch.from_numpy(val_set.regions[index].astype(np.int64))
        metrics = {"loss": float(F.cross_entropy(logits, target))}
        metrics.update(classification_metrics(logits.argmax(1).numpy(), target.numpy()))
    return metrics


# -- checkpoints -------------------------------------------------------------------------------------


def _autocast(name: str, device: torch.device) -> Any:
    """The forward pass's mixed precision: "auto" (float16 on CUDA, bfloat16 on a CPU with native
    bf16 instructions, else float32), "fp16", "bf16" or "off".

    Measured on an AVX512-BF16 CPU, bf16 autocast halves a U-Net training step; float16 on CUDA
    keeps the gradient scaler, bf16 needs none (float32's exponent range).
    """
    if name == "auto":
        if device.type == "cuda":
            name = "fp16"
        else:
            name = "bf16" if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else "off"
    if name == "off":
        return nullcontext()
    if name not in ("fp16", "bf16"):
        raise InputError(f"[train] 'amp' is {name!r}, expected 'auto', 'fp16', 'bf16' or 'off'")
    return torch.autocast(device.type, dtype=torch.float16 if name == "fp16" else torch.bfloat16)


def _cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


#: what a training checkpoint holds only to resume training: dropped from its weights-only forms
_RESUME_STATE = ("optimizer", "scaler", "sampler", "rng", "swa_state_dict")


def _weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights to deploy: the stochastic weight average once one was taken."""
    return state.get("swa_state_dict") or state["state_dict"]


def load_trained_model(path: str | Path, *, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a checkpoint, in eval mode, and the checkpoint's metadata.

    Returns
    -------
    (model, meta): ``model`` built with ``get_model(meta["model"]["name"], **meta["model"]["kwargs"])``;
    ``meta`` has "task", "model", "iteration", "config", "preprocessing" (target_spacing (dy, dx)
    mm, size, normalization) and "metrics" (the last validation).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ReadError(path, f"cannot be read as a training checkpoint: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state or "state_dict" not in state:
        raise ReadError(path, "is not an export.train checkpoint (no 'model' / 'state_dict' entries)")
    model = get_model(state["model"]["name"], **state["model"]["kwargs"])
    model.load_state_dict(_weights(state))
    model.eval()
    dropped = ("state_dict", "swa_state_dict", "optimizer", "scaler", "sampler", "rng")
    meta = {k: v for k, v in state.items() if k not in dropped}
    return model, meta


def export_weights(checkpoint: str | Path, target: str | Path, *, dtype: torch.dtype = torch.float16) -> int:
    """Write the weights-only form of a training checkpoint; returns its size in bytes.

    Keeps what :func:`load_trained_model` reads (model, config, preprocessing, metrics,
    iteration) and drops the optimiser, sampler and generator states. Floating-point tensors
    are stored as ``dtype`` (float16 halves the size, for carrying runs off a GPU machine);
    ``load_state_dict`` casts them back to the model's float32 on loading.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    slim = {k: v for k, v in state.items() if k not in _RESUME_STATE}
    weights = _weights(state)
    slim["state_dict"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    slim["weights_dtype"] = str(dtype).removeprefix("torch.")
    target = Path(target)
    _save_checkpoint(target, slim)
    return target.stat().st_size


def average_weights(
    checkpoints: Sequence[str | Path], target: str | Path, *, dtype: torch.dtype = torch.float16
) -> int:
    """Write the element-wise mean of several checkpoints' weights; returns its size in bytes.

    For the ends of annealed cycles of one run (a warm restart and its init): one basin, where
    the mean generalises better than either end (Izmailov et al. 2018). The checkpoints must
    share the model (name, kwargs) and every tensor's shape; the means are taken in float64 and
    stored as ``dtype``. The result keeps the first checkpoint's metadata, with "averaged_from"
    (the paths) and "iteration" the sum of theirs; integer tensors must agree and are kept.
    """
    if len(checkpoints) < 2:
        raise InputError(f"average_weights needs at least two checkpoints, got {len(checkpoints)}")
    states = []
    for path in checkpoints:
        try:
            states.append(torch.load(path, map_location="cpu", weights_only=False))
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise ReadError(Path(path), f"cannot be read as a training checkpoint: {exc}") from exc
    first = states[0]
    for path, state in zip(checkpoints[1:], states[1:]):
        if state.get("model") != first.get("model"):
            raise InputError(f"{path}: model {state.get('model')} differs from {checkpoints[0]}'s {first.get('model')}")
    weights = [_weights(state) for state in states]
    mean: dict[str, torch.Tensor] = {}
    for name, tensor in weights[0].items():
        others = [w[name] for w in weights[1:]]
        if any(o.shape != tensor.shape for o in others):
            raise InputError(f"weight {name!r}: shapes {[tuple(w[name].shape) for w in weights]} differ")
        if tensor.is_floating_point():
            mean[name] = torch.stack([w[name].double() for w in weights]).mean(0).to(dtype)
        elif all(torch.equal(o, tensor) for o in others):
            mean[name] = tensor
        else:
            raise InputError(f"integer tensor {name!r} differs between the checkpoints")
    slim = {k: v for k, v in first.items() if k not in _RESUME_STATE}
    slim["state_dict"] = mean
    slim["weights_dtype"] = str(dtype).removeprefix("torch.")
    slim["averaged_from"] = [str(p) for p in checkpoints]
    slim["iteration"] = sum(int(s.get("iteration", 0)) for s in states)
    target = Path(target)
    _save_checkpoint(target, slim)
    return target.stat().st_size


def average_grown(narrow: str | Path, wide: str | Path, target: str | Path) -> int:
    """Write the mean of a U-Net and its grown, retrained twin (float16); returns its size in bytes.

    ``narrow`` is a training checkpoint or a bundle's TorchScript model; ``wide`` the training
    checkpoint of the wider U-Net that started as ``narrow`` grown (`export.models.grow`). Grown,
    ``narrow`` computes its function whatever the weights that feed only a zeroed norm; growing it
    into ``wide``'s own weights takes those from ``wide``, so the mean (:func:`average_weights`,
    with ``wide``'s metadata) is the midpoint between ``wide`` and the point of ``narrow``'s
    function nearest to it: old weights averaged, the new channels' norm scale and shift halved.
    """
    state = torch.load(wide, map_location="cpu", weights_only=False)
    own = {k: v.float() for k, v in _weights(state).items()}
    grown = grow_unet_weights({k: v.float() for k, v in _model_weights(Path(narrow)).items()}, own)
    with tempfile.TemporaryDirectory() as tmp:
        twin = Path(tmp) / "narrow_grown.pt"
        _save_checkpoint(twin, {**{k: v for k, v in state.items() if k != "swa_state_dict"}, "state_dict": grown})
        return average_weights([twin, wide], target)


# -- training --------------------------------------------------------------------------------------------


def _log_fields(task: str) -> list[str]:
    common = ["iteration", "lr", "train_loss", "seconds_per_iteration", "val_loss"]
    if task == "segmentation":
        return common + [f"val_dice_{LABEL_NAMES[s]}" for s in STRUCTURES] + ["val_dice_mean"]
    regions = [REGION_NAMES[r] for r in sorted(REGION_NAMES)]
    return (
        common
        + ["val_accuracy", "val_precision", "val_recall"]
        + [f"val_{kind}_{r}" for r in regions for kind in ("precision", "recall")]
    )


def _open_log(path: Path, fields: list[str], start: int) -> None:
    """Create the CSV log, or on resume keep only the rows up to iteration ``start``."""
    rows: list[dict[str, str]] = []
    if start > 0 and path.is_file():
        with path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["iteration"]) <= start]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


# -- the steps of train -----------------------------------------------------------------------


def _setup_device(device: str, threads: int) -> tuple[torch.device, int, int]:
    """The torch device of this process, its rank and the world size (1 unless under torchrun)."""
    if device not in ("cpu", "cuda"):
        raise InputError(f"'device' must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("'device' is 'cuda' but torch sees no CUDA device here")
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch and patch shapes: pick the fastest kernels once
    rank, world = _distributed(torch_device)
    if world > 1 and device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch_device = torch.device("cuda", local)
        torch.cuda.set_device(torch_device)
    if threads > 0:
        torch.set_num_threads(threads)
    return torch_device, rank, world


def _build_model(
    name: str, kwargs: dict[str, Any], task: str, device: torch.device, world: int
) -> tuple[nn.Module, nn.Module, bool]:
    """(the network, what the loop trains: it wrapped for deep supervision and DDP, deep supervision on)."""
    net = get_model(name, **kwargs).to(device)
    deep = task == "segmentation" and bool(getattr(net, "deep_supervision", False))
    trainable: nn.Module = _DeepSupervised(net) if deep else net
    if world > 1:
        trainable = nn.parallel.DistributedDataParallel(
            trainable, device_ids=[device.index] if device.type == "cuda" else None
        )
    return net, trainable, deep


def _optimizer(spec: dict[str, Any], net: nn.Module) -> torch.optim.Optimizer:
    """[train] 'optimizer': SGD with Nesterov momentum (the U-Nets) or Adam (the classifiers)."""
    if spec["optimizer"] == "sgd":
        return torch.optim.SGD(
            net.parameters(),
            lr=float(spec["lr"]),
            momentum=float(spec["momentum"]),
            nesterov=True,
            weight_decay=float(spec["weight_decay"]),
        )
    if spec["optimizer"] == "adam":
        return torch.optim.Adam(net.parameters(), lr=float(spec["lr"]), weight_decay=float(spec["weight_decay"]))
    raise InputError(f"[train] 'optimizer' is {spec['optimizer']!r}, expected 'sgd' or 'adam'")


def _criterion(
    task: str, deep: bool, class_weighted: bool, regions: np.ndarray, device: torch.device, slice_dice: float = 0.0
) -> nn.Module:
    """The loss: Dice + cross-entropy for segmentation (``slice_dice`` of the Dice term per slice),
    cross-entropy (optionally class-weighted by the inverse frequency of ``regions``, int (N,)
    region codes) for the classifier."""
    if task == "segmentation":
        if not 0.0 <= slice_dice <= 1.0:
            raise InputError(f"[train] 'slice_dice' is {slice_dice}, expected a value in [0, 1]")
        return DeepSupervisionLoss(slice_dice) if deep else DiceCELoss(slice_dice)
    class_weights = None
    if class_weighted:
        counts = np.bincount(regions, minlength=4).astype(np.float64)
        # inverse frequency, normalised to mean 1 (the paper found this hurts; kept to show it)
        inverse = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
        class_weights = torch.tensor(inverse / inverse[counts > 0].mean(), dtype=torch.float32, device=device)
    return nn.CrossEntropyLoss(weight=class_weights)


def _warm_start(net: nn.Module, init_path: Path, device: torch.device) -> None:
    """Fine-tuning: load another run's weights into ``net`` (fresh optimiser and schedule).

    A U-Net may be wider than the one that trained them: `export.models.grow` places them so that
    it starts as the same function; a 2D model's weights start its 2.5D twin (`_widen_inputs`).

    ``init_path`` is a training checkpoint (its weight average where it has one) or a bundle's
    TorchScript archive (``<bundle>/<model>.pt``: the network inside its softmax wrapper), so a
    machine that has only the repository can continue from the shipped models.
    """
    if not init_path.is_file():
        raise ReadError(init_path, "[train] 'init' checkpoint not found: train that run first")
    weights = _model_weights(init_path, device)
    target = net.state_dict()
    weights = _widen_inputs(weights, target)
    if isinstance(net, UNet) and any(k in target and v.shape != target[k].shape for k, v in weights.items()):
        try:
            weights = grow_unet_weights(weights, target)  # a wider twin: the same function at first
        except InputError as exc:
            raise ReadError(init_path, f"its weights do not fit [model] ({exc})") from exc
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        raise ReadError(init_path, f"its weights do not fit [model] ({str(exc).splitlines()[0]})") from exc


def _model_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The network weights of a training checkpoint or of a bundle's TorchScript archive."""
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        from cmrsdk.engines.torchscript import quiet_torchscript

        with quiet_torchscript():
            archive = torch.jit.load(str(path), map_location=device)
        return {k.removeprefix("net."): v for k, v in archive.state_dict().items()}
    return _weights(torch.load(path, map_location=device, weights_only=False))


def _widen_inputs(weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 2D model's weights for its 2.5D twin: a first convolution (O, 1, k, k) becomes (O, C, k, k)
    with the weights on the centre channel (the slice itself) and zeros on its neighbours, so the
    twin starts as the 2D model and learns from there what the neighbours add."""
    widened = dict(weights)
    for key, value in weights.items():
        want = target.get(key)
        if want is not None and value.ndim == 4 and value.shape[1] == 1 and want.shape[1] > 1:
            if want.shape[0] == value.shape[0] and want.shape[2:] == value.shape[2:] and want.shape[1] % 2:
                grown = torch.zeros(want.shape, dtype=value.dtype, device=value.device)
                grown[:, want.shape[1] // 2] = value[:, 0]
                widened[key] = grown
    return widened


def _is_torchscript(path: Path) -> bool:
    """Whether a zip archive is a TorchScript module (it holds ``code/``) rather than torch.save's."""
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _schedule_progress(iteration: int, iterations: int, deadline: float | None, time_budget: float | None) -> float:
    """How far through its schedule the run is at ``iteration`` (1-based), in [0, 1]: the larger of
    the iteration and the time fraction, so that a run out of time still anneals to the end."""
    fraction = (iteration - 1) / iterations
    if deadline is not None and time_budget:
        elapsed = 1.0 - (deadline - time.perf_counter()) / float(time_budget)
        fraction = min(max(fraction, elapsed), 1.0)
    return fraction


def _learning_rate(spec: dict[str, Any], progress: float) -> float:
    """SGD: the poly schedule ``lr * (1 - progress) ** poly_power``; Adam: constant ``lr``."""
    if spec["optimizer"] != "sgd":
        return float(spec["lr"])
    return float(spec["lr"]) * (1 - progress) ** float(spec["poly_power"])


def _step(
    trainable: nn.Module,
    net: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: Any,
    x: torch.Tensor,
    target: torch.Tensor,
    task: str,
    grad_clip: float,
) -> float:
    """One optimiser step on one batch (float32 (N, 1, h, w) images, labels or region targets); the loss."""
    with amp:
        outputs = trainable(x)
        loss = criterion(outputs, target) if task == "segmentation" else criterion(outputs.float(), target)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def train(
    config: dict[str, dict[str, Any]],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    max_iterations: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    time_budget: float | None = None,
    require_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train the model a configuration describes.

    Parameters
    ----------
    config : as returned by :func:`load_config`.
    out : run directory (default: [train] 'out', else ``runs/<experiment name>``, see `run_directory`).
    resume : continue from ``out/last.pt`` when it exists (else start the run). Without it, a run
        directory that already holds ``last.pt`` is refused rather than overwritten.
    require_checkpoint : with ``resume``, refuse a run directory without ``last.pt`` (a mistyped
        ``--out``) instead of starting there.
    max_iterations : stop after this iteration (the schedule still spans [train] 'iterations'),
        to run a long schedule in several sittings or for a quick look.
    device : "cpu" or "cuda".
    progress : show the tqdm progress bar (rank 0 only).
    time_budget : wall-clock seconds for this sitting (None: no limit). The schedule's progress
        is the larger of the iteration and the time fraction, so a run that would overrun
        still anneals its learning rate to the end and stops, validated and saved, on time;
        the iteration it reached is in the result and the log.

    Returns
    -------
    dict with "iteration" reached, "seconds_per_iteration" (mean of this sitting), "metrics"
    (last validation) and "checkpoint" path.

    Raises
    ------
    InputError
        A bad configuration value; a run directory holding a checkpoint without ``resume``, or
        none with ``require_checkpoint``.
    """
    from tqdm import tqdm

    experiment, spec = config["experiment"], config["train"]
    task = experiment["task"]
    out_dir = run_directory(config, out)
    checkpoint = out_dir / "last.pt"
    # before anything starts: a run's hours must not be overwritten by re-running its first command
    if checkpoint.exists() and not resume:
        raise InputError(
            f"run folder {out_dir} already holds a training run ({checkpoint.name}); --resume continues it, "
            "or choose a new --out to start another"
        )
    if resume and require_checkpoint and not checkpoint.is_file():
        raise InputError(
            f"--resume: run folder {out_dir} holds no checkpoint ({checkpoint.name}) to continue; check --out, "
            "or leave --resume out (or use --resume-or-start) to start the run there"
        )
    _check_sizes(config)
    torch_device, rank, world = _setup_device(device, int(spec["threads"]))
    seed = int(experiment["seed"])
    torch.manual_seed(seed + rank)
    out_dir.mkdir(parents=True, exist_ok=True)

    train_set, val_set = _datasets(config, rank)
    sampler = _sampler(config, train_set, seed=seed + 1000 * rank)
    generator = torch.Generator().manual_seed(seed + 1000 * rank + 1)
    augment = augment_config(spec)

    model_kwargs = dict(config["model"]["kwargs"])
    channels = 1 if train_set.images.ndim == 3 else int(train_set.images.shape[1])
    if int(model_kwargs.get("in_channels", 1)) != channels:
        raise InputError(
            f"[model] 'in_channels' is {model_kwargs.get('in_channels', 1)}, but [data] 'context' "
            f"{config['data']['context']} feeds {channels} channels (2 context + 1)"
        )
    net, trainable, deep = _build_model(config["model"]["name"], model_kwargs, task, torch_device, world)
    optimizer = _optimizer(spec, net)
    swa_start, swa_every = float(spec["swa_start"]), int(spec["swa_every"])
    swa = torch.optim.swa_utils.AveragedModel(net, use_buffers=True) if swa_start < 1.0 else None
    scaler = torch.amp.GradScaler("cuda", enabled=torch_device.type == "cuda")
    criterion = _criterion(
        task, deep, bool(spec["class_weighted"]), train_set.regions, torch_device, float(spec["slice_dice"])
    )

    iterations = int(spec["iterations"])
    stop = min(iterations, int(max_iterations)) if max_iterations is not None else iterations
    start, metrics = 0, {}
    if spec.get("init") and not (resume and checkpoint.is_file()):
        _warm_start(net, _resolve(spec["init"]), torch_device)
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=torch_device, weights_only=False)
        net.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if swa is not None and state.get("swa_state_dict"):
            swa.module.load_state_dict(state["swa_state_dict"])
            swa.n_averaged.fill_(int(state["swa_averaged"]))
        sampler.load_state_dict(state["sampler"][min(rank, len(state["sampler"]) - 1)])
        generator.set_state(state["rng"]["augment"][min(rank, len(state["rng"]["augment"]) - 1)])
        torch.set_rng_state(state["rng"]["torch"])
        start, metrics = int(state["iteration"]), state.get("metrics", {})
        if state.get("finished"):
            # the schedule ended (by iterations or by its time budget): resuming must not restart it
            print(
                f"[{experiment['name']}] {checkpoint} is finished (iteration {start}); nothing to resume",
                file=sys.stderr,
            )
            return {"iteration": start, "seconds_per_iteration": 0.0, "metrics": metrics, "checkpoint": str(checkpoint)}
    fields = _log_fields(task)
    log_path = out_dir / "log.csv"
    if rank == 0:
        _open_log(log_path, fields, start)

    per_rank = max(1, int(spec["batch_size"]) // world)
    size = train_set.images.shape[-2:]
    patch = (int(spec["patch"]),) * 2 if task == "segmentation" else tuple(size)
    images_all = torch.from_numpy(np.ascontiguousarray(train_set.images))
    labels_all = torch.from_numpy(np.ascontiguousarray(train_set.labels))
    hearts_all, jitter = _heart_crops(spec, task, train_set)
    targets_all = torch.from_numpy(train_set.regions.astype(np.int64))
    amp = _autocast(str(spec["amp"]), torch_device)

    def state_now(iteration: int) -> dict[str, Any]:
        samplers: list[Any] = [sampler.state_dict()]
        augment_states: list[Any] = [generator.get_state()]
        if world > 1:  # every rank's generators, so a resumed DDP run draws what it would have
            samplers, augment_states = [None] * world, [None] * world
            dist.all_gather_object(samplers, sampler.state_dict())
            dist.all_gather_object(augment_states, generator.get_state())
        return {
            "task": task,
            "iteration": iteration,
            "model": {"name": config["model"]["name"], "kwargs": model_kwargs},
            "state_dict": net.state_dict(),
            # empty until the first average is taken: the raw weights stand in until then
            "swa_state_dict": swa.module.state_dict() if swa is not None and int(swa.n_averaged) else None,
            "swa_averaged": int(swa.n_averaged) if swa is not None else 0,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "sampler": samplers,
            "rng": {"augment": augment_states, "torch": torch.get_rng_state()},
            "config": config,
            "metrics": metrics,
            "finished": finished or iteration >= iterations,
            "preprocessing": {
                **{k: train_set.meta.get(k) for k in ("target_spacing", "size", "normalization")},
                "context": int(config["data"]["context"]),
            },
        }

    bar = tqdm(
        total=stop,
        initial=start,
        desc=experiment["name"],
        disable=not progress or rank != 0,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        dynamic_ncols=True,
    )
    losses: list[float] = []
    row_started, sitting_started = time.perf_counter(), time.perf_counter()
    net.train()

    def record(iteration: int, lr: float, validate: bool) -> None:
        """Validate (when asked), save the checkpoint and append a log row (rank 0 writes)."""
        nonlocal metrics
        validate = validate and len(val_set) > 0
        if validate:
            metrics = _validate(task, net, val_set, torch_device, spec) if rank == 0 else {}
        state = state_now(iteration)
        if rank != 0:
            return
        _save_checkpoint(checkpoint, state)
        row = {
            "iteration": iteration,
            "lr": f"{lr:.6g}",
            "train_loss": f"{np.mean(losses):.5f}" if losses else "",
            "seconds_per_iteration": f"{(time.perf_counter() - row_started) / max(len(losses), 1):.4f}",
        }
        if validate:
            row.update({f"val_{k}": f"{v:.5f}" for k, v in metrics.items() if f"val_{k}" in fields})
            bar.write(
                f"[{experiment['name']}] iteration {iteration}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "_" not in k or "dice" in k)
            )
        with log_path.open("a", newline="") as f:
            csv.DictWriter(f, fields).writerow(row)

    deadline = time.perf_counter() + time_budget if time_budget else None
    timed_out = finished = False
    for iteration in range(start + 1, stop + 1):
        progress_fraction = _schedule_progress(iteration, iterations, deadline, time_budget)
        if progress_fraction >= 1.0 and deadline is not None and iteration > start + 1:
            stop, timed_out = iteration - 1, True  # out of time: validate and save where we are
            break
        lr = _learning_rate(spec, progress_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sampler.sample(per_rank)
        index = torch.from_numpy(batch.indices)
        labels = labels_all[index]
        hearts = None if hearts_all is None else hearts_all[index]
        centres = crop_centres(
            labels, patch, torch.from_numpy(batch.foreground), generator, hearts=hearts, jitter=jitter
        )
        x = images_all[index] if images_all.ndim == 4 else images_all[index][:, None]
        x, y = augment_batch(x.to(torch_device), labels, patch, centres, augment, generator)
        target = y if task == "segmentation" else targets_all[index]
        losses.append(
            _step(
                trainable,
                net,
                criterion,
                optimizer,
                scaler,
                amp,
                x,
                target.to(torch_device),
                task,
                float(spec["grad_clip"]),
            )
        )
        if swa is not None and progress_fraction >= swa_start and iteration % swa_every == 0:
            swa.update_parameters(net)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)

        validate = iteration % int(spec["val_every"]) == 0 or iteration == stop
        if validate or iteration % int(spec["checkpoint_every"]) == 0:
            record(iteration, lr, validate)
            losses, row_started = [], time.perf_counter()
    if timed_out:
        finished = True  # annealed to the end of its schedule: a later --resume leaves it as it is
        record(stop, 0.0, True)
        bar.write(f"[{experiment['name']}] time budget reached at iteration {stop}")
    bar.close()
    done = stop - start
    return {
        "iteration": stop,
        "seconds_per_iteration": (time.perf_counter() - sitting_started) / max(done, 1),
        "metrics": metrics,
        "checkpoint": str(checkpoint),
    }


def main(argv: list[str] | None = None) -> int:
    """The ``python -m export.train`` command."""
    parser = argparse.ArgumentParser(prog="python -m export.train", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="TOML configuration (export/configs/*.toml)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_true", help="continue from the run directory's last.pt (refused where it has none)"
    )
    resume.add_argument(
        "--resume-or-start",
        action="store_true",
        help="continue from the run directory's last.pt where it has one, else start the run (recipes run again "
        "after an interruption)",
    )
    parser.add_argument("--max-iterations", type=int, default=None, help="stop after this iteration")
    parser.add_argument("--out", default=None, help="run directory (default: the configuration's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration value (TOML syntax), e.g. --set train.iterations=3000; repeatable",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop, annealed, validated and saved, after this many seconds",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except CmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for item in args.set:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in DEFAULTS:
            parser.error(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION one of {', '.join(DEFAULTS)}")
        if name not in DEFAULTS[section]:
            parser.error(
                f"--set {item!r}: [{section}] has no key {name!r}; known: {', '.join(sorted(DEFAULTS[section]))}"
            )
        try:
            config[section][name] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            parser.error(f"--set {item!r}: the value is not TOML ({exc})")
    try:
        result = train(
            config,
            out=args.out,
            resume=args.resume or args.resume_or_start,
            max_iterations=args.max_iterations,
            device=args.device,
            progress=not args.no_progress,
            time_budget=args.time_budget,
            require_checkpoint=args.resume,
        )
    except CmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"done: iteration {result['iteration']}, {result['seconds_per_iteration']:.3f} s/iteration, "
            f"checkpoint {result['checkpoint']}, validation {result['metrics']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
