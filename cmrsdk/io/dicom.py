"""DICOM reader: a directory of classic single-frame MR images -> :class:`cmrsdk.Study`.

Series selection (when a directory holds several series, unless ``series_uid`` names one):
the short-axis cine is the series with (1) three or more slice positions, then (2) two or more
phases per position, then (3) a description naming a short axis ("sa", "sax", "short"), then
(4) the most images. Within the series, slices are ordered by their position along the slice
normal (row direction x column direction, ascending) and phases by TriggerTime (InstanceNumber
where absent). Pixels are ``stored * RescaleSlope + RescaleIntercept``. The affine is built from
ImagePositionPatient, ImageOrientationPatient and PixelSpacing in DICOM LPS and flipped to RAS+.
The first phase (the one nearest the ECG R wave) is taken as ED; ES is left unknown.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import ReadError
from ..types import Stack, Study, StudyInfo

__all__ = ["read_dicom_study", "scan_dicom_series", "SeriesSummary"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SAX_WORDS = re.compile(r"(^|[^a-z])(sa|sax|short)([^a-z]|$)", re.IGNORECASE)


#: MR, enhanced MR, CT and secondary-capture image storage: files of these classes must hold an image.
_IMAGE_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.2",
                      "1.2.840.10008.5.1.4.1.1.7"}


def _sop_class(header: Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    return str(header.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))


@dataclass(frozen=True)
class _Image:
    path: Path
    header: Dataset


@dataclass(frozen=True)
class SeriesSummary:
    """What :func:`scan_dicom_series` found of one series (for selection and ``inspect``)."""

    series_uid: str
    description: str
    n_images: int
    n_positions: int
    n_phases: int


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file, None for files that are not DICOM at all."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid UIDs (Sunnybrook) and other vendor quirks
            return pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:  # truncated headers raise EOFError, struct.error, ...
        raise ReadError(path, f"DICOM header cannot be read ({type(exc).__name__}: {exc}); truncated file?") from exc


def _collect(path: Path) -> tuple[list[_Image], list[Path]]:
    """Image files (with pixel data) under ``path``, and DICOM files without pixel data."""
    if not path.exists():
        raise ReadError(path, "no such file or directory")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    images, non_images = [], []
    for file in files:
        header = _read_header(file)
        if header is None:
            continue
        # pixel data is not read yet (stop_before_pixels): an image is what has a matrix size
        if header.get("Rows") and header.get("Columns"):
            images.append(_Image(file, header))
        elif _sop_class(header) in _IMAGE_SOP_CLASSES:
            raise ReadError(file, f"image header ({_sop_class(header)}) lacks 'Rows'/'Columns' (0028,0010)/(0028,0011); "
                                  "truncated file?")
        else:
            non_images.append(file)
    if not images:
        if non_images:
            raise ReadError(non_images[0], f"DICOM file without image data (no Rows/Columns); "
                                           f"no image series found under {path}")
        raise ReadError(path, f"no DICOM image files found ({len(files)} files searched)")
    return images, non_images


def _vector(image: _Image, keyword: str, tag: str, length: int) -> np.ndarray:
    value = image.header.get(keyword)
    if value is None:
        raise ReadError(image.path, f"'{keyword}' {tag} is missing; it is needed for the geometry")
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ReadError(image.path, f"'{keyword}' {tag} value {value!r} is not numeric") from exc
    if vector.shape != (length,) or not np.all(np.isfinite(vector)):
        raise ReadError(image.path, f"'{keyword}' {tag} value {list(value)!r} must be {length} finite numbers")
    return vector


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _series_key(image: _Image) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs (Sunnybrook) are validated on first access
        return str(image.header.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"


def _time_of(image: _Image) -> float:
    value = image.header.get("TriggerTime")
    if value not in (None, ""):
        return float(value)
    return float(image.header.get("InstanceNumber", 0) or 0)


def _group_positions(images: list[_Image]) -> list[list[_Image]]:
    """Images grouped by slice position along the normal (ascending), each group sorted by time."""
    orientation = _vector(images[0], "ImageOrientationPatient", "(0020,0037)", 6)
    normal = _normal(orientation)
    positions = np.array([_vector(im, "ImagePositionPatient", "(0020,0032)", 3) @ normal for im in images])
    order = np.argsort(positions, kind="stable")
    groups: list[list[_Image]] = []
    last = None
    for i in order:
        # positions within 0.01 mm are the same slice (rounding in the header)
        if last is None or positions[i] - last > 0.01:
            groups.append([])
        groups[-1].append(images[i])
        last = positions[i]
    return [sorted(g, key=lambda im: (_time_of(im), int(im.header.get("InstanceNumber", 0) or 0))) for g in groups]


def _summaries(images: list[_Image]) -> dict[str, SeriesSummary]:
    by_series: dict[str, list[_Image]] = {}
    for image in images:
        by_series.setdefault(_series_key(image), []).append(image)
    result = {}
    for uid, members in by_series.items():
        try:
            groups = _group_positions(members)
            n_positions, n_phases = len(groups), max(len(g) for g in groups)
        except ReadError:
            n_positions, n_phases = 0, 0  # no usable geometry: never preferred
        result[uid] = SeriesSummary(uid, str(members[0].header.get("SeriesDescription", "")), len(members),
                                    n_positions, n_phases)
    return result


def scan_dicom_series(path: str | Path) -> list[SeriesSummary]:
    """Every image series under ``path`` (searched recursively), best short-axis cine candidate first."""
    images, _ = _collect(Path(path))
    summaries = list(_summaries(images).values())
    return sorted(summaries, key=_preference, reverse=True)


def _preference(s: SeriesSummary) -> tuple[bool, bool, bool, int]:
    return s.n_positions >= 3, s.n_phases >= 2, bool(_SAX_WORDS.search(s.description)), s.n_images


def _check_consistent(images: list[_Image]) -> None:
    first = images[0]
    orientation = _vector(first, "ImageOrientationPatient", "(0020,0037)", 6)
    spacing = _vector(first, "PixelSpacing", "(0028,0030)", 2)
    size = (first.header.get("Rows"), first.header.get("Columns"))
    for image in images:
        other = _vector(image, "ImageOrientationPatient", "(0020,0037)", 6)
        if not np.allclose(other, orientation, atol=1e-3):
            raise ReadError(image.path, f"mixed orientations in one series: 'ImageOrientationPatient' {other.tolist()} "
                                        f"differs from {orientation.tolist()} in {first.path.name}")
        other_spacing = _vector(image, "PixelSpacing", "(0028,0030)", 2)
        if not np.allclose(other_spacing, spacing, rtol=1e-4):
            raise ReadError(image.path, f"mixed pixel sizes in one series: 'PixelSpacing' {other_spacing.tolist()} "
                                        f"differs from {spacing.tolist()} in {first.path.name}")
        other_size = (image.header.get("Rows"), image.header.get("Columns"))
        if other_size != size:
            raise ReadError(image.path, f"mixed matrix sizes in one series: Rows x Columns {other_size} differs from {size}")
    if np.any(spacing <= 0):
        raise ReadError(first.path, f"'PixelSpacing' (0028,0030) value {spacing.tolist()} must be positive")


def _pixels(image: _Image) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(str(image.path))
            stored = dataset.pixel_array
    except Exception as exc:  # truncated pixel data, unsupported transfer syntax, ...
        raise ReadError(image.path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if stored.ndim != 2:
        raise ReadError(image.path, f"pixel data has shape {stored.shape}; only classic single-frame greyscale "
                                    "images are supported (NumberOfFrames 1, SamplesPerPixel 1)")
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    pixels = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if not np.all(np.isfinite(pixels)):
        raise ReadError(image.path, "pixel data holds NaN or infinite values")
    return pixels


def _float_tag(header: Dataset, keyword: str, scale: float = 1.0) -> float | None:
    value = header.get(keyword)
    try:
        return float(value) * scale if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def read_dicom_study(path: str | Path, *, series_uid: str | None = None) -> Study:
    """Read the short-axis cine series of a DICOM directory (searched recursively).

    Parameters
    ----------
    path : a directory (or one file) of classic single-frame MR images.
    series_uid : SeriesInstanceUID of the series to read; None selects the short-axis cine by
        the module's rules.

    Returns
    -------
    Study with one :class:`Stack` per phase (float32 (Z, Y, X) pixels after rescale, spacing
    (dz, dy, dx) mm, RAS+ affine, ``source_files`` per slice), ``trigger_times_ms`` (T,)
    (mean over slices), ``ed_index = 0`` and ``es_index = None`` when there are several phases.

    Raises
    ------
    ReadError : no images, truncated files, missing geometry tags, mixed orientations or pixel
        sizes, duplicate slice positions, slices with differing phase counts, an unknown series.
    """
    path = Path(path)
    images, _ = _collect(path)
    summaries = _summaries(images)
    if series_uid is None:
        chosen = max(summaries.values(), key=_preference).series_uid
    elif series_uid in summaries:
        chosen = series_uid
    else:
        raise ReadError(path, f"series_uid '{series_uid}' not found; series present: {sorted(summaries)}")
    members = [im for im in images if _series_key(im) == chosen]
    _check_consistent(members)
    groups = _group_positions(members)
    for group in groups:
        times = [_time_of(im) for im in group]
        if len(set(times)) != len(times):
            raise ReadError(group[0].path, f"duplicate slice position: {len(group)} images at the same position "
                                           f"with TriggerTime/InstanceNumber {times} (also {group[1].path.name})")
    counts = {len(g) for g in groups}
    if len(counts) != 1:
        worst = min(groups, key=len)
        raise ReadError(worst[0].path, f"slice positions hold differing numbers of phases {sorted(counts)} in series {chosen}")
    n_phases = counts.pop()

    first = members[0]
    orientation = _vector(first, "ImageOrientationPatient", "(0020,0037)", 6)
    row_spacing, col_spacing = _vector(first, "PixelSpacing", "(0028,0030)", 2)  # (dy, dx)
    origins = np.array([_vector(g[0], "ImagePositionPatient", "(0020,0032)", 3) for g in groups])
    if len(groups) > 1:
        steps = np.diff(origins @ _normal(orientation))
        dz = float(np.median(steps))
        slice_axis = (origins[-1] - origins[0]) / (len(groups) - 1)
    else:
        dz = _float_tag(first.header, "SpacingBetweenSlices") or _float_tag(first.header, "SliceThickness") or 1.0
        slice_axis = _normal(orientation) * dz
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = slice_axis
    affine_lps[:3, 1] = orientation[3:] * row_spacing   # down a column: rows advance
    affine_lps[:3, 2] = orientation[:3] * col_spacing   # along a row: columns advance
    affine_lps[:3, 3] = origins[0]
    affine = _LPS_TO_RAS @ affine_lps
    positions = origins @ _normal(orientation)

    phases = []
    for t in range(n_phases):
        slices = [g[t] for g in groups]
        pixels = np.stack([_pixels(im) for im in slices])
        name = "ED" if t == 0 and n_phases > 1 else f"frame {t}"
        phases.append(Stack(pixels=pixels, spacing=(dz, float(row_spacing), float(col_spacing)), affine=affine,
                            slice_positions=positions, phase=name, source=str(path),
                            source_files=tuple(str(im.path) for im in slices)))
    times = np.array([[_time_of(g[t]) for g in groups] for t in range(n_phases)]).mean(axis=1)
    header = first.header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs are validated when first read
        info = _info(header, chosen, path)
    return Study(phases=tuple(phases), ed_index=0 if n_phases > 1 else None, es_index=None,
                 trigger_times_ms=times if "TriggerTime" in header else None, info=info)


def _info(header: Dataset, series_uid: str, path: Path) -> StudyInfo:
    return StudyInfo(patient_id=str(header.get("PatientID", "")) or None, study_uid=str(header.get("StudyInstanceUID", "")) or None,
                     series_uid=series_uid, series_description=str(header.get("SeriesDescription", "")) or None,
                     manufacturer=str(header.get("Manufacturer", "")) or None,
                     field_strength_t=_float_tag(header, "MagneticFieldStrength"),
                     height_cm=_float_tag(header, "PatientSize", 100.0), weight_kg=_float_tag(header, "PatientWeight"),
                     source=str(path))
