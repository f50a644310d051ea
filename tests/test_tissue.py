"""Tissue detection: background (glass, dark mount, black padding) vs everything else, however dim; the counted region; mask resolution; masking density."""

from __future__ import annotations

import numpy as np
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


def test_mask_of_rgb_image_is_that_of_its_grey_image():
    """Three equal channels of a grey image give the mask of that grey image."""
    import numpy as np

    from wsicount.tissue import mask_from_image

    rng = np.random.default_rng(4)
    grey = np.full((400, 500), 10, np.uint8)
    grey[100:300, 120:400] = 120 + rng.integers(0, 40, (200, 280), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    m = mask_from_image(rgb, "fluorescence", 4.0)
    assert np.array_equal(m, mask_from_image(grey, "fluorescence", 4.0))
    assert 0.25 < m.mean() < 0.32  # the 200x280 block of 400x500 (0.28)


def test_fluorescence_signal_is_the_brightest_channel():
    """A dye scanned into one channel of an RGB file (DAPI in blue) is detected at its full brightness."""
    import numpy as np

    from wsicount.tissue import signal_image

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 2] = 9
    assert (signal_image(rgb, "fluorescence") == 9).all()
    assert (signal_image(rgb[..., 2], "fluorescence") == 9).all()


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


# --- what is tissue: everything but the slide background --------------------------------
def _texture(rng, shape, level: float, cells: int, texture: float = 0.3) -> "np.ndarray":
    """Fluorescence-like tissue: a textured level (relative sd ~``texture`` at ~10 um) with bright blurred cells."""
    import numpy as np
    from scipy import ndimage

    img = level * (1 + texture * 5 * ndimage.gaussian_filter(rng.standard_normal(shape), 3))
    spots = np.zeros(shape)
    spots[rng.integers(0, shape[0], cells), rng.integers(0, shape[1], cells)] = 1
    img += 2000 * ndimage.gaussian_filter(spots, 1.5)
    return img


def test_dim_tissue_beside_bright_tissue_is_kept_and_black_gaps_are_not():
    """Fluorescence: a tissue 20x dimmer than its neighbour is kept whole; the black gaps between them are background."""
    import numpy as np

    from wsicount.tissue import tissue_masks

    rng = np.random.default_rng(0)
    img = np.zeros((300, 400))
    img[40:260, 30:180] = _texture(rng, (220, 150), 60, 300)  # bright tissue with bright cells
    img[40:260, 220:370] = _texture(rng, (220, 150), 3, 0)  # dim tissue, 3 grey levels above black
    img = np.clip(img + rng.normal(0, 0.4, img.shape), 0, 255).astype(np.uint8)
    tissue, counted = tissue_masks(img, "fluorescence", 4.0)
    dim = np.zeros(img.shape, bool)
    dim[40:260, 220:370] = True
    assert counted[dim].mean() >= 0.99 and tissue[dim].mean() >= 0.99
    assert tissue[40:260, 30:180].mean() >= 0.99
    # the gap between the two (40 px = 160 um) is background beyond the foot of the smoothing and the margin
    assert not counted[40:260, 192:208].any() and not tissue[:, 184:216].any()
    assert not counted[:30].any() and not counted[270:].any()
    assert counted.sum() > tissue.sum()  # the counted region reaches beyond the tissue


def test_brightfield_glass_is_not_tissue():
    """Brightfield: uneven white glass is background; pale pink tissue on it is tissue."""
    import numpy as np

    from wsicount.tissue import tissue_masks

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:300, :300]
    glass = 238 + 4 * xx / 300  # illumination falls off across the slide
    img = np.repeat(glass[..., None], 3, -1) + rng.normal(0, 1.5, (300, 300, 3))
    tissue_box = (slice(80, 220), slice(60, 240))
    img[tissue_box] = [225, 190, 215] + rng.normal(0, 6, (140, 180, 3))  # pale eosin
    tissue, counted = tissue_masks(np.clip(img, 0, 255).astype(np.uint8), "brightfield", 4.0)
    assert tissue[tissue_box].mean() >= 0.99
    assert not counted[:60].any() and not counted[240:].any() and not counted[:, :40].any()
    assert tissue.sum() == pytest.approx(140 * 180, rel=0.03)  # the outline is cut at half height


def test_an_image_filled_with_tissue_is_tissue_throughout():
    """No background peak (textured tissue everywhere, dim and bright): nothing is cut."""
    import numpy as np

    from wsicount.tissue import _gaussian, background_threshold, tissue_masks

    rng = np.random.default_rng(2)
    img = _texture(rng, (200, 200), 25, 400, texture=0.4)
    img[:, :100] *= 0.4  # a dim half
    img = np.clip(img, 0, 255).astype(np.uint8)
    tissue, counted = tissue_masks(img, "fluorescence", 3.6)
    assert not background_threshold(_gaussian(img.astype(np.float32), 8.0 / 3.6)).found
    assert tissue.mean() >= 0.99 and counted.all()


def test_flat_image_has_no_tissue():
    import numpy as np

    from wsicount.tissue import tissue_masks

    tissue, counted = tissue_masks(np.full((50, 60, 3), 7, np.uint8), "fluorescence", 4.0)
    assert not tissue.any() and not counted.any()


def test_mode_none_counts_the_whole_slide(make_slide):
    from wsicount.io import open_slide
    from wsicount.tissue import detect_tissue

    sl = open_slide(make_slide("tiff").path)
    tm = detect_tissue(sl, "none")
    assert tm.mask.all() and tm.fraction() == 1.0
    h0, w0 = sl.shapes[0][:2]
    assert tm.mask.shape[0] * tm.scale_y == pytest.approx(h0) and tm.mask.shape[1] * tm.scale_x == pytest.approx(w0)
    assert tm.area_mm2 == pytest.approx(h0 * w0 * sl.mpp**2 / 1e6)


def test_mask_density_returns_the_sum_outside_the_counting_box():
    """The density outside the counted region is zeroed, and its sum over the count box is returned."""
    import numpy as np

    from wsicount.tissue import mask_density

    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # mask px = 4 model px: columns 0..19 counted
    d = np.ones((40, 40), np.float32)
    masked, outside, on = mask_density(d, mask, (4.0, 4.0), (0, 40, 0, 40))
    assert masked[:, :20].all() and not masked[:, 20:].any() and outside == 40 * 20
    assert on[:, :20].all() and not on[:, 20:].any()
    _, part, _ = mask_density(d, mask, (4.0, 4.0), (0, 40, 0, 40), count_box=(0, 10, 16, 40))
    assert part == 10 * 20
    same, none, on = mask_density(d[:, :20], mask, (4.0, 4.0), (0, 40, 0, 20))
    assert np.array_equal(same, d[:, :20]) and none == 0.0 and on is None
