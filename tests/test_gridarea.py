"""Tissue area per grid cell: exact pixel overlap, so no cell holds more tissue than its own area."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsicount.gridarea import integrate_cells, tissue_area_per_cell


def _grid(n_px: int, px_um: float, g: float) -> int:
    return math.ceil(n_px * px_um / g)


@pytest.mark.parametrize("px_um", [3.6184, 7.2, 0.9, 12.5, 150.0])
def test_full_mask_fills_each_cell_exactly(px_um: float) -> None:
    """All tissue: interior cells hold exactly g² (the centre rule gave up to 1.026 g² at 3.6184 µm px)."""
    g = 100.0
    n = 301
    mask = np.ones((n, n + 17), bool)
    shape = (_grid(n, px_um, g), _grid(n + 17, px_um, g))
    area = tissue_area_per_cell(mask, px_um, px_um, g, shape)
    cell_mm2 = (g / 1000) ** 2
    assert area.max() <= cell_mm2 * (1 + 1e-12)
    assert area.sum() == pytest.approx(mask.sum() * px_um**2 / 1e6, rel=1e-12)  # nothing lost or counted twice
    full_rows, full_cols = int(n * px_um // g), int((n + 17) * px_um // g)
    np.testing.assert_allclose(area[:full_rows, :full_cols], cell_mm2, rtol=1e-12)


def test_a_pixel_is_split_in_proportion_to_its_overlap() -> None:
    # pixels of 40 µm on 100 µm cells: pixel 2 covers [80, 120): 20 µm in cell 0, 20 µm in cell 1
    a = np.array([[0, 0, 1, 0, 0]], bool)
    np.testing.assert_allclose(integrate_cells(a, 40.0, 100.0, 2, axis=1), [[0.5, 0.5]])
    a = np.array([[1, 1, 1, 1, 1]], bool)  # 200 µm of pixels on two 100 µm cells
    np.testing.assert_allclose(integrate_cells(a, 40.0, 100.0, 2, axis=1), [[2.5, 2.5]])


def test_pixels_past_the_last_cell_go_to_it() -> None:
    a = np.ones((1, 6))  # 6 px of 40 µm = 240 µm, on a 2-cell grid of 100 µm (rounding left 40 µm over)
    out = integrate_cells(a, 40.0, 100.0, 2, axis=1)
    np.testing.assert_allclose(out, [[2.5, 3.5]])


def test_rectangular_pixels_and_random_masks_keep_the_total() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((1500, 900)) < 0.4  # more rows than one band
    py, px, g = 2.7, 3.3, 50.0
    shape = (_grid(1500, py, g), _grid(900, px, g))
    area = tissue_area_per_cell(mask, py, px, g, shape)
    assert area.shape == shape
    assert area.sum() == pytest.approx(mask.sum() * py * px / 1e6, rel=1e-9)
    assert area.max() <= (g / 1000) ** 2 * (1 + 1e-12)
