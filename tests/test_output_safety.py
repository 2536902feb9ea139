"""Output folders under races, interrupts, kills and full disks: an earlier result is never lost,
nothing is left beside it, and a failure is one cmrsdk error naming the file the user looks for."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from cmrsdk import study as study_module
from cmrsdk.errors import WriteError
from cmrsdk.io._atomic import atomic_path


def _result(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "report.json").write_text(text)
    return folder


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def _renames(monkeypatch, hook) -> None:
    """Run ``hook(source, target)`` before every os.rename, as another process would act between calls."""
    real = os.rename

    def rename(source, target):
        hook(Path(source), Path(target))
        return real(source, target)

    monkeypatch.setattr(os, "rename", rename)


def test_a_writer_that_loses_the_race_for_its_folder_gets_a_write_error(tmp_path: Path, monkeypatch) -> None:
    """Another run's complete result lands at OUT between this run's two renames: it was a raw
    `OSError [Errno 39] Directory not empty` with the earlier result left retired beside OUT."""
    out = _result(tmp_path / "OUT", "earlier")
    staging = _result(tmp_path / ".cmrsdk-staging-1-abcd1234", "this run")
    other = _result(tmp_path / "other", "other run")

    def other_run_wins(source: Path, target: Path) -> None:
        if source == staging and target == out:
            shutil.copytree(other, out)

    _renames(monkeypatch, other_run_wins)
    with pytest.raises(WriteError, match=rf"^{out}: output folder was written by another run at the same time"):
        study_module._replace_folder(staging, out)
    monkeypatch.undo()
    shutil.rmtree(staging)  # segment_one's `finally` removes it
    assert _contents(out) == {"report.json": "other run"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT", "other"]


def test_an_interrupt_between_the_two_renames_puts_the_earlier_result_back(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C just after OUT was retired: OUT was absent, the earlier result sat in a retired folder."""
    out = _result(tmp_path / "OUT", "earlier")
    staging = _result(tmp_path / ".cmrsdk-staging-1-abcd1234", "this run")
    real = os.rename

    def interrupted_after_retiring(source, target):
        real(source, target)
        if Path(source) == out:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", interrupted_after_retiring)
    with pytest.raises(KeyboardInterrupt):
        study_module._replace_folder(staging, out)
    monkeypatch.undo()
    assert _contents(out) == {"report.json": "earlier"}
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["OUT", staging.name])  # the staging folder: segment_one's `finally` removes it


def test_the_stale_clean_up_restores_a_killed_swap_and_removes_probes(tmp_path: Path) -> None:
    """A SIGKILL between the renames left the earlier result retired with OUT absent; the clean-up
    deleted it an hour later, and never removed the probe folders interrupts left."""
    dead, live = 999999999, os.getpid()
    kept = _result(tmp_path / "KEPT", "newer")
    retired = _result(tmp_path / f".cmrsdk-replaced-{dead}-abcd1234-OUT", "earlier")
    superseded = _result(tmp_path / f".cmrsdk-replaced-{dead}-abcd1234-KEPT", "older")
    probe = tmp_path / f".cmrsdk-probe-{dead}-k2j9xq_w"
    probe.mkdir()
    running = _result(tmp_path / f".cmrsdk-replaced-{live}-abcd1234-MINE", "a live run's")
    fresh_probe = tmp_path / f".cmrsdk-probe-{dead}-freshone"
    fresh_probe.mkdir()
    for entry in (retired, superseded, probe, running):
        os.utime(entry, (time.time() - 7200, time.time() - 7200))
    study_module._remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["OUT", "KEPT", running.name, fresh_probe.name])
    assert _contents(tmp_path / "OUT") == {"report.json": "earlier"} and _contents(kept) == {"report.json": "newer"}


def test_the_retired_name_says_whose_folder_it_is_within_the_name_limit(tmp_path: Path) -> None:
    name = study_module._retired_path(tmp_path / "OUT").name
    assert name.startswith(f".cmrsdk-replaced-{os.getpid()}-") and name.endswith("-OUT")
    assert study_module._TRANSIENT_NAME.match(name).group(3) == "OUT"
    long_name = study_module._retired_path(tmp_path / ("L" * 240)).name
    assert len(long_name) <= 255 and study_module._TRANSIENT_NAME.match(long_name).group(3) is None


def test_a_full_disk_is_one_line_naming_the_system_error(tmp_path: Path) -> None:
    """pydicom re-raises the write's OSError with its tag and a whole traceback in the message."""
    from pydicom.tag import Tag, tag_in_exception

    target = tmp_path / "seg_ED.dcm"
    with pytest.raises(WriteError) as caught, atomic_path(target) as temporary:
        temporary.write_bytes(b"partial")
        with tag_in_exception(Tag(0x7FE00010)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temporary))
    assert str(caught.value) == f"{target}: could not be written (OSError: [Errno 28] No space left on device)"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WriteError, match=rf"^{target}: could not be written \(ValueError: first line\)$"):
        with atomic_path(target):
            raise ValueError("first line\nsecond line")


