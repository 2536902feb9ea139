"""DICOM reader: a directory of MR images (classic single-frame or enhanced multi-frame) -> :class:`cmrsdk.Study`.

Series selection (when a directory holds several series, unless ``series_uid`` names one):
the short-axis cine is the series with (1) three or more slice positions, then (2) two or more
phases per position, then (3) phases that span the cardiac cycle (a dynamic series, perfusion or
mapping, repeats one trigger delay or steps its InversionTime: refused when chosen), then (4) a
slice normal within 46 degrees of the heart's long axis (`cmrsdk.regions.ORIENTED_COS`: short
axis, not an axial, coronal, sagittal or long-axis stack), then (5) the most slice positions, then
(6) the finest pixels (a real-time cine beside the standard one), then (7) a description naming a
short axis ("sa", "sax", "short"), then (8) one series before a stack of series, then (9) the most
images, then (10) the later series (highest SeriesNumber): a repeated cine, with a warning naming
the other; short-axis cines of two studies (StudyInstanceUID) are refused, one study being read
at a time. A series whose images lie in several planes (a radial long-axis set) is never chosen.
A short-axis cine stored over several series (one breath-hold each: a slice per series, or a few)
is read as one stack: cine series of the study with the same orientation, pixel size and matrix
and, for series of several slices, the same phase count, that together cover more positions than
any of them alone and three or more (a slice acquired twice: the later series). Within the
series, slices are ordered by
their position along the slice normal (row direction x column direction, ascending) and phases
by TriggerTime (NominalCardiacTriggerDelayTime, then InstanceNumber or TemporalPositionIdentifier
where absent). Pixels are ``stored * RescaleSlope +
RescaleIntercept``. The affine is built from ImagePositionPatient, ImageOrientationPatient and
PixelSpacing in DICOM LPS and flipped to RAS+.
The first phase (the one nearest the ECG R wave) is named ED and ES is left unknown: the pipeline
takes both from the LV volume curve (and locates the heart on the curve's ED, wherever the cine
starts).

DICOM as it comes
-----------------
- Series are grouped by SeriesInstanceUID and geometry, never by FrameOfReferenceUID: some
  archives (Sunnybrook) give every image its own frame of reference.
- A second file with an already seen SOPInstanceUID (PACS re-exports) is skipped with a
  :class:`~cmrsdk.errors.CmrWarning`.
- Text in TriggerTime ('n/a'), where no NominalCardiacTriggerDelayTime stands in, orders the
  series by InstanceNumber, with a warning; so does one time in every image (zeroed by a
  de-identification tool). Ordering by InstanceNumber is refused where it does not step by one
  stride at every slice position (renumbered at random or in the files' name order).
- Series of one image each (a de-identification tool that gave every file its own
  SeriesInstanceUID) that together form positions x phases of one geometry, SeriesNumber,
  description and ImageType are regrouped as one candidate, with a warning.
- AcquisitionTime spread over more than a breath-hold does not refuse a series whose TriggerTime
  steps through one heartbeat at every position (times shifted per file by a de-identification tool).
- Enhanced multi-frame MR (and Legacy Converted Enhanced MR) is read frame by frame: each frame
  gets the header a classic image would carry, from its functional groups
  (:mod:`cmrsdk.io._multiframe`), and ``Stack.source_frames`` names it.
- Compressed transfer syntaxes are decoded by the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000) or pydicom itself (RLE, deflate), and
  refused naming the package to install where it is missing.
- Image sizes are checked from the headers before any pixel data is read; pixel data is decoded
  for the series read alone. Of a header's elements, those whose decoding could fail (a VR that
  does not exist, a binary number of a wrong length, a sequence, text in a number) are decoded
  when the file is read, so that a corrupt file is refused naming it, the rest when used
  (:func:`cmrsdk.io._dataset.check_decodable`); what a folder's files repeat byte for byte is
  decoded once.
- A data set written without the Part 10 preamble and file meta (older systems, gateways) is
  read as its file would be (:mod:`cmrsdk.io._dataset`); other files without ``DICM`` are not
  DICOM and are passed over: silently where the name says so too (``notes.txt``, ``README``),
  with one warning naming them where it is an image's (``.dcm``, ``.ima``, ``IM0001``) and the
  folder holds images (a slice overwritten would otherwise leave the volume without a word).
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .._checks import IN_PLANE_RANGE_MM, MAX_MATRIX, SLICE_RANGE_MM
from ..errors import CmrWarning, ReadError
from ..regions import ORIENTED_COS, apex_cosine
from ..types import Stack, Study, StudyInfo
from ._dataset import Decoded, check_decodable, decode_elements, is_lossy, read_dataset, settle_character_set
from ._geometry import ORIENTATION_ATOL
from ._multiframe import ENHANCED_MR_CLASSES, frame_headers, is_multiframe, magnitude_frames, sop_class
from ._walk import Passed, entry_kind, holds, reason
from .._warn import quiet, warn

__all__ = ["read_dicom_study", "scan_dicom_series", "SeriesSummary", "one_walk"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SAX_WORDS = re.compile(r"(^|[^a-z])(sa|sax|short)([^a-z]|$)", re.IGNORECASE)

#: a tagged cine (SPAMM, CSPAMM, grid tagging): a cine, but the tag lines are not the U-Nets' contrast
_TAG_WORDS = re.compile(r"(^|[^a-z])(tag\w*|c?spamm|grid)([^a-z]|$)", re.IGNORECASE)

#: ImageType (0008,0008) values of images that are not cine magnitude: parametric maps (T1, T2,
#: T2* mapping) and phase-sensitive inversion recovery (late gadolinium enhancement)
_NOT_CINE_IMAGE_TYPES = ("MAP", "T1 MAP", "T2 MAP", "T2* MAP", "T1MAP", "T2MAP", "T2STAR MAP", "PSIR")


#: largest number of pixels a series may hold (all images), checked before pixel data is read:
#: 1.6 GB as float32.
MAX_SERIES_PIXELS = 400_000_000


#: compressed transfer syntaxes -> the package that decodes them (pydicom decodes RLE itself).
_DECODERS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
}

#: transfer syntaxes whose every frame is a JPEG, JPEG-LS or JPEG 2000 stream: it ends with the
#: marker FF D9 (end of image / of codestream), which cannot occur inside the coded data
_FF_D9_SYNTAXES = frozenset(_DECODERS) | {
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}

#: MR, enhanced MR, CT and secondary-capture image storage: files of these classes must hold an image.
_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.7",
} | ENHANCED_MR_CLASSES


#: Secondary Capture Image Storage: one without a position and orientation is a screen save
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

#: objects with a matrix that are results, not images to segment: segmentations (cmrsdk's own
#: SEG among them, read back from an output folder inside the input) and parametric maps.
_DERIVED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage
}


@dataclass(frozen=True)
class _Image:
    """One image: a classic file, or one frame (0-based ``frame``) of a multi-frame file."""

    path: Path
    header: Dataset
    frame: int | None = None


@dataclass(frozen=True)
class SeriesSummary:
    """What :func:`scan_dicom_series` found of one series (for selection and ``inspect``)."""

    series_uid: str
    description: str
    n_images: int
    n_positions: int
    n_phases: int
    #: span of TriggerTime (ms) over the images of the slice position with the most; None where
    #: unknown (absent times, one image per position, or repeated InstanceNumbers)
    trigger_span_ms: float | None = None
    #: the highest SeriesNumber among its images (None where none has one): a repeat is acquired later
    series_number: int | None = None
    study_uid: str = ""
    patient_id: str = ""
    #: |cos| between the slice normal and the heart's long axis (`cmrsdk.regions.apex_cosine`);
    #: None where the geometry is unusable
    apex_cos: float | None = None
    #: mean PixelSpacing (mm); 0 where unknown
    pixel_mm: float = 0.0
    #: images at one position step through InversionTime (T1 mapping, MOLLI / ShMOLLI)
    inversion_steps: bool = False
    #: unit slice normal (LPS) and the first and last slice positions along it (mm); None where
    #: the geometry is unusable
    normal: tuple[float, float, float] | None = None
    extent_mm: tuple[float, float] | None = None
    #: span of AcquisitionTime (s) over the images of the slice position with the most; None where unknown
    acquisition_span_s: float | None = None
    #: ImageType (0008,0008) of its first image, upper case
    image_type: tuple[str, ...] = ()
    #: TriggerTime orders the images of every slice position over one cardiac cycle (`_trigger_cycle`)
    trigger_cycle: bool = False
    #: the SeriesInstanceUIDs read as this candidate: its own, or those of a stack of series or of
    #: one-image series regrouped (`cmrsdk.serve` purges them once their stack is queued)
    parts: tuple[str, ...] = ()

    @property
    def dynamic_reason(self) -> str:
        """Why its images per position are not the phases of one heartbeat ("" where they may be):
        perfusion or T1/T2 mapping repeat one trigger delay, step InversionTime, or go on over
        many heartbeats (TriggerTime beyond one RR interval, AcquisitionTime over a breath-hold)."""
        if self.n_phases < 2:
            return ""
        if self.inversion_steps:
            return "its images per slice position step through 'InversionTime' (0018,0082): T1 mapping"
        span = self.trigger_span_ms
        if span is not None and span < MIN_CINE_SPAN_MS:
            return (
                f"its {self.n_phases} images per slice position share one cardiac phase ('TriggerTime' (0018,1060) "
                f"spans {span:.1f} ms, under {MIN_CINE_SPAN_MS:.0f}): perfusion or T1/T2 mapping"
            )
        if span is not None and span > MAX_CINE_SPAN_MS:
            return (
                f"its {self.n_phases} images per slice position span {span:.0f} ms of 'TriggerTime' (0018,1060), "
                f"more than one heartbeat ({MAX_CINE_SPAN_MS:.0f}): a dynamic series such as perfusion"
            )
        acquired = self.acquisition_span_s
        # times a de-identification tool shifted per file scatter AcquisitionTime; a cine's
        # TriggerTime still steps through one heartbeat at every position, perfusion's does not
        if acquired is not None and acquired > MAX_CINE_ACQUISITION_S and not self.trigger_cycle:
            return (
                f"its {self.n_phases} images per slice position were acquired over {acquired:.0f} s "
                f"('AcquisitionTime' (0008,0032)), more than a breath-hold ({MAX_CINE_ACQUISITION_S:.0f} s): "
                "a dynamic series such as perfusion"
            )
        return ""

    @property
    def is_dynamic(self) -> bool:
        """Several images per position that are not the phases of one heartbeat (`dynamic_reason`)."""
        return bool(self.dynamic_reason)

    @property
    def image_type_reason(self) -> str:
        """Why its ImageType says it is not a cine ("" where it does not): a parametric map or PSIR."""
        found = [t for t in self.image_type if t in _NOT_CINE_IMAGE_TYPES]
        if not found:
            return ""
        value = "\\".join(self.image_type)
        return (
            f"'ImageType' (0008,0008) is {value} ({found[0]}): a parametric map or a "
            "phase-sensitive inversion-recovery (late enhancement) image, not a cine"
        )

    @property
    def is_tagged(self) -> bool:
        """Its SeriesDescription names tagging (TAG, SPAMM, GRID): ranked below an untagged cine."""
        return bool(_TAG_WORDS.search(self.description))

    @property
    def is_short_axis(self) -> bool:
        """The slice normal within acos(`ORIENTED_COS`) (46 degrees) of the heart's long axis."""
        return self.apex_cos is not None and self.apex_cos >= ORIENTED_COS

    @property
    def is_sax_cine(self) -> bool:
        """Three or more slice positions, two or more phases each, spanning the cardiac cycle."""
        return self.n_positions >= 3 and self.n_phases >= 2 and not self.is_dynamic and not self.image_type_reason


