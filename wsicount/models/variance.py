"""A heteroscedastic variance head on a frozen density model: per-pixel log-variance of the density error.

The head reads the features the density model's own 1x1 output layer reads (its input, taken
with a forward hook, so the model is unchanged) and the density it predicts, and outputs
``s = log σ²`` per pixel (cells/px units). It is trained with a Gaussian negative
log-likelihood of **block** counts: for each ``block x block`` cell of a training image the
residual ``r_b = Σ_b (target - density)`` is scored against ``v_b = Σ_b exp(s)``:
``½ (log v_b + r_b² / v_b)``. Per-pixel errors of a density map are strongly correlated
(a misplaced blob is +1 here and -1 next door), so a per-pixel likelihood would model noise
that cancels in any count; the block likelihood models the error a count sees. An area's
variance is the sum of its pixels' variances (the ``het_var`` term of
:mod:`wsicount.uncertainty`); the conformal calibration rescales it, so blocks larger than
the head's training block are covered by the calibration's weights, not by the head alone.

Cost at run time: one small convolution on the last feature map (~1-3 % of a forward pass).

Train one (``nice -n 10``, one thread, a few minutes on a CPU)::

    python -m wsicount.models.variance vgg-cells ../shared/data/vgg_cells --out /tmp/vgg-cells.variance.safetensors
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelError

__all__ = ["VarianceHead", "features", "block_nll", "train_variance_head", "predict_variance", "predict_batch_variance",
           "save_head", "load_head"]

#: log-variance bounds (cells²/px²): keeps exp finite and the likelihood's gradient bounded
LOGVAR_RANGE = (-25.0, 5.0)


class VarianceHead(nn.Module):
    """[features, density] -> per-pixel log-variance: a 3x3 conv to ``hidden`` channels, ReLU, a 1x1 conv."""

    def __init__(self, in_features: int, hidden: int = 8) -> None:
        super().__init__()
        self.in_features = in_features
        self.body = nn.Sequential(nn.Conv2d(in_features + 1, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, 1, 1))
        nn.init.constant_(self.body[2].bias, -8.0)  # start small: exp(-8) cells²/px²

    def forward(self, feats: torch.Tensor, dens: torch.Tensor) -> torch.Tensor:
        """(N, F, H, W) features and (N, H, W) density in cells/px -> (N, H, W) log-variance."""
        s = self.body(torch.cat([feats, dens[:, None] * 100.0], dim=1))[:, 0]
        return s.clamp(*LOGVAR_RANGE)


def _output_layer(lm: Any, module: nn.Module | None = None) -> nn.Module:
    """The final 1x1 convolution of the model (or of ``module``, a copy of it): its input is the head's feature map."""
    head = getattr(module if module is not None else lm.module, "head", None)
    if isinstance(head, nn.Sequential):
        head = head[-1]
    if not isinstance(head, nn.Conv2d):
        raise ModelError(f"model {lm.card.name} ({lm.card.arch}) has no final convolution a variance head can read")
    return head


