"""Model bundles: a directory of exported models and the manifest that says how to use them.

Layout
------
::

    BUNDLE_DIR/
      manifest.json          format, versions, labels, regions, routing, preprocessing, models
      <model>.pt             TorchScript (fp32)
      <model>.onnx           ONNX, opset >= 18, dynamic batch (fp32)
      <model>.int8.onnx      ONNX, statically quantized int8 (QDQ), added by ``python -m export.quantize``
      <model>.fp32.ep        torch-tensorrt ExportedProgram, where it could be built
      <model>.fp16.ep

`load_bundle` checks the format version and the size and sha256 of every artifact before
anything is used, and refuses a bundle that fails (`BundleError` naming the file). It also checks
the manifest's fields against each other (label and region names, ``num_outputs``, input and
output shapes, the window against a U-Net's stride, the routing) and warns (`CmrWarning`) of keys
it does not know, naming the nearest known one. Engines are made lazily, once per (model,
backend, device, options), under a lock: one `Bundle` may be shared by threads.

An artifact's ``file`` is a name inside the bundle directory. It may be a symbolic link to a
regular file elsewhere (DVC, git-annex): the size and sha256 are checked on the file it points to.

Labels and regions
------------------
cmrsdk's codes are fixed (`cmrsdk.labels`): labels 0 background, 1 LVBP, 2 LVM, 3 RVBP; regions
0 non-cardiac, 1 base, 2 middle, 3 apex. A manifest's ``labels`` (``regions``) say which output
channel of its U-Nets (its classifier) holds which structure (region): code c is channel c. The
names must be cmrsdk's, each once, on the codes 0..3, in any order; a model trained in another
order (ACDC's 1 RVBP ... 3 LVBP) is put in cmrsdk's order right after inference
(`ModelInfo.output_order`, `Engine.output_order`), and ``routing`` keys are the manifest's own
region codes. `Bundle.labels` and `Bundle.regions` are cmrsdk's names, `Bundle.routing` is keyed
by cmrsdk's region codes.

Format versions
---------------
A manifest carries the lowest format version that every reader accepting it reads the same
(`required_format_version`): 1, unless its ``labels`` or ``regions`` are in another order than
cmrsdk's, then 2. cmrsdk before 0.14.0 reads format 1 only and takes output channel c as code c
whatever the names say: it would swap the LV and RV of a model trained in ACDC's order without a
word, and refuses format 2 instead. This cmrsdk reads 1 and 2 (`SUPPORTED_FORMAT_VERSIONS`), and
warns of a format-1 manifest in another order (written by hand for 0.14.0 to 0.14.7).

Manifest (format version 1, or 2 as above), the keys a reader relies on::

    format: "cmrsdk-bundle", format_version: 1 | 2, created: ISO 8601 UTC,
    versions: {cmrsdk, torch, onnx, onnxruntime, python, ...},
    labels: {"0": "background", ...}, regions: {"0": "non-cardiac", ...},
    classifier: model name or null,
    regions_from: "classifier" | "segmentation"   # optional; default "classifier" (see Pipeline)
    routing: {"0": model, "1": model, "2": model, "3": model},   # region code -> U-Net
    preprocessing: {target_spacing: [dy, dx] mm, size: [H, W], normalization: name,
                    heart_crop?: [h, w], heart_search?: "mean" | "largest",
                    segment_spacing?: [dy, dx] mm},
    models: {name: {kind: "segmentation" | "classifier", architecture, input_shape,
                    output_shape, num_outputs, artifacts: {key: {file, format, precision,
                    sha256, size, input_hw?, device?}}, parity: [{...}], training: {...}, metrics: {...},
                    tensorrt_max_batch?, quantization?: {...}}},
    quantization?: {...}        # bundle-level record of ``export.quantize`` (Dice deltas): "int8";
                                # "bf16" (TorchScript cast at load), "bf16-openvino" (`bf16_record_key`)

Artifact keys: "torchscript", "onnx", "onnx-int8", "aoti", "tensorrt-fp32", "tensorrt-fp16". An
artifact that runs on one device only (an AOTInductor package is compiled for the CPU or for
CUDA) records it as ``device``; `Bundle.select_artifact` passes it over on the other.

Which (H, W) an artifact runs (``input_hw``)
--------------------------------------------
An artifact may record ``input_hw: {"min": [h, w], "max": [H, W]}``, the inclusive range of
input heights and widths it accepts. Without it, TensorRT artifacts accept the bundle's
``preprocessing.size`` only (they were compiled for the full window before dynamic height and
width were added), TorchScript and ONNX any size (traced and exported with dynamic height and
width). `Bundle.select_artifact` skips an artifact that cannot run every shape asked for, so
``backend="auto"`` never lands on one that would fail on the heart crop.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

from .engines import AUTO_ORDER, BACKENDS, Engine, backend_missing, create_engine, thread_options
from .engines.base import PRECISIONS, check_device
from .errors import BackendUnavailableError, BundleError, InputError
from .heart import HEART_SEARCHES
from .labels import LABEL_NAMES, REGION_NAMES
from ._warn import warn

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "MANIFEST_NAME",
    "artifact_stride",
    "ARTIFACT_KEYS",
    "MODEL_KINDS",
    "REGIONS_FROM",
    "required_format_version",
    "Artifact",
    "bf16_record_key",
    "precision_missing",
    "ModelInfo",
    "Preprocessing",
    "Bundle",
    "load_bundle",
    "sha256_file",
]

FORMAT_NAME = "cmrsdk-bundle"
#: the newest format version this cmrsdk writes and reads; a manifest is written with the lowest
#: one that means the same to every reader (`required_format_version`)
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1, 2)
MANIFEST_NAME = "manifest.json"
#: artifact key -> (backend, precision)
ARTIFACT_KEYS: dict[str, tuple[str, str]] = {
    "torchscript": ("torchscript", "fp32"),
    "onnx": ("onnx", "fp32"),
    "onnx-int8": ("onnx", "int8"),
    "aoti": ("aoti", "fp32"),
    "tensorrt-fp32": ("tensorrt", "fp32"),
    "tensorrt-fp16": ("tensorrt", "fp16"),
}
#: (backend, precision) -> artifact key: what `Bundle.select_artifact` looks for. TorchScript in
#: fp16 (CUDA) and bf16 (CPU) is the fp32 archive cast at load; int8 is ONNX Runtime's alone.
_KEY_OF: dict[tuple[str, str], str] = {
    ("torchscript", "fp32"): "torchscript",
    ("torchscript", "fp16"): "torchscript",
    ("torchscript", "bf16"): "torchscript",
    ("onnx", "fp32"): "onnx",
    ("onnx", "int8"): "onnx-int8",
    ("aoti", "fp32"): "aoti",
    ("openvino", "fp32"): "onnx",  # OpenVINO reads the ONNX file; bf16 is its compile option
    ("openvino", "bf16"): "onnx",
    ("tensorrt", "fp32"): "tensorrt-fp32",
    ("tensorrt", "fp16"): "tensorrt-fp16",
}
MODEL_KINDS: tuple[str, ...] = ("segmentation", "classifier")
#: where routed mode takes each slice's region from (manifest key ``regions_from``).
REGIONS_FROM: tuple[str, ...] = ("classifier", "segmentation")


#: intensity normalisations the pipeline knows (`cmrsdk.preprocess.normalize`).
NORMALIZATIONS = ("robust_zscore", "zscore", "minmax")

#: the keys each level of a manifest may hold (written by export/ or read here); any other is
#: warned of, naming the nearest of these (a misspelt ``heartcrop`` would silently drop the crop)
_KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "": (
        "format", "format_version", "created", "versions", "labels", "regions", "classifier",
        "regions_from", "routing", "preprocessing", "models", "quantization", "skipped",
    ),
    "preprocessing": ("target_spacing", "size", "normalization", "heart_crop", "heart_search", "segment_spacing"),
    "model": (
        "kind", "architecture", "num_outputs", "input_shape", "output_shape", "artifacts", "parity",
        "training", "metrics", "tensorrt_max_batch", "tensorrt_shapes", "onnx_opset", "quantization",
    ),
    "artifact": ("file", "format", "precision", "sha256", "size", "input_hw", "device", "compiled", "quantization"),
}  # fmt: skip
#: export/'s U-Net: ``unet(..., features=[f0, ..., fk], ...)`` halves the image k times
_UNET_FEATURES = re.compile(r"^\s*unet\s*\(.*\bfeatures\s*=\s*[\[(]([\d\s,]+)[\])]")
#: how a missing artifact is added to a bundle, for the message that says it is missing (export/
#: comes with a checkout of the repository, not with the installed package: sweep 50)
_ADD_ARTIFACT = {
    "aoti": "add one with: python -m export.aoti {bundle}; export/ comes with a checkout of cmrsdk's repository",
    "onnx-int8": "add them with: python -m export.quantize {bundle}; export/ comes with a checkout of cmrsdk's repository",
}


def required_format_version(manifest: Mapping[str, Any]) -> int:
    """The ``format_version`` a manifest must carry: the lowest that every reader accepting it
    reads the same.

    2 where its ``labels`` or ``regions`` name cmrsdk's codes in another order (a model trained in
    ACDC's 1 RVBP, 2 LVM, 3 LVBP): cmrsdk before 0.14.0 reads format 1 only and takes channel c as
    code c whatever the names, so it would swap the LV and RV; it refuses format 2, naming the
    version. 1 otherwise (the shipped bundle and every one `export.bundle` builds), which every
    cmrsdk reads.

    Parameters
    ----------
    manifest : a manifest's content; ``labels`` and ``regions`` as {code: name}, codes as JSON's
        strings or ints. Only those two keys are looked at.
    """
    for key, canonical in (("labels", LABEL_NAMES), ("regions", REGION_NAMES)):
        names = manifest.get(key, canonical)
        try:
            in_order = {int(k): v for k, v in names.items()} == canonical
        except (AttributeError, TypeError, ValueError):  # not {code: name}: not read by any cmrsdk
            in_order = False
        if not in_order:
            return 2
    return 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks of ``chunk`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Preprocessing:
    """How slices must be prepared before any model of the bundle sees them.

    Attributes
    ----------
    target_spacing : (dy, dx) in mm, the in-plane grid the slices are resampled to.
    size : (H, W) in pixels, the network window the resampled slice is cropped or padded to.
    normalization : intensity normalisation name ("robust_zscore", "zscore" or "minmax").
    heart_crop : (h, w) in pixels: the window the U-Nets see around the heart by default
        (their training patch), or None for the full ``size`` (see `cmrsdk.Pipeline`).
    heart_search : how the heart crop's centre is taken from the baseline U-Net's full-window
        pass, one of `cmrsdk.heart.HEART_SEARCHES` ("mean" unless the manifest says otherwise).
    segment_spacing : (dy, dx) in mm, a grid finer than ``target_spacing`` that the pipeline
        segments on by default (`cmrsdk.grid`), or None: the training grid.
    """

    target_spacing: tuple[float, float]
    size: tuple[int, int]
    normalization: str
    heart_crop: tuple[int, int] | None = None
    heart_search: str = "mean"
    segment_spacing: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``preprocessing`` object."""
        out: dict[str, Any] = {
            "target_spacing": list(self.target_spacing),
            "size": list(self.size),
            "normalization": self.normalization,
        }
        if self.heart_crop is not None:
            out["heart_crop"] = list(self.heart_crop)
        if self.heart_search != "mean":  # manifests written before it existed stay as they were
            out["heart_search"] = self.heart_search
        if self.segment_spacing is not None:
            out["segment_spacing"] = list(self.segment_spacing)
        return out


