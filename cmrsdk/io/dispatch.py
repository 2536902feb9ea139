"""`read_study`: one entry point that recognises what a path holds, and `inspect`."""

from __future__ import annotations

import os
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CmrWarning, InputError, ReadError
from ..types import Study, StudyInfo
from .archive import is_archive, is_unpacked_member, unpacked
from ._walk import Passed, entry_kind, reason
from .dicom import one_walk, read_dicom_study, scan_dicom_series
from .nifti import (
    ACDC_IMAGE,
    MNMS_IMAGE,
    is_nifti_name,
    nifti_frames,
    read_acdc_patient,
    read_mnms_subject,
    read_nifti_cine,
    read_nifti_stack,
    subject_stem,
)
from .._warn import collect, reissue

__all__ = ["detect_format", "expand_inputs", "read_study", "inspect"]


def _mnms_layout(folder: Path) -> bool:
    """M&Ms (``SUBJECT_sa_ED.nii.gz``, or the release's 4-D ``SUBJECT_sa.nii.gz``) or M&Ms-2
    (``001_SA_ED.nii.gz``) subject folder, any case; a folder renamed is known by one subject's
    ED / ES images (``copy/A1D0Q7_sa_ED.nii.gz``)."""
    wanted = {f"{folder.name}_sa{part}.nii".lower() for part in ("_ed", "")}
    if any(p.name.lower().split(".nii")[0] + ".nii" in wanted for p in folder.iterdir()):
        return True
    return subject_stem(folder, MNMS_IMAGE) is not None


