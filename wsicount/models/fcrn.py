"""FCRN-A: the fully convolutional regression network of Xie, Noble & Zisserman (2016).

"Microscopy cell counting and detection with fully convolutional regression networks"
(Computer Methods in Biomechanics and Biomedical Engineering: Imaging & Visualization, 2018;
MICCAI DLMIA workshop 2015). Architecture A: three blocks of 3x3 conv + ReLU + 2x2 max-pool
with 32, 64, 128 filters, a 3x3 conv with 512 filters standing in for the "fully connected"
layer, then three blocks of x2 upsampling + 3x3 conv with 128, 64, 32 filters, and a 1x1 conv
to one density channel followed by a non-negative ``head`` activation (:mod:`.heads`). The paper has no BatchNorm; most reimplementations add it after every
conv because it makes training from scratch far less sensitive to the learning rate, so it is
on by default (``batch_norm=False`` gives the paper's net). Upsampling is bilinear.
``width`` (default 32, the paper's) scales every layer's filters proportionally.

Invariant used by the tiler: for an input whose origin is aligned to ``stride`` and whose
sides are multiples of ``stride``, an output pixel depends only on input pixels within
``receptive_radius`` of it (Chebyshev distance), so tiles with a halo >= that radius reproduce
whole-image inference exactly (up to float summation order).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .heads import output_activation

__all__ = ["FCRN", "fcrn"]


def _conv(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    """3x3 conv -> [BatchNorm] -> ReLU; the conv has no bias when BN follows (BN has one)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FCRN(nn.Module):
    """FCRN-A density regressor; output has the input's spatial size and one channel."""

    #: total downsampling factor (three 2x2 max-pools); inputs must be multiples of it
    stride: int = 8
    #: measured dependency radius in input pixels (see tests/test_models.py)
    receptive_radius: int = 36

    def __init__(self, in_channels: int = 1, batch_norm: bool = True, width: int = 32, head: str = "relu") -> None:
        super().__init__()
        w1, w2, w4, w16 = width, 2 * width, 4 * width, 16 * width  # paper: 32, 64, 128, 512
        self.in_channels = in_channels
        self.down = nn.ModuleList(
            [_conv(in_channels, w1, batch_norm), _conv(w1, w2, batch_norm), _conv(w2, w4, batch_norm)]
        )
        self.middle = _conv(w4, w16, batch_norm)
        self.up = nn.ModuleList([_conv(w16, w4, batch_norm), _conv(w4, w2, batch_norm), _conv(w2, w1, batch_norm)])
        self.head = nn.Conv2d(w1, 1, 1)
        self.out_act = output_activation(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, C, H, W) image batch to a (N, 1, H, W) density batch."""
        for conv in self.down:
            x = F.max_pool2d(conv(x), 2)
        x = self.middle(x)
        for conv in self.up:
            x = conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return self.out_act(self.head(x))


def fcrn(in_channels: int = 1, batch_norm: bool = True, width: int = 32, head: str = "relu") -> FCRN:
    """Construct FCRN-A (torchvision-style constructor)."""
    return FCRN(in_channels=in_channels, batch_norm=batch_norm, width=width, head=head)
