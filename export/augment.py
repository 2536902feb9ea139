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

:meth:`AugmentConfig.cross_vendor` adds what differs between scanners and vendors rather than
between patients (off by default, so the paper's configurations keep nnU-Net's scheme):

=============  ===========  =============================================
transform      probability  range
=============  ===========  =============================================
contrast       0.3          factor uniform in [0.65, 1.5] about the mean
brightness     0.3          shift uniform in [-0.3, 0.3] (robust-SD units)
bias field     0.3          multiplicative, exp of a random quadratic, up to ±0.4
low resolution 0.25         down by uniform [1, 2.5] per axis, back up bilinear
blur           0.2          Gaussian, sigma uniform in [0.5, 1.5] pixels
=============  ===========  =============================================

The paper's data come from 3,382 studies; here 80 patients train the networks, and the networks fit
their first and last slices far better than a new patient's (docs/RESULTS.md, Session 18).
:meth:`AugmentConfig.strong` regularises the shape side too, on top of :meth:`cross_vendor`:

=============  ===========  =============================================
transform      probability  range
=============  ===========  =============================================
rotation       0.4          as above
scaling        0.4          as above
anisotropy     0.3          Y / X aspect uniform in [0.8, 1.25] (area kept)
elastic        0.3          smooth displacement, up to 4 px (4 x 4 control grid)
=============  ===========  =============================================

:meth:`AugmentConfig.random_convolution` (stage 47) adds to :meth:`cross_vendor` the global
intensity non-linear augmentation of Ouyang et al. (GIN, IEEE TMI 2023): with probability 0.5 a
patch goes through its own random four-layer network of 1 x 1 or 3 x 3 convolutions (Gaussian
weights, leaky ReLU), is brought back to its mean and standard deviation and blended with itself
by a uniform weight, so that tissue contrast and texture vary while the shapes stay.

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
    p_contrast: float = 0.0
    contrast_range: tuple[float, float] = (0.65, 1.5)
    p_brightness: float = 0.0
    max_brightness: float = 0.3
    p_bias_field: float = 0.0
    max_bias: float = 0.4
    p_low_resolution: float = 0.0
    max_downsampling: float = 2.5
    p_blur: float = 0.0
    blur_sigma_range: tuple[float, float] = (0.5, 1.5)
    p_anisotropy: float = 0.0
    anisotropy_range: tuple[float, float] = (0.8, 1.25)
    p_elastic: float = 0.0
    max_elastic_px: float = 4.0
    p_random_convolution: float = 0.0

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No random transform at all (validation, tests)."""
        return cls(p_rotation=0, p_scale=0, p_mirror=0, p_gamma=0, p_noise=0)

    @classmethod
    def cross_vendor(cls) -> "AugmentConfig":
        """nnU-Net's scheme plus contrast, brightness, bias field, resolution and blur (see the module)."""
        return cls(p_contrast=0.3, p_brightness=0.3, p_bias_field=0.3, p_low_resolution=0.25, p_blur=0.2)

    @classmethod
    def strong(cls) -> "AugmentConfig":
        """:meth:`cross_vendor` with more rotation and scaling, anisotropy and elastic deformation (see the module)."""
        return cls(
            p_rotation=0.4, p_scale=0.4, p_anisotropy=0.3, p_elastic=0.3,
            p_contrast=0.3, p_brightness=0.3, p_bias_field=0.3, p_low_resolution=0.25, p_blur=0.2,
        )  # fmt: skip

    @classmethod
    def random_convolution(cls) -> "AugmentConfig":
        """:meth:`cross_vendor` with half of the patches passed through a random shallow network (see the module)."""
        return cls(
            p_contrast=0.3, p_brightness=0.3, p_bias_field=0.3, p_low_resolution=0.25, p_blur=0.2,
            p_random_convolution=0.5,
        )  # fmt: skip

    @classmethod
    def named(cls, name: bool | str) -> "AugmentConfig":
        """The scheme ``[train] augment`` names: true / "nnunet", "cross_vendor", "strong",
        "random_convolution", false / "off"."""
        schemes = {
            True: cls, "nnunet": cls, "cross_vendor": cls.cross_vendor, "strong": cls.strong,
            "random_convolution": cls.random_convolution, False: cls.off, "off": cls.off,
        }  # fmt: skip
        if name not in schemes:
            raise InputError(
                f"[train] 'augment' is {name!r}, expected true, false, 'nnunet', 'cross_vendor', 'strong', "
                "'random_convolution' or 'off'"
            )
        return schemes[name]()


