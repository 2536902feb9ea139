"""End-to-end latency of the cmrsdk pipeline per ED+ES pair, against references in the same run.

Rows, all measured in this one process with the same thread count:

- ``cmrsdk <backend> <mode>``: `cmrsdk.Pipeline.segment_study` on each ED+ES pair, per stage;
  ``int8`` rows where the bundle has int8 artifacts (``python -m export.quantize``), ``bf16``
  rows (OpenVINO, and TorchScript cast at load) where the CPU has AVX512-BF16 or AMX, ``openvino``
  rows (the ONNX artifacts) where OpenVINO is installed, ``aoti``
  rows where it has AOTInductor packages (``python -m export.aoti``); every variant takes its
  turn within each repeat, so all of them see the same machine load;
- ``reference``: the same pipeline as a typical research script writes it: scipy.ndimage.zoom
  (order 3) per slice, numpy z-score, eager PyTorch one slice at a time (classifier, then the
  region U-Net), torch bilinear interpolation back and argmax, scipy largest component; the same
  trained weights, rebuilt from the bundle's TorchScript artifacts;
- ``nnU-Net v2`` (``--nnunet``, needs the ``nnunetv2`` package): see benchmarks/nnunet_reference.py;
- ``floor``: the pipeline's network FLOPs divided by this machine's float32 matmul peak, measured
  here (torch, 2048 x 2048 products).

Medians over ``--repeats`` runs after one warm-up; ratios are against the routed cmrsdk row with
the default backend. Usage::

    python benchmarks/pipeline_latency.py [--bundle cmrsdk/demo/bundle] [--cases 4] [--repeats 5]
        [--threads 2] [--nnunet] [--memory-calls 1000] [--json benchmarks/results/latency.json]
        [--routed-only] [--no-reference] [--segment-spacing MM]

Every row segments on the bundle's training grid; routed rows are timed again on a finer grid
(`cmrsdk.grid`) where the bundle's manifest names one or ``--segment-spacing`` asks for one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cmrsdk.bundle import load_bundle  # noqa: E402
from cmrsdk.cli import DEMO_BUNDLE  # noqa: E402
from cmrsdk.engines import backend_missing, thread_options  # noqa: E402
from cmrsdk.engines.openvino import openvino_bf16_missing  # noqa: E402
from cmrsdk.engines.torchscript import cpu_bf16_missing, quiet_torchscript  # noqa: E402
from cmrsdk.labels import NON_CARDIAC  # noqa: E402
from cmrsdk.pipeline import DEFAULT_MIRRORING, MIRRORING, Pipeline  # noqa: E402
from cmrsdk.synth import synthetic_study  # noqa: E402
from cmrsdk.types import Stack, Study  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "acdc" / "training"


def load_pairs(n_cases: int) -> list[tuple[str, Study]]:
    """Held-out ACDC ED+ES pairs (patient005, 010, ...) where present, plus two synthetic pairs."""
    from cmrsdk.io import read_acdc_patient

    pairs: list[tuple[str, Study]] = []
    if SHARED.is_dir():
        for k in range(1, n_cases + 1):
            folder = SHARED / f"patient{5 * k:03d}"
            if folder.is_dir():
                pairs.append((folder.name, read_acdc_patient(folder)))
    pairs += [(f"synthetic{s}", synthetic_study(seed=s)) for s in range(2)]
    return pairs


def median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: engines, allocators, caches
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times), times


# -- the reference: what a research script does ------------------------------------------


class ReferencePipeline:
    """Eager PyTorch + scipy, one slice at a time, with the bundle's weights."""

    def __init__(self, bundle_path: Path, threads: int) -> None:
        import torch

        from export.bundle import ProbabilityModel
        from export.models import get_model

        torch.set_num_threads(threads)
        self.torch = torch
        self.bundle = load_bundle(bundle_path)
        self.models = {}
        for name, info in self.bundle.models.items():
            config = info.record.get("training", {}).get("config", {})
            spec = config.get("model")
            if not spec:
                raise SystemExit(f"model {name!r} of {bundle_path} has no training config: cannot rebuild it eagerly")
            net = ProbabilityModel(get_model(spec["name"], **spec.get("kwargs", {})))
            with quiet_torchscript():  # torch.jit is deprecated: announced once, not per model
                scripted = torch.jit.load(str(info.artifacts["torchscript"].path), map_location="cpu")
            net.load_state_dict(scripted.state_dict())
            self.models[name] = net.eval()
        pre = self.bundle.preprocessing
        self.spacing, self.size, self.norm = pre.target_spacing, pre.size, pre.normalization

    def segment(self, stack: Stack) -> np.ndarray:
        from scipy import ndimage

        from cmrsdk.pipeline import MIN_SLICE_PIXELS
        from cmrsdk.regions import segmentation_regions

        torch = self.torch
        zoom = (stack.spacing[1] / self.spacing[0], stack.spacing[2] / self.spacing[1])
        labels = np.zeros(stack.shape, np.uint8)
        lo, hi = np.percentile(stack.pixels, (0.5, 99.5))
        clipped = np.clip(stack.pixels, lo, hi)
        mean, std = clipped.mean(), clipped.std()
        H, W = self.size
        baseline = self.bundle.routing[NON_CARDIAC]
        by_segmentation = self.bundle.regions_from == "segmentation"
        with torch.inference_mode():
            windows, probs, regions = [], [], []
            for z in range(stack.shape[0]):
                image = ndimage.zoom(stack.pixels[z], zoom, order=3, mode="nearest", grid_mode=True)
                image = (np.clip(image, lo, hi) - mean) / max(std, 1e-8)
                window = np.zeros((H, W), np.float32)
                oy, ox = (image.shape[0] - H) // 2, (image.shape[1] - W) // 2
                src = image[max(oy, 0) : max(oy, 0) + H, max(ox, 0) : max(ox, 0) + W]
                window[max(-oy, 0) : max(-oy, 0) + src.shape[0], max(-ox, 0) : max(-ox, 0) + src.shape[1]] = src
                x = torch.from_numpy(window)[None, None]
                windows.append((x, image.shape, oy, ox, src.shape))

            def inputs(name: str, z: int):
                """Slice z as model ``name`` reads it: with its stack neighbours when it is 2.5D."""
                c = self.bundle.models[name].context
                return torch.cat([windows[min(max(k, 0), len(windows) - 1)][0] for k in range(z - c, z + c + 1)], 1)

            for z in range(len(windows)):
                if by_segmentation:  # the baseline on every slice first; regions from its masks
                    probs.append(self.models[baseline](inputs(baseline, z)))
                else:
                    regions.append(
                        int(self.models[self.bundle.classifier](inputs(self.bundle.classifier, z)).argmax(1))
                        if self.bundle.classifier
                        else NON_CARDIAC
                    )
            if by_segmentation:
                regions = list(
                    segmentation_regions(np.concatenate([p.argmax(1).numpy() for p in probs]), MIN_SLICE_PIXELS)
                )
            for z, (_, shape, oy, ox, src_shape) in enumerate(windows):
                name = self.bundle.routing.get(int(regions[z]), baseline)
                if by_segmentation and regions[z] == NON_CARDIAC:
                    continue  # no heart, no mask
                prob = probs[z] if by_segmentation and name == baseline else self.models[name](inputs(name, z))
                full = torch.zeros((1, prob.shape[1], *shape))
                full[:, 0] = 1.0  # outside the window: background
                ys, xs = max(oy, 0), max(ox, 0)
                full[:, :, ys : ys + src_shape[0], xs : xs + src_shape[1]] = prob[
                    :, :, max(-oy, 0) : max(-oy, 0) + src_shape[0], max(-ox, 0) : max(-ox, 0) + src_shape[1]
                ]
                native = torch.nn.functional.interpolate(
                    full, size=stack.shape[1:], mode="bilinear", align_corners=False
                )
                labels[z] = native.argmax(1)[0].numpy().astype(np.uint8)
        for label in (1, 2, 3):
            components, n = ndimage.label(labels == label)
            if n > 1:
                sizes = np.bincount(components.ravel())[1:]
                labels[(components > 0) & (components != 1 + int(sizes.argmax()))] = 0
        return labels


