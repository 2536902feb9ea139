"""On-the-fly augmentation, vectorised over the batch (torch; CPU or CUDA).

One affine resampling per batch does the patch crop, rotation, scaling and mirroring at once
(``affine_grid`` + ``grid_sample``: bilinear for images, nearest for labels), then gamma and
Gaussian noise act on the intensities. The defaults follow nnU-Net's 2D scheme:

=============  ===========  =============================================
transform      probability  range
=============  ===========  =============================================
rotation       0.2          angle uniform in [-180, 180] degrees
scaling        0.2          factor uniform in [0.7, 1.4] (> 1 zooms out)
mirroring      0.5 per axis flips of Y and of X
gamma          0.3          gamma uniform in [0.7, 1.5], mean and std kept
noise          0.1          Gaussian, variance uniform in [0, 0.1]
=============  ===========  =============================================

Pixels that fall outside the input read 0 (the image) and background (the labels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmrsdk.errors import InputError

__all__ = ["AugmentConfig", "crop_centres", "spatial_transform", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the random transforms (see the module table)."""

    p_rotation: float = 0.2
    max_rotation_deg: float = 180.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_mirror: float = 0.5
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.1
    max_noise_variance: float = 0.1

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No random transform at all (validation, tests)."""
        return cls(p_rotation=0, p_scale=0, p_mirror=0, p_gamma=0, p_noise=0)


def crop_centres(labels: torch.Tensor, patch: tuple[int, int], foreground: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """Patch centres (row, column) in input pixel indices, float64 (B, 2).

    Random centres keep the patch inside the slice where it fits; a sample flagged in
    ``foreground`` (bool (B,)) is centred on one of its foreground pixels chosen at random
    (nnU-Net's forced-foreground crop), or placed at random when it has none.

    Parameters
    ----------
    labels : integer (B, H, W) label maps (CPU).
    patch : (h, w) patch size in pixels.
    foreground : bool (B,) flags.
    generator : CPU generator all random numbers come from.
    """
    b, height, width = labels.shape
    h, w = patch
    low = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    high = torch.tensor([height - 1 - (h - 1) / 2, width - 1 - (w - 1) / 2], dtype=torch.float64)
    # a patch larger than the slice stays centred on the slice's centre
    low, high = torch.minimum(low, (low + high) / 2), torch.maximum(high, (low + high) / 2)
    centres = low + (high - low) * torch.rand(b, 2, generator=generator, dtype=torch.float64)
    centres = centres.round()
    for i in torch.nonzero(foreground.cpu()).flatten().tolist():
        pixels = torch.nonzero(labels[i] > 0)
        if len(pixels):
            pick = int(torch.randint(len(pixels), (1,), generator=generator))
            centres[i] = pixels[pick].to(torch.float64)
    return centres


def spatial_transform(images: torch.Tensor, labels: torch.Tensor | None, patch: tuple[int, int],
                      centres: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor,
                      mirror: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample a ``patch`` around each centre, rotated, scaled and mirrored.

    Parameters
    ----------
    images : float32 (B, C, H, W).
    labels : integer (B, H, W) or None.
    patch : (h, w) output size in pixels.
    centres : float (B, 2) patch centre (row, column) in input pixel indices.
    angle : float (B,) rotation in radians; scale : float (B,) zoom-out factor (1 = none);
    mirror : bool (B, 2) flip of the (Y, X) axes.

    Returns
    -------
    float32 (B, C, h, w) images and int64 (B, h, w) labels (None when ``labels`` is None).
    With angle 0, scale 1, no mirror and integer-aligned centres this is an exact crop.
    """
    b, _, height, width = images.shape
    h, w = patch
    device = images.device
    cos, sin = torch.cos(angle), torch.sin(angle)
    flip = 1.0 - 2.0 * mirror.to(torch.float64)
    # M maps a patch offset (x, y) in pixels to an input offset in pixels: rotation @ scale @ mirror
    m = torch.stack([torch.stack([cos * flip[:, 1], -sin * flip[:, 0]], -1),
                     torch.stack([sin * flip[:, 1], cos * flip[:, 0]], -1)], 1) * scale.view(b, 1, 1)
    # normalised coordinates (align_corners=False): pixel i of n sits at (2 i + 1) / n - 1
    to_norm = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    from_norm = torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64)
    theta = torch.empty(b, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = to_norm.view(1, 2, 1) * m.to(torch.float64) * from_norm.view(1, 1, 2)
    theta[:, 0, 2] = (2 * centres[:, 1] + 1) / width - 1
    theta[:, 1, 2] = (2 * centres[:, 0] + 1) / height - 1
    grid = F.affine_grid(theta.to(device=device, dtype=torch.float32), [b, 1, h, w], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_labels = None
    if labels is not None:
        out_labels = F.grid_sample(labels[:, None].to(device=device, dtype=torch.float32), grid, mode="nearest",
                                   padding_mode="zeros", align_corners=False)[:, 0].round().long()
    return out, out_labels


def augment_batch(images: torch.Tensor, labels: torch.Tensor | None, patch: tuple[int, int],
                  centres: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop ``patch`` around ``centres`` with random spatial and intensity transforms.

    Parameters
    ----------
    images : float32 (B, 1, H, W) normalised slices (on any device).
    labels : integer (B, H, W) or None.
    patch : (h, w) output size in pixels; centres : float (B, 2) (row, column) pixel indices.
    config : probabilities and ranges; generator : CPU generator for every random draw.

    Returns
    -------
    float32 (B, 1, h, w) and int64 (B, h, w) (or None), on the device of ``images``.
    """
    if images.ndim != 4:
        raise InputError(f"'images' must be (B, C, H, W), got shape {tuple(images.shape)}")
    b = images.shape[0]

    def chosen(p: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, dtype=torch.float64) < p

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)

    max_angle = math.radians(config.max_rotation_deg)
    angle = torch.where(chosen(config.p_rotation), uniform(-max_angle, max_angle), torch.zeros(b, dtype=torch.float64))
    scale = torch.where(chosen(config.p_scale), uniform(*config.scale_range), torch.ones(b, dtype=torch.float64))
    mirror = torch.rand(b, 2, generator=generator, dtype=torch.float64) < config.p_mirror
    out, out_labels = spatial_transform(images, labels, patch, centres, angle, scale, mirror)

    device = out.device
    gamma_on = chosen(config.p_gamma).to(device)
    gamma = uniform(*config.gamma_range).to(device=device, dtype=torch.float32)
    noise_on = chosen(config.p_noise).to(device)
    sigma = uniform(0.0, config.max_noise_variance).sqrt().to(device=device, dtype=torch.float32)
    noise = torch.randn(out.shape, generator=generator).to(device)
    if bool(gamma_on.any()):
        flat = out.flatten(1)
        lo, hi = flat.min(1).values.view(b, 1, 1, 1), flat.max(1).values.view(b, 1, 1, 1)
        mean, std = flat.mean(1).view(b, 1, 1, 1), flat.std(1).view(b, 1, 1, 1)
        rng = (hi - lo).clamp_min(1e-7)
        g = ((out - lo) / rng).clamp_min(0) ** gamma.view(b, 1, 1, 1) * rng + lo
        # keep each slice's mean and standard deviation, as nnU-Net's retain_stats does
        gflat = g.flatten(1)
        g = (g - gflat.mean(1).view(b, 1, 1, 1)) / gflat.std(1).view(b, 1, 1, 1).clamp_min(1e-7) * std + mean
        out = torch.where(gamma_on.view(b, 1, 1, 1), g, out)
    out = out + noise * (sigma * noise_on).view(b, 1, 1, 1)
    return out, out_labels
