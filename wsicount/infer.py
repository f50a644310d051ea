"""Running a density model on arrays: device choice, padding to the stride, batching.

Whole-image prediction pads the image at its bottom/right end by reflection up to a multiple
of the model stride and crops the output back, the same rule the slide tiler applies at the
slide's end, so an image and its tiles see identical inputs.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from .models import LoadedModel
from .preprocess import normalize_image

__all__ = ["pick_device", "autocast_for", "pad_to_stride", "predict_batch", "predict_image", "set_threads"]


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; otherwise the named device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def set_threads(n: int | None = None) -> int:
    """Use ``n`` intra-op threads (default: all cores this process may use)."""
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for 'fp32' (none), 'bf16' or 'fp16' on the given device."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def pad_to_stride(x: np.ndarray, stride: int) -> np.ndarray:
    """Reflect-pad the last two axes at their end to multiples of ``stride``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if not ph and not pw:
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(x, pad, mode="symmetric")


@torch.inference_mode()
def predict_batch(model: LoadedModel, batch: np.ndarray, device: torch.device, precision: str = "fp32") -> np.ndarray:
    """(N, C, H, W) normalised float32 -> (N, H, W) density in cells per pixel."""
    t = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True)
    t = t.contiguous(memory_format=torch.channels_last)
    with autocast_for(device, precision):
        y = model.module(t)
    return (y[:, 0].float() / model.card.density_scale).cpu().numpy()


def predict_image(
    model: LoadedModel, image: np.ndarray, device: str | torch.device = "cpu", precision: str = "fp32"
) -> np.ndarray:
    """Density map (H, W) of one whole image, normalised by its own percentiles."""
    dev = pick_device(device) if isinstance(device, str) else device
    x = normalize_image(image, model.card.channels, model.card.normalization)
    h, w = x.shape[-2:]
    xp = pad_to_stride(x, model.card.stride)
    return predict_batch(model, xp[None], dev, precision)[0, :h, :w]
