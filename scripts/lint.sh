#!/usr/bin/env bash
# Lint, format check and type check (configured in pyproject.toml): ruff check, ruff format
# --check, mypy (strict on cmrsdk's public API). Runs all three and fails if any one fails.
# Run by scripts/test.sh beside the tests; alone: bash scripts/lint.sh
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
set +e
status=0
echo "lint: ruff check" >&2
python -m ruff check . || status=1
echo "lint: ruff format --check" >&2
python -m ruff format --check . || status=1
echo "lint: mypy" >&2
python -m mypy || status=1
exit $status
