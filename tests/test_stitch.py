"""The density pyramid: every level is the 2x2 sum of the one below and sums to the same count."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from wsicount.stitch import build_pyramid, create_density, write_chunk


@pytest.fixture
def density(tmp_path):
    """A 2100x1700 density/0 with 300-px chunks, three of them holding values, the rest never written."""
    arr = create_density(tmp_path, (2100, 1700), 300, 1.5)
    rng = np.random.default_rng(0)
    for y0, x0 in ((0, 0), (600, 900), (1800, 1500)):
        h, w = min(300, 2100 - y0), min(300, 1700 - x0)
        write_chunk(arr, y0, x0, rng.random((h, w), dtype=np.float32))
    return tmp_path


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
    # level 1 has 4x3 chunks of 300 (1050x850); sources with values touch 3 of them
    names = [p.name for p in (density / "density" / "1").iterdir() if not p.name.startswith(".")]
    assert sorted(names) == ["0.0", "1.1", "3.2"]