def crop_centres(
    labels: torch.Tensor,
    patch: tuple[int, int],
    foreground: torch.Tensor,
    generator: torch.Generator,
    *,
    hearts: torch.Tensor | None = None,
    jitter: float = 0.0,
) -> torch.Tensor:
    """Patch centres (row, column) in input pixel indices, float64 (B, 2).

    Random centres keep the patch inside the slice where it fits; a sample flagged in
    ``foreground`` (bool (B,)) is centred on one of its foreground pixels chosen at random
    (nnU-Net's forced-foreground crop), or placed at random when it has none. With ``hearts``,
    an unflagged sample whose heart centre is known is centred there instead, moved by up to
    ``jitter`` pixels along each axis and kept inside the slice: the window the pipeline's heart
    crop shows the U-Net (`cmrsdk.heart.crop_to_heart`), non-cardiac slices included.

    Parameters
    ----------
    labels : integer (B, H, W) label maps (CPU).
    patch : (h, w) patch size in pixels.
    foreground : bool (B,) flags.
    generator : CPU generator all random numbers come from.
    hearts : float64 (B, 2) heart centre (row, column) in pixel indices of each sample's stack
        (`export.data.SliceSet.heart_centres`), NaN where the stack holds no label; None: random.
    jitter : largest shift of a heart-centred patch, pixels per axis (uniform in [-jitter, jitter]).
    """
    b, height, width = labels.shape
    h, w = patch
    low = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
    high = torch.tensor([height - 1 - (h - 1) / 2, width - 1 - (w - 1) / 2], dtype=torch.float64)
    # a patch larger than the slice stays centred on the slice's centre
    low, high = torch.minimum(low, (low + high) / 2), torch.maximum(high, (low + high) / 2)
    centres = low + (high - low) * torch.rand(b, 2, generator=generator, dtype=torch.float64)
    if hearts is not None:
        if hearts.shape != (b, 2) or jitter < 0:
            raise InputError(
                f"'hearts' must be float ({b}, 2) and 'jitter' >= 0, got shape {tuple(hearts.shape)} and {jitter}"
            )
        shift = jitter * (2 * torch.rand(b, 2, generator=generator, dtype=torch.float64) - 1)
        known = torch.isfinite(hearts).all(1) & ~foreground.cpu()
        centres[known] = torch.clamp(hearts.to(torch.float64)[known] + shift[known], low, high)
    centres = centres.round()
    for i in torch.nonzero(foreground.cpu()).flatten().tolist():
        pixels = torch.nonzero(labels[i] > 0)
        if len(pixels):
            pick = int(torch.randint(len(pixels), (1,), generator=generator))
            centres[i] = pixels[pick].to(torch.float64)
    return centres


