#!/usr/bin/env bash
# GPU check for the inference engines (issues 5 and 16), one short run (< 12 minutes) on a CUDA machine.
#
#   benchmarks/gpu_check.sh [RESULTS_DIR]        (default: $OUT if set, else benchmarks/results)
#
# 1. runs tests/test_engines.py: every engine this machine can run, CUDA cases included
#    (TorchScript fp32 / fp16 / CUDA graphs, ONNX Runtime CUDA, TensorRT where torch-tensorrt is
#    installed), same outputs as the eager model for batch sizes 1..32;
# 2. builds a bundle of the small nnU-Net-style U-Net (16..256 features, 192 x 192) with every
#    format this machine can build, parity-checked at export (TensorRT fp32 and fp16 included);
# 3. times each CUDA engine at batch 1, 10, 20 and 40 (median of 20 runs after 5 warm-ups,
#    host-to-host: numpy in, numpy out) against eager PyTorch in the same process.
# 4. the device chain (cmrsdk.device_chain) against the host pipeline on CUDA, and both timed.
# Results: engine_tests.txt, bundle_manifest.json, gpu_timings.json, gpu_timings.txt,
# device_chain_tests.txt, gpu_pipeline.txt and gpu_pipeline.json.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$RESULTS"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$RESULTS/gpu.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" >> "$RESULTS/gpu.txt" 2>&1

timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_engines.py -rs > "$RESULTS/engine_tests.txt" 2>&1
echo "engine tests exit status $?" | tee -a "$RESULTS/engine_tests.txt"

timeout 200 "$PY" - "$RESULTS" <<'PYEOF' 2>&1 | tee "$RESULTS/gpu_timings.txt"
import json, shutil, sys, time
from pathlib import Path
import numpy as np
import torch
from cmrsdk.bundle import MANIFEST_NAME, Preprocessing, load_bundle
from cmrsdk.engines import available_backends
from export.bundle import ProbabilityModel, build_bundle
from export.models import unet

results = Path(sys.argv[1])
size = (192, 192)
torch.manual_seed(0)
net = unet(features=(16, 32, 64, 128, 256))
work = Path("/tmp/cmrsdk_gpu_check_bundle")
shutil.rmtree(work, ignore_errors=True)
t0 = time.perf_counter()
build_bundle({"unet": (net, {"kind": "segmentation"})}, {0: "unet"}, Preprocessing((1.5625, 1.5625), size, "robust_zscore"),
             work, max_batch=64)
print(f"bundle built and parity-checked in {time.perf_counter() - t0:.1f} s; CUDA backends: {available_backends('cuda')}")
shutil.copy(work / MANIFEST_NAME, results / "bundle_manifest.json")
bundle = load_bundle(work)
rng = np.random.default_rng(0)
eager = ProbabilityModel(net).cuda().eval()

def eager_run(x):
    with torch.inference_mode():
        return eager(torch.from_numpy(x).cuda()).cpu().numpy()

candidates = {"eager-fp32": eager_run}
for backend in available_backends("cuda"):
    if backend == "tensorrt":
        candidates["tensorrt-fp32"] = bundle.engine("unet", "tensorrt", "cuda").run
        candidates["tensorrt-fp16"] = bundle.engine("unet", "tensorrt", "cuda", fp16=True).run
    elif backend == "torchscript":
        candidates["torchscript-fp32"] = bundle.engine("unet", "torchscript", "cuda").run
        candidates["torchscript-fp16"] = bundle.engine("unet", "torchscript", "cuda", fp16=True).run
        candidates["torchscript-fp16-cudagraphs"] = bundle.engine("unet", "torchscript", "cuda", fp16=True, cuda_graphs=True).run
    else:
        candidates["onnx-fp32"] = bundle.engine("unet", "onnx", "cuda").run
timings = {}
for n in (1, 10, 20, 40):
    x = rng.standard_normal((n, 1, *size)).astype(np.float32)
    for name, run in candidates.items():
        try:
            for _ in range(5):
                run(x)
            torch.cuda.synchronize()
            ts = []
            for _ in range(20):
                t = time.perf_counter(); run(x); ts.append(time.perf_counter() - t)
            timings.setdefault(name, {})[n] = float(np.median(ts)) * 1e3
            print(f"{name:>28} batch {n:>2}: {timings[name][n]:8.2f} ms")
        except Exception as exc:  # one failing engine must not hide the others' figures
            timings.setdefault(name, {})[n] = f"failed: {exc}"
            print(f"{name:>28} batch {n:>2}: failed: {exc}")
(results / "gpu_timings.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "size": size,
                                                      "unit": "ms per batch (median)", "timings": timings}, indent=2))
PYEOF
echo "timing exit status ${PIPESTATUS[0]}"

# 4. the device chain (issue 16): its labels against the host pipeline's on CUDA, then the
#    pipelines per ED+ES pair, host chain and device chain, fp32 / fp16 / fp16 + CUDA graphs.
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_device_chain.py -rs > "$RESULTS/device_chain_tests.txt" 2>&1
echo "device chain tests exit status $?" | tee -a "$RESULTS/device_chain_tests.txt"
timeout 240 "$PY" benchmarks/gpu_pipeline.py --repeats 20 --out "$RESULTS" > "$RESULTS/gpu_pipeline.log" 2>&1
echo "gpu pipeline exit status $?" | tee -a "$RESULTS/gpu_pipeline.log"