#: what the reader uses of every image's header (choosing the series, grouping and ordering its
#: images): decoded while the header is read, pydicom's warnings on them silenced there
_SCAN_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "SeriesDescription",
    "SeriesNumber", "ImageType", "Rows", "Columns", "NumberOfFrames", "ConcatenationUID",
    "InConcatenationTotalNumber", "InConcatenationNumber", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "TriggerTime", "NominalCardiacTriggerDelayTime", "InstanceNumber", "TemporalPositionIdentifier",
    "AcquisitionTime", "InversionTime",
)  # fmt: skip

#: ... and of the images of the series read (pixel values, the stack's spacing, the study)
_READ_KEYWORDS = (
    "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "BitsStored", "PixelRepresentation", "LossyImageCompression", "CardiacNumberOfImages", "SliceThickness",
    "SpacingBetweenSlices", "PatientSize", "PatientWeight", "PatientSex", "PatientAge", "StudyDate", "Manufacturer",
    "MagneticFieldStrength", "AccessionNumber",
)  # fmt: skip


#: suffixes of DICOM files (a name with none, or a numeric one, counts as well where it holds a digit)
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})


def _named_like_dicom(path: Path) -> bool:
    """Whether a file's name says it is a DICOM image: ``.dcm`` / ``.ima``, or a numbered name
    without a suffix or with a numeric one (``IM0001``, ``00000012``, ``1.3.12.2.1107``); not
    ``README``, ``notes.txt`` or ``preview.jpg``, which are passed over silently."""
    suffix = path.suffix.lower()
    if suffix in _DICOM_SUFFIXES:
        return True
    return (not suffix or suffix[1:].isdigit()) and any(c.isdigit() for c in path.name)


def _read_header(path: Path, decoded: Decoded | None = None) -> Dataset | None:
    """The header of a DICOM file, None for files that are not DICOM at all.

    Of its elements, those whose decoding could fail and those the reader uses are decoded here
    (a corrupt element fails here, named, not at first use); the rest, which pydicom decodes
    whatever their bytes, are left undecoded (`check_decodable`): decoding every element took
    two thirds of the time a disc's headers took to read. ``decoded``: the elements decoded in
    the folder's other files, shared where the bytes are the same (`decode_elements`)."""
    try:
        header = read_dataset(path, stop_before_pixels=True)
        settle_character_set(header)  # the DICOM outputs say what was assumed
        with quiet():  # invalid UIDs (Sunnybrook) and other vendor quirks
            check_decodable(header, decoded)
            if is_multiframe(header):  # copied element by element into its frames' headers: decoded whole
                for _ in header:
                    pass
            decode_elements(header, _SCAN_KEYWORDS, decoded)
        return header
    except InvalidDicomError:
        return None
    except ReadError:  # refused by `read_dataset` itself (a deflated data set too large)
        raise
    except OSError as exc:
        if exc.errno is None:  # raised by the parser, not by the file system
            raise ReadError(
                path, f"DICOM header cannot be read ({type(exc).__name__}: {exc}); truncated file?"
            ) from exc
        raise  # the file cannot be opened or read (permissions, a vanished file): `_collect` skips it
    except RecursionError as exc:  # pydicom reads a nested sequence by recursion
        raise ReadError(
            path, "DICOM header cannot be read: its sequences are nested too deeply (RecursionError)"
        ) from exc
    except Exception as exc:  # truncated headers raise EOFError, struct.error, ...
        raise ReadError(path, f"DICOM header cannot be read ({type(exc).__name__}: {exc}); truncated file?") from exc


def _files_under(folder: Path, passed: Passed) -> list[Path]:
    """Every file under ``folder``, sorted, named by the path the user sees. Symbolic links are
    followed (a study assembled from series folders linked in from elsewhere), each real folder
    once, so a link back up the tree cannot loop; a link to a folder that holds ``folder`` itself
    (``root -> /``, ``up -> ..``: the whole file system, or every sibling study, read as this one)
    is not followed, and an entry that cannot be listed or looked at is skipped: both are noted
    in ``passed``, as `cmrsdk batch`'s discovery does (`cmrsdk.cohort.discover`)."""
    top = os.path.realpath(folder)
    files: list[Path] = []
    seen: set[str] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            real = os.path.realpath(current)
            if real in seen:
                continue
            seen.add(real)
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            passed.cannot_read(current, exc)
            continue
        folders = []
        for entry in entries:
            path = Path(current, entry.name)
            try:
                target = os.path.realpath(path) if entry.is_symlink() else top
                if target != top and holds(target, top):  # itself (`loop -> .`) is read once, as any folder
                    passed.link(path, f"a folder that holds {folder}")
                    continue
                kind = entry_kind(entry)
            except OSError as exc:
                passed.cannot_read(path, exc)
                continue
            if kind == "file":
                files.append(path)
            elif kind == "dir":
                folders.append(path)
        pending += reversed(folders)  # sorted order, depth first, as the user sees the tree
    return sorted(files)


def _collect(path: Path) -> tuple[list[_Image], list[Path]]:
    """Image files (with pixel data) under ``path``, and DICOM files without pixel data.

    A multi-frame file gives one image per frame; a repeated SOPInstanceUID keeps its first file
    (sorted by path) and warns once.
    """
    try:
        kind = entry_kind(path)
    except OSError as exc:  # a link into another user's /proc, a folder without search permission
        raise ReadError(path, f"cannot be read ({reason(exc)})") from exc
    if kind is None and not path.exists():
        raise ReadError(path, "no such file or directory")
    passed = Passed()
    files = [path] if kind == "file" else _files_under(path, passed)
    images: list[_Image] = []
    non_images: list[Path] = []
    seen: dict[str, Path] = {}
    duplicates: list[Path] = []
    screen_saves: list[Path] = []
    # ConcatenationUID -> (InConcatenationTotalNumber, the parts' InConcatenationNumber -> file)
    concatenations: dict[str, tuple[int | None, dict[int | None, Path]]] = {}
    decoded: Decoded = {}
    not_dicom: list[Path] = []  # named like an image but not DICOM: overwritten or truncated to nothing
    for file in files:
        try:
            header = _read_header(file, decoded)
        except OSError as exc:
            if file == path:
                raise ReadError(path, f"cannot be read ({reason(exc)})") from exc
            passed.cannot_read(file, exc)
            continue
        if header is None:
            if _named_like_dicom(file):
                not_dicom.append(file)
            continue
        sop = sop_class(header)
        # pixel data is not read yet (stop_before_pixels): an image is what has a matrix size
        if sop in _DERIVED_SOP_CLASSES:
            non_images.append(file)
        elif sop == _SECONDARY_CAPTURE and not (
            "ImagePositionPatient" in header and "ImageOrientationPatient" in header
        ):  # a screen save a console or viewer stored in the series: no geometry to stack (sweep 39)
            screen_saves.append(file)
            non_images.append(file)
        elif header.get("Rows") and header.get("Columns"):
            rows, columns = header.Rows, header.Columns
            if not (isinstance(rows, int) and isinstance(columns, int)):  # US of VM 1: two values is a corrupt header
                raise ReadError(
                    file,
                    f"'Rows' x 'Columns' (0028,0010)/(0028,0011) value {rows!r} x {columns!r} is not one number each",
                )
            if rows > MAX_MATRIX or columns > MAX_MATRIX:
                raise ReadError(
                    file,
                    f"'Rows' x 'Columns' (0028,0010)/(0028,0011) value {rows} x {columns} exceeds "
                    f"{MAX_MATRIX} x {MAX_MATRIX}; not a cine MR image (refused before reading pixels)",
                )
            with quiet():
                uid = str(header.get("SOPInstanceUID", "") or "")
            if uid and uid in seen:
                duplicates.append(file)
                continue
            if uid:
                seen[uid] = file
            if is_multiframe(header):
                concatenation = str(header.get("ConcatenationUID", "") or "")
                if concatenation:
                    total, parts = concatenations.setdefault(
                        concatenation, (_int_or_none(header.get("InConcatenationTotalNumber")), {})
                    )
                    parts[_int_or_none(header.get("InConcatenationNumber"))] = file
                headers = frame_headers(file, header)
                kept, left_out = magnitude_frames(file, headers)
                if left_out:
                    warn(CmrWarning(f"{file}: {left_out}"), stacklevel=4)
                images.extend(_Image(file, headers[i], i) for i in kept)
            else:
                images.append(_Image(file, header))
        elif sop in _IMAGE_SOP_CLASSES:
            raise ReadError(
                file,
                f"image header ({sop}) lacks 'Rows'/'Columns' (0028,0010)/(0028,0011); truncated file?",
            )
        else:
            non_images.append(file)
    if images:
        passed.warn(stacklevel=4)
    if images and not_dicom:  # a slice's files overwritten: dropped, the volume would shrink unsaid (sweep 51)
        names = ", ".join(f.name for f in not_dicom[1:4]) + (", ..." if len(not_dicom) > 4 else "")
        more = f"; {len(not_dicom) - 1} more such file(s) skipped ({names})" if len(not_dicom) > 1 else ""
        warn(
            CmrWarning(
                f"{not_dicom[0]}: named like a DICOM image but not DICOM (no DICM preamble, no data set "
                f"that parses): skipped{more}"
            ),
            stacklevel=4,
        )
    for concatenation, (total, parts) in concatenations.items():
        missing = sorted(set(range(1, total + 1)) - set(parts)) if total else []
        if missing:  # measured on the parts there, a cine loses slices or phases silently (sweep 39)
            raise ReadError(
                next(iter(parts.values())),
                f"part(s) {', '.join(map(str, missing))} of the {total} files of concatenation {concatenation} "
                "('InConcatenationNumber' (0020,9162) of 'InConcatenationTotalNumber' (0020,9163)) are missing; "
                "copy or send every part of the series",
            )
    if images and screen_saves:
        warn(
            CmrWarning(
                f"{screen_saves[0]}: {len(screen_saves)} Secondary Capture image(s) without "
                "'ImagePositionPatient'/'ImageOrientationPatient' (screen saves) left out"
            ),
            stacklevel=4,
        )
    if duplicates:
        first = duplicates[0]
        warn(
            CmrWarning(
                f"{first}: 'SOPInstanceUID' repeats that of {seen[_uid_of(first)].name}; "
                f"{len(duplicates)} duplicated instance(s) skipped"
            ),
            stacklevel=4,
        )
    if not images:
        # what the walk passed over is said in the error: a study's warnings are lost with it
        said = "".join(f"; {message}" for message in passed.messages())
        if non_images:
            raise ReadError(
                non_images[0],
                f"DICOM file that is no image to segment (no Rows/Columns, or a segmentation or "
                f"parametric map); no image series found among the {len(non_images)} DICOM file(s) there{said}",
            )
        pairs = [f for f in files if f.suffix.lower() in (".hdr", ".img")]
        if pairs:  # what dcm2niix -n or old SPM pipelines write: say so, not "no DICOM"
            raise ReadError(
                pairs[0],
                "an Analyze / NIfTI-1 pair (.hdr + .img) is not read; convert it to one .nii.gz file "
                f"(e.g. nibabel: nib.save(nib.load('x.hdr'), 'x.nii.gz')){said}",
            )
        others = [f for f in files if _OTHER_FORMATS.get("".join(f.suffixes[-1:]).lower())]
        if others:  # what SimpleITK, 3D Slicer, FreeSurfer or dcm2niix -e write (sweep 28)
            name = _OTHER_FORMATS["".join(others[0].suffixes[-1:]).lower()]
            raise ReadError(
                others[0],
                f"{name} file ({others[0].suffix}) is not read; convert it to NIfTI (.nii.gz), e.g. SimpleITK: "
                f"sitk.WriteImage(sitk.ReadImage('x{others[0].suffix}'), 'x.nii.gz'), or give the DICOM series{said}",
            )
        packed = [f for f in files if _archive_kind(f)]
        if packed:  # a disc sent as a tarball or 7-Zip: say what is read (sweep 39)
            raise ReadError(
                packed[0],
                f"a {_archive_kind(packed[0])} archive is not read (ZIP archives are); unpack it and give "
                f"its folder, or give it as a .zip{said}",
            )
        raise ReadError(path, f"no DICOM image files found ({len(files)} files searched){said}")
    return images, non_images


