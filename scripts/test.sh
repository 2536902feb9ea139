#!/usr/bin/env bash
# The README's test command: set up .venv when needed, then run the lint script (ruff, ruff
# format --check, mypy) and the whole suite; fails when either fails, after running both.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"
lint=0
bash "$here/lint.sh" || lint=$?
tests=0
python -m pytest -q "$@" || tests=$?
if [ "$lint" -ne 0 ]; then
  echo "cmrsdk: the lint script failed (see its output above)" >&2
fi
[ "$tests" -ne 0 ] && exit "$tests"
exit "$lint"
