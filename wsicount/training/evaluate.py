"""Evaluating a density model on an annotated dataset split: counts, detections, reports.

Count metrics (:func:`count_metrics`) compare the true count ``c`` (the manifest's count) with
the predicted ``ĉ`` (the density map's sum) per image. Detection metrics match density peaks
(:func:`wsicount.detect.density_peaks`) to the annotated points one-to-one within a radius
(default 1.5 x the model card's sigma_px, about a cell radius) and are micro-averaged: TP,
FP and FN are summed over images before precision / recall / F1 are formed. All rates are
fractions, not percentages.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np

from .data import Sample, load_dataset
from .scale import to_input_scale
from ..channels import resolve_channel
from ..detect import density_peaks, match_points
from ..errors import InputError, OutputError
from ..infer import pick_device, predict_image, predict_in_context, resolve_precision
from ..models import LoadedModel, load_model
from ..store.atomic import atomic_write_with, jsonable
from ..uncertainty import LEVELS, Calibration, card_calibration, coverage_report
from ..views import VIEW_METHODS, method_models, predict_views

__all__ = ["count_metrics", "ImageResult", "EvalResult", "evaluate", "write_evaluation", "file_sha256"]

#: how a lone image is framed for prediction (see :func:`evaluate`)
CONTEXTS = ("none", "background")
CSV_FIELDS = ["name", "true", "pred", "abs_err", "rel_err", "n_points", "n_peaks", "tp", "fp", "fn", "mean_dist_px",
              "lo", "hi"]
#: level of the per-image ``lo``/``hi`` columns
INTERVAL_LEVEL = 0.95


def count_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, A-err, T-err, bias and means of per-image counts.

    ``a_err`` = mean(|c - ĉ| / c) over the images with c > 0 only (a relative error is
    undefined for an empty image; ``a_err_n_images`` says how many were used; NaN if none).
    ``t_err`` = sum|c - ĉ| / sum c (NaN if sum c = 0). ``bias`` = mean(ĉ - c).
    """
    t = np.asarray(true, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"true and pred differ in length ({t.size} vs {p.size})")
    n = t.size
    if n == 0:
        raise ValueError("no images to score")
    err = p - t
    pos = t > 0
    total = float(t.sum())
    return {
        "n_images": int(n),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "a_err": float(np.mean(np.abs(err[pos]) / t[pos])) if pos.any() else math.nan,
        "a_err_n_images": int(pos.sum()),
        "t_err": float(np.abs(err).sum() / total) if total > 0 else math.nan,
        "bias": float(err.mean()),
        "mean_true": float(t.mean()),
        "mean_pred": float(p.mean()),
    }


@dataclass
class ImageResult:
    """Per-image outcome: counts, their errors, and the detection match."""

    name: str
    true: float
    pred: float
    abs_err: float
    #: |c - ĉ| / c; NaN when c = 0
    rel_err: float
    n_points: int
    n_peaks: int
    tp: int
    fp: int
    fn: int
    #: mean distance of matched pairs in px; NaN without matches
    mean_dist_px: float
    #: the calibrated INTERVAL_LEVEL interval of the count; NaN when the model is uncalibrated
    lo: float = math.nan
    hi: float = math.nan


