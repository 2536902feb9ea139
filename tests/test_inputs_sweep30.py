"""Hostile and broken inputs of sweep 30 (runs/redteam30/RESULTS.md, findings 2-4): symbolic links
that leave a study folder, entries that cannot be read, a deflated data set that inflates to
gigabytes, and three errors that named the wrong cause."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cmrsdk.cli import main
from cmrsdk.cohort import discover_studies
from cmrsdk.errors import CmrWarning, ReadError
from cmrsdk.io import read_dicom_study, read_study, write_dicom_series
from cmrsdk.io import _dataset as dataset_module
from cmrsdk.io._dataset import MAX_INFLATED_BYTES, read_dataset
from cmrsdk.io.dicom import MAX_SERIES_PIXELS
from cmrsdk.synth import synthetic_study


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep30") / "series"
    write_dicom_series(folder, synthetic_study(3, n_slices=4, shape=(40, 48), n_phases=3))
    return folder


def _copy(series: Path, target: Path) -> Path:
    shutil.copytree(series, target)
    return target


def _unreadable_entry(folder: Path, name: str) -> Path:
    """An entry of ``folder`` that cannot be looked at, even by root: a link into the working
    folder of process 1 (``/proc/1/cwd``); as another user, a folder without permissions."""
    entry = folder / name
    if os.geteuid() != 0:
        entry.mkdir()
        entry.chmod(0)
        return entry
    entry.symlink_to("/proc/1/cwd")
    try:
        os.stat(entry)
    except PermissionError:
        return entry
    pytest.skip("root may look into /proc/1/cwd here: no entry that root cannot read")


def _cmrsdk_lines(text: str, kind: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"cmrsdk: {kind}:")]


# -- finding 3: links that leave the folder given -------------------------------------------------


def test_a_study_folder_linking_to_the_root_and_its_parent_segments_only_its_own_files(
    series: Path, routing_bundle: Path, tmp_path: Path, capsys
) -> None:
    """``root -> /`` walked the whole file system; ``up -> ..`` read a sibling study's images."""
    study = _copy(series, tmp_path / "study")
    write_dicom_series(tmp_path / "sibling", synthetic_study(5, n_slices=4, shape=(40, 48), n_phases=3))
    (study / "root").symlink_to("/")
    (study / "up").symlink_to("..")
    out = tmp_path / "out"
    started = time.perf_counter()
    assert main(["segment", str(study), "-o", str(out), "--bundle", str(routing_bundle), "--no-report-html"]) == 0
    assert time.perf_counter() - started < 60
    err = capsys.readouterr().err
    assert "Traceback" not in err
    said = [line for line in _cmrsdk_lines(err, "warning") if "symbolic link" in line]
    assert len(said) == 1, err
    assert f"{study / 'root'}: a symbolic link to '/', a folder that holds {study}: not followed" in said[0]
    assert said[0].endswith("; 1 more such link(s) skipped")
    report = json.loads((out / "report.json").read_text())
    assert report["study"]["series_uid"] == pydicom.dcmread(next(series.glob("*.dcm"))).SeriesInstanceUID
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        read = read_dicom_study(study)
    assert all(Path(f).parent == study for s in read.phases for f in s.source_files)


def test_links_inside_the_folder_keep_working_and_loops_stay_harmless(series: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    _copy(series, study / "cine")
    (study / "link_to_cine").symlink_to("cine", target_is_directory=True)  # the same folder twice
    (study / "loop").symlink_to(".", target_is_directory=True)
    (study / "a").symlink_to("b")
    (study / "b").symlink_to("a")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)  # nothing passed over is said
        read = read_dicom_study(study)
    direct = read_dicom_study(series)
    assert len(read.phases) == len(direct.phases) == 3
    for a, b in zip(read.phases, direct.phases):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert all(Path(f).parent == study / "cine" for f in a.source_files)


# -- finding 4: entries that cannot be read -------------------------------------------------------


