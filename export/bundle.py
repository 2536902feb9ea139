"""Turn trained models into a verified cmrsdk bundle (TorchScript, ONNX, TensorRT + manifest).

Command line::

    python -m export.bundle --checkpoints baseline=runs/baseline.pt base=runs/base.pt \\
        middle=runs/middle.pt apex=runs/apex.pt classifier=runs/resnet18.pt \\
        --examples slices.npy -o bundles/acdc

Programmatic (tests, notebooks)::

    build_bundle({"baseline": (net, {"kind": "segmentation"})}, {0: "baseline", ...},
                 Preprocessing((1.5625, 1.5625), (224, 224), "robust_zscore"), "out/")

Every exported model is wrapped (`ProbabilityModel`) so that the artifact maps a float32
normalised batch (N, 1, H, W) to softmax probabilities: (N, C, H, W) for a U-Net, (N, R) for
the region classifier. Only the full-resolution output is exported (deep-supervision outputs
never reach an artifact). Each artifact is saved, loaded back through `cmrsdk.engines` and
compared with the eager model (`export.parity`); the bundle is written only when every
artifact passes, into a temporary directory renamed into place at the end. An existing output
folder is replaced only when asked (``--overwrite``) and only when it is a bundle: its manifest
and the artifact files that manifest names, nothing else.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Collection, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import cmrsdk
from cmrsdk.bundle import (
    ARTIFACT_KEYS,
    FORMAT_NAME,
    MANIFEST_NAME,
    MODEL_KINDS,
    REGIONS_FROM,
    Preprocessing,
    required_format_version,
    sha256_file,
)
from cmrsdk.engines import BACKENDS, create_engine
from cmrsdk.engines.aoti import aoti_missing
from cmrsdk.engines.tensorrt import tensorrt_missing
from cmrsdk.preprocess import context_slices
from cmrsdk.errors import BundleError, InputError, ReadError, WriteError
from cmrsdk.study import _swap
from cmrsdk.labels import LABEL_NAMES, REGION_NAMES
from cmrsdk.heart import HEART_SEARCHES
from export.models import get_model
from export.parity import ParityResult, check_parity, eager_probabilities, parity_inputs
from export.reuse import exported, network_key

__all__ = [
    "FORMATS",
    "DEFAULT_FORMATS",
    "ONNX_OPSET",
    "ProbabilityModel",
    "build_bundle",
    "load_checkpoint",
    "tensorrt_shapes",
    "main",
]

#: artifact formats: one per engine backend (cmrsdk.engines.BACKENDS) but OpenVINO, which runs the ONNX file
FORMATS: tuple[str, ...] = tuple(b for b in BACKENDS if b != "openvino")
#: what is written unless asked otherwise: AOTInductor compiles C++ for tens of seconds a model, so
#: it is written only when named (or added later by ``python -m export.aoti BUNDLE``)
DEFAULT_FORMATS: tuple[str, ...] = tuple(f for f in FORMATS if f != "aoti")
ONNX_OPSET = 18


class ProbabilityModel(nn.Module):
    """What an artifact contains: the trained network followed by a softmax over axis 1.

    ``forward(image)``: float32 (N, 1, H, W) -> float32 probabilities (N, C, H, W) or (N, C).
    A network whose forward returns a list or tuple (deep supervision, full resolution first)
    contributes only its first element.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.net(image)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return torch.softmax(out.float(), dim=1)


class _HalfModel(nn.Module):
    """fp16 wrapper for TensorRT: float32 in and out, the network in half precision inside.

    torch-tensorrt >= 2.13 takes the precision from the model's dtypes (explicit typing), not
    from ``enabled_precisions``, so the fp16 engine is built from a half-precision module.
    """

    def __init__(self, model: ProbabilityModel) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.half()).float()


def input_channels(net: nn.Module) -> int:
    """The channels a network reads: its first convolution's (1 for a 2D U-Net, 2 context + 1 for
    a 2.5D one); 1 for a network without one."""
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    channels = int(first.in_channels) if first is not None else 1
    if channels % 2 == 0:
        raise InputError(
            f"a network reading {channels} channels cannot be bundled: the input is one slice (1) or "
            f"a slice between as many neighbours each side (an odd count)"
        )
    return channels


def _check_output(name: str, kind: str, out: torch.Tensor, size: tuple[int, int], batch: int) -> int:
    """Validate the eager output's shape for the model kind; return C (classes or regions)."""
    shape = tuple(out.shape)
    if kind == "segmentation" and (len(shape) != 4 or shape[0] != batch or shape[2:] != size):
        raise InputError(f"model {name!r} (segmentation) must output (N, C, {size[0]}, {size[1]}), got {shape}")
    if kind == "classifier" and (len(shape) != 2 or shape[0] != batch):
        raise InputError(f"model {name!r} (classifier) must output (N, R), got {shape}")
    return int(shape[1])


