"""Enhanced multi-frame MR as the classic reader sees it: one header per frame.

Newer scanners (Philips, Siemens XA) export a cine series as one Enhanced MR Image (or a Legacy
Converted Enhanced MR Image) holding every slice and phase as frames. Its per-frame geometry,
timing and rescale live in functional groups: each frame's own item of
PerFrameFunctionalGroupsSequence, else the SharedFunctionalGroupsSequence. :func:`frame_headers`
turns each frame into the header a classic single-frame image would carry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, TriggerTime, RescaleSlope, ...), so that series selection,
slice and phase ordering and every geometry check are the classic reader's, unchanged.

Where the timing comes from, first found: the frame's CardiacSynchronizationSequence
NominalCardiacTriggerDelayTime (Enhanced MR), the TriggerTime of its Unassigned Per-Frame (or
Shared) Converted Attributes (Legacy Converted); where none, phases are ordered by the
frame's TemporalPositionIndex, else by frame number. A file whose frames belong to several
stacks (FrameContentSequence StackID: a short-axis stack and long-axis views, say) gives each
frame its StackID, and the reader takes each stack as a series of its own to choose among. A
file holding magnitude frames beside phase, real or imaginary ones (MRImageFrameTypeSequence
ComplexImageComponent) is read from its magnitude frames (:func:`magnitude_frames`): only they
show the anatomy a cine is segmented on.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from ..errors import ReadError

__all__ = ["ENHANCED_MR_CLASSES", "frame_headers", "is_multiframe", "magnitude_frames", "sop_class"]

#: Enhanced MR Image Storage and Legacy Converted Enhanced MR Image Storage.
ENHANCED_MR_CLASSES = {"1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4"}

_PER_FRAME = "PerFrameFunctionalGroupsSequence"
_SHARED = "SharedFunctionalGroupsSequence"
#: (functional group sequence, attribute of its item) a classic header carries at its top level
_GROUP_ATTRIBUTES = (
    ("PlanePositionSequence", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness"),
    ("PixelMeasuresSequence", "SpacingBetweenSlices"),
    ("PixelValueTransformationSequence", "RescaleSlope"),
    ("PixelValueTransformationSequence", "RescaleIntercept"),
)
#: where a frame's time after the R wave (ms) is kept, first found: Enhanced MR, then Legacy
#: Converted (per frame, or shared where all frames, or the file's one frame, have the same)
_TIMING = (
    ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    ("UnassignedPerFrameConvertedAttributesSequence", "TriggerTime"),
    ("UnassignedSharedConvertedAttributesSequence", "TriggerTime"),
    # a source whose TriggerTime an anonymiser dropped keeps the nominal delay (sweep 24)
    ("UnassignedPerFrameConvertedAttributesSequence", "NominalCardiacTriggerDelayTime"),
    ("UnassignedSharedConvertedAttributesSequence", "NominalCardiacTriggerDelayTime"),
)
#: where a frame's inversion time (ms) is kept: Enhanced MR (the first of InversionTimes), then
#: Legacy Converted; a one-phase image with one is late enhancement, refused by the reader
_INVERSION = (
    ("MRModifierSequence", "InversionTimes"),
    ("UnassignedPerFrameConvertedAttributesSequence", "InversionTime"),
    ("UnassignedSharedConvertedAttributesSequence", "InversionTime"),
)
#: attributes of the whole file a frame's header must not carry over (they describe all frames)
_FILE_ONLY = (_PER_FRAME, _SHARED, "NumberOfFrames", "DimensionIndexSequence", "DimensionOrganizationSequence")


def _frame_number(own: int | None, n_frames: int, index: int, concatenated: bool = False) -> int:
    """A frame's InstanceNumber where its file gives no TemporalPositionIndex: the file's own
    number then the frame's index (in its concatenation, where it is a part of one), so that
    files of one frame each, one file per phase, or a concatenation's parts keep their order
    across files (sweeps 38 and 39: each restarted at 1, refused as copies of each other)."""
    if own is None:
        return index + 1
    return own * (1_000_000 if concatenated else n_frames) + index


def sop_class(header: Dataset) -> str:
    """A header's SOPClassUID, else its file meta's MediaStorageSOPClassUID ("" where neither)."""
    meta = getattr(header, "file_meta", None)
    return str(header.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))


def is_multiframe(header: Dataset) -> bool:
    """Whether a file holds its images as frames: an enhanced MR SOP class, or a NumberOfFrames
    other than 1. Not the presence of functional groups: GE's classic MR images carry an empty
    PerFrameFunctionalGroupsSequence (every Sunnybrook file does; sweep 35)."""
    if sop_class(header) in ENHANCED_MR_CLASSES:
        return True
    try:  # an empty, zero or garbled count on a classic image is no frame count (sweep 37)
        return int(header.get("NumberOfFrames") or 1) > 1
    except (TypeError, ValueError):
        return False


def _item(group: Dataset | None, sequence: str) -> Dataset | None:
    if group is None or sequence not in group:
        return None
    value = group[sequence].value
    return value[0] if isinstance(value, Sequence) and len(value) > 0 else None


def _lookup(per_frame: Dataset, shared: Dataset | None, sequence: str, keyword: str) -> object | None:
    """``keyword`` of the frame's ``sequence`` item, else of the shared one; None where neither has it."""
    for group in (per_frame, shared):
        item = _item(group, sequence)
        if item is not None and keyword in item and item[keyword].value not in (None, ""):
            return item[keyword].value
    return None


