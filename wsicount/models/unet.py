"""The melanocyte-counting U-Net: a small fully-convolutional density regressor.

Architecture (as in the melanocyte-counting paper): 32 filters in the first layer, depth 3,
contracting path of a 3x3 stride-1 conv followed by a 3x3 stride-2 conv (no max-pool),
expansion by bilinear x2 upsampling then a 3x3 conv, skip concatenation, LeakyReLU(0.2)
followed by BatchNorm after every conv (``norm="none"``: no normalisation layer, so the
network's answer to an input never depends on statistics gathered from other inputs), and a
1x1 output conv followed by a non-negative ``head`` activation (:mod:`wsicount.models.heads`).

Invariant used by the tiler: for an input whose origin is aligned to ``stride`` and whose
sides are multiples of ``stride``, an output pixel depends only on input pixels within
``receptive_radius`` of it (Chebyshev distance). Tiles with a halo >= that radius therefore
reproduce whole-image inference exactly (up to float summation order).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .heads import output_activation

__all__ = ["UNet", "unet"]


#: normalisation after each conv's activation
NORMS = ("batch", "none")


class _ConvAct(nn.Sequential):
    """3x3 conv -> LeakyReLU(0.2) -> BatchNorm or nothing (the paper's order: activation, then BN)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.BatchNorm2d(c_out) if norm == "batch" else nn.Identity(),
        )


class UNet(nn.Module):
    """U-Net density regressor; output has the input's spatial size and one channel."""

    #: total downsampling factor; inputs must be multiples of it
    stride: int = 8
    #: measured dependency radius in input pixels (see tests/test_models.py)
    receptive_radius: int = 50

    def __init__(self, in_channels: int = 1, base_filters: int = 32, depth: int = 3, head: str = "relu",
                 norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if depth != 3:
            # the declared stride / receptive radius are for depth 3
            raise ValueError("UNet is defined for depth=3 (stride 8)")
        f = [base_filters * 2**i for i in range(depth + 1)]  # 32, 64, 128, 256
        self.in_channels = in_channels
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        c = in_channels
        for i in range(depth):
            self.enc.append(_ConvAct(c, f[i], norm=norm))
            self.down.append(_ConvAct(f[i], f[i + 1], stride=2, norm=norm))
            c = f[i + 1]
        self.bottleneck = _ConvAct(f[depth], f[depth], norm=norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(_ConvAct(f[i + 1], f[i], norm=norm))
            self.dec.append(_ConvAct(2 * f[i], f[i], norm=norm))
        self.head = nn.Conv2d(f[0], 1, 1)
        self.out_act = output_activation(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, C, H, W) image batch to a (N, 1, H, W) density batch."""
        skips = []
        for enc, down in zip(self.enc, self.down):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = up(x)
            x = dec(torch.cat([x, skip], dim=1))
        return self.out_act(self.head(x))


def unet(in_channels: int = 1, base_filters: int = 32, depth: int = 3, head: str = "relu", norm: str = "batch") -> UNet:
    """Construct the melanocyte U-Net (torchvision-style constructor)."""
    return UNet(in_channels=in_channels, base_filters=base_filters, depth=depth, head=head, norm=norm)
