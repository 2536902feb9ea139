"""The README's set-up (scripts/env.sh) is idempotent: a second run installs nothing."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / ".venv" / ".cmrsdk-installed").exists(), reason="needs the set-up's .venv")
def test_second_setup_run_installs_nothing() -> None:
    # the test suite itself runs after env.sh, so this is at least its second run
    done = subprocess.run(
        ["bash", "-c", "source scripts/env.sh && python -c 'import cmrsdk._native, cmrsdk._normalize'"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "creating .venv" not in done.stderr
    assert "installing dependencies" not in done.stderr, "the stamp's hash changed between runs"
