#!/usr/bin/env bash
# Fuzz cmrsdk's native kernels and readers with atheris (pip install -e '.[fuzz]').
#
#   scripts/fuzz.sh kernels|readers RUNS [OUT]   e.g. scripts/fuzz.sh kernels 1000000 /tmp/fuzz
#
# Seeds OUT/corpus-NAME with 64 seeded random inputs the first time, then runs libFuzzer for RUNS
# inputs on one process, keeping the corpus it grows; a finding stops the run and leaves
# OUT/crash-* (replay: python fuzz/fuzz_NAME.py OUT/crash-*). The log is OUT/NAME.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${1:?kernels or readers}
runs=${2:?number of inputs}
out=${3:-fuzz-out}
python=${PYTHON:-python}
mkdir -p "$out/corpus-$name"
if [ -z "$(ls -A "$out/corpus-$name")" ]; then
    "$python" - "$out/corpus-$name" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(17)
for i in range(64):
    size = int(rng.integers(1, 4096))
    open(f"{sys.argv[1]}/seed-{i:02d}", "wb").write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
PY
fi
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- cmrsdk csrc fuzz || echo ' (with uncommitted changes)'), $(date -u +%FT%TZ)" > "$out/$name.log"
OMP_NUM_THREADS=1 exec "$python" "fuzz/fuzz_$name.py" -runs="$runs" -seed=1 -max_len=4096 -len_control=100 \
    -artifact_prefix="$out/" -print_final_stats=1 "$out/corpus-$name" >> "$out/$name.log" 2>&1