def _replace(frame: Dataset, keyword: str, value: object) -> None:
    """Give ``frame`` its own element: assigning to an element shared with the other frames would change them all."""
    if keyword in frame:
        del frame[keyword]
    setattr(frame, keyword, value)


def frame_headers(path: Path, header: Dataset) -> list[Dataset]:
    """One classic-looking header per frame of an enhanced multi-frame MR image.

    Parameters
    ----------
    path : the file, for error messages.
    header : its header, read without pixel data.

    Returns
    -------
    ``NumberOfFrames`` Datasets in frame order: the file's own attributes (patient, study,
    series, Rows, Columns) with each frame's ImagePositionPatient, ImageOrientationPatient,
    PixelSpacing, SliceThickness, SpacingBetweenSlices, RescaleSlope and RescaleIntercept from its
    functional groups, TriggerTime and InversionTime (ms) where the file gives them, InstanceNumber set to the
    frame's TemporalPositionIndex (where absent, from the file's InstanceNumber and the frame's
    index: `_frame_number`) as the phase order of last resort, StackID where the frames belong to more than one stack, and
    ComplexImageComponent where the file says what each frame holds (MAGNITUDE, PHASE, ...).

    Raises
    ------
    ReadError : no PerFrameFunctionalGroupsSequence, or one whose length is not NumberOfFrames.
    """
    frames = header.get("NumberOfFrames")
    try:
        n_frames = int(frames) if frames not in (None, "") else None
    except (TypeError, ValueError):
        n_frames = None
    if _PER_FRAME not in header:
        raise ReadError(
            path,
            f"enhanced MR image (SOP class {header.get('SOPClassUID', '?')}, 'NumberOfFrames' {frames}) "
            f"has no 'PerFrameFunctionalGroupsSequence' (5200,9230): its frames' positions are unknown",
        )
    per_frame = list(header[_PER_FRAME].value)
    if n_frames is None or n_frames != len(per_frame) or n_frames < 1:
        raise ReadError(
            path,
            f"'NumberOfFrames' (0028,0008) value {frames} differs from the {len(per_frame)} items of "
            "'PerFrameFunctionalGroupsSequence' (5200,9230)",
        )
    shared = _item(header, _SHARED)
    try:
        own: int | None = int(header.get("InstanceNumber"))
    except (TypeError, ValueError):
        own = None
    try:  # a part of a concatenation: its frames follow the earlier parts' (all share one InstanceNumber)
        offset = int(header.get("ConcatenationFrameOffsetNumber") or 0)
    except (TypeError, ValueError):
        offset = 0
    base = Dataset()
    for element in header:
        if element.keyword not in _FILE_ONLY:
            base.add(element)
    headers = []
    for index, group in enumerate(per_frame):
        frame = Dataset()
        frame.update(base)  # elements are shared, not copied: the frame's own values replace them below
        for sequence, keyword in _GROUP_ATTRIBUTES:
            value = _lookup(group, shared, sequence, keyword)
            if value is not None:
                _replace(frame, keyword, value)
        trigger = next(
            (
                value
                for sequence, keyword in _TIMING
                if (value := _lookup(group, shared, sequence, keyword)) is not None
            ),
            None,
        )
        if trigger is not None:
            _replace(frame, "TriggerTime", trigger)
        elif "TriggerTime" in frame and n_frames > 1:
            del frame.TriggerTime  # one value for the whole file times no frame
        inversion = next(
            (
                value
                for sequence, keyword in _INVERSION
                if (value := _lookup(group, shared, sequence, keyword)) is not None
            ),
            None,
        )
        if inversion is not None:  # InversionTimes is multi-valued: its first is the frame's
            first = inversion[0] if isinstance(inversion, (list, tuple, MultiValue)) else inversion
            _replace(frame, "InversionTime", first)
        temporal = _lookup(group, None, "FrameContentSequence", "TemporalPositionIndex")
        number = temporal if isinstance(temporal, int) else _frame_number(own, n_frames, offset + index, offset > 0)
        _replace(frame, "InstanceNumber", number)
        component = _lookup(group, shared, "MRImageFrameTypeSequence", "ComplexImageComponent")
        if component is not None:
            _replace(frame, "ComplexImageComponent", str(component).upper())
        headers.append(frame)
    stacks = [_lookup(group, None, "FrameContentSequence", "StackID") for group in per_frame]
    if len({str(s) for s in stacks}) > 1:  # several stacks in one file: each frame says which
        for frame, stack in zip(headers, stacks):
            _replace(frame, "StackID", "" if stack is None else str(stack))
    return headers


