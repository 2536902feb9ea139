"""Progress on long work: each phase segmented is told to a caller, and `cmrsdk segment` shows it
as a bar on a terminal (sweep 26: a large cine ran 3 min 48 s in silence)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline():
    pytest.importorskip("onnxruntime")
    from cmrsdk import DEMO_BUNDLE, Pipeline

    return Pipeline(DEMO_BUNDLE, mirroring=False)  # the progress calls are under test, not the masks


def test_each_phase_segmented_is_told_with_the_phases_planned(pipeline) -> None:
    from cmrsdk.phantom import cine_phantom

    study = cine_phantom(0, n_phases=2)
    told: list[tuple[int, int]] = []
    result = pipeline.segment_study(study, progress=lambda done, total: told.append((done, total)))
    assert told == [(1, 2), (2, 2)] and len(result.phases) == 2


def test_a_second_pass_adds_its_phases_to_those_planned(pipeline) -> None:
    """A cine whose ED is not its first phase is located again on its ED: twice its phases."""
    from cmrsdk.phantom import cine_phantom

    cine = cine_phantom(0, n_phases=5)
    late = replace(cine, phases=cine.phases[2:] + cine.phases[:2], ed_index=None, es_index=None)
    told: list[tuple[int, int]] = []
    result = pipeline.segment_study(late, progress=lambda done, total: told.append((done, total)))
    assert result.ed_index == 3  # the cine's first phase, stored fourth
    assert [d for d, _ in told] == list(range(1, 11))
    assert told[4] == (5, 5) and told[-1] == (10, 10)


def test_segment_shows_a_phase_bar_on_a_terminal_only(tmp_path: Path) -> None:
    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.io import write_dicom_series
    from cmrsdk.phantom import cine_phantom

    study = tmp_path / "cine"
    write_dicom_series(study, cine_phantom(0, n_phases=2))
    command = [sys.executable, "-m", "cmrsdk", "segment", str(study), "--bundle", str(DEMO_BUNDLE), "--no-overlay"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    outputs = []
    for n, terminal in enumerate((True, False)):
        args = [*command, "-o", str(tmp_path / f"out{n}")]
        if terminal:  # stderr a terminal, read while the command runs
            primary, secondary = pty.openpty()
            # a terminal 100 columns wide (a new pty has 0, where tqdm draws nothing)
            fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            child = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=secondary)
            os.close(secondary)
            chunks = []
            while True:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: the command ended and closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            os.close(primary)
            run = subprocess.CompletedProcess(args, child.wait(timeout=300))
            outputs.append(b"".join(chunks).decode(errors="replace"))
        else:
            run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, timeout=300)
            outputs.append(run.stderr.decode(errors="replace"))
        assert run.returncode == 0
    assert "segmenting" in outputs[0] and "phase" in outputs[0]
    assert "segmenting" not in outputs[1]
