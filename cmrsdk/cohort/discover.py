"""Which studies a cohort holds: found under folders, or listed in a CSV.

A *study* is what `cmrsdk segment` takes as one input: a DICOM series folder, a NIfTI file, an
ACDC patient folder, an M&Ms or M&Ms-2 subject folder. Under a root, the walk stops at the first
folder that is a study (a DICOM series folder may hold its images in sub-folders), so a root of
thousands of subjects costs one directory listing per folder and a few file headers.

A folder (or a ZIP archive) of DICOM files of several studies (StudyInstanceUID: two patients,
or two visits of one, exported together) is one study per StudyInstanceUID, each read by the
reader's rules among its own series (`cmrsdk.io.read_dicom_study`'s ``study_uid``). Whether it holds more than one is told from the headers of a
few of its files spread over their sorted names (`_STUDY_PROBES`, and one per
`_STUDY_PROBE_EVERY` files beyond); only where they differ are all its headers read.

Under a disc's root (a folder holding a DICOMDIR), folders without any DICOM file (the
viewer program's, exported JPEG pictures, IHE web pages) are the disc's, not the cohort's:
they get no row.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import CmrWarning, InputError
from ..study import OUTPUT_PATTERN
from .._warn import collect, quiet, warn

if TYPE_CHECKING:
    from ..io._walk import Passed

__all__ = ["StudySource", "discover_studies", "read_study_list", "study_name", "LIST_COLUMNS"]

#: the columns a --list CSV may hold; only ``source`` is required.
LIST_COLUMNS = ("study_id", "source", "height_cm", "weight_kg", "heart_rate_bpm")

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_LABEL_MAP = re.compile(r"_gt\.nii(\.gz)?$", re.IGNORECASE)
_DICOM_SUFFIXES = {".dcm", ".ima", ".dicom"}
#: files looked at to tell whether a folder holds DICOM: enough for folders mixing in a text file
_DICOM_PROBES = 8
#: headers read (first and last file included, the rest spread between) to tell whether a DICOM
#: folder holds more than one study; a second study whose files lie between two probes alone
#: is not seen (the reader then refuses the folder, naming both studies)
_STUDY_PROBES = 8
#: one header more per this many files of a big folder (5,000 files: 27 headers)
_STUDY_PROBE_EVERY = 256
#: a study's id within a folder of several: the folder's id, then its StudyInstanceUID (a UID
#: holds only digits and dots; anything else a file carries is written as "_")
_UID_UNSAFE = re.compile(r"[^0-9A-Za-z.\-]")
#: the id suffix of the DICOM files of such a folder that carry no StudyInstanceUID
_NO_STUDY_UID = "no-StudyInstanceUID"
#: bytes of a ZIP member read for its StudyInstanceUID: a classic image's header takes a few KB
_MEMBER_HEAD = 64 * 1024
#: Deflated Explicit VR Little Endian, named in the file meta of a deflated data set
_DEFLATED = b"1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class StudySource:
    """One study of a cohort.

    Attributes
    ----------
    study_id : the study's name in the table and its output folder (unique in a run).
    source : absolute path of what `cmrsdk segment` reads.
    height_cm, weight_kg, heart_rate_bpm : values from a study list; they take precedence over
        the file's own (Info.cfg, DICOM PatientSize / PatientWeight / HeartRate) in the table and
        in the study's report.json and report.html.
    skip_reason : set for a folder under a root that holds no study (an empty folder, one of
        JPEGs): it is not segmented, and its row in the table is "skipped" with this reason.
    study_uid : set where ``source`` is a folder (or ZIP archive) holding the DICOM files of several
        studies: the StudyInstanceUID of the one this entry reads ("" for files that carry none).
    files : with ``study_uid``, that study's files as paths relative to ``source`` (or member
        names of the archive; POSIX separators), sorted; files that are no readable DICOM go with
        every study of the folder. The worker reads ``study_uid``'s series of the folder; the
        batch's content hash covers these files alone, its fingerprint these (a folder's) or the
        archive and the UID.
    """

    study_id: str
    source: str
    height_cm: float | None = None
    weight_kg: float | None = None
    heart_rate_bpm: float | None = None
    skip_reason: str | None = None
    study_uid: str | None = None
    files: tuple[str, ...] = ()


class _Found(NamedTuple):
    """A study the walk found: a path, and for one study of a folder of several its UID and files."""

    path: Path
    study_uid: str | None = None
    files: tuple[str, ...] = ()


def study_name(path: Path) -> str:
    """A study's name from its path: the folder name, or the file name less .nii.gz / .nii / .dcm / .zip."""
    name = path.name
    match = _NIFTI.search(name)
    if match:
        return name[: match.start()]
    if name.lower().endswith((".dcm", ".zip")):
        return name[:-4]
    return name or "study"


