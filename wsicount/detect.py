"""Cell centres from density maps, and matching detections to annotated points.

A density map integrates to the cell count and an isolated cell appears as a blob of unit
mass; for targets rendered with Gaussian sigma ``sigma_px`` its peak height is
``1 / (2 pi sigma_px**2)`` cells per pixel. :func:`density_peaks` therefore takes
``sigma_px`` (the model card's) and sets its default threshold as a fraction of that unit
peak, which is independent of image size, cell count and density scale.

Coordinates here are (y, x) = (row, column) in pixels, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["unit_peak_height", "local_maxima", "density_peaks", "MatchResult", "match_points"]

#: default threshold as a fraction of an isolated cell's peak. Predicted blobs are a little
#: wider and lighter than the targets, so a cell stays well above half its ideal peak, while
#: the ripples between cells stay below it: on 8 TRP1 images with an early U-Net checkpoint,
#: F1 was 0.74 / 0.86 / 0.88 / 0.83 at fractions 0.25 / 0.5 / 0.75 / 1.0
DEFAULT_PEAK_FRACTION = 0.5


def unit_peak_height(sigma_px: float) -> float:
    """Peak value (cells/px) of a unit-mass isotropic Gaussian of sigma ``sigma_px``."""
    return 1.0 / (2.0 * np.pi * sigma_px**2)


def _subpixel(density: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Refine integer peaks with a parabola through the log density (exact for Gaussians)."""
    h, w = density.shape
    out = peaks.astype(np.float64)
    tiny = np.finfo(np.float64).tiny
    for axis, size in ((0, h), (1, w)):
        p = peaks[:, axis]
        ok = (p > 0) & (p < size - 1)  # a border peak has no neighbour on one side
        lo, hi = peaks.copy(), peaks.copy()
        lo[:, axis] -= 1
        hi[:, axis] += 1
        lo[~ok, axis] += 1
        hi[~ok, axis] -= 1
        f0 = np.log(np.maximum(density[peaks[:, 0], peaks[:, 1]].astype(np.float64), tiny))
        fm = np.log(np.maximum(density[lo[:, 0], lo[:, 1]].astype(np.float64), tiny))
        fp = np.log(np.maximum(density[hi[:, 0], hi[:, 1]].astype(np.float64), tiny))
        curv = fm - 2 * f0 + fp
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(ok & (curv < 0), 0.5 * (fm - fp) / curv, 0.0)
        out[:, axis] += np.clip(off, -0.5, 0.5)
    return out


