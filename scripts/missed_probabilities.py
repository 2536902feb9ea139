"""What a U-Net's own probabilities hold on the label-slices the pipeline leaves empty.

A slice where the annotators drew a structure and the pipeline drew none (a miss) could be a
decision the network got nearly right -- a probability just under the argmax, or pixels the
clean-up took away -- or one it did not make at all. This measures which, on development-fold
bundles (scripts/dev_fold.sh) and the patients each never saw: per structure, the misses
against the slices both left empty, by how many pixels the baseline U-Net's argmax drew before
the clean-up and by the largest probability it gave the structure anywhere in the heart crop.
An inference rule (a threshold, a prior, a looser clean-up) can only recover misses whose
probabilities stand apart from the correctly empty slices': the AUC says how far they do.

    python scripts/missed_probabilities.py --fold BUNDLE PATIENT_FOLDER... [--fold ...] [--csv OUT.csv]

Works on ACDC patient folders and bundles with regions from the segmentation (one U-Net pass
per phase on the heart crop); reads the pipeline's probabilities by wrapping its U-Net call,
a probe, not a product path.
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from cmrsdk import Pipeline
from cmrsdk.io import read_study
from cmrsdk.labels import LVBP, LVM, RVBP

STRUCTURES = {"LVBP": LVBP, "LVM": LVM, "RVBP": RVBP}


def crop_passes(pipeline: Pipeline, study) -> tuple[object, list[np.ndarray]]:
    """``pipeline.segment_study(study)`` and the float32 (Z, C, H, W) probabilities of each
    phase's full-stack U-Net pass on the heart crop, ED first (the order the study is segmented
    in), before slices without heart are emptied."""
    passes: list[np.ndarray] = []
    run = pipeline._unet

    def recorded(name: str, images: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        out = run(name, images, index)
        if index is None or len(index) == images.shape[0]:
            passes.append(out.copy())
        return out

    pipeline._unet = recorded  # a probe, not a product path
    try:
        result = pipeline.segment_study(study)
    finally:
        del pipeline._unet
    crop = min(p.shape[-1] for p in passes)  # the heart search runs on the full window first
    return result, [p for p in passes if p.shape[-1] == crop]


def rows_of(bundle: str, folder: str, pipeline: Pipeline) -> list[dict]:
    case = folder.rstrip("/").split("/")[-1]
    result, passes = crop_passes(pipeline, read_study(folder))
    if len(passes) != 2:
        raise SystemExit(f"{folder}: expected one heart-crop pass for each of ED and ES, got {len(passes)}")
    rows = []
    for phase, seg, probabilities in (("ED", result.ed, passes[0]), ("ES", result.es, passes[1])):
        for z in range(seg.labels.shape[0]):
            argmax = probabilities[z].argmax(0)
            for name, code in STRUCTURES.items():
                rows.append(
                    dict(
                        bundle=bundle,
                        case=case,
                        phase=phase,
                        slice=z,
                        label=name,
                        manual_px=int((seg.stack.labels[z] == code).sum()),
                        drawn_px=int((seg.labels[z] == code).sum()),
                        network_px=int((argmax == code).sum()),
                        max_probability=round(float(probabilities[z, code].max()), 4),
                    )
                )
    return rows


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney U / n1 n2)."""
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(greater / (len(positive) * len(negative)))


def summary(rows: list[dict]) -> str:
    lines = [
        "| label | misses | of them in the network's argmax before the clean-up | max probability on misses, median [q25, q75] "
        "| slices both left empty | max probability there, median [q25, q75] | AUC, misses against empty |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in STRUCTURES:
        mine = [r for r in rows if r["label"] == name and r["drawn_px"] == 0]
        missed = [r for r in mine if r["manual_px"] > 0]
        empty = [r for r in mine if r["manual_px"] == 0]
        p_miss = np.array([r["max_probability"] for r in missed])
        p_empty = np.array([r["max_probability"] for r in empty])

        def spread(p: np.ndarray) -> str:
            return "-" if not len(p) else "{:.3f} [{:.3f}, {:.3f}]".format(*np.quantile(p, [0.5, 0.25, 0.75]))

        cleaned = sum(r["network_px"] > 0 for r in missed)
        lines.append(
            f"| {name} | {len(missed)} | {cleaned} | {spread(p_miss)} | {len(empty)} | {spread(p_empty)} "
            f"| {auc(p_miss, p_empty):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fold", nargs="+", action="append", required=True, metavar="BUNDLE PATIENT_FOLDER")
    parser.add_argument("--csv", metavar="OUT", help="every label-slice's pixel counts and largest probability")
    args = parser.parse_args()
    rows: list[dict] = []
    for bundle, *patients in args.fold:
        pipeline = Pipeline(bundle, systolic_base=False, threads=2)
        for folder in patients:
            rows += rows_of(bundle, folder, pipeline)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    bundles = len(args.fold)
    cases = len({(r["bundle"], r["case"]) for r in rows})
    print(f"{bundles} bundles, {cases} patient segmentations (ED and ES); slices the pipeline drew empty:\n")
    print(summary(rows))


if __name__ == "__main__":
    main()
