#!/usr/bin/env bash
# Train the paper's whole comparison on one GPU, every run at once, and pack what comes back.
#
#   bash scripts/train_paper_gpu.sh OUT [BUDGET_SECONDS]
#
# Runs on a GPU machine that has PyTorch, torchvision, pybind11 and Cython but not the raw data:
# it reads the slice packs of export.portable from .gpu/ (acdc_224.npz.xz: training and
# validation slices; heldout.npz.xz: ACDC test split and M&Ms), builds the native core, trains
# the six U-Nets and eight classifiers side by side (each with `--time-budget`, so the whole
# run ends on time, annealed and saved), scores the classifiers on the held-out slices and
# writes to OUT (six files, about 61 MB: the transfer takes at most 8 files, 16 MiB each): the U-Nets and the classifiers small enough to carry as float16 weights
# (export.train.export_weights), every log, and the held-out predictions of every classifier.
# DEVICE=cpu UNET_ITERS=2 CLS_ITERS=2 runs the same path on a CPU in a minute (the smoke test).
set -uo pipefail
OUT=${1:?usage: train_paper_gpu.sh OUT [BUDGET_SECONDS]}
BUDGET=${2:-300}
DEVICE=${DEVICE:-cuda}
UNET_ITERS=${UNET_ITERS:-3000}
CLS_ITERS=${CLS_ITERS:-1500}
PY=${PYTHON:-python3}
RUNS=${RUNS:-runs/paper}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
mkdir -p "$OUT" "$RUNS"

UNETS="unet_baseline unet_sampling_low unet_sampling_high unet_base unet_middle unet_apex"
CLASSIFIERS="classifier_shufflenet_v2 classifier_squeezenet classifier_mobilenet_v2 classifier_densenet121
classifier_densenet121_weighted classifier_resnet18 classifier_alexnet classifier_vgg11_bn"
# carried back as float16 weights (the rest are too large: their held-out predictions travel)
CARRIED="classifier_shufflenet_v2 classifier_squeezenet classifier_mobilenet_v2 classifier_densenet121
classifier_densenet121_weighted"

started=$(date +%s)
{ nvidia-smi -L 2>/dev/null; $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$RUNS/environment.txt"

# the native core, built for this machine's Python (its .so from elsewhere would not load)
if ! $PY -c "import cmrsdk.preprocess" 2>/dev/null; then
  $PY setup.py build_ext --inplace -j 8 > "$RUNS/build.log" 2>&1 || { echo "native build failed"; tail "$RUNS/build.log"; exit 1; }
fi
# (a cache already there, e.g. the exact float32 one on the machine that has the raw data, is kept)
[ -f cache/acdc_224/meta.json ] || $PY -m export.portable unpack .gpu/acdc_224.npz.xz cache/acdc_224 || exit 1
echo "set-up: $(( $(date +%s) - started )) s"

pids=()
for run in $UNETS $CLASSIFIERS; do
  case $run in unet_*) iters=$UNET_ITERS; every=1000 ;; *) iters=$CLS_ITERS; every=500 ;; esac
  $PY -m export.train "export/configs/$run.toml" --device "$DEVICE" --out "$RUNS/$run" --no-progress \
      --set train.iterations="$iters" --set train.checkpoint_every="$every" --set train.val_every="$every" \
      --time-budget "$BUDGET" > "$RUNS/$run.out" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
echo "training: $(( $(date +%s) - started )) s, $failed run(s) failed"
for run in $UNETS $CLASSIFIERS; do echo "== $run"; tail -n 2 "$RUNS/$run.out"; done | tee "$RUNS/training.txt"

# held-out predictions of every classifier that finished
done_runs=$(for run in $CLASSIFIERS; do [ -f "$RUNS/$run/last.pt" ] && echo "$RUNS/$run"; done)
$PY -m export.predict .gpu/heldout.npz.xz $done_runs -o "$RUNS/predictions.npz" --device "$DEVICE" | tee -a "$RUNS/training.txt"

# float16 weights + logs, packed into few files (the transfer takes at most 8)
stage=$(mktemp -d)
$PY -c "
import shutil, sys
from pathlib import Path
from export.train import export_weights
runs, stage = Path(sys.argv[1]), Path(sys.argv[2])
for name in sys.argv[3:]:
    if (runs / name / 'last.pt').is_file():
        (stage / name).mkdir(parents=True, exist_ok=True)
        size = export_weights(runs / name / 'last.pt', stage / name / 'model.pt')
        print(f'{name}: {size / 1e6:.1f} MB of float16 weights')
" "$RUNS" "$stage" $UNETS $CARRIED
for run in $UNETS $CLASSIFIERS; do [ -f "$RUNS/$run/log.csv" ] && mkdir -p "$stage/$run" && cp "$RUNS/$run/log.csv" "$stage/$run/"; done
tar -C "$stage" -cf "$OUT/unets_a.tar" unet_baseline unet_sampling_low unet_sampling_high 2>/dev/null
tar -C "$stage" -cf "$OUT/unets_b.tar" unet_base unet_middle unet_apex 2>/dev/null
tar -C "$stage" -cf "$OUT/classifiers_small.tar" classifier_shufflenet_v2 classifier_squeezenet classifier_mobilenet_v2 \
    classifier_resnet18 classifier_alexnet classifier_vgg11_bn 2>/dev/null
tar -C "$stage" -cf "$OUT/densenet121.tar" classifier_densenet121 2>/dev/null
tar -C "$stage" -cf "$OUT/densenet121_weighted.tar" classifier_densenet121_weighted 2>/dev/null
echo "total: $(( $(date +%s) - started )) s" >> "$RUNS/training.txt"
tar -C "$RUNS" -cf "$OUT/results.tar" $(cd "$RUNS" && ls *.out *.txt *.log predictions.npz 2>/dev/null)
ls -la "$OUT"
echo "total: $(( $(date +%s) - started )) s"