def magnitude_frames(path: Path, headers: list[Dataset]) -> tuple[list[int], str]:
    """The frames of an enhanced MR file to read: its magnitude frames where it says what each holds.

    Parameters
    ----------
    path : the file, for error messages.
    headers : :func:`frame_headers` of the file, in frame order.

    Returns
    -------
    0-based indices of the frames to read (all of them where no frame names a ComplexImageComponent
    or every one says MAGNITUDE), and a note of what was left out ("" when nothing was).

    Raises
    ------
    ReadError : the frames name components and none is MAGNITUDE (a phase, real or imaginary map
        alone is not a cine to segment).
    """
    components = [str(h.get("ComplexImageComponent", "") or "") for h in headers]
    named = {c for c in components if c}
    if not named or named == {"MAGNITUDE"}:
        return list(range(len(headers))), ""
    if named == {"MIXED"}:  # the file's own value, in every frame: no frame says what it holds
        raise ReadError(
            path,
            "'ComplexImageComponent' (0008,9208) says MIXED for the file and no frame says which it "
            "holds (its MRImageFrameTypeSequence gives none): its magnitude frames cannot be told apart "
            "from its phase frames; export the magnitude images alone",
        )
    if "MAGNITUDE" not in named:
        counts = ", ".join(f"{components.count(c)} {c}" for c in sorted(named))
        raise ReadError(
            path,
            f"'ComplexImageComponent' (0008,9208) of its frames is {counts}: no MAGNITUDE frame, "
            "and a cine is segmented on magnitude images",
        )
    kept = [i for i, c in enumerate(components) if c in ("MAGNITUDE", "")]
    left = ", ".join(f"{sum(1 for c in components if c == other)} {other}" for other in sorted(named - {"MAGNITUDE"}))
    return kept, f"{left} frame(s) left out ('ComplexImageComponent' (0008,9208)); its {len(kept)} MAGNITUDE read"
