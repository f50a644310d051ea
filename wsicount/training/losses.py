"""Training losses for density regression.

``l1`` (default, as in the melanocyte U-Net), ``mse``, ``content_mse`` (Cell-Net's
content-based MSE: pixels in cell regions, found from the target, weigh more), each with an
optional count term |sum(pred) - sum(target)| / scale.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["LOSSES", "density_loss", "content_weights"]


def content_weights(target: torch.Tensor, alpha: float = 4.0, rel_threshold: float = 0.05) -> torch.Tensor:
    """Attention map: 1 + alpha where the target exceeds rel_threshold of its per-image max."""
    peak = target.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    return 1.0 + alpha * (target > rel_threshold * peak).to(target.dtype)


def _l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(pred, target)


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target)


def _content_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    w = content_weights(target)
    return (w * (pred - target) ** 2).sum() / w.sum()


LOSSES = {"l1": _l1, "mse": _mse, "content_mse": _content_mse}


def density_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "l1", count_weight: float = 0.0, scale: float = 100.0,
    clamp: bool = False,
) -> torch.Tensor:
    """Pixel loss of ``kind`` plus ``count_weight`` x mean absolute count error (in cells).

    ``clamp``: ``pred`` is the linear output of a model used through a ReLU. Both terms score
    relu(pred), as inference will (background may then sit anywhere below zero, so ReLU removes
    its noise instead of keeping the positive half of it), and inside cells (target > 0) a
    pre-activation below zero is pulled back up by mean(relu(-pred)) so no cell pixel stays dead.
    """
    revive = None
    if clamp:
        revive = (torch.relu(-pred) * (target > 0).to(pred.dtype)).mean()
        pred = torch.relu(pred)
    try:
        loss = LOSSES[kind](pred, target)
    except KeyError:
        raise ValueError(f"unknown loss {kind!r}; choose from {sorted(LOSSES)}") from None
    if count_weight:
        cp = pred.sum(dim=(-3, -2, -1)) / scale
        ct = target.sum(dim=(-3, -2, -1)) / scale
        loss = loss + count_weight * (cp - ct).abs().mean()
    return loss if revive is None else loss + revive
