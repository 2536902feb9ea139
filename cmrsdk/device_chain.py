"""The GPU path: a pipeline's whole chain on one torch device, only the labels copied back.

`DevicePipeline(bundle, device="cuda")` runs the stages of `cmrsdk.Pipeline.segment` with torch
tensors on its device (CUDA; the CPU too, which is how the tests check it against the host
pipeline). The host path moves every stack through numpy between its stages; here the pixels go
up once and uint8 labels come down once:

============  =============================================================  ====================
stage         on the device                                                  to the host
============  =============================================================  ====================
preprocess    in-plane resampling as two matrix products, ``A_y @ X @ A_xᵀ``;  nothing
              the matrices are the native kernel's own answer to unit
              impulses, so it is the same cubic B-spline with mirror edges;
              normalisation (``torch.quantile``: numpy's linear rule); the
              window's crop or pad
classify      the region classifier on the full window (classifier bundles)   (Z, 4) probabilities
locate        the baseline U-Net on the search slices (`cmrsdk.heart`),       a pixel count and
              the foreground's centroid                                        (cy, cx) per try
segment       batched U-Nets at the heart crop; per-slice foreground and LV   (Z,) areas, one
              areas for the regions, the stack's mean foreground confidence    scalar
postprocess   bilinear inverse resampling as two matrix products, argmax      uint8 (Z, Y, X)
============  =============================================================  ====================

The largest-component clean-up then runs on the host's native kernel (a 3-D labelling, a few
milliseconds), as do the measures. Results equal the host pipeline's up to float rounding in the
resampling and normalisation (the tests bound the label agreement).

The engines must take device tensors: the "torchscript" backend (fp32, fp16, CUDA graphs) does
(`TorchScriptEngine.forward_tensor`). Routing by a caller's region source stays on the host path.
Not executed on a GPU yet (no device was lent when it was written): benchmarks/gpu_check.sh
times it there.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol, cast

import numpy as np

from . import preprocess
from .errors import BackendUnavailableError, InputError
from .heart import MIN_HEART_PIXELS, heart_centre, heart_window, mean_centre, search_groups
from .labels import APEX, LVBP, LVM, NON_CARDIAC, REGION_NAMES, RVBP
from .metrics import heart_like
from .pipeline import (
    MIN_HEART_CONFIDENCE,
    MIN_SLICE_PIXELS,
    Pipeline,
    RegionSource,
    Segmentation,
    _Unset,
    _window_cuts_heart,
    judged_segmentation,
    mirror_axes,
)
from .regions import index_toward_apex, regions_from_areas
from .routing import decode_regions
from .types import Stack

__all__ = ["DevicePipeline", "resampling_matrix", "inverse_matrix"]


def resampling_matrix(n_native: int, n_resampled: int, spacing: float, order: int = 3) -> np.ndarray:
    """float32 (n_resampled, n_native): `cmrsdk.preprocess.resample_stack` along one axis, as a matrix.

    Column j is the native kernel's resampling of the unit impulse at native pixel j (the other
    axis of length 1 is left as it is), so ``A @ column`` reproduces the kernel's interpolation
    (B-spline prefilter and mirror edges included) up to float rounding.
    """
    impulses = np.eye(n_native, dtype=np.float32)[:, :, None]  # (j, native, 1)
    out = preprocess.resample_stack(impulses, (spacing, spacing), shape=(n_resampled, 1), order=order)
    return np.ascontiguousarray(out[:, :, 0].T)


def inverse_matrix(n_native: int, n_resampled: int, offset: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (n_native, size) bilinear weights from the window back to native pixels, and bool
    (n_native,) which native pixels the window covers: `cmrsdk.preprocess.resample_argmax`'s rule.

    Native pixel i sits at window coordinate ``(i + 0.5) n_resampled / n_native - 0.5 - offset``;
    it is covered when that lies in [-0.5, size - 0.5), and reads the window clamped to its edges.
    """
    i = np.arange(n_native, dtype=np.float64)
    r = (i + 0.5) * (n_resampled / n_native) - 0.5 - offset
    inside = (r >= -0.5) & (r < size - 0.5)
    rc = np.clip(r, 0.0, size - 1)
    f = np.floor(rc).astype(np.int64)
    w1 = (rc - f).astype(np.float32)
    m = np.zeros((n_native, size), np.float32)
    rows = np.flatnonzero(inside)
    np.add.at(m, (rows, f[rows]), 1.0 - w1[rows])
    np.add.at(m, (rows, np.minimum(f[rows] + 1, size - 1)), w1[rows])
    return m, inside


