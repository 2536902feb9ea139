"""``cmrsdk retrieve`` killed outright (SIGKILL, the OOM killer, power loss): the next retrieval
into the same ``-o`` removes the folders it left, and never those of a retrieval still running.

A retrieval holds an flock on ``owner.lock`` in its ``.STUDY.receiving-*`` folder for as long as
it runs; the kernel releases it when the process dies. Orthanc (a private one on free loopback ports) is the
PACS, a Sunnybrook cine (240 images) the study, so that a transfer lasts long enough to be cut.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from _dicom_node import ORTHANC, REPO, sunnybrook_files, wait_for

pytest.importorskip("pynetdicom")

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc (Debian package 'orthanc') is not installed")


def cli(capsys, *args: object) -> tuple[int, str, str]:
    """``cmrsdk ARGS`` in this process: exit status, stdout, stderr (a traceback appended)."""
    from cmrsdk.cli import main

    capsys.readouterr()
    try:
        rc, tb = main([str(a) for a in args]), ""
    except Exception:
        rc, tb = 1, traceback.format_exc()
    captured = capsys.readouterr()
    return rc, captured.out, captured.err + tb


def staged(out: Path) -> int:
    """Instances a retrieval into ``out`` has kept so far (not those being received)."""
    return sum(1 for p in out.glob(".*/**/*.dcm") if not p.name.startswith("."))


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def long_study(orthanc, shared_data) -> tuple[str, str]:
    """(PACS as AET@HOST:PORT, StudyInstanceUID) of a 240-image Sunnybrook cine in the PACS."""
    import pydicom

    source = shared_data / "sunnybrook" / "SCD0000101"
    if not source.is_dir():
        pytest.skip(f"Sunnybrook series not found at {source}")
    files = sunnybrook_files(source)
    orthanc.upload(files)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", study


def start_retrieve(peer: str, study: str, out: Path) -> subprocess.Popen:
    """``cmrsdk retrieve`` in a process of its own, returned once it has kept 10 instances."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cmrsdk", "retrieve", peer, "--study", study, "-o", str(out), "--timeout", "20"],
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: process.poll() is not None or staged(out) >= 10, 60, "10 instances staged")
    assert process.poll() is None, f"the retrieval ended before it was cut: {process.communicate()[1].decode()}"
    return process


@needs_orthanc
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the GE cine's UIDs, read here
def test_a_retrieve_killed_outright_leaves_a_folder_the_next_one_removes(long_study, tmp_path, capsys):
    from cmrsdk.serve.spool import uid_file_name

    peer, study = long_study
    out = tmp_path / "out"
    process = start_retrieve(peer, study, out)
    process.kill()  # SIGKILL: no handler runs, nothing is cleaned
    process.communicate(timeout=30)
    left = hidden(out)
    assert left and all(name.startswith(f".{uid_file_name(study)}.") for name in left), left
    rc, stdout, err = cli(capsys, "retrieve", peer, "--study", study, "-o", out, "--timeout", "20")
    assert rc == 0, err
    # the leftover is named, in one line, and gone; the study is complete beside nothing else
    removed = [line for line in err.splitlines() if "left by a retrieval killed outright" in line]
    assert removed == [
        f"{out}: removed {len(left)} folder{'s' * (len(left) > 1)} left by a retrieval killed outright: {', '.join(left)}"
    ]
    assert sorted(p.name for p in out.iterdir()) == [uid_file_name(study)]
    assert len(list((out / uid_file_name(study)).glob("*/*.dcm"))) == 240


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc/PID/stat)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")


@needs_orthanc
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_running_retrievals_folder_is_kept_and_it_ends_with_the_exists_error(long_study, tmp_path, capsys):
    """Two retrievals of one study into one folder at once: the second, started while the first
    is stopped (SIGSTOP) mid-transfer, leaves the first's folder as it is, and the first, let go
    on, ends with the "exists" error and leaves nothing."""
    from cmrsdk.serve.spool import uid_file_name

    peer, study = long_study
    out = tmp_path / "out"
    first = start_retrieve(peer, study, out)
    try:
        first.send_signal(signal.SIGSTOP)
        # stopped once the kernel says so: a file it wrote just after the signal failed the listing below
        wait_for(lambda: _stopped(first.pid), 10, "the first retrieval stopped")
        theirs = hidden(out)
        assert [name.split("-")[0] for name in theirs] == [
            f".{uid_file_name(study)}.{k}" for k in ("partial", "receiving")
        ]
        before = sorted(str(p.relative_to(out)) for name in theirs for p in (out / name).rglob("*"))
        rc, _, err = cli(capsys, "retrieve", peer, "--study", study, "-o", out, "--timeout", "20")
        assert rc == 0, err
        assert "killed outright" not in err
        assert sorted(p.name for p in out.iterdir()) == sorted([*theirs, uid_file_name(study)])
        assert sorted(str(p.relative_to(out)) for name in theirs for p in (out / name).rglob("*")) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate(timeout=60)
    assert first.returncode == 1, first_err.decode()
    target = out / uid_file_name(study)
    assert first_err.decode().splitlines()[-1] == (
        f"cmrsdk: error: {target} exists: the study was retrieved before (remove it to fetch it again)"
    )
    assert sorted(p.name for p in out.iterdir()) == [uid_file_name(study)]


