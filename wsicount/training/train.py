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
from .recipe import auto_sigma_px, data_domain, default_channels, lr_factor, training_precision
from ..infer import pad_to_stride, set_threads
from .losses import density_loss
from ..models import ModelCard, build_model, save_model
from ..models.heads import output_activation
from ..normalize import training_field
from ..preprocess import normalize_image
from .targets import density_map

__all__ = ["TrainConfig", "train", "recalibrate_bn", "split_train_val"]


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (stored in the model card).

    ``None`` means "infer from the data or hardware" (see :mod:`.recipe`): channels, sigma,
    precision ('auto'), crop (the largest stride multiple that fits every image, at most
    ``max_crop``). ``max_minutes`` bounds the wall time: the cosine learning-rate schedule runs
    on whichever of epochs and minutes is used up first, so a timed run still anneals.
    """

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
    sigma_um: float | None = None
    channels: list[int] | None = None
    normalization: dict[str, Any] = field(default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.5})
    modality: str = "fluorescence"
    stain: str | None = None
    cell_diameter_um: float | None = None
    n_val: int | None = None
    val_fraction: float = 0.2
    patience: int = 20
    monitor: str = "val_mae"
    seed: int = 0
    max_minutes: float | None = 40.0
    precision: str = "auto"
    crop: int | None = None
    max_crop: int = 256
    scale_jitter: tuple[float, float] | None = None
    val_every: int = 1
    bn_images: int = 32
    bn_final_images: int | None = None
    threads: int | None = None
    #: output head while training; the card's head (``arch_kwargs['head']``, default relu) is used
    #: for validation and inference. A ReLU trained from scratch with L1 on sparse nuclei went dead:
    #: after ~100 steps only 0.2 % of pixels were positive and it predicted 2 of 40 cells, since a
    #: clamped pixel gets no gradient; a linear output keeps every pixel trainable and the clamp
    #: then only removes the small negative noise
    train_head: str | None = "linear"


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


def _sigma_px(cfg: TrainConfig, samples: list[Sample]) -> float:
    """Target sigma in pixels: px wins, else um with the data's um/px, else from the annotations."""
    if cfg.sigma_px is not None:
        return float(cfg.sigma_px)
    mpp = samples[0].mpp
    if cfg.sigma_um is not None and mpp:
        return float(cfg.sigma_um) / mpp
    return auto_sigma_px(samples)


def _crop_size(samples: list[Sample], stride: int, cfg: TrainConfig) -> tuple[int, int]:
    """Square-ish crop: ``cfg.crop`` or ``max_crop``, never larger than the smallest image (stride multiple)."""
    h = min(s.image.shape[0] for s in samples)
    w = min(s.image.shape[1] for s in samples)
    c = cfg.crop or cfg.max_crop
    h, w = min(h, c), min(w, c)
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


