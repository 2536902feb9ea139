"""NIfTI readers: plain image (+ label) files, ACDC patient folders and M&Ms subject folders.

nibabel hands arrays back in (X, Y, Z) order; every reader here transposes them to the (Z, Y, X)
order of :class:`cmrsdk.Stack` and reorders the affine to match (see ``cmrsdk.types``).

Spacing comes from the header's voxel sizes (pixdim). Some files (ACDC among them) carry an sform
whose columns are unit length while pixdim says 1.5625 x 1.5625 x 10 mm; the affine's direction
columns are then rescaled to the pixdim sizes, so that ``affine`` and ``spacing`` always agree.
Where the affine's columns are not unit length and disagree with pixdim (an sform edited without
its pixdim), the affine (sform, else qform) is taken, as nibabel takes it, with a warning.

The slice axis is the third array axis, as scanners' converters write it (dcm2niix). A file
stored with it first or second (numpy's or SimpleITK's (Z, Y, X) order, its affine permuted to
match) is recognised by its voxel sizes -- one axis at least 1.5 times coarser than both others --
and read as (X, Y, Z) again (axes reversed when the slices come first), with a warning. NIfTI-1 and NIfTI-2 headers are read.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import struct
from dataclasses import replace
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from .._checks import IN_PLANE_RANGE_MM, MAX_MATRIX, SLICE_RANGE_MM
from ..errors import CmrWarning, ReadError
from ..labels import LVBP, RVBP
from ..metrics import ringed_by_myocardium
from ..types import Stack, Study, StudyInfo
from ._geometry import nifti_to_zyx_affine, slice_positions_mm
from ._walk import reason
from .. import _warn

__all__ = [
    "CONVENTIONS",
    "nifti_frames",
    "read_nifti_cine",
    "read_nifti_stack",
    "read_acdc_patient",
    "read_mnms_subject",
    "read_acdc_info",
    "is_nifti_name",
]

Convention = Literal["canonical", "acdc", "mnms"]

#: stored label value -> canonical label (0 bg, 1 LVBP, 2 LVM, 3 RVBP), for each dataset.
CONVENTIONS: dict[str, dict[int, int]] = {
    "canonical": {0: 0, 1: 1, 2: 2, 3: 3},
    "acdc": {0: 0, 1: 3, 2: 2, 3: 1},  # ACDC: 1 RV, 2 MYO, 3 LV
    "mnms": {0: 0, 1: 1, 2: 2, 3: 3},  # M&Ms: 1 LV, 2 MYO, 3 RV
}

#: what each convention's stored values 1, 2, 3 are, for messages
_CONVENTION_NAMES = {
    "canonical": "1 LV blood pool, 2 LV myocardium, 3 RV blood pool",
    "acdc": "1 RV, 2 MYO, 3 LV",
    "mnms": "1 LV, 2 MYO, 3 RV",
}
#: the convention that codes the two blood pools the other way round
_SWAPPED = {"canonical": "acdc", "acdc": "mnms", "mnms": "acdc"}
#: a label map is refused as coded the other way round when the structure read as RV blood pool
#: is ringed by myocardium on this much more of its border than the one read as LV blood pool.
#: On the 208 shared ACDC and M&Ms label maps the LV's ring is 98-100 % myocardium, the RV's at
#: most 43 % (its septal side only): the least margin the right way round is 0.57.
SIDES_MARGIN = 0.2

#: M&Ms vendor letters (info.csv) -> manufacturer, as the challenge describes them.
_MNMS_VENDORS = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


#: largest in-plane side accepted (pixels), and largest number of voxels of one phase, both
MAX_VOXELS = 100_000_000
#: largest 4-D cine (all frames): 1.6 GB as float32, as for a DICOM series
MAX_CINE_VOXELS = 400_000_000
#: NIfTI xyzt_units time unit -> milliseconds
_TIME_TO_MS = {"sec": 1000.0, "msec": 1.0, "usec": 0.001}


#: a voxel size at least this many times both others marks the slice axis
SLICE_AXIS_RATIO = 1.5
#: a label map's affine must equal its image's within this (mm for the origin; the direction
#: columns likewise): float32 headers written by other tools round at about 1e-5
AFFINE_ATOL = 1e-3
#: or its voxel centres must lie within this share of a voxel of the image's everywhere (the grid's
#: corners): a converter's slice spacing rounded differently (dcm2niix 9.99935 mm, cmrsdk's DICOM
#: reader 9.99998) moves the far corner of a 256-pixel slice by 0.005 mm (sweep 28)
GRID_VOXEL_TOLERANCE = 0.05
#: a float label value within this of a whole number is that number (nibabel writes uint8 labels
#: from float data with an automatic scl_slope: 2 reads back as 2.00000004)
LABEL_ATOL = 1e-3


def _raw_header(path: Path, header_class: type = nib.Nifti1Header) -> nib.Nifti1Header:
    """The header as stored (``header_class``: the image's, NIfTI-1 or NIfTI-2): nibabel's loader
    silently turns zero pixdim into 1 mm and moves scl_slope/scl_inter out of it (NaN left)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as handle:
        return header_class.from_fileobj(handle, check=False)


def _raw_pixdim(path: Path, header_class: type = nib.Nifti1Header) -> np.ndarray:
    """pixdim[1:4] as stored (`_raw_header`)."""
    return np.asarray(_raw_header(path, header_class)["pixdim"][1:4], dtype=np.float64)


def _axis_order(image: nib.Nifti1Image, path: Path, *, warn: bool = True) -> tuple[int, int, int]:
    """The order of the first three array axes that puts the slice axis last: (0, 1, 2) unless
    one of the first two has a voxel size `SLICE_AXIS_RATIO` times both others (warned). The
    voxel sizes are pixdim's, or the affine's where they differ and are not unit columns, as
    `_geometry` measures the stack (a writer that left pixdim 1 1 1 and put the sizes in the sform)."""
    zooms = _raw_pixdim(path, type(image.header))
    if len(image.shape) < 3 or not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        return (0, 1, 2)  # no voxel sizes to tell by: `_geometry` refuses what it must
    norms = np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:3, :3], axis=0)
    if (
        np.all(np.isfinite(norms))
        and np.all(norms > 0)
        and not np.allclose(norms, zooms, rtol=1e-3)
        and not np.allclose(norms, 1.0, atol=1e-3)  # unit columns (ACDC's), whatever xyzt_units say
    ):
        zooms = norms
    coarse = int(np.argmax(zooms))
    others = np.delete(zooms, coarse)
    if coarse == 2 or zooms[coarse] < SLICE_AXIS_RATIO * others.max():
        return (0, 1, 2)
    # slices first: numpy's and SimpleITK's (Z, Y, X) order, read back as (X, Y, Z); second: (X, Z, Y)
    order = (2, 1, 0) if coarse == 0 else (0, 2, 1)
    if not warn:
        return order
    _warn.warn(
        CmrWarning(
            f"{path}: the slice axis is array axis {coarse + 1} (voxel sizes {np.round(zooms, 4).tolist()} mm), not the "
            f"third; read with its {image.shape[coarse]} slices as the stack"
        ),
        stacklevel=4,
    )
    return order