@dataclass
class EvalResult:
    """Dataset-level metrics, per-image rows and what was evaluated."""

    model: str
    model_path: str
    data: str
    split: str
    match_radius_px: float
    metrics: dict[str, Any]
    images: list[ImageResult] = field(default_factory=list)
    #: the precision inference actually ran at ('auto' resolved)
    precision: str = "fp32"
    #: sha256 of the model card and of the weights file evaluated, so a score names its model exactly
    card_sha256: str = ""
    weights_sha256: str = ""
    #: how each image was framed for prediction (:data:`CONTEXTS`)
    context: str = "none"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _detection_metrics(matches: list, mpps: list[float | None]) -> dict[str, Any]:
    """Micro-averaged precision / recall / F1 and mean localisation error (px, and um if known)."""
    tp = sum(m.tp for m in matches)
    fp = sum(m.fp for m in matches)
    fn = sum(m.fn for m in matches)
    d_px = np.concatenate([m.distances for m in matches]) if matches else np.zeros(0)
    out: dict[str, Any] = {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
        "loc_error_px": float(d_px.mean()) if d_px.size else math.nan,
        "loc_error_um": None,
    }
    if all(mpp is not None for mpp in mpps) and d_px.size:
        d_um = np.concatenate([m.distances * mpp for m, mpp in zip(matches, mpps)])
        out["loc_error_um"] = float(d_um.mean())
    return out


def _load(model: str | os.PathLike | LoadedModel | None, device: str) -> LoadedModel:
    """Accept an already-loaded model or anything :func:`load_model` resolves."""
    if isinstance(model, LoadedModel):
        return model
    return load_model(model, device=pick_device(device))


def _samples(root: Path, split: str | None, names: Collection[str] | None, lm: LoadedModel) -> list[Sample]:
    """The split's samples (only ``names`` when given), at the card's input scale (:mod:`.scale`)."""
    if not root.exists():
        raise InputError(f"dataset folder {root} does not exist")
    try:
        samples = load_dataset(root, split=split)
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    if names is not None:
        keep = set(names)
        samples = [s for s in samples if s.name in keep]
    if not samples:
        raise InputError(f"dataset {root} has no images in split {split!r}" + (" with those names" if names else ""))
    card = lm.card
    return to_input_scale(samples, card.input_scale, card.channels, card.mpp)


def _score_image(lm: LoadedModel, s: Sample, dens: np.ndarray, pred: float, radius: float) -> tuple[ImageResult, Any]:
    """The image's row and its peak-to-point match."""
    card = lm.card
    peaks = density_peaks(dens, card.sigma_px, min_distance=card.peak_min_distance_px)
    m = match_points(peaks, s.points[:, ::-1], radius)  # points are (x, y); peaks (y, x)
    err = abs(pred - s.count)
    row = ImageResult(
        name=s.name, true=float(s.count), pred=pred, abs_err=err,
        rel_err=err / s.count if s.count > 0 else math.nan, n_points=len(s.points),
        n_peaks=len(peaks), tp=m.tp, fp=m.fp, fn=m.fn,
        mean_dist_px=float(m.distances.mean()) if m.tp else math.nan,
    )
    return row, m


