"""Add int8 artifacts to an existing bundle (ONNX Runtime static quantization), or check bf16; both by Dice.

Command line::

    python -m export.quantize BUNDLE_DIR [--calibration-slices 32] [--cache cache/acdc_224]
        [--acdc ../shared/data/acdc] [--check-studies patient005 patient010 ...]
        [--models baseline base ...] [--method minmax] [--max-dice-drop 0.5] [--threads 2]
    python -m export.quantize BUNDLE_DIR --precision bf16 [--check-studies ...] [--threads 2]

With ``--precision bf16`` no file is written: the bundle's pipeline runs on the TorchScript
archives cast to bfloat16 at load and in fp32, the Dice change is measured as in step 4 below
and recorded as the manifest's ``quantization.bf16`` (`check_bf16`); `cmrsdk.Pipeline` runs
bf16 only on a bundle holding a passed record.

For each model with an "onnx" artifact this writes ``<model>.int8.onnx`` (artifact key
"onnx-int8") beside it:

1. calibration: ``--calibration-slices`` real normalised training slices, drawn (seeded) from
   the "train" split of an ``export.data`` slice cache whose preprocessing equals the bundle's,
   or else read from the ACDC training patients that are not held out (patient number not a
   multiple of 5) and prepared with the bundle's preprocessing. Ranges are the 0.01st to
   99.99th percentiles of each activation over full-window slices (``--method percentile``, the
   default), or their min and max over the window and the heart-centred crop together, what
   the pipeline feeds the U-Nets (``--method minmax``);
2. quantization: ``onnxruntime.quantization.quantize_static``, QDQ format, int8 weights per
   output channel in 7 bits (``reduce_range``: CPUs without VNNI sum the U8S8 pairs in int16,
   which 8-bit weights saturate), uint8 activations per tensor (the U8S8 pair ONNX Runtime's x86
   kernels take, VNNI / AMX where the CPU has them), the operators in `QUANTIZED_OPS` only: softmax and
   instance normalisation stay float32 (a per-instance mean and variance have no fixed range
   to calibrate);
3. parity against the model's fp32 ONNX artifact (itself checked against the eager model at
   export) on held-out real slices at every size the pipeline runs: largest probability
   difference, argmax agreement, and decided argmax agreement (`export.parity`), which must be
   at least `INT8_MIN_DECIDED_AGREEMENT`;
4. Dice: the bundle's default pipeline (routed, its own region source and heart crop), run on
   the held-out studies with the U-Nets in fp32 and then in int8 (`dice_deltas`); the mean
   slice Dice (%) per ground-truth region and label of each, and the change. A drop of more
   than ``--max-dice-drop`` points (default 0.5) in any region and label refuses the artifacts.
   For scale, the fp32 pipeline also runs with the heart crop moved by 1 pixel, and that change
   is recorded beside the int8 one (int8 moves the located centre of the heart by a pixel now
   and then; on the demo bundle 1 pixel alone moved a region's Dice by up to 1.7 points).

Nothing in the bundle changes unless every check passes: the new files are written under
temporary names, checked from a staging copy of the bundle, then renamed into place, and the
manifest is replaced in one ``os.replace`` with the new artifacts (sha256, size), their parity
and the Dice record (``quantization``) added; every existing artifact and hash is untouched.
Running the command again replaces the int8 artifacts.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmrsdk.bundle import (
    MANIFEST_NAME,
    Bundle,
    bf16_record_key,
    load_bundle,
    required_format_version,
    sha256_file,
)
from cmrsdk.engines import thread_options
from cmrsdk.errors import BundleError, CmrError, CmrWarning, InputError
from cmrsdk.labels import APEX, BASE, LABEL_NAMES, MIDDLE, REGION_NAMES, STRUCTURES
from cmrsdk.types import Study

__all__ = [
    "QUANTIZED_OPS",
    "INT8_MIN_DECIDED_AGREEMENT",
    "MAX_DICE_DROP",
    "CALIBRATION_METHODS",
    "PERCENTILE",
    "HELD_OUT",
    "QuantizationError",
    "calibration_slices",
    "check_slices",
    "quantize_model",
    "int8_parity",
    "dice_deltas",
    "moved_slices",
    "quantize_bundle",
    "check_bf16",
    "main",
]

REPO = Path(__file__).resolve().parents[1]
#: operators given QuantizeLinear / DequantizeLinear pairs; everything else stays float32.
QUANTIZED_OPS: tuple[str, ...] = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Concat",
    "LeakyRelu",
    "Relu",
    "MaxPool",
    "GlobalAveragePool",
    "Add",
)
#: least decided argmax agreement (pixels the fp32 model decides by >= 0.05) of int8 against fp32.
INT8_MIN_DECIDED_AGREEMENT = 0.99
#: largest drop of mean slice Dice, in points, allowed in any region and label (issue 16's target).
MAX_DICE_DROP = 0.5
#: "percentile" (the default): each activation's range is its 0.01st to 99.99th percentile over
#: the calibration slices, so a few outlying values do not stretch the 256 levels; measured on
#: the demo bundle's held-out Dice, worst drop 0.93 points against 1.29 to 1.79 with "minmax".
#: onnxruntime 1.32 keeps every activation of every slice for it (about 25 MB per 224 x 224
#: slice for the demo U-Nets) and cannot mix input sizes, so it calibrates on the full window
#: only. "minmax" keeps two numbers per tensor and batch and calibrates on window and crop.
CALIBRATION_METHODS: tuple[str, ...] = ("percentile", "minmax")
#: the upper percentile of the "percentile" method (onnxruntime's CalibPercentile).
PERCENTILE = 99.99
#: the held-out ACDC patients (export.data's test split): patient005, patient010, ..., patient100.
HELD_OUT: tuple[str, ...] = tuple(f"patient{k:03d}" for k in range(5, 101, 5))
DEFAULT_CACHE = REPO / "cache" / "acdc_224"
DEFAULT_ACDC = REPO.parent / "shared" / "data" / "acdc"


class QuantizationError(BundleError):
    """An int8 artifact breaches its parity or Dice bound; the bundle was left unchanged."""


# -- slices ----------------------------------------------------------------------------------


def _heart_crop(images: np.ndarray, labels: np.ndarray | None, crop: tuple[int, int]) -> np.ndarray:
    """float32 (N, 1, h, w) windows of ``images`` (N, 1, H, W) centred on each slice's labels
    (uint8 (N, H, W)), or on the window's centre where a slice has none; kept inside the window."""
    (h, w), (H, W) = crop, images.shape[2:]
    out = np.empty((images.shape[0], 1, h, w), np.float32)
    for i in range(images.shape[0]):
        cy, cx = H / 2, W / 2
        if labels is not None and labels[i].any():
            ys, xs = np.nonzero(labels[i])
            cy, cx = ys.mean(), xs.mean()
        y0 = min(max(int(round(cy - h / 2)), 0), H - h)
        x0 = min(max(int(round(cx - w / 2)), 0), W - w)
        out[i] = images[i, :, y0 : y0 + h, x0 : x0 + w]
    return out


