#!/usr/bin/env bash
# The recipe of the previous demo bundle (0.49 M-parameter U-Nets + ShuffleNet classifier), shipped
# until issue 12; the shipped bundle's recipe is scripts/train_bundle.sh. Resumable (re-running continues
# from the last checkpoints). Budgets are in export/configs/demo_*.toml; times in export/README.md.
#   stage 1: the five demo models trained from scratch on the ACDC training split (../shared/data/acdc);
#   stage 2: each fine-tuned for 600 iterations on ACDC + 20 synthetic studies (cmrsdk.synth seeds
#            1000-1019, never the example's seed 0), so that the embedded example is in-distribution;
#   export:  TorchScript + ONNX, parity-checked against the eager models on real validation slices.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
models=(baseline base middle apex classifier)
for m in "${models[@]}"; do python -m export.train "export/configs/demo_$m.toml" --resume-or-start; done
for m in "${models[@]}"; do python -m export.train "export/configs/demo_${m}_mix.toml" --resume-or-start; done
python -m export.bundle \
  --checkpoints $(for m in "${models[@]}"; do printf '%s=runs/demo/demo_%s_mix/last.pt ' "$m" "$m"; done) \
  --examples-from-cache cache/acdc_224 --formats torchscript onnx --heart-crop 128 128 --overwrite \
  -o "${BUNDLE_OUT:-out/previous_demo_bundle}"
