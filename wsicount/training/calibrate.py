"""Calibrating a model's count intervals on held-out images and storing the result in its card.

``calibrate(model, data)`` runs the model on the calibration split with
:func:`wsicount.training.evaluate.evaluate` and takes as calibration units each whole image
and its ``g x g`` crops for every ``g`` in ``grids`` (default: the image and its 2 x 2
quarters). Crops give enough units for a finite 95 % quantile from 10-16 images and are the
scale of a slide's tiles; whole images put the error of larger areas (a shared bias) into
the variance fit. :func:`wsicount.uncertainty.fit_calibration` fits the terms, and the
returned record is what ``ModelCard.calibration`` holds. ``split="val"`` means the images the
card's training held out for calibration (``training.cal_names``, ``TrainConfig.n_cal``: used
neither to train nor to select the epoch), else those it validated on (``training.val_names``: the
dataset's ``val`` rows plus any training images it held out), else the dataset's ``val`` rows, so
a model is never calibrated on its test split.

Recalibrate a bundled model in one line (``--save`` rewrites its card)::

    python -m wsicount.training.calibrate vgg-cells ../shared/data/vgg_cells --save

Time-lapse models calibrate on stacks instead (``--stacks``, :func:`calibrate_stacks`): ``data``
is a folder of stacks, each with ``NAME.truth.json`` beside it (its per-frame ``counts``, as
``wsicount synth --look embryo`` writes), and every frame is one unit, counted by
:func:`wsicount.timelapse.run.count_stack` exactly as ``wsicount run`` counts it (best focal
plane, the same resampling and normalisation), with the terms a stack run gives a frame::

    python -m wsicount.training.calibrate blastomere /tmp/blastomere-cal --stacks --method shared --save
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .data import Sample, load_dataset
from .evaluate import _load, evaluate
from ..errors import InputError
from ..models import LoadedModel, read_card
from ..store.atomic import atomic_write
from ..uncertainty import DEFAULT_METHOD, LEVELS, METHODS, coverage_report, crop_terms, fit_calibration
from ..models.variance import load_head, predict_variance
from ..views import VIEW_METHODS, load_members, mc_members, predict_views

__all__ = ["calibrate", "calibrate_stacks", "stack_truths", "calibration_names", "save_calibration"]

#: methods whose terms a stack run computes for a frame (pred, area, pred2)
STACK_METHODS = ("shared", "poisson")


def calibration_names(lm: LoadedModel, root: Path, split: str) -> tuple[str | None, list[str] | None, str]:
    """(split to load, image names to keep, description) of the calibration images."""
    if split != "val":
        return split, None, split
    try:
        load_dataset(root, split="val")  # a missing or malformed folder is the user's error here
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    if lm.card.training.get("cal_names"):
        return None, list(lm.card.training["cal_names"]), "training.cal_names (held out of training and model selection)"
    names = lm.card.training.get("val_names")
    if not names:
        return "val", None, "val"
    return None, list(names), "training.val_names (held out of training)"


def calibrate(model: str | os.PathLike | LoadedModel | None, data: str | os.PathLike, split: str = "val",
              method: str = DEFAULT_METHOD, grids: tuple[int, ...] = (2, 1), device: str = "cpu",
              precision: str = "fp32", members: list[str | os.PathLike] | None = None,
              head: str | os.PathLike | None = None, p: float = 0.2, passes: int = 8) -> dict[str, Any]:
    """Fit ``method``'s interval on the calibration images and their crops; the card's record.

    The record holds the method, data, split, units, the fitted terms (bias, weights, floor,
    sorted scores) and the coverage reached on the calibration units and images (in-sample,
    so >= nominal by construction over all units). ``ensemble`` needs ``members`` (>= 2 model
    cards; the record lists them relative to ``model``'s card, which is usually one of them);
    ``hetero`` needs ``head`` (a variance head, :mod:`wsicount.models.variance`; the record names
    it relative to the card); ``mcdropout`` uses ``passes`` sub-networks dropping bottleneck
    channels with probability ``p`` (:func:`wsicount.views.mc_members`).
    """
    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}; choose from {sorted(METHODS)}")
    if not grids or min(grids) < 1:
        raise InputError(f"grids must be crops per side >= 1, got {grids}")
    if (method == "ensemble") != bool(members) or (members and len(members) < 2):
        raise InputError("the ensemble method, and only it, takes --members: two or more model cards")
    if (method == "hetero") != (head is not None):
        raise InputError("the hetero method, and only it, takes --head: a variance head's safetensors file")
    lm = _load(model, device)
    hd = load_head(head) if head is not None else None
    models = load_members([read_card(m)[1] for m in members], device) if members else [lm]
    if method == "mcdropout":
        models = mc_members(lm, p, passes)
    root = Path(data)
    load_split, names, what = calibration_names(lm, root, split)
    units: dict[int, list[dict[str, np.ndarray]]] = {g: [] for g in {*grids, 1}}

    def collect(s: Sample, dens: np.ndarray) -> None:
        views = predict_views(models, s.image, device, precision, method == "tta") if method in VIEW_METHODS else None
        d = views.mean(axis=0) if views is not None else dens
        het = predict_variance(lm, hd, s.image)[1] if hd is not None else None
        for g, acc in units.items():
            acc.append(crop_terms(d, s.points, s.point_weight, g, views, VIEW_METHODS.get(method, "tta_var"), het))

    card = lm.card
    saved, card.calibration = card.calibration, {}  # score the raw model, not a previous calibration
    try:
        res = evaluate(lm, root, split=load_split, device=device, precision=precision, names=names, on_image=collect)
    finally:
        card.calibration = saved
    u = _stack([x for g in grids for x in units[g]])
    img = _stack(units[1])
    cal = fit_calibration(u["true"], u["count"], u, method)
    extra = {"members": [os.path.relpath(read_card(m)[1], lm.path.parent) for m in members]} if members else {}
    if method == "mcdropout":
        extra.update(p=p, passes=passes)
    if head is not None:
        extra["head"] = os.path.relpath(Path(head).resolve(), lm.path.parent.resolve())
    return {
        **cal.to_dict(), **extra, "data": root.name, "split": what, "n_images": len(res.images),
        "units": "whole images" if tuple(grids) == (1,) else
                 "each image and its " + ", ".join(f"{g}x{g}" for g in grids if g > 1) + " crops",
        "n_units": int(u["true"].size), "levels": list(LEVELS),
        "coverage": {"units": coverage_report(cal, u["true"], u["count"], u)["coverage"],
                     "images": coverage_report(cal, img["true"], img["count"], img)["coverage"]},
        "date": datetime.date.today().isoformat(),
    }


def stack_truths(root: Path) -> list[tuple[Path, np.ndarray]]:
    """(stack path, true count per frame) of every ``NAME.truth.json`` in ``root`` whose stack ``NAME`` exists."""
    out = []
    for tj in sorted(root.glob("*.truth.json")):
        stack = tj.with_name(tj.name[: -len(".truth.json")])
        if not stack.exists():
            raise InputError(f"{tj} has no stack {stack.name} beside it")
        try:
            counts = np.asarray(json.loads(tj.read_text())["counts"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{tj}: no per-frame 'counts' list ({e})") from None
        out.append((stack, counts))
    if not out:
        raise InputError(f"{root} holds no NAME.truth.json beside a stack (write them with wsicount synth --look embryo)")
    return out


def calibrate_stacks(model: str | os.PathLike | LoadedModel | None, data: str | os.PathLike,
                     method: str = DEFAULT_METHOD, focus: str | int = "best", device: str = "cpu",
                     precision: str = "fp32", units_csv: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fit ``method``'s per-frame interval on every frame of the stacks in ``data``; the card's record.

    Each frame is counted by ``count_stack`` (as ``wsicount run`` counts it) and is one unit with the
    terms ``pred`` (its count) and ``area`` (its model-grid pixels). Frames of one stack are not
    independent, so the finite-sample guarantee is per frame of a fresh stack from the same settings,
    with an effective sample nearer the number of stacks than of frames. ``calset.json`` in ``data``,
    when present, describes the set (``description``, ``seeds``) and the record keeps it. ``units_csv``
    receives every unit (``stack,frame,true,count,area``) for audits such as a split by stack.
    """
    import zarr

    from ..store.layout import StackLayout
    from ..timelapse.run import count_stack

    if method not in STACK_METHODS:
        raise InputError(f"a stack run computes only the terms of {' or '.join(STACK_METHODS)}; got --method {method}")
    lm = _load(model, device)
    root = Path(data)
    truths = stack_truths(root)
    true, pred, area, rows = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="wsicount-cal-") as tmp:
        for stack, counts in truths:
            out = Path(tmp) / stack.name
            s = count_stack(stack, out, lm, focus=focus, device=device, precision=precision)
            if len(s["counts"]) != counts.size:
                raise InputError(f"{stack.name}: {len(s['counts'])} frames but {counts.size} true counts")
            px = float(np.prod(zarr.open_group(str(StackLayout(out).density), mode="r")["0"].shape[1:]))
            ok = [i for i, c in enumerate(s["counts"]) if c is not None]
            true += [counts[i] for i in ok]
            pred += [s["counts"][i] for i in ok]
            area += [px] * len(ok)
            rows += [f"{stack.name},{i},{counts[i]:g},{s['counts'][i]},{px:g}" for i in ok]
    if units_csv is not None:
        atomic_write(Path(units_csv), "stack,frame,true,count,area\n" + "".join(r + "\n" for r in rows))
    t, p = np.asarray(true), np.asarray(pred)
    terms = {"pred": np.maximum(p, 0.0), "area": np.asarray(area)}
    cal = fit_calibration(t, p, terms, method)
    info = json.loads((root / "calset.json").read_text()) if (root / "calset.json").exists() else {}
    return {
        **cal.to_dict(), "data": info.get("description", root.name),
        "split": "all frames" + (f" (seeds {info['seeds'][0]}-{info['seeds'][1]})" if "seeds" in info else ""),
        "n_stacks": len(truths), "units": f"each frame (focus {focus!r}, counted as a stack run counts it)",
        "n_units": int(t.size), "levels": list(LEVELS),
        "coverage": {"units": coverage_report(cal, t, p, terms)["coverage"]},
        "mae": float(np.mean(np.abs(t - p))), "date": datetime.date.today().isoformat(),
    }


