"""Density-map architectures and model packaging.

Every architecture is a ``torch.nn.Module`` with class attributes ``stride`` (inputs must be
multiples of it) and ``receptive_radius`` (an output pixel depends only on input pixels
within that Chebyshev distance), and maps (N, C, H, W) to (N, 1, H, W) densities.

Importing this package does not import torch (~2 s): cards are read without it, so input
errors are reported at once and :func:`wsicount.run` can load the weights on one thread
while another computes the tissue mask. The architectures are imported on first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from .card import LoadedModel, ModelCard, bundled_models, load_model, read_card, resolve_model_path, save_model

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "ModelCard",
    "LoadedModel",
    "load_model",
    "read_card",
    "save_model",
    "bundled_models",
    "resolve_model_path",
]


@functools.cache
def _registry() -> dict[str, Callable[..., nn.Module]]:
    """Architecture name -> constructor (imports torch)."""
    from .cellnet import cellnet
    from .fcrn import fcrn
    from .unet import unet

    return {"unet": unet, "fcrn": fcrn, "cellnet": cellnet}


def build_model(arch: str, **kwargs) -> nn.Module:
    """Instantiate architecture ``arch`` with constructor keyword arguments ``kwargs``."""
    try:
        ctor = _registry()[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(_registry())}") from None
    return ctor(**kwargs)


def __getattr__(name: str) -> Any:
    """``ARCHITECTURES`` (name -> constructor), imported on first access; the classes live in the
    per-architecture modules (``wsicount.models.unet.UNet``)."""
    if name == "ARCHITECTURES":
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
