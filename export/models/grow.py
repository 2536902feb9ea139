"""Grow a trained U-Net into a wider one that computes the same function.

Capacity is the lever left once a U-Net has saturated (docs/RESULTS.md): a wider twin warm-started
this way keeps everything the narrow one learned and trains only what the new channels add,
instead of starting from scratch.

The rule (`grow_unet_weights`), for `export.models.unet.UNet` weights, any stage widened:

- every old weight keeps its place (the leading block of each tensor); a decoder stage's first
  convolution reads [upsampled, skip] concatenated, so its two input blocks move apart;
- the new output channels of each convolution keep the fresh initialisation, but the
  InstanceNorm after them starts with scale and shift 0, so they output exactly 0 at first and
  the next layers' new input weights (fresh) see zeros;
- a transposed convolution has no norm after it: its new output channels start at 0.

Every new weight receives a gradient from the first step on (the norm's scale through the next
layer's fresh weights), so the twin learns from there what its width adds.
"""

from __future__ import annotations

import re

import torch

from cmrsdk.errors import InputError

__all__ = ["grow_unet_weights"]

# a stage's InstanceNorm: the 2nd and 5th module of `_Stage` (conv, norm, relu, conv, norm, relu)
_NORM = re.compile(r"^(encoder|decoder)\.\d+\.[14]\.(weight|bias)$")
_DECODER_IN = re.compile(r"^decoder\.\d+\.0\.weight$")
_UP = re.compile(r"^ups\.\d+\.weight$")


def grow_unet_weights(weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The narrow U-Net's ``weights`` placed into the wider U-Net's freshly initialised ``target``.

    Parameters
    ----------
    weights : state dict of a trained `UNet` (same stage count, in and out channels).
    target : state dict of the wider `UNet` as built (its fresh initialisation fills the new
        weights); not modified.

    Returns
    -------
    A state dict for the wider U-Net, equal to ``weights`` where no shape grew; its ``forward``
    computes the narrow U-Net's function (up to float rounding).

    Raises
    ------
    InputError : a tensor of ``weights`` missing from ``target``, or larger than its twin there.
    """
    grown: dict[str, torch.Tensor] = {}
    for key, want in target.items():
        old = weights.get(key)
        if old is None:
            raise InputError(f"cannot grow U-Net weights: '{key}' is not in the narrow model")
        if old.shape == want.shape:
            grown[key] = old.clone()
            continue
        if old.ndim != want.ndim or any(o > w for o, w in zip(old.shape, want.shape)):
            raise InputError(
                f"cannot grow U-Net weights: '{key}' has shape {tuple(old.shape)}, the wider model "
                f"{tuple(want.shape)} (a model only grows)"
            )
        new = torch.zeros_like(want) if _NORM.match(key) else want.clone()
        if _DECODER_IN.match(key):
            half_old, half_new = old.shape[1] // 2, want.shape[1] // 2
            new[: old.shape[0], :half_old] = old[:, :half_old]
            new[: old.shape[0], half_new : half_new + half_old] = old[:, half_old:]
        else:
            new[tuple(slice(0, n) for n in old.shape)] = old
        if _UP.match(key):
            new[:, old.shape[1] :] = 0.0  # (in, out, k, k): the new output channels start silent
        grown[key] = new
    extra = sorted(set(weights) - set(target))
    if extra:
        raise InputError(f"cannot grow U-Net weights: the wider model has no '{extra[0]}'")
    return grown
