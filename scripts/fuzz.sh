#!/usr/bin/env bash
# Fuzz cmrsdk's native kernels or its readers with atheris (pip install -e '.[fuzz]').
#
#   scripts/fuzz.sh kernels|readers RUNS [OUT] [CHUNK]   e.g. scripts/fuzz.sh kernels 1000000 /tmp/fuzz
#   FUZZ_SECONDS=1200 scripts/fuzz.sh readers 1000000 /tmp/fuzz    (stop after 20 minutes)
#
# Runs libFuzzer on fuzz/fuzz_NAME.py for RUNS inputs in all, in fresh processes of CHUNK inputs
# each (default 50,000: the atheris process grows by a few kB per input, none of it cmrsdk's),
# every chunk with its own seed and all sharing OUT/corpus-NAME, seeded the first time with 64
# seeded random inputs. A finding stops the run and leaves OUT/crash-* (replay it with
# python fuzz/fuzz_NAME.py OUT/crash-*). OUT/NAME.log holds libFuzzer's output, and one
# "chunk" line per process with the inputs it ran; the last line gives the total.
# The readers' known findings (fuzz/RESULTS.md) are counted, not stopped on (CMRSDK_FUZZ_KNOWN=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${1:?kernels or readers}
runs=${2:?number of inputs}
out=${3:-fuzz-out}
chunk=${4:-50000}
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
log="$out/$name.log"
dirty=$(git diff --quiet HEAD -- cmrsdk csrc fuzz || echo " (with uncommitted changes)")
echo "start $(date -u +%FT%TZ) commit $(git rev-parse HEAD)$dirty: $runs inputs in chunks of $chunk" >> "$log"
done_runs=0
seed=1
deadline=$(( $(date +%s) + ${FUZZ_SECONDS:-315360000} ))
while [ "$done_runs" -lt "$runs" ]; do
    left=$(( deadline - $(date +%s) ))
    if [ "$left" -le 0 ]; then
        echo "time limit of ${FUZZ_SECONDS}s reached" >> "$log"
        break
    fi
    n=$(( runs - done_runs < chunk ? runs - done_runs : chunk ))
    rc=0
    CMRSDK_FUZZ_KNOWN=1 OMP_NUM_THREADS=1 "$python" "fuzz/fuzz_$name.py" -runs="$n" -seed="$seed" -max_len=4096 \
        -max_total_time="$left" -artifact_prefix="$out/" -print_final_stats=1 "$out/corpus-$name" >> "$log" 2>&1 || rc=$?
    ran=$(grep -a "stat::number_of_executed_units" "$log" | tail -1 | awk '{print $2}')
    done_runs=$(( done_runs + ${ran:-0} ))
    echo "chunk seed=$seed rc=$rc inputs=${ran:-0} total=$done_runs $(date -u +%FT%TZ)" >> "$log"
    if [ "$rc" -eq 72 ]; then  # libFuzzer's exit code when interrupted (SIGTERM, SIGINT)
        echo "interrupted" >> "$log"
        exit "$rc"
    elif [ "$rc" -ne 0 ]; then
        echo "stopped: a finding (rc=$rc), see $out/crash-* and the log above" >> "$log"
        exit "$rc"
    fi
    seed=$(( seed + 1 ))
done
echo "finished $(date -u +%FT%TZ): $done_runs inputs, no finding" >> "$log"
