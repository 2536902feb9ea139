"""Writers: NIfTI label maps, DICOM SEG, JSON reports, DICOM series and ACDC-layout folders.

Every writer goes through :func:`cmrsdk.io._atomic.atomic_path`: a temporary name, then a rename.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.valuerep import DSfloat
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ..errors import InputError, WriteError
from ..labels import LABEL_NAMES, STRUCTURES
from ..types import Stack, Study
from ._atomic import atomic_path
from .._warn import quiet, warn

__all__ = ["write_nifti_labels", "write_dicom_seg", "write_json", "write_dicom_series", "write_acdc_patient"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the NIfTI ``descrip`` of `write_nifti_labels`' maps: their label convention (canonical,
#: `cmrsdk.labels`), which a reader cannot guess; ACDC's own maps code 1 RV, 2 MYO, 3 LV.
_LABELS_DESCRIP = "cmrsdk labels: " + ", ".join(f"{code} {LABEL_NAMES[code]}" for code in STRUCTURES)


def _check_labels(labels: np.ndarray, stack: Stack) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != stack.shape:
        raise InputError(f"'labels' shape {array.shape} differs from the stack's (Z, Y, X) {stack.shape}")
    if array.dtype != np.uint8 or (array.size and int(array.max()) > max(STRUCTURES)):
        raise InputError(
            f"'labels' must be uint8 canonical labels 0..{max(STRUCTURES)}, got dtype {array.dtype}"
            f" with maximum {array.max() if array.size else None}"
        )
    return array


def _nifti_affine(stack: Stack) -> np.ndarray:
    """The stack's (z, y, x) affine reordered for nibabel's (x, y, z) arrays."""
    return stack.affine[:, [2, 1, 0, 3]]


def _affine_at_spacing(stack: Stack, path: Path) -> Stack:
    """``stack`` whose affine's columns are as long as its spacing: where a caller's affine says
    other voxel sizes (an identity beside a 10 x 1.56 x 1.56 mm spacing), viewers and readers
    would measure the file in the affine's, so its directions are kept at the spacing's
    lengths, with a warning."""
    lengths = np.linalg.norm(stack.affine[:3, :3], axis=0)
    if np.allclose(lengths, stack.spacing, rtol=1e-3):
        return stack
    if not np.all(lengths > 0):
        raise InputError(f"{path}: the stack's affine has a zero column {np.round(lengths, 4).tolist()}: no grid")
    warn(
        f"{path}: the stack's affine has voxels of {' x '.join(f'{v:g}' for v in lengths)} mm and its spacing "
        f"{' x '.join(f'{v:g}' for v in stack.spacing)} mm (dz, dy, dx): written at the spacing"
    )
    affine = stack.affine.copy()
    affine[:3, :3] *= np.asarray(stack.spacing) / lengths
    return replace(stack, affine=affine)


def _source_header(stack: Stack, shape_xyz: tuple[int, ...]) -> nib.Nifti1Header | None:
    """The header of the NIfTI file ``stack`` was read from, when it exists and has this grid
    (``shape_xyz``, after `_in_source_order`)."""
    from .nifti import is_nifti_name

    source = Path(stack.source) if stack.source else None
    if source is None or not is_nifti_name(source.name) or not source.is_file():
        return None
    try:
        header = nib.load(str(source)).header
    except Exception:
        return None  # the source moved or changed since it was read: fall back on the stack's affine
    return header if tuple(header.get_data_shape()[:3]) == tuple(shape_xyz) else None


def _in_source_order(array_xyz: np.ndarray, stack: Stack) -> np.ndarray:
    """``array_xyz`` in the voxel order of the NIfTI file ``stack`` was read from where that file
    stores the same grid another way (slices on its first axis, as numpy and SimpleITK write):
    the labels then match the user's own maps voxel for voxel. Unchanged otherwise."""
    from .nifti import is_nifti_name

    source = Path(stack.source) if stack.source else None
    if source is None or not is_nifti_name(source.name) or not source.is_file():
        return array_xyz
    try:
        image = nib.load(str(source))
    except Exception:
        return array_xyz  # the source moved or changed since it was read
    shape = tuple(image.shape[:3])
    if shape == array_xyz.shape or sorted(shape) != sorted(array_xyz.shape):
        return array_xyz
    ours = nib.Nifti1Image(array_xyz, _nifti_affine(stack))
    turn = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(ours.affine), nib.orientations.io_orientation(image.affine)
    )
    turned = np.asarray(ours.as_reoriented(turn).dataobj)
    return turned if turned.shape == shape else array_xyz


