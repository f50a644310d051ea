"""A classical nuclei count (scikit-image, no learning): the floor a user reaches without a model.

Recipe, untuned on purpose (it is the reference a trained model must beat): the nuclear signal
(the brightest channel of a fluorescence image; the hematoxylin channel of ``rgb2hed`` for
brightfield H&E), Gaussian smoothing (sigma 2 px), an Otsu threshold, and one cell per local
maximum of the distance transform of the foreground (``min_distance`` 5 px), i.e. a marker
count of the watershed that would split touching nuclei.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu

__all__ = ["nuclear_signal", "classical_peaks", "classical_count"]


def nuclear_signal(image: np.ndarray, modality: str = "fluorescence") -> np.ndarray:
    """(H, W) float image where nuclei are bright: gray as is, brightest RGB channel, or hematoxylin."""
    a = np.asarray(image)
    if a.ndim == 2 or a.shape[-1] == 1:
        return a.reshape(a.shape[0], a.shape[1]).astype(np.float32)
    rgb = a[..., :3]
    if modality == "brightfield":
        return rgb2hed(rgb)[..., 0].astype(np.float32)
    means = rgb.reshape(-1, 3).mean(0)
    return rgb[..., int(np.argmax(means))].astype(np.float32)


def classical_peaks(image: np.ndarray, modality: str = "fluorescence", sigma: float = 2.0,
                    min_distance: int = 5) -> np.ndarray:
    """(N, 2) row, col of the nuclei found (distance-transform maxima inside the Otsu foreground)."""
    sig = gaussian(nuclear_signal(image, modality), sigma=sigma, preserve_range=True)
    if float(sig.max() - sig.min()) <= 1e-6:  # a flat image has no foreground
        return np.zeros((0, 2), dtype=np.int64)
    fg = sig > threshold_otsu(sig)
    dist = ndimage.distance_transform_edt(fg)
    labels, _ = ndimage.label(fg)
    return peak_local_max(dist, min_distance=min_distance, labels=labels, exclude_border=False)


def classical_count(image: np.ndarray, modality: str = "fluorescence", sigma: float = 2.0,
                    min_distance: int = 5) -> int:
    """Number of nuclei the classical recipe finds in ``image``."""
    return int(len(classical_peaks(image, modality, sigma, min_distance)))
