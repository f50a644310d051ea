"""The timeline picture: per-frame counts, the fitted stage and the cleavage times, drawn with Pillow.

House style of :mod:`wsicount.report.pictures`: DejaVu Sans, a framed box with 1-2-2.5-5 ticks, the
title and the legend above it. Counts are grey dots inside their interval's light blue band (when the
model is calibrated; the band breaks at unreadable frames), the fitted stage a blue step line, each cleavage time a
dashed orange vertical line labelled at the top, a fitted exponential growth a green curve over its fit
window; unreadable frames are red ticks on the axis.
"""

from __future__ import annotations

import io

import numpy as np

from wsicount.report.pictures import _font, ticks

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
    x0, y0, x1, y1 = LEFT, TOP, W - RIGHT, H - BOTTOM
    xlo, xhi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    xhi = xhi if xhi > xlo else xlo + 1.0
    top = max(float(np.nanmax(c)) if np.isfinite(c).any() else 1.0, float(s.max()) if s.size else 1.0, 1.0) + 0.5
    if band is not None and np.isfinite(band[1]).any():
        top = max(top, float(np.nanmax(band[1])) + 0.5)

    def px(v: np.ndarray | float) -> np.ndarray:
        return x0 + (np.asarray(v) - xlo) / (xhi - xlo) * (x1 - x0)

    def py(v: np.ndarray | float) -> np.ndarray:
        return y1 - np.asarray(v) / top * (y1 - y0)

    small, mid = _font(12), _font(13)
    d.rectangle((x0 - 1, y0 - 1, x1, y1), outline="black")
    for v in ticks(xlo, xhi):
        d.line((float(px(v)), y1, float(px(v)), y1 + 5), fill="black")
        d.text((float(px(v)), y1 + 8), _fmt(v), fill="black", font=small, anchor="mt")
    for v in ticks(0.0, top):
        d.line((x0 - 6, float(py(v)), x0 - 1, float(py(v))), fill="black")
        d.text((x0 - 9, float(py(v))), _fmt(v), fill="black", font=small, anchor="rm")
    d.text(((x0 + x1) // 2, y1 + 28), xlabel, fill="black", font=mid, anchor="mt")
    d.text((14, (y0 + y1) // 2), "cells", fill="black", font=mid, anchor="lm")
    d.text((x0, y0 - 20), title, fill="black", font=_font(14), anchor="ls")
    placed: list[float] = []
    for name, t in events.items():
        if t is None:
            continue
        xp = float(px(t))
        for ya in range(y0, y1, 8):
            d.line((xp, ya, xp, min(ya + 4, y1)), fill=(230, 120, 20))
        row = sum(abs(xp - q) < 22 for q in placed)  # events close together: labels stacked downwards
        placed.append(xp)
        d.text((xp + 2, y0 + 2 + 14 * row), name, fill=(200, 90, 0), font=small, anchor="lt")
    if band is not None:
        lo, hi = np.asarray(band[0], dtype=float), np.asarray(band[1], dtype=float)
        for a, b in _segments(np.isfinite(lo) & np.isfinite(hi)):
            xs = [float(v) for v in px(x[a:b])]
            if b - a == 1:  # a lone frame: a short bar
                d.rectangle((xs[0] - 2, float(py(hi[a])), xs[0] + 2, float(py(lo[a]))), fill=(200, 220, 245))
                continue
            upper = list(zip(xs, [float(v) for v in py(hi[a:b])]))
            lower = list(zip(xs[::-1], [float(v) for v in py(lo[a:b])][::-1]))
            d.polygon(upper + lower, fill=(200, 220, 245))
    if s.size:
        pts = []
        for i in range(s.size):
            xa = float(px(x[i]))
            xb = float(px(x[i + 1])) if i + 1 < s.size else xa
            pts += [(xa, float(py(s[i]))), (xb, float(py(s[i])))]
        d.line(pts, fill=(31, 90, 200), width=2)
    for xi, ci in zip(x, c, strict=True):
        if np.isfinite(ci):
            cx, cy = float(px(xi)), float(py(ci))
            d.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=(110, 110, 110))
        else:
            d.line((float(px(xi)), y1 - 6, float(px(xi)), y1), fill=(210, 30, 30), width=2)
    fitted = growth is not None and growth.get("doubling_time_h") is not None
    if fitted:
        tt = np.linspace(growth["window"]["start_h"], growth["window"]["end_h"], 200)
        yy = np.exp(growth["log_count_at_0h"] + growth["rate_per_h"] * tt)
        keep = yy <= top  # the curve leaves the box at the top rather than running along it
        if keep.sum() > 1:
            d.line([(float(a), float(b)) for a, b in zip(px(tt[keep]), py(yy[keep]))], fill=(20, 150, 60), width=2)
    legend = "• count" + ("   — stage   ┆ cleavage" if s.size else "")
    if fitted:
        legend += f"   — doubling {growth['doubling_time_h']:.3g} h"
    if band is not None:  # a swatch of the band's colour before its label
        legend = f"{100 * band[2]:g} % interval   " + legend
        xs = x1 - d.textlength(legend, font=small)
        d.rectangle((xs - 16, y0 - 17, xs - 4, y0 - 7), fill=(200, 220, 245))
    d.text((x1, y0 - 6), legend, fill="black", font=small, anchor="rb")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
