"""Try the ES basal RV rule (cmrsdk.systole) at several ratios on labelled ACDC patients.

A rule for the network's errors on unseen patients must be designed on patients the network did
not train on: run this with development-fold bundles (scripts/dev_fold.sh: U-Nets trained on 68
patients each) on the 12 each never saw. With the shipped bundle on its own training patients it
shows how often the rule drops a true RV where the masks are near-manual.

    python scripts/dev_fold.py --fold BUNDLE PATIENT_FOLDER... [--fold BUNDLE ...] [--ratios 0.3 0.4 0.5]
        [--slices SLICES.csv] [--apical-rv-weight W] [--locate-with LOCATOR_BUNDLE ...]
        [--ensemble-with BUNDLE ...] [--segment-spacing MM] [--slice-gap-mm MM|off]

Prints mean slice Dice (%) per region and label, the foreground volume drawn on slices the
annotators left empty (mL per study, ED + ES), (regions from the manual labels, as `cmrsdk
evaluate`) with its number of label-slices, all slices, per fold and, with several, over all of
them; and every slice the rule drops with its ES / ED RV pixels and the manual RV pixels there
(0: atrium, rightly dropped). With ``--locate-with`` (one bundle per fold, same
preprocessing), the heart is found by that bundle's baseline U-Net and segmented by the fold's
(stage 32b: a U-Net trained on heart-centred patches is a poor locator on the full window).
With ``--ensemble-with`` (one bundle per fold, same window), the fold's baseline U-Net's
probabilities are averaged with that bundle's on every slice, heart search included (stage 34b: a
second training seed). With ``--segment-spacing``, the pipeline segments on that finer grid
(`cmrsdk.grid`, Session 32). With ``--slice-gap-mm``, the clean-up re-attaches a lost slice's
piece within that many mm of the structure next to it (``off``: by centroids alone; Session 34).
With ``--slices``, every label-slice's Dice at the shipped ratio
(`SYSTOLIC_BASE_RATIO`) goes to a CSV, so that two recipes can later be compared slice by slice
(scripts/compare_folds.py) when their bundles are gone.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict

import numpy as np

from cmrsdk import Pipeline, preprocess
from cmrsdk.evaluation.stats import false_positive_ml, score_stack
from cmrsdk.io import read_study
from cmrsdk.labels import RVBP
from cmrsdk.regions import index_toward_apex
from cmrsdk.systole import SYSTOLIC_BASE_RATIO, drop_systolic_atrium

LABELS = ("LVBP", "LVM", "RVBP")


def summary(scores: list) -> str:
    by: dict[tuple[int, int], list[float]] = defaultdict(list)
    every: list[float] = []
    for s in scores:
        for j in range(3):
            if not np.isnan(s.dice[j]):
                by[(s.region, j)].append(s.dice[j])
                every.append(s.dice[j])
    # the slice counts let folds scored apart be pooled later, when their bundles are gone
    cells = [
        " / ".join(f"{100 * np.mean(by[(r, j)]):.1f}" for j in range(3))
        + f" (n {'/'.join(str(len(by[(r, j)])) for j in range(3))})"
        for r in (1, 2, 3)
    ]
    return f"all {100 * np.mean(every):.2f} (n {len(every)}) | base {cells[0]} | middle {cells[1]} | apex {cells[2]}"


def write_slices(folds: list, path: str) -> None:
    """One row per label-slice scored (bundle, case, phase, slice, region, label, dice), at the shipped ratio."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["bundle", "case", "phase", "slice", "region", "label", "dice"])
        for bundle, studies in folds:
            for case, ed, es in studies:
                labels, _ = drop_systolic_atrium(
                    ed.labels, es.labels, ratio=SYSTOLIC_BASE_RATIO, toward_apex=index_toward_apex(ed.stack.affine)
                )
                for phase, predicted, manual in (("ED", ed.labels, ed.stack.labels), ("ES", labels, es.stack.labels)):
                    for s in score_stack(predicted, manual, method="m", case=case, phase=phase):
                        for j, name in enumerate(LABELS):
                            if not np.isnan(s.dice[j]):
                                out.writerow([bundle, case, phase, s.slice_index, s.region, name, f"{s.dice[j]:.4f}"])