def _prepared(bundle: Bundle, studies: Sequence[Study]) -> tuple[np.ndarray, np.ndarray]:
    """Every ED and ES slice of ``studies`` as the pipeline prepares it: float32 (N, 1, H, W)
    normalised windows and their uint8 (N, H, W) labels on the same window."""
    from cmrsdk.preprocess import crop_or_pad, prepare_slices, resample_labels

    pre = bundle.preprocessing
    images, labels = [], []
    for study in studies:
        for stack in (study.ed, study.es):
            x, transform = prepare_slices(
                stack.pixels,
                stack.spacing[1:],
                target_spacing=pre.target_spacing,
                size=pre.size,
                normalization=pre.normalization,
            )
            images.append(x)
            if stack.labels is not None:
                resampled = resample_labels(stack.labels, stack.spacing[1:], shape=transform.resampled_shape)
                labels.append(crop_or_pad(resampled, pre.size)[0])
            else:
                labels.append(np.zeros((x.shape[0], *pre.size), np.uint8))
    return np.ascontiguousarray(np.concatenate(images), np.float32), np.concatenate(labels).astype(np.uint8)


def _cache_matches(meta: Mapping[str, Any], bundle: Bundle) -> bool:
    pre = bundle.preprocessing
    spacing = meta.get("target_spacing") or [0, 0]
    return (
        meta.get("size") == pre.size[0] == pre.size[1]
        and meta.get("normalization") == pre.normalization
        and all(abs(float(a) - b) < 1e-4 for a, b in zip(spacing, pre.target_spacing))
    )


def calibration_slices(
    bundle: Bundle,
    count: int,
    *,
    cache: str | Path | None = DEFAULT_CACHE,
    acdc: str | Path | None = DEFAULT_ACDC,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Real normalised training slices to calibrate on, prepared as the bundle prepares them.

    Parameters
    ----------
    bundle : the bundle whose preprocessing (spacing, size, normalisation) the slices follow.
    count : how many slices, drawn without replacement with ``seed``.
    cache : an ``export.data`` slice cache; its "train" split is used when its preprocessing
        equals the bundle's.
    acdc : the ACDC root (``training/patientNNN``); its patients that are not held out
        (`HELD_OUT`) are read when the cache is absent or prepared differently.

    Returns
    -------
    (float32 (count, 1, H, W) slices, uint8 (count, H, W) their labels, a line saying where
    they came from)
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"'count' (--calibration-slices) must be a positive int, got {count!r}")
    rng = np.random.default_rng(seed)
    if cache is not None and (Path(cache) / "meta.json").is_file():
        from export.data import load_cache

        slices = load_cache(cache)
        if _cache_matches(slices.meta, bundle):
            train = np.flatnonzero(np.isin(slices.cases, np.asarray(slices.meta["splits"]["train"])))
            pick = np.sort(rng.choice(train, min(count, len(train)), replace=False))
            source = f"{len(pick)} slices of the 'train' split of the slice cache {cache} (seed {seed})"
            return (
                np.ascontiguousarray(slices.images[pick][:, None], np.float32),
                np.ascontiguousarray(slices.labels[pick]),
                source,
            )
    if acdc is None or not (Path(acdc) / "training").is_dir():
        raise InputError(
            f"no calibration slices: the slice cache {cache} is absent or prepared unlike the bundle "
            f"{bundle.path}, and 'acdc' {acdc} has no training/ folder"
        )
    from cmrsdk.io import read_acdc_patient

    root = Path(acdc) / "training"
    patients = sorted(p.name for p in root.glob("patient*") if p.name not in HELD_OUT)
    # about 19 slices per patient (ED + ES): read just enough patients, chosen with the seed.
    # Measured on the shipped 1.94 M bundle: 32 slices of 3 patients (seed 0) gave a worst Dice
    # drop of 0.35 points; 48 slices spread two by two over 24 patients gave 0.79 (apex LVM). The
    # apex rows (54 to 80 slices) move with the calibration draw; more patients did not help.
    order = rng.permutation(len(patients))[: max(2, math.ceil(count / 12))]
    images, labels = _prepared(bundle, [read_acdc_patient(root / patients[i]) for i in sorted(order)])
    pick = np.sort(rng.choice(len(images), min(count, len(images)), replace=False))
    source = f"{len(pick)} slices of {len(order)} ACDC training patients under {root} (seed {seed})"
    return images[pick], labels[pick], source


