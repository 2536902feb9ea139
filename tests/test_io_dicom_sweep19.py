"""Series that are not short-axis cines, as sites send them (sweep 19: perfusion without a usable
TriggerTime segmented as a 60-phase cine, LVEF 59.3 % for 29.8; T1/T2 maps and PSIR measured; a
tagged cine read instead of the untagged one beside it)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pydicom
import pytest

from cmrsdk.errors import CmrWarning, ReadError
from cmrsdk.io import read_dicom_study, scan_dicom_series, write_dicom_series
from cmrsdk.phantom import cine_phantom


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> Path:
    """A 20-phase short-axis cine phantom as classic MR files (TriggerTime 0-760 ms)."""
    folder = tmp_path_factory.mktemp("cine") / "cine"
    write_dicom_series(folder, cine_phantom(0, n_phases=20))
    return folder


def _edited(cine: Path, target: Path, edit) -> Path:
    """A copy of ``cine`` as a series of its own (new UIDs), every header passed to ``edit(ds, i)``."""
    series_uid = pydicom.uid.generate_uid()
    target.mkdir(parents=True)
    for i, path in enumerate(sorted(cine.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        edit(ds, i)
        ds.save_as(target / path.name)
    return target


def test_a_cine_passes(cine: Path) -> None:
    (summary,) = scan_dicom_series(cine)
    assert summary.is_sax_cine and not summary.dynamic_reason and not summary.image_type_reason
    assert summary.acquisition_span_s is None and 500.0 < summary.trigger_span_ms < 1000.0  # one heartbeat


def test_perfusion_over_many_heartbeats_is_refused(cine: Path, tmp_path: Path) -> None:
    phases = 20

    def no_trigger(ds, i):  # files are phase-major: i // slices is the dynamic
        del ds.TriggerTime
        ds.AcquisitionTime = f"1200{(i // (len(list(cine.glob('*.dcm'))) // phases)) * 2:02d}.000000"

    with pytest.raises(ReadError, match=r"acquired over 38 s \('AcquisitionTime' \(0008,0032\)\).*perfusion"):
        read_dicom_study(_edited(cine, tmp_path / "perf_no_trigger", no_trigger))

    def one_rr_per_dynamic(ds, i):
        ds.TriggerTime = (i // (len(list(cine.glob("*.dcm"))) // phases)) * 850.0

    with pytest.raises(ReadError, match=r"span 16150 ms of 'TriggerTime'.*more than one heartbeat"):
        read_dicom_study(_edited(cine, tmp_path / "perf_rr", one_rr_per_dynamic))


@pytest.mark.parametrize("image_type", [["DERIVED", "PRIMARY", "MAP", "T1 MAP"], ["DERIVED", "PRIMARY", "PSIR"]])
def test_maps_and_psir_are_refused_by_their_image_type(cine: Path, tmp_path: Path, image_type) -> None:
    def typed(ds, i):
        ds.ImageType = image_type

    with pytest.raises(ReadError, match=rf"'ImageType' \(0008,0008\) is {'.'.join(image_type)} .*not a cine"):
        read_dicom_study(_edited(cine, tmp_path / "typed", typed))


def test_a_tagged_cine_beside_the_cine_is_not_chosen(cine: Path, tmp_path: Path) -> None:
    exam = tmp_path / "exam"
    shutil.copytree(cine, exam / "cine")

    def tagged(ds, i):
        ds.SeriesDescription = "SA CSPAMM TAGGING"
        ds.SeriesNumber = 1810  # acquired later, and named short axis: both used to win

    _edited(cine, exam / "tagged", tagged)
    summaries = scan_dicom_series(exam)
    assert [s.is_tagged for s in summaries] == [False, True]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        study = read_dicom_study(exam)
    assert study.phases[0].source_files[0].startswith(str(exam / "cine"))
    with pytest.warns(CmrWarning, match="named a tagged cine"):
        read_dicom_study(exam / "tagged")


def test_the_node_sets_them_aside_saying_why(cine: Path, tmp_path: Path) -> None:
    """`cmrsdk serve` judges a series by the same summary: set aside, never segmented (perfusion
    without TriggerTime was judged a cine and its LVEF sent to the PACS)."""
    from cmrsdk.serve.worker import judge_series

    n = len(list(cine.glob("*.dcm")))

    def no_trigger(ds, i):
        del ds.TriggerTime
        ds.AcquisitionTime = f"1200{(i // (n // 20)) * 2:02d}.000000"

    def t2_map(ds, i):
        ds.ImageType = ["DERIVED", "PRIMARY", "MAP", "T2 MAP"]

    perfusion = judge_series(_edited(cine, tmp_path / "perfusion", no_trigger))
    assert not perfusion.queue and "acquired over 38 s" in perfusion.reason
    mapped = judge_series(_edited(cine, tmp_path / "t2map", t2_map))
    assert not mapped.queue and "'ImageType' (0008,0008) is DERIVED\\PRIMARY\\MAP\\T2 MAP (MAP)" in mapped.reason
    assert judge_series(cine).queue


def test_late_enhancement_as_an_enhanced_mr_file_is_refused(cine: Path, tmp_path: Path) -> None:
    """Classic LGE (one phase, InversionTime 300) was refused, but converted to a Legacy Converted
    Enhanced MR its inversion time sat in the converted attributes and it was measured (LV 217.3 mL)."""
    from _enhanced import legacy_converted

    one_phase = sorted(cine.glob("000_*.dcm"))  # phase 0: every slice, one phase

    def lge(ds, i):
        ds.InversionTime = 300.0

    classic = _edited(cine, tmp_path / "classic", lge)
    for path in classic.glob("*.dcm"):
        if not path.name.startswith("000_"):
            path.unlink()
    with pytest.raises(ReadError, match="one phase with 'InversionTime' \\(0018,0082\\) 300 ms"):
        read_dicom_study(classic)
    enhanced = legacy_converted(sorted(classic.glob("*.dcm")), tmp_path / "enhanced" / "lge.dcm")
    assert len(one_phase) == len(list(classic.glob("*.dcm")))
    with pytest.raises(ReadError, match="one phase with 'InversionTime' \\(0018,0082\\) 300 ms"):
        read_dicom_study(enhanced.parent)


def test_a_stack_that_is_not_short_axis_is_said_and_set_aside(cine: Path, tmp_path: Path) -> None:
    """An axial cine stack was segmented and its volumes sent by the node (LVEDV 139.7 mL in the SR)."""
    from cmrsdk.serve.worker import judge_series

    names = sorted(p.name for p in cine.glob("*.dcm"))

    def axial(ds, i):
        z = int(names[i].split("_")[1].split(".")[0])
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [-100.0, -100.0, 10.0 * z]

    folder = _edited(cine, tmp_path / "axial", axial)
    verdict = judge_series(folder)
    assert not verdict.queue and verdict.reason.startswith("not a short-axis stack: its slice normal lies 55 degrees")
    with pytest.warns(CmrWarning, match="is not a short-axis stack: its slice normal lies 55 degrees"):
        read_dicom_study(folder)
