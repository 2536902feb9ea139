#!/usr/bin/env bash
# The development folds behind cmrsdk.systole (docs/RESULTS.md, Sessions 19 and 20): the recipe's
# stage 1 (a 1.94 M U-Net, export/configs/bundle_baseline.toml) trained on the 68 training
# patients of a split, 3,600 s on two threads of a 2-core CPU, bundled; the ES basal RV rule is
# tried at several ratios on the 12 validation patients each never saw. Two disjoint folds: the
# validation draws of split seeds 0 (cache/acdc_224, runs/dev68) and 10 (cache/acdc_224_s10,
# runs/dev68_s10). Then, as the rule's cost where masks are near-manual, the shipped bundle on its
# own 80 training patients. Resumable: a finished run, cache or bundle is not redone. The folds'
# scores are written to docs/results/dev_folds/ (NAME_folds_SEEDS.txt, and each label-slice's Dice in
# NAME_slices_SEEDS.csv for scripts/compare_folds.py), to be committed.
#   bash scripts/dev_fold.sh [SECONDS (3600)]
# A recipe change (DEV_SET: configuration overrides, space-separated) is compared on the same
# folds at the same number of iterations as the first runs (runs/dev68*/log.csv, or their recorded
# counts where those runs are not on this machine), under a name (DEV_NAME), on the folds of
# DEV_SEEDS (both by default):
#   DEV_NAME=strong DEV_SET='train.augment="strong"' bash scripts/dev_fold.sh  # runs/dev68_strong, runs/dev68_s10_strong
#   DEV_NAME=ctx DEV_SEEDS=0 bash scripts/dev_fold.sh  # 2.5D, the first fold only, with (no spaces in an item):
#     DEV_SET='data.context=1 model.kwargs={in_channels=3,features=[16,32,64,128,256],deep_supervision=true}'
# DEV_BUNDLE adds arguments to the bundling (e.g. '--heart-search largest'). A split seed other than
# 0 and 10 is a further fold (cache/acdc_224_sSEED, runs/dev68_sSEED); its reference is a named run
# too (DEV_NAME=ref DEV_SET='experiment.seed=0'), at the iteration count recorded for it below.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export OMP_WAIT_POLICY=PASSIVE
acdc=../shared/data/acdc/training
folds=()
# runs/dev68*, docs/RESULTS.md Sessions 19-20; 118: a third fold at fold 1's count (export/README.md "Stage 36")
declare -A reference_iterations=([0]=6688 [10]=6366 [118]=6688)
read -ra bundle_extra <<< "${DEV_BUNDLE:-}"
for seed in ${DEV_SEEDS:-0 10}; do
  cache=cache/acdc_224 run=runs/dev68
  [ "$seed" = 0 ] || cache=cache/acdc_224_s$seed run=runs/dev68_s$seed
  budget=(--time-budget "${1:-3600}") variant=()
  if [ -n "${DEV_NAME:-}" ]; then
    # the reference run's, so both see as many batches; its recorded count on a fresh machine
    iterations=${reference_iterations[$seed]:?no reference iteration count for split seed $seed}
    [ ! -f "$run/log.csv" ] || iterations=$(tail -1 "$run/log.csv" | cut -d, -f1)
    run=${run}_$DEV_NAME budget=() variant=(--set "train.iterations=$iterations")
    read -ra items <<< "${DEV_SET:?DEV_SET names what DEV_NAME changes}"  # split on spaces, no globbing
    for item in "${items[@]}"; do variant+=(--set "$item"); done
  fi
  python -c "from export.data import open_cache; open_cache('../shared/data/acdc', '$cache', size=224, \
normalization='robust_zscore', test_every=5, val_fraction=0.15, seed=$seed, threads=2)"
  [ -f "$run/done" ] || {
    python -m export.train export/configs/bundle_baseline.toml --out "$run" --resume-or-start --no-progress \
      --set "data.cache=\"$cache\"" --set "data.split_seed=$seed" "${budget[@]}" "${variant[@]}"
    touch "$run/done"
  }
  [ -f "${run}_bundle/manifest.json" ] || python -m export.bundle --checkpoints "baseline=$run/last.pt" \
    --routing 0=baseline 1=baseline 2=baseline 3=baseline --regions-from segmentation \
    --examples-from-cache "$cache" --formats onnx --heart-crop 128 128 "${bundle_extra[@]}" -o "${run}_bundle"
  validation=$(python -c "import json; print(' '.join(json.load(open('$cache/meta.json'))['splits']['val']))")
  folds+=(--fold "${run}_bundle" $(for p in $validation; do echo "$acdc/$p"; done))
done
echo "development folds: each bundle on the 12 validation patients it never saw, and the 24 together"
# kept in the repository: runs/ and its bundles do not outlive the machine
seeds=${DEV_SEEDS:-0 10}
record=docs/results/dev_folds/${DEV_NAME:-reference}_folds_${seeds// /_}.txt
mkdir -p "$(dirname "$record")"
slices=docs/results/dev_folds/${DEV_NAME:-reference}_slices_${seeds// /_}.csv  # for scripts/compare_folds.py
python scripts/dev_fold.py "${folds[@]}" --slices "$slices" | tee "$record"
[ -z "${DEV_NAME:-}" ] || exit 0
echo "shipped bundle on its 80 training patients (every patient but 005, 010, ..., 100)"
python scripts/dev_fold.py --fold cmrsdk/demo/bundle $(ls -d "$acdc"/patient* | awk 'substr($0, length($0) - 2) % 5')
