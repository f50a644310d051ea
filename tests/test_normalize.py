"""The normalisation field: each pixel normalised as its training-image-sized field was, whatever window reads it.

- window invariance: a pixel gets the same (offset, span) in every window that holds it;
- a slide of one brightness gets the slide-wide percentile scaling (the former global one);
- brightness steps between large regions are followed, and a small tissue piece gets exactly
  the statistics of its own pixels (as ``wsicount evaluate`` normalises an image);
- a ``fixed`` card keeps its fixed scaling.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from wsicount.io import open_slide
from wsicount.normalize import NormField, Part, build_norm_field, percentiles_from_hist
from wsicount.preprocess import apply_normalization, percentile_stats
from wsicount.synth.write import write_pyramid
from wsicount.tiling import plan_geometry
from wsicount.tissue import SMOOTH_UM, TissueMask

NORM = {"kind": "percentile", "low": 1.0, "high": 99.5, "field_px": 128}


def _slide(tmp_path, img: np.ndarray):
    """``img`` (grey uint8) written as a lossless tiled TIFF at 1 um/px and opened through the real reader."""
    rgb = np.repeat(img[..., None], 3, axis=-1)
    path = tmp_path / "s.tiff"
    write_pyramid(path, "tiff", img.shape, lambda y0, y1: rgb[y0:y1], 1.0, 20.0, compression="deflate")
    sl = open_slide(path)
    return sl, plan_geometry(sl, 1.0)


def _field(sl, geom, tissue: np.ndarray, norm: dict = NORM, scale: float = 4.0) -> NormField:
    """The field for a mask given at ``scale`` model px per mask px (the counted region = the tissue)."""
    tm = TissueMask(tissue, scale, scale, 1.0, "test", tissue=tissue)
    return build_norm_field(sl, geom, tm, (scale, scale), norm, [0])


def _cells(rng, shape, level: float) -> np.ndarray:
    """Textured tissue at ``level`` with bright spots, as float."""
    img = level * (1 + 0.2 * rng.standard_normal(shape))
    n = shape[0] * shape[1] // 50
    img[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] += 4 * level
    return img


def test_a_pixel_gets_the_same_statistics_in_every_window():
    rng = np.random.default_rng(0)
    off, span = rng.uniform(0, 30, (7, 9)).astype(np.float32), rng.uniform(50, 200, (7, 9)).astype(np.float32)
    part = Part.of(5, 6, rng.random((4, 5)) > 0.3, 3.0, 77.0)
    f = NormField(32, off, span, (part,), (4.0, 4.0))
    whole_o, whole_s = f.window(0, 200, 0, 260)
    for y0, y1, x0, x1 in [(0, 64, 0, 64), (17, 139, 33, 250), (100, 200, 5, 6), (31, 33, 30, 34)]:
        o, s = f.window(y0, y1, x0, x1)
        assert np.array_equal(o, whole_o[y0:y1, x0:x1]) and np.array_equal(s, whole_s[y0:y1, x0:x1])
    assert (whole_s[20:36, 24:44][part.mask.repeat(4, 0).repeat(4, 1)] == 77.0).all()
    assert np.array_equal(pickle.loads(pickle.dumps(f)).window(0, 200, 0, 260)[1], whole_s)
    # past the grid end, a window's reflected pixels get the statistics of the pixels they reflect
    x = rng.random((1, 40, 30)).astype(np.float32)
    y = f.apply(x, (180, 220, 240, 270), 200, 260)
    o, s = f.window(180, 200, 240, 260)
    o, s = np.pad(o, [(0, 20), (0, 10)], mode="symmetric"), np.pad(s, [(0, 20), (0, 10)], mode="symmetric")
    assert np.allclose(y, (x - o) / s)


def test_lattice_values_are_interpolated_between_centres():
    off = np.array([[0, 10], [20, 30]], np.float32)
    f = NormField(10, off, np.ones((2, 2), np.float32))
    o, _ = f.window(0, 10, 0, 10)
    assert o[0, 0] == pytest.approx(0.95 * 0.05 * 10 + 0.05 * 0.95 * 20 + 0.05 * 0.05 * 30, abs=1e-5)  # centre (0.5, 0.5)
    assert np.all(np.diff(o, axis=0) > 0) and np.all(np.diff(o, axis=1) > 0)


def test_one_brightness_slide_gets_the_slide_wide_scaling(tmp_path):
    rng = np.random.default_rng(1)
    img = np.clip(_cells(rng, (512, 640), 40.0), 0, 255).astype(np.uint8)
    sl, geom = _slide(tmp_path, img)
    f = _field(sl, geom, np.ones((128, 160), bool))
    glob_off, glob_span = percentile_stats(img.astype(np.float32), NORM)
    o, s = f.window(0, 512, 0, 640)
    assert np.abs(o - glob_off).max() <= 0.03 * glob_span
    assert np.abs(s - glob_span).max() <= 0.05 * glob_span


def test_brightness_steps_between_regions_are_followed(tmp_path):
    """Two large regions (4 fields wide each), one 4x dimmer: each is normalised by its own statistics inside."""
    rng = np.random.default_rng(2)
    img = np.zeros((512, 1024), np.float32)
    img[:, :512] = _cells(rng, (512, 512), 50.0)
    img[:, 512:] = _cells(rng, (512, 512), 12.5)
    img = np.clip(img, 0, 255).astype(np.uint8)
    sl, geom = _slide(tmp_path, img)
    f = _field(sl, geom, np.ones((128, 256), bool))
    o, s = f.window(0, 512, 0, 1024)
    for half, inner in ((img[:, :512], (slice(0, 512), slice(0, 384))), (img[:, 512:], (slice(0, 512), slice(640, 1024)))):
        ref_off, ref_span = percentile_stats(half.astype(np.float32), NORM)
        assert np.abs(s[inner] / ref_span - 1).max() <= 0.1
        assert np.abs(o[inner] - ref_off).max() <= 0.05 * ref_span
    assert s[:, :384].mean() > 3 * s[:, 640:].mean()


def test_a_small_tissue_piece_is_normalised_by_its_own_pixels(tmp_path):
    """A piece no larger than a field, apart from other tissue, gets exactly its own percentiles (as evaluate does)."""
    rng = np.random.default_rng(3)
    img = np.zeros((512, 512), np.uint8)
    piece = np.clip(_cells(rng, (96, 112), 20.0) + np.linspace(0, 60, 112), 1, 255).astype(np.uint8)  # a ramp: its border matters
    img[200:296, 100:212] = piece
    img[:, 400:] = np.clip(_cells(rng, (512, 112), 80.0), 0, 255).astype(np.uint8)
    sl, geom = _slide(tmp_path, img)
    tissue = np.zeros((128, 128), bool)
    tissue[50:74, 25:53] = True  # the piece exactly (mask px = 4 image px)
    tissue[:, 100:] = True
    counted = np.pad(tissue, 0)
    counted[48:76, 23:55] = True  # the counted region reaches a little beyond it
    tm = TissueMask(counted, 4.0, 4.0, 1.0, "test", tissue=tissue)
    f = build_norm_field(sl, geom, tm, (4.0, 4.0), NORM, [0])
    # statistics over the piece shrunk by a smoothing sd (here 2 mask px = 8 px): its border may hold background
    e = 4 * int(np.ceil(SMOOTH_UM / 4.0))
    ref = percentile_stats(piece[e:-e, e:-e].astype(np.float32), NORM)
    assert ref != percentile_stats(piece.astype(np.float32), NORM)
    o, s = f.window(192, 304, 92, 220)
    assert np.allclose(o, ref[0]) and np.allclose(s, ref[1])


def test_fixed_normalisation_is_kept(tmp_path):
    img = np.full((64, 64), 30, np.uint8)
    sl, geom = _slide(tmp_path, img)
    f = _field(sl, geom, np.ones((16, 16), bool), {"kind": "fixed", "offset": 5.0, "span": 200.0})
    o, s = f.window(0, 64, 0, 64)
    assert (o == 5.0).all() and (s == 200.0).all()


@pytest.mark.parametrize("seed", range(3))
def test_percentiles_from_a_histogram_match_numpy(seed):
    v = np.random.default_rng(seed).integers(0, 256, 5000)
    hist = np.bincount(v * 4, minlength=1024)
    lo, hi = percentiles_from_hist(hist, (1.0, 99.5), 0.25)
    ref_lo, ref_hi = np.percentile(v, [1.0, 99.5])
    assert abs(lo - ref_lo) <= 1.0 and abs(hi - ref_hi) <= 1.0


def test_an_image_on_black_is_normalised_by_all_its_pixels_to_its_edge(tmp_path):
    """With a detected mask, a lone image's statistics are its own percentiles, its darker (vignetted) border included;
    the background nearest to it takes the same statistics (as `evaluate --context background` frames an image)."""
    from wsicount.tissue import detect_tissue

    rng = np.random.default_rng(4)
    img = np.zeros((512, 512), np.uint8)
    yy, xx = np.mgrid[-1:1:160j, -1:1:176j]
    vignette = 1.0 - 0.6 * np.clip(np.hypot(yy, xx) - 0.5, 0, None)  # the border ~40 % darker than the centre
    piece = np.clip(_cells(rng, (160, 176), 30.0) * vignette + 6, 2, 255).astype(np.uint8)
    img[160:320, 96:272] = piece
    sl, geom = _slide(tmp_path, img)
    tm = detect_tissue(sl, "fluorescence")
    assert tm.background is not None and tm.background < 2
    norm = {**NORM, "field_px": 256}  # the image and its counted rim fit in a field and a half: one piece
    f = build_norm_field(sl, geom, tm, (tm.scale_y, tm.scale_x), norm, [0])
    assert len(f.parts) == 1
    ref = percentile_stats(piece.astype(np.float32), NORM)
    o, s = f.window(160, 320, 96, 272)
    assert np.allclose(o, ref[0], atol=0.25) and np.allclose(s, ref[1], rtol=1e-3, atol=0.25)
    o, s = f.window(100, 380, 40, 330)  # the black around it, up to half a field away, is normalised with it
    assert np.allclose(o, ref[0], atol=0.25) and np.allclose(s, ref[1], rtol=1e-3, atol=0.25)
    e = 4 * int(np.ceil(SMOOTH_UM / 4.0))  # what a band of a smoothing sd inside the outline would have given
    assert abs(percentile_stats(piece[e:-e, e:-e].astype(np.float32), NORM)[0] - ref[0]) >= 1.0


def test_a_floor_shows_the_black_around_an_image_as_zero_padding(tmp_path):
    """With ``floor`` 0 every pixel darker than the low percentile (the slide's black included) is normalised
    to 0, the value a convolution pads with beyond an image: in the slide field and in a lone image alike."""
    from wsicount.preprocess import normalize_image

    rng = np.random.default_rng(5)
    img = np.zeros((256, 256), np.uint8)
    piece = np.clip(_cells(rng, (96, 96), 30.0) + 6, 2, 255).astype(np.uint8)
    img[80:176, 80:176] = piece
    sl, geom = _slide(tmp_path, img)
    floored = {**NORM, "floor": 0.0}
    x = img[None].astype(np.float32)
    plain = _field(sl, geom, np.ones((64, 64), bool)).apply(x, (0, 256, 0, 256), 256, 256)
    f = _field(sl, geom, np.ones((64, 64), bool), floored)
    y = f.apply(x, (0, 256, 0, 256), 256, 256)
    assert f.floor == 0.0 and plain.min() < 0  # black lies below the low percentile
    assert np.array_equal(y, np.maximum(plain, 0))
    assert (y[:, :80] == 0).all()  # the black around the image: exactly zero
    alone = normalize_image(piece, [0], floored)
    off, span = percentile_stats(piece[None].astype(np.float32), NORM)
    assert alone.min() == 0 and np.array_equal(alone, np.maximum(apply_normalization(piece[None], off, span), 0))
    assert np.array_equal(apply_normalization(piece[None], off, span), normalize_image(piece, [0], NORM))


def test_a_floor_applies_to_a_single_level():
    """A scalar level (a slide background under an image's statistics, as framed training asks) is floored too."""
    assert float(apply_normalization(np.float32(0.0), 10.0, 50.0, 0.0)) == 0.0
    assert float(apply_normalization(np.float32(0.0), 10.0, 50.0)) == pytest.approx(-0.2)
