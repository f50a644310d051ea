"""Cell-Net: residual encoder, Residual Incremental Atrous Pyramid, progressive sub-pixel decoder.

Three parts, all fully convolutional:

* **Encoder** (ResNet-style): a 3x3 stem and one basic residual block at full resolution, then
  three stages that each halve the resolution with a stride-2 residual block (3x3 stride-2 conv
  on the main path, 1x1 stride-2 conv on the shortcut, as in ResNet), total stride 8.
* **Residual Incremental Atrous Pyramid (RIAP)** at stride 8: five cascaded dilated 3x3 convs,
  each added back to its input (``y_k = y_{k-1} + f_k(y_{k-1})``), so level k sees the
  context of every earlier level plus its own; the six levels (input included) are concatenated
  and fused by a 1x1 conv. Rates are (1, 1, 2, 3, 4) rather than the usual (1, 2, 4, 8, 16):
  at stride 8 the latter reach +-248 input pixels from the pyramid alone, too wide for
  256-1024 px tiles (the halo would dominate the work) and far wider than a cell. The chosen
  rates keep the whole net's radius under 150 px and satisfy r_k <= 1 + 2 * sum(r_<k), so the
  reachable offsets form a contiguous square: every pixel of the dilated neighbourhood
  contributes (no gridding holes).
* **Progressive Upsampling Convolution (PUC)** decoder: three x2 steps, each a 3x3 conv to
  4x the output channels followed by PixelShuffle(2) (sub-pixel convolution), BatchNorm and
  ReLU, plus a 1x1 lateral projection of the encoder feature at that resolution (restores the
  localisation lost at stride 8). The 1x1 output conv is followed by a non-negative ``head``
  activation (:mod:`.heads`). Sub-pixel convs are initialised with ICNR (Aitken et al.
  2017) so the untrained upsampler is nearest-neighbour-like and free of checkerboard artefacts.

Invariant used by the tiler: for an input whose origin is aligned to ``stride`` and whose
sides are multiples of ``stride``, an output pixel depends only on input pixels within
``receptive_radius`` of it (Chebyshev distance), so tiles with a halo >= that radius reproduce
whole-image inference exactly (up to float summation order).
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import output_activation

__all__ = ["CellNet", "cellnet"]

#: dilation rates of the five pyramid levels (fixed: ``receptive_radius`` is measured for them)
RIAP_RATES = (1, 1, 2, 3, 4)


def _conv_bn_relu(c_in: int, c_out: int, dilation: int = 1) -> nn.Sequential:
    """3x3 (optionally dilated) conv -> BatchNorm -> ReLU, size-preserving."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs plus a shortcut (1x1 projection when shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual mapping relu(x' + F(x))."""
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class _RIAP(nn.Module):
    """Residual Incremental Atrous Pyramid: cascaded residual dilated convs, fused by 1x1."""

    def __init__(self, channels: int, rates: tuple[int, ...] = RIAP_RATES) -> None:
        super().__init__()
        self.levels = nn.ModuleList([_conv_bn_relu(channels, channels, dilation=r) for r in rates])
        self.fuse = nn.Sequential(
            nn.Conv2d(channels * (len(rates) + 1), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every cascade level (input included) and fuse them."""
        feats = [x]
        for level in self.levels:
            x = x + level(x)
            feats.append(x)
        return self.fuse(torch.cat(feats, dim=1))


def _icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """ICNR init: the scale**2 sub-pixel kernels of each output channel start identical."""
    c_out4, c_in, kh, kw = weight.shape
    base = torch.empty(c_out4 // scale**2, c_in, kh, kw)
    nn.init.kaiming_normal_(base, nonlinearity="relu")
    # PixelShuffle takes channel c * scale**2 + k to sub-pixel k of output channel c
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale**2, dim=0))


class _PUCStep(nn.Module):
    """One x2 sub-pixel upsampling step: conv to 4C, PixelShuffle, BN, ReLU, + lateral skip."""

    def __init__(self, c_in: int, c_out: int, c_skip: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1, bias=False)
        _icnr_(self.conv.weight)
        self.shuffle = nn.PixelShuffle(2)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.lateral = nn.Conv2d(c_skip, c_out, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` by 2 and add the projected encoder feature ``skip``."""
        return self.relu(self.bn(self.shuffle(self.conv(x)))) + self.lateral(skip)


class CellNet(nn.Module):
    """Cell-Net density regressor; output has the input's spatial size and one channel."""

    #: total downsampling factor; inputs must be multiples of it
    stride: int = 8
    #: measured dependency radius in input pixels (see tests/test_models.py)
    receptive_radius: int = 134

    def __init__(self, in_channels: int = 1, width: int = 32, head: str = "relu") -> None:
        super().__init__()
        w1, w2, w4 = width, 2 * width, 4 * width  # channels at stride 1, 2, 4 and 8
        self.in_channels = in_channels
        self.stem = nn.Sequential(_conv_bn_relu(in_channels, w1), _BasicBlock(w1, w1))
        self.stage2 = _BasicBlock(w1, w2, stride=2)
        self.stage4 = _BasicBlock(w2, w4, stride=2)
        self.stage8 = _BasicBlock(w4, w4, stride=2)
        self.riap = _RIAP(w4)
        self.up4 = _PUCStep(w4, w2, w4)
        self.up2 = _PUCStep(w2, w1, w2)
        self.up1 = _PUCStep(w1, w1, w1)
        self.head = nn.Sequential(_conv_bn_relu(w1, w1), nn.Conv2d(w1, 1, 1))
        self.out_act = output_activation(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, C, H, W) image batch to a (N, 1, H, W) density batch."""
        s1 = self.stem(x)
        s2 = self.stage2(s1)
        s4 = self.stage4(s2)
        y = self.riap(self.stage8(s4))
        y = self.up4(y, s4)
        y = self.up2(y, s2)
        y = self.up1(y, s1)
        return self.out_act(self.head(y))


def cellnet(in_channels: int = 1, width: int = 32, head: str = "relu") -> CellNet:
    """Construct Cell-Net (torchvision-style constructor); ``width`` = channels at full resolution."""
    return CellNet(in_channels=in_channels, width=width, head=head)