def _acdc_without_info(folder: Path) -> str | None:
    """Why ``folder`` cannot be read, where it holds an ACDC patient's files (two or more
    ``SUBJECT_frameNN`` images with ``_gt`` label maps or a ``SUBJECT_4d`` cine) but no ``Info.cfg``:
    read as loose NIfTI files it gave a one-phase study per frame and no EF, without a word (sweep
    51). None for any other folder (one that cannot be listed included: its reader says why)."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return None
    stems = [n[: n.lower().rfind(".nii")] for n in names if is_nifti_name(n)]
    frames = [s for s in stems if ACDC_IMAGE.fullmatch(s)]
    ancillary = any(s.lower().endswith(("_gt", "_4d")) for s in stems)
    if "Info.cfg" in names or len(frames) < 2 or not ancillary or subject_stem(folder, ACDC_IMAGE) is None:
        return None
    misspelt = [n for n in names if n.lower().startswith("info") and "cfg" in n.lower()]
    numbers = sorted(int(s.rsplit("_frame", 1)[1]) for s in frames if s.lower().rsplit("_frame", 1)[1].isdigit())
    shown = ", ".join(f for f in frames[:3]) + (f" and {len(frames) - 3} more" if len(frames) > 3 else "")
    why = f"holds {misspelt[0]!r}, not 'Info.cfg' (spelt exactly so)" if misspelt else "has no Info.cfg"
    example = (
        f" (lines 'ED: {numbers[0]}' and 'ES: {numbers[-1]}' where frame {numbers[0]} is ED and {numbers[-1]} ES)"
        if len(numbers) >= 2
        else ""
    )
    return (
        f"an ACDC patient folder ({shown}) that {why}, which gives the ED and ES frame numbers: add "
        f"Info.cfg{example}, or give each image file alone to read it as one phase"
    )


def detect_format(path: str | Path) -> str:
    """'acdc', 'mnms', 'nifti', 'archive' (a ZIP file) or 'dicom' for what ``path`` holds (by layout, not content).

    A NIfTI file is recognised by its name in any case (``.nii``, ``.nii.gz``, ``.NII.GZ``);
    an M&Ms subject folder in the M&Ms and M&Ms-2 layouts.
    """
    path = Path(path)
    try:
        kind = entry_kind(path)
        if kind is None and not path.exists():
            raise ReadError(path, "no such file or directory")
        if kind is None:
            raise ReadError(path, "not a regular file or a directory (a device, pipe or socket)")
        if is_archive(path):
            return "archive"
        if kind == "file":
            return "nifti" if is_nifti_name(path.name) else "dicom"
        if (path / "Info.cfg").is_file():
            return "acdc"
        if _mnms_layout(path):
            return "mnms"
    except OSError as exc:  # a folder without permission, a link into another user's /proc
        raise ReadError(path, f"cannot be read ({reason(exc)})") from exc
    return "dicom"


def expand_inputs(path: str | Path) -> list[Path]:
    """The studies a path given on the command line stands for, one path each, sorted.

    - a file, an ACDC patient or an M&Ms subject folder: itself;
    - a folder of ACDC patients or M&Ms subjects (as ``cmrsdk evaluate`` takes): each of them;
    - a folder of NIfTI files (any case of extension) and no subject folders: each image file,
      label maps (``*_gt``) left out;
    - a folder holding only ZIP archives: each archive;
    - an ACDC patient's files without ``Info.cfg`` (``_frameNN`` images with ``_gt`` maps or a
      ``_4d`` cine): itself, which `read_study` refuses, naming the missing Info.cfg;
    - anything else (a DICOM folder, searched recursively): itself.
    """
    path = Path(path)
    try:
        if entry_kind(path) != "dir" or detect_format(path) != "dicom" or _acdc_without_info(path):
            return [path]  # an ACDC folder without Info.cfg: refused by `read_study`, not read as loose files
    except (OSError, ReadError):  # its reader says why it cannot be read, as that study's error
        return [path]
    entries: list[Path] = []
    kinds: dict[Path, str | None] = {}
    passed = Passed()
    for entry in sorted(path.iterdir()):
        try:  # an entry that cannot be looked at is said once, not a traceback
            kind = entry_kind(entry)
            kinds[entry] = detect_format(entry) if kind == "dir" else kind
        except OSError as exc:
            passed.cannot_read(entry, exc)
            continue
        except ReadError as exc:
            if not isinstance(exc.__cause__, OSError):
                raise
            passed.cannot_read(entry, exc.__cause__)
            continue
        entries.append(entry)
    # an ACDC patient without Info.cfg among them: a study (refused, named), not passed over
    subjects = [p for p in entries if kinds[p] in ("acdc", "mnms") or (kinds[p] == "dicom" and _acdc_without_info(p))]
    images = [
        p
        for p in entries
        if kinds[p] == "file" and is_nifti_name(p.name) and not p.name.lower().split(".nii")[0].endswith("_gt")
    ]
    archives = bool(entries) and all(is_archive(p) for p in entries)
    if not (subjects or images or archives):
        return [path]  # a DICOM folder: its reader's walk says what it passes over
    passed.warn()
    if subjects:
        return subjects
    return images or entries  # loose NIfTI images, else ZIP archives: a study each


def _reader_options(kind: str) -> tuple[str, ...]:
    """The options `read_study` passes on to the reader of format ``kind`` (its parameters after the path)."""
    readers = {
        "acdc": read_acdc_patient,
        "mnms": read_mnms_subject,
        "nifti": read_nifti_stack,
        "dicom": read_dicom_study,
    }
    return tuple(signature(readers[kind]).parameters)[1:] if kind in readers else ()


def read_study(path: str | Path, **options: Any) -> Study:
    """Read a study from a DICOM directory, an ACDC patient folder, an M&Ms subject folder or a NIfTI file.

    ``options`` go to the reader: ``series_uid`` for DICOM; ``label_path`` and ``convention`` for
    a NIfTI file (which gives a one-phase study with ED and ES unknown). A 4-D NIfTI file
    (X, Y, Z, T) read without options is a cine, a phase per frame (:func:`read_nifti_cine`).
    A folder holding an ACDC patient's files without ``Info.cfg`` is refused (it alone gives ED
    and ES), not read as loose NIfTI files.
    An option the format does not take is refused, unless it is None (not given).

    Raises
    ------
    InputError
        ``path`` is not a non-empty str or os.PathLike path, or an option is not the format's.
    ReadError
        ``path`` does not exist, is not a file or directory, or cannot be read as a study.
    """
    # '' would read the working directory, and bytes paths are refused by Path later, raw
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str) or not os.fspath(path):
        raise InputError(f"'path' must be a non-empty str or os.PathLike path, got {path!r}")
    kind = detect_format(path)
    takes = _reader_options(kind)
    unknown = sorted(name for name, value in options.items() if name not in takes and value is not None)
    if unknown:
        raise InputError(
            f"read_study options {unknown} do not apply to {path} ({kind}): it takes "
            f"{list(takes) if takes else 'no options'}"
        )
    options = {name: value for name, value in options.items() if name in takes and value is not None}
    if kind == "archive":
        if is_unpacked_member(path):  # a member of an archive `cmrsdk segment` unpacked: a ZIP inside a ZIP
            raise ReadError(
                path,
                "a ZIP archive inside a ZIP archive is not unpacked: unpack the outer archive and give the inner .zip",
            )
        raise ReadError(
            path,
            "a ZIP archive: read what `with cmrsdk.io.archive.unpacked(path) as u:` gives (u.path), "
            "or give it to `cmrsdk segment`, which unpacks it",
        )
    if kind == "acdc":
        return read_acdc_patient(path, **options)
    if kind == "mnms":
        return read_mnms_subject(path, **options)
    if kind == "nifti":
        if not options and nifti_frames(path) > 1:  # a 4-D cine (its label maps are not read)
            return read_nifti_cine(path)
        stack = read_nifti_stack(path, **options)
        return Study(phases=(stack,), info=StudyInfo(source=str(path)))
    refused = _acdc_without_info(Path(path))
    if refused:
        raise ReadError(path, refused)
    return read_dicom_study(path, **options)


def inspect(path: str | Path) -> dict[str, Any]:
    """What a path holds, as a JSON-ready dict: format, series, slices, phases, spacing, orientation, ED/ES.

    Keys: ``path``, ``format``, ``series`` (DICOM only: uid, description, images, positions,
    phases, trigger_span_ms, dynamic, short_axis and pixel_mm of every series and stack of
    series, the chosen one first), ``series_read`` (DICOM only: the uid read), ``warnings`` (what
    reading it warned, such as other cines passed over), ``patient_id``, ``slices``, ``phases``,
    ``matrix`` [Y, X], ``spacing_mm`` [dz, dy, dx], ``orientation`` (the RAS+ unit vectors of
    the slice, row and column axes), ``ed_index``, ``es_index``, ``ed_es_from`` ("input": both
    named by the files; "lv_volume": a cine, measured where its LV volume curve is largest and
    smallest, so ``ed_index`` 0, the first phase, is only the R-wave trigger's; None: one phase),
    ``labelled_phases``,
    ``trigger_times_ms``; ``archive`` (True) for a ZIP archive, inspected unpacked.
    """
    path = Path(path)
    if is_archive(path):
        with unpacked(path) as readable:
            inner = inspect(readable.path)
        return {**inner, "path": str(path), "archive": True}
    kind = detect_format(path)
    with one_walk():  # the study and its series list from one reading of the headers
        return _inspect(path, kind)


def _inspect(path: Path, kind: str) -> dict[str, Any]:
    """`inspect` of a path that is not an archive, of format ``kind``."""
    with collect() as caught:
        study = read_study(path)
    for warning in caught:  # said in the result, and still to the caller
        reissue(warning)
    stack = study.phases[0]
    axes = stack.affine[:3, :3] / np.asarray(stack.spacing)
    report: dict[str, Any] = {
        "path": str(path),
        "format": kind,
        "patient_id": study.info.patient_id,
        "slices": stack.shape[0],
        "phases": len(study.phases),
        "matrix": list(stack.shape[1:]),
        "spacing_mm": [round(float(s), 4) for s in stack.spacing],
        "orientation": {
            "slice": axes[:, 0].round(4).tolist(),
            "row": axes[:, 2].round(4).tolist(),
            "column": axes[:, 1].round(4).tolist(),
        },
        "ed_index": study.ed_index,
        "es_index": study.es_index,
        # what segment measures at: the named phases, or the cine's volume curve (report.ed_es_from)
        "ed_es_from": None
        if len(study.phases) == 1
        else ("input" if study.ed_index is not None and study.es_index is not None else "lv_volume"),
        "labelled_phases": [i for i, s in enumerate(study.phases) if s.labels is not None],
        "trigger_times_ms": None
        if study.trigger_times_ms is None
        else [round(float(t), 2) for t in study.trigger_times_ms],
        "manufacturer": study.info.manufacturer,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, CmrWarning)],
    }
    if kind == "dicom":
        report["series_read"] = study.info.series_uid
        with collect() as again:  # the headers read above (`one_walk`): what they said, said once
            scanned = scan_dicom_series(path)
        said = {str(w.message) for w in caught}
        for warning in again:
            if str(warning.message) not in said:
                reissue(warning)
        report["series"] = [
            {
                "uid": s.series_uid,
                "description": s.description,
                "images": s.n_images,
                "positions": s.n_positions,
                "phases": s.n_phases,
                "trigger_span_ms": None if s.trigger_span_ms is None else round(s.trigger_span_ms, 1),
                "dynamic": s.is_dynamic,
                "short_axis": s.is_short_axis,
                "pixel_mm": round(s.pixel_mm, 3),
            }
            for s in scanned
        ]
    return report