def evaluate(
    model: str | os.PathLike | LoadedModel | None,
    data: str | os.PathLike,
    split: str = "test",
    device: str = "cpu",
    precision: str = "auto",
    match_radius_px: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    names: Collection[str] | None = None,
    on_image: Callable[[Sample, np.ndarray], None] | None = None,
    channel: str | None = None,
    context: str = "none",
    uncertainty: str | None = None,
) -> EvalResult:
    """Predict every image of ``split`` in dataset folder ``data`` and score counts and detections.

    ``model`` is a bundled name, a card/weights path, a model folder or a :class:`LoadedModel`.
    ``split=None`` takes every split; ``names`` keeps only those images. ``progress(i, n)`` is
    called after each image and ``on_image(sample, density)`` with each density when given.
    A calibrated model (``card.calibration``) adds each image's interval and the ``coverage``
    and ``mean_width`` of its method at the nominal levels. ``channel`` (a name or index, see
    :func:`wsicount.channels.resolve_channel`) replaces the card's channel of a one-channel model
    on RGB images; a gray image is that channel already. A card with an ``input_scale`` rule has
    each image resampled by it first; points, pixel distances and the match radius are then in
    network-input pixels, and the count is the same cells'. ``context``: ``none`` predicts each image
    alone (:func:`wsicount.infer.predict_image`, the framing the network was trained in);
    ``background`` lays it on the slide background and counts the image grown by the receptive
    radius (:func:`wsicount.infer.predict_in_context`: what ``wsicount run`` counts for it on a
    slide). Peaks and detections are taken on the image itself either way. ``uncertainty`` picks
    the calibrated interval method (None: the card's default); with a view method (tta, ensemble,
    mcdropout) each image's density, count and peaks are the views' mean, as ``wsicount run``
    counts with it, and ``context`` must be ``none``.
    """
    if context not in CONTEXTS:
        raise InputError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
    lm = _with_channel(_load(model, device), channel)
    root = Path(data)
    samples = _samples(root, split, names, lm)
    card = lm.card
    radius = float(match_radius_px) if match_radius_px is not None else 1.5 * card.sigma_px
    dev = pick_device(device)
    precision = resolve_precision(dev, precision, card)
    cal = card_calibration(card.calibration, uncertainty)
    if cal is not None and cal.method in VIEW_METHODS and context != "none":
        raise InputError(f"the {cal.method} method counts each image alone: use context 'none'")
    aux = method_models(lm, cal.method, dev) if cal is not None else (None, None)
    rows, matches, terms = [], [], []
    for i, s in enumerate(samples):
        dens, pred, t = _run_image(lm, s, dev, precision, context, cal, on_image, aux)
        if t is not None:
            terms.append(t)
        row, m = _score_image(lm, s, dens, pred, radius)
        rows.append(row)
        matches.append(m)
        if progress is not None:
            progress(i + 1, len(samples))
    metrics = count_metrics([r.true for r in rows], [r.pred for r in rows])
    metrics.update(_detection_metrics(matches, [s.mpp for s in samples]))
    if cal is not None:
        metrics.update(_intervals(cal, rows, terms))
    return EvalResult(
        model=card.name, model_path=str(lm.path), data=str(root), split=split,
        match_radius_px=radius, metrics=metrics, images=rows, precision=precision,
        card_sha256=file_sha256(lm.path), weights_sha256=file_sha256(Path(lm.path).with_suffix(".safetensors")),
        context=context,
    )


def _with_channel(lm: LoadedModel, channel: str | None) -> LoadedModel:
    """``lm`` reading ``channel`` (a name or index) instead of its card's, when given."""
    if channel is None:
        return lm
    picked = resolve_channel(channel, ["R", "G", "B"], lm.card.channels, len(lm.card.channels))
    return replace(lm, card=replace(lm.card, channels=picked))


def _run_image(lm: LoadedModel, s: Sample, dev: Any, precision: str, context: str, cal: Calibration | None,
               on_image: Callable[[Sample, np.ndarray], None] | None,
               aux: tuple[list[Any] | None, Any]) -> tuple[np.ndarray, float, dict | None]:
    """The image's density, count and (for a calibrated model) interval terms in ``context``.

    ``aux`` is :func:`wsicount.views.method_models` of the interval method: with view models the
    density is the views' mean and the spread of their counts is the method's term; with a
    variance head its summed per-pixel variance is ``het_var``.
    """
    views, head = aux
    if views is not None:
        v = predict_views(views, s.image, dev, precision, tta=cal.method == "tta")
        dens = v.mean(axis=0)
        sums = v.sum(axis=(1, 2), dtype=np.float64)
        pred, t = float(sums.mean()), {VIEW_METHODS[cal.method]: float(sums.var())}
    else:
        dens, pred = _predict(lm, s.image, dev, precision, context)
        t = {}
    if on_image is not None:
        on_image(s, dens)
    if cal is None:
        return dens, pred, None
    if head is not None:
        from ..models.variance import predict_variance

        t["het_var"] = float(predict_variance(lm, head, s.image)[1].sum(dtype=np.float64))
    t.update(area=float(dens.size), pred=max(pred, 0.0))
    return dens, pred, t