@dataclass(frozen=True)
class Artifact:
    """One exported file of a model.

    Attributes
    ----------
    key : one of `ARTIFACT_KEYS`.
    backend : the engine backend that runs it.
    precision : "fp32", "fp16" or "int8".
    path : absolute path of the file inside the bundle.
    sha256 : hex digest recorded at export.
    size : bytes recorded at export.
    input_hw : ((h_min, w_min), (h_max, w_max)), the input heights and widths it accepts
        (inclusive), or None for any (see the module docstring).
    """

    key: str
    backend: str
    precision: str
    path: Path
    sha256: str
    size: int
    input_hw: tuple[tuple[int, int], tuple[int, int]] | None = None

    def accepts(self, hw: tuple[int, int]) -> bool:
        """Whether the artifact runs inputs of height and width ``hw`` = (H, W) in pixels."""
        if self.input_hw is None:
            return True
        (h0, w0), (h1, w1) = self.input_hw
        return h0 <= hw[0] <= h1 and w0 <= hw[1] <= w1


def bf16_record_key(backend: str) -> str:
    """The manifest's ``quantization`` key of the bf16 Dice check made on ``backend``.

    bf16 is an engine's arithmetic, not a file, and each backend rounds differently (OpenVINO
    fuses each norm with its activation, TorchScript casts every op), so each is checked on its own:
    "bf16" for TorchScript (the key bundles before OpenVINO hold), "bf16-<backend>" otherwise.
    """
    return "bf16" if backend == "torchscript" else f"bf16-{backend}"


