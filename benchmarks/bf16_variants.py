"""Ways to run one bundle U-Net in bfloat16 on this CPU, against fp32 ONNX Runtime in the same run.

Issue 16 asks for the routed pipeline at or below the fp32 FLOP floor. bf16 TorchScript is the
fastest engine cmrsdk has on an AVX512-BF16 / AMX CPU; this benchmark checks whether the usual
further steps buy anything on the shipped U-Nets, so a reader does not have to retry them:

- ``ts_bf16``: what `cmrsdk.engines.TorchScriptEngine` does for ``precision="bf16"`` (cast at load);
- ``ts_bf16_channels_last``: the same with module and input in channels-last memory order;
- ``ts_bf16_frozen``: ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference`` (oneDNN prepacking);
- ``inductor_bf16_frozen`` (unless ``--no-inductor``): ``torch.compile`` of the eager network,
  rebuilt from the bundle as export/aoti.py does, cast to bf16, with Inductor's ``freezing`` and
  weight prepacking (about a minute of compilation);
- ``ts_fp32``, ``onnx_fp32``: the float32 references; ratios are against ``onnx_fp32``.

Every variant runs the same (N, channels, H, W) batch of standard-normal slices at the heart crop,
takes its turn within each repeat (so all see the same machine load), and reports the median
time, the ratio to fp32 ONNX, the largest probability difference from eager fp32 TorchScript and
the share of pixels whose label agrees with it. Usage::

    python benchmarks/bf16_variants.py [--bundle cmrsdk/demo/bundle] [--model baseline]
        [--slices 10] [--size 128] [--threads 2] [--repeats 7] [--no-inductor] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _variants(bundle_dir: Path, name: str, batch: np.ndarray, inductor: bool) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> a call returning float32 (N, C, H, W) probabilities of ``batch``."""
    import onnxruntime as ort
    import torch

    from cmrsdk.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    archive = str(bundle.models[name].artifacts["torchscript"].path)
    x32 = torch.from_numpy(batch)
    x16 = x32.to(torch.bfloat16)

    def scripted(dtype: torch.dtype) -> torch.jit.ScriptModule:
        return torch.jit.load(archive, map_location="cpu").eval().to(dtype)

    fp32, bf16 = scripted(torch.float32), scripted(torch.bfloat16)
    channels_last = scripted(torch.bfloat16).to(memory_format=torch.channels_last)
    x16_last = x16.contiguous(memory_format=torch.channels_last)
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(scripted(torch.bfloat16)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        str(bundle.models[name].artifacts["onnx"].path), options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    variants: dict[str, Callable[[], np.ndarray]] = {
        "ts_fp32": lambda: fp32(x32).numpy(),
        "onnx_fp32": lambda: session.run(None, {input_name: batch})[0],
        "ts_bf16": lambda: bf16(x16).float().numpy(),
        "ts_bf16_channels_last": lambda: channels_last(x16_last).float().numpy(),
        "ts_bf16_frozen": lambda: frozen(x16).float().numpy(),
    }
    if inductor:
        import torch._inductor.config as inductor_config

        from export.aoti import rebuild_model

        inductor_config.freezing = True
        inductor_config.cpp.weight_prepack = True
        compiled = torch.compile(rebuild_model(bundle, name).eval().to(torch.bfloat16))
        started = time.perf_counter()
        compiled(x16)
        print(f"inductor compilation: {time.perf_counter() - started:.0f} s")
        variants["inductor_bf16_frozen"] = lambda: compiled(x16).float().numpy()
    return variants


def main(argv: list[str] | None = None) -> int:
    """Print one row per variant; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "cmrsdk/demo/bundle")
    parser.add_argument("--model", default="baseline", help="a U-Net of the bundle")
    parser.add_argument("--slices", type=int, default=10, help="batch size N (about one stack)")
    parser.add_argument("--size", type=int, default=128, help="slice side in pixels (the heart crop)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-inductor", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--profile", action="store_true", help="also print where ts_bf16's time goes, by operator")
    args = parser.parse_args(argv)

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*")
    torch.set_num_threads(args.threads)
    from cmrsdk.engines.torchscript import cpu_bf16_missing

    missing = cpu_bf16_missing()
    if missing is not None:
        print(f"bf16 variants skipped: {missing}")
        return 0
    from cmrsdk.bundle import load_bundle

    channels = load_bundle(args.bundle).models[args.model].channels
    batch = np.random.default_rng(0).standard_normal((args.slices, channels, args.size, args.size)).astype(np.float32)
    # under inference mode, as cmrsdk's engines run: TorchScript optimises differently under it
    with torch.inference_mode():
        variants = _variants(args.bundle, args.model, batch, not args.no_inductor)
        reference = variants["ts_fp32"]()
        for call in variants.values():  # warm-up: TorchScript's profiling executor optimises after a few calls
            for _ in range(5):
                call()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, call in variants.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
        onnx = statistics.median(times["onnx_fp32"])
        print(
            f"{args.model} of {args.bundle}: {args.slices} x {channels} x {args.size} x {args.size}, "
            f"{args.threads} threads, median of {args.repeats}"
        )
        print(f"{'variant':24s} {'ms':>8s} {'x onnx fp32':>12s} {'max |dp|':>10s} {'labels equal':>13s}")
        for name, call in variants.items():
            out = call()
            agree = float((out.argmax(1) == reference.argmax(1)).mean())
            median = statistics.median(times[name])
            print(
                f"{name:24s} {median * 1e3:8.1f} {median / onnx:12.2f} {np.abs(out - reference).max():10.4f} {agree:13.5f}"
            )
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    variants["ts_bf16"]()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
