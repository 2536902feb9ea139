"""The labelled cases of an evaluation: which folders are read, which are skipped and why, and the
ground truth each study must hold before anything is segmented.

A folder that holds NIfTI files but is neither an ACDC patient nor an M&Ms subject folder is an
attempt at a case that the readers do not recognise (``info.cfg`` for ``Info.cfg``, a renamed
file): it is listed with the reason, never silently dropped, so a cohort does not shrink unseen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CmrError, InputError, ReadError
from ..labels import LABEL_NAMES, STRUCTURES
from ..types import Stack, Study

__all__ = ["CaseFolders", "find_case_folders", "check_ground_truth", "not_annotated"]

_NIFTI = (".nii", ".nii.gz")


@dataclass
class CaseFolders:
    """The case folders found under one ``--data`` root.

    Attributes
    ----------
    folders : the ACDC patient / M&Ms subject folders kept (after ``every``), sorted.
    skipped : (folder, reason) of each folder that holds NIfTI files but is not recognised.
    found : how many case folders were recognised before ``every`` thinned them.
    """

    folders: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    found: int = 0


def find_case_folders(root: str | Path, every: int | None = None) -> CaseFolders:
    """The ACDC patient or M&Ms subject folders under ``root`` (or ``root`` itself), sorted.

    Parameters
    ----------
    root : a case folder, or a folder of them.
    every : keep every N-th case folder (ACDC's held-out split of ``export/``: patient005,
        patient010, ...); None keeps all.

    Raises
    ------
    ReadError
        ``root`` does not exist, or is a file.
    """
    from ..io import detect_format

    root = Path(root)
    if detect_format(root) in ("acdc", "mnms"):
        return CaseFolders([root], [], 1)
    if not root.is_dir():
        raise ReadError(root, "a file: --data takes ACDC patient or M&Ms subject folders, or folders of them")
    found = CaseFolders()
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            kind = detect_format(entry)
        except CmrError as exc:  # unreadable: listed, not fatal for the other cases
            found.skipped.append((entry, str(exc).removeprefix(f"{entry}: ")))
            continue
        if kind in ("acdc", "mnms"):
            found.folders.append(entry)
            continue
        reason = _unrecognised(entry)
        if reason:
            found.skipped.append((entry, reason))
    if not found.folders and not found.skipped:
        reason = _unrecognised(root)  # NIfTI files directly under --data
        if reason:
            found.skipped.append((root, reason))
    found.found = len(found.folders)
    if every:
        found.folders = [p for i, p in enumerate(found.folders, start=1) if i % every == 0]
    return found


def _unrecognised(folder: Path) -> str | None:
    """Why a folder holding NIfTI files is no case folder; None where it holds none (not an attempt)."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        return f"cannot be listed ({exc.strerror or exc})"
    nifti = [n for n in names if n.lower().endswith(_NIFTI)]
    if not nifti:
        return None
    # the ACDC reader knows a patient by 'Info.cfg' spelt exactly so
    cfg = [n for n in names if n != "Info.cfg" and n.lower().startswith("info") and "cfg" in n.lower()]
    if cfg:
        return f"holds {cfg[0]!r}, not 'Info.cfg': an ACDC patient folder is recognised by 'Info.cfg', spelt exactly so"
    shown = ", ".join(nifti[:2]) + (f" and {len(nifti) - 2} more" if len(nifti) > 2 else "")
    return (
        f"holds NIfTI files ({shown}) but is neither an ACDC patient folder (Info.cfg, PATIENT_frameNN.nii.gz) "
        "nor an M&Ms subject folder (SUBJECT_sa_ED.nii.gz, SUBJECT_sa_ES.nii.gz, or SUBJECT_sa.nii.gz)"
    )


def _label_file(stack: Stack) -> str:
    """The label map a reader looks for beside a stack's image (``<image>_gt.nii.gz``), for messages."""
    source = Path(str(stack.source or "").split(" (frame")[0])
    name = source.name
    if name.lower().endswith(_NIFTI):
        return f"{name[: name.lower().rfind('.nii')]}_gt.nii.gz"
    return "a ground-truth label map"


def check_ground_truth(study: Study, where: str | Path) -> None:
    """Refuse a study that cannot be scored: no label map at ED or ES, or label maps holding no label.

    A phase whose label map is all 0 while the other's holds labels is accepted: the phase was
    not annotated (see `not_annotated`).

    Parameters
    ----------
    study : a `Study` with known ED and ES, uint8 (Z, Y, X) canonical labels on each.
    where : the study's folder, named in the error.

    Raises
    ------
    ReadError
        Naming the missing label file, or the label maps that hold no label.
    """
    try:
        stacks = {"ED": study.ed, "ES": study.es}
    except InputError as exc:
        raise ReadError(where, f"{exc}: evaluate scores ED and ES against their label maps") from exc
    missing = [f"{phase} label map {_label_file(s)} not found" for phase, s in stacks.items() if s.labels is None]
    if missing:
        raise ReadError(where, "; ".join(missing) + ": evaluate scores ED and ES against their label maps")
    if not any(np.any(s.labels) for s in stacks.values()):
        files = " and ".join(_label_file(s) for s in stacks.values())
        raise ReadError(where, f"label maps {files} hold no label (every voxel 0): nothing to score against")


def not_annotated(study: Study) -> tuple[set[tuple[str, str]], list[str]]:
    """The structures the reference leaves empty in a whole phase: not annotated, not absent.

    A heart has its LV blood pool, myocardium and RV in every phase, so a structure with no
    voxel in a phase's label map (an ED-only annotation, LV-only contours) was not drawn; scoring
    the model against it would charge it for what the annotators left out.

    Returns
    -------
    ({(phase, structure name)} not annotated, one warning per phase or structure saying so).
    """
    missing: set[tuple[str, str]] = set()
    notes: list[str] = []
    absent: dict[str, list[str]] = {}
    for phase, stack in (("ED", study.ed), ("ES", study.es)):
        labels = stack.labels
        if labels is None:
            continue
        names = [LABEL_NAMES[s] for s in STRUCTURES if not np.any(labels == s)]
        missing |= {(phase, name) for name in names}
        if len(names) == len(STRUCTURES):
            notes.append(
                f"{phase} label map {_label_file(stack)} holds no label: {phase} not annotated, left out of the "
                f"Dice scores and of the volume agreement"
            )
        else:
            for name in names:
                absent.setdefault(name, []).append(phase)
    for name, phases in absent.items():
        notes.append(
            f"no {name} in the reference at {' or '.join(phases)}: {name} at {' and '.join(phases)} not annotated, "
            "left out of the Dice scores and of the volume agreement"
        )
    return missing, notes