def _sliding_max(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Maximum over the window [i - r, i + r] along ``axis``, clipped to the array.

    Clipping equals scipy's ``mode='nearest'`` for a maximum (the replicated edge values
    are already in the clipped window). Windows are built by doubling: O(log r) passes,
    each over slices in the array's own memory order (no transposed copies).
    """
    def cut(start: int, stop: int | None) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(start, stop),)

    n, w = a.shape[axis], 2 * r + 1
    pad_shape = list(a.shape)
    pad_shape[axis] = r
    pad = np.full(pad_shape, -np.inf, dtype=a.dtype)
    m = np.concatenate([pad, a, pad], axis=axis)
    span = 1
    while 2 * span <= w:  # m[i] = max of the span values starting at i
        m = np.maximum(m[cut(0, -span)], m[cut(span, None)])
        span *= 2
    return np.maximum(m[cut(0, n)], m[cut(w - span, w - span + n)])


def local_maxima(image: np.ndarray, min_distance: int, threshold: float) -> np.ndarray:
    """(N, 2) int (y, x) of the peaks ``skimage.feature.peak_local_max`` returns, row-major.

    Same result as ``peak_local_max(image, min_distance, threshold_abs=threshold,
    exclude_border=False)`` (a test checks it, ties included): a peak equals the maximum of
    its (2 min_distance + 1)² window and exceeds ``threshold``; of equal peaks closer than
    ``min_distance`` (Chebyshev) the first in (descending value, row-major) order is kept;
    a constant image has none. Cheaper than skimage's: the window maximum is separable and
    works in the image's own dtype, and the spacing step only visits the few tied peaks
    instead of all of them.
    """
    img = np.asarray(image)
    if not np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float64)
    md = max(int(min_distance), 0)
    if md == 0:  # a 1-px window: skimage keeps every pixel above the threshold
        return np.argwhere(img > np.float64(threshold))
    is_max = img == _sliding_max(_sliding_max(img, md, 0), md, 1)
    if is_max.all():  # a constant image has no peak (as in skimage)
        return np.zeros((0, 2), dtype=np.intp)
    is_max &= img > np.float64(threshold)  # compare in float64 whatever the image dtype
    coords = np.argwhere(is_max)
    if md <= 1 or len(coords) < 2:
        return coords
    values = img[coords[:, 0], coords[:, 1]]
    pairs = _tie_pairs(coords, values, md)
    if len(pairs) == 0:
        return coords
    rank = np.empty(len(coords), np.intp)
    rank[np.argsort(-values, kind="stable")] = np.arange(len(coords))
    neighbours: dict[int, list[int]] = {}
    for i, j in pairs.tolist():
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    rejected: set[int] = set()
    for i in sorted(neighbours, key=rank.__getitem__):  # greedy, highest first, as skimage
        if i not in rejected:
            rejected.update(neighbours[i])
    keep = np.ones(len(coords), bool)
    keep[list(rejected)] = False
    return coords[keep]


def _tie_pairs(coords: np.ndarray, values: np.ndarray, md: int, max_offset: int = 256) -> np.ndarray:
    """(M, 2) index pairs of peaks closer than ``md`` (Chebyshev): ``cKDTree.query_pairs(r=md - 0.5, p=inf)``'s pairs.

    Two window maxima closer than ``md`` see each other, so they are equal: sorted by (value,
    row, column), a peak's partners follow it inside its run of equal values and fewer than
    ``md`` rows down. Each peak is compared with its k-th successor for k = 1, 2, ... until no
    successor is both (past that k, none can be: values and rows only grow along the order).
    Bf16 outputs tie often, in runs of a few peaks, so k stays small; a plateau holding more
    than ``max_offset`` such successors falls back to a k-d tree. Without it the tile threads
    need no scipy, whose import would sit on the run's critical path
    (``python benchmarks/overhead.py`` times it).
    """
    order = np.lexsort((coords[:, 1], coords[:, 0], values))
    v, y, x = values[order], coords[order, 0], coords[order, 1]
    found = [np.zeros((0, 2), np.intp)]
    for k in range(1, len(order)):
        near = (v[k:] == v[:-k]) & (y[k:] - y[:-k] < md)
        if not near.any():
            break
        if k > max_offset:
            from scipy.spatial import cKDTree

            return cKDTree(coords).query_pairs(r=md - 0.5, p=np.inf, output_type="ndarray")
        i = np.flatnonzero(near & (np.abs(x[k:] - x[:-k]) < md))
        found.append(np.column_stack([order[i], order[i + k]]))
    return np.sort(np.concatenate(found), axis=1)


def density_peaks(
    density: np.ndarray,
    sigma_px: float,
    min_distance: int | None = None,
    threshold_abs: float | None = None,
    peak_fraction: float = DEFAULT_PEAK_FRACTION,
    smooth_sigma: float | None = None,
    subpixel: bool = True,
) -> np.ndarray:
    """Cell centres (N, 2) float (y, x) as local maxima of a density map in cells/px.

    ``sigma_px`` is the target kernel's sigma. A peak must be at least ``min_distance`` px
    from a higher one (default ``max(2, round(0.75 * sigma_px))``, the model cards' rule) and
    at least ``threshold_abs`` high (default ``peak_fraction`` x the peak of a unit-mass
    Gaussian, accounting for ``smooth_sigma``). ``smooth_sigma`` optionally blurs the map
    first to merge noise-split maxima. Peaks on the image border are kept (cells can be
    there); ``subpixel`` refines positions by a log-parabola fit. Output is row-major.
    """
    d = np.asarray(density)
    if not (np.issubdtype(d.dtype, np.floating) and d.dtype.itemsize >= 4):
        d = d.astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"density must be 2-D, got shape {d.shape}")
    if sigma_px <= 0:
        raise ValueError("sigma_px must be positive")
    if min_distance is None:
        min_distance = max(2, int(round(0.75 * sigma_px)))
    eff_sigma = float(sigma_px)
    if smooth_sigma:
        from scipy import ndimage

        d = ndimage.gaussian_filter(d.astype(np.float64), smooth_sigma, mode="nearest")
        eff_sigma = float(np.hypot(sigma_px, smooth_sigma))  # blurring a Gaussian widens it
    if threshold_abs is None:
        threshold_abs = peak_fraction * unit_peak_height(eff_sigma)
    peaks = local_maxima(d, int(min_distance), threshold_abs)
    if len(peaks) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    return _subpixel(d, peaks) if subpixel else peaks.astype(np.float64)


@dataclass
class MatchResult:
    """One-to-one matching of predicted to true points within a radius."""

    tp: int
    fp: int
    fn: int
    #: distance (px) of each matched pair, in the order of ``pairs``
    distances: np.ndarray
    #: (tp, 2) indices (pred, true) of the matched pairs
    pairs: np.ndarray

    @property
    def precision(self) -> float:
        """tp / (tp + fp); NaN when nothing was predicted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        """tp / (tp + fn); NaN when there is nothing to find."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        """2 tp / (2 tp + fp + fn); NaN when both sets are empty."""
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else float("nan")


def _as_points(a: np.ndarray) -> np.ndarray:
    """Coerce to an (N, 2) float array (empty input allowed)."""
    return np.asarray(a, dtype=np.float64).reshape(-1, 2)


def match_points(pred_yx: np.ndarray, true_yx: np.ndarray, radius: float) -> MatchResult:
    """Hungarian matching maximising the number of pairs closer than ``radius``, then their closeness.

    Only pairs within ``radius`` (inclusive) can match. The bipartite graph of such pairs is
    split into connected components and each is solved exactly with
    ``scipy.optimize.linear_sum_assignment``, which keeps slides with thousands of cells cheap.
    """
    # imported here: scipy serves evaluation, not counting
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pred, true = _as_points(pred_yx), _as_points(true_yx)
    n_p, n_t = len(pred), len(true)
    empty = MatchResult(0, n_p, n_t, np.zeros(0), np.zeros((0, 2), dtype=np.int64))
    if n_p == 0 or n_t == 0:
        return empty
    close = cKDTree(pred).sparse_distance_matrix(cKDTree(true), radius, output_type="ndarray")
    if len(close) == 0:
        return empty
    ii, jj, dd = close["i"].astype(np.int64), close["j"].astype(np.int64), close["v"]
    # nodes 0..n_p-1 are predictions, n_p.. are true points
    graph = coo_matrix((np.ones(len(ii)), (ii, jj + n_p)), shape=(n_p + n_t, n_p + n_t))
    _, label = connected_components(graph, directed=False)
    pairs, dists = [], []
    for comp in np.unique(label[ii]):
        sel = label[ii] == comp
        ci, cj, cd = ii[sel], jj[sel], dd[sel]
        up, ui = np.unique(ci, return_inverse=True)
        ut, uj = np.unique(cj, return_inverse=True)
        # a non-edge must cost more than any set of real edges, so the solver first
        # maximises the number of matches within the radius, then minimises their distance
        big = radius * (min(len(up), len(ut)) + 1) + 1.0
        cost = np.full((len(up), len(ut)), big)
        cost[ui, uj] = cd
        r, c = linear_sum_assignment(cost)
        keep = cost[r, c] < big
        pairs.append(np.stack([up[r[keep]], ut[c[keep]]], axis=1))
        dists.append(cost[r[keep], c[keep]])
    pairs_a = np.concatenate(pairs).astype(np.int64)
    order = np.argsort(pairs_a[:, 0], kind="stable")
    tp = len(pairs_a)
    return MatchResult(tp, n_p - tp, n_t - tp, np.concatenate(dists)[order], pairs_a[order])
