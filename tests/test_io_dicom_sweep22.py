"""The cine's time axis as archives store it (sweep 22, docs/RESULTS.md Session 43): the phase
time where TriggerTime was dropped, the order without InstanceNumber, a cine cut short."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrsdk.errors import CmrWarning, ReadError
from cmrsdk.io import read_dicom_study, write_dicom_series
from cmrsdk.synth import synthetic_study


@pytest.fixture()
def cine(tmp_path: Path) -> tuple[Path, object]:
    folder = tmp_path / "cine"
    write_dicom_series(folder, synthetic_study(3, n_slices=4, shape=(40, 48), n_phases=6))
    return folder, read_dicom_study(folder)


def _rewrite(folder: Path, change) -> None:
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)


def _same_order(read, complete) -> bool:
    return all(np.array_equal(a.pixels, b.pixels) for a, b in zip(read.phases, complete.phases))


def test_the_nominal_trigger_delay_stands_in_for_trigger_time(cine) -> None:
    """An anonymiser that dropped TriggerTime and renumbered the images kept (0020,9153)."""
    folder, complete = cine
    n = len(list(folder.glob("*.dcm")))

    def change(ds) -> None:
        ds.NominalCardiacTriggerDelayTime = float(ds.TriggerTime)
        del ds.TriggerTime
        ds.InstanceNumber = n + 1 - int(ds.InstanceNumber)  # numbered against time

    _rewrite(folder, change)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)  # no "ordered by InstanceNumber"
        read = read_dicom_study(folder)
    assert _same_order(read, complete)
    np.testing.assert_allclose(read.trigger_times_ms, complete.trigger_times_ms)


def test_the_temporal_position_orders_a_cine_without_numbers(cine) -> None:
    folder, complete = cine
    n_slices = complete.phases[0].shape[0]

    def change(ds) -> None:
        ds.TemporalPositionIdentifier = (int(ds.InstanceNumber) - 1) // n_slices + 1
        del ds.TriggerTime, ds.InstanceNumber

    _rewrite(folder, change)
    with pytest.warns(CmrWarning, match=r"no 'TriggerTime'.*phases ordered by TemporalPositionIdentifier"):
        read = read_dicom_study(folder)
    assert _same_order(read, complete)


def test_nothing_to_order_the_phases_by_is_said(cine) -> None:
    folder, _ = cine
    _rewrite(folder, lambda ds: delattr(ds, "TriggerTime") or delattr(ds, "InstanceNumber"))
    with pytest.raises(ReadError, match=r"nothing to order them by: no 'TriggerTime' \(0018,1060\)") as error:
        read_dicom_study(folder)
    assert "duplicate" not in str(error.value)


def test_a_cine_cut_short_is_said(cine) -> None:
    """The last phases missing at every position read as a whole shorter cine; the header's
    CardiacNumberOfImages shows what is missing."""
    folder, _ = cine
    _rewrite(folder, lambda ds: setattr(ds, "CardiacNumberOfImages", 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)
        read_dicom_study(folder)  # complete: nothing said
    for f in folder.glob("*.dcm"):
        if int(f.name[:3]) >= 4:  # phases 4 and 5 of 0..5 lost everywhere
            f.unlink()
    with pytest.warns(
        CmrWarning, match=r"holds 4 phases per slice position, but 'CardiacNumberOfImages' \(0018,1090\) is 6"
    ):
        read = read_dicom_study(folder)
    assert len(read.phases) == 4


def test_a_cine_stored_one_series_per_phase_is_said(cine) -> None:
    """Read as one phase (volumes, no EF): said, not silent."""
    folder, _ = cine
    uids = {}

    def per_phase(f: Path) -> None:
        phase = int(f.name[:3])
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uids.setdefault(phase, pydicom.uid.generate_uid())
        ds.SeriesNumber = phase + 1
        ds.save_as(f)

    for f in sorted(folder.glob("*.dcm")):
        per_phase(f)
    with pytest.warns(CmrWarning, match=r"and 5 other series of its study hold one phase each .* one series per phase"):
        read = read_dicom_study(folder)
    assert len(read.phases) == 1


def test_a_nifti_cine_with_time_and_slice_axes_swapped_is_refused(tmp_path: Path) -> None:
    """(x, y, t, z): read as (x, y, z, t) its phases were measured as slices (LVEDV 452 mL)."""
    import nibabel as nib

    from cmrsdk.io import read_study

    affine = np.diag([1.4, 1.4, 10.0, 1.0])
    cine = np.random.default_rng(0).normal(100, 10, (32, 32, 20, 6)).astype(np.float32)  # x, y, t=20, z=6
    image = nib.Nifti1Image(cine, affine)
    image.header.set_zooms((1.4, 1.4, 37.5, 10.0))
    nib.save(image, tmp_path / "xytz.nii.gz")
    with pytest.raises(ReadError, match=r"pixdim\[3\] 37.5 is not the affine's slice spacing 10 mm .* \(x, y, t, z\)"):
        read_study(tmp_path / "xytz.nii.gz")
    right = nib.Nifti1Image(cine.transpose(0, 1, 3, 2), affine)
    right.header.set_zooms((1.4, 1.4, 10.0, 37.5))
    nib.save(right, tmp_path / "xyzt.nii.gz")
    assert len(read_study(tmp_path / "xyzt.nii.gz").phases) == 20


def test_an_ed_es_export_of_a_cine_is_not_called_incomplete(cine) -> None:
    folder, _ = cine
    _rewrite(folder, lambda ds: setattr(ds, "CardiacNumberOfImages", 6))
    for f in folder.glob("*.dcm"):
        if int(f.name[:3]) not in (0, 3):  # ED and ES kept, as archives export them
            f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)
        assert len(read_dicom_study(folder).phases) == 2


def test_a_legacy_converted_cine_keeps_the_nominal_trigger_delay(cine, tmp_path: Path) -> None:
    """Converted from images whose TriggerTime was dropped and whose numbers run against time: the
    nominal delay in each frame's converted attributes orders the phases (frame order did; sweep 24:
    LVEF 12.8 % for 30.0)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _enhanced import legacy_converted

    folder, complete = cine
    n = len(list(folder.glob("*.dcm")))

    def change(ds) -> None:
        ds.NominalCardiacTriggerDelayTime = float(ds.TriggerTime)
        del ds.TriggerTime
        ds.InstanceNumber = n + 1 - int(ds.InstanceNumber)

    _rewrite(folder, change)
    # the converter keeps its input order as the frame order: against time, as the numbers
    files = sorted(folder.glob("*.dcm"), key=lambda f: int(pydicom.dcmread(f).InstanceNumber))
    converted = legacy_converted(files, tmp_path / "enhanced" / "cine.dcm")
    read = read_dicom_study(converted.parent)
    assert _same_order(read, complete)