def _predict(lm: LoadedModel, image: np.ndarray, dev: Any, precision: str, context: str) -> tuple[np.ndarray, float]:
    """(density on the image's pixels, the image's count) in ``context`` (see :func:`evaluate`)."""
    if context == "none":
        dens = predict_image(lm, image, device=dev, precision=precision)
        return dens, float(dens.sum(dtype=np.float64))
    d = predict_in_context(lm, image, device=dev, precision=precision)
    r = lm.card.receptive_radius
    return d[r : d.shape[0] - r, r : d.shape[1] - r], float(d.sum(dtype=np.float64))


def _intervals(cal: Calibration, rows: list[ImageResult], terms: list[dict[str, float]]) -> dict[str, Any]:
    """Fill each row's lo/hi at INTERVAL_LEVEL; the coverage and mean width at each nominal level."""
    stacked = {k: np.array([t[k] for t in terms]) for k in terms[0]}
    pred = np.array([r.pred for r in rows])
    lo, hi = cal.interval(pred, stacked, INTERVAL_LEVEL)
    for r, a, b in zip(rows, lo, hi):
        r.lo, r.hi = float(a), float(b)
    rep = coverage_report(cal, [r.true for r in rows], pred, stacked, LEVELS)
    return {"interval_method": cal.method, "interval_level": INTERVAL_LEVEL, **rep}


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """:func:`~wsicount.store.atomic_write_with`, creating the folder; OS errors become OutputError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_with(path, write)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def _summary(result: EvalResult) -> dict[str, Any]:
    """The JSON report: what was evaluated plus every dataset-level metric."""
    head = {"model": result.model, "model_path": result.model_path, "data": result.data,
            "split": result.split, "match_radius_px": result.match_radius_px,
            "inference_precision": result.precision, "card_sha256": result.card_sha256,
            "weights_sha256": result.weights_sha256, "context": result.context}
    return jsonable({**head, **result.metrics})


def _csv_text(result: EvalResult) -> str:
    """Per-image rows as CSV text (NaN written as an empty field)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in result.images:
        row = asdict(r)
        w.writerow({k: ("" if isinstance(row[k], float) and not math.isfinite(row[k]) else row[k]) for k in CSV_FIELDS})
    return buf.getvalue()


def _plot(result: EvalResult, path: str) -> None:
    """Scatter of predicted vs true counts with the identity line, metrics in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = np.array([r.true for r in result.images])
    p = np.array([r.pred for r in result.images])
    m = result.metrics
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas without pyplot: no global state, no display needed
    ax = fig.add_subplot(111)
    lo = float(min(t.min(initial=0), p.min(initial=0)))  # an untrained model can predict < 0
    hi = float(max(t.max(initial=0), p.max(initial=0), lo + 1.0))
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--", label="identity")
    ax.scatter(t, p, s=14, alpha=0.8)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="true count", ylabel="predicted count", aspect="equal")
    a_err = m.get("a_err", math.nan)
    a_txt = f"{100 * a_err:.1f}%" if math.isfinite(a_err) else "n/a"
    ax.set_title(
        f"{result.model} on {Path(result.data).name} ({result.split}, n={m['n_images']})\n"
        f"MAE {m['mae']:.2f}  RMSE {m['rmse']:.2f}  A-err {a_txt}  F1 {m.get('f1', math.nan):.3f}",
        fontsize=9,
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_evaluation(
    result: EvalResult,
    json_path: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Write the JSON summary, per-image CSV and scatter PNG (each atomically); returns the paths."""
    written = []
    if json_path is not None:
        text = json.dumps(_summary(result), indent=2, allow_nan=False) + "\n"
        written.append(_atomic_write(Path(json_path), lambda f: Path(f).write_text(text)))
    if csv_path is not None:
        text = _csv_text(result)
        written.append(_atomic_write(Path(csv_path), lambda f: Path(f).write_text(text)))
    if plot_path is not None:
        written.append(_atomic_write(Path(plot_path), lambda f: _plot(result, f)))
    return written
