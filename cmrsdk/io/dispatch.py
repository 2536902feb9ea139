"""`read_study`: one entry point that recognises what a path holds, and `inspect`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReadError
from ..types import Study
from .dicom import read_dicom_study, scan_dicom_series
from .nifti import read_acdc_patient, read_mnms_subject, read_nifti_stack

__all__ = ["detect_format", "read_study", "inspect"]


def detect_format(path: str | Path) -> str:
    """'acdc', 'mnms', 'nifti' or 'dicom' for what ``path`` holds (by layout, not content)."""
    path = Path(path)
    if not path.exists():
        raise ReadError(path, "no such file or directory")
    if path.is_file():
        return "nifti" if path.name.endswith((".nii", ".nii.gz")) else "dicom"
    if (path / "Info.cfg").is_file():
        return "acdc"
    if any(path.glob(f"{path.name}_sa_ED.nii*")):
        return "mnms"
    return "dicom"


def read_study(path: str | Path, **options: Any) -> Study:
    """Read a study from a DICOM directory, an ACDC patient folder, an M&Ms subject folder or a NIfTI file.

    ``options`` go to the reader: ``series_uid`` for DICOM; ``label_path`` and ``convention`` for
    a NIfTI file (which gives a one-phase study with ED and ES unknown).
    """
    kind = detect_format(path)
    if kind == "acdc":
        return read_acdc_patient(path, **options)
    if kind == "mnms":
        return read_mnms_subject(path, **options)
    if kind == "nifti":
        stack = read_nifti_stack(path, **options)
        return Study(phases=(stack,))
    return read_dicom_study(path, **options)


def inspect(path: str | Path) -> dict[str, Any]:
    """What a path holds, as a JSON-ready dict: format, series, slices, phases, spacing, orientation, ED/ES.

    Keys: ``path``, ``format``, ``series`` (DICOM only: uid, description, images, positions,
    phases of every series, the chosen one first), ``patient_id``, ``slices``, ``phases``,
    ``matrix`` [Y, X], ``spacing_mm`` [dz, dy, dx], ``orientation`` (the RAS+ unit vectors of
    the slice, row and column axes), ``ed_index``, ``es_index``, ``labelled_phases``,
    ``trigger_times_ms``.
    """
    path = Path(path)
    kind = detect_format(path)
    study = read_study(path)
    stack = study.phases[0]
    axes = stack.affine[:3, :3] / np.asarray(stack.spacing)
    report: dict[str, Any] = {
        "path": str(path), "format": kind, "patient_id": study.info.patient_id,
        "slices": stack.shape[0], "phases": len(study.phases), "matrix": list(stack.shape[1:]),
        "spacing_mm": [round(float(s), 4) for s in stack.spacing],
        "orientation": {"slice": axes[:, 0].round(4).tolist(), "row": axes[:, 2].round(4).tolist(),
                        "column": axes[:, 1].round(4).tolist()},
        "ed_index": study.ed_index, "es_index": study.es_index,
        "labelled_phases": [i for i, s in enumerate(study.phases) if s.labels is not None],
        "trigger_times_ms": None if study.trigger_times_ms is None else [round(float(t), 2) for t in study.trigger_times_ms],
        "manufacturer": study.info.manufacturer,
    }
    if kind == "dicom":
        report["series"] = [{"uid": s.series_uid, "description": s.description, "images": s.n_images,
                             "positions": s.n_positions, "phases": s.n_phases} for s in scan_dicom_series(path)]
    return report
