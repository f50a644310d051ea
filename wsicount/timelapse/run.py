"""Counting a time-lapse stack frame by frame: densities, counts, centroids, stage timeline, cleavage times.

Frames of a time-lapse incubator (~500 x 500 px) fit in memory, so each frame is one network
input: no tiling. A whole-slide time series (one pyramid per time point) is instead counted
frame by frame through the slide path (``wsicount.count`` on each time point). Frames go
through the model in chunks of ``chunk_frames`` along t, each frame's planes normalised by
their own percentiles exactly as training normalised each image, so a frame's density does
not depend on the chunking (only on float summation order inside the network).

Resume: after a frame's density is stored, its record (count, planes used, focus scores,
centroids) is written atomically to ``OUT/.wsicount-stack/frames/NNNNNN.json``; a rerun with
the same input and parameters skips recorded frames. Every output path, and which names a stack
run owns, is defined by :class:`wsicount.store.layout.StackLayout`: ``overwrite`` removes only
those, and a folder holding anything else is refused (a resume beside it removes nothing). An unreadable frame is recorded with its
error, counted as missing (NaN; the stage fit bridges it) and reported in summary.json.

Outputs in ``OUT``: ``density.ome.zarr`` (t, y, x) float32 cells/px at the network's pixel
size; ``cells.csv`` (t, time_h, x, y in frame pixels); ``timeline.csv``
(frame, time_h, count, count_lo, count_hi, stage, planes, status); ``summary.json`` (cleavage
times t2..t8, cc2, s2, focus mode, the count interval's method and level, the growth fits,
unreadable frames); ``growth.csv`` (the field's and each ``regions`` region's count per frame, see
:mod:`.growth`); ``timeline.png``.

Per-frame intervals: each frame is one calibration unit of the model card's split-conformal
calibration (:class:`wsicount.uncertainty.Calibration`, as ``wsicount evaluate`` scores whole
images), with the terms ``pred`` (the frame's count) and ``area`` (model-grid pixels of the
frame). A card without a calibration gets empty ``count_lo``/``count_hi`` and a note saying so.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsicount.errors import FrameReadError, MissingMppError, OutputError
from wsicount.store.atomic import atomic_write
from wsicount.store.layout import STACK_DENSITY, STACK_STATE, StackLayout, remove_owned

from .focus import choose_planes
from .stack import Stack, open_stack
from .growth import GROWTH_COLUMNS, doubling_time, growth_table, load_stack_regions, region_series
from .stages import cleavage_times, fit_stages

__all__ = ["StackOptions", "count_stack", "frame_calibration", "frame_intervals", "prepare_frame", "net_to_frame", "strongest_peaks", "STATE_DIR"]

STATE_DIR = STACK_STATE
#: nominal coverage of the per-frame count intervals (the slide runs' default level)
INTERVAL_LEVEL = 0.95


@dataclass(frozen=True)
class StackOptions:
    """Parameters that change a stack's results (stored, and checked on resume)."""

    focus: str | int = "best"
    stage_penalty: float = 1.5
    max_stage: int = 8
    mpp: float | None = None
    frame_interval_min: float | None = None


def _zoom_factor(stack: Stack, card_mpp: float | None) -> float:
    """Frame-to-network scale: frames are resampled to the model's µm/px when both are known."""
    if not card_mpp or not stack.mpp:
        return 1.0
    f = stack.mpp / card_mpp
    return 1.0 if abs(f - 1.0) < 0.02 else f


def prepare_frame(frame: np.ndarray, planes: tuple[int, ...], card, zoom: float = 1.0) -> np.ndarray:
    """(len(planes), C, H', W') normalised network inputs padded to the model stride."""
    from scipy import ndimage as ndi

    from wsicount.infer import pad_to_stride
    from wsicount.preprocess import normalize_image

    out = []
    for k in planes:
        img = np.moveaxis(frame[k], 0, -1).astype(np.float32)
        if zoom != 1.0:
            img = ndi.zoom(img, (zoom, zoom, 1), order=1)
        out.append(pad_to_stride(normalize_image(img, card.channels, card.normalization), card.stride))
    return np.stack(out)


