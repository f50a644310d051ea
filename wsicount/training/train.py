"""Training a density model: Adam, validation split, early stopping, checkpoints, resume.

Batch-norm statistics are re-estimated after training (and before each validation) in one
no-gradient pass over the full-size training images under the eight dihedral transforms:
running averages gathered during training drift with the learning rate and were measured
here to be the largest source of count error at inference (see shared NOTES).
"""

from __future__ import annotations

import csv
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Augmenter, Sample, dihedral, load_dataset
from ..infer import pad_to_stride, set_threads
from .losses import density_loss
from ..models import ModelCard, build_model, save_model
from ..normalize import training_field
from ..preprocess import normalize_image
from .targets import density_map

__all__ = ["TrainConfig", "train", "recalibrate_bn", "split_train_val"]


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (stored in the model card)."""

    arch: str = "unet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    epochs: int = 80
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "l1"
    count_weight: float = 0.0
    density_scale: float = 100.0
    sigma_px: float | None = None
    sigma_um: float | None = 10.0
    channels: list[int] | None = None
    normalization: dict[str, Any] = field(default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.5})
    modality: str = "fluorescence"
    n_val: int | None = None
    val_fraction: float = 0.2
    patience: int = 20
    monitor: str = "val_mae"
    seed: int = 0
    max_minutes: float | None = None
    precision: str = "fp32"


def split_train_val(samples: list[Sample], cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """Use the dataset's 'val' split if present, else hold out a seeded subset of 'train'."""
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    if val:
        return train, val
    n_val = cfg.n_val if cfg.n_val is not None else max(1, round(cfg.val_fraction * len(train)))
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    val_idx = set(order[:n_val].tolist())
    return [s for i, s in enumerate(train) if i not in val_idx], [s for i, s in enumerate(train) if i in val_idx]


def _default_channels(samples: list[Sample]) -> list[int]:
    """Pick the brightest RGB channel (fluorescence) or gray; RGB for brightfield-like data."""
    img = samples[0].image
    if img.ndim == 2 or img.shape[-1] == 1:
        return [0]
    means = np.mean([s.image[..., :3].reshape(-1, 3).mean(0) for s in samples[:20]], axis=0)
    if means.min() > 100:  # bright background: brightfield, keep colour
        return [0, 1, 2]
    return [int(np.argmax(means))]


def _sigma_px(cfg: TrainConfig, mpp: float | None) -> float:
    """Target sigma in pixels from the config (px wins; else um converted with mpp)."""
    if cfg.sigma_px is not None:
        return float(cfg.sigma_px)
    if mpp is None or cfg.sigma_um is None:
        raise ValueError("dataset has no um_per_px: give sigma in pixels (--sigma-px)")
    return float(cfg.sigma_um) / mpp


def _crop_size(samples: list[Sample], stride: int) -> tuple[int, int]:
    """Largest stride-multiple crop that fits every training image."""
    h = min(s.image.shape[0] for s in samples)
    w = min(s.image.shape[1] for s in samples)
    return h - h % stride, w - w % stride


