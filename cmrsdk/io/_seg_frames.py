"""DICOM SEG of a stack read from enhanced (multi-frame) MR: which source frame each SEG frame is.

highdicom derives a SEG from one multi-frame source laid out frame for frame, and refuses
repeated plane positions, which every cine holds (all phases at each position; highdicom issues
174 and 369); it also takes one multi-frame source only, where scanners may write one enhanced
file per slice. The SEG is therefore built from the slices' plane positions with the first source
as highdicom's anchor (patient, study, frame of reference), and :func:`reference_source_frames`
then writes each SEG frame's DerivationImageSequence (source SOP instance and frame number of its
slice) and the series' ReferencedInstanceSequence as the standard lays them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from ..errors import InputError
from ..types import Stack
from ._multiframe import frame_headers

__all__ = ["multiframe_sources", "reference_source_frames"]


def _position_key(position: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in position)


def multiframe_sources(stack: Stack) -> tuple[list[Dataset], list[Dataset]]:
    """The source files of ``stack`` (repaired for derivation, in first-use order) and each slice's
    PlanePositionSequence (highdicom's), from the frame its pixels came from.

    Raises
    ------
    InputError : sources from several series, a slice's frame number outside its file.
    """
    import highdicom as hd

    from ._dicom_out import derivation_sources

    files = list(dict.fromkeys(stack.source_files))
    sources = derivation_sources(files)
    if len({str(ds.get("SeriesInstanceUID", "")) for ds in sources}) != 1:
        raise InputError(f"{files[0]}: the stack's source files belong to several series; a SEG references one")
    headers = {file: frame_headers(Path(file), ds) for file, ds in zip(files, sources)}
    positions = []
    for file, frame in zip(stack.source_files, stack.source_frames):
        frames = headers[file]
        if not 1 <= frame <= len(frames):
            raise InputError(f"{file}: 'source_frames' names frame {frame}; the file has {len(frames)}")
        positions.append(
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, frames[frame - 1].ImagePositionPatient)
        )
    return sources, positions


def reference_source_frames(seg: Dataset, stack: Stack, sources: list[Dataset], positions: list[Dataset]) -> None:
    """Point every frame of ``seg`` at its slice's source instance and frame, and list all sources.

    Parameters
    ----------
    seg : the highdicom Segmentation, built from ``positions`` (one per slice of ``stack``).
    stack : its ``source_files`` and ``source_frames`` (1-based) name each slice's source frame.
    sources : the source datasets, one per distinct file of ``stack.source_files``.
    """
    by_file = {file: ds for file, ds in zip(dict.fromkeys(stack.source_files), sources)}
    slice_at = {_position_key(p[0].ImagePositionPatient): z for z, p in enumerate(positions)}
    for item in seg.PerFrameFunctionalGroupsSequence:
        z = slice_at[_position_key(item.PlanePositionSequence[0].ImagePositionPatient)]
        source = by_file[stack.source_files[z]]
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        reference.ReferencedFrameNumber = stack.source_frames[z]
        purpose = Dataset()
        purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
        purpose.CodeMeaning = "Source image for image processing operation"
        reference.PurposeOfReferenceCodeSequence = [purpose]
        reference.SpatialLocationsPreserved = "YES"  # the labels lie on the source grid, pixel for pixel
        derivation = Dataset()
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113076", "DCM", "Segmentation"
        derivation.DerivationCodeSequence = [code]
        derivation.SourceImageSequence = [reference]
        item.DerivationImageSequence = [derivation]
    instances = []
    for source in sources:
        instance = Dataset()
        instance.ReferencedSOPClassUID = source.SOPClassUID
        instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
        instances.append(instance)
    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence = instances
