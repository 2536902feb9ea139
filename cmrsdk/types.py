"""The data model every stage after the readers works on: `Stack` and `Study`.

Geometry conventions
--------------------
- Arrays are (Z, Y, X): Z indexes slices, Y rows, X columns, as a DICOM frame is stored.
- ``spacing`` is (dz, dy, dx) in mm: dz the distance between slice centres, dy the row
  spacing (between rows), dx the column spacing.
- ``affine`` is a float64 (4, 4) matrix taking a homogeneous voxel index in array axis order
  (z, y, x, 1) to RAS+ world coordinates in mm (the NIfTI/nibabel convention; DICOM LPS is
  converted by the reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ._checks import MAX_MATRIX, MAX_SLICES, check_affine, check_label_map, check_spacing, check_stack_geometry
from .errors import InputError

__all__ = ["Stack", "StudyInfo", "Study", "SINGLE_PHASE"]

#: the phase name of a one-phase study (report.json, the SR's key for its one SEG): nothing says
#: where in the cycle its one phase lies
SINGLE_PHASE = "single phase"

#: a Stack built without an affine: replaced by the spacing's diagonal in `Stack.__post_init__`
_NO_AFFINE = np.eye(4)


@dataclass(frozen=True, eq=False)
class Stack:
    """One short-axis stack at one cardiac phase.

    Attributes
    ----------
    pixels : float32 (Z, Y, X), intensities after rescale slope/intercept. Not copied where it
        is float32 already: an array changed after the Stack is built changes the Stack (copy a
        reused buffer first).
    spacing : (dz, dy, dx) in mm.
    affine : float64 (4, 4), voxel index (z, y, x, 1) -> RAS+ mm; its columns are as long as
        ``spacing``. Not given: ``diag(dz, dy, dx, 1)`` (no orientation known, the voxel sizes
        kept; before 0.14.12 the identity, which a NIfTI writer took for 1 mm voxels).
    labels : uint8 (Z, Y, X) canonical labels (0 bg, 1 LVBP, 2 LVM, 3 RVBP) or None.
    slice_positions : float64 (Z,), each slice centre's position along the slice normal, mm.
    phase : "ED", "ES", or a free text such as "frame 7"; None when unknown.
    source : where the pixels came from (path), for error messages and provenance.
    source_files : for DICOM input, the file of each slice (Z,), so that writers such as
        DICOM SEG can reference the source instances; empty otherwise.
    source_frames : for enhanced multi-frame DICOM input, the frame number (1-based) of each
        slice (Z,) within its file in ``source_files``; empty for single-frame images.
    dicom_turn : for a NIfTI converted from DICOM whose sidecar names the source's orientation
        (dcm2niix's ImageOrientationPatientDICOM), the in-plane turn (transpose, flip rows, flip
        columns, as `cmrsdk.layout.Orientation`) that lays its slices out as the DICOM stored
        them, so that the pipeline segments them as it segments the DICOM; None otherwise.
    """

    pixels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(default_factory=lambda: _NO_AFFINE)
    labels: np.ndarray | None = None
    slice_positions: np.ndarray | None = None
    phase: str | None = None
    source: str = ""
    source_files: tuple[str, ...] = ()
    source_frames: tuple[int, ...] = ()
    dicom_turn: tuple[bool, bool, bool] | None = None

    def __post_init__(self) -> None:
        where = self.source or "array"
        pixels = given = np.asarray(self.pixels)
        if pixels.ndim != 3:
            raise InputError(f"Stack 'pixels' must be 3-D (Z, Y, X), got shape {pixels.shape} from {where}")
        if pixels.shape[0] > MAX_SLICES and min(pixels.shape[1:]) < pixels.shape[0] / 4:
            # (Y, X, Z) as nibabel and SimpleITK habits lay it out: 256 "slices" of 216 x 10 pixels
            # segmented to 0 mL with no flag (sweep 48)
            raise InputError(
                f"Stack 'pixels' from {where} have shape {pixels.shape}: {pixels.shape[0]} slices of "
                f"{pixels.shape[1]} x {pixels.shape[2]} pixels, more slices than a cine has and a side of a "
                "quarter of that; pixels are (Z, Y, X): was the array (Y, X, Z)? np.moveaxis(pixels, -1, 0) makes it "
                "(Z, Y, X)"
            )
        if max(pixels.shape[1:]) > MAX_MATRIX:
            # the readers refuse such headers before reading pixels; an array built in Python alike
            raise InputError(
                f"Stack 'pixels' from {where} are {pixels.shape[1]} x {pixels.shape[2]} pixels, more than "
                f"{MAX_MATRIX} a side: not a cine MR image"
            )
        if pixels.dtype.kind not in "uif":
            # a mask (bool) or a complex image is not intensities: dropping a part would be silent
            raise InputError(f"Stack 'pixels' from {where} must be real intensities, got dtype {pixels.dtype}")
        if pixels.dtype != np.float32:
            with np.errstate(over="ignore"):
                pixels = pixels.astype(np.float32)
        finite = np.isfinite(pixels)
        if not finite.all():
            z = int(np.flatnonzero(~finite.reshape(len(pixels), -1).all(1))[0])
            beyond = given.dtype.kind != "f" or bool(np.isfinite(given).all())  # finite before the cast
            what = "values beyond float32's range (3.4e38)" if beyond else "NaN or infinite values"
            raise InputError(f"Stack 'pixels' from {where} hold {what} (slice {z} of {len(pixels)})")
        object.__setattr__(self, "pixels", pixels)
        object.__setattr__(self, "spacing", check_spacing(self.spacing))
        affine = self.affine if self.affine is not _NO_AFFINE else np.diag([*self.spacing, 1.0])
        object.__setattr__(self, "affine", check_affine(affine, "Stack 'affine'"))
        if self.labels is not None:
            labels = check_label_map(self.labels, "labels")
            if labels.shape != pixels.shape:
                raise InputError(f"Stack 'labels' shape {labels.shape} differs from 'pixels' shape {pixels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() > 3):
                raise InputError(
                    f"Stack 'labels' from {where} must be canonical labels 0..3 (background, LVBP, LVM, RVBP), "
                    f"got values {labels.min()}..{labels.max()}"
                )
            if labels.dtype != np.uint8:
                labels = labels.astype(np.uint8)
            object.__setattr__(self, "labels", labels)
        positions = self.slice_positions
        if positions is None:
            positions = np.arange(pixels.shape[0], dtype=np.float64) * self.spacing[0]
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (pixels.shape[0],):
            raise InputError(f"Stack 'slice_positions' must have shape ({pixels.shape[0]},), got {positions.shape}")
        check_stack_geometry(self.spacing, positions, self.source)
        object.__setattr__(self, "slice_positions", positions)
        if self.source_frames and len(self.source_frames) != pixels.shape[0]:
            raise InputError(
                f"Stack 'source_frames' must name one frame per slice ({pixels.shape[0]}), got {len(self.source_frames)}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X)."""
        z, y, x = self.pixels.shape
        return z, y, x

    def with_labels(self, labels: np.ndarray | None) -> "Stack":
        """A copy of this stack carrying ``labels`` (uint8 (Z, Y, X))."""
        return replace(self, labels=labels)