def precision_missing(backend: str, precision: str) -> str | None:
    """Why ``backend`` cannot run ``precision`` at all, whatever the bundle holds (naming the
    backends that can), or None when it can, or when either name is not one cmrsdk knows (the
    callers' own checks name those).

    Parameters
    ----------
    backend : one of `cmrsdk.engines.BACKENDS` ("auto" gives None: it picks among those that can).
    precision : one of `cmrsdk.engines.base.PRECISIONS`.
    """
    if backend not in BACKENDS or precision not in PRECISIONS or (backend, precision) in _KEY_OF:
        return None
    able = [b for b in BACKENDS if (b, precision) in _KEY_OF]
    return f"backend {backend!r} has no {precision} path; {precision} runs on {', '.join(repr(b) for b in able)}"


@dataclass(frozen=True)
class ModelInfo:
    """One model of the bundle as the manifest describes it.

    Attributes
    ----------
    name : the model's name (the key of ``Bundle.models``).
    kind : "segmentation" (output float32 (N, C, H, W)) or "classifier" (output float32 (N, R)).
    architecture : free text, e.g. "unet(features=(16, 32, 64, 128, 256))".
    num_outputs : C classes (segmentation) or R regions (classifier).
    artifacts : artifact key -> `Artifact`.
    record : the model's full manifest entry (input/output shapes, parity, training, metrics).
    channels : the input channels it reads (1, or 2 context + 1 for a 2.5D U-Net).
    output_order : canonical code k (label, or region for the classifier) is the model's output
        channel ``output_order[k]``, from the manifest's ``labels`` / ``regions`` names; the
        identity for a model trained in cmrsdk's order.
    """

    name: str
    kind: str
    architecture: str
    num_outputs: int
    artifacts: dict[str, Artifact]
    record: dict[str, Any] = field(repr=False)
    channels: int = 1
    output_order: tuple[int, ...] | None = None

    @property
    def context(self) -> int:
        """Stack neighbours each side a 2.5D model reads with each slice (0 for a 2D model): its
        input is `cmrsdk.preprocess.context_slices` of the stack, ``channels = 2 context + 1``."""
        return (self.channels - 1) // 2

    @property
    def side_aware(self) -> bool:
        """Trained without flips (its training configuration's ``[train] mirror = false``), so it
        may tell the RV's side of the septum: it must see stacks in the radiological view
        (`cmrsdk.chirality`), and test-time mirroring may only turn it by half a turn."""
        config = self.record.get("training", {}).get("config", {})
        return isinstance(config, dict) and config.get("train", {}).get("mirror", True) is False


def _int_keys(value: Any, what: str, manifest: Path) -> dict[int, str]:
    if not isinstance(value, dict):
        raise BundleError(f"{manifest}: '{what}' must be an object {{code: name}}, got {type(value).__name__}")
    try:
        out = {int(k): v for k, v in value.items()}
    except ValueError as exc:
        raise BundleError(f"{manifest}: '{what}' keys must be integer codes, got {sorted(value)}") from exc
    if not all(isinstance(v, str) for v in out.values()):
        raise BundleError(f"{manifest}: '{what}' values must be strings, got {value!r}")
    return out


def _canonical_order(names: dict[int, str], canonical: dict[int, str], what: str, manifest: Path) -> tuple[int, ...]:
    """The manifest's ``labels`` or ``regions`` ({code: name}, code = the models' output channel) as
    the channel of each canonical code: ``order[k]`` holds ``canonical[k]``. Refuses any name that
    is not cmrsdk's, a repeated or missing one, and codes other than 0..n-1."""
    expected = ", ".join(f'"{k}": "{v}"' for k, v in canonical.items())
    by_name: dict[str, int] = {}
    for code, name in sorted(names.items()):
        if name not in canonical.values():
            raise BundleError(
                f"{manifest}: '{what}.{code}' is {name!r}, not one of cmrsdk's names; '{what}' must name "
                f"{{{expected}}} (any codes 0..{len(canonical) - 1}, each name once: the models' outputs are "
                f"put in this order)"
            )
        if name in by_name:
            raise BundleError(f"{manifest}: '{what}' names {name!r} twice (codes {by_name[name]} and {code})")
        by_name[name] = code
    if sorted(names) != list(range(len(canonical))) or len(by_name) != len(canonical):
        missing = [n for n in canonical.values() if n not in by_name]
        raise BundleError(
            f"{manifest}: '{what}' has codes {sorted(names)}{f' and lacks {missing}' if missing else ''}; "
            f"it must name each of {{{expected}}} once, on the codes 0..{len(canonical) - 1}"
        )
    return tuple(by_name[name] for _, name in sorted(canonical.items()))