def _is_study_file(path: Path) -> bool:
    """A NIfTI stack (not a label map) or a ZIP archive (a study as a PACS web portal sends it,
    unpacked by `segment_one`; sweep 39: a folder of disc ZIPs gave "no DICOM image files")."""
    return bool(_NIFTI.search(path.name) and not _LABEL_MAP.search(path.name)) or path.suffix.lower() == ".zip"


def _is_dicom_file(path: Path) -> bool:
    """A DICOM suffix, the Part 10 preamble ("DICM"), or a data set written without it (which the
    reader reads: `cmrsdk.io._dataset.is_bare_dataset`)."""
    from ..io._dataset import is_bare_dataset

    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
        return head[128:132] == b"DICM" or is_bare_dataset(path)
    except OSError:
        return False


def _is_case_folder(folder: Path, names: Sequence[str]) -> bool:
    """ACDC patient (Info.cfg), M&Ms subject (NAME_sa_ED.nii.gz) or M&Ms-2 subject (NAME_SA_ED.nii.gz)."""
    if "Info.cfg" in names:
        return True
    stem = f"{folder.name}_sa_ed.nii".lower()
    return any(n.lower().startswith(stem) for n in names)


def _is_result_folder(names: Sequence[str]) -> bool:
    """A folder `cmrsdk segment` wrote: its report.json and only names cmrsdk writes."""
    return "report.json" in names and all(OUTPUT_PATTERN.match(n) for n in names if not n.startswith("."))


