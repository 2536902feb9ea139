"""Source headers made fit to derive new DICOM objects (SEG, SR) from, as archives deliver them.

Research and anonymised archives carry values that a strict writer refuses or that make the
derived object invalid: dates such as ``00000000`` or ``20120000`` or ``UNKNOWN``, absent Type 2
attributes, (Sunnybrook) a different FrameOfReferenceUID on every image of one series, direction
cosines rounded differently per image, no SliceThickness, and character sets highdicom does not
write (code extensions such as Japanese ``\\ISO 2022 IR 87``, misnamed ones such as
``ISO-8859-1``). :func:`derivation_sources` reads the source files and repairs only what the
derived object copies, so that it passes ``dciodvfy``: invalid dates and times are written empty
(Type 2), missing Type 2 patient and study attributes are added empty, one frame of reference is
chosen for the series, orientations the reader stacked as one plane (`ORIENTATION_ATOL`) take
the first image's, an absent SliceThickness takes the slice spacing, and text in an unwritable
character set is decoded and written as UTF-8 (``ISO_IR 192``); de-identifiers' values (sweep 43)
are made valid too: a PatientSex outside M/F/O written empty (a case difference upper-cased), a
PatientAge that is no Age String and ReferencedStudySequence items with emptied UIDs left out,
and dates before 1900 (``00010101``) emptied. Every repair warns once
(:class:`cmrsdk.errors.CmrWarning`), naming the file, the attribute and the value. UIDs are kept
as they are: they are what the archive files the images under, and a derived object must
reference them verbatim.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VM
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

from ..errors import CmrWarning, ReadError
from ._dataset import is_lossy, read_dataset, settle_character_set
from ._geometry import ORIENTATION_ATOL
from ._multiframe import is_multiframe
from .._warn import quiet, warn

__all__ = [
    "derivation_sources",
    "check_derivation_sources",
    "device_observer",
    "valid_date",
    "valid_time",
    "ALGORITHM_PARAMETERS",
    "algorithm_version",
    "algorithm_parameters",
]

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


#: the earliest year a date the outputs copy may name (`valid_date`)
_FIRST_YEAR = 1900
#: enumerated values of the patient module that SEG and SR copy -> the defined terms; another
#: value (an anonymiser's 'U', 'ANON', 'MALE') is no longer what the standard names: PatientSex
#: (Type 2, highdicom refuses any other) is written empty, the Type 3 ones are left out
_ENUMERATED = {
    "PatientSex": ("M", "F", "O"),
    "PatientSexNeutered": ("ALTERED", "UNALTERED"),
    "PatientIdentityRemoved": ("YES", "NO"),
    "QualityControlSubject": ("YES", "NO"),
}
#: an Age String (AS): three digits and D, W, M or Y
_AGE = re.compile(r"^\d{3}[DWMY]$")
#: sequences of the patient and study modules whose items reference an instance (both UIDs Type 1)
_REFERENCE_SEQUENCES = ("ReferencedStudySequence", "ReferencedPatientSequence")
#: what a SEG and an SR cannot do without from each source image (Type 1 there) -> (tag, why)
_REQUIRED = {
    "StudyInstanceUID": ("(0020,000D)", "a SEG or SR cannot join the study"),
    "SeriesInstanceUID": ("(0020,000E)", "a DICOM SEG references the source series by it"),
    "SOPInstanceUID": ("(0008,0018)", "a DICOM SEG references each source image by it"),
    "SOPClassUID": ("(0008,0016)", "a DICOM SEG references each source image by it and its instance UID"),
    "Modality": ("(0008,0060)", "a DICOM SEG's content label names the source's modality"),
}


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


#: provenance keys (`cmrsdk.Pipeline.provenance`) a SEG or SR names its algorithm by: what decides
#: its masks and numbers besides the images (bundle, code, runtime, arithmetic, options)
ALGORITHM_PARAMETERS = (
    "manifest_sha256", "code_sha256", "backends", "runtimes", "precision", "device", "mode",
    "mirroring", "rescale_heart", "heart_scale", "training_layout", "heart_crop", "segment_spacing", "regions_from",
    "region_decoding", "apical_rv_weight", "systolic_base", "largest_component",
)  # fmt: skip


def algorithm_version(provenance: Mapping[str, Any] | None) -> str:
    """AlgorithmVersion (LO, at most 64 characters): cmrsdk's version and the first 16 hex digits
    of the bundle's manifest SHA-256, so that a PACS tells two models of one release apart."""
    from .. import __version__

    sha = str((provenance or {}).get("manifest_sha256") or "")
    return f"{__version__} bundle {sha[:16]}" if sha else __version__


