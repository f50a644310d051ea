"""Calibrated count intervals: a variance model of the count error and a split-conformal quantile.

The interval of a predicted count ``ĉ`` is ``ĉ·(1 + β) ± q · sqrt(v)``, clipped at 0, where

* ``β`` is the model's relative bias on the calibration units (``Σ(c - ĉ) / Σĉ``): the
  interval is centred on the bias-corrected count, the reported count stays the model's;
* ``v = Σ_f w_f · t_f`` is a variance model over **terms** ``t_f`` of the counted area, fitted
  by non-negative least squares of the squared residuals on calibration units:
  ``pred`` (the predicted count, clipped at 0: Poisson-like noise), ``area`` (model-grid pixels
  counted: background noise), ``pred2`` (the square of the area's own count: a relative error
  shared by the whole area, e.g. stain or focus) and, for ``tta``, ``tta_var`` (the variance
  of the counts predicted on the 8 dihedral transforms of the input);
* ``q`` is the conformal quantile of the normalised calibration scores ``|residual| / sqrt(v)``:
  the ``ceil((n + 1) · level)``-th smallest of ``n`` scores, so that a fresh unit exchangeable
  with the calibration units is covered with probability >= ``level`` (infinite when
  ``n < 1/(1 - level) - 1``: too few units for that level). ``β`` and the 2-4 weights are
  fitted on the same units as the scores, a small optimism the held-out benchmark measures.

Aggregation over a union of tiles (a region, the slide): ``pred`` and ``area`` are summed over
the tiles, which **assumes the tiles' independent error parts are independent between tiles**;
``pred2`` is the square of the union's summed count, i.e. the relative error is **assumed
fully shared within the union** (conservative for a union of unrelated areas; the
region-level coverage of ``benchmarks/uncertainty.py`` measures both). The spread term of a
view method (``tta_var``, ``ens_var``) of a union is the variance of its per-view sums, so a
tile record carries its per-view sums (:mod:`wsicount.views`).

Methods: ``poisson`` (pred, area), ``shared`` (the default: adds pred2) -- both computed from
the prediction itself, no extra compute -- ``tta`` (adds tta_var and counts the mean of the 8
dihedral transforms: 8x the compute of a run) and ``ensemble`` (adds ens_var, the spread of
K member models' counts, and counts their mean: K x the compute) and ``hetero`` (adds
het_var, the summed per-pixel variances of a variance head trained with a Gaussian likelihood
on the frozen model, :mod:`wsicount.models.variance`; additive over tiles). A card's ``calibration`` is
its default method's record; other calibrated methods sit under its ``methods`` key
(:func:`card_calibration`). ``mcdropout`` (adds mc_var: T passes with fixed bottleneck
channel-dropout masks, counting their mean; T x the compute) is test-time dropout on nets
trained without dropout (:mod:`wsicount.views`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np
from scipy.optimize import nnls

from .errors import ModelError

__all__ = ["METHODS", "ADDITIVE", "DEFAULT_METHOD", "LEVELS", "Calibration", "fit_calibration", "conformal_quantile",
           "crop_terms", "predict_tta", "union_terms", "cell_terms", "coverage_report",
           "card_calibration", "method_record", "calibrated_methods"]

#: variance-model terms of each method
METHODS: dict[str, tuple[str, ...]] = {
    "poisson": ("pred", "area"),
    "shared": ("pred", "area", "pred2"),
    "tta": ("pred", "area", "pred2", "tta_var"),
    "ensemble": ("pred", "area", "pred2", "ens_var"),
    "hetero": ("pred", "area", "pred2", "het_var"),
    "mcdropout": ("pred", "area", "pred2", "mc_var"),
}
#: terms that add over disjoint tiles: a tile record's ``var`` is their weighted sum (:meth:`Calibration.tile_var`)
ADDITIVE = ("pred", "area", "het_var")
#: the method of a new calibration: free at run time, and covers a bias shared within an area
DEFAULT_METHOD = "shared"
#: nominal levels reported by evaluation and benchmarks
LEVELS = (0.8, 0.9, 0.95)


def conformal_quantile(scores: Iterable[float], level: float) -> float:
    """The ``ceil((n+1)·level)``-th smallest score (finite-sample split-conformal); inf if that exceeds n."""
    s = np.sort(np.asarray(list(scores), dtype=np.float64))
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    k = math.ceil((s.size + 1) * level - 1e-9)
    return float(s[k - 1]) if k <= s.size else math.inf


def _with_pred2(terms: Mapping[str, Any]) -> Mapping[str, Any]:
    """Add ``pred2`` = pred² (the shared relative-error term, computed on the union's own count)."""
    if "pred2" in terms or "pred" not in terms:
        return terms
    return {**terms, "pred2": np.asarray(terms["pred"], dtype=np.float64) ** 2}


@dataclass(frozen=True)
class Calibration:
    """A fitted variance model and the sorted normalised calibration scores of one method."""

    method: str
    weights: dict[str, float]
    #: variance floor: keeps scores finite where every term is ~0 (an empty unit)
    floor: float
    scores: tuple[float, ...]
    #: relative bias β of the model's counts on the calibration units
    bias: float = 0.0

    def variance(self, terms: Mapping[str, Any]) -> np.ndarray:
        """Modelled error variance ``max(Σ w_f t_f, floor)`` of counts with the given (summed) terms.

        ``terms["var"]``, when given, stands for the additive part (the sum of the tiles'
        :meth:`tile_var`); ``pred`` is then needed only for ``pred2``.
        """
        terms = _with_pred2(terms)
        feats = METHODS[self.method]
        try:
            v = terms["var"] if "var" in terms else sum(self.weights[f] * np.asarray(terms[f], dtype=np.float64)
                                                        for f in feats if f in ADDITIVE)
            v = v + sum(self.weights[f] * np.asarray(terms[f], dtype=np.float64) for f in feats if f not in ADDITIVE)
        except KeyError as e:
            raise ModelError(f"calibration method {self.method!r} needs the term {e.args[0]!r}") from None
        return np.maximum(v, self.floor)

    def tile_var(self, count: float, area: float, het: float = 0.0) -> float:
        """A tile's additive variance term (what its record's ``var`` holds): from its count, tissue pixels
        and (``hetero``) the sum of its pixels' predicted variances."""
        w = self.weights
        return w.get("pred", 0.0) * max(float(count), 0.0) + w.get("area", 0.0) * float(area) + w.get("het_var", 0.0) * het

    def quantile(self, level: float) -> float:
        """Conformal multiplier ``q`` of the normalised score at ``level``."""
        return conformal_quantile(self.scores, level)

    def interval(self, pred: Any, terms: Mapping[str, Any], level: float = 0.95) -> tuple[Any, Any]:
        """``(lo, hi)`` = ``pred ∓ q·sqrt(variance)`` clipped at 0; scalars or arrays alike."""
        half = self.quantile(level) * np.sqrt(self.variance(terms))
        p = np.asarray(pred, dtype=np.float64)
        p = p + self.bias * np.maximum(p, 0.0)
        lo, hi = np.maximum(p - half, 0.0), np.maximum(p + half, 0.0)  # counts are never negative
        return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the fitted terms for the model card)."""
        return {**asdict(self), "scores": [float(s) for s in self.scores]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        """Rebuild from :meth:`to_dict` output (or a model card's ``calibration``)."""
        if d.get("method") not in METHODS:
            raise ModelError(f"unknown calibration method {d.get('method')!r}; choose from {sorted(METHODS)}")
        try:
            return cls(d["method"], {k: float(v) for k, v in d["weights"].items()}, float(d["floor"]),
                       tuple(float(s) for s in d["scores"]), float(d.get("bias", 0.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"calibration record is incomplete or malformed: {e}") from None


def fit_calibration(true: Any, pred: Any, terms: Mapping[str, Any], method: str = "poisson") -> Calibration:
    """Fit the relative bias, the variance weights (NNLS of squared residuals on the method's terms)
    and the conformal scores."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    t = np.asarray(true, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    if t.size != p.size or t.size == 0:
        raise ValueError(f"need matching, non-empty true/pred arrays (got {t.size} and {p.size})")
    feats = METHODS[method]
    terms = _with_pred2(terms)
    x = np.column_stack([np.asarray(terms[f], dtype=np.float64).ravel() for f in feats])
    pos = np.maximum(p, 0.0)
    bias = float((t - p).sum() / pos.sum()) if pos.sum() > 0 else 0.0
    y = (t - p - bias * pos) ** 2
    norm = np.where(x.max(axis=0) > 0, x.max(axis=0), 1.0)  # scaled columns keep NNLS well conditioned
    w, _ = nnls(x / norm, y)
    w = w / norm
    floor = 1e-3 * float(y.mean()) + 1e-12
    cal = Calibration(method, {f: float(v) for f, v in zip(feats, w)}, floor, (), bias)
    scores = np.sqrt(y / cal.variance({f: x[:, i] for i, f in enumerate(feats)}))
    return Calibration(method, cal.weights, floor, tuple(float(s) for s in np.sort(scores)), bias)


def predict_tta(model: Any, image: np.ndarray, device: Any = "cpu", precision: str = "fp32") -> np.ndarray:
    """(8, H, W) densities of the 8 dihedral transforms of ``image``, mapped back to its orientation.

    Exact test-time augmentation for a fully convolutional net (:mod:`wsicount.views`); costs 8 forward passes.
    """
    from .views import predict_views

    return predict_views([model], image, device, precision, tta=True)


def crop_terms(dens: np.ndarray, points: np.ndarray, weight: float, grid: int,
               views: np.ndarray | None = None, spread: str = "tta_var",
               het: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """True (``true``) and predicted (``count``) counts and variance terms of a ``grid x grid`` split.

    ``points`` are (x, y) pixel centres, each worth ``weight`` cells; a point belongs to the
    crop holding its pixel. ``views`` (V, H, W) adds each crop's V ``view_sums`` and their
    variance as the term named ``spread`` (``tta_var``, ``ens_var``); ``het`` (H, W), a
    variance head's per-pixel variances, adds their sum ``het_var``.
    """
    h, w = dens.shape
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    pr = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1) if len(points) else np.zeros(0, int)
    pc = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1) if len(points) else np.zeros(0, int)
    rows: dict[str, list] = {"true": [], "count": [], "area": [], "view_sums": [], "het_var": []}
    for i in range(grid):
        for j in range(grid):
            sl = np.s_[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            inside = (pr >= ys[i]) & (pr < ys[i + 1]) & (pc >= xs[j]) & (pc < xs[j + 1])
            rows["true"].append(weight * inside.sum())
            rows["count"].append(float(dens[sl].sum(dtype=np.float64)))
            rows["area"].append((ys[i + 1] - ys[i]) * (xs[j + 1] - xs[j]))
            if views is not None:
                rows["view_sums"].append(views[(slice(None), *sl)].sum(axis=(1, 2), dtype=np.float64))
            if het is not None:
                rows["het_var"].append(float(het[sl].sum(dtype=np.float64)))
    out = {k: np.asarray(v, dtype=np.float64) for k, v in rows.items() if v}
    if views is not None:
        out[spread] = out["view_sums"].var(axis=1)
    out["pred"] = np.maximum(out["count"], 0.0)
    return out


def union_terms(records: Iterable[Mapping[str, Any]], spread: str = "tta_var") -> dict[str, float]:
    """Terms of a union of tiles from per-tile records ``{"sum", "area"[, "views"]}``.

    ``pred`` and ``area`` add; the term ``spread`` is the variance of the summed per-view counts.
    """
    pred, area, views = 0.0, 0.0, None
    for r in records:
        pred += max(float(r["sum"]), 0.0)
        area += float(r["area"])
        if r.get("views") is not None:
            t = np.asarray(r["views"], dtype=np.float64)
            views = t if views is None else views + t
    out = {"pred": pred, "area": area}
    if views is not None:
        out[spread] = float(np.var(views))
    return out


def card_calibration(record: Mapping[str, Any], method: str | None = None) -> Calibration | None:
    """The calibration of ``method`` from a card's ``calibration`` record (None: the card's default method).

    The record is the default method's; other calibrated methods sit in its ``methods`` mapping.
    An uncalibrated card gives None unless a method is asked for.
    """
    if method is not None and method not in METHODS:
        raise ModelError(f"unknown uncertainty method {method!r}; choose from {sorted(METHODS)}")
    if not record:
        if method is None:
            return None
        raise ModelError(f"the model has no count-interval calibration, so no {method!r} intervals; calibrate it: "
                         f"python -m wsicount.training.calibrate MODEL DATA --method {method} --save")
    return Calibration.from_dict(record if method is None else method_record(record, method))


def method_record(record: Mapping[str, Any], method: str) -> Mapping[str, Any]:
    """A card's calibration record of ``method``: the default's own, or the one under its ``methods``."""
    if method == record.get("method"):
        return record
    other = (record.get("methods") or {}).get(method)
    if other is None:
        raise ModelError(f"the model has no {method!r} calibration (calibrated: {', '.join(calibrated_methods(record))}); "
                         f"calibrate it: python -m wsicount.training.calibrate MODEL DATA --method {method} --save")
    return other


def calibrated_methods(record: Mapping[str, Any]) -> list[str]:
    """Methods a card's ``calibration`` record holds, its default first."""
    if not record:
        return []
    return [record["method"], *[m for m in (record.get("methods") or {}) if m != record["method"]]]


def cell_terms(counts: Any, tissue_mm2: Any, model_mpp: float) -> dict[str, np.ndarray]:
    """Variance terms of grid cells (or any areas) from their counts and tissue areas in mm²."""
    c = np.asarray(counts, dtype=np.float64)
    return {"pred": np.maximum(c, 0.0), "area": np.asarray(tissue_mm2, dtype=np.float64) / (model_mpp * 1e-3) ** 2}


def coverage_report(cal: Calibration, true: Any, pred: Any, terms: Mapping[str, Any],
                    levels: Iterable[float] = LEVELS) -> dict[str, dict[str, float]]:
    """Empirical ``coverage`` (share of true counts inside) and ``mean_width`` per nominal level."""
    t = np.asarray(true, dtype=np.float64)
    cov, width = {}, {}
    for lv in levels:
        lo, hi = cal.interval(pred, terms, lv)
        cov[f"{lv:g}"] = float(np.mean((t >= lo) & (t <= hi)))
        width[f"{lv:g}"] = float(np.mean(np.asarray(hi) - np.asarray(lo)))
    return {"coverage": cov, "mean_width": width}
