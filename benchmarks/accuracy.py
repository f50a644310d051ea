"""Accuracy of the bundled models (model x dataset) beside published figures, in one table.

    python benchmarks/accuracy.py                         # every bundled model on its benchmark split
    python benchmarks/accuracy.py nuclei-fluo --update-cards   # also write the scores into the card
    python benchmarks/accuracy.py --retrain --seeds 0 1 2 # retrain each recipe per seed, then evaluate
    python benchmarks/accuracy.py --precisions fp32 bf16  # the same weights at each inference precision
    python benchmarks/accuracy.py vgg-cells --cards runs/vgg-cells-seed*/vgg-cells.json  # trained seeds, mean ± sd
    python benchmarks/accuracy.py vgg-cells --uncertainty ensemble  # the count of the card's calibrated ensemble

Splits: VGG cells test = cell_101..200; adipocytes: the 100 test ROIs; nuclei_fluo / nuclei_he:
their test splits. TRP1 has no public test split here (only set1, the paper's training set): its
model is scored on the 16 validation images held out of set1 (card: training.val_names).
Published rows are quoted as collected in the datasets' READMEs (check the papers before citing).
``--update-cards`` also fills a legacy card's missing ``head`` (ReLU after its linear output) and
``domain`` (from its training images), so the card's metrics describe the model as it now runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DATA, ROOT, command, machine, publish  # noqa: E402

#: model -> (dataset folder, split scored)
BENCH = {"melanocyte-trp1": ("trp1", "val"), "vgg-cells": ("vgg_cells", "test"),
         "adipocyte-he": ("adipocyte", "test"), "nuclei-fluo": ("nuclei_fluo", "test"),
         "nuclei-he": ("nuclei_he", "test"), "nuclei-he-40x": ("nuclei_he", "test")}
#: published / reference rows: (method, dataset, {metric: text}, note)
ANCHORS = [
    ("Cell-Net (published)", "vgg_cells", {"mae": "2.2 ± 0.5"}, "100 train images"),
    ("Count-ception (published)", "vgg_cells", {"mae": "2.3 ± 0.4"}, "100 train images"),
    ("FCRN (published)", "vgg_cells", {"mae": "2.9 ± 0.2"}, "100 train images"),
    ("U-Net (DGMM 2024, published)", "trp1", {"a_err": "9.28 %", "t_err": "8.72 %"}, "their test set = set2, not here"),
    ("goal for bundled nuclei models", "nuclei_*", {"a_err": "≤ 8 %"}, "per-image relative error"),
    ("classical scikit-image, as first measured", "nuclei_fluo", {"mae": "21.5", "a_err": "52.7 %"}, "test, untuned"),
]
COLS = ["mae", "rmse", "bias", "a_err", "t_err", "f1", "loc_error_px"]


def _val_split_folder(model_card: dict, src: Path, dst: Path) -> Path:
    """A manifest-layout view of ``src`` whose 'val' split is the card's validation images."""
    import csv

    names = set(model_card["training"]["val_names"])
    (dst / "images").symlink_to(src / "images")
    (dst / "points").symlink_to(src / "points")
    with open(src / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(dst / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "split": "val" if r["name"] in names else "train"})
    return dst


def evaluate_model(name: str, model_path: str, precision: str = "fp32", uncertainty: str | None = None) -> dict:
    """Evaluate one model on its benchmark split at ``precision`` (``uncertainty``: a calibrated method,
    e.g. ensemble, whose count is scored); metrics plus what ran."""
    from wsicount.models import resolve_model_path
    from wsicount.training.evaluate import evaluate

    card = json.loads(resolve_model_path(model_path).read_text())
    folder, split = BENCH[name]
    data = DATA / folder
    with tempfile.TemporaryDirectory() as tmp:
        if split == "val":
            data = _val_split_folder(card, data, Path(tmp))
        res = evaluate(model_path, data, split=split, precision=precision, uncertainty=uncertainty)
    label = "val (16 of set1)" if name == "melanocyte-trp1" else split
    return {**res.metrics, "det_precision": res.metrics["precision"], "split": label, "dataset": folder, "precision": res.precision,
            "card_sha256": res.card_sha256, "weights_sha256": res.weights_sha256}


def classical_row(folder: str, modality: str) -> dict:
    """The untuned scikit-image count (:mod:`wsicount.baseline`) on ``folder``'s test split."""
    from wsicount.baseline import classical_count
    from wsicount.training.data import load_dataset
    from wsicount.training.evaluate import count_metrics

    samples = load_dataset(DATA / folder, split="test")
    m = count_metrics([s.count for s in samples], [classical_count(s.image, modality) for s in samples])
    return {**m, "split": "test", "dataset": folder, "precision": "—", "card_sha256": "—",
            "f1": math.nan, "loc_error_px": math.nan}