class _TensorEngine(Protocol):
    def forward_tensor(self, x: Any) -> Any: ...


class DevicePipeline(Pipeline):
    """`Pipeline` with every stage on its torch device (see the module docstring).

    Takes `Pipeline`'s arguments; ``backend`` defaults to "torchscript", the engines must take
    device tensors, and routed mode takes its regions from the segmentation or the classifier.
    `segment` and `segment_study` behave as `Pipeline`'s (a study is located once, on ED).
    """

    def __init__(self, bundle: Any, **options: Any) -> None:
        try:
            import torch
        except ModuleNotFoundError as exc:  # a bare ModuleNotFoundError named no extra (sweep 50)
            raise BackendUnavailableError(
                "DevicePipeline needs PyTorch, which is not installed: pip install 'cmrsdk[torch]' "
                "(README 'Installation extras')"
            ) from exc
        options.setdefault("backend", "torchscript")
        super().__init__(bundle, **options)
        self._torch = torch
        missing = [name for name, e in self._engines.items() if not hasattr(e, "forward_tensor")]
        if missing:
            raise InputError(
                f"the device chain needs engines that take device tensors (backend 'torchscript'); "
                f"{sorted(missing)} run on {sorted({self._engines[m].backend for m in missing})}"
            )
        if self.mode == "routed" and self.regions_from == "caller":
            raise InputError("the device chain routes by the segmentation or the classifier, not by a caller's regions")
        if self.segment_spacing is not None:
            raise InputError(
                f"the device chain segments on the bundle's training grid {self._pre.target_spacing} mm only, "
                f"not on 'segment_spacing' {self.segment_spacing}: pass segment_spacing=None, or use cmrsdk.Pipeline"
            )
        self._device = torch.device(self.device)
        self._matrices: dict[tuple[Any, ...], Any] = {}

    # -- helpers ------------------------------------------------------------------------------
    def _forward(self, name: str) -> Callable[[Any], Any]:
        """Model ``name`` on device tensors (checked at construction: `TorchScriptEngine.forward_tensor`)."""
        return cast(_TensorEngine, self._engines[name]).forward_tensor

    def _matrix(self, key: tuple[Any, ...], make: Any) -> Any:
        found = self._matrices.get(key)
        if found is None:
            found = self._torch.from_numpy(make()).to(self._device)
            self._matrices[key] = found
        return found

    def _inputs(self, name: str, images: Any, at: Any = None) -> Any:
        """`cmrsdk.preprocess.context_slices` on the device: the slices ``at`` (int64 (N,) device
        tensor, default all) of float32 (Z, 1, h, w) as model ``name`` reads them, (N, channels, h, w)."""
        torch = self._torch
        context = self.bundle.models[name].context
        if at is None:
            at = torch.arange(images.shape[0], device=images.device)
        if context == 0:
            return images[at]
        offsets = torch.arange(-context, context + 1, device=images.device)
        neighbours = (at[:, None] + offsets).clamp(0, max(images.shape[0] - 1, 0))
        return images[neighbours, 0]

    def _unet(self, name: str, images: Any, at: Any = None) -> Any:
        """float32 (N, C, h, w) probabilities of U-Net ``name`` on the slices ``at`` (default all) of
        one stack's float32 (Z, 1, h, w) slices (`_inputs`), mirrored when asked."""
        torch, forward = self._torch, self._forward(name)
        x = self._inputs(name, images, at)
        if not x.shape[0]:
            return torch.zeros((0, len(self.bundle.labels), *x.shape[2:]), device=x.device)
        if not self.mirroring:
            return forward(x)
        n, flips = x.shape[0], mirror_axes(self.bundle.models[name].side_aware, self.mirroring)
        out = forward(torch.cat([torch.flip(x, axes) if axes else x for axes in flips]))
        total = out[:n].clone()
        for k, axes in enumerate(flips[1:], start=1):
            total += torch.flip(out[k * n : (k + 1) * n], axes)
        return total / len(flips)

    def _normalise(self, x: Any, method: str, mask: Any = None) -> Any:
        """``preprocess.normalize`` on the device: statistics over ``mask`` (bool, x's shape) or
        every element where it is None, the transform applied to every element."""
        torch = self._torch
        flat = (x if mask is None else x[mask]).reshape(-1).double()
        if method == "minmax":
            lo, hi = flat.min(), flat.max()
            span = hi - lo
            return ((x.double() - lo) / torch.where(span > 0, span, torch.ones_like(span))).float()
        if method == "robust_zscore":
            q = torch.quantile(flat, torch.tensor([0.005, 0.995], dtype=flat.dtype, device=flat.device))
            flat = flat.clamp(q[0], q[1])
            x = x.double().clamp(q[0], q[1])
        elif method != "zscore":
            raise InputError(f"'normalization' {method!r} is not one of zscore, robust_zscore, minmax")
        mean, std = flat.mean(), flat.std(unbiased=False)
        return ((x.double() - mean) / std.clamp_min(1e-8)).float()

    # -- the chain ----------------------------------------------------------------------------
    def _segment_window(
        self,
        stack: Stack,
        region_source: RegionSource | None,
        centre: tuple[float, float] | None | _Unset,
        heart_known: bool,
        routes: np.ndarray | None,
        window_centre: tuple[float, float] | None,
    ) -> tuple[Segmentation, tuple[float, float] | None, bool]:
        """`Pipeline._segment_window` on the device: uint8 labels (Z, Y, X) on the stack's grid,
        the heart centre used, and whether the masks run into an edge of the full window."""
        torch, dev = self._torch, self._device
        if not isinstance(stack, Stack):
            raise InputError(f"'stack' must be a cmrsdk.Stack, got {type(stack).__name__}")
        if region_source is not None:
            raise InputError("the device chain routes by the segmentation or the classifier, not by a 'region_source'")
        pre = self._pre
        timings: dict[str, float] = {}
        t0 = t = time.perf_counter()
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def lap() -> float:
            nonlocal t
            sync()
            now = time.perf_counter()
            spent, t = (now - t) * 1000.0, now
            return spent

        z, ny, nx = stack.pixels.shape
        dy, dx = (float(s) for s in stack.spacing[1:])
        preprocess._stack(stack.pixels)  # the host path's checks: dtype, finiteness
        ry, rx = preprocess.resampled_shape((ny, nx), (dy, dx), pre.target_spacing)
        (H, W) = pre.size
        with torch.inference_mode():
            a_y = self._matrix(("a", ny, ry, dy), lambda: resampling_matrix(ny, ry, dy))
            a_x = self._matrix(("a", nx, rx, dx), lambda: resampling_matrix(nx, rx, dx))
            pixels = torch.from_numpy(np.ascontiguousarray(stack.pixels, dtype=np.float32)).to(dev)
            resampled = a_y @ pixels @ a_x.T  # (Z, ry, rx)
            mask = preprocess.statistics_mask(stack.pixels, (dy, dx), (ry, rx), threads=self.threads)
            mask = None if mask is None else torch.from_numpy(mask).to(dev)
            normalised = self._normalise(resampled, pre.normalization, mask)
            if window_centre is None:
                placed = ((ry - 1) / 2, (rx - 1) / 2)
            else:  # native index -> resampled index, pixel-centre aligned (`preprocess.prepare_slices`)
                cy, cx = window_centre
                placed = ((cy + 0.5) * ry / ny - 0.5, (cx + 0.5) * rx / nx - 0.5)
            oy, ox = preprocess.window_offset(placed, (H, W))
            # padded as the host pads (`cmrsdk.preprocess.background_value`): the stack's darkest value
            window = torch.full((z, 1, H, W), float(normalised.min()) if normalised.numel() else 0.0, device=dev)
            ys, ye, xs, xe = max(oy, 0), min(oy + H, ry), max(ox, 0), min(ox + W, rx)
            if ys < ye and xs < xe:
                window[:, 0, ys - oy : ye - oy, xs - ox : xe - ox] = normalised[:, ys:ye, xs:xe]
            timings["preprocess"] = lap()

            regions = region_probabilities = None
            if self.mode == "routed" and self.regions_from == "classifier" and z:
                name = str(self.bundle.classifier)
                region_probabilities = self._forward(name)(window).cpu().numpy()
                regions = decode_regions(region_probabilities, self.region_decoding)
            timings["classify"] = lap()

            images, offset, size = window, (oy, ox), (H, W)
            if self.heart_crop is None or not z:
                centre = None
            else:
                if isinstance(centre, _Unset):
                    centre = self._locate_on_device(window, regions)
                if centre is not None:
                    y0, x0 = heart_window(centre, self.heart_crop, (H, W))
                    h, w = self.heart_crop
                    images = window[:, :, y0 : y0 + h, x0 : x0 + w].contiguous()
                    offset, size = (oy + y0, ox + x0), (h, w)
            timings["locate"] = lap()

            unsure = False
            if self.mode == "routed" and self.regions_from == "segmentation":
                probabilities, regions, unsure = self._by_segmentation_on_device(
                    images, index_toward_apex(stack.affine), heart_known, routes
                )
                region_probabilities = np.eye(len(REGION_NAMES), dtype=np.float32)[regions]
            else:
                probabilities = self._routed_on_device(images, regions)
            apex = np.flatnonzero(regions == APEX) if regions is not None else np.empty(0, np.intp)
            if self.apical_rv_weight != 1.0 and len(apex):  # cmrsdk.apex, on the device
                probabilities[torch.from_numpy(apex).to(dev), RVBP] *= self.apical_rv_weight
            timings["segment"] = lap()

            m_y, in_y = inverse_matrix(ny, ry, offset[0], size[0])
            m_x, in_x = inverse_matrix(nx, rx, offset[1], size[1])
            b_y = self._matrix(("b", ny, ry, offset[0], size[0]), lambda: m_y)
            b_x = self._matrix(("b", nx, rx, offset[1], size[1]), lambda: m_x)
            native = b_y @ probabilities @ b_x.T  # (Z, C, Y, X), bilinear, clamped at the window
            labels_t = native.argmax(1).to(torch.uint8)  # ties: the lower class, as the host kernel
            covered = torch.from_numpy(in_y[:, None] & in_x[None, :]).to(dev)
            labels_t *= covered
            labels = self._clean(labels_t.cpu().numpy(), stack)
        target = (float(pre.target_spacing[0]), float(pre.target_spacing[1]))
        full = preprocess.SliceTransform((ny, nx), (dy, dx), (ry, rx), target, (oy, ox), (H, W))
        seen = preprocess.SliceTransform((ny, nx), (dy, dx), (ry, rx), target, offset, size)
        timings["postprocess"] = lap()
        timings["total"] = (t - t0) * 1000.0
        provenance = {**self.provenance, "chain": f"device ({dev})"}
        segmentation = judged_segmentation(
            stack, labels, regions, region_probabilities, timings, provenance, seen=seen, unsure=unsure
        )
        return segmentation, centre, _window_cuts_heart(labels, full)

    def _locate_on_device(self, window: Any, regions: np.ndarray | None) -> tuple[float, float] | None:
        """`cmrsdk.heart.locate_heart` on the device: the mean foreground centroid of the first group of search slices
        with a heart (for a bundle whose heart search is "largest", those slices' masks are copied back for
        `heart_centre`)."""
        torch, forward = self._torch, self._forward(self._baseline)
        for group in search_groups(window.shape[0], regions):  # never mirrored, as on the host
            at = torch.tensor(group, device=window.device)
            foregrounds = forward(self._inputs(self._baseline, window, at)).argmax(1) > 0
            centres = []
            for foreground in foregrounds:
                if int(foreground.sum()) < MIN_HEART_PIXELS:
                    continue
                if self._pre.heart_search != "mean":
                    centres.append(heart_centre(foreground.cpu().numpy(), self._pre.heart_search))
                else:
                    ys, xs = torch.nonzero(foreground, as_tuple=True)
                    centres.append((float(ys.double().mean()), float(xs.double().mean())))
            if centres:
                return mean_centre(centres)
        return None

    def _by_segmentation_on_device(
        self, images: Any, toward_apex: int | None, heart_known: bool = False, routes: np.ndarray | None = None
    ) -> tuple[Any, np.ndarray, bool]:
        """`Pipeline._segment_by_segmentation` on the device; the region rule runs on (Z,) areas."""
        torch = self._torch
        baseline = self._baseline
        if routes is not None:  # another phase's regions: one pass per slice
            probabilities = self._routed_on_device(images, routes)
        else:
            probabilities = self._unet(baseline, images)
        labels = probabilities.argmax(1)
        foreground = labels > 0
        unsure = bool(foreground.any()) and float(probabilities.max(1).values[foreground].mean()) < MIN_HEART_CONFIDENCE
        # a later phase (routes) is never emptied, only said unsure, as on the host
        if routes is None and unsure and not heart_known and not heart_like(labels.to(torch.uint8).cpu().numpy()):
            labels = torch.zeros_like(labels)  # an unsure guess over the whole stack: no heart, no mask
            unsure = False
        regions = _regions_from_labels(labels, toward_apex)
        empty = torch.from_numpy(np.flatnonzero(regions == NON_CARDIAC)).to(self._device)
        if len(empty):
            probabilities[empty] = 0.0
            probabilities[empty, 0] = 1.0
        if routes is not None:
            return probabilities, regions, unsure
        for region in REGION_NAMES:
            name = self.bundle.routing.get(region, baseline)
            index = np.flatnonzero(regions == region)
            if region != NON_CARDIAC and name != baseline and len(index):
                at = torch.from_numpy(index).to(self._device)
                probabilities[at] = self._unet(name, images, at)
        return probabilities, regions, unsure

    def _routed_on_device(self, images: Any, regions: np.ndarray | None) -> Any:
        """`Pipeline._segment` on the device: one batched call per model used."""
        torch = self._torch
        baseline = self._baseline
        if regions is None or not images.shape[0]:
            return self._unet(baseline, images)
        model_of = np.array(
            [self.bundle.routing.get(r, baseline) if r != NON_CARDIAC else baseline for r in REGION_NAMES]
        )
        route = model_of[regions]
        out = torch.empty((images.shape[0], len(self.bundle.labels), *images.shape[2:]), device=images.device)
        for name in np.unique(route):
            at = torch.from_numpy(np.flatnonzero(route == name)).to(self._device)
            out[at] = self._unet(str(name), images, at)
        return out


def _regions_from_labels(labels: Any, toward_apex: int | None) -> np.ndarray:
    """`cmrsdk.regions.segmentation_regions` (with `MIN_SLICE_PIXELS`) of a device label map,
    copying two areas per slice to the host: the rule reads nothing else."""
    heart = (labels > 0).sum(dim=(1, 2)).cpu().numpy()
    lv = ((labels == LVBP) | (labels == LVM)).sum(dim=(1, 2)).cpu().numpy()
    return regions_from_areas(heart, lv, MIN_SLICE_PIXELS, toward_apex)
