"""Time-lapse accuracy and speed of the ``blastomere`` model on held-out synthetic embryo stacks.

    nice -n 10 python benchmarks/timelapse.py [--model blastomere] [--stacks 4] [--frames 100] [--out /tmp/tl-bench]

Stacks are rendered by ``wsicount.synth.embryo`` with seeds the training never used (3000..),
at the default settings and at ``HARD`` ones (more fragments, dimmer, more blur, noise and JPEG
loss than any training stack), written as OME-TIFF, a folder of JPEG frames (counted with
``mpp=0.5``) and OME-Zarr in turn, and counted by ``count_stack`` exactly as ``wsicount run``
does. Per setting it reports: per-frame count accuracy (rounded count == truth) and MAE;
per-frame stage accuracy (fitted stage == true cell number, 1-8 cells, the Cell-Net paper's
86.1 % figure); t2, t3, t4, t5, t8 errors in frames and hours and the share within one frame;
detection F1 (a detection within 10 µm of a blastomere centre, one-to-one) and the mean
centroid error in frame pixels (0.5 µm/px; the paper reports 6.6 px at its own resolution);
throughput in frames/s on one CPU thread (the whole pipeline: decode, focus, network, detection);
and, when the model card carries a count calibration, the per-frame 95 % interval's coverage
(share of frames whose true count lies in [count_lo, count_hi]) and its mean width in cells.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine  # noqa: E402

from wsicount.detect import match_points  # noqa: E402
from wsicount.synth.embryo import HARD, EmbryoParams, synth_embryo  # noqa: E402
from wsicount.timelapse.run import count_stack  # noqa: E402

FORMATS = (("ome-tiff", "e{}.ome.tif"), ("frames", "e{}"), ("ome-zarr", "e{}.ome.zarr"))
MATCH_UM = 10.0


def score_stack(summary: dict, out: Path, truth, mpp: float) -> dict:
    """Per-frame and per-event errors of one counted stack against its truth."""
    counts = np.array([np.nan if c is None else c for c in summary["counts"]])
    lo = np.array([np.nan if v is None else v for v in summary["count_lo"]])
    hi = np.array([np.nan if v is None else v for v in summary["count_hi"]])
    has = np.isfinite(lo) & np.isfinite(hi)
    stages = np.array(summary["stages"])
    true = np.minimum(truth.counts, 8)
    cl = summary["cleavage"]["frames"]
    ev = {k: (None if cl[k] is None or truth.cleavage_frames[k] is None else cl[k] - truth.cleavage_frames[k])
          for k in truth.cleavage_frames}
    ev_h = {k: (None if v is None else float(truth.times_h[cl[k]] - truth.times_h[truth.cleavage_frames[k]]))
            for k, v in ev.items()}
    with open(out / "cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    tp = fp = fn = 0
    dists = []
    for t, cells in enumerate(truth.cells):
        pred = np.array([[float(r["y"]), float(r["x"])] for r in rows if int(r["t"]) == t]).reshape(-1, 2)
        m = match_points(pred, cells[:, [1, 0]], MATCH_UM / mpp)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        dists += list(m.distances)
    return {"count_ok": int(np.sum(np.round(counts) == truth.counts)), "abs_err": float(np.nansum(np.abs(counts - truth.counts))),
            "stage_ok": int(np.sum(stages == true)), "frames": len(counts), "events": ev, "events_h": ev_h,
            "missed_events": [k for k, v in ev.items() if v is None and truth.cleavage_frames[k] is not None],
            "tp": tp, "fp": fp, "fn": fn, "dists": dists, "seconds": summary["seconds"],
            "ci_frames": int(has.sum()), "ci_in": int(np.sum((truth.counts[has] >= lo[has]) & (truth.counts[has] <= hi[has]))),
            "ci_width": float(np.sum(hi[has] - lo[has]))}


def aggregate(scores: list[dict]) -> dict:
    """Totals over the stacks of one setting."""
    n = sum(s["frames"] for s in scores)
    errs = [abs(v) for s in scores for v in s["events"].values() if v is not None]
    errs_h = [abs(v) for s in scores for v in s["events_h"].values() if v is not None]
    n_events = sum(len(s["events"]) for s in scores)
    tp, fp, fn = (sum(s[k] for s in scores) for k in ("tp", "fp", "fn"))
    d = [x for s in scores for x in s["dists"]]
    return {"frames": n, "count_acc": sum(s["count_ok"] for s in scores) / n,
            "count_mae": sum(s["abs_err"] for s in scores) / n, "stage_acc": sum(s["stage_ok"] for s in scores) / n,
            "events": n_events, "events_within_1": sum(e <= 1 for e in errs) / max(n_events, 1),
            "event_err_frames": float(np.mean(errs)) if errs else None,
            "event_err_h": float(np.mean(errs_h)) if errs_h else None,
            "missed_events": sum(len(s["missed_events"]) for s in scores),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1), "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "centroid_err_px": float(np.mean(d)) if d else None,
            "frames_per_s": n / sum(s["seconds"] for s in scores),
            **_interval_scores(scores)}


def _interval_scores(scores: list[dict]) -> dict:
    """Per-frame 95 % interval coverage and mean width (None when the model has no calibration)."""
    m = sum(s["ci_frames"] for s in scores)
    return {"ci95_coverage": sum(s["ci_in"] for s in scores) / m if m else None,
            "ci95_mean_width": sum(s["ci_width"] for s in scores) / m if m else None,
            "ci95_coverage_by_stack": [s["ci_in"] / s["ci_frames"] if s["ci_frames"] else None for s in scores]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="blastomere")
    ap.add_argument("--stacks", type=int, default=4, help="Stacks per setting.")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("/tmp/timelapse-bench"))
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    results = {}
    for setting, extra in (("default", {}), ("hard", HARD)):
        scores = []
        for i in range(a.stacks):
            seed = 3000 + i + (100 if setting == "hard" else 0)
            fmt, name = FORMATS[i % len(FORMATS)]
            p = dataclasses.replace(EmbryoParams(n_frames=a.frames, well=i + 1), **extra)
            path = a.out / setting / name.format(seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            truth = synth_embryo(path, format=fmt, params=p, seed=seed)
            out = a.out / setting / f"out{seed}"
            t0 = time.perf_counter()
            s = count_stack(path, out, a.model, mpp=p.mpp, overwrite=True)
            s["seconds"] = time.perf_counter() - t0
            scores.append(score_stack(s, out, truth, p.mpp))
            print(f"{setting} seed {seed} ({fmt}): events {scores[-1]['events']}", flush=True)
        results[setting] = aggregate(scores)
        print(setting, json.dumps(results[setting], indent=1), flush=True)
    results["machine"] = machine()
    results["command"] = "python benchmarks/timelapse.py " + " ".join(sys.argv[1:])
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    print(table(results, a))


def table(r: dict, a: argparse.Namespace) -> str:
    """The BENCHMARKS.md table."""
    lines = ["| setting | frames | count acc. | count MAE | stage acc. (paper 86.1 %) | t2..t8 within 1 frame | "
             "mean event error (frames / h) | detection F1 | centroid error (px, paper 6.6) | frames/s (1 thread) | "
             "95 % interval: coverage / mean width (cells) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in ("default", "hard"):
        m = r[k]
        ci = "-" if m["ci95_coverage"] is None else f"{100 * m['ci95_coverage']:.1f} % / {m['ci95_mean_width']:.2f}"
        ev = "-" if m["event_err_frames"] is None else f"{m['event_err_frames']:.2f} / {m['event_err_h']:.2f}"
        lines.append(f"| {k} | {m['frames']} | {100 * m['count_acc']:.1f} % | {m['count_mae']:.2f} | "
                     f"{100 * m['stage_acc']:.1f} % | {100 * m['events_within_1']:.0f} % of {m['events']} | {ev} | "
                     f"{m['f1']:.3f} | {m['centroid_err_px']:.1f} | {m['frames_per_s']:.1f} | {ci} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