def check_slices(bundle: Bundle, studies: Sequence[Study], count: int = 48) -> dict[tuple[int, int], np.ndarray]:
    """Held-out real slices for the parity check, at every size the pipeline runs the U-Nets.

    Returns
    -------
    (H, W) -> float32 (M, 1, H, W): ``count`` slices evenly spread over the studies' ED and ES
    stacks at the full window and, for a bundle with a heart crop, the same slices cropped
    around their labels.
    """
    images, labels = _prepared(bundle, studies)
    pick = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
    out = {tuple(bundle.preprocessing.size): np.ascontiguousarray(images[pick])}
    crop = bundle.preprocessing.heart_crop
    if crop is not None and tuple(crop) != tuple(bundle.preprocessing.size):
        out[tuple(crop)] = _heart_crop(images[pick], labels[pick], crop)
    return out  # type: ignore[return-value]


# -- quantization and parity -----------------------------------------------------------------


def _end_nodes(path: Path) -> list[str]:
    """Names of the nodes that read the graph's input and of those whose output the final
    softmax reads: the model's first and last layers."""
    import onnx

    graph = onnx.load(str(path)).graph
    inputs = {i.name for i in graph.input}
    softmax_inputs = {n.input[0] for n in graph.node if n.op_type == "Softmax"}
    return [n.name for n in graph.node if inputs & set(n.input) or softmax_inputs & set(n.output)]


def quantize_model(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Sequence[np.ndarray],
    *,
    method: str = "percentile",
    batch: int = 8,
    float_ends: bool = False,
) -> Path:
    """Quantize one fp32 ONNX model statically (QDQ, per-channel int8 weights in 7 bits, uint8
    activations).

    Parameters
    ----------
    fp32_path : the model's fp32 ``.onnx`` (one float32 (N, 1, H, W) input).
    out_path : the int8 ``.onnx`` to write.
    calibration : float32 (N, 1, H, W) arrays of normalised slices; each may have its own
        (H, W) (the ranges are merged over all of them).
    method : "percentile" or "minmax" (see `CALIBRATION_METHODS`); "percentile" needs every
        calibration array at one (H, W).
    batch : slices per calibration run.
    float_ends : keep the first layer (it reads the image) and the last (its logits decide
        between classes) in float32. Off by default: on the demo bundle it did not make the Dice
        change smaller (worst drop 2.28 points with, 1.29 without; 32 calibration slices).
    """
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise InputError(f"'method' must be one of {CALIBRATION_METHODS}, got {method!r}")
    for i, x in enumerate(calibration):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 4 and x.shape[1] == 1 and len(x)):
            raise InputError(
                f"'calibration[{i}]' must be a non-empty float32 (N, 1, H, W) array, "
                f"got {getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
            )
    if method == "percentile" and len({x.shape[2:] for x in calibration}) > 1:
        raise InputError(
            f"'method' 'percentile' calibrates at one (H, W); 'calibration' has "
            f"{sorted({x.shape[2:] for x in calibration})}"
        )
    input_name = onnxruntime.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    # onnxruntime 1.32's percentile calibrator stacks every batch's activations into one array and
    # fails ("inhomogeneous shape") when a last batch is shorter: one slice per run for it
    step = 1 if method == "percentile" else batch

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (
                np.ascontiguousarray(x[i : i + step]) for x in calibration for i in range(0, len(x), step)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return {input_name: x} if (x := next(self._batches, None)) is not None else None

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="cmrsdk-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # constant folding and ONNX shape inference; the symbolic pass cannot follow the
        # dynamic height and width of the U-Nets (it stops at the first ConvTranspose)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        exclude = _end_nodes(prepared) if float_ends else []
        calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # 7-bit weights: without VNNI (AVX2, AVX512 before Cascade Lake) onnxruntime sums
            # uint8 x int8 pairs in int16, which saturates with 8-bit weights; an artifact must
            # stay right on whatever CPU runs it. Measured on an AVX2 CPU: argmax agreement
            # 0.926 with 8-bit weights against the fp32 artifact (tests/test_export_quantize.py).
            reduce_range=True,
            op_types_to_quantize=list(QUANTIZED_OPS),
            calibrate_method=calibrate,
            nodes_to_exclude=exclude,
            # no CalibMaxIntermediateOutputs: in onnxruntime 1.32 it drops the ranges
            # collected so far instead of merging them ("No data is collected").
            # MinMax keeps only each batch's per-tensor min and max, so memory is small.
            extra_options={"CalibPercentile": PERCENTILE} if method == "percentile" else {},
            calibration_providers=["CPUExecutionProvider"],
        )
    return out_path


