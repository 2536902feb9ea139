"""Summarise `cmrsdk evaluate` folders side by side, one line per method, as docs/RESULTS.md quotes them.

    python scripts/compare_results.py docs/results/shipped/acdc_heldout@eac786f docs/results/shipped/acdc_heldout

Each argument is an output folder of `cmrsdk evaluate`, optionally ``@REV`` to read it from a git
revision. Per method: mean slice Dice % per ground-truth region (base / middle / apex) and label
(LVBP / LVM / RVBP), slices where the label is absent from both masks left out; "all": every
scored (slice, label) pooled, non-cardiac slices included (a structure drawn there scores 0);
"zeros": scored (slice, label) pairs at 0 on cardiac slices; LVEF and RVEF bias [95 % limits].
"""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from pathlib import Path

LABELS = ("LVBP", "LVM", "RVBP")


def _read(folder: str, name: str, rev: str | None) -> list[dict[str, str]]:
    if rev:
        text = subprocess.run(["git", "show", f"{rev}:{folder}/{name}"], capture_output=True, text=True).stdout
    else:
        path = Path(folder) / name
        text = path.read_text() if path.is_file() else ""
    return list(csv.DictReader(io.StringIO(text)))


def _mean(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else math.nan


def summarise(spec: str) -> list[str]:
    folder, _, rev = spec.partition("@")
    rows, agreement = _read(folder, "slice_dice.csv", rev or None), _read(folder, "agreement.csv", rev or None)
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        scored = [(int(r["region"]), label, float(r[f"dice_{label}"])) for r in mine for label in LABELS]
        scored = [s for s in scored if not math.isnan(s[2])]
        regions = " | ".join(
            f"{name} "
            + " / ".join(f"{_mean([d for g, lab, d in scored if g == code and lab == label]):.2f}" for label in LABELS)
            for code, name in ((1, "base"), (2, "middle"), (3, "apex"))
        )
        zeros = sum(1 for g, _, d in scored if g > 0 and d == 0.0)
        ef = " ".join(
            f"{q.split('_')[0].upper()} {float(a['bias']):+.2f} [{float(a['loa_low']):+.1f}, {float(a['loa_high']):+.1f}]"
            for a in agreement
            if a["method"] == method
            for q in (a["quantity"],)
            if q in ("lvef_pct", "rvef_pct")
        )
        lines.append(
            f"{spec:45s} {method:9s} {regions} | all {_mean([d for _, _, d in scored]):.2f} | zeros {zeros} | {ef}"
        )
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        print("\n".join(summarise(arg)))
