"""Scoring against Sunnybrook's manual LV contours: endocardium and epicardium Dice per image.

Sunnybrook contours the LV only, on some images of some phases: an i-contour (endocardium) at
ED and ES, an o-contour (epicardium) at ED. So a contoured image is scored for what was drawn
on it: the endocardium as predicted LVBP against the inside of the i-contour, the epicardium as
predicted LVBP + LVM against the inside of the o-contour. RV labels are not scored. This is how
the Sunnybrook challenge reports its results (per image, then averaged).

Layout read (``cmrsdk evaluate --data DIR``): ``DIR/link.csv`` (patient_id, original_id), the
DICOM series ``DIR/<patient_id>/`` and the contours ``DIR/contours/<original_id>/``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ReadError
from .labels import LVBP, LVM
from .pipeline import Pipeline, Segmentation
from .types import Study

__all__ = [
    "ContourScore",
    "is_sunnybrook_root",
    "sunnybrook_cases",
    "score_contours",
    "segment_contoured",
    "evaluate_sunnybrook",
]


@dataclass(frozen=True)
class ContourScore:
    """One contoured image's score: ``surface`` is "endocardium" or "epicardium", Dice in [0, 1]."""

    case: str
    phase: int
    slice: int
    surface: str
    dice: float
    region: str


def is_sunnybrook_root(path: str | Path) -> bool:
    """Whether ``path`` holds Sunnybrook's layout (link.csv and contours/)."""
    path = Path(path)
    return (path / "link.csv").is_file() and (path / "contours").is_dir()


def sunnybrook_cases(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(patient id, DICOM folder, contour folder) for every row of ``root/link.csv``."""
    root = Path(root)
    link = root / "link.csv"
    try:
        with link.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReadError(link, f"cannot be read as CSV ({exc})") from exc
    if not header:
        raise ReadError(link, "is empty: expected the header 'patient_id,original_id' and a row per series")
    if not rows:
        raise ReadError(
            link,
            f"holds no rows under its header {','.join(header)!r}: expected a row (patient_id, original_id) per series",
        )
    cases = []
    for row in rows:
        patient, original = (row.get("patient_id") or "").strip(), (row.get("original_id") or "").strip()
        if not patient or not original:
            raise ReadError(link, f"row {row} lacks 'patient_id' or 'original_id'")
        series, contours = root / patient, root / "contours" / original
        if not series.is_dir() or not contours.is_dir():
            raise ReadError(link, f"row {patient},{original}: {series} or {contours} is not a folder")
        cases.append((patient, series, contours))
    return cases


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = int(prediction.sum()) + int(truth.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def score_contours(
    case: str, phase: int, predicted: np.ndarray, truth: np.ndarray, regions: np.ndarray | None = None
) -> list[ContourScore]:
    """Scores of one phase's contoured images.

    Parameters
    ----------
    predicted : uint8 (Z, Y, X) canonical labels of the pipeline.
    truth : uint8 (Z, Y, X) labels of `cmrsdk.io.read_sunnybrook` (LVBP inside the i-contour, LVM
        between the o- and i-contours; 0 on images without contours).
    regions : uint8 (Z,) the pipeline's regions (recorded beside each score), or None.
    """
    names = {0: "non-cardiac", 1: "base", 2: "middle", 3: "apex"}
    scores = []
    for z in range(truth.shape[0]):
        region = names[int(regions[z])] if regions is not None else ""
        endo = truth[z] == LVBP
        epi = endo | (truth[z] == LVM)
        if endo.any():
            scores.append(ContourScore(case, phase, z, "endocardium", _dice(predicted[z] == LVBP, endo), region))
        if (truth[z] == LVM).any():  # an o-contour was drawn on this image
            pred_epi = (predicted[z] == LVBP) | (predicted[z] == LVM)
            scores.append(ContourScore(case, phase, z, "epicardium", _dice(pred_epi, epi), region))
    return scores


def segment_contoured(pipeline: Pipeline, study: Study) -> dict[int, Segmentation]:
    """The segmentation of each contoured phase of a Sunnybrook ``study`` (`read_sunnybrook`), by
    phase index: the contoured phases (ED with o-contours, ES) segmented as one study, as
    `cmrsdk segment` segments a study (the heart located and the regions named once, on ED)."""
    contoured = [t for t, stack in enumerate(study.phases) if stack.labels is not None]
    pair = Study(
        phases=tuple(study.phases[t] for t in contoured),
        ed_index=contoured.index(study.ed_index) if study.ed_index in contoured else None,
        es_index=contoured.index(study.es_index) if study.es_index in contoured else None,
        info=study.info,
    )
    return dict(zip(contoured, pipeline.segment_study(pair).phases))


def evaluate_sunnybrook(
    pipeline: Pipeline,
    root: str | Path,
    *,
    progress: bool = True,
    cases: list[tuple[str, Path, Path]] | None = None,
) -> list[ContourScore]:
    """Segment the contoured phases of the Sunnybrook cases under ``root`` (`segment_contoured`)
    and score each image.

    ``cases`` : (case name, DICOM folder, contour folder) to score instead of ``root``'s
    `sunnybrook_cases` (several roots in one table, their names made distinct by the caller).
    """
    from .io.sunnybrook import read_sunnybrook

    listed = sunnybrook_cases(root) if cases is None else cases
    if progress:
        from tqdm import tqdm

        listed = tqdm(listed, unit="series", desc="sunnybrook")
    scores: list[ContourScore] = []
    for patient, series, contours in listed:
        study: Study = read_sunnybrook(series, contours)
        for t, result in segment_contoured(pipeline, study).items():
            truth = study.phases[t].labels
            if truth is not None:  # always: the contoured phases
                scores += score_contours(patient, t, result.labels, truth, result.regions)
    return scores


def summarise(scores: list[ContourScore]) -> list[dict[str, object]]:
    """Per case and surface: images scored, mean, minimum Dice (%) and the images below 92 %."""
    rows: list[dict[str, object]] = []
    for case in sorted({s.case for s in scores}):
        for surface in ("endocardium", "epicardium"):
            d = np.array([s.dice for s in scores if s.case == case and s.surface == surface], np.float64)
            if d.size:
                rows.append(
                    {
                        "case": case,
                        "surface": surface,
                        "images": int(d.size),
                        "mean": float(np.nanmean(d) * 100),
                        "min": float(np.nanmin(d) * 100),
                        "below_92": int((d < 0.92).sum()),
                    }
                )
    return rows
