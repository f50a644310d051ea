"""The synthetic slide as a pure function of position: tissue shape, texture, cells, noise.

Every pixel depends only on its (y, x) position and the seed (tissue shape, smooth texture
fields, cells composited with ``max``, noise seeded per row), so rendering band by band gives
the same image as rendering it whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LOOKS", "TISSUES", "DEFAULT_CELL_PARAMS", "Scene", "Tissue", "streams"]

import numpy as np
from scipy.spatial import cKDTree

LOOKS = ("fluorescence", "brightfield")
TISSUES = ("disk", "blob")
_ROWS = 128  # rows composed at once: bounds the float temporaries to ~15 MB at 30k px width
_CELL_ROWS = 512  # rows of cell signal drawn at once (61 MB float32 at 30k px width)

DEFAULT_CELL_PARAMS: dict[str, dict] = {
    # melanocytes in a NanoZoomer fluorescence scan: green signal, dark background
    "fluorescence": {
        # calibrated to resemble TRP1 set1 at 1.81 um/px (the bundled model's training data):
        # body size, thick tapering dendrites, tissue background ~15 % of the brightest
        # bodies, melanocytes spaced >= 30 um as in basal epidermis (see BENCHMARKS.md)
        "body_radius_um": (6.0, 9.0),
        "body_aspect": (0.7, 1.0),  # minor / major axis
        "dendrites": (3, 6),
        "dendrite_length_um": (25.0, 60.0),
        "dendrite_width_um": 2.5,  # half-width at the base; tapers to a quarter at the tip
        "dendrite_bend_rad": 0.35,  # max kink halfway along a dendrite
        "brightness": (120.0, 250.0),  # peak green level of a body (log-uniform between cells)
        "nucleus_dim": 0.3,  # the nucleus shows as a slightly darker core
        "min_spacing_um": 30.0,  # Poisson-disk spacing of cell centres
        "background_rgb": (2.0, 5.0, 3.0),
        "tissue_rgb": (5.0, 40.0, 10.0),  # autofluorescence added inside tissue
        "signal_rgb": (0.10, 1.0, 0.16),  # how a cell's signal splits over R, G, B
        "texture": 0.6,  # relative amplitude of the tissue texture
        "noise_sd": 2.0,
    },
    # H&E-like brightfield: white glass, pink tissue, purple nuclei
    "brightfield": {
        "body_radius_um": (4.0, 5.0),  # 8-10 um nuclei
        "body_aspect": (0.65, 1.0),
        "dendrites": (0, 0),
        "dendrite_length_um": (0.0, 0.0),
        "dendrite_width_um": 0.0,
        "dendrite_bend_rad": 0.0,
        "brightness": (0.8, 1.4),  # haematoxylin density of a nucleus
        "nucleus_dim": 0.0,
        "min_spacing_um": 10.0,
        "background_rgb": (242.0, 240.0, 245.0),
        "tissue_od": (0.06, 0.38, 0.10),  # eosin optical density per channel
        "nucleus_od": (0.62, 0.72, 0.30),  # haematoxylin optical density per channel
        "texture": 0.6,
        "noise_sd": 2.0,
    },
}


class Tissue:
    """Star-shaped tissue r(theta) = r0 (1 + sum_k a_k cos k.theta + b_k sin k.theta) about the centre.

    A disk has no harmonics. The area is exact: pi r0^2 (1 + sum_k (a_k^2 + b_k^2) / 2).
    """

    EDGE_PX = 2.0  # width of the soft tissue border

    def __init__(self, shape: tuple[int, int], kind: str, fraction: float, rng: np.random.Generator) -> None:
        """Centre the shape; pick r0 for the wanted area fraction, capped to fit the image."""
        h, w = shape
        self.cy, self.cx = (h - 1) / 2.0, (w - 1) / 2.0
        self.kind = kind
        if kind == "blob":
            k = np.arange(2, 7)
            ab = rng.normal(0.0, 0.18, size=(len(k), 2)) / k[:, None]
            ab *= min(1.0, 0.6 / np.abs(ab).sum())  # keeps r(theta) >= 0.4 r0: smooth, no holes
            self.k, self.ab = k, ab
        else:
            self.k, self.ab = np.zeros(0, int), np.zeros((0, 2))
        shape_factor = 1.0 + 0.5 * float((self.ab**2).sum())
        r0 = math.sqrt(fraction * h * w / (math.pi * shape_factor))
        theta = np.linspace(0, 2 * np.pi, 8192, endpoint=False)
        with np.errstate(divide="ignore"):
            reach = np.minimum((w / 2.0) / np.abs(np.cos(theta)), (h / 2.0) / np.abs(np.sin(theta)))
        r_fit = float(np.min(reach / self._f(theta)))  # the image edges are at -0.5 and n - 0.5
        self.r0 = min(r0, r_fit * (1.0 if kind == "disk" else 0.999))
        self.area_px = math.pi * self.r0**2 * shape_factor
        self._rmax = self.r0 * float(np.max(self._f(theta)))

    def _f(self, theta: np.ndarray) -> np.ndarray:
        """Relative radius 1 + sum of harmonics."""
        out = np.ones_like(theta, dtype=np.float64)
        for k, (a, b) in zip(self.k, self.ab, strict=True):
            out += a * np.cos(k * theta) + b * np.sin(k * theta)
        return out

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether points (pixel coordinates) lie inside the tissue shape."""
        dx, dy = np.asarray(x, float) - self.cx, np.asarray(y, float) - self.cy
        return np.hypot(dx, dy) < self.r0 * self._f(np.arctan2(dy, dx))

    def bbox(self) -> tuple[float, float, float, float]:
        """(y0, y1, x0, x1) bounding the shape."""
        r = self._rmax
        return self.cy - r, self.cy + r, self.cx - r, self.cx + r

    def mask_rows(self, y0: int, y1: int, w: int) -> np.ndarray:
        """Soft tissue mask (float32 0..1) of rows y0..y1."""
        out = np.zeros((y1 - y0, w), np.float32)
        by0, by1, bx0, bx1 = self.bbox()
        ya, yb = max(y0, math.floor(by0)), min(y1, math.ceil(by1) + 1)
        xa, xb = max(0, math.floor(bx0)), min(w, math.ceil(bx1) + 1)
        if ya >= yb or xa >= xb:
            return out
        dy = (np.arange(ya, yb, dtype=np.float32) - self.cy)[:, None]
        dx = (np.arange(xa, xb, dtype=np.float32) - self.cx)[None, :]
        d = np.sqrt(dx * dx + dy * dy)
        if len(self.k):
            r = (self.r0 * self._f(np.arctan2(dy, dx).astype(np.float64))).astype(np.float32)
        else:
            r = np.float32(self.r0)
        out[ya - y0 : yb - y0, xa:xb] = np.clip((r - d) / self.EDGE_PX + 0.5, 0.0, 1.0)
        return out


