"""Live-cell growth: counts per frame in user regions, and the doubling time of an exponential fit.

Region counts: the (t, y, x) density of a stack is counted in each region of a QuPath GeoJSON
export or a label image (:mod:`wsicount.regions`, in frame pixel coordinates) frame by frame,
with the same per-frame interval as the whole field when the model is calibrated (the region's
count and its model-grid pixels as the variance terms). The whole field is the region
:data:`FIELD`.

Doubling time: ordinary least squares of ``ln(count_i) = a + r · t_i`` over the **fit window**,
the frames with a time and a count of at least ``min_count`` (a density sum below half a cell is
no cell, and its logarithm would dominate the fit); ``Td = ln 2 / r``. The 95 % interval of ``Td``
is ``[ln 2 / r_hi, ln 2 / r_lo]`` from the slope's Student-t interval (n - 2 degrees of freedom);
its upper end is None when ``r_lo <= 0``. The fit **assumes exponential growth at one rate over
the whole window** and independent log-count errors of equal variance (frames are not weighted
by their count intervals). ``doubling_time_h`` is None, with a ``reason``, when:

* fewer than 3 frames are in the window;
* the counts are flat or decreasing: the rate's 95 % interval does not lie above 0, or the fit
  grows by less than 1 % of a doubling over the window;
* growth is not exponential: a quadratic term in time is significant (p < 0.01) and the fitted
  local rate at either end of the window differs from ``r`` by more than half of ``r`` (a lag
  phase, a plateau, linear growth).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wsicount.errors import RegionError

__all__ = ["FIELD", "GROWTH_COLUMNS", "doubling_time", "growth_table", "load_stack_regions", "region_series"]

#: the region name of the whole field in growth.csv and summary.json
FIELD = "(field)"
GROWTH_COLUMNS = ["frame", "time_h", "region", "count", "count_lo", "count_hi"]
#: significance of the quadratic term that marks growth as not exponential
CURVATURE_P = 0.01
#: growth below this share of a doubling over the whole window is flat (exactly constant counts fit a rate ~1e-18)
FLAT = 0.01
#: relative change of the local rate across the window that counts as not exponential
RATE_CHANGE = 0.5


def _window(times_h: np.ndarray, counts: np.ndarray, min_count: float) -> np.ndarray:
    """Indices of the frames in the fit window: a finite time and a count of at least ``min_count``."""
    t = np.asarray(times_h, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    return np.flatnonzero(np.isfinite(t) & np.isfinite(c) & (c >= min_count))


def _curvature(t: np.ndarray, y: np.ndarray, rate: float) -> tuple[float, float, float]:
    """p-value of the quadratic term of ``y ~ t + t²`` and its local rates at the window's two ends."""
    from scipy import stats

    tc = t - t.mean()
    x = np.column_stack([np.ones_like(tc), tc, tc**2])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = t.size - 3
    if dof < 1:
        return 1.0, rate, rate
    s2 = float(((y - x @ beta) ** 2).sum()) / dof
    cov = s2 * np.linalg.pinv(x.T @ x)
    se = math.sqrt(max(cov[2, 2], 0.0))
    p = 0.0 if se == 0 and beta[2] != 0 else 1.0 if se == 0 else float(2 * stats.t.sf(abs(beta[2]) / se, dof))
    return p, float(beta[1] + 2 * beta[2] * tc[0]), float(beta[1] + 2 * beta[2] * tc[-1])


