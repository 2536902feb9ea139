"""A rejection note: withdraws results a PACS already holds (IHE IOCM, a DICOM Key Object Selection).

When the node judges a series again (its transfer was cut off and resent), the SEG and SR of the
first judgement may already be in the PACS, computed from part of the slices. DIMSE has no
delete; IHE Imaging Object Change Management (IOCM) withdraws instances with a Key Object
Selection document titled "Rejected for Quality Reasons" (DCM 113001) that references them: a
PACS that implements IOCM hides them, one that does not stores the note beside them, where a
reader sees it. The note joins the rejected instances' study, in a series of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError, ReadError, WriteError
from ._atomic import atomic_path
from ._dicom_out import device_observer
from .._warn import quiet

__all__ = ["write_rejection_note", "REJECTED_FOR_QUALITY"]

#: (code value, coding scheme, meaning) of the note's title (PS3.16 CID 7011)
REJECTED_FOR_QUALITY = ("113001", "DCM", "Rejected for Quality Reasons")


def write_rejection_note(
    path: str | Path,
    rejected_files: Sequence[str | Path],
    *,
    description: str = "superseded: the series was judged again on instances that came later",
    series_number: int = 905,
) -> Path:
    """Write a Key Object Selection document rejecting the DICOM instances ``rejected_files``.

    Parameters
    ----------
    path : the .dcm file to write (through a temporary name, then renamed).
    rejected_files : DICOM files (SEG, SR, ...) of one study, as they were sent to the PACS.
    description : the note's Key Object Description (why), at most 1024 characters.
    series_number : of the note's new series.

    Returns
    -------
    The path written.

    Raises
    ------
    InputError : no files, or files of several studies.
    ReadError : a file that cannot be read as DICOM.
    WriteError : highdicom refuses to build the note, or the file cannot be written.
    """
    import highdicom as hd  # optional dependency (cmrsdk[io])
    import pydicom
    from pydicom.sr.coding import Code

    if not rejected_files:
        raise InputError(f"{path}: 'rejected_files' is empty; a rejection note references what it rejects")
    datasets = []
    for file in rejected_files:
        try:
            with quiet():
                datasets.append(pydicom.dcmread(str(file)))
        except Exception as exc:  # any file pydicom cannot parse
            raise ReadError(Path(file), f"cannot be read as DICOM ({type(exc).__name__}: {exc})") from exc
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
    if len(studies) != 1:
        raise InputError(f"{path}: the rejected files belong to {len(studies)} studies; one note rejects one study's")
    try:
        with quiet():  # UIDs invalid per VR UI are referenced verbatim
            content = hd.ko.KeyObjectSelection(
                document_title=Code(*REJECTED_FOR_QUALITY),
                referenced_objects=datasets,
                observer_device_context=device_observer(),
                description=description[:1024],
            )
            note = hd.ko.KeyObjectSelectionDocument(
                evidence=datasets,
                content=content,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="cmrsdk",
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise WriteError(f"{path}: rejection note cannot be built ({type(exc).__name__}: {exc})") from exc
    with atomic_path(path) as temporary:
        note.save_as(str(temporary))
    return Path(path)