def _export_torchscript(model: ProbabilityModel, example: torch.Tensor, path: Path) -> None:
    # trace, not script: the networks are static graphs and tracing needs no annotations.
    # torch.jit is deprecated from torch 2.14; it stays because C++ libtorch loads it (announced once).
    from cmrsdk.engines.torchscript import quiet_torchscript

    with quiet_torchscript():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
    strip_torchscript_debug(path)


def strip_torchscript_debug(path: Path) -> None:
    """Rewrite a TorchScript archive without its ``.debug_pkl`` entries: they hold the export
    machine's source paths, used only to point error messages at Python lines; the graph, code
    and weights are copied byte for byte (the same outputs)."""

    with zipfile.ZipFile(path) as archive:
        kept = [
            (info, archive.read(info.filename))
            for info in archive.infolist()
            if not info.filename.endswith(".debug_pkl")
        ]
    temporary = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(temporary, "w") as archive:
        for info, data in kept:
            archive.writestr(info, data)
    temporary.replace(path)


#: the node metadata of torch's ONNX exporter that holds the export machine's source paths
ONNX_STACK_TRACE = "pkg.torch.onnx.stack_trace"


def strip_onnx_stack_traces(proto: Any) -> int:
    """Drop `ONNX_STACK_TRACE` from every node's metadata of an ``onnx.ModelProto`` (in place);
    returns how many were dropped. The graph and weights are untouched."""
    dropped = 0
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != ONNX_STACK_TRACE]
        dropped += len(node.metadata_props) - len(kept)
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return dropped


def _export_onnx(model: ProbabilityModel, example: torch.Tensor, path: Path) -> int:
    """Write ONNX with dynamic batch, height and width; return the opset written (checked >= ONNX_OPSET).

    Height and width stay dynamic so that the pipeline can narrow the window to the heart
    (``Pipeline(heart_crop=...)``); ``Dim.AUTO`` lets the exporter find the U-Net's own
    constraints (sizes that its strides divide).
    """
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    auto = torch.export.Dim.AUTO
    # torch 2.14's exporter is the dynamo one: dynamic_shapes keyed by forward's argument name
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["probabilities"],
        opset_version=ONNX_OPSET,
        dynamo=True,
        external_data=False,
        dynamic_shapes={"image": {0: batch, 2: auto, 3: auto}},
        verbose=False,
    )
    proto = onnx.load(str(path))
    if strip_onnx_stack_traces(proto):  # the export machine's source paths: not shipped
        onnx.save(proto, str(path))
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if opset < ONNX_OPSET or not dim0.dim_param:
        raise BundleError(
            f"{path}: ONNX export wrote opset {opset} and batch axis {dim0}, expected opset >= {ONNX_OPSET} and a dynamic batch"
        )
    return opset


def tensorrt_shapes(
    size: tuple[int, int], heart_crop: tuple[int, int] | None, max_batch: int, channels: int = 1
) -> dict[str, tuple[int, int, int, int]]:
    """The (N, channels, H, W) range a TensorRT artifact is compiled for: what the pipeline feeds it.

    Batch 1..``max_batch``; height and width from the heart crop (or the full window, for a
    bundle without one) up to the full window ``size``: the U-Nets see the crop, or the full
    window where no heart is found and in the locating pass. Optimised for the common case, a
    batch of 16 (at most ``max_batch``) heart crops.

    Returns
    -------
    ``{"min_shape": ..., "opt_shape": ..., "max_shape": ...}``, the keyword arguments of
    ``torch_tensorrt.Input``.
    """
    low = tuple(heart_crop) if heart_crop is not None else tuple(size)
    if max_batch < 1 or not all(0 < lo <= hi for lo, hi in zip(low, size)):
        raise InputError(f"'heart_crop' {heart_crop} must fit in 'size' {size} and 'max_batch' {max_batch} be >= 1")
    return {
        "min_shape": (1, channels, *low),
        "opt_shape": (min(16, max_batch), channels, *low),  # type: ignore[dict-item]
        "max_shape": (max_batch, channels, *size),
    }


