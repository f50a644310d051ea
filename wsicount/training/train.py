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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .batchnorm import bn_layers, bn_subset, recalibrate_bn
from .data import Augmenter, Sample, load_dataset, make_batch, resample_samples
from .finetune import apply_init, init_mpp, init_weights
from .recipe import auto_sigma_px, data_domain, default_channels, lr_factor, training_precision
from ..infer import pad_to_stride, set_threads
from .losses import density_loss
from ..models import ModelCard, build_model, save_model
from ..models.heads import output_activation
from ..normalize import training_field
from ..preprocess import (apply_normalization, background_level, norm_floor, normalize_image, percentile_stats,
                          select_channels)
from .scale import to_input_scale
from .targets import target_map

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
    #: µm/px of the network input, stated for data without a pixel size (goes into the card)
    mpp: float | None = None
    #: the card's ``input_scale`` rule (see :mod:`.scale`); train and val images are resampled by it
    input_scale: dict[str, Any] = field(default_factory=dict)
    #: name prefix -> copies of each matching training image per epoch (a source with few images)
    oversample: dict[str, int] = field(default_factory=dict)
    #: training images held out for validation besides the dataset's 'val' split
    val_names: list[str] = field(default_factory=list)
    n_val: int | None = None
    #: training images held out of training and of model selection (the card's ``cal_names``), so
    #: interval calibration sees errors as unseen images have them: validation images selected the
    #: best epoch, and their errors are smaller than a test image's
    n_cal: int = 0
    val_fraction: float = 0.2
    patience: int = 20
    monitor: str = "val_mae"
    seed: int = 0
    #: seed of the validation and calibration hold-outs (None: ``seed``); members of one ensemble share
    #: it, so that one set of calibration images is held out of every member
    split_seed: int | None = None
    max_minutes: float | None = 40.0
    precision: str = "auto"
    crop: int | None = None
    max_crop: int = 256
    scale_jitter: tuple[float, float] | None = None
    #: per-channel gain jitter, log-uniform in ±channel_gain (stain variation of RGB images)
    channel_gain: float = 0.0
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
    #: a model to start from (bundled name or card path): see :mod:`.finetune`
    init: str | None = None
    #: points with ellipse columns: target sigma = this fraction of each semi-axis (Cell-Net's dots)
    ellipse_fraction: float = 0.3
    #: share of training crops drawn from the image laid on slide background (:func:`.data.on_background`,
    #: margin half a crop): the network learns that background beyond an image edge holds no cells
    #: instead of answering it with density, so a slide counts an image as `evaluate` does
    frame: float = 0.0
    #: BatchNorm layers keep their running statistics (eval mode) while the other weights train,
    #: and are never recalibrated: fine-tuning then sees exactly the normalisation inference uses
    #: (batch statistics of framed crops and of whole images differ, and a model can depend on them)
    freeze_bn: bool = False
    #: decay per optimiser step of an exponential moving average of the weights (0: off); validation,
    #: epoch selection and the card then use the averaged weights, which are less noisy than the
    #: last step's on a small training set
    ema: float = 0.0


