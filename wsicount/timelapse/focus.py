"""Focal-plane choice per frame: the sharpest plane by the variance of the Laplacian.

Sharpness is measured inside the central region of the frame (a disk of ``center_fraction`` of
the shorter side), where a time-lapse well centres the embryo: the well's bright rim and the
burned-in text at the corners are sharp in every plane and would otherwise decide the choice.
The data is smoothed by a small Gaussian first so JPEG blocking and sensor noise do not count
as detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FOCUS_MODES", "focus_scores", "choose_planes", "FocusChoice"]

#: 'best': the sharpest plane; 'all': every plane (counts combined across them by the caller)
FOCUS_MODES = ("best", "all")


@dataclass(frozen=True)
class FocusChoice:
    """Planes used for one frame and the sharpness score of every plane."""

    planes: tuple[int, ...]
    scores: tuple[float, ...]
    mode: str


def _center_mask(h: int, w: int, fraction: float) -> np.ndarray:
    """Disk of diameter ``fraction * min(h, w)`` at the frame centre."""
    yy, xx = np.ogrid[:h, :w]
    r = fraction * min(h, w) / 2.0
    return (yy - (h - 1) / 2.0) ** 2 + (xx - (w - 1) / 2.0) ** 2 <= r * r


def focus_scores(frame: np.ndarray, center_fraction: float = 0.6, smooth_sigma: float = 1.0) -> np.ndarray:
    """Variance of the Laplacian inside the central disk of each plane of a (z, c, y, x) frame."""
    from scipy import ndimage as ndi

    f = np.asarray(frame, dtype=np.float32)
    if f.ndim != 4:
        raise ValueError(f"frame must be (z, c, y, x), got shape {f.shape}")
    mask = _center_mask(f.shape[2], f.shape[3], center_fraction)
    out = np.empty(f.shape[0])
    for k in range(f.shape[0]):
        plane = f[k].mean(axis=0)
        if smooth_sigma > 0:
            plane = ndi.gaussian_filter(plane, smooth_sigma)
        out[k] = float(ndi.laplace(plane)[mask].var())
    return out


def choose_planes(frame: np.ndarray, mode: str | int = "best", center_fraction: float = 0.6) -> FocusChoice:
    """Planes to count for a (z, c, y, x) frame: the sharpest ('best'), every one ('all') or a fixed index."""
    z = int(np.asarray(frame).shape[0])
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        if not 0 <= int(mode) < z:
            raise ValueError(f"focal plane {mode} does not exist (the stack has {z})")
        return FocusChoice((int(mode),), (), "fixed")
    if mode not in FOCUS_MODES:
        raise ValueError(f"focus must be one of {', '.join(FOCUS_MODES)} or a plane index, got {mode!r}")
    if z == 1:
        return FocusChoice((0,), (), "single")
    scores = focus_scores(frame, center_fraction)
    if mode == "all":
        return FocusChoice(tuple(range(z)), tuple(float(s) for s in scores), "all")
    return FocusChoice((int(np.argmax(scores)),), tuple(float(s) for s in scores), "best")
