"""ZIP archives of a study: `cmrsdk segment` and `inspect` unpack them; bad archives get one error."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from cmrsdk.cli import main
from cmrsdk.errors import ReadError
from cmrsdk.io import inspect, read_study, write_dicom_series
from cmrsdk.io import archive as archive_module
from cmrsdk.io.archive import unpacked
from cmrsdk.synth import synthetic_study

FAST = ["--mode", "baseline", "--no-overlay", "--no-report-html"]


def _zip(folder: Path, target: Path, *, top: str | None = None) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                name = file.relative_to(folder).as_posix()
                archive.write(file, f"{top}/{name}" if top else name)
    return target


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zip") / "series"
    write_dicom_series(folder, synthetic_study(seed=2, n_slices=6, shape=(64, 64), n_phases=2))
    return folder


def test_a_zipped_dicom_series_segments_as_the_folder(series: Path, tmp_path: Path, capsys) -> None:
    assert main(["segment", str(series), "-o", str(tmp_path / "folder"), *FAST]) == 0
    archive = _zip(series, tmp_path / "study.zip", top="SAX cine")  # one top folder, as portals zip
    assert main(["segment", str(archive), "-o", str(tmp_path / "zipped"), *FAST]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    folder = json.loads((tmp_path / "folder" / "report.json").read_text())
    zipped = json.loads((tmp_path / "zipped" / "report.json").read_text())
    assert zipped["measures"] == folder["measures"] and zipped["outputs"] == folder["outputs"]
    assert zipped["study"]["source"] == str(archive)
    assert all(p["source"].startswith(f"{archive}!") for p in zipped["phases"])
    assert not any("cmrsdk-zip-" in w for w in zipped["warnings"])
    assert sorted(p.name for p in (tmp_path / "zipped").iterdir()) == sorted(folder["outputs"])
    report = inspect(archive)
    assert report["archive"] is True and report["path"] == str(archive) and report["slices"] == 6
    with pytest.raises(ReadError, match=r"study\.zip: a ZIP archive: read what"):
        read_study(archive)
    from cmrsdk.io import expand_inputs

    assert expand_inputs(tmp_path) != [archive]  # the outputs are folders beside it: not a folder of archives
    (tmp_path / "archives").mkdir()
    archive.rename(tmp_path / "archives" / "a.zip")
    _zip(series, tmp_path / "archives" / "b.zip")
    assert expand_inputs(tmp_path / "archives") == [tmp_path / "archives" / n for n in ("a.zip", "b.zip")]
    from cmrsdk.cli import study_folder_names

    assert study_folder_names(expand_inputs(tmp_path / "archives")) == ["a", "b"]


def test_the_folder_is_removed_and_members_cannot_climb_out(series: Path, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("../../escaped.dcm", b"not dicom")
        out.writestr("/abs/escaped2.dcm", b"not dicom")
        out.writestr("inner/a.dcm", b"x")
    with unpacked(archive) as readable:
        folder = readable.folder
        assert folder is not None and readable.path == folder
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
            "abs/escaped2.dcm",
            "escaped.dcm",
            "inner/a.dcm",
        ]
    assert not folder.exists()
    assert not (tmp_path.parent / "escaped.dcm").exists()


def test_bad_archives_are_refused_with_one_error(series: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    text = tmp_path / "text.zip"
    text.write_text("not a zip at all")
    with pytest.raises(ReadError, match=r"text\.zip: not a readable ZIP archive"), unpacked(text):
        pass
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(ReadError, match=r"empty\.zip: the ZIP archive holds no files"), unpacked(empty):
        pass
    archive = _zip(series, tmp_path / "study.zip")
    monkeypatch.setattr(archive_module, "MAX_MEMBERS", 5)
    with pytest.raises(ReadError, match=r"holds 12 files, over the limit of 5"), unpacked(archive):
        pass
    monkeypatch.setattr(archive_module, "MAX_MEMBERS", 100)
    monkeypatch.setattr(archive_module, "MAX_UNPACKED_BYTES", 1000)
    with pytest.raises(ReadError, match=r"unpacks to \d+ bytes, over the limit of 1000 \(refused before unpacking\)"):
        with unpacked(archive):
            pass
    monkeypatch.undo()
    # a member whose bytes were damaged in transit fails its CRC, named
    data = bytearray(archive.read_bytes())
    damaged = tmp_path / "damaged.zip"
    info = zipfile.ZipFile(archive).infolist()[3]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ReadError, match=rf"damaged\.zip: member '{info.filename}' cannot be unpacked"):
        with unpacked(damaged):
            pass
    # through the command line: one error line naming the archive, nothing left behind
    assert main(["segment", str(damaged), "-o", str(tmp_path / "out"), *FAST]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cmrsdk: error:")]
    assert len(errors) == 1 and "damaged.zip" in errors[0] and "cmrsdk-zip-" not in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_errors_inside_the_archive_name_the_member(series: Path, tmp_path: Path) -> None:
    import pydicom

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(file)
        if file == sorted(series.glob("*.dcm"))[2]:
            del ds.ImageOrientationPatient
        ds.save_as(broken / file.name)
    archive = _zip(broken, tmp_path / "broken.zip")
    with pytest.raises(ReadError, match=rf"^{tmp_path}/broken\.zip!\S+\.dcm: 'ImageOrientationPatient'") as caught:
        with unpacked(archive) as readable:
            read_study(readable.path)
    assert caught.value.path.startswith(f"{archive}!")


def test_unpacking_removes_what_killed_runs_left_and_nothing_else(tmp_path: Path, monkeypatch) -> None:
    """A SIGKILL mid-study leaves its unpacked study (patient data) in the temporary folder: the
    next unpacking deletes it once stale and its process gone; a live or fresh one stays."""
    import os
    import tempfile
    import time

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    dead_old, dead_fresh, live_old, unknown_old, other = (
        temp / "cmrsdk-zip-999999999-abcd1234",
        temp / "cmrsdk-zip-999999998-abcd1234",
        temp / f"cmrsdk-zip-{os.getpid()}-abcd1234",
        temp / "cmrsdk-zip-k2j9xq1w",  # named by an earlier cmrsdk, without the process
        temp / "someone-else",
    )
    for folder in (dead_old, dead_fresh, live_old, unknown_old, other):
        (folder / "IM0001.dcm").parent.mkdir()
        (folder / "IM0001.dcm").write_bytes(b"patient data")
    for folder in (dead_old, live_old, unknown_old, other):
        os.utime(folder, (time.time() - 7200, time.time() - 7200))
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("a.dcm", b"x")
    with unpacked(archive) as readable:
        assert readable.folder is not None and readable.folder.parent == temp
        assert readable.folder.name.startswith(f"cmrsdk-zip-{os.getpid()}-")
        assert sorted(p.name for p in temp.iterdir()) == sorted(
            [readable.folder.name, dead_fresh.name, live_old.name, other.name]
        )
    assert sorted(p.name for p in temp.iterdir()) == sorted([dead_fresh.name, live_old.name, other.name])


def test_no_writable_temporary_folder_is_one_line(series: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Sweep 20: with /tmp read-only and no TMPDIR, a ZIP study ended in "unexpected
    FileNotFoundError ... (please report this)"; an aoti bundle in a traceback, and with a bad
    TMPDIR its error blamed the .pt2 package. Now each names the temporary folder."""
    import tempfile

    from cmrsdk.engines.aoti import aoti_missing

    target = _zip(series, tmp_path / "study.zip")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no such folder"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no such folder"))
    with pytest.raises(ReadError, match="cannot be unpacked: no writable temporary folder .* set TMPDIR"):
        with unpacked(target):
            pass
    assert main(["inspect", str(target)]) != 0
    assert "no writable temporary folder" in capsys.readouterr().err
    if __import__("importlib").util.find_spec("torch") is not None:
        assert "no writable temporary folder (TMPDIR=" in str(aoti_missing("cpu"))


@pytest.mark.parametrize("name, kind", [("disc.tar", "tar"), ("disc.tar.gz", "tar"), ("disc.7z", "7-Zip")])
def test_an_archive_other_than_zip_is_named_not_searched(tmp_path, name, kind):
    """A disc sent as a tarball got "no DICOM image files found (1 files searched)" (sweep 39)."""
    import tarfile

    archive = tmp_path / name
    if name.startswith("disc.tar"):
        (tmp_path / "IM000000").write_bytes(b"\0" * 132)
        with tarfile.open(archive, "w:gz" if name.endswith(".gz") else "w") as tar:
            tar.add(tmp_path / "IM000000", arcname="DICOM/IM000000")
    else:
        archive.write_bytes(b"7z\xbc\xaf\x27\x1c" + b"\0" * 64)
    with pytest.raises(ReadError, match=rf"{name}: a {kind} archive is not read \(ZIP archives are\)"):
        read_study(archive)
    with pytest.raises(ReadError, match=rf"{name}: a {kind} archive is not read"):
        read_study(tmp_path)  # in a folder too
