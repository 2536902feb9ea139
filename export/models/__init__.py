"""Model builders and their registry.

Every builder is a lowercase, keyword-only function returning an ``nn.Module`` whose
``forward`` maps float32 (N, 1, H, W) slices to float32 logits: (N, C, H, W) for segmentation
models, (N, C) for classifiers. Softmax is not part of these models; the exporter adds it.

>>> model = get_model("unet", features=(8, 16, 32, 64, 128))
>>> sorted(list_models())[:3]
['alexnet', 'densenet121', 'mobilenet_v2']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cmrsdk.errors import InputError
from . import classifiers, unet as _unet
from .classifiers import alexnet, densenet121, mobilenet_v2, resnet18, shufflenet_v2, squeezenet, vgg11_bn
from .unet import UNet, unet

__all__ = [
    "get_model",
    "list_models",
    "UNet",
    "unet",
    "alexnet",
    "densenet121",
    "mobilenet_v2",
    "resnet18",
    "shufflenet_v2",
    "squeezenet",
    "vgg11_bn",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet.unet,
    **{name: getattr(classifiers, name) for name in classifiers.__all__ if name in classifiers.CLASSIFIERS},
}


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with its builder's keyword arguments.

    Parameters
    ----------
    name : one of :func:`list_models`.
    **kwargs : passed to the builder (e.g. ``features=...`` for ``"unet"``,
        ``input_size=128`` for a classifier).

    Raises
    ------
    InputError : ``name`` is not registered, or the builder rejects ``kwargs``.
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise InputError(f"model name {name!r} is unknown, expected one of {list_models()}") from None
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise InputError(f"model {name!r} does not accept arguments {sorted(kwargs)}: {exc}") from exc
