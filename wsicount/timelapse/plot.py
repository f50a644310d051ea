"""The timeline picture: per-frame counts, the fitted stage and the cleavage times, drawn with Pillow.

House style of :mod:`wsicount.report.pictures`: DejaVu Sans, a framed box with 1-2-2.5-5 ticks, the
title and the legend above it. Counts are grey dots inside their interval's light blue band (when the
model is calibrated; the band breaks at unreadable frames), the fitted stage a blue step line, each cleavage time a
dashed orange vertical line labelled at the top, a fitted exponential growth a green curve over its fit
window; unreadable frames are red ticks on the axis.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wsicount.report.pictures import _font, ticks

if TYPE_CHECKING:
    from PIL import ImageDraw

__all__ = ["timeline_png"]

W, H = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 24, 46, 56


def _fmt(v: float) -> str:
    """Tick label: integers without a decimal point."""
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.3g}"


def _segments(ok: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` index runs where ``ok`` is True."""
    edges = np.flatnonzero(np.diff(np.r_[0, ok.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


BAND = (200, 220, 245)


@dataclass(frozen=True)
class _Axes:
    """The plot box in pixels and the data range it shows: x in [xlo, xhi], counts in [0, top]."""

    xlo: float
    xhi: float
    top: float
    x0: int = LEFT
    y0: int = TOP
    x1: int = W - RIGHT
    y1: int = H - BOTTOM

    def px(self, v: np.ndarray | float) -> np.ndarray:
        """Pixel column of data x ``v``."""
        return self.x0 + (np.asarray(v) - self.xlo) / (self.xhi - self.xlo) * (self.x1 - self.x0)

    def py(self, v: np.ndarray | float) -> np.ndarray:
        """Pixel row of count ``v``."""
        return self.y1 - np.asarray(v) / self.top * (self.y1 - self.y0)


def timeline_png(x: np.ndarray, counts: np.ndarray, stages: np.ndarray, events: dict[str, float | None],
                 title: str, xlabel: str = "time since insemination (h)",
                 band: tuple[np.ndarray, np.ndarray, float] | None = None,
                 growth: dict | None = None) -> bytes:
    """PNG of counts (NaN = unreadable frame) and stages against ``x`` (hours or frames); events on the same axis.

    ``band`` = (lo, hi, level): each frame's count interval, drawn as a band behind the counts.
    ``growth``: a fitted :func:`wsicount.timelapse.growth.doubling_time` (``x`` in hours), drawn as
    its exponential curve over the fit window.
    """
    from PIL import Image, ImageDraw

    x = np.asarray(x, dtype=float)
    c = np.asarray(counts, dtype=float)
    s = np.asarray(stages, dtype=float)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    ax = _axes(x, c, s, band)
    _draw_frame(d, ax, title, xlabel)
    _draw_events(d, ax, events)
    if band is not None:
        _draw_band(d, ax, x, band)
    _draw_series(d, ax, x, c, s)
    fitted = growth is not None and growth.get("doubling_time_h") is not None
    if fitted:
        _draw_growth(d, ax, growth)
    _draw_legend(d, ax, s.size > 0, growth if fitted else None, band)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _axes(x: np.ndarray, c: np.ndarray, s: np.ndarray, band: tuple[np.ndarray, np.ndarray, float] | None) -> _Axes:
    """Axes spanning x, and counts from 0 to half a cell above the highest count, stage or band edge."""
    xlo, xhi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    xhi = xhi if xhi > xlo else xlo + 1.0
    top = max(float(np.nanmax(c)) if np.isfinite(c).any() else 1.0, float(s.max()) if s.size else 1.0, 1.0) + 0.5
    if band is not None and np.isfinite(band[1]).any():
        top = max(top, float(np.nanmax(band[1])) + 0.5)
    return _Axes(xlo, xhi, top)


def _draw_frame(d: ImageDraw.ImageDraw, ax: _Axes, title: str, xlabel: str) -> None:
    """The box, its ticks and labels, the axis titles and the plot title."""
    small, mid = _font(12), _font(13)
    x0, y0, x1, y1 = ax.x0, ax.y0, ax.x1, ax.y1
    d.rectangle((x0 - 1, y0 - 1, x1, y1), outline="black")
    for v in ticks(ax.xlo, ax.xhi):
        d.line((float(ax.px(v)), y1, float(ax.px(v)), y1 + 5), fill="black")
        d.text((float(ax.px(v)), y1 + 8), _fmt(v), fill="black", font=small, anchor="mt")
    for v in ticks(0.0, ax.top):
        d.line((x0 - 6, float(ax.py(v)), x0 - 1, float(ax.py(v))), fill="black")
        d.text((x0 - 9, float(ax.py(v))), _fmt(v), fill="black", font=small, anchor="rm")
    d.text(((x0 + x1) // 2, y1 + 28), xlabel, fill="black", font=mid, anchor="mt")
    d.text((14, (y0 + y1) // 2), "cells", fill="black", font=mid, anchor="lm")
    d.text((x0, y0 - 20), title, fill="black", font=_font(14), anchor="ls")


def _draw_events(d: ImageDraw.ImageDraw, ax: _Axes, events: dict[str, float | None]) -> None:
    """Each timed event a dashed orange vertical line, labelled at the top (close ones stacked downwards)."""
    small = _font(12)
    placed: list[float] = []
    for name, t in events.items():
        if t is None:
            continue
        xp = float(ax.px(t))
        for ya in range(ax.y0, ax.y1, 8):
            d.line((xp, ya, xp, min(ya + 4, ax.y1)), fill=(230, 120, 20))
        row = sum(abs(xp - q) < 22 for q in placed)
        placed.append(xp)
        d.text((xp + 2, ax.y0 + 2 + 14 * row), name, fill=(200, 90, 0), font=small, anchor="lt")


def _draw_band(d: ImageDraw.ImageDraw, ax: _Axes, x: np.ndarray, band: tuple[np.ndarray, np.ndarray, float]) -> None:
    """The interval band, broken at frames without one; a lone frame's interval is a short bar."""
    lo, hi = np.asarray(band[0], dtype=float), np.asarray(band[1], dtype=float)
    for a, b in _segments(np.isfinite(lo) & np.isfinite(hi)):
        xs = [float(v) for v in ax.px(x[a:b])]
        if b - a == 1:
            d.rectangle((xs[0] - 2, float(ax.py(hi[a])), xs[0] + 2, float(ax.py(lo[a]))), fill=BAND)
            continue
        upper = list(zip(xs, [float(v) for v in ax.py(hi[a:b])]))
        lower = list(zip(xs[::-1], [float(v) for v in ax.py(lo[a:b])][::-1]))
        d.polygon(upper + lower, fill=BAND)


def _draw_series(d: ImageDraw.ImageDraw, ax: _Axes, x: np.ndarray, c: np.ndarray, s: np.ndarray) -> None:
    """The stage as a step line; counts as grey dots, unreadable frames as red ticks on the axis."""
    if s.size:
        pts = []
        for i in range(s.size):
            xa = float(ax.px(x[i]))
            xb = float(ax.px(x[i + 1])) if i + 1 < s.size else xa
            pts += [(xa, float(ax.py(s[i]))), (xb, float(ax.py(s[i])))]
        d.line(pts, fill=(31, 90, 200), width=2)
    for xi, ci in zip(x, c, strict=True):
        if np.isfinite(ci):
            cx, cy = float(ax.px(xi)), float(ax.py(ci))
            d.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=(110, 110, 110))
        else:
            d.line((float(ax.px(xi)), ax.y1 - 6, float(ax.px(xi)), ax.y1), fill=(210, 30, 30), width=2)


def _draw_growth(d: ImageDraw.ImageDraw, ax: _Axes, growth: dict) -> None:
    """The fitted exponential over its window, cut where it leaves the box at the top."""
    tt = np.linspace(growth["window"]["start_h"], growth["window"]["end_h"], 200)
    yy = np.exp(growth["log_count_at_0h"] + growth["rate_per_h"] * tt)
    keep = yy <= ax.top
    if keep.sum() > 1:
        d.line([(float(a), float(b)) for a, b in zip(ax.px(tt[keep]), ax.py(yy[keep]))], fill=(20, 150, 60), width=2)


def _draw_legend(d: ImageDraw.ImageDraw, ax: _Axes, stages: bool, growth: dict | None,
                 band: tuple[np.ndarray, np.ndarray, float] | None) -> None:
    """The legend above the box, right-aligned; the band's label follows a swatch of its colour."""
    small = _font(12)
    legend = "• count" + ("   — stage   ┆ cleavage" if stages else "")
    if growth is not None:
        legend += f"   — doubling {growth['doubling_time_h']:.3g} h"
    if band is not None:
        legend = f"{100 * band[2]:g} % interval   " + legend
        xs = ax.x1 - d.textlength(legend, font=small)
        d.rectangle((xs - 16, ax.y0 - 17, xs - 4, ax.y0 - 7), fill=BAND)
    d.text((ax.x1, ax.y0 - 6), legend, fill="black", font=small, anchor="rb")
