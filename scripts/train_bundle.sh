#!/usr/bin/env bash
# The recipe of the shipped bundle (cmrsdk/demo/bundle), resumable: re-running continues from the
# last checkpoints (a finished stage is skipped). Needs ../shared/data/acdc. Budgets are
# wall-clock (--time-budget: the learning rate anneals to whichever of iterations or time runs
# out first); the figures each stage reached are in export/README.md.
#   stage 1: baseline U-Net (1.94 M parameters), bf16 autocast, cross-vendor augmentation, on the
#            train split (68 patients), validated on 12: this is where the recipe was chosen;
#   stage 2: the same U-Net continued (warm restart, half the learning rate) on all 80 non-test
#            patients, without validation;
#   stage 3: three runs side by side on one thread each, all warm-started from stage 2 on the
#            80 patients: the baseline continued once more (a quarter of stage 1's rate), and
#            the base and apex U-Nets fine-tuned on their region and the non-cardiac slices;
#            (these three made the 0.3.0 bundle: BUNDLE_0_3_0_OUT, default runs/bundle_0.3.0);
#   stage 4: stage 3's baseline grown to 160 / 320 deep channels (2.87 M parameters) and trained
#            16,000 iterations (export/README.md's stage 9; about 4 h at two threads);
#   stage 5: a warm restart of it, 8,000 iterations from half its learning rate (stage 12);
#   stage 6: the mean of stages 4 and 5's float16 weights (stage 13), the shipped 0.7.0 U-Net;
#   export:  TorchScript + ONNX, parity-checked; routed mode takes regions from the baseline's
#            masks (regions_from = segmentation) and routes every region to the one U-Net.
# Environment: BASELINE_SECONDS (5700), FINAL_SECONDS (5400), LONG_SECONDS (5400), BUNDLE_OUT.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export OMP_WAIT_POLICY=PASSIVE   # OpenMP threads on two cores: sleep, do not spin, between ops
python -m export.train export/configs/bundle_baseline.toml --resume-or-start --time-budget "${BASELINE_SECONDS:-5700}"
python -m export.train export/configs/final_baseline.toml --resume-or-start --time-budget "${FINAL_SECONDS:-5400}"
pids=()
for m in baseline base apex; do
  python -m export.train "export/configs/long_$m.toml" --resume-or-start --no-progress \
    --time-budget "${LONG_SECONDS:-5400}" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
python -m export.bundle \
  --checkpoints baseline=runs/long/baseline/last.pt base=runs/long/base/last.pt apex=runs/long/apex/last.pt \
  --routing 0=baseline 1=base 2=baseline 3=apex --regions-from segmentation \
  --examples-from-cache cache/acdc_224 --formats torchscript onnx --heart-crop 128 128 --overwrite \
  -o "${BUNDLE_0_3_0_OUT:-runs/bundle_0.3.0}"
python -m export.train export/configs/wide_baseline_long.toml --resume-or-start --no-progress \
  --set 'train.init="runs/long/baseline/last.pt"' --set train.threads=2
python -m export.train export/configs/wide_baseline_restart.toml --resume-or-start --no-progress --set train.threads=2
python - <<'EOF'
from export.train import average_weights, export_weights
export_weights("runs/wide_long/baseline/last.pt", "runs/stage9_baseline_fp16.pt")  # stage 5's init
export_weights("runs/wide_restart/baseline/last.pt", "runs/stage12_baseline_fp16.pt")
average_weights(["runs/stage9_baseline_fp16.pt", "runs/stage12_baseline_fp16.pt"], "runs/stage13_mean_fp16.pt")
EOF
python -m export.bundle --checkpoints baseline=runs/stage13_mean_fp16.pt \
  --routing 0=baseline 1=baseline 2=baseline 3=baseline --regions-from segmentation \
  --examples-from-cache cache/acdc_224 --formats torchscript onnx --heart-crop 128 128 --overwrite \
  -o "${BUNDLE_OUT:-cmrsdk/demo/bundle}"
