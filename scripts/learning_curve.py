"""Stage 37's learning curve: development-fold Dice against the number of training patients.

Each run is a ``scripts/dev_fold.py --slices`` CSV of one fold, trained on ``n`` patients (the
fold's 68, or a nested subset, ``[data] train_patients``). Runs of one fold are scored on the
same label-slices: the union of those any of them scored, a label-slice a run did not score
counting as Dice 1 (the label is in neither its mask nor the manual one), as
``scripts/compare_folds.py`` pairs them.

Per region and label, a line fitted by least squares to every run's mean slice Dice against
log2(n), with one intercept per fold, gives the points gained per doubling of the training
patients; the two seeds at 68 patients (stages 31 and 34) give the seed's spread beside it, and
the paired 68-against-17 difference its patient-bootstrap interval. Prints a Markdown table.

    python scripts/learning_curve.py \\
        --run fold1 17 docs/results/dev_folds/n17_slices_0.csv --run fold1 68 .../ref_slices_0.csv ...

Without ``--run``, the stage's runs in docs/results/dev_folds/ that exist are taken.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_folds import LABELS, REGIONS, Key, bootstrap, paired_differences, read_slices  # noqa: E402

#: the paper's training studies (section 3), for the doublings it had above a fold's 68 patients
PAPER_TRAINING_STUDIES = 3382
#: (fold, training patients, CSV) of stage 37 and its 68-patient references, two seeds each
STAGE_37 = [
    ("fold1", 17, "n17_slices_0.csv"),
    ("fold1", 34, "n34_slices_0.csv"),
    ("fold1", 68, "ref_slices_0.csv"),
    ("fold1", 68, "seed1_slices_0.csv"),
    ("fold2", 17, "n17_slices_10.csv"),
    ("fold2", 34, "n34_slices_10.csv"),
    ("fold2", 68, "ref_slices_10.csv"),
    ("fold2", 68, "seed1_slices_10.csv"),
]
Run = tuple[str, int, str]  # fold, training patients, CSV path


def scored(runs: list[Run]) -> list[tuple[str, int, str, dict[Key, float]]]:
    """Each run's Dice on its fold's union of label-slices (1.0 where it left a label-slice empty)."""
    tables = [(fold, n, path, read_slices(path)) for fold, n, path in runs]
    union: dict[str, set[Key]] = defaultdict(set)
    for fold, _, _, table in tables:
        union[fold] |= set(table)
    return [(fold, n, path, {k: table.get(k, 1.0) for k in union[fold]}) for fold, n, path, table in tables]


def mean_dice(table: dict[Key, float], region: int | None, label: str | None) -> float:
    """Mean slice Dice (0..1) over the label-slices of one region and label (None: all)."""
    values = [d for k, d in table.items() if (region is None or k[3] == region) and (label is None or k[4] == label)]
    return float(np.mean(values)) if values else float("nan")


def slope_per_doubling(points: list[tuple[str, int, float]]) -> float:
    """Least-squares slope of value against log2(n), one intercept per fold (points: fold, n, value)."""
    folds = sorted({f for f, _, _ in points})
    design = np.array([[np.log2(n)] + [float(f == g) for g in folds] for f, n, _ in points])
    values = np.array([v for _, _, v in points])
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    return float(coefficients[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", nargs=3, action="append", metavar=("FOLD", "N", "CSV"), help="one run; repeat for each"
    )
    parser.add_argument("--folder", default="docs/results/dev_folds", help="where the stage's runs are, without --run")
    args = parser.parse_args()
    if args.run:
        runs = [(fold, int(n), path) for fold, n, path in args.run]
    else:
        runs = [
            (f, n, str(Path(args.folder) / name)) for f, n, name in STAGE_37 if (Path(args.folder) / name).is_file()
        ]
    if len({n for _, n, _ in runs}) < 2:
        raise SystemExit("a learning curve needs runs with at least two numbers of training patients")
    tables = scored(runs)
    rows = [("all label-slices", None, None)] + [
        (f"{name} {label}", region, label) for region, name in REGIONS.items() for label in LABELS
    ]
    header = [f"{fold} n={n}" for fold, n, _, _ in tables]
    print("Mean slice Dice %, each fold's 12 unseen patients; slope: points per doubling of the training patients")
    print()
    print(
        "| region, label | " + " | ".join(header) + " | slope / doubling | 68 - 17, paired [95 %] | seed spread at 68 |"
    )
    print("|---|" + "---:|" * (len(header) + 3))
    for name, region, label in rows:
        values = [100 * mean_dice(table, region, label) for _, _, _, table in tables]
        slope = slope_per_doubling([(fold, n, v) for (fold, n, _, _), v in zip(tables, values)])
        # paired 68 - 17 over the folds that have both (seed 0 at 68: the first 68 run of each fold)
        differences: dict[Key, float] = {}
        spreads = []
        for fold in sorted({f for f, _, _, _ in tables}):
            at = defaultdict(list)
            for f, n, _, table in tables:
                if f == fold:
                    at[n].append(table)
            if at.get(17) and at.get(68):
                diff = paired_differences(at[17][0], at[68][0])
                differences |= {
                    k: d
                    for k, d in diff.items()
                    if (region is None or k[3] == region) and (label is None or k[4] == label)
                }
            if len(at.get(68, [])) >= 2:
                spreads.append(100 * (mean_dice(at[68][1], region, label) - mean_dice(at[68][0], region, label)))
        paired = "–"
        if differences:
            mean, low, high = bootstrap(differences)
            paired = f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
        spread = ", ".join(f"{s:+.2f}" for s in spreads) or "–"
        cells = " | ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {cells} | {slope:+.2f} | {paired} | {spread} |")
    doublings = np.log2(PAPER_TRAINING_STUDIES / 68)
    print()
    print(
        f"The paper trained on {PAPER_TRAINING_STUDIES} studies: {doublings:.1f} doublings above a fold's 68 patients."
    )
    print("Runs: " + "; ".join(f"{fold} n={n}: {Path(path).name}" for fold, n, path in runs))


if __name__ == "__main__":
    main()
