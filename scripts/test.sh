#!/usr/bin/env bash
# The README's test command: set up .venv when needed, then run the lint script (ruff, ruff
# format --check, mypy) and the whole suite; fails when either fails, after running both.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"
lint=0
bash "$here/lint.sh" || lint=$?
tests=0
# two workers (pytest-xdist): the suite waits on sockets, subprocesses and a PACS as much as it
# computes, so two processes on two cores take 8 min where one took 10.7 (session 39); each test
# file's module fixtures are built in the worker that runs it. `bash scripts/test.sh -n 0` runs serially,
# as does a machine where pytest-xdist could not be installed (said, not failed).
# worksteal: a worker that runs out of tests takes some of the other's queue, so the slow
# end-to-end tests do not leave one core idle for the last minute
workers=(-n 2 --dist worksteal)
if ! python -c "import xdist" 2>/dev/null; then
  echo "cmrsdk: pytest-xdist is not installed; the suite runs in one process" >&2
  workers=()
fi
# bytecode cached outside the tree (cache/ is git-ignored): the suite starts python some hundreds of
# times (nodes, batch workers, Ray), each compiling cmrsdk again where the environment says not to
# write bytecode (PYTHONDONTWRITEBYTECODE), as this machine's does
export PYTHONPYCACHEPREFIX="$PWD/cache/pycache"
unset PYTHONDONTWRITEBYTECODE
python -m pytest -q ${workers[@]+"${workers[@]}"} "$@" || tests=$?
if [ "$lint" -ne 0 ]; then
  echo "cmrsdk: the lint script failed (see its output above)" >&2
fi
[ "$tests" -ne 0 ] && exit "$tests"
exit "$lint"