def algorithm_parameters(provenance: Mapping[str, Any] | None) -> dict[str, str]:
    """The run's `ALGORITHM_PARAMETERS` as text by key (unknown ones left out): mappings as
    ``name:value`` joined by spaces, lists by ``x``, so no value holds the ``,`` or ``=`` the
    DICOM encodings put between parameters."""

    def text(value: Any) -> str:
        if isinstance(value, Mapping):
            return " ".join(f"{k}:{text(v)}" for k, v in sorted(value.items()))
        if isinstance(value, (list, tuple)):
            return "x".join(text(v) for v in value)
        return str(value).replace(",", " ").replace("=", ":")

    prov = provenance or {}
    return {key: text(prov[key]) for key in ALGORITHM_PARAMETERS if prov.get(key) not in (None, "", {}, [])}


def valid_date(value: object) -> bool:
    """True for a DICOM DA value ``YYYYMMDD`` naming a real calendar date (year 1900..9999).

    Years before 1900 are anonymisers' placeholders (dicom-anonymizer writes ``00010101``), not
    dates of an MR study or of a living patient's birth; 1900 itself stays (PS3.15's "zero" date).
    """
    text = str(value).strip()
    if len(text) != 8 or not text.isdigit() or int(text[:4]) < _FIRST_YEAR:
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