def int8_parity(
    fp32_path: str | Path,
    int8_path: str | Path,
    slices: Mapping[tuple[int, int], np.ndarray],
    *,
    threads: int | None = None,
    min_agreement: float = INT8_MIN_DECIDED_AGREEMENT,
) -> dict[str, Any]:
    """Compare an int8 ONNX artifact with its fp32 one on real slices, at each size given.

    Parameters
    ----------
    fp32_path, int8_path : the two ``.onnx`` files.
    slices : (H, W) -> float32 (M, 1, H, W) held-out normalised slices (`check_slices`).
    min_agreement : least decided argmax agreement (0..1) at every size.

    Returns
    -------
    The manifest's parity record: ``max_abs_diff``, ``argmax_agreement`` and
    ``decided_argmax_agreement`` (the worst over the sizes), per size the same, the bound and
    ``passed``.
    """
    from cmrsdk.engines.onnx import OnnxEngine
    from export.parity import compare, decided_agreement

    fp32 = OnnxEngine(fp32_path, intra_op_threads=threads)
    int8 = OnnxEngine(int8_path, intra_op_threads=threads, precision="int8")
    sizes = []
    for (h, w), x in slices.items():
        reference, candidate = fp32.run(x), int8.run(x)
        diff, agreement = compare(reference, candidate)
        sizes.append(
            {
                "input_hw": [h, w],
                "slices": int(len(x)),
                "max_abs_diff": diff,
                "argmax_agreement": agreement,
                "decided_argmax_agreement": decided_agreement(reference, candidate),
            }
        )
    worst = min(s["decided_argmax_agreement"] for s in sizes)
    return {
        "artifact": "onnx-int8",
        "reference": "onnx",
        "backend": "onnx",
        "device": "cpu",
        "precision": "int8",
        "max_abs_diff": max(s["max_abs_diff"] for s in sizes),
        "argmax_agreement": min(s["argmax_agreement"] for s in sizes),
        "decided_argmax_agreement": worst,
        "slices": sum(s["slices"] for s in sizes),
        "real_slices": sum(s["slices"] for s in sizes),
        "sizes": sizes,
        "tolerance": min_agreement,
        "passed": bool(worst >= min_agreement),
    }


# -- Dice ------------------------------------------------------------------------------------


def _shifted_pipeline(*args: Any, **kwargs: Any) -> Any:
    """A `cmrsdk.Pipeline` whose heart crop sits 1 pixel lower and 1 pixel further right."""
    from cmrsdk.pipeline import Pipeline

    class ShiftedCrop(Pipeline):
        def _locate(self, images: np.ndarray, regions: np.ndarray | None) -> tuple[float, float] | None:
            centre = super()._locate(images, regions)
            return None if centre is None else (centre[0] + 1.0, centre[1] + 1.0)

    return ShiftedCrop(*args, **kwargs)


def _mean_dice(scores: Sequence[Any], method: str, codes: Sequence[int], j: int) -> tuple[float, int]:
    values = np.array([s.dice[j] for s in scores if s.method == method and s.region in codes], np.float64)
    values = values[np.isfinite(values)] * 100.0
    return (float(values.mean()) if len(values) else float("nan")), int(len(values))


#: a slice's Dice must move by more than this (points) to be listed in `moved_slices`.
MOVED_POINTS = 10.0


def moved_slices(scores: Sequence[Any], reference: str, precision: str, most: int = 20) -> list[dict[str, Any]]:
    """The slices whose Dice for some label moved by more than `MOVED_POINTS` between two methods.

    A gate on mean slice Dice is refused by whole slices more often than by boundaries: a
    structure drawn by one precision and not the other scores 0 against NaN (absent from both
    masks) or against its Dice. Each entry: case, phase, slice, ground-truth region, label, both
    Dice values (%, None where unscored) and both predicted pixel counts; the largest changes
    first, at most ``most``.
    """
    by_key = {(s.case, s.phase, s.slice_index): s for s in scores if s.method == reference}
    moved = []
    for cand in (s for s in scores if s.method == precision):
        ref = by_key.get((cand.case, cand.phase, cand.slice_index))
        if ref is None:
            continue
        for j, label in enumerate(STRUCTURES):
            a, b = ref.dice[j], cand.dice[j]
            if math.isnan(a) and math.isnan(b):
                continue
            change = (0.0 if math.isnan(b) else b) - (0.0 if math.isnan(a) else a)
            if math.isnan(a) != math.isnan(b) or abs(change) * 100.0 > MOVED_POINTS:
                moved.append(
                    {
                        "case": cand.case,
                        "phase": cand.phase,
                        "slice": cand.slice_index,
                        "region": REGION_NAMES.get(cand.region, str(cand.region)),
                        "label": LABEL_NAMES[label],
                        reference: None if math.isnan(a) else round(a * 100.0, 2),
                        precision: None if math.isnan(b) else round(b * 100.0, 2),
                        f"{reference}_pixels": ref.predicted_pixels[j] if ref.predicted_pixels else None,
                        f"{precision}_pixels": cand.predicted_pixels[j] if cand.predicted_pixels else None,
                        "_size": 1.0 if math.isnan(a) != math.isnan(b) else abs(change),  # a 0 joins the mean
                    }
                )
    moved.sort(key=lambda m: -m["_size"])
    return [{k: v for k, v in m.items() if k != "_size"} for m in moved[:most]]


