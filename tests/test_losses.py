"""Density losses (wsicount.training.losses), in particular the clamped (ReLU-at-inference) mode."""

from __future__ import annotations

import torch

from wsicount.training.losses import density_loss


def test_clamped_loss_scores_what_inference_outputs_and_revives_dead_cell_pixels():
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1, 1] = 2.0  # one cell pixel
    pred = torch.full((1, 1, 4, 4), -3.0, requires_grad=True)  # all dead, as a ReLU would leave them
    loss = density_loss(pred, target, "l1", clamp=True)
    loss.backward()
    g = pred.grad[0, 0]
    assert g[1, 1] < 0  # gradient descent raises the dead cell pixel
    assert torch.count_nonzero(g) == 1  # background below zero is left alone: the ReLU removes it
    # same as scoring relu(pred) directly, plus the revive term mean(relu(-pred) on cell pixels)
    expected = torch.nn.functional.l1_loss(torch.relu(pred), target) + 3.0 / 16
    assert torch.isclose(loss, expected)


def test_clamped_count_term_ignores_negative_background():
    target = torch.zeros(1, 1, 4, 4)
    pred = torch.full((1, 1, 4, 4), -1.0)
    pred[..., 0, 0] = 100.0  # one cell's worth of density at scale 100
    plain = density_loss(pred, target, "l1", count_weight=1.0, scale=100.0)
    clamped = density_loss(pred, target, "l1", count_weight=1.0, scale=100.0, clamp=True)
    # linear: the negative background cancels 0.15 of the spurious cell; clamped: it counts fully
    assert torch.isclose(plain, torch.tensor((100.0 + 15.0) / 16 + 0.85))
    assert torch.isclose(clamped, torch.tensor(100.0 / 16 + 1.0))