def split_train_val(samples: list[Sample], cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """Use the dataset's 'val' split if present, else hold out a seeded subset of 'train'."""
    held = set(cfg.val_names)
    train = [s for s in samples if s.split == "train" and s.name not in held]
    val = [s for s in samples if s.split == "val" or (s.split == "train" and s.name in held)]
    if val:
        return train, val
    n_val = cfg.n_val if cfg.n_val is not None else max(1, round(cfg.val_fraction * len(train)))
    return _hold_out(train, n_val, _split_seed(cfg))


def hold_out_calibration(train: list[Sample], cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """(training images, ``cfg.n_cal`` seeded calibration images taken out of them)."""
    return _hold_out(train, cfg.n_cal, _split_seed(cfg) + 1)


def _split_seed(cfg: TrainConfig) -> int:
    """The seed of the hold-outs: ``split_seed`` where set, else the training seed."""
    return cfg.seed if cfg.split_seed is None else cfg.split_seed


def _hold_out(samples: list[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(kept, held): ``n`` samples picked by a seeded permutation are held; both keep the input order."""
    held = set(np.random.default_rng(seed).permutation(len(samples))[:n].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def _sigma_px(cfg: TrainConfig, samples: list[Sample]) -> float:
    """Target sigma in pixels: px wins, else um with the data's um/px, else from the annotations."""
    if cfg.sigma_px is not None:
        return float(cfg.sigma_px)
    mpp = samples[0].mpp
    if cfg.sigma_um is not None and mpp:
        return float(cfg.sigma_um) / mpp
    return auto_sigma_px(samples)


def _crop_size(samples: list[Sample], stride: int, cfg: TrainConfig) -> tuple[int, int]:
    """Square-ish crop: ``cfg.crop`` or ``max_crop`` (stride multiple), never larger than the smallest
    image unless scale jitter is on (the augmenter then resamples a smaller image up to the crop)."""
    c = cfg.crop or cfg.max_crop
    if cfg.scale_jitter is not None:
        return c - c % stride, c - c % stride
    h = min(s.image.shape[0] for s in samples)
    w = min(s.image.shape[1] for s in samples)
    h, w = min(h, c), min(w, c)
    return h - h % stride, w - w % stride


@torch.no_grad()
def _validate(
    module: nn.Module, val: list[tuple[np.ndarray, Sample]], stride: int, sigma: float, scale: float, loss: str,
    fraction: float = 0.3,
) -> tuple[float, float]:
    """Mean pixel loss and count MAE over full validation images (eval mode)."""
    module.eval()
    losses, errs = [], []
    for x, s in val:
        h, w = x.shape[-2:]
        y = module(torch.from_numpy(pad_to_stride(x, stride)[None]))[:, :, :h, :w]
        t = torch.from_numpy(target_map(s.points, s.ellipses, (h, w), sigma, scale * s.point_weight, fraction)[None, None])
        losses.append(float(density_loss(y, t, loss)))
        errs.append(abs(float(y.sum()) / scale - s.count))
    return float(np.mean(losses)), float(np.mean(errs))


def _prepare(data: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Split, infer channels / sigma / precision / crop, normalise images, build the module."""
    samples = load_dataset(data)
    if init_mpp(cfg):
        samples = resample_samples(samples, init_mpp(cfg))
    train_s, val_s = split_train_val(samples, cfg)
    train_s, cal_s = hold_out_calibration(train_s, cfg)
    if not train_s or not val_s:
        raise ValueError(f"{data}: need training and validation images (got {len(train_s)} / {len(val_s)})")
    channels = cfg.channels if cfg.channels is not None else default_channels(train_s)
    train_s = to_input_scale(train_s, cfg.input_scale, channels, cfg.mpp)
    val_s = to_input_scale(val_s, cfg.input_scale, channels, cfg.mpp)
    arch_kwargs = {"head": "relu", **cfg.arch_kwargs}
    module = build_model(cfg.arch, in_channels=len(channels), **arch_kwargs)
    init_weights(cfg, module)
    return {
        "train_act": output_activation(cfg.train_head or arch_kwargs["head"]), "infer_act": module.out_act,
        "clamp": (cfg.train_head or arch_kwargs["head"]) == "linear" and arch_kwargs["head"] == "relu",
        "train_s": train_s, "val_s": val_s, "cal_names": [s.name for s in cal_s], "channels": channels,
        "arch_kwargs": arch_kwargs,
        "module": module, "sigma": _sigma_px(cfg, train_s), "precision": training_precision(cfg.precision),
        "crop": _crop_size(train_s, module.stride, cfg),
        "tr": [(normalize_image(s.image, channels, cfg.normalization), s) for s in train_s],
        "background": {s.name: _normalized_background(s, channels, cfg) for s in train_s} if cfg.frame else {},
        "va": [(normalize_image(s.image, channels, cfg.normalization), s) for s in val_s],
    }


def _normalized_background(s: Sample, channels: list[int], cfg: TrainConfig) -> float:
    """The slide background's raw level (:func:`background_level`) under this image's own normalisation."""
    x = select_channels(s.image, channels)
    off, span = percentile_stats(x, cfg.normalization)
    return float(apply_normalization(np.float32(background_level(cfg.modality)), off, span,
                                     norm_floor(cfg.normalization)))


def _oversampled(tr: list[tuple[np.ndarray, Sample]], oversample: dict[str, int]) -> list[tuple[np.ndarray, Sample]]:
    """Training items with each image whose name starts with a key of ``oversample`` repeated that often."""
    out = []
    for item in tr:
        out.extend([item] * max([n for p, n in oversample.items() if item[1].name.startswith(p)] or [1]))
    return out


def _resume(last: Path, module: nn.Module, opt: torch.optim.Optimizer, aug: Augmenter,
            order_rng: np.random.Generator, ema: AveragedModel | None) -> dict[str, Any]:
    """Restore weights, optimiser and random streams from ``last``; returns the run state."""
    ck = torch.load(last, weights_only=True)  # plain tensors, numbers and dicts: nothing is unpickled
    module.load_state_dict(ck["model"])
    if ema is not None:
        ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["opt"])
    aug.rng.bit_generator.state = ck["aug_rng"]
    order_rng.bit_generator.state = ck["order_rng"]
    torch.set_rng_state(ck["torch_rng"])
    return ck["state"]


def _run_epoch(P: dict[str, Any], cfg: TrainConfig, R: dict[str, Any], epoch: int, t0: float, budget: float) -> float:
    """One pass over the (oversampled) training items with the scheduled learning rate; mean loss."""
    module, opt, items = P["module"], R["opt"], R["items"]
    module.out_act = P["train_act"]
    module.train()
    if cfg.freeze_bn:  # normalise with the stored statistics and leave them as they are
        for m in bn_layers(module):
            m.eval()
    steps = math.ceil(len(items) / cfg.batch_size)
    perm = R["order_rng"].permutation(len(items))
    run_loss = 0.0
    for i in range(steps):
        idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        if len(idx) < 2:  # BatchNorm needs more than one sample
            continue
        minutes = (time.monotonic() - t0) / 60
        if minutes >= budget:  # the schedule has annealed to lr 0: further steps change nothing
            break
        prog = max((epoch + i / steps) / cfg.epochs, minutes / budget)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(prog)
        xb, yb = map(torch.from_numpy, make_batch([items[j] for j in idx], R["aug"], P["crop"], P["sigma"],
                                                  cfg.density_scale, cfg.ellipse_fraction, cfg.frame, P["background"]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=P["precision"] == "bf16"):
            pred = module(xb)
        loss = density_loss(pred.float(), yb, cfg.loss, cfg.count_weight, cfg.density_scale, clamp=P["clamp"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if R["ema"] is not None:
            R["ema"].update_parameters(module)
        run_loss += float(loss.detach()) * len(idx)
    return run_loss / len(items)


def _check(P: dict[str, Any], cfg: TrainConfig, R: dict[str, Any], row: dict[str, Any], ckpt_dir: Path) -> None:
    """Validate (after BN recalibration, unless frozen), keep the best weights, and fill ``row``.

    With ``cfg.ema`` the averaged weights are validated and kept, never the last step's."""
    module, state = (P["module"] if R["ema"] is None else R["ema"].module), R["state"]
    module.out_act = P["infer_act"]
    if not cfg.freeze_bn:
        recalibrate_bn(module, R["bn_set"], module.stride, cfg.batch_size, views=1)
    row["val_loss"], row["val_mae"] = _validate(module, P["va"], module.stride, P["sigma"], cfg.density_scale, cfg.loss,
                                                cfg.ellipse_fraction)
    score = row["val_loss"] if cfg.monitor == "val_loss" else row["val_mae"]
    if score < state["best"]:
        state["best"], state["best_epoch"] = score, row["epoch"]
        torch.save({"model": module.state_dict(), "epoch": row["epoch"]}, ckpt_dir / "best.pt")
    R["bar"].set_postfix(loss=f"{row['train_loss']:.4f}", val_mae=f"{row['val_mae']:.2f}",
                         best=f"{state['best']:.3f}@{state['best_epoch']}")


def train(data: str | Path, out: str | Path, cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train on dataset folder ``data``; writes NAME.safetensors/.json in ``out``; returns the card path."""
    from tqdm.auto import tqdm

    if not 0 <= cfg.ema < 1:
        raise ValueError(f"ema must be in [0, 1), got {cfg.ema}")
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cfg = apply_init(cfg)
    data, out = Path(data), Path(out)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    P = _prepare(data, cfg)
    module = P["module"]
    R: dict[str, Any] = {
        "opt": torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        "aug": Augmenter(seed=cfg.seed, scale=cfg.scale_jitter, min_size=max(P["crop"]), channel_gain=cfg.channel_gain),
        "order_rng": np.random.default_rng(cfg.seed + 1), "items": _oversampled(P["tr"], cfg.oversample),
        "bn_set": bn_subset(P["tr"], cfg.bn_images, cfg.seed),
        "state": {"epoch": -1, "best": math.inf, "best_epoch": -1, "history": [], "minutes": 0.0},
        "ema": AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) if cfg.ema else None,
    }
    last = ckpt_dir / "last.pt"
    if resume and last.exists():
        R["state"] = _resume(last, module, R["opt"], R["aug"], R["order_rng"], R["ema"])
    state = R["state"]
    name = cfg.name or f"{data.name}-{cfg.arch}"
    t0 = time.monotonic() - 60 * state["minutes"]
    budget = cfg.max_minutes if cfg.max_minutes is not None else math.inf
    R["bar"] = bar = tqdm(range(state["epoch"] + 1, cfg.epochs), desc=f"train {name}", disable=not progress,
                          initial=state["epoch"] + 1, total=cfg.epochs)
    for epoch in bar:
        train_loss = _run_epoch(P, cfg, R, epoch, t0, budget)
        minutes = (time.monotonic() - t0) / 60
        out_of_time = minutes >= budget or epoch == cfg.epochs - 1
        row = {"epoch": epoch, "train_loss": train_loss, "lr": R["opt"].param_groups[0]["lr"], "minutes": minutes}
        if epoch % cfg.val_every == cfg.val_every - 1 or out_of_time:
            _check(P, cfg, R, row, ckpt_dir)
        state["history"].append(row)
        state.update(epoch=epoch, minutes=(time.monotonic() - t0) / 60)
        torch.save({"model": module.state_dict(), "opt": R["opt"].state_dict(),
                    "aug_rng": R["aug"].rng.bit_generator.state, "order_rng": R["order_rng"].bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "state": state,
                    **({"ema": R["ema"].state_dict()} if R["ema"] is not None else {})}, last)
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
    if cfg.freeze_bn:
        n_bn = 0
    else:
        recalibrate_bn(module, bn_subset(tr, n_bn, cfg.seed), module.stride, cfg.batch_size, views=1)
    vloss, vmae = _validate(module, va, module.stride, sigma, cfg.density_scale, cfg.loss, cfg.ellipse_fraction)
    card = ModelCard(
        name=name, arch=cfg.arch, arch_kwargs={"in_channels": len(channels), **P["arch_kwargs"]},
        channels=channels,
        normalization={**cfg.normalization, **training_field([s.image.shape[:2] for s in P["train_s"]], P["train_s"][0].mpp)},
        mpp=cfg.mpp or P["train_s"][0].mpp, input_scale=dict(cfg.input_scale), density_scale=cfg.density_scale,
        sigma_px=sigma, stride=module.stride,
        receptive_radius=module.receptive_radius, modality=cfg.modality,
        peak_min_distance_px=max(2, int(round(sigma * 0.75))),
        domain=data_domain(P["train_s"], channels, cfg.modality, cfg.stain, cfg.cell_diameter_um),
        training={"data": data.name, "command": " ".join(shlex.quote(a) for a in sys.argv),
                  "config": {k: v for k, v in cfg.__dict__.items()}, "precision": P["precision"],
                  "sigma_px": sigma, "sigma_rule": "given" if cfg.sigma_px or cfg.sigma_um else "0.4 x p10 NN spacing",
                  "targets": (f"elliptical ({cfg.ellipse_fraction:g} x each semi-axis)"
                              if any(s.ellipses is not None for _, s in tr) else "isotropic"),
                  "crop": list(P["crop"]), "bn_recalibration_images": n_bn, "n_train": len(tr), "n_val": len(va),
                  "val_names": [s.name for _, s in va], "cal_names": P["cal_names"], "best_epoch": ck["epoch"],
                  "epochs_run": len(state["history"]), "minutes": round((time.monotonic() - t0) / 60, 1),
                  "threads": torch.get_num_threads(), "torch": torch.__version__},
        metrics={"val_loss": vloss, "val_mae": vmae},
    )
    if cfg.input_scale and cfg.mpp:
        card.domain["mpp_source"] = _mpp_source(cfg)
    return save_model(module, card, out / name)


def _mpp_source(cfg: TrainConfig) -> str:
    """How the card's µm/px was set when the training images stated none (an input_scale rule)."""
    r = cfg.input_scale
    if r.get("kind") == "mpp":
        return (f"training images at their stated um/px, or {r.get('default_mpp')} um/px where none is stated, "
                f"resampled to {cfg.mpp} um/px")
    return (f"assumed: images without a pixel size were resampled so their nuclei measure {r.get('target_px')} px "
            f"by wsicount.training.scale (area-weighted median inscribed diameter of the foreground blobs), "
            f"taken as {r.get('assumed_nucleus_um', '?')} um: {cfg.mpp} um/px")


def _write_history(path: Path, history: list[dict]) -> None:
    """Write the per-epoch history as CSV."""
    fields = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(history)
