"""A 2D U-Net in the nnU-Net style.

Each stage is two 3x3 convolutions, each followed by InstanceNorm (affine) and LeakyReLU(0.01);
the encoder goes down with a stride-2 first convolution (no pooling), the decoder up with a
stride-2 transposed convolution and concatenation of the skip connection, as nnU-Net's
``PlainConvUNet`` does. Deep-supervision heads (1x1 convolutions on every decoder stage but
the lowest) exist when ``deep_supervision=True``; they are used only by
:meth:`UNet.forward_all` during training, never by :meth:`UNet.forward`, so an exported
model (traced or scripted ``forward``) carries the heads' weights but never runs them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cmrsdk.errors import InputError

__all__ = ["UNet", "unet"]


class _Stage(nn.Sequential):
    """Two (conv 3x3 -> InstanceNorm -> LeakyReLU) blocks; the first may stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [
                nn.Conv2d(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    3,
                    stride=stride if i == 0 else 1,
                    padding=1,
                    bias=True,
                ),
                nn.InstanceNorm2d(out_channels, eps=1e-5, affine=True),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class UNet(nn.Module):
    """nnU-Net-style 2D U-Net returning logits.

    Parameters
    ----------
    in_channels : channels of the input slices (1 for cine CMR).
    num_classes : output channels (4: background, LVBP, LVM, RVBP).
    features : channels of each resolution stage, highest resolution first; the input
        height and width must be divisible by ``2 ** (len(features) - 1)``.
    deep_supervision : create the deep-supervision heads used by :meth:`forward_all`.
    """

    def __init__(self, in_channels: int, num_classes: int, features: Sequence[int], deep_supervision: bool) -> None:
        super().__init__()
        self.features = tuple(int(f) for f in features)
        self.deep_supervision = bool(deep_supervision)
        self.encoder = nn.ModuleList(
            _Stage(in_channels if i == 0 else self.features[i - 1], f, stride=1 if i == 0 else 2)
            for i, f in enumerate(self.features)
        )
        # decoder stage j upsamples from features[-1 - j] to features[-2 - j]
        ups, decoder = [], []
        for deep, shallow in zip(self.features[:0:-1], self.features[-2::-1]):
            ups.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2, bias=False))
            decoder.append(_Stage(2 * shallow, shallow, stride=1))
        self.ups = nn.ModuleList(ups)
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv2d(self.features[0], num_classes, 1)
        # heads for the lower decoder outputs, in forward_all's order (half resolution first)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(f, num_classes, 1) for f in self.features[1:-1])
            if self.deep_supervision
            else nn.ModuleList()
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # nnU-Net's InitWeights_He(1e-2): He-normal weights matched to LeakyReLU(0.01) and zero
        # biases, instead of torch's default (uniform, a=sqrt(5)), so training starts as nnU-Net's
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.features) - 1)

    def _decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs: list[torch.Tensor] = []
        x = skips[-1]
        for j, (up, stage) in enumerate(zip(self.ups, self.decoder)):
            x = stage(torch.cat([up(x), skips[-2 - j]], dim=1))
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, in_channels, H, W) -> logits float32 (N, num_classes, H, W)."""
        return self.head(self._decode(x)[-1])

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits at every supervised resolution, full resolution first.

        Returns ``[ (N, C, H, W), (N, C, H/2, W/2), ... ]`` down to 1/2**(len(features)-2);
        only the first when the model was built without deep supervision.
        """
        decoded = self._decode(x)
        outputs = [self.head(decoded[-1])]
        for head, features in zip(self.aux_heads, decoded[-2::-1]):
            outputs.append(head(features))
        return outputs


def unet(
    *,
    in_channels: int = 1,
    num_classes: int = 4,
    features: Sequence[int] = (16, 32, 64, 128, 256),
    deep_supervision: bool = False,
) -> UNet:
    """Build an nnU-Net-style 2D U-Net (see :class:`UNet`).

    Raises
    ------
    InputError : fewer than two stages, or a non-positive channel count.
    """
    features = tuple(features)
    if len(features) < 2 or not all(isinstance(f, int) and f > 0 for f in features):
        raise InputError(f"'features' must be at least two positive ints (channels per stage), got {features!r}")
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"'{name}' must be a positive int, got {value!r}")
    return UNet(in_channels, num_classes, features, deep_supervision)