def dice_deltas(
    bundle: Bundle | str | Path,
    studies: Sequence[tuple[str, Study]],
    *,
    precision: str = "int8",
    reference: str = "fp32",
    backend: str = "onnx",
    threads: int | None = None,
    pipeline_options: Mapping[str, Any] | None = None,
    crop_jitter: bool = False,
) -> dict[str, Any]:
    """Run the bundle's pipeline at two precisions on labelled studies and compare their Dice.

    Parameters
    ----------
    bundle : the bundle (loaded or its directory), holding artifacts of both precisions.
    studies : (case, `Study` with ED and ES ground-truth labels).
    precision, reference : the precision measured and the one it is measured against.
    backend : the backend both run on (the same one, so only the arithmetic differs).
    threads : ONNX Runtime intra-op threads and native-kernel threads (None: all cores).
    pipeline_options : further `cmrsdk.Pipeline` arguments (default: the bundle's own mode,
        region source and heart crop).
    crop_jitter : also run the reference with the heart crop moved by 1 pixel in y and x and
        give its change as ``jitter`` in each row: how much Dice moves when nothing but the
        crop's position does (a precision change can move the located centre by a pixel).

    Returns
    -------
    ``{"studies": [...], "slices": n, "rows": [...], "worst_drop": points, "latency_ms": {...}}``;
    one row per ground-truth region (base, middle, apex, and "cardiac" for the three together)
    and label (LVBP, LVM, RVBP): mean slice Dice (%) of each precision over its own scored slices
    (NaN where the label is absent from both masks, as `cmrsdk.evaluation`), their counts and
    ``delta`` = candidate - reference in points. ``worst_drop`` is the largest fall (>= 0).
    ``latency_ms`` holds each precision's median wall time per ED+ES pair in this run.
    """
    from cmrsdk.evaluation import evaluate
    from cmrsdk.pipeline import Pipeline

    kwargs = {
        "backend": backend,
        "threads": threads,
        "engine_options": thread_options(backend, threads),
        **dict(pipeline_options or {}),
    }
    pipes = {p: Pipeline(bundle, precision=p, **kwargs) for p in (reference, precision)}
    shifted = f"{reference} crop +1 px"
    if crop_jitter and pipes[reference].heart_crop is not None:
        pipes[shifted] = _shifted_pipeline(bundle, precision=reference, **kwargs)
    result = evaluate(pipes, list(studies), progress=False)
    rows = []
    for region_name, codes in (
        ("base", (BASE,)),
        ("middle", (MIDDLE,)),
        ("apex", (APEX,)),
        ("cardiac", (BASE, MIDDLE, APEX)),
    ):
        for j, label in enumerate(STRUCTURES):
            row: dict[str, Any] = {"region": region_name, "label": LABEL_NAMES[label]}
            for p in (reference, precision):
                row[p], row[f"{p}_n"] = _mean_dice(result.scores, p, codes, j)
            row["delta"] = row[precision] - row[reference]
            if shifted in pipes:
                row["jitter"] = _mean_dice(result.scores, shifted, codes, j)[0] - row[reference]
            rows.append(row)
    drops = [-r["delta"] for r in rows if math.isfinite(r["delta"])]
    return {
        "moved": moved_slices(result.scores, reference, precision),
        "studies": [c for c, _ in studies],
        "backend": backend,
        "reference": reference,
        "precision": precision,
        "slices": sum(1 for s in result.scores if s.method == reference),
        "rows": rows,
        "worst_drop": max(0.0, *drops) if drops else float("nan"),
        "latency_ms": {p: float(np.median(v)) for p, v in result.latency_ms.items()},
        "worst_jitter_drop": max(0.0, *(-r["jitter"] for r in rows if math.isfinite(r.get("jitter", math.nan))))
        if any("jitter" in r for r in rows)
        else None,
    }


def dice_table(record: Mapping[str, Any]) -> str:
    """`dice_deltas`'s rows as a Markdown table."""
    ref, cand = record["reference"], record["precision"]
    jitter = any("jitter" in r for r in record["rows"])
    extra = (f" {ref}, crop moved 1 px: change |", "---:|") if jitter else ("", "")
    lines = [
        f"| region | label | {ref} Dice % | {cand} Dice % | change (points) |{extra[0]} slices |",
        f"|---|---|---:|---:|---:|{extra[1]}---:|",
    ]
    for r in record["rows"]:
        moved = f" {r['jitter']:+.2f} |" if jitter else ""
        lines.append(
            f"| {r['region']} | {r['label']} | {r[ref]:.2f} | {r[cand]:.2f} | {r['delta']:+.2f} |{moved} {r[f'{ref}_n']} |"
        )
    return "\n".join(lines)