# -- the floor ----------------------------------------------------------------------------


def matmul_peak_gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best / 1e9


def pipeline_gflop(
    ref: ReferencePipeline,
    pairs: list[tuple[str, Study]],
    crop: tuple[int, int] | None = None,
    threads: int = 1,
    grid: float | None = None,
) -> float:
    """Network FLOPs of the routed pipeline, GFLOP per pair, counted from the passes it makes.

    The bundle's routed pipeline (``crop``: its heart crop, None: the full window) segments every
    pair once with each engine's calls counted: slices and pixels per model, the heart search's
    full-window pass included; each model's FLOPs per slice (torch's FlopCounterMode at the full
    window) are scaled by the pixels it saw (convolutions scale with the pixel count). ``grid``:
    the in-plane spacing (mm) segmented on, None for the training grid.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    H, W = ref.size
    per_slice = {}
    with torch.inference_mode():
        for name, model in ref.models.items():
            counter = FlopCounterMode(display=False)
            with counter:
                model(torch.zeros(1, ref.bundle.models[name].channels, H, W))
            per_slice[name] = counter.get_total_flops()
    pipe = Pipeline(ref.bundle, mode="routed", heart_crop=crop, threads=threads, segment_spacing=grid)
    pixels: dict[str, float] = {name: 0.0 for name in pipe._engines}
    for name, engine in pipe._engines.items():

        def counted(batch: np.ndarray, name: str = name, run=engine.run) -> np.ndarray:
            pixels[name] += batch.shape[0] * batch.shape[-2] * batch.shape[-1]
            return run(batch)

        engine.run = counted  # type: ignore[method-assign]
    for _, study in pairs:
        pipe.segment_study(study)
    total = sum(per_slice[name] * count / (H * W) for name, count in pixels.items())
    return total / len(pairs) / 1e9


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=str(DEMO_BUNDLE))
    parser.add_argument("--cases", type=int, default=4, help="held-out ACDC pairs (patient005, 010, ...)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nnunet", action="store_true", help="also time nnU-Net v2's predictor (needs nnunetv2)")
    parser.add_argument("--memory-calls", type=int, default=1000, help="consecutive calls for the leak check (0: skip)")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    parser.add_argument(
        "--routed-only", action="store_true", help="time the routed mode only, at the bundle's heart crop"
    )
    parser.add_argument(
        "--mirroring", action="store_true", help="also time routed rows with the other test-time mirrorings"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the eager torch + scipy reference run")
    parser.add_argument(
        "--segment-spacing", type=float, default=None, metavar="MM", help="also time routed rows on this grid"
    )
    args = parser.parse_args()

    pairs = load_pairs(args.cases)
    print(
        f"{len(pairs)} ED+ES pairs: {', '.join(n for n, _ in pairs)}; {args.threads} threads; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    rows: list[dict] = []

    def run_all(segment) -> None:
        for _, study in pairs:
            segment(study)

    # cmrsdk, every backend this machine can run (and the bundle has artifacts for), both modes
    bundle = load_bundle(args.bundle)
    has = lambda key: all(key in bundle.models[m].artifacts for m in set(bundle.routing.values()))  # noqa: E731
    artifact_of = {"openvino": "onnx"}  # OpenVINO runs the ONNX files
    backends = [
        b
        for b in ("onnx", "torchscript", "aoti", "openvino")
        if backend_missing(b, "cpu") is None and has(artifact_of.get(b, b))
    ]
    default_row = None
    pipelines = {}
    # the product default (the bundle's heart crop) for every backend, then the full window for the first
    crop_default = bundle.preprocessing.heart_crop
    modes = ("routed",) if args.routed_only else ("baseline", "routed")
    # (backend, mode, heart crop, precision, segment grid, test-time mirroring: the pipeline's default)
    flips = DEFAULT_MIRRORING
    variants = [(b, m, crop_default, "fp32", None, flips) for b in backends for m in modes]
    if crop_default is not None and not args.routed_only:
        variants += [(backends[0], m, None, "fp32", None, flips) for m in modes]
    if "onnx" in backends and any("onnx-int8" in m.artifacts for m in bundle.models.values()):
        variants[len(modes) : len(modes)] = [("onnx", m, crop_default, "int8", None, flips) for m in modes]
    if "torchscript" in backends and cpu_bf16_missing() is None:
        # bf16: the TorchScript archives cast at load, on a CPU with AVX512-BF16 or AMX
        variants[len(modes) : len(modes)] = [("torchscript", m, crop_default, "bf16", None, flips) for m in modes]
    if "openvino" in backends and openvino_bf16_missing() is None:
        # bf16: OpenVINO compiling the ONNX artifacts in bf16 (the pipeline's "auto" bf16 choice)
        variants[len(modes) : len(modes)] = [("openvino", m, crop_default, "bf16", None, flips) for m in modes]
    grids = sorted({g for g in (args.segment_spacing, (bundle.preprocessing.segment_spacing or [None])[0]) if g})
    plain = [v for v in variants if v[1] == "routed" and v[2]]
    variants += [(b, "routed", c, p, g, flips) for g in grids for b, _, c, p, _, _ in plain]
    if args.mirroring:
        others = [f for f in MIRRORING if f != flips]
        variants += [(b, "routed", c, p, None, f) for f in others for b, _, c, p, _, _ in plain]
    if any(b != "onnx" for b in backends):
        import torch

        torch.set_num_threads(args.threads)
    segmenters, stage_times, times = [], [], []
    for backend, mode, crop, precision, grid, mirroring in variants:
        pipe = Pipeline(
            args.bundle,
            backend=backend,
            mode=mode,
            threads=args.threads,
            engine_options=thread_options(backend, args.threads),
            heart_crop=crop,
            precision=precision,
            segment_spacing=grid,
            mirroring=mirroring,
        )
        pipelines[(backend, mode, crop, precision, grid, mirroring)] = pipe
        stages: dict[str, list[float]] = {}

        def segment(study, pipe=pipe, stages=stages):
            result = pipe.segment_study(study)
            for k, v in result.timings_ms.items():
                stages.setdefault(k, []).append(v)

        segmenters.append(segment)
        stage_times.append(stages)
        times.append([])
        run_all(segment)  # warm-up: engines, allocators, caches
    # the variants take turns within each repeat, so a change of the shared machine's load
    # reaches all of them alike and the ratios stay fair
    for _ in range(args.repeats):
        for segment, spent in zip(segmenters, times):
            t = time.perf_counter()
            run_all(segment)
            spent.append((time.perf_counter() - t) * 1000.0)
    for (backend, mode, crop, precision, grid, mirroring), stages, spent in zip(variants, stage_times, times):
        row = {
            "name": f"cmrsdk {backend}{'' if precision == 'fp32' else ' ' + precision} {mode}"
            + (f", heart crop {crop[0]}x{crop[1]}" if crop else ", full window")
            + (f", segment grid {grid} mm" if grid else "")
            + (
                ""
                if mirroring == flips
                else {False: ", one pass", "half_turn": ", half-turn", True: ", every flip"}[mirroring]
            ),
            "ms_per_pair": statistics.median(spent) / len(pairs),
            "stages_ms": {k: statistics.median(v) for k, v in stages.items()},
        }
        rows.append(row)
        if default_row is None and mode == "routed":
            default_row = row

    ref = ReferencePipeline(Path(args.bundle), args.threads)
    if not args.no_reference:
        ms, _ = median_ms(lambda: run_all(lambda s: (ref.segment(s.ed), ref.segment(s.es))), max(1, args.repeats // 2))
        rows.append({"name": "reference (eager torch + scipy, slice loop)", "ms_per_pair": ms / len(pairs)})

    if args.nnunet:
        from nnunet_reference import time_nnunet  # benchmarks/nnunet_reference.py

        for mirroring in (True, False):
            ms_pair, note = time_nnunet(
                ref, pairs, mirroring=mirroring, threads=args.threads, repeats=max(1, args.repeats // 5)
            )
            rows.append(
                {
                    "name": f"nnU-Net v2 predictor ({'mirroring' if mirroring else 'no mirroring'}; {note})",
                    "ms_per_pair": ms_pair,
                }
            )

    peak = matmul_peak_gflops(args.threads)
    gflop = pipeline_gflop(ref, pairs, threads=args.threads)  # the training grid: segment_spacing None
    rows.append(
        {
            "name": f"floor, full window ({gflop:.2f} GFLOP per pair at {peak:.0f} GFLOP/s matmul peak)",
            "ms_per_pair": gflop / peak * 1000.0,
        }
    )
    if crop_default is not None:
        gflop_crop = pipeline_gflop(ref, pairs, crop_default, args.threads)
        rows.append(
            {
                "name": f"floor, heart crop {crop_default[0]}x{crop_default[1]} ({gflop_crop:.2f} GFLOP per pair)",
                "ms_per_pair": gflop_crop / peak * 1000.0,
            }
        )
        for grid in grids:
            gflop_grid = pipeline_gflop(ref, pairs, crop_default, args.threads, grid)
            rows.append(
                {
                    "name": f"floor, heart crop, segment grid {grid} mm ({gflop_grid:.2f} GFLOP per pair)",
                    "ms_per_pair": gflop_grid / peak * 1000.0,
                }
            )

    base = default_row["ms_per_pair"]
    print(
        f"\n| pipeline | ms per ED+ES pair (median) | x routed {default_row['name'].split()[1]} | stages (ms: preprocess / classify / locate / segment / postprocess) |"
    )
    print("|---|---|---|---|")
    for row in rows:
        stages = row.get("stages_ms")
        stage_text = (
            " / ".join(f"{stages[k] / 2:.1f}" for k in ("preprocess", "classify", "locate", "segment", "postprocess"))
            if stages
            else ""
        )
        row["ratio_to_routed"] = row["ms_per_pair"] / base
        print(f"| {row['name']} | {row['ms_per_pair']:.1f} | {row['ratio_to_routed']:.2f} | {stage_text} |")
    print("(stage times are per stack: half of a pair)")

    memory = {}
    if args.memory_calls:
        pipe = pipelines[(backends[0], "routed", crop_default, "fp32", None, flips)]
        stack = pairs[0][1].ed
        for _ in range(20):
            pipe.segment(stack)
        before = rss_mb()
        for _ in range(args.memory_calls):
            pipe.segment(stack)
        after = rss_mb()
        memory = {
            "rss_after_warmup_mb": before,
            "rss_after_calls_mb": after,
            "calls": args.memory_calls,
            "growth_mb": after - before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        print(
            f"\nmemory: peak RSS {memory['peak_rss_mb']:.0f} MB; RSS {before:.0f} MB -> {after:.0f} MB over "
            f"{args.memory_calls} further calls ({memory['growth_mb']:+.1f} MB)"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "memory": memory,
                    "pairs": [n for n, _ in pairs],
                    "threads": args.threads,
                    "peak_gflops": peak,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
