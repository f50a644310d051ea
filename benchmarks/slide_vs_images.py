"""A slide is counted as its images are: ``wsicount.count`` on a mosaic slide vs ``wsicount evaluate`` per image.

The dataset's images are given different brightnesses (log-uniform in [--dim, 1]), laid out on
a grid with black gaps, upsampled by ``--upsample`` (nearest neighbour) and written through the
real writer (NDPI: JPEG of quality --quality, as scanners write; OME-TIFF: lossless deflate, so
that the slide holds exactly the evaluated pixels). The slide is counted by the pipeline with
the model; the same brightness-scaled images are evaluated one by one.

Fair construction: each image's box is counted with a rim of the receptive radius r (a cell at
the image's edge spreads density onto the black beyond it), and the gap (default: the smallest
stride multiple above 2r, in model px) keeps boxes independent: nothing within r of one image
sees another image. Box origins are stride multiples, as a lone image is to the network.
Printed: the run's total and per-box agreement with ``evaluate`` (each image alone, zero
padding at every layer: the framing the network was trained in), with ``evaluate --context
background`` (each image on the slide background: what the slide path sees), and with the same
slide inferred with each image's own statistics (isolates the normalisation field).

    python benchmarks/slide_vs_images.py --data trp1 --upsample 4 --format ndpi
    python benchmarks/slide_vs_images.py --data trp1 --upsample 1 --format ome-tiff
    python benchmarks/slide_vs_images.py --data vgg_cells --model vgg-cells --format ome-tiff --split test --upsample 1
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


def independent_gap(card) -> int:
    """The smallest stride multiple above 2 x the receptive radius r: no pixel within r of one image sees another."""
    return (2 * card.receptive_radius // card.stride + 1) * card.stride


def compare(data: Path, model: str, upsample: int, fmt: str, work: Path, split: str | None = None, n: int | None = None,
            dim: float = 0.25, gap: int | None = None, quality: int = 95, precision: str = "fp32", seed: int = 0,
            channel: int | None = None, mpp_fallback: float = 1.0, own: bool = True,
            uncertainty: str | None = None) -> dict:
    """Build the mosaic and its image set under ``work``, count both ways; the comparison as a dict.

    ``gap`` (image px = model px; default :func:`independent_gap`) and the box rim r (the
    receptive radius) make boxes independent when gap > 2r: what is counted in one box
    depends on that image and black only. ``own``: also infer the slide with each image's
    own statistics (a second whole-slide pass). ``uncertainty``: a calibrated interval method of the
    model, for both the run and ``evaluate``; a view method (tta, ensemble, mcdropout) then counts
    the mean of its views both ways.
    """
    import zarr

    import wsicount
    from wsicount.models import read_card
    from wsicount.store.layout import Layout
    from wsicount.synth.mosaic import box_counts, brightness_factors, scaled, write_image_set, write_mosaic
    from wsicount.training.data import load_dataset
    from wsicount.training.evaluate import evaluate

    samples = load_dataset(data, split=split)[:n]
    card, _ = read_card(model)
    gap = independent_gap(card) if gap is None else gap
    rim = card.receptive_radius
    factors = brightness_factors(len(samples), dim, 1.0, seed)
    images = [scaled(s.image, f) for s, f in zip(samples, factors)]
    names = [s.name for s in samples]
    mpp = samples[0].mpp
    if channel is None and images[0].ndim == 2:
        channel = card.channels[0] if card.channels else None
    lossless = "deflate" if fmt in ("ome-tiff", "tiff") else None  # NDPI is JPEG only
    mosaic = write_mosaic(images, names, work / "mosaic", fmt, mpp or mpp_fallback, upsample, gap, channel, quality,
                          lossless, align=card.stride)
    sets = {"": write_image_set(images, names, [s.count for s in samples], work / "images", mpp)}
    if lossless is None:  # the images as the slide stores them (JPEG), read back on the model grid
        stored = stored_images(mosaic, card, None if mpp else mpp_fallback / upsample)
        sets["stored_"] = write_image_set(stored, names, [s.count for s in samples], work / "stored", mpp)
    from wsicount.views import VIEW_METHODS

    contexts = ("none",) if uncertainty in VIEW_METHODS else ("none", "background")  # views count images alone
    t = time.perf_counter()
    ev = {p + c: evaluate(model, d, split="test", device="cpu", precision=precision, context=c,
                           uncertainty=uncertainty)
          for p, d in sets.items() for c in contexts}
    t_eval = time.perf_counter() - t
    t = time.perf_counter()
    summary = wsicount.count(mosaic.path, work / "out", model, precision=precision, progress=False, overwrite=True,
                             mpp=None if mpp else mpp_fallback / upsample,
                             model_mpp=None if mpp or card.mpp else mpp_fallback,  # a card without µm/px
                             uncertainty=uncertainty)
    t_run = time.perf_counter() - t
    dens = zarr.open_array(str(Layout(work / "out").density / "0"), mode="r")[...]
    per_box = box_counts(dens, mosaic.boxes, rim)
    r = {"n_images": len(names), "upsample": upsample, "format": fmt, "model": model, "precision": precision,
         "uncertainty": uncertainty,
         "gap": mosaic.gap, "rim": rim, "slide_total": float(summary["total_cells"]),
         "boxes_total": float(per_box.sum()), "true_total": float(sum(s.count for s in samples)),
         "brightness": [float(factors.min()), float(factors.max())], "outside": summary.get("density_outside_mask"),
         "seconds": {"evaluate": t_eval, "run": t_run}}
    refs = {c: np.array([{i.name: i.pred for i in e.images}[k] for k in names]) for c, e in ev.items()}
    refs["own"] = own_stats_boxes(mosaic, images, model, precision, None if mpp else mpp_fallback / upsample) if own \
        else None
    for c, ref in refs.items():
        if ref is not None:
            r[c] = box_stats(per_box, ref, names)
    # the invariant's reference: the pixels the slide holds, each image on the slide background
    r["reference"] = next(c for c in ("stored_background", "background", "stored_none", "none") if c in refs)
    r["boxes"] = [{"name": k, "factor": float(f), "slide": float(b), **{c: float(v[i]) for c, v in refs.items()
                                                                          if v is not None}}
                  for i, (k, f, b) in enumerate(zip(names, factors, per_box))]
    return r


#: boxes whose reference count is at least this many cells are held to the relative bar
MIN_CELLS = 20.0


def box_stats(per_box: np.ndarray, ref: np.ndarray, names: list[str]) -> dict:
    """Total and per-box agreement of the slide's box counts with a reference per image.

    Relative differences for boxes of >= ``MIN_CELLS`` reference cells, absolute (cells) for smaller ones.
    """
    big = ref >= MIN_CELLS
    rel = (per_box - ref) / np.maximum(ref, 1e-9)
    absd = np.abs(per_box - ref)
    worst = int(np.argmax(np.where(big, np.abs(rel), -1.0)))
    return {"total": float(ref.sum()), "total_rel": float(per_box.sum() / ref.sum() - 1), "n_big": int(big.sum()),
            "big_rel_median": float(np.median(np.abs(rel[big]))) if big.any() else 0.0,
            "big_rel_max": float(np.abs(rel[big]).max()) if big.any() else 0.0, "big_worst": names[worst],
            "big_within_3pct": int((np.abs(rel[big]) <= 0.03).sum()),
            "small_abs_max": float(absd[~big].max()) if (~big).any() else 0.0,
            "within_3pct_or_1cell": int(((np.abs(rel) <= 0.03) | (absd <= 1.0)).sum())}


def stored_images(mosaic, card, mpp: float | None) -> list[np.ndarray]:
    """Each image's box as the slide stores it, read on the model grid (uint8, the card's channel)."""
    from wsicount.guard import model_mpp
    from wsicount.io import open_slide
    from wsicount.preprocess import select_channels
    from wsicount.tiling import plan_geometry, read_model_window

    sl = open_slide(mosaic.path, mpp=mpp)
    g = plan_geometry(sl, model_mpp(card, None))
    out = []
    for y0, y1, x0, x1 in mosaic.boxes:
        px = select_channels(read_model_window(sl, g, (y0, y1, x0, x1)), card.channels)[0]
        out.append(np.clip(np.rint(px), 0, 255).astype(np.uint8))
    return out


def own_stats_boxes(mosaic, images: list[np.ndarray], model: str, precision: str, mpp: float | None) -> np.ndarray:
    """Per-box counts of the slide inferred whole with each image normalised by its own statistics (as evaluate does).

    The same slide, pixels and counted region as the run; only the normalisation differs: the
    run's per-box difference to these isolates the normalisation field's share.
    """
    from wsicount.infer import pad_to_stride, pick_device, predict_batch
    from wsicount.io import open_slide
    from wsicount.models import load_model
    from wsicount.preprocess import apply_normalization, norm_floor, percentile_stats, select_channels
    from wsicount.runner.config import RunConfig
    from wsicount.runner.plan import mask_scale, prepare
    from wsicount.synth.mosaic import box_counts
    from wsicount.tiling import mask_on_grid, read_model_window

    lm = load_model(model)
    sl = open_slide(mosaic.path, mpp=mpp)
    prep = prepare(sl, RunConfig(), lm.card)
    g, grow = prep.geom, lm.card.receptive_radius
    x = select_channels(read_model_window(sl, g, (0, g.height, 0, g.width)), lm.card.channels)
    xn = prep.field.apply(x, (0, g.height, 0, g.width), g.height, g.width)
    for (y0, y1, x0, x1), im in zip(mosaic.boxes, images):
        off, span = percentile_stats(select_channels(im, lm.card.channels), lm.card.normalization)
        half = mosaic.gap // 2  # each image's share of the black around it takes its statistics
        box = np.s_[:, max(0, y0 - half) : y1 + half, max(0, x0 - half) : x1 + half]
        xn[box] = apply_normalization(x[box], off, span, norm_floor(lm.card.normalization))
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
    ap.add_argument("--gap", type=int, default=None,
                    help="black gap between images (image px; default: above twice the receptive radius)")
    ap.add_argument("--no-own", action="store_true", help="skip the own-statistics slide (a second whole-slide pass)")
    ap.add_argument("--uncertainty", default=None,
                    help="a calibrated interval method of the model for both counts (ensemble: the members' mean); "
                         "needs --no-own")
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the full comparison here")
    a = ap.parse_args()
    if a.uncertainty and not a.no_own:
        ap.error("--uncertainty needs --no-own (the own-statistics slide runs the single model)")
    import torch

    torch.set_num_threads(1)
    data = Path(a.data) if Path(a.data).exists() else DATA / a.data
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="slide_vs_images-"))
    try:
        r = compare(data, a.model, a.upsample, a.format, work, a.split, a.n, a.dim, a.gap, a.quality, a.precision,
                    own=not a.no_own, uncertainty=a.uncertainty)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    print(f"# {command()}  (commit {git_rev()}; {machine()})")
    print(f"# {r['n_images']} images, gap {r['gap']} px, box rim {r['rim']} px (receptive radius); "
          f"run total {r['slide_total']:.1f}, density outside mask {r['outside']}")
    print("| reference | reference total | run total diff | boxes >= 20 cells: median, max (worst), within 3 % "
          "| boxes < 20 cells: max abs diff |")
    print("|---|---|---|---|---|")
    labels = {"none": "evaluate (image alone)", "background": "evaluate --context background",
              "stored_none": "evaluate, images as the slide stores them (JPEG)",
              "stored_background": "evaluate --context background, images as stored (JPEG)",
              "own": "slide with each image's own statistics"}
    for c, label in labels.items():
        if c in r:
            b = r[c]
            print(f"| {label} | {b['total']:.1f} | {100 * (r['slide_total'] / b['total'] - 1):+.2f} % "
                  f"| {100 * b['big_rel_median']:.2f} %, {100 * b['big_rel_max']:.1f} % ({b['big_worst']}), "
                  f"{b['big_within_3pct']}/{b['n_big']} | {b['small_abs_max']:.2f} cells |")


if __name__ == "__main__":
    main()
