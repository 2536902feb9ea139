"""export.augment and export.losses against direct tensor operations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmrsdk.errors import InputError  # noqa: E402
from export.augment import AugmentConfig, augment_batch, crop_centres, spatial_transform  # noqa: E402
from export.losses import DeepSupervisionLoss, DiceCELoss, slice_dice_loss, soft_dice_loss  # noqa: E402


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 1, 20, 24, generator=g), torch.randint(0, 4, (3, 20, 24), generator=g)


def test_identity_transform_is_an_exact_crop() -> None:
    images, labels = _batch()
    # centre (row, col) of a 9 x 10 patch whose pixel (0, 0) is input (2, 5): 2 + 4, 5 + 4.5
    centres = torch.tensor([[6.0, 9.5]] * 3, dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    out, out_labels = spatial_transform(
        images, labels, (9, 10), centres, zeros, zeros + 1, torch.zeros(3, 2, dtype=torch.bool)
    )
    torch.testing.assert_close(out, images[:, :, 2:11, 5:15], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_labels, labels[:, 2:11, 5:15].long())


def test_mirror_and_quarter_rotation_match_flip_and_rot90() -> None:
    images, labels = _batch(1)
    square = images[:, :, :20, 2:22]
    centres = torch.full((3, 2), 9.5, dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    mirror = torch.tensor([[True, False]] * 3)
    out, _ = spatial_transform(square, None, (20, 20), centres, zeros, zeros + 1, mirror)
    torch.testing.assert_close(out, square.flip(2), atol=1e-5, rtol=0)
    out, out_labels = spatial_transform(
        square,
        labels[:, :20, 2:22],
        (20, 20),
        centres,
        zeros + math.pi / 2,
        zeros + 1,
        torch.zeros(3, 2, dtype=torch.bool),
    )
    # output (r, c) reads input (r, c) rotated by +90 degrees about the centre in (x, y)
    expected = torch.rot90(square, k=1, dims=(2, 3))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(out_labels, torch.rot90(labels[:, :20, 2:22], k=1, dims=(1, 2)).long())


def test_per_axis_scale_and_a_constant_displacement_move_where_the_patch_reads() -> None:
    rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    images = torch.stack([rows, cols])[None]  # channel 0 reads the row, channel 1 the column
    centres = torch.tensor([[19.5, 19.5]], dtype=torch.float64)
    zero, no_flip = torch.zeros(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.bool)
    out, _ = spatial_transform(images, None, (10, 10), centres, zero, torch.tensor([[1.5, 0.8]]), no_flip)
    # a linear ramp stays linear under bilinear sampling: its slope is the axis' zoom-out
    np.testing.assert_allclose(out[0, 0, 1:, 5] - out[0, 0, :-1, 5], 1.5, atol=1e-4)
    np.testing.assert_allclose(out[0, 1, 5, 1:] - out[0, 1, 5, :-1], 0.8, atol=1e-4)
    shift = torch.zeros(1, 10, 10, 2)
    shift[..., 0], shift[..., 1] = 3.0, -2.0  # x + 3 px, y - 2 px
    moved, _ = spatial_transform(images, None, (10, 10), centres, zero, zero + 1, no_flip, shift)
    plain, _ = spatial_transform(images, None, (10, 10), centres, zero, zero + 1, no_flip)
    np.testing.assert_allclose(moved[0, 0] - plain[0, 0], -2.0, atol=1e-4)
    np.testing.assert_allclose(moved[0, 1] - plain[0, 1], 3.0, atol=1e-4)


def test_strong_deforms_shapes_but_keeps_labels_and_area() -> None:
    # a 128 px patch (the training patch) around a disk the size of a left ventricle
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    disk = ((yy - 63.5) ** 2 + (xx - 63.5) ** 2 < 18**2).long()
    labels = (disk * 3)[None].repeat(32, 1, 1)
    images = labels[:, None].float()
    centres = torch.full((32, 2), 63.5, dtype=torch.float64)
    only_shape = AugmentConfig(p_rotation=0, p_scale=0, p_mirror=0, p_gamma=0, p_noise=0, p_anisotropy=1, p_elastic=1)
    g = torch.Generator().manual_seed(0)
    out, out_labels = augment_batch(images, labels, (128, 128), centres, only_shape, g)
    assert set(out_labels.unique().tolist()) == {0, 3}
    area = (out_labels == 3).flatten(1).sum(1).float() / disk.sum()
    # anisotropy keeps the area and the displacement is smooth: the disk's area moves a little ...
    assert float((area - 1).abs().max()) < 0.4 and abs(float(area.mean()) - 1) < 0.1
    # ... while its outline does, differently per sample
    changed = (out_labels != labels).flatten(1).sum(1)
    assert int((changed > 20).sum()) >= 28 and len(set(changed.tolist())) > 20
    again, _ = augment_batch(images, labels, (128, 128), centres, only_shape, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)


def test_forced_foreground_crops_are_centred_on_foreground() -> None:
    labels = torch.zeros(4, 32, 32, dtype=torch.uint8)
    labels[:, 28:30, 1:3] = 2
    g = torch.Generator().manual_seed(0)
    centres = crop_centres(labels, (16, 16), torch.tensor([True, True, False, False]), g)
    for row, col in centres[:2].tolist():
        assert labels[0, int(row), int(col)] == 2
    # random centres keep the whole patch inside the slice
    assert torch.all((centres[2:] >= 7.5) & (centres[2:] <= 32 - 1 - 7.5))


def test_heart_crops_are_centred_on_the_stack_heart_within_the_jitter() -> None:
    labels = torch.zeros(6, 64, 64, dtype=torch.uint8)
    labels[:, 40:44, 40:44] = 1
    hearts = torch.tensor([[41.5, 41.5]] * 4 + [[60.0, 3.0], [float("nan")] * 2], dtype=torch.float64)
    flagged = torch.tensor([True, False, False, False, False, False])
    g = torch.Generator().manual_seed(0)
    centres = crop_centres(labels, (32, 32), flagged, g, hearts=hearts, jitter=4.0)
    assert labels[0, int(centres[0, 0]), int(centres[0, 1])] == 1  # forced to foreground, as before
    assert torch.all((centres[1:4] - 41.5).abs() <= 4.5)  # the heart, moved by at most the jitter
    assert len({tuple(c) for c in centres[1:4].tolist()}) > 1
    np.testing.assert_array_equal(centres[4].numpy(), [48, 16])  # kept inside: 47.5 and 15.5, rounded
    assert torch.all((centres[5] >= 15.5) & (centres[5] <= 47.5))  # no heart known: random
    with pytest.raises(InputError, match="'hearts' must be float \\(6, 2\\)"):
        crop_centres(labels, (32, 32), flagged, g, hearts=hearts[:3], jitter=4.0)


def test_augment_is_seeded_and_off_is_a_crop() -> None:
    images, labels = _batch(2)
    centres = torch.tensor([[9.5, 11.5]] * 3, dtype=torch.float64)
    a = augment_batch(
        images, labels, (16, 16), centres, AugmentConfig(p_gamma=1, p_noise=1), torch.Generator().manual_seed(3)
    )
    b = augment_batch(
        images, labels, (16, 16), centres, AugmentConfig(p_gamma=1, p_noise=1), torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[0], images[:, :, 2:18, 4:20])
    off = augment_batch(images, labels, (16, 16), centres, AugmentConfig.off(), torch.Generator().manual_seed(3))
    torch.testing.assert_close(off[0], images[:, :, 2:18, 4:20], atol=1e-5, rtol=0)


def test_dice_loss_matches_a_numpy_reference_and_is_zero_when_perfect() -> None:
    g = torch.Generator().manual_seed(4)
    logits, target = torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 4, (2, 8, 8), generator=g)
    p = torch.softmax(logits, 1).numpy()
    t = np.eye(4)[target.numpy()].transpose(0, 3, 1, 2)
    dice = (2 * (p * t).sum((0, 2, 3)) + 1e-5) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + 1e-5)
    assert float(soft_dice_loss(logits, target)) == pytest.approx(1 - dice[1:].mean(), rel=1e-5)
    perfect = 100.0 * torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert float(DiceCELoss()(perfect, target)) == pytest.approx(0.0, abs=1e-4)


def test_slice_dice_scores_each_slice_and_punishes_a_structure_drawn_where_none_is_labelled() -> None:
    g = torch.Generator().manual_seed(6)
    logits, target = torch.randn(3, 4, 8, 8, generator=g), torch.randint(0, 4, (3, 8, 8), generator=g)
    p = torch.softmax(logits, 1).numpy()
    t = np.eye(4)[target.numpy()].transpose(0, 3, 1, 2)
    dice = (2 * (p * t).sum((2, 3)) + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    assert float(slice_dice_loss(logits, target)) == pytest.approx(1 - dice[:, 1:].mean(), rel=1e-5)

    # slice 0 holds a 4-pixel RV (label 3), slice 1 none; the prediction draws 16 RV pixels on both
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, :2, :2] = 3
    drawn = torch.zeros(2, 8, 8, dtype=torch.long)
    drawn[:, :4, :4] = 3
    logits = 100.0 * torch.nn.functional.one_hot(drawn, 4).permute(0, 3, 1, 2).float()
    # slices: RV Dice 2*4/(16+4) and 1/(1+16); LV and myocardium absent and undrawn: 1
    rv = [(2 * 4 + 1) / (16 + 4 + 1), 1 / (16 + 1)]
    assert float(slice_dice_loss(logits, target)) == pytest.approx(1 - (4 + sum(rv)) / 6, rel=1e-4)
    # batch Dice sees one RV of 4 pixels against 32 drawn and forgives the empty slice
    assert float(soft_dice_loss(logits, target)) == pytest.approx(1 - (2 + 8 / 36) / 3, rel=1e-4)


def test_dice_ce_mixes_batch_and_slice_dice_by_weight() -> None:
    g = torch.Generator().manual_seed(7)
    logits, target = torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 4, (2, 8, 8), generator=g)
    ce = torch.nn.functional.cross_entropy(logits, target)
    mixed = 0.75 * soft_dice_loss(logits, target) + 0.25 * slice_dice_loss(logits, target) + ce
    assert float(DiceCELoss(0.25)(logits, target)) == pytest.approx(float(mixed), rel=1e-6)
    assert float(DiceCELoss(0.0)(logits, target)) == pytest.approx(float(soft_dice_loss(logits, target) + ce))
    with pytest.raises(ValueError, match="slice_weight is 1.5"):
        DiceCELoss(1.5)


def test_deep_supervision_weights_halve() -> None:
    g = torch.Generator().manual_seed(5)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    outputs = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 4, 4, generator=g)]
    loss = DeepSupervisionLoss()(outputs, target)
    single = DiceCELoss()
    expected = (2 / 3) * single(outputs[0], target) + (1 / 3) * single(outputs[1], target[:, ::2, ::2])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def _scanner_only(**on: float) -> AugmentConfig:
    """No spatial or nnU-Net intensity transform: only the named scanner transforms, always on."""
    return AugmentConfig(p_rotation=0, p_scale=0, p_mirror=0, p_gamma=0, p_noise=0, **on)


def test_cross_vendor_intensity_transforms_stay_in_their_ranges() -> None:
    images, labels = _batch(2)
    images = images + 2.0  # away from zero, so ratios are defined
    centres = torch.tensor([[9.5, 11.5]] * 3, dtype=torch.float64)
    crop = images[:, :, 2:18, 4:20]

    def run(**on: float) -> torch.Tensor:
        out, out_labels = augment_batch(
            images, labels, (16, 16), centres, _scanner_only(**on), torch.Generator().manual_seed(5)
        )
        torch.testing.assert_close(out_labels, labels[:, 2:18, 4:20].long())  # labels never move
        return out

    mean = crop.mean((2, 3), keepdim=True)
    factor = (run(p_contrast=1) - mean) / (crop - mean)
    per_sample = factor.flatten(1).median(1).values
    assert ((per_sample >= 0.65) & (per_sample <= 1.5)).all() and per_sample.std() > 0
    shift = (run(p_brightness=1) - crop).flatten(1)
    torch.testing.assert_close(shift.max(1).values, shift.min(1).values, atol=1e-5, rtol=0)
    assert (shift.abs().max(1).values <= 0.3 + 1e-6).all()
    log_field = torch.log(run(p_bias_field=1) / crop).flatten(1).abs().amax(1)
    torch.testing.assert_close(log_field, torch.full_like(log_field, 0.4), atol=1e-4, rtol=0)


def test_low_resolution_and_blur_remove_fine_detail() -> None:
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float()
    images = checker.expand(3, 1, 32, 32).clone()
    labels = torch.zeros(3, 32, 32, dtype=torch.long)
    centres = torch.tensor([[15.5, 15.5]] * 3, dtype=torch.float64)
    for on in ({"p_low_resolution": 1}, {"p_blur": 1}):
        out, _ = augment_batch(images, labels, (32, 32), centres, _scanner_only(**on), torch.Generator().manual_seed(1))
        assert out.shape == images.shape
        assert (out.flatten(1).var(1) < 0.5 * images.flatten(1).var(1)).all(), on  # the checkerboard is smoothed
        torch.testing.assert_close(out.mean(), images.mean(), atol=0.05, rtol=0)


def test_named_schemes() -> None:
    from cmrsdk.errors import InputError

    assert AugmentConfig.named(True) == AugmentConfig() == AugmentConfig.named("nnunet")
    assert AugmentConfig.named(False) == AugmentConfig.off()
    assert AugmentConfig.named("cross_vendor").p_bias_field > 0
    strong = AugmentConfig.named("strong")
    assert strong.p_elastic > 0 and strong.p_anisotropy > 0 and strong.p_bias_field == 0.3
    with pytest.raises(InputError, match="'augment'"):
        AugmentConfig.named("heavy")
    gin = AugmentConfig.named("random_convolution")
    assert gin.p_random_convolution == 0.5 and gin.p_bias_field == AugmentConfig.cross_vendor().p_bias_field


def test_random_convolution_changes_the_intensities_of_the_chosen_patches_only() -> None:
    """GIN: a chosen patch keeps its shape's labels and its mean but not its intensity mapping;
    with it off, cross_vendor draws exactly what it drew before the option existed."""
    images, labels = _batch(3)
    images = torch.cat([images, images + 1.0], 0)  # 6 samples
    labels = torch.cat([labels, labels], 0)
    centres = torch.tensor([[9.5, 11.5]] * 6, dtype=torch.float64)
    crop = images[:, :, 2:18, 4:20]

    def run(config: AugmentConfig, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
        out, out_labels = augment_batch(images, labels, (16, 16), centres, config, torch.Generator().manual_seed(seed))
        assert out_labels is not None
        return out, out_labels

    out, out_labels = run(_scanner_only(p_random_convolution=1.0))
    torch.testing.assert_close(out_labels, labels[:, 2:18, 4:20].long())
    torch.testing.assert_close(out.mean((2, 3)), crop.mean((2, 3)), atol=1e-4, rtol=0)
    assert torch.isfinite(out).all()
    change = (out - crop).flatten(1).abs().amax(1)
    assert (change > 1e-3).all()
    again, _ = run(_scanner_only(p_random_convolution=1.0))
    torch.testing.assert_close(out, again, atol=0, rtol=0)  # seeded
    unchanged, _ = run(_scanner_only(p_random_convolution=0.0))
    torch.testing.assert_close(unchanged, crop, atol=1e-5, rtol=0)  # bilinear resampling's rounding
    half, _ = run(_scanner_only(p_random_convolution=0.5), seed=11)
    untouched = (half - unchanged).flatten(1).abs().amax(1) == 0
    assert 0 < int(untouched.sum()) < 6  # some samples chosen, some left as they were
    # the shared transforms draw the same numbers before the random network acts
    plain, _ = run(AugmentConfig.cross_vendor(), seed=13)
    gin_none = dataclasses.replace(AugmentConfig.random_convolution(), p_random_convolution=0.0)
    torch.testing.assert_close(run(gin_none, seed=13)[0], plain, atol=0, rtol=0)


def test_2_5d_channels_share_every_transform_and_half_are_read_upside_down() -> None:
    """A (B, 3, H, W) batch: each channel a multiple of one image (1, 2, 3), so a shared spatial
    transform keeps the channels proportional; the stack order is reversed for about half."""
    base = torch.randn(64, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    images = torch.cat([base, 2 * base, 3 * base], 1)
    labels = torch.zeros(64, 40, 40, dtype=torch.long)
    centres = torch.full((64, 2), 19.5, dtype=torch.float64)
    config = AugmentConfig(p_rotation=1, p_scale=1, p_blur=1, p_gamma=0, p_noise=0)
    out, _ = augment_batch(images, labels, (24, 24), centres, config, torch.Generator().manual_seed(2))
    assert out.shape == (64, 3, 24, 24)
    reversed_ = out[:, 2].abs().sum((1, 2)) < out[:, 0].abs().sum((1, 2))
    first, last = (
        torch.where(reversed_[:, None, None], out[:, 2], out[:, 0]),
        torch.where(reversed_[:, None, None], out[:, 0], out[:, 2]),
    )
    torch.testing.assert_close(out[:, 1], 2 * first, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, 3 * first, rtol=1e-4, atol=1e-4)
    assert 16 <= int(reversed_.sum()) <= 48
