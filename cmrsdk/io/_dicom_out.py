"""Source headers made fit to derive new DICOM objects (SEG, SR) from, as archives deliver them.

Research and anonymised archives carry values that a strict writer refuses or that make the
derived object invalid: dates such as ``00000000`` or ``20120000`` or ``UNKNOWN``, absent Type 2
attributes, and (Sunnybrook) a different FrameOfReferenceUID on every image of one series.
:func:`derivation_sources` reads the source files and repairs only what the derived object
copies, so that it passes ``dciodvfy``: invalid dates and times are written empty (Type 2),
missing Type 2 patient and study attributes are added empty, and one frame of reference is
chosen for the series. Every repair warns once (:class:`cmrsdk.errors.CmrWarning`), naming the
file, the attribute and the value. UIDs are kept as they are: they are what the archive files
the images under, and a derived object must reference them verbatim.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..errors import CmrWarning, ReadError

__all__ = ["derivation_sources", "device_observer", "valid_date", "valid_time"]

#: date (DA) and time (TM) attributes of the patient, study and series modules that SEG and SR copy.
_DATES = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_TIMES = ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "PatientBirthTime")
#: Type 2 attributes highdicom copies from the first source image (absent ones are added empty).
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)


def device_observer() -> Any:
    """The SR observer context naming cmrsdk as the device that made a report or a note (highdicom)."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    return hd.sr.ObserverContext(
        observer_type=Code("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="cmrsdk", manufacturer_name="cmrsdk", model_name="cmrsdk"
        ),
    )


def valid_date(value: object) -> bool:
    """True for a DICOM DA value ``YYYYMMDD`` naming a real calendar date (year 1..9999)."""
    text = str(value).strip()
    if len(text) != 8 or not text.isdigit():
        return False
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def valid_time(value: object) -> bool:
    """True for a DICOM TM value ``HH[MM[SS[.F{1,6}]]]`` within a day."""
    text = str(value).strip()
    whole, _, fraction = text.partition(".")
    if (
        not whole.isdigit()
        or len(whole) not in (2, 4, 6)
        or (fraction and not (fraction.isdigit() and len(fraction) <= 6))
    ):
        return False
    parts = [int(whole[i : i + 2]) for i in range(0, len(whole), 2)]
    limits = (23, 59, 60)  # 60: a leap second is a valid TM
    return all(p <= limit for p, limit in zip(parts, limits))


def _raw_text(dataset: Dataset, keyword: str) -> str:
    element = dataset.get_item(keyword)
    value = getattr(element, "value", "")
    return value.decode(errors="replace").strip() if isinstance(value, bytes) else str(value or "").strip()


def derivation_sources(files: Sequence[str | Path]) -> list[Dataset]:
    """The source images of one stack (one per slice), read and repaired for SEG and SR writers.

    Parameters
    ----------
    files : the DICOM file of each slice, in slice order (``Stack.source_files``).

    Returns
    -------
    One pydicom Dataset per file, in order, with invalid dates and times emptied, absent Type 2
    attributes added empty and a single FrameOfReferenceUID: the shared one where all agree,
    otherwise one derived from all of them (the same for every phase of the series: derived from its
    SeriesInstanceUID), with a warning.

    Raises
    ------
    ReadError : a file that cannot be read, or a source without StudyInstanceUID.
    """
    datasets = []
    for file in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid UIDs are kept verbatim, see module docstring
                datasets.append(pydicom.dcmread(str(file)))
        except Exception as exc:
            raise ReadError(
                file, f"source image cannot be read again for the DICOM outputs ({type(exc).__name__}: {exc})"
            ) from exc
    repaired: dict[str, tuple[str, str]] = {}
    for file, ds in zip(files, datasets):
        if not str(ds.get("StudyInstanceUID", "") or ""):
            raise ReadError(file, "'StudyInstanceUID' (0020,000D) is missing; a SEG or SR cannot join the study")
        for keyword, check in [(k, valid_date) for k in _DATES] + [(k, valid_time) for k in _TIMES]:
            if keyword in ds:
                text = _raw_text(ds, keyword)
                if text and not check(text):
                    repaired.setdefault(keyword, (str(file), text))
                    ds[keyword].value = ""
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    for keyword, (file, text) in repaired.items():
        warnings.warn(
            CmrWarning(
                f"{file}: '{keyword}' value {text!r} is not a valid DICOM "
                f"{'date' if keyword in _DATES else 'time'}; written empty in the DICOM outputs"
            ),
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = [str(ds.get("FrameOfReferenceUID", "") or "") for ds in datasets]
    distinct = sorted(set(frames) - {""})
    if len(distinct) == 1 and "" not in frames:
        return datasets
    # Images stacked in one series share one space whatever their headers say (the reader checked
    # the geometry); a UID derived from all of them is the same for the ED and ES outputs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        series = str(datasets[0].get("SeriesInstanceUID", "") or datasets[0].get("StudyInstanceUID", ""))
    common = generate_uid(entropy_srcs=[series, "cmrsdk frame of reference"])
    warnings.warn(
        CmrWarning(
            f"{files[0]}: 'FrameOfReferenceUID' (0020,0052) differs between the "
            f"source images{' (some have none)' if '' in frames else ''}; "
            f"the DICOM outputs use {common}"
        ),
        stacklevel=2,
    )
    for ds in datasets:
        ds.FrameOfReferenceUID = common
    return datasets