def net_to_frame(frame_shape: tuple[int, int], net_shape: tuple[int, int]) -> np.ndarray:
    """(y, x) factors from network-input pixels to frame pixels under ``ndi.zoom``'s corner-aligned grid."""
    return np.array([(f - 1) / max(n - 1, 1) for f, n in zip(frame_shape, net_shape, strict=True)])


def strongest_peaks(density: np.ndarray, peaks_yx: np.ndarray, count: float) -> np.ndarray:
    """The ``round(count)`` highest of the density's peaks (all of them when there are fewer).

    A frame holds a few large cells, so the integral is a far steadier estimate of their number
    than the number of local maxima (texture in the relief adds weak ones): centroids are
    made to agree with the count.
    """
    n = max(int(round(count)), 0)
    if len(peaks_yx) <= n:
        return peaks_yx
    iy = np.clip(np.round(peaks_yx[:, 0]).astype(int), 0, density.shape[0] - 1)
    ix = np.clip(np.round(peaks_yx[:, 1]).astype(int), 0, density.shape[1] - 1)
    keep = np.sort(np.argsort(-density[iy, ix], kind="stable")[:n])
    return peaks_yx[keep]


def _frame_record(t: int, dens: np.ndarray, choice, card, back: np.ndarray, mode: str | int) -> tuple[dict, np.ndarray]:
    """Count, centroids (frame pixels) and the stored density of one frame from its planes' densities."""
    from wsicount.detect import density_peaks

    sums = dens.reshape(len(dens), -1).sum(axis=1)
    # 'all': the median count over planes; centroids and stored density from the plane nearest it
    k = int(np.argmin(np.abs(sums - np.median(sums))))
    peaks = strongest_peaks(dens[k], density_peaks(dens[k], card.sigma_px, min_distance=card.peak_min_distance_px),
                            float(sums[k])) * back
    rec = {"frame": t, "status": "ok", "count": float(np.median(sums)), "planes": list(choice.planes),
           "plane_counts": [float(v) for v in sums], "focus_scores": list(choice.scores),
           "focus": choice.mode if mode != "all" else "all", "peaks_yx": np.round(peaks, 2).tolist()}
    return rec, dens[k]


def _foreign_message(out: Path, foreign: list[str]) -> str:
    """The refusal of a folder holding entries no stack run wrote."""
    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
    return (f"output folder {out} holds files wsicount did not write ({shown}); wsicount writes only into a new "
            "or empty folder or its own earlier output, and never removes anything else: choose another --out")


class _State:
    """Per-frame records and the parameters they were made with (:class:`~wsicount.store.layout.StackLayout`)."""

    def __init__(self, out: Path) -> None:
        self.layout = StackLayout(out)
        self.dir = self.layout.state
        self.frames = self.layout.frames

    def prepare(self, params: dict, overwrite: bool) -> bool:
        """Create, reuse or clear the folder's outputs; True when earlier records are reused.

        A folder holding entries no stack run writes is refused unless the run resumes there
        (which removes nothing); ``overwrite`` removes only the names a stack run writes.
        """
        lay, pfile = self.layout, self.layout.params
        foreign = lay.foreign()
        if foreign and (overwrite or not pfile.exists()):
            raise OutputError(_foreign_message(lay.root, foreign))
        if overwrite:
            remove_owned(lay.root, lay.owned())
        if pfile.exists():
            old = json.loads(pfile.read_text())
            if old != params:
                changed = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
                instead = "choose another --out" if foreign else "pass --overwrite or choose another --out"
                raise OutputError(f"{lay.root} holds results made with other settings ({', '.join(changed)}); "
                                  + instead)
            return True
        if lay.has_outputs():
            raise OutputError(f"output folder {lay.root} holds wsicount stack outputs but no record of their run "
                              f"({pfile.relative_to(lay.root)}); use --overwrite to replace them, or another --out")
        self.frames.mkdir(parents=True, exist_ok=True)
        atomic_write(pfile, json.dumps(params, indent=1, sort_keys=True))
        return False

    def done(self) -> dict[int, dict]:
        """Records written so far, by frame."""
        return {int(p.stem): json.loads(p.read_text()) for p in sorted(self.frames.glob("*.json"))}

    def write(self, rec: dict) -> None:
        """Write one frame's record atomically (after its density is stored)."""
        atomic_write(self.layout.frame_record(rec["frame"]), json.dumps(rec))


