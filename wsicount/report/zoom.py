"""The report's close-up: the slide at full resolution around its densest region, each detected cell ringed.

It lets a reader check the count by eye: rings on cells, none on background. The window is
centred on the densest grid cell of the finest grid (``regional`` max, cells at least half on
tissue), read from the finest level that is still >= the display's µm per pixel.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from .figures import stretch

__all__ = ["Zoom", "zoom_figure", "ZOOM_UM", "ZOOM_PX"]

#: side of the close-up on the slide, µm (a few dozen cells at typical densities)
ZOOM_UM = 250.0
#: side of the close-up picture, pixels (0.5 µm per display pixel)
ZOOM_PX = 500
#: ring radius (display px) and colour: cyan reads on dark fluorescence and on pink H&E
_RING_R, _RING = 7, (0, 230, 255)


@dataclass
class Zoom:
    """The close-up PNG and where it lies."""

    png: bytes
    x0_um: float
    y0_um: float
    side_um: float
    n_cells: int


def zoom_figure(slide: Any, model_mpp: float, peaks: np.ndarray, centre_um: tuple[float, float],
                side_um: float = ZOOM_UM) -> Zoom:
    """The slide around ``centre_um`` (y, x) with the ``peaks`` (model-grid y, x, value) inside it ringed."""
    from PIL import Image, ImageDraw

    h0, w0 = slide.shapes[0][:2]
    side_um = min(side_um, h0 * slide.mpp, w0 * slide.mpp)
    y0 = float(np.clip(centre_um[0] - side_um / 2, 0, h0 * slide.mpp - side_um))
    x0 = float(np.clip(centre_um[1] - side_um / 2, 0, w0 * slide.mpp - side_um))
    level = slide.best_level(side_um / ZOOM_PX)
    m = slide.level_mpp(level)
    n = max(1, round(side_um / m))
    img = slide.read_region(level, round(y0 / m), round(x0 / m), n, n)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    pic = Image.fromarray(stretch(np.ascontiguousarray(img[..., :3]))).resize((ZOOM_PX, ZOOM_PX),
                                                                              Image.Resampling.BILINEAR)
    k = ZOOM_PX / side_um  # display px per µm
    pk = np.asarray(peaks, np.float64).reshape(-1, 3)
    yu, xu = (pk[:, 0] + 0.5) * model_mpp - y0, (pk[:, 1] + 0.5) * model_mpp - x0
    inside = (yu >= 0) & (yu < side_um) & (xu >= 0) & (xu < side_um)
    d = ImageDraw.Draw(pic)
    for y, x in zip(yu[inside] * k, xu[inside] * k):
        d.ellipse((x - _RING_R, y - _RING_R, x + _RING_R, y + _RING_R), outline=_RING, width=2)
    _scale_bar(d, k)
    buf = io.BytesIO()
    pic.save(buf, format="PNG", compress_level=1)
    return Zoom(buf.getvalue(), x0, y0, side_um, int(inside.sum()))


def _scale_bar(d: Any, px_per_um: float, um: float = 50.0) -> None:
    """A white ``um`` bar with its length written above it, in the bottom-left corner."""
    from .pictures import _font

    length = round(um * px_per_um)
    x, y = 16, ZOOM_PX - 18
    d.rectangle((x - 4, y - 22, x + length + 4, y + 8), fill=(0, 0, 0))
    d.rectangle((x, y, x + length, y + 4), fill=(255, 255, 255))
    d.text((x + length / 2, y - 3), f"{um:g} µm", fill=(255, 255, 255), font=_font(13), anchor="ms")
