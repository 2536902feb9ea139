"""The paper's seven slice-region classifiers, from torchvision, for one-channel slices.

Each builder makes the torchvision architecture with ``num_classes`` outputs and random
weights (trained from scratch: no pretrained downloads exist where this runs), then replaces
its first convolution by one with ``in_channels`` inputs and otherwise the same geometry.

Every classifier is wrapped in :class:`SliceClassifier`, which can resize its input to a
fixed ``input_size`` first (bilinear), so the pipeline feeds the classifier the very
(N, 1, H, W) window it feeds the U-Nets while the classifier runs at a lower, cheaper size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from cmrsdk.errors import InputError

__all__ = [
    "CLASSIFIERS",
    "SliceClassifier",
    "alexnet",
    "densenet121",
    "mobilenet_v2",
    "resnet18",
    "shufflenet_v2",
    "squeezenet",
    "vgg11_bn",
]

#: the registry names of the seven classifier builders, in the paper's order.
CLASSIFIERS: tuple[str, ...] = (
    "alexnet",
    "densenet121",
    "mobilenet_v2",
    "resnet18",
    "shufflenet_v2",
    "squeezenet",
    "vgg11_bn",
)

_SHUFFLENET_WIDTHS: dict[float, Callable[..., nn.Module]] = {
    0.5: tvm.shufflenet_v2_x0_5,
    1.0: tvm.shufflenet_v2_x1_0,
    1.5: tvm.shufflenet_v2_x1_5,
    2.0: tvm.shufflenet_v2_x2_0,
}


class SliceClassifier(nn.Module):
    """A classifier over (N, in_channels, H, W) slices returning (N, num_classes) logits.

    Parameters
    ----------
    net : the torchvision network (already adapted to ``in_channels``).
    input_size : side in pixels the input is resized to (bilinear) before ``net``; None
        keeps the input size.
    """

    def __init__(self, net: nn.Module, input_size: int | None) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, H, W) -> logits float32 (N, num_classes)."""
        if self.input_size is not None:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net(x)


def _replace_first_conv(net: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first ``nn.Conv2d`` of ``net`` for one reading ``in_channels`` channels."""
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                conv = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    dilation=child.dilation,
                    groups=1,
                    bias=child.bias is not None,
                )
                setattr(parent, name, conv)
                return net
    raise InputError(f"network {type(net).__name__} has no Conv2d to adapt")  # pragma: no cover


def _build(
    factory: Callable[..., nn.Module], in_channels: int, num_classes: int, input_size: int | None, **kwargs: object
) -> SliceClassifier:
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"'{name}' must be a positive int, got {value!r}")
    if input_size is not None and (not isinstance(input_size, int) or input_size < 32):
        raise InputError(f"'input_size' must be None or an int >= 32 (pixels), got {input_size!r}")
    net = factory(weights=None, num_classes=num_classes, **kwargs)
    return SliceClassifier(_replace_first_conv(net, in_channels), input_size)


def alexnet(*, in_channels: int = 1, num_classes: int = 4, input_size: int | None = None) -> SliceClassifier:
    """AlexNet (Krizhevsky et al., 2012)."""
    return _build(tvm.alexnet, in_channels, num_classes, input_size)


def densenet121(*, in_channels: int = 1, num_classes: int = 4, input_size: int | None = None) -> SliceClassifier:
    """DenseNet-121 (Huang et al., 2017); the paper's best classifier."""
    return _build(tvm.densenet121, in_channels, num_classes, input_size)


def mobilenet_v2(
    *, in_channels: int = 1, num_classes: int = 4, input_size: int | None = None, width: float = 1.0
) -> SliceClassifier:
    """MobileNetV2 (Sandler et al., 2018); ``width`` is torchvision's ``width_mult``."""
    if not width > 0:
        raise InputError(f"'width' must be a positive multiplier, got {width!r}")
    return _build(tvm.mobilenet_v2, in_channels, num_classes, input_size, width_mult=float(width))


def resnet18(*, in_channels: int = 1, num_classes: int = 4, input_size: int | None = None) -> SliceClassifier:
    """ResNet-18 (He et al., 2016)."""
    return _build(tvm.resnet18, in_channels, num_classes, input_size)


def shufflenet_v2(
    *, in_channels: int = 1, num_classes: int = 4, input_size: int | None = None, width: float = 1.0
) -> SliceClassifier:
    """ShuffleNet V2 (Ma et al., 2018) at width 0.5, 1.0, 1.5 or 2.0."""
    if width not in _SHUFFLENET_WIDTHS:
        raise InputError(f"'width' of shufflenet_v2 must be one of {sorted(_SHUFFLENET_WIDTHS)}, got {width!r}")
    return _build(_SHUFFLENET_WIDTHS[width], in_channels, num_classes, input_size)


def squeezenet(*, in_channels: int = 1, num_classes: int = 4, input_size: int | None = None) -> SliceClassifier:
    """SqueezeNet 1.1 (Iandola et al., 2016; the 1.1 variant, 2.4x cheaper at equal accuracy)."""
    return _build(tvm.squeezenet1_1, in_channels, num_classes, input_size)


def vgg11_bn(*, in_channels: int = 1, num_classes: int = 4, input_size: int | None = None) -> SliceClassifier:
    """VGG-A with batch normalisation (Simonyan and Zisserman, 2015)."""
    return _build(tvm.vgg11_bn, in_channels, num_classes, input_size)
