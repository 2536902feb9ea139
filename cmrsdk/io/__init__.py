"""Readers and writers: DICOM and NIfTI in, NIfTI, DICOM SEG, DICOM SR, rejection notes and JSON out.

Every reader returns the data model of :mod:`cmrsdk.types` (arrays (Z, Y, X), spacing
(dz, dy, dx) mm, affine (z, y, x) voxel -> RAS+ mm, canonical uint8 labels) and refuses what it
cannot read with a :class:`cmrsdk.errors.ReadError` naming the file and the problem. Every
writer writes to a temporary name and renames.
"""

from __future__ import annotations

from .dicom import read_dicom_study, scan_dicom_series
from .dispatch import detect_format, expand_inputs, inspect, read_study
from .nifti import read_acdc_patient, read_mnms_subject, read_nifti_cine, read_nifti_stack
from .rejection import write_rejection_note
from .sr import write_measurement_report
from .sunnybrook import read_sunnybrook
from .writers import write_acdc_patient, write_dicom_seg, write_dicom_series, write_json, write_nifti_labels

__all__ = [
    "read_study",
    "read_dicom_study",
    "read_acdc_patient",
    "read_mnms_subject",
    "read_nifti_stack",
    "read_nifti_cine",
    "read_sunnybrook",
    "scan_dicom_series",
    "detect_format",
    "expand_inputs",
    "inspect",
    "write_nifti_labels",
    "write_dicom_seg",
    "write_json",
    "write_dicom_series",
    "write_acdc_patient",
    "write_measurement_report",
    "write_rejection_note",
]
