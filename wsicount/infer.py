"""Running a density model on arrays: device choice, precision, padding to the stride, batching.

Precision: 'fp32', or 'bf16'/'fp16', which run a copy of the module whose weights and
activations are in that dtype (convolutions still accumulate in fp32 inside oneDNN/cuDNN).
A whole low-precision network avoids autocast's conversion of every activation around
BatchNorm and LeakyReLU (``python benchmarks/floor_variants.py`` compares it with autocast).
'auto' picks bf16 where the device computes it natively and the model card lists bf16 as
validated on the model's accuracy benchmark (``ModelCard.low_precision``), fp32 elsewhere. Tiling stays
bit-exact in every precision: an output pixel gets the same value from any stride-aligned
window holding its receptive field (checked by the seam tests).

Whole-image prediction pads the image at its bottom/right end by reflection up to a multiple
of the model stride and crops the output back, the same rule the slide tiler applies at the
slide's end, so an image and its tiles see identical inputs.

A lone image has two framings. ``predict_image``: the image alone, every convolution
zero-padding its border, as the network was trained on crops. ``predict_in_context``: the
image laid on the slide background (:func:`background_level`) with a margin of twice the
receptive radius, as ``wsicount run`` sees a piece of tissue alone on a slide; cells at the
image's edge then spread part of their density onto the background, so the count is the sum
over the image grown by the receptive radius (everything the image can reach).
"""

from __future__ import annotations

import contextlib
import copy
import os
import weakref

import numpy as np
import torch

from .models import LoadedModel, ModelCard
from .preprocess import apply_normalization, norm_floor, normalize_image, percentile_stats, select_channels
from .preprocess import background_level as modality_background

__all__ = ["pick_device", "resolve_precision", "module_for", "auto_batch_size", "batch_for", "activation_bytes_per_px",
           "DTYPES",
           "PRECISIONS", "autocast_for", "pad_to_stride", "predict_batch", "predict_image", "predict_in_context",
           "background_level", "context_margin", "set_threads"]

