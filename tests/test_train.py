"""End-to-end training on a tiny synthetic dataset: defaults, card contents, resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
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


def _ellipse_dataset(root, n: int = 6, size: int = 64, mpp: float = 1.0) -> None:
    """Elongated blobs (random orientation) with their ellipses in a,b,angle columns; 2 of the images are val."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    yy, xx = np.mgrid[:size, :size]
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "count", "split", "um_per_px"])
        for i in range(n):
            k = int(rng.integers(2, 6))
            pts, ab, ang = rng.uniform(12, size - 12, (k, 2)), rng.uniform(3, 7, (k, 2)), rng.uniform(0, 180, k)
            img = np.full((size, size), 20.0)
            for (x, y), (a, b), t in zip(pts, ab, np.deg2rad(ang)):
                u = (xx - x) * np.cos(t) + (yy - y) * np.sin(t)
                v = -(xx - x) * np.sin(t) + (yy - y) * np.cos(t)
                img += 180 * np.exp(-0.5 * ((u / a) ** 2 + (v / b) ** 2))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
            with open(root / "points" / f"im{i}.csv", "w") as pf:
                pf.write("x,y,a,b,angle\n" + "".join(f"{x:.2f},{y:.2f},{a:.2f},{b:.2f},{t:.1f}\n"
                                                       for (x, y), (a, b), t in zip(pts, ab, ang)))
            w.writerow([f"im{i}", k, "val" if i >= n - 2 else "train", mpp])


def test_points_with_ellipse_columns_train_shape_aware_targets(tmp_path):
    from wsicount.training.data import load_dataset
    from wsicount.training.targets import target_map

    _ellipse_dataset(tmp_path / "data")
    for s in load_dataset(tmp_path / "data"):  # every image's shape-aware target integrates to its count
        assert s.ellipses.shape == (len(s.points), 3)
        assert target_map(s.points, s.ellipses, s.image.shape, 2.0, s.point_weight, 0.3).sum() == pytest.approx(s.count,
                                                                                                                  rel=1e-5)
    cfg = TrainConfig(arch="fcrn", arch_kwargs={"width": 8}, epochs=1, batch_size=2, crop=32, max_minutes=None,
                      bn_images=2, threads=1, modality="brightfield")
    card = json.loads(train(tmp_path / "data", tmp_path / "out", cfg, progress=False).read_text())
    assert card["training"]["targets"] == "elliptical (0.3 x each semi-axis)" and card["training"]["epochs_run"] == 1
    assert np.isfinite(card["metrics"]["val_mae"])


def test_fine_tuning_starts_from_the_bundled_blastomere_model(tmp_path):
    import torch

    from wsicount.models import bundled_models

    if "blastomere" not in bundled_models():
        pytest.skip("the bundled blastomere model is not installed")
    _ellipse_dataset(tmp_path / "data", size=96, mpp=1.0)  # resampled to the model's 2 µm/px: 48 px
    cfg = TrainConfig(init="blastomere", epochs=1, batch_size=2, lr=1e-12, max_minutes=None, bn_images=2, threads=1)
    path = train(tmp_path / "data", tmp_path / "out", cfg, progress=False)
    card, base = json.loads(path.read_text()), load_model("blastomere")
    assert card["arch"] == "cellnet" and card["arch_kwargs"] == base.card.arch_kwargs
    assert card["mpp"] == base.card.mpp and card["normalization"]["low"] == base.card.normalization["low"]
    assert card["training"]["crop"] == [48, 48] and card["training"]["config"]["init"] == "blastomere"
    tuned = load_model(path).module.state_dict()
    for k, v in base.module.state_dict().items():  # lr ~ 0: the weights are the model's, not a random start
        if "running" not in k and "num_batches" not in k:
            assert torch.allclose(tuned[k].float(), v.float(), atol=1e-6), k


