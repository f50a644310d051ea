"""Tissue-mask resolution: about 4 µm/px, coarser for huge slides so its memory stays bounded."""

from __future__ import annotations

import pytest

from wsicount.tissue import MASK_MAX_PX, MASK_MPP, choose_mask_level, mask_target_mpp


def test_mask_resolution_is_the_target_on_ordinary_slides():
    assert mask_target_mpp(0.4523, 26624, 30000) == MASK_MPP  # the paper's slide: 3.0 x 3.4 kpx mask


@pytest.mark.parametrize("side", [65496, 131072])
def test_mask_pixels_are_capped_on_huge_slides(side: int):
    mpp0 = 0.4523
    target = mask_target_mpp(mpp0, side, side)
    assert target > MASK_MPP
    assert (side * mpp0 / target) ** 2 == pytest.approx(MASK_MAX_PX, rel=1e-6)
    # a pyramid of x2 levels: the chosen level/factor stays within the 5 % tolerance of the cap
    mpps = [mpp0 * 2**i for i in range(9)]
    level, factor = choose_mask_level(mpps, target)
    assert (side * mpp0 / (mpps[level] * factor)) ** 2 <= MASK_MAX_PX * 1.05**2 * 1.0001
    assert mpps[level] * factor <= target * 1.05


@pytest.mark.parametrize("seed,p", [(0, 0.3), (1, 0.55), (2, 0.7)])
def test_fill_holes_equals_scipy(seed: int, p: float):
    """The label-based hole filling is exactly scipy's binary_fill_holes (4-connected background)."""
    import numpy as np
    from scipy import ndimage

    from wsicount.tissue import _fill_holes

    m = np.random.default_rng(seed).random((301, 257)) > p
    assert np.array_equal(_fill_holes(m), ndimage.binary_fill_holes(m))
    assert _fill_holes(np.ones((5, 4), bool)).all() and not _fill_holes(np.zeros((5, 4), bool)).any()


def test_mask_of_rgb_image_uses_the_channel_mean():
    """Three channels of a grey image give the mask of that grey image (the per-plane channel mean is exact)."""
    import numpy as np

    from wsicount.tissue import mask_from_image

    rng = np.random.default_rng(4)
    grey = np.full((400, 500), 10, np.uint8)
    grey[100:300, 120:400] = 120 + rng.integers(0, 40, (200, 280), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    m = mask_from_image(rgb, "fluorescence", 4.0)
    assert np.array_equal(m, mask_from_image(grey, "fluorescence", 4.0))
    assert 0.25 < m.mean() < 0.32  # the 200x280 block of 400x500 (0.28)


@pytest.mark.parametrize("seed", range(3))
def test_disk_closing_equals_scipy(seed: int):
    """The row-stack closing is exactly scipy's binary_closing with a disk and a 0 border."""
    import numpy as np
    from scipy import ndimage

    from wsicount.tissue import _close_disk, _disk

    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        r = int(rng.integers(1, 8))
        m = ndimage.gaussian_filter(rng.random((h, w)), 1.5) > rng.uniform(0.4, 0.6)
        assert np.array_equal(_close_disk(m, r), ndimage.binary_closing(m, structure=_disk(r), border_value=0))


@pytest.mark.parametrize("shape", [(333, 517), (64, 5), (1, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_gaussian_split_across_threads_equals_scipy(shape, threads):
    """The mask's smoothing, each pass split across threads, is exactly scipy's gaussian_filter."""
    import numpy as np
    from scipy import ndimage

    from wsicount.tissue import _gaussian

    img = np.random.default_rng(5).random(shape, dtype=np.float32) * 255
    assert np.array_equal(_gaussian(img, 2.17, threads=threads), ndimage.gaussian_filter(img, 2.17))
