"""BatchNorm recalibration: running statistics become the given images' statistics, without autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsicount.training.batchnorm import bn_layers, bn_subset, recalibrate_bn


def _net() -> nn.Sequential:
    """A BatchNorm directly on the input (its statistics are the images'), then a conv with its own BN."""
    return nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))


def test_recalibrate_bn_sets_running_stats_to_the_images_statistics():
    """The input BN's running mean is the average of the batches' per-channel means (each batch weighs alike)."""
    rng = np.random.default_rng(0)
    images = [rng.normal(m, s, (2, 16, 16)).astype(np.float32) for m, s in ((1.0, 2.0), (3.0, 0.5), (-1.0, 1.0))]
    net = _net()
    net[0].running_mean.fill_(100.0)
    recalibrate_bn(net, images, stride=1, batch_size=2, views=1)
    # batches of 2 then 1 average their batch statistics with equal weight (momentum None)
    means = [np.stack(images[:2]).mean(axis=(0, 2, 3)), images[2].mean(axis=(1, 2))]
    np.testing.assert_allclose(net[0].running_mean.numpy(), np.mean(means, axis=0), rtol=1e-5)
    assert net[0].momentum == 0.1 and not net.training  # restored, left in eval mode


def test_recalibrate_bn_builds_no_autograd_graph():
    """Every forward pass runs with gradients disabled (a full-image pass must not keep activations)."""
    seen: list[bool] = []
    net = _net()
    net.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    recalibrate_bn(net, [np.zeros((2, 8, 8), np.float32)] * 3, stride=1, views=2)
    assert seen and not any(seen)


def test_recalibrate_bn_without_batchnorm_is_a_no_op():
    """A network without BatchNorm is left as it was (training mode included)."""
    net = nn.Conv2d(1, 1, 3)
    net.train()
    recalibrate_bn(net, [np.zeros((1, 8, 8), np.float32)], stride=1)
    assert net.training and bn_layers(net) == []


@pytest.mark.parametrize("seed", [0, 3])
def test_bn_subset_is_nested_and_seeded(seed):
    """A larger subset extends a smaller one, and the same seed picks the same images."""
    tr = [(np.full((1, 2, 2), i, np.float32), None) for i in range(20)]
    small = [int(a[0, 0, 0]) for a in bn_subset(tr, 5, seed)]
    big = [int(a[0, 0, 0]) for a in bn_subset(tr, 12, seed)]
    assert set(small) <= set(big) and len(big) == 12 and small == sorted(small)
    assert small == [int(a[0, 0, 0]) for a in bn_subset(tr, 5, seed)]
    assert torch.is_grad_enabled()
