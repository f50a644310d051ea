"""End-to-end training on a tiny synthetic dataset: defaults, card contents, resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from wsicount.models import load_model
from wsicount.training.recipe import training_precision
from wsicount.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blob_dataset(root, n_train: int = 6, n_val: int = 2, size: int = 64) -> None:
    """Bright Gaussian blobs on a dark background, RGB with the signal in blue; points at the blobs."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    yy, xx = np.mgrid[:size, :size]
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "count", "split", "um_per_px", "n_points"])
        for i in range(n_train + n_val):
            pts = rng.uniform(6, size - 6, (int(rng.integers(3, 9)), 2))
            img = np.zeros((size, size, 3), np.uint8)
            blue = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0) for x, y in pts)
            img[..., 2] = np.clip(200 * blue + rng.normal(10, 3, (size, size)), 0, 255).astype(np.uint8)
            name = f"im{i}"
            Image.fromarray(img).save(root / "images" / f"{name}.png")
            np.savetxt(root / "points" / f"{name}.csv", pts, delimiter=",", header="x,y", comments="", fmt="%.2f")
            w.writerow([name, len(pts), "train" if i < n_train else "val", 0.5, len(pts)])


def test_train_with_defaults_writes_a_complete_card_and_resumes(tmp_path):
    _blob_dataset(tmp_path / "data")
    cfg = TrainConfig(arch="unet", arch_kwargs={"base_filters": 8}, epochs=2, batch_size=3, crop=32,
                      max_minutes=None, bn_images=2, threads=1, stain="DAPI")
    card_path = train(tmp_path / "data", tmp_path / "out", cfg, progress=False)
    card = json.loads(card_path.read_text())
    # trained through a linear output (every pixel keeps a gradient), clamped by ReLU when used
    assert card["arch_kwargs"]["head"] == "relu" and card["training"]["config"]["train_head"] == "linear"
    assert card["channels"] == [2]
    assert card["training"]["precision"] == training_precision("auto")
    assert card["sigma_px"] == card["training"]["sigma_px"] > 0
    dom = card["domain"]
    for key in ("modality", "stain", "mpp", "cell_diameter_um", "cells_per_mm2", "intensity", "channel"):
        assert dom[key] is not None, key
    assert dom["channel"] == "blue" and dom["stain"] == "DAPI" and dom["mpp"] == 0.5
    assert np.isfinite(card["metrics"]["val_mae"])
    lm = load_model(card_path)
    assert lm.card.domain == dom

    cfg.epochs = 3  # resume continues from the last checkpoint instead of starting over
    train(tmp_path / "data", tmp_path / "out", cfg, resume=True, progress=False)
    with open(tmp_path / "out" / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_time_budget_stops_training_early(tmp_path):
    _blob_dataset(tmp_path / "data", n_train=4)
    cfg = TrainConfig(arch="fcrn", arch_kwargs={"width": 8}, epochs=50, batch_size=2, crop=32,
                      max_minutes=1e-6, bn_images=2, threads=1)
    card = json.loads(train(tmp_path / "data", tmp_path / "out", cfg, progress=False).read_text())
    assert card["training"]["epochs_run"] == 1
