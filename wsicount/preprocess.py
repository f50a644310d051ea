"""Channel selection and intensity normalisation shared by training and inference.

Training and ``evaluate`` normalise each image by its own percentiles; whole-slide inference
takes the same percentiles over a training-image-sized field around each location
(:mod:`wsicount.normalize`), fixed before the first tile, so normalisation never introduces
seams. Both apply :func:`apply_normalization`, the card's floor included.
"""

from __future__ import annotations

import numpy as np

__all__ = ["select_channels", "percentile_stats", "apply_normalization", "normalize_image", "background_level",
           "norm_floor"]


def background_level(modality: str) -> float:
    """Raw slide-background intensity of a modality: 255 (glass) in brightfield, else 0 (dark mount, black padding)."""
    return 255.0 if modality == "brightfield" else 0.0


def select_channels(img: np.ndarray, channels: list[int]) -> np.ndarray:
    """(H, W[, C]) image -> (len(channels), H, W) float32; a 1-channel image is used as is."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:  # a gray acquisition of the wanted channel
        return np.repeat(np.moveaxis(a, -1, 0), len(channels), axis=0).astype(np.float32)
    if a.shape[-1] == 4:  # RGBA: drop alpha
        a = a[..., :3]
    if max(channels) >= a.shape[-1]:
        raise ValueError(f"image has {a.shape[-1]} channels, model wants channels {channels}")
    return np.moveaxis(a[..., channels], -1, 0).astype(np.float32)


def percentile_stats(values: np.ndarray, normalization: dict) -> tuple[float, float]:
    """(offset, span) of the normalisation for these pixel values (any shape, one channel set)."""
    kind = normalization.get("kind", "percentile")
    if kind == "fixed":
        return float(normalization.get("offset", 0.0)), float(normalization.get("span", 255.0))
    if kind != "percentile":
        raise ValueError(f"unknown normalisation {kind!r}")
    v = np.asarray(values, dtype=np.float32).ravel()
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [normalization.get("low", 1.0), normalization.get("high", 99.5)])
    span = float(hi - lo)
    min_span = float(normalization.get("min_span", 8.0))  # flat images must not blow up noise
    return float(lo), max(span, min_span)


def norm_floor(normalization: dict) -> float | None:
    """The card's floor of normalised values (``normalization['floor']``), or None (no floor).

    A floor of 0 shows everything darker than the low percentile, a slide's black background
    included, as the zero a convolution pads with beyond an image's edge: the network then
    answers an image on black as it answers the image alone.
    """
    f = normalization.get("floor")
    return None if f is None else float(f)


def apply_normalization(x: np.ndarray, offset: float | np.ndarray, span: float | np.ndarray,
                        floor: float | None = None) -> np.ndarray:
    """Affine intensity map (x - offset) / span, raised to ``floor`` where given, float32 (a new array, 0-d for a scalar)."""
    # asarray again: a 0-d difference is a numpy scalar, which cannot be written in place
    y = np.asarray(np.asarray(x, dtype=np.float32) - np.asarray(offset, dtype=np.float32))
    y /= np.asarray(span, dtype=np.float32)
    if floor is not None:
        np.maximum(y, np.float32(floor), out=y)
    return y


def normalize_image(img: np.ndarray, channels: list[int], normalization: dict) -> np.ndarray:
    """Select channels and normalise one whole image by its own statistics -> (C, H, W)."""
    x = select_channels(img, channels)
    off, span = percentile_stats(x, normalization)
    return apply_normalization(x, off, span, norm_floor(normalization))
