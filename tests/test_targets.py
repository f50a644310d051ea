"""Density targets integrate to the point count everywhere, borders and anisotropic kernels included."""

from __future__ import annotations

import numpy as np
import pytest

from wsicount.training.data import Sample
from wsicount.training.targets import density_map, sigma_um_to_px

SHAPE = (40, 56)  # (h, w): non-square so that x/y mix-ups show


def test_interior_points_integrate_to_count():
    pts = np.array([[20.0, 15.0], [30.5, 22.25], [10.2, 30.7]])
    d = density_map(pts, SHAPE, sigma_px=3.0)
    assert d.dtype == np.float32 and d.shape == SHAPE
    assert d.sum(dtype=np.float64) == pytest.approx(3.0, abs=1e-5)


def test_each_point_has_unit_mass_centred_on_it():
    d = density_map(np.array([[20.0, 15.0]]), SHAPE, sigma_px=2.0).astype(np.float64)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    assert (d * xx).sum() == pytest.approx(20.0, abs=1e-4)  # x is the column
    assert (d * yy).sum() == pytest.approx(15.0, abs=1e-4)
    assert np.unravel_index(d.argmax(), SHAPE) == (15, 20)


@pytest.mark.parametrize(
    "point",
    [(0.0, 0.0), (55.0, 0.0), (0.0, 39.0), (55.0, 39.0), (-0.4, 20.0), (55.4, 20.0), (30.0, -0.49), (30.0, 39.49)],
    ids=["tl", "tr", "bl", "br", "left", "right", "top", "bottom"],
)
def test_border_and_corner_points_keep_unit_mass(point):
    """A kernel cut by the border is renormalised over the pixels it covers: no mass is lost."""
    d = density_map(np.array([point]), SHAPE, sigma_px=4.0, scale=100.0)
    assert d.sum(dtype=np.float64) == pytest.approx(100.0, rel=1e-5)


def test_points_outside_are_ignored():
    inside = np.array([[5.0, 5.0], [50.0, 35.0]])
    outside = np.array([[-0.6, 10.0], [56.5, 10.0], [10.0, -3.0], [10.0, 40.5], [-10.0, -10.0]])
    d = density_map(np.vstack([inside, outside]), SHAPE, sigma_px=3.0)
    assert d.sum(dtype=np.float64) == pytest.approx(2.0, abs=1e-5)
    np.testing.assert_allclose(d, density_map(inside, SHAPE, sigma_px=3.0))


def test_no_points_gives_zero_map():
    d = density_map(np.zeros((0, 2)), SHAPE, sigma_px=3.0)
    assert d.shape == SHAPE and not d.any()


def test_anisotropic_kernels_integrate_and_follow_covariance():
    """Covariances are ordered (x, y): a wide-in-x kernel spreads along columns."""
    pts = np.array([[28.0, 20.0], [1.0, 38.0]])  # the second is cut by two borders
    covs = np.array([[[16.0, 3.0], [3.0, 4.0]], [[9.0, 0.0], [0.0, 1.0]]])
    d = density_map(pts, SHAPE, sigma_px=1.0, covariances=covs, scale=10.0)
    assert d.sum(dtype=np.float64) == pytest.approx(20.0, rel=1e-5)
    one = density_map(pts[:1], SHAPE, sigma_px=1.0, covariances=covs[:1]).astype(np.float64)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    dx, dy = xx - 28.0, yy - 20.0
    cov = [[(one * dx * dx).sum(), (one * dx * dy).sum()], [(one * dx * dy).sum(), (one * dy * dy).sum()]]
    np.testing.assert_allclose(cov, covs[0], rtol=0.02, atol=0.02)  # sampled Gaussian moments


def test_tiny_sigma_still_unit_mass():
    d = density_map(np.array([[10.3, 7.8]]), SHAPE, sigma_px=0.05)
    assert d.sum(dtype=np.float64) == pytest.approx(1.0, abs=1e-6)