class _SmoothNoise:
    """Value noise: a random grid of ``cell`` px, smoothly interpolated; values in [0, 1]."""

    def __init__(self, shape: tuple[int, int], cell: float, rng: np.random.Generator) -> None:
        """Draw the grid and precompute the column interpolation."""
        h, w = shape
        self.cell = max(float(cell), 2.0)
        self.grid = rng.random((int(h / self.cell) + 3, int(w / self.cell) + 3), dtype=np.float32)
        self.ix, self.fx = self._coords(np.arange(w))

    def _coords(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid index and smoothstep weight of pixel positions."""
        g = (p + 0.5) / self.cell
        i = np.floor(g).astype(np.intp)
        f = (g - i).astype(np.float32)
        return i, f * f * (3.0 - 2.0 * f)

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """(y1 - y0, w) float32 field."""
        iy, fy = self._coords(np.arange(y0, y1))
        g = self.grid[iy] * (1.0 - fy)[:, None] + self.grid[iy + 1] * fy[:, None]
        return g[:, self.ix] * (1.0 - self.fx) + g[:, self.ix + 1] * self.fx


@dataclass
class _Cells:
    """Per-cell geometry in level-0 pixels; dendrites as 2-segment polylines."""

    xy: np.ndarray  # (n, 2) x, y
    radius: np.ndarray  # body semi-major axis (px)
    aspect: np.ndarray
    angle: np.ndarray
    peak: np.ndarray  # fluorescence level or haematoxylin density
    dend_cell: np.ndarray  # (m,) owning cell of each dendrite
    dend_pts: np.ndarray  # (m, 3, 2) start, kink, tip (x, y)
    dend_width: float  # base half-width (px)
    top: np.ndarray  # (n,) first row any part of the cell can touch
    bottom: np.ndarray  # (n,) last row + 1
    order: np.ndarray  # cells sorted by top
    reach: float  # max(bottom - top)


def streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for tissue, positions, cell shapes, texture and noise."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]


def _merge_params(look: str, cell_params: dict | None) -> dict:
    """Defaults of ``look`` updated with ``cell_params`` (unknown keys are an error)."""
    params = dict(DEFAULT_CELL_PARAMS[look])
    unknown = set(cell_params or {}) - set(params)
    if unknown:
        raise ValueError(f"unknown cell_params for look {look!r}: {sorted(unknown)}; "
                         f"known: {sorted(params)}")
    params.update(cell_params or {})
    if int(params["dendrites"][1]) > 0 and float(params["dendrite_width_um"]) <= 0:
        raise ValueError("dendrite_width_um must be > 0 when cells have dendrites")
    if min(params["brightness"]) <= 0 or min(params["body_radius_um"]) <= 0:
        raise ValueError("brightness and body_radius_um must be > 0")
    return params


def _place_points(n: int, tissue: Tissue, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform points inside the tissue, no two closer than ``spacing`` px (dart throwing)."""
    y0, y1, x0, x1 = tissue.bbox()
    pts = np.zeros((0, 2))
    for _ in range(200):
        need = n - len(pts)
        if need <= 0:
            break
        m = max(2 * need, 256)
        cand = np.column_stack([rng.uniform(x0, x1, m), rng.uniform(y0, y1, m)])
        cand = cand[tissue.contains(cand[:, 0], cand[:, 1])]
        if len(pts) and len(cand):
            dist, _ = cKDTree(pts).query(cand, k=1, distance_upper_bound=spacing)
            cand = cand[~np.isfinite(dist) | (dist >= spacing)]
        if len(cand) > 1 and spacing > 0:
            pairs = cKDTree(cand).query_pairs(spacing, output_type="ndarray")
            keep = np.ones(len(cand), bool)
            keep[pairs[:, 1]] = False  # drop the later of each close pair
            cand = cand[keep]
        pts = np.concatenate([pts, cand[:need]])
    if len(pts) < n:
        raise ValueError(f"cannot place {n} cells {spacing:.1f} px apart in the tissue; "
                         "lower cell_density_per_mm2 or min_spacing_um")
    return pts


def _uniform(rng: np.random.Generator, lohi, n: int) -> np.ndarray:
    """n uniform draws from a (lo, hi) pair or a scalar."""
    lo, hi = (lohi, lohi) if np.isscalar(lohi) else lohi
    return rng.uniform(float(lo), float(hi), n)


def _make_cells(xy: np.ndarray, p: dict, mpp: float, rng: np.random.Generator) -> _Cells:
    """Draw body shape, brightness and dendrites of every cell."""
    n = len(xy)
    radius = _uniform(rng, p["body_radius_um"], n) / mpp
    aspect = _uniform(rng, p["body_aspect"], n)
    angle = rng.uniform(0, np.pi, n)
    lo, hi = p["brightness"]
    peak = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    dlo, dhi = (int(v) for v in p["dendrites"])
    counts = rng.integers(dlo, dhi + 1, n) if dhi > 0 else np.zeros(n, int)
    cell = np.repeat(np.arange(n), counts)
    m = len(cell)
    # directions spread around the body with jitter, so dendrites rarely bundle
    slot = np.concatenate([np.arange(c) for c in counts]) if m else np.zeros(0)
    base = np.repeat(rng.uniform(0, 2 * np.pi, n), counts)
    theta = base + 2 * np.pi * slot / np.maximum(counts[cell], 1) + rng.uniform(-0.4, 0.4, m)
    length = _uniform(rng, p["dendrite_length_um"], m) / mpp
    bend = theta + rng.uniform(-1, 1, m) * float(p["dendrite_bend_rad"])
    start = xy[cell] + 0.5 * radius[cell, None] * np.column_stack([np.cos(theta), np.sin(theta)])
    kink = start + 0.5 * length[:, None] * np.column_stack([np.cos(theta), np.sin(theta)])
    tip = kink + 0.5 * length[:, None] * np.column_stack([np.cos(bend), np.sin(bend)])
    pts = np.stack([start, kink, tip], axis=1)
    width = float(p["dendrite_width_um"]) / mpp
    margin = 2.5 * width + 3.0
    top, bottom = xy[:, 1] - radius - 3.0, xy[:, 1] + radius + 4.0
    if m:
        np.minimum.at(top, cell, pts[:, :, 1].min(axis=1) - margin)
        np.maximum.at(bottom, cell, pts[:, :, 1].max(axis=1) + margin + 1.0)
    top, bottom = np.floor(top).astype(np.int64), np.ceil(bottom).astype(np.int64)
    order = np.argsort(top, kind="stable")
    reach = float((bottom - top).max()) if n else 0.0
    return _Cells(xy, radius, aspect, angle, peak, cell, pts, width, top, bottom, order, reach)


class Scene:
    """Everything needed to render any rows of the synthetic slide."""

    def __init__(self, shape: tuple[int, int], seed: int, look: str, mpp: float, density: float,
                 tissue: str, fraction: float, cell_params: dict | None) -> None:
        """Draw tissue, cells and texture fields from independent seeded streams."""
        if look not in LOOKS:
            raise ValueError(f"unknown look {look!r}; choose one of {', '.join(LOOKS)}")
        if tissue not in TISSUES:
            raise ValueError(f"unknown tissue {tissue!r}; choose one of {', '.join(TISSUES)}")
        if not 0 < fraction <= 1:
            raise ValueError(f"tissue_fraction must be in (0, 1], got {fraction}")
        if not (mpp > 0 and density >= 0):
            raise ValueError("mpp must be > 0 and cell_density_per_mm2 >= 0")
        self.shape, self.seed, self.look, self.mpp = shape, int(seed), look, float(mpp)
        self.p = _merge_params(look, cell_params)
        s_tissue, s_pts, s_cells, s_tex, s_noise = streams(int(seed))
        self.tissue = Tissue(shape, tissue, fraction, s_tissue)
        self.area_mm2 = self.tissue.area_px * mpp**2 / 1e6
        n = int(round(density * self.area_mm2))
        xy = _place_points(n, self.tissue, float(self.p["min_spacing_um"]) / mpp, s_pts)
        self.cells = _make_cells(xy, self.p, mpp, s_cells)
        self.coarse = _SmoothNoise(shape, 60.0 / mpp, s_tex)
        self.fine = _SmoothNoise(shape, 6.0 / mpp, s_tex)
        # a table of normals read at a random offset per row: ~10x cheaper than drawing
        # fresh normals for every pixel, and statistically the same for a camera-noise look
        n_table = max(1 << 22, 24 * shape[1])
        self._noise_table = s_noise.standard_normal(n_table, dtype=np.float32)
        self._noise_table *= np.float32(self.p["noise_sd"])
        self._noise_offsets = s_noise.integers(0, n_table - 3 * shape[1], size=shape[0])

    def render(self, y0: int, y1: int) -> np.ndarray:
        """Rows y0..y1 of level 0 as (y1 - y0, w, 3) uint8."""
        out = np.empty((y1 - y0, self.shape[1], 3), np.uint8)
        # cells are drawn once per band of up to _CELL_ROWS rows (a cell crossing a band edge
        # is drawn twice, so bands are tall); the rest is composed in short chunks
        for a in range(y0, y1, _CELL_ROWS):
            b = min(a + _CELL_ROWS, y1)
            sig = np.zeros((b - a, self.shape[1]), np.float32)
            self._draw_cells(sig, a, b)
            for c0 in range(a, b, _ROWS):
                c1 = min(c0 + _ROWS, b)
                out[c0 - y0 : c1 - y0] = self._render_chunk(c0, c1, sig[c0 - a : c1 - a])
        return out

    def _render_chunk(self, y0: int, y1: int, sig: np.ndarray) -> np.ndarray:
        """Compose tissue, texture, cell signal ``sig`` and noise for a few rows."""
        w = self.shape[1]
        tissue = self.tissue.mask_rows(y0, y1, w)
        fine = self.fine.rows(y0, y1)
        tex = 0.6 * self.coarse.rows(y0, y1) + 0.4 * fine
        amp = np.float32(self.p["texture"])
        tissue *= (1.0 - amp) + 2.0 * amp * tex  # mean 1 over the tissue
        if self.look == "brightfield":
            sig = sig * (0.75 + 0.5 * fine)  # chromatin texture
        noise = self._noise(y0, y1)
        out = np.empty((y1 - y0, w, 3), np.uint8)
        for c in range(3):
            ch = self._channel(c, sig, tissue)
            ch += noise[..., c]
            ch += 0.5  # round to nearest on the cast below
            np.clip(ch, 0.0, 255.0, out=ch)
            out[..., c] = ch
        return out

    def _channel(self, c: int, sig: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        """Noise-free float32 intensity of channel ``c``."""
        p = self.p
        if self.look == "fluorescence":
            # additive emission: background + tissue autofluorescence + cell signal
            ch = tissue * np.float32(p["tissue_rgb"][c])
            ch += sig * np.float32(p["signal_rgb"][c])
            ch += np.float32(p["background_rgb"][c])
            return ch
        # Beer-Lambert absorption of eosin (tissue) and haematoxylin (nuclei) on white glass
        od = tissue * np.float32(-p["tissue_od"][c])
        od -= sig * np.float32(p["nucleus_od"][c])
        np.exp(od, out=od)
        od *= np.float32(p["background_rgb"][c])
        return od

    def _noise(self, y0: int, y1: int) -> np.ndarray:
        """Gaussian noise rows: per-row windows of one seeded table, so banding never matters."""
        w3 = 3 * self.shape[1]
        out = np.empty((y1 - y0, self.shape[1], 3), np.float32)
        flat = out.reshape(y1 - y0, w3)
        for y in range(y0, y1):
            o = self._noise_offsets[y]
            flat[y - y0] = self._noise_table[o : o + w3]
        return out

    def _draw_cells(self, sig: np.ndarray, y0: int, y1: int) -> None:
        """Max-composite every cell touching rows y0..y1 into ``sig``."""
        c = self.cells
        tops = c.top[c.order]
        lo = np.searchsorted(tops, y0 - c.reach, side="left")
        hi = np.searchsorted(tops, y1, side="left")
        idx = c.order[lo:hi]
        idx = idx[c.bottom[idx] > y0]
        if not len(idx):
            return
        for i in idx:
            _draw_body(sig, y0, c.xy[i], c.radius[i], c.aspect[i], c.angle[i], c.peak[i],
                       float(self.p["nucleus_dim"]))
        if len(c.dend_cell):
            first = np.searchsorted(c.dend_cell, idx, side="left")
            last = np.searchsorted(c.dend_cell, idx, side="right")
            for i, a, b in zip(idx, first, last, strict=True):
                for d in range(a, b):
                    pts = c.dend_pts[d]
                    w0 = c.dend_width
                    _draw_segment(sig, y0, pts[0], pts[1], w0, 0.6 * w0, 0.6, 0.45, c.peak[i])
                    _draw_segment(sig, y0, pts[1], pts[2], 0.6 * w0, 0.25 * w0, 0.45, 0.15, c.peak[i])


def _window(sig: np.ndarray, y0: int, ya: float, yb: float, xa: float, xb: float):
    """Integer window of ``sig`` (rows offset by y0) covering [ya, yb] x [xa, xb], or None."""
    h, w = sig.shape
    r0, r1 = max(math.floor(ya), y0), min(math.ceil(yb) + 1, y0 + h)
    c0, c1 = max(math.floor(xa), 0), min(math.ceil(xb) + 1, w)
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, r1, c0, c1


def _draw_body(sig: np.ndarray, y0: int, xy: np.ndarray, r: float, aspect: float, angle: float,
               peak: float, nucleus_dim: float) -> None:
    """Soft-edged ellipse (semi-axes r, r * aspect) with a slightly dimmer nucleus."""
    cx, cy = float(xy[0]), float(xy[1])
    win = _window(sig, y0, cy - r - 2, cy + r + 2, cx - r - 2, cx + r + 2)
    if win is None:
        return
    r0, r1, c0, c1 = win
    dy = (np.arange(r0, r1, dtype=np.float32) - cy)[:, None]
    dx = (np.arange(c0, c1, dtype=np.float32) - cx)[None, :]
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = (dx * ca + dy * sa) / r, (dy * ca - dx * sa) / (r * aspect)
    rho = np.sqrt(u * u + v * v)
    val = np.clip((1.0 - rho) * (r / 1.2) + 0.5, 0.0, 1.0)  # ~1 px soft edge
    if nucleus_dim:
        val *= 1.0 - nucleus_dim * np.exp(-((rho / 0.45) ** 2))
    view = sig[r0 - y0 : r1 - y0, c0:c1]
    np.maximum(view, val * np.float32(peak), out=view)


def _draw_segment(sig: np.ndarray, y0: int, p0: np.ndarray, p1: np.ndarray, w0: float, w1: float,
                  i0: float, i1: float, peak: float) -> None:
    """Gaussian-profile line from p0 to p1, half-width w0 -> w1 and intensity i0 -> i1."""
    m = 2.5 * max(w0, w1) + 1.0
    (x0, yy0), (x1, yy1) = p0, p1
    win = _window(sig, y0, min(yy0, yy1) - m, max(yy0, yy1) + m, min(x0, x1) - m, max(x0, x1) + m)
    if win is None:
        return
    r0, r1, c0, c1 = win
    dx, dy = x1 - x0, yy1 - yy0
    l2 = max(dx * dx + dy * dy, 1e-9)
    py = (np.arange(r0, r1, dtype=np.float32) - yy0)[:, None]
    px = (np.arange(c0, c1, dtype=np.float32) - x0)[None, :]
    t = np.clip((px * dx + py * dy) / l2, 0.0, 1.0)
    ex, ey = px - t * dx, py - t * dy
    wt = w0 + (w1 - w0) * t
    val = (i0 + (i1 - i0) * t) * np.exp(-(ex * ex + ey * ey) / (wt * wt))
    view = sig[r0 - y0 : r1 - y0, c0:c1]
    np.maximum(view, val * np.float32(peak), out=view)

