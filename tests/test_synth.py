"""Synthetic slides: ground truth consistency, tissue geometry, reproducibility and looks."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from wsicount.synth import DEFAULT_CELL_PARAMS, SynthTruth, synth_array, synth_slide


def _points(truth: SynthTruth) -> np.ndarray:
    """(n, 2) x, y from the points CSV (checks the header)."""
    with open(truth.points_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["x", "y"]
    return np.array(rows[1:], dtype=float).reshape(-1, 2)


@pytest.mark.parametrize("tissue", ["disk", "blob"])
def test_points_match_truth_and_lie_in_tissue(make_slide, tissue):
    """n_cells == CSV rows == density x area; every point is inside the tissue and the image."""
    truth = make_slide("ome-zarr", tissue=tissue)
    pts = _points(truth)
    assert len(pts) == truth.n_cells == round(300.0 * truth.tissue_area_mm2) > 25
    assert truth.contains(pts[:, 0], pts[:, 1]).all()
    h, w = truth.shape
    assert (pts >= -0.5).all() and (pts[:, 0] < w - 0.5).all() and (pts[:, 1] < h - 0.5).all()
    spacing = DEFAULT_CELL_PARAMS["fluorescence"]["min_spacing_um"] / truth.mpp
    assert cKDTree(pts).query(pts, k=2)[0][:, 1].min() >= spacing
    assert SynthTruth.load(truth.path.with_name(truth.path.name + ".truth.json")) == truth


def test_disk_area_formula(tmp_path):
    """Disk area is pi r^2 mpp^2 / 1e6 for the wanted fraction, capped to fit the image."""
    t = synth_slide(tmp_path / "a.ome.zarr", format="ome-zarr", size=(512, 1024), tissue_fraction=0.2,
                    cell_density_per_mm2=100.0)
    r = t.tissue_radius_px
    assert math.pi * r**2 == pytest.approx(0.2 * 512 * 1024)
    assert t.tissue_area_mm2 == pytest.approx(math.pi * r**2 * t.mpp**2 / 1e6)
    assert t.tissue_center_yx == (255.5, 511.5)
    capped = synth_slide(tmp_path / "b.ome.zarr", format="ome-zarr", size=(512, 1024), tissue_fraction=1.0,
                         cell_density_per_mm2=100.0)
    assert capped.tissue_radius_px == pytest.approx(256.0)  # fits inside the image


def test_seeded_reproducibility():
    """Same seed -> same points and pixels; another seed -> different cells."""
    a_img, a_pts = synth_array((512, 640), seed=11)
    b_img, b_pts = synth_array((512, 640), seed=11)
    c_img, c_pts = synth_array((512, 640), seed=12)
    np.testing.assert_array_equal(a_pts, b_pts)
    np.testing.assert_array_equal(a_img, b_img)
    assert len(a_pts) != len(c_pts) or not np.allclose(a_pts, c_pts)
    assert not np.array_equal(a_img, c_img)


def test_written_level0_equals_rendering_and_points_csv(make_slide):
    """A lossless slide holds exactly synth_array's image; the CSV holds its points."""
    import tifffile

    truth = make_slide("tiff", compression="deflate")
    img, pts = synth_array(truth.shape, seed=truth.seed)
    np.testing.assert_array_equal(tifffile.imread(truth.path, level=0), img)
    np.testing.assert_allclose(_points(truth), pts, atol=1e-3)


def test_fluorescence_look():
    """Dark background, slightly brighter tissue, bright green cells with faint red/blue."""
    img, pts = synth_array((1024, 1024), seed=3)
    assert img[:20, :20].mean() < 10  # corner: outside the disk
    centre = img[400:624, 400:624, 1].astype(float)
    assert 5 < np.median(centre) < 70  # tissue background ~15-25 % of bright bodies, as in TRP1
    at = img[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)].astype(float)
    assert np.median(at[:, 1]) > 60 and (at[:, 1] > 2 * at[:, 0]).all() and (at[:, 1] > 2 * at[:, 2]).all()


def test_brightfield_look():
    """White background, pink tissue, darker purple nuclei at the cell positions."""
    img, pts = synth_array((1024, 1024), seed=3, look="brightfield")
    assert img[:20, :20].mean() > 220
    tissue = img[480:544, 480:544].reshape(-1, 3).astype(float).mean(0)
    assert tissue[1] < tissue[0] - 30 and tissue[1] < tissue[2] - 30  # pink: green absorbed
    at = img[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)].astype(float)
    assert np.median(at.sum(1)) < 0.8 * tissue.sum()


def test_cell_params_are_tunable(tmp_path):
    """cell_params changes the look; unknown keys and bad NDPI sizes are rejected."""
    dim, _ = synth_array((512, 512), seed=1, cell_params={"brightness": (20.0, 30.0)})
    bright, _ = synth_array((512, 512), seed=1)
    assert dim[..., 1].max() < bright[..., 1].max()
    with pytest.raises(ValueError, match="unknown cell_params"):
        synth_array((512, 512), cell_params={"colour": 1})
    with pytest.raises(ValueError, match="multiple of 8"):
        synth_slide(tmp_path / "x.ndpi", format="ndpi", size=(1001, 1024))
    assert not (tmp_path / "x.ndpi").exists()