#: archive formats other than ZIP, by their names' endings
_ARCHIVES = {
    ".tar": "tar", ".tar.gz": "tar", ".tgz": "tar", ".tar.bz2": "tar", ".tar.xz": "tar", ".7z": "7-Zip",
    ".rar": "RAR", ".iso": "ISO disc image",
}  # fmt: skip


def _archive_kind(file: Path) -> str | None:
    """The kind of a non-ZIP archive named so (``disc.tar.gz``: tar), None for another file."""
    name = file.name.lower()
    return next((kind for ending, kind in _ARCHIVES.items() if name.endswith(ending)), None)


#: image formats of other tools that hold no DICOM: named in the error rather than searched for DICOM
_OTHER_FORMATS = {
    ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage", ".mgh": "FreeSurfer MGH",
    ".mgz": "FreeSurfer MGH", ".npy": "NumPy array", ".npz": "NumPy array", ".h5": "HDF5", ".mat": "MATLAB",
}  # fmt: skip


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _uid_of(file: Path) -> str:
    with quiet():
        return str(read_dataset(file, stop_before_pixels=True).get("SOPInstanceUID", ""))


def _vector(image: _Image, keyword: str, tag: str, length: int) -> np.ndarray:
    value = image.header.get(keyword)
    # a multi-frame file's frames keep these in functional groups: say which frame lacks it
    frame = "" if image.frame is None else f"frame {image.frame + 1}: "
    if value is None:
        raise ReadError(image.path, f"{frame}'{keyword}' {tag} is missing; it is needed for the geometry")
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if len(values) != length:  # one PixelSpacing value is numeric, and one short (sweep 51)
        shown = values[0] if len(values) == 1 else values
        raise ReadError(
            image.path,
            f"{frame}'{keyword}' {tag} value {str(shown)!r} holds {len(values)} number(s), expected {length}",
        )
    try:
        vector = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ReadError(image.path, f"{frame}'{keyword}' {tag} value {value!r} is not numeric") from exc
    if vector.shape != (length,) or not np.all(np.isfinite(vector)):
        raise ReadError(image.path, f"{frame}'{keyword}' {tag} value {list(value)!r} must be {length} finite numbers")
    if keyword == "ImageOrientationPatient" and np.linalg.norm(np.cross(vector[:3], vector[3:])) < 1e-6:
        # no slice normal: every position would be NaN, one "slice" of all the images (sweep 51)
        raise ReadError(
            image.path,
            f"{frame}'{keyword}' {tag} value {vector.tolist()} gives no slice direction: its row and column "
            "directions are parallel or zero (a corrupt header)",
        )
    return vector


