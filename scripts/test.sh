#!/usr/bin/env bash
# The README's test command: set up .venv when needed, then run the whole suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m pytest -q "$@"
