"""Slide readers: round trips through every backend, geometry, pickling and bad input."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from wsicount.errors import InputError, MissingMppError, SlideFormatError, TileReadError
from wsicount.io import open_slide, reduce_level, slide_info
from wsicount.io._pyramid import PyramidBuilder, downsample2, pyramid_shapes
from wsicount.synth import synth_array

MPP = 0.4523


def _rendered(truth) -> np.ndarray:
    """Level 0 exactly as rendered before compression (same arguments as the fixture)."""
    img, _ = synth_array(truth.shape, seed=truth.seed, look=truth.look, mpp=truth.mpp)
    return img


def _levels_written(truth) -> list[tuple[int, int]]:
    """Level shapes the writer reported in the truth JSON."""
    meta = json.loads(truth.path.with_name(truth.path.name + ".truth.json").read_text())
    return [tuple(s) for s in meta["levels"]]


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


CASES = [  # format, backend asked, backend expected, vendor, compression, lossless
    ("ndpi", "auto", "tifffile", "hamamatsu", None, False),
    ("ndpi", "openslide", "openslide", "hamamatsu", None, False),
    ("ndpi", "tifffile", "tifffile", "hamamatsu", None, False),
    ("tiff", "auto", "tifffile", "generic-tiff", None, False),
    ("tiff", "openslide", "openslide", "generic-tiff", None, False),
    ("tiff", "tifffile", "tifffile", "generic-tiff", "deflate", True),
    ("ome-tiff", "auto", "tifffile", "ome-tiff", None, False),
    ("ome-tiff", "tifffile", "tifffile", "ome-tiff", "deflate", True),
    ("ome-zarr", "auto", "zarr", "ome-zarr", None, True),
    ("svs", "openslide", "openslide", "aperio", None, False),
    ("svs", "tifffile", "tifffile", "aperio", None, False),
]


@pytest.mark.parametrize("fmt,backend,expect_backend,vendor,compression,lossless", CASES)
def test_round_trip(make_slide, fmt, backend, expect_backend, vendor, compression, lossless):
    """Pixels, mpp, level shapes, vendor and coordinates survive writing and reading."""
    truth = make_slide(fmt, compression=compression)
    with open_slide(truth.path, backend=backend) as s:
        assert (s.backend, s.vendor) == (expect_backend, vendor)
        assert s.mpp == pytest.approx(MPP, rel=1e-6) and s.mpp_y == pytest.approx(MPP, rel=1e-6)
        shapes = [tuple(lv.shape[:2]) for lv in s.levels]
        written = _levels_written(truth)
        if expect_backend == "openslide" and fmt == "ndpi":
            assert shapes[: len(written)] == written  # plus OpenSlide's JPEG-scaled levels
            assert s.objective_power == 20.0
        else:
            assert shapes == written
        img = _rendered(truth)
        lvl0 = s.levels[0].data.compute()
        assert lvl0.dtype == np.uint8 and lvl0.shape == (*truth.shape, 3)
        if lossless:
            np.testing.assert_array_equal(lvl0, img)
        else:
            assert _mae(lvl0, img) < 3.0
        assert _mae(s.read_region(1, 0, 0, *shapes[1]), downsample2(img)) < 3.0
        lv = s.levels[1]
        assert lv.dims == ("y", "x", "c") and lv.attrs["level"] == 1
        assert lv.attrs["mpp"] == pytest.approx(s.level_mpp(1))
        assert float(lv.x[0]) == pytest.approx(0.5 * s.level_mpp(1))
        assert float(lv.y[-1]) == pytest.approx((shapes[1][0] - 0.5) * s.mpp_y * s.downsamples[1], rel=1e-9)


def test_ndpi_backends_agree(make_slide):
    """OpenSlide and tifffile decode the synthetic NDPI to the same pixels."""
    truth = make_slide("ndpi")
    with open_slide(truth.path, backend="openslide") as a, open_slide(truth.path, backend="tifffile") as b:
        for k in range(len(b.levels)):
            h, w = b.levels[k].shape[:2]
            diff = np.abs(a.read_region(k, 0, 0, h, w).astype(int) - b.read_region(k, 0, 0, h, w))
            assert diff.max() <= 2


def test_ndpi_padded_levels_seen_by_both_backends(make_slide):
    """NDPI levels padded to multiples of 8 px are still one pyramid for tifffile and OpenSlide."""
    truth = make_slide("ndpi", size=(1040, 1496))
    written = _levels_written(truth)
    assert written == [(1040, 1496), (520, 752)]  # 748 px padded to 752
    with open_slide(truth.path, backend="tifffile") as b, open_slide(truth.path, backend="openslide") as a:
        assert [tuple(lv.shape[:2]) for lv in b.levels] == written
        ka = [tuple(lv.shape[:2]) for lv in a.levels].index(written[1])
        h1, w1 = written[1]
        np.testing.assert_array_equal(a.read_region(ka, 0, 0, h1, w1), b.read_region(1, 0, 0, h1, w1))
        ref = downsample2(_rendered(truth))
        assert _mae(b.read_region(1, 0, 0, *ref.shape[:2]), ref) < 3.0
        pad, edge = b.read_region(1, 0, 748, 520, 4), b.read_region(1, 0, 747, 520, 1)
        assert _mae(pad, np.repeat(edge, 4, axis=1)) < 3.0  # padding replicates the edge column


def test_ndpi_openslide_detects_hamamatsu_with_tiles(make_slide):
    """The NDPI is OpenSlide's 'hamamatsu' with restart-marker tiles and NDPI properties."""
    import openslide

    truth = make_slide("ndpi")
    assert openslide.OpenSlide.detect_format(str(truth.path)) == "hamamatsu"
    with openslide.OpenSlide(str(truth.path)) as osr:
        assert osr.properties["openslide.level[0].tile-height"] == "8"
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(MPP, rel=1e-6)
        assert osr.properties["openslide.objective-power"] == "20"