def _window(pipeline: Pipeline, *ignored: str) -> dict:
    """The bundle's preprocessing (the window its U-Nets see), less the keys ``ignored``."""
    return {k: v for k, v in pipeline.bundle.manifest["preprocessing"].items() if k not in ignored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fold", nargs="+", action="append", required=True, metavar="BUNDLE PATIENT_FOLDER")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.35, 0.4, 0.45, 0.5])
    parser.add_argument("--slices", metavar="CSV", help="write each label-slice's Dice at the shipped ratio here")
    parser.add_argument(
        "--apical-rv-weight", type=float, default=None, metavar="W", help="the pipeline's apical RV prior (cmrsdk.apex)"
    )
    parser.add_argument("--locate-with", nargs="+", metavar="BUNDLE", help="per fold, the bundle that finds the heart")
    parser.add_argument(
        "--ensemble-with",
        nargs="+",
        metavar="BUNDLE",
        help="per fold, a bundle whose baseline's probabilities are averaged in",
    )
    parser.add_argument(
        "--segment-spacing", type=float, default=None, metavar="MM", help="the grid the U-Nets segment on (cmrsdk.grid)"
    )
    parser.add_argument(
        "--slice-gap-mm",
        default=None,
        metavar="MM|off",
        help="the clean-up's re-attachment gap (cmrsdk.preprocess.MAX_SLICE_GAP_MM); off: centroids alone",
    )
    args = parser.parse_args()
    if args.slice_gap_mm is not None:  # a probe of the clean-up's rule, for this run only
        preprocess.MAX_SLICE_GAP_MM = None if args.slice_gap_mm == "off" else float(args.slice_gap_mm)
    if args.locate_with and len(args.locate_with) != len(args.fold):
        parser.error(f"--locate-with names {len(args.locate_with)} bundles for {len(args.fold)} folds")
    if args.ensemble_with and len(args.ensemble_with) != len(args.fold):
        parser.error(f"--ensemble-with names {len(args.ensemble_with)} bundles for {len(args.fold)} folds")
    folds = []
    for i, (bundle, *patients) in enumerate(args.fold):
        rules = {} if args.apical_rv_weight is None else {"apical_rv_weight": args.apical_rv_weight}
        pipeline = Pipeline(bundle, systolic_base=False, threads=2, segment_spacing=args.segment_spacing, **rules)
        if args.locate_with:
            locator = Pipeline(args.locate_with[i], systolic_base=False, threads=2)
            # how the locator searches its pass (heart_search) is its own; the window must agree
            if _window(locator, "heart_search") != _window(pipeline, "heart_search"):
                parser.error(f"{args.locate_with[i]} and {bundle} preprocess differently: one window cannot serve both")
            pipeline._locate = locator._locate  # a probe: the pipeline has no locator of its own (yet)
        if args.ensemble_with:
            other = Pipeline(args.ensemble_with[i], systolic_base=False, threads=2)
            if _window(other) != _window(pipeline):
                parser.error(
                    f"{args.ensemble_with[i]} and {bundle} preprocess differently: one window cannot serve both"
                )
            mine, theirs = pipeline._engines[pipeline._baseline], other._engines[other._baseline]
            run_mine = mine.run
            mine.run = lambda x, a=run_mine, b=theirs.run: 0.5 * (a(x) + b(x))  # a probe, not a product path
        studies = []
        for folder in patients:
            result = pipeline.segment_study(read_study(folder))
            studies.append((folder.rstrip("/").split("/")[-1], result.ed, result.es))
        folds.append((bundle, studies))
    if args.slices:
        write_slices(folds, args.slices)
    if len(folds) > 1:
        folds.append(("all folds", [s for _, studies in folds for s in studies]))
    for name, studies in folds:
        print(f"{name}: {len(studies)} patients")
        for ratio in [0.0, *args.ratios]:
            scores, dropped, false_ml = [], [], []
            for case, ed, es in studies:
                labels, z = drop_systolic_atrium(
                    ed.labels, es.labels, ratio=ratio, toward_apex=index_toward_apex(ed.stack.affine)
                )
                if z is not None:
                    rv = [int((m[z] == RVBP).sum()) for m in (es.labels, ed.labels, es.stack.labels)]
                    dropped.append(f"{case} ES slice {z}: {rv[0]} / {rv[1]} px, manual {rv[2]}")
                scores += score_stack(ed.labels, ed.stack.labels, method="m", case=case, phase="ED")
                scores += score_stack(labels, es.stack.labels, method="m", case=case, phase="ES")
                false_ml.append(
                    false_positive_ml(ed.labels, ed.stack.labels, ed.stack.spacing)
                    + false_positive_ml(labels, es.stack.labels, es.stack.spacing)
                )
            print(f"  ratio {ratio:.2f}: {summary(scores)} | false positive {np.mean(false_ml):.2f} mL per study")
            for line in dropped:
                print(f"      dropped {line}")


if __name__ == "__main__":
    main()
