"""Variance head: the block likelihood is minimised by the true variance; training lowers it; files round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsicount.errors import ModelError
from wsicount.models import LoadedModel, ModelCard, build_model
from wsicount.models.variance import (VarianceHead, block_nll, features, load_head, predict_variance, save_head,
                                      train_variance_head)
from wsicount.training.data import Sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_block_nll_is_minimised_by_the_true_pixel_variance() -> None:
    """iid pixel noise of variance 0.02: the best constant log-variance is log 0.02, for any block size."""
    gen = torch.Generator().manual_seed(0)
    resid = torch.randn(16, 64, 64, generator=gen) * 0.02 ** 0.5
    for block in (4, 16):
        s = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([s], lr=0.05)
        for _ in range(400):
            loss = block_nll(s.expand(16, 64, 64), resid, block)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert float(s.detach().exp()) == pytest.approx(0.02, rel=0.15)


def _tiny() -> LoadedModel:
    torch.manual_seed(0)
    m = build_model("unet", base_filters=8).eval()
    card = ModelCard(name="tiny", arch="unet", arch_kwargs={"in_channels": 1, "base_filters": 8}, sigma_px=2.0,
                     normalization={"kind": "fixed", "offset": 0.0, "span": 255.0})
    return LoadedModel(m, card, None)


def _samples(n: int, rng: np.random.Generator) -> list[Sample]:
    """Gray images with bright blobs at annotated points (the tiny model counts them badly: large residuals)."""
    out = []
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        pts = rng.uniform(4, 60, (int(rng.integers(2, 12)), 2))
        img = np.zeros((64, 64))
        for x, y in pts:
            img = np.maximum(img, 220 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8))
        out.append(Sample(f"s{i}", img.astype(np.uint8), pts, float(len(pts)), "train", None))
    return out


def test_training_lowers_the_block_likelihood_and_the_head_round_trips(tmp_path) -> None:
    lm, rng = _tiny(), np.random.default_rng(0)
    samples = _samples(6, rng)
    head0 = VarianceHead(8)
    head = train_variance_head(lm, samples, minutes=0.0, block=8, batch=6)  # one epoch
    more = train_variance_head(lm, samples, minutes=0.05, block=8, batch=6)

    def nll(h: VarianceHead) -> float:
        from wsicount.models.variance import _prepared

        f, d, r = _prepared(lm, samples)
        with torch.no_grad():
            return float(block_nll(h(torch.cat(f).float(), torch.cat(d)), torch.cat(r), 8))

    assert nll(more) < nll(head0)
    dens, var = predict_variance(lm, more, samples[0].image)
    assert dens.shape == var.shape == (64, 64) and (var > 0).all()
    path = save_head(more, tmp_path / "h.safetensors")
    again = load_head(path)
    assert np.allclose(predict_variance(lm, again, samples[0].image)[1], var)
    assert head.in_features == 8 and features(lm, torch.zeros(1, 1, 64, 64))[0].shape == (1, 8, 64, 64)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="variance head"):
        load_head(tmp_path / "bad.safetensors")
