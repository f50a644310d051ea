"""The density pyramid: every level is the 2x2 sum of the one below and sums to the same count."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from wsicount.store.density import build_pyramid, create_density, open_density, write_chunk


@pytest.fixture
def density(tmp_path):
    """A 2100x1700 density/0 with 300-px chunks, three of them holding values, the rest never
    written; the tiles also wrote level 1 (1050x850, 150-px chunks)."""
    _write_tiles(tmp_path, create_density)
    return tmp_path


def _write_tiles(out, create):
    """Create the density with ``create`` and write three tiles through :func:`open_density`."""
    create(out, (2100, 1700), 300, 1.5)
    store = open_density(out)
    rng = np.random.default_rng(0)
    for y0, x0 in ((0, 0), (600, 900), (1800, 1500)):
        h, w = min(300, 2100 - y0), min(300, 1700 - x0)
        write_chunk(store, y0, x0, rng.random((h, w), dtype=np.float32))


def test_levels_are_2x2_sums_with_equal_totals(density):
    n = build_pyramid(density, 1.5, min_side=200)
    g = zarr.open_group(str(density), mode="r")["density"]
    assert n == 4  # 2100x1700 -> 1050x850 -> 525x425 -> 262x212
    total = float(np.asarray(g["0"][...], np.float64).sum())
    for k in range(1, n):
        below = np.asarray(g[str(k - 1)][...], np.float64)
        h, w = g[str(k)].shape
        assert (h, w) == (below.shape[0] // 2, below.shape[1] // 2)
        expect = below[: 2 * h, : 2 * w].reshape(h, 2, w, 2).sum(axis=(1, 3))
        np.testing.assert_allclose(g[str(k)][...], expect, rtol=1e-6)
    # levels 0..2 have even sides, so nothing is cropped and the total is kept
    for k in range(3):
        assert float(np.asarray(g[str(k)][...], np.float64).sum()) == pytest.approx(total, rel=1e-6)
    scales = [d["coordinateTransformations"][0]["scale"][0] for d in g.attrs["multiscales"][0]["datasets"]]
    assert scales == [1.5 * 2**k for k in range(n)]


def test_empty_chunks_are_not_written(density):
    build_pyramid(density, 1.5, min_side=200)
    # level 1 (150-px chunks): each tile wrote one; level 2 (525x425, 150-px chunks) sums 2x2 of them
    names = [p.name for p in (density / "density" / "1").iterdir() if not p.name.startswith(".")]
    assert sorted(names) == ["0.0", "2.3", "6.5"]
    names = [p.name for p in (density / "density" / "2").iterdir() if not p.name.startswith(".")]
    assert sorted(names) == ["0.0", "1.1", "3.2"]


def test_level1_written_per_tile_equals_level1_built_at_the_end(tmp_path):
    """Output of an older run (no level 1 from the tiles) resumes to the same pyramid."""
    _write_tiles(tmp_path / "a", create_density)
    _write_tiles(tmp_path / "b", lambda *a: create_density(*a, min_side=10**6))  # no per-tile level 1
    assert open_density(tmp_path / "a").level1 is not None and open_density(tmp_path / "b").level1 is None
    assert build_pyramid(tmp_path / "a", 1.5, min_side=200) == build_pyramid(tmp_path / "b", 1.5, min_side=200) == 4
    ga, gb = (zarr.open_group(str(tmp_path / k), mode="r")["density"] for k in "ab")
    for k in range(4):
        np.testing.assert_allclose(ga[str(k)][...], gb[str(k)][...], rtol=1e-6)
    assert ga.attrs["multiscales"] == gb.attrs["multiscales"]
    assert ga["1"].chunks == (150, 150) and gb["1"].chunks == (300, 300)
    # reopening an identical density/0 keeps the level 1 the tiles wrote
    create_density(tmp_path / "a", (2100, 1700), 300, 1.5)
    assert open_density(tmp_path / "a").level1 is not None


def test_chunk_files_are_the_chunks_zarr_writes(tmp_path):
    """The tiles' chunk files (``store.density.ChunkFiles``) hold what zarr would write, edge chunks included, and read back exactly."""
    create_density(tmp_path / "ours", (2100, 1700), 300, 1.5)
    create_density(tmp_path / "zarr", (2100, 1700), 300, 1.5)
    ours = open_density(tmp_path / "ours")
    assert ours.files0 is not None and ours.files1 is not None  # the direct path is the one the tiles take
    theirs = open_density(tmp_path / "zarr")
    theirs.files0 = theirs.files1 = None  # the same writes through zarr's own pipeline
    rng = np.random.default_rng(1)
    for y0, x0 in ((0, 0), (600, 900), (1800, 1500), (1800, 0), (0, 1500)):  # the last three cut by the array's end
        block = rng.random((min(300, 2100 - y0), min(300, 1700 - x0)), dtype=np.float32)
        write_chunk(ours, y0, x0, block)
        write_chunk(theirs, y0, x0, block)
    for level in ("0", "1"):
        a, b = (zarr.open_array(str(tmp_path / k / "density" / level), mode="r") for k in ("ours", "zarr"))
        np.testing.assert_array_equal(a[...], b[...])
        names = sorted(p.name for p in (tmp_path / "ours" / "density" / level).iterdir() if not p.name.startswith("."))
        assert names == sorted(p.name for p in (tmp_path / "zarr" / "density" / level).iterdir()
                               if not p.name.startswith("."))
        codec = a.metadata.compressor
        for name in names:  # byte for byte the chunk zarr encodes (decoded: blosc may split blocks differently)
            raw = [np.frombuffer(codec.decode((tmp_path / k / "density" / level / name).read_bytes()), np.float32)
                   for k in ("ours", "zarr")]
            np.testing.assert_array_equal(raw[0], raw[1])
    # a block that is not a whole chunk goes through zarr and keeps the rest of its chunk
    from wsicount.store.density import put_block

    write_chunk(ours, 0, 0, np.ones((300, 300), np.float32))
    put_block(ours.level0, ours.files0, 0, 0, np.full((100, 100), 2, np.float32))
    chunk = zarr.open_array(str(tmp_path / "ours" / "density" / "0"), mode="r")[0:300, 0:300]
    assert (chunk[:100, :100] == 2).all() and (chunk[100:, :] == 1).all() and (chunk[:, 100:] == 1).all()
