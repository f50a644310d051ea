"""Point annotations -> density-map targets.

Invariant: ``density_map(points, shape, sigma_px).sum() == scale * (number of points whose
centre lies inside the image)``, also for points at the border: each point's Gaussian is
evaluated on the pixels it covers inside the image and renormalised to unit mass, so a
truncated kernel loses nothing. Points outside the image contribute nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["density_map", "ellipse_density_map", "ellipse_covariances", "sigma_um_to_px", "ellipse_endpoints",
           "ellipses_from_endpoints", "target_map"]


def sigma_um_to_px(sigma_um: float, mpp: float) -> float:
    """Convert a Gaussian sigma from micrometres to pixels at ``mpp`` um/px."""
    if mpp <= 0:
        raise ValueError("mpp must be positive")
    return sigma_um / mpp


def _inside(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mask of points (x, y; pixel centres at integers) lying within the image's pixel area."""
    h, w = shape
    x, y = points[:, 0], points[:, 1]
    return (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)


def density_map(
    points: np.ndarray,
    shape: tuple[int, int],
    sigma_px: float,
    scale: float = 1.0,
    covariances: np.ndarray | None = None,
    truncate: float = 4.0,
) -> np.ndarray:
    """Render a float32 density map with one normalised Gaussian per point.

    ``points`` is (N, 2) as x (column), y (row) in pixels. ``covariances`` (N, 2, 2) in px²,
    ordered (x, y), gives shape-aware anisotropic kernels instead of the isotropic ``sigma_px``.
    """
    h, w = shape
    out = np.zeros((h, w), dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    keep = _inside(pts, shape)
    pts = pts[keep]
    covs = None if covariances is None else np.asarray(covariances, dtype=np.float64)[keep]
    for i, (x, y) in enumerate(pts):
        if covs is None:
            inv = np.eye(2) / sigma_px**2
            rad = truncate * sigma_px
        else:
            cov = covs[i]
            inv = np.linalg.inv(cov)
            rad = truncate * float(np.sqrt(np.max(np.linalg.eigvalsh(cov))))
        x0, x1 = max(int(np.floor(x - rad)), 0), min(int(np.ceil(x + rad)) + 1, w)
        y0, y1 = max(int(np.floor(y - rad)), 0), min(int(np.ceil(y + rad)) + 1, h)
        dx = np.arange(x0, x1) - x
        dy = np.arange(y0, y1) - y
        qx, qy = np.meshgrid(dx, dy)
        q = inv[0, 0] * qx * qx + 2 * inv[0, 1] * qx * qy + inv[1, 1] * qy * qy
        k = np.exp(-0.5 * q)
        s = k.sum()
        if s <= 0:  # degenerate kernel: put the mass on the nearest pixel
            out[min(max(int(round(y)), 0), h - 1), min(max(int(round(x)), 0), w - 1)] += 1.0
            continue
        out[y0:y1, x0:x1] += k / s
    return (out * scale).astype(np.float32)


def ellipse_covariances(semi_axes: np.ndarray, angles: np.ndarray, fraction: float) -> np.ndarray:
    """(N, 2, 2) covariances (x, y order, px²) whose 1-sigma ellipse is ``fraction`` x each cell's ellipse.

    ``semi_axes`` is (N, 2) as (a, b) in px, ``angles`` the direction of ``a`` in radians from
    the x axis (towards +y, image rows downwards).
    """
    ab = np.asarray(semi_axes, dtype=np.float64).reshape(-1, 2) * fraction
    th = np.asarray(angles, dtype=np.float64).ravel()
    c, s = np.cos(th), np.sin(th)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # columns: a and b directions
    return rot @ (np.eye(2)[None] * (ab**2)[:, None, :]) @ np.swapaxes(rot, -1, -2)


def ellipse_density_map(
    points: np.ndarray,
    semi_axes: np.ndarray,
    angles: np.ndarray,
    shape: tuple[int, int],
    fraction: float = 0.35,
    scale: float = 1.0,
) -> np.ndarray:
    """Shape-aware density target (Cell-Net's elliptical Gaussian dots): one unit-mass Gaussian per
    cell, elongated like the cell's fitted ellipse (sigma = ``fraction`` x each semi-axis).

    The same mass invariant as :func:`density_map` holds: the map sums to ``scale`` x the
    number of centres inside the image.
    """
    covs = ellipse_covariances(semi_axes, angles, fraction)
    return density_map(points, shape, sigma_px=1.0, scale=scale, covariances=covs)


def ellipse_endpoints(points: np.ndarray, ellipses: np.ndarray) -> np.ndarray:
    """(3N, 2) points: the centres, then the ends of each ``a`` semi-axis, then of each ``b`` semi-axis.

    A geometric augmentation applied to these points (rotation, flip, zoom) carries the
    ellipses with it; :func:`ellipses_from_endpoints` reads them back.
    """
    c = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    e = np.asarray(ellipses, dtype=np.float64).reshape(-1, 3)
    u = np.column_stack([np.cos(e[:, 2]), np.sin(e[:, 2])])
    v = np.column_stack([-u[:, 1], u[:, 0]])
    return np.concatenate([c, c + e[:, :1] * u, c + e[:, 1:2] * v])


def ellipses_from_endpoints(pts3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 2) and ellipses (N, 3: a, b, angle in radians) from :func:`ellipse_endpoints`' layout."""
    c, pa, pb = np.split(np.asarray(pts3, dtype=np.float64).reshape(-1, 2), 3)
    da, db = pa - c, pb - c
    return c, np.column_stack([np.hypot(da[:, 0], da[:, 1]), np.hypot(db[:, 0], db[:, 1]),
                               np.arctan2(da[:, 1], da[:, 0])])


def target_map(points: np.ndarray, ellipses: np.ndarray | None, shape: tuple[int, int], sigma_px: float,
               scale: float = 1.0, fraction: float = 0.3) -> np.ndarray:
    """The training target: elliptical dots (sigma = ``fraction`` x each semi-axis) when ``ellipses`` are given,
    else isotropic dots of ``sigma_px``; either sums to ``scale`` x the centres inside the image."""
    if ellipses is None:
        return density_map(points, shape, sigma_px, scale=scale)
    e = np.asarray(ellipses, dtype=np.float64).reshape(-1, 3)
    return ellipse_density_map(points, e[:, :2], e[:, 2], shape, fraction=fraction, scale=scale)