def _prepare(data: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Split, infer channels / sigma / precision / crop, normalise images, build the module."""
    samples = load_dataset(data)
    train_s, val_s = split_train_val(samples, cfg)
    if not train_s or not val_s:
        raise ValueError(f"{data}: need training and validation images (got {len(train_s)} / {len(val_s)})")
    channels = cfg.channels if cfg.channels is not None else default_channels(train_s)
    arch_kwargs = {"head": "relu", **cfg.arch_kwargs}
    module = build_model(cfg.arch, in_channels=len(channels), **arch_kwargs)
    return {
        "train_act": output_activation(cfg.train_head or arch_kwargs["head"]), "infer_act": module.out_act,
        "clamp": (cfg.train_head or arch_kwargs["head"]) == "linear" and arch_kwargs["head"] == "relu",
        "train_s": train_s, "val_s": val_s, "channels": channels, "arch_kwargs": arch_kwargs,
        "module": module, "sigma": _sigma_px(cfg, train_s), "precision": training_precision(cfg.precision),
        "crop": _crop_size(train_s, module.stride, cfg),
        "tr": [(normalize_image(s.image, channels, cfg.normalization), s) for s in train_s],
        "va": [(normalize_image(s.image, channels, cfg.normalization), s) for s in val_s],
    }


def _bn_subset(tr: list, n: int, seed: int) -> list[np.ndarray]:
    """A fixed, seeded subset of ``n`` full training images for BN recalibration (nested: a larger
    ``n`` extends a smaller one)."""
    idx = np.random.default_rng(seed + 2).permutation(len(tr))[:n]
    return [tr[i][0] for i in sorted(idx)]


def train(data: str | Path, out: str | Path, cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train on dataset folder ``data``; writes NAME.safetensors/.json in ``out``; returns the card path."""
    from tqdm.auto import tqdm

    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data, out = Path(data), Path(out)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    P = _prepare(data, cfg)
    module, tr, va, sigma, crop = P["module"], P["tr"], P["va"], P["sigma"], P["crop"]
    stride = module.stride
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tr) / cfg.batch_size)
    aug = Augmenter(seed=cfg.seed, scale=cfg.scale_jitter, min_size=max(crop))
    order_rng = np.random.default_rng(cfg.seed + 1)
    bn_set = _bn_subset(tr, cfg.bn_images, cfg.seed)
    state = {"epoch": -1, "best": math.inf, "best_epoch": -1, "history": [], "minutes": 0.0}
    last = ckpt_dir / "last.pt"
    if resume and last.exists():
        ck = torch.load(last, weights_only=True)  # plain tensors, numbers and dicts: nothing is unpickled
        module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aug.rng.bit_generator.state = ck["aug_rng"]
        order_rng.bit_generator.state = ck["order_rng"]
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
    name = cfg.name or f"{data.name}-{cfg.arch}"
    t0 = time.monotonic() - 60 * state["minutes"]
    budget = cfg.max_minutes if cfg.max_minutes is not None else math.inf
    bar = tqdm(range(state["epoch"] + 1, cfg.epochs), desc=f"train {name}", disable=not progress,
               initial=state["epoch"] + 1, total=cfg.epochs)
    for epoch in bar:
        module.out_act = P["train_act"]
        module.train()
        perm = order_rng.permutation(len(tr))
        run_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            minutes = (time.monotonic() - t0) / 60
            if minutes >= budget:  # the schedule has annealed to lr 0: further steps change nothing
                break
            prog = max((epoch + i / steps_per_epoch) / cfg.epochs, minutes / budget)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(prog)
            xb, yb = _make_batch([tr[j] for j in idx], aug, crop, sigma, cfg.density_scale)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=P["precision"] == "bf16"):
                pred = module(xb)
            loss = density_loss(pred.float(), yb, cfg.loss, cfg.count_weight, cfg.density_scale, clamp=P["clamp"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += float(loss.detach()) * len(idx)
        minutes = (time.monotonic() - t0) / 60
        out_of_time = minutes >= budget or epoch == cfg.epochs - 1
        row = {"epoch": epoch, "train_loss": run_loss / len(tr), "lr": opt.param_groups[0]["lr"], "minutes": minutes}
        if epoch % cfg.val_every == cfg.val_every - 1 or out_of_time:
            module.out_act = P["infer_act"]
            recalibrate_bn(module, bn_set, stride, cfg.batch_size, views=1)
            row["val_loss"], row["val_mae"] = _validate(module, va, stride, sigma, cfg.density_scale, cfg.loss)
            score = row["val_loss"] if cfg.monitor == "val_loss" else row["val_mae"]
            if score < state["best"]:
                state["best"], state["best_epoch"] = score, epoch
                torch.save({"model": module.state_dict(), "epoch": epoch}, ckpt_dir / "best.pt")
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_mae=f"{row['val_mae']:.2f}",
                            best=f"{state['best']:.3f}@{state['best_epoch']}")
        state["history"].append(row)
        state.update(epoch=epoch, minutes=(time.monotonic() - t0) / 60)
        torch.save({"model": module.state_dict(), "opt": opt.state_dict(), "aug_rng": aug.rng.bit_generator.state,
                    "order_rng": order_rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "state": state}, last)
        _write_history(out / "history.csv", state["history"])
        if out_of_time or epoch - state["best_epoch"] >= cfg.patience:
            break
    return _finish(module, P, cfg, data, out, name, state, t0)


def _finish(module: nn.Module, P: dict[str, Any], cfg: TrainConfig, data: Path, out: Path, name: str,
            state: dict[str, Any], t0: float) -> Path:
    """Reload the best weights, recalibrate BN on full training images, score val, write the card."""
    ck = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    module.load_state_dict(ck["model"])
    module.out_act = P["infer_act"]
    tr, va, sigma, channels = P["tr"], P["va"], P["sigma"], P["channels"]
    n_bn = len(tr) if cfg.bn_final_images is None else min(cfg.bn_final_images, len(tr))
    recalibrate_bn(module, _bn_subset(tr, n_bn, cfg.seed), module.stride, cfg.batch_size, views=1)
    vloss, vmae = _validate(module, va, module.stride, sigma, cfg.density_scale, cfg.loss)
    card = ModelCard(
        name=name, arch=cfg.arch, arch_kwargs={"in_channels": len(channels), **P["arch_kwargs"]},
        channels=channels,
        normalization={**cfg.normalization, **training_field([s.image.shape[:2] for s in P["train_s"]], P["train_s"][0].mpp)},
        mpp=P["train_s"][0].mpp, density_scale=cfg.density_scale, sigma_px=sigma, stride=module.stride,
        receptive_radius=module.receptive_radius, modality=cfg.modality,
        peak_min_distance_px=max(2, int(round(sigma * 0.75))),
        domain=data_domain(P["train_s"], channels, cfg.modality, cfg.stain, cfg.cell_diameter_um),
        training={"data": data.name, "command": " ".join(shlex.quote(a) for a in sys.argv),
                  "config": {k: v for k, v in cfg.__dict__.items()}, "precision": P["precision"],
                  "sigma_px": sigma, "sigma_rule": "given" if cfg.sigma_px or cfg.sigma_um else "0.4 x p10 NN spacing",
                  "crop": list(P["crop"]), "bn_recalibration_images": n_bn, "n_train": len(tr), "n_val": len(va),
                  "val_names": [s.name for _, s in va], "best_epoch": ck["epoch"],
                  "epochs_run": len(state["history"]), "minutes": round((time.monotonic() - t0) / 60, 1),
                  "threads": torch.get_num_threads(), "torch": torch.__version__},
        metrics={"val_loss": vloss, "val_mae": vmae},
    )
    return save_model(module, card, out / name)


def _write_history(path: Path, history: list[dict]) -> None:
    """Write the per-epoch history as CSV."""
    fields = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(history)