def _params(stack: Stack, card, opts: StackOptions) -> dict:
    """What the results depend on: the input's identity, the model and the options."""
    st = stack.path.stat()
    return {"input": str(stack.path.resolve()), "input_mtime": int(st.st_mtime), "frames": stack.n_frames,
            "shape": list(stack.data.shape), "model": card.name, "model_arch": card.arch, **asdict(opts)}


def _run_chunk(stack: Stack, ts: list[int], model, device, precision: str, batch_size: int, opts: StackOptions,
               zoom: float) -> list[tuple[dict, np.ndarray | None]]:
    """Records and stored densities of frames ``ts``: read, choose planes, one batched pass, detect."""
    from wsicount.infer import predict_batch

    card = model.card
    reads, inputs, owners = {}, [], []
    for t in ts:
        try:
            frame = stack.read_frame(t)
        except FrameReadError as e:
            reads[t] = ({"frame": t, "status": "unreadable", "error": str(e), "count": None}, None)
            continue
        choice = choose_planes(frame, opts.focus)
        x = prepare_frame(frame, choice.planes, card, zoom)
        reads[t] = choice
        inputs.extend(x)
        owners.extend([t] * len(x))
    dens = []
    for i in range(0, len(inputs), max(1, batch_size)):
        dens.extend(predict_batch(model, np.stack(inputs[i:i + batch_size]), device, precision))
    h, w = (int(round(s * zoom)) for s in stack.data.shape[-2:])
    owners_arr = np.array(owners)
    out = []
    for t in ts:
        if isinstance(reads[t], tuple):
            out.append(reads[t])
            continue
        d = np.stack([dens[i][:h, :w] for i in np.flatnonzero(owners_arr == t)])
        out.append(_frame_record(t, d, reads[t], card, net_to_frame(stack.data.shape[-2:], (h, w)), opts.focus))
    return out


def count_stack(path: str | Path, out: str | Path, model: Any = None, *, focus: str | int = "best",
                chunk_frames: int = 8, batch_size: int = 4, device: str = "cpu", precision: str = "fp32",
                mpp: float | None = None, frame_interval_min: float | None = None, times_csv: str | Path | None = None,
                stage_penalty: float = 1.5, max_stage: int = 8, overwrite: bool = False,
                regions: str | Path | None = None, regions_units: str | None = None,
                regions_scale: float = 1.0) -> dict:
    """Count every frame of a stack (file or folder of frames) into ``out``; returns the summary dict.

    ``model`` is a bundled name, a card path or a :class:`~wsicount.models.LoadedModel`
    (default: the bundled ``blastomere`` model). ``regions`` (a QuPath GeoJSON export or a label
    image, in frame pixels; ``regions_units``/``regions_scale`` as for slides) adds each region's
    count per frame to growth.csv and its doubling time to summary.json.
    """
    from wsicount.infer import pick_device
    from wsicount.models import LoadedModel, load_model

    t0 = time.perf_counter()
    stack = open_stack(path, mpp=mpp, frame_interval_min=frame_interval_min, times_csv=times_csv)
    lm = model if isinstance(model, LoadedModel) else load_model(model or "blastomere")
    if lm.card.mpp and not stack.mpp:
        raise MissingMppError(f"{stack.path.name} carries no pixel size and model {lm.card.name!r} expects "
                              f"{lm.card.mpp} µm/px: pass --mpp (a time-lapse incubator's frames: about 0.5)")
    user_regions = None
    if regions is not None:
        user_regions = load_stack_regions(str(regions), tuple(stack.data.shape[-2:]), stack.mpp, regions_units,
                                          regions_scale)
    dev = pick_device(device)
    opts = StackOptions(focus, stage_penalty, max_stage, mpp, frame_interval_min)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    state = _State(outp)
    resumed = state.prepare(_params(stack, lm.card, opts), overwrite)
    zoom = _zoom_factor(stack, lm.card.mpp)
    zarr_arr = _density_store(state.layout.density, stack, zoom, lm.card.mpp or stack.mpp, resumed)
    if user_regions is not None:  # every region covers model-grid pixels (and a label image the frame): before inference
        from wsicount.regions import region_counts

        region_counts(user_regions, np.zeros(zarr_arr.shape[1:], np.float32), None, 1.0 / zoom)
    done = state.done()
    todo = [t for t in range(stack.n_frames) if t not in done]
    for i in range(0, len(todo), max(1, chunk_frames)):
        for rec, dens in _run_chunk(stack, todo[i:i + chunk_frames], lm, dev, precision, batch_size, opts, zoom):
            if dens is not None:
                zarr_arr[rec["frame"]] = dens.astype(np.float32)
            state.write(rec)
            done[rec["frame"]] = rec
    records = [done[t] for t in range(stack.n_frames)]
    summary = _write_outputs(outp, stack, lm.card, opts, records, resumed, time.perf_counter() - t0,
                             int(np.prod(zarr_arr.shape[1:])))
    return _write_growth(outp, stack, lm.card, summary, zarr_arr, user_regions, 1.0 / zoom)


