"""``local_maxima`` is skimage's ``peak_local_max`` (exclude_border=False), faster: same peaks, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import peak_local_max

from wsicount.detect import _sliding_max, density_peaks, local_maxima


def _reference(image: np.ndarray, min_distance: int, threshold: float) -> np.ndarray:
    """skimage's peaks in row-major order."""
    ref = peak_local_max(np.asarray(image, np.float64), min_distance=min_distance, threshold_abs=threshold,
                         exclude_border=False)
    return ref[np.lexsort((ref[:, 1], ref[:, 0]))]


def _maps(rng: np.random.Generator, h: int, w: int):
    """Smooth maps, maps with plateaus (ties), bf16-like quantised maps, integer maps, a constant map."""
    a = rng.random((h, w))
    yield a
    yield np.round(ndimage.gaussian_filter(a, 2) * 20) / 20
    yield ndimage.gaussian_filter(a, 1.5).astype(np.float16).astype(np.float32)
    yield rng.integers(0, 3, (h, w)).astype(np.float64)
    yield np.full((h, w), 0.7)


@pytest.mark.parametrize("seed", range(4))
def test_local_maxima_equals_skimage(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        for image in _maps(rng, h, w):
            md, thr = int(rng.integers(1, 7)), float(rng.random() * 0.5)
            got = local_maxima(image, md, thr)
            assert np.array_equal(got, _reference(image, md, thr)), (h, w, md, thr)


def test_local_maxima_float32_threshold_is_compared_in_float64():
    # 0.1 is not a float32: the float32 nearest to it is above 0.1, so it is a peak
    image = np.zeros((5, 5), np.float32)
    image[2, 2] = np.float32(0.1)
    assert len(local_maxima(image, 2, 0.1)) == (float(np.float32(0.1)) > 0.1)
    assert len(local_maxima(image, 2, float(np.float32(0.1)))) == 0


def test_sliding_max_equals_scipy_nearest():
    a = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    for r in (0, 1, 3, 4, 9, 40):
        for axis in (0, 1):
            ref = ndimage.maximum_filter1d(a, 2 * r + 1, axis=axis, mode="nearest")
            assert np.array_equal(_sliding_max(a, r, axis), ref)


def test_density_peaks_keeps_float32_input_exact():
    a = ndimage.gaussian_filter(np.random.default_rng(1).random((64, 64)), 2).astype(np.float32)
    thr = float(np.quantile(a, 0.9))
    p32 = density_peaks(a, sigma_px=2.0, min_distance=3, threshold_abs=thr)
    p64 = density_peaks(a.astype(np.float64), sigma_px=2.0, min_distance=3, threshold_abs=thr)
    assert np.array_equal(p32, p64)


@pytest.mark.parametrize("max_offset", [256, 2])
def test_tie_pairs_are_the_kd_tree_pairs(max_offset):
    """Ties found by walking equal values (or, past ``max_offset``, the k-d tree fallback) are cKDTree's pairs."""
    from scipy.spatial import cKDTree

    from wsicount.detect import _tie_pairs

    rng = np.random.default_rng(max_offset)
    for _ in range(40):
        n, side, md = int(rng.integers(2, 300)), int(rng.integers(5, 60)), int(rng.integers(2, 6))
        coords = np.unique(rng.integers(0, side, (n, 2)), axis=0)
        values = rng.integers(0, 4, len(coords)).astype(np.float32)  # few distinct values: many ties
        got = _tie_pairs(coords, values, md, max_offset=max_offset)
        ref = cKDTree(coords).query_pairs(r=md - 0.5, p=np.inf, output_type="ndarray")

        def equal(p):  # window maxima closer than md are equal; random points need not be
            return sorted(map(tuple, np.sort(p[values[p[:, 0]] == values[p[:, 1]]], axis=1).tolist()))

        assert equal(got) == equal(ref)
