"""Costs of the count-interval methods: per image against a plain pass, per slide run, and region counting.

Helpers of ``benchmarks/uncertainty.py`` (``--slide-cost MODEL``, ``--region-speed`` and the cost column).
Timings on a shared machine are contended: ratios, measured back to back, are what to read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _common import DATA

MODELS = {"vgg-cells": "vgg_cells", "melanocyte-trp1": "trp1", "adipocyte-he": "adipocyte"}


def costs(model: str, z: dict[str, np.ndarray], head: Path | None, members: list[str] | None, reps: int = 5) -> dict:
    """Seconds per image of each method relative to a plain pass (median of ``reps``, one thread, contended)."""
    import time

    import torch

    from wsicount.infer import predict_image
    from wsicount.models import load_model
    from wsicount.training.data import load_dataset
    from wsicount.views import load_members, mc_members, predict_views

    torch.set_num_threads(1)
    lm = load_model(model)
    img = next(s.image for s in load_dataset(DATA / MODELS[model]) if s.name == z["name"][0])
    fns = {"plain": lambda: predict_image(lm, img), "tta": lambda: predict_views([lm], img)}
    if head:
        from wsicount.models.variance import load_head, predict_variance

        hd = load_head(head)
        fns["hetero"] = lambda: predict_variance(lm, hd, img)
    if members:
        ms = load_members(members)
        fns["ensemble"] = lambda: predict_views(ms, img, tta=False)
    subs = mc_members(lm)
    fns["mcdropout"] = lambda: predict_views(subs, img, tta=False)
    sec = {}
    for k, fn in fns.items():
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        sec[k] = float(np.median(ts))
    rel = {k: v / sec["plain"] for k, v in sec.items()}
    return {"poisson": 1.0, "shared": 1.0, **{k: v for k, v in rel.items() if k != "plain"}}


def slide_cost(folder: Path, model: str = "melanocyte-trp1", size: int = 1536, reps: int = 2) -> str:
    """Wall seconds of a slide run per interval method against the same run of an uncalibrated copy of the card."""
    import json
    import shutil

    import wsicount
    from wsicount.models import read_card
    from wsicount.synth import synth_slide
    from wsicount.uncertainty import calibrated_methods

    card, cpath = read_card(model)
    truth = synth_slide(folder / "slide.tiff", format="tiff", size=(size, size), seed=5, look="fluorescence",
                        mpp=card.mpp, cell_density_per_mm2=400.0, tissue="disk", tissue_fraction=0.6)
    bare = folder / "bare"
    bare.mkdir()
    shutil.copy(cpath.with_suffix(".safetensors"), bare / f"{model}.safetensors")
    (bare / f"{model}.json").write_text(json.dumps({**json.loads(cpath.read_text()), "calibration": {}}))
    runs = [("plain (no calibration)", str(bare / f"{model}.json"), None)]
    runs += [(m, model, m) for m in calibrated_methods(card.calibration)]
    secs: dict[str, float] = {}
    for name, mdl, meth in runs:
        ts = []
        for r in range(reps):
            s = wsicount.count(truth.path, folder / f"out-{len(secs)}-{r}", model=mdl, uncertainty=meth, threads=1,
                               tile_size=1024, progress=False, overwrite=True)
            ts.append(s["timings"]["total"])
        secs[name] = min(ts)
    base = secs["plain (no calibration)"]
    return "\n".join(f"| {k} | {v:.1f} | {v / base:.2f} |" for k, v in secs.items())


def region_speed(folder: Path, n: int = 8192) -> str:
    """Seconds per region pixel of region_counts on an (n, n) Zarr density, next to a plain read + sum."""
    import time

    import zarr
    from shapely.geometry import Point, Polygon

    from wsicount.regions import LabelRegions, Region, region_counts

    z = zarr.create_array(folder / "density.zarr", shape=(n, n), chunks=(1024, 1024), dtype="float32", overwrite=True)
    for r in range(0, n, 1024):
        z[r:r + 1024] = np.random.default_rng(r).random((1024, n), dtype=np.float32) * 0.01
    s = 2 * n  # level-0 px across the slide: 2 level-0 px per model pixel
    hole = Point(s / 2, s / 2).buffer(s * 0.18, 32).exterior.coords
    big = Polygon([(s * .006, s * .006), (s * .98, s * .02), (s * .96, s * .98), (s * .01, s * .97)], [hole])
    regs = [Region("big", None, big)] + [Region(f"disc{i}", None, Point(s * (.06 + .09 * i), s / 4).buffer(s * .04, 32))
                                         for i in range(10)]
    t = time.perf_counter()
    px = sum(r["n_px"] for r in region_counts(regs, z, 0.5, 2.0))
    poly = (time.perf_counter() - t) / px
    t = time.perf_counter()
    for r in range(0, n, 1024):
        float(np.asarray(z[r:r + 1024]).sum(dtype=np.float64))
    plain = (time.perf_counter() - t) / n / n
    lab = np.zeros((n // 4, n // 4), np.int32)
    lab[100:1500, 100:1000], lab[200:1800, 1200:2000] = 1, 2
    t = time.perf_counter()
    region_counts(LabelRegions(lab, 8.0), z, 0.5, 2.0)
    label = (time.perf_counter() - t) / n / n
    return (f"region_counts on a {n}x{n} float32 Zarr density (1024² chunks): 11 polygons (one with a hole) "
            f"{poly * 1e9:.0f} ns per region pixel; label image {label * 1e9:.0f} ns per grid pixel; "
            f"plain read + sum {plain * 1e9:.0f} ns per pixel")
