"""Compare two recipes slice by slice on the development folds, with patient-level bootstrap intervals.

A development fold scores 12 patients: a region and label holds 25-130 label-slices, and one
apical RV slice moves its mean by 4 points. Two runs of one recipe differ by about that much, so
the difference of two means says little alone. This pairs the label-slices of a candidate and a
reference (written by ``scripts/dev_fold.py --slices``), takes their Dice differences, and
resamples patients (not slices: a patient's slices share its anatomy and its errors) for a 95 %
interval of the mean difference, per region and label and over all label-slices.

A label-slice scored in one run only (the label absent from the manual slice, drawn in one run
and not the other) counts as Dice 1 where it was not drawn: leaving it empty was right.

    python scripts/compare_folds.py REFERENCE.csv CANDIDATE.csv [--draws 2000] [--method routed]

Either file may also be a ``cmrsdk evaluate`` ``slice_dice.csv`` (held-out sets), of which
``--method`` picks the rows. Several folds pool as comma-joined lists, in the same order on both
sides (their patients must differ):

    python scripts/compare_folds.py ref_slices_0.csv,ref_slices_10.csv chiral_slices_0.csv,chiral_slices_10.csv

Prints, per row: mean difference (candidate - reference, points of Dice %), its 95 % interval,
and the number of label-slices and patients.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict

import numpy as np

REGIONS = {1: "base", 2: "middle", 3: "apex"}
LABELS = ("LVBP", "LVM", "RVBP")
Key = tuple[str, str, int, int, str]  # case, phase, slice, region, label


def read_slices(path: str, method: str = "routed") -> dict[Key, float]:
    """Label-slice Dice (0..1) by (case, phase, slice, region, label).

    Reads a ``scripts/dev_fold.py --slices`` CSV (one row per label-slice) or a ``cmrsdk
    evaluate`` ``slice_dice.csv`` (one row per slice and method, ``dice_<label>`` columns, NaN where
    the label is in neither mask; ``method`` picks its rows), so held-out runs pair the same way.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "dice" in rows[0]:
        return {(r["case"], r["phase"], int(r["slice"]), int(r["region"]), r["label"]): float(r["dice"]) for r in rows}
    if rows and "method" in rows[0]:
        out = {}
        for r in rows:
            if r["method"] != method:
                continue
            for label in LABELS:
                dice = float(r[f"dice_{label}"])
                if not np.isnan(dice):
                    out[(r["case"], r["phase"], int(r["slice_index"]), int(r["region"]), label)] = dice
        if not out:
            raise SystemExit(f"{path}: no rows of method {method!r}")
        return out
    raise SystemExit(f"{path}: neither a dev_fold.py --slices CSV nor a cmrsdk evaluate slice_dice.csv")


def read_folds(paths: str, method: str = "routed") -> dict[Key, float]:
    """:func:`read_slices` of each comma-separated path, pooled; a label-slice in two of them is an error."""
    pooled: dict[Key, float] = {}
    for path in paths.split(","):
        part = read_slices(path, method)
        if twice := set(part) & set(pooled):
            raise SystemExit(f"{path}: {len(twice)} label-slices already read from another fold, e.g. {min(twice)}")
        pooled |= part
    return pooled


def paired_differences(reference: dict[Key, float], candidate: dict[Key, float]) -> dict[Key, float]:
    """Candidate minus reference Dice per label-slice scored in either (1.0 where one left it empty)."""
    return {k: candidate.get(k, 1.0) - reference.get(k, 1.0) for k in sorted(set(reference) | set(candidate))}


def bootstrap(differences: dict[Key, float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the mean difference, patients resampled with replacement.

    Each draw takes as many patients as there are, and the mean over all their label-slices, so
    a patient with more slices weighs more, as in the pooled mean itself.
    """
    by_case: dict[str, list[float]] = defaultdict(list)
    for key, d in differences.items():
        by_case[key[0]].append(d)
    cases = sorted(by_case)
    sums = np.array([sum(by_case[c]) for c in cases])
    counts = np.array([len(by_case[c]) for c in cases])
    mean = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(cases), size=(draws, len(cases)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return mean, float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--method", default="routed", help="rows of a cmrsdk evaluate slice_dice.csv")
    args = parser.parse_args()
    reference, candidate = read_folds(args.reference, args.method), read_folds(args.candidate, args.method)
    differences = paired_differences(reference, candidate)
    rows = [("all label-slices", differences)]
    for region, name in REGIONS.items():
        for label in LABELS:
            part = {k: d for k, d in differences.items() if k[3] == region and k[4] == label}
            if part:
                rows.append((f"{name} {label}", part))
    print(f"{args.candidate} - {args.reference} (points; 95 % interval, patients resampled)")
    for name, part in rows:
        mean, low, high = bootstrap(part, args.draws)
        patients = len({k[0] for k in part})
        print(
            f"  {name:<18} {100 * mean:+6.2f} [{100 * low:+6.2f}, {100 * high:+6.2f}]  (n {len(part)}, {patients} patients)"
        )


if __name__ == "__main__":
    main()