def _export_tensorrt(
    model: ProbabilityModel, shapes: Mapping[str, tuple[int, ...]], path: Path, precision: str
) -> None:
    """Compile for the dynamic range ``shapes`` (`tensorrt_shapes`) and save an ExportedProgram.

    NOT EXECUTED on this project's machines yet (no GPU, no torch-tensorrt where it was written,
    issue 16): written against torch-tensorrt's documented API. The network is exported first by
    ``torch.export`` with the batch bounded and height and width ``Dim.AUTO`` (as for ONNX: the
    exporter finds the U-Net's divisibility constraints itself), then compiled with
    ``torch_tensorrt.dynamo.compile`` for the min / opt / max shapes.
    """
    import torch_tensorrt

    module: nn.Module = copy.deepcopy(model).cuda().eval()
    if precision == "fp16":
        module = _HalfModel(module).eval()  # type: ignore[arg-type]
    spec = torch_tensorrt.Input(**shapes, dtype=torch.float32)
    example = torch.randn(*shapes["opt_shape"], device="cuda")
    batch = torch.export.Dim("batch", min=1, max=int(shapes["max_shape"][0]))
    exported = torch.export.export(
        module, (example,), dynamic_shapes={"image": {0: batch, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
    )
    compiled = torch_tensorrt.dynamo.compile(exported, inputs=[spec])
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=[spec])


def _versions() -> dict[str, str]:
    versions = {
        "cmrsdk": cmrsdk.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for module in ("onnx", "onnxruntime", "torch_tensorrt"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return versions


def build_bundle(
    models: Mapping[str, tuple[nn.Module, Mapping[str, Any]]],
    routing: Mapping[int, str],
    preprocessing: Preprocessing,
    out_dir: str | Path,
    example_slices: np.ndarray | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    max_batch: int = 64,
    overwrite: bool = False,
    regions_from: str | None = None,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Export models into a bundle directory, with parity checks, and return its path.

    Parameters
    ----------
    models : name -> (network, info). The network maps float32 (N, channels, H, W) to logits
        (channels 1, or 2 context + 1 for a 2.5D U-Net: `input_channels`); info has
        ``kind`` ("segmentation" or "classifier", required) and optionally ``architecture``
        (text), ``training`` (config dict), ``metrics`` (validation figures).
    routing : region code (0 non-cardiac, 1 base, 2 middle, 3 apex) -> segmentation model name.
    preprocessing : target spacing (dy, dx) mm, input size (H, W), normalisation name. A U-Net's
        strides must divide ``size`` and ``heart_crop``.
    out_dir : the bundle directory to create.
    example_slices : float32 (N, 1, H, W) real normalised slices for the parity checks (seeded
        random slices are added either way).
    formats : any of "torchscript", "onnx", "tensorrt", "aoti" (default: all but "aoti", whose
        C++ compilation takes tens of seconds a model). TensorRT is skipped where torch-tensorrt
        or a CUDA GPU is missing, AOTInductor where its runtime or a C++ compiler is, with the
        reason recorded in the manifest's ``skipped``; formats that leave nothing to write are refused.
    max_batch : the largest batch a TensorRT artifact accepts (its dynamic range is 1..max_batch).
    overwrite : replace an existing ``out_dir``, which must be a bundle (its manifest and the files
        it names, nothing else) and is swapped for the new one only once that is complete.
    regions_from : routed mode's default region source, "classifier" or "segmentation" (None:
        the classifier when the bundle has one, else the segmentation rule).
    inputs : the files the models and examples were read from: ``out_dir`` may neither be nor hold one.

    Raises
    ------
    InputError
        Bad models, routing, formats, window sizes or example slices.
    ParityError
        An artifact differs from its eager model beyond tolerance (nothing is written).
    WriteError
        ``out_dir`` exists and ``overwrite`` is False; or it is not a bundle, or holds an input
        or the current folder.
    """
    out = Path(out_dir)
    kinds, classifier = _check_models(models, routing, formats, regions_from)
    _check_window(models, kinds, preprocessing)
    target = _check_out_dir(out, overwrite=overwrite, inputs=inputs)
    skipped = _skipped(formats)
    written = [f for f in formats if f not in skipped]
    if not written:
        reasons = "; ".join(f"{fmt}: {why}" for fmt, why in skipped.items())
        raise InputError(
            f"'formats' {tuple(formats)} leave no artifact that can be written here ({reasons}); "
            "add torchscript or onnx"
        )

    slices, real = parity_inputs(preprocessing.size, example_slices)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        records: dict[str, Any] = {}
        for name, (net, info) in models.items():
            model = ProbabilityModel(copy.deepcopy(net).float().cpu().eval()).eval()
            channels = input_channels(net)
            # a 2.5D U-Net reads each parity slice between its neighbours in the example set
            inputs_ = context_slices(slices, (channels - 1) // 2)
            example = torch.from_numpy(inputs_[:2].copy())
            try:
                with torch.inference_mode():
                    eager = model(example)
            except RuntimeError as exc:  # a network whose own constraints the window breaks
                raise InputError(
                    f"model {name!r} cannot run a {tuple(example.shape)} input ({str(exc).splitlines()[0]})"
                ) from exc
            classes = _check_output(name, kinds[name], eager, preprocessing.size, 2)
            checks = _parity_references(model, kinds[name], inputs_, preprocessing)
            # a network exported already in this command is copied (`export.reuse.reused_exports`)
            settings = (kinds[name], tuple(written), tuple(preprocessing.size), preprocessing.heart_crop, max_batch)
            files, extra = exported(
                partial(network_key, model, example, settings),
                name,
                staging,
                partial(
                    _export_artifacts, model, name, kinds[name], example, staging, written, preprocessing, max_batch
                ),
            )
            artifacts, parity = _check_artifacts(files, checks, real, extra)
            records[name] = _model_record(net, info, kinds[name], classes, preprocessing.size, artifacts, parity, extra)
        manifest = _manifest(records, routing, preprocessing, classifier, regions_from, skipped)
        _publish(staging, manifest, target, overwrite=overwrite, inputs=inputs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _skipped(formats: Collection[str]) -> dict[str, str]:
    """Format -> why it cannot be written here, for the requested formats that need what is missing."""
    skipped: dict[str, str] = {}
    if "tensorrt" in formats and (why := tensorrt_missing()) is not None:
        skipped["tensorrt"] = why
    if "aoti" in formats:
        why = aoti_missing("cpu")
        if why is None and shutil.which("c++") is None and shutil.which("g++") is None:
            why = "AOTInductor compiles C++ and no c++ / g++ is on PATH"
        if why is not None:
            skipped["aoti"] = why
    return skipped


def _check_out_dir(out: Path, *, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """Where the bundle goes, checked before any export; returns it absolute (a link to a folder followed).

    The folder is replaced whole, so it must be new, or with ``overwrite`` an earlier bundle (or
    empty): a manifest and only the files that manifest names. It may neither be nor hold one of
    ``inputs`` or the current folder.
    """
    target = Path(os.path.realpath(out))  # a link to a folder: replaced where it lies, the link kept
    here: Path | None
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was deleted under the process: nothing there to protect
        here = None
    for source in inputs:
        path = Path(os.path.realpath(source))
        if path.is_relative_to(target):
            raise WriteError(
                f"{out}: output folder is or holds the input {source}; the bundle replaces the folder whole, "
                "so write it to another folder"
            )
    if here is not None and here.is_relative_to(target):
        raise WriteError(
            f"{out}: output folder is the current folder or holds it; the bundle replaces the folder whole, "
            "so write it to another folder"
        )
    if not os.path.lexists(target):
        return target
    if not target.is_dir():
        raise WriteError(f"{out}: output folder is a file, not a folder")
    if not overwrite:
        raise WriteError(f"'out_dir' {out} already exists; pass overwrite=True (--overwrite) to replace a bundle there")
    entries = sorted(target.iterdir())
    if not entries:
        return target
    try:
        manifest = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise ValueError(f"its 'format' is not {FORMAT_NAME!r}")
        named = {MANIFEST_NAME} | {
            str(artifact["file"])
            for record in manifest.get("models", {}).values()
            for artifact in record.get("artifacts", {}).values()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        shown = _shown([e.name + ("/" if e.is_dir() else "") for e in entries])
        why = "no" if isinstance(exc, FileNotFoundError) else f"an unreadable ({type(exc).__name__}: {exc})"
        raise WriteError(
            f"{out}: --overwrite replaces only a cmrsdk bundle, and this folder holds {why} bundle "
            f"{MANIFEST_NAME}; it holds {shown}: choose a new or empty folder"
        ) from exc
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries if e.name not in named or not e.is_file()]
    if foreign:
        raise WriteError(
            f"{out}: --overwrite replaces only a cmrsdk bundle, and this bundle folder also holds "
            f"{len(foreign)} entries its manifest does not name ({_shown(foreign)}): move them, or choose a new "
            "or empty folder"
        )
    return target


def _shown(names: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` names and how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_window(
    models: Mapping[str, tuple[nn.Module, Mapping[str, Any]]],
    kinds: Mapping[str, str],
    preprocessing: Preprocessing,
    flags: Mapping[str, str] | None = None,
) -> None:
    """Refuse a window or heart crop that a U-Net's strides do not divide (its skip connections
    would not line up), naming the option, the U-Net and the nearest valid sizes.

    ``flags``: field ("size", "heart_crop") -> the command-line option to name in the message.
    """
    for name, (net, _) in models.items():
        divisor = getattr(net, "divisor", None)
        if kinds[name] != "segmentation" or not isinstance(divisor, int) or divisor <= 1:
            continue
        for field_name, hw in (("size", preprocessing.size), ("heart_crop", preprocessing.heart_crop)):
            if hw is None or all(int(v) % divisor == 0 for v in hw):
                continue
            where = (flags or {}).get(field_name, f"preprocessing.{field_name}")
            below = [v if v % divisor == 0 else max(divisor, v // divisor * divisor) for v in map(int, hw)]
            above = [v if v % divisor == 0 else (v // divisor + 1) * divisor for v in map(int, hw)]
            nearest = " or ".join(dict.fromkeys(" ".join(map(str, c)) for c in (below, above)))
            features = list(getattr(net, "features", []))
            raise InputError(
                f"{where} {' '.join(map(str, hw))}: model {name!r} is a U-Net of {len(features)} stages "
                f"(features {features}), whose strides need heights and widths that are multiples of "
                f"{divisor}; nearest valid: {nearest}"
            )


# -- the steps of build_bundle ----------------------------------------------------------------


def _check_models(
    models: Mapping[str, tuple[nn.Module, Mapping[str, Any]]],
    routing: Mapping[int, str],
    formats: Sequence[str],
    regions_from: str | None,
) -> tuple[dict[str, str], str | None]:
    """Validate `build_bundle`'s arguments; returns model name -> kind, and the classifier's name or None."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise InputError(f"'formats' must be a non-empty subset of {FORMATS}, got {tuple(formats)}")
    if not models:
        raise InputError("'models' is empty: a bundle needs at least one model")
    kinds: dict[str, str] = {}
    for name, entry in models.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], nn.Module)):
            raise InputError(f"'models[{name!r}]' must be (nn.Module, info dict), got {type(entry).__name__}")
        kind = entry[1].get("kind")
        if kind not in MODEL_KINDS:
            raise InputError(f"'models[{name!r}]' info 'kind' is {kind!r}, expected one of {MODEL_KINDS}")
        kinds[name] = kind
    classifiers = [n for n, k in kinds.items() if k == "classifier"]
    if len(classifiers) > 1:
        raise InputError(
            f"'models' holds {len(classifiers)} classifiers {classifiers}, a bundle routes with at most one"
        )
    for region, name in routing.items():
        if region not in REGION_NAMES or kinds.get(name) != "segmentation":
            raise InputError(
                f"'routing' maps {region!r} to {name!r}: expected region codes {sorted(REGION_NAMES)} "
                f"and segmentation model names {sorted(n for n, k in kinds.items() if k == 'segmentation')}"
            )
    if regions_from not in (None, *REGIONS_FROM) or (regions_from == "classifier" and not classifiers):
        raise InputError(
            f"'regions_from' must be one of {REGIONS_FROM} ('classifier' needs a classifier model), "
            f"got {regions_from!r}"
        )
    return kinds, classifiers[0] if classifiers else None