def update_card(name: str, m: dict) -> None:
    """Write the scores (and a missing head / domain) into the bundled card ``name``."""
    from wsicount.models import read_card
    from wsicount.store.atomic import atomic_write
    from wsicount.training.data import load_dataset
    from wsicount.training.recipe import data_domain

    card, path = read_card(name)
    if "head" not in card.arch_kwargs:  # trained with a linear output: earlier scores predate the clamp
        card.arch_kwargs["head"] = "relu"
        card.metrics = {"at_training (linear output, before the ReLU head)": card.metrics}
    if not card.domain:
        folder, _ = BENCH[name]
        val = set(card.training.get("val_names", []))
        train = [s for s in load_dataset(DATA / folder, split="train") if s.name not in val]
        stain = {"melanocyte-trp1": "TRP1", "vgg-cells": "synthetic (SIMCEP)", "adipocyte-he": "H&E"}.get(name)
        card.domain = data_domain(train, card.channels, card.modality, stain)
    keep = ["split", "dataset", "n_images", "mae", "rmse", "a_err", "t_err", "bias", "f1", "det_precision",
            "recall", "loc_error_px", "precision", "interval_method", "coverage", "mean_width"]
    scores = {k: m[k] for k in keep if k in m}
    if m.get("split") != "test":  # the intervals were calibrated on these images: their coverage is in-sample
        scores = {k: v for k, v in scores.items() if k not in ("interval_method", "coverage", "mean_width")}
    card.metrics = {**card.metrics, "benchmark": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                                  for k, v in scores.items()},
                    "benchmark_command": command()}
    atomic_write(path, card.to_json())


def _cell(v: list[float], pct: bool) -> str:
    """mean (± sd over seeds) of a metric, as a table cell."""
    a = np.array(v, dtype=float) * (100 if pct else 1)
    if not np.isfinite(a).all():
        return "—"
    sd = f" ± {a.std(ddof=1):.2f}" if len(a) > 1 else ""
    return f"{a.mean():.2f}{sd}" + (" %" if pct else "")


def table(rows: list[tuple[str, str, list[dict]]], seeds: str) -> str:
    """Markdown: one row per (model, precision) measured, then the published anchors."""
    head = ("| model | dataset (split, n) | precision | MAE | RMSE | bias | A_err | T_err | F1 | loc. err px | seeds "
            "| card sha256 |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, prec, res in rows:
        r0 = res[0]
        cells = [_cell([r[k] for r in res], k in ("a_err", "t_err")) for k in COLS]
        lines.append(f"| {name} | {r0['dataset']} ({r0['split']}, {r0['n_images']}) | {r0['precision']} | "
                     + " | ".join(cells) + f" | {seeds if prec != '—' else '—'} | {r0['card_sha256'][:12]} |")
    for method, ds, vals, note in ANCHORS:
        cells = [vals.get(k, "") for k in COLS]
        lines.append(f"| {method} | {ds} ({note}) | — | " + " | ".join(cells) + " | — | — |")
    return "\n".join(lines)


def main() -> None:
    """Evaluate (optionally retrain), print the table, optionally write it and the cards."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=None)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cards", nargs="+", default=None, metavar="CARD",
                    help="score these trained cards of the one NAME given (e.g. one per seed): mean ± sd over them")
    ap.add_argument("--precisions", nargs="+", choices=["auto", "fp32", "bf16", "fp16"], default=["fp32"])
    ap.add_argument("--out", default=str(ROOT / "runs" / "accuracy"))
    ap.add_argument("--update-cards", action="store_true", help="write the scores into the bundled cards")
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--uncertainty", default=None, help="score the count of this calibrated method "
                    "(e.g. ensemble: the mean of the card's members) instead of the card's own model")
    ap.add_argument("--classical", action="store_true", help="add the classical scikit-image count on the nuclei sets")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"datasets not found at {DATA}")
    from wsicount.models import bundled_models

    names = args.names or [n for n in BENCH if n in bundled_models()]
    if args.cards and (len(names) != 1 or args.retrain or args.update_cards):
        sys.exit("--cards scores one model NAME's trained cards; it takes neither --retrain nor --update-cards")
    if args.uncertainty and args.update_cards:
        sys.exit("--update-cards records the card's own model; it takes no --uncertainty")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, per_run = [], []
    for name in names:
        results: dict[str, list[dict]] = {p: [] for p in args.precisions}
        runs = args.cards if args.cards else (args.seeds if args.retrain else [None])
        for run in runs:
            path = name if run is None else run if args.cards else _retrain(name, run, out)
            for prec in args.precisions:
                m = evaluate_model(name, path, prec, args.uncertainty)
                results[prec].append(m)
                per_run.append({"model": name, "path": str(path), **m})
                print(name, path, prec, {k: m[k] for k in ("mae", "bias", "a_err", "t_err", "f1", "n_images")}, flush=True)
                if args.update_cards and run is None and prec == args.precisions[0]:
                    update_card(name, m)
        rows += [(name, prec, res) for prec, res in results.items()]
    if args.classical:
        for folder, modality in (("nuclei_fluo", "fluorescence"), ("nuclei_he", "brightfield")):
            rows.append(("classical scikit-image (wsicount.baseline)", "—", [classical_row(folder, modality)]))
    seeds = f"{len(args.cards)} cards" if args.cards else ",".join(map(str, args.seeds)) if args.retrain else "bundled"
    body = f"machine: {machine()}\n\ncommand: `{command()}`\n\n" + table(rows, seeds)
    (out / "accuracy.md").write_text(body + "\n")
    (out / "accuracy-runs.json").write_text(json.dumps(per_run, indent=1, default=str) + "\n")
    publish("Accuracy of the bundled models", body, args.write)


def _retrain(name: str, seed: int, out: Path) -> str:
    """Train ``name``'s recipe with ``seed``; returns the new card's path."""
    from train_bundled import RECIPES

    from wsicount.training.train import train

    folder, cfg = RECIPES[name]
    cfg.seed = seed
    return str(train(DATA / folder, out / f"{name}-seed{seed}", cfg, progress=False))


if __name__ == "__main__":
    main()
