"""Coverage and width of calibrated count intervals, per bundled model and method; region-level coverage.

    python benchmarks/uncertainty.py [--cache /tmp/uq/cache] [--heads /tmp/uq/heads] [--ensemble vgg-cells=A,B,C]
    python benchmarks/uncertainty.py --region-speed     # time region_counts on a synthetic Zarr density

Each model is calibrated on the images its training held out (card: training.cal_names, held out of
training and epoch selection, else training.val_names) and
scored on held-out images: VGG cells and adipocytes on their test splits; TRP1, which has
no test split here, by 4-fold cross-fitting over its 16 validation images (calibrate on 12,
score the other 4). Methods: ``poisson`` and ``shared`` (variance terms from the prediction,
no extra compute), ``tta`` (8 dihedral transforms, 8x compute; the count is their mean),
``hetero`` (a variance head on the frozen model, ``wsicount.models.variance``; needs
``--heads``), ``ensemble`` (K models' mean and spread; needs ``--ensemble``; calibrated on the
model's calibration images when every member held them out, else every method is also scored by
2-fold cross-fitting over the test images) and
``mcdropout`` (8 bottleneck channel-dropout sub-networks, p = 0.2: test-time dropout on
models trained without it).

The default method is chosen on the calibration images alone: 5-fold cross-fitting over them
(calibrate on 4/5, score the other 1/5's whole images and crops, each scale separately),
among the methods that cost no more than ~15 % over a plain pass; the one whose worst-scale
95 % coverage is within 3 points of nominal (or closest) with the narrowest whole-image
intervals. The test figures are then reported once.

Region level: the test images' density maps are laid side by side into a mosaic "slide"
(the slide pipeline is not used: densities are the per-image predictions), and
:func:`wsicount.regions.region_counts` counts (a) each image box, (b) boxes of 2x2 images,
(c) random discs that cross image borders, whose true count is the annotated points inside.
Intervals use the summed terms of each region, i.e. the tile-independence assumption.
Predictions (all 8 transforms, float16) are cached per model and weights hash, so a rerun only re-scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DATA, machine  # noqa: E402
from uncertainty_cost import costs, region_speed, slide_cost  # noqa: E402

MODELS = {"vgg-cells": ("vgg_cells", "test"), "melanocyte-trp1": ("trp1", "val"), "adipocyte-he": ("adipocyte", "test")}


def _cache_key(model: str, head: Path | None = None, members: list[str] | None = None) -> str:
    """``model`` plus the first 12 hex digits of its weights' SHA-256 (and its variance head's, or a hash of
    its ensemble members' weights, when given), so retrained weights never reuse cached predictions."""
    import hashlib

    from wsicount.models.card import read_card
    from wsicount.training.evaluate import file_sha256

    def weights(m: str) -> str:
        return file_sha256(read_card(m)[1].with_suffix(".safetensors"))

    key = f"{model}-{weights(model)[:12]}" + (f"-head{file_sha256(head)[:12]}" if head else "")
    return key + (f"-ens{hashlib.sha256(''.join(map(weights, members)).encode()).hexdigest()[:12]}" if members else "")


def shares_holdout(model: str, members: list[str]) -> bool:
    """True when every member held the model's calibration images out of its training and epoch selection,
    so that the ensemble is calibrated on them like the single-model methods."""
    from wsicount.models.card import read_card

    def held(m: str) -> set[str]:
        t = read_card(m)[0].training
        return set(t.get("cal_names") or []) | set(t.get("val_names") or [])

    cal = read_card(model)[0].training.get("cal_names")
    return bool(cal) and all(set(cal) <= held(m) for m in members)


def predictions(model: str, cache: Path) -> dict[str, np.ndarray]:
    """8-transform densities (float16), true counts, point weights and points of the val and test images."""
    path = cache / f"{_cache_key(model)}.npz"
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
    val = set(lm.card.training.get("cal_names") or lm.card.training["val_names"])
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


