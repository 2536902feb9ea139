"""DICOM SEG of a stack highdicom cannot derive as it is: which source image each SEG frame is.

highdicom derives a SEG from the images of one series, or from one multi-frame image laid out
frame for frame; it refuses repeated plane positions, which every multi-frame cine holds (all
phases at each position; highdicom issues 174 and 369). Stacks read from enhanced MR (one file
per series, per slice or per frame) or from a short-axis cine stored one series per slice fall
outside that. Their SEG is built from the slices' plane positions with the first source as
highdicom's anchor (patient, study, frame of reference), and :func:`reference_sources` then writes
each SEG frame's DerivationImageSequence (the source instance, and frame for multi-frame sources,
of its slice) and the ReferencedSeriesSequence of every source series, as the standard lays out.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from ..errors import InputError
from ..types import Stack
from ._multiframe import frame_headers

__all__ = ["needs_own_references", "slice_plane_positions", "share_frame_geometry", "reference_sources"]


def _position_key(position: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in position)


def needs_own_references(stack: Stack, sources: Sequence[Dataset]) -> bool:
    """True where highdicom cannot reference the sources itself: multi-frame, or several series."""
    return bool(stack.source_frames) or len({str(ds.get("SeriesInstanceUID", "")) for ds in sources}) > 1


def _code(value: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return code


def slice_plane_positions(stack: Stack, by_file: dict[str, Dataset]) -> list[Dataset]:
    """highdicom PlanePositionSequence of each slice of ``stack``, from the header (or the frame's
    functional groups) of the image its pixels came from.

    Raises
    ------
    InputError : a slice's frame number outside its file.
    """
    import highdicom as hd

    frames = stack.source_frames or (None,) * stack.shape[0]
    headers: dict[str, list[Dataset]] = {}
    positions = []
    for file, frame in zip(stack.source_files, frames):
        source = by_file[file]
        if frame is None:
            position = source.ImagePositionPatient
        else:
            if file not in headers:
                headers[file] = frame_headers(Path(file), source)
            if not 1 <= frame <= len(headers[file]):
                raise InputError(f"{file}: 'source_frames' names frame {frame}; the file has {len(headers[file])}")
            position = headers[file][frame - 1].ImagePositionPatient
        positions.append(hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, position))
    return positions


def share_frame_geometry(anchor: Dataset, stack: Stack) -> None:
    """Put the pixel measures and plane orientation of ``stack``'s first frame into the shared
    functional groups of ``anchor`` (its multi-frame source, as read for the SEG), where they are
    not there: highdicom reads them from a source's shared groups only, and Philips keeps them in
    each frame's (sweep 38: every output of such a study was lost). The reader checked that the
    stack's frames share them."""
    frame = (stack.source_frames or (1,))[0]
    per_frame = anchor.get("PerFrameFunctionalGroupsSequence") or []
    if not 1 <= frame <= len(per_frame):
        return
    if not anchor.get("SharedFunctionalGroupsSequence"):
        anchor.SharedFunctionalGroupsSequence = [Dataset()]
    shared = anchor.SharedFunctionalGroupsSequence[0]
    for group in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if group not in shared and group in per_frame[frame - 1]:
            setattr(shared, group, copy.deepcopy(per_frame[frame - 1][group].value))


def reference_sources(seg: Dataset, stack: Stack, by_file: dict[str, Dataset], positions: list[Dataset]) -> None:
    """Point every frame of ``seg`` at its slice's source image (and frame), and list every source.

    Parameters
    ----------
    seg : the highdicom Segmentation, built from ``positions`` (one per slice of ``stack``).
    stack : its ``source_files`` (and ``source_frames``, 1-based) name each slice's source.
    by_file : the source dataset of each file of ``stack.source_files``.
    positions : :func:`slice_plane_positions` of ``stack``.
    """
    slice_at = {_position_key(p[0].ImagePositionPatient): z for z, p in enumerate(positions)}
    for item in seg.PerFrameFunctionalGroupsSequence:
        z = slice_at[_position_key(item.PlanePositionSequence[0].ImagePositionPatient)]
        source = by_file[stack.source_files[z]]
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if stack.source_frames:
            reference.ReferencedFrameNumber = stack.source_frames[z]
        reference.PurposeOfReferenceCodeSequence = [_code("121322", "Source image for image processing operation")]
        reference.SpatialLocationsPreserved = "YES"  # the labels lie on the source grid, pixel for pixel
        derivation = Dataset()
        derivation.DerivationCodeSequence = [_code("113076", "Segmentation")]
        derivation.SourceImageSequence = [reference]
        item.DerivationImageSequence = [derivation]
    by_series: dict[str, list[Dataset]] = {}
    for source in by_file.values():
        instance = Dataset()
        instance.ReferencedSOPClassUID = source.SOPClassUID
        instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
        by_series.setdefault(str(source.SeriesInstanceUID), []).append(instance)
    series_items = []
    for uid, instances in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = uid
        series.ReferencedInstanceSequence = instances
        series_items.append(series)
    seg.ReferencedSeriesSequence = series_items
