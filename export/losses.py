"""Segmentation losses: soft Dice + cross-entropy (nnU-Net's), with deep supervision.

The Dice term is nnU-Net's "batch Dice" by default. ``slice_weight`` mixes in a per-slice Dice,
the quantity cmrsdk evaluate reports: it weighs a small apical structure as much as a large
middle one, and a structure drawn on a slice where the annotators drew none scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["soft_dice_loss", "slice_dice_loss", "DiceCELoss", "DeepSupervisionLoss", "downsample_labels"]


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1e-5, include_background: bool = False
) -> torch.Tensor:
    """1 - mean soft Dice over classes, computed over the whole batch at once.

    Parameters
    ----------
    logits : float (N, C, H, W) raw scores.
    target : int64 (N, H, W) label indices in [0, C).
    smooth : added to numerator and denominator, so empty classes score 1 instead of 0/0.
    include_background : also average class 0 (nnU-Net leaves it out).

    Returns
    -------
    scalar tensor in [0, 1].
    """
    probabilities = logits.float().softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
    # "batch Dice": sums over the batch and pixels together, as nnU-Net does for 2D, so a
    # slice without some structure does not count as a 0/0 Dice of its own
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    if not include_background:
        dice = dice[1:]
    return 1 - dice.mean()


def slice_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of each foreground class on each slice, averaged over slices and classes.

    Parameters
    ----------
    logits : float (N, C, H, W) raw scores.
    target : int64 (N, H, W) label indices in [0, C).
    smooth : in pixels, added to numerator and denominator: a class absent from both the slice's
        labels and its prediction scores 1; one drawn over p pixels where none is labelled
        scores 1 / (1 + p).

    Returns
    -------
    scalar tensor in [0, 1].
    """
    probabilities = logits.float().softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
    intersection = (probabilities * one_hot).sum((2, 3))
    denominator = probabilities.sum((2, 3)) + one_hot.sum((2, 3))
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice[:, 1:].mean()


class DiceCELoss(nn.Module):
    """Soft Dice (foreground classes) + cross-entropy, weighted equally as in nnU-Net.

    ``slice_weight`` in [0, 1] moves that share of the Dice term from batch to slice Dice.
    """

    def __init__(self, slice_weight: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= slice_weight <= 1.0:
            raise ValueError(f"slice_weight is {slice_weight}, expected a value in [0, 1]")
        self.slice_weight = slice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits float (N, C, H, W), target int64 (N, H, W) -> scalar loss."""
        dice = soft_dice_loss(logits, target)
        if self.slice_weight > 0:
            dice = (1 - self.slice_weight) * dice + self.slice_weight * slice_dice_loss(logits, target)
        return dice + F.cross_entropy(logits.float(), target)


def downsample_labels(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour downsampling of int64 (N, H, W) labels to (N, h, w)."""
    if tuple(target.shape[-2:]) == tuple(shape):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(shape), mode="nearest")[:, 0].long()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``DiceCELoss`` over the outputs of ``UNet.forward_all``.

    The weights halve at every lower resolution and are normalised to sum to 1
    (nnU-Net: 1, 1/2, 1/4, ...; the lowest of its outputs gets weight 0, we never make one).
    """

    def __init__(self, slice_weight: float = 0.0) -> None:
        super().__init__()
        self.loss = DiceCELoss(slice_weight)

    def forward(self, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """outputs: logits at decreasing resolutions, full first; target int64 (N, H, W)."""
        weights = torch.tensor([0.5**i for i in range(len(outputs))])
        weights = weights / weights.sum()
        return sum(
            float(w) * self.loss(out, downsample_labels(target, out.shape[-2:])) for w, out in zip(weights, outputs)
        )  # type: ignore[return-value]
