"""The report's pictures, drawn with Pillow: an image in a box with axes in µm, an optional colour bar.

Pillow rather than matplotlib: a run draws two fixed-layout pictures, and matplotlib's
import alone costs more CPU than drawing both with Pillow (``python benchmarks/overhead.py``
times both imports); the text is in DejaVu Sans. The layout: a box whose longer side is
``AXES_PX`` at the slide's aspect, ticks at 1-2-2.5-5 steps labelled in µm, a title above,
and a colour bar with its label on the right.

Coordinates: a picture's box maps the extent [0, width_um] x [0, height_um] onto pixel
columns/rows of the box, y downwards like the slide. Display pixel (r, c) of the box shows
the data at the µm position of its centre (nearest neighbour for masks and grids).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["Picture", "ticks", "inferno", "png", "outline"]

#: longer side of the image box, pixels (matplotlib's 5.2 in at 110 dpi, as before)
AXES_PX = 572
#: margins around the box: tick labels and axis label (left, bottom), title (top)
LEFT, RIGHT, BOTTOM, TOP = 96, 24, 62, 40
#: colour bar: gap to the box, bar width, room for its tick labels and label
CB_GAP, CB_W, CB_ROOM = 18, 20, 96
#: tick length and the gap between a tick and its label, pixels
TICK, PAD = 5, 3
#: matplotlib's 'inferno' at 17 evenly spaced points (linear between them: within 7/255 of
#: matplotlib's 256-entry table); perceptually uniform and readable in grey
_INFERNO = ("000004 0b0724 210c4a 3d0965 57106e 71196e 8a226a a32c61 bc3754 d24644 e45a31 f1731d "
            "f98e09 fcac11 f9cb35 f2ea69 fcffa4")


@lru_cache(maxsize=1)
def inferno() -> np.ndarray:
    """(256, 3) uint8 colour table of 'inferno', dark (0) to light (255)."""
    pts = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in _INFERNO.split()], np.float64)
    x, t = np.linspace(0.0, 1.0, len(pts)), np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, x, pts[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


@lru_cache(maxsize=4)
def _font(size: int):
    """DejaVu Sans at ``size`` px: the font matplotlib ships (found without importing it), which has µ and ².

    Pillow's own font (Aileron) has neither, so it is only the fallback when matplotlib's
    data files are missing.
    """
    from importlib.util import find_spec

    from PIL import ImageFont

    spec = find_spec("matplotlib")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def ticks(lo: float, hi: float, n: int = 6) -> np.ndarray:
    """Tick values at a 1/2/2.5/5 x 10^k step, about ``n`` of them, inside [lo, hi]."""
    span = hi - lo
    if not math.isfinite(span) or span <= 0:
        return np.array([lo])
    raw = span / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return np.arange(first, hi + step * 1e-9, step)


def _label(v: float) -> str:
    """Tick label: integers without a decimal point, else up to 3 significant decimals."""
    if abs(v - round(v)) < 1e-9 * max(1.0, abs(v)):
        return str(int(round(v)))
    return f"{v:.3g}"


@dataclass
class Picture:
    """An RGB canvas with one image box mapping ``extent_um`` (width, height) to ``box`` (x0, y0, x1, y1) pixels."""

    image: object  # PIL.Image.Image
    box: tuple[int, int, int, int]
    extent_um: tuple[float, float]

    @classmethod
    def new(cls, width_um: float, height_um: float, colorbar: bool = False) -> "Picture":
        """A white canvas whose box has the extent's aspect, its longer side ``AXES_PX``."""
        from PIL import Image

        k = AXES_PX / max(width_um, height_um)
        aw, ah = max(1, round(width_um * k)), max(1, round(height_um * k))
        extra = CB_GAP + CB_W + CB_ROOM if colorbar else 0
        img = Image.new("RGB", (LEFT + aw + RIGHT + extra, TOP + ah + BOTTOM), "white")
        return cls(img, (LEFT, TOP, LEFT + aw, TOP + ah), (float(width_um), float(height_um)))

    @property
    def size(self) -> tuple[int, int]:
        """(rows, columns) of the box."""
        return self.box[3] - self.box[1], self.box[2] - self.box[0]

    def sample(self, grid: np.ndarray, cell_y_um: float, cell_x_um: float) -> np.ndarray:
        """``grid`` at the box's display pixels, (h, w): the cell holding each pixel's centre.

        Cell (i, j) covers [i, i+1) x ``cell_y_um`` by [j, j+1) x ``cell_x_um``; centres past the
        grid's last cell take that cell (a mask or a count grid may end short of the extent).
        """
        h, w = self.size
        yc = (np.arange(h) + 0.5) * (self.extent_um[1] / h)
        xc = (np.arange(w) + 0.5) * (self.extent_um[0] / w)
        rows = np.minimum((yc / cell_y_um).astype(np.intp), grid.shape[0] - 1)
        cols = np.minimum((xc / cell_x_um).astype(np.intp), grid.shape[1] - 1)
        return grid[rows[:, None], cols[None, :]]

    def show(self, rgb: np.ndarray) -> None:
        """Fill the box with ``rgb`` (h, w, 3) uint8 covering the whole extent, resampled to the box."""
        from PIL import Image

        h, w = self.size
        im = Image.fromarray(np.ascontiguousarray(rgb[..., :3]))
        self.image.paste(im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0), self.box[:2])

    def pixels(self) -> np.ndarray:
        """The box's current pixels, (h, w, 3) uint8 (a copy)."""
        return np.asarray(self.image.crop(self.box)).copy()

    def put(self, rgb: np.ndarray) -> None:
        """Replace the box's pixels by ``rgb`` (h, w, 3) uint8 of the box's size."""
        from PIL import Image

        self.image.paste(Image.fromarray(rgb), self.box[:2])

    def axes(self, title: str, xlabel: str = "x (µm)", ylabel: str = "y (µm)") -> None:
        """Frame, µm ticks and labels on the left and bottom, and a title above the box."""
        from PIL import ImageDraw

        d = ImageDraw.Draw(self.image)
        x0, y0, x1, y1 = self.box
        small, mid = _font(12), _font(13)
        d.rectangle((x0 - 1, y0 - 1, x1, y1), outline="black")
        (h, w), (wu, hu) = self.size, self.extent_um
        for v in ticks(0.0, wu):
            x = x0 + round(v / wu * w)
            d.line((x, y1, x, y1 + TICK), fill="black")
            d.text((x, y1 + TICK + PAD), _label(v), fill="black", font=small, anchor="mt")
        label_w = 0
        for v in ticks(0.0, hu):
            y = y0 + round(v / hu * h)
            d.line((x0 - 1 - TICK, y, x0 - 1, y), fill="black")
            d.text((x0 - 1 - TICK - PAD, y), _label(v), fill="black", font=small, anchor="rm")
            label_w = max(label_w, round(d.textlength(_label(v), font=small)))
        d.text(((x0 + x1) // 2, y1 + TICK + PAD + 18), xlabel, fill="black", font=mid, anchor="mt")
        self._vertical_text(ylabel, x0 - 1 - TICK - PAD - label_w - 6, (y0 + y1) // 2, mid, right=True)
        d.text(((x0 + x1) // 2, y0 - 12), title, fill="black", font=_font(14), anchor="ms")

    def colorbar(self, vmin: float, vmax: float, label: str) -> None:
        """A vertical 'inferno' bar beside the box, ``vmax`` at the top, with ticks and ``label``."""
        from PIL import Image, ImageDraw

        x0, y0, _, y1 = self.box
        bx0 = self.box[2] + CB_GAP
        bx1, h = bx0 + CB_W, y1 - y0
        ramp = inferno()[np.linspace(255, 0, h).round().astype(np.intp)]  # top row = vmax
        self.image.paste(Image.fromarray(np.repeat(ramp[:, None, :], CB_W, axis=1)), (bx0, y0))
        d = ImageDraw.Draw(self.image)
        d.rectangle((bx0 - 1, y0 - 1, bx1, y1), outline="black")
        small, label_w = _font(12), 0
        span = vmax - vmin
        for v in ticks(vmin, vmax, 5) if span > 0 else [vmin]:
            y = y1 - 1 - round((v - vmin) / span * (h - 1)) if span > 0 else (y0 + y1) // 2
            d.line((bx1, y, bx1 + TICK, y), fill="black")
            d.text((bx1 + TICK + PAD, y), _label(v), fill="black", font=small, anchor="lm")
            label_w = max(label_w, round(d.textlength(_label(v), font=small)))
        self._vertical_text(label, bx1 + TICK + PAD + label_w + 6, (y0 + y1) // 2, _font(13), right=False)

    def _vertical_text(self, text: str, x: int, yc: int, font, right: bool) -> None:
        """``text`` rotated to read bottom-up, centred on row ``yc``; its right (``right``) or left edge at column ``x``."""
        from PIL import Image, ImageDraw

        left, top, r, b = font.getbbox(text)
        tile = Image.new("L", (r - left + 2, b - top + 2), 0)
        ImageDraw.Draw(tile).text((1 - left, 1 - top), text, fill=255, font=font)
        tile = tile.rotate(90, expand=True)
        x = x - tile.width if right else x
        self.image.paste((0, 0, 0), (max(0, x), yc - tile.height // 2), tile)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels on either side of a boundary of the boolean ``mask`` (a 2-px line along its edges)."""
    edge = np.zeros(mask.shape, bool)
    dy = mask[1:] != mask[:-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    dx = mask[:, 1:] != mask[:, :-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


def png(picture: Picture) -> bytes:
    """PNG bytes of the canvas (zlib level 1: somewhat larger files for much less encoding CPU)."""
    buf = io.BytesIO()
    picture.image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
