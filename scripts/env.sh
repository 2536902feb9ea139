#!/usr/bin/env bash
# Sourced by the README's commands: creates .venv when missing, installs cmrsdk with every
# extra (editable, native core compiled), and rebuilds the native core when its sources change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
# System tools the tests use against real components: Orthanc (a PACS), dcmtk (storescu, echoscu),
# dicom3tools (dciodvfy), headless Chromium (report pages). Installed through apt when missing and
# we are root; otherwise the tests that need them skip, saying so.
need=()
command -v Orthanc >/dev/null || need+=(orthanc)
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "cmrsdk: installing system packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
   { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; }) ||
    echo "cmrsdk: could not install ${need[*]}; the tests that need them will skip" >&2
  # Debian's orthanc package starts a system service on 4242/8042; the tests start their own
  command -v systemctl >/dev/null && systemctl disable --now orthanc >/dev/null 2>&1 || true
  service orthanc stop >/dev/null 2>&1 || true
fi
if [ ! -x .venv/bin/python ]; then
  echo "cmrsdk: creating .venv (first run: PyTorch takes about a minute)" >&2
  "$py" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.cmrsdk-installed
# the native core's sources; the .cpp Cython writes beside a .pyx is a build output, not a source
# (hashing it would make the second run reinstall)
sources=$(for f in $(find csrc -type f \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' \) | sort); do
  [[ $f == *.cpp && -f ${f%.cpp}.pyx ]] || echo "$f"; done)
want="$(cat pyproject.toml setup.py $sources | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "cmrsdk: installing dependencies and building the native core" >&2
  # unlinked, not overwritten: a process still running on the old build (a training run) keeps it,
  # where rewriting a loaded library in place would crash that process
  rm -f cmrsdk/_native.*.so cmrsdk/_normalize.*.so
  # build requirements first, so that the editable build can run without isolation (faster, offline-friendly)
  .venv/bin/python -m pip install --quiet "setuptools>=77" wheel "numpy>=1.26" "Cython>=3.0" "pybind11>=2.12"
  .venv/bin/python -m pip install --quiet --no-build-isolation -e ".[all]"
  echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
