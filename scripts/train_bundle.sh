#!/usr/bin/env bash
# The recipe of the shipped bundle (cmrsdk/demo/bundle), resumable: re-running continues from the
# last checkpoints. Needs ../shared/data/acdc. Budgets are wall-clock (--time-budget: the learning
# rate anneals to whichever of iterations or time runs out first); figures in export/README.md.
#   stage 1: baseline U-Net (1.94 M parameters), bf16 autocast, cross-vendor augmentation;
#   stage 2: base and apex U-Nets warm-started from it, fine-tuned on their regions;
#   export:  TorchScript + ONNX, parity-checked; routed mode takes regions from the baseline's
#            masks (regions_from = segmentation); middle slices keep the baseline's answer.
# (The shipped one ran base and apex side by side, one thread each; here they run one after the
# other on two threads, so the iterations they reach will differ.)
# Environment: BASELINE_SECONDS (default 5700), REGION_SECONDS (default 660), BUNDLE_OUT.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export OMP_WAIT_POLICY=PASSIVE   # two OpenMP threads on two cores: sleep, do not spin, between ops
python -m export.train export/configs/bundle_baseline.toml --resume --time-budget "${BASELINE_SECONDS:-5700}"
for m in base apex; do
  python -m export.train "export/configs/bundle_$m.toml" --resume --time-budget "${REGION_SECONDS:-660}"
done
python -m export.bundle \
  --checkpoints baseline=runs/bundle/baseline/last.pt base=runs/bundle/base/last.pt apex=runs/bundle/apex/last.pt \
  --routing 0=baseline 1=base 2=baseline 3=apex --regions-from segmentation \
  --examples-from-cache cache/acdc_224 --formats torchscript onnx --heart-crop 128 128 --overwrite \
  -o "${BUNDLE_OUT:-cmrsdk/demo/bundle}"