def _normal(orientation: np.ndarray) -> np.ndarray:
    """The unit slice normal (row x column) of an orientation `_vector` has checked."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _series_key(image: _Image) -> str:
    """The series an image belongs to: its SeriesInstanceUID, and ``#stack<StackID>`` for a frame
    of a multi-frame file holding several stacks (`frame_headers`), each stack a series to choose."""
    with quiet():  # invalid UIDs (Sunnybrook) are validated on first access
        uid = str(image.header.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
    stack = image.header.get("StackID") if image.frame is not None else None
    return uid if stack is None else f"{uid}#stack{stack}"


#: where a phase's time (ms) is kept: TriggerTime, else the nominal delay that converters and
#: anonymisers keep where they drop TriggerTime (the multi-frame reader's source too)
TIME_KEYWORDS = ("TriggerTime", "NominalCardiacTriggerDelayTime")

#: where a phase's place is kept without a time: its number, else its temporal position
ORDER_KEYWORDS = ("InstanceNumber", "TemporalPositionIdentifier")


def _trigger_time(image: _Image) -> float | None:
    """The phase's time in ms from the first of :data:`TIME_KEYWORDS` that is a number; None
    where none is ('n/a' in some exports)."""
    for keyword in TIME_KEYWORDS:
        try:
            value = image.header.get(keyword)
            time = float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            continue
        if time is not None and np.isfinite(time):
            return time
    return None


def _order_number(image: _Image, keywords: tuple[str, ...] = ORDER_KEYWORDS) -> int | None:
    """The first of ``keywords`` the image carries as an integer, else None."""
    for keyword in keywords:
        number = _int_or_none(image.header.get(keyword))
        if number is not None:
            return number
    return None


def _time_of(image: _Image, by_trigger: bool = True, order: tuple[str, ...] = ORDER_KEYWORDS) -> float:
    time = _trigger_time(image) if by_trigger else None
    if time is not None:
        return time
    return float(_order_number(image, order) or 0)


def _untimed_order(groups: list[list[_Image]]) -> tuple[str, ...]:
    """What orders the phases of a series without times: InstanceNumber, or TemporalPositionIdentifier
    where InstanceNumber repeats at a slice position and it does not (numbers restarting per phase)."""

    def distinct(keyword: str) -> bool:
        return all(len({_int_or_none(im.header.get(keyword)) for im in g} - {None}) == len(g) for g in groups)

    if not distinct("InstanceNumber") and distinct("TemporalPositionIdentifier"):
        return ("TemporalPositionIdentifier",)
    return ORDER_KEYWORDS


def _group_positions(
    images: list[_Image], by_trigger: bool = True, order: tuple[str, ...] = ORDER_KEYWORDS
) -> list[list[_Image]]:
    """Images grouped by slice position along the normal (ascending), each group sorted by time."""
    orientation = _vector(images[0], "ImageOrientationPatient", "(0020,0037)", 6)
    normal = _normal(orientation)
    positions = np.array([_vector(im, "ImagePositionPatient", "(0020,0032)", 3) @ normal for im in images])
    ranked = np.argsort(positions, kind="stable")
    groups: list[list[_Image]] = []
    last = None
    for i in ranked:
        # positions within 0.01 mm are the same slice (rounding in the header)
        if last is None or positions[i] - last > 0.01:
            groups.append([])
        groups[-1].append(images[i])
        last = positions[i]
    return [sorted(g, key=lambda im: (_time_of(im, by_trigger, order), _order_number(im, order) or 0)) for g in groups]


#: a cine's phases at one position span the cardiac cycle (hundreds of ms); a dynamic series
#: (perfusion, T1/T2 mapping) repeats one trigger delay: its TriggerTime spans less than this
MIN_CINE_SPAN_MS = 20.0

#: ... or it steps TriggerTime on over many heartbeats (perfusion stamped with the time since
#: its start): a cine spans one RR interval, at most 2,000 ms (30 beats a minute)
MAX_CINE_SPAN_MS = 3000.0

#: a cine's images of one position are acquired within one breath-hold; perfusion's over a minute
MAX_CINE_ACQUISITION_S = 30.0

#: a short-axis stack stored one series per slice needs at least this many slices to be taken as one
MIN_SERIES_PER_STACK = 3


#: a series as `_stack_keys` weighs it: (phase count, SeriesNumber, UID, [(position, its images)])
_Part = tuple[int, int, str, list[tuple[float, list[_Image]]]]


def _stack_keys(
    images: list[_Image],
) -> tuple[dict[str, str], dict[str, list[tuple[str, str]]], frozenset[int]]:
    """Series UID -> the stack it is read as: itself, or the stack of several series.

    Many protocols store a short-axis cine over several series, one breath-hold each: a slice
    per series (Siemens's among them), or a few. Cine series that share the study, orientation,
    pixel size and matrix form one stack, keyed by their UIDs joined with '+' in slice order,
    where together they cover three or more positions and more than any of them alone; where
    one of them holds several slices, only series with its phase count join it (one-slice series
    of differing phase counts still stack, to be refused naming the counts). Where two sit at the
    same position (a slice acquired again), the later one (higher SeriesNumber) is taken there.

    Returns
    -------
    keys : every series UID -> its stack key.
    repeats : stack key -> (series left out at a position, series taken there), for the warning.
    dropped : ``id()`` of the images a stack leaves out (its repeated positions' earlier images).
    """
    by_series: dict[str, list[_Image]] = {}
    for image in images:
        by_series.setdefault(_series_key(image), []).append(image)
    keys = {uid: uid for uid in by_series}
    repeats: dict[str, list[tuple[str, str]]] = {}
    dropped: set[int] = set()
    # (exact part, orientation, pixel size, [series]): orientation and pixel size within the
    # tolerances of _check_consistent, so that what stacks also reads as one stack
    buckets: list[tuple[tuple, np.ndarray, np.ndarray, list[_Part]]] = []
    for uid, members in by_series.items():
        try:
            if not _one_plane(members):
                continue  # a radial set: never stacked
            groups = _group_positions(members)
            orientation = _vector(members[0], "ImageOrientationPatient", "(0020,0037)", 6)
            spacing = _vector(members[0], "PixelSpacing", "(0028,0030)", 2)
            normal = _normal(orientation)
            positions = [float(_vector(g[0], "ImagePositionPatient", "(0020,0032)", 3) @ normal) for g in groups]
        except ReadError:
            continue  # no usable geometry: never stacked
        if min(len(g) for g in groups) < 2:
            continue  # a position without phases: no cine
        header = members[0].header
        span = _trigger_span(max(groups, key=len))
        exact = (
            # a cine never stacks with perfusion or mapping
            (span is not None and span < MIN_CINE_SPAN_MS) or any(_inversion_steps(g) for g in groups),
            str(header.get("StudyInstanceUID", "")),
            header.get("Rows"),
            header.get("Columns"),
        )
        part = (
            max(len(g) for g in groups),
            _int_or_none(header.get("SeriesNumber")) or 0,
            uid,
            list(zip(positions, groups)),
        )
        for other, first_orientation, first_spacing, parts in buckets:
            if (
                other == exact
                and np.allclose(orientation, first_orientation, atol=ORIENTATION_ATOL)
                and np.allclose(spacing, first_spacing, rtol=1e-4)
            ):
                parts.append(part)
                break
        else:
            buckets.append((exact, orientation, spacing, [part]))
    for _, _, _, parts in buckets:
        if all(len(slices) == 1 for *_, slices in parts):
            alike = [parts]
        else:  # series of several slices join series of their own phase count only
            counts = sorted({phases for phases, *_ in parts})
            alike = [[p for p in parts if p[0] == n] for n in counts]
        for group in alike:
            _join(group, keys, repeats, dropped)
    return keys, repeats, frozenset(dropped)


def _join(
    parts: list[_Part],
    keys: dict[str, str],
    repeats: dict[str, list[tuple[str, str]]],
    dropped: set[int],
) -> None:
    """Stack ``parts`` (:func:`_stack_keys`' series) where they cover more together, filling its outputs."""
    entries = sorted(
        ((position, number, uid, members) for _, number, uid, slices in parts for position, members in slices),
        key=lambda e: e[:3],
    )
    kept: list[tuple[float, int, str, list[_Image]]] = []
    left_out: list[tuple[str, str]] = []
    lost: list[_Image] = []
    for entry in entries:
        if kept and entry[0] - kept[-1][0] <= 0.01:  # the same slice again: the later acquisition replaces it
            earlier, later = sorted([kept.pop(), entry], key=lambda e: e[1])
            kept.append(later)
            left_out.append((earlier[2], later[2]))
            lost.extend(earlier[3])
        else:
            kept.append(entry)
    uids = list(dict.fromkeys(uid for _, _, uid, _ in kept))
    widest = max(len(slices) for *_, slices in parts)
    if len(kept) < MIN_SERIES_PER_STACK or len(uids) < 2 or len(kept) <= widest:
        return
    key = "+".join(uids)
    for uid in uids:
        keys[uid] = key
    if left_out:
        repeats[key] = list(dict.fromkeys(left_out))
    dropped.update(id(image) for image in lost)


def _trigger_span(images: list[_Image]) -> float | None:
    """Span of TriggerTime (ms) over the images of one slice position; None where some lack it,
    where there is one image, or where InstanceNumbers repeat (copies of one file are duplicates,
    refused as such, not a dynamic series)."""
    times = [t for t in map(_trigger_time, images) if t is not None]
    numbers = {_order_number(im) for im in images}
    if len(images) < 2 or not len(times) == len(images) == len(numbers):
        return None
    return float(max(times) - min(times))


def _acquisition_span(images: list[_Image]) -> float | None:
    """Span of AcquisitionTime (s) over the images of one slice position; None where some lack it
    or one image. A span over 12 h is one across midnight, taken the short way round."""
    seconds = []
    for image in images:
        text = str(image.header.get("AcquisitionTime", "") or "").strip()
        match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
        if match is None:
            return None
        h, m, sec, frac = match.groups()
        seconds.append(int(h) * 3600 + int(m or 0) * 60 + int(sec or 0) + float(frac or 0.0))
    if len(seconds) < 2:
        return None
    span = max(seconds) - min(seconds)
    return min(span, 86400.0 - span) if span > 43200.0 else span


def _inversion_steps(group: list[_Image]) -> bool:
    """The images of one slice position carry two or more InversionTime values (T1 mapping)."""
    values = set()
    for image in group:
        try:
            value = image.header.get("InversionTime")
            values.add(round(float(value), 1) if value not in (None, "") else None)
        except (TypeError, ValueError):
            continue
    return len(values - {None}) >= 2


#: a cine's TriggerTime at a position spans at least this (ms): 20 phases of a 150 bpm heartbeat
MIN_CYCLE_SPAN_MS = 200.0


def _trigger_cycle(groups: list[list[_Image]]) -> bool:
    """At every slice position of two or more images, TriggerTime is distinct per image and steps
    evenly (no step over three times the median) through 200..3,000 ms: the phases of one
    heartbeat. Perfusion repeats one delay, or scatters it with the heart rate, at a position."""
    cycled = False
    for group in groups:
        if len(group) < 2:
            continue
        times = [_trigger_time(im) for im in group]
        if any(t is None for t in times) or len(set(times)) != len(times):
            return False
        steps = np.diff(sorted(times))  # type: ignore[type-var]
        span = float(steps.sum())
        if not MIN_CYCLE_SPAN_MS <= span <= MAX_CINE_SPAN_MS or steps.max() > 3.0 * float(np.median(steps)):
            return False
        cycled = True
    return cycled


def _constant_times(images: list[_Image]) -> float | None:
    """The one time every image of the series carries (TriggerTime and the nominal delay zeroed by
    a de-identification tool, or filled with one value): no time order at all, unlike perfusion's
    one delay per position. None where the times differ or some image has none."""
    times = {_trigger_time(im) for im in images}
    return next(iter(times)) if len(images) > 1 and len(times) == 1 and None not in times else None


#: one-image series regrouped as a cine (`_regroup_singletons`) hold at least this many images
MIN_REGROUPED_IMAGES = 6


def _regroup_singletons(images: list[_Image], keys: dict[str, str]) -> dict[str, int]:
    """Series of one image each that together form a cine, regrouped: key -> number of series.

    A de-identification tool that gives every file its own SeriesInstanceUID (dcmtk ``dcmodify
    -gse``, per-file scripts) leaves a cine as one-image series, of which one was read. Such
    series sharing what those tools keep (patient ID and name, orientation, matrix, PixelSpacing, SeriesNumber,
    SeriesDescription, ProtocolName, ImageType; not StudyInstanceUID or FrameOfReferenceUID,
    which they regenerate too) are one candidate where they cover three or more positions of two
    or more images each. ``keys`` maps each regrouped series to the key ('first UID+N more')."""
    by_series: dict[str, list[_Image]] = {}
    for image in images:
        by_series.setdefault(_series_key(image), []).append(image)
    buckets: list[tuple[tuple, np.ndarray, np.ndarray, list[tuple[str, _Image]]]] = []
    for uid, members in by_series.items():
        if len(members) != 1 or members[0].frame is not None or keys[uid] != uid:
            continue
        image = members[0]
        try:
            orientation = _vector(image, "ImageOrientationPatient", "(0020,0037)", 6)
            spacing = _vector(image, "PixelSpacing", "(0028,0030)", 2)
            _vector(image, "ImagePositionPatient", "(0020,0032)", 3)
        except ReadError:
            continue  # no usable geometry: never regrouped
        header = image.header
        with quiet():
            exact = (
                # two patients' per-file series of one geometry (sweep 44) must not become one cine
                str(header.get("PatientID", "") or "").strip(),
                str(header.get("PatientName", "") or "").strip(),
                header.get("Rows"),
                header.get("Columns"),
                _int_or_none(header.get("SeriesNumber")),
                str(header.get("SeriesDescription", "") or "").strip(),
                str(header.get("ProtocolName", "") or "").strip(),
                tuple(v.strip().upper() for v in _image_type(header)),
            )
        for other, first_orientation, first_spacing, parts in buckets:
            if (
                other == exact
                and np.allclose(orientation, first_orientation, atol=ORIENTATION_ATOL)
                and np.allclose(spacing, first_spacing, rtol=1e-4)
            ):
                parts.append((uid, image))
                break
        else:
            buckets.append((exact, orientation, spacing, [(uid, image)]))
    regrouped: dict[str, int] = {}
    for *_, parts in buckets:
        if len(parts) < MIN_REGROUPED_IMAGES:
            continue
        groups = _group_positions([image for _, image in parts])
        if len(groups) < MIN_SERIES_PER_STACK or min(len(g) for g in groups) < 2:
            continue  # localizers, one-phase series: left as they are
        key = f"{parts[0][0]}+{len(parts) - 1} more"
        for uid, _ in parts:
            keys[uid] = key
        regrouped[key] = len(parts)
    return regrouped


#: a missing image or two leaves a step of two or three strides in an otherwise regular numbering
MAX_STRIDE_GAP = 3
MAX_IRREGULAR_STEPS = 2


def _check_regular(groups: list[list[_Image]], order: tuple[str, ...], untimed: str) -> None:
    """Refuse phases ordered by number (``order``: InstanceNumber, else TemporalPositionIdentifier)
    where the numbers do not step regularly: at every slice position by one common stride (1
    stored slice by slice or restarting per position, the number of positions stored phase by
    phase), a missing image or two aside. Numbers renumbered at random or in the files' name
    order mix the phases, and the EF with them. ``untimed``: why there are no times, for the message."""
    if any(im.frame is not None for g in groups for im in g):
        return  # frames of multi-frame files: numbered by `frame_headers` from their order in the file
    numbered = [[_order_number(im, order) for im in g] for g in groups]
    if any(n is None for numbers in numbered for n in numbers):
        return  # images without numbers: refused or warned where duplicates are checked
    steps = [int(d) for numbers in numbered for d in np.diff(numbers)]
    if not steps:
        return
    stride = max(set(steps), key=lambda d: (steps.count(d), -d))
    if stride <= 0:
        return  # repeated numbers: refused as duplicates
    odd = [d for d in steps if d != stride]
    if len(odd) <= MAX_IRREGULAR_STEPS and all(d % stride == 0 and d // stride <= MAX_STRIDE_GAP for d in odd):
        return
    z, numbers = next((z, numbers) for z, numbers in enumerate(numbered) if any(d != stride for d in np.diff(numbers)))
    keyword = next(k for k in order if _int_or_none(groups[z][0].header.get(k)) is not None)
    field = f"'{keyword}' " + ("(0020,0013)" if keyword == "InstanceNumber" else "(0020,0100)")
    shown = ", ".join(map(str, numbers[:10])) + (", ..." if len(numbers) > 10 else "")
    raise ReadError(
        groups[z][0].path,
        f"the phases cannot be ordered: {untimed} and {field} does not step regularly: at slice position {z} "
        f"its values are {shown} ({len(odd)} of {len(steps)} steps differ from the common {stride}), renumbered "
        "by a de-identification tool or an export; keep TriggerTime or the original numbering",
    )


def _dynamic_detail(groups: list[list[_Image]], summary: SeriesSummary) -> tuple[Path, str]:
    """A file and the values behind `SeriesSummary.dynamic_reason`, at the position of the most images."""
    group = max(groups, key=len)
    if summary.inversion_steps:
        values = sorted({str(im.header.get("InversionTime")) for im in group})
        return group[0].path, f"'InversionTime' values {', '.join(values[:6])} at one slice position"
    span = summary.trigger_span_ms
    if span is not None and not MIN_CINE_SPAN_MS <= span <= MAX_CINE_SPAN_MS:
        timed = sorted(group, key=lambda im: _trigger_time(im) or 0.0)
        first, last = timed[0], timed[-1]
        return first.path, (
            f"'TriggerTime' {_trigger_time(first):g} ms here and {_trigger_time(last):g} ms in {last.path.name} "
            "at one slice position"
        )
    acquired = [(str(im.header.get("AcquisitionTime", "") or "").strip(), im) for im in group]
    acquired.sort(key=lambda pair: pair[0])
    (early, first), (late, last) = acquired[0], acquired[-1]
    return first.path, f"'AcquisitionTime' {early} here and {late} in {last.path.name} at one slice position"


def _one_plane(members: list[_Image]) -> bool:
    """Every image shares the first one's orientation (a radial long-axis set does not)."""
    first = _vector(members[0], "ImageOrientationPatient", "(0020,0037)", 6)
    return all(
        np.allclose(_vector(m, "ImageOrientationPatient", "(0020,0037)", 6), first, atol=ORIENTATION_ATOL)
        for m in members
    )


def _summaries(
    images: list[_Image], keys: dict[str, str], dropped: frozenset[int] = frozenset()
) -> dict[str, SeriesSummary]:
    """A summary per series, and one per stack of series (``keys``, ``dropped``: :func:`_stack_keys`)."""
    by_series: dict[str, list[_Image]] = {}
    for image in images:
        series = _series_key(image)
        by_series.setdefault(series, []).append(image)
        if keys[series] != series and id(image) not in dropped:
            by_series.setdefault(keys[series], []).append(image)
    parts: dict[str, list[str]] = {}
    for series, key in keys.items():
        parts.setdefault(key, []).append(series)
    result = {}
    for uid, members in by_series.items():
        apex_cos, pixel_mm, steps, normal, extent, acquired, cycle = None, 0.0, False, None, None, None, False
        try:
            if not _one_plane(members):
                raise ReadError(members[0].path, "images in several planes")  # never preferred
            groups = _group_positions(members)
            n_positions, n_phases = len(groups), max(len(g) for g in groups)
            # one time for every image orders nothing (zeroed by a de-identification tool): unknown, not perfusion
            span = None if _constant_times(members) is not None else _trigger_span(max(groups, key=len))
            acquired = _acquisition_span(max(groups, key=len))
            cycle = _trigger_cycle(groups)
            steps = any(_inversion_steps(g) for g in groups)
            orientation = _vector(members[0], "ImageOrientationPatient", "(0020,0037)", 6)
            cos = apex_cosine(_LPS_TO_RAS[:3, :3] @ _normal(orientation))
            apex_cos = None if cos is None else abs(cos)
            pixel_mm = float(np.mean(_vector(members[0], "PixelSpacing", "(0028,0030)", 2)))
            axis = _normal(orientation)
            ends = [
                float(_vector(g[0], "ImagePositionPatient", "(0020,0032)", 3) @ axis) for g in (groups[0], groups[-1])
            ]
            normal, extent = (float(axis[0]), float(axis[1]), float(axis[2])), (ends[0], ends[1])
        except ReadError:
            n_positions, n_phases, span = 0, 0, None  # no usable geometry: never preferred
        header = members[0].header
        result[uid] = SeriesSummary(
            uid,
            str(header.get("SeriesDescription", "")),
            len(members),
            n_positions,
            n_phases,
            span,
            max((n for m in members if (n := _int_or_none(m.header.get("SeriesNumber"))) is not None), default=None),
            str(header.get("StudyInstanceUID", "") or ""),
            str(header.get("PatientID", "") or ""),
            apex_cos,
            pixel_mm,
            steps,
            normal,
            extent,
            acquired,
            tuple(str(v).strip().upper() for v in _image_type(header)),
            cycle,
            tuple(sorted(parts.get(uid, [uid]))) if keys.get(uid, uid) == uid else (uid,),
        )
    return result


def _image_type(header: Dataset) -> list[str]:
    """ImageType (0008,0008) values of a header, [] where absent or unreadable."""
    try:
        value = header.get("ImageType")
    except Exception:  # a malformed value must not stop the scan
        return []
    if value is None:
        return []
    # one value reads as a str, several as a MultiValue
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def scan_dicom_series(path: str | Path) -> list[SeriesSummary]:
    """Every image series under ``path`` (searched recursively), and every stack of one-slice cine
    series (its ``series_uid`` their UIDs joined by '+'), best short-axis cine candidate first."""
    summaries = list(_survey(Path(path)).summaries.values())
    return sorted(summaries, key=_preference, reverse=True)


class _Survey(NamedTuple):
    """What a folder's headers say: its images and their series (:func:`_stack_keys`, :func:`_summaries`)."""

    images: list[_Image]
    keys: dict[str, str]
    repeats: dict[str, list[tuple[str, str]]]
    dropped: frozenset[int]
    summaries: dict[str, SeriesSummary]
    #: candidate key -> number of one-image series regrouped into it (`_regroup_singletons`)
    regrouped: dict[str, int]


#: the folders surveyed within `one_walk`'s block, by path; None outside one
_WALKED: ContextVar[dict[Path, _Survey] | None] = ContextVar("cmrsdk_dicom_walked", default=None)


@contextmanager
def one_walk() -> Iterator[None]:
    """Within the block, a folder's headers are read once: :func:`read_dicom_study` and
    :func:`scan_dicom_series` of one path share what the first found (`cmrsdk.io.inspect` calls
    both; it read a 3,000-file disc twice), and its warnings are said by the first alone."""
    token = _WALKED.set({})
    try:
        yield
    finally:
        _WALKED.reset(token)


def _survey(path: Path) -> _Survey:
    """The images under ``path`` and their series; read once within `one_walk`."""
    walked = _WALKED.get()
    if walked is not None and path in walked:
        return walked[path]
    images, _ = _collect(path)
    keys, repeats, dropped = _stack_keys(images)
    regrouped = _regroup_singletons(images, keys)
    summaries = _summaries(images, keys, dropped)
    # the one-image series regrouped are listed as their candidate alone (inspect listed 240 of them)
    summaries = {uid: s for uid, s in summaries.items() if keys.get(uid, uid) not in regrouped or uid in regrouped}
    survey = _Survey(images, keys, repeats, dropped, summaries, regrouped)
    if walked is not None:
        walked[path] = survey
    return survey


def _preference(s: SeriesSummary) -> tuple[bool, bool, bool, bool, bool, bool, int, float, bool, bool, int, int]:
    # coverage before the name (a 3-slice repeat named "SAX" beside a full cine named "FIESTA"); one
    # series before a stack of series when both cover as much; of two complete cines alike, the
    # later acquisition (a cine is repeated when the first was not usable)
    return (
        s.n_positions >= 3,
        s.n_phases >= 2,
        not s.is_dynamic,
        not s.image_type_reason,
        not s.is_tagged,
        s.is_short_axis,
        s.n_positions,
        -round(s.pixel_mm, 1),
        bool(_SAX_WORDS.search(s.description)),
        "+" not in s.series_uid,
        s.n_images,
        _sort_number(s),
    )


def _choose_cine(path: Path, summaries: dict[str, SeriesSummary]) -> str:
    """The series to read by the module's rules; refused where the short-axis cines found belong
    to more than one study (one study is segmented at a time), warned where one study has several."""
    chosen = max(summaries.values(), key=_preference)
    cines = sorted((s for s in summaries.values() if s.is_sax_cine), key=_preference, reverse=True)
    studies = sorted({(s.study_uid, s.patient_id) for s in cines})
    if len(studies) > 1:
        named = "; ".join(f"StudyInstanceUID {uid or '(none)'} (PatientID '{pid}')" for uid, pid in studies)
        raise ReadError(
            path,
            f"holds short-axis cines of {len(studies)} studies ({named}); cmrsdk reads one study at a "
            "time: name one with cmrsdk segment --study UID (cmrsdk.io.read_dicom_study(path, study_uid=...)), or "
            "give each study its own folder",
        )
    beyond = _continued_elsewhere(chosen, summaries.values())
    if beyond:
        named = "; ".join(_describe_part(s) for s in beyond)
        raise ReadError(
            path,
            f"the short-axis cine {_describe_part(chosen)} goes on in series cmrsdk cannot stack with it (phase "
            f"count, matrix or pixel size differ): {named}; volumes from one part would be wrong: export the stack "
            "as one series, or read one part with cmrsdk segment --series UID "
            "(cmrsdk.io.read_dicom_study(path, series_uid=...))",
        )
    split = _phases_elsewhere(chosen, summaries.values())
    if split:
        warn(
            CmrWarning(
                f"{path}: series {chosen.series_uid} ('{chosen.description}') holds one phase, and {len(split)} other "
                f"series of its study hold one phase each at the same {chosen.n_positions} slice positions (SeriesNumber "
                f"{', '.join(_number_text(s) for s in split[:5])}{', ...' if len(split) > 5 else ''}): a cine stored "
                "one series per phase, which cmrsdk does not stack; reading one phase (volumes, no EF): export the "
                "cine as one series"
            ),
            stacklevel=3,
        )
    # the warning names real alternatives: not the parts of the stack read, nor (when the one read
    # is a short-axis stack) axial or long-axis stacks
    parts = set(chosen.parts)
    alternatives = [
        s
        for s in cines
        if s is not chosen and s.series_uid not in parts and (s.is_short_axis or not chosen.is_short_axis)
    ]
    if alternatives:
        cines = [chosen, *alternatives]
        others = ", ".join(f"{s.series_uid} ('{s.description}', SeriesNumber {_number_text(s)})" for s in cines[1:])
        warn(
            CmrWarning(
                f"{path}: {len(cines)} short-axis cine series; reading {chosen.series_uid} ('{chosen.description}', "
                f"SeriesNumber {_number_text(chosen)}, {chosen.n_images} images), not {others} "
                "(read another with cmrsdk segment --series UID, or cmrsdk.read_dicom_study(path, series_uid=...))"
            ),
            stacklevel=3,
        )
    return chosen.series_uid


def _describe_part(s: SeriesSummary) -> str:
    """'UID ('description', N slice(s), T phases, P mm pixels, at a..b mm)': a part of a split cine."""
    lo, hi = s.extent_mm or (float("nan"), float("nan"))
    return (
        f"{s.series_uid} ('{s.description}', {s.n_positions} slice(s), {s.n_phases} phases, "
        f"{s.pixel_mm:.2f} mm pixels, at {lo:.1f}..{hi:.1f} mm along its normal)"
    )


def _extent_along(chosen: SeriesSummary, s: SeriesSummary) -> tuple[float, float] | None:
    """``s``'s first and last slice positions along ``chosen``'s slice normal (mm, ascending);
    None where either lacks a usable geometry or their planes are not parallel."""
    if chosen.normal is None or s.normal is None or s.extent_mm is None:
        return None
    cos = float(np.asarray(s.normal) @ np.asarray(chosen.normal))
    if abs(cos) < 1.0 - 1e-4:
        return None
    sign = 1.0 if cos > 0 else -1.0
    low, high = sorted(sign * e for e in s.extent_mm)
    return low, high


def _half_step(chosen: SeriesSummary) -> float:
    """Half of ``chosen``'s slice step (mm): how far a position may lie and still be the same one."""
    lo, hi = sorted(chosen.extent_mm or (0.0, 0.0))
    return 0.5 * (hi - lo) / max(chosen.n_positions - 1, 1)


def _continued_elsewhere(chosen: SeriesSummary, summaries: Iterable[SeriesSummary]) -> list[SeriesSummary]:
    """Cine series of ``chosen``'s study and orientation with slices outside its extent by more
    than half a slice step: the rest of a stack split over series that did not stack with it."""
    if chosen.normal is None or chosen.extent_mm is None or chosen.n_positions < 2:
        return []
    lo, hi = sorted(chosen.extent_mm)
    margin = _half_step(chosen)
    found = []
    for s in summaries:
        if (
            "+" in s.series_uid  # a stack's parts are listed on their own too
            or s.series_uid == chosen.series_uid
            or s.series_uid in chosen.parts
            or s.n_phases < 2
            or s.is_dynamic
            or s.study_uid != chosen.study_uid
        ):
            continue
        ends = _extent_along(chosen, s)
        if ends is not None and (ends[0] < lo - margin or ends[1] > hi + margin):
            found.append(s)
    return found


def _phases_elsewhere(chosen: SeriesSummary, summaries: Iterable[SeriesSummary]) -> list[SeriesSummary]:
    """Other one-phase series of ``chosen``'s study, orientation and slice positions, where
    ``chosen`` is a one-phase stack: a cine stored one series per phase."""
    if chosen.n_phases != 1 or chosen.n_positions < 3 or chosen.normal is None or chosen.extent_mm is None:
        return []
    lo, hi = sorted(chosen.extent_mm)
    margin = _half_step(chosen)
    found = []
    for s in summaries:
        if (
            s.series_uid == chosen.series_uid
            or "+" in s.series_uid
            or s.n_phases != 1
            or s.n_positions != chosen.n_positions
            or s.study_uid != chosen.study_uid
        ):
            continue
        ends = _extent_along(chosen, s)
        if ends is not None and abs(ends[0] - lo) <= margin and abs(ends[1] - hi) <= margin:
            found.append(s)
    return sorted(found, key=_sort_number)


def _sort_number(s: SeriesSummary) -> int:
    """SeriesNumber to order by; a series without one ranks as number 0."""
    return s.series_number if s.series_number is not None else 0


def _number_text(s: SeriesSummary) -> str:
    """SeriesNumber as a message shows it: "(absent)" rather than a number no header holds."""
    return str(s.series_number) if s.series_number is not None else "(absent)"


def _check_consistent(images: list[_Image]) -> None:
    first = images[0]
    # a slice is referenced by its file, or by a frame of a multi-frame file: one way per series
    mixed = next((im for im in images if (im.frame is None) != (first.frame is None)), None)
    if mixed is not None:
        multi, single = (first, mixed) if first.frame is not None else (mixed, first)
        raise ReadError(
            multi.path,
            f"series mixes multi-frame images ('SOPClassUID' (0008,0016) {sop_class(multi.header)} here) with "
            f"single-frame ones ({sop_class(single.header)} in {single.path.name}); cmrsdk reads a series "
            "stored one way (all single-frame, or all multi-frame)",
        )
    orientation = _vector(first, "ImageOrientationPatient", "(0020,0037)", 6)
    spacing = _vector(first, "PixelSpacing", "(0028,0030)", 2)
    size = (first.header.get("Rows"), first.header.get("Columns"))
    for image in images:
        other = _vector(image, "ImageOrientationPatient", "(0020,0037)", 6)
        if not np.allclose(other, orientation, atol=ORIENTATION_ATOL):
            raise ReadError(
                image.path,
                f"mixed orientations in one series: 'ImageOrientationPatient' {other.tolist()} "
                f"differs from {orientation.tolist()} in {first.path.name}",
            )
        other_spacing = _vector(image, "PixelSpacing", "(0028,0030)", 2)
        if not np.allclose(other_spacing, spacing, rtol=1e-4):
            raise ReadError(
                image.path,
                f"mixed pixel sizes in one series: 'PixelSpacing' {other_spacing.tolist()} "
                f"differs from {spacing.tolist()} in {first.path.name}",
            )
        other_size = (image.header.get("Rows"), image.header.get("Columns"))
        if other_size != size:
            raise ReadError(
                image.path, f"mixed matrix sizes in one series: Rows x Columns {other_size} differs from {size}"
            )
    if np.any(spacing <= 0):
        raise ReadError(first.path, f"'PixelSpacing' (0028,0030) value {spacing.tolist()} must be positive")
    low, high = IN_PLANE_RANGE_MM
    if np.any(spacing < low) or np.any(spacing > high):
        raise ReadError(
            first.path,
            f"'PixelSpacing' (0028,0030) value {spacing.tolist()} mm is outside {low}..{high} mm: "
            "not a cardiac MR image, or a header error",
        )


def _raw_value(header: Dataset, keyword: str) -> str:
    """The stored text of an element, without pydicom converting it (text in a DS tag)."""
    element = header.get(keyword)
    if element is None:
        return ""
    raw = header.get_item(keyword)
    value = getattr(raw, "value", element)
    return value.decode(errors="replace").strip() if isinstance(value, bytes) else str(value)


def _check_orientation(image: _Image, orientation: np.ndarray) -> None:
    """Row and column directions must be unit vectors at right angles (within header rounding)."""
    row, column = orientation[:3], orientation[3:]
    lengths = (float(np.linalg.norm(row)), float(np.linalg.norm(column)))
    if not all(abs(length - 1.0) < 1e-2 for length in lengths) or abs(float(row @ column)) > 1e-2:
        raise ReadError(
            image.path,
            f"'ImageOrientationPatient' (0020,0037) value {orientation.tolist()} is not two "
            "orthogonal unit vectors (sheared or corrupt geometry)",
        )


def _check_stack_line(
    groups: list[list[_Image]], origins: np.ndarray, normal: np.ndarray, positions: np.ndarray
) -> None:
    """Refuse a stack whose slices are not stacked along their normal, or that has zero steps."""
    steps = np.diff(positions)
    if np.any(steps > SLICE_RANGE_MM[1]):
        raise ReadError(
            groups[int(np.argmax(steps)) + 1][0].path,
            f"slice positions {np.round(positions, 3).tolist()} mm "
            f"step by up to {steps.max():.1f} mm, over "
            f"{SLICE_RANGE_MM[1]} mm: not one short-axis stack",
        )
    if np.any(steps <= 0.01):
        raise ReadError(
            groups[0][0].path,
            f"slice positions {np.round(positions, 3).tolist()} mm repeat; expected "
            "distinct positions along the slice normal",
        )
    lateral = (origins - origins[0]) - np.outer(positions - positions[0], normal)
    drift = float(np.linalg.norm(lateral, axis=1).max())
    if drift > max(1.0, 0.1 * float(np.median(steps))):
        worst = int(np.linalg.norm(lateral, axis=1).argmax())
        raise ReadError(
            groups[worst][0].path,
            f"'ImagePositionPatient' (0020,0032) moves {drift:.1f} mm across the "
            "slice normal: the stack is sheared (tilted slices), which cmrsdk does "
            "not resample; expected slices stacked along the normal",
        )


def _decode(path: Path) -> np.ndarray:
    """The stored pixel values of a file: (Y, X) for one frame, (frames, Y, X) for several."""
    try:
        dataset = read_dataset(path)
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(path, f"DICOM file cannot be read ({type(exc).__name__}: {exc})") from exc
    syntax = str(getattr(dataset.file_meta, "TransferSyntaxUID", "") or "") if hasattr(dataset, "file_meta") else ""
    if syntax in _FF_D9_SYNTAXES:
        _check_frames_end(path, dataset, syntax)
    try:
        with quiet():
            return np.asarray(dataset.pixel_array)
    except Exception as exc:  # truncated pixel data, unsupported transfer syntax, ...
        package = _DECODERS.get(syntax)
        if package is not None and not _importable(package):
            raise ReadError(
                path,
                f"pixel data in transfer syntax {pydicom.uid.UID(syntax).name} ({syntax}) needs "
                f"the package {package}: pip install pylibjpeg {package}",
            ) from exc
        raise ReadError(
            path,
            f"pixel data cannot be decoded (transfer syntax {syntax or 'unknown'}; {type(exc).__name__}: "
            f"{' '.join(str(exc).split())})",  # one line: the decoders' messages hold one per plugin
        ) from exc


def _check_frames_end(path: Path, dataset: Dataset, syntax: str) -> None:
    """Refuse a JPEG-family frame cut short or overwritten: the decoders give such a frame back
    without an error, half of it or all of it wrong, and the masks and volumes with it."""
    from pydicom.encaps import generate_frames

    try:
        count = int(dataset.get("NumberOfFrames") or 1)
        frames = list(generate_frames(dataset.PixelData, number_of_frames=count))
    except Exception:  # an unreadable encapsulation: the decoder names it
        return
    for k, frame in enumerate(frames):
        tail = bytes(frame).rstrip(b"\x00")[-16:]  # after the padding to an even length
        if b"\xff\xd9" not in tail:
            where = f"frame {k + 1} of {len(frames)}" if len(frames) > 1 else "its frame"
            raise ReadError(
                path,
                f"pixel data in {pydicom.uid.UID(syntax).name} is damaged: {where} does not end with the "
                "end-of-image marker FF D9 (cut short or overwritten in transfer or storage); send it again",
            )


def _pixels(image: _Image, decoded: dict[Path, np.ndarray]) -> np.ndarray:
    """float32 (Y, X) intensities of one image after rescale; ``decoded`` keeps each multi-frame
    file's frames, so that a file of 300 frames is decoded once, not 300 times."""
    if image.frame is None:
        stored = _decode(image.path)
        head = image.header
        n_frames = _int_or_none(head.get("NumberOfFrames"))
        samples = _int_or_none(head.get("SamplesPerPixel"))
        rows, columns = head.get("Rows"), head.get("Columns")
        if (
            stored.ndim == 3
            and (n_frames or 1) == 1
            and (samples or 1) == 1
            and isinstance(rows, int)
            and isinstance(columns, int)
            and stored.shape[1:] == (rows, columns)
        ):  # pydicom read the surplus bytes as frames: 'Rows' is wrong, not the colour (sweep 51)
            bits = _int_or_none(head.get("BitsAllocated")) or 16
            size = rows * columns * bits // 8
            raise ReadError(
                image.path,
                f"'Rows' x 'Columns' (0028,0010)/(0028,0011) value {rows} x {columns} with {bits} bits allocated "
                f"is {size} bytes, but the pixel data holds {stored.shape[0] * size} ({stored.shape[0]} such images) "
                f"and 'NumberOfFrames' (0028,0008) {'is absent' if n_frames is None else 'is 1'}: a header error",
            )
        if stored.ndim != 2:
            raise ReadError(
                image.path,
                f"pixel data has shape {stored.shape}; only greyscale images are supported "
                "(SamplesPerPixel 1, one frame or an enhanced multi-frame MR image)",
            )
    else:
        if image.path not in decoded:
            frames = _decode(image.path)
            decoded[image.path] = frames[None] if frames.ndim == 2 else frames
        frames = decoded[image.path]
        if frames.ndim != 3 or image.frame >= frames.shape[0]:
            raise ReadError(
                image.path,
                f"pixel data has shape {frames.shape}; expected 'NumberOfFrames' greyscale frames "
                f"(frame {image.frame + 1} asked for; SamplesPerPixel 1)",
            )
        stored = frames[image.frame]
    header = image.header
    frame_note = "" if image.frame is None else f" (frame {image.frame + 1})"
    where = f"{image.path}{frame_note}"
    stored = _greyscale(image, stored)
    slope, intercept = _float_tag(header, "RescaleSlope"), _float_tag(header, "RescaleIntercept")
    for keyword, value, default in (("RescaleSlope", slope, 1.0), ("RescaleIntercept", intercept, 0.0)):
        zero = keyword == "RescaleSlope" and value == 0  # every pixel would be the intercept
        if (value is None and _raw_value(header, keyword) != "") or zero:
            said = "is 0" if zero else "is not a number"
            warn(
                CmrWarning(f"{where}: '{keyword}' value {_raw_value(header, keyword)!r} {said}; {default} used"),
                stacklevel=2,
            )
    if slope is not None and slope < 0:
        # it would turn the image's contrast over: blood dark, the U-Nets' cine gone
        raise ReadError(image.path, f"'RescaleSlope' (0028,1053) value {slope:g} is negative{frame_note}")
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = 0.0 if intercept is None else intercept
    pixels = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if not np.all(np.isfinite(pixels)):
        scaled = np.all(np.isfinite(stored)) if np.issubdtype(stored.dtype, np.floating) else True
        cause = f" after 'RescaleSlope' {slope:g} and 'RescaleIntercept' {intercept:g}" if scaled else ""
        raise ReadError(image.path, f"pixel data holds NaN or infinite values{cause}{frame_note}")
    return pixels


def _greyscale(image: _Image, stored: np.ndarray) -> np.ndarray:
    """Stored values (Y, X) as MONOCHROME2 values: padding (PixelPaddingValue, up to
    PixelPaddingRangeLimit) given the darkest value the image holds, MONOCHROME1 turned over
    within BitsStored; any other PhotometricInterpretation refused naming it."""
    header = image.header
    kind = str(header.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    if kind not in ("MONOCHROME1", "MONOCHROME2"):
        raise ReadError(
            image.path,
            f"'PhotometricInterpretation' (0028,0004) value {kind!r}: only greyscale images "
            "(MONOCHROME2, MONOCHROME1) are supported",
        )
    pad = _int_or_none(header.get("PixelPaddingValue"))
    if pad is not None:
        limit = _int_or_none(header.get("PixelPaddingRangeLimit"))
        low, high = sorted((pad, pad if limit is None else limit))
        padded = (stored >= low) & (stored <= high)
        if padded.any() and not padded.all():
            # the border a scanner or archive padded with (often -2000 or 32767) is background,
            # not tissue: left as stored it shifts the intensity statistics or floods the window
            kept = stored[~padded]
            stored = np.where(padded, kept.max() if kind == "MONOCHROME1" else kept.min(), stored)
    if kind == "MONOCHROME1":  # the smallest value white: turned over within the stored bits
        bits = _int_or_none(header.get("BitsStored")) or 8 * stored.dtype.itemsize
        signed = _int_or_none(header.get("PixelRepresentation")) == 1
        top = -1 if signed else (1 << bits) - 1
        stored = top - stored.astype(np.int64)
    return stored


def _importable(package: str) -> bool:
    import importlib.util

    module = {"pylibjpeg-libjpeg": "libjpeg", "pylibjpeg-openjpeg": "openjpeg"}.get(package, package)
    return importlib.util.find_spec(module) is not None and importlib.util.find_spec("pylibjpeg") is not None


def _float_tag(header: Dataset, keyword: str, scale: float = 1.0) -> float | None:
    """A number of the header, None where absent or not a number."""
    try:
        value = header.get(keyword)
        number = float(value) * scale if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and np.isfinite(number) else None


def _patient_number(header: Dataset, keyword: str, scale: float = 1.0) -> float | None:
    """A patient's number (weight, size, field strength), its decimal comma ('72,5', as
    European consoles write it) read as a point; None where absent or not a number."""
    number = _float_tag(header, keyword, scale)
    if number is None and "," in _raw_value(header, keyword):
        try:
            number = float(_raw_value(header, keyword).replace(",", ".")) * scale
        except ValueError:
            return None
    return number if number is not None and np.isfinite(number) else None


def _text_tag(header: Dataset, keyword: str) -> str | None:
    """A text value as one line: several values joined by the backslash that separated them,
    control characters as spaces; None where absent or blank."""
    value = header.get(keyword)
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    return " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split()) or None


#: a cine of at least this many phases may miss a few images at a slice position (see below)
MIN_PHASES_TO_FILL = 10


def _fill_missing_phases(groups: list[list[_Image]], by_trigger: bool, series: str) -> list[list[_Image]]:
    """Positions that miss an image or two of a long cine (an archive that lost them in transfer),
    completed with each missing phase's nearest image in time at that position, with a warning.

    Only where every image has a TriggerTime, the cine has at least :data:`MIN_PHASES_TO_FILL`
    phases, most positions hold them all and none misses more than a tenth; otherwise the series
    is refused naming the counts, as before: a phase taken from its neighbour moves that slice's
    volume by a fraction of a phase's change, where a wrong phase order would move it by anything.
    """
    counts = sorted({len(g) for g in groups})
    n_phases = counts[-1]
    worst = min(groups, key=len)
    full = [g for g in groups if len(g) == n_phases]
    # most positions complete (else a position with extra images is likelier than many that lost some)
    fillable = by_trigger and n_phases >= MIN_PHASES_TO_FILL and 2 * len(full) > len(groups)
    if not fillable or n_phases - len(worst) > n_phases // 10:
        raise ReadError(worst[0].path, f"slice positions hold differing numbers of phases {counts} in series {series}")
    reference = np.median([[_time_of(im) for im in g] for g in full], axis=0)  # (n_phases,) ms
    filled = []
    for z, group in enumerate(groups):
        if len(group) == n_phases:
            filled.append(group)
            continue
        times = np.array([_time_of(im) for im in group])
        nearest = [int(np.argmin(np.abs(times - t))) for t in reference]
        filled.append([group[i] for i in nearest])
        warn(
            CmrWarning(
                f"{group[0].path}: slice position {z} holds {len(group)} of {n_phases} phases; each missing "
                "phase takes the image nearest in TriggerTime at that position"
            ),
            stacklevel=3,
        )
    return filled


def read_dicom_study(path: str | Path, *, series_uid: str | None = None, study_uid: str | None = None) -> Study:
    """Read the short-axis cine series of a DICOM directory (searched recursively).

    Parameters
    ----------
    path : a directory (or one file) of MR images: classic single-frame, or enhanced multi-frame
        (one file per series, per slice or per frame).
    series_uid : SeriesInstanceUID of the series to read; None selects the short-axis cine by
        the module's rules.
    study_uid : StudyInstanceUID of the study to read where ``path`` holds several (two
        patients exported together; ``cmrsdk segment --study``, and ``cmrsdk batch`` splits such
        a folder by it); "" for images that carry none. The cine is chosen by the module's rules
        among that study's series alone; None: the folder must hold one study's cines.

    Returns
    -------
    Study with one :class:`Stack` per phase (float32 (Z, Y, X) pixels after rescale, spacing
    (dz, dy, dx) mm, RAS+ affine, ``source_files`` per slice and, for multi-frame files,
    ``source_frames``), ``trigger_times_ms`` (T,)
    (mean over slices), ``ed_index = 0`` and ``es_index = None`` when there are several phases.

    Raises
    ------
    ReadError : no images, truncated files, missing geometry tags, mixed orientations or pixel
        sizes, duplicate slice positions, slices with differing phase counts, an unknown series.
    """
    path = Path(path)
    images, keys, repeats, dropped, summaries, regrouped = _survey(path)
    if study_uid is not None:
        ours = {uid: s for uid, s in summaries.items() if s.study_uid == study_uid}
        if not ours:
            present = sorted({s.study_uid for s in summaries.values()})
            raise ReadError(path, f"study_uid '{study_uid}' not found; studies present: {present}")
        summaries = ours
    if series_uid is None:
        chosen = _choose_cine(path, summaries)
    elif series_uid in summaries:
        chosen = series_uid
    else:
        raise ReadError(path, f"series_uid '{series_uid}' not found; series present: {sorted(summaries)}")
    summary = summaries[chosen]
    why = summary.dynamic_reason or summary.image_type_reason
    if why:
        # named by a file and its values: the folder alone left the user to find which images
        parts = [im for im in images if keys[_series_key(im)] == chosen or _series_key(im) == chosen]
        file, detail = (
            _dynamic_detail(_group_positions(parts), summary)
            if summary.dynamic_reason
            else (parts[0].path, f"in {path}")
        )
        raise ReadError(
            file,
            f"series {chosen} ('{summary.description}') is not a cine: {why} ({detail}); cmrsdk segments "
            "short-axis cine",
        )
    if summary.apex_cos is not None and not summary.is_short_axis:
        angle = math.degrees(math.acos(min(1.0, summary.apex_cos)))
        warn(
            CmrWarning(
                f"{path}: series {chosen} ('{summary.description}') is not a short-axis stack: its slice normal lies "
                f"{angle:.0f} degrees from the heart's usual long axis (over 46): its volumes are not a short-axis "
                "stack's; check the picture"
            ),
            stacklevel=2,
        )
    if summary.is_tagged:
        warn(
            CmrWarning(
                f"{path}: series {chosen} ('{summary.description}') is named a tagged cine: the tag lines are not the "
                "contrast the U-Nets learnt; check every contour"
            ),
            stacklevel=2,
        )
    # a series named alone is read whole; a stack leaves out the earlier images of a repeated slice
    members = [
        im for im in images if _series_key(im) == chosen or (keys[_series_key(im)] == chosen and id(im) not in dropped)
    ]
    if chosen in regrouped:
        warn(
            CmrWarning(
                f"{path}: {regrouped[chosen]} series of one image each were regrouped by geometry (orientation, "
                f"matrix, pixel size, SeriesNumber {_number_text(summary)}, description) into one cine of "
                f"{summary.n_positions} slice positions x {summary.n_phases} phases: an anonymiser gave each file "
                "its own SeriesInstanceUID"
            ),
            stacklevel=2,
        )
    for left_out, taken in repeats.get(chosen, []):
        warn(
            CmrWarning(
                f"{path}: series {left_out} images a slice position again in series {taken}; "
                f"the later acquisition (higher SeriesNumber) is taken"
            ),
            stacklevel=2,
        )
    shared: Decoded = {}
    for member in members:  # what is read of the series' headers decoded, quietly (`_read_header`)
        with quiet():
            decode_elements(member.header, _READ_KEYWORDS, shared)
    _check_consistent(members)
    first = members[0]
    lossy = [im for im in members if is_lossy(im.header, im.path)]
    if lossy:
        # measured (sweep 25): 8-bit JPEG moved LVEF by 1.45 points, JPEG 2000 at 20:1 LV mass by 2.6 g
        syntax = str(getattr(getattr(lossy[0].header, "file_meta", None), "TransferSyntaxUID", "") or "")
        name = pydicom.uid.UID(syntax).name if syntax else "unknown"
        warn(
            CmrWarning(
                f"{lossy[0].path}: {len(lossy)} of {len(members)} image(s) compressed with loss ({name}); "
                "the masks and measures carry that loss, and the DICOM SEG says so (LossyImageCompression 01)"
            ),
            stacklevel=2,
        )
    total = len(members) * int(first.header.Rows) * int(first.header.Columns)
    if total > MAX_SERIES_PIXELS:
        raise ReadError(
            path,
            f"series {chosen} holds {len(members)} images of {first.header.Rows} x {first.header.Columns}: "
            f"{total} pixels exceeds the limit of {MAX_SERIES_PIXELS} (refused before reading pixels)",
        )
    # a time order needs every image's TriggerTime; where some are text, InstanceNumber orders them all
    unusable = [im for im in members if _trigger_time(im) is None and im.header.get("TriggerTime") is not None]
    constant = _constant_times(members)
    by_trigger = not unusable and constant is None and all(_trigger_time(im) is not None for im in members)
    if constant is not None and max(len(g) for g in _group_positions(members)) > 1:
        warn(
            CmrWarning(
                f"{first.path}: 'TriggerTime' (0018,1060) (or 'NominalCardiacTriggerDelayTime' (0020,9153)) is "
                f"{constant:g} ms in all {len(members)} images: no time order; phases ordered by InstanceNumber"
            ),
            stacklevel=2,
        )
    if unusable:
        warn(
            CmrWarning(
                f"{unusable[0].path}: 'TriggerTime' (0018,1060) value "
                f"{_raw_value(unusable[0].header, 'TriggerTime')!r} is not a number "
                f"({len(unusable)} image(s)); phases ordered by InstanceNumber instead"
            ),
            stacklevel=2,
        )
    groups = _group_positions(members, by_trigger)
    order = ORDER_KEYWORDS if by_trigger else _untimed_order(groups)
    if order != ORDER_KEYWORDS:
        groups = _group_positions(members, by_trigger, order)
    missing = [im for im in members if _trigger_time(im) is None and im.header.get("TriggerTime") is None]
    if missing and not unusable and max(len(g) for g in groups) > 1:
        # a cine's time order then rests on the sender's numbering (the volume curve still picks ED
        # and ES, and the frames are named in that order)
        warn(
            CmrWarning(
                f"{missing[0].path}: no 'TriggerTime' (0018,1060) or 'NominalCardiacTriggerDelayTime' "
                f"(0020,9153) ({len(missing)} of {len(members)} image(s)); phases ordered by {order[0]}"
            ),
            stacklevel=2,
        )
    for group in groups:
        times = [_time_of(im, by_trigger, order) for im in group]
        if len(set(times)) != len(times) and chosen in regrouped:
            # two one-image series at one place and time: two acquisitions alike, not told apart
            value = next(t for t in times if times.count(t) > 1)
            a, b = [im for im, t in zip(group, times) if t == value][:2]
            field = "'TriggerTime' (0018,1060)" if by_trigger else f"'{order[0]}'"
            raise ReadError(
                a.path,
                f"the {regrouped[chosen]} one-image series regrouped by geometry (each file its own "
                f"SeriesInstanceUID) collide: this image and {b.path.name} lie at one slice position with "
                f"{field} {value:g}: two acquisitions alike that cannot be told apart; give each its own folder "
                "or keep the SeriesInstanceUIDs when de-identifying",
            )
        if len(set(times)) != len(times):
            repeated = sorted({t for t in times if times.count(t) > 1})
            shown = ", ".join(f"{t:g}" for t in repeated[:5]) + (", ..." if len(repeated) > 5 else "")
            if not by_trigger and all(_order_number(im, order) is None for im in group):
                raise ReadError(
                    group[0].path,
                    f"{len(group)} images at one slice position and nothing to order them by: no 'TriggerTime' "
                    "(0018,1060), 'NominalCardiacTriggerDelayTime' (0020,9153), 'InstanceNumber' (0020,0013) "
                    f"or 'TemporalPositionIdentifier' (0020,0100) (also {group[1].path.name})",
                )
            field = "'TriggerTime' (0018,1060)" if by_trigger else "'InstanceNumber' (0020,0013; no usable TriggerTime)"
            raise ReadError(
                group[0].path,
                f"duplicate slice position: {len(group)} images at the same position, {len(times) - len(set(times))} "
                f"of them repeating a {field} ({shown}; also {group[1].path.name}): the slice "
                "acquired twice in one series, or copies of its files",
            )
    if not by_trigger and max(len(g) for g in groups) > 1:
        # the numbering is then the only time order: renumbered at random it mixes the phases silently
        untimed = (
            "'TriggerTime' (0018,1060) is not a number"
            if unusable
            else "'TriggerTime' (0018,1060) is one value for every image"
            if constant is not None
            else "'TriggerTime' (0018,1060) is absent"
        )
        _check_regular(groups, order, untimed)
    if len({len(g) for g in groups}) != 1:
        groups = _fill_missing_phases(groups, by_trigger, chosen)
    n_phases = len(groups[0])
    stated = _int_or_none(first.header.get("CardiacNumberOfImages"))
    if stated is not None and 2 < n_phases < stated:
        # the same phases missing at every position reads as a complete shorter cine (a transfer
        # cut short at a phase boundary): ED or ES may be among them, and the EF wrong. Two
        # phases are an ED and ES export, which keeps the cine's count
        warn(
            CmrWarning(
                f"{first.path}: series {chosen} holds {n_phases} phases per slice position, but "
                f"'CardiacNumberOfImages' (0018,1090) is {stated}: the cine may be incomplete, its ED or ES missing"
            ),
            stacklevel=2,
        )
    inversion = _float_tag(first.header, "InversionTime")
    if n_phases == 1 and inversion is not None and inversion > 0:
        # late gadolinium enhancement: the myocardium nulled, the U-Nets' cine contrast gone
        raise ReadError(
            first.path,
            f"series {chosen} ('{summaries[chosen].description}') is one phase with 'InversionTime' (0018,0082) "
            f"{inversion:g} ms: an inversion-recovery image such as late gadolinium enhancement, not a cine; "
            "cmrsdk segments short-axis cine (bSSFP)",
        )

    orientation = _vector(first, "ImageOrientationPatient", "(0020,0037)", 6)
    _check_orientation(first, orientation)
    row_spacing, col_spacing = _vector(first, "PixelSpacing", "(0028,0030)", 2)  # (dy, dx)
    normal = _normal(orientation)
    origins = np.array([_vector(g[0], "ImagePositionPatient", "(0020,0032)", 3) for g in groups])
    positions = origins @ normal
    if len(groups) > 1:
        # the nominal step is the median; volumes weigh each slice by its own steps
        # (cmrsdk.metrics.slice_thicknesses_mm), so gaps and uneven steps count at their real size
        dz = float(np.median(np.diff(positions)))
        _check_stack_line(groups, origins, normal, positions)
    else:
        dz = _float_tag(first.header, "SpacingBetweenSlices") or _float_tag(first.header, "SliceThickness") or 1.0
        dz = dz if np.isfinite(dz) and dz > 0 else 1.0  # one slice: no volume is reported, dz only labels the grid
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = normal * dz  # orthogonal by construction (checked above)
    affine_lps[:3, 1] = orientation[3:] * row_spacing  # down a column: rows advance
    affine_lps[:3, 2] = orientation[:3] * col_spacing  # along a row: columns advance
    affine_lps[:3, 3] = origins[0]
    affine = _LPS_TO_RAS @ affine_lps

    phases = []
    decoded: dict[Path, np.ndarray] = {}
    for t in range(n_phases):
        slices = [g[t] for g in groups]
        pixels = np.stack([_pixels(im, decoded) for im in slices])
        name = "ED" if t == 0 and n_phases > 1 else f"frame {t}"
        phases.append(
            Stack(
                pixels=pixels,
                spacing=(dz, float(row_spacing), float(col_spacing)),
                affine=affine,
                slice_positions=positions,
                phase=name,
                source=str(path),
                source_files=tuple(str(im.path) for im in slices),
                source_frames=tuple(im.frame + 1 for im in slices if im.frame is not None),
            )
        )
    times = np.array([[_time_of(g[t], by_trigger) for g in groups] for t in range(n_phases)]).mean(axis=1)
    header = first.header
    with quiet():  # invalid UIDs are validated when first read
        info = _info(header, chosen, path)
    return Study(
        phases=tuple(phases),
        ed_index=0 if n_phases > 1 else None,
        es_index=None,
        trigger_times_ms=times if by_trigger else None,
        info=info,
    )


def _info(header: Dataset, series_uid: str, path: Path) -> StudyInfo:
    height = _patient_number(header, "PatientSize", 100.0)  # metres: 1.15 * 100 is 114.99999999999999
    return StudyInfo(
        patient_id=_text_tag(header, "PatientID"),
        study_uid=str(header.get("StudyInstanceUID", "")) or None,
        series_uid=series_uid,
        series_description=_text_tag(header, "SeriesDescription"),
        manufacturer=_text_tag(header, "Manufacturer"),
        field_strength_t=_patient_number(header, "MagneticFieldStrength"),
        height_cm=None if height is None else round(height, 2),
        weight_kg=_patient_number(header, "PatientWeight"),
        sex={"M": "M", "F": "F"}.get(str(header.get("PatientSex", "") or "").strip().upper()),
        age_years=_age_years(header.get("PatientAge")),
        study_date=_iso_date(header.get("StudyDate")),
        accession_number=_text_tag(header, "AccessionNumber"),
        source=str(path),
    )


def _iso_date(value: object) -> str | None:
    """A DICOM date (DA, "20120101") as "2012-01-01"; None where absent or not a real date
    (anonymised archives hold "00000000", "UNKNOWN")."""
    from ._dicom_out import valid_date

    text = str(value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if valid_date(text) else None


#: years per unit of DICOM's Age String (PS3.5 AS: nnnD, nnnW, nnnM or nnnY)
_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _age_years(value: object) -> float | None:
    """PatientAge in years, or None where absent, not an Age String ("045Y", "006M") or 0: "000Y"
    is an anonymiser's placeholder, not entered, as a height or weight of 0 is."""
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY])", str(value or "").strip().upper())
    if match is None or int(match.group(1)) == 0:
        return None
    return round(int(match.group(1)) * _AGE_UNITS[match.group(2)], 2)