def moved_text(record: Mapping[str, Any]) -> str:
    """`dice_deltas`'s moved slices as lines of text ("" when none moved)."""
    ref, cand = record["reference"], record["precision"]
    moved = record.get("moved") or []
    if not moved:
        return ""
    lines = [f"\nslices whose Dice moved by more than {MOVED_POINTS:g} points ({ref} -> {cand}, Dice %, pixels drawn):"]
    for m in moved:
        lines.append(
            f"  {m['case']} {m['phase']} slice {m['slice']} ({m['region']}) {m['label']}: "
            f"{m[ref]} -> {m[cand]} ({m[f'{ref}_pixels']} -> {m[f'{cand}_pixels']} px)"
        )
    return "\n".join(lines)


# -- the bundle ------------------------------------------------------------------------------


def _load_studies(acdc: str | Path, names: Sequence[str]) -> list[tuple[str, Study]]:
    from cmrsdk.io import read_acdc_patient

    root = Path(acdc) / "training"
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise InputError(f"'check_studies' {missing[:5]} are not under {root}")
    return [(n, read_acdc_patient(root / n)) for n in names]


def quantize_bundle(
    bundle_dir: str | Path,
    *,
    calibration: np.ndarray,
    calibration_labels: np.ndarray | None = None,
    calibration_source: str = "",
    check_studies: Sequence[tuple[str, Study]],
    models: Sequence[str] | None = None,
    method: str = "percentile",
    max_dice_drop: float = MAX_DICE_DROP,
    threads: int | None = None,
    min_agreement: float = INT8_MIN_DECIDED_AGREEMENT,
    crop_jitter: bool = True,
    log=print,
) -> dict[str, Any]:
    """Add "onnx-int8" artifacts to a bundle, with parity and Dice records; return the Dice record.

    Parameters
    ----------
    bundle_dir : an existing bundle directory (verified before and rewritten in place).
    calibration : float32 (N, 1, H, W) normalised training slices at the bundle's window.
    calibration_labels : uint8 (N, H, W) their labels, to centre the heart crops on (None:
        crops at the window centre).
    calibration_source : a line saying where the slices came from, for the manifest.
    check_studies : held-out (case, labelled `Study`) for the parity slices and the Dice check.
    models : the models to quantize (default: the segmentation models with an "onnx" artifact).
        The region classifier stays fp32 by default: int8 changed the region of 2 % of held-out
        slices on the demo bundle, for a model that is a few percent of the pipeline's time.
        ``Pipeline(precision="int8")`` runs the models quantized here in int8 and the others in
        fp32, the configuration the Dice check measures.
    method : calibration method, one of `CALIBRATION_METHODS`.
    max_dice_drop : largest mean slice Dice fall, in points, allowed in any region and label
        (``math.inf`` records the change without a bound).
    threads : CPU threads for ONNX Runtime and the native kernels.
    min_agreement : least decided argmax agreement of each int8 artifact with its fp32 one.
    crop_jitter : record, beside the int8 change, the fp32 change when the heart crop moves by
        1 pixel (`dice_deltas`): the scale against which to read the int8 change.

    Raises
    ------
    QuantizationError
        A parity or Dice bound is breached; the bundle is unchanged.
    """
    bundle = load_bundle(bundle_dir)
    root = bundle.path.resolve()
    names = (
        list(models)
        if models is not None
        else [n for n, m in bundle.models.items() if "onnx" in m.artifacts and m.kind == "segmentation"]
    )
    for name in names:
        if name not in bundle.models or "onnx" not in bundle.models[name].artifacts:
            raise InputError(f"'models' names {name!r}, which is not a model of {root} with an 'onnx' artifact")
        if bundle.models[name].channels != 1:
            # calibration and checks draw single slices; a 2.5D model needs each with its stack neighbours
            raise InputError(
                f"model {name!r} of {root} is 2.5D ({bundle.models[name].channels} input channels): int8 "
                f"quantization supports 2D models only; use bf16 (--precision bf16) for it"
            )
    if not check_studies:
        raise InputError("'check_studies' is empty: the int8 artifacts need held-out labelled studies to be checked on")
    pre = bundle.preprocessing
    if calibration.dtype != np.float32 or calibration.ndim != 4 or calibration.shape[1:] != (1, *pre.size):
        raise InputError(
            f"'calibration' must be float32 (N, 1, {pre.size[0]}, {pre.size[1]}), got "
            f"{calibration.dtype} {calibration.shape}"
        )
    crops = None
    if method == "minmax" and pre.heart_crop is not None and tuple(pre.heart_crop) != tuple(pre.size):
        crops = _heart_crop(calibration, calibration_labels, pre.heart_crop)
    parity_slices = check_slices(bundle, [s for _, s in check_studies])
    manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.int8.", dir=root.parent))
    try:
        # a staging copy of the bundle (hard links: no bytes copied) that the checks load
        for item in root.iterdir():
            if item.is_file() and item.name != MANIFEST_NAME and not item.name.endswith(".int8.onnx"):
                try:
                    os.link(item, staging / item.name)
                except OSError:
                    shutil.copy2(item, staging / item.name)
        for name in names:
            model = bundle.models[name]
            fp32 = model.artifacts["onnx"].path
            out = staging / f"{name}.int8.onnx"
            segmentation = model.kind == "segmentation"
            t = time.perf_counter()
            quantize_model(
                fp32, out, [calibration] + ([crops] if crops is not None and segmentation else []), method=method
            )
            sizes = parity_slices if segmentation else {tuple(pre.size): parity_slices[tuple(pre.size)]}
            parity = int8_parity(fp32, out, sizes, threads=threads, min_agreement=min_agreement)  # type: ignore[arg-type]
            log(
                f"{name:>12} onnx-int8: {time.perf_counter() - t:.0f} s, max|dp| {parity['max_abs_diff']:.3f}, argmax "
                f"agreement {parity['argmax_agreement']:.4f}, decided {parity['decided_argmax_agreement']:.4f}"
            )
            if not parity["passed"]:
                raise QuantizationError(
                    f"{out.name}: decided argmax agreement {parity['decided_argmax_agreement']:.4f} "
                    f"with the fp32 artifact is below {min_agreement}; the bundle {root} "
                    f"is unchanged"
                )
            record = manifest["models"][name]
            entry = {
                "file": out.name,
                "format": "onnx",
                "precision": "int8",
                "sha256": sha256_file(out),
                "size": out.stat().st_size,
                "quantization": {
                    "tool": "onnxruntime.quantization.quantize_static",
                    "format": "QDQ",
                    "weights": "int8 per channel",
                    "activations": "uint8 per tensor",
                    "method": method,
                    **({"percentile": PERCENTILE} if method == "percentile" else {}),
                    "operators": list(QUANTIZED_OPS),
                    "calibration": calibration_source,
                    "calibration_inputs": [[int(calibration.shape[0]), *pre.size]]
                    + ([[int(crops.shape[0]), *pre.heart_crop]] if crops is not None and segmentation else []),
                },
            }
            record["artifacts"]["onnx-int8"] = entry
            record["parity"] = [p for p in record.get("parity", []) if p.get("artifact") != "onnx-int8"] + [parity]
        # a manifest in another label order written as format 1 (by hand) leaves as format 2, which
        # cmrsdk before 0.14.0 refuses instead of swapping LV and RV
        manifest["format_version"] = max(manifest.get("format_version", 1), required_format_version(manifest))
        staged = staging / MANIFEST_NAME
        staged.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")

        t = time.perf_counter()
        dice = dice_deltas(staging, check_studies, threads=threads, crop_jitter=crop_jitter)
        log(
            f"Dice on {len(check_studies)} held-out studies ({dice['slices']} slices), {time.perf_counter() - t:.0f} s:\n"
            + dice_table(dice)
            + moved_text(dice)
        )
        dice.update(
            {
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "models": names,
                "max_dice_drop": max_dice_drop if math.isfinite(max_dice_drop) else None,
                "passed": bool(not dice["worst_drop"] > max_dice_drop),
            }
        )
        if not dice["passed"]:
            raise QuantizationError(
                f"int8 lowers the mean slice Dice by {dice['worst_drop']:.2f} points in some region "
                f"and label, more than the {max_dice_drop} allowed; the bundle {root} is unchanged"
            )
        manifest.setdefault("quantization", {})["int8"] = dice  # a bf16 record, if any, stays
        staged.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        load_bundle(staging)  # every hash, old and new, verifies before anything moves
        # new files first (fresh names: a reader of the old manifest never opens them), then the
        # manifest in one atomic rename
        for name in names:
            os.replace(staging / f"{name}.int8.onnx", root / f"{name}.int8.onnx")
        os.replace(staged, root / MANIFEST_NAME)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    load_bundle(root)
    return dice