# ---- the rule, without a PACS -------------------------------------------------------------------
def _owned_by_a_process(out: Path) -> tuple[subprocess.Popen, list[Path]]:
    """The partial and receiving folders of a retrieval of study 1.2.3, made as `retrieve_study`
    makes them, by another process that then waits."""
    code = (
        "import sys, tempfile, time; from pathlib import Path; from cmrsdk.serve.retrieve import _own\n"
        "incoming = Path(tempfile.mkdtemp(prefix='.1.2.3.receiving-', dir=sys.argv[1])); _own(incoming)\n"
        "staging = incoming.with_name(incoming.name.replace('receiving', 'partial')); staging.mkdir()\n"
        "(staging / '1.2.3.4').mkdir(); print(staging, incoming, flush=True); time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, [Path(p) for p in process.stdout.readline().split()]


def test_a_retrievals_folders_are_kept_while_it_lives_and_removed_once_it_is_killed(tmp_path):
    from cmrsdk.serve.retrieve import _remove_stale_work

    process, (staging, incoming) = _owned_by_a_process(tmp_path)
    try:
        assert (incoming / "owner.lock").is_file() and [p.name for p in staging.iterdir()] == ["1.2.3.4"]
        assert _remove_stale_work(tmp_path) == [] and staging.is_dir() and incoming.is_dir()
        # a second look, through another descriptor, finds it held too (flock is per open file)
        assert _remove_stale_work(tmp_path) == [] and staging.is_dir() and incoming.is_dir()
    finally:
        process.kill()  # SIGKILL: the kernel releases the lock
        process.wait(timeout=30)
    # at once, whatever their age; the lock's folder last
    assert _remove_stale_work(tmp_path) == [staging.name, incoming.name]
    assert list(tmp_path.iterdir()) == []


def test_folders_without_an_owner_are_removed_only_once_old_and_others_never(tmp_path):
    """0.14.6's folders (no owner.lock, each its own suffix), or one being made this instant,
    once older than the study writer's STALE_AFTER_S; entries that only look alike, symbolic
    links and files, never."""
    from cmrsdk.serve.retrieve import _remove_stale_work
    from cmrsdk.study import STALE_AFTER_S

    old = time.time() - STALE_AFTER_S - 60
    legacy = [tmp_path / ".1.2.3.partial-ab_cd123", tmp_path / ".1.2.3.receiving-x9y8z7w6"]
    (legacy[0] / "1.2.3.4").mkdir(parents=True)
    (legacy[0] / "1.2.3.4" / "1.2.3.4.5.dcm").write_bytes(b"kept so far")
    legacy[1].mkdir()
    (legacy[1] / ".receiving-0011223344556677.dcm").write_bytes(b"cut off")
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside.mkdir()
    (outside / "a.dcm").write_bytes(b"not ours")
    (tmp_path / ".1.2.3.partial-linktoel").symlink_to(outside, target_is_directory=True)
    (tmp_path / ".1.2.3.receiving-aplainfi").write_bytes(b"a file")
    others = [".1.2.3.partial-abc", ".cmrsdk-staging-12-abcdefgh", ".git", "1.2.3", ".1.2.3.partial-ABCDEFGH"]
    for name in others:
        (tmp_path / name).mkdir()
    fresh = tmp_path / ".4.5.6.receiving-12345678"  # being made: owner.lock not there yet
    fresh.mkdir()
    assert _remove_stale_work(tmp_path) == []
    for entry in [*legacy, fresh, *(tmp_path / name for name in others)]:
        os.utime(entry, (old, old))
    assert sorted(_remove_stale_work(tmp_path)) == sorted(p.name for p in [*legacy, fresh])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*others, ".1.2.3.partial-linktoel", ".1.2.3.receiving-aplainfi"]
    )
    assert (outside / "a.dcm").read_bytes() == b"not ours"
    assert _remove_stale_work(tmp_path / "missing") == []
