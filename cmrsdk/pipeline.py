"""The routed segmentation pipeline: preprocess → classify → segment per region → postprocess.

One `Pipeline.segment` call turns a `Stack` into uint8 labels on the stack's own grid:

1. preprocess   in-plane resample to the bundle's spacing (C++), normalise (Cython), crop/pad to
                the network size (numpy) → float32 (Z, 1, H, W) and the inverse transform;
2. classify     one batched call of the classifier → region and probabilities per slice, or
                the regions a caller hands in (``region_source``, e.g. the ground truth's on
                the evaluation side, `cmrsdk.evaluation.ground_truth_regions`);
   locate       (``heart_crop``, `cmrsdk.heart`) one baseline pass over one middle slice finds
                the heart, once per study, and every slice's window is narrowed around it: the
                U-Nets then see fewer pixels; where the window at the image centre shows no LV
                and the field is larger than it, the whole field is searched window by window
                (`cmrsdk.heart.search_field`) and the window placed on the heart found there;
3. segment      slices grouped by region, one batched call per region model (non-cardiac
                slices → the baseline model) → probabilities (Z, C, H, W);
                with regions from the segmentation (``regions_from="segmentation"``) the
                classify stage is replaced by one baseline pass over every slice, whose masks
                give the regions by the ground-truth rule (`cmrsdk.regions`); slices without
                heart get no mask, region slices are segmented again by their region's U-Net;
                on apical slices the RV's probability is weighted (``apical_rv_weight``,
                `cmrsdk.apex`);
4. postprocess  native core: resample probabilities back and argmax in one fused pass, then
                the largest connected component of each structure; in a study, the most basal
                ES RV that the valve plane's descent made atrium is left out (`cmrsdk.systole`).

Modes: ``routed`` (the paper's classifier + region U-Nets), ``baseline`` (the baseline U-Net on
every slice). Routing by regions known from elsewhere (the ground truth, stored predictions of
another classifier) is not a mode: the caller hands a `RegionSource` to `Pipeline.segment`.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, cast

import numpy as np

from . import preprocess
from .apex import check_apical_rv_weight, weigh_apical_rv
from .bundle import Bundle, bf16_record_key, load_bundle, precision_missing
from .chirality import seen_from_apex
from .errors import InputError
from .grid import SegmentGrid, move_centre, segment_grid
from .heart import crop_to_heart, locate_heart, search_field
from .heart_size import feasible_scale, heart_scale, lv_area_mm2, rescaled
from .labels import BASE, LVBP, NON_CARDIAC, REGION_NAMES
from .layout import Orientation, training_layout_turn, turn_stack, unturn_labels
from .metrics import (
    CardiacMeasures,
    cardiac_measures,
    heart_like,
    reaches_field_edge,
    ventricles_not_found,
    volumes_ml,
    withhold_not_found,
    withhold_unreal,
)
from .regions import index_toward_apex, segmentation_regions
from .routing import DECODINGS, Decoding, decode_regions
from .systole import basal_rv_ratio, drop_systolic_atrium
from .types import Stack, Study
from ._warn import warn

__all__ = [
    "Mode",
    "MODES",
    "MIRROR_AXES",
    "RegionSource",
    "PhaseProgress",
    "Segmentation",
    "StudySegmentation",
    "Pipeline",
    "mirrored",
]

Mode = Literal["routed", "baseline"]
MODES: tuple[str, ...] = ("routed", "baseline")
STAGES: tuple[str, ...] = ("preprocess", "classify", "locate", "segment", "postprocess")
#: with regions from the segmentation, a slice with fewer foreground pixels (at the bundle's
#: spacing; 20 px is about 0.4 cm² at 1.48 mm) holds no heart: it is non-cardiac and gets no mask.
MIN_SLICE_PIXELS = 20
#: with regions from the segmentation, a stack whose foreground the baseline gives a mean
#: probability below this holds no heart: every slice is non-cardiac. Measured with the shipped
#: bundle (0.7.0): 0.946-0.972 on the held-out ACDC, M&Ms and Sunnybrook stacks (with test-time
#: mirroring down to 0.929 at ED, 0.901 at ES: a study's later phases are not gated), 0.78-0.911
#: on Rayleigh and Gaussian noise images (blank and constant ones get no foreground at all), where
#: the network's few hundred pixels of "heart" are a guess. (0.3.0's weights: 0.935-0.975 real,
#: 0.84-0.89 noise, gate 0.91.) Later phases are flagged ``low_confidence`` under it, not emptied
#: (0.14.4; the half-turn default): held-out ES 0.919-0.965 (the one under it, M&Ms H1N8S6, off
#: by over 10 EF points), Sunnybrook's 38 later phases 0.930-0.958; on sweep 27's degraded
#: held-out inputs it marked 22 of 86 grossly wrong results, 13 that the ED flag did not, and
#: none of 54 within limits.
MIN_HEART_CONFIDENCE = 0.92
#: most times the full window is moved to the masks when they run into one of its edges inside the
#: image (a heart far off the image centre; README "Not supported"): each move costs one more pass.
#: A heart wholly outside the window is found by the field search instead (`Pipeline._search_field`).
MAX_WINDOW_MOVES = 2
REGIONS_FROM: tuple[str, ...] = ("bundle", "classifier", "segmentation", "caller")


#: `Pipeline.segment_study`'s ``progress``: (phases segmented, phases to segment as known then).
PhaseProgress = Callable[[int, int], None]


class _Tally:
    """Phases segmented against phases planned, told to a caller's `PhaseProgress`."""

    def __init__(self, progress: PhaseProgress | None) -> None:
        self.progress, self.done, self.total = progress, 0, 0

    def plan(self, phases: int) -> None:
        self.total += phases

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The pipeline's answer for one stack.

    Attributes
    ----------
    stack : the input stack (its grid, spacing and affine are the labels').
    labels : uint8 (Z, Y, X) canonical labels on the stack's grid.
    regions : uint8 (Z,) region each slice was routed by (0 non-cardiac, 1 base, 2 middle,
        3 apex); None in ``baseline`` mode, where nothing is routed.
    region_probabilities : float32 (Z, 4) classifier probabilities (or a region source's); one-hot
        of ``regions`` where the regions come from a rule, not a probability (from the
        segmentation, or region codes handed in); None in ``baseline`` mode.
    timings_ms : milliseconds per stage ("preprocess", "classify", "locate", "segment",
        "postprocess") and "total".
    provenance : bundle name and hash, backend, device, mode, region source, cmrsdk version.
    flags : what the pipeline saw go wrong, beside the labels' own quality flags:
        ``field_edge``, a mask on the border of the field the networks saw (the window around the
        heart, within the image), so the heart may reach beyond it and the volumes fall short;
        ``low_confidence``, masks kept although the networks' mean confidence over the pixels
        they call foreground (each pixel's winning probability) was under `MIN_HEART_CONFIDENCE`
        (a heart-like stack, or a later phase of a study with a heart, which is never emptied).
    """

    stack: Stack
    labels: np.ndarray
    regions: np.ndarray | None
    region_probabilities: np.ndarray | None
    timings_ms: dict[str, float]
    provenance: dict[str, Any]
    flags: tuple[str, ...] = ()

    @property
    def region_confidence(self) -> np.ndarray | None:
        """float32 (Z,): probability of the region each slice was routed by (None in baseline mode)."""
        if self.regions is None or self.region_probabilities is None:
            return None
        return np.take_along_axis(self.region_probabilities, self.regions[:, None].astype(np.intp), 1)[:, 0]

    def volumes_ml(self) -> dict[str, float]:
        """Volume of each structure in mL, each slice counted with its own thickness from the slice
        positions (see `cmrsdk.metrics.volumes_ml`); NaN for a single slice."""
        return volumes_ml(self.labels, self.stack.spacing, self.stack.slice_positions)


@dataclass(frozen=True, eq=False)
class StudySegmentation:
    """Segmentations of a study's phases, ED and ES, and the clinical measures.

    Attributes
    ----------
    phases : one `Segmentation` per segmented phase, in the study's time order.
    ed_index, es_index : indices into ``phases``.
    lv_volume_curve_ml : float64 (T,) LV blood-pool volume of each phase, mL.
    measures : volumes, EF and LV mass from the ED and ES segmentations, SV and EF withheld (NaN)
        where they cannot be real (`cmrsdk.metrics.withhold_unreal`: ED and ES one phase, a
        ventricle larger at ES than at ED), and a ventricle's measures where it was not found
        (`cmrsdk.metrics.withhold_not_found`: NaN, not 0 mL), as the report shows them.
    measured : the same as measured from the masks, nothing withheld (agreement with manual
        contours counts a negative EF as the miss it is); None where not computed.
    """

    phases: tuple[Segmentation, ...]
    ed_index: int
    es_index: int
    lv_volume_curve_ml: np.ndarray
    measures: CardiacMeasures
    timings_ms: dict[str, float] = field(default_factory=dict)
    measured: CardiacMeasures | None = None

    @property
    def ed(self) -> Segmentation:
        return self.phases[self.ed_index]

    @property
    def es(self) -> Segmentation:
        return self.phases[self.es_index]


#: Regions from outside the pipeline, handed to `Pipeline.segment`: ``(stack, images)`` with the
#: `Stack` and its preprocessed float32 (Z, 1, H, W) slices -> either float (Z, 4) region
#: probabilities (non-cardiac, base, middle, apex), decoded as the classifier's are, or integer
#: (Z,) region codes 0..3, used as they are (a rule such as the ground truth's, never re-decoded).
#: A ``name`` attribute, where it has one, names it in the provenance.
RegionSource = Callable[[Stack, np.ndarray], np.ndarray]


#: (H, W) axes of the (N, 1, H, W) batch flipped by test-time mirroring: none, W, H, both.
MIRROR_AXES: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))

#: the same for a side-aware U-Net (`cmrsdk.bundle.ModelInfo.side_aware`): a single flip would
#: show it the mirror image, with the RV on the wrong side; both together are a half-turn.
HALF_TURN_AXES: tuple[tuple[int, ...], ...] = ((), (2, 3))


#: what `Pipeline`'s ``mirroring`` takes: one pass, the half-turn (two passes), every flip (four)
MIRRORING: tuple[bool | str, ...] = (False, "half_turn", True)

#: the pipeline's test-time mirroring unless the caller asks otherwise (export/README.md, stage 45)
DEFAULT_MIRRORING: bool | str = "half_turn"


def mirror_axes(side_aware: bool, mirroring: bool | str = True) -> tuple[tuple[int, ...], ...]:
    """The flips test-time ``mirroring`` (True or "half_turn") averages over for a U-Net that is,
    or is not, side-aware."""
    return HALF_TURN_AXES if side_aware or mirroring == "half_turn" else MIRROR_AXES


def mirrored(
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    axes: tuple[tuple[int, ...], ...] = MIRROR_AXES,
) -> np.ndarray:
    """Test-time mirroring: the mean of ``run``'s probabilities over the flips ``axes`` (the first
    must be none).

    ``images`` float32 (N, channels, H, W) -> float32 (N, C, H, W). The flipped copies go through
    ``run`` as one batch (the engine splits it where it must), and each answer is flipped back
    before the mean, so a map that is the same in every flip comes back unchanged.
    """
    n = images.shape[0]
    batch = np.concatenate([np.flip(images, flip) if flip else images for flip in axes])
    out = run(np.ascontiguousarray(batch))
    total: np.ndarray = out[:n].copy()
    for k, flip in enumerate(axes[1:], start=1):
        total += np.flip(out[k * n : (k + 1) * n], flip)
    total /= np.float32(len(axes))
    return total


class _Unset:
    """The heart centre of a stack not yet searched for (None means searched, and not found), or
    a full window not yet placed."""


_UNSET = _Unset()


def _rebuild_pipeline(cls: type[Pipeline], bundle: Bundle, arguments: dict[str, Any]) -> Pipeline:
    """`Pipeline.__reduce__`'s rebuild in the unpickling process."""
    return cls(bundle, **arguments)


class Pipeline:
    """Routed cardiac MRI segmentation with the models of one bundle.

    Parameters
    ----------
    bundle : a loaded `Bundle` or the path of a bundle directory.
    backend : "auto", "onnx", "torchscript" or "tensorrt" (see `cmrsdk.engines`).
    device : "cpu" or "cuda".
    mode : "routed" (region U-Nets) or "baseline" (the baseline U-Net on every slice).
    largest_component : keep only the largest 3-D connected component of each structure.
    threads : CPU threads of the native kernels and of each network inference (ONNX Runtime,
        OpenVINO: `Bundle.engine`'s ``threads``; TorchScript and AOTInductor use torch's
        process-wide pool, which the caller sets); default: all cores.
    heart_crop : (h, w), two integers, in pixels of the target spacing, None, or "bundle" (the default: the
        bundle's ``preprocessing.heart_crop``, itself None when the bundle sets none). When set,
        the U-Nets see only an (h, w) window centred on the heart, found by one baseline pass
        over the central slice or pair of slices (`cmrsdk.heart`); where no heart is found they
        see the bundle's full window. Must be a size the U-Nets accept (a multiple of 16 for the
        5-stage U-Nets of export/) and fit in the full window. The U-Nets of export/ train on 128 x 128 patches: at that window
        they are both faster and better than on the full one (README, docs/RESULTS.md).
    region_decoding : "monotone" (the most probable region sequence that crosses the heart once,
        see `cmrsdk.routing`) or "independent" (each slice's most probable region, the paper's).
    engine_options : passed to every engine, e.g. ``{"intra_op_threads": 2}`` for ONNX Runtime
        or ``{"cuda_graphs": True}`` for TorchScript on CUDA (see `cmrsdk.engines`).
    regions_from : in routed mode, where each slice's region comes from: "classifier" (the
        paper's slice classifier), "segmentation" (the baseline U-Net segments every slice and the
        ground-truth rule of `cmrsdk.regions` names the regions from its masks: one more network
        pass, regions that follow the anatomy of the whole stack, and no mask on slices without
        heart), "caller" (every call hands its regions in, see `segment`; no classifier is
        loaded) or "bundle" (the default: the manifest's ``regions_from``).
    precision : "fp32" (the default), "int8" or "fp16" (CUDA). "int8" runs the bundle's int8
        configuration, the one whose Dice change against fp32 ``python -m export.quantize``
        measured and recorded in the manifest: the models that have an "onnx-int8" artifact in
        int8, the others (the region classifier, by default) in fp32; a bundle with no int8
        artifact is refused. "fp16" applies to every model. "bf16" (CPUs with AVX512-BF16 or
        AMX) runs every model in bfloat16: OpenVINO compiling the ONNX artifacts (the "auto"
        choice where OpenVINO is installed) or the TorchScript archives cast at load, for a
        bundle whose manifest should record a passed bf16 Dice check on that backend
        (``python -m export.quantize BUNDLE --precision bf16 --backend B``; without one a
        `CmrWarning` says so); the fastest CPU path (benchmarks/README.md). Never chosen behind
        the caller's back: "auto" picks the backend, not the arithmetic.
    mirroring : test-time mirroring (nnU-Net's). True: every U-Net pass runs on the slices and
        their flips along H, W and both (`MIRROR_AXES`), and the four probability maps, flipped
        back, are averaged; four times the network work. "half_turn": the slices and their
        half-turn (both axes flipped, `HALF_TURN_AXES`), twice the work. False: one pass. The
        U-Nets of export/ train with both flips; a flip moves every pixel's place in the
        network's stride-2 grid, so the average follows the anatomy's place in the window less
        (export/README.md, stage 45; the Dice each buys on held-out data is in docs/RESULTS.md).
        The heart search and the region classifier are not mirrored. A side-aware U-Net
        (trained without flips) is averaged over the half-turn only, with True as well.

    A bundle with a side-aware U-Net (``side_aware``: `cmrsdk.bundle.ModelInfo.side_aware`) sees
    every stack in the radiological view: one seen from the base by its scanner orientation is
    flipped left to right before the networks and its labels flipped back
    (`cmrsdk.chirality`; the segmentation's provenance then has ``columns_flipped``).
    training_layout : turn every stack with a trusted scanner orientation to the in-plane layout
        the U-Nets were trained in (ACDC's: the radiological view with its rows flipped) before
        the networks, by exact flips and transposes, and its labels back
        (`cmrsdk.layout.training_layout_turn`); an axis-aligned stack is segmented as stored. The
        turn is recorded in the segmentation's provenance (``in_plane_turn``).
    systolic_base : in `segment_study`, where ED and ES share a grid, drop the RV of the most
        basal ES slice when it holds less than `cmrsdk.systole.SYSTOLIC_BASE_RATIO` of that
        slice's RV at ED: the valve plane descended into it in systole, and it holds atrium
        (`cmrsdk.systole`; its Dice on the held-out sets in docs/RESULTS.md, Session 19). The
        ES segmentation's provenance names the slice (``systolic_base_rv_dropped_slice``, None
        where none was dropped), and so does the study report.
    apical_rv_weight : in routed mode, the RV's probability on slices routed to the apex is
        multiplied by this before the argmax: the U-Nets under-call the small apical RV on
        unseen patients (`cmrsdk.apex`, whose `APICAL_RV_WEIGHT` was designed on development
        folds; its Dice on the held-out sets in docs/RESULTS.md, Session 25). 1: no prior.
        Recorded in the provenance.
    segment_spacing : in routed mode, the in-plane grid (mm; one value or (dy, dx)) the U-Nets
        segment on when finer than the bundle's training grid, None for the training grid, or
        "bundle" (the default: the manifest's ``preprocessing.segment_spacing``, itself None when
        the bundle sets none). The heart is found and every slice segmented on it, with the window,
        heart crop and pixel thresholds grown to the same field of view and areas; the slices
        routed to the base are segmented again on the training grid, where the finer grid draws
        RV into the atrium (`cmrsdk.grid`; its Dice on the held-out sets in docs/RESULTS.md,
        Session 32). Baseline mode segments on the training grid. Recorded in the provenance.
    rescale_heart : in `segment_study`, where the first pass finds an ED LV smaller or larger than
        any the U-Nets learnt (`cmrsdk.heart_size`: a child's heart, a huge dilated one), segment
        the study again as if its pixels were larger or smaller, so the heart lies on the grid at
        a trained size, and measure it with its own spacing; its phases are flagged
        ``small_heart`` or ``large_heart``, the scale in their provenance (``heart_scale``).
        False: one pass whatever the size.
    region_source : removed in 0.2.0, refused naming its replacement: a region source is handed in
        per call (`segment` / `segment_study`'s ``region_source``), with ``regions_from="caller"``
        to load no classifier. Kept in the signature so that 0.1.0's call gets that pointer rather
        than Python's "unexpected keyword argument".

    The object holds no per-call state: one pipeline may serve several threads at once. It pickles
    as its bundle directory and arguments, and is rebuilt, engines and all, where it is unpickled
    (a 'spawn' worker); a 'torchscript' one refuses to run in a process forked from its own.
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        *,
        backend: str = "auto",
        device: str = "cpu",
        mode: Mode = "routed",
        largest_component: bool = True,
        threads: int | None = None,
        heart_crop: tuple[int, int] | None | Literal["bundle"] = "bundle",
        region_decoding: Decoding = "monotone",
        engine_options: Mapping[str, Any] | None = None,
        regions_from: str = "bundle",
        precision: str = "fp32",
        mirroring: bool | str = DEFAULT_MIRRORING,
        systolic_base: bool = True,
        apical_rv_weight: float = 1.0,
        segment_spacing: float | tuple[float, float] | None | Literal["bundle"] = "bundle",
        training_layout: bool = False,
        rescale_heart: bool = True,
        region_source: None = None,
    ) -> None:
        if region_source is not None:
            raise InputError(
                f"'region_source' is no longer an argument of Pipeline (removed in 0.2.0), got "
                f"{_source_name(region_source)!r}: hand the regions in per call, "
                f"segment(stack, region_source=...) or segment_study(study, region_source=...), and build "
                f"the pipeline with regions_from='caller' to load no classifier"
            )
        if str(mode) == "oracle":
            raise InputError(
                "'mode' 'oracle' is no longer a mode: route by the ground truth with mode 'routed', "
                "regions_from='caller' and segment(stack, region_source=cmrsdk.evaluation.ground_truth_regions)"
            )
        if mode not in MODES:
            raise InputError(f"'mode' must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(bundle, (Bundle, str, os.PathLike)):
            raise InputError(
                f"'bundle' must be a Bundle or the path of a bundle directory, got {type(bundle).__name__}"
            )
        if engine_options is not None and not isinstance(engine_options, Mapping):
            raise InputError(
                f"'engine_options' must be a mapping (option name -> value) or None, got {engine_options!r}"
            )
        if not isinstance(largest_component, bool):
            raise InputError(f"'largest_component' must be True or False, got {largest_component!r}")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1
        ):
            raise InputError(
                f"'threads' must be a positive whole number of threads or None (all cores), got {threads!r}"
            )
        # what pickling rebuilds the pipeline from in another process (`__reduce__`)
        self._arguments: dict[str, Any] = {
            "backend": backend,
            "device": device,
            "mode": mode,
            "largest_component": largest_component,
            "threads": threads,
            "heart_crop": heart_crop,
            "region_decoding": region_decoding,
            "engine_options": dict(engine_options or {}),
            "regions_from": regions_from,
            "precision": precision,
            "mirroring": mirroring,
            "systolic_base": systolic_base,
            "apical_rv_weight": apical_rv_weight,
            "segment_spacing": segment_spacing,
            "training_layout": training_layout,
            "rescale_heart": rescale_heart,
        }
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.backend = backend
        self.device = device
        self.mode = mode
        self.largest_component = largest_component
        if not (isinstance(mirroring, bool) or mirroring == "half_turn"):
            raise InputError(f"'mirroring' must be False, 'half_turn' or True, got {mirroring!r}")
        self.mirroring = mirroring
        if not isinstance(training_layout, bool):
            raise InputError(f"'training_layout' must be True or False, got {training_layout!r}")
        self.training_layout = training_layout
        if not isinstance(rescale_heart, bool):
            raise InputError(f"'rescale_heart' must be True or False, got {rescale_heart!r}")
        self.rescale_heart = rescale_heart
        if not isinstance(systolic_base, bool):
            raise InputError(f"'systolic_base' must be True or False, got {systolic_base!r}")
        self.systolic_base = systolic_base
        self.apical_rv_weight = check_apical_rv_weight(apical_rv_weight)
        self.threads = threads
        self._pre = self.bundle.preprocessing
        given = self._pre.heart_crop if isinstance(heart_crop, str) and heart_crop == "bundle" else heart_crop
        crop: tuple[int, int] | None = None
        if given is not None:
            # int() would truncate 128.7 and read '12' from a string: two integers or nothing
            if not (
                isinstance(given, (tuple, list))
                and len(given) == 2
                and all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in given)
            ):
                raise InputError(
                    f"'heart_crop' must be two positive integers (h, w), None or 'bundle', got {heart_crop!r}"
                )
            crop = (int(given[0]), int(given[1]))
            if not all(0 < c <= s for c, s in zip(crop, self._pre.size)):
                raise InputError(f"'heart_crop' must be (h, w) within the bundle's window {self._pre.size}, got {crop}")
            # the U-Nets halve the image up to four times: sides not divisible fail inside the engine
            multiple = min(16, math.gcd(*self._pre.size) & -math.gcd(*self._pre.size))
            if any(c % multiple for c in crop):
                raise InputError(
                    f"'heart_crop' {crop} must be multiples of {multiple} pixels (the U-Nets "
                    f"downsample by {multiple}), e.g. {tuple(max(multiple, c // multiple * multiple) for c in crop)}"
                )
        self.heart_crop = crop
        grid = self._segment_grid(segment_spacing)  # checked in every mode, used in routed mode
        self._grid = grid if mode == "routed" else None
        if region_decoding not in DECODINGS:
            raise InputError(f"'region_decoding' must be one of {', '.join(DECODINGS)}, got {region_decoding!r}")
        self.region_decoding = region_decoding
        baseline = self.bundle.routing.get(NON_CARDIAC)
        if baseline is None:
            raise InputError(
                f"bundle {self.bundle.path} routes no model for non-cardiac slices: it has no baseline U-Net"
            )
        self._baseline: str = baseline
        if regions_from not in REGIONS_FROM:
            raise InputError(f"'regions_from' must be one of {', '.join(REGIONS_FROM)}, got {regions_from!r}")
        self.regions_from = self.bundle.regions_from if regions_from == "bundle" else regions_from
        classifier = self.bundle.classifier
        if mode == "routed" and self.regions_from == "classifier" and classifier is None:
            raise InputError(
                f"regions from the classifier need one, and bundle {self.bundle.path} has none; "
                f"use regions_from='segmentation' or mode 'baseline'"
            )
        # Create the engines now, not on the first call, so latency is flat from call one.
        needed = {self._baseline}
        if mode != "baseline":
            needed |= set(self.bundle.routing.values())
        if mode == "routed" and self.regions_from == "classifier" and classifier is not None:
            needed.add(classifier)
        options = dict(engine_options or {})
        self.precision = precision
        # The sizes each model will be fed: the classifier and the locating pass see the full
        # window; the U-Nets the heart crop, or the full window where no heart is found. An
        # artifact that cannot run them all (a TensorRT engine built for one size) is passed over.
        full = (int(self._pre.size[0]), int(self._pre.size[1]))
        unet_shapes = [full] if crop is None else [full, crop]
        if self._grid is not None:
            grown = self._grid.preprocessing.size
            unet_shapes += [(int(grown[0]), int(grown[1]))] + ([self._grid.heart_crop] if self._grid.heart_crop else [])
        if precision == "int8" and (why := precision_missing(backend, precision)) is not None:
            raise InputError(why)  # no file would help: say so before suggesting python -m export.quantize
        int8 = {name for name in needed if "onnx-int8" in self.bundle.models[name].artifacts}
        if precision == "int8" and not int8:
            raise InputError(
                f"precision 'int8' needs int8 artifacts, and bundle {self.bundle.path} has none for "
                f"{sorted(needed)}; add them with: python -m export.quantize {self.bundle.path}"
            )
        self._engines = {
            name: self.bundle.engine(
                name,
                backend=backend,
                device=device,
                precision="fp32" if precision == "int8" and name not in int8 else precision,
                shapes=[full] if name == self.bundle.classifier else unet_shapes,
                threads=None if threads is None else int(threads),
                **options,
            )
            for name in sorted(needed)
        }
        # side-aware U-Nets see every stack in the radiological view (cmrsdk.chirality)
        self.side_aware = any(self.bundle.models[n].side_aware for n in needed if n != self.bundle.classifier)
        records = self.bundle.manifest.get("quantization") or {}
        for bf16_backend in sorted({e.backend for e in self._engines.values() if e.precision == "bf16"}):
            if not (records.get(bf16_record_key(bf16_backend)) or {}).get("passed"):
                warn(
                    f"bundle {self.bundle.path} records no bf16 Dice check on {bf16_backend!r}: its masks in "
                    f"bf16 are unmeasured; measure and record it with: python -m export.quantize "
                    f"{self.bundle.path} --precision bf16 --backend {bf16_backend}",
                    stacklevel=2,
                )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its class, bundle and constructor arguments: the unpickling process (a
        'spawn' worker) builds its own engines, as runtime sessions and thread pools cannot travel."""
        return (_rebuild_pipeline, (type(self), self.bundle, self._arguments))

    def _segment_grid(self, value: object) -> SegmentGrid | None:
        """`__init__`'s ``segment_spacing`` as the grid to segment on (None: the training grid)."""
        given = self._pre.segment_spacing if isinstance(value, str) and value == "bundle" else value
        if given is None:
            return None
        pair = (given, given) if isinstance(given, (int, float)) else given
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
        ):
            raise InputError(f"'segment_spacing' must be a spacing in mm, (dy, dx), None or 'bundle', got {value!r}")
        # a spacing fine enough to grow the window past the largest side preprocessing takes
        finest = tuple(
            math.ceil(t * s / preprocess.MAX_SIDE * 1e4) / 1e4 for t, s in zip(self._pre.target_spacing, self._pre.size)
        )
        if any(0 < v < f for v, f in zip(pair, finest)):
            raise InputError(
                f"'segment_spacing' {tuple(pair)} mm would grow the bundle's {tuple(self._pre.size)} window past "
                f"{preprocess.MAX_SIDE} pixels a side; give a spacing of at least {finest} mm"
            )
        return segment_grid(self._pre, self.heart_crop, (float(pair[0]), float(pair[1])))

    @property
    def segment_spacing(self) -> tuple[float, float] | None:
        """(dy, dx) mm of the grid the U-Nets segment on in routed mode, None for the training grid."""
        return None if self._grid is None else self._grid.preprocessing.target_spacing

    def _pixels(self, count: int) -> int:
        """A pixel count of the training grid on the grid segmented on (the same area)."""
        return count if self._grid is None else self._grid.pixels(count)

    # -- stages -----------------------------------------------------------------------------
    def _route(
        self, images: np.ndarray, stack: Stack, region_source: RegionSource | None
    ) -> tuple[np.ndarray | None, np.ndarray | None, bool]:
        """Region per slice, uint8 (Z,), its float32 (Z, 4) probabilities (None, None in baseline
        mode and where the regions come with the segment stage, from the segmentation), and
        whether the regions were decoded from probabilities."""
        if self.mode == "baseline":
            return None, None, False
        if region_source is not None:
            return _regions_from_source(region_source, stack, images, self.region_decoding)
        if self.regions_from == "caller":
            raise InputError(
                f"this pipeline takes its regions from the caller (regions_from='caller'): "
                f"segment({stack.source or 'stack'!r}) needs a 'region_source'"
            )
        if self._by_segmentation:
            return None, None, False  # by segmentation: the regions come with the segment stage
        probabilities = self._engines[str(self.bundle.classifier)].run(images)
        return decode_regions(probabilities, self.region_decoding), probabilities, True

    def _locate(self, images: np.ndarray, regions: np.ndarray | None) -> tuple[float, float] | None:
        """Centre (cy, cx) of the heart in window pixels, or None: `cmrsdk.heart.locate_heart`
        with the baseline U-Net."""
        context = self.bundle.models[self._baseline].context
        return locate_heart(
            preprocess.context_slices(images, context),
            self._engines[self._baseline].run,
            regions,
            search=self._pre.heart_search,
        )

    @property
    def _by_segmentation(self) -> bool:
        return self.mode == "routed" and self.regions_from == "segmentation"

    def _segment_by_segmentation(
        self,
        images: np.ndarray,
        toward_apex: int | None = None,
        heart_known: bool = False,
        routes: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Probabilities float32 (Z, C, H, W), regions uint8 (Z,) named from the masks, and
        whether the networks were unsure of a stack they kept (``low_confidence``).

        The baseline segments every slice; `segmentation_regions` names the regions (base to apex
        along ``toward_apex``, the stack's orientation, where it is known); slices without
        heart become background everywhere, and so does a whole stack whose foreground the
        baseline is unsure of (mean probability under `MIN_HEART_CONFIDENCE`) unless its masks
        are `cmrsdk.metrics.heart_like` (a real heart from a scanner unlike the training data's)
        or ``heart_known`` (another phase of the study, on the same grid, showed the heart); base,
        middle and apex slices are segmented again by their region's U-Net where the bundle has
        one (the baseline's answer stands elsewhere).

        With ``routes`` (uint8 (Z,) regions of another phase of the study on the same grid) each
        slice is segmented once, by the U-Net of its region there; the regions returned are
        named from those masks, and slices without heart are emptied as above; the stack is never
        emptied whole, and said unsure by the same measure.
        """
        baseline = self._baseline
        unsure = False
        if routes is not None:
            probabilities = self._segment(images, routes)
            labels = probabilities.argmax(1)
            # a later phase is never emptied (the study showed its heart), but an unsure one is
            # said: sweep 27's ES phases that failed under noise or ghosting went unflagged
            foreground = labels > 0
            unsure = bool(foreground.any()) and float(probabilities.max(1)[foreground].mean()) < MIN_HEART_CONFIDENCE
        else:
            probabilities = self._unet(baseline, images)
            labels = probabilities.argmax(1)
            foreground = labels > 0
            unsure = bool(foreground.any()) and float(probabilities.max(1)[foreground].mean()) < MIN_HEART_CONFIDENCE
            if unsure and not heart_known and not heart_like(labels):
                labels = np.zeros_like(labels)  # an unsure guess over the whole stack: no heart, no mask
                unsure = False
        regions = segmentation_regions(labels, self._pixels(MIN_SLICE_PIXELS), toward_apex)
        empty = np.flatnonzero(regions == NON_CARDIAC)
        probabilities[empty] = 0.0
        probabilities[empty, 0] = 1.0
        if routes is not None:
            return probabilities, regions, unsure
        for region in REGION_NAMES:
            name = self.bundle.routing.get(region, baseline)
            index = np.flatnonzero(regions == region)
            if region != NON_CARDIAC and name != baseline and len(index):
                probabilities[index] = self._unet(name, images, index)
        return probabilities, regions, unsure

    def _segment(self, images: np.ndarray, regions: np.ndarray | None, skip_base: bool = False) -> np.ndarray:
        """Probabilities float32 (Z, C, H, W): one batched engine call per model used. With
        ``skip_base`` the base slices are not run and read as background (their labels come
        from the training grid, `_base_on_training_grid`)."""
        baseline = self._baseline
        if regions is None or images.shape[0] == 0:
            return self._unet(baseline, images)
        # non-cardiac slices (and any region without a model of its own) go to the baseline
        model_of = np.array(
            [self.bundle.routing.get(r, baseline) if r != NON_CARDIAC else baseline for r in REGION_NAMES]
        )
        route = model_of[regions]
        probabilities = np.empty((images.shape[0], len(self.bundle.labels), *images.shape[2:]), np.float32)
        run = regions != BASE if skip_base else np.ones(len(regions), bool)
        probabilities[~run] = 0.0
        probabilities[~run, 0] = 1.0
        for name in np.unique(route[run]):
            index = np.flatnonzero((route == name) & run)
            probabilities[index] = self._unet(str(name), images, index)
        return probabilities

    def _prepare(
        self, stack: Stack, pre: Any, window_centre: tuple[float, float] | None = None
    ) -> tuple[np.ndarray, preprocess.SliceTransform]:
        """float32 (Z, 1, H, W) slices of ``stack`` on the grid and window of ``pre`` (a bundle's
        `Preprocessing`), the window centred on ``window_centre`` ((cy, cx) native pixels; default
        the image centre), and the transform back to the stack's grid."""
        return preprocess.prepare_slices(
            stack.pixels,
            stack.spacing[1:],
            target_spacing=pre.target_spacing,
            size=pre.size,
            normalization=cast(preprocess.Normalization, pre.normalization),
            centre=window_centre,
            threads=self.threads,
        )

    def _base_on_training_grid(
        self,
        regions: np.ndarray,
        training: tuple[np.ndarray, preprocess.SliceTransform],
        centre: tuple[float, float] | None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The slices ``regions`` (uint8 (Z,)) calls base, segmented by the base's U-Net on the
        training grid (``training``: `_prepare`'s slices and transform there) around the heart
        ``centre`` (pixels of that full window): their indices (N,) and uint8 (N, Y, X) native
        labels, or None where no slice is base."""
        index = np.flatnonzero(regions == BASE)
        if not len(index):
            return None
        images, transform = training
        if centre is not None and self.heart_crop is not None:
            images, transform = crop_to_heart(images, transform, centre, self.heart_crop)
        name = self.bundle.routing.get(BASE, self._baseline)
        return index, preprocess.resample_argmax(self._unet(name, images, index), transform, threads=self.threads)

    def _clean(self, labels: np.ndarray, stack: Stack) -> np.ndarray:
        """The clean-up of uint8 (Z, Y, X) native labels: the largest component of each structure
        (when asked), with the slices a breath-hold displaced off it re-attached, and no mask at all on an all-zero image (a failed export, an empty series
        holds no heart, whatever the networks make of normalised zeros)."""
        if self.largest_component:
            cleaned = preprocess.largest_component(labels, threads=self.threads)
            labels = preprocess.reattach_displaced_slices(
                labels, cleaned, stack.spacing[1:], max_gap_mm=preprocess.MAX_SLICE_GAP_MM, threads=self.threads
            )
        if stack.pixels.size and not np.any(stack.pixels):
            labels = np.zeros_like(labels)
        return labels

    def _unet(self, name: str, images: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """Probabilities float32 (N, C, H, W) of U-Net ``name`` on the slices ``index`` (int (N,),
        default all) of one stack's float32 (Z, 1, H, W) slices, each between its neighbours
        when the U-Net is 2.5D; mirrored at test time when the pipeline asks for it."""
        engine, model = self._engines[name], self.bundle.models[name]
        batch = preprocess.context_slices(images, model.context, index)
        if not self.mirroring:
            return engine.run(batch)
        return mirrored(engine.run, batch, mirror_axes(model.side_aware, self.mirroring))

    def _segment_stack(
        self,
        stack: Stack,
        region_source: RegionSource | None,
        centre: tuple[float, float] | None | _Unset,
        heart_known: bool = False,
        routes: np.ndarray | None = None,
        window_centre: tuple[float, float] | None | _Unset = _UNSET,
    ) -> tuple[Segmentation, tuple[float, float] | None, tuple[float, float] | None]:
        """`_segment_window` with the full window centred on ``window_centre`` ((cy, cx) native
        pixels; None: the image centre), or placed (``_UNSET``): at the image centre, then moved
        to the masks' centroid while they run into a window edge inside the image, at most
        `MAX_WINDOW_MOVES` times; where that shows no LV and the field is larger than the window,
        the whole field is searched (`_search_field`) and the window placed on the heart found
        there, the same way. Returns the segmentation and the heart and window centres used."""
        if not isinstance(window_centre, _Unset):
            segmentation, found, _ = self._segment_window(
                stack, region_source, centre, heart_known, routes, window_centre
            )
            return self._placed(segmentation, window_centre), found, window_centre
        segmentation, found, placed = self._place_window(stack, region_source, centre, heart_known, routes, None)
        if not np.any(segmentation.labels == LVBP):
            # only where the image-centred window showed no LV: a study whose heart was found there
            # never gets here, and is segmented exactly as without the search
            t = time.perf_counter()
            far = self._search_field(stack)
            searched_ms = (time.perf_counter() - t) * 1000.0
            if far is not None:
                again = self._place_window(stack, region_source, centre, heart_known, routes, far)
                if np.any(again[0].labels == LVBP):  # else the first answer stands (noise, a blank)
                    segmentation, found, placed = again
                    provenance = {**segmentation.provenance, "heart_search": "field", "field_search_ms": searched_ms}
                    segmentation = replace(segmentation, provenance=provenance)
        return self._placed(segmentation, placed), found, placed

    @staticmethod
    def _placed(segmentation: Segmentation, placed: tuple[float, float] | None) -> Segmentation:
        """``segmentation`` with the full window's centre (native pixels) in its provenance, where placed."""
        if placed is None:
            return segmentation
        provenance = {**segmentation.provenance, "window_centre_px": [round(v, 1) for v in placed]}
        return replace(segmentation, provenance=provenance)

    def _place_window(
        self,
        stack: Stack,
        region_source: RegionSource | None,
        centre: tuple[float, float] | None | _Unset,
        heart_known: bool,
        routes: np.ndarray | None,
        placed: tuple[float, float] | None,
    ) -> tuple[Segmentation, tuple[float, float] | None, tuple[float, float] | None]:
        """`_segment_window` with the full window first centred on ``placed`` (native pixels; None:
        the image centre), then moved to the masks' centroid while they run into a window edge
        inside the image, at most `MAX_WINDOW_MOVES` times."""
        for move in range(MAX_WINDOW_MOVES + 1):
            segmentation, found, cuts = self._segment_window(stack, region_source, centre, heart_known, routes, placed)
            if not cuts or move == MAX_WINDOW_MOVES:
                break
            cy, cx = (float(v) for v in np.argwhere(segmentation.labels > 0)[:, 1:].mean(0))
            if placed is not None and math.hypot(cy - placed[0], cx - placed[1]) < 1.0:
                break  # the masks' centre stays put: the heart fills the window
            placed = (cy, cx)
        return segmentation, found, placed

    def _search_field(self, stack: Stack) -> tuple[float, float] | None:
        """Centre (cy, cx) in native pixels of the heart that `cmrsdk.heart.search_field` finds
        over the whole field, on the training grid, with the baseline U-Net; None where the field
        fits the network window (the first pass saw all of it) or no window of it shows an LV."""
        pre = self._pre
        h, w = pre.size
        ny, nx = stack.pixels.shape[1:]
        if not stack.pixels.shape[0] or not stack.pixels.any():
            return None  # an empty or all-zero series holds no heart (`_clean`)
        ry, rx = preprocess.resampled_shape((ny, nx), stack.spacing[1:], pre.target_spacing)
        if ry <= h and rx <= w:
            return None
        images, transform = preprocess.prepare_slices(
            stack.pixels,
            stack.spacing[1:],
            target_spacing=pre.target_spacing,
            size=(max(ry, h), max(rx, w)),
            normalization=cast(preprocess.Normalization, pre.normalization),
            threads=self.threads,
        )
        context = self.bundle.models[self._baseline].context
        found = search_field(
            preprocess.context_slices(images, context),
            self._engines[self._baseline].run,
            (h, w),
            search=pre.heart_search,
        )
        if found is None:
            return None
        # field pixel -> resampled pixel -> native pixel (pixel-centre aligned, as prepare_slices)
        (oy, ox), (ry, rx) = transform.offset, transform.resampled_shape
        return (found[0] + oy + 0.5) * ny / ry - 0.5, (found[1] + ox + 0.5) * nx / rx - 0.5

    def _segment_window(
        self,
        stack: Stack,
        region_source: RegionSource | None,
        centre: tuple[float, float] | None | _Unset,
        heart_known: bool,
        routes: np.ndarray | None,
        window_centre: tuple[float, float] | None,
    ) -> tuple[Segmentation, tuple[float, float] | None, bool]:
        """`segment`, with the heart centre given (a study's, found on another phase) or searched
        for (``_UNSET``), ``heart_known`` when another phase on the same grid showed the heart
        (the whole-stack confidence gate is then not applied), with regions from the
        segmentation, ``routes``: that phase's regions (see `_segment_by_segmentation`), and the
        full window centred on ``window_centre`` (native pixels; None: the image centre). Returns
        the segmentation, the heart centre used and whether the masks run into an edge of the
        full window inside the image (`_window_cuts_heart`)."""
        if not isinstance(stack, Stack):
            raise InputError(f"'stack' must be a cmrsdk.Stack, got {type(stack).__name__}")
        if region_source is not None and not callable(region_source):
            raise InputError(
                f"'region_source' must be callable (stack, images) -> (Z, 4) probabilities or (Z,) "
                f"region codes, got {type(region_source).__name__}"
            )
        timings: dict[str, float] = {}
        t0 = t = time.perf_counter()

        training = self._prepare(stack, self._pre, window_centre)
        images, transform = (
            training if self._grid is None else self._prepare(stack, self._grid.preprocessing, window_centre)
        )
        window = transform  # the full window's, before any crop
        t, timings["preprocess"] = _lap(t)

        # the classifier and a caller's region source see the training grid, as they were made
        regions, region_probabilities, decoded = self._route(training[0], stack, region_source)
        t, timings["classify"] = _lap(t)

        # the heart is found on the training grid (its centre in that full window's pixels), so
        # the base, segmented there again on a finer grid, sees the window it would without one
        crop = self.heart_crop if self._grid is None else self._grid.heart_crop
        if crop is None or not images.shape[0]:
            centre = None
        else:
            if isinstance(centre, _Unset):
                centre = self._locate(training[0], regions)
            if centre is not None:
                moved = centre if self._grid is None else move_centre(centre, training[1], window)
                images, transform = crop_to_heart(images, transform, moved, crop)
        t, timings["locate"] = _lap(t)

        unsure = False
        if self._by_segmentation and region_source is None:
            probabilities, regions, unsure = self._segment_by_segmentation(
                images, index_toward_apex(stack.affine), heart_known, routes
            )
            region_probabilities = np.eye(len(REGION_NAMES), dtype=np.float32)[regions]
        else:
            probabilities = self._segment(images, regions, skip_base=self._grid is not None)
        if regions is not None:
            weigh_apical_rv(probabilities, regions, self.apical_rv_weight)
        base = None
        if self._grid is not None and regions is not None:
            base = self._base_on_training_grid(regions, training, centre)
        t, timings["segment"] = _lap(t)

        labels = preprocess.resample_argmax(probabilities, transform, threads=self.threads)
        if base is not None:
            labels[base[0]] = base[1]
        labels = self._clean(labels, stack)
        t, timings["postprocess"] = _lap(t)
        timings["total"] = (t - t0) * 1000.0

        provenance = self.provenance
        if region_source is not None and self.mode == "routed":
            provenance.update(
                regions_from="region_source",
                region_source=_source_name(region_source),
                region_decoding=self.region_decoding if decoded else None,
            )
        segmentation = judged_segmentation(
            stack, labels, regions, region_probabilities, timings, provenance, seen=transform, unsure=unsure
        )
        return segmentation, centre, _window_cuts_heart(labels, window)

    # -- public -----------------------------------------------------------------------------
    def segment(self, stack: Stack, *, region_source: RegionSource | None = None) -> Segmentation:
        """Segment one stack.

        Parameters
        ----------
        stack : the short-axis stack.
        region_source : in routed mode, the regions to route by instead of the classifier's or
            the segmentation's (see `RegionSource`): e.g. the ground truth's
            (`cmrsdk.evaluation.ground_truth_regions`, the upper bound of routing) or another
            classifier's stored predictions (``export.experiment.StoredRegions``). Ignored in
            baseline mode. Required when the pipeline's ``regions_from`` is "caller".

        Returns
        -------
        `Segmentation` with uint8 (Z, Y, X) labels on the stack's grid.
        """
        if not isinstance(stack, Stack):
            raise InputError(f"'stack' must be a cmrsdk.Stack, got {type(stack).__name__}")
        turn = self._turn(stack)
        return _unturned(self._segment_stack(_turned(stack, turn), region_source, _UNSET)[0], stack, turn)

    def _turn(self, stack: Stack) -> Orientation | None:
        """How ``stack`` is turned in-plane for the networks, None for not at all: to the training
        layout (``training_layout``, a trusted scanner orientation: `cmrsdk.layout`), else to its
        source DICOM's layout (`cmrsdk.Stack.dicom_turn`), else, for a side-aware bundle, left to
        right when seen from the base (`cmrsdk.chirality`)."""
        if self.training_layout and (turn := training_layout_turn(stack.affine)) is not None:
            return None if turn == Orientation() else turn
        if stack.dicom_turn is not None and Orientation(*stack.dicom_turn) != Orientation():
            # a converter's NIfTI segmented as its DICOM is: the U-Nets are not flip-invariant,
            # and dcm2niix's rows bottom-up gave RVEF 41.8 % where the DICOM gives 18.2 (sweep 28)
            return Orientation(*stack.dicom_turn)
        if self.side_aware and seen_from_apex(stack.affine) is False:
            return Orientation(flip_cols=True)
        return None

    def segment_study(
        self,
        study: Study,
        *,
        region_source: RegionSource | None = None,
        progress: PhaseProgress | None = None,
    ) -> StudySegmentation:
        """Segment ED and ES, or every phase of a full cine.

        For a cine whose ED and ES are unknown they are taken from the LV blood-pool volume
        curve: ED at its largest, ES at its smallest volume among the phases showing an LV
        (`_ed_es`). With a heart crop the heart is located once, on ED (for a cine whose ED is
        unknown, on the curve's ED: the cine is segmented again, located there, where its first
        phase is not ED, so that where a cine starts does not move its masks), and every phase
        on the same grid is cropped around that centre; a phase on another grid (shape or
        spacing) is located on its own. Likewise, once that first phase shows a heart, the other
        phases on its grid are not emptied by the whole-stack confidence gate, and with regions
        from the segmentation they are routed by that phase's regions: each of their slices is
        segmented once, by its region's U-Net, instead of by the baseline and then again
        (held-out ACDC, shipped 0.3.0 weights: every region and label within -0.03 / +1.54
        points of routing each phase by its own baseline pass, 15 % less time per ED+ES pair).

        Parameters
        ----------
        study : the study.
        region_source : handed to `segment` for every phase.
        progress : called after each phase is segmented with (phases segmented, phases to segment
            as known then); a second pass (a cine located again on its ED, a heart rescaled) adds
            its phases to the second number. For a progress bar: a cine of 30 phases takes tens
            of seconds on a laptop CPU.
        """
        if not isinstance(study, Study):
            raise InputError(f"'study' must be a cmrsdk.Study, got {type(study).__name__}")
        if progress is not None and not callable(progress):  # else it failed after the first phase's work
            raise InputError(
                f"'progress' must be callable (phases done, phases planned), got {type(progress).__name__}"
            )
        t0 = time.perf_counter()
        tally = _Tally(progress)
        result = self._segment_phases(study, region_source, tally)
        scale = heart_scale(lv_area_mm2(result.ed.labels, result.ed.stack.spacing)) if self.rescale_heart else None
        scale = feasible_scale(scale, study) if scale is not None else None
        if scale is not None:
            # smaller or larger than any heart the U-Nets learnt: again at their size (cmrsdk.heart_size)
            first = result.timings_ms
            again = self._segment_phases(rescaled(study, scale), region_source, tally)
            result = self._on_true_spacing(again, study, scale)
            both = {stage: first[stage] + again.timings_ms[stage] for stage in (*STAGES, "total")}
            result = replace(result, timings_ms={**result.timings_ms, **both})
        return replace(result, timings_ms={**result.timings_ms, "wall": (time.perf_counter() - t0) * 1000.0})

    @staticmethod
    def _phase_indices(study: Study) -> list[int]:
        """The phases segmented: ED and ES (in time order) where both are known and the study is
        not a cine, else every phase."""
        if study.ed_index is not None and study.es_index is not None and not study.is_cine:
            # time order, as `phases` promises; ED and ES one phase: segmented once, measured as one
            return sorted({study.ed_index, study.es_index})
        return list(range(len(study.phases)))

    def _on_true_spacing(self, result: StudySegmentation, study: Study, scale: float) -> StudySegmentation:
        """``result`` of ``study`` segmented `rescaled` by ``scale``, put back on the study's own
        stacks (the labels are on their pixels already), flagged ``small_heart`` (``scale`` < 1) or
        ``large_heart`` and measured."""
        stacks = [study.phases[i] for i in self._phase_indices(study)]
        flag = "small_heart" if scale < 1.0 else "large_heart"
        segmentations = []
        for seg, stack in zip(result.phases, stacks):
            provenance = {**seg.provenance, "heart_scale": round(scale, 3)}
            if "systolic_base_rv_ml" in provenance:  # a volume: in-plane areas scale by scale²
                provenance["systolic_base_rv_ml"] = provenance["systolic_base_rv_ml"] * scale**2
            segmentations.append(
                replace(seg, stack=stack, provenance=provenance, flags=tuple(dict.fromkeys((*seg.flags, flag))))
            )
        curve = np.array([s.volumes_ml()["LVBP"] for s in segmentations], dtype=np.float64)
        measures, measured = self._measures(segmentations, result.ed_index, result.es_index)
        return StudySegmentation(
            tuple(segmentations), result.ed_index, result.es_index, curve, measures, result.timings_ms, measured
        )

    @staticmethod
    def _measures(segmentations: list[Segmentation], ed: int, es: int) -> tuple[CardiacMeasures, CardiacMeasures]:
        """The study's measures as reported (unreal ones withheld) and as measured, from ED and ES."""
        single = len(segmentations) == 1
        measured = cardiac_measures(
            segmentations[ed].labels,
            None if single else segmentations[es].labels,
            segmentations[ed].stack.spacing,
            segmentations[es].stack.spacing,
            ed_positions=segmentations[ed].stack.slice_positions,
            es_positions=segmentations[es].stack.slice_positions,
        )
        phases = [segmentations[ed]] if single else [segmentations[ed], segmentations[es]]
        missing = ventricles_not_found([(seg.labels, seg.volumes_ml()) for seg in phases])
        shown = withhold_not_found(withhold_unreal(measured, same_phase=not single and ed == es), missing)
        return shown, measured

    def _segment_phases(self, study: Study, region_source: RegionSource | None, tally: _Tally) -> StudySegmentation:
        """`segment_study` on the study's own grid (one pass; two where the cine's ED is found late)."""
        t0 = time.perf_counter()
        indices = self._phase_indices(study)
        # the phase located first: ED where known (the heart at its largest), else the first phase
        first = indices.index(study.ed_index) if study.ed_index in indices else 0
        passes: list[list[Segmentation]] = []  # a pass located on another phase, before the one kept
        segmentations = self._segment_located(study, indices, first, region_source, tally)
        curve = np.array([s.volumes_ml()["LVBP"] for s in segmentations], dtype=np.float64)
        if study.ed_index is not None and study.es_index is not None:
            ed, es = indices.index(study.ed_index), indices.index(study.es_index)
        else:
            ed, es = _ed_es(curve)
            if ed != first and segmentations[first].labels.any():
                # the window and the regions follow the located phase, and the U-Nets are not
                # shift-equivariant: a cine stored from another point of the cycle (trigger delay,
                # pulse triggering) moved LVEF by 3 points. Locating on the curve's ED makes the
                # masks independent of where the cine starts, at one more pass for such studies
                # (its stages' time counted in the study's timings: sweep 33 saw "total" 15.6 s of
                # a 29.9 s "wall").
                passes.append(segmentations)
                segmentations = self._segment_located(study, indices, ed, region_source, tally)
                curve = np.array([s.volumes_ml()["LVBP"] for s in segmentations], dtype=np.float64)
                ed, es = _ed_es(curve)
        if self.systolic_base and ed != es:
            segmentations[es] = self._systolic_base(segmentations[ed], segmentations[es])
        # one phase: volumes at that phase, but no ES, so no SV or EF (NaN, never 0)
        measures, measured = self._measures(segmentations, ed, es)
        passes.append(segmentations)
        totals = {stage: sum(s.timings_ms[stage] for p in passes for s in p) for stage in (*STAGES, "total")}
        totals["wall"] = (time.perf_counter() - t0) * 1000.0
        return StudySegmentation(tuple(segmentations), ed, es, curve, measures, totals, measured)

    def _segment_located(
        self, study: Study, indices: list[int], first: int, region_source: RegionSource | None, tally: _Tally
    ) -> list[Segmentation]:
        """Every phase of ``indices`` segmented, in time order, the heart and (with regions from the
        segmentation) the regions found on phase ``first`` (a position in ``indices``) and kept."""
        order = [first] + [i for i in range(len(indices)) if i != first]
        located = study.phases[indices[first]]
        results: dict[int, Segmentation] = {}
        centre: tuple[float, float] | None | _Unset = _UNSET
        window: tuple[float, float] | None | _Unset = _UNSET
        heart_found = False
        routes: np.ndarray | None = None
        tally.plan(len(order))
        for i in order:
            stack = study.phases[indices[i]]
            turn = self._turn(stack)
            same_grid = (
                stack.shape == located.shape
                and tuple(stack.spacing) == tuple(located.spacing)
                and turn == self._turn(located)
            )
            # the confidence gate is for series without a heart; once the first phase showed one,
            # a less certain phase of the same study is a harder frame, not an empty one (mirroring
            # lowers the certainty of M&Ms H1N8S6 at ES to 0.903: gated, it lost the whole ES)
            known = same_grid and heart_found
            segmentation, found, placed = self._segment_stack(
                _turned(stack, turn),
                region_source,
                centre if same_grid else _UNSET,
                known,
                routes if same_grid else None,
                window if same_grid else _UNSET,
            )
            results[i] = _unturned(segmentation, stack, turn)
            tally.step()
            if i == first:
                centre, heart_found = found, bool(results[i].labels.any())
                window = placed if heart_found else _UNSET  # no heart seen: each phase places its own
                if self._by_segmentation and region_source is None and heart_found:
                    routes = results[i].regions  # a study's regions are found once, as its heart
        return [results[i] for i in range(len(indices))]

    @staticmethod
    def _systolic_base(ed: Segmentation, es: Segmentation) -> Segmentation:
        """ES with the atrium the valve plane's descent put in its most basal RV slice left out
        (`cmrsdk.systole`); unchanged where ED and ES do not share a grid."""
        ed_z = np.asarray(ed.stack.slice_positions, dtype=np.float64)
        es_z = np.asarray(es.stack.slice_positions, dtype=np.float64)
        same_grid = ed.labels.shape == es.labels.shape and np.allclose(ed_z, es_z, atol=0.5)
        if not same_grid:
            return es
        toward_apex = index_toward_apex(ed.stack.affine)
        labels, dropped = drop_systolic_atrium(ed.labels, es.labels, toward_apex=toward_apex)
        provenance = {**es.provenance, "systolic_base_rv_dropped_slice": dropped}
        found = basal_rv_ratio(ed.labels, es.labels, toward_apex=toward_apex)
        if found is not None and np.isfinite(found[1]):
            # what the rule decided by, and the RV it kept or left out: the report offers the other decision
            z, ratio = found
            alone = np.zeros_like(es.labels)
            alone[z] = es.labels[z]
            rv_ml = volumes_ml(alone, es.stack.spacing, es.stack.slice_positions)["RVBP"]
            provenance |= {"systolic_base_rv_slice": z, "systolic_base_rv_ratio": ratio, "systolic_base_rv_ml": rv_ml}
        return replace(es, labels=labels, provenance=provenance)

    @property
    def provenance(self) -> dict[str, Any]:
        """Where a segmentation came from: bundle, backend, device, mode, options, cmrsdk's version
        and code hash, the runtimes' versions (a new dict each call)."""
        from . import __version__
        from ._build import code_sha256, runtime_versions

        routed = self.mode == "routed"
        backends = {name: engine.backend for name, engine in self._engines.items()}
        return {
            "bundle": str(self.bundle.path),
            "manifest_sha256": self.bundle.manifest_sha256,
            "backends": backends,
            "device": self.device,
            "precision": self.precision,
            "mode": self.mode,
            "largest_component": self.largest_component,
            "systolic_base": self.systolic_base,
            "apical_rv_weight": self.apical_rv_weight if routed else None,
            "mirroring": self.mirroring,
            "training_layout": self.training_layout,
            "rescale_heart": self.rescale_heart,
            "heart_crop": list(self.heart_crop) if self.heart_crop else None,
            "segment_spacing": list(self.segment_spacing) if self.segment_spacing else None,
            "region_decoding": self.region_decoding
            if routed and self.regions_from in ("classifier", "caller")
            else None,
            "regions_from": self.regions_from if routed else None,
            "region_source": None,
            "cmrsdk": __version__,
            "code_sha256": code_sha256(),
            "runtimes": runtime_versions(sorted(set(backends.values()))),
        }


def judged_segmentation(
    stack: Stack,
    labels: np.ndarray,
    regions: np.ndarray | None,
    region_probabilities: np.ndarray | None,
    timings: dict[str, float],
    provenance: dict[str, Any],
    *,
    seen: preprocess.SliceTransform,
    unsure: bool,
) -> Segmentation:
    """One stack's `Segmentation` as either chain ends it: flagged ``field_edge`` where the masks
    reach the border of the window the U-Nets saw (``seen``) inside the image, ``low_confidence``
    where the confidence gate was unsure (``unsure``) and masks were kept; the window recorded
    in the provenance as ``network_window`` (`network_window`), so that a re-implementation of the
    pipeline can check its crop against cmrsdk's (docs/CONTRACT.md, sweep 31)."""
    flags: tuple[str, ...] = ("field_edge",) if reaches_field_edge(labels, preprocess.window_field(seen)) else ()
    if unsure and labels.any():
        flags += ("low_confidence",)
    return Segmentation(
        stack=stack,
        labels=labels,
        regions=regions,
        region_probabilities=region_probabilities,
        timings_ms=timings,
        provenance={**provenance, "network_window": network_window(seen)},
        flags=flags,
    )


def network_window(seen: preprocess.SliceTransform) -> dict[str, list[float] | list[int]]:
    """Where the U-Nets' window sat on a stack, JSON-ready: ``target_spacing_mm`` (dy, dx) and
    ``resampled_shape`` (Y', X') of the grid it was cut from, ``offset_yx`` (oy, ox), the index on
    that grid of the window's pixel (0, 0) (negative where padded), and ``size`` (H, W), pixels.
    On the stack as the networks saw it: turned first where the provenance has ``in_plane_turn``,
    scaled where it has ``heart_scale``."""
    return {
        "target_spacing_mm": [round(float(v), 6) for v in seen.target_spacing],
        "resampled_shape": [int(v) for v in seen.resampled_shape],
        "offset_yx": [int(v) for v in seen.offset],
        "size": [int(v) for v in seen.size],
    }


def _turned(stack: Stack, turn: Orientation | None) -> Stack:
    """``stack`` turned in-plane for the networks (`cmrsdk.layout.turn_stack`), or as it is."""
    return stack if turn is None else replace(turn_stack(stack, turn), dicom_turn=None)


def _unturned(segmentation: Segmentation, stack: Stack, turn: Orientation | None) -> Segmentation:
    """A segmentation of ``stack`` made on its turn (`_turned`), brought back to the stack's own
    grid; unchanged where it was not turned."""
    if turn is None:
        return segmentation
    provenance = {**segmentation.provenance, "in_plane_turn": asdict(turn)}
    if turn == Orientation(flip_cols=True):
        provenance["columns_flipped"] = True
    labels = unturn_labels(segmentation.labels, turn)
    return replace(segmentation, stack=stack, labels=labels, provenance=provenance)


def _ed_es(curve: np.ndarray) -> tuple[int, int]:
    """ED and ES indices from a cine's float64 (T,) LV blood-pool volumes (mL): the largest and
    the smallest, the smallest among phases with a ventricle, so that a blank frame or one the
    networks found no LV in is never taken for end-systole (its "0 mL" would make the whole
    EDV the stroke volume); NaN volumes (one slice) count for neither."""
    finite = np.flatnonzero(np.isfinite(curve))
    if not len(finite):
        return 0, 0
    ed = int(finite[np.argmax(curve[finite])])
    beating = finite[curve[finite] > 0]
    candidates = beating if len(beating) else finite
    return ed, int(candidates[np.argmin(curve[candidates])])


def _window_cuts_heart(labels: np.ndarray, window: preprocess.SliceTransform) -> bool:
    """Whether uint8 (Z, Y, X) native labels touch an edge of the full network window that lies
    inside the image (an edge on the image's own border cuts nothing a new window could show)."""
    field = preprocess.window_field(window)
    if field is None:
        return False
    y0, y1, x0, x1 = field
    ny, nx = labels.shape[1:]
    fg = labels > 0
    return bool(
        (y0 > 0 and fg[:, y0].any())
        or (y1 < ny - 1 and fg[:, y1].any())
        or (x0 > 0 and fg[:, :, x0].any())
        or (x1 < nx - 1 and fg[:, :, x1].any())
    )


def _source_name(source: RegionSource) -> str:
    """A region source's name for the provenance: its ``name``, else its qualified name."""
    name = getattr(source, "name", None) or getattr(source, "__qualname__", None) or type(source).__qualname__
    return str(name)


def _regions_from_source(
    source: RegionSource, stack: Stack, images: np.ndarray, decoding: Decoding
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Regions uint8 (Z,), probabilities float32 (Z, 4) and whether they were decoded, from a
    `RegionSource`'s answer, checked."""
    n, r = images.shape[0], len(REGION_NAMES)
    answer = np.asarray(source(stack, images))
    where = stack.source or "the stack"
    if answer.ndim == 1 and (np.issubdtype(answer.dtype, np.integer) or answer.dtype == np.bool_):
        # region codes: a rule, not a probability, so used as they are (decoding could move them)
        if answer.shape != (n,) or (n and (answer.min() < 0 or answer.max() >= r)):
            got = f"values {answer.min()}..{answer.max()}" if answer.shape == (n,) else f"shape {answer.shape}"
            raise InputError(
                f"'region_source' returned region codes of {got} for the {n} slices of "
                f"{where}; expected ({n},) codes in 0..{r - 1}"
            )
        regions = answer.astype(np.uint8)
        return regions, np.eye(r, dtype=np.float32)[regions], False
    probabilities = answer.astype(np.float32)
    if probabilities.shape != (n, r) or not np.isfinite(probabilities).all():
        raise InputError(
            f"'region_source' returned {probabilities.shape} probabilities for the "
            f"{n} slices of {where}; expected finite ({n}, {r})"
        )
    return decode_regions(probabilities, decoding), probabilities, True


def _lap(start: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now, (now - start) * 1000.0