def _parity_references(
    model: nn.Module, kind: str, slices: np.ndarray, preprocessing: Preprocessing
) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """(inputs float32 (N, 1, h, w), eager outputs, (h, w)) at each size the pipeline runs the model.

    Every artifact is checked at the full window, and a U-Net of a bundle with a heart crop at
    the crop too (its centre of the window).
    """
    size = preprocessing.size
    checks: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]] = [(slices, eager_probabilities(model, slices), size)]
    crop = preprocessing.heart_crop
    if kind == "segmentation" and crop is not None and tuple(crop) != tuple(size):
        y0, x0 = (size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2
        cropped = np.ascontiguousarray(slices[:, :, y0 : y0 + crop[0], x0 : x0 + crop[1]])
        checks.append((cropped, eager_probabilities(model, cropped), (crop[0], crop[1])))
    return checks


def _export_artifacts(
    model: nn.Module,
    name: str,
    kind: str,
    example: torch.Tensor,
    staging: Path,
    formats: Sequence[str],
    preprocessing: Preprocessing,
    max_batch: int,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write the model's artifacts in ``formats`` (those that can be written here) into ``staging``;
    returns artifact key -> file, and the extra manifest entries of the model (ONNX opset, TensorRT
    batch and shapes)."""
    files: dict[str, Path] = {}
    extra: dict[str, Any] = {}
    if "torchscript" in formats:
        files["torchscript"] = staging / f"{name}.pt"
        _export_torchscript(model, example, files["torchscript"])
    if "onnx" in formats:
        files["onnx"] = staging / f"{name}.onnx"
        extra["onnx_opset"] = _export_onnx(model, example, files["onnx"])
    if "aoti" in formats:
        from export.aoti import export_aoti  # export.aoti imports this module

        files["aoti"] = staging / f"{name}.pt2"
        export_aoti(model, files["aoti"], example)
    if "tensorrt" in formats:
        # U-Nets run at the heart crop and the full window; the classifier at the window only
        crop = preprocessing.heart_crop if kind == "segmentation" else None
        trt_shapes = tensorrt_shapes(preprocessing.size, crop, max_batch, int(example.shape[1]))
        for precision in ("fp32", "fp16"):
            files[f"tensorrt-{precision}"] = staging / f"{name}.{precision}.ep"
            _export_tensorrt(model, trt_shapes, files[f"tensorrt-{precision}"], precision)
        extra["tensorrt_max_batch"] = max_batch
        extra["tensorrt_shapes"] = {k: list(v) for k, v in trt_shapes.items()}
    return files, extra


def _check_artifacts(
    files: Mapping[str, Path],
    checks: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, int]]],
    real: int,
    extra: Mapping[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reload every artifact in each engine that can run it here and compare it with the eager model.

    Returns the manifest's ``artifacts`` entries and ``parity`` records; raises ParityError
    (from `check_parity`) where an artifact differs beyond tolerance.
    """
    cuda = torch.cuda.is_available()
    artifacts: dict[str, Any] = {}
    parity: list[dict[str, Any]] = []
    for key, path in files.items():
        backend, precision = ARTIFACT_KEYS[key]
        runs: list[dict[str, Any]] = []
        if backend == "tensorrt":
            runs.append({"device": "cuda", "precision": precision})
        else:
            runs.append({"device": "cpu"})
            if cuda and backend == "torchscript":
                runs += [{"device": "cuda"}, {"device": "cuda", "fp16": True}]
        for run in runs:
            device = run["device"]
            options = {k: v for k, v in run.items() if k != "device"}
            engine = create_engine(path, backend, device, **options)
            for x, ref, hw in checks:
                result: ParityResult = check_parity(key, engine, ref, x, real)
                parity.append({**result.to_json(), "input_hw": list(hw)})
        artifacts[key] = {
            "file": path.name,
            "format": backend,
            "precision": precision,
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
        }
        if backend == "aoti":
            from export.aoti import package_fields

            artifacts[key].update(package_fields([hw for _, _, hw in checks]))
        if backend == "tensorrt":
            # what select_artifact checks: TensorRT refuses sizes outside its profile
            artifacts[key]["input_hw"] = {
                "min": list(extra["tensorrt_shapes"]["min_shape"][2:]),
                "max": list(extra["tensorrt_shapes"]["max_shape"][2:]),
            }
    return artifacts, parity


def _model_record(
    net: nn.Module,
    info: Mapping[str, Any],
    kind: str,
    classes: int,
    size: tuple[int, int],
    artifacts: dict[str, Any],
    parity: list[dict[str, Any]],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest's entry for one model."""
    return {
        "kind": kind,
        "architecture": str(info.get("architecture", type(net).__name__)),
        "num_outputs": classes,
        "input_shape": ["N", input_channels(net), size[0], size[1]],
        "output_shape": ["N", classes, size[0], size[1]] if kind == "segmentation" else ["N", classes],
        "artifacts": artifacts,
        "parity": parity,
        "training": dict(info.get("training", {})),
        "metrics": dict(info.get("metrics", {})),
        **extra,
    }


def _manifest(
    records: dict[str, Any],
    routing: Mapping[int, str],
    preprocessing: Preprocessing,
    classifier: str | None,
    regions_from: str | None,
    skipped: dict[str, str],
) -> dict[str, Any]:
    """The bundle's ``manifest.json`` content, with the lowest ``format_version`` that means it to
    every reader (`cmrsdk.bundle.required_format_version`: 1 in cmrsdk's label and region order)."""
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": 1,  # set below, from the content
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "regions": {str(k): v for k, v in REGION_NAMES.items()},
        "classifier": classifier,
        "regions_from": regions_from or ("classifier" if classifier else "segmentation"),
        "routing": {str(k): v for k, v in sorted(routing.items())},
        "preprocessing": preprocessing.to_json(),
        "models": records,
        "skipped": skipped,
    }
    manifest["format_version"] = required_format_version(manifest)
    return manifest


def _publish(
    staging: Path, manifest: dict[str, Any], out: Path, *, overwrite: bool, inputs: Sequence[str | Path]
) -> None:
    """Write the manifest last, then move the staged directory to ``out``.

    ``out`` is checked again (the export took minutes, in which it may have changed); an earlier
    bundle there is renamed aside, the new one renamed in, and only then the earlier one deleted
    (`cmrsdk.study._swap`: any failure between the renames puts it back).
    """
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    os.chmod(staging, 0o755)  # mkdtemp makes the directory private; a bundle is meant to be shared
    _check_out_dir(out, overwrite=overwrite, inputs=inputs)
    _swap(staging, out)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained network from an ``export.train`` checkpoint (``last.pt``), or from a
    bundle's TorchScript archive (``<bundle>/<model>.pt``, its record read from the manifest
    beside it), so a bundle can be rebuilt with one model replaced on a machine that has only the
    repository.

    Returns
    -------
    (network in eval mode, info for `build_bundle`): info has ``kind`` ("segmentation" or
    "classifier", from the checkpoint's task), ``architecture`` (registry name and builder
    arguments), ``training`` (the run's configuration and iteration), ``metrics`` (its last
    validation) and ``preprocessing`` (target_spacing, size, normalization as trained).
    """
    from export.train import _is_torchscript, load_trained_model

    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path) and _is_torchscript(path):
        return _archived_model(path)
    net, meta = load_trained_model(path)  # raises ReadError naming the file
    spec = meta["model"]
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(spec.get("kwargs", {}).items()))
    info = {
        "kind": "segmentation" if meta.get("task") == "segmentation" else "classifier",
        "architecture": f"{spec['name']}({args})",
        "training": {"config": meta.get("config", {}), "iteration": meta.get("iteration"), "checkpoint": str(path)},
        "metrics": meta.get("metrics", {}),
        "preprocessing": meta.get("preprocessing") or {},
    }
    return net, info


def _archived_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """`load_checkpoint` for a bundle's TorchScript archive: the network rebuilt from the training
    record of the model whose "torchscript" artifact the file is, its weights from the archive."""
    from cmrsdk.engines.torchscript import quiet_torchscript

    manifest_path = path.parent / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReadError(path, f"is a TorchScript archive without a readable bundle manifest beside it ({exc})") from exc
    records = [
        (name, record)
        for name, record in manifest.get("models", {}).items()
        if record.get("artifacts", {}).get("torchscript", {}).get("file") == path.name
    ]
    if len(records) != 1:
        raise ReadError(path, f"is not the torchscript artifact of one model of {manifest_path}")
    name, record = records[0]
    spec = record.get("training", {}).get("config", {}).get("model")
    if not spec:
        raise ReadError(path, f"model {name!r} of {manifest_path} records no training [model] to rebuild it from")
    net = get_model(spec["name"], **spec.get("kwargs", {}))
    with quiet_torchscript():
        archive = torch.jit.load(str(path), map_location="cpu")
    try:
        net.load_state_dict({k.removeprefix("net."): v for k, v in archive.state_dict().items()})
    except RuntimeError as exc:
        raise ReadError(path, f"its weights do not fit its recorded [model] ({str(exc).splitlines()[0]})") from exc
    pre = manifest.get("preprocessing", {})
    info = {
        "kind": record.get("kind", "segmentation"),
        "architecture": record.get("architecture", spec["name"]),
        "training": {**record.get("training", {}), "from_bundle": str(path)},
        "metrics": record.get("metrics", {}),
        "preprocessing": {k: pre[k] for k in ("target_spacing", "size", "normalization") if k in pre},
    }
    return net.eval(), info


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise InputError(f"'{what}' entries must be KEY=VALUE, got {value!r}")
        out[key] = rest
    return out


def _preprocessing(
    args: argparse.Namespace, models: Mapping[str, tuple[nn.Module, Mapping[str, Any]]]
) -> Preprocessing:
    """The bundle's preprocessing: the command-line values, else the one all checkpoints share."""
    values: dict[str, Any] = {}
    for key, flag in (
        ("target_spacing", args.target_spacing),
        ("size", args.size),
        ("normalization", args.normalization),
    ):
        if flag is not None:
            values[key] = tuple(flag) if isinstance(flag, list) else flag
            continue
        seen = {name: info.get("preprocessing", {}).get(key) for name, (_, info) in models.items()}
        if key == "size":  # the trainer records a square size as one int, a manifest as [h, w]
            seen = {name: [v, v] if isinstance(v, int) else v for name, v in seen.items()}
        found = {json.dumps(v) for v in seen.values() if v is not None}
        if len(found) != 1:
            raise InputError(
                f"'--{key.replace('_', '-')}' is not given and the checkpoints do not agree on one: {seen}"
            )
        value = json.loads(found.pop())
        values[key] = tuple(value) if isinstance(value, list) else value
    return Preprocessing(
        tuple(float(v) for v in values["target_spacing"]),  # type: ignore[arg-type]
        tuple(int(v) for v in values["size"]),
        str(values["normalization"]),  # type: ignore[arg-type]
        tuple(args.heart_crop) if args.heart_crop else None,
        args.heart_search,
    )  # type: ignore[arg-type]


def cache_examples(cache_dir: str | Path, count: int = 32) -> np.ndarray:
    """``count`` validation slices of a slice cache, evenly spread: float32 (count, 1, H, W) for parity."""
    from export.data import load_cache

    slices = load_cache(cache_dir)
    val = np.flatnonzero(np.isin(slices.cases, np.asarray(slices.meta["splits"]["val"])))
    if len(val) == 0:
        raise InputError(f"slice cache {cache_dir} has no validation slices to take parity examples from")
    pick = val[np.linspace(0, len(val) - 1, min(count, len(val))).round().astype(int)]
    return np.ascontiguousarray(slices.images[pick][:, None], dtype=np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.bundle``: checkpoints in, verified bundle directory out."""
    parser = argparse.ArgumentParser(prog="python -m export.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="trained checkpoints by model name (e.g. baseline=, base=, middle=, apex=, classifier=)",
    )
    parser.add_argument(
        "--routing",
        nargs="*",
        default=None,
        metavar="REGION=NAME",
        help="region code -> model; default: 0 baseline, 1 base, 2 middle, 3 apex, "
        "each falling back to baseline when absent",
    )
    parser.add_argument(
        "--target-spacing",
        nargs=2,
        type=float,
        default=None,
        metavar=("DY", "DX"),
        help="mm; default: the checkpoints' own (they must agree)",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="network input size; default: the checkpoints' own",
    )
    parser.add_argument("--normalization", default=None, help="default: the checkpoints' own")
    parser.add_argument(
        "--heart-crop",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="default window of the U-Nets around the heart (pipeline's heart_crop); default: none (the full window)",
    )
    parser.add_argument(
        "--heart-search",
        choices=HEART_SEARCHES,
        default="mean",
        help="the heart crop's centre from the baseline's full-window pass: every foreground pixel's mean, or the "
        'largest piece\'s (U-Nets trained with [train] crop = "heart" draw pieces away from the heart there)',
    )
    parser.add_argument(
        "--examples", type=Path, default=None, help=".npy float32 (N, 1, H, W) real normalised slices for parity"
    )
    parser.add_argument(
        "--examples-from-cache",
        type=Path,
        default=None,
        metavar="CACHE",
        help="take the parity slices from an export.data slice cache instead (its validation patients)",
    )
    parser.add_argument("--examples-count", type=int, default=32, help="slices taken with --examples-from-cache")
    parser.add_argument(
        "--formats",
        nargs="+",
        default=list(DEFAULT_FORMATS),
        choices=FORMATS,
        help=f"artifacts to write (default: {' '.join(DEFAULT_FORMATS)}; tensorrt only where torch-tensorrt and "
        "a CUDA GPU are). aoti compiles an AOTInductor package for the CPU, tens of seconds a model; "
        "python -m export.aoti BUNDLE adds one to a bundle later",
    )
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument(
        "--regions-from",
        default=None,
        choices=REGIONS_FROM,
        help="routed mode's default region source (default: the classifier when given, else segmentation)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing bundle at -o (only a bundle: its manifest and the files it names), "
        "once the new one is complete",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to create")
    args = parser.parse_args(argv)
    try:
        checkpoints = _pairs(args.checkpoints, "--checkpoints")
        inputs = [*checkpoints.values(), *(p for p in (args.examples, args.examples_from_cache) if p is not None)]
        _check_out_dir(args.output, overwrite=args.overwrite, inputs=inputs)  # before minutes of export
        models = {name: load_checkpoint(path) for name, path in checkpoints.items()}
        if args.routing is not None:
            routing = {int(k): v for k, v in _pairs(args.routing, "--routing").items()}
        else:
            fallback = "baseline" if "baseline" in models else None
            routing = {
                code: name if name in models else fallback
                for code, name in ((0, "baseline"), (1, "base"), (2, "middle"), (3, "apex"))
            }
            routing = {k: v for k, v in routing.items() if v is not None}
        examples = np.load(args.examples) if args.examples else None
        if args.examples_from_cache is not None:
            examples = cache_examples(args.examples_from_cache, args.examples_count)
        preprocessing = _preprocessing(args, models)
        kinds = {name: str(info.get("kind")) for name, (_, info) in models.items()}
        _check_window(models, kinds, preprocessing, {"size": "--size", "heart_crop": "--heart-crop"})
        path = build_bundle(
            models,
            routing,
            preprocessing,
            args.output,
            examples,
            args.formats,
            max_batch=args.max_batch,
            overwrite=args.overwrite,
            regions_from=args.regions_from,
            inputs=inputs,
        )
    except (cmrsdk.CmrError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    for name, record in manifest["models"].items():
        for p in record["parity"]:
            print(
                f"{name:>12} {p['artifact']:>14} {p['device']:>4} {p['precision']}: max|dp| {p['max_abs_diff']:.2e}, "
                f"argmax agreement {p['argmax_agreement']:.5f}"
            )
    for fmt, why in manifest["skipped"].items():
        print(f"skipped {fmt}: {why}")
    print(f"bundle written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
