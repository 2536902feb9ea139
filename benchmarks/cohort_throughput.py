"""Cohort throughput of `cmrsdk batch`: studies per minute by engine and workers, and the cost model.

For each engine (local process pool, Ray actors on a local instance) and worker count, segments
the same ACDC patients from scratch into a fresh folder with `cmrsdk.cohort.run_batch` and prints:

- start-up S: seconds until every worker has loaded its pipeline (Ray: including ray.init);
- per-study t: median seconds a worker spends on one study (read, segment, NIfTI, SEG, report,
  overlay), measured inside the worker, and its parts from each report.json: reading, the
  pipeline (what a GPU would speed up), and the rest (writers and the overlay figure);
- overhead o: the rest of a worker slot's time per study (pickling the outputs back, the driver's
  atomic folder swap and journal fsync, idle waits), o = run seconds x workers / studies - mean t;
- studies/min in the steady run (run seconds, start-up excluded) and end to end.

The cost model of a cohort of n studies on W workers is T = S + n (t + o) / W, with t and o as
measured here at that W (on this shared 2-core machine t grows with W: the workers share cores).
Usage::

    python benchmarks/cohort_throughput.py [--studies 6] [--configs local:1 local:2 ray:1 ray:2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cmrsdk import DEMO_BUNDLE  # noqa: E402
from cmrsdk.cohort import PipelineSpec, create_engine, discover_studies, run_batch  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "acdc" / "training"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds < 86400 * 2 else f"{seconds / 86400:.1f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4, help="ACDC patients per configuration")
    parser.add_argument("--configs", nargs="+", default=["local:1", "local:2", "ray:1", "ray:2"])
    parser.add_argument("--cohort", type=int, default=100_000, help="cohort size for the cost model")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cores = len(os.sched_getaffinity(0))
    spec = PipelineSpec(bundle=str(DEMO_BUNDLE))
    print(
        f"{args.studies} ACDC patients per run, demo bundle, {cores} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    print(
        "| engine | workers x threads | start-up S (s) | per-study t (s, median) | of which read / pipeline / "
        "writers + overlay (s) | overhead o (s/study) | studies/min steady | studies/min end to end "
        "| 100,000 studies, T = S + n(t+o)/W |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "cohort"
        root.mkdir()
        for i in range(1, args.studies + 1):
            (root / f"patient{i:03d}").symlink_to(DATA / f"patient{i:03d}")
        studies = discover_studies([root])
        for config in args.configs:
            name, workers = config.split(":")
            workers = int(workers)
            threads = max(1, cores // workers)
            engine = create_engine(name, spec, workers=workers, threads=threads)
            out = Path(scratch) / config.replace(":", "_")
            summary = run_batch(studies, spec, out, engine, progress=False, figure=False)
            seconds = [float(r["seconds"]) for r in summary.rows if r.get("status") == "ok"]
            if len(seconds) != len(studies):
                raise SystemExit(f"{config}: {len(studies) - len(seconds)} studies failed")
            t, mean_t = statistics.median(seconds), statistics.fmean(seconds)
            reports = [json.loads((out / r["outputs"] / "report.json").read_text()) for r in summary.rows]
            read = statistics.median(r["timings_ms"]["read"] / 1000 for r in reports)
            pipeline = statistics.median(r["timings_ms"]["wall"] / 1000 for r in reports)
            overhead = summary.run_s * workers / len(studies) - mean_t
            total = summary.startup_s + args.cohort * (mean_t + overhead) / workers
            print(
                f"| {name} | {workers} x {threads} | {summary.startup_s:.1f} | {t:.2f} | "
                f"{read:.2f} / {pipeline:.2f} / {t - read - pipeline:.2f} | {overhead:.2f} | "
                f"{len(studies) / summary.run_s * 60:.1f} | {len(studies) / summary.wall_s * 60:.1f} | {_hours(total)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
