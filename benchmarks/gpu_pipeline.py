"""End-to-end pipeline latency per ED+ES pair on a CUDA GPU, against the CPU in the same run.

Rows (each the median over ``--repeats`` calls of `Pipeline.segment_study` after 3 warm-ups,
numpy in and numpy out, per stage too):

- ``cuda torchscript fp32 | fp16 | fp16 + CUDA graphs`` in routed and baseline modes, each
  with the host chain (`cmrsdk.Pipeline`: numpy between the stages) and the device chain
  (`cmrsdk.device_chain.DevicePipeline`: every stage on the GPU, labels copied back);
- ``cpu onnx routed`` with ``--threads`` threads: the in-run reference.

Studies: the embedded synthetic ones (seeds 0 and 1) and, where ../shared/data is there, the
first held-out ACDC patients. Usage::

    python benchmarks/gpu_pipeline.py [--bundle cmrsdk/demo/bundle] [--repeats 20] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cmrsdk import DEMO_BUNDLE  # noqa: E402
from cmrsdk.device_chain import DevicePipeline  # noqa: E402
from cmrsdk.pipeline import Pipeline  # noqa: E402

#: row suffix -> pipeline class: the host chain (numpy between the stages) and the device chain
#: (every stage on the GPU, only the labels copied back; `cmrsdk.device_chain`).
CHAINS = {"": Pipeline, ", device chain": DevicePipeline}
from cmrsdk.synth import synthetic_study  # noqa: E402


def time_pipeline(pipeline: Pipeline, studies, repeats: int, sync) -> dict[str, float]:
    for _, study in studies:
        for _ in range(3):
            pipeline.segment_study(study)
    walls, stages = [], {}
    for _ in range(repeats):
        for _, study in studies:
            sync()
            t = time.perf_counter()
            result = pipeline.segment_study(study)
            sync()
            walls.append((time.perf_counter() - t) * 1e3)
            for seg in result.phases:
                for k, v in seg.timings_ms.items():
                    stages.setdefault(k, []).append(v)
    row = {"median_ms_per_pair": statistics.median(walls)}
    row.update({f"{k}_ms_per_stack": statistics.median(v) for k, v in stages.items() if k != "total"})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=str(DEMO_BUNDLE))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run of the script")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    import torch

    studies = [(f"synthetic{s}", synthetic_study(seed=s)) for s in (0, 1)]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    rows = {}
    variants = {"fp32": {}, "fp16": {"fp16": True}, "fp16 + CUDA graphs": {"fp16": True, "cuda_graphs": True}}
    if args.device == "cpu":
        variants = {"fp32": {}}
    for mode in ("routed", "baseline"):
        for (name, options), (chain, cls) in itertools.product(variants.items(), CHAINS.items()):
            label = f"{args.device} torchscript {name} {mode}{chain}"
            try:
                pipeline = cls(
                    args.bundle,
                    backend="torchscript",
                    device=args.device,
                    mode=mode,
                    threads=args.threads,
                    engine_options=options,
                )
                rows[label] = time_pipeline(pipeline, studies, args.repeats, sync)
            except Exception as exc:  # one failing variant must not hide the others' figures
                rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
            print(label, rows[label], flush=True)
    torch.set_num_threads(args.threads)
    reference = Pipeline(
        args.bundle,
        backend="onnx",
        device="cpu",
        mode="routed",
        threads=args.threads,
        engine_options={"intra_op_threads": args.threads},
    )
    rows["cpu onnx routed (reference)"] = time_pipeline(reference, studies, max(3, args.repeats // 4), lambda: None)
    print("cpu onnx routed (reference)", rows["cpu onnx routed (reference)"], flush=True)
    ref = rows["cpu onnx routed (reference)"]["median_ms_per_pair"]
    lines = [
        f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}; torch {torch.__version__}; "
        f"bundle {args.bundle}; {len(studies)} synthetic ED+ES pairs; median ms per pair",
        "",
    ]
    for label, row in rows.items():
        if "error" in row:
            lines.append(f"{label:>56}: {row['error']}")
        else:
            lines.append(
                f"{label:>56}: {row['median_ms_per_pair']:8.2f} ms  ({ref / row['median_ms_per_pair']:5.1f}x the CPU)  "
                + ", ".join(
                    f"{k.removesuffix('_ms_per_stack')} {v:.2f}" for k, v in row.items() if k.endswith("_stack")
                )
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_pipeline.json").write_text(json.dumps(rows, indent=1))
    (args.out / "gpu_pipeline.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