@pytest.mark.parametrize("fmt", ["ndpi", "ome-zarr"])
def test_read_region_zero_fill_matches_dask(make_slide, fmt):
    """Windows overlapping the edges are zero outside the level and equal the dask slice inside."""
    truth = make_slide(fmt)
    with open_slide(truth.path) as s:
        h, w = s.levels[0].shape[:2]
        full = s.levels[0].data
        win = s.read_region(0, -7, w - 30, 50, 64)
        assert win.shape == (50, 64, 3)
        assert not win[:7].any() and not win[:, 30:].any()
        np.testing.assert_array_equal(win[7:, :30], full[0:43, w - 30 : w].compute())
        np.testing.assert_array_equal(s.read_region(0, 100, 200, 300, 400),
                                      full[100:400, 200:600].compute())
        assert not s.read_region(0, h + 5, 0, 10, 10).any()
        assert s.read_region(0, 0, 0, 0, 5).shape == (0, 5, 3)


def _read_corner(slide) -> np.ndarray:
    """Worker-side read of a pickled slide and of one of its dask levels."""
    return slide.read_region(0, 0, 0, 64, 64) + 0 * slide.levels[1].data[:64, :64].compute()


def test_pickle_reopens_lazily(make_slide):
    """A Slide pickles as its path; the copy reopens on first use, here and in a new process."""
    truth = make_slide("ndpi")
    with open_slide(truth.path) as s:
        blob = pickle.dumps(s)
        assert len(blob) < 1000
        assert len(pickle.dumps(s.levels[0].data)) < 20_000  # graphs carry no pixels or handles
        expect = s.read_region(0, 0, 0, 64, 64)
        copy = pickle.loads(blob)
        assert "_reopen" in copy.__dict__  # not reopened yet
        np.testing.assert_array_equal(copy.read_region(0, 0, 0, 64, 64), expect)
        assert copy.mpp == s.mpp and copy.backend == s.backend
        copy.close()
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            np.testing.assert_array_equal(pool.submit(_read_corner, s).result(timeout=120), expect)


def test_mpp_override_and_missing(make_slide):
    """No pixel size -> MissingMppError naming the file; ``mpp=`` overrides."""
    for fmt in ("tiff", "ndpi", "ome-zarr"):
        truth = make_slide(fmt, size=(512, 768), write_mpp=False)
        with pytest.raises(MissingMppError, match="no pixel size") as ei:
            open_slide(truth.path)
        assert str(truth.path) in str(ei.value) and "\n" not in str(ei.value)
        with open_slide(truth.path, mpp=0.25) as s:
            assert s.mpp == s.mpp_y == 0.25 and s.properties["wsicount.mpp_source"] == "override"
    with pytest.raises(InputError):
        open_slide(truth.path, mpp=-1.0)


