"""BatchNorm statistics of a density model: finding the layers, re-estimating running statistics on full images.

Running averages gathered while training drift with the learning rate; a no-gradient pass over
full-size training images (optionally under the dihedral transforms) replaces them with the
statistics inference will meet. ``bn_subset`` is nested: a larger ``n`` extends a smaller one,
so validation and the final recalibration see the same images first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..infer import pad_to_stride
from .data import dihedral

__all__ = ["bn_layers", "bn_subset", "recalibrate_bn"]


def bn_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The module's BatchNorm layers."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(
    module: nn.Module, images: list[np.ndarray], stride: int, batch_size: int = 8, views: int = 8
) -> None:
    """Re-estimate BatchNorm running stats on full images under ``views`` dihedral transforms."""
    bns = bn_layers(module)
    if not bns:
        return
    saved = [(m.momentum,) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    module.train()
    tf = [(k, f) for f in (False, True) for k in range(4)][:views]
    views_ = [pad_to_stride(dihedral(x, k, f), stride) for x in images for k, f in tf]
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for v in views_:
        by_shape.setdefault(v.shape, []).append(np.ascontiguousarray(v))
    for group in by_shape.values():
        for i in range(0, len(group), batch_size):
            module(torch.from_numpy(np.stack(group[i : i + batch_size])))
    for m, (mom,) in zip(bns, saved):
        m.momentum = mom
    module.eval()


def bn_subset(tr: list, n: int, seed: int) -> list[np.ndarray]:
    """A fixed, seeded subset of ``n`` full training images for BN recalibration (nested: a larger
    ``n`` extends a smaller one)."""
    idx = np.random.default_rng(seed + 2).permutation(len(tr))[:n]
    return [tr[i][0] for i in sorted(idx)]
