"""Fine-tuning: training that starts from a bundled or saved model instead of random weights.

``TrainConfig.init`` names the model (``blastomere``, or a card path). The run then keeps what
the model's inputs and outputs mean -- architecture and its arguments (head included),
channels, intensity normalisation, density scale, modality, and the target sigma unless one is
given -- and trains every weight from the model's values. Images whose ``um_per_px`` differs
from the model's µm/px are resampled to it (:func:`wsicount.training.data.resample_samples`), so
cells have the size in pixels the model was trained on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    from torch import nn

    from .train import TrainConfig

__all__ = ["apply_init", "init_weights", "init_mpp"]


def _card(cfg: "TrainConfig"):
    """The init model's card (a ModelError names a missing or broken model)."""
    from ..models import read_card

    return read_card(cfg.init)[0]


def apply_init(cfg: "TrainConfig") -> "TrainConfig":
    """``cfg`` with the init model's architecture, channels, normalisation, scale and sigma (unchanged without init)."""
    if not cfg.init:
        return cfg
    card = _card(cfg)
    kwargs = {k: v for k, v in card.arch_kwargs.items() if k != "in_channels"}
    given_sigma = cfg.sigma_px is not None or cfg.sigma_um is not None
    return replace(cfg, arch=card.arch, arch_kwargs=kwargs, channels=list(card.channels),
                   normalization=dict(card.normalization), density_scale=card.density_scale,
                   modality=card.modality, sigma_px=cfg.sigma_px if given_sigma else card.sigma_px)


def init_mpp(cfg: "TrainConfig") -> float | None:
    """The µm/px the init model's inputs have (None: no init, or a model without one)."""
    return _card(cfg).mpp if cfg.init else None


def init_weights(cfg: "TrainConfig", module: "nn.Module") -> None:
    """Load the init model's weights into ``module`` (built from :func:`apply_init`'s config); no-op without init."""
    if not cfg.init:
        return
    from ..models import load_model

    state: dict[str, Any] = load_model(cfg.init).module.state_dict()
    try:
        module.load_state_dict(state)
    except RuntimeError as e:  # a card whose arguments do not build its own weights' shapes
        raise ModelError(f"cannot start from {cfg.init!r}: its weights do not fit its architecture ({e})") from None
