"""Synthetic time-lapse embryos: blastomeres that divide at known times, with ground truth.

An embryo is a pure function of (:class:`EmbryoParams`, seed). The geometry (cell ellipses,
depths, fragments, polar bodies) evolves frame by frame: at each division time the oldest
cell splits along its major axis into two daughters of about half its area, cells drift,
push each other apart and stay inside the zona pellucida. Each frame and focal plane is then
rendered in one pass in Fourier space: the objects' optical-thickness maps, grouped by depth,
are blurred by their distance from the focal plane (plus a per-frame focus drift) and
differentiated along a shear direction, which gives the DIC/Hoffman-like relief where
overlapping translucent cells stay visible through each other. Noise, JPEG round-trips and
the burned-in well number and time (bottom corners) follow.

Invariant: ``truth.counts[t] == len(truth.cells[t])`` == the number of blastomeres present at
``times_h[t]`` (1 + the number of division times <= it); fragments and polar bodies are never counted.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["EmbryoParams", "EmbryoTruth", "embryo_geometry", "render_embryo", "synth_embryo", "EMBRYO_FORMATS",
           "HARD"]

EMBRYO_FORMATS = ("ome-tiff", "tiff", "ome-zarr", "frames")
_DEPTH_BINS = np.array([-0.6, -0.2, 0.2, 0.6])  # object depths are grouped into these layers


@dataclass(frozen=True)
class EmbryoParams:
    """Acquisition and embryo settings (lengths in µm, times in hours since insemination)."""

    size: int = 500
    mpp: float = 0.5
    n_frames: int = 100
    start_h: float = 22.0
    end_h: float = 62.0
    n_planes: int = 3
    zona_outer_um: float = 150.0
    zona_thickness_um: float = 14.0
    n_fragments: int = 3
    polar_bodies: int = 2
    contrast: float = 1.0
    blur_px: float = 0.0  # extra defocus blur for every object
    noise_sd: float = 3.0
    jpeg_quality: int | None = 85
    focus_drift: float = 0.35  # amplitude of the focus drift, in units of the plane spacing
    well: int = 1


#: harder settings than the defaults, for held-out evaluation (more fragments, dimmer, more blur)
HARD = {"n_fragments": 10, "contrast": 0.6, "blur_px": 1.5, "noise_sd": 5.0, "jpeg_quality": 70, "focus_drift": 0.6}


@dataclass
class EmbryoTruth:
    """Ground truth per frame; ``cells[t]`` is (n, 6): x, y (px), semi-axes a >= b (px), angle (rad), depth."""

    times_h: np.ndarray
    counts: np.ndarray
    cells: list[np.ndarray]
    division_times_h: list[float]  # the time the embryo reaches 2, 3, ..., 8 cells
    params: EmbryoParams
    seed: int
    cleavage_frames: dict[str, int | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON-ready summary (per-frame cells go to the CSV)."""
        return {"seed": self.seed, "params": asdict(self.params), "times_h": [float(t) for t in self.times_h],
                "counts": [int(c) for c in self.counts], "division_times_h": self.division_times_h,
                "cleavage_frames": self.cleavage_frames,
                "cleavage_hours": {k: (None if v is None else float(self.times_h[v])) for k, v in self.cleavage_frames.items()}}


def _division_times(rng: np.random.Generator) -> list[float]:
    """Times (h) the embryo reaches 2..8 cells, from typical human timings with spread."""
    t2 = rng.uniform(24.0, 29.0)
    t3 = t2 + rng.normal(11.5, 1.5)
    t4 = t3 + rng.choice([rng.uniform(0.0, 0.4), rng.uniform(0.5, 2.5)])  # some divide synchronously
    t5 = t4 + rng.normal(12.5, 1.5)
    later = np.sort(t5 + rng.uniform(0.4, 5.0, 3))
    return [float(v) for v in (t2, t3, t4, t5, *later)]