@dataclass(frozen=True)
class StudyInfo:
    """What is known of a study beyond its pixels; every field may be unknown (None)."""

    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    series_description: str | None = None
    manufacturer: str | None = None
    field_strength_t: float | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    group: str | None = None  # diagnosis group (ACDC) or pathology (M&Ms)
    sex: str | None = None  # "M" or "F" (DICOM PatientSex); None where unknown or other
    age_years: float | None = None  # DICOM PatientAge ("045Y", "006M", ...) in years
    study_date: str | None = None  # DICOM StudyDate as ISO "YYYY-MM-DD"; None where absent or invalid
    accession_number: str | None = None  # DICOM AccessionNumber
    source: str = ""


@dataclass(frozen=True, eq=False)
class Study:
    """A short-axis cine study: either the ED and ES stacks only, or every phase.

    Attributes
    ----------
    phases : the stacks in time order; for an ED/ES-only study exactly (ED, ES).
    ed_index, es_index : which of ``phases`` are ED and ES, None when not known yet. A cine
        read from DICOM or a 4-D NIfTI file names no ES and takes its first phase as ED (the
        R-wave trigger); the pipeline then measures at the LV volume curve's largest and smallest
        phases, which may be another (report.json's ``ed_index``, ``ed_es_from`` "lv_volume").
    trigger_times_ms : float64 (T,) trigger time of each phase in ms, or None.
    info : identifiers and patient data.
    """

    phases: tuple[Stack, ...]
    ed_index: int | None = None
    es_index: int | None = None
    trigger_times_ms: np.ndarray | None = None
    info: StudyInfo = field(default_factory=StudyInfo)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))
        if not self.phases:
            raise InputError(f"Study from {self.info.source or 'memory'} has no phases")
        for k, phase in enumerate(self.phases):
            if not isinstance(phase, Stack):
                raise InputError(f"Study 'phases' must be cmrsdk.Stack objects, got {type(phase).__name__} at {k}")
        for name in ("ed_index", "es_index"):
            index = getattr(self, name)
            if index is not None and (isinstance(index, bool) or not isinstance(index, (int, np.integer))):
                raise InputError(f"Study '{name}' must be a phase index (int) or None, got {index!r}")
            if index is not None and not 0 <= index < len(self.phases):
                raise InputError(f"Study '{name}' is {index}, expected 0..{len(self.phases) - 1}")

    @property
    def ed(self) -> Stack:
        """The end-diastolic stack (raises when ED is unknown)."""
        if self.ed_index is None:
            raise InputError(f"Study from {self.info.source or 'memory'} has no known ED phase")
        return self.phases[self.ed_index]

    @property
    def es(self) -> Stack:
        """The end-systolic stack (raises when ES is unknown)."""
        if self.es_index is None:
            raise InputError(f"Study from {self.info.source or 'memory'} has no known ES phase")
        return self.phases[self.es_index]

    @property
    def is_cine(self) -> bool:
        """True when every phase of the cycle is present, not only ED and ES."""
        return len(self.phases) > 2
