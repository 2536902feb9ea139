"""Which studies a cohort holds: found under folders, or listed in a CSV.

A *study* is what `cmrsdk segment` takes as one input: a DICOM series folder, a NIfTI file, an
ACDC patient folder, an M&Ms or M&Ms-2 subject folder. Under a root, the walk stops at the first
folder that is a study (a DICOM series folder may hold its images in sub-folders), so a root of
thousands of subjects costs one directory listing per folder and a few file headers.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CmrWarning, InputError
from ..study import OUTPUT_PATTERN
from .._warn import quiet, warn

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
    """

    study_id: str
    source: str
    height_cm: float | None = None
    weight_kg: float | None = None
    heart_rate_bpm: float | None = None
    skip_reason: str | None = None


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
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


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
) -> Iterator[Path]:
    """The studies at or under ``path``, in sorted order; the folder ``skip`` (the run's own
    output, when it lies under a root) is not entered, nor are earlier results of cmrsdk (their
    labels and SEGs are no studies; added to ``results``); folders without sub-folders that hold
    no study are added to ``barren``.

    Links to studies elsewhere are followed (a cohort of linked study folders), but not a link
    to a folder that holds it (``loop -> .``, ``up -> ..``, ``root -> /``: the walk would go
    round, or over the whole file system); such links, and entries below ``path`` that cannot
    be listed or looked at, are skipped and noted in ``passed``."""
    from ..io._walk import entry_kind, holds

    if path.is_file():
        if _is_study_file(path):
            yield path
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
        yield path
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
    if any(_is_dicom_file(f) for f in files[:_DICOM_PROBES]):
        yield path  # a series folder: the reader searches its sub-folders too
        return
    loose = [f for f in files if _is_study_file(f)]
    yield from loose  # a folder of loose NIfTI stacks or ZIPs: each file is one study
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
        yield path
        return
    if passed is not None:
        for entry, error in cannot:
            passed.cannot_read(entry, error)
    if not loose and not folders and barren is not None:
        barren.append(path)  # in the walk's order: its row goes where the study would have been
    for folder in folders:
        yield from _walk(folder, skip, barren, results, passed, top=False)


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
    from ..io._dataset import read_dataset

    try:
        with quiet():
            return str(read_dataset(path, stop_before_pixels=True).get("StudyInstanceUID", "") or "")
    except Exception:  # not readable as DICOM: the reader says so when the study is read
        return ""


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

    A folder under a root that holds no study (an empty folder, one of JPEGs or text files) is
    named the same way and carries a `StudySource.skip_reason`: the batch gives it a "skipped"
    row saying why, so that the table accounts for every folder of the cohort.

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
        order: list[tuple[Path, bool]] = []  # (path, holds a study) in the walk's order
        for path in _walk(root, None if output is None else Path(os.path.abspath(output)), barren, results, passed):
            order += [(b, False) for b in barren[len(order) - len(found) :]]
            found.append(path)
            order.append((path, True))
        order += [(b, False) for b in barren[len(order) - len(found) :]]
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
            order = [(path, True) for path in found]  # the root itself, tried as a DICOM series
        for path, holds_study in order:
            if path == root:
                study_id = study_name(root)
            else:
                parts = path.relative_to(root).parts
                study_id = "_".join((*parts[:-1], study_name(path)))
            if holds_study:
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


def read_study_list(path: str | Path) -> list[StudySource]:
    """The studies of a CSV with a header row: ``source`` and optionally ``study_id``, ``height_cm``,
    ``weight_kg``, ``heart_rate_bpm`` (empty cells are unknown).

    Relative sources are taken from the CSV's folder. A missing study_id is the source's name. A
    source that does not exist is kept: its row in the table says so.

    Raises
    ------
    InputError : no such file, no ``source`` column, an unknown column, a value that is not a
        positive number, two rows with one study id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--list '{path}': no such file")
    studies = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
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
