"""Training data: the wsicount dataset layout, VGG-style dot PNGs, and augmentation.

The training format (the layout of ``../shared/data``)::

    DATASET/images/NAME.png      any PNG/TIFF the image readers open (gray or RGB)
    DATASET/points/NAME.csv      header ``x,y[,a,b,angle]``; one row per cell; x = column, y = row,
                                 pixels, 0-based, pixel centres at integers
    DATASET/manifest.csv         name,count,split,um_per_px[,n_points]

Optional ellipse columns make the targets shape-aware (Cell-Net's elliptical Gaussian dots,
:func:`wsicount.training.targets.ellipse_density_map`): ``a`` and ``b`` are the cell's semi-axes in
pixels and ``angle`` the direction of ``a`` in degrees from the +x axis (columns) towards +y
(rows, i.e. clockwise on screen; 0 when the column is absent). A file with ``a`` and ``b``
needs them on every row; a file without them gives isotropic dots of the model's sigma.

``count`` is the true number of cells; when it differs from the number of points (points
only approximate), every point is weighted ``count / n_points`` so targets integrate to
the true count. ``split`` is ``train``/``val``/``test``; ``um_per_px`` may be empty.
A folder of VGG-style pairs ``NNNcell.png`` + ``NNNdots.png`` (one red pixel per cell) is
read too.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import InputError
from .targets import ellipse_endpoints, ellipses_from_endpoints, target_map

__all__ = ["Sample", "load_dataset", "load_vgg_dots", "read_annotations", "resample_samples", "Augmenter",
           "dihedral", "on_background", "make_batch"]


@dataclass
class Sample:
    """One annotated image: pixels, points (x, y), true count, split and pixel size."""

    name: str
    image: np.ndarray
    points: np.ndarray
    count: float
    split: str
    mpp: float | None
    #: (N, 3) semi-axes a, b (px) and the angle of a (radians) of each point's cell ellipse; None: points only
    ellipses: np.ndarray | None = None

    @property
    def point_weight(self) -> float:
        """Mass of each point so that the target integrates to ``count``."""
        n = len(self.points)
        return float(self.count) / n if n else 0.0


def read_annotations(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (N, 2) of an ``x,y[,a,b,angle]`` CSV, and (N, 3) ellipses (a, b px; angle in radians) or None.

    A missing or unparsable value is an :class:`~wsicount.errors.InputError` naming the file and line.
    """
    path = Path(path)
    rows, ells = [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        has_ell = {"a", "b"} <= set(reader.fieldnames or ())
        for i, r in enumerate(reader, start=2):
            try:
                rows.append((float(r["x"]), float(r["y"])))
                if has_ell:
                    a, b = float(r["a"]), float(r["b"])
                    if not (a > 0 and b > 0):
                        raise ValueError("semi-axes must be > 0")
                    ells.append((a, b, np.deg2rad(float(r.get("angle") or 0.0))))
            except (TypeError, ValueError) as e:  # a bad annotation file is bad input: one line, exit code 10
                raise InputError(f"{path}, line {i}: {e}") from None
    pts = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    return pts, (np.asarray(ells, dtype=np.float64).reshape(-1, 3) if has_ell else None)


def resample_samples(samples: list[Sample], mpp: float) -> list[Sample]:
    """Samples resampled to ``mpp`` µm/px (points and ellipse axes follow); those without a pixel size kept as they are.

    Fine-tuning a model on images of another pixel size would teach it cells of another size
    in pixels: resampled, the images look as the model's inputs do at inference.
    """
    out = []
    for s in samples:
        if not s.mpp or abs(s.mpp / mpp - 1.0) < 0.02:
            out.append(s)
            continue
        f = s.mpp / mpp
        img = np.asarray(s.image, dtype=np.float32)
        zoom = (f, f) + (1,) * (img.ndim - 2)
        z = ndimage.zoom(img, zoom, order=1, grid_mode=True, mode="nearest")
        z = np.clip(np.round(z), 0, 255).astype(s.image.dtype) if s.image.dtype == np.uint8 else z.astype(s.image.dtype)
        sy, sx = z.shape[0] / img.shape[0], z.shape[1] / img.shape[1]
        pts = np.column_stack([(s.points[:, 0] + 0.5) * sx - 0.5, (s.points[:, 1] + 0.5) * sy - 0.5])
        ell = None if s.ellipses is None else np.column_stack([s.ellipses[:, :2] * (sx + sy) / 2, s.ellipses[:, 2]])
        out.append(Sample(s.name, z, pts, s.count, s.split, mpp, ell))
    return out


def load_dataset(root: str | Path, split: str | None = None) -> list[Sample]:
    """Load a dataset folder (manifest layout or VGG dot pairs), optionally one split."""
    root = Path(root)
    if not (root / "manifest.csv").exists():
        if any(root.glob("*dots.png")):
            samples = load_vgg_dots(root)
            return [s for s in samples if split is None or s.split == split]
        raise FileNotFoundError(f"{root} has no manifest.csv and no *dots.png annotations")
    out = []
    with open(root / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            if split is not None and r["split"] != split:
                continue
            name = r["name"]
            img_path = next((p for p in (root / "images").glob(name + ".*")), None)
            if img_path is None:
                raise FileNotFoundError(f"image for {name!r} not found in {root / 'images'}")
            image = np.asarray(Image.open(img_path))
            pts, ell = read_annotations(root / "points" / f"{name}.csv")
            mpp = float(r["um_per_px"]) if r.get("um_per_px") else None
            out.append(Sample(name, image, pts, float(r["count"]), r["split"], mpp, ell))
    return out


def load_vgg_dots(folder: str | Path, n_train: int = 100) -> list[Sample]:
    """Read VGG-style ``NNNcell.png`` / ``NNNdots.png`` pairs; first ``n_train`` are train."""
    folder = Path(folder)
    out = []
    for i, dots in enumerate(sorted(folder.glob("*dots.png"))):
        stem = dots.name[: -len("dots.png")]
        img = np.asarray(Image.open(folder / f"{stem}cell.png"))
        d = np.asarray(Image.open(dots).convert("RGB")).astype(int)
        ys, xs = np.nonzero((d[..., 0] > 127) & (d[..., 1] < 100) & (d[..., 2] < 100))
        pts = np.stack([xs, ys], axis=1).astype(np.float64)
        out.append(Sample(stem, img, pts, float(len(pts)), "train" if i < n_train else "test", None))
    return out


def on_background(x: np.ndarray, s: Sample, margin: int, level: float) -> tuple[np.ndarray, Sample]:
    """Image ``x`` (C, H, W) laid on a background of ``level`` with ``margin`` px on every side, and its sample shifted.

    Every cell stays in the image, so the target keeps its mass; the background around it
    holds none. A crop drawn from the framed image shows an image edge on slide background,
    as a slide run sees it (dark gaps, glass, black padding), instead of only edges
    continued by zero padding.
    """
    framed = np.pad(x, ((0, 0), (margin, margin), (margin, margin)), constant_values=np.float32(level))
    return framed, replace(s, points=s.points + margin)


def dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Apply rot90 by k then an optional horizontal flip to the last two axes."""
    a = np.rot90(a, k, axes=(-2, -1))
    return np.flip(a, axis=-1) if flip else a


def _dihedral_points(pts: np.ndarray, shape: tuple[int, int], k: int, flip: bool) -> np.ndarray:
    """Transform (x, y) points the same way :func:`dihedral` transforms the pixels."""
    h, w = shape
    x, y = pts[:, 0].copy(), pts[:, 1].copy()
    for _ in range(k % 4):  # np.rot90 (counter-clockwise): (r, c) -> (w-1-c, r)
        x, y = y, (w - 1) - x
        h, w = w, h
    if flip:
        x = (w - 1) - x
    return np.stack([x, y], axis=1)


class Augmenter:
    """Random, seed-reproducible augmentation of (C, H, W) normalised images and their points.

    90-degree rotations and flips (exact), free rotation (p_rotate), scale jitter by a factor
    drawn log-uniformly from ``scale`` (None: off; the image is resampled and the points moved,
    so the count is unchanged), Gaussian blur with sigma in [0.5, 2.5] (p_blur),
    brightness/contrast jitter (always, mild), a per-channel gain of up to exp(±channel_gain)
    (stain variation; off by default). ``min_size`` keeps rescaled images at least
    that large (the training crop).
    """

    def __init__(
        self,
        seed: int = 0,
        p_rotate: float = 0.25,
        p_blur: float = 0.3,
        brightness: float = 0.15,
        contrast: float = 0.3,
        scale: tuple[float, float] | None = None,
        min_size: int = 0,
        channel_gain: float = 0.0,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.channel_gain = channel_gain
        self.scale, self.min_size = scale, min_size
        self.p_rotate, self.p_blur = p_rotate, p_blur
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, x: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return an augmented copy of image ``x`` (C, H, W) and points (N, 2)."""
        rng = self.rng
        shape = x.shape[-2:]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x = np.ascontiguousarray(dihedral(x, k, flip))
        pts = _dihedral_points(pts, shape, k, flip)
        if rng.random() < self.p_rotate:
            x, pts = self._rotate(x, pts, float(rng.uniform(-45, 45)))
        if self.scale is not None:
            x, pts = self._zoom(x, pts, float(np.exp(rng.uniform(*np.log(self.scale)))))
        if rng.random() < self.p_blur:
            s = float(rng.uniform(0.5, 2.5))
            x = np.stack([ndimage.gaussian_filter(c, s) for c in x])
        gain = float(np.exp(rng.uniform(-self.contrast, self.contrast)))
        bias = float(rng.uniform(-self.brightness, self.brightness))
        if self.channel_gain > 0:  # stain variation: each channel scaled on its own
            gain = np.exp(rng.uniform(-self.channel_gain, self.channel_gain, (x.shape[0], 1, 1))) * gain
        return (x * gain + bias).astype(np.float32), pts

    def _zoom(self, x: np.ndarray, pts: np.ndarray, f: float) -> tuple[np.ndarray, np.ndarray]:
        """Resample by ``f`` (never below ``min_size`` on either side); points follow pixel centres."""
        h, w = x.shape[-2:]
        f = max(f, self.min_size / min(h, w))
        if abs(f - 1.0) < 1e-3:
            return x, pts
        nh, nw = max(int(round(h * f)), self.min_size), max(int(round(w * f)), self.min_size)
        xz = np.stack([ndimage.zoom(c, (nh / h, nw / w), order=1, grid_mode=True, mode="nearest") for c in x])
        sx, sy = nw / w, nh / h
        return xz.astype(np.float32), np.stack([(pts[:, 0] + 0.5) * sx - 0.5, (pts[:, 1] + 0.5) * sy - 0.5], axis=1)

    @staticmethod
    def _rotate(x: np.ndarray, pts: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """Rotate about the image centre; corners are filled with the background level."""
        h, w = x.shape[-2:]
        fill = float(np.percentile(x, 5))
        xr = np.stack([ndimage.rotate(c, angle, reshape=False, order=1, mode="constant", cval=fill) for c in x])
        # ndimage.rotate turns the array counter-clockwise by angle in (row, col) display terms
        t = np.deg2rad(angle)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
        nx = cx + np.cos(t) * dx + np.sin(t) * dy
        ny = cy - np.sin(t) * dx + np.cos(t) * dy
        return xr.astype(np.float32), np.stack([nx, ny], axis=1)


def _augment(aug: Augmenter, x: np.ndarray, s: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Augmented image, points and ellipses (each ellipse carried through as its two semi-axis ends)."""
    if s.ellipses is None:
        return (*aug(x, s.points), None)
    xa, p3 = aug(x, ellipse_endpoints(s.points, s.ellipses))
    return (xa, *ellipses_from_endpoints(p3))


def make_batch(
    items: list[tuple[np.ndarray, Sample]], aug: Augmenter, crop: tuple[int, int], sigma: float, scale: float,
    fraction: float = 0.3, frame: float = 0.0, background: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, h, w) inputs and (N, 1, h, w) targets: items (normalised image, sample) augmented, cropped, rendered.

    A share ``frame`` of the items is first laid on the slide background (:func:`on_background`;
    ``background``: each sample name's normalised background level).
    """
    xs, ys = [], []
    ch, cw = crop
    for x, s in items:
        if frame > 0 and aug.rng.random() < frame:
            x, s = on_background(x, s, max(crop) // 2, background[s.name])
        xa, pa, ea = _augment(aug, x, s)
        h, w = xa.shape[-2:]
        oy = int(aug.rng.integers(h - ch + 1))
        ox = int(aug.rng.integers(w - cw + 1))
        xa = xa[:, oy : oy + ch, ox : ox + cw]
        pa = pa - np.array([ox, oy])
        xs.append(xa)
        ys.append(target_map(pa, ea, (ch, cw), sigma, scale * s.point_weight, fraction)[None])
    return np.stack(xs), np.stack(ys)
