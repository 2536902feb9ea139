#!/usr/bin/env bash
# cmrsdk's native core under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   scripts/sanitize.sh [OUT] [FUZZ_INPUTS]     (defaults: build-sanitize, 5000)
#
# Builds both native modules with -fsanitize=address,undefined (gcc, or CC/CXX) into OUT, never
# into the checkout, puts them beside a copy of cmrsdk/ in OUT/pkg, and runs with that copy:
#   1. the native tests: tests/test_preprocess.py and tests/test_parallel.py;
#   2. fuzz/fuzz_kernels.py's checks on FUZZ_INPUTS seeded random inputs, and on every input of
#      the fuzz corpus in $FUZZ_CORPUS when set (e.g. the corpus-kernels folder of scripts/fuzz.sh).
# The interpreter is not instrumented, so libasan is preloaded. Any report stops the process
# (halt_on_error, -fno-sanitize-recover=all) and fails the script. Leak checking is off: CPython
# keeps its interned objects for the life of the process, by design.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(realpath -m "${1:-build-sanitize}")
inputs=${2:-5000}
python=${PYTHON:-python}
export CC=${CC:-gcc} CXX=${CXX:-g++}
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
mkdir -p "$out"
echo "== build ($CXX, $flags) into $out"
CFLAGS="$flags" CXXFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
    "$python" setup.py -q build_ext --build-lib "$out/lib" --build-temp "$out/tmp" -j1 > "$out/build.log" 2>&1 \
    || { tail -30 "$out/build.log"; exit 1; }
rm -rf "$out/pkg" && mkdir -p "$out/pkg"
cp -r cmrsdk "$out/pkg/cmrsdk"
find "$out/pkg/cmrsdk" -name "*.so" -delete
cp "$out"/lib/cmrsdk/*.so "$out/pkg/cmrsdk/"

# libasan first; libstdc++ too, or ASan's __cxa_throw interceptor finds no real __cxa_throw (the
# interpreter does not link libstdc++) and the first C++ exception stops the process.
preload="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
# PYTHONSAFEPATH: the checkout's own cmrsdk (and its unsanitized modules) must not shadow the copy.
export PYTHONPATH="$out/pkg" PYTHONSAFEPATH=1 OMP_NUM_THREADS=1 LD_PRELOAD="$preload"
# Reports also go to OUT/asan.*: pytest's capture would swallow them with the dying process.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=99:log_path=$out/asan"
rm -f "$out"/asan.*
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=98"
"$python" -c "
import cmrsdk._native as n, cmrsdk._normalize as m, sys
assert n.__file__.startswith('$out/pkg') and m.__file__.startswith('$out/pkg'), (n.__file__, m.__file__)
print('sanitized modules:', n.__file__, m.__file__)"
case "$(nm -D "$out"/pkg/cmrsdk/_native*.so "$out"/pkg/cmrsdk/_normalize*.so)" in *__asan_init*) ;; *) echo "the build is not instrumented"; exit 1 ;; esac

report() { for f in "$out"/asan.*; do [ -e "$f" ] && { echo "== sanitizer report $f"; head -60 "$f"; }; done; }
trap 'rc=$?; [ $rc -ne 0 ] && report; exit $rc' EXIT

echo "== native tests"
"$python" -m pytest -q -p no:cacheprovider tests/test_preprocess.py tests/test_parallel.py

echo "== fuzz checks: $inputs seeded inputs${FUZZ_CORPUS:+ and the corpus in $FUZZ_CORPUS}"
"$python" - "$inputs" "${FUZZ_CORPUS:-}" <<'PY'
import pathlib, sys, time
sys.modules["atheris"] = None  # the checks alone; libFuzzer's runtime is not built for this ASan
sys.path.insert(0, "fuzz")
import numpy as np
import fuzz_kernels
count, corpus = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(23)
inputs = [rng.integers(0, 256, size=int(rng.integers(0, 4096)), dtype=np.uint8).tobytes() for _ in range(count)]
if corpus:
    inputs += [p.read_bytes() for p in sorted(pathlib.Path(corpus).iterdir()) if p.is_file()]
start = time.time()
for data in inputs:
    fuzz_kernels.TestOneInput(data)
print(f"{len(inputs)} inputs, no report, {time.time() - start:.0f} s")
PY
echo "== sanitizers: no report"
