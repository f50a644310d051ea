"""Output heads: the map from the last linear layer to a density that is never negative.

A density counts cells, so no pixel of it may be negative. Every architecture ends in a linear
1x1 conv followed by one of these parameter-free activations (``head`` in ``arch_kwargs``):

* ``"softplus"`` (default for new models): smooth, strictly positive, gradient everywhere;
* ``"relu"``: exact zeros; used for weights that were trained with a linear output, since
  clamping after the fact changes nothing where that output was already >= 0;
* ``"linear"``: no clamp (only for reproducing or fine-tuning old weights; may go negative).

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