def _save_nifti(path: Path, array_zyx: np.ndarray, stack: Stack, *, descrip: str | None = None) -> None:
    """Write (Z, Y, X) ``array_zyx`` on ``stack``'s grid; ``descrip``: the header's description
    (ASCII, at most 80 bytes), else the empty one."""
    array = np.ascontiguousarray(_in_source_order(array_zyx.transpose(2, 1, 0), stack))
    source = _source_header(stack, array.shape)
    if source is None:
        stack = _affine_at_spacing(stack, path)
    image = nib.Nifti1Image(array, _nifti_affine(stack))
    if source is not None:
        # outputs lie on the input's grid exactly as the input declares it: same sform and qform
        # with their codes, same pixdim (ACDC's sform has unit columns while pixdim holds the sizes)
        qform, qcode = source.get_qform(coded=True)
        sform, scode = source.get_sform(coded=True)
        image.set_qform(qform if qform is not None else source.get_best_affine(), code=int(qcode or 0))
        image.set_sform(sform if sform is not None else source.get_best_affine(), code=int(scode or 0))
        image.header.set_zooms(source.get_zooms()[:3])  # after the forms: set_qform rewrites pixdim
        image.header.set_xyzt_units(*source.get_xyzt_units())
    else:
        image.set_qform(_nifti_affine(stack), code=1)
        image.set_sform(_nifti_affine(stack), code=1)
        image.header.set_zooms(stack.spacing[::-1])  # after the forms: set_qform rewrites pixdim
        # a Stack's spacing is in mm (DICOM's unit); time in seconds, NIfTI's usual choice
        image.header.set_xyzt_units("mm", "sec")
    if descrip is not None:
        image.header["descrip"] = descrip.encode("ascii")
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))


def _gaps_filled(labels: np.ndarray, stack: Stack) -> tuple[np.ndarray, Stack]:
    """``labels`` and ``stack`` on a regular slice grid where a stack's slices are a regular grid
    with slices missing (a slice left out of the series): empty slices where they are missing, so
    that each slice lies where it was acquired (a NIfTI file has one slice step). Unchanged where
    the positions are regular, unknown, or not whole steps apart."""
    positions = stack.slice_positions
    if positions is None or len(positions) < 3:
        return labels, stack
    steps = np.diff(np.asarray(positions, np.float64))
    step = float(steps.min())
    if step <= 0:
        return labels, stack
    counts = np.rint(steps / step).astype(int)
    if counts.max() == 1 or np.abs(steps - counts * step).max() > 0.1 * step:
        return labels, stack
    at = np.concatenate([[0], np.cumsum(counts)])
    filled = np.zeros((int(at[-1]) + 1, *labels.shape[1:]), np.uint8)
    filled[at] = labels
    affine = stack.affine.copy()
    affine[:3, 0] = stack.affine[:3, 0] / np.linalg.norm(stack.affine[:3, 0]) * step
    pixels = np.zeros(filled.shape, np.float32)
    spacing = (step, *stack.spacing[1:])
    grid = replace(stack, pixels=pixels, labels=None, affine=affine, spacing=spacing, slice_positions=None)
    return filled, grid


