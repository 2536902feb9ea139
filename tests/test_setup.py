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


def test_the_sdist_holds_the_native_core_sources(tmp_path: Path) -> None:
    """`python -m build` makes the wheel from the sdist: every file of csrc/ must travel in it
    (without MANIFEST.in it lacked normalize.pyx and two headers, and the wheel failed to build).
    The sdist is made from the last commit (`git archive HEAD`), as a clean clone holds it."""
    import sys
    import tarfile

    tree = tmp_path / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    code = "from setuptools import build_meta; print(build_meta.build_sdist('dist'))"
    run = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    with tarfile.open(tree / "dist" / run.stdout.strip().splitlines()[-1]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    listed = subprocess.run(["git", "ls-files", "csrc"], cwd=ROOT, capture_output=True, text=True, check=True)
    sources = set(listed.stdout.split())
    assert sources and sources <= names, sorted(sources - names)
    assert "LICENSE" in names
