"""Output heads: the map from the last linear layer to a density that is never negative.

A density counts cells, so no pixel of it may be negative. Every architecture ends in a linear
1x1 conv followed by one of these parameter-free activations (``head`` in ``arch_kwargs``):

* ``"relu"`` (default): exact zeros on background; it also clamps weights trained with a linear
  output, which changes nothing where that output was already >= 0;
* ``"softplus"``: smooth and strictly positive, but log(2) per pixel at a zero pre-activation, so
  the background must first be driven far negative (a 60-step Adam comparison on blob images left
  its loss 15-500x above ReLU's, for U-Net, FCRN and Cell-Net) and any floor it keeps adds up
  over millions of pixels;
* ``"linear"``: no clamp. Training runs through it (``TrainConfig.train_head``) with the clamped
  loss (``density_loss(..., clamp=True)``: relu(output) is scored, and cell pixels below zero are
  pulled back up), because under a plain ReLU a pixel below zero gets no gradient — a U-Net
  trained that way on sparse nuclei went dead (0.2 % of pixels positive after ~100 steps).

The activation holds no parameters, so weights are interchangeable between heads.
"""

from __future__ import annotations

from torch import nn

__all__ = ["HEADS", "output_activation"]

HEADS = ("softplus", "relu", "linear")


def output_activation(head: str) -> nn.Module:
    """The parameter-free module that follows the final 1x1 conv for ``head``."""
    if head == "softplus":
        return nn.Softplus()
    if head == "relu":
        return nn.ReLU()
    if head == "linear":
        return nn.Identity()
    raise ValueError(f"unknown head {head!r}; choose from {list(HEADS)}")