def _bad_inputs(tmp: Path, ndpi: Path) -> list[tuple[Path, type]]:
    """(path, expected error) pairs for unusable inputs."""
    (tmp / "folder").mkdir()
    (tmp / "empty.ndpi").write_bytes(b"")
    (tmp / "notes.ndpi").write_text("this is not a slide\n")
    data = ndpi.read_bytes()
    (tmp / "half.ndpi").write_bytes(data[: len(data) // 2])
    return [(tmp / "missing.ndpi", InputError), (tmp / "folder", InputError),
            (tmp / "empty.ndpi", SlideFormatError), (tmp / "notes.ndpi", SlideFormatError),
            (tmp / "half.ndpi", SlideFormatError)]


@pytest.mark.parametrize("backend", ["auto", "openslide", "tifffile"])
def test_bad_input(make_slide, tmp_path, backend):
    """Each unusable input raises its error class with a one-line message naming the file."""
    for path, err in _bad_inputs(tmp_path, make_slide("ndpi").path):
        with pytest.raises(err) as ei:
            open_slide(path, backend=backend)
        msg = str(ei.value)
        assert str(path) in msg and "\n" not in msg, msg
        if path.name == "notes.ndpi" and backend == "auto":
            assert "is not a supported slide" in msg
        if path.name == "half.ndpi" and backend != "openslide":
            assert "truncated" in msg


def test_corrupt_tile_raises_tile_read_error(make_slide, tmp_path):
    """Opening validates only the smallest level; a broken level-0 tile fails at read time."""
    src = make_slide("tiff").path
    bad = tmp_path / "corrupt.tiff"
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tf:
        off = tf.pages[0].dataoffsets[5]
    data[off : off + 64] = b"\x00" * 64  # destroys the tile's JPEG markers
    bad.write_bytes(bytes(data))
    with open_slide(bad) as s:
        with pytest.raises(TileReadError, match="level 0") as ei:
            s.read_region(0, 0, 0, 1024, 1024)
        assert str(bad) in str(ei.value)
        with pytest.raises(TileReadError):
            s.levels[0].data[512:1024, :512].compute()


def test_best_level_and_info(make_slide):
    """best_level never upsamples; slide_info describes every level."""
    with open_slide(make_slide("tiff").path) as s:
        assert s.downsamples == [1.0, 2.0, 4.0]
        assert s.best_level(MPP) == 0
        assert s.best_level(2 * MPP) == 1
        assert s.best_level(2 * MPP * 0.99) == 1  # within 2 % tolerance
        assert s.best_level(2 * MPP * 0.97) == 0
        assert s.best_level(100.0) == 2
        assert s.best_level(0.1) == 0
        info = slide_info(s)
        assert info["vendor"] == "generic-tiff" and info["channels"] == 3
        sizes = [(lv["height"], lv["width"]) for lv in info["levels"]]
        assert sizes == [(2048, 2560), (1024, 1280), (512, 640)]
        assert info["channel_names"] == ["R", "G", "B"] and info["t_size"] == 1
        json.dumps(info)


@pytest.mark.parametrize("fmt", ["ndpi", "tiff"])
def test_reduce_level_equals_whole_level(make_slide, fmt):
    """Block-by-block reduction equals reducing the whole level at once (blocks cross CHUNK)."""
    with open_slide(make_slide(fmt).path) as s:
        h, w, c = s.shapes[0]
        full = s.read_region(0, 0, 0, h, w)
        for f in (1, 2, 3, 5):
            hh, ww = h // f * f, w // f * f
            ref = full[:hh, :ww].astype(np.float32).reshape(hh // f, f, ww // f, f, c).mean(axis=(1, 3)).astype(np.uint8)
            np.testing.assert_array_equal(reduce_level(s, 0, f, "mean", threads=3), ref)
        for f in (1, 3, 7):
            np.testing.assert_array_equal(reduce_level(s, 0, f, "subsample"), full[::f, ::f])
        with pytest.raises(ValueError):
            reduce_level(s, 0, 257, "mean")


@pytest.mark.parametrize("fmt", ["ndpi", "svs"])
def test_decode_cache_gives_the_same_pixels_within_its_bound(make_slide, fmt):
    """Overlapping windows read through the segment cache equal uncached reads; the cache stays under its limit."""
    path = make_slide(fmt).path
    with open_slide(path, backend="tifffile") as plain, open_slide(path, backend="tifffile") as cached:
        limit = 2 << 20
        cached.set_decode_cache(limit)
        rng = np.random.default_rng(0)
        for _ in range(40):
            level = int(rng.integers(0, len(plain.shapes)))
            h, w, _ = plain.shapes[level]
            y0, x0 = int(rng.integers(-50, h)), int(rng.integers(-50, w))
            np.testing.assert_array_equal(cached.read_region(level, y0, x0, 300, 500),
                                          plain.read_region(level, y0, x0, 300, 500))
            assert 0 < cached._impl._segments.nbytes <= limit
        cached.set_decode_cache(0)
        assert cached._impl._segments.nbytes == 0


def test_segment_cache_evicts_least_recently_used():
    """Entries leave oldest-used first once the byte limit is passed; hits refresh them."""
    from wsicount.io._base import SegmentCache

    c = SegmentCache(300)
    for i, k in enumerate("abc"):
        c.put((k,), np.full((10, 10), i, np.uint8), (i,))
    seg, pos = c.get(("a",))  # a is now the most recent
    assert pos == (0,) and seg.shape == (10, 10) and not seg.any()
    c.put(("d",), np.full((10, 10), 3, np.uint8), (3,))
    assert c.get(("b",)) is None and c.get(("a",)) is not None and c.nbytes == 300
    seg, pos = c.get(("d",))
    assert pos == (3,) and (seg == 3).all()
    seg[:] = 9  # a copy: the cache keeps its own
    assert (c.get(("d",))[0] == 3).all()
    c.put(("big",), np.zeros(301, np.uint8), (0,))  # larger than the cache: not kept
    assert c.get(("big",)) is None and c.nbytes == 300


def test_pipeline_reads_without_dask(make_slide):
    """Opening, tissue, geometry, tile windows and thumbnail import neither dask nor xarray; ``levels`` does."""
    path = make_slide("ndpi").path
    code = f"""
import sys
from wsicount.io import open_slide
from wsicount.tissue import detect_tissue
from wsicount.tiling import plan_geometry, read_model_window
from wsicount.report import thumbnail
s = open_slide({str(path)!r})
detect_tissue(s, "fluorescence"); thumbnail(s)
g = plan_geometry(s, 4 * s.mpp)
read_model_window(s, g, (0, 64, 0, 64))
assert not any(m.split(".")[0] in ("dask", "xarray") for m in sys.modules), "imported dask or xarray"
assert tuple(s.levels[1].shape) == s.shapes[1] and "dask" in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _write_ngff(path: Path, data: np.ndarray, axes: list[str], scale: list[float]) -> None:
    """Minimal one-level NGFF 0.4 image (zarr v2) with the given axes."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", data=data, chunks=data.shape)
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": a, "type": types[a], **({"unit": "micrometer"} if a in "zyx" else {})} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]


def test_ome_zarr_axes_time_and_uint16(tmp_path):
    """t,c,z,y,x uint16: t=0 and z=0 are read, t size kept in properties, values scaled to uint8."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (3, 2, 1, 40, 50), dtype=np.uint16)
    _write_ngff(tmp_path / "tl.zarr", data, ["t", "c", "z", "y", "x"], [1.0, 1.0, 2.0, 0.65, 0.65])
    with open_slide(tmp_path / "tl.zarr") as s:
        assert s.properties["wsicount.t_size"] == "3" and s.mpp == pytest.approx(0.65)
        px = s.read_region(0, 0, 0, 40, 50)
        assert px.shape == (40, 50, 2)
        expect = np.moveaxis(data[0, :, 0], 0, -1).astype(float)
        expect = np.clip(expect * 255.0 / expect.reshape(-1, 2).max(0) + 0.5, 0, 255).astype(np.uint8)
        assert np.abs(px.astype(int) - expect).max() <= 1  # float32 rounding
    gray = rng.integers(0, 255, (30, 20), dtype=np.uint8)
    _write_ngff(tmp_path / "g.zarr", gray, ["y", "x"], [0.5, 0.5])
    with open_slide(tmp_path / "g.zarr") as s:
        np.testing.assert_array_equal(s.levels[0].data.compute()[..., 0], gray)


def test_classic_tiff_with_ndpi_tags_named_ndpi(tmp_path):
    """A classic TIFF carrying NDPI tags is read without NanoZoomer's 64-bit offset dialect."""
    img = np.random.default_rng(1).integers(0, 255, (256, 320, 3), dtype=np.uint8)
    path = tmp_path / "classic.ndpi"
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER", metadata=None,
                     extratags=[(271, "s", 0, "Hamamatsu", True), (65420, "I", 1, 1, True),
                                (65421, "f", 1, 20.0, True)])
    with open_slide(path, backend="tifffile") as s:
        assert s.vendor == "hamamatsu" and s.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(s.levels[0].data.compute(), img)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (101, 2)])
def test_pyramid_builder_streams_exactly(tmp_path, shape):
    """Streaming level 0 in uneven bands gives the same levels as downsampling whole arrays."""
    img = np.random.default_rng(2).integers(0, 255, (*shape, 3), dtype=np.uint8)
    shapes = pyramid_shapes(shape, min_size=8)
    b = PyramidBuilder(shapes, 3, tmp_path)
    for y0, y1 in [(0, 5), (5, 6), (6, shape[0])]:
        b.push(img[y0:y1])
    b.finish()
    ref = img
    for k in range(1, len(shapes)):
        ref = downsample2(ref)
        np.testing.assert_array_equal(b.level(k), ref)
    padded = pyramid_shapes((80, 88), min_size=8, multiple=8)
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in padded[1:])