def _stack(units: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate per-image unit arrays (``view_sums`` rows included)."""
    return {k: np.concatenate([x[k] for x in units]) for k in units[0]}


def save_calibration(model: str | os.PathLike | None, record: dict[str, Any], default: bool = False) -> Path:
    """Write ``record`` into the model's card (atomically); returns the card path.

    The record becomes the card's default calibration when ``default``, when the card has none
    or when it recalibrates the default method; otherwise it is kept under ``methods`` (chosen
    at run time with ``--uncertainty``). A replaced default moves under ``methods``.
    """
    card, cpath = read_card(model)
    old = dict(card.calibration or {})
    others = dict(old.pop("methods", None) or {})
    method = record["method"]
    if default or not old or old.get("method") == method:
        if old and old.get("method") != method:
            others[old["method"]] = old
        others.pop(method, None)
        card.calibration = {**record, **({"methods": others} if others else {})}
    else:
        others[method] = record
        card.calibration = {**old, "methods": others}
    atomic_write(cpath, card.to_json() + "\n")
    return cpath


def _command(a: argparse.Namespace, data: Path) -> str:
    """The exact command that reproduces the record (a stack set's own rendering command first, when recorded)."""
    if a.stacks:
        cmd = " ".join(["python -m wsicount.training.calibrate", a.model, data.as_posix(), "--stacks",
                        "--method", a.method])
        cset = data / "calset.json"
        made = json.loads(cset.read_text()).get("command") if cset.exists() else None
        return f"{made} && {cmd}" if made else cmd
    return " ".join(["python -m wsicount.training.calibrate", a.model, data.as_posix(), "--split", a.split,
                     "--method", a.method, "--grids", *map(str, a.grids), *(["--members", *a.members] if a.members else []),
                     *(["--head", a.head] if a.head else []),
                     *(["--p", str(a.p), "--passes", str(a.passes)] if a.method == "mcdropout" else [])])


def main(argv: list[str] | None = None) -> None:
    """``python -m wsicount.training.calibrate MODEL DATA [--split val] [--method M] [--grids 2 1] [--stacks] [--save]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--split", default=None, help="images' split (default val); not with --stacks")
    ap.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(METHODS))
    ap.add_argument("--grids", type=int, nargs="+", default=None, help="crops per image side, one unit set each [2 1]")
    ap.add_argument("--members", nargs="+", default=None, help="ensemble: the member models' cards (>= 2)")
    ap.add_argument("--head", default=None, help="hetero: the variance head (python -m wsicount.models.variance)")
    ap.add_argument("--p", type=float, default=0.2, help="mcdropout: bottleneck channel-dropout probability")
    ap.add_argument("--passes", type=int, default=8, help="mcdropout: sub-networks (passes)")
    ap.add_argument("--stacks", action="store_true",
                    help="DATA is a folder of time-lapse stacks, each with NAME.truth.json (per-frame counts) beside "
                         "it; every frame is one unit, counted as wsicount run counts it")
    ap.add_argument("--units", default=None, help="with --stacks: write every unit (stack,frame,true,count,area) "
                                                  "to this CSV")
    ap.add_argument("--save", action="store_true", help="store the record in the model's card")
    ap.add_argument("--default", action="store_true", help="with --save: make this method the card's default")
    a = ap.parse_args(argv)
    if a.stacks and (a.split or a.grids or a.members or a.head):
        ap.error("--stacks takes no --split, --grids, --members or --head (every frame of every stack is one unit)")
    if a.units and not a.stacks:
        ap.error("--units needs --stacks")
    a.split, a.grids = a.split or "val", a.grids or [2, 1]
    if a.stacks:
        rec = calibrate_stacks(a.model, a.data, method=a.method, units_csv=a.units)
        what = f"{rec['n_stacks']} stacks"
    else:
        rec = calibrate(a.model, a.data, split=a.split, method=a.method, grids=tuple(a.grids), members=a.members,
                        head=a.head, p=a.p, passes=a.passes)
        what = f"{rec['n_images']} images"
    rec["command"] = _command(a, Path(a.data))
    cov = rec["coverage"]
    print(f"{a.model}: {what}, {rec['n_units']} units; coverage units {cov['units']}"
          + (f", images {cov['images']}" if "images" in cov else ""))
    if a.save:
        print(f"saved in {save_calibration(a.model, rec, a.default)}")


if __name__ == "__main__":
    main()
