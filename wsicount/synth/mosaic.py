"""A slide assembled from a dataset's images: the test that a slide is counted as its images are.

Images are laid out on a grid with dark gaps between them, each with its own brightness,
upsampled by an integer factor (nearest neighbour: the pyramid's ``factor``-times reduced
level then holds the images' own pixels), and written through the real pyramid writers.
Counting the slide with ``wsicount.run`` and each image with ``wsicount evaluate`` must agree:
in total and per image box (the density inside the box grown by half the gap).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .write import default_suffix, write_pyramid

__all__ = ["Mosaic", "brightness_factors", "write_mosaic", "write_image_set", "box_counts"]


@dataclass(frozen=True)
class Mosaic:
    """A written mosaic slide: its path, and each image's name and box (y0, y1, x0, x1) in image pixels."""

    path: Path
    names: tuple[str, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    gap: int
    upsample: int


def brightness_factors(n: int, lo: float = 0.25, hi: float = 1.0, seed: int = 0) -> np.ndarray:
    """``n`` brightness factors, log-uniform in [lo, hi] (reproducible by ``seed``)."""
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _as_rgb(img: np.ndarray, channel: int | None) -> np.ndarray:
    """(H, W[, C]) uint8 -> (H, W, 3): a grey image goes into ``channel`` (None: all three), as a one-dye scan stores it."""
    if img.ndim == 3:
        return img[..., :3]
    if channel is None:
        return np.repeat(img[..., None], 3, axis=-1)
    out = np.zeros((*img.shape, 3), np.uint8)
    out[..., channel] = img
    return out


def scaled(img: np.ndarray, factor: float) -> np.ndarray:
    """``img`` with its brightness times ``factor`` (rounded, clipped to uint8): the pixels both paths see."""
    return np.clip(np.rint(img.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def write_mosaic(images: list[np.ndarray], names: list[str], out: str | Path, fmt: str = "ndpi",
                 mpp: float = 1.0, upsample: int = 1, gap: int = 64, channel: int | None = None,
                 quality: int = 95, compression: str | None = None, align: int = 1) -> Mosaic:
    """Write ``images`` (uint8, already at their brightness) as one slide of ``mpp`` um per image pixel / ``upsample``.

    Images sit on a square-ish grid, at least ``gap`` image pixels apart and from the border, on
    black, each box's origin a multiple of ``align`` image px (a model's stride: the network then
    sees every image at the same phase as alone). The slide's level-0 pixel is ``mpp / upsample`` um.
    """
    n = len(images)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    gap = -(-gap // align) * align
    ch = max(im.shape[0] for im in images) + gap
    cw = max(im.shape[1] for im in images) + gap
    ch, cw = -(-ch // align) * align - gap, -(-cw // align) * align - gap
    boxes = []
    for i, im in enumerate(images):
        y0, x0 = gap + (i // cols) * (ch + gap), gap + (i % cols) * (cw + gap)
        boxes.append((y0, y0 + im.shape[0], x0, x0 + im.shape[1]))
    mult = 8 if fmt == "ndpi" else 1
    h = -(-(rows * (ch + gap) + gap) * upsample // mult) * mult
    w = -(-(cols * (cw + gap) + gap) * upsample // mult) * mult
    rgb = [_as_rgb(im, channel) for im in images]

    def render(y0: int, y1: int) -> np.ndarray:
        band = np.zeros((y1 - y0, w, 3), np.uint8)
        for (by0, by1, bx0, bx1), im in zip(boxes, rgb):
            a, b = max(y0, by0 * upsample), min(y1, by1 * upsample)
            if a >= b:
                continue
            rows_ = im[np.arange(a, b) // upsample - by0]
            band[a - y0 : b - y0, bx0 * upsample : bx1 * upsample] = np.repeat(rows_, upsample, axis=1)
        return band

    path = Path(out)
    if not path.name.endswith(default_suffix(fmt)):
        path = path.with_name(path.name + default_suffix(fmt))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid(path, fmt, (h, w), render, mpp / upsample, 20.0, quality=quality, compression=compression)
    return Mosaic(path, tuple(names), tuple(boxes), gap, upsample)


def write_image_set(images: list[np.ndarray], names: list[str], counts: list[float], out: str | Path,
                    mpp: float | None) -> Path:
    """The same images as a dataset folder (images/, points/, manifest.csv; split ``test``) for ``wsicount evaluate``."""
    from PIL import Image

    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "points").mkdir(exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["name", "count", "split", "um_per_px", "n_points"])
        for im, name, c in zip(images, names, counts):
            Image.fromarray(im).save(root / "images" / f"{name}.png")
            (root / "points" / f"{name}.csv").write_text("x,y\n")
            wr.writerow([name, c, "test", mpp if mpp else "", 0])
    return root


def box_counts(density: np.ndarray, boxes: tuple[tuple[int, int, int, int], ...], grow: int) -> np.ndarray:
    """Sum of ``density`` (model grid = image pixels) inside each box grown by ``grow`` px (float64)."""
    out = []
    for y0, y1, x0, x1 in boxes:
        out.append(float(density[max(0, y0 - grow) : y1 + grow, max(0, x0 - grow) : x1 + grow].sum(dtype=np.float64)))
    return np.array(out)