def _split(cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two daughters of a cell (x, y, a, b, angle, depth), side by side along its major axis."""
    x, y, a, b, ang, d = cell
    u = np.array([np.cos(ang), np.sin(ang)])
    kids = []
    for s in (-1.0, 1.0):
        na, nb = b * rng.uniform(0.9, 1.0), a * rng.uniform(0.52, 0.6)  # long axis now across the split
        cx, cy = np.array([x, y]) + s * 0.5 * a * u
        kids.append([cx, cy, max(na, nb), min(na, nb), ang + np.pi / 2 if na >= nb else ang,
                     np.clip(d + s * rng.uniform(0.1, 0.4), -0.7, 0.7)])
    return np.array(kids)


def _relax(cells: np.ndarray, r_in: float, center: float, rng: np.random.Generator, step: float) -> np.ndarray:
    """Random drift, pairwise repulsion of overlapping cells, confinement inside the zona."""
    c = cells.copy()
    c[:, :2] += rng.normal(0.0, step, (len(c), 2))
    c[:, 4] += rng.normal(0.0, 0.03, len(c))
    r = np.sqrt(c[:, 2] * c[:, 3])
    for _ in range(3):
        dxy = c[:, None, :2] - c[None, :, :2]
        dist = np.hypot(dxy[..., 0], dxy[..., 1]) + np.eye(len(c))
        overlap = np.clip(0.75 * (r[:, None] + r[None, :]) - dist, 0.0, None)
        np.fill_diagonal(overlap, 0.0)
        c[:, :2] += 0.25 * (overlap[..., None] * dxy / dist[..., None]).sum(axis=1)
        off = c[:, :2] - center
        rad = np.hypot(off[:, 0], off[:, 1])
        limit = np.maximum(r_in - 0.9 * c[:, 2], 0.0)
        scale = np.where(rad > limit, limit / np.maximum(rad, 1e-6), 1.0)
        c[:, :2] = center + off * scale[:, None]
    return c


def embryo_geometry(p: EmbryoParams, seed: int) -> tuple[EmbryoTruth, list[np.ndarray]]:
    """Ground truth and the non-cell objects (fragments, polar bodies as x, y, a, b, angle, depth) per frame."""
    rng = np.random.default_rng(seed)
    times = np.linspace(p.start_h, p.end_h, p.n_frames)
    r_in = (p.zona_outer_um / 2 - p.zona_thickness_um) / p.mpp
    center = (p.size - 1) / 2.0
    divs = _division_times(rng)
    r0 = 0.92 * r_in
    cells = np.array([[center, center, r0, r0 * rng.uniform(0.93, 1.0), rng.uniform(0, np.pi), 0.0]])
    ang = rng.uniform(0, 2 * np.pi, p.polar_bodies)
    pb = np.stack([center + 0.93 * r_in * np.cos(ang), center + 0.93 * r_in * np.sin(ang),
                   np.full(p.polar_bodies, 5.0 / p.mpp), np.full(p.polar_bodies, 4.2 / p.mpp),
                   ang, np.full(p.polar_bodies, 0.3)], axis=1) if p.polar_bodies else np.zeros((0, 6))
    frag_t = np.sort(rng.uniform(p.start_h, p.end_h, p.n_fragments))
    frag_a = rng.uniform(2.5, 7.0, p.n_fragments) / p.mpp
    frag_pos = rng.uniform(0, 2 * np.pi, p.n_fragments)
    cell_list, others = [], []
    done = 0
    for t in times:
        while done < len(divs) and divs[done] <= t:
            order = np.argsort(-(cells[:, 2] * cells[:, 3]))  # the largest (oldest generation) divides next
            k = order[0]
            cells = np.concatenate([np.delete(cells, k, axis=0), _split(cells[k], rng)])
            done += 1
        cells = _relax(cells, r_in, center, rng, step=0.6 / p.mpp)
        nf = int(np.searchsorted(frag_t, t, side="right"))
        fr = np.stack([center + 0.8 * r_in * np.cos(frag_pos[:nf]), center + 0.8 * r_in * np.sin(frag_pos[:nf]),
                       frag_a[:nf], 0.8 * frag_a[:nf], frag_pos[:nf], rng.uniform(-0.5, 0.5, nf)], axis=1)
        cell_list.append(cells.copy())
        others.append(np.concatenate([pb, fr]) if nf else pb.copy())
    counts = np.array([len(c) for c in cell_list])
    frames = {name: (int(np.flatnonzero(counts >= n)[0]) if (counts >= n).any() else None)
              for name, n in (("t2", 2), ("t3", 3), ("t4", 4), ("t5", 5), ("t8", 8))}
    return EmbryoTruth(times, counts, cell_list, divs, p, seed, frames), others


def _thickness(objs: np.ndarray, shape: tuple[int, int], weight: float) -> np.ndarray:
    """(bins, y, x) optical thickness of ellipsoidal objects, each added to its depth layer."""
    h, w = shape
    out = np.zeros((len(_DEPTH_BINS), h, w), np.float32)
    for x, y, a, b, ang, d in objs:
        r = int(np.ceil(a)) + 1
        x0, x1, y0, y1 = max(int(x) - r, 0), min(int(x) + r + 1, w), max(int(y) - r, 0), min(int(y) + r + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        dx, dy = xx - x, yy - y
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / a
        v = (-dx * np.sin(ang) + dy * np.cos(ang)) / b
        dome = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None)) * (weight * b)
        out[int(np.argmin(np.abs(_DEPTH_BINS - d))), y0:y1, x0:x1] += dome.astype(np.float32)
    return out


def _zona(p: EmbryoParams) -> np.ndarray:
    """Thickness of the zona pellucida ring plus the well's rim (static across frames)."""
    n = p.size
    yy, xx = np.mgrid[:n, :n]
    rr = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) * p.mpp
    ro, th = p.zona_outer_um / 2, p.zona_thickness_um
    ring = np.clip(1 - ((rr - (ro - th / 2)) / (th / 2)) ** 2, 0, None) ** 0.5 * 6.0
    rim = np.clip(1 - ((rr - 0.47 * n * p.mpp) / 4.0) ** 2, 0, None) * 18.0
    return (ring + rim).astype(np.float32)


