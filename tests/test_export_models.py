"""export.models: builders, registry, shapes, deep supervision, learning on synthetic slices."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from cmrsdk.errors import InputError  # noqa: E402
from export.models import get_model, list_models  # noqa: E402
from export.models.classifiers import CLASSIFIERS  # noqa: E402


def test_registry_lists_the_unet_and_the_seven_classifiers() -> None:
    assert list_models() == sorted(["unet", *CLASSIFIERS])
    assert len(CLASSIFIERS) == 7


def test_unknown_model_and_bad_kwargs_raise() -> None:
    with pytest.raises(InputError, match="model name 'resnet50' is unknown"):
        get_model("resnet50")
    with pytest.raises(InputError, match="does not accept arguments"):
        get_model("unet", width=3)
    with pytest.raises(InputError, match="'features' must be at least two positive ints"):
        get_model("unet", features=(8,))
    with pytest.raises(InputError, match="'width' of shufflenet_v2 must be one of"):
        get_model("shufflenet_v2", width=0.7)


def test_unet_shapes_parameters_and_deep_supervision() -> None:
    torch.manual_seed(0)
    model = get_model("unet", features=(8, 16, 32, 64, 128), deep_supervision=True)
    x = torch.randn(2, 1, 64, 96)
    outputs = model.forward_all(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 64, 96), (2, 4, 32, 48), (2, 4, 16, 24), (2, 4, 8, 12)]
    # forward is exactly the full-resolution output of forward_all, heads unused
    torch.testing.assert_close(model(x), outputs[0])
    plain = get_model("unet", features=(8, 16, 32, 64, 128))
    heads = sum(p.numel() for p in model.aux_heads.parameters())
    assert sum(p.numel() for p in model.parameters()) - heads == sum(p.numel() for p in plain.parameters())
    # the default width is the DESIGN.md small U-Net: 1.9 M parameters
    assert sum(p.numel() for p in get_model("unet").parameters()) == pytest.approx(1.94e6, rel=0.01)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_take_one_channel_and_give_four_logits(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, input_size=64).eval()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 80, 80))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()


def test_classifier_resizes_its_input_like_interpolate() -> None:
    torch.manual_seed(0)
    model = get_model("squeezenet", input_size=64).eval()
    x = torch.randn(1, 1, 128, 128)
    resized = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(resized))