@torch.inference_mode()
def features(lm: Any, x: torch.Tensor, module: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features at the output layer's input, density in cells/px) of a normalised, stride-padded batch,
    through ``module`` (default the model's own; e.g. its reduced-precision copy)."""
    module = module if module is not None else lm.module
    got: list[torch.Tensor] = []
    hook = _output_layer(lm, module).register_forward_pre_hook(lambda m, inp: got.append(inp[0]))
    try:
        y = module(x)
    finally:
        hook.remove()
    return got[0].float(), y[:, 0].float() / lm.card.density_scale


def block_nll(logvar: torch.Tensor, resid: torch.Tensor, block: int) -> torch.Tensor:
    """Mean Gaussian NLL of ``block x block`` sums of the residual under summed per-pixel variances."""
    area = float(block * block)
    v = F.avg_pool2d(logvar.exp()[:, None], block)[:, 0] * area
    r = F.avg_pool2d(resid[:, None], block)[:, 0] * area
    return 0.5 * (torch.log(v) + r * r / v).mean()


def _prepared(lm: Any, samples: Sequence[Any]) -> tuple[list, list, list]:
    """Each sample's frozen features (float16), density and residual (target - density), cropped to a block grid."""
    from ..infer import pad_to_stride
    from ..preprocess import normalize_image
    from ..training.targets import density_map

    feats, dens, resid = [], [], []
    for s in samples:
        x = normalize_image(s.image, lm.card.channels, lm.card.normalization)
        h, w = x.shape[-2:]
        f, d = features(lm, torch.from_numpy(np.ascontiguousarray(pad_to_stride(x, lm.card.stride)))[None])
        t = density_map(s.points, (h, w), lm.card.sigma_px, scale=s.point_weight)
        feats.append(f[..., :h, :w].half())
        dens.append(d[..., :h, :w])
        resid.append(torch.from_numpy(t.astype(np.float32))[None] - d[..., :h, :w])
    return feats, dens, resid


def train_variance_head(lm: Any, samples: Sequence[Any], minutes: float = 5.0, block: int = 16, hidden: int = 8,
                        batch: int = 8, lr: float = 3e-3, seed: int = 0, log: Any = None) -> VarianceHead:
    """Fit a :class:`VarianceHead` on ``samples`` with the model frozen, for ``minutes`` of wall time
    (whole epochs, at least one); returns it in eval mode."""
    torch.manual_seed(seed)
    feats, dens, resid = _prepared(lm, samples)
    head = VarianceHead(feats[0].shape[1], hidden)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    end, epoch = time.monotonic() + 60.0 * minutes, 0
    while epoch == 0 or time.monotonic() < end:
        order, total = rng.permutation(len(samples)), 0.0
        for i in range(0, len(order), batch):
            idx = [j for j in order[i:i + batch] if feats[j].shape == feats[order[i]].shape]
            f = torch.cat([feats[j] for j in idx]).float()
            d, r = torch.cat([dens[j] for j in idx]), torch.cat([resid[j] for j in idx])
            loss = block_nll(head(f, d), r, block)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        epoch += 1
        if log is not None:
            log(f"epoch {epoch}: block NLL {total / len(samples):.4f}")
    return head.eval()


@torch.inference_mode()
def predict_variance(lm: Any, head: VarianceHead, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(density, per-pixel variance) of one image, both (H, W) in cells/px and cells²/px²."""
    from ..infer import pad_to_stride
    from ..preprocess import normalize_image

    x = normalize_image(image, lm.card.channels, lm.card.normalization)
    h, w = x.shape[-2:]
    dev = next(lm.module.parameters()).device
    d, v = predict_batch_variance(lm, head, pad_to_stride(x, lm.card.stride)[None], dev)
    return d[0, :h, :w], v[0, :h, :w]


@torch.inference_mode()
def predict_batch_variance(lm: Any, head: VarianceHead, batch: np.ndarray, device: Any,
                           precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(density, per-pixel variance), each (N, H, W), of a normalised stride-aligned batch on ``device``:
    the network in ``precision`` exactly as :func:`wsicount.infer.predict_batch` runs it, the head in fp32."""
    from ..infer import DTYPES, module_for, resolve_precision

    precision = resolve_precision(device, precision, lm.card)
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device, dtype=DTYPES[precision])
    f, d = features(lm, x.contiguous(memory_format=torch.channels_last), module_for(lm, device, precision))
    f, d = f.float(), d.float()
    return d.cpu().numpy(), head.to(device)(f, d).exp().cpu().numpy()


def save_head(head: VarianceHead, path: str | os.PathLike) -> Path:
    """Write the head's weights (safetensors) with its shape in the metadata."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    hidden = head.body[0].out_channels
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(p),
              metadata={"in_features": str(head.in_features), "hidden": str(hidden)})
    return p


def load_head(path: str | os.PathLike) -> VarianceHead:
    """Read a head written by :func:`save_head`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        head = VarianceHead(int(meta["in_features"]), int(meta["hidden"]))
        head.load_state_dict(state)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise ModelError(f"variance head {path} is missing or corrupt: {e}") from None
    return head.eval()


def main(argv: list[str] | None = None) -> None:
    """``python -m wsicount.models.variance MODEL DATA --out HEAD.safetensors [--minutes 5] [--block 16]``."""
    from . import load_model
    from ..training.data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model(a.model)
    # the images that validate or calibrate the model stay unseen by its variance head too
    held = set(lm.card.training.get("val_names") or []) | set(lm.card.training.get("cal_names") or [])
    train = [s for s in load_dataset(a.data, split="train") if s.name not in held]
    print(f"{a.model}: {len(train)} training images (validation and calibration names left out)", flush=True)
    head = train_variance_head(lm, train, a.minutes, a.block, log=lambda m: print(m, flush=True))
    print(f"saved {save_head(head, a.out)}")


if __name__ == "__main__":
    main()