#: accepted ``precision`` values ('auto' resolves to one of the others)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: torch dtype of the weights and activations of each concrete precision
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_precision(device: torch.device, precision: str = "auto", card: ModelCard | None = None) -> str:
    """'auto' -> 'bf16' where ``device`` runs bf16 natively (AMX/AVX512-BF16 CPU, Ampere+ GPU) and the
    model ``card`` lists bf16 as validated (``card.low_precision``), else 'fp32'."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if card is not None and "bf16" not in card.low_precision:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def module_for(model: LoadedModel, device: torch.device, precision: str) -> torch.nn.Module:
    """The model's module on ``device`` in ``precision``.

    fp32 on the module's own device is the module itself; any other combination is a copy
    made once and cached on ``model`` (so it does not follow later changes to the weights).
    """
    module = model.module
    if precision == "fp32" and next(module.parameters()).device == device:
        return module
    cache = model.__dict__.setdefault("_variants", {})
    key = (str(device), precision)
    if key not in cache:
        variant = copy.deepcopy(module).to(device=device, dtype=DTYPES[precision])
        cache[key] = variant.to(memory_format=torch.channels_last).eval()
    return cache[key]


def auto_batch_size(model: LoadedModel, device: torch.device, precision: str, tile: int, limit: int = 16,
                    tasks: int = 1) -> int:
    """Tiles per forward pass: 1 on CPU; on CUDA as many ``tile``² windows as fit in half the free memory, shared by ``tasks``.

    On CPU a batch multiplies the activation memory without raising throughput
    (``python benchmarks/floor_variants.py`` times batches of 1, 2 and 4), so one tile per pass. On CUDA one forward pass of a
    single tile is measured (peak allocation) and the batch is :func:`batch_for` of the free
    memory: ``tasks`` tile tasks of this process run their batches on the device at once.
    """
    if device.type != "cuda":
        return 1
    precision = resolve_precision(device, precision, model.card)
    module = module_for(model, device, precision)
    x = torch.zeros((1, len(model.card.channels), tile, tile), device=device, dtype=DTYPES[precision])
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        module(x.contiguous(memory_format=torch.channels_last))
    torch.cuda.synchronize(device)
    per_tile = max(1, torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    return batch_for(free, per_tile, tasks, limit)


def batch_for(free: int, per_tile: int, tasks: int = 1, limit: int = 16) -> int:
    """Tiles per batch when ``tasks`` batches share half of ``free`` bytes, each tile needing ``per_tile``: 1 to ``limit``."""
    return int(max(1, min(limit, 0.5 * free // (max(1, per_tile) * max(1, tasks)))))


#: measured peak activation memory ÷ the tensors tracked by :func:`activation_bytes_per_px`, one
#: 1024² forward pass in a fresh process with the CLI's allocator tuning (``python
#: benchmarks/memory.py --activation``): U-Net 1.62 (fp32) / 1.48 (bf16), FCRN
#: 1.38 / 1.22, Cell-Net 1.91 / 1.97. The allocator's reuse pattern moves it between runs by
#: up to ~0.1; the factor is above all of them with that margin, so that
#: the estimate errs on the side of a smaller tile.
ACTIVATION_OVERHEAD = 2.1


def activation_bytes_per_px(model: LoadedModel, device: torch.device, precision: str, size: int = 64) -> float:
    """Estimated peak activation bytes per network-input pixel of one forward pass (for memory planning).

    One forward pass of a ``size``² zero image (a few ms) with hooks on every layer that track
    the storages of the tensors going in and out until they are freed; their largest sum,
    divided by the input's pixels, times :data:`ACTIVATION_OVERHEAD` (what functional
    operations between layers, the allocator and the convolution libraries add, measured).
    A fully-convolutional network's activations grow with the input's pixels, so the figure
    holds for any tile size. Cached on ``model`` per device and precision.
    """
    cache = model.__dict__.setdefault("_activation_bytes", {})
    key = (str(device), precision)
    if key not in cache:
        live: dict[int, int] = {}
        peak = 0

        def track(*tensors: object) -> None:
            nonlocal peak
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    ptr = storage.data_ptr()
                    if ptr not in live:  # views and in-place results share a storage
                        live[ptr] = storage.nbytes()
                        weakref.finalize(storage, live.pop, ptr, None)
            peak = max(peak, sum(live.values()))

        module = module_for(model, device, precision)
        hooks = []
        for layer in module.modules():
            if next(layer.children(), None) is None:
                hooks.append(layer.register_forward_pre_hook(lambda _, args: track(*args)))
                hooks.append(layer.register_forward_hook(lambda _, args, out: track(*args, out)))
        size -= size % model.card.stride
        x = torch.zeros((1, len(model.card.channels), size, size), device=device, dtype=DTYPES[precision])
        try:
            with torch.inference_mode():
                module(x.contiguous(memory_format=torch.channels_last))
        finally:
            for h in hooks:
                h.remove()
        cache[key] = ACTIVATION_OVERHEAD * peak / (size * size)
    return cache[key]


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for 'fp32' (none), 'bf16' or 'fp16' on the given device (training uses it)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


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
    """(N, C, H, W) normalised float32 -> (N, H, W) float32 density in cells per pixel."""
    precision = resolve_precision(device, precision, model.card)
    module = module_for(model, device, precision)
    t = torch.from_numpy(np.ascontiguousarray(batch))
    if device.type == "cuda":
        t = t.pin_memory()  # lets the copy below run asynchronously
    t = t.to(device, dtype=DTYPES[precision], non_blocking=True).contiguous(memory_format=torch.channels_last)
    y = module(t)
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


def background_level(card: ModelCard) -> float:
    """Raw slide-background intensity of the card's modality (:func:`wsicount.preprocess.background_level`)."""
    return modality_background(card.modality)


def context_margin(card: ModelCard) -> int:
    """Background px around a lone image: 2 x receptive radius up to a stride multiple (no padding within the radius)."""
    return -(-2 * card.receptive_radius // card.stride) * card.stride


def predict_in_context(
    model: LoadedModel, image: np.ndarray, device: str | torch.device = "cpu", precision: str = "fp32"
) -> np.ndarray:
    """Density (H + 2r, W + 2r), r = receptive radius, of one image on the slide background (its own percentiles).

    The image sits at a stride multiple on a :func:`background_level` frame of
    :func:`context_margin` px. A slide run of the same pixels (the image stride-aligned on the
    model grid, no other tissue within 2r) computes the same density in the image's box grown
    by r: ``wsicount run`` counts a lone image as the sum of this map, less what its tissue
    mask cuts off.
    """
    dev = pick_device(device) if isinstance(device, str) else device
    card = model.card
    x = select_channels(image, card.channels)
    off, span = percentile_stats(x, card.normalization)
    m, r = context_margin(card), card.receptive_radius
    framed = np.pad(x, ((0, 0), (m, m), (m, m)), constant_values=background_level(card))
    h, w = framed.shape[-2:]
    d = predict_batch(model, pad_to_stride(apply_normalization(framed, off, span, norm_floor(card.normalization)), card.stride)[None], dev, precision)
    return d[0, m - r : h - m + r, m - r : w - m + r]
