"""A measurement probe, not a product path: the probability mean of two bundles' baseline U-Nets
(the shipped one and a candidate of the same preprocessing), routed, on held-out ACDC and M&Ms.

Does model diversity, unlike test-time flips, move the first and last slices' decisions?
(docs/RESULTS.md, Session 18.) It replaces the shipped pipeline's engine call, so both bundles
run on every slice, heart search included.

    python scripts/ensemble_probe.py runs/bundle_s16    # results in runs/eval_ens/{acdc,mnms}
"""

import sys
from pathlib import Path

from cmrsdk import Pipeline
from cmrsdk.cli import _case_folders
from cmrsdk.evaluation import evaluate, write_evaluation
from cmrsdk.io import read_study

a = Pipeline("cmrsdk/demo/bundle", threads=2)
b = Pipeline(sys.argv[1], threads=2)
ea, eb = a._engines["baseline"], b._engines["baseline"]
run_a = ea.run
ea.run = lambda x: 0.5 * (run_a(x) + eb.run(x))  # the engine's other attributes stay A's
for name, root, every in [("acdc", "../shared/data/acdc/training", 5), ("mnms", "../shared/data/mnms", 1)]:
    folders = _case_folders(Path(root), every)
    result = evaluate({"routed": a}, ((f.name, read_study(f)) for f in folders))
    write_evaluation(result, f"runs/eval_ens/{name}", baseline="baseline", title="ensemble probe")
print("done")