def _density_store(path: Path, stack: Stack, zoom: float, mpp: float | None, resumed: bool):
    """The (t, y, x) density OME-Zarr: reopened on resume, created otherwise."""
    import zarr

    from .write import create_ome_zarr

    if resumed and path.exists():
        return zarr.open_group(str(path), mode="r+")["0"]
    h, w = (int(round(s * zoom)) for s in stack.data.shape[-2:])
    times = stack.times_h if np.isfinite(stack.times_h).all() else None
    return create_ome_zarr(path, (stack.n_frames, h, w), "float32", times, mpp, axes="tyx")


def _csv_bytes(header: list[str], rows: list[list]) -> str:
    """CSV text of a header and rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def frame_calibration(card) -> tuple[Any, dict, str]:
    """The card's calibration a frame's own prediction can use (``poisson``/``shared``: terms pred, area, pred2),
    its record, and a note; (None, {}, why) when there is none."""
    from wsicount.uncertainty import METHODS, calibrated_methods, card_calibration

    rec = card.calibration or {}
    usable = [m for m in calibrated_methods(rec) if set(METHODS[m]) <= {"pred", "area", "pred2"}]
    if not usable:
        why = (f"model {card.name!r} carries no count calibration" if not rec else
               f"model {card.name!r} is calibrated only for {', '.join(calibrated_methods(rec))}, whose extra terms a "
               "stack run does not compute")
        return None, {}, (f"{why}, so no interval is given (calibrate it: python -m wsicount.training.calibrate "
                          f"{card.name} DATA --method shared --save)")
    m = usable[0]
    return card_calibration(rec, m), (rec if m == rec.get("method") else rec["methods"][m]), ""


def frame_intervals(card, counts: np.ndarray, area_px: int,
                    level: float = INTERVAL_LEVEL) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Per-frame ``(lo, hi)`` at ``level`` from the card's calibration (NaN where a frame has no count),
    and the summary's description of the interval; all NaN and a note when the card has none."""
    c = np.asarray(counts, dtype=np.float64)
    nan = np.full(c.shape, np.nan)
    cal, rec, why = frame_calibration(card)
    if cal is None:
        return nan, nan.copy(), {"method": None, "level": None, "note": why}
    ok = np.isfinite(c)
    lo, hi = nan, nan.copy()
    if ok.any():
        lo[ok], hi[ok] = cal.interval(c[ok], {"pred": np.maximum(c[ok], 0.0), "area": np.full(ok.sum(), float(area_px))},
                                      level)
    meta = {k: rec[k] for k in ("data", "split", "units", "n_units", "date") if k in rec}
    return lo, hi, {"method": cal.method, "level": level, "unit": "one frame (as one calibration image)",
                    "calibration": meta,
                    "note": "split-conformal interval of the model card's calibration: it covers a frame's true "
                            f"count with probability >= {level:g} when frames resemble the calibration images"}


def _fmt(v: float, spec: str = ".3f") -> str:
    """A CSV number, or empty for NaN."""
    return f"{v:{spec}}" if np.isfinite(v) else ""


