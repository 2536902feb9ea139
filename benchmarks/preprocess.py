"""Benchmark of cmrsdk's native preprocessing against scipy, skimage and torch.

On the same data (10 x 256 x 256 and 20 x 512 x 512 int16 stacks, plus one real ACDC stack when
../shared/data is present), at 1 and 2 threads (scipy and skimage are single-threaded: 1 thread only), it times: in-plane resampling from 1.5 mm to
1.25 mm at order 1 and 3, robust z-score normalisation, their combination (the forward
preprocessing), and the inverse resample + argmax of 4-class probabilities back to the native
grid. It prints a Markdown table of median times and of each reference's time divided by
cmrsdk's at the same thread count (> 1: cmrsdk is faster).

    .venv/bin/python benchmarks/preprocess.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.transform import resize

from cmrsdk import preprocess as pp

SPACING, TARGET = (1.5, 1.5), (1.25, 1.25)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc" / "training" / "patient001"


def median_ms(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    if warm_up:  # first-touch allocations, torch's kernel selection
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def numpy_robust_zscore(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [0.5, 99.5])
    clipped = np.clip(x, lo, hi)
    return (clipped - clipped.mean()) / max(float(clipped.std()), 1e-8)


def datasets() -> dict[str, tuple[np.ndarray, tuple[float, float]]]:
    rng = np.random.default_rng(0)
    data = {}
    for z, n in ((10, 256), (20, 512)):
        # smooth anatomy-like structure plus noise, int16 as scanners store it
        yy, xx = np.mgrid[0:n, 0:n] / n
        base = 800 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.05)
        stack = base[None] + rng.normal(0, 40, size=(z, n, n))
        data[f"{z}x{n}x{n} int16"] = (stack.astype(np.int16), SPACING)
    image = SHARED / "patient001_frame01.nii.gz"
    if image.exists():
        import nibabel as nib

        nii = nib.load(str(image))
        pixels = np.ascontiguousarray(np.asarray(nii.dataobj).transpose(2, 1, 0))
        spacing = tuple(float(s) for s in nii.header.get_zooms()[1::-1])
        data[f"ACDC p001 {'x'.join(map(str, pixels.shape))} {pixels.dtype}"] = (pixels, spacing)  # type: ignore[assignment]
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows: list[tuple[str, str, str, int, float, float]] = []

    def compare(
        task: str, name: str, threads: int, ours: Callable[[], object], refs: dict[str, Callable[[], object]]
    ) -> None:
        torch.set_num_threads(threads)
        mine = median_ms(ours, args.repeats)
        rows.append((task, name, "cmrsdk", threads, mine, 1.0))
        for label, ref in refs.items():
            single = label.startswith(("scipy", "skimage"))
            if single and threads > 1:
                continue  # single-threaded libraries: their 1-thread figure stands
            slow = single and "512" in name
            t = median_ms(ref, 1 if slow else args.repeats, warm_up=not slow)
            rows.append((task, name, label, threads, t, t / mine))

    for name, (pixels, spacing) in datasets().items():
        shape = pp.resampled_shape(pixels.shape[1:], spacing, TARGET)
        factors = (1.0, shape[0] / pixels.shape[1], shape[1] / pixels.shape[2])
        floats = pixels.astype(np.float32)
        resampled = pp.resample_stack(pixels, spacing, shape=shape, order=3)
        z = pixels.shape[0]
        prob = torch.softmax(
            torch.from_numpy(np.random.default_rng(1).normal(size=(z, 4, *shape)).astype(np.float32)), 1
        ).numpy()
        transform = pp.SliceTransform(pixels.shape[1:], spacing, shape, TARGET, (0, 0), shape)  # window = whole grid
        for threads in (1, 2):
            for order, mode in ((1, "bilinear"), (3, "bicubic")):
                compare(
                    f"resample order {order}",
                    name,
                    threads,
                    lambda: pp.resample_stack(pixels, spacing, shape=shape, order=order, threads=threads),
                    {
                        "scipy zoom": lambda: ndi.zoom(floats, factors, order=order, mode="mirror", grid_mode=True),
                        "skimage resize": lambda: resize(
                            floats, (z, *shape), order=order, mode="reflect", anti_aliasing=False
                        ),
                        f"torch {mode}": lambda: torch.nn.functional.interpolate(
                            torch.from_numpy(pixels.astype(np.float32))[:, None],
                            size=shape,
                            mode=mode,
                            align_corners=False,
                        ),
                    },
                )
            compare(
                "robust z-score",
                name,
                threads,
                lambda: pp.normalize(resampled, "robust_zscore", threads=threads),
                {"numpy": lambda: numpy_robust_zscore(resampled)},
            )
            compare(
                "order 3 + robust z-score",
                name,
                threads,
                lambda: pp.normalize(
                    pp.resample_stack(pixels, spacing, shape=shape, order=3, threads=threads),
                    "robust_zscore",
                    threads=threads,
                ),
                {
                    "skimage resize + numpy": lambda: numpy_robust_zscore(
                        resize(floats, (z, *shape), order=3, mode="reflect", anti_aliasing=False)
                    ),
                    "torch bicubic + numpy": lambda: numpy_robust_zscore(
                        torch.nn.functional.interpolate(
                            torch.from_numpy(pixels.astype(np.float32))[:, None],
                            size=shape,
                            mode="bicubic",
                            align_corners=False,
                        )[:, 0].numpy()
                    ),
                },
            )
            compare(
                "inverse resample + argmax",
                name,
                threads,
                lambda: pp.resample_argmax(prob, transform, threads=threads),
                {
                    "torch bilinear + argmax": lambda: (
                        torch.nn.functional.interpolate(
                            torch.from_numpy(prob), size=pixels.shape[1:], mode="bilinear", align_corners=False
                        )
                        .argmax(1)
                        .to(torch.uint8)
                        .numpy()
                    )
                },
            )

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"numpy {np.__version__}, torch {torch.__version__}; medians of {args.repeats} runs (1 for scipy/skimage on 512 x 512)\n"
    )
    print("| task | data | method | threads | median ms | ref / cmrsdk |")
    print("|---|---|---|---:|---:|---:|")
    for task, name, label, threads, t, ratio in rows:
        print(f"| {task} | {name} | {label} | {threads} | {t:.1f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