def derivation_sources(files: Sequence[str | Path], slice_spacing_mm: float | None = None) -> list[Dataset]:
    """The source images of one stack (one per slice), read and repaired for SEG and SR writers.

    Parameters
    ----------
    files : the DICOM file of each slice, in slice order (``Stack.source_files``).
    slice_spacing_mm : the stack's slice spacing (mm), written as the SliceThickness of sources
        that have none (a SEG's pixel measures need one); None leaves it absent.

    Returns
    -------
    One pydicom Dataset per file, in order, with invalid dates and times emptied, absent Type 2
    attributes added empty, one ImageOrientationPatient (the first image's, where the others
    differ from it by rounding only), SliceThickness where absent (``slice_spacing_mm``), text
    re-encoded as UTF-8 where highdicom cannot write the source's character set, and a single
    FrameOfReferenceUID: the shared one where all agree, otherwise one derived from all of them
    (the same for every phase of the series: derived from its SeriesInstanceUID), with a warning.

    Raises
    ------
    ReadError : a file that cannot be read, or a source without a UID or Modality the outputs
        reference it by (`check_derivation_sources`).
    """
    datasets = []
    for file in files:
        try:
            datasets.append(read_dataset(file))  # invalid UIDs are kept verbatim, see module docstring
        except Exception as exc:
            raise ReadError(
                file, f"source image cannot be read again for the DICOM outputs ({type(exc).__name__}: {exc})"
            ) from exc
    repaired: dict[str, str] = {}  # one warning per attribute: the first file and value met
    with quiet():  # the sources' values are checked and repaired here: pydicom's notices about them are not news
        for file, ds in zip(files, datasets):
            settled = settle_character_set(ds)  # before any text is decoded
            if settled is not None:
                repaired.setdefault("character set", f"{file}: {settled}")
            _check_required(file, ds)
            _fit_patient(file, ds, repaired)
            for keyword, check in [(k, valid_date) for k in _DATES] + [(k, valid_time) for k in _TIMES]:
                if keyword in ds:
                    text = _raw_text(ds, keyword)
                    if text and not check(text):
                        kind = "date" if keyword in _DATES else "time"
                        repaired.setdefault(
                            keyword,
                            f"{file}: '{keyword}' value {text!r} is not a valid DICOM {kind}; "
                            "written empty in the DICOM outputs",
                        )
                        ds[keyword].value = ""
            for keyword in _TYPE2:
                if keyword not in ds:
                    setattr(ds, keyword, "")
            charset = _unwritable_charset(ds)
            if charset is not None:
                ds.decode()  # text to str with the source's character set, before it is renamed
                ds.SpecificCharacterSet = "ISO_IR 192"
                repaired.setdefault(
                    "SpecificCharacterSet",
                    f"{file}: 'SpecificCharacterSet' (0008,0005) value {charset!r} cannot be written by "
                    "the DICOM writer; text is written as UTF-8 (ISO_IR 192) in the DICOM outputs",
                )
            thickness = _number(ds, "SliceThickness") if "SliceThickness" in ds else None
            # an enhanced multi-frame source keeps it in its functional groups' pixel measures
            if (
                slice_spacing_mm is not None
                and "PixelData" in ds
                and not is_multiframe(ds)
                and not (thickness and thickness > 0)
            ):
                said = "missing" if "SliceThickness" not in ds else f"{_raw_text(ds, 'SliceThickness')!r}"
                ds.SliceThickness = _ds_text(slice_spacing_mm)
                repaired.setdefault(
                    "SliceThickness",
                    f"{file}: 'SliceThickness' (0018,0050) is {said}; the DICOM outputs give the slice "
                    f"spacing, {_ds_text(slice_spacing_mm)} mm",
                )
            _fit_text(file, ds, repaired)
            if is_lossy(ds):  # a derived object says its source lost detail (the reader warned)
                ds.LossyImageCompression = "01"
        _share_orientation(files, datasets, repaired)
    for message in repaired.values():
        warn(CmrWarning(message), stacklevel=2)
    with quiet():
        frames = [str(ds.get("FrameOfReferenceUID", "") or "") for ds in datasets]
    distinct = sorted(set(frames) - {""})
    if len(distinct) == 1 and "" not in frames:
        return datasets
    # Images stacked in one series share one space whatever their headers say (the reader checked
    # the geometry); a UID derived from all of them is the same for the ED and ES outputs.
    with quiet():
        series = str(datasets[0].get("SeriesInstanceUID", "") or datasets[0].get("StudyInstanceUID", ""))
    common = generate_uid(entropy_srcs=[series, "cmrsdk frame of reference"])
    warn(
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


def check_derivation_sources(files: Sequence[str | Path]) -> None:
    """Check, before any segmentation, that SEG and SR can be derived from ``files``: each holds
    the UIDs and Modality they reference it by (pydicom/deid's default recipe deletes them).

    Raises
    ------
    ReadError : the first file that cannot be read, or that lacks one (naming the attribute).
    """
    for file in files:
        try:
            dataset = read_dataset(file, stop_before_pixels=True)
        except Exception as exc:
            raise ReadError(
                file, f"source image cannot be read again for the DICOM outputs ({type(exc).__name__}: {exc})"
            ) from exc
        with quiet():  # invalid UIDs are kept verbatim, see module docstring
            _check_required(file, dataset)


def _check_required(file: str | Path, ds: Dataset) -> None:
    for keyword, (tag, why) in _REQUIRED.items():
        if not _raw_text(ds, keyword):
            raise ReadError(file, f"'{keyword}' {tag} is missing; {why}")


def _fit_patient(file: str | Path, ds: Dataset, repaired: dict[str, str]) -> None:
    """The patient and study values the outputs copy (highdicom copies those modules whole) made
    valid: enumerated values outside their defined terms (a case or space difference upper-cased
    and kept), an age that is no Age String, and reference items whose Type 1 UIDs are empty."""
    for keyword, terms in _ENUMERATED.items():
        if keyword not in ds:
            continue
        text = _raw_text(ds, keyword)
        if not text or text in terms:
            continue
        fixed = text.upper() if text.upper() in terms else ""
        if fixed:
            ds[keyword].value = fixed
            said = f"written {fixed!r} in"
        elif keyword == "PatientSex":  # Type 2: present, empty
            ds[keyword].value = ""
            said = "written empty in"
        else:  # Type 3: absent
            del ds[keyword]
            said = "left out of"
        repaired.setdefault(
            keyword, f"{file}: '{keyword}' value {text!r} is not one of {'/'.join(terms)}; {said} the DICOM outputs"
        )
    if "PatientAge" in ds:
        text = _raw_text(ds, "PatientAge")
        if text and not _AGE.match(text):
            del ds.PatientAge  # Type 3
            repaired.setdefault(
                "PatientAge",
                f"{file}: 'PatientAge' (0010,1010) value {text!r} is not a DICOM age (nnnD/W/M/Y); "
                "left out of the DICOM outputs",
            )
    for keyword in _REFERENCE_SEQUENCES:
        if keyword not in ds or ds[keyword].VR != "SQ":
            continue
        items = list(ds[keyword].value)
        kept = [
            item
            for item in items
            if _raw_text(item, "ReferencedSOPClassUID") and _raw_text(item, "ReferencedSOPInstanceUID")
        ]
        if len(kept) == len(items):
            continue
        if kept:
            ds[keyword].value = kept
        else:
            del ds[keyword]  # Type 3
        repaired.setdefault(
            keyword,
            f"{file}: '{keyword}' has {len(items) - len(kept)} of {len(items)} items with an empty "
            "ReferencedSOPClassUID or ReferencedSOPInstanceUID; left out of the DICOM outputs",
        )


#: most characters per value the outputs may copy (PS3.5 table 6.2-1; PN: per component group)
_TEXT_LIMITS = {"SH": 16, "LO": 64, "PN": 64}

#: kept verbatim, as UIDs are: the archive matches the outputs to the patient and order by them
_IDENTIFIERS = frozenset({"PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyID"})

#: control characters no SH, LO or PN value may hold (CR, LF, NUL, DEL, ...)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _number(ds: Dataset, keyword: str) -> float | None:
    """A DS value as a finite number, a decimal comma read as a point; None where it is not one."""
    text = _raw_text(ds, keyword).replace(",", ".")
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _fit_text(file: str | Path, ds: Dataset, repaired: dict[str, str]) -> None:
    """The top-level text a derived object copies made valid: control characters as spaces,
    values cut to their VR's length, the first of several names where one is allowed (other
    text keeps its values: the archive files the outputs by the PatientID the source holds), and
    decimal commas in the patient's DS values read as points."""
    for keyword in ("PatientWeight", "PatientSize"):
        raw = _raw_text(ds, keyword) if keyword in ds else ""
        if "," in raw:
            number = _number(ds, keyword)
            ds[keyword].value = "" if number is None else _ds_text(number)
            repaired.setdefault(
                keyword,
                f"{file}: '{keyword}' value {raw!r} is not a DICOM decimal; written "
                f"{ds[keyword].value or 'empty'!r} in the DICOM outputs",
            )
    for element in list(ds):
        limit = _TEXT_LIMITS.get(str(element.VR))
        if limit is None or element.value in (None, "") or element.keyword in _IDENTIFIERS:
            continue
        values = [str(v) for v in element.value] if isinstance(element.value, MultiValue) else [str(element.value)]
        fitted = [_CONTROL.sub(" ", v).strip()[:limit] for v in values]
        one_name = dictionary_has_tag(element.tag) and dictionary_VM(element.tag) == "1"  # private tags: no VM known
        if element.VR == "PN" and len(fitted) > 1 and one_name:
            fitted = fitted[:1]  # the writers take one name only
        if fitted == values:
            continue
        element.value = fitted[0] if len(fitted) == 1 else fitted
        repaired.setdefault(
            f"text {element.tag}",
            f"{file}: {element.keyword or element.tag} value {chr(92).join(values)!r} is not valid {element.VR} "
            f"(control characters, over {limit} characters, or several names); written "
            f"{chr(92).join(fitted)!r} in the DICOM outputs",
        )


def _ds_text(value: float) -> str:
    """``value`` as a decimal string (VR DS) of at most 16 characters."""
    return f"{value:.6g}"


def _unwritable_charset(ds: Dataset) -> str | None:
    """The source's SpecificCharacterSet as text where highdicom cannot write it (None where it
    can, or where there is none: the default repertoire). highdicom takes single defined terms
    (``ISO_IR 100``, ``ISO_IR 192``, ...); code extensions (``\\ISO 2022 IR 87``) and names that
    are not defined terms (``ISO-8859-1``, ``ISO_IR 6``) it refuses."""
    from highdicom import SpecificCharacterSetValues

    value = ds.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    values = [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]
    writable = {v.value for v in SpecificCharacterSetValues if "2022" not in v.value}
    if len(values) == 1 and values[0] in writable:
        return None
    return "\\".join(values)


def _share_orientation(files: Sequence[str | Path], datasets: list[Dataset], repaired: dict[str, str]) -> None:
    """Give every single-frame source the first one's ImageOrientationPatient where they differ
    by rounding only (within `ORIENTATION_ATOL`, as the reader stacked them): highdicom builds a
    SEG only from sources whose orientations are equal to the last digit."""
    orientations = [ds.get("ImageOrientationPatient") for ds in datasets]
    if any(o is None or len(o) != 6 for o in orientations):
        return  # multi-frame sources: their frames carry the geometry
    first = [float(v) for v in orientations[0]]
    gaps = [max(abs(float(v) - f) for v, f in zip(o, first)) for o in orientations]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    if gaps[worst] == 0.0 or gaps[worst] > ORIENTATION_ATOL:
        return  # equal already, or not one plane (the reader refuses such a series)
    for ds in datasets:
        ds.ImageOrientationPatient = list(orientations[0])
    repaired.setdefault(
        "ImageOrientationPatient",
        f"{files[worst]}: 'ImageOrientationPatient' (0020,0037) {[float(v) for v in orientations[worst]]} "
        f"differs from {Path(files[0]).name}'s by {gaps[worst]:.1g} (rounding); the DICOM outputs use "
        f"{Path(files[0]).name}'s",
    )