def _refuse_dim0(path: Path, exc: Exception) -> None:
    """Refuse a NIfTI-1 header whose ``dim[0]`` is outside 1..7 in either byte order: nibabel
    tells the byte order by it, reads such a header swapped and blames a sound field (sweep 51:
    "vox offset 0 too low")."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as handle:
            head = handle.read(42)
    except Exception:  # noqa: BLE001 - not readable as (gzip) bytes: the caller's message says why
        return
    if len(head) < 42 or 348 not in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]):
        return  # not a NIfTI-1 header: the caller's message
    little, big = struct.unpack("<h", head[40:42])[0], struct.unpack(">h", head[40:42])[0]
    if not (1 <= little <= 7 or 1 <= big <= 7):
        raise ReadError(
            path,
            f"NIfTI header 'dim[0]' (the number of dimensions) is {little} (or {big} byte-swapped), expected "
            "1..7: a corrupt header",
        ) from exc


def _check_scaling(header: nib.Nifti1Header, path: Path) -> None:
    """Refuse a negative ``scl_slope`` (an inverted image, as DICOM's negative RescaleSlope is
    refused) and a non-finite ``scl_inter`` under a valid slope; warn for an infinite slope, which
    nibabel ignores (the data are read unscaled). A NaN or zero slope means "no scaling" (NIfTI).
    ``header``: the loaded image's (its type); the values are read as stored (`_raw_header`)."""
    if "scl_slope" not in header.keys():
        return  # Analyze: no scaling fields
    raw = _raw_header(path, type(header))
    slope, inter = float(raw["scl_slope"]), float(raw["scl_inter"])
    if np.isfinite(slope) and slope < 0:
        raise ReadError(
            path, f"NIfTI 'scl_slope' value {slope:g} is negative (it would invert the image's intensities)"
        )
    if np.isinf(slope):
        _warn.warn(
            CmrWarning(f"{path}: NIfTI 'scl_slope' value {slope:g} is not a finite number; the data are read unscaled"),
            stacklevel=4,
        )
    elif slope != 0 and np.isfinite(slope) and not np.isfinite(inter):
        raise ReadError(path, f"NIfTI 'scl_inter' value {inter:g} is not finite (with 'scl_slope' {slope:g})")


def _scaling_note(image: nib.Nifti1Image) -> str:
    """`` (after NIfTI 'scl_slope' 1e+38, 'scl_inter' 0)`` where the header scales the data, else ''."""
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    if slope == 1 and inter == 0:
        return ""
    return f" (after NIfTI 'scl_slope' {slope:g}, 'scl_inter' {inter:g}: a scaling that overflows?)"


def _load(path: Path, *, cine: bool = False) -> nib.Nifti1Image:
    """The image, checked from its header; 3-D, or with ``cine`` 4-D (X, Y, Z, T) too."""
    if not path.is_file():
        raise ReadError(path, "no such NIfTI file")
    try:
        with _warn.quiet_logs():  # nibabel's pixdim notice (checked below), this thread's only
            image = nib.load(str(path))
        header = image.header
        shape = image.shape
        dtype = header.get_data_dtype()
    except Exception as exc:  # nibabel raises many kinds (ImageFileError, EOFError, zlib errors)
        try:
            with open(path, "rb") as handle:
                head = handle.read(4)
        except OSError as err:  # permission denied: what nibabel met too
            raise ReadError(path, f"cannot be read ({reason(err)})") from err
        named_gz = path.name.lower().endswith(".gz")
        if head[:2] == b"\x1f\x8b" and not named_gz:
            raise ReadError(path, "the file is gzip-compressed but its name ends in .nii: rename it .nii.gz") from exc
        sizes = struct.unpack("<i", head) + struct.unpack(">i", head) if len(head) == 4 else ()
        if named_gz and any(size in (348, 540) for size in sizes):  # sizeof_hdr: a NIfTI-1 or -2 header
            raise ReadError(path, "the file is an uncompressed NIfTI but its name ends in .gz: rename it .nii") from exc
        _refuse_dim0(path, exc)
        why = str(exc).replace(str(path), "this file")  # the line names it already
        raise ReadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {why})") from exc
    _check_scaling(header, path)
    if len(shape) > 4 and set(shape[4:]) == {1}:  # (X, Y, Z, T, 1): a converter's spare axes
        image = nib.funcs.squeeze_image(image)
        shape = image.shape
    if any(side < 1 for side in shape):  # nibabel takes dim as given: a negative side failed deep in numpy
        raise ReadError(
            path,
            f"NIfTI header 'dim' declares {' x '.join(map(str, shape))} voxels; every side must be 1 or more",
        )
    if dtype.fields is not None or dtype.kind not in "uifb":
        raise ReadError(
            path,
            f"NIfTI datatype {header.get_value_label('datatype')} ({dtype}) is not greyscale; "
            "expected one integer or float value per voxel",
        )
    if len(shape) >= 2 and (shape[0] > MAX_MATRIX or shape[1] > MAX_MATRIX):
        raise ReadError(
            path,
            f"NIfTI header 'dim' declares {' x '.join(map(str, shape))} voxels; an in-plane side over "
            f"{MAX_MATRIX} is not a cine MR image (refused before reading the data)",
        )
    if int(np.prod(shape[:3], dtype=np.int64)) > MAX_VOXELS:
        raise ReadError(
            path,
            f"NIfTI header 'dim' declares {' x '.join(map(str, shape))} voxels, over the limit of "
            f"{MAX_VOXELS} per phase (refused before reading the data)",
        )
    if cine and len(shape) == 4 and shape[3] > 1:
        if int(np.prod(shape, dtype=np.int64)) > MAX_CINE_VOXELS:
            raise ReadError(
                path,
                f"NIfTI header 'dim' declares {' x '.join(map(str, shape))} voxels, over the limit of "
                f"{MAX_CINE_VOXELS} for a cine (refused before reading the data)",
            )
        return image
    if len(shape) == 4 and shape[3] == 1:
        try:
            return image.slicer[..., 0]
        except Exception as exc:  # a truncated file surfaces here, when the one volume is read
            raise ReadError(path, f"NIfTI data cannot be read ({type(exc).__name__}: {exc})") from exc
    if len(shape) != 3:
        raise ReadError(
            path,
            f"NIfTI image must be 3-D (X, Y, Z) for one phase{' or 4-D (X, Y, Z, T) for a cine' if cine else ''}, "
            f"got shape {shape} (dim[0] = {int(header['dim'][0])})",
        )
    return image


