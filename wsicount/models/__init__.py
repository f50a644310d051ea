"""Density-map architectures and model packaging.

Every architecture is a ``torch.nn.Module`` with class attributes ``stride`` (inputs must be
multiples of it) and ``receptive_radius`` (an output pixel depends only on input pixels
within that Chebyshev distance), and maps (N, C, H, W) to (N, 1, H, W) densities.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .card import ModelCard, LoadedModel, load_model, save_model, bundled_models, resolve_model_path
from .unet import UNet, unet

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "ModelCard",
    "LoadedModel",
    "load_model",
    "save_model",
    "bundled_models",
    "resolve_model_path",
    "UNet",
    "unet",
]


def _registry() -> dict[str, Callable[..., nn.Module]]:
    """Architecture name -> constructor; optional ones appear when their module imports."""
    reg: dict[str, Callable[..., nn.Module]] = {"unet": unet}
    try:
        from .fcrn import fcrn

        reg["fcrn"] = fcrn
    except ImportError:  # pragma: no cover - module is part of the package
        pass
    try:
        from .cellnet import cellnet

        reg["cellnet"] = cellnet
    except ImportError:  # pragma: no cover
        pass
    return reg


ARCHITECTURES = _registry()


def build_model(arch: str, **kwargs) -> nn.Module:
    """Instantiate architecture ``arch`` with constructor keyword arguments ``kwargs``."""
    try:
        ctor = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}") from None
    return ctor(**kwargs)
