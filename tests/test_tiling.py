"""Tile-grid geometry: cores partition the grid, windows are stride-aligned and cover the halo."""

from __future__ import annotations

import numpy as np
import pytest

from wsicount.tiling import TileGrid, mask_on_grid, tissue_tiles


@pytest.mark.parametrize("h,w,tile", [(3000, 3000, 256), (1001, 777, 512), (64, 1500, 1024)])
def test_cores_partition_grid_and_windows_aligned(h: int, w: int, tile: int) -> None:
    grid = TileGrid.for_model(h, w, tile, receptive_radius=50, stride=8, peak_margin=4)
    cover = np.zeros((h, w), dtype=np.int32)
    ph, pw = grid.padded
    for t in grid:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = t.window
        assert wy0 % 8 == 0 and wx0 % 8 == 0
        assert (wy1 - wy0) % 8 == 0 and (wx1 - wx0) % 8 == 0
        assert wy1 - wy0 <= tile and wx1 - wx0 <= tile
        # halo present wherever the grid continues
        assert y0 - wy0 >= min(grid.halo, y0) and wy1 - y1 >= min(grid.halo, ph - y1)
        assert x0 - wx0 >= min(grid.halo, x0) and wx1 - x1 >= min(grid.halo, pw - x1)
    assert cover.min() == 1 and cover.max() == 1
    assert grid.halo >= 54 and grid.core % 8 == 0


def test_tile_too_small_is_clear_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        TileGrid.for_model(1000, 1000, 96, receptive_radius=50, stride=8)


def test_tissue_tiles_cover_every_tissue_pixel() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.97  # sparse tissue at a coarse scale
    h, w = 700, 1000
    sy, sx = h / mask.shape[0], w / mask.shape[1]
    grid = TileGrid.for_model(h, w, 256, 50, 8, 4)
    chosen = tissue_tiles(grid, mask, sy, sx)
    covered = np.zeros((h, w), dtype=bool)
    for t in chosen:
        y0, y1, x0, x1 = t.core
        covered[y0:y1, x0:x1] = True
    full = mask_on_grid(mask, sy, sx, (0, h, 0, w))
    assert not (full & ~covered).any()
    assert len(chosen) < grid.shape[0] * grid.shape[1]


@pytest.mark.parametrize("scale", [1.0, 3.7, 0.45])
def test_trimmed_windows_hold_every_tissue_pixel_with_its_halo(scale: float) -> None:
    """A trimmed window is stride-aligned, inside the full one, and holds each tissue pixel's halo."""
    rng = np.random.default_rng(1)
    h, w = 900, 1300
    mask = np.zeros((int(h / scale), int(w / scale)), dtype=bool)
    yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
    mask |= (yy - mask.shape[0] * 0.5) ** 2 + (xx - mask.shape[1] * 0.4) ** 2 < (mask.shape[0] * 0.3) ** 2
    mask |= rng.random(mask.shape) > 0.999  # isolated specks: tiny boxes
    sy, sx = h / mask.shape[0], w / mask.shape[1]
    grid = TileGrid.for_model(h, w, 400, 50, 8, 4)
    full = {t.key: t for t in tissue_tiles(grid, mask, sy, sx, trim=False)}
    trimmed = tissue_tiles(grid, mask, sy, sx)
    assert [t.key for t in trimmed] == list(full)
    on_grid = mask_on_grid(mask, sy, sx, (0, h, 0, w))
    smaller = 0
    for t in trimmed:
        wy0, wy1, wx0, wx1 = t.window
        fy0, fy1, fx0, fx1 = full[t.key].window
        assert t.core == full[t.key].core
        assert fy0 <= wy0 < wy1 <= fy1 and fx0 <= wx0 < wx1 <= fx1
        assert wy0 % 8 == 0 and wx0 % 8 == 0 and (wy1 - wy0) % 8 == 0 and (wx1 - wx0) % 8 == 0
        y0, y1, x0, x1 = t.core
        ys, xs = np.nonzero(on_grid[y0:y1, x0:x1])
        if len(ys):  # every tissue pixel of the core sees halo px on each side (or the grid edge)
            assert wy0 <= max(y0 + ys.min() - grid.halo, 0) and wy1 >= min(y0 + ys.max() + 1 + grid.halo, fy1)
            assert wx0 <= max(x0 + xs.min() - grid.halo, 0) and wx1 >= min(x0 + xs.max() + 1 + grid.halo, fx1)
        smaller += (wy1 - wy0) * (wx1 - wx0) < (fy1 - fy0) * (fx1 - fx0)
    assert smaller > 0  # boundary tiles really got smaller windows


def test_mask_covers_is_mask_on_grid_all_true():
    """The shortcut the tiles take (no multiply inside the tissue) agrees with the mask they would multiply by."""
    from wsicount.tiling import mask_covers

    rng = np.random.default_rng(4)
    mask = np.ones((60, 80), bool)
    mask[rng.integers(0, 60, 25), rng.integers(0, 80, 25)] = False  # scattered holes
    mask[:, 70:] = False
    seen = set()
    for _ in range(400):
        sy, sx = rng.uniform(0.7, 5.0, 2)
        y0, x0 = rng.integers(0, int(60 * sy)), rng.integers(0, int(80 * sx))
        box = (y0, y0 + rng.integers(0, 40), x0, x0 + rng.integers(0, 40))
        want, got = bool(mask_on_grid(mask, sy, sx, box).all()), mask_covers(mask, sy, sx, box)
        assert want or not got, (sy, sx, box)  # never "all tissue" where the multiply would zero something
        if sy >= 1 and sx >= 1:  # a mask no finer than the grid, as in every run: the same answer
            assert got == want, (sy, sx, box)
        seen.add(got)
    assert seen == {True, False}  # both answers were exercised