def _write_outputs(out: Path, stack: Stack, card, opts: StackOptions, records: list[dict], resumed: bool,
                   seconds: float, area_px: int) -> dict:
    """timeline.csv, cells.csv and timeline.png from the frame records; the summary (written with growth.csv)."""
    from .plot import timeline_png

    lay = StackLayout(out)
    times = stack.times_h
    counts = np.array([np.nan if r["count"] is None else r["count"] for r in records])
    lo, hi, interval = frame_intervals(card, counts, area_px)
    stages = fit_stages(counts, penalty=opts.stage_penalty, max_stage=opts.max_stage)
    have_times = bool(np.isfinite(times).all())
    ct = cleavage_times(stages, times if have_times else None)
    fmt_t = (lambda v: f"{v:.4f}") if have_times else (lambda v: "")
    rows = [[r["frame"], fmt_t(times[i]), _fmt(counts[i]), _fmt(lo[i]), _fmt(hi[i]), int(stages[i]),
             " ".join(str(p) for p in r.get("planes", [])), r["status"]] for i, r in enumerate(records)]
    atomic_write(lay.file("timeline.csv"), _csv_bytes(["frame", "time_h", "count", "count_lo", "count_hi", "stage",
                                                       "planes", "status"], rows))
    cells = [[r["frame"], fmt_t(times[i]), f"{x:.2f}", f"{y:.2f}"]
             for i, r in enumerate(records) for y, x in r.get("peaks_yx", [])]
    atomic_write(lay.file("cells.csv"), _csv_bytes(["t", "time_h", "x", "y"], cells))
    bad = [{"frame": r["frame"], "error": r["error"]} for r in records if r["status"] != "ok"]
    events = ct.hours if have_times else {k: (None if v is None else float(v)) for k, v in ct.frames.items()}
    png = timeline_png(times if have_times else np.arange(len(records)), counts, stages, events,
                       f"{stack.path.name}: cells per frame", "time (h)" if have_times else "frame",
                       band=(lo, hi, interval["level"]) if interval["method"] else None,
                       growth=doubling_time(times, counts) if have_times else None)
    atomic_write(lay.file("timeline.png"), png)
    summary = {
        "input": str(stack.path), "kind": stack.kind, "frames": stack.n_frames, "planes": int(stack.data.sizes["z"]),
        "frame_shape": list(stack.data.shape[-2:]), "mpp": stack.mpp, "time_source": stack.time_source,
        "model": card.name, "focus": {"mode": opts.focus, "planes_per_frame": [r.get("planes") for r in records]},
        "counts": [None if not np.isfinite(c) else round(float(c), 3) for c in counts],
        "count_interval": interval,
        "stages": [int(s) for s in stages], "cleavage": ct.as_dict(),
        "stage_fit": {"penalty": opts.stage_penalty, "max_stage": opts.max_stage},
        "count_lo": [None if not np.isfinite(v) else round(float(v), 3) for v in lo],
        "count_hi": [None if not np.isfinite(v) else round(float(v), 3) for v in hi],
        "unreadable_frames": bad, "resumed": resumed, "seconds": round(seconds, 2),
        "outputs": {"density": STACK_DENSITY, "timeline": "timeline.csv", "cells": "cells.csv",
                    "plot": "timeline.png", "growth": "growth.csv"},
    }
    return summary


def _write_growth(out: Path, stack: Stack, card, summary: dict, density, regions, scale: float) -> dict:
    """growth.csv (the field and each user region per frame), the doubling times, then summary.json (written last)."""
    lay, nan = StackLayout(out), np.nan
    field = {k: np.array([nan if v is None else v for v in summary[key]])
             for k, key in (("count", "counts"), ("lo", "count_lo"), ("hi", "count_hi"))}
    per_region = {}
    if regions is not None:
        cal = frame_calibration(card)[0]
        per_region = region_series(regions, density, np.isfinite(field["count"]), scale, card.mpp or stack.mpp, cal,
                                   INTERVAL_LEVEL)
    times = stack.times_h if np.isfinite(stack.times_h).all() else None
    rows, growth = growth_table(times, field, per_region, level=INTERVAL_LEVEL)
    atomic_write(lay.file("growth.csv"), _csv_bytes(GROWTH_COLUMNS, rows))
    summary["growth"] = growth
    atomic_write(lay.file("summary.json"), json.dumps(summary, indent=1))
    return summary