def _walk(
    path: Path,
    skip: Path | None = None,
    barren: list[Path] | None = None,
    results: list[Path] | None = None,
    passed: Passed | None = None,
    top: bool = True,
    disc: bool = False,
) -> Iterator[_Found]:
    """The studies at or under ``path``, in sorted order; the folder ``skip`` (the run's own
    output, when it lies under a root) is not entered, nor are earlier results of cmrsdk (their
    labels and SEGs are no studies; added to ``results``); folders without sub-folders that hold
    no study are added to ``barren``, except under a disc's root (``disc``: a DICOMDIR at or
    above ``path``) where those without a DICOM file are the disc's own (its viewer, its
    pictures) and left out.

    Links to studies elsewhere are followed (a cohort of linked study folders), but not a link
    to a folder that holds it (``loop -> .``, ``up -> ..``, ``root -> /``: the walk would go
    round, or over the whole file system); such links, and entries below ``path`` that cannot
    be listed or looked at, are skipped and noted in ``passed``."""
    from ..io._walk import entry_kind, holds

    if path.is_file():
        if _is_study_file(path):
            yield from _file_studies(path)
        return
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        real = os.path.realpath(path)
    except OSError as exc:
        if top or passed is None:  # the root itself
            raise InputError(f"'{path}' cannot be listed: {exc.strerror}") from exc
        passed.cannot_read(path, exc)
        return
    names = [e.name for e in entries]
    if _is_result_folder(names):
        if results is not None:
            results.append(path)
        return
    if _is_case_folder(path, names):
        yield _Found(path)
        return
    kinds: dict[str, str | None] = {}
    cannot: list[tuple[Path, OSError]] = []  # said where this folder is walked, not read as a study
    for e in entries:
        if e.name.startswith("."):  # hidden entries are never studies
            continue
        try:
            kinds[e.name] = entry_kind(e)
        except OSError as exc:
            cannot.append((Path(e.path), exc))
    # a DICOMDIR (the media directory at the root of every CD and USB export) indexes the
    # series below it; it is not an image of a series held in this folder
    files = [Path(e.path) for e in entries if kinds.get(e.name) == "file" and e.name.upper() != "DICOMDIR"]
    disc = disc or any(kinds.get(e.name) == "file" and e.name.upper() == "DICOMDIR" for e in entries)
    if any(_is_dicom_file(f) for f in files[:_DICOM_PROBES]):
        # a series folder: the reader searches its sub-folders too; one entry per study it holds
        studies = _studies_of(path, files, any(kinds.get(e.name) == "dir" for e in entries))
        yield from (_Found(path, uid, members) for uid, members in studies) if studies else [_Found(path)]
        return
    loose = [f for f in files if _is_study_file(f)]
    for file in loose:  # a folder of loose NIfTI stacks or ZIPs: each file is one study (or a ZIP's, several)
        yield from _file_studies(file)
    folders = []
    for e in entries:
        if kinds.get(e.name) != "dir" or Path(e.path) == skip:
            continue
        try:
            if e.is_symlink() and holds(os.path.realpath(e.path), real):
                if passed is not None:
                    passed.link(Path(e.path), "a folder holding it (the walk would go round)")
                continue
        except OSError as exc:
            cannot.append((Path(e.path), exc))
            continue
        folders.append(Path(e.path))
    if not loose and _one_study_of_series(folders):
        # a study stored one folder per series (as `cmrsdk retrieve` and many PACS exports write
        # it: a cine split over series, one per slice or breath-hold): the reader stacks them
        yield _Found(path)
        return
    if passed is not None:
        for entry, error in cannot:
            passed.cannot_read(entry, error)
    if not loose and not folders and barren is not None:
        # in the walk's order: its row goes where the study would have been; on a disc, a folder
        # without DICOM (VIEWER, JPEG, IHE_PDI) is the disc's, not the cohort's: no row. One with
        # a DICOM file the probes did not reach is said as anywhere else
        if not disc or any(_is_dicom_file(f) for f in files):
            barren.append(path)
    for folder in folders:
        yield from _walk(folder, skip, barren, results, passed, top=False, disc=disc)


def _studies_of(folder: Path, files: list[Path], deeper: bool) -> list[tuple[str, tuple[str, ...]]]:
    """The studies of a DICOM series folder holding more than one: (StudyInstanceUID, its files
    relative to ``folder``) each (`_by_study`); [] where it holds one, or where that cannot be
    told (no header read, a link to a folder within).

    ``files``: the folder's own files (hidden ones and DICOMDIR left out); ``deeper``: it has
    sub-folders, whose files the reader reads with it (listed here only then)."""
    if deeper:
        listed = _files_below(folder)
        if listed is None:
            return []
        files = listed
    return _by_study(
        [f.relative_to(folder).as_posix() for f in files],
        lambda name: _header_study_uid(folder / name),
        lambda: _cine_studies(folder),
    )


def _file_studies(path: Path) -> Iterator[_Found]:
    """A study file as the walk gives it: itself, or for a ZIP archive of DICOM files of several
    studies, one entry per study (`_studies_of_archive`)."""
    studies = _studies_of_archive(path) if path.suffix.lower() == ".zip" else []
    if not studies:
        yield _Found(path)
    for uid, members in studies:
        yield _Found(path, uid, members)


