"""What the overlay montage costs beside the segmentation it shows, measured in the same run.

On the embedded example (phantom seed 0, ED and ES), each repeat segments the ED+ES pair with
the demo bundle (the routed pipeline, warm engines) and then draws and encodes the ED/ES montage
the way ``overlay.png`` and ``report.html`` get it (`cmrsdk.montage.study_montage_png`, on a
fresh result each time, so nothing is cached). It prints the median of each and the median of the
per-repeat ratio montage / segmentation (issue 18's aim: at most 0.1), in wall-clock time and in
this process's CPU time. The CPU-time ratio holds when other jobs share the cores (they stretch
the two-threaded segmentation's wall time more than the one-threaded drawing's); on a quiet
machine the wall ratio is about the CPU ratio times the segmentation's thread speed-up.

    .venv/bin/python benchmarks/montage_cost.py [--repeats 9] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from cmrsdk import DEMO_BUNDLE, Pipeline
from cmrsdk.montage import study_montage_png
from cmrsdk.phantom import cine_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="pipeline threads (default: cmrsdk's budget)")
    args = parser.parse_args()
    study = cine_phantom(0, n_phases=2)
    pipeline = Pipeline(DEMO_BUNDLE, threads=args.threads)
    result = pipeline.segment_study(study)  # warm-up: engine sessions, first-touch allocations
    study_montage_png(result)
    segment_ms, montage_ms, ratios, cpu_ratios = [], [], [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = pipeline.segment_study(study)
        t1, c1 = time.perf_counter(), time.process_time()
        png = study_montage_png(result)
        t2, c2 = time.perf_counter(), time.process_time()
        segment_ms.append((t1 - t0) * 1000.0)
        montage_ms.append((t2 - t1) * 1000.0)
        ratios.append((t2 - t1) / (t1 - t0))
        cpu_ratios.append((c2 - c1) / (c1 - c0))
    print(
        f"phantom seed 0 ED+ES {study.ed.shape} at {study.ed.spacing[1]:.3f} mm, {args.repeats} repeats, "
        f"montage PNG {len(png) / 1024:.0f} KiB"
    )
    print(f"segmentation (ED+ES pair): median {statistics.median(segment_ms):.1f} ms")
    print(f"montage (draw + PNG):      median {statistics.median(montage_ms):.1f} ms")
    print(
        f"ratio montage / segmentation, wall: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(
        f"ratio montage / segmentation, CPU:  median {statistics.median(cpu_ratios):.3f} "
        f"(min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f})"
    )


if __name__ == "__main__":
    main()
