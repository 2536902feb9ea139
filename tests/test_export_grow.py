"""export.models.grow: a trained U-Net grown wider computes the same function, and learns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmrsdk.errors import InputError, ReadError
from export.models import get_model
from export.models.grow import grow_unet_weights


def _trained_like(features: list[int]) -> torch.nn.Module:
    """A U-Net whose norms are not at their initial scale 1 and shift 0, as after training."""
    torch.manual_seed(0)
    net = get_model("unet", features=features, deep_supervision=True)
    for module in net.modules():
        if isinstance(module, torch.nn.InstanceNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.3)
    return net.eval()


@pytest.mark.parametrize("wider", [[8, 16, 40, 80], [12, 24, 48, 96]])
def test_a_grown_unet_answers_as_the_narrow_one_at_every_head(wider: list[int]) -> None:
    narrow = _trained_like([8, 16, 32, 64])
    grown = get_model("unet", features=wider, deep_supervision=True).eval()
    grown.load_state_dict(grow_unet_weights(narrow.state_dict(), grown.state_dict()))
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(narrow.forward_all(x), grown.forward_all(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    # the old weights sit in the leading block; the new channels' norms start silent
    assert torch.equal(grown.encoder[3][0].weight[:64, :32], narrow.encoder[3][0].weight)
    assert not grown.encoder[3][1].weight[64:].any() and not grown.encoder[3][1].bias[64:].any()


def test_every_new_channel_learns_from_the_first_step() -> None:
    narrow = _trained_like([8, 16, 32])
    grown = get_model("unet", features=[8, 24, 48], deep_supervision=True)
    grown.load_state_dict(grow_unet_weights(narrow.state_dict(), grown.state_dict()))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 4, (2, 32, 32), generator=torch.Generator().manual_seed(3))
    torch.nn.functional.cross_entropy(grown(x), y).backward()
    assert grown.encoder[2][1].weight.grad[32:].abs().sum() > 0  # the silent norms' scales
    assert grown.ups[0].weight.grad[:, 16:].abs().sum() > 0  # the silent upsampling channels


def test_a_model_only_grows() -> None:
    wide = _trained_like([8, 24, 48])
    narrow = get_model("unet", features=[8, 16, 32], deep_supervision=True)
    with pytest.raises(InputError, match=r"encoder\.1\.0\.weight.*only grows"):
        grow_unet_weights(wide.state_dict(), narrow.state_dict())
    with pytest.raises(InputError, match="not in the narrow model"):
        grow_unet_weights({}, narrow.state_dict())


def test_warm_start_grows_a_bundle_archive_into_a_wider_unet(tmp_path: Path) -> None:
    """`[train] init` naming a narrower U-Net's archive starts the wider run as that U-Net."""
    from export.bundle import ProbabilityModel
    from export.train import _warm_start

    narrow = _trained_like([8, 16, 32])
    path = tmp_path / "baseline.pt"
    torch.jit.trace(ProbabilityModel(narrow), torch.zeros(1, 1, 32, 32)).save(str(path))
    grown = get_model("unet", features=[8, 20, 40], deep_supervision=True).eval()
    _warm_start(grown, path, torch.device("cpu"))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(grown(x), narrow(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ReadError, match="baseline.pt.*do not fit"):
        _warm_start(get_model("unet", features=[8, 12, 24], deep_supervision=True), path, torch.device("cpu"))


def test_average_grown_is_the_midpoint_to_the_narrow_function_nearest_the_wide_one(tmp_path: Path) -> None:
    """Old weights averaged; the weights feeding only the grown twin's silent norms taken from
    the wide run; the new norms' scale and shift halved."""
    from export.train import _save_checkpoint, average_grown

    narrow = _trained_like([8, 16, 32])
    wide = _trained_like([8, 20, 40])  # stands for the retrained wide run
    paths = {}
    for name, net, features in (("narrow", narrow, [8, 16, 32]), ("wide", wide, [8, 20, 40])):
        paths[name] = tmp_path / f"{name}.pt"
        model = {"name": "unet", "kwargs": {"features": features, "deep_supervision": True}}
        _save_checkpoint(paths[name], {"model": model, "state_dict": net.state_dict(), "iteration": 10})
    average_grown(paths["narrow"], paths["wide"], tmp_path / "mean.pt")
    mean = torch.load(tmp_path / "mean.pt", weights_only=False)
    w, n, m = wide.state_dict(), narrow.state_dict(), mean["state_dict"]
    assert mean["model"]["kwargs"]["features"] == [8, 20, 40] and m["encoder.1.0.weight"].dtype == torch.float16
    conv, norm = "encoder.1.0.weight", "encoder.1.1.weight"  # stage 1: 16 -> 20 channels
    expected_old = (w[conv][:16, :8] + n[conv]) / 2
    torch.testing.assert_close(m[conv][:16, :8].float(), expected_old, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(m[conv][16:].float(), w[conv][16:], atol=1e-3, rtol=1e-3)  # the wide run's
    torch.testing.assert_close(m[norm][16:].float(), w[norm][16:] / 2, atol=1e-3, rtol=1e-3)  # halved
    torch.testing.assert_close(m[norm][:16].float(), (w[norm][:16] + n[norm]) / 2, atol=1e-3, rtol=1e-3)