def _read_array(image: nib.Nifti1Image, path: Path, order: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
    """The image's (Z, Y, X) array, the slice axis being array axis ``order[2]`` (`_axis_order`)."""
    try:
        # dataobj applies scl_slope/inter; the transpose gives (Z, Y, X); an overflowing scaling
        # gives inf, refused by the caller naming the scaling, not numpy's RuntimeWarning
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asanyarray(image.dataobj).transpose(order[2], order[1], order[0])
    except Exception as exc:  # truncated gzip streams surface only here
        raise ReadError(path, f"NIfTI data cannot be read ({type(exc).__name__}: {exc})") from exc


#: millimetres per NIfTI spatial unit other than mm ('unknown' is read as mm, as ACDC's and M&Ms's files need).
_UNIT_MM = {"micron": 1e-3, "meter": 1e3}


def _affine_source(header: nib.Nifti1Header) -> str:
    """Which header fields nibabel's affine comes from: the sform's, the qform's, or pixdim alone."""
    if int(header["sform_code"]) > 0:
        return f"sform: srow_x/y/z, sform_code {int(header['sform_code'])}"
    if int(header["qform_code"]) > 0:
        return f"qform: quatern_b/c/d, qoffset_x/y/z and pixdim, qform_code {int(header['qform_code'])}"
    return "pixdim alone: sform_code and qform_code 0"


def _degenerate(image: nib.Nifti1Image) -> str:
    """The refusal of an affine with a zero or non-finite column, naming the fields it came from."""
    header = image.header
    source = _affine_source(header)
    if int(header["sform_code"]) > 0:
        fix = "correct the sform, or set sform_code to 0 so that the qform is used"
    elif int(header["qform_code"]) > 0:
        fix = "correct the qform, or set qform_code to 0 so that pixdim alone places the voxels"
    else:
        fix = "correct pixdim"
    with np.errstate(invalid="ignore"):
        shown = np.round(np.asarray(image.affine, dtype=np.float64), 4).tolist()
    return f"NIfTI affine from the {source} is degenerate (a zero or non-finite axis): {shown}; {fix}"


def _geometry(
    image: nib.Nifti1Image, path: Path, order: tuple[int, int, int] = (0, 1, 2)
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(affine (4, 4) for (z, y, x), spacing (dz, dy, dx) mm) of a 3-D NIfTI image whose array
    axes ``order`` are (x, y, slice) (`_axis_order`).

    Refused: pixdim that is zero, negative, not finite or outside the ranges of a cardiac stack
    (a single slice may have any slice pixdim: it gives no volume), and an affine whose axes
    are not at right angles (sheared).
    """
    unit = str(image.header.get_xyzt_units()[0])
    # the NIfTI header's spatial unit (xyzt_units): millimetres unless it says micrometres or metres
    scale = _UNIT_MM.get(unit, 1.0)
    raw = _raw_pixdim(path, type(image.header))[list(order)] * scale
    n_slices = image.shape[order[2]]
    zooms = tuple(float(z) for z in raw)
    if n_slices == 1 and not (np.isfinite(zooms[2]) and zooms[2] > 0):
        zooms = (zooms[0], zooms[1], 1.0)  # one slice: no volume is reported, dz only labels the grid
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ReadError(path, f"NIfTI pixdim[1:4] (voxel sizes) {list(zooms)} must be finite and positive")
    affine = nifti_to_zyx_affine(image.affine[:, [*order, 3]])
    # unit columns (ACDC's identity sform) are told before xyzt_units scale them (sweep 51: a metre
    # file's 1 x 1000 columns were taken for voxel sizes and refused as pixdim 1000 mm)
    unit_columns = bool(np.allclose(np.linalg.norm(affine[:3, :3], axis=0), 1.0, atol=1e-3))
    affine[:3] *= scale
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(affine)):
        raise ReadError(path, _degenerate(image))
    stored = (zooms[2], zooms[1], zooms[0])
    source = "pixdim"
    if not np.allclose(norms, stored, rtol=1e-3) and not unit_columns:
        fourth = float(image.header["pixdim"][4]) * scale if len(image.shape) > 3 else 0.0
        if not np.isclose(zooms[2], norms[0], rtol=1e-3) and np.isclose(fourth, norms[0], rtol=1e-3):
            # (x, y, t, z): the affine's slice spacing is in pixdim[4], the time step in pixdim[3];
            # read as (x, y, z, t) it measures phases as slices (LVEDV 452 mL for 187)
            raise ReadError(
                path,
                f"NIfTI pixdim[3] {zooms[2]:g} is not the affine's slice spacing {float(norms[0]):g} mm but "
                f"pixdim[4] {fourth:g} is: the axes look stored as (x, y, t, z); store a cine as (x, y, z, t)",
            )
        # sizes in the affine, not unit columns (ACDC's): an sform edited without its pixdim
        zooms = (float(norms[2]), float(norms[1]), float(norms[0]))
        source = (
            f"affine ({_affine_source(image.header)}) voxel sizes, not pixdim {[round(float(v), 4) for v in raw]} mm,"
        )
        _warn.warn(
            CmrWarning(
                f"{path}: NIfTI pixdim[1:4] {[round(float(v), 4) for v in raw]} mm disagrees with the affine's voxel sizes "
                f"{[round(z, 4) for z in zooms]} mm (sform/qform); the affine's are used"
            ),
            stacklevel=3,
        )
    low, high = IN_PLANE_RANGE_MM
    if not all(low <= z <= high for z in zooms[:2]):
        raise ReadError(
            path,
            f"NIfTI {'pixdim[1:3]' if source == 'pixdim' else source} (in-plane voxel size) {list(zooms[:2])} mm is outside "
            f"{low}..{high} mm: not a cardiac MR image, or a header in other units "
            f"(its xyzt_units say '{unit}'{'' if unit in _UNIT_MM else ', read as mm'})",
        )
    low, high = SLICE_RANGE_MM
    if n_slices > 1 and not low <= zooms[2] <= high:
        raise ReadError(
            path,
            f"NIfTI {'pixdim[3]' if source == 'pixdim' else source} (slice spacing) {zooms[2]} mm is outside "
            f"{low}..{high} mm (its xyzt_units say "
            f"'{unit}'{'' if unit in _UNIT_MM else ', read as mm'})",
        )
    spacing = (zooms[2], zooms[1], zooms[0])
    if n_slices > 1 and np.allclose(zooms, 1.0, rtol=0, atol=1e-4):  # a metre file reads 1.00000005 mm
        # no cine is acquired so; a re-save that kept ACDC's unit-column affine writes it (sweep 28:
        # LVEDV 11.8 mL for 290.4)
        _warn.warn(
            CmrWarning(
                f"{path}: NIfTI voxel sizes are 1 x 1 x 1 mm (pixdim and affine): no short-axis cine's; a file "
                "re-saved without its pixdim? Volumes and mass are measured with 1 mm"
            ),
            stacklevel=3,
        )
    axes = affine[:3, :3] / norms
    cosines = np.abs(axes.T @ axes - np.eye(3))
    if cosines.max() > 1e-3:
        raise ReadError(
            path,
            f"NIfTI affine (sform/qform) axes are not at right angles (largest cosine "
            f"{cosines.max():.3f}): a sheared grid, which cmrsdk does not resample; affine "
            f"{np.round(image.affine, 4).tolist()}",
        )
    if not np.allclose(norms, spacing, rtol=1e-3):
        affine[:3, :3] = axes * np.asarray(spacing)
    return affine, spacing


def _to_canonical(raw: np.ndarray, path: Path, convention: str) -> np.ndarray:
    """uint8 canonical labels from a stored label array, refusing what does not fit."""
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)):
            raise ReadError(path, "label map holds NaN or infinite values")
        rounded = np.rint(raw)
        off = np.abs(raw - rounded) > LABEL_ATOL
        if off.any():
            bad = raw[off][:3]
            raise ReadError(
                path, f"float label map is not integral (values such as {bad.tolist()}); labels must be whole numbers"
            )
        raw = rounded.astype(np.int64)
    elif raw.dtype.kind not in "iub":
        raise ReadError(path, f"label map dtype {raw.dtype} is not numeric")
    mapping = CONVENTIONS.get(convention)
    if mapping is None:
        raise ReadError(path, f"label convention '{convention}' is unknown, expected one of {sorted(CONVENTIONS)}")
    values = np.unique(raw)
    unknown = [int(v) for v in values if int(v) not in mapping]
    if unknown:
        raise ReadError(
            path,
            f"label values {unknown} are outside the '{convention}' convention "
            f"(expected a subset of {sorted(mapping)})",
        )
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for stored, canonical in mapping.items():
        lut[stored] = canonical
    return lut[raw.astype(np.int64)]


#: an "image" of at most this many distinct whole values, all within 0..`_LABEL_CODES_MAX`, is a
#: label map or mask (an MR image holds hundreds of grey values)
_LABEL_VALUES_MAX = 5
_LABEL_CODES_MAX = 10


def _refuse_label_map(pixels: np.ndarray, path: Path) -> None:
    """Refuse an image file that holds a label map (``case_ES_label.nii.gz`` given as an image
    would be segmented and measured as if it were anatomy). pixels: any shape, float."""
    step = max(1, int(np.sqrt(pixels.size / 65_536)))
    if np.unique(pixels[..., ::step, ::step]).size > _LABEL_VALUES_MAX:
        return  # an image: a sample of about 65,000 pixels shows it, in about a millisecond
    values = np.unique(pixels)
    if values.size < 2:
        return  # a blank image: segmented, and found empty
    whole = np.array_equal(values, np.rint(values))
    if values.size <= _LABEL_VALUES_MAX and whole and values.min() >= 0 and values.max() <= _LABEL_CODES_MAX:
        raise ReadError(
            path,
            f"holds only the values {[int(v) for v in values]}: a label map or mask, not an image to segment "
            "(an ACDC / M&Ms folder pairs each image with its label map by the '_gt' suffix)",
        )


def _check_sides(labels: np.ndarray, path: Path, convention: str) -> None:
    """Refuse a label map whose blood pools are coded the other way round from ``convention``
    (an M&Ms-coded map in an ACDC folder swaps LV and RV, silently, in every Dice and volume):
    the LV blood pool is ringed by its myocardium, the RV's is not. labels: canonical (..., Y, X)."""
    lv, rv = ringed_by_myocardium(labels, LVBP), ringed_by_myocardium(labels, RVBP)
    if not (np.isfinite(lv) and np.isfinite(rv)) or rv - lv <= SIDES_MARGIN:
        return
    stored = {canonical: value for value, canonical in CONVENTIONS[convention].items()}
    other = _SWAPPED[convention]
    raise ReadError(
        path,
        f"label map looks coded the other way round from the '{convention}' convention read here "
        f"({_CONVENTION_NAMES[convention]}): the structure stored as {stored[RVBP]}, read as RV blood pool, "
        f"is ringed by myocardium on {100 * rv:.0f} % of its border, the one stored as {stored[LVBP]}, read as "
        f"LV blood pool, on {100 * lv:.0f} % (an LV blood pool lies inside its myocardium, an RV does not); "
        f"if it is coded {_CONVENTION_NAMES[other]}, say so: --label-convention {other} "
        f"(cmrsdk segment, batch, evaluate) or convention='{other}' (cmrsdk.io.read_study)",
    )


def _same_grid(label_affine: np.ndarray, image: nib.Nifti1Image) -> bool:
    """Whether voxels under ``label_affine`` lie where ``image``'s do: the affines equal within
    `AFFINE_ATOL`, or every corner of the grid within `GRID_VOXEL_TOLERANCE` of a voxel."""
    gap = float(np.abs(label_affine - image.affine).max())
    if gap <= AFFINE_ATOL:
        return True
    extent = np.array(image.shape[:3], dtype=np.float64) - 1.0
    corners = np.array([[x, y, z, 1.0] for x in (0, extent[0]) for y in (0, extent[1]) for z in (0, extent[2])])
    apart = np.linalg.norm((corners @ label_affine.T - corners @ image.affine.T)[:, :3], axis=1).max()
    voxel = float(np.min(np.linalg.norm(image.affine[:3, :3], axis=0)))
    return bool(voxel > 0 and apart <= GRID_VOXEL_TOLERANCE * voxel)


def _on_image_grid(
    label_image: nib.Nifti1Image, image: nib.Nifti1Image, label_path: Path, image_path: Path
) -> nib.Nifti1Image:
    """The label map on its image's voxel grid: as stored; reoriented where it holds the same
    grid in another voxel order (flipped or permuted axes, as ``nib.as_closest_canonical`` writes
    it); taken on the image's grid where its writer left it no position (sform and qform codes
    0) but the same shape and voxel sizes (warned). Refused otherwise, saying what differs."""
    if label_image.shape == image.shape and _same_grid(label_image.affine, image):
        return label_image
    header = label_image.header
    unplaced = int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0
    if (
        unplaced
        and label_image.shape == image.shape
        and np.allclose(header.get_zooms()[:3], image.header.get_zooms()[:3], rtol=1e-3)
    ):
        _warn.warn(
            CmrWarning(
                f"{label_path}: label map has no position (sform and qform codes 0); taken on the grid of "
                f"{image_path.name}, whose shape and voxel sizes it has"
            ),
            stacklevel=4,
        )
        return label_image
    turn = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(label_image.affine), nib.orientations.io_orientation(image.affine)
    )
    turned = label_image.as_reoriented(turn)
    if turned.shape[:3] == image.shape[:3] and _same_grid(turned.affine, image):
        _warn.warn(
            CmrWarning(
                f"{label_path}: label map holds the grid of {image_path.name} in another voxel order; reoriented to it"
            ),
            stacklevel=4,
        )
        return turned
    if label_image.shape != image.shape and turned.shape[:3] != image.shape[:3]:
        raise ReadError(
            label_path,
            f"label map shape {label_image.shape} (X, Y, Z) differs from image {image_path.name} shape {image.shape}",
        )
    if turned.shape[:3] == image.shape[:3]:  # the gap of the voxel order that matches, not of the stored one
        label_image = turned
    gap = float(np.abs(label_image.affine - image.affine).max())
    raise ReadError(
        label_path,
        f"label map affine differs from image {image_path.name}'s by up to {gap:.3g} (mm or "
        f"direction): the labels lie on another grid; label {np.round(label_image.affine, 3).tolist()}, "
        f"image {np.round(image.affine, 3).tolist()}",
    )


def sidecar_path(image_path: Path) -> Path:
    """The JSON sidecar a converter writes beside a NIfTI file (``x.nii.gz`` -> ``x.json``)."""
    name = image_path.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else image_path.stem
    return image_path.with_name(stem + ".json")


def dicom_turn(image_path: Path, affine: np.ndarray) -> tuple[bool, bool, bool] | None:
    """The in-plane turn (transpose, flip rows, flip columns: `cmrsdk.layout.Orientation`) that lays a
    converted NIfTI's slices out as its source DICOM stored them, from the JSON sidecar's
    ``ImageOrientationPatientDICOM`` (dcm2niix; the DICOM's row and column directions, LPS);
    None without a sidecar, without that field, or where the axes are not exact flips or a
    transpose of the DICOM's (a resampled image).

    ``affine`` : float64 (4, 4) of the stack's (z, y, x) voxels -> RAS+ mm.
    """
    sidecar = sidecar_path(image_path)
    if not sidecar.is_file():
        return None
    try:
        fields = json.loads(sidecar.read_text(errors="replace"))
    except (OSError, ValueError):
        return _unused(sidecar, "is not readable JSON")
    if not isinstance(fields, dict) or "ImageOrientationPatientDICOM" not in fields:
        return None  # another tool's sidecar, without the orientation: segmented as stored
    given = fields["ImageOrientationPatientDICOM"]
    try:
        values = [float(v) for v in given]
    except (TypeError, ValueError):
        return _unused(sidecar, f"'ImageOrientationPatientDICOM' {given!r} is not 6 numbers")
    if len(values) != 6 or not np.all(np.isfinite(values)):
        return _unused(sidecar, f"'ImageOrientationPatientDICOM' {given!r} is not 6 numbers")
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    along_row = np.asarray(values[:3]) * lps_to_ras  # the DICOM's x (column index) direction
    down_column = np.asarray(values[3:]) * lps_to_ras  # its y (row index) direction
    axes = np.asarray(affine, dtype=np.float64)[:3, 1:3]
    y_axis, x_axis = (axes / np.linalg.norm(axes, axis=0)).T
    transpose = abs(float(y_axis @ down_column)) < abs(float(x_axis @ down_column))
    if transpose:
        y_axis, x_axis = x_axis, y_axis
    y_cos, x_cos = float(y_axis @ down_column), float(x_axis @ along_row)
    if min(abs(y_cos), abs(x_cos)) < 0.99:
        return _unused(sidecar, f"'ImageOrientationPatientDICOM' {values} is not the image's plane turned or flipped")
    return (transpose, y_cos < 0, x_cos < 0)


def _unused(sidecar: Path, why: str) -> tuple[bool, bool, bool] | None:
    """Say that a sidecar's DICOM orientation cannot be used (returns None: no turn): the NIfTI
    is segmented as stored, whose numbers may differ from its DICOM's (`dicom_turn`)."""
    _warn.warn(
        CmrWarning(f"{sidecar}: {why}; the NIfTI is segmented as stored, not in its DICOM's layout"),
        stacklevel=4,
    )
    return None


def read_nifti_stack(
    image_path: str | Path,
    label_path: str | Path | None = None,
    *,
    convention: Convention = "canonical",
    phase: str | None = None,
) -> Stack:
    """Read one phase: a 3-D NIfTI image and, optionally, its label map.

    Parameters
    ----------
    image_path : a .nii or .nii.gz file holding one 3-D (X, Y, Z) stack (a 4-D file with one
        volume is accepted).
    label_path : an optional label map of the same shape; float files are cast only when every
        value is integral.
    convention : how the label file codes the structures: "canonical" (1 LVBP, 2 LVM, 3 RVBP),
        "acdc" (1 RV, 2 MYO, 3 LV) or "mnms" (1 LV, 2 MYO, 3 RV).
    phase : the phase name to record ("ED", "ES", ...), or None.

    Returns
    -------
    Stack with float32 (Z, Y, X) pixels, spacing (dz, dy, dx) mm from pixdim, an affine for
    (z, y, x) voxels to RAS+ mm, uint8 (Z, Y, X) canonical labels when a label file was given.

    Raises
    ------
    ReadError : a missing or unreadable file, a wrong number of dimensions, NaN pixels, label
        and image shapes that differ, non-integral or out-of-convention label values.
    """
    image_path = Path(image_path)
    if convention not in CONVENTIONS:
        raise ReadError(
            image_path, f"label convention '{convention}' is unknown, expected one of {sorted(CONVENTIONS)}"
        )
    image = _load(image_path)
    order = _axis_order(image, image_path)
    with np.errstate(over="ignore", invalid="ignore"):
        pixels = _read_array(image, image_path, order).astype(np.float32)
    if not np.all(np.isfinite(pixels)):
        count = int(np.size(pixels) - np.count_nonzero(np.isfinite(pixels)))
        raise ReadError(image_path, f"image holds {count} NaN or infinite pixel values{_scaling_note(image)}")
    _refuse_label_map(pixels, image_path)
    affine, spacing = _geometry(image, image_path, order)
    labels = None
    if label_path is not None:
        label_path = Path(label_path)
        label_image = _on_image_grid(_load(label_path), image, label_path, image_path)
        labels = _to_canonical(_read_array(label_image, label_path, order), label_path, convention)
        _check_sides(labels, label_path, convention)
    return Stack(
        pixels=pixels,
        spacing=spacing,
        affine=affine,
        labels=labels,
        slice_positions=slice_positions_mm(affine, pixels.shape[0]),
        phase=phase,
        source=str(image_path),
        dicom_turn=dicom_turn(image_path, affine),
    )


def nifti_frames(path: str | Path) -> int:
    """How many frames (dim[4]) a NIfTI file holds, from its header; 1 for a 3-D image."""
    shape = _load(Path(path), cine=True).shape
    return int(shape[3]) if len(shape) == 4 else 1


def read_nifti_cine(image_path: str | Path) -> Study:
    """Read a 4-D (X, Y, Z, T) NIfTI cine, one frame per phase (UK Biobank ``sa.nii.gz``, ACDC
    ``*_4d.nii.gz``, M&Ms ``*_sa.nii.gz``).

    Returns
    -------
    Study with one :class:`Stack` per frame (float32 (Z, Y, X) pixels, spacing (dz, dy, dx) mm
    and the affine of the 3-D part, as :func:`read_nifti_stack`), ``ed_index = 0`` (the frame at
    the R wave, as a cine is triggered), ``es_index = None`` (found from the LV volume curve), and
    ``trigger_times_ms`` (T,) from pixdim[4] and its time unit where they are given.

    Raises
    ------
    ReadError : what :func:`read_nifti_stack` refuses, and over :data:`MAX_CINE_VOXELS` in all.
    """
    path = Path(image_path)
    image = _load(path, cine=True)
    if len(image.shape) == 3:
        return Study(phases=(read_nifti_stack(path),), info=StudyInfo(source=str(path)))
    order = _axis_order(image, path)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            frames = np.asanyarray(image.dataobj).transpose(3, order[2], order[1], order[0])  # (T, Z, Y, X)
            frames = frames.astype(np.float32, copy=False)  # past float32's range: inf, refused below
    except Exception as exc:  # truncated gzip streams surface only here
        raise ReadError(path, f"NIfTI data cannot be read ({type(exc).__name__}: {exc})") from exc
    if not np.all(np.isfinite(frames)):
        count = int(np.size(frames) - np.count_nonzero(np.isfinite(frames)))
        raise ReadError(path, f"image holds {count} NaN or infinite pixel values{_scaling_note(image)}")
    affine, spacing = _geometry(image, path, order)
    _refuse_label_map(frames, path)
    positions = slice_positions_mm(affine, frames.shape[1])
    turn = dicom_turn(path, affine)
    phases = tuple(
        Stack(
            pixels=frames[t].copy(),
            spacing=spacing,
            affine=affine,
            slice_positions=positions,
            phase="ED" if t == 0 else f"frame {t}",
            source=str(path),
            dicom_turn=turn,
        )
        for t in range(frames.shape[0])
    )
    step = float(image.header["pixdim"][4]) * _TIME_TO_MS.get(image.header.get_xyzt_units()[1], 0.0)
    times = np.arange(len(phases), dtype=np.float64) * step if np.isfinite(step) and step > 0 else None
    return Study(phases=phases, ed_index=0, trigger_times_ms=times, info=StudyInfo(source=str(path)))


def is_nifti_name(name: str) -> bool:
    """True for a NIfTI file name, in any case of extension (``.nii``, ``.nii.gz``, ``.NII.GZ``)."""
    return name.lower().endswith(_NIFTI_SUFFIXES)


def _find_nifti(folder: Path, stem: str) -> Path | None:
    """``stem`` + a NIfTI suffix in ``folder``: the exact name first, then any case (M&Ms-2: ``001_SA_ED``)."""
    for suffix in _NIFTI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    wanted = {f"{stem}{suffix}".lower() for suffix in _NIFTI_SUFFIXES}
    matches = sorted(p for p in folder.iterdir() if p.name.lower() in wanted and p.is_file()) if folder.is_dir() else []
    return matches[0] if matches else None


#: a subject's image names in its folder: ACDC ``patient001_frame01``, M&Ms ``A1D0Q7_sa_ED`` / ``_ES``
#: (any case); group 1 is the subject's code. The release's 4-D ``A1D0Q7_sa`` is recognised by
#: its folder's name only: ``cine_sa.nii.gz`` alone says too little.
ACDC_IMAGE = re.compile(r"(.+)_frame\d+", re.IGNORECASE)
MNMS_IMAGE = re.compile(r"(.+)_sa_e[ds]", re.IGNORECASE)


def subject_stem(folder: Path, pattern: re.Pattern[str]) -> str | None:
    """The subject code the images of ``folder`` are named by (``pattern``'s group 1): the folder's
    own name where its images carry it, else the one code they all carry (a subject folder
    renamed, ``copy_of_002/patient002_frame01.nii.gz``); None where none or several do."""
    stems = set()
    for path in folder.iterdir() if folder.is_dir() else ():
        name = path.name
        stem = name[: name.lower().rfind(".nii")] if ".nii" in name.lower() else None
        if stem is not None and path.is_file() and (match := pattern.fullmatch(stem)) is not None:
            stems.add(match.group(1))
    if folder.name.lower() in {s.lower() for s in stems}:
        return next(s for s in sorted(stems) if s.lower() == folder.name.lower())
    return stems.pop() if len(stems) == 1 else None


def _holds(folder: Path, most: int = 6) -> str:
    """``" (the folder holds: a.nii.gz, b.nii.gz)"``: the NIfTI names an error about a missing image shows."""
    names = sorted(p.name for p in folder.iterdir() if is_nifti_name(p.name))
    pairs = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".hdr")
    if not names and pairs:  # what dcm2niix -n or old SPM pipelines write: say so, as for one file
        return (
            f" (the folder holds no NIfTI file but {len(pairs)} Analyze / NIfTI-1 pair(s) (.hdr + .img) such as "
            f"{pairs[0]}, which are not read; convert each to one .nii.gz file, e.g. nibabel: "
            "nib.save(nib.load('x.hdr'), 'x.nii.gz'))"
        )
    if not names:
        return " (the folder holds no NIfTI file)"
    more = f", ... ({len(names)} in all)" if len(names) > most else ""
    return f" (the folder holds: {', '.join(names[:most])}{more})"