def extras(model: str, z: dict[str, np.ndarray], cache: Path, head: Path | None,
           members: list[str] | None, mc: bool = True) -> dict[str, np.ndarray]:
    """Per-image variance-head maps (``het``), ensemble member densities (``ens``) and MC-dropout pass
    densities (``mc``: 8 passes, p = 0.2), cached beside the views."""
    import torch

    from wsicount.training.data import load_dataset

    out: dict[str, np.ndarray] = {}
    data = DATA / MODELS[model][0]
    todo = {"het": head, "ens": members, "mc": mc}
    for key, src in todo.items():
        if not src:
            continue
        own = _cache_key(model, head if key == "het" else None, members if key == "ens" else None)
        path = cache / f"{own}.{key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                out[key] = f[key]
            continue
        torch.set_num_threads(1)
        by_name = {s.name: s for s in load_dataset(data)}
        images = [by_name[n].image for n in z["name"]]
        if key == "het":
            from wsicount.models import load_model
            from wsicount.models.variance import load_head, predict_variance

            lm, hd = load_model(model), load_head(src)
            out[key] = np.stack([predict_variance(lm, hd, im)[1] for im in images]).astype(np.float32)
        else:
            from wsicount.models import load_model
            from wsicount.views import load_members, mc_members, predict_views

            ms = load_members(src) if key == "ens" else mc_members(load_model(model))
            out[key] = np.stack([predict_views(ms, im, tta=False) for im in images]).astype(np.float16)
        np.savez(path, **{key: out[key]})
        print(f"{model}: {key} cached", flush=True)
    return out


def image_units(z: dict[str, np.ndarray], idx: np.ndarray, method: str, grid: int) -> dict[str, np.ndarray]:
    """Units (``grid x grid`` crops; 1: whole images) of images ``idx`` under ``method``."""
    from wsicount.uncertainty import crop_terms
    from wsicount.views import VIEW_METHODS

    starts = np.concatenate([[0], np.cumsum(z["npts"])])
    units = []
    for i in idx:
        views = {"tta": z["tta"][i], "ensemble": z["ens"][i] if "ens" in z else None,
                 "mcdropout": z["mc"][i] if "mc" in z else None}.get(method)
        views = None if views is None else views.astype(np.float32)
        dens = views.mean(axis=0) if views is not None else z["tta"][i][0].astype(np.float32)
        het = z["het"][i] if method == "hetero" else None
        pts = z["points"][starts[i]:starts[i + 1]]
        units.append(crop_terms(dens, pts, float(z["weight"][i]), grid, views, VIEW_METHODS.get(method, "tta_var"),
                                het))
    return {k: np.concatenate([u[k] for u in units]) for k in units[0] if k != "view_sums"}


