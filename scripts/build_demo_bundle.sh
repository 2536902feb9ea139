#!/usr/bin/env bash
# The recipe of the committed demo bundle (cmrsdk/demo/bundle): train the five demo models on
# ../shared/data/acdc with export/ (resumable: re-running continues from the last checkpoints),
# then export them, parity-checked, as TorchScript + ONNX. Budgets are in export/configs/demo_*.toml;
# the measured times are in export/README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
for config in demo_baseline demo_base demo_middle demo_apex demo_classifier; do
  python -m export.train "export/configs/$config.toml" --resume
done
python -m export.bundle \
  --checkpoints baseline=runs/demo/demo_baseline/last.pt base=runs/demo/demo_base/last.pt \
                middle=runs/demo/demo_middle/last.pt apex=runs/demo/demo_apex/last.pt \
                classifier=runs/demo/demo_classifier/last.pt \
  --examples-from-cache cache/acdc_224 --formats torchscript onnx --overwrite \
  -o cmrsdk/demo/bundle