def write_nifti_labels(path: str | Path, labels: np.ndarray, stack: Stack) -> Path:
    """Write uint8 (Z, Y, X) canonical ``labels`` as NIfTI with ``stack``'s affine and spacing.

    The file holds the (X, Y, Z) array nibabel expects, so :func:`read_nifti_stack` reads it back
    identical, and viewers overlay it on the source image. A stack with slices missing from a
    regular grid (a gap) is written on that grid with empty slices in the gap (Z' > Z), so each
    slice stays where it was acquired; the report's volumes give each slice its own thickness
    (`cmrsdk.metrics.slice_thicknesses_mm`, the gap shared by its neighbours), so they are more
    than the file's voxels count there.

    The header's ``descrip`` names the label convention, ``"cmrsdk labels: 1 LVBP, 2 LVM,
    3 RVBP"`` (0 is background), as report.json's ``"labels"`` does. The grid's header fields
    (sform, qform, pixdim, units) are copied from a NIfTI source; from DICOM the units are mm
    and seconds.
    """
    filled, grid = _gaps_filled(_check_labels(labels, stack), stack)
    _save_nifti(Path(path), filled, grid, descrip=_LABELS_DESCRIP)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy scalars and arrays become numbers and lists)."""

    def default(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")

    try:
        text = json.dumps(obj, indent=2, default=default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WriteError(f"{path}: report cannot be written as JSON ({exc})") from exc
    with atomic_path(path) as temporary:
        temporary.write_text(text + "\n")
    return Path(path)


def write_dicom_seg(
    path: str | Path,
    labels: np.ndarray,
    stack: Stack,
    *,
    series_description: str = "cmrsdk segmentation",
    series_number: int = 900,
    series_instance_uid: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a DICOM SEG (highdicom, binary, one segment per structure) referencing ``stack``'s series.

    Parameters
    ----------
    path : the .dcm file to write (through a temporary name, then renamed).
    labels : uint8 (Z, Y, X) canonical labels on ``stack``'s grid.
    stack : a stack read from DICOM: ``stack.source_files`` names the source image of each slice
        (and ``stack.source_frames`` its frame, for an enhanced multi-frame source); a stack of
        several series or of multi-frame sources is referenced by :mod:`cmrsdk.io._seg_frames`.
    series_description, series_number : of the new SEG series; give each phase its own, so
        that a PACS lists ED and ES apart.
    series_instance_uid : of the new series; a new UID when None.
    provenance : the pipeline's (`cmrsdk.Pipeline.provenance`, report.json's): each segment's
        algorithm identification then names the bundle in its version and the code, runtime,
        precision and options in its parameters (`cmrsdk.io._dicom_out.algorithm_parameters`), and
        SoftwareVersions holds the code's hash; None: cmrsdk's version alone.

    Source headers as archives deliver them (invalid dates, a frame of reference per image) are
    repaired for the SEG by :func:`cmrsdk.io._dicom_out.derivation_sources`, with warnings.

    Each segment's RecommendedDisplayCIELabValue (0062,000D) is its colour in the overlay and
    report pictures (`cmrsdk.montage.STRUCTURE_COLOURS`, sRGB, as CIELab D65 by highdicom), so
    OHIF and 3D Slicer show the same colour-blind-safe palette.
    """
    import highdicom as hd  # optional dependency (cmrsdk[io])
    from pydicom.sr.codedict import codes

    from .. import __version__
    from ..montage import STRUCTURE_COLOURS
    from ._dicom_out import algorithm_parameters, algorithm_version, derivation_sources
    from ._seg_frames import needs_own_references, reference_sources, share_frame_geometry, slice_plane_positions

    array = _check_labels(labels, stack)
    if len(stack.source_files) != stack.shape[0]:
        raise InputError(
            f"DICOM SEG needs the source DICOM file of each of the {stack.shape[0]} slices; "
            f"stack from {stack.source or 'memory'} has {len(stack.source_files)} (read it with read_dicom_study)"
        )
    files = list(dict.fromkeys(stack.source_files))
    by_file = dict(zip(files, derivation_sources(files, slice_spacing_mm=stack.spacing[0])))
    sources = [by_file[f] for f in stack.source_files]
    positions = None
    if needs_own_references(stack, sources):  # multi-frame or several series: built from positions
        positions = slice_plane_positions(stack, by_file)
        sources = sources[:1]  # highdicom's anchor: patient, study, frame of reference
        if stack.source_frames:  # a multi-frame anchor's geometry may sit in its frames' groups
            share_frame_geometry(sources[0], stack)
    categories = codes.SCT.AnatomicalStructure
    # SNOMED CT codes of the structures; the segment label names the blood pool precisely
    properties = {1: codes.SCT.LeftVentricle, 2: codes.SCT.LeftVentricleMyocardium, 3: codes.SCT.RightVentricle}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=label,
            segment_label=LABEL_NAMES[label],
            segmented_property_category=categories,
            segmented_property_type=properties[label],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            display_color=hd.color.CIELabColor.from_rgb(*STRUCTURE_COLOURS[label]),
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="cmrsdk",
                version=algorithm_version(provenance),
                family=codes.cid7162.ArtificialIntelligence,
                parameters=algorithm_parameters(provenance) or None,
            ),
        )
        for label in STRUCTURES
    ]
    code = str((provenance or {}).get("code_sha256") or "")
    software: str | tuple[str, str] = (__version__, f"code {code[:16]}") if code else __version__
    try:
        with quiet():  # source UIDs invalid per VR UI are referenced verbatim
            seg = hd.seg.Segmentation(
                source_images=sources,
                pixel_array=array,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=series_instance_uid or hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="cmrsdk",
                manufacturer_model_name="cmrsdk",
                software_versions=software,
                device_serial_number="0",
                series_description=series_description[:64],
                plane_positions=positions,
                # an empty study keeps every frame (highdicom would say so on stderr otherwise)
                omit_empty_frames=bool(np.any(array)),
            )
            if positions is not None:
                reference_sources(seg, stack, by_file, positions)
    except (ValueError, TypeError, AttributeError) as exc:
        raise WriteError(
            f"{path}: DICOM SEG cannot be built from {stack.source_files[0]} and the other sources "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    with atomic_path(path) as temporary:
        seg.save_as(str(temporary))
    return Path(path)


def _ds(value: float) -> DSfloat:
    """A decimal string of at most 16 characters (VR DS), as close to ``value`` as that allows."""
    return DSfloat(float(value), auto_format=True)


def write_dicom_series(folder: str | Path, study: Study, *, series_description: str = "SAX cine") -> list[Path]:
    """Write every phase of ``study`` as classic single-frame MR images (pydicom), one file per image.

    Files are ``{phase:03d}_{slice:03d}.dcm`` (phase-major); pixels are stored as uint16 with a
    RescaleSlope/Intercept that recovers them to within one part in 65535 of their range;
    TriggerTime comes from ``study.trigger_times_ms``; geometry from each stack's affine (RAS+
    converted to LPS).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    lo = min(float(s.pixels.min()) for s in study.phases)
    hi = max(float(s.pixels.max()) for s in study.phases)
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    times = study.trigger_times_ms if study.trigger_times_ms is not None else np.arange(len(study.phases)) * 40.0
    written = []
    for t, stack in enumerate(study.phases):
        lps = _RAS_TO_LPS @ stack.affine
        dz, dy, dx = stack.spacing
        row_dir, col_dir = lps[:3, 2] / dx, lps[:3, 1] / dy
        for z in range(stack.shape[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(str(folder), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "MR", series_description, 1
            ds.PatientID = study.info.patient_id or "ANONYMOUS"
            ds.PatientName = f"{ds.PatientID}^"  # family-name component only
            if study.info.height_cm is not None:
                ds.PatientSize = round(study.info.height_cm / 100.0, 3)  # DICOM stores metres
            if study.info.weight_kg is not None:
                ds.PatientWeight = study.info.weight_kg
            ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
            ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "", "O", ""
            ds.Manufacturer = study.info.manufacturer or "cmrsdk"
            if study.info.field_strength_t is not None:
                ds.MagneticFieldStrength = study.info.field_strength_t
            ds.InstanceNumber = t * stack.shape[0] + z + 1
            ds.PositionReferenceIndicator, ds.PatientPosition, ds.Laterality = "", "HFS", ""
            # the MR Image module's Type 1 and 2 attributes, as a balanced-SSFP cine would carry them
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SS", "CG", "2D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = _ds(3.0), _ds(1.5), 1
            ds.ImagePositionPatient = [_ds(v) for v in (lps @ [z, 0, 0, 1])[:3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [_ds(dy), _ds(dx)]
            ds.SliceThickness, ds.SpacingBetweenSlices = _ds(dz), _ds(dz)
            ds.SliceLocation = _ds(stack.slice_positions[z])
            ds.TriggerTime = _ds(times[t])
            ds.CardiacNumberOfImages = len(study.phases)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = stack.shape[1], stack.shape[2]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{lo:.10g}"
            stored = np.clip(np.rint((stack.pixels[z].astype(np.float64) - lo) / float(ds.RescaleSlope)), 0, 65535)
            ds.PixelData = stored.astype("<u2").tobytes()
            path = folder / f"{t:03d}_{z:03d}.dcm"
            with atomic_path(path) as temporary:
                ds.save_as(str(temporary), enforce_file_format=True)
            written.append(path)
    return written


def write_acdc_patient(folder: str | Path, study: Study) -> Path:
    """Write the ED and ES stacks of ``study`` as an ACDC patient folder (NIfTI, ACDC label codes).

    Produces ``Info.cfg``, ``{name}_frameFF.nii.gz`` and ``{name}_frameFF_gt.nii.gz`` (1 RV, 2 MYO,
    3 LV) where ``name`` is the folder name and FF the 1-based ED and ES frame numbers.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if study.ed_index is None or study.es_index is None:
        raise InputError(
            f"study from {study.info.source or 'memory'} needs known ED and ES phases, "
            f"got {{'ED': {study.ed_index}, 'ES': {study.es_index}}}"
        )
    to_acdc = np.array([0, 3, 2, 1], dtype=np.uint8)  # canonical 1 LVBP, 2 LVM, 3 RVBP -> ACDC 3, 2, 1
    for index in sorted({study.ed_index, study.es_index}):
        stack = study.phases[index]
        stem = f"{folder.name}_frame{index + 1:02d}"
        _save_nifti(folder / f"{stem}.nii.gz", stack.pixels, stack)
        if stack.labels is not None:
            _save_nifti(folder / f"{stem}_gt.nii.gz", to_acdc[stack.labels], stack)
    lines = [
        f"ED: {study.ed_index + 1}",
        f"ES: {study.es_index + 1}",
        f"Group: {study.info.group or 'NOR'}",
        f"Height: {study.info.height_cm or 170.0}",
        f"NbFrame: {len(study.phases)}",
        f"Weight: {study.info.weight_kg or 70.0}",
    ]
    with atomic_path(folder / "Info.cfg") as temporary:
        temporary.write_text("\n".join(lines) + "\n")
    return folder
