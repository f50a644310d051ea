"""Training defaults inferred from the data and the hardware, and the model card's domain.

Each choice is a pure function of the training images, their annotations or the CPU, so
``wsicount train`` works on a dataset nobody tuned for and the card records why:

* precision: bf16 autocast only where the hardware computes it natively for training (Intel AMX
  ``amx_bf16`` or a CUDA device with bf16); elsewhere autocast emulates it and a U-Net training
  step was measured ~30x slower than fp32 (AVX2 EPYC), so fp32;
* channels: the brightest RGB channel for dark-background (fluorescence) images, all three for
  bright-background (brightfield) images, a gray image as is;
* sigma: a fraction of the 10th percentile of nearest-neighbour distances between annotated
  cells — in crowded regions neighbours touch, so that percentile is about one cell diameter even
  when most cells are sparse (a median spacing would follow the density, not the cell size).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from .data import Sample

__all__ = ["cpu_has_amx_bf16", "training_precision", "default_channels", "neighbour_spacing_px",
           "auto_sigma_px", "data_domain", "lr_factor", "CHANNEL_NAMES"]

#: sigma = SIGMA_FRACTION x the 10th percentile of nearest-neighbour spacing, clamped to SIGMA_RANGE
SIGMA_FRACTION = 0.4
SIGMA_RANGE = (1.5, 12.0)
CHANNEL_NAMES = {0: "red", 1: "green", 2: "blue"}


def cpu_has_amx_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list ``amx_bf16`` (Intel AMX tiles compute bf16 natively)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any("amx_bf16" in line.split() for line in text.splitlines() if line.startswith("flags"))


def training_precision(requested: str = "auto", device: str = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """'auto' -> 'bf16' on CUDA with bf16 or a CPU with AMX, else 'fp32'; explicit values pass through."""
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"training precision must be auto, fp32 or bf16, got {requested!r}")
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_amx_bf16(cpuinfo) else "fp32"


def default_channels(samples: list[Sample]) -> list[int]:
    """Brightest RGB channel on dark backgrounds, RGB on bright ones; [0] when every image is gray."""
    rgb = [s.image for s in samples if s.image.ndim == 3 and s.image.shape[-1] >= 3]
    if not rgb:
        return [0]
    means = np.mean([im[..., :3].reshape(-1, 3).mean(0) for im in rgb[:32]], axis=0)
    if means.min() > 100:  # bright background: brightfield, keep colour
        return [0, 1, 2]
    return [int(np.argmax(means))]


def neighbour_spacing_px(samples: list[Sample], q: float = 10.0) -> float | None:
    """The ``q``-th percentile of nearest-neighbour distances (px) over all images; None if < 2 cells anywhere."""
    dists = []
    for s in samples:
        if len(s.points) >= 2:
            d, _ = cKDTree(s.points).query(s.points, k=2)
            dists.append(d[:, 1])
    if not dists:
        return None
    d = np.concatenate(dists)
    d = d[d > 0]
    return float(np.percentile(d, q)) if d.size else None


def auto_sigma_px(samples: list[Sample]) -> float:
    """Target sigma (px) from the annotations: SIGMA_FRACTION x 10th-percentile spacing, clamped."""
    spacing = neighbour_spacing_px(samples)
    if spacing is None:
        return 3.0
    return float(np.clip(SIGMA_FRACTION * spacing, *SIGMA_RANGE))


def _raw_channel(img: np.ndarray, channels: list[int]) -> np.ndarray:
    """The raw values the network reads (before normalisation), for the intensity range."""
    if img.ndim == 2 or img.shape[-1] == 1:
        return img.reshape(img.shape[0], img.shape[1])
    return img[..., channels]


def data_domain(samples: list[Sample], channels: list[int], modality: str, stain: str | None,
                cell_diameter_um: float | None = None) -> dict[str, Any]:
    """The card's ``domain``: modality, stain, µm/px, cell size, density and intensity ranges, channel."""
    mpps = [s.mpp for s in samples if s.mpp]
    mpp = float(np.median(mpps)) if mpps else None
    spacing = neighbour_spacing_px(samples)
    counts = np.array([s.count for s in samples], dtype=float)
    lo, hi = [], []
    for s in samples:
        v = _raw_channel(s.image, channels).astype(np.float32)
        lo.append(np.percentile(v, 1))
        hi.append(np.percentile(v, 99))
    dom: dict[str, Any] = {
        "modality": modality,
        "stain": stain,
        "mpp": mpp,
        "cell_diameter_um": cell_diameter_um if cell_diameter_um is not None else (
            round(spacing * mpp, 2) if spacing is not None and mpp else None),
        "cell_diameter_px": round(cell_diameter_um / mpp, 1) if cell_diameter_um is not None and mpp else (
            round(spacing, 1) if spacing is not None else None),
        "cell_diameter_source": "given" if cell_diameter_um is not None
        else "10th-percentile nearest-neighbour spacing of the annotations",
        "cells_per_image": [float(counts.min()), float(counts.max())],
        "cells_per_mpx": [round(float(v), 1) for v in _range([s.count / (s.image.shape[0] * s.image.shape[1]) * 1e6 for s in samples])],
        "intensity": [float(np.min(lo)), float(np.max(hi))],
        "channel": "gray" if channels == [0] and all(s.image.ndim == 2 for s in samples)
        else "+".join(CHANNEL_NAMES.get(c, str(c)) for c in channels),
    }
    if mpp:
        per_mm2 = [s.count / (s.image.shape[0] * s.image.shape[1] * (s.mpp or mpp) ** 2 * 1e-6) for s in samples]
        dom["cells_per_mm2"] = [round(float(min(per_mm2)), 1), round(float(max(per_mm2)), 1)]
    else:
        dom["cells_per_mm2"] = None
    return dom


def _range(v: list[float]) -> tuple[float, float]:
    """(min, max) of a non-empty list."""
    return min(v), max(v)


def lr_factor(progress: float, warmup: float = 0.05) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1]: linear warm-up, then cosine to zero."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return max(p / warmup, 0.02)
    return 0.5 * (1.0 + math.cos(math.pi * (p - warmup) / (1.0 - warmup)))