def test_an_entry_that_cannot_be_read_is_one_warning_not_a_traceback(
    series: Path, routing_bundle: Path, tmp_path: Path, capsys
) -> None:
    """``sub -> /proc/1/cwd`` raised PermissionError from expand_inputs (dispatch.py:77)."""
    study = _copy(series, tmp_path / "study")
    sub = _unreadable_entry(study, "sub")
    out = tmp_path / "out"
    assert main(["segment", str(study), "-o", str(out), "--bundle", str(routing_bundle), "--no-report-html"]) == 0
    err = capsys.readouterr().err
    said = [line for line in _cmrsdk_lines(err, "warning") if "cannot be read" in line]
    assert said == [f"cmrsdk: warning: {sub}: cannot be read (permission denied): skipped"], err
    assert (out / "report.json").is_file()


def test_a_folder_with_nothing_readable_is_one_error(tmp_path: Path, capsys) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "notes.txt").write_text("no images")
    sub = _unreadable_entry(study, "sub")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)  # said in the error, once
        with pytest.raises(
            ReadError,
            match=rf"no DICOM image files found .*{re.escape(str(sub))}: cannot be read \(permission denied\)",
        ):
            read_dicom_study(study)
    assert main(["segment", str(study), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    errors = _cmrsdk_lines(err, "error")
    assert "Traceback" not in err and len(errors) == 1, err
    assert errors[0].endswith(f"{sub}: cannot be read (permission denied): skipped")


def test_an_input_that_cannot_be_read_is_one_error(tmp_path: Path, capsys) -> None:
    """``cmrsdk segment /proc/1/cwd`` raised PermissionError from the command's own check."""
    given = _unreadable_entry(tmp_path, "given")
    assert main(["segment", str(given), "-o", str(tmp_path / "out")]) == 1
    assert main(["inspect", str(given)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _cmrsdk_lines(err, "error") == [f"cmrsdk: error: {given}: cannot be read (permission denied)"] * 2, err


def test_batch_discovery_skips_what_it_cannot_read_and_links_that_go_round(series: Path, tmp_path: Path) -> None:
    """``cohort/s2 -> /proc/1/cwd`` raised PermissionError from discover._walk (discover.py:119);
    a cohort of links to studies elsewhere is still found."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "s1").symlink_to(series)  # a study elsewhere: followed
    _unreadable_entry(cohort, "s2")
    (cohort / "up").symlink_to("..")  # holds the cohort: walking it would go round
    (cohort / "root").symlink_to("/")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        studies = discover_studies([cohort])
    assert [(s.study_id, s.skip_reason) for s in studies] == [("s1", None)]
    said = [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]
    assert len(said) == 2, said
    assert any(m.startswith(f"{cohort / 'root'}: a symbolic link to '/'") for m in said)
    assert any(m.startswith(f"{cohort / 's2'}: cannot be read (permission denied)") for m in said)


# -- finding 2: a deflated data set that inflates to gigabytes ------------------------------------


def _deflated_bomb(source: Path, target: Path, inflated: int) -> Path:
    """``source`` with a private OB element of ``inflated`` zero bytes, in Deflated Explicit VR
    Little Endian: a few hundred KB on disk."""
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(target, enforce_file_format=True)
    raw = target.read_bytes()
    with open(target, "rb") as f:  # where the deflated data set starts: after the file meta
        read_preamble(f, False)
        _read_file_meta_info(f)
        start = f.tell()
    body = zlib.decompress(raw[start:], -zlib.MAX_WBITS)
    at = body.index(struct.pack("<HH", 0x0010, 0x0010))  # before PatientName: tags stay in order
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"BOMB"
    element = struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, inflated)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = bytes(1 << 24)
    head = deflate.compress(body[:at] + creator + element) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(piece) + deflate.flush(zlib.Z_FULL_FLUSH)  # no reference back: repeatable
    tail = deflate.compress(bytes(inflated % len(piece)) + body[at:]) + deflate.flush()
    target.write_bytes(raw[:start] + head + block * (inflated // len(piece)) + tail)
    return target


def test_a_deflate_bomb_is_refused_quickly_naming_the_limit(series: Path, tmp_path: Path) -> None:
    """A 2 MB file of a 2 GiB private element cost `segment` 4.3 GB and 38 s."""
    assert MAX_INFLATED_BYTES == 2 * MAX_SERIES_PIXELS  # the largest series the reader takes, 16-bit
    bomb = _deflated_bomb(sorted(series.glob("*.dcm"))[0], tmp_path / "bomb.dcm", MAX_INFLATED_BYTES + (64 << 20))
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(
            ReadError, match=rf"^{re.escape(str(bomb))}: its deflated data set .* inflates to more than 800000000 bytes"
        ):
            read_dataset(bomb, stop_before_pixels=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 20
    assert peak < 50 << 20, peak


def test_a_deflate_bomb_in_a_study_folder_is_the_studys_one_error(series: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dataset_module, "MAX_INFLATED_BYTES", 1 << 20)  # a small bomb, quickly
    study = _copy(series, tmp_path / "study")
    _deflated_bomb(sorted(series.glob("*.dcm"))[0], study / "zz_bomb.dcm", 2 << 20)
    bomb = re.escape(str(study / "zz_bomb.dcm"))
    with pytest.raises(ReadError, match=rf"^{bomb}: its deflated data set .* more than 1048576 bytes, over the limit"):
        read_dicom_study(study)


def test_a_deflated_series_reads_as_its_explicit_vr_files(series: Path, tmp_path: Path) -> None:
    deflated = tmp_path / "deflated"
    deflated.mkdir()
    for f in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(deflated / f.name, enforce_file_format=True)
    assert pydicom.dcmread(next(deflated.glob("*.dcm"))).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    read, direct = read_dicom_study(deflated), read_dicom_study(series)
    assert len(read.phases) == len(direct.phases)
    for a, b in zip(read.phases, direct.phases):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.affine, b.affine)


# -- errors that named the wrong cause ------------------------------------------------------------


def test_a_negative_nifti_dimension_is_named(tmp_path: Path) -> None:
    """It was "OverflowError: memory mapped length must be positive"."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((8, 6, 3))
    block = bytearray(header.binaryblock + b"\0\0\0\0")
    struct.pack_into("<8h", block, 40, 3, 8, -6, 3, 1, 1, 1, 1)
    path = tmp_path / "negative.nii"
    path.write_bytes(bytes(block) + bytes(8 * 6 * 3 * 2))
    with pytest.raises(ReadError, match=r"NIfTI header 'dim' declares 8 x -6 x 3 voxels; every side must be 1 or more"):
        read_study(path)


def test_a_sequence_nested_too_deeply_is_said_so(series: Path, tmp_path: Path) -> None:
    """It ended "(RecursionError ...); truncated file?"."""
    study = _copy(series, tmp_path / "study")
    first = sorted(study.glob("*.dcm"))[0]
    raw = first.read_bytes()
    sequence = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF)
    item, item_end = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF), struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    depth = 5000
    nested = (sequence + item) * depth + (item_end + sequence_end) * depth
    at = raw.index(struct.pack("<HH", 0x0010, 0x0010) + b"PN")
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"DEEP"
    first.write_bytes(raw[:at] + creator + nested + raw[at:])
    with pytest.raises(ReadError, match=r"sequences are nested too deeply") as error:
        read_dicom_study(study)
    assert "truncated" not in str(error.value)


def test_a_file_that_cannot_be_opened_is_said_so() -> None:
    """It ended "(PermissionError ...); truncated file?"."""
    path = Path("/proc/1/environ")
    try:
        path.read_bytes()
    except PermissionError:
        pass
    else:
        pytest.skip("root may read /proc/1/environ here")
    with pytest.raises(ReadError, match=r"^/proc/1/environ: cannot be read \(permission denied\)$"):
        read_study(path)


def test_inspect_says_a_link_not_followed_once(series: Path, tmp_path: Path, capsys) -> None:
    """Sweep 34: `cmrsdk inspect` walked the folder twice (the study, then its series list) and
    printed the warning for ``up -> ..`` twice."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "cine").symlink_to(series, target_is_directory=True)  # a series linked in from elsewhere: read
    (study / "up").symlink_to("..")
    assert main(["inspect", str(study)]) == 0
    captured = capsys.readouterr()
    assert len([line for line in captured.err.splitlines() if "not followed" in line]) == 1, captured.err
    described = json.loads(captured.out)
    assert described["phases"] == 3 and len(described["warnings"]) == 1
