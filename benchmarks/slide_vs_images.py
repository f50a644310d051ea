"""A slide is counted as its images are: ``wsicount.count`` on a mosaic slide vs ``wsicount evaluate`` per image.

The dataset's images are given different brightnesses (log-uniform in [--dim, 1]), laid out on
a grid with black gaps, upsampled by ``--upsample`` (nearest neighbour) and written through the
real writer (NDPI: JPEG of quality --quality, as scanners write; OME-TIFF: lossless deflate, so
that the slide holds exactly the evaluated pixels). The slide is counted by the
pipeline with the model; the same brightness-scaled images are evaluated one by one. Printed:
the totals, and per image box (the slide's density inside the box grown by half the gap) the
relative difference to that image's prediction, and to the same slide inferred whole with each
image normalised by its own statistics (what isolates the normalisation field: the network's
response to an image's surroundings, black gaps and neighbours instead of the zero padding it
sees alone, is the rest).

    python benchmarks/slide_vs_images.py --data trp1 --upsample 4 --format ndpi
    python benchmarks/slide_vs_images.py --data trp1 --upsample 1 --format ome-tiff
    python benchmarks/slide_vs_images.py --data vgg_cells --model vgg-cells --format ome-tiff --split test
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import DATA, command, git_rev, machine  # noqa: E402


def compare(data: Path, model: str, upsample: int, fmt: str, work: Path, split: str | None = None, n: int | None = None,
            dim: float = 0.25, gap: int = 64, quality: int = 95, precision: str = "fp32", seed: int = 0,
            channel: int | None = None, mpp_fallback: float = 1.0) -> dict:
    """Build the mosaic and its image set under ``work``, count both ways; the comparison as a dict."""
    import zarr

    import wsicount
    from wsicount.models import read_card
    from wsicount.store.layout import Layout
    from wsicount.synth.mosaic import box_counts, brightness_factors, scaled, write_image_set, write_mosaic
    from wsicount.training.data import load_dataset
    from wsicount.training.evaluate import evaluate

    samples = load_dataset(data, split=split)[:n]
    card, _ = read_card(model)
    factors = brightness_factors(len(samples), dim, 1.0, seed)
    images = [scaled(s.image, f) for s, f in zip(samples, factors)]
    names = [s.name for s in samples]
    mpp = samples[0].mpp
    if channel is None and images[0].ndim == 2:
        channel = card.channels[0] if card.channels else None
    lossless = "deflate" if fmt in ("ome-tiff", "tiff") else None  # NDPI is JPEG only
    mosaic = write_mosaic(images, names, work / "mosaic", fmt, mpp or mpp_fallback, upsample, gap, channel, quality,
                          lossless)
    images_dir = write_image_set(images, names, [s.count for s in samples], work / "images", mpp)
    t = time.perf_counter()
    ev = evaluate(model, images_dir, split="test", device="cpu", precision=precision)
    t_eval = time.perf_counter() - t
    pred = {r.name: r.pred for r in ev.images}
    t = time.perf_counter()
    summary = wsicount.count(mosaic.path, work / "out", model, precision=precision, progress=False, overwrite=True,
                             mpp=None if mpp else mpp_fallback / upsample)
    t_run = time.perf_counter() - t
    dens = zarr.open_array(str(Layout(work / "out").density / "0"), mode="r")[...]
    per_box = box_counts(dens, mosaic.boxes, gap // 2)
    own = own_stats_boxes(mosaic, images, model, precision, None if mpp else mpp_fallback / upsample)
    ref = np.array([pred[k] for k in names])
    rel, rel_own = (per_box - ref) / np.maximum(ref, 1.0), (per_box - own) / np.maximum(own, 1.0)
    return {"n_images": len(names), "upsample": upsample, "format": fmt, "model": model, "precision": precision,
            "slide_total": float(summary["total_cells"]), "images_total": float(ref.sum()),
            "true_total": float(sum(s.count for s in samples)),
            "total_rel": float(summary["total_cells"] / ref.sum() - 1),
            "box_rel_max": float(np.abs(rel).max()), "box_rel_median": float(np.median(np.abs(rel))),
            "box_within_3pct": int((np.abs(rel) <= 0.03).sum()), "box_worst": names[int(np.argmax(np.abs(rel)))],
            "own_rel_max": float(np.abs(rel_own).max()), "own_rel_median": float(np.median(np.abs(rel_own))),
            "own_within_3pct": int((np.abs(rel_own) <= 0.03).sum()), "own_total_rel": float(per_box.sum() / own.sum() - 1),
            "brightness": [float(factors.min()), float(factors.max())],
            "outside": summary.get("density_outside_mask"), "seconds": {"evaluate": t_eval, "run": t_run},
            "boxes": [{"name": k, "factor": float(f), "images": float(r), "slide": float(b), "own_stats": float(o)}
                      for k, f, r, b, o in zip(names, factors, ref, per_box, own)]}


def own_stats_boxes(mosaic, images: list[np.ndarray], model: str, precision: str, mpp: float | None) -> np.ndarray:
    """Per-box counts of the slide inferred whole with each image normalised by its own statistics (as evaluate does).

    The same slide, pixels and counted region as the run; only the normalisation differs: the
    run's per-box difference to these isolates the normalisation field's share.
    """
    from wsicount.infer import pad_to_stride, pick_device, predict_batch
    from wsicount.io import open_slide
    from wsicount.models import load_model
    from wsicount.preprocess import percentile_stats, select_channels
    from wsicount.runner.config import RunConfig
    from wsicount.runner.plan import mask_scale, prepare
    from wsicount.synth.mosaic import box_counts
    from wsicount.tiling import mask_on_grid, read_model_window

    lm = load_model(model)
    sl = open_slide(mosaic.path, mpp=mpp)
    prep = prepare(sl, RunConfig(), lm.card)
    g, grow = prep.geom, mosaic.gap // 2
    x = select_channels(read_model_window(sl, g, (0, g.height, 0, g.width)), lm.card.channels)
    xn = prep.field.apply(x, (0, g.height, 0, g.width), g.height, g.width)
    for (y0, y1, x0, x1), im in zip(mosaic.boxes, images):
        off, span = percentile_stats(select_channels(im, lm.card.channels), lm.card.normalization)
        box = np.s_[:, max(0, y0 - grow) : y1 + grow, max(0, x0 - grow) : x1 + grow]
        xn[box] = (x[box] - off) / span
    d = predict_batch(lm, pad_to_stride(xn, lm.card.stride)[None], pick_device("cpu"), precision)[0, : g.height, : g.width]
    d *= mask_on_grid(prep.tissue.mask, *mask_scale(prep.tissue, g), (0, g.height, 0, g.width))
    return box_counts(d, mosaic.boxes, grow)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="trp1", help="dataset folder or a name under ../shared/data")
    ap.add_argument("--model", default="melanocyte-trp1")
    ap.add_argument("--split", default=None)
    ap.add_argument("--n", type=int, default=None, help="first N images only")
    ap.add_argument("--upsample", type=int, default=4)
    ap.add_argument("--format", default="ndpi", choices=["ndpi", "ome-tiff", "tiff"])
    ap.add_argument("--dim", type=float, default=0.25, help="dimmest brightness factor")
    ap.add_argument("--gap", type=int, default=64, help="black gap between images (image px)")
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the full comparison here")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    data = Path(a.data) if Path(a.data).exists() else DATA / a.data
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="slide_vs_images-"))
    try:
        r = compare(data, a.model, a.upsample, a.format, work, a.split, a.n, a.dim, a.gap, a.quality, a.precision)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    print(f"# {command()}  (commit {git_rev()}; {machine()})")
    n = r["n_images"]
    print("| data | model | images | slide | format | precision | evaluate total | run total | total diff "
          "| per box vs evaluate: median, max, within 3 % | per box vs own-statistics slide: median, max, within 3 % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {data.name} | {a.model} | {n} | x{a.upsample} | {a.format} | {a.precision} "
          f"| {r['images_total']:.1f} | {r['slide_total']:.1f} | {100 * r['total_rel']:+.2f} % "
          f"| {100 * r['box_rel_median']:.2f} %, {100 * r['box_rel_max']:.1f} % ({r['box_worst']}), {r['box_within_3pct']}/{n} "
          f"| {100 * r['own_rel_median']:.2f} %, {100 * r['own_rel_max']:.1f} %, {r['own_within_3pct']}/{n} |")


if __name__ == "__main__":
    main()
