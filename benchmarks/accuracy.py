"""Accuracy of the bundled models next to published figures; appends a table to BENCHMARKS.md.

    python benchmarks/accuracy.py                       # evaluate the bundled weights
    python benchmarks/accuracy.py --retrain --seeds 0 1 2   # retrain each recipe per seed, then evaluate
    python benchmarks/accuracy.py --precisions fp32 bf16    # the same weights at each inference precision

TRP1 has no public test split here (only set1, the paper's training set): its model is
scored on the 16 validation images held out of set1 (card: training.val_names), which is
what the table states. VGG cells: test = cell_101..200; adipocytes: the 100 test ROIs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DATA, ROOT, publish  # noqa: E402

PUBLISHED = {
    "vgg-cells": "MAE: Cell-Net 2.2 ± 0.5, Count-ception 2.3 ± 0.4, FCRN 2.9 ± 0.2 (100 train images)",
    "melanocyte-trp1": "U-Net A_err 9.28 %, T_err 8.72 % (test = set2, not available here)",
    "adipocyte-he": "Count-ception (Cohen et al. 2017) reports on this set; figure not quoted here",
}
DATASETS = {"melanocyte-trp1": "trp1", "vgg-cells": "vgg_cells", "adipocyte-he": "adipocyte"}


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


def evaluate_model(name: str, model_path: str, precision: str = "fp32") -> dict:
    """Evaluate one model on its benchmark split at ``precision``; returns the metrics dict."""
    from wsicount.training.evaluate import evaluate
    from wsicount.models import resolve_model_path

    card = json.loads(resolve_model_path(model_path).read_text())
    data = DATA / DATASETS[name]
    if name == "melanocyte-trp1":
        with tempfile.TemporaryDirectory() as tmp:
            view = _val_split_folder(card, data, Path(tmp))
            res = evaluate(model_path, view, split="val", precision=precision)
            return {**res.metrics, "split": "val (16 of set1)", "precision": precision}
    res = evaluate(model_path, data, split="test", precision=precision)
    return {**res.metrics, "split": "test", "precision": precision}


def main() -> None:
    """Evaluate (optionally retrain) and append the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=list(DATASETS))
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"], default=["fp32"],
                    help="inference precision(s) to evaluate each model at [fp32]")
    ap.add_argument("--out", default=str(ROOT / "runs" / "accuracy"))
    ap.add_argument("--no-write", action="store_true", help="print only, do not touch BENCHMARKS.md")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"datasets not found at {DATA}")
    rows = []
    for name in args.names:
        results: dict[str, list[dict]] = {p: [] for p in args.precisions}
        for seed in args.seeds if args.retrain else [None]:
            if seed is None:
                path = name
            else:
                from train_bundled import RECIPES

                from wsicount.training.train import train

                folder, cfg = RECIPES[name]
                cfg.seed = seed
                path = str(train(DATA / folder, Path(args.out) / f"{name}-seed{seed}", cfg, progress=False))
            for prec in args.precisions:
                m = evaluate_model(name, path, prec)
                results[prec].append(m)
                print(name, seed, prec, {k: m[k] for k in ("mae", "rmse", "a_err", "t_err", "n_images")}, flush=True)
        rows += [(name, prec, res) for prec, res in results.items()]
    lines = ["| model | split | n | precision | MAE | RMSE | A_err | T_err | F1 (peaks) | seeds | published |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, prec, res in rows:
        def ms(key: str, pct: bool = False) -> str:
            v = np.array([r[key] for r in res], dtype=float) * (100 if pct else 1)
            return f"{v.mean():.2f}" + (f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "") + (" %" if pct else "")
        f1 = ms("f1") if "f1" in res[0] else "—"
        seeds = ",".join(str(s) for s in args.seeds) if args.retrain else "bundled"
        lines.append(f"| {name} | {res[0]['split']} | {res[0]['n_images']} | {prec} | {ms('mae')} | {ms('rmse')} | "
                     f"{ms('a_err', True)} | {ms('t_err', True)} | {f1} | {seeds} | {PUBLISHED[name]} |")
    table = "\n".join(lines)
    publish("Accuracy of the bundled models", table, not args.no_write)


if __name__ == "__main__":
    main()