def _make_batch(
    items: list[tuple[np.ndarray, Sample]], aug: Augmenter, crop: tuple[int, int], sigma: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment, crop and render targets for a list of (normalised image, sample)."""
    xs, ys = [], []
    ch, cw = crop
    for x, s in items:
        xa, pa = aug(x, s.points)
        h, w = xa.shape[-2:]
        oy = int(aug.rng.integers(h - ch + 1))
        ox = int(aug.rng.integers(w - cw + 1))
        xa = xa[:, oy : oy + ch, ox : ox + cw]
        pa = pa - np.array([ox, oy])
        xs.append(xa)
        ys.append(density_map(pa, (ch, cw), sigma, scale=scale * s.point_weight)[None])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


@torch.no_grad()
def recalibrate_bn(
    module: nn.Module, images: list[np.ndarray], stride: int, batch_size: int = 8, views: int = 8
) -> None:
    """Re-estimate BatchNorm running stats on full images under ``views`` dihedral transforms."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
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


@torch.no_grad()
def _validate(
    module: nn.Module, val: list[tuple[np.ndarray, Sample]], stride: int, sigma: float, scale: float, loss: str
) -> tuple[float, float]:
    """Mean pixel loss and count MAE over full validation images (eval mode)."""
    module.eval()
    losses, errs = [], []
    for x, s in val:
        h, w = x.shape[-2:]
        y = module(torch.from_numpy(pad_to_stride(x, stride)[None]))[:, :, :h, :w]
        t = torch.from_numpy(density_map(s.points, (h, w), sigma, scale=scale * s.point_weight)[None, None])
        losses.append(float(density_loss(y, t, loss)))
        errs.append(abs(float(y.sum()) / scale - s.count))
    return float(np.mean(losses)), float(np.mean(errs))


def train(data: str | Path, out: str | Path, cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train on dataset folder ``data``; writes NAME.safetensors/.json in ``out``; returns the card path."""
    from tqdm.auto import tqdm

    set_threads()
    torch.manual_seed(cfg.seed)
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    samples = load_dataset(data)
    train_s, val_s = split_train_val(samples, cfg)
    if not train_s or not val_s:
        raise ValueError(f"{data}: need training and validation images (got {len(train_s)} / {len(val_s)})")
    channels = cfg.channels if cfg.channels is not None else _default_channels(train_s)
    mpp = train_s[0].mpp
    sigma = _sigma_px(cfg, mpp)
    module = build_model(cfg.arch, in_channels=len(channels), **cfg.arch_kwargs)
    stride = module.stride
    crop = _crop_size(train_s, stride)
    tr = [(normalize_image(s.image, channels, cfg.normalization), s) for s in train_s]
    va = [(normalize_image(s.image, channels, cfg.normalization), s) for s in val_s]
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tr) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    aug = Augmenter(seed=cfg.seed)
    order_rng = np.random.default_rng(cfg.seed + 1)
    start_epoch, best, best_epoch, history = 0, math.inf, -1, []
    last = ckpt_dir / "last.pt"
    if resume and last.exists():
        ck = torch.load(last, weights_only=True)
        module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        aug.rng.bit_generator.state = ck["aug_rng"]
        order_rng.bit_generator.state = ck["order_rng"]
        torch.set_rng_state(ck["torch_rng"])
        start_epoch, best, best_epoch, history = ck["epoch"] + 1, ck["best"], ck["best_epoch"], ck["history"]
    name = cfg.name or f"{data.name}-{cfg.arch}"
    t0 = time.monotonic()
    bar = tqdm(range(start_epoch, cfg.epochs), desc=f"train {name}", disable=not progress, initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        module.train()
        perm = order_rng.permutation(len(tr))
        run_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            xb, yb = _make_batch([tr[j] for j in idx], aug, crop, sigma, cfg.density_scale)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                pred = module(xb)
            loss = density_loss(pred.float(), yb, cfg.loss, cfg.count_weight, cfg.density_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += float(loss.detach()) * len(idx)
        recalibrate_bn(module, [x for x, _ in tr], stride, cfg.batch_size, views=1)
        vloss, vmae = _validate(module, va, stride, sigma, cfg.density_scale, cfg.loss)
        row = {"epoch": epoch, "train_loss": run_loss / len(tr), "val_loss": vloss, "val_mae": vmae,
               "lr": sched.get_last_lr()[0], "minutes": (time.monotonic() - t0) / 60}
        history.append(row)
        score = vloss if cfg.monitor == "val_loss" else vmae
        if score < best:
            best, best_epoch = score, epoch
            torch.save({"model": module.state_dict(), "epoch": epoch}, ckpt_dir / "best.pt")
        torch.save({"model": module.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "aug_rng": aug.rng.bit_generator.state, "order_rng": order_rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "epoch": epoch, "best": best,
                    "best_epoch": best_epoch, "history": history}, last)
        _write_history(out / "history.csv", history)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_mae=f"{vmae:.2f}", best=f"{best:.3f}@{best_epoch}")
        if epoch - best_epoch >= cfg.patience:
            break
        if cfg.max_minutes is not None and row["minutes"] >= cfg.max_minutes:
            break
    ck = torch.load(ckpt_dir / "best.pt", weights_only=True)
    module.load_state_dict(ck["model"])
    recalibrate_bn(module, [x for x, _ in tr], stride, cfg.batch_size)
    vloss, vmae = _validate(module, va, stride, sigma, cfg.density_scale, cfg.loss)
    card = ModelCard(
        name=name, arch=cfg.arch, arch_kwargs={"in_channels": len(channels), **cfg.arch_kwargs},
        channels=channels, normalization={**cfg.normalization, **training_field([s.image.shape[:2] for s in train_s], mpp)},
        mpp=mpp, density_scale=cfg.density_scale,
        sigma_px=sigma, stride=stride, receptive_radius=module.receptive_radius, modality=cfg.modality,
        peak_min_distance_px=max(2, int(round(sigma * 0.75))),
        training={"data": data.name, "command": " ".join(shlex.quote(a) for a in sys.argv),
                  "config": {k: v for k, v in cfg.__dict__.items()}, "n_train": len(tr), "n_val": len(va),
                  "val_names": [s.name for _, s in va], "best_epoch": ck["epoch"], "epochs_run": len(history),
                  "minutes": round((time.monotonic() - t0) / 60, 1), "torch": torch.__version__},
        metrics={"val_loss": vloss, "val_mae": vmae},
    )
    return save_model(module, card, out / name)


def _write_history(path: Path, history: list[dict]) -> None:
    """Write the per-epoch history as CSV."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
