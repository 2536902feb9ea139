#!/usr/bin/env bash
# The development fold behind cmrsdk.systole (docs/RESULTS.md, Session 19): the recipe's stage 1
# (a 1.94 M U-Net on the 68 training patients of cache/acdc_224's split, 3,600 s on two threads of
# a 2-core CPU), bundled, and the ES basal RV rule tried at several ratios on the 12 validation
# patients it never saw, then, as the rule's cost where masks are near-manual, with the shipped
# bundle on its own 80 training patients. Resumable: a finished run or bundle is not redone.
#   bash scripts/dev_fold.sh [SECONDS (3600)]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export OMP_WAIT_POLICY=PASSIVE
acdc=../shared/data/acdc/training
[ -f runs/dev68/done ] || {
  python -m export.train export/configs/bundle_baseline.toml --out runs/dev68 --resume --no-progress \
    --time-budget "${1:-3600}"
  touch runs/dev68/done
}
[ -f runs/dev68_bundle/manifest.json ] || python -m export.bundle --checkpoints baseline=runs/dev68/last.pt \
  --routing 0=baseline 1=baseline 2=baseline 3=baseline --regions-from segmentation \
  --examples-from-cache cache/acdc_224 --formats onnx --heart-crop 128 128 -o runs/dev68_bundle
validation=$(python -c "import json; print(' '.join(json.load(open('cache/acdc_224/meta.json'))['splits']['val']))")
echo "development fold: runs/dev68_bundle on its 12 validation patients"
python scripts/dev_fold.py runs/dev68_bundle $(for p in $validation; do echo "$acdc/$p"; done)
echo "shipped bundle on its 80 training patients (every patient but 005, 010, ..., 100)"
python scripts/dev_fold.py cmrsdk/demo/bundle $(ls -d "$acdc"/patient* | awk 'substr($0, length($0) - 2) % 5')