def read_acdc_info(path: str | Path) -> dict[str, str]:
    """The ``key: value`` pairs of an ACDC ``Info.cfg`` file (ED, ES, Group, Height, NbFrame, Weight)."""
    path = Path(path)
    if not path.is_file():
        raise ReadError(path, "ACDC Info.cfg not found (it gives the ED and ES frame numbers)")
    entries: dict[str, str] = {}
    # utf-8-sig: an Info.cfg saved by Windows Notepad starts with a byte-order mark
    try:
        raw = path.read_bytes()
    except OSError as exc:  # permission denied
        raise ReadError(path, f"cannot be read ({reason(exc)})") from exc
    # Windows editors save "Unicode" text as UTF-16 with a byte-order mark
    encoding = "utf-16" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    for number, line in enumerate(raw.decode(encoding, errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ReadError(path, f"line {number} {line!r} is not 'key: value'")
        entries[key.strip()] = value.strip()
    return entries


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


#: Info.cfg field -> (its unit, other units written after the number -> factor to that unit)
_INFO_UNITS: dict[str, tuple[str, dict[str, float]]] = {
    "Height": ("cm", {"cm": 1.0, "m": 100.0, "mm": 0.1}),
    "Weight": ("kg", {"kg": 1.0, "g": 0.001}),
}


def _info_number(cfg: dict[str, str], key: str, path: Path) -> float | None:
    """``Height`` (cm) or ``Weight`` (kg) of an Info.cfg, a trailing unit understood ("95kg",
    "1.84 m"); a value that is not a number in a known unit is dropped with a warning naming it,
    never silently (the page would say the value is not known)."""
    text = cfg.get(key)
    if text is None or not text.strip():
        return None
    unit, factors = _INFO_UNITS[key]
    match = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)", text.strip())
    factor = factors.get(match.group(2).lower() or unit) if match else None
    value = float(match.group(1)) if match else None
    if value is None or factor is None or not np.isfinite(value):
        _warn.warn(f"{path}: '{key}' value {text!r} is not a number in {unit}; not used", stacklevel=3)
        return None
    return round(value * factor, 2)  # 1.84 m -> 184.0, not 184.00000000000003


def read_acdc_patient(folder: str | Path, convention: Convention = "acdc") -> Study:
    """Read an ACDC patient folder: the ED and ES stacks with canonical labels.

    Parameters
    ----------
    folder : ``patientNNN/`` holding ``Info.cfg`` and ``patientNNN_frameFF.nii.gz`` for the ED and
        ES frames, with ``_gt`` label maps (ACDC convention, mapped to canonical) where present.
    convention : how the ``_gt`` maps code the structures (`read_nifti_stack`): ACDC's unless a
        pipeline wrote them otherwise.

    Returns
    -------
    Study with ``phases == (ED, ES)``, ``ed_index == 0``, ``es_index == 1``; ``info`` gives the
    patient id (folder name), diagnosis group, height (cm) and weight (kg).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReadError(folder, "ACDC patient folder not found")
    cfg_path = folder / "Info.cfg"
    cfg = read_acdc_info(cfg_path)
    subject = subject_stem(folder, ACDC_IMAGE) or folder.name  # the files' own code: a folder may be renamed
    stacks = []
    for phase in ("ED", "ES"):
        if phase not in cfg:
            raise ReadError(cfg_path, f"key '{phase}' (frame number) is missing")
        try:
            frame = int(cfg[phase])
        except ValueError as exc:
            raise ReadError(cfg_path, f"'{phase}' value {cfg[phase]!r} is not a frame number") from exc
        stem = f"{subject}_frame{frame:02d}"
        image = _find_nifti(folder, stem)
        if image is None:
            raise ReadError(
                folder, f"{phase} image {stem}.nii.gz (frame {frame} from Info.cfg) not found{_holds(folder)}"
            )
        label = _find_nifti(folder, f"{stem}_gt")
        stacks.append(read_nifti_stack(image, label, convention=convention, phase=phase))
    info = StudyInfo(
        patient_id=subject,
        group=cfg.get("Group"),
        height_cm=_info_number(cfg, "Height", cfg_path),
        weight_kg=_info_number(cfg, "Weight", cfg_path),
        source=str(folder),
    )
    return Study(phases=tuple(stacks), ed_index=0, es_index=1, info=info)


def _mnms_tables(folder: Path) -> list[Path]:
    """Subject tables that may describe ``folder``: ``info.csv`` beside it (the shared layout), then
    any small CSV up to three folders above (the release keeps its
    ``*_M&Ms_Dataset_information*.csv`` at the root, above ``Training/Labeled/SUBJECT``)."""
    tables = [folder.parent / "info.csv"]
    for parent in folder.parents[:3]:
        tables += sorted(p for p in parent.glob("*.csv") if p.name != "info.csv")
    return [t for t in tables if t.is_file() and t.stat().st_size < 4_000_000]


def _mnms_vendor(folder: Path, subject: str) -> str | None:
    """Manufacturer from a subject table (columns subject or External code; vendor, Vendor or VendorName)."""
    for table in _mnms_tables(folder):
        try:
            with table.open(newline="", errors="replace") as handle:
                for row in csv.DictReader(handle):
                    if row.get("subject") == subject or row.get("External code") == subject:
                        vendor = (row.get("vendor") or row.get("Vendor") or row.get("VendorName") or "").strip()
                        return _MNMS_VENDORS.get(vendor, vendor or None)
        except (OSError, csv.Error):  # an unrelated or damaged table: the vendor is optional
            continue
    return None


def _labelled_frames(
    label_path: Path, shape: tuple[int, ...], order: tuple[int, int, int] = (0, 1, 2), convention: str = "mnms"
) -> tuple[np.ndarray, list[int]]:
    """Canonical uint8 (T, Z, Y, X) labels of a 4-D M&Ms label map (its slice axis array axis
    ``order[2]``, as its cine's) and the frames that hold any label."""
    image = _load(label_path, cine=True)
    if tuple(image.shape) != tuple(shape):
        raise ReadError(
            label_path, f"label map shape {tuple(image.shape)} (X, Y, Z, T) differs from the cine's {tuple(shape)}"
        )
    try:
        raw = np.asanyarray(image.dataobj).transpose(3, order[2], order[1], order[0])  # (T, Z, Y, X)
    except Exception as exc:  # truncated gzip streams surface only here
        raise ReadError(label_path, f"NIfTI data cannot be read ({type(exc).__name__}: {exc})") from exc
    labels = _to_canonical(raw, label_path, convention)
    _check_sides(labels, label_path, convention)
    return labels, [t for t in range(labels.shape[0]) if labels[t].any()]


def _read_mnms_cine(image_path: Path, label_path: Path | None, info: StudyInfo, convention: str = "mnms") -> Study:
    """The M&Ms release layout: ``SUBJECT_sa.nii.gz`` (X, Y, Z, T) and ``SUBJECT_sa_gt.nii.gz``
    labelled at two frames only (ED and ES); ED is the labelled frame of larger LV blood pool."""
    cine = read_nifti_cine(image_path)
    if label_path is None:  # no contours: a cine like any other, ED/ES from the LV volume curve
        return Study(phases=cine.phases, ed_index=cine.ed_index, trigger_times_ms=cine.trigger_times_ms, info=info)
    image = _load(image_path, cine=True)
    order = _axis_order(image, image_path, warn=False)  # read_nifti_cine warned
    labels, frames = _labelled_frames(label_path, tuple(image.shape), order, convention)
    if len(frames) != 2:
        raise ReadError(
            label_path,
            f"labelled frames {frames}: an M&Ms 4-D label map labels exactly two frames (ED and ES)",
        )
    ed, es = sorted(frames, key=lambda t: -int(np.count_nonzero(labels[t] == 1)))
    stacks = tuple(
        replace(cine.phases[t], labels=labels[t], phase=phase, source=f"{image_path} (frame {t})")
        for t, phase in ((ed, "ED"), (es, "ES"))
    )
    return Study(phases=stacks, ed_index=0, es_index=1, info=info)


def read_mnms_subject(folder: str | Path, convention: Convention = "mnms") -> Study:
    """Read an M&Ms subject folder: ``SUBJECT_sa_ED.nii.gz``, ``SUBJECT_sa_ES.nii.gz`` and ``_gt``.

    The M&Ms-2 layout (``001/001_SA_ED.nii.gz``, ``001_SA_ES_gt.nii.gz``; same label codes) is
    read the same way: names are matched in any case. The challenge's release layout, one 4-D
    cine ``SUBJECT_sa.nii.gz`` (X, Y, Z, T) with ``SUBJECT_sa_gt.nii.gz`` labelled at its ED and
    ES frames only, gives the two labelled frames (ED: the one of larger LV blood pool); without
    its label map, the whole cine (as :func:`read_nifti_cine`).

    Labels (M&Ms convention 1 LV, 2 MYO, 3 RV, stored as float64) are cast to canonical uint8.
    The manufacturer comes from ``../info.csv`` where present; ``convention`` (`read_nifti_stack`)
    says how the ``_gt`` maps code the structures where a pipeline wrote them otherwise.

    Returns
    -------
    Study with ``phases == (ED, ES)`` (float32 (Z, Y, X) pixels, uint8 (Z, Y, X) labels where
    given), ``ed_index == 0``, ``es_index == 1``; a 4-D cine without labels: every frame.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReadError(folder, "M&Ms subject folder not found")
    subject = subject_stem(folder, MNMS_IMAGE) or folder.name  # the files' own code: a folder may be renamed
    info = StudyInfo(patient_id=subject, manufacturer=_mnms_vendor(folder, subject), source=str(folder))
    cine = _find_nifti(folder, f"{subject}_sa")
    if cine is not None and _find_nifti(folder, f"{subject}_sa_ED") is None:
        return _read_mnms_cine(cine, _find_nifti(folder, f"{subject}_sa_gt"), info, convention)
    stacks = []
    for phase in ("ED", "ES"):
        stem = f"{subject}_sa_{phase}"
        image = _find_nifti(folder, stem)
        if image is None:
            raise ReadError(folder, f"{phase} image {stem}.nii.gz not found{_holds(folder)}")
        stacks.append(read_nifti_stack(image, _find_nifti(folder, f"{stem}_gt"), convention=convention, phase=phase))
    return Study(phases=tuple(stacks), ed_index=0, es_index=1, info=info)
