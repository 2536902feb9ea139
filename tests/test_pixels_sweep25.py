"""Pixel data as vendors and archives encode it (sweep 25, docs/RESULTS.md Session 43): padding,
MONOCHROME1, palette colour and a negative rescale slope."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrsdk.errors import ReadError
from cmrsdk.io import read_dicom_study, write_dicom_series
from cmrsdk.synth import synthetic_study


@pytest.fixture()
def cine(tmp_path: Path) -> tuple[Path, object]:
    folder = tmp_path / "cine"
    write_dicom_series(folder, synthetic_study(4, n_slices=4, shape=(40, 48), n_phases=2))
    return folder, read_dicom_study(folder)


def _rewrite(folder: Path, change) -> None:
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)


def _stored(ds) -> np.ndarray:
    return ds.pixel_array.copy()


def _set_stored(ds, values: np.ndarray) -> None:
    ds.PixelData = values.astype(ds.pixel_array.dtype).tobytes()


def test_monochrome1_reads_as_its_monochrome2_twin(cine) -> None:
    """Stored turned over (the smallest value white): read as it was (no LV, silently, before)."""
    folder, complete = cine

    def change(ds) -> None:
        top = (1 << int(ds.BitsStored)) - 1
        _set_stored(ds, top - _stored(ds).astype(np.int64))
        ds.PhotometricInterpretation = "MONOCHROME1"

    _rewrite(folder, change)
    read = read_dicom_study(folder)
    for a, b in zip(read.phases, complete.phases):
        np.testing.assert_allclose(a.pixels, b.pixels, rtol=1e-6)


def test_a_padded_border_reads_as_background(cine) -> None:
    """A 4-pixel border stored as PixelPaddingValue: it takes the image's darkest value (it was
    read as bright tissue: LVESV -11.1 mL, or no LV at all, in sweep 25)."""
    folder, complete = cine
    pad = 65535

    def change(ds) -> None:
        values = _stored(ds) // 2  # the image in the lower half of the range, the padding above it
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * 2:.10g}"
        values[:4], values[:, :4] = pad, pad
        _set_stored(ds, values)
        ds.add_new(0x00280120, "US", pad)  # PixelPaddingValue

    _rewrite(folder, change)
    read = read_dicom_study(folder)
    step = 4 * (complete.phases[0].pixels.max() - complete.phases[0].pixels.min()) / 65535
    for a, b in zip(read.phases, complete.phases):
        np.testing.assert_allclose(a.pixels[:, 4:, 4:], b.pixels[:, 4:, 4:], atol=step)
        for z in range(a.shape[0]):
            assert np.all(a.pixels[z, :4] <= a.pixels[z, 4:, 4:].min() + 1e-3)  # darkest, not bright


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"),
            r"'PhotometricInterpretation' \(0028,0004\) value 'PALETTE COLOR'",
        ),
        (lambda ds: setattr(ds, "RescaleSlope", "-1"), r"'RescaleSlope' \(0028,1053\) value -1 is negative"),
    ],
)
def test_images_that_would_be_misread_are_refused_naming_the_field(cine, change, message: str) -> None:
    folder, _ = cine
    _rewrite(folder, change)
    with pytest.raises(ReadError, match=message):
        read_dicom_study(folder)


def test_lossy_compression_is_said_and_carried_into_the_seg(cine, tmp_path: Path) -> None:
    """JPEG-LS near-lossless without the source's LossyImageCompression: the reader says so, the
    SEG's sources say "01" (the SEG said "00": sweep 25)."""
    import warnings

    from pydicom.uid import JPEGLSNearLossless

    from cmrsdk.errors import CmrWarning
    from cmrsdk.io._dicom_out import derivation_sources

    folder, complete = cine

    def change(ds) -> None:
        ds.compress(JPEGLSNearLossless, jls_error=2)
        ds.pop("LossyImageCompression", None)
        ds.pop("LossyImageCompressionRatio", None)
        ds.pop("LossyImageCompressionMethod", None)

    _rewrite(folder, change)
    with pytest.warns(CmrWarning, match=r"8 of 8 image\(s\) compressed with loss \(JPEG-LS Lossy"):
        read = read_dicom_study(folder)
    np.testing.assert_allclose(read.ed.pixels, complete.ed.pixels, atol=0.05 * float(np.ptp(complete.ed.pixels)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = derivation_sources(read.ed.source_files)
    assert {ds.LossyImageCompression for ds in sources} == {"01"}


@pytest.mark.parametrize("lossy", [True, False])
def test_jpeg2000_is_lossy_where_its_wavelet_is_irreversible(cine, lossy: bool) -> None:
    """JPEG 2000 (the syntax that allows either) without LossyImageCompression: its codestream's
    9-7 wavelet says lossy (it was taken as lossless: sweep 25); the 5-3 wavelet stays lossless."""
    import warnings

    from pydicom.uid import JPEG2000, JPEG2000Lossless

    from cmrsdk.errors import CmrWarning

    folder, _ = cine

    def change(ds) -> None:
        if lossy:
            ds.compress(JPEG2000, j2k_cr=[20])
        else:  # the reversible wavelet under the syntax that allows either, as archives store it
            ds.compress(JPEG2000Lossless)
            ds.file_meta.TransferSyntaxUID = JPEG2000
        ds.pop("LossyImageCompression", None)

    _rewrite(folder, change)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_dicom_study(folder)
    said = [str(w.message) for w in caught if issubclass(w.category, CmrWarning) and "with loss" in str(w.message)]
    assert len(said) == int(lossy)
    if lossy:
        assert "8 of 8 image(s) compressed with loss (JPEG 2000 Image Compression)" in said[0]


def test_rescale_slopes_that_cannot_be_used_are_named(cine) -> None:
    """A slope of 0 was taken as 1 without a word; one that overflows float32 was refused as
    "NaN or infinite values" without naming it (sweep 25)."""
    from cmrsdk.errors import CmrWarning

    folder, complete = cine
    _rewrite(folder, lambda ds: setattr(ds, "RescaleSlope", "0"))
    with pytest.warns(CmrWarning, match=r"'RescaleSlope' value '0' is 0; 1.0 used"):
        read_dicom_study(folder)
    _rewrite(folder, lambda ds: setattr(ds, "RescaleSlope", "1e36"))
    with pytest.raises(ReadError, match=r"NaN or infinite values after 'RescaleSlope' 1e\+36"):
        read_dicom_study(folder)
