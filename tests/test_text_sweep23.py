"""Text, character sets and paths as hospitals around the world write them (sweep 23,
docs/RESULTS.md Session 43): misnamed and undeclared character sets, backslashes, control
characters and decimal commas in patient text, a NaN slice thickness, a UTF-16 Info.cfg, a study
folder named in another encoding, a terminal that shows ASCII only."""

from __future__ import annotations

import codecs
import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement

from cmrsdk.errors import CmrWarning
from cmrsdk.io import read_dicom_study, write_dicom_seg, write_dicom_series
from cmrsdk.io._dicom_out import derivation_sources
from cmrsdk.io.nifti import read_acdc_info
from cmrsdk.synth import synthetic_study


@pytest.fixture()
def series(tmp_path: Path) -> list[Path]:
    return sorted(write_dicom_series(tmp_path / "cine", synthetic_study(3, n_slices=4, shape=(40, 48), n_phases=3)))


def _rewrite(files: list[Path], change) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)


def _raw_text(ds, keyword: str, text: bytes) -> None:
    """Store ``text`` as the element's bytes, whatever the character set or VR says."""
    tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
    text += b" " * (len(text) % 2)
    ds[tag] = RawDataElement(tag, pydicom.datadict.dictionary_VR(tag), len(text), text, 0, False, True)


def _sources(files: list[Path]) -> tuple[list, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datasets = derivation_sources(files[:4], slice_spacing_mm=8.0)
    return datasets, [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]


@pytest.mark.parametrize("name", ["UTF-8", "utf8", "ISO_IR_192", "ISO-IR 192"])
def test_a_misspelled_utf8_character_set_is_read_as_utf8(series, name: str) -> None:
    def change(ds) -> None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Jürgen"
        ds.SeriesDescription = "Kurzachse Müller"

    _rewrite(series, change)
    for f in series:  # the same UTF-8 bytes, the set named as some software names it
        f.write_bytes(f.read_bytes().replace(b"ISO_IR 192", name.ljust(10).encode(), 1))
    assert read_dicom_study(series[0].parent).info.series_description == "Kurzachse Müller"
    datasets, said = _sources(series)
    assert str(datasets[0].PatientName) == "Müller^Jürgen" and datasets[0].SpecificCharacterSet == "ISO_IR 192"
    assert any(f"value {name!r} read as 'ISO_IR 192'" in m for m in said)


@pytest.mark.parametrize(
    ("text", "term"), [("Müller^Jürgen".encode("latin-1"), "ISO_IR 100"), ("Müller^Jürgen".encode(), "ISO_IR 192")]
)
def test_undeclared_8bit_text_is_named(series, text: bytes, term: str) -> None:
    def change(ds) -> None:
        ds.pop("SpecificCharacterSet", None)
        _raw_text(ds, "PatientName", text)

    _rewrite(series, change)
    datasets, said = _sources(series)
    assert str(datasets[0].PatientName) == "Müller^Jürgen" and datasets[0].SpecificCharacterSet == term
    assert any("no 'SpecificCharacterSet' (0008,0005), and 8-bit text" in m for m in said)


def test_patient_text_that_is_not_valid_is_fitted_and_identifiers_kept(series, tmp_path: Path) -> None:
    long_id = "P" * 80

    def change(ds) -> None:
        ds.PatientName = "Doe^John\\Roe^Richard"  # two names where one is allowed
        ds.PatientID = long_id  # over LO's 64: the archive's own, so kept
        _raw_text(ds, "StudyDescription", b"Line1\r\nLine2")
        _raw_text(ds, "SeriesDescription", b"SA\x00cine")
        _raw_text(ds, "PatientWeight", b"72,5")
        _raw_text(ds, "PatientSize", b"1,78")
        _raw_text(ds, "SliceThickness", b"NaN")

    _rewrite(series, change)
    info = read_dicom_study(series[0].parent).info
    assert (info.series_description, info.weight_kg, info.height_cm) == ("SA cine", 72.5, 178.0)
    datasets, said = _sources(series)
    ds = datasets[0]
    assert str(ds.PatientName) == "Doe^John" and ds.PatientID == long_id
    assert (ds.StudyDescription, ds.SeriesDescription) == ("Line1  Line2", "SA cine")
    assert (str(ds.PatientWeight), str(ds.PatientSize), float(ds.SliceThickness)) == ("72.5", "1.78", 8.0)
    assert any("'SliceThickness' (0018,0050) is 'NaN'" in m for m in said)
    # the SEG is written (a second name made highdicom refuse it, after the whole study)
    study = read_dicom_study(series[0].parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dicom_seg(tmp_path / "seg.dcm", np.zeros(study.ed.shape, np.uint8), study.ed)
    assert str(pydicom.dcmread(tmp_path / "seg.dcm").PatientName) == "Doe^John"


def test_a_utf16_info_cfg_is_read(tmp_path: Path) -> None:
    cfg = tmp_path / "Info.cfg"
    cfg.write_bytes(codecs.BOM_UTF16_LE + "ED: 1\nES: 12\nHeight: 184.0\n".encode("utf-16-le"))
    assert read_acdc_info(cfg) == {"ED": "1", "ES": "12", "Height": "184.0"}


def test_a_table_row_from_a_folder_named_in_another_encoding(tmp_path: Path) -> None:
    from cmrsdk.cohort.table import write_measures_csv

    folder = os.fsdecode(b"/data/M\xfcller")  # Latin-1 bytes: a surrogate escape in Python
    write_measures_csv(tmp_path / "measures.csv", [{"source": folder}])
    assert "M\\udcfcller" in (tmp_path / "measures.csv").read_text(encoding="utf-8")


def test_an_ascii_terminal_does_not_end_the_run(tmp_path: Path, monkeypatch) -> None:
    """PYTHONIOENCODING=ascii, or a folder named in another encoding: the line is shown escaped."""
    from cmrsdk import cli

    err = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stderr", err)
    assert cli.main(["inspect", str(tmp_path / "山田 太郎")]) == 1  # not found, said
    err.flush()
    shown = err.buffer.getvalue().decode("ascii")
    assert shown.startswith("cmrsdk: error:") and "\\u5c71\\u7530" in shown


def test_a_private_name_with_several_values_is_left_as_it_is(series) -> None:
    """A vendor's private PN element has no VM in the dictionary: asking for it raised KeyError
    after the whole study (found reading this session's change again)."""

    def change(ds) -> None:
        block = ds.private_block(0x0029, "CMRSDK TEST", create=True)
        block.add_new(0x10, "PN", ["Doe^John", "Roe^Richard"])

    _rewrite(series, change)
    datasets, _ = _sources(series)
    assert [str(v) for v in datasets[0][0x00291010].value] == ["Doe^John", "Roe^Richard"]