def test_freeze_bn_keeps_the_start_models_batchnorm_statistics(tmp_path):
    import torch

    _blob_dataset(tmp_path / "data")
    base_cfg = TrainConfig(arch="unet", arch_kwargs={"base_filters": 8}, epochs=1, batch_size=3, crop=32,
                           max_minutes=None, bn_images=2, threads=1)
    base = train(tmp_path / "data", tmp_path / "base", base_cfg, progress=False)
    cfg = TrainConfig(init=str(base), epochs=1, batch_size=3, crop=32, lr=1e-2, max_minutes=None, frame=0.5,
                      freeze_bn=True, threads=1)
    card = train(tmp_path / "data", tmp_path / "tuned", cfg, progress=False)
    before, after = load_model(base).module.state_dict(), load_model(card).module.state_dict()
    stats = [k for k in before if "running_" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)  # neither trained nor recalibrated
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert json.loads(card.read_text())["training"]["bn_recalibration_images"] == 0


def test_calibration_images_are_held_out_of_training_and_validation(tmp_path):
    _blob_dataset(tmp_path / "data", n_train=8, n_val=2)
    cfg = TrainConfig(arch="fcrn", arch_kwargs={"width": 8}, epochs=1, batch_size=2, crop=32, max_minutes=None,
                      n_cal=3, bn_images=2, threads=1)
    tr = json.loads(train(tmp_path / "data", tmp_path / "out", cfg, progress=False).read_text())["training"]
    assert len(tr["cal_names"]) == 3 and not set(tr["cal_names"]) & set(tr["val_names"])
    assert tr["n_train"] == 5 and set(tr["cal_names"]) <= {f"im{i}" for i in range(8)}


def test_split_seed_fixes_the_hold_outs_across_training_seeds():
    """Members of one ensemble (split_seed shared) hold out the same validation and calibration images."""
    from wsicount.training.data import Sample
    from wsicount.training.train import hold_out_calibration, split_train_val

    samples = [Sample(f"im{i}", np.zeros((8, 8, 3), np.uint8), np.zeros((0, 2)), 0.0, "train", 1.0) for i in range(30)]

    def held(seed: int, split_seed: int | None) -> tuple[set, set]:
        cfg = TrainConfig(n_val=4, n_cal=5, seed=seed, split_seed=split_seed)
        tr, va = split_train_val(samples, cfg)
        _, ca = hold_out_calibration(tr, cfg)
        return {s.name for s in va}, {s.name for s in ca}

    assert held(0, 7) == held(3, 7) == held(7, None)
    assert held(0, None) != held(3, None)


def test_train_cli_refuses_architecture_options_with_init(tmp_path):
    from click.testing import CliRunner

    from wsicount.cli import cli

    _ellipse_dataset(tmp_path / "data", n=3)
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--init",
                                   "blastomere", "--arch", "unet"])
    assert res.exit_code != 0 and "--arch" in res.output and "--init" in res.output


def test_ema_validates_and_keeps_the_averaged_weights_and_resumes(tmp_path):
    _blob_dataset(tmp_path / "data")
    cfg = TrainConfig(arch="unet", arch_kwargs={"base_filters": 8}, epochs=1, batch_size=3, crop=32, lr=1e-2,
                      max_minutes=None, bn_images=2, threads=1, ema=0.9)
    train(tmp_path / "data", tmp_path / "out", cfg, progress=False)
    ck = torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "out" / "checkpoints" / "best.pt", weights_only=True)["model"]
    averaged = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    assert int(ck["ema"]["n_averaged"]) > 1
    # one epoch, validated once: the kept weights are the average's, not the last step's
    convs = [k for k in best if k.endswith("weight") and best[k].ndim == 4]
    assert all(torch.equal(best[k], averaged[k]) for k in convs)
    assert not all(torch.equal(best[k], ck["model"][k]) for k in convs)
    cfg.epochs = 2  # resume continues the average
    train(tmp_path / "data", tmp_path / "out", cfg, resume=True, progress=False)
    ck2 = torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=True)
    assert int(ck2["ema"]["n_averaged"]) > int(ck["ema"]["n_averaged"])
    with pytest.raises(ValueError, match="ema"):
        train(tmp_path / "data", tmp_path / "out2", TrainConfig(ema=1.0), progress=False)
