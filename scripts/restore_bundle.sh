#!/usr/bin/env bash
# A previously shipped bundle, back from git history, for the training configurations that start
# from it (export/configs/*.toml with init = "runs/bundle_<version>/<model>.pt"):
#   bash scripts/restore_bundle.sh 0.3.0      # -> runs/bundle_0.3.0/ (baseline, base, apex)
# Skips the copy when the folder is already complete.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version="${1:?usage: restore_bundle.sh VERSION (0.3.0)}"
case "$version" in
  0.3.0) commit=6f6c471 ;;  # the last commit that shipped 0.3.0's weights (0.3.0 to 0.6.2)
  *) echo "restore_bundle.sh: no shipped bundle '$version' is recorded here (known: 0.3.0)" >&2; exit 2 ;;
esac
out="runs/bundle_$version"
if [ -f "$out/manifest.json" ]; then echo "$out is already there"; exit 0; fi
mkdir -p "$out.tmp"
git archive "$commit" cmrsdk/demo/bundle | tar -x --strip-components=3 -C "$out.tmp"
mv "$out.tmp" "$out"
echo "bundle $version restored to $out"
