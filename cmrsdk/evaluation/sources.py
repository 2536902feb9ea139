"""Region sources of the evaluation side: regions known from elsewhere than the pipeline.

A region source (`cmrsdk.pipeline.RegionSource`) is handed to `cmrsdk.Pipeline.segment` (or to
`cmrsdk.evaluation.evaluate` per method) and routes a routed pipeline's slices instead of its
classifier. ``export.experiment.StoredRegions`` (another classifier's stored predictions) is one;
`ground_truth_regions` -- routing by the ground truth, the upper bound of routing, the paper's
"oracle" -- is the other.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..regions import slice_regions
from ..types import Stack

__all__ = ["ground_truth_regions"]


def ground_truth_regions(stack: Stack, images: np.ndarray | None = None) -> np.ndarray:
    """The ground-truth region of every slice of a labelled stack (a `RegionSource`).

    Parameters
    ----------
    stack : a `Stack` whose ``labels`` hold the ground truth, uint8 (Z, Y, X) canonical labels.
    images : the preprocessed slices the pipeline hands every region source; not used.

    Returns
    -------
    uint8 (Z,) region codes by the rule of `cmrsdk.regions.slice_regions` (0 non-cardiac,
    1 base, 2 middle, 3 apex); region codes, not probabilities, so the pipeline routes by them
    as they are.

    Raises
    ------
    InputError
        The stack carries no labels.
    """
    if stack.labels is None:
        raise InputError(
            f"routing by the ground truth (the oracle) needs ground-truth labels on the stack "
            f"({stack.source or 'array'} has none)"
        )
    return slice_regions(stack.labels)


ground_truth_regions.name = "ground truth"  # type: ignore[attr-defined]