def test_a_write_error_names_the_output_folder_not_the_staging_one(shared_data: Path, tmp_path: Path, monkeypatch):
    """It named `.cmrsdk-staging-<pid>-<hex>/report.json`, a folder gone by the time the user looks."""
    import cmrsdk.io
    from cmrsdk import DEMO_BUNDLE, Pipeline

    def disk_full(path, report):
        with atomic_path(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cmrsdk.io, "write_json", disk_full)
    out = tmp_path / "out"
    source = shared_data / "acdc/training/patient001/patient001_frame01.nii.gz"
    pipeline = Pipeline(DEMO_BUNDLE, mode="baseline")
    with pytest.raises(WriteError) as caught:
        study_module.segment_one(pipeline, source, out, overlay=False, report_html=False)
    assert str(caught.value) == f"{out}/report.json: could not be written (OSError: [Errno 28] No space left on device)"
    assert list(tmp_path.iterdir()) == []


def test_batch_workers_segment_under_the_batch_output(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    """Workers segmented in the system's temporary folder: a killed batch left patient data there
    (/tmp/cmrsdk-batch-*, /tmp/.cmrsdk-staging-*) that nothing cleared; under OUT/.tmp the next batch does."""
    from _cohort import InProcess

    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.cohort import worker as worker_module
    from cmrsdk.cohort.batch import run_batch
    from cmrsdk.cohort.discover import StudySource
    from cmrsdk.cohort.worker import PipelineSpec

    system_temp = tmp_path / "system-tmp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    out = tmp_path / "out"
    left = out / ".tmp" / ".worker-killed" / ".cmrsdk-staging-999999999-abcd1234"  # a killed batch's
    left.mkdir(parents=True)
    (left / "labels_ED.nii.gz").write_bytes(b"patient data")
    places: list[Path] = []
    real = worker_module.segment_study

    def segment_study(pipeline, source, out_dir, **kwargs):
        places.append(out_dir)
        return real(pipeline, source, out_dir, **kwargs)

    monkeypatch.setattr(worker_module, "segment_study", segment_study)
    spec = PipelineSpec(bundle=str(DEMO_BUNDLE), mode="baseline", overlay=False, report_html=False)
    source = shared_data / "acdc/training/patient001/patient001_frame01.nii.gz"
    summary = run_batch(
        [StudySource("p1", str(source))], spec, out, InProcess(spec, 1, 1), progress=False, figure=False
    )
    assert summary.count("ok") == 1, summary.rows
    assert [p.parent for p in places] == [(out / ".tmp").absolute()]
    # the killed batch's leftovers cleared, and the scratch itself once the workers stopped (sweep 26)
    assert not (out / ".tmp").exists() and list(system_temp.iterdir()) == []
    assert (out / "studies" / "p1" / "report.json").is_file()


def test_segment_one_names_a_pipeline_or_source_of_the_wrong_kind(tmp_path: Path) -> None:
    """Sweep 10: a path for the pipeline gave AttributeError, a Study for the source a TypeError
    from pathlib; each is one InputError naming the argument, before any folder is made."""
    from cmrsdk.errors import InputError
    from cmrsdk.study import segment_one
    from cmrsdk.synth import synthetic_study

    with pytest.raises(InputError, match=r"^'pipeline' must be a loaded cmrsdk.Pipeline .*got str$"):
        segment_one("some/bundle", tmp_path / "a.nii.gz", tmp_path / "out")  # type: ignore[arg-type]

    class Segmenter:  # anything with segment_study passes the first check
        def segment_study(self, study):  # pragma: no cover - never reached
            raise AssertionError

    with pytest.raises(InputError, match=r"^'source' must be the path of a study .*got Study; .*segment_study"):
        segment_one(Segmenter(), synthetic_study(seed=0), tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_another_users_output_folder_is_one_line_before_any_work(tmp_path: Path, monkeypatch) -> None:
    """Sweep 20: a second user meeting the first one's results got tracebacks (an unreadable
    folder, the batch's lock) or segmented a whole study before a refused rename. Now each is one
    cmrsdk error before any work. Run as root here, so the refusals are the system's answers
    replayed: an unreadable folder, a lock file not ours, a folder of another user in /tmp-like
    shared space."""
    from cmrsdk.cohort.journal import LOCK_NAME, Journal

    theirs = _result(tmp_path / "theirs", "{}")
    real_iterdir = Path.iterdir

    def refused(self):
        if self == theirs:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refused)
    with pytest.raises(WriteError, match="output folder cannot be read .Permission denied"):
        study_module.check_output_folder(theirs)
    monkeypatch.undo()

    real_open = os.open

    def lock_refused(path, *args, **kwargs):
        if Path(path).name == LOCK_NAME:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", lock_refused)
    with pytest.raises(WriteError, match=f"cannot be written .Permission denied: {LOCK_NAME}"):
        Journal(tmp_path / "batch")
    monkeypatch.undo()

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky, as /tmp
    other = _result(shared / "study", "{}")
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root (the parts above ran)")
    os.chown(other, 4321, 4321)
    monkeypatch.setattr(os, "geteuid", lambda: 1234)  # neither the folder's user nor the shared folder's
    with pytest.raises(WriteError, match="belongs to another user in a shared folder"):
        study_module.check_output_folder(other)
    monkeypatch.setattr(os, "geteuid", lambda: 4321)  # its own user may replace it
    assert study_module.check_output_folder(other) == other