def test_point_weight_scales_target_to_true_count():
    """Approximate points (count != n_points) are weighted so the target integrates to count."""
    pts = np.array([[10.0, 10.0], [20.0, 30.0], [45.0, 5.0], [0.0, 39.0]])
    s = Sample("a", np.zeros(SHAPE, np.uint8), pts, count=7.0, split="train", mpp=1.8)
    assert s.point_weight == pytest.approx(7.0 / 4.0)
    d = density_map(s.points, SHAPE, sigma_px=3.0, scale=100.0 * s.point_weight)
    assert d.sum(dtype=np.float64) == pytest.approx(700.0, rel=1e-5)


def test_point_weight_without_points_is_zero():
    s = Sample("empty", np.zeros(SHAPE, np.uint8), np.zeros((0, 2)), count=3.0, split="train", mpp=None)
    assert s.point_weight == 0.0


def test_sigma_um_to_px():
    assert sigma_um_to_px(10.0, 2.0) == 5.0
    with pytest.raises(ValueError):
        sigma_um_to_px(10.0, 0.0)


def test_ellipse_targets_keep_mass_and_follow_the_cell_shape():
    from wsicount.training.targets import ellipse_covariances, ellipse_density_map

    pts = np.array([[30.0, 40.0], [70.0, 60.0]])
    axes = np.array([[20.0, 8.0], [10.0, 10.0]])
    ang = np.array([np.pi / 2, 0.0])  # the first cell is elongated along y
    d = ellipse_density_map(pts, axes, ang, (100, 100), fraction=0.3)
    assert d.sum() == pytest.approx(2.0, rel=1e-5)
    cov = ellipse_covariances(axes, ang, 0.3)
    assert np.allclose(cov[0], np.diag([2.4**2, 6.0**2])) and np.allclose(cov[1], np.diag([3.0**2, 3.0**2]))
    win = d[20:61, 15:46]  # around the first cell: spread along rows (y) more than along columns (x)
    yy, xx = np.mgrid[20:61, 15:46]
    var_y = (win * (yy - 40) ** 2).sum() / win.sum()
    var_x = (win * (xx - 30) ** 2).sum() / win.sum()
    assert var_y == pytest.approx(36.0, rel=0.1) and var_x == pytest.approx(5.76, rel=0.15)


def _moments(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (x, y) and (x, y) covariance of a non-negative image."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    w = img / img.sum()
    c = np.array([(w * xx).sum(), (w * yy).sum()])
    dx, dy = xx - c[0], yy - c[1]
    return c, np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ellipses_follow_the_pixels_through_augmentation(seed):
    """An elliptical blob and its ellipse, augmented together (dihedral, free rotation, zoom), still agree."""
    from wsicount.training.data import Augmenter
    from wsicount.training.targets import ellipse_covariances, ellipse_density_map, ellipse_endpoints, ellipses_from_endpoints

    pts = np.array([[40.0, 36.0]])
    ell = np.array([[7.0, 3.0, np.deg2rad(30.0)]])
    assert np.allclose(ellipses_from_endpoints(ellipse_endpoints(pts, ell))[1], ell)
    img = ellipse_density_map(pts, ell[:, :2], ell[:, 2], (72, 80), fraction=1.0)[None] * 1e3
    aug = Augmenter(seed=seed, p_rotate=1.0, p_blur=0.0, brightness=0.0, contrast=0.0, scale=(0.8, 1.25))
    x, p3 = aug(img, ellipse_endpoints(pts, ell))
    c, e = ellipses_from_endpoints(p3)
    centre, cov = _moments(np.clip(x[0], 0, None))
    assert np.allclose(centre, c[0], atol=0.3)
    assert np.allclose(cov, ellipse_covariances(e[:, :2], e[:, 2], 1.0)[0], atol=0.08 * np.abs(cov).max())


def test_target_map_integrates_to_the_count_with_or_without_ellipses():
    from wsicount.training.targets import target_map

    pts = np.array([[20.0, 30.0], [40.0, 12.0], [5.0, 35.0]])  # (x, y) inside the 56 x 40 image
    ell = np.array([[9.0, 4.0, 0.5], [6.0, 3.0, 2.0], [4.0, 4.0, 0.0]])
    with_e = target_map(pts, ell, SHAPE, 3.0, scale=2.5)
    plain = target_map(pts, None, SHAPE, 3.0, scale=2.5)
    assert with_e.sum() == pytest.approx(7.5, rel=1e-5) and plain.sum() == pytest.approx(7.5, rel=1e-5)
    assert not np.allclose(with_e, plain)