def doubling_time(times_h: np.ndarray, counts: np.ndarray, min_count: float = 0.5,
                  level: float = 0.95) -> dict[str, Any]:
    """Log-linear least-squares fit of counts against hours: doubling time, its interval, the window, or a reason."""
    from scipy import stats

    idx = _window(times_h, counts, min_count)
    out: dict[str, Any] = {"doubling_time_h": None, "ci_h": None, "level": level, "rate_per_h": None, "r2": None,
                           "window": None, "reason": None}
    if idx.size:
        t_all = np.asarray(times_h, dtype=np.float64)
        out["window"] = {"first_frame": int(idx[0]), "last_frame": int(idx[-1]), "start_h": float(t_all[idx[0]]),
                         "end_h": float(t_all[idx[-1]]), "frames": int(idx.size)}
    t = np.asarray(times_h, dtype=np.float64)[idx]
    if idx.size < 3 or np.ptp(t) == 0:
        out["reason"] = f"{idx.size} frame(s) with at least {min_count:g} cells at distinct times: the fit needs 3"
        return out
    y = np.log(np.asarray(counts, dtype=np.float64)[idx])
    rate, icpt = np.polyfit(t, y, 1)
    resid = y - (rate * t + icpt)
    sxx = float(((t - t.mean()) ** 2).sum())
    ss = float(((y - y.mean()) ** 2).sum())
    dof = t.size - 2
    se = math.sqrt(float((resid**2).sum()) / dof / sxx) if dof > 0 else math.inf
    q = float(stats.t.ppf(0.5 + level / 2, dof)) if dof > 0 else math.inf
    r_lo, r_hi = rate - q * se, rate + q * se
    out.update(rate_per_h=float(rate), r2=1.0 - float((resid**2).sum()) / ss if ss > 0 else None,
               rate_ci_per_h=[float(r_lo), float(r_hi)], log_count_at_0h=float(icpt))
    if r_lo <= 0 or rate * np.ptp(t) < FLAT * math.log(2):
        out["reason"] = (f"counts are flat or decreasing: the growth rate's {100 * level:g} % interval "
                         f"({r_lo:.3g} to {r_hi:.3g} per h) does not lie above 0, or the fit grows by less than "
                         f"{100 * FLAT:g} % of a doubling over the window")
        return out
    p, start, end = _curvature(t, y, float(rate))
    if p < CURVATURE_P and max(abs(start - rate), abs(end - rate)) > RATE_CHANGE * rate:
        out["reason"] = (f"growth is not exponential over the window: the rate changes from {start:.3g} to "
                         f"{end:.3g} per h (quadratic term p = {p:.2g})")
        return out
    out["doubling_time_h"] = float(math.log(2) / rate)
    out["ci_h"] = [float(math.log(2) / r_hi), float(math.log(2) / r_lo)]
    return out


def load_stack_regions(path: str, frame_shape: tuple[int, int], mpp: float | None, units: str | None = None,
                       label_scale: float = 1.0):
    """User regions of a stack in frame pixels (GeoJSON or label image), checked against the frame; none named FIELD."""
    from wsicount.regions import LabelRegions, check_regions, read_regions

    regions = read_regions(path, units=units, mpp0=mpp, label_scale=label_scale)
    names = regions.names.values() if isinstance(regions, LabelRegions) else [r.name for r in regions]
    if FIELD in names:
        raise RegionError(f"region name {FIELD!r} is reserved for the whole field; rename that region")
    check_regions(regions, (float(frame_shape[0]), float(frame_shape[1])))
    return regions


def region_series(regions: Any, density: Any, ok: np.ndarray, scale: float, model_mpp: float | None,
                  calibration: Any = None, level: float = 0.95) -> dict[str, dict[str, np.ndarray]]:
    """Per region: ``count``, ``lo``, ``hi`` arrays over frames (NaN where ``ok`` is False or uncalibrated).

    ``density`` is the (t, y, x) model-grid density; ``scale`` frame pixels per model pixel.
    """
    from wsicount.regions import region_counts

    n = density.shape[0]
    out: dict[str, dict[str, np.ndarray]] = {}
    for t in range(n):
        if not ok[t]:
            continue
        for row in region_counts(regions, density[t], model_mpp, scale, None, calibration, level):
            s = out.setdefault(row["region"], {k: np.full(n, np.nan) for k in ("count", "lo", "hi")})
            s["count"][t] = row["count"]
            if calibration is not None:
                s["lo"][t], s["hi"][t] = row["count_lo"], row["count_hi"]
    return out


def growth_table(times_h: np.ndarray | None, field: dict[str, np.ndarray],
                 regions: dict[str, dict[str, np.ndarray]], min_count: float = 0.5,
                 level: float = 0.95) -> tuple[list[list[str]], dict[str, Any]]:
    """growth.csv rows (the field first, then each region, frame by frame) and summary.json's ``growth``.

    ``field`` and each region map ``count``, ``lo``, ``hi`` to per-frame arrays (NaN: none);
    ``times_h`` None means the stack has no frame times, so no doubling time is fitted.
    """
    def num(v: float) -> str:
        return f"{v:.3f}" if np.isfinite(v) else ""

    series = {FIELD: field, **regions}
    n = len(field["count"])
    rows = [[str(t), "" if times_h is None else f"{times_h[t]:.4f}", name, num(s["count"][t]), num(s["lo"][t]),
             num(s["hi"][t])] for name, s in series.items() for t in range(n)]
    summary: dict[str, Any] = {
        "fit": "ln(count) = a + r * time_h by least squares over the frames with a count >= min_count; "
               "doubling time = ln 2 / r, interval from the slope's t-interval",
        "assumes": "exponential growth at one rate over the window; independent log-count errors of equal variance",
        "min_count": min_count}
    if times_h is None:
        summary["reason"] = "the stack states no frame times: pass --frame-interval or --times to fit doubling times"
        return rows, summary
    summary["field"] = doubling_time(times_h, field["count"], min_count, level)
    summary["regions"] = {name: doubling_time(times_h, s["count"], min_count, level) for name, s in regions.items()}
    return rows, summary
