"""Coverage and width of calibrated count intervals, per bundled model and method; region-level coverage.

    python benchmarks/uncertainty.py [--cache /tmp/uq/cache] [--grids 2 1] [--cols 10] [--discs 60] [--json F]
    python benchmarks/uncertainty.py --region-speed     # time region_counts on a synthetic Zarr density

Each model is calibrated on the images its training held out (card: training.val_names) and
scored on held-out images: VGG cells and adipocytes on their test splits; TRP1, which has
no test split here, by 4-fold cross-fitting over its 16 validation images (calibrate on 12,
score the other 4). Methods: ``poisson`` (the default: variance terms from the prediction,
no extra compute) and ``tta`` (8 dihedral transforms, 8x compute; the count is their mean).

Region level: the test images' density maps are laid side by side into a mosaic "slide"
(the slide pipeline is not used: densities are the per-image predictions), and
:func:`wsicount.regions.region_counts` counts (a) each image box, (b) boxes of 2x2 images,
(c) random discs that cross image borders, whose true count is the annotated points inside.
Intervals use the summed terms of each region, i.e. the tile-independence assumption.
Predictions (all 8 transforms, float16) are cached per model, so a rerun only re-scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DATA, machine  # noqa: E402

MODELS = {"vgg-cells": ("vgg_cells", "test"), "melanocyte-trp1": ("trp1", "val"), "adipocyte-he": ("adipocyte", "test")}


def predictions(model: str, cache: Path) -> dict[str, np.ndarray]:
    """8-transform densities (float16), true counts, point weights and points of the val and test images."""
    path = cache / f"{model}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return dict(z)
    import torch

    from wsicount.models import load_model
    from wsicount.training.data import load_dataset
    from wsicount.uncertainty import predict_tta

    torch.set_num_threads(1)
    lm = load_model(model)
    data, held = MODELS[model]
    val = set(lm.card.training["val_names"])
    samples = [s for s in load_dataset(DATA / data) if s.name in val or (held == "test" and s.split == "test")]
    out: dict[str, list] = {"name": [], "role": [], "true": [], "weight": [], "tta": [], "points": [], "npts": []}
    for i, s in enumerate(samples):
        out["name"].append(s.name)
        out["role"].append("val" if s.name in val else "test")
        out["true"].append(s.count)
        out["weight"].append(s.point_weight)
        out["tta"].append(predict_tta(lm, s.image).astype(np.float16))
        out["points"].append(s.points)
        out["npts"].append(len(s.points))
        print(f"{model}: {i + 1}/{len(samples)}", flush=True)
    res = {k: np.asarray(v) for k, v in out.items() if k != "points"}
    res["points"] = np.concatenate(out["points"]).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **res)
    return res


def image_units(z: dict[str, np.ndarray], idx: np.ndarray, method: str, grid: int) -> dict[str, np.ndarray]:
    """Calibration units (``grid x grid`` crops) of images ``idx`` under ``method``."""
    from wsicount.uncertainty import crop_terms

    starts = np.concatenate([[0], np.cumsum(z["npts"])])
    units = []
    for i in idx:
        tta = z["tta"][i].astype(np.float32)
        dens = tta.mean(axis=0) if method == "tta" else tta[0]
        pts = z["points"][starts[i]:starts[i + 1]]
        units.append(crop_terms(dens, pts, float(z["weight"][i]), grid, tta if method == "tta" else None))
    return {k: np.concatenate([u[k] for u in units]) for k in units[0]}


def image_level(z: dict[str, np.ndarray], idx: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """True counts, predicted counts and variance terms of whole images ``idx``."""
    sums = z["tta"][idx].astype(np.float32).sum(axis=(2, 3), dtype=np.float64)  # (n, 8)
    count = sums.mean(axis=1) if method == "tta" else sums[:, 0]
    h, w = z["tta"].shape[-2:]
    terms = {"pred": np.maximum(count, 0.0), "area": np.full(len(idx), float(h * w)), "tta_var": sums.var(axis=1)}
    return z["true"][idx].astype(np.float64), count, terms


def intervals(cal, true: np.ndarray, count: np.ndarray, terms: dict) -> dict[str, np.ndarray]:
    """Inside-flags and widths at each nominal level."""
    from wsicount.uncertainty import LEVELS

    out = {}
    for lv in LEVELS:
        lo, hi = cal.interval(count, terms, lv)
        out[f"in{lv:g}"] = (true >= lo) & (true <= hi)
        out[f"w{lv:g}"] = np.asarray(hi) - np.asarray(lo)
    return out


def folds(z: dict[str, np.ndarray], held: str, cal_on: str = "val", k: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """(calibration, test) index pairs: val -> test, or k-fold cross-fitting over the ``cal_on`` images
    when they are also the held-out ones (TRP1's val; or the test split itself, to show what a
    calibration set of 50 images gives)."""
    val = np.flatnonzero(z["role"] == cal_on)
    if held != cal_on:
        return [(val, np.flatnonzero(z["role"] == held))]
    perm = np.random.default_rng(0).permutation(val)
    parts = np.array_split(perm, k)
    return [(np.concatenate(parts[:j] + parts[j + 1:]), parts[j]) for j in range(k)]


def score_images(z: dict[str, np.ndarray], held: str, method: str, grids: list[int], cal_on: str = "val",
                 k: int = 4) -> dict:
    """Image-level coverage and width of ``method`` on held-out images; the calibrations used."""
    from wsicount.uncertainty import fit_calibration

    flags: dict[str, list] = {}
    cals = []
    splits = folds(z, held, cal_on, k)
    for cal_idx, test_idx in splits:
        us = [image_units(z, cal_idx, method, g) for g in grids]
        u = {key: np.concatenate([x[key] for x in us]) for key in us[0] if key != "tta_sums"}
        cal = fit_calibration(u["true"], u["count"], u, method)
        cals.append(cal)
        for k, v in intervals(cal, *image_level(z, test_idx, method)).items():
            flags.setdefault(k, []).append(v)
    res = {k: float(np.mean(np.concatenate(v))) for k, v in flags.items()}
    res["n_units"] = int(len(cals[0].scores))
    res["n_test"] = int(sum(len(t) for _, t in splits))
    return {"scores": res, "cals": cals}


def mosaic_regions(z: dict[str, np.ndarray], idx: np.ndarray, cols: int, n_discs: int, seed: int = 0):
    """Image boxes, 2x2 blocks and random discs over a side-by-side mosaic; their true counts."""
    import shapely
    from shapely.geometry import Point, box

    from wsicount.regions import Region

    h, w = z["tta"].shape[-2:]
    rows = -(-len(idx) // cols)
    starts = np.concatenate([[0], np.cumsum(z["npts"])])
    px, py, wt = [], [], []
    regions, truth, kinds = [], [], []
    for j, i in enumerate(idx):
        r, c = divmod(j, cols)
        pts = z["points"][starts[i]:starts[i + 1]]
        px.append(pts[:, 0] + c * w + 0.5)
        py.append(pts[:, 1] + r * h + 0.5)
        wt.append(np.full(len(pts), float(z["weight"][i])))
        regions.append(Region(f"image {z['name'][i]}", "box", box(c * w, r * h, (c + 1) * w, (r + 1) * h)))
        truth.append(float(z["true"][i]))
        kinds.append("image box")
    px, py, wt = np.concatenate(px), np.concatenate(py), np.concatenate(wt)

    def add(name: str, kind: str, geom) -> None:
        regions.append(Region(name, kind, geom))
        truth.append(float(wt[shapely.contains_xy(geom, px, py)].sum()))
        kinds.append(kind)

    for r in range(0, rows - 1, 2):
        for c in range(0, cols - 1, 2):
            if (r + 1) * cols + c + 1 < len(idx):
                add(f"block {r},{c}", "2x2 image block", box(c * w, r * h, (c + 2) * w, (r + 2) * h))
    rng = np.random.default_rng(seed)
    for k in range(n_discs):
        rad = rng.uniform(0.3, 1.2) * w
        cx, cy = rng.uniform(rad, cols * w - rad), rng.uniform(rad, rows * h - rad)
        add(f"disc {k}", "disc across images", Point(cx, cy).buffer(rad, 16))
    return regions, np.array(truth), np.array(kinds), (rows, cols)


def mosaic_counts(z: dict[str, np.ndarray], held: str, cols: int, n_discs: int) -> dict[str, np.ndarray]:
    """Per-transform region counts (8, R), pixel counts, truths and kinds on the held-out mosaic."""
    from wsicount.regions import region_counts

    idx = np.flatnonzero(z["role"] == held)
    regions, truth, kinds, (rows, cols) = mosaic_regions(z, idx, cols, n_discs)
    h, w = z["tta"].shape[-2:]
    maps = np.zeros((8, rows * h, cols * w), np.float32)
    for j, i in enumerate(idx):
        r, c = divmod(j, cols)
        maps[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = z["tta"][i]
    per = [region_counts(regions, maps[t], None, 1.0) for t in range(8)]
    return {"per": np.array([[row["count"] for row in rows_t] for rows_t in per]), "truth": truth, "kinds": kinds,
            "n_px": np.array([row["n_px"] for row in per[0]], dtype=np.float64)}


def score_regions(mc: dict[str, np.ndarray], method: str, cal) -> dict:
    """Region-level coverage and width of ``method`` from :func:`mosaic_counts`."""
    per, truth, kinds, n_px = mc["per"], mc["truth"], mc["kinds"], mc["n_px"]
    count = per.mean(axis=0) if method == "tta" else per[0]
    terms = {"pred": np.maximum(count, 0.0), "area": n_px, "tta_var": per.var(axis=0)}
    flags = intervals(cal, truth, count, terms)
    out = {}
    for kind in dict.fromkeys(kinds):
        sel = kinds == kind
        out[kind] = {k: float(np.mean(v[sel])) for k, v in flags.items()}
        out[kind]["n"] = int(sel.sum())
        out[kind]["mean_true"] = float(truth[sel].mean())
    return out


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


def table(rows: list[dict], key: str) -> str:
    """Markdown table of coverage and width at 80/90/95 %."""
    head = (f"| {key} | method | n cal units | n | cov 80 | cov 90 | cov 95 | width 80 | width 90 | width 95 |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r[key]} | {r['method']} | {r.get('n_units', '')} | {r['n']} | {r['in0.8']:.2f} | {r['in0.9']:.2f} | "
        f"{r['in0.95']:.2f} | {r['w0.8']:.1f} | {r['w0.9']:.1f} | {r['w0.95']:.1f} |\n" for r in rows)
    return head + body


def main() -> None:
    """Predict (cached), calibrate, score images and mosaic regions; print the tables."""
    import datetime
    import json

    from wsicount.uncertainty import METHODS

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/uq/cache"))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--grids", type=int, nargs="+", default=[2, 1], help="calibration units: crops per image side")
    ap.add_argument("--cols", type=int, default=10, help="images per mosaic row")
    ap.add_argument("--discs", type=int, default=60, help="random disc regions per mosaic")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--predict-only", action="store_true")
    ap.add_argument("--region-speed", action="store_true", help="time region_counts on a synthetic Zarr density only")
    a = ap.parse_args()
    if a.region_speed:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            print(f"{datetime.date.today()}; {machine()}\n{region_speed(Path(tmp))}")
        return
    data = {m: predictions(m, a.cache) for m in a.models}
    if a.predict_only:
        return
    img_rows, reg_rows, mosaic = [], [], {}
    for m, z in data.items():
        held = MODELS[m][1]
        for meth in a.methods:
            res = score_images(z, held, meth, a.grids)
            img_rows.append({"model": m, "method": meth, "n": res["scores"]["n_test"], **res["scores"]})
            if held == "test":  # what a larger calibration set gives: 2-fold cross-fitting over the test images
                big = score_images(z, held, meth, a.grids, cal_on="test", k=2)["scores"]
                img_rows.append({"model": f"{m} (calibrated on 50 test images)", "method": meth, "n": big["n_test"],
                                 **big})
            if held == "test":
                if m not in mosaic:
                    mosaic[m] = mosaic_counts(z, held, a.cols, a.discs)
                for kind, s in score_regions(mosaic[m], meth, res["cals"][0]).items():
                    reg_rows.append({"model": f"{m}: {kind}", "method": meth, **s})
    print(f"{datetime.date.today()}; {machine()}; fp32; calibration units: images and crops {a.grids}")
    print(table(img_rows, "model"))
    print(table(reg_rows, "model"))
    if a.json:
        a.json.write_text(json.dumps({"images": img_rows, "regions": reg_rows}, indent=1))


if __name__ == "__main__":
    main()