def test_the_temporal_position_orders_where_numbers_restart_per_phase(cine) -> None:
    """No TriggerTime, InstanceNumber restarting at every phase (the slice's number), the phase in
    TemporalPositionIdentifier: refused as a duplicate slice position before (sweep 24)."""
    folder, complete = cine
    n_slices = complete.phases[0].shape[0]

    def change(ds) -> None:
        ds.TemporalPositionIdentifier = (int(ds.InstanceNumber) - 1) // n_slices + 1
        ds.InstanceNumber = (int(ds.InstanceNumber) - 1) % n_slices + 1
        del ds.TriggerTime

    _rewrite(folder, change)
    with pytest.warns(CmrWarning, match=r"phases ordered by TemporalPositionIdentifier"):
        read = read_dicom_study(folder)
    assert _same_order(read, complete)


def test_an_enhanced_source_is_not_said_to_lack_its_slice_thickness(cine, tmp_path: Path) -> None:
    """Its thickness is in the functional groups' pixel measures (sweep 24: a false warning on
    every enhanced file)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _enhanced import legacy_converted

    from cmrsdk.io._dicom_out import derivation_sources

    folder, _ = cine
    converted = legacy_converted(sorted(folder.glob("*.dcm")), tmp_path / "enhanced" / "cine.dcm")
    study = read_dicom_study(converted.parent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        derivation_sources(study.ed.source_files, slice_spacing_mm=8.0)
    assert not [w for w in caught if "SliceThickness" in str(w.message)]
