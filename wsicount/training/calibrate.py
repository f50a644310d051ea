"""Calibrating a model's count intervals on held-out images and storing the result in its card.

``calibrate(model, data)`` runs the model on the calibration split with
:func:`wsicount.training.evaluate.evaluate` and takes as calibration units each whole image
and its ``g x g`` crops for every ``g`` in ``grids`` (default: the image and its 2 x 2
quarters). Crops give enough units for a finite 95 % quantile from 10-16 images and are the
scale of a slide's tiles; whole images put the error of larger areas (a shared bias) into
the variance fit. :func:`wsicount.uncertainty.fit_calibration` fits the terms, and the
returned record is what ``ModelCard.calibration`` holds. ``split="val"`` means the images the
card's training validated on (``training.val_names``: the dataset's ``val`` rows plus any training
images it held out) or, for a card that lists none, the dataset's ``val`` rows, so a model is never
calibrated on its test split.

Recalibrate a bundled model in one line (``--save`` rewrites its card)::

    python -m wsicount.training.calibrate vgg-cells ../shared/data/vgg_cells --save
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import Any

import numpy as np

from .data import Sample, load_dataset
from .evaluate import _load, evaluate
from ..errors import InputError
from ..models import LoadedModel, read_card
from ..store.atomic import atomic_write
from ..uncertainty import DEFAULT_METHOD, LEVELS, METHODS, coverage_report, crop_terms, fit_calibration, predict_tta

__all__ = ["calibrate", "calibration_names", "save_calibration"]


def calibration_names(lm: LoadedModel, root: Path, split: str) -> tuple[str | None, list[str] | None, str]:
    """(split to load, image names to keep, description) of the calibration images."""
    if split != "val":
        return split, None, split
    try:
        load_dataset(root, split="val")  # a missing or malformed folder is the user's error here
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    names = lm.card.training.get("val_names")
    if not names:
        return "val", None, "val"
    return None, list(names), "training.val_names (held out of training)"


def calibrate(model: str | os.PathLike | LoadedModel | None, data: str | os.PathLike, split: str = "val",
              method: str = DEFAULT_METHOD, grids: tuple[int, ...] = (2, 1), device: str = "cpu",
              precision: str = "fp32") -> dict[str, Any]:
    """Fit ``method``'s interval on the calibration images and their crops; the card's record.

    The record holds the method, data, split, units, the fitted terms (bias, weights, floor,
    sorted scores) and the coverage reached on the calibration units and images (in-sample,
    so >= nominal by construction over all units).
    """
    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}; choose from {sorted(METHODS)}")
    if not grids or min(grids) < 1:
        raise InputError(f"grids must be crops per side >= 1, got {grids}")
    lm = _load(model, device)
    root = Path(data)
    load_split, names, what = calibration_names(lm, root, split)
    units: dict[int, list[dict[str, np.ndarray]]] = {g: [] for g in {*grids, 1}}

    def collect(s: Sample, dens: np.ndarray) -> None:
        tta = predict_tta(lm, s.image, device, precision) if method == "tta" else None
        d = tta.mean(axis=0) if tta is not None else dens
        for g, acc in units.items():
            acc.append(crop_terms(d, s.points, s.point_weight, g, tta))

    card = lm.card
    saved, card.calibration = card.calibration, {}  # score the raw model, not a previous calibration
    try:
        res = evaluate(lm, root, split=load_split, device=device, precision=precision, names=names, on_image=collect)
    finally:
        card.calibration = saved
    u = _stack([x for g in grids for x in units[g]])
    img = _stack(units[1])
    cal = fit_calibration(u["true"], u["count"], u, method)
    return {
        **cal.to_dict(), "data": root.name, "split": what, "n_images": len(res.images),
        "units": "whole images" if tuple(grids) == (1,) else
                 "each image and its " + ", ".join(f"{g}x{g}" for g in grids if g > 1) + " crops",
        "n_units": int(u["true"].size), "levels": list(LEVELS),
        "coverage": {"units": coverage_report(cal, u["true"], u["count"], u)["coverage"],
                     "images": coverage_report(cal, img["true"], img["count"], img)["coverage"]},
        "date": datetime.date.today().isoformat(),
    }


def _stack(units: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate per-image unit arrays (``tta_sums`` rows included)."""
    return {k: np.concatenate([x[k] for x in units]) for k in units[0]}


def save_calibration(model: str | os.PathLike | None, record: dict[str, Any]) -> Path:
    """Write ``record`` into the model's card (atomically); returns the card path."""
    card, cpath = read_card(model)
    card.calibration = record
    atomic_write(cpath, card.to_json() + "\n")
    return cpath


def main(argv: list[str] | None = None) -> None:
    """``python -m wsicount.training.calibrate MODEL DATA [--split val] [--method M] [--grids 2 1] [--save]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--split", default="val")
    ap.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(METHODS))
    ap.add_argument("--grids", type=int, nargs="+", default=[2, 1], help="crops per image side, one unit set each")
    ap.add_argument("--save", action="store_true", help="store the record in the model's card")
    a = ap.parse_args(argv)
    rec = calibrate(a.model, a.data, split=a.split, method=a.method, grids=tuple(a.grids))
    rec["command"] = " ".join(["python -m wsicount.training.calibrate", a.model, Path(a.data).as_posix(),
                               "--split", a.split, "--method", a.method, "--grids", *map(str, a.grids)])
    cov = rec["coverage"]
    print(f"{a.model}: {rec['n_images']} images, {rec['n_units']} units; coverage units {cov['units']}, "
          f"images {cov['images']}")
    if a.save:
        print(f"saved in {save_calibration(a.model, rec)}")


if __name__ == "__main__":
    main()
