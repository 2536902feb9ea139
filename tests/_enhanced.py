"""Enhanced multi-frame MR test inputs, made from classic series by highdicom's legacy converter.

highdicom writes a Legacy Converted Enhanced MR Image (its functional groups as the standard
lays them out); :func:`as_enhanced_mr` then moves timing and rescale where an Enhanced MR Image
from a scanner keeps them (CardiacSynchronizationSequence, per-frame
PixelValueTransformationSequence), and can shuffle the frames, as vendors order them by their
own dimension indices.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def legacy_converted(files: list[Path], target: Path, series_uid: str | None = None) -> Path:
    """The classic images ``files`` as one Legacy Converted Enhanced MR file at ``target``
    (of the series ``series_uid``: give several files of one series the same).

    The converter needs valid dates and one frame of reference (real archives often have
    neither: cmrsdk's reader does not); they are made so on the copies it converts.
    """
    import highdicom as hd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        ds.FrameOfReferenceUID = datasets[0].FrameOfReferenceUID
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            setattr(ds, keyword, "20120101")
        ds.PatientBirthDate = "19700101"
    image = hd.legacy.LegacyConvertedEnhancedMRImage(datasets, series_uid or hd.UID(), 301, hd.UID(), 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(target)
    return target


def as_enhanced_mr(path: Path, *, shuffle_seed: int | None = None) -> Path:
    """Rewrite a legacy-converted file in place as an Enhanced MR Image would hold its frames.

    Each frame's TriggerTime moves to CardiacSynchronizationSequence
    NominalCardiacTriggerDelayTime and its rescale to its own PixelValueTransformationSequence
    (the shared one is set to the identity, so that a reader using it would be wrong); with
    ``shuffle_seed`` the frames (pixels and functional groups together) are permuted.
    """
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    transform = shared.PixelValueTransformationSequence[0]
    slope, intercept = transform.RescaleSlope, transform.RescaleIntercept
    transform.RescaleSlope, transform.RescaleIntercept = 1, 0
    for item in ds.PerFrameFunctionalGroupsSequence:
        # the converter keeps a value all frames share (one frame: every value) in the shared group
        per_frame = item.get("UnassignedPerFrameConvertedAttributesSequence")
        converted = per_frame[0] if per_frame else shared.UnassignedSharedConvertedAttributesSequence[0]
        sync = Dataset()
        sync.NominalCardiacTriggerDelayTime = float(converted.TriggerTime)
        item.CardiacSynchronizationSequence = [sync]
        for keyword in ("TriggerTime", "NominalCardiacTriggerDelayTime"):
            if keyword in converted:
                delattr(converted, keyword)
        own = Dataset()
        own.RescaleSlope, own.RescaleIntercept, own.RescaleType = slope, intercept, "US"
        item.PixelValueTransformationSequence = [own]
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(int(ds.NumberOfFrames))
        frames = ds.pixel_array
        groups = list(ds.PerFrameFunctionalGroupsSequence)
        ds.PerFrameFunctionalGroupsSequence = [groups[i] for i in order]
        ds.PixelData = np.ascontiguousarray(frames[order]).tobytes()
    ds.SOPClassUID = ENHANCED_MR
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.save_as(path)
    return path