def unit_set(z: dict[str, np.ndarray], idx: np.ndarray, method: str, grids: list[int]) -> dict[str, np.ndarray]:
    """Units of every grid in ``grids``, concatenated."""
    us = [image_units(z, idx, method, g) for g in grids]
    return {k: np.concatenate([u[k] for u in us]) for k in us[0]}


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
    when they are also the held-out ones (TRP1's val, or the calibration set itself for selection)."""
    val = np.flatnonzero(z["role"] == cal_on)
    if held != cal_on:
        return [(val, np.flatnonzero(z["role"] == held))]
    perm = np.random.default_rng(0).permutation(val)
    parts = np.array_split(perm, k)
    return [(np.concatenate(parts[:j] + parts[j + 1:]), parts[j]) for j in range(k)]


def score(z: dict[str, np.ndarray], splits: list, method: str, grids: list[int], test_grids: list[int]) -> dict:
    """Coverage and width of ``method`` on the test units (``test_grids``; [1]: whole images) of each split."""
    from wsicount.uncertainty import fit_calibration

    flags: dict[str, list] = {}
    cals = []
    for cal_idx, test_idx in splits:
        u = unit_set(z, cal_idx, method, grids)
        cal = fit_calibration(u["true"], u["count"], u, method)
        cals.append(cal)
        t = unit_set(z, test_idx, method, test_grids)
        for k, v in intervals(cal, t["true"], t["count"], t).items():
            flags.setdefault(k, []).append(v)
    res = {k: float(np.mean(np.concatenate(v))) for k, v in flags.items()}
    res["n_units"] = int(len(cals[0].scores))
    res["n"] = int(sum(len(v) for v in flags["in0.95"]))
    return {"scores": res, "cals": cals}


def select_score(z: dict[str, np.ndarray], method: str, grids: list[int]) -> dict[str, float]:
    """Coverage of ``method`` on the calibration images by 5-fold cross-fitting: at each unit scale (whole
    images and each crop grid) separately, the worst scale's coverage per level, and the whole images' width."""
    from wsicount.uncertainty import LEVELS

    per = [score(z, folds(z, "val", "val", k=5), method, grids, [g])["scores"] for g in sorted({*grids, 1})]
    out = {k: min(p[k] for p in per) for k in per[0] if k.startswith("in")}
    # mean |coverage - nominal| over the levels and scales: 80 and 90 % resolve what 10 images at 95 % cannot
    out["err"] = float(np.mean([abs(p[f"in{lv:g}"] - lv) for p in per for lv in LEVELS]))
    return {**out, **{k: v for k, v in per[0].items() if k.startswith("w")}}


def choose_default(sel: dict[str, dict], cheap: tuple[str, ...], level: float = 0.95, tol: float = 0.03) -> str:
    """The cheap method whose cross-fitted worst-scale 95 % coverage on the calibration set is within
    ``tol`` of ``level`` with the narrowest width; if none is, the smallest calibration error (mean
    |coverage - nominal| over levels and scales), then the narrowest."""
    key, wkey = f"in{level:g}", f"w{level:g}"
    ok = [m for m in cheap if m in sel and sel[m][key] >= level - tol]
    if ok:
        return min(ok, key=lambda m: sel[m][wkey])
    return min((m for m in cheap if m in sel), key=lambda m: (round(sel[m]["err"], 3), sel[m][wkey]))


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
    """Per-view region counts (tta: 8, ensemble: K), variance-head sums, pixel counts, truths and kinds."""
    from wsicount.regions import region_counts

    idx = np.flatnonzero(z["role"] == held)
    regions, truth, kinds, (rows, cols) = mosaic_regions(z, idx, cols, n_discs)
    h, w = z["tta"].shape[-2:]

    def counts(maps_of) -> np.ndarray:
        first = maps_of(idx[0])
        maps = np.zeros((len(first), rows * h, cols * w), np.float32)
        for j, i in enumerate(idx):
            r, c = divmod(j, cols)
            maps[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = maps_of(i)
        return np.array([[row["count"] for row in region_counts(regions, m, None, 1.0)] for m in maps])

    out = {"tta": counts(lambda i: z["tta"][i]), "truth": truth, "kinds": kinds}
    out["n_px"] = np.array([row["n_px"] for row in region_counts(regions, np.zeros((rows * h, cols * w)), None, 1.0)],
                           dtype=np.float64)
    for key in ("ens", "mc"):
        if key in z:
            out[key] = counts(lambda i: z[key][i])
    if "het" in z:
        out["het"] = counts(lambda i: z["het"][i][None])[0]
    return out


def score_regions(mc: dict[str, np.ndarray], method: str, cal) -> dict:
    """Region-level coverage and width of ``method`` from :func:`mosaic_counts`."""
    truth, kinds = mc["truth"], mc["kinds"]
    per = {"ensemble": mc.get("ens"), "mcdropout": mc.get("mc")}.get(method, mc["tta"])
    count = per.mean(axis=0) if method in ("tta", "ensemble", "mcdropout") else per[0]
    spread = per.var(axis=0)
    terms = {"pred": np.maximum(count, 0.0), "area": mc["n_px"], "tta_var": spread, "ens_var": spread, "mc_var": spread,
             "het_var": mc.get("het", np.zeros_like(count))}
    flags = intervals(cal, truth, count, terms)
    out = {}
    for kind in dict.fromkeys(kinds):
        sel = kinds == kind
        out[kind] = {k: float(np.mean(v[sel])) for k, v in flags.items()}
        out[kind]["n"] = int(sel.sum())
        out[kind]["mean_true"] = float(truth[sel].mean())
    return out


def coverage_range(cov: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) ``level`` interval of a coverage measured as ``cov`` on ``n`` units: how far
    the true coverage may be from the measured one on this many images."""
    from scipy.stats import binomtest

    ci = binomtest(round(cov * n), n).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)


def table(rows: list[dict], key: str) -> str:
    """Markdown table of coverage (with the exact 95 % range of the measured 95 % coverage) and width at
    80/90/95 %, with the calibration-set selection score and cost where the rows have them."""
    head = (f"| {key} | method | units | n cal units | sel cov 95 / err | n | cov 80 | cov 90 | cov 95 | "
            "cov 95 range | width 80 | width 90 | width 95 | cost |\n" + "|---" * 14 + "|\n")

    def fmt(v: object, spec: str) -> str:
        return "" if v is None or v == "" else format(v, spec)

    def row(r: dict) -> str:
        sel = fmt(r.get("sel95"), ".2f") + (" / " + fmt(r.get("sel_err"), ".3f") if "sel_err" in r else "")
        lo, hi = coverage_range(r["in0.95"], r["n"])
        cells = [r[key], r["method"], r.get("grids", ""), r.get("n_units", ""), sel, r["n"],
                 *(f"{r[f'in{lv}']:.2f}" for lv in ("0.8", "0.9", "0.95")), f"{lo:.2f}-{hi:.2f}",
                 *(f"{r[f'w{lv}']:.1f}" for lv in ("0.8", "0.9", "0.95")), fmt(r.get("cost"), ".2f")]
        return "| " + " | ".join(map(str, cells)) + " |\n"

    return head + "".join(map(row, rows))


def evaluate_model(m: str, z: dict[str, np.ndarray], methods: list[str], grid_sets: list[list[int]],
                   cost: dict[str, float], cols: int, discs: int,
                   ens_on_val: bool = False) -> tuple[list[dict], list[dict], str]:
    """Image rows (every method and unit set), region rows (each method, first unit set) and the chosen default.

    ``ens_on_val``: the ensemble's members share the model's calibration images, so it is calibrated on
    them like the others; otherwise every method is also calibrated by 2-fold cross-fitting over the test
    images, the only images no member trained on."""
    held = MODELS[m][1]
    img_rows, reg_rows, sel, cals = [], [], {}, {}
    on_val = [x for x in methods if x != "ensemble" or ens_on_val]
    for grids in grid_sets:
        gname = "+".join(f"{g}x{g}" if g > 1 else "image" for g in grids)
        for meth in on_val:
            key = f"{meth} ({gname})"
            sel[key] = select_score(z, meth, grids)
            res = score(z, folds(z, held, "val", k=4), meth, grids, [1])
            cals[key] = res["cals"][0]
            img_rows.append({"model": m, "method": meth, "grids": gname, **res["scores"], "sel95": sel[key]["in0.95"],
                             "sel_err": sel[key]["err"],
                             "cost": cost.get(meth), "key": key})
    cheap = tuple(k for k in sel if cost.get(k.split(" ")[0], 99) <= 1.15)
    default = choose_default(sel, cheap)
    for r in img_rows:
        if r.pop("key") == default:
            r["method"] = f"**{r['method']}**"
    g0 = "+".join(f"{g}x{g}" if g > 1 else "image" for g in grid_sets[0])
    if "ensemble" in methods and not ens_on_val:  # every method calibrated by 2-fold cross-fitting over test
        for meth in methods:
            res = score(z, folds(z, "test", "test", k=2), meth, grid_sets[0], [1])
            img_rows.append({"model": f"{m} (2-fold over test)", "method": meth, "grids": g0, **res["scores"],
                             "cost": cost.get(meth)})
    if held == "test":
        mc = mosaic_counts(z, held, cols, discs)
        for meth in on_val:
            for kind, sc in score_regions(mc, meth, cals[f"{meth} ({g0})"]).items():
                reg_rows.append({"model": f"{m}: {kind}", "method": meth, "grids": g0, **sc})
    return img_rows, reg_rows, default


def main() -> None:
    """Predict (cached), calibrate, choose defaults on the calibration sets, score images and mosaic regions."""
    import datetime
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/uq/cache"))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--methods", nargs="*", default=["poisson", "shared", "hetero", "tta", "ensemble", "mcdropout"])
    ap.add_argument("--grids", default="2,1;4,2,1", help="calibration unit sets: crops per side, ';' between sets")
    ap.add_argument("--heads", type=Path, default=None, help="folder of MODEL.variance.safetensors heads")
    ap.add_argument("--ensemble", action="append", default=[], help="MODEL=card,card,... (repeatable)")
    ap.add_argument("--cols", type=int, default=10, help="images per mosaic row")
    ap.add_argument("--discs", type=int, default=60, help="random disc regions per mosaic")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-cost", action="store_true", help="skip timing the methods")
    ap.add_argument("--region-speed", action="store_true", help="time region_counts on a synthetic Zarr density only")
    ap.add_argument("--slide-cost", default=None, metavar="MODEL",
                    help="time a synthetic slide run per calibrated method of MODEL against an uncalibrated run, only")
    a = ap.parse_args()
    if a.region_speed:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            print(f"{datetime.date.today()}; {machine()}\n{region_speed(Path(tmp))}")
        return
    if a.slide_cost:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            print(f"{datetime.date.today()}; {machine()}; {a.slide_cost}, 1536² synthetic slide at the model's "
                  "µm/px, 1 thread, tiles of 1024, best of 2")
            print("| method | run s | relative |\n|---|---|---|\n" + slide_cost(Path(tmp), a.slide_cost))
        return
    grid_sets = [[int(g) for g in part.split(",")] for part in a.grids.split(";")]
    ens = dict(e.split("=", 1) for e in a.ensemble)
    img_rows, reg_rows, defaults = [], [], {}
    for m in a.models:
        z = predictions(m, a.cache)
        head = a.heads / f"{m}.variance.safetensors" if a.heads else None
        head = head if head is not None and head.exists() else None
        members = ens[m].split(",") if m in ens else None
        z.update(extras(m, z, a.cache, head, members))
        methods = [x for x in a.methods if {"hetero": "het", "ensemble": "ens", "mcdropout": "mc"}.get(x, "tta") in z]
        nominal = {"poisson": 1.0, "shared": 1.0, "hetero": 1.0, "tta": 8.0, "ensemble": float(len(members or [])),
                   "mcdropout": 8.0}
        cost = nominal if a.no_cost else costs(m, z, head, members)
        rows, regs, defaults[m] = evaluate_model(m, z, methods, grid_sets, cost, a.cols, a.discs,
                                                 bool(members) and shares_holdout(m, members))
        img_rows += rows
        reg_rows += regs
    print(f"{datetime.date.today()}; {machine()}; fp32; defaults chosen on the calibration sets: {defaults}")
    print(table(img_rows, "model"))
    print(table(reg_rows, "model"))
    if a.json:
        a.json.write_text(json.dumps({"images": img_rows, "regions": reg_rows, "defaults": defaults}, indent=1))


if __name__ == "__main__":
    main()
