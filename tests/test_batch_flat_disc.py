"""`cmrsdk batch` on a patient disc: two studies' DICOM files in one flat folder beside a DICOMDIR,
a viewer program's folder and a folder of exported pictures.

The disc is built from the two Sunnybrook cines (SCD0000101 and SCD0000201, one StudyInstanceUID
each): their 500 files renamed I0000001... into one folder DICOM/, indexed by a DICOMDIR that
pydicom's FileSet reads back. Before 0.14.7 the batch gave one "failed" row for DICOM/ (the reader
refuses short-axis cines of two studies) and a "skipped" row each for VIEWER/ and JPEG/; now one
"ok" row per study, each measured from its own files alone, and none for the disc's own folders.

The same folder zipped (a portal's download) gives the same two entries, each read among its own
study's series (``study_uid``). One batch (demo bundle, baseline mode, no mirroring: about 15 s a study here) serves the
batch tests; the rest read headers only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from cmrsdk import DEMO_BUNDLE
from cmrsdk.cli import main
from cmrsdk.cohort.discover import discover_studies
from cmrsdk.cohort.worker import content_sha256, inputs_fingerprint
from cmrsdk.errors import CmrWarning

pydicom = pytest.importorskip("pydicom")

# Sunnybrook's UIDs have components with leading zeros, its dates day 00: pydicom says so for every file it reads
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

SERIES = ("SCD0000101", "SCD0000201")
#: StudyInstanceUID of each (PatientID = the series' name)
UIDS = {
    "SCD0000101": "2.16.124.113543.6006.99.08980635789900778171",
    "SCD0000201": "2.16.124.113543.6006.99.3472875239763566864",
}
FILES = {"SCD0000101": 240, "SCD0000201": 260}
FAST = ["--mode", "baseline", "--no-mirroring", "--no-overlay", "--no-report-html"]
#: what `cmrsdk batch` gives each study read from its own folder with FAST (measured at 0.14.7 on
#: the Sunnybrook folders themselves): the flat folder must give each study these, not a mix
ALONE = {
    "SCD0000101": {"lvef_pct": 31.68, "lvedv_ml": 186.565, "heart_rate_bpm": 79.0},
    "SCD0000201": {"lvef_pct": 29.908, "lvedv_ml": 268.864, "heart_rate_bpm": 86.0},
}


def _record(kind: str, header, keywords: tuple[str, ...], **values) -> object:
    """One directory record of a DICOMDIR: its type, ``keywords`` copied from ``header``, ``values``."""
    from pydicom.dataset import Dataset

    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    for keyword in keywords:
        setattr(record, keyword, header.get(keyword) or "1")  # a STUDY record needs a StudyID: Sunnybrook's is empty
    for keyword, value in values.items():
        setattr(record, keyword, value)
    return record


def _flat_dicomdir(disc: Path, originals: list[Path]) -> None:
    """The ``originals`` copied into ``disc``/DICOM as I0000001... and indexed by a DICOMDIR at ``disc``
    (PATIENT, STUDY, SERIES and IMAGE records, linked by their offsets, as pydicom's FileSet reads them)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

    (disc / "DICOM").mkdir(parents=True)
    top: list = []  # (record, its lower level's [(record, ...)]): patients, their studies, series, images
    made: dict = {}

    def lower(key: tuple[str, str], level: list, header, keywords: tuple[str, ...]) -> list:
        if key not in made:
            made[key] = (_record(key[0], header, keywords), [])
            level.append(made[key])
        return made[key][1]

    for number, path in enumerate(originals, start=1):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        name = f"I{number:07d}"
        shutil.copyfile(path, disc / "DICOM" / name)
        studies = lower(("PATIENT", header.PatientID), top, header, ("PatientID", "PatientName"))
        study = ("StudyDate", "StudyTime", "StudyID", "StudyInstanceUID", "AccessionNumber")
        series = lower(("STUDY", header.StudyInstanceUID), studies, header, study)
        images = lower(
            ("SERIES", header.SeriesInstanceUID), series, header, ("Modality", "SeriesInstanceUID", "SeriesNumber")
        )
        image = _record(
            "IMAGE",
            header,
            ("InstanceNumber",),
            ReferencedFileID=["DICOM", name],
            ReferencedSOPClassUIDInFile=header.SOPClassUID,
            ReferencedSOPInstanceUIDInFile=header.SOPInstanceUID,
            ReferencedTransferSyntaxUIDInFile=header.file_meta.TransferSyntaxUID,
        )
        images.append((image, []))
    # depth first; each level's records chained by their "next" offset, a record's first child its "lower"
    records: list = []
    links: list[list[int | None]] = []  # per record: the index of its next, of its lower

    def place(level: list) -> int:
        first, previous = len(records), None
        for record, children in level:
            here = len(records)
            records.append(record)
            links.append([None, None])
            if previous is not None:
                links[previous][0] = here
            if children:
                links[here][1] = place(children)
            previous = here
        return first

    place(top)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(disc / "DICOMDIR"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "PATIENT_CD"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = records
    roots = [i for i, r in enumerate(records) if r.DirectoryRecordType == "PATIENT"]
    for _ in range(2):  # the offsets are 4-byte values: the second pass writes the same lengths
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        tells = [r.seq_item_tell for r in pydicom.dcmread(io.BytesIO(buffer.getvalue())).DirectoryRecordSequence]
        for record, (following, first_lower) in zip(records, links):
            record.OffsetOfTheNextDirectoryRecord = 0 if following is None else tells[following]
            record.OffsetOfReferencedLowerLevelDirectoryEntity = 0 if first_lower is None else tells[first_lower]
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = tells[roots[0]]
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = tells[roots[-1]]
    ds.save_as(disc / "DICOMDIR", enforce_file_format=True)


def _disc_extras(disc: Path) -> None:
    """What a disc carries besides the images: a viewer program, exported pictures, an autorun file."""
    (disc / "VIEWER").mkdir()
    (disc / "VIEWER" / "VIEWER.EXE").write_bytes(b"MZ\x90\x00" + bytes(range(256)) * 8)
    (disc / "VIEWER" / "DCMTK.DLL").write_bytes(b"MZ\x90\x00" + b"\x00" * 1000)
    (disc / "VIEWER" / "VIEWER.INI").write_text("[viewer]\nlanguage=en\n")
    (disc / "JPEG").mkdir()
    for i in range(3):
        (disc / "JPEG" / f"IM{i:06d}.JPG").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 500)
    (disc / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER\\VIEWER.EXE\n")


@pytest.fixture(scope="module")
def disc(shared_data: Path, tmp_path_factory) -> Path:
    originals = [p for series in SERIES for p in sorted((shared_data / "sunnybrook" / series).glob("*.dcm"))]
    root = tmp_path_factory.mktemp("disc") / "PATIENT_CD"
    _flat_dicomdir(root, originals)
    _disc_extras(root)
    return root


def _table(out: Path) -> dict[str, dict[str, str]]:
    with (out / "measures.csv").open(newline="") as handle:
        return {r["study_id"]: r for r in csv.DictReader(handle)}


def test_the_disc_is_a_real_one(disc: Path):
    """The DICOMDIR indexes the flat folder's 500 files, of two studies (as a disc's reader sees it)."""
    from pydicom.fileset import FileSet

    fs = FileSet(disc / "DICOMDIR")
    assert len(fs) == 500 and {Path(i.path).parent.name for i in fs} == {"DICOM"}
    assert sorted(fs.find_values("StudyInstanceUID")) == sorted(UIDS.values())


def test_discovery_gives_one_entry_per_study_and_none_for_the_discs_own_folders(disc: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # VIEWER and JPEG are not even "skipped" now
        studies = discover_studies([disc])
    assert [(s.study_id, s.source, s.study_uid, len(s.files), s.skip_reason) for s in studies] == [
        (f"DICOM_{UIDS[series]}", str(disc / "DICOM"), UIDS[series], FILES[series], None) for series in SERIES
    ]
    # each entry's files are its own study's, and together the folder's
    for study in studies:
        for name in study.files[:: len(study.files) // 7]:
            header = pydicom.dcmread(disc / "DICOM" / name, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            assert header.StudyInstanceUID == study.study_uid
    assert sorted(studies[0].files + studies[1].files) == sorted(os.listdir(disc / "DICOM"))
    # the two studies' inputs and contents are told apart (journal identity, byte-identical copies)
    assert inputs_fingerprint(studies[0]) != inputs_fingerprint(studies[1])
    source = Path(studies[0].source)
    assert content_sha256(source, studies[0].files) != content_sha256(source, studies[1].files)
    # a file of one study changed: that study's inputs change, not the other's
    before = [inputs_fingerprint(s) for s in studies]
    changed = disc / "DICOM" / studies[1].files[0]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        assert [inputs_fingerprint(s) == b for s, b in zip(studies, before)] == [True, False]
    finally:
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_disc_keeps_rows_for_what_holds_dicom_and_for_what_the_user_names(disc: Path, tmp_path: Path):
    """Only folders without any DICOM file lose their row on a disc: one of unreadable DICOM keeps
    it, and so does a cohort folder without a DICOMDIR above it; a folder named on the command line
    is always a study."""
    small = tmp_path / "CD"
    small.mkdir()
    _disc_extras(small)
    shutil.copyfile(disc / "DICOMDIR", small / "DICOMDIR")
    (small / "BROKEN").mkdir()
    (small / "BROKEN" / "IM0001.dcm").write_bytes(b"not a DICOM file")
    (small / "IMAGES").mkdir()
    for name in sorted(os.listdir(disc / "DICOM"))[:3]:
        (small / "IMAGES" / name).symlink_to(disc / "DICOM" / name)  # one study: three headers read, one entry
    (small / "EMPTY").mkdir()
    assert [(s.study_id, s.study_uid, s.skip_reason) for s in discover_studies([small])] == [
        ("BROKEN", None, None),  # read as a study: its reader's error is its row
        ("IMAGES", None, None),
    ]
    (small / "DICOMDIR").unlink()  # a cohort's folder, no disc: every folder accounted for, as before
    with pytest.warns(CmrWarning, match=r"3 folder\(s\) hold no study .* skipped: EMPTY, JPEG, VIEWER"):
        rows = discover_studies([small])
    assert [(s.study_id, s.skip_reason is None) for s in rows] == [
        ("BROKEN", True),
        ("EMPTY", False),
        ("IMAGES", True),
        ("JPEG", False),
        ("VIEWER", False),
    ]
    assert [(s.study_id, s.skip_reason) for s in discover_studies([disc / "VIEWER"])] == [("VIEWER", None)]


@pytest.fixture(scope="module")
def disc_run(disc: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("disc_out") / "out"
    args = ["batch", str(disc), "-o", str(out), "--bundle", str(DEMO_BUNDLE), "--threads", "1", "--workers", "1"]
    return out, main([*args, "--no-progress", *FAST]), args


def test_each_study_of_the_flat_folder_is_measured_from_its_own_files(disc: Path, disc_run):
    out, code, _ = disc_run
    assert code == 0
    table = _table(out)
    assert sorted(table) == sorted(f"DICOM_{uid}" for uid in UIDS.values())  # no VIEWER, no JPEG row
    for series in SERIES:
        study_id = f"DICOM_{UIDS[series]}"
        row = table[study_id]
        assert (row["status"], row["error"], row["source"]) == ("ok", "", str(disc / "DICOM"))
        assert {k: float(row[k]) for k in ALONE[series]} == pytest.approx(ALONE[series], abs=1e-3), series
        assert row["outputs"] == f"studies/{study_id}"
        report = json.loads((out / "studies" / study_id / "report.json").read_text())
        assert (report["study"]["patient_id"], report["study"]["study_uid"]) == (series, UIDS[series])
        assert report["study"]["source"] == str(disc / "DICOM") and len(report["phases"]) == 20
        # its warnings name the disc's files
        assert report["warnings"] and all(str(disc / "DICOM" / "I") in w for w in report["warnings"][:5])
        assert row["notes"].startswith(f"warning: {disc / 'DICOM' / 'I'}")
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert sorted((r["study_id"], r["study_uid"]) for r in journal) == sorted(
        (f"DICOM_{uid}", uid) for uid in UIDS.values()
    )
    assert len({r["content_sha256"] for r in journal}) == 2  # not "the same content" as each other


def test_a_rerun_takes_both_studies_from_the_journal(disc_run, capsys):
    out, _, args = disc_run
    before = _table(out)
    capsys.readouterr()
    assert main([*args, "--no-progress", *FAST]) == 0
    assert "2 studies: 2 ok, 0 failed, 0 skipped; 0 segmented now, 2 from earlier runs" in capsys.readouterr().out
    assert _table(out) == before
    assert len((out / "journal.jsonl").read_text().splitlines()) == 2


def test_a_zip_of_two_studies_gives_each_its_own_members(disc: Path, tmp_path: Path, monkeypatch):
    """A portal's download: the disc's flat folder zipped. One entry per study, each read by the
    reader's rules among its own study's series alone (``study_uid``), named ``ARCHIVE!member``."""
    import zipfile

    import cmrsdk.cohort.worker as worker
    from cmrsdk.cohort.worker import PipelineSpec, StudyWorker
    from cmrsdk.errors import ReadError
    from cmrsdk.io import read_study
    from cmrsdk.io.archive import unpacked

    archive = tmp_path / "portal" / "download.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as packed:
        for path in sorted((disc / "DICOM").iterdir()):
            packed.write(path, f"DICOM/{path.name}")
    studies = discover_studies([archive.parent])
    assert [(s.study_id, s.source, s.study_uid, len(s.files)) for s in studies] == [
        (f"download_{UIDS[series]}", str(archive), UIDS[series], FILES[series]) for series in SERIES
    ]
    read: dict[str | None, tuple[object, ...]] = {}

    def segment_study(pipeline, source, out_dir, *, study_uid=None, **options):  # the reader, the networks left out
        with unpacked(Path(source)) as readable:
            study = read_study(readable.path, study_uid=study_uid)
        images = {f for stack in study.phases for f in stack.source_files}
        read[study_uid] = (study.info.study_uid, study.info.patient_id, len(study.phases), len(images))
        raise ReadError(source, "read no further")

    monkeypatch.setattr(worker, "segment_study", segment_study)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    runner = StudyWorker(PipelineSpec(bundle=str(DEMO_BUNDLE), mode="baseline"), 1, str(scratch))
    results = [runner.run(study) for study in studies]
    assert read == {UIDS[s]: (UIDS[s], s, 20, FILES[s]) for s in SERIES}
    assert [r.row["error"] for r in results] == [f"{archive}: read no further" for _ in studies]
    assert [r.row["study_uid"] for r in results] == [UIDS[s] for s in SERIES]
    assert results[0].row["content_sha256"] != results[1].row["content_sha256"]
    assert list(scratch.iterdir()) == []  # the scratch folders are gone


def test_the_reader_reads_the_study_it_is_named(disc: Path):
    """`read_dicom_study(study_uid=...)` (``cmrsdk segment --study``): the cine of that study
    alone; without it the folder is refused naming both studies and the way to name one."""
    from cmrsdk.errors import ReadError
    from cmrsdk.io import read_dicom_study

    with pytest.raises(ReadError) as refused:
        read_dicom_study(disc / "DICOM")
    assert all(uid in str(refused.value) for uid in UIDS.values()) and "--study UID" in str(refused.value)
    with pytest.raises(ReadError, match=r"study_uid '1\.2\.3' not found; studies present: \['2\.16"):
        read_dicom_study(disc / "DICOM", study_uid="1.2.3")
    study = read_dicom_study(disc / "DICOM", study_uid=UIDS["SCD0000201"])
    assert (study.info.patient_id, study.info.study_uid, len(study.phases)) == ("SCD0000201", UIDS["SCD0000201"], 20)
    assert {Path(f).name for stack in study.phases for f in stack.source_files} <= {
        p.name for p in (disc / "DICOM").iterdir() if p.name.startswith("I")
    }
    assert len({f for stack in study.phases for f in stack.source_files}) == FILES["SCD0000201"]


def test_segment_names_one_study_of_a_folder(disc: Path, tmp_path: Path, capsys):
    """``cmrsdk segment --study UID`` takes one input: given several, refused in one line."""
    code = main(["segment", str(disc / "DICOM"), str(disc / "DICOM"), "-o", str(tmp_path / "o"), "--study", "1.2"])
    assert code == 2
    assert "--study 1.2 names one study: give one DICOM input, not 2" in capsys.readouterr().err


def test_a_cine_with_strays_of_other_studies_stays_one_study(shared_data: Path, tmp_path: Path):
    """Sweep 42: SCD0000101 beside one image without StudyInstanceUID was split into two rows (the
    stray segmented as a study and failed, the cine renamed). A folder is split only where two
    studies or more hold a short-axis cine, as the reader refuses only those; a stray image of
    another study or of none (a localizer, an earlier exam's key object) stays with the cine."""
    from pydicom.uid import generate_uid

    folder = tmp_path / "one_plus_strays"
    folder.mkdir()
    cine = sorted((shared_data / "sunnybrook" / "SCD0000101").glob("*.dcm"))
    for path in cine:
        (folder / path.name).symlink_to(path)
    for name, source, study_uid in (
        ("z_no_uid.dcm", cine[0], None),
        ("z_other.dcm", sorted((shared_data / "sunnybrook" / "SCD0000201").glob("*.dcm"))[0], "1.2.3.4"),
        ("a_other.dcm", cine[5], "1.2.3.5"),  # where the first probe reads
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(source)
        header.SeriesInstanceUID, header.SOPInstanceUID = generate_uid(), generate_uid()
        if study_uid is None:
            del header.StudyInstanceUID
        else:
            header.StudyInstanceUID = study_uid
        header.save_as(folder / name)
    studies = discover_studies([folder])
    assert [(s.study_id, s.study_uid, s.files) for s in studies] == [("one_plus_strays", None, ())]