def _studies_of_archive(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """As `_studies_of`, for the members of a ZIP archive, read where they lie (nothing unpacked);
    [] where it cannot be opened, holds encrypted members, member names that climb out of their
    folder or more members than the unpacker takes (its reader then says what it says)."""
    from ..io.archive import MAX_MEMBERS

    try:
        with zipfile.ZipFile(path) as archive:
            members = {
                m.filename: m
                for m in archive.infolist()
                if not m.is_dir()
                and not any(part.startswith(".") for part in m.filename.split("/"))
                and m.filename.rsplit("/", 1)[-1].upper() != "DICOMDIR"
            }
            unsafe = any(m.filename.startswith("/") or ".." in m.filename.split("/") for m in members.values())
            if unsafe or len(members) > MAX_MEMBERS or any(m.flag_bits & 0x1 for m in members.values()):
                return []
            return _by_study(
                sorted(members), lambda name: _member_study_uid(archive, members[name]), lambda: _cine_studies(path)
            )
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
        return []


def _cine_studies(source: Path) -> set[str]:
    """The StudyInstanceUIDs under ``source`` (a folder, or a ZIP archive unpacked for the
    while) that hold a short-axis cine by the reader's own survey (`cmrsdk.io.scan_dicom_series`);
    empty where it cannot be read (the reader says why when the study is read)."""
    from ..errors import CmrError
    from ..io.archive import unpacked
    from ..io.dicom import scan_dicom_series

    try:
        with quiet(), collect():  # what the reader says is said when the study is read
            with unpacked(source) as readable:
                return {s.study_uid for s in scan_dicom_series(readable.path) if s.is_sax_cine}
    except (CmrError, OSError):
        return set()


def _by_study(
    names: list[str], uid_of: Callable[[str], str | None], cine_studies: Callable[[], set[str]]
) -> list[tuple[str, tuple[str, ...]]]:
    """``names`` (sorted) grouped by the StudyInstanceUID ``uid_of`` reads from each (None: no
    readable DICOM), in the order of each study's first; [] where they hold one study.

    A few are read, spread over the names (`_STUDY_PROBES`, first and last among them); all of
    them only where those name two studies or more, and only where two of them or more hold a
    short-axis cine (``cine_studies``, the reader's survey: the reader refuses such a folder, and
    takes one whose other studies left a localizer, a report or a key object beside the cine, as
    it did before 0.14.7). Names of no readable DICOM, of no StudyInstanceUID or of a study
    without a cine go with every study: each study's reader says what they are."""
    n = len(names)
    if n < 2:
        return []
    count = min(n, _STUDY_PROBES + n // _STUDY_PROBE_EVERY)
    probes = sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
    uids = {names[i]: uid_of(names[i]) for i in probes}
    if len({uid for uid in uids.values() if uid}) < 2:
        return []
    cines = cine_studies()
    if len(cines - {""}) < 2:
        return []
    groups: dict[str, list[str]] = {}
    shared: list[str] = []
    for name in names:
        uid = uids[name] if name in uids else uid_of(name)
        if uid and uid in cines:
            groups.setdefault(uid, []).append(name)
        else:
            shared.append(name)
    if len(groups) < 2:
        return []
    return [(uid, tuple(sorted(members + shared))) for uid, members in groups.items()]


def _files_below(folder: Path) -> list[Path] | None:
    """The files under ``folder`` (hidden entries and DICOMDIR left out), sorted; None where a
    link to a folder lies within (the reader follows it; a split here would not) or a folder
    cannot be listed."""
    found: list[Path] = []
    failed: list[OSError] = []
    for current, dirs, names in os.walk(folder, onerror=failed.append):
        here = Path(current)
        if any((here / d).is_symlink() for d in dirs):
            return None
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [here / n for n in names if not n.startswith(".") and n.upper() != "DICOMDIR"]
    return None if failed else sorted(found)


def _study_label(uid: str) -> str:
    """A study's UID as the end of its id: "_" for characters a UID does not hold."""
    return _UID_UNSAFE.sub("_", uid) if uid else _NO_STUDY_UID


def _one_study_of_series(folders: list[Path]) -> bool:
    """Two or more folders of DICOM files (no deeper folders), all of one StudyInstanceUID; a
    folder beside them without DICOM files (a disc's thumbnails) is no series and does not count
    (sweep 39: one such folder split a study stored one series per slice into 23 rows)."""
    if len(folders) < 2:
        return False
    studies = set()
    series = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
            if any(e.is_dir() for e in entries):
                return False
            files = sorted(Path(e.path) for e in entries if e.is_file() and not e.name.startswith("."))
        except OSError:  # an entry that cannot be looked at: the walk says so
            return False
        dicom = next((f for f in files[:_DICOM_PROBES] if _is_dicom_file(f)), None)
        if dicom is not None:
            series += 1
            studies.add(_study_uid(dicom))
    return series >= 2 and len(studies) == 1 and "" not in studies


def _study_uid(path: Path) -> str:
    """StudyInstanceUID of a DICOM file ('' where it cannot be read)."""
    return _header_study_uid(path) or ""


def _header_study_uid(path: Path) -> str | None:
    """StudyInstanceUID of a DICOM file ('' where it carries none), None where it is no readable
    DICOM. Reads the header only (about 1 ms), as the reader does (`cmrsdk.io._dataset`: files
    without the preamble, the deflated-size limit)."""
    from ..io._dataset import read_dataset

    try:
        with quiet():
            return str(read_dataset(path, stop_before_pixels=True).get("StudyInstanceUID", "") or "")
    except Exception:  # not readable as DICOM: the reader says so when the study is read
        return None


def _member_study_uid(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> str | None:
    """StudyInstanceUID of a ZIP member, from its first `_MEMBER_HEAD` bytes ('' where it carries
    none), None where it is no readable DICOM (or a header longer than that, or deflated: pydicom
    would inflate it whole, which the reader's size limit guards against)."""
    import pydicom

    try:
        with archive.open(member) as handle:
            head = handle.read(_MEMBER_HEAD)
    except Exception:  # a corrupt member: the reader says so when the study is unpacked
        return None
    if _DEFLATED in head[:2048]:
        return None
    # a data set written without the preamble, as `cmrsdk.io._dataset.is_bare_dataset` tells it
    bare = len(head) >= 8 and head[1] == 0 and head[0] in (2, 8) and head[3] < 0x10
    try:
        with quiet():
            header = pydicom.dcmread(
                io.BytesIO(head), stop_before_pixels=True, specific_tags=["StudyInstanceUID"], force=bare
            )
            return str(header.get("StudyInstanceUID", "") or "")
    except Exception:  # not DICOM, or its header goes on past the bytes read
        return None


def _unique(studies: list[StudySource], where: str) -> list[StudySource]:
    seen: dict[str, str] = {}
    for s in studies:
        if not s.study_id or s.study_id.startswith(".") or any(c in s.study_id for c in "/\\\0"):
            raise InputError(
                f"study id {s.study_id!r} of {s.source} in {where} cannot name a folder: "
                "it must be non-empty, not start with '.', and hold no '/' or '\\'"
            )
        if s.study_id in seen:
            raise InputError(
                f"study id '{s.study_id}' names two studies ({seen[s.study_id]} and {s.source}) in {where}; "
                "give each a study_id in a --list CSV"
            )
        seen[s.study_id] = s.source
    return studies


def discover_studies(roots: Sequence[str | Path], output: str | Path | None = None) -> list[StudySource]:
    """The studies at or under each root, in the order given, each root's sorted; the run's
    ``output`` folder, where it lies under a root, is not searched (its SEG and SR are results,
    not studies).

    A root that is itself a study keeps its own name as study id; a study found under a root is
    named by its path relative to the root, folders joined by ``_`` (``site1/DICOM`` becomes
    ``site1_DICOM``), so that names stay the same between runs.

    A folder or ZIP archive of DICOM files of several studies (StudyInstanceUID) gives one entry
    per study, named by its id, ``_`` and the UID (``flat_1.2.840.113619.2.1``), with
    `StudySource.study_uid` and `StudySource.files` set: the worker reads that study's files alone.

    A folder under a root that holds no study (an empty folder, one of JPEGs or text files) is
    named the same way and carries a `StudySource.skip_reason`: the batch gives it a "skipped"
    row saying why, so that the table accounts for every folder of the cohort. Under a disc's
    root (a DICOMDIR beside it or above), a folder without a DICOM file (the viewer program's,
    exported pictures) is the disc's, not a folder of the cohort: it gets no row.

    Raises
    ------
    InputError : a root that does not exist or holds no study; two studies with one id.
    """
    from ..io._walk import Passed, entry_kind, reason

    studies: list[StudySource] = []
    for root in roots:
        root = Path(os.path.abspath(root))
        try:
            kind = entry_kind(root)
        except OSError as exc:  # a link into another user's /proc, a folder without search permission
            raise InputError(f"'{root}' cannot be read ({reason(exc)})") from exc
        if kind is None and not root.exists():
            raise InputError(f"'{root}': no such file or directory")
        barren: list[Path] = []
        results: list[Path] = []
        found: list[Path] = []
        passed = Passed()
        order: list[tuple[_Found, bool]] = []  # (what, holds a study) in the walk's order
        for each in _walk(root, None if output is None else Path(os.path.abspath(output)), barren, results, passed):
            order += [(_Found(b), False) for b in barren[len(order) - len(found) :]]
            found.append(each.path)
            order.append((each, True))
        order += [(_Found(b), False) for b in barren[len(order) - len(found) :]]
        if not found and (passed.links or passed.unreadable):  # nothing left to read: one error says why
            raise InputError(f"'{root}' holds no study that can be read: {'; '.join(passed.messages())}")
        passed.warn(stacklevel=2)
        if results:  # earlier `cmrsdk segment` outputs under the root: not studies, and said so
            shown = ", ".join(str(p.relative_to(root)) for p in results[:5]) + (", ..." if len(results) > 5 else "")
            warn(
                CmrWarning(
                    f"'{root}': {len(results)} folder(s) hold cmrsdk results, not studies, and are skipped: {shown}"
                ),
                stacklevel=2,
            )
        if found and barren:  # a cohort's folder with nothing to segment: said now, and a "skipped" row
            shown = ", ".join(str(p.relative_to(root)) for p in barren[:5]) + (", ..." if len(barren) > 5 else "")
            warn(
                CmrWarning(
                    f"'{root}': {len(barren)} folder(s) hold no study (no DICOM image, NIfTI file, ACDC "
                    f"patient or M&Ms subject) and are skipped: {shown}"
                ),
                stacklevel=2,
            )
        if not found and kind == "dir" and not _holds_a_file(root):
            raise InputError(f"'{root}' holds no study: it holds no file at all")
        if not found and kind == "dir":
            # a folder the walk does not recognise is still worth one try as a DICOM series:
            # the reader's error then says what it found
            found = [root]
        if not found:
            raise InputError(
                f"'{root}' holds no study (DICOM series folder, NIfTI file, ACDC patient or M&Ms subject folder)"
            )
        if not any(holds_study for _, holds_study in order):
            order = [(_Found(path), True) for path in found]  # the root itself, tried as a DICOM series
        for (path, study_uid, files), holds_study in order:
            if path == root:
                study_id = study_name(root)
            else:
                parts = path.relative_to(root).parts
                study_id = "_".join((*parts[:-1], study_name(path)))
            if study_uid is not None:  # one study of a folder of several: its UID makes the id
                studies.append(
                    StudySource(f"{study_id}_{_study_label(study_uid)}", str(path), study_uid=study_uid, files=files)
                )
            elif holds_study:
                studies.append(StudySource(study_id, str(path)))
            else:
                studies.append(StudySource(study_id, str(path), skip_reason=_no_study(path)))
    # a folder without a study gives way to a study of the same id (folder "a/" beside "a.nii.gz"),
    # or to such a folder named before it: it never makes a clash that stops the run
    taken = {s.study_id for s in studies if not s.skip_reason}
    kept = []
    for s in studies:
        if s.skip_reason:
            if s.study_id in taken:
                continue
            taken.add(s.study_id)
        kept.append(s)
    return _unique(kept, "the roots given")


def _holds_a_file(root: Path) -> bool:
    """Whether a regular file lies under ``root`` (links to folders not followed)."""
    from ..io._walk import entry_kind

    for folder, _, names in os.walk(root):  # folders that cannot be listed are passed over
        for name in names:
            try:
                if entry_kind(Path(folder, name)) == "file":
                    return True
            except OSError:  # the walk has said so
                continue
    return False


def _no_study(folder: Path) -> str:
    """Why a folder under a root has no row of measures."""
    try:
        empty = not any(folder.iterdir())
    except OSError:
        empty = False
    what = "it is empty" if empty else "no DICOM image, NIfTI file, ACDC patient or M&Ms subject in it"
    return f"no study in this folder ({what})"


def _number(value: str, column: str, where: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{where}: column '{column}' value {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"{where}: column '{column}' value {value!r} must be a positive number")
    return number


def _list_text(path: Path) -> str:
    """The text of a ``--list`` CSV, decoded as UTF-8 (a byte-order mark is dropped).

    Other encodings are refused rather than guessed: a Windows-1252 byte read as Latin-1 would
    silently change a study id or a source path.
    """
    from ..io._walk import reason

    if path.is_dir():
        raise InputError(f"--list '{path}': is a folder, not a CSV file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"--list '{path}': no such file") from None
    except OSError as exc:
        raise InputError(f"--list '{path}': cannot be read ({reason(exc)})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"--list '{path}': is UTF-16 text, not UTF-8; save the list as 'CSV UTF-8'")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}; "
            "a Windows-1252 or Latin-1 export?); save the list as 'CSV UTF-8'"
        ) from None


def read_study_list(path: str | Path) -> list[StudySource]:
    """The studies of a CSV with a header row: ``source`` and optionally ``study_id``, ``height_cm``,
    ``weight_kg``, ``heart_rate_bpm`` (empty cells are unknown).

    Relative sources are taken from the CSV's folder. A missing study_id is the source's name. A
    source that does not exist is kept: its row in the table says so.

    Raises
    ------
    InputError : no such file, a file that cannot be read or is not UTF-8 text, no ``source``
        column, an unknown column, a value that is not a positive number, two rows with one study
        id.
    """
    path = Path(path)
    text = _list_text(path)
    studies = []
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "source" not in columns:
            raise InputError(f"{path}: header {columns} has no 'source' column (expected some of {list(LIST_COLUMNS)})")
        unknown = [c for c in columns if c not in LIST_COLUMNS]
        if unknown:
            raise InputError(f"{path}: unknown column(s) {unknown}; expected some of {list(LIST_COLUMNS)}")
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "") for k, v in raw.items()}
            where = f"{path} line {line}"
            if not row["source"].strip():
                raise InputError(f"{where}: column 'source' is empty")
            source = Path(row["source"].strip()).expanduser()
            source = Path(os.path.abspath(source if source.is_absolute() else path.parent / source))
            studies.append(
                StudySource(
                    study_id=(row.get("study_id") or "").strip() or study_name(source),
                    source=str(source),
                    height_cm=_number(row.get("height_cm", ""), "height_cm", where),
                    weight_kg=_number(row.get("weight_kg", ""), "weight_kg", where),
                    heart_rate_bpm=_number(row.get("heart_rate_bpm", ""), "heart_rate_bpm", where),
                )
            )
    if not studies:
        raise InputError(f"{path}: no rows under the header")
    return _unique(studies, str(path))
