"""The routed segmentation pipeline: preprocess → classify → segment per region → postprocess.

One `Pipeline.segment` call turns a `Stack` into uint8 labels on the stack's own grid:

1. preprocess   native core: in-plane resample to the bundle's spacing, normalise, crop/pad to
                the network size → float32 (Z, 1, H, W) and the inverse transform;
2. classify     one batched call of the classifier → region and probabilities per slice;
   locate       (``heart_crop``) one baseline pass over one middle slice finds the heart, and
                every slice's window is narrowed around it: the U-Nets then see fewer pixels;
3. segment      slices grouped by region, one batched call per region model (non-cardiac
                slices → the baseline model) → probabilities (Z, C, H, W);
                with regions from the segmentation (``regions_from="segmentation"``) the
                classify stage is replaced by one baseline pass over every slice, whose masks
                give the regions by the ground-truth rule (`cmrsdk.regions`); slices without
                heart get no mask, region slices are segmented again by their region's U-Net;
4. postprocess  native core: resample probabilities back and argmax in one fused pass, then
                the largest connected component of each structure.

Modes: ``routed`` (the paper's classifier + region U-Nets), ``baseline`` (the baseline U-Net on
every slice), ``oracle`` (routing by the ground-truth regions of ``stack.labels``: the upper
bound of routing).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np

from . import preprocess
from .bundle import MANIFEST_NAME, Bundle, load_bundle, sha256_file
from .errors import InputError
from .labels import MIDDLE, NON_CARDIAC, REGION_NAMES
from .metrics import CardiacMeasures, cardiac_measures, volumes_ml
from .regions import segmentation_regions, slice_regions
from .routing import DECODINGS, Decoding, decode_regions
from .types import Stack, Study

__all__ = ["Mode", "MODES", "RegionSource", "Segmentation", "StudySegmentation", "Pipeline"]

Mode = Literal["routed", "baseline", "oracle"]
MODES: tuple[str, ...] = ("routed", "baseline", "oracle")
STAGES: tuple[str, ...] = ("preprocess", "classify", "locate", "segment", "postprocess")
#: fewer foreground pixels than this in the locating pass: the heart was not found, keep the full window
MIN_HEART_PIXELS = 50
#: most baseline passes the heart search makes per stack (first choice, then the central slices).
LOCATE_TRIES = 3
#: with regions from the segmentation, a slice with fewer foreground pixels (at the bundle's
#: spacing; 20 px is about 0.4 cm² at 1.48 mm) holds no heart: it is non-cardiac and gets no mask.
MIN_SLICE_PIXELS = 20
#: with regions from the segmentation, a stack whose foreground the baseline gives a mean
#: probability below this holds no heart: every slice is non-cardiac. Measured with the shipped
#: bundle: 0.93-0.97 on real ACDC, M&Ms and Sunnybrook stacks, 0.78-0.79 on constant and noise
#: images, where the network's few hundred pixels of "heart" are a guess.
MIN_HEART_CONFIDENCE = 0.88
REGIONS_FROM: tuple[str, ...] = ("bundle", "classifier", "segmentation")


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The pipeline's answer for one stack.

    Attributes
    ----------
    stack : the input stack (its grid, spacing and affine are the labels').
    labels : uint8 (Z, Y, X) canonical labels on the stack's grid.
    regions : uint8 (Z,) region each slice was routed by (0 non-cardiac, 1 base, 2 middle,
        3 apex); None in ``baseline`` mode, where nothing is routed.
    region_probabilities : float32 (Z, 4) classifier probabilities; one-hot of ``regions`` in
        ``oracle`` mode and with regions from the segmentation (a rule, not a probability);
        None in ``baseline`` mode.
    timings_ms : milliseconds per stage ("preprocess", "classify", "locate", "segment",
        "postprocess") and "total".
    provenance : bundle name and hash, backend, device, mode, cmrsdk version.
    """

    stack: Stack
    labels: np.ndarray
    regions: np.ndarray | None
    region_probabilities: np.ndarray | None
    timings_ms: dict[str, float]
    provenance: dict[str, Any]

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
    measures : volumes, EF and LV mass from the ED and ES segmentations.
    """

    phases: tuple[Segmentation, ...]
    ed_index: int
    es_index: int
    lv_volume_curve_ml: np.ndarray
    measures: CardiacMeasures
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ed(self) -> Segmentation:
        return self.phases[self.ed_index]

    @property
    def es(self) -> Segmentation:
        return self.phases[self.es_index]


#: (stack, preprocessed float32 (Z, 1, H, W) slices) -> float32 (Z, 4) region probabilities.
RegionSource = Callable[[Stack, np.ndarray], np.ndarray]


class Pipeline:
    """Routed cardiac MRI segmentation with the models of one bundle.

    Parameters
    ----------
    bundle : a loaded `Bundle` or the path of a bundle directory.
    backend : "auto", "onnx", "torchscript" or "tensorrt" (see `cmrsdk.engines`).
    device : "cpu" or "cuda".
    mode : "routed", "baseline" or "oracle".
    largest_component : keep only the largest 3-D connected component of each structure.
    threads : threads of the native kernels (default: all cores).
    heart_crop : (h, w) in pixels of the target spacing, None, or "bundle" (the default: the
        bundle's ``preprocessing.heart_crop``, itself None when the bundle sets none). When set,
        the U-Nets see only an (h, w) window centred on the heart, found by one baseline pass
        over a middle slice; where no heart is found they see the bundle's full window. Must be
        a size the U-Nets accept (a multiple of 16 for the 5-stage U-Nets of export/) and fit
        in the full window. The U-Nets of export/ train on 128 x 128 patches: at that window
        they are both faster and better than on the full one (README, docs/RESULTS.md).
    region_decoding : "monotone" (the most probable region sequence that crosses the heart once,
        see `cmrsdk.routing`) or "independent" (each slice's most probable region, the paper's).
    engine_options : passed to every engine, e.g. ``{"intra_op_threads": 2}`` for ONNX Runtime
        or ``{"cuda_graphs": True}`` for TorchScript on CUDA (see `cmrsdk.engines`).
    regions_from : in routed mode, where each slice's region comes from: "classifier" (the
        paper's slice classifier), "segmentation" (the baseline U-Net segments every slice and the
        ground-truth rule of `cmrsdk.regions` names the regions from its masks: one more network
        pass, regions that follow the anatomy of the whole stack, and no mask on slices without
        heart) or "bundle" (the default: the manifest's ``regions_from``).
    precision : "fp32" (the default), "int8" or "fp16" (CUDA). "int8" runs the bundle's int8
        configuration, the one whose Dice change against fp32 ``python -m export.quantize``
        measured and recorded in the manifest: the models that have an "onnx-int8" artifact in
        int8, the others (the region classifier, by default) in fp32; a bundle with no int8
        artifact is refused. "fp16" applies to every model. Never chosen behind the caller's
        back: "auto" picks the backend, not the arithmetic.
    region_source : in routed mode, replaces the bundle's classifier: a callable
        ``(stack, images) -> probabilities`` taking the `Stack` and its preprocessed float32
        (Z, 1, H, W) slices and returning float32 (Z, 4) region probabilities (non-cardiac,
        base, middle, apex), decoded as the classifier's are. For region labels known from
        elsewhere (the scanner's slice planning, another classifier's stored predictions).

    The object holds no per-call state: one pipeline may serve several threads at once.
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
        region_source: RegionSource | None = None,
        regions_from: str = "bundle",
        precision: str = "fp32",
    ) -> None:
        if mode not in MODES:
            raise InputError(f"'mode' must be one of {', '.join(MODES)}, got {mode!r}")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.backend = backend
        self.device = device
        self.mode = mode
        self.largest_component = largest_component
        self.threads = threads
        self._pre = self.bundle.preprocessing
        if heart_crop == "bundle":
            heart_crop = self._pre.heart_crop
        if heart_crop is not None:
            heart_crop = (int(heart_crop[0]), int(heart_crop[1]))
            if not all(0 < c <= s for c, s in zip(heart_crop, self._pre.size)):
                raise InputError(f"'heart_crop' must be (h, w) within the bundle's window {self._pre.size}, got {heart_crop}")
            # the U-Nets halve the image up to four times: sides not divisible fail inside the engine
            multiple = min(16, math.gcd(*self._pre.size) & -math.gcd(*self._pre.size))
            if any(c % multiple for c in heart_crop):
                raise InputError(f"'heart_crop' {heart_crop} must be multiples of {multiple} pixels (the U-Nets "
                                 f"downsample by {multiple}), e.g. {tuple(max(multiple, c // multiple * multiple) for c in heart_crop)}")
        self.heart_crop = heart_crop
        if region_decoding not in DECODINGS:
            raise InputError(f"'region_decoding' must be one of {', '.join(DECODINGS)}, got {region_decoding!r}")
        self.region_decoding = region_decoding
        self._baseline = self.bundle.routing.get(NON_CARDIAC)
        if self._baseline is None:
            raise InputError(f"bundle {self.bundle.path} routes no model for non-cardiac slices: it has no baseline U-Net")
        if region_source is not None and not callable(region_source):
            raise InputError(f"'region_source' must be callable (stack, images) -> (Z, 4) probabilities, got {type(region_source).__name__}")
        self.region_source = region_source
        if regions_from not in REGIONS_FROM:
            raise InputError(f"'regions_from' must be one of {', '.join(REGIONS_FROM)}, got {regions_from!r}")
        self.regions_from = self.bundle.regions_from if regions_from == "bundle" else regions_from
        if region_source is not None:
            self.regions_from = "region_source"
        if mode == "routed" and self.regions_from == "classifier" and self.bundle.classifier is None:
            raise InputError(f"regions from the classifier need one, and bundle {self.bundle.path} has none; "
                             f"use regions_from='segmentation' or mode 'baseline'")
        self._manifest_sha256 = sha256_file(self.bundle.path / MANIFEST_NAME)
        # Create the engines now, not on the first call, so latency is flat from call one.
        needed = {self._baseline}
        if mode != "baseline":
            needed |= set(self.bundle.routing.values())
        if mode == "routed" and self.regions_from == "classifier":
            needed.add(self.bundle.classifier)
        options = dict(engine_options or {})
        self.precision = precision
        # The sizes each model will be fed: the classifier and the locating pass see the full
        # window; the U-Nets the heart crop, or the full window where no heart is found. An
        # artifact that cannot run them all (a TensorRT engine built for one size) is passed over.
        full = tuple(self._pre.size)
        unet_shapes = [full] if heart_crop is None else [full, heart_crop]
        int8 = {name for name in needed if "onnx-int8" in self.bundle.models[name].artifacts}
        if precision == "int8" and not int8:
            raise InputError(f"precision 'int8' needs int8 artifacts, and bundle {self.bundle.path} has none for "
                             f"{sorted(needed)}; add them with: python -m export.quantize {self.bundle.path}")
        self._engines = {name: self.bundle.engine(name, backend=backend, device=device,
                                                  precision="fp32" if precision == "int8" and name not in int8 else precision,
                                                  shapes=[full] if name == self.bundle.classifier else unet_shapes, **options)
                         for name in sorted(needed)}

    # -- stages -----------------------------------------------------------------------------
    def _route(self, images: np.ndarray, stack: Stack) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Region per slice, uint8 (Z,), and its float32 (Z, 4) probabilities; None in baseline mode."""
        if self.mode == "baseline" or self._by_segmentation:
            return None, None  # by segmentation: the regions come with the segment stage
        if self.mode == "oracle":
            if stack.labels is None:
                raise InputError(f"mode 'oracle' needs ground-truth labels on the stack ({stack.source or 'array'} has none)")
            regions = slice_regions(stack.labels)
            return regions, np.eye(len(REGION_NAMES), dtype=np.float32)[regions]
        if self.region_source is None:
            probabilities = self._engines[self.bundle.classifier].run(images)
        else:
            probabilities = np.asarray(self.region_source(stack, images), dtype=np.float32)
            if probabilities.shape != (images.shape[0], len(REGION_NAMES)) or not np.isfinite(probabilities).all():
                raise InputError(f"'region_source' returned {probabilities.shape} probabilities for the "
                                 f"{images.shape[0]} slices of {stack.source or 'the stack'}; expected finite "
                                 f"({images.shape[0]}, {len(REGION_NAMES)})")
        return decode_regions(probabilities, self.region_decoding), probabilities

    def _locate(self, images: np.ndarray, regions: np.ndarray | None) -> tuple[float, float] | None:
        """Centre (cy, cx) of the heart in window pixels, or None where no heart is found.

        One baseline pass over the central middle slice: the foreground's centroid. Where that
        slice shows no heart (the classifier's "middle" can be wrong: on held-out ACDC patient100
        ES it was the last two slices, apex and below), the stack's central slice and then its
        neighbours are tried, up to `LOCATE_TRIES` passes in all.
        """
        n = images.shape[0]
        centre = n // 2
        candidates = [centre + d for step in range(n) for d in ((step, -step) if step else (0,)) if 0 <= centre + d < n]
        middle = np.flatnonzero(regions == MIDDLE) if regions is not None else np.empty(0, np.intp)
        if len(middle):
            first = int(middle[len(middle) // 2])
            candidates = [first] + [k for k in candidates if k != first]
        for k in dict.fromkeys(candidates[:LOCATE_TRIES]):
            foreground = self._engines[self._baseline].run(images[k : k + 1])[0].argmax(0) > 0
            if foreground.sum() >= MIN_HEART_PIXELS:
                ys, xs = np.nonzero(foreground)
                return float(ys.mean()), float(xs.mean())
        return None

    @staticmethod
    def _crop(images: np.ndarray, transform: preprocess.SliceTransform, centre: tuple[float, float],
              size: tuple[int, int]) -> tuple[np.ndarray, preprocess.SliceTransform]:
        """Narrow every slice's window to ``size`` (h, w) around ``centre``, kept inside the full window."""
        (h, w), (H, W) = size, images.shape[2:]
        y0 = min(max(int(round(centre[0] - h / 2)), 0), H - h)
        x0 = min(max(int(round(centre[1] - w / 2)), 0), W - w)
        cropped = np.ascontiguousarray(images[:, :, y0 : y0 + h, x0 : x0 + w])
        oy, ox = transform.offset
        return cropped, replace(transform, offset=(oy + y0, ox + x0), size=(h, w))

    @property
    def _by_segmentation(self) -> bool:
        return self.mode == "routed" and self.regions_from == "segmentation"

    def _segment_by_segmentation(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities float32 (Z, C, H, W) and regions uint8 (Z,), the regions from the baseline's masks.

        The baseline segments every slice; `segmentation_regions` names the regions; slices without
        heart become background everywhere, and so does a whole stack whose foreground the
        baseline is unsure of (mean probability under `MIN_HEART_CONFIDENCE`); base, middle and apex slices are segmented again by
        their region's U-Net where the bundle has one (the baseline's answer stands elsewhere).
        """
        baseline = self._baseline
        probabilities = self._engines[baseline].run(images)
        labels = probabilities.argmax(1)
        foreground = labels > 0
        if foreground.any() and float(probabilities.max(1)[foreground].mean()) < MIN_HEART_CONFIDENCE:
            labels = np.zeros_like(labels)  # an unsure guess over the whole stack: no heart, no mask
        regions = segmentation_regions(labels, MIN_SLICE_PIXELS)
        empty = np.flatnonzero(regions == NON_CARDIAC)
        probabilities[empty] = 0.0
        probabilities[empty, 0] = 1.0
        for region in REGION_NAMES:
            name = self.bundle.routing.get(region, baseline)
            index = np.flatnonzero(regions == region)
            if region != NON_CARDIAC and name != baseline and len(index):
                probabilities[index] = self._engines[name].run(np.ascontiguousarray(images[index]))
        return probabilities, regions

    def _segment(self, images: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
        """Probabilities float32 (Z, C, H, W): one batched engine call per model used."""
        baseline = self._baseline
        if regions is None or images.shape[0] == 0:
            return self._engines[baseline].run(images)
        # non-cardiac slices (and any region without a model of its own) go to the baseline
        model_of = np.array([self.bundle.routing.get(r, baseline) if r != NON_CARDIAC else baseline for r in REGION_NAMES])
        route = model_of[regions]
        probabilities = np.empty((images.shape[0], len(self.bundle.labels), *images.shape[2:]), np.float32)
        for name in np.unique(route):
            index = np.flatnonzero(route == name)
            probabilities[index] = self._engines[str(name)].run(np.ascontiguousarray(images[index]))
        return probabilities

    # -- public -----------------------------------------------------------------------------
    def segment(self, stack: Stack) -> Segmentation:
        """Segment one stack.

        Parameters
        ----------
        stack : the short-axis stack; ``stack.labels`` is needed only in ``oracle`` mode.

        Returns
        -------
        `Segmentation` with uint8 (Z, Y, X) labels on the stack's grid.
        """
        if not isinstance(stack, Stack):
            raise InputError(f"'stack' must be a cmrsdk.Stack, got {type(stack).__name__}")
        timings: dict[str, float] = {}
        t0 = t = time.perf_counter()

        images, transform = preprocess.prepare_slices(
            stack.pixels,
            stack.spacing[1:],
            target_spacing=self._pre.target_spacing,
            size=self._pre.size,
            normalization=self._pre.normalization,
            threads=self.threads,
        )
        t, timings["preprocess"] = _lap(t)

        regions, region_probabilities = self._route(images, stack)
        t, timings["classify"] = _lap(t)

        if self.heart_crop is not None and images.shape[0]:
            centre = self._locate(images, regions)
            if centre is not None:
                images, transform = self._crop(images, transform, centre, self.heart_crop)
        t, timings["locate"] = _lap(t)

        if self._by_segmentation:
            probabilities, regions = self._segment_by_segmentation(images)
            region_probabilities = np.eye(len(REGION_NAMES), dtype=np.float32)[regions]
        else:
            probabilities = self._segment(images, regions)
        t, timings["segment"] = _lap(t)

        labels = preprocess.resample_argmax(probabilities, transform, threads=self.threads)
        if self.largest_component:
            labels = preprocess.largest_component(labels, threads=self.threads)
        # an all-zero image (a failed export, an empty series) holds no heart, whatever the networks
        # make of normalised zeros
        if stack.pixels.size and not np.any(stack.pixels):
            labels = np.zeros_like(labels)
        t, timings["postprocess"] = _lap(t)
        timings["total"] = (t - t0) * 1000.0

        return Segmentation(
            stack=stack,
            labels=labels,
            regions=regions,
            region_probabilities=region_probabilities,
            timings_ms=timings,
            provenance=self.provenance,
        )

    def segment_study(self, study: Study) -> StudySegmentation:
        """Segment ED and ES, or every phase of a full cine.

        For a cine whose ED and ES are unknown they are taken from the LV blood-pool volume
        curve: ED at its largest, ES at its smallest volume.
        """
        if not isinstance(study, Study):
            raise InputError(f"'study' must be a cmrsdk.Study, got {type(study).__name__}")
        t0 = time.perf_counter()
        if study.ed_index is not None and study.es_index is not None and not study.is_cine:
            indices = [study.ed_index, study.es_index]
        else:
            indices = list(range(len(study.phases)))
        segmentations = [self.segment(study.phases[i]) for i in indices]
        curve = np.array([s.volumes_ml()["LVBP"] for s in segmentations], dtype=np.float64)
        if study.ed_index is not None and study.es_index is not None:
            ed, es = indices.index(study.ed_index), indices.index(study.es_index)
        else:
            ed, es = int(curve.argmax()), int(curve.argmin())
        # one phase: volumes at that phase, but no ES, so no SV or EF (NaN, never 0)
        single = len(segmentations) == 1
        measures = cardiac_measures(
            segmentations[ed].labels, None if single else segmentations[es].labels, segmentations[ed].stack.spacing,
            segmentations[es].stack.spacing, ed_positions=segmentations[ed].stack.slice_positions,
            es_positions=segmentations[es].stack.slice_positions,
        )
        totals = {stage: sum(s.timings_ms[stage] for s in segmentations) for stage in (*STAGES, "total")}
        totals["wall"] = (time.perf_counter() - t0) * 1000.0
        return StudySegmentation(tuple(segmentations), ed, es, curve, measures, totals)

    @property
    def provenance(self) -> dict[str, Any]:
        """Where a segmentation came from: bundle, backend, device, mode, versions."""
        from . import __version__

        return {
            "bundle": str(self.bundle.path),
            "manifest_sha256": self._manifest_sha256,
            "backends": {name: engine.backend for name, engine in self._engines.items()},
            "device": self.device,
            "precision": self.precision,
            "mode": self.mode,
            "largest_component": self.largest_component,
            "heart_crop": list(self.heart_crop) if self.heart_crop else None,
            "region_decoding": self.region_decoding if self.mode == "routed" and self.regions_from == "classifier" else None,
            "regions_from": self.regions_from if self.mode == "routed" else None,
            "region_source": getattr(self.region_source, "name", repr(self.region_source)) if self.region_source else None,
            "cmrsdk": __version__,
        }


def _lap(start: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now, (now - start) * 1000.0
