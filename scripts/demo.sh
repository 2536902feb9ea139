#!/usr/bin/env bash
# The README's main command: set up .venv when needed, then run the main job on the embedded
# example study with the bundled demo model, writing its outputs to ${1:-out/demo}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec cmrsdk demo -o "${1:-out/demo}"
