#!/usr/bin/env bash
# Sourced by the README's commands: creates .venv when missing, installs cmrsdk with every
# extra (editable, native core compiled), and rebuilds the native core when its sources change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "cmrsdk: creating .venv (first run: PyTorch takes about a minute)" >&2
  "$py" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.cmrsdk-installed
want="$(cat pyproject.toml setup.py $(find csrc -type f \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' \) | sort) | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "cmrsdk: installing dependencies and building the native core" >&2
  # build requirements first, so that the editable build can run without isolation (faster, offline-friendly)
  .venv/bin/python -m pip install --quiet "setuptools>=77" wheel "numpy>=1.26" "Cython>=3.0" "pybind11>=2.12"
  .venv/bin/python -m pip install --quiet --no-build-isolation -e ".[all]"
  echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