#: how each bf16 backend makes its arithmetic (recorded with its Dice check).
_BF16_CASTS: dict[str, str] = {
    "torchscript": "TorchScript archives cast to bfloat16 at load (weights and activations; oneDNN accumulates in fp32)",
    "openvino": "ONNX artifacts compiled by OpenVINO with INFERENCE_PRECISION_HINT bf16 (its CPU plugin "
    "folds each instance norm's affine and activation into one kernel; accumulates in fp32)",
}


def check_bf16(
    bundle_dir: str | Path,
    *,
    check_studies: Sequence[tuple[str, Study]],
    backend: str = "torchscript",
    max_dice_drop: float = MAX_DICE_DROP,
    threads: int | None = None,
    crop_jitter: bool = True,
    log=print,
) -> dict[str, Any]:
    """Measure the bundle's pipeline in bf16 against fp32 on one backend and record it in the manifest.

    bf16 needs no artifact: ``backend`` "torchscript" casts the TorchScript archives at load,
    "openvino" compiles the ONNX artifacts in bf16 (`cmrsdk.engines`), on CPUs with native bf16
    instructions. Both precisions run on that backend, so only the arithmetic differs
    (`dice_deltas`). The record goes under ``quantization[bf16_record_key(backend)]`` ("bf16",
    "bf16-openvino"); `cmrsdk.Pipeline` warns when it runs bf16 on a backend without a passed one.

    Returns the record; raises `QuantizationError` (the bundle unchanged) when some region and
    label loses more than ``max_dice_drop`` points. The manifest is replaced in one
    ``os.replace``; every artifact and hash is untouched.
    """
    if backend not in _BF16_CASTS:
        raise InputError(f"'backend' of a bf16 check must be one of {tuple(_BF16_CASTS)}, got {backend!r}")
    bundle = load_bundle(bundle_dir)
    root = bundle.path.resolve()
    if not check_studies:
        raise InputError("'check_studies' is empty: bf16 needs held-out labelled studies to be checked on")
    t = time.perf_counter()
    with warnings.catch_warnings():  # "no bf16 Dice check recorded": this is that check
        warnings.filterwarnings("ignore", message=".*records no bf16 Dice check", category=CmrWarning)
        dice = dice_deltas(
            bundle, check_studies, precision="bf16", backend=backend, threads=threads, crop_jitter=crop_jitter
        )
    log(
        f"Dice on {len(check_studies)} held-out studies ({dice['slices']} slices), {time.perf_counter() - t:.0f} s:\n"
        + dice_table(dice)
        + moved_text(dice)
    )
    dice.update(
        {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "models": sorted(bundle.models),
            "cast": _BF16_CASTS[backend],
            "max_dice_drop": max_dice_drop if math.isfinite(max_dice_drop) else None,
            "passed": bool(not dice["worst_drop"] > max_dice_drop),
        }
    )
    if not dice["passed"]:
        raise QuantizationError(
            f"bf16 lowers the mean slice Dice by {dice['worst_drop']:.2f} points in some region and label, "
            f"more than the {max_dice_drop} allowed; the bundle {root} is unchanged"
        )
    manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest.setdefault("quantization", {})[bf16_record_key(backend)] = dice
    manifest["format_version"] = max(manifest.get("format_version", 1), required_format_version(manifest))
    staged = root / f".{MANIFEST_NAME}.bf16.tmp"
    staged.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(staged, root / MANIFEST_NAME)
    load_bundle(root)
    return dice


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.quantize``: add int8 artifacts to a bundle directory."""
    parser = argparse.ArgumentParser(prog="python -m export.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle directory to add int8 artifacts to")
    parser.add_argument(
        "--precision",
        default="int8",
        choices=["int8", "bf16"],
        help="int8 (default): write and check int8 ONNX artifacts; bf16: check the TorchScript archives "
        "cast to bfloat16 at load (no new file) and record the Dice change",
    )
    parser.add_argument(
        "--calibration-slices", type=int, default=32, metavar="N", help="training slices to calibrate on (default 32)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"export.data slice cache to draw them from (default {DEFAULT_CACHE}; its 'train' split)",
    )
    parser.add_argument(
        "--acdc",
        type=Path,
        default=DEFAULT_ACDC,
        help=f"ACDC root for held-out studies, and for calibration without a matching cache (default {DEFAULT_ACDC})",
    )
    parser.add_argument(
        "--check-studies",
        nargs="+",
        default=list(HELD_OUT),
        metavar="PATIENT",
        help="held-out ACDC patients for parity and Dice (default patient005, 010, ..., 100)",
    )
    parser.add_argument(
        "--models", nargs="+", default=None, help="models to quantize (default: the U-Nets; the classifier stays fp32)"
    )
    parser.add_argument(
        "--method",
        default="percentile",
        choices=CALIBRATION_METHODS,
        help="calibration: 'percentile' (99.99th, window only; default) or 'minmax' (window and crop)",
    )
    parser.add_argument(
        "--max-dice-drop",
        type=float,
        default=MAX_DICE_DROP,
        help="largest mean slice Dice fall (points) allowed in any region and label; 'inf' for none",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument(
        "--backend",
        default="openvino",
        choices=sorted(_BF16_CASTS),
        help="with --precision bf16: the backend whose bf16 is checked (default openvino, the one "
        "cmrsdk's 'auto' runs bf16 on; torchscript: its archives cast at load)",
    )
    parser.add_argument(
        "--no-crop-jitter",
        action="store_true",
        help="skip the fp32 run with the heart crop moved by 1 pixel (recorded for scale)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.precision == "bf16":
            load_bundle(args.bundle)
            dice = check_bf16(
                args.bundle,
                check_studies=_load_studies(args.acdc, args.check_studies),
                backend=args.backend,
                max_dice_drop=args.max_dice_drop,
                threads=args.threads,
                crop_jitter=not args.no_crop_jitter,
            )
            print(
                f"bf16 on {args.backend} recorded in {args.bundle} (worst Dice drop {dice['worst_drop']:.2f} points; median per "
                f"ED+ES pair: fp32 {dice['latency_ms']['fp32']:.0f} ms, bf16 {dice['latency_ms']['bf16']:.0f} ms)"
            )
            return 0
        bundle = load_bundle(args.bundle)
        images, labels, source = calibration_slices(
            bundle, args.calibration_slices, cache=args.cache, acdc=args.acdc, seed=args.seed
        )
        print(f"calibration: {source}")
        studies = _load_studies(args.acdc, args.check_studies)
        dice = quantize_bundle(
            args.bundle,
            calibration=images,
            calibration_labels=labels,
            calibration_source=source,
            check_studies=studies,
            models=args.models,
            method=args.method,
            max_dice_drop=args.max_dice_drop,
            threads=args.threads,
            crop_jitter=not args.no_crop_jitter,
        )
    except (CmrError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"int8 artifacts added to {args.bundle} (worst Dice drop {dice['worst_drop']:.2f} points; "
        f"median per ED+ES pair: fp32 {dice['latency_ms']['fp32']:.0f} ms, int8 {dice['latency_ms']['int8']:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