def _gauss_otf(ky: np.ndarray, kx: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(len(sigma), ny, nx) Gaussian transfer functions, separable: two 1-D exponentials per sigma."""
    s2 = (2 * np.pi) ** 2 * 0.5 * np.asarray(sigma, np.float32)[:, None] ** 2
    return np.exp(-s2 * ky[None, :] ** 2)[:, :, None] * np.exp(-s2 * kx[None, :] ** 2)[:, None, :]


def render_embryo(p: EmbryoParams, seed: int) -> tuple[np.ndarray, EmbryoTruth]:
    """(t, z, 1, y, x) uint8 stack and its ground truth."""
    from scipy import fft

    truth, others = embryo_geometry(p, seed)
    rng = np.random.default_rng(seed + 7919)
    n = p.size
    ky, kx = fft.fftfreq(n).astype(np.float32), fft.rfftfreq(n).astype(np.float32)
    # relief along the diagonal (DIC/Hoffman shear) plus a little absorption, one linear filter
    optics = (2j * np.pi * 60.0 * 0.7 * (kx[None, :] + ky[:, None]) - 0.8).astype(np.complex64)
    zona = fft.rfft2(_zona(p)) * _gauss_otf(ky, kx, np.array([1.0 + p.blur_px]))[0] * optics
    texture = 1.0 + 0.08 * rng.normal(0, 1, (n, n)).astype(np.float32)  # granular cytoplasm
    planes = np.linspace(-0.5, 0.5, p.n_planes) if p.n_planes > 1 else np.zeros(1)
    drift = p.focus_drift * np.sin(2 * np.pi * np.arange(p.n_frames) / max(p.n_frames / 1.7, 1) + rng.uniform(0, 6))
    out = np.empty((p.n_frames, p.n_planes, 1, n, n), np.uint8)
    for t in range(p.n_frames):
        th = (_thickness(truth.cells[t], (n, n), 0.10) + _thickness(others[t], (n, n), 0.14)) * texture
        spec = fft.rfft2(th, axes=(-2, -1), workers=1)
        for z, zp in enumerate(planes):
            otf = _gauss_otf(ky, kx, 0.8 + p.blur_px + 6.0 * np.abs(_DEPTH_BINS - zp - drift[t]))
            img = fft.irfft2(np.einsum("bij,bij->ij", spec, otf) * optics + zona, s=(n, n))
            img = img.astype(np.float32) * np.float32(p.contrast)
            img += rng.standard_normal((n, n), dtype=np.float32) * np.float32(p.noise_sd) + np.float32(128.0)
            out[t, z, 0] = _burn_text(np.clip(img, 0, 255, out=img).astype(np.uint8), p.well, truth.times_h[t],
                                      p.jpeg_quality)
    return out, truth


def _burn_text(img: np.ndarray, well: int, time_h: float, jpeg_quality: int | None) -> np.ndarray:
    """Well number (bottom left) and hours (bottom right) burned in, then a JPEG round-trip."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    dr = ImageDraw.Draw(im)
    n = img.shape[0]
    dr.text((6, n - 20), f"{well}", fill=235)
    dr.text((n - 60, n - 20), f"{time_h:.1f}h", fill=235)
    if jpeg_quality:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(jpeg_quality))
        buf.seek(0)
        im = Image.open(buf)
    return np.asarray(im)


def synth_embryo(out: str | Path, format: str = "ome-tiff", params: EmbryoParams | None = None,
                 seed: int = 0) -> EmbryoTruth:
    """Render an embryo stack, write it in ``format`` and its truth beside it (``.truth.json``, ``.cells.csv``)."""
    from wsicount.timelapse.write import write_frames, write_ome_zarr, write_tiff_stack

    if format not in EMBRYO_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EMBRYO_FORMATS)}, got {format!r}")
    p = params or EmbryoParams()
    stack, truth = render_embryo(p, seed)
    path = Path(out)
    if format == "frames":
        planes = [f"F{int(round(v * 30))}" for v in np.linspace(-0.5, 0.5, p.n_planes)] if p.n_planes > 1 else None
        write_frames(path, stack, truth.times_h, fmt="jpg", quality=p.jpeg_quality or 95, prefix=f"W{p.well}",
                     plane_names=planes)
    elif format == "ome-zarr":
        write_ome_zarr(path, stack, truth.times_h, mpp=p.mpp)
    else:
        write_tiff_stack(path, stack, truth.times_h, mpp=p.mpp, ome=format == "ome-tiff")
    base = str(path)
    Path(f"{base}.truth.json").write_text(json.dumps(truth.to_json(), indent=1))
    with open(f"{base}.cells.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["t", "time_h", "x", "y", "a", "b", "angle_rad", "depth"])
        for t, cells in enumerate(truth.cells):
            wr.writerows([t, f"{truth.times_h[t]:.4f}", *(f"{v:.3f}" for v in c)] for c in cells)
    return truth