def _warn_unknown(obj: dict[str, Any], level: str, where: str, manifest: Path) -> None:
    """A `CmrWarning` for each key of ``obj`` that a manifest's ``level`` does not hold (a typo
    would otherwise be ignored in silence), naming the nearest known key."""
    known = _KNOWN_KEYS[level]
    for key in obj:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(known)})"
            warn(f"{manifest}: unknown key '{where}{key}' is ignored{hint}", stacklevel=4)


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, manifest: Path) -> Any:
    if key not in obj:
        raise BundleError(f"{manifest}: '{where}{key}' is missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BundleError(f"{manifest}: '{where}{key}' has the wrong type {type(value).__name__} (value {value!r})")
    return value


def _positive_mm(value: Any) -> bool:
    """A spacing of the manifest: a JSON number, finite (not NaN or Infinity) and > 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _parse_preprocessing(raw: dict[str, Any], manifest: Path) -> Preprocessing:
    _warn_unknown(raw, "preprocessing", "preprocessing.", manifest)
    spacing = _require(raw, "target_spacing", list, "preprocessing.", manifest)
    size = _require(raw, "size", list, "preprocessing.", manifest)
    normalization = _require(raw, "normalization", str, "preprocessing.", manifest)
    if normalization not in NORMALIZATIONS:
        raise BundleError(
            f"{manifest}: 'preprocessing.normalization' is {normalization!r}, expected one of {', '.join(NORMALIZATIONS)}"
        )
    if len(spacing) != 2 or not all(_positive_mm(s) for s in spacing):
        raise BundleError(
            f"{manifest}: 'preprocessing.target_spacing' must be two finite positive mm values [dy, dx], "
            f"got {spacing!r}"
        )
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise BundleError(f"{manifest}: 'preprocessing.size' must be two positive ints [H, W], got {size!r}")
    crop = raw.get("heart_crop")
    if crop is not None and (
        not isinstance(crop, list)
        or len(crop) != 2
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c <= s for c, s in zip(crop, size))
    ):
        raise BundleError(
            f"{manifest}: 'preprocessing.heart_crop' must be two ints [h, w] within 'size' {size}, got {crop!r}"
        )
    search = raw.get("heart_search", "mean")
    if search not in HEART_SEARCHES:
        raise BundleError(f"{manifest}: 'preprocessing.heart_search' must be one of {HEART_SEARCHES}, got {search!r}")
    segment = raw.get("segment_spacing")
    if segment is not None and (
        not isinstance(segment, list)
        or len(segment) != 2
        or not all(_positive_mm(s) and s <= t for s, t in zip(segment, spacing))
    ):
        raise BundleError(
            f"{manifest}: 'preprocessing.segment_spacing' must be two finite positive mm values [dy, dx] no coarser "
            f"than 'target_spacing' {spacing}, got {segment!r}"
        )
    return Preprocessing(
        (float(spacing[0]), float(spacing[1])),
        (size[0], size[1]),
        normalization,
        (crop[0], crop[1]) if crop is not None else None,
        search,
        (float(segment[0]), float(segment[1])) if segment is not None else None,
    )


def _parse_input_hw(raw: Any, where: str, manifest: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    def pair(value: Any) -> tuple[int, int] | None:
        if (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            return (value[0], value[1])
        return None

    lo, hi = (pair(raw.get("min")), pair(raw.get("max"))) if isinstance(raw, dict) else (None, None)
    if lo is None or hi is None or lo[0] > hi[0] or lo[1] > hi[1]:
        raise BundleError(
            f'{manifest}: \'{where}input_hw\' must be {{"min": [h, w], "max": [H, W]}} with positive '
            f"ints and min <= max, got {raw!r}"
        )
    return lo, hi


def _artifact_path(file: str, root: Path, where: str, manifest: Path) -> Path:
    """The artifact ``file`` as a path in the bundle directory ``root``; refuses a name in another
    directory (``sub/x.onnx``, ``../x.onnx``). The file may be a link to one elsewhere (DVC, git-annex):
    its size and hash are checked on the target (`_verify_artifact`)."""
    base = root.resolve()
    # lexical, not resolved: a symbolic link named in the bundle is the bundle's file
    path = Path(os.path.normpath(base / file))
    if path.parent.resolve() != base or not path.name or path.name in (".", ".."):
        raise BundleError(
            f"{manifest}: '{where}file' is {file!r}, expected a file name inside the bundle directory "
            f"(no sub-folder or path outside it)"
        )
    return base / path.name


def _stride(architecture: str) -> int | None:
    """How many times export/'s U-Net divides the input's height and width (2 ** its stages - 1),
    read from the manifest's ``architecture``, or None for another architecture."""
    match = _UNET_FEATURES.match(architecture)
    if match is None:
        return None
    stages = [f for f in match.group(1).split(",") if f.strip()]
    return 2 ** (len(stages) - 1) if stages else None


def artifact_stride(path: str | Path) -> int | None:
    """The stride (`cmrsdk.engines.Engine.multiple`) of the segmentation U-Net whose artifact file
    ``path`` is, read from the bundle manifest beside it, as `Bundle.engine` sets it
    (`cmrsdk.engines.create_engine` on a bundle's file); None where there is no manifest, it
    cannot be read, it does not name the file, or the model is no U-Net it knows. The manifest is
    only read here, not verified (`load_bundle` does that)."""
    path = Path(path)
    try:
        raw = json.loads((path.parent / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    models = raw.get("models") if isinstance(raw, dict) else None
    for model in models.values() if isinstance(models, dict) else ():
        artifacts = model.get("artifacts") if isinstance(model, dict) else None
        if not isinstance(artifacts, dict):
            continue
        if any(isinstance(entry, dict) and entry.get("file") == path.name for entry in artifacts.values()):
            architecture = model.get("architecture")
            if model.get("kind") != "segmentation" or not isinstance(architecture, str):
                return None
            return _stride(architecture)
    return None


def _check_shapes(
    raw: dict[str, Any], kind: str, num_outputs: int, pre: Preprocessing, where: str, manifest: Path
) -> None:
    """``input_shape`` and ``output_shape`` (where given with numbers) against ``num_outputs`` and the
    preprocessing window; the window and heart crop against a U-Net's stride."""
    window = list(pre.size)
    shape = raw.get("input_shape")
    if isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
        if shape[2:] != window:
            raise BundleError(
                f"{manifest}: '{where}input_shape' is {shape!r}: its (H, W) must be 'preprocessing.size' {window}"
            )
    answer = raw.get("output_shape")
    if answer is not None:
        expected = ["N", num_outputs, *window] if kind == "segmentation" else ["N", num_outputs]
        if (
            not isinstance(answer, list)
            or len(answer) != len(expected)
            or any(isinstance(a, int) and a != e for a, e in zip(answer[1:], expected[1:]))
        ):
            raise BundleError(
                f"{manifest}: '{where}output_shape' is {answer!r}, expected {expected!r} "
                f"('num_outputs' {num_outputs}{', the window' if kind == 'segmentation' else ''})"
            )
    stride = _stride(str(raw.get("architecture", "")))
    if kind != "segmentation" or stride is None:
        return
    for field_name, hw in (("size", pre.size), ("heart_crop", pre.heart_crop)):
        if hw is not None and any(v % stride for v in hw):
            fit = [max(stride, v // stride * stride) for v in hw]
            raise BundleError(
                f"{manifest}: 'preprocessing.{field_name}' is {list(hw)}, but '{where}architecture' "
                f"{raw['architecture']!r} divides the image by {stride}: give multiples of {stride}, e.g. {fit}"
            )


def _parse_model(
    name: str, raw: Any, root: Path, manifest: Path, pre: Preprocessing, orders: dict[str, tuple[int, ...]]
) -> ModelInfo:
    """One ``models`` entry; ``orders`` is the canonical order of each kind's outputs (`_canonical_order`)."""
    full_window = pre.size
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest}: 'models.{name}' must be an object, got {type(raw).__name__}")
    where = f"models.{name}."
    _warn_unknown(raw, "model", where, manifest)
    kind = _require(raw, "kind", str, where, manifest)
    if kind not in MODEL_KINDS:
        raise BundleError(f"{manifest}: '{where}kind' is {kind!r}, expected one of {MODEL_KINDS}")
    architecture = _require(raw, "architecture", str, where, manifest)
    num_outputs = _require(raw, "num_outputs", int, where, manifest)
    order = orders[kind]
    if num_outputs != len(order):
        names = "labels" if kind == "segmentation" else "regions"
        raise BundleError(
            f"{manifest}: '{where}num_outputs' is {num_outputs!r}, but a {kind} model answers one channel per "
            f"entry of '{names}': {len(order)}"
        )
    artifacts_raw = _require(raw, "artifacts", dict, where, manifest)
    if not artifacts_raw:
        raise BundleError(f"{manifest}: '{where}artifacts' is empty: the model has no exported file")
    artifacts: dict[str, Artifact] = {}
    for key, entry in artifacts_raw.items():
        if key not in ARTIFACT_KEYS:
            raise BundleError(
                f"{manifest}: '{where}artifacts' has the unknown key {key!r}, expected one of {tuple(ARTIFACT_KEYS)}"
            )
        if not isinstance(entry, dict):
            raise BundleError(f"{manifest}: '{where}artifacts.{key}' must be an object, got {type(entry).__name__}")
        _warn_unknown(entry, "artifact", f"{where}artifacts.{key}.", manifest)
        file = _require(entry, "file", str, f"{where}artifacts.{key}.", manifest)
        sha = _require(entry, "sha256", str, f"{where}artifacts.{key}.", manifest)
        size = _require(entry, "size", int, f"{where}artifacts.{key}.", manifest)
        path = _artifact_path(file, root, f"{where}artifacts.{key}.", manifest)
        backend, precision = ARTIFACT_KEYS[key]
        input_hw: tuple[tuple[int, int], tuple[int, int]] | None
        if "input_hw" in entry:
            input_hw = _parse_input_hw(entry["input_hw"], f"{where}artifacts.{key}.", manifest)
        else:
            # before input_hw was recorded, TensorRT was compiled for the full window alone
            input_hw = (full_window, full_window) if backend == "tensorrt" else None
        artifacts[key] = Artifact(key, backend, precision, path, sha.lower(), size, input_hw)
    # input_shape ["N", channels, H, W]: 1 for a 2D model, 2 context + 1 for a 2.5D one
    shape = raw.get("input_shape", ["N", 1])
    channels = shape[1] if isinstance(shape, list) and len(shape) > 1 else None
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1 or channels % 2 == 0:
        raise BundleError(
            f"{manifest}: '{where}input_shape' is {shape!r}: its channels must be an odd positive int "
            f"(1, or a slice with its neighbours each side)"
        )
    if kind == "classifier" and channels != 1:
        raise BundleError(f"{manifest}: '{where}input_shape' has {channels} channels; a region classifier reads one")
    _check_shapes(raw, kind, num_outputs, pre, where, manifest)
    return ModelInfo(name, kind, architecture, num_outputs, artifacts, raw, channels, order)


def _verify_artifact(artifact: Artifact) -> None:
    if not artifact.path.is_file():
        if artifact.path.is_symlink():  # is_file follows the link: its target is gone or not a file
            raise BundleError(
                f"{artifact.path}: the {artifact.key} artifact is a symbolic link to {os.readlink(artifact.path)}, "
                f"which is missing or not a regular file (a DVC or git-annex file not fetched yet?)"
            )
        raise BundleError(f"{artifact.path}: the {artifact.key} artifact named in the manifest is missing")
    size = artifact.path.stat().st_size
    if size != artifact.size:
        raise BundleError(
            f"{artifact.path}: size is {size} bytes, the manifest records {artifact.size} (truncated or replaced)"
        )
    digest = sha256_file(artifact.path)
    if digest != artifact.sha256:
        raise BundleError(
            f"{artifact.path}: sha256 is {digest}, the manifest records {artifact.sha256} (the file was modified)"
        )


class Bundle:
    """A verified model bundle; make engines with `engine`.

    Do not construct directly: use `load_bundle`. A bundle pickles as its directory, loaded and
    verified again where it is unpickled.

    Attributes
    ----------
    path : the bundle directory.
    manifest : the parsed ``manifest.json`` (read-only by convention).
    preprocessing : `Preprocessing` (target spacing (dy, dx) mm, size (H, W), normalisation).
    routing : region code (0 non-cardiac, 1 base, 2 middle, 3 apex) -> segmentation model name
        (cmrsdk's codes, whatever the manifest's ``regions`` numbering).
    classifier : the region classifier's model name, or None for a bundle without one.
    regions_from : how routed mode finds each slice's region by default: "classifier" (the
        paper's slice classifier) or "segmentation" (the ground-truth rule of `cmrsdk.regions`
        applied to the baseline U-Net's masks).
    labels : label code -> name (0 background, 1 LVBP, 2 LVM, 3 RVBP): the channels of every
        segmentation engine's answer, whatever order the manifest names (see the module docstring).
    regions : region code -> name (0 non-cardiac, 1 base, 2 middle, 3 apex), likewise.
    models : model name -> `ModelInfo`.
    manifest_sha256 : hex sha256 of ``manifest.json`` as read by `load_bundle`.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        preprocessing: Preprocessing,
        routing: dict[int, str],
        classifier: str | None,
        labels: dict[int, str],
        regions: dict[int, str],
        models: dict[str, ModelInfo],
        manifest_sha256: str = "",
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.preprocessing = preprocessing
        self.routing = routing
        self.classifier = classifier
        self.regions_from: str = manifest.get("regions_from") or ("classifier" if classifier else "segmentation")
        self.labels = labels
        self.regions = regions
        self.models = models
        self.manifest_sha256 = manifest_sha256
        self._engines: dict[tuple[Any, ...], Engine] = {}
        self._lock = threading.Lock()

    def select_artifact(
        self,
        model_name: str,
        backend: str = "auto",
        device: str = "cpu",
        *,
        fp16: bool = False,
        precision: str = "fp32",
        shapes: Sequence[tuple[int, int]] = (),
    ) -> Artifact:
        """The artifact that `engine` would load (see `cmrsdk.engines.AUTO_ORDER` for "auto").

        Parameters
        ----------
        model_name : a key of `models`.
        backend : "auto" or one of `cmrsdk.engines.BACKENDS` ("openvino" runs the "onnx" artifact).
        device : "cpu" or "cuda".
        fp16 : the same as ``precision="fp16"`` (kept for callers written before ``precision``).
        precision : "fp32", "fp16" (TorchScript cast at load or TensorRT's fp16 artifact, CUDA),
            "bf16" (OpenVINO compiling the ONNX artifact in bf16, or TorchScript cast at load; a
            CPU with native bf16) or "int8" (the "onnx-int8" artifact, added by
            ``python -m export.quantize``).
        shapes : (H, W) input sizes in pixels the engine must run; an artifact that cannot
            run one of them (its ``input_hw``, see the module docstring) is passed over.

        Raises
        ------
        InputError
            Unknown model name, backend, device or precision.
        BackendUnavailableError
            No artifact of the model can run here at that precision and those shapes; the
            message names what is missing for each backend tried.
        """
        check_device(device)
        if model_name not in self.models:
            raise InputError(
                f"'model_name' {model_name!r} is not in the bundle {self.path}, expected one of {sorted(self.models)}"
            )
        if backend != "auto" and backend not in BACKENDS:
            raise InputError(f"'backend' must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise InputError(f"'precision' must be one of {PRECISIONS}, got {precision!r}")
        if fp16 and precision not in ("fp32", "fp16"):
            raise InputError(f"'fp16' asks for half precision but 'precision' is {precision!r}: give one of them")
        precision = "fp16" if fp16 else precision
        if precision == "fp16" and backend == "onnx":
            raise InputError("'fp16' is not offered by the 'onnx' backend; use 'torchscript' or 'tensorrt' on 'cuda'")
        if precision == "bf16" and device != "cpu":
            raise InputError("'bf16' is offered on device 'cpu' only (OpenVINO, TorchScript); on 'cuda' use 'fp16'")
        model = self.models[model_name]
        order = AUTO_ORDER[device] if backend == "auto" else (backend,)
        reasons = []
        for candidate in order:
            key = _KEY_OF.get((candidate, precision))
            if key is None:
                able = ", ".join(b for b in BACKENDS if (b, precision) in _KEY_OF)
                reasons.append(f"{candidate}: has no {precision} path ({precision} runs on {able})")
                continue
            if candidate == "tensorrt" and (missing := backend_missing(candidate, device)) is not None:
                # a CPU-only machine lacks more than the file: say that first
                reasons.append(f"{candidate}: {missing}")
                continue
            if key not in model.artifacts:
                hint = _ADD_ARTIFACT.get(key, "").format(bundle=self.path)
                reasons.append(
                    f"{candidate}: the bundle has no {key!r} artifact for {model_name!r}{f' ({hint})' if hint else ''}"
                )
                continue
            artifact = model.artifacts[key]
            refused = [hw for hw in shapes if not artifact.accepts(tuple(hw))]  # type: ignore[arg-type]
            if refused:
                (h0, w0), (h1, w1) = artifact.input_hw  # type: ignore[misc]
                reasons.append(
                    f"{candidate}: the {key!r} artifact of {model_name!r} runs (H, W) from {h0}x{w0} to "
                    f"{h1}x{w1}, not {' and '.join(f'{h}x{w}' for h, w in refused)}"
                )
                continue
            compiled = model.record["artifacts"][key].get("device")
            if compiled is not None and compiled != device:  # an AOTInductor package runs where it was compiled
                reasons.append(f"{candidate}: the {key!r} artifact of {model_name!r} was compiled for {compiled!r}")
                continue
            missing = backend_missing(candidate, device)
            if missing is not None:
                reasons.append(f"{candidate}: {missing}")
                continue
            # the backend that runs it: OpenVINO reads the "onnx" artifact
            return artifact if artifact.backend == candidate else replace(artifact, backend=candidate)
        raise BackendUnavailableError(
            f"no engine for model {model_name!r} on device {device!r} in {precision}: " + "; ".join(reasons)
        )

    def engine(
        self,
        model_name: str,
        backend: str = "auto",
        device: str = "cpu",
        *,
        fp16: bool = False,
        precision: str = "fp32",
        shapes: Sequence[tuple[int, int]] = (),
        threads: int | None = None,
        **options: Any,
    ) -> Engine:
        """The engine for one model, made on first use and shared after.

        Parameters
        ----------
        model_name : a key of `models` (e.g. ``routing[region]`` or `classifier`).
        backend : "auto" or one of `cmrsdk.engines.BACKENDS` ("openvino" runs the "onnx" artifact).
        device : "cpu" or "cuda".
        fp16 : half precision, the same as ``precision="fp16"``.
        precision : "fp32", "fp16", "bf16" or "int8" (see `select_artifact`).
        shapes : (H, W) sizes the engine must run (see `select_artifact`).
        threads : CPU threads of one inference, given as the chosen backend takes them
            (`cmrsdk.engines.thread_options`: ONNX Runtime's ``intra_op_threads``, OpenVINO's
            ``threads``; an option given in ``options`` wins); None, or a TorchScript or AOTInductor
            engine (torch's process-wide pool, ``torch.set_num_threads``): the runtime's own choice.
        **options : passed to the engine (see `cmrsdk.engines.create_engine`).

        Returns
        -------
        Engine mapping float32 (N, channels, H, W) (`ModelInfo.channels`: 1, or a 2.5D model's
        slice between its neighbours) to float32 (N, C, H, W) for a segmentation model or
        float32 (N, R) for the classifier. A TensorRT engine gets the model's
        ``tensorrt_max_batch`` as its ``max_batch``, so larger batches are split, not refused.
        """
        artifact = self.select_artifact(model_name, backend, device, fp16=fp16, precision=precision, shapes=shapes)
        if device == "cpu":
            options = {**thread_options(artifact.backend, threads), **options}
        if artifact.backend == "torchscript" and (fp16 or precision == "fp16"):
            options["fp16"] = True  # the fp32 archive, cast at load
        if artifact.backend == "torchscript" and precision == "bf16":
            options["bf16"] = True
        if artifact.backend == "openvino":
            options["precision"] = precision
        if artifact.backend == "tensorrt" or artifact.precision == "int8":
            options["precision"] = artifact.precision
        max_batch = self.models[model_name].record.get("tensorrt_max_batch")
        if artifact.backend == "tensorrt" and max_batch is not None:
            options.setdefault("max_batch", int(max_batch))
        key = (model_name, artifact.key, device, tuple(sorted(options.items())))
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                # re-check the hash: the file may have changed since load_bundle
                _verify_artifact(artifact)
                engine = create_engine(artifact.path, artifact.backend, device, **options)
                self._fit(engine, model_name)
                self._engines[key] = engine
        return engine

    def _fit(self, engine: Engine, model_name: str) -> None:
        """Check what the artifact records (an ONNX graph's input and output channels) against the
        manifest, then give the engine the manifest's input channels and output order."""
        model = self.models[model_name]
        manifest = self.path / MANIFEST_NAME
        if engine.channels is not None and engine.channels != model.channels:
            raise BundleError(
                f"{manifest}: 'models.{model_name}.input_shape' gives {model.channels} input channel(s), but "
                f"{engine.path.name} reads {engine.channels}"
            )
        if engine.num_outputs is not None and engine.num_outputs != model.num_outputs:
            raise BundleError(
                f"{manifest}: 'models.{model_name}.num_outputs' is {model.num_outputs}, but {engine.path.name} "
                f"answers {engine.num_outputs} channels"
            )
        engine.channels = model.channels
        engine.output_order = model.output_order
        if model.kind == "segmentation":
            engine.multiple = _stride(model.architecture)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its directory (engines and locks cannot travel): the unpickling process loads
        and verifies it again, and refuses it where its manifest changed meanwhile."""
        if self.path is None or not (Path(self.path) / MANIFEST_NAME).is_file():
            raise BundleError(
                f"bundle {self.path} cannot be pickled: it is rebuilt from its directory, and {self.path} "
                f"holds no {MANIFEST_NAME}; pickle a bundle read by load_bundle, or its path"
            )
        return (_reload_bundle, (str(self.path), self.manifest_sha256))

    def __repr__(self) -> str:
        return f"Bundle(path={str(self.path)!r}, models={sorted(self.models)}, routing={self.routing})"


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle directory.

    A file of the bundle that cannot be read (permissions, a disk error) is one `BundleError`
    naming it, as a modified one is.

    Parameters
    ----------
    path : the bundle directory (holding ``manifest.json``), or the manifest file itself.

    Returns
    -------
    Bundle, every artifact of which exists and matches its recorded size and sha256.

    Raises
    ------
    BundleError
        Missing or malformed manifest, unknown format or version, routing to unknown models,
        or a missing, truncated or modified artifact; the message names the file.
    """
    try:
        return _load_bundle(path)
    except OSError as exc:
        where = exc.filename or path
        raise BundleError(f"{where}: bundle file cannot be read ({exc.strerror or type(exc).__name__})") from exc


def _reload_bundle(path: str, manifest_sha256: str) -> Bundle:
    """`Bundle.__reduce__`'s rebuild in the unpickling process."""
    bundle = load_bundle(path)
    if manifest_sha256 and bundle.manifest_sha256 != manifest_sha256:
        raise BundleError(
            f"{path}: the manifest's sha256 is {bundle.manifest_sha256}, the pickled bundle's was "
            f"{manifest_sha256} (the bundle changed after it was pickled)"
        )
    return bundle


def _load_bundle(path: str | Path) -> Bundle:
    root = Path(path)
    if root.is_file() and root.name == MANIFEST_NAME:
        root = root.parent
    manifest_path = root / MANIFEST_NAME
    if root.is_file() and zipfile.is_zipfile(root):
        raise BundleError(f"{root}: a ZIP archive, not a bundle directory: unpack it first and give the folder")
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (it does not exist or is not a directory)")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: the bundle manifest is missing")
    # the bytes are read once, and the hash recorded in every segmentation's provenance is of the
    # very bytes parsed (the file could change between a read and a second read)
    data = manifest_path.read_bytes()
    try:
        raw = json.loads(data.decode("utf-8-sig"))  # -sig: a byte-order mark (Windows editors) is not JSON
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    except RecursionError:  # "[[[[...]]]]" deeper than the interpreter's stack: no manifest is
        raise BundleError(f"{manifest_path}: not valid JSON (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path}: the manifest must be a JSON object, got {type(raw).__name__}")
    fmt = raw.get("format")
    if fmt != FORMAT_NAME:
        raise BundleError(f"{manifest_path}: 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
        newer = type(version) is int and version > FORMAT_VERSION
        raise BundleError(
            f"{manifest_path}: 'format_version' is {version!r}, this cmrsdk reads {SUPPORTED_FORMAT_VERSIONS}"
            + (" (written for a newer cmrsdk: upgrade cmrsdk to read it)" if newer else "")
        )
    _warn_unknown(raw, "", "", manifest_path)
    preprocessing = _parse_preprocessing(_require(raw, "preprocessing", dict, "", manifest_path), manifest_path)
    labels = _int_keys(_require(raw, "labels", dict, "", manifest_path), "labels", manifest_path)
    regions = _int_keys(_require(raw, "regions", dict, "", manifest_path), "regions", manifest_path)
    # the models' output channels in cmrsdk's order, by the manifest's names
    orders = {
        "segmentation": _canonical_order(labels, LABEL_NAMES, "labels", manifest_path),
        "classifier": _canonical_order(regions, REGION_NAMES, "regions", manifest_path),
    }
    # read right here whatever the version; but cmrsdk before 0.14.0 reads format 1 with channel c as code c
    moved = [f"'{key}'" for key, kind in (("labels", "segmentation"), ("regions", "classifier"))
             if orders[kind] != tuple(range(len(orders[kind])))]  # fmt: skip
    if moved and version < 2:
        warn(
            f"{manifest_path}: {' and '.join(moved)} {'name' if len(moved) > 1 else 'names'} cmrsdk's codes in "
            f"another order, but 'format_version' is {version}: cmrsdk before 0.14.0 reads format 1 with output "
            f'channel c as code c (LV and RV swapped, without a word); set "format_version": 2, which they refuse',
            stacklevel=3,
        )
    models_raw = _require(raw, "models", dict, "", manifest_path)
    models = {
        name: _parse_model(name, entry, root, manifest_path, preprocessing, orders)
        for name, entry in models_raw.items()
    }
    routing_raw = _int_keys(_require(raw, "routing", dict, "", manifest_path), "routing", manifest_path)
    if not routing_raw:
        raise BundleError(
            f"{manifest_path}: 'routing' is empty: it must route region {REGION_NAMES[0]!r} (and any other) to a "
            f'segmentation model, e.g. {{"0": "baseline"}}'
        )
    for region, name in routing_raw.items():
        if region not in regions:
            raise BundleError(f"{manifest_path}: 'routing' has region code {region}, expected one of {sorted(regions)}")
        if name not in models or models[name].kind != "segmentation":
            raise BundleError(
                f"{manifest_path}: 'routing.{region}' names {name!r}, which is not a segmentation model of the bundle"
            )
    # keyed by the manifest's region codes; the pipeline asks by cmrsdk's
    region_order = orders["classifier"]
    routing = {k: routing_raw[region_order[k]] for k in sorted(REGION_NAMES) if region_order[k] in routing_raw}
    classifier = raw.get("classifier")
    if classifier is not None and (classifier not in models or models[classifier].kind != "classifier"):
        raise BundleError(
            f"{manifest_path}: 'classifier' names {classifier!r}, which is not a classifier model of the bundle"
        )
    regions_from = raw.get("regions_from")
    if regions_from not in (None, *REGIONS_FROM):
        raise BundleError(f"{manifest_path}: 'regions_from' is {regions_from!r}, expected one of {REGIONS_FROM}")
    if regions_from == "classifier" and classifier is None:
        raise BundleError(f"{manifest_path}: 'regions_from' is 'classifier' but the bundle names no classifier")
    for model in models.values():
        for artifact in model.artifacts.values():
            _verify_artifact(artifact)
    return Bundle(
        root,
        raw,
        preprocessing,
        routing,
        classifier,
        dict(LABEL_NAMES),  # the engines answer in cmrsdk's order whatever the manifest's
        dict(REGION_NAMES),
        models,
        hashlib.sha256(data).hexdigest(),
    )
