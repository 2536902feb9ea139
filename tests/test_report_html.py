"""report.html: one self-contained page per study, checked as a reader's browser shows it."""

from __future__ import annotations

import io
import re
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from _chromium import chromium_binary, visit

from cmrsdk._html import markdown_to_html
from cmrsdk.montage import LABEL_RGB
from cmrsdk.reference_ranges import REFERENCE_RANGES, body_surface_area_m2
from cmrsdk.report import ground_truth_agreement, study_report
from cmrsdk.report_html import render_report_html, volume_curve_svg, write_report_html


@pytest.fixture(scope="module")
def page(segmented_phantom, tmp_path_factory):
    study, result = segmented_phantom
    report = study_report(result, study)
    report["ground_truth"] = ground_truth_agreement(result, study)
    path = write_report_html(tmp_path_factory.mktemp("page") / "report.html", result, report, study=study)
    return path, report


def test_page_is_self_contained(page):
    path, _ = page
    html = path.read_text()
    # nothing to fetch: every image a data URI, no script, no stylesheet link, a policy that forbids the network
    assert re.findall(r'src="([^"]+)"', html) and all(
        s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]+)"', html)
    )
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    assert "default-src 'none'" in html
    assert path.stat().st_size < 2_000_000


def test_page_shows_the_reports_numbers(page, segmented_phantom):
    path, report = page
    study, _ = segmented_phantom
    html = path.read_text()
    m = report["measures"]
    for key in ("lvedv_ml", "lvesv_ml", "lvef_pct", "lv_mass_g", "rvedv_ml", "rvef_pct"):
        # report.json's number, halves rounded up as a reader rounds it (51.05 shows 51.1, not binary 51.0)
        shown = Decimal(repr(m[key])).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
        assert f">{shown}<" in html or f">{shown} " in html, key
    bsa = body_surface_area_m2(study.info.height_cm, study.info.weight_kg)
    assert f"{m['lvedv_ml'] / bsa:.1f}" in html  # indexed to BSA when height and weight are known
    lo, hi = REFERENCE_RANGES["lvedv_ml"].men
    assert f"{lo:g}–{hi:g}" in html
    assert "Dice LVBP ED" in html and "z 3 / " not in html  # captions are in the picture, not the text


def test_page_without_height_weight_or_cine(segmented_phantom):
    _, result = segmented_phantom
    report = study_report(result, None)
    _, body = render_report_html(result, report)
    assert "no indexed values" in body and "ED and ES only" in body


def test_volume_curve_marks_ed_and_es():
    svg = volume_curve_svg(
        [150.0, 120.0, 60.0, 90.0, 140.0], [160.0, 130.0, 80.0, 100.0, 150.0], [0.0, 200.0, 400.0, 600.0, 800.0], 0, 2
    )
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and ">ED<" in svg and ">ES<" in svg


def test_quality_flags_in_words(segmented_phantom):
    _, result = segmented_phantom
    report = study_report(result, None)
    report["phases"][result.ed_index]["quality_flags"] = ["basal_coverage"]
    _, body = render_report_html(result, report)
    assert "may not cover the base" in body


def test_markdown_report_to_html(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "figure2.png")
    body = markdown_to_html(
        "# Title\n\nsome text\n\n| a | b |\n|---|---|\n| x | 1.50 |\n\n![Dice](figure2.png)\n", tmp_path
    )
    assert "<h1>Title</h1>" in body and '<td class="num">1.50</td>' in body and "data:image/png;base64," in body


# -- in a real browser -------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    chromium_binary() is None,
    reason="chromium is not installed: the browser checks of report.html are skipped (scripts/env.sh installs it)",
)


@needs_chromium
def test_page_in_headless_chromium(page):
    from PIL import Image

    path, report = page
    seen = visit(path, width=1280, height=900, pdf=True)
    assert seen.errors == []
    # the page itself and its inlined images only: nothing over any network
    assert seen.requests and all(u.startswith(("file://", "data:")) for u in seen.requests), seen.requests
    assert seen.images and all(i["complete"] and i["naturalWidth"] > 0 for i in seen.images), seen.images
    assert seen.title.startswith("cmrsdk report: PHANTOM0000")
    m = report["measures"]
    text = seen.text
    for key in ("lvedv_ml", "lvesv_ml", "lvef_pct", "rvedv_ml", "rvef_pct"):
        assert str(Decimal(repr(m[key])).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)) in text, key
    for words in (
        "Measures",
        "Quality checks",
        "ED and ES slices",
        "Volume over the cardiac cycle",
        "Provenance",
        "Timings",
    ):
        assert words in text
    shot = np.asarray(Image.open(io.BytesIO(seen.screenshot_png)).convert("RGB"), dtype=np.int16)
    assert shot.shape[1] == 1280 and shot.shape[0] > 1500  # the whole page, not one screen
    assert shot.std() > 30  # not blank
    # the montage shows on screen: the contours' colours (LVBP red, LVM green, RVBP blue) are painted
    for colour in LABEL_RGB.values():
        assert (np.abs(shot - np.array(colour)).max(axis=2) < 12).sum() > 200, colour
    # printable: a few A4 pages
    pages = len(re.findall(rb"/Type\s*/Page[^s]", seen.pdf))
    assert seen.pdf.startswith(b"%PDF") and 1 <= pages <= 6, pages


@needs_chromium
def test_browser_check_detects_network_requests(tmp_path):
    # the control: a page that does reach out is caught by the same check
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><html><body><img alt="x" src="http://127.0.0.1:9/x.png"></body></html>')
    seen = visit(leaky)
    assert any(u.startswith("http://") for u in seen.requests)
    assert seen.images[0]["naturalWidth"] == 0


def test_a_ventricle_larger_at_es_gets_no_ef_and_a_flag(segmented_phantom):
    """A negative stroke volume is never real: SV and EF are withheld (null), the volumes kept,
    the study flagged; the cohort table and the command line carry the flag."""
    from dataclasses import replace
    from pathlib import Path

    from cmrsdk.cli import _result_line
    from cmrsdk.cohort.table import measures_row

    study, result = segmented_phantom
    assert study_report(result, study)["flags"] == []  # the phantom's segmentation ejects
    measures = result.measures
    swapped = replace(
        measures,
        rvedv_ml=measures.rvesv_ml,
        rvesv_ml=measures.rvedv_ml,
        rvsv_ml=-measures.rvsv_ml,
        rvef_pct=-100.0 * measures.rvsv_ml / measures.rvesv_ml,
    )
    report = study_report(replace(result, measures=swapped, measured=swapped), study)
    m = report["measures"]
    assert report["flags"] == ["rv_esv_exceeds_edv"]
    assert m["rvsv_ml"] is None and m["rvef_pct"] is None
    assert m["rvedv_ml"] == pytest.approx(measures.rvesv_ml, abs=1e-3) and m["lvef_pct"] is not None
    assert measures_row(report)["rvef_pct"] is None
    assert "rv_esv_exceeds_edv" in measures_row(report)["quality_flags"].split(";")
    line = _result_line(Path("study"), report, Path("out"))
    assert "RVEF n/a" in line and line.endswith("[flags: rv_esv_exceeds_edv]")
    html = "".join(render_report_html(replace(result, measures=swapped, measured=swapped), report, study=study))
    assert "<b>Study</b>: The RV measures larger at ES than at ED: no ejection can be measured" in html
