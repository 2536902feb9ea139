#!/usr/bin/env bash
# Continue every model of the shipped bundle on one GPU, side by side, and carry the weights back.
#
#   bash scripts/train_bundle_gpu.sh OUT [BUDGET_SECONDS]
#
# What a short GPU lease buys: the shipped bundle's U-Net (0.7.0: one 2.87 M baseline) continued
# by its own recipe (STAGE=wide, export/configs/wide_baseline.toml), or the 0.3.0 bundle's three
# U-Nets side by side (BUNDLE=runs/bundle_0.3.0 from scripts/restore_bundle.sh, STAGE=swa, MODELS=
# "baseline base apex"), each warm-started from the bundle's own archive (<BUNDLE>/<m>.pt),
# so the machine needs the repository and one slice pack, not the raw data or any checkpoint:
#
#   python -m export.portable pack-cache cache/acdc_224_all .gpu/acdc_224_all.npz.xz   # here, once
#   (on the GPU machine)  bash scripts/train_bundle_gpu.sh "$OUT" 420
#   (back here)           python -m export.bundle --checkpoints baseline=OUT/baseline.pt ...
#                           (as in train_bundle.sh)
#
# OUT receives one float16 weight file per model (the weight average where the stage takes one,
# 4 to 6 MB each) and the logs.
# Without the pack (and without cache/acdc_224_all) export.train builds the cache from
# ../shared/data/acdc. SET adds --set overrides to every run, e.g. SET='data.source="synthetic"'.
# DEVICE=cpu ITERATIONS=4 runs the same path on a CPU in a minute (tests/test_train_bundle_gpu.py).
# STAGE names the configurations, export/configs/<STAGE>_<model>.toml: "swa" (2D, stage 4), "ctx"
# (2.5D, stage 5: each slice with its stack neighbours) or "slice" (2D, stage 6: half the Dice
# term per slice; no weight average, so the files carry the last weights) or "wide" (stage 7: the
# baseline grown to 160 / 320 deep channels; MODELS=baseline, the only model of that stage).
# MODELS (default "baseline", the shipped bundle's one model) names the models trained.
set -uo pipefail
OUT=${1:?usage: train_bundle_gpu.sh OUT [BUDGET_SECONDS]}
BUDGET=${2:-420}
DEVICE=${DEVICE:-cuda}
ITERATIONS=${ITERATIONS:-200000}   # the time budget ends a GPU run; the smoke test sets a few
PY=${PYTHON:-python3}
RUNS=${RUNS:-runs/gpu_bundle}
BUNDLE=${BUNDLE:-cmrsdk/demo/bundle}
PACK=${PACK:-.gpu/acdc_224_all.npz.xz}
SET=${SET:-}
STAGE=${STAGE:-wide}
MODELS=${MODELS:-baseline}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
mkdir -p "$OUT" "$RUNS"
started=$(date +%s)

if ! $PY -c "import cmrsdk.preprocess" 2>/dev/null; then
  $PY setup.py build_ext --inplace -j 8 > "$RUNS/build.log" 2>&1 || { echo "native build failed"; tail "$RUNS/build.log"; exit 1; }
fi
if [ ! -f cache/acdc_224_all/meta.json ] && [ -f "$PACK" ]; then
  $PY -m export.portable unpack "$PACK" cache/acdc_224_all || exit 1
fi
extra=()
for item in $SET; do extra+=(--set "$item"); done
echo "set-up: $(( $(date +%s) - started )) s"

pids=()
for m in $MODELS; do
  # a small SWA interval: thousands of iterations fit a GPU lease, and the average wants many
  $PY -m export.train "export/configs/${STAGE}_$m.toml" --device "$DEVICE" --out "$RUNS/$m" --no-progress \
      --set train.init="\"$BUNDLE/$m.pt\"" --set train.iterations="$ITERATIONS" --set train.threads=0 \
      --set train.swa_every=$(( ITERATIONS < 1000 ? 1 : 25 )) --set train.checkpoint_every=1000 \
      "${extra[@]}" --time-budget "$BUDGET" > "$RUNS/$m.out" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
echo "training: $(( $(date +%s) - started )) s, $failed run(s) failed"
for m in $MODELS; do echo "== $m"; tail -n 2 "$RUNS/$m.out"; done | tee "$RUNS/training.txt"

$PY - "$RUNS" "$OUT" $MODELS <<'EOF'
import shutil, sys
from pathlib import Path
from export.train import export_weights
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
for name in sys.argv[3:]:
    if (runs / name / "last.pt").is_file():
        size = export_weights(runs / name / "last.pt", out / f"{name}.pt")
        shutil.copy(runs / name / "log.csv", out / f"{name}_log.csv")
        print(f"{name}: {size / 1e6:.1f} MB of float16 weights")
EOF
cp "$RUNS/training.txt" "$OUT/"
echo "total: $(( $(date +%s) - started )) s" | tee -a "$OUT/training.txt"
exit "$failed"
