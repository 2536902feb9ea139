"""Regional evaluation in the manner of the paper: slice Dice by region, Tables 1-3, Figure 2.

One concept per module:

- `cmrsdk.evaluation.stats`: per-slice scores and the statistics grouped from them (pure);
- `cmrsdk.evaluation.figures`: the PNG figures (matplotlib);
- `cmrsdk.evaluation.tables`: CSV files and Markdown tables;
- `cmrsdk.evaluation.sources`: region sources of the evaluation side (the ground truth's);
- `cmrsdk.evaluation.cases`: the case folders read and skipped, the ground truth each must hold;
- `cmrsdk.evaluation.output`: the output folder, replaced whole or not at all;
- `cmrsdk.evaluation.runner`: `evaluate` (segment and score) and `write_evaluation` (the report).

The names below are re-exported here, where callers import them from.
"""

from __future__ import annotations

from .figures import save_bland_altman, save_dice_along_heart
from .runner import EvaluationResult, evaluate, write_evaluation
from .sources import ground_truth_regions
from .stats import (
    MIN_SUBJECTS,
    SIGNIFICANCE,
    STRUCTURE_NAMES,
    SliceScore,
    agreement,
    case_scores,
    classifier_table,
    dice_along_heart,
    false_positive_ml,
    improvement_table,
    regional_table,
    score_stack,
    zero_dice_table,
)
from .tables import markdown_table, write_csv

__all__ = [
    "SIGNIFICANCE",
    "MIN_SUBJECTS",
    "STRUCTURE_NAMES",
    "SliceScore",
    "score_stack",
    "zero_dice_table",
    "regional_table",
    "classifier_table",
    "improvement_table",
    "dice_along_heart",
    "agreement",
    "case_scores",
    "false_positive_ml",
    "write_csv",
    "markdown_table",
    "save_dice_along_heart",
    "save_bland_altman",
    "ground_truth_regions",
    "EvaluationResult",
    "evaluate",
    "write_evaluation",
]