def spatial_transform(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    patch: tuple[int, int],
    centres: torch.Tensor,
    angle: torch.Tensor,
    scale: torch.Tensor,
    mirror: torch.Tensor,
    displacement: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample a ``patch`` around each centre, rotated, scaled, mirrored and optionally deformed.

    Parameters
    ----------
    images : float32 (B, C, H, W).
    labels : integer (B, H, W) or None.
    patch : (h, w) output size in pixels.
    centres : float (B, 2) patch centre (row, column) in input pixel indices.
    angle : float (B,) rotation in radians; scale : float (B,) zoom-out factor (1 = none), or
        (B, 2) per patch axis (Y, X); mirror : bool (B, 2) flip of the (Y, X) axes.
    displacement : float (B, h, w, 2) offsets (x, y) in input pixels added to where each patch
        pixel reads, or None.

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
    axes = scale.to(torch.float64).reshape(b, -1).expand(b, 2)  # (Y, X) zoom-out per patch axis
    sx, sy = flip[:, 1] * axes[:, 1], flip[:, 0] * axes[:, 0]
    # M maps a patch offset (x, y) in pixels to an input offset in pixels: rotation @ scale @ mirror
    m = torch.stack([torch.stack([cos * sx, -sin * sy], -1), torch.stack([sin * sx, cos * sy], -1)], 1)
    # normalised coordinates (align_corners=False): pixel i of n sits at (2 i + 1) / n - 1
    to_norm = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    from_norm = torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64)
    theta = torch.empty(b, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = to_norm.view(1, 2, 1) * m.to(torch.float64) * from_norm.view(1, 1, 2)
    theta[:, 0, 2] = (2 * centres[:, 1] + 1) / width - 1
    theta[:, 1, 2] = (2 * centres[:, 0] + 1) / height - 1
    grid = F.affine_grid(theta.to(device=device, dtype=torch.float32), [b, 1, h, w], align_corners=False)
    if displacement is not None:
        grid = grid + displacement.to(device=device, dtype=torch.float32) * to_norm.to(device, torch.float32)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_labels = None
    if labels is not None:
        out_labels = (
            F.grid_sample(
                labels[:, None].to(device=device, dtype=torch.float32),
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )[:, 0]
            .round()
            .long()
        )
    return out, out_labels


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    patch: tuple[int, int],
    centres: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop ``patch`` around ``centres`` with random spatial and intensity transforms.

    Parameters
    ----------
    images : float32 (B, C, H, W) normalised slices (on any device): C = 1, or a 2.5D slice
        between its stack neighbours (C = 2 context + 1, in stack order; reversed for a random
        half of the batch). Every channel of a sample gets the same transforms.
    labels : integer (B, H, W) or None (the centre slice's).
    patch : (h, w) output size in pixels; centres : float (B, 2) (row, column) pixel indices.
    config : probabilities and ranges; generator : CPU generator for every random draw.

    Returns
    -------
    float32 (B, C, h, w) and int64 (B, h, w) (or None), on the device of ``images``.
    """
    if images.ndim != 4:
        raise InputError(f"'images' must be (B, C, H, W), got shape {tuple(images.shape)}")
    b = images.shape[0]

    def chosen(p: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, dtype=torch.float64) < p

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)

    if images.shape[1] > 1:
        # 2.5D: the neighbours' order along the stack depends on how a series was written
        # (base or apex first), so half of the batch sees it reversed; drawn only for C > 1, so
        # 2D runs draw what they always did
        reverse = chosen(0.5).to(images.device).view(b, 1, 1, 1)
        images = torch.where(reverse, images.flip(1), images)
    max_angle = math.radians(config.max_rotation_deg)
    angle = torch.where(chosen(config.p_rotation), uniform(-max_angle, max_angle), torch.zeros(b, dtype=torch.float64))
    scale = torch.where(chosen(config.p_scale), uniform(*config.scale_range), torch.ones(b, dtype=torch.float64))
    mirror = torch.rand(b, 2, generator=generator, dtype=torch.float64) < config.p_mirror
    displacement = None
    if config.p_anisotropy or config.p_elastic:  # drawn only when on: the other schemes draw as before
        low, high = (math.log(r) for r in config.anisotropy_range)
        aspect = torch.where(chosen(config.p_anisotropy), uniform(low, high).exp(), torch.ones(b, dtype=torch.float64))
        scale = scale.view(b, 1) * torch.stack([aspect.sqrt(), 1 / aspect.sqrt()], 1)  # (Y, X), area kept
        displacement = _elastic_field(b, patch, config, chosen(config.p_elastic), generator)
    out, out_labels = spatial_transform(images, labels, patch, centres, angle, scale, mirror, displacement)

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
    out = _scanner_transforms(out, config, chosen, uniform)
    if config.p_random_convolution:  # drawn only when on: the other schemes draw as before
        out = _random_convolution(out, chosen(config.p_random_convolution), generator)
    return out, out_labels


#: (channels in the hidden layers, number of layers) of the random network; GIN's choice
RANDOM_NETWORK = (2, 4)


def _random_convolution(out: torch.Tensor, on: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Global intensity non-linear augmentation (GIN; Ouyang et al., IEEE TMI 2023) of the ``on``
    samples of float32 (B, C, h, w) patches.

    Each chosen sample goes through its own freshly drawn shallow network (3 x 3 or 1 x 1
    convolutions with Gaussian weights and leaky ReLUs), is brought back to its own mean and
    standard deviation, and is blended with the input by a uniform weight: the shapes stay, the
    mapping from tissue to intensity and local texture changes as between vendors and sequences.
    Every channel of a sample gets the same network.
    """
    if not bool(on.any()):
        return out
    b, c, h, w = out.shape
    device = out.device
    width, depth = RANDOM_NETWORK
    x = out.reshape(1, b * c, h, w)  # each (sample, channel) a group: one network per sample
    n = b * c
    for layer in range(depth):
        cin, cout = (1 if layer == 0 else width), (1 if layer == depth - 1 else width)
        k = 3 if torch.rand(1, generator=generator).item() < 0.5 else 1
        weight = torch.randn(b, cout, cin, k, k, generator=generator).repeat_interleave(c, 0)
        bias = torch.randn(b, cout, generator=generator).repeat_interleave(c, 0)
        x = F.conv2d(
            x, weight.reshape(n * cout, cin, k, k).to(device), bias.reshape(-1).to(device), padding=k // 2, groups=n
        )
        if layer < depth - 1:
            x = F.leaky_relu(x, 0.2)
    x = x.reshape(b, c, h, w)
    mean, std = out.mean((2, 3), keepdim=True), out.std((2, 3), keepdim=True)
    x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True).clamp_min(1e-6) * std + mean
    alpha = torch.rand(b, generator=generator).to(device).view(b, 1, 1, 1)
    mixed = alpha * x + (1 - alpha) * out
    return torch.where(on.to(device).view(b, 1, 1, 1), mixed, out)


def _elastic_field(
    b: int, patch: tuple[int, int], config: AugmentConfig, on: torch.Tensor, generator: torch.Generator
) -> torch.Tensor | None:
    """Smooth random displacements, float32 (B, h, w, 2) in input pixels (x, y); 0 where not ``on``.

    Offsets drawn on a 4 x 4 control grid, uniform in ±``max_elastic_px``, interpolated bicubically:
    a deformation a few centimetres across, the scale at which two hearts' shapes differ.
    """
    control = (torch.rand(b, 2, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1) * config.max_elastic_px
    if not bool(on.any()):
        return None
    field = F.interpolate(control.float(), size=patch, mode="bicubic", align_corners=True)
    return (field * on.float().view(b, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()


def _scanner_transforms(out: torch.Tensor, config: AugmentConfig, chosen, uniform) -> torch.Tensor:
    """Contrast, brightness, bias field, low resolution and blur on float32 (B, C, h, w) patches.

    With all five off nothing is drawn, so nnU-Net's scheme draws what it always did; with any
    on, each draws its numbers whether or not it is enabled, so that turning one on does not
    change what the others draw. Nothing is computed for a transform no sample chose.
    """
    if not any((config.p_contrast, config.p_brightness, config.p_bias_field, config.p_low_resolution, config.p_blur)):
        return out
    b, _, h, w = out.shape
    device = out.device

    def per_sample(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=torch.float32).view(b, 1, 1, 1)

    contrast_on, contrast = chosen(config.p_contrast), uniform(*config.contrast_range)
    brightness_on, shift = chosen(config.p_brightness), uniform(-config.max_brightness, config.max_brightness)
    bias_on = chosen(config.p_bias_field)
    coefficients = torch.stack([uniform(-1.0, 1.0) for _ in range(5)], 1)  # x, y, x², y², xy
    low_on = chosen(config.p_low_resolution)
    factor = torch.stack([uniform(1.0, config.max_downsampling) for _ in range(2)], 1)
    blur_on, sigma = chosen(config.p_blur), uniform(*config.blur_sigma_range)
    if bool(contrast_on.any()):
        mean = out.mean((2, 3), keepdim=True)
        out = torch.where(per_sample(contrast_on) > 0, (out - mean) * per_sample(contrast) + mean, out)
    if bool(brightness_on.any()):
        out = out + per_sample(shift * brightness_on)
    if bool(bias_on.any()):
        y = torch.linspace(-1, 1, h, device=device).view(1, h, 1)
        x = torch.linspace(-1, 1, w, device=device).view(1, 1, w)
        c = coefficients.to(device=device, dtype=torch.float32).view(b, 5, 1, 1)
        field = c[:, 0] * x + c[:, 1] * y + c[:, 2] * (x * x - 1 / 3) + c[:, 3] * (y * y - 1 / 3) + c[:, 4] * x * y
        field = field / field.flatten(1).abs().amax(1).clamp_min(1e-6).view(b, 1, 1) * config.max_bias
        out = torch.where(per_sample(bias_on) > 0, out * torch.exp(field)[:, None], out)
    for i in torch.nonzero(low_on).flatten().tolist():  # per sample: each has its own size
        size = (max(int(h / float(factor[i, 0])), 8), max(int(w / float(factor[i, 1])), 8))
        small = F.interpolate(out[i : i + 1], size=size, mode="bilinear", align_corners=False, antialias=True)
        out[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    for i in torch.nonzero(blur_on).flatten().tolist():
        s = float(sigma[i])
        radius = max(int(math.ceil(3 * s)), 1)
        t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
        kernel = torch.exp(-0.5 * (t / s) ** 2)
        kernel = kernel / kernel.sum()
        x = F.pad(out[i].unsqueeze(1), (radius, radius, radius, radius), mode="replicate")  # channels as a batch
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
        out[i] = F.conv2d(x, kernel.view(1, 1, -1, 1))[:, 0]
    return out
