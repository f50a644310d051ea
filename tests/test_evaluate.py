"""Count metrics, peak detection, Hungarian matching and the evaluation report."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsicount.detect import density_peaks, match_points, unit_peak_height
from wsicount.errors import InputError
from wsicount.training.evaluate import EvalResult, ImageResult, count_metrics, evaluate, write_evaluation
from wsicount.models import ModelCard, build_model, save_model
from wsicount.training.targets import density_map


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_count_metrics_hand_made():
    m = count_metrics([10, 0, 4], [8, 1, 5])  # errors -2, +1, +1
    assert m["n_images"] == 3
    assert m["mae"] == pytest.approx(4 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(2))
    assert m["a_err"] == pytest.approx((2 / 10 + 1 / 4) / 2)  # the empty image is left out
    assert m["a_err_n_images"] == 2
    assert m["t_err"] == pytest.approx(4 / 14)
    assert m["bias"] == pytest.approx(0.0)
    assert m["mean_true"] == pytest.approx(14 / 3) and m["mean_pred"] == pytest.approx(14 / 3)


def test_count_metrics_perfect_and_biased():
    assert count_metrics([3, 5], [3, 5])["mae"] == 0.0
    m = count_metrics([10, 20], [12, 24])
    assert (m["bias"], m["a_err"], m["t_err"]) == pytest.approx((3.0, 0.2, 0.2))


def test_count_metrics_all_empty_images():
    m = count_metrics([0, 0], [1, 0])
    assert math.isnan(m["a_err"]) and math.isnan(m["t_err"]) and m["mae"] == 0.5


def test_count_metrics_rejects_bad_input():
    with pytest.raises(ValueError):
        count_metrics([1, 2], [1])
    with pytest.raises(ValueError):
        count_metrics([], [])


def test_hungarian_beats_greedy():
    """Greedy nearest-first would pair A with X (1.0) and leave B and Y unmatched."""
    pred = [[0.0, 0.0], [0.0, 2.5]]  # A, B as (y, x)
    true = [[0.0, 1.0], [0.0, -1.5]]  # X, Y
    r = match_points(pred, true, radius=2.0)
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    np.testing.assert_array_equal(r.pairs, [[0, 1], [1, 0]])
    np.testing.assert_allclose(r.distances, [1.5, 1.5])
    assert (r.precision, r.recall, r.f1) == (1.0, 1.0, 1.0)


def test_matching_respects_radius_and_one_to_one():
    pred = [[10.0, 10.0], [10.0, 11.0], [50.0, 50.0]]
    true = [[10.0, 10.5], [30.0, 30.0]]
    r = match_points(pred, true, radius=3.0)
    assert (r.tp, r.fp, r.fn) == (1, 2, 1)
    assert r.distances.tolist() == [0.5]
    assert r.precision == pytest.approx(1 / 3) and r.recall == 0.5 and r.f1 == pytest.approx(0.4)
    assert match_points([[0.0, 0.0]], [[0.0, 3.0]], radius=3.0).tp == 1  # the radius is inclusive


def test_matching_with_empty_sets():
    r = match_points(np.zeros((0, 2)), [[1.0, 1.0]], radius=2.0)
    assert (r.tp, r.fp, r.fn) == (0, 0, 1) and math.isnan(r.precision)
    r = match_points([[1.0, 1.0]], [], radius=2.0)
    assert (r.tp, r.fp, r.fn) == (0, 1, 0)


def test_density_peaks_finds_gaussian_centres():
    xy = np.array([[10.3, 12.7], [40.0, 20.2], [0.0, 50.0], [60.6, 60.1], [25.5, 44.25]])  # one on the border
    d = density_map(xy, (64, 70), sigma_px=3.0)
    peaks = density_peaks(d, sigma_px=3.0)
    assert peaks.shape == (5, 2)
    r = match_points(peaks, xy[:, ::-1], radius=0.1)
    assert r.tp == 5 and r.distances.max() < 0.02  # the log-parabola fit is exact for Gaussians


def test_density_peaks_threshold_and_min_distance():
    d = density_map(np.array([[20.0, 20.0]]), (40, 40), sigma_px=3.0)
    d += density_map(np.array([[8.0, 30.0]]), (40, 40), sigma_px=3.0, scale=0.1)  # a faint blob: noise
    assert len(density_peaks(d, sigma_px=3.0)) == 1  # default threshold: half a unit peak
    assert len(density_peaks(d, sigma_px=3.0, threshold_abs=0.05 * unit_peak_height(3.0))) == 2
    assert len(density_peaks(np.zeros((16, 16)), sigma_px=2.0)) == 0
    # two cells 4 px apart are resolved with a small min_distance, merged with a large one
    two = density_map(np.array([[18.0, 20.0], [22.0, 20.0]]), (40, 40), sigma_px=1.0)
    assert len(density_peaks(two, sigma_px=1.0, min_distance=2)) == 2
    assert len(density_peaks(two, sigma_px=1.0, min_distance=5)) == 1


def test_density_peaks_with_smoothing():
    d = density_map(np.array([[20.0, 20.0], [5.0, 5.0]]), (32, 32), sigma_px=2.0)
    rng = np.random.default_rng(0)
    noisy = d + rng.normal(0, 0.002, d.shape)
    peaks = density_peaks(noisy, sigma_px=2.0, smooth_sigma=1.0)
    r = match_points(peaks, [[20.0, 20.0], [5.0, 5.0]], radius=1.0)
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)


def _result() -> EvalResult:
    """A hand-made evaluation of two images."""
    rows = [
        ImageResult("a", 10.0, 8.0, 2.0, 0.2, 10, 9, 8, 1, 2, 0.5),
        ImageResult("b", 0.0, 1.0, 1.0, math.nan, 0, 1, 0, 1, 0, math.nan),
    ]
    metrics = count_metrics([10.0, 0.0], [8.0, 1.0])
    metrics.update({"precision": 0.8, "recall": 0.8, "f1": 0.8, "loc_error_px": 0.5, "loc_error_um": None})
    return EvalResult("tiny", "/x/tiny.json", "/data/set", "test", 3.0, metrics, rows)


def test_write_evaluation_writes_three_files(tmp_path):
    paths = write_evaluation(_result(), tmp_path / "m.json", tmp_path / "out" / "per_image.csv", tmp_path / "s.png")
    assert [p.name for p in paths] == ["m.json", "per_image.csv", "s.png"]
    summary = json.loads((tmp_path / "m.json").read_text())
    for key in ("mae", "rmse", "a_err", "t_err", "n_images", "precision", "recall", "f1", "model", "data", "split"):
        assert key in summary
    assert summary["a_err"] == pytest.approx(0.2) and summary["n_images"] == 2 and summary["model"] == "tiny"
    with open(tmp_path / "out" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"name", "true", "pred", "abs_err", "rel_err", "tp", "fp", "fn"} <= set(rows[0])
    assert [r["name"] for r in rows] == ["a", "b"] and rows[1]["rel_err"] == ""
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob(".tmp-*"))  # temp files were renamed, none left behind


def test_write_evaluation_json_is_strict(tmp_path):
    """NaN metrics (no non-empty image) are written as null, not as the invalid token NaN."""
    r = _result()
    r.metrics["a_err"] = math.nan
    write_evaluation(r, json_path=tmp_path / "m.json")
    assert "NaN" not in (tmp_path / "m.json").read_text()
    assert json.loads((tmp_path / "m.json").read_text())["a_err"] is None


def _blob_image(rng: np.random.Generator, n: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """8-bit gray image with ``n`` separated bright blobs (jittered 12 px grid), and their (x, y) centres."""
    grid = np.array([(x, y) for x in range(6, size - 5, 12) for y in range(6, size - 5, 12)], dtype=np.float64)
    pts = (grid[rng.choice(len(grid), n, replace=False)] + rng.uniform(-1.5, 1.5, (n, 2))).round(1)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 20.0)
    for x, y in pts:
        img += 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
    return np.clip(img, 0, 255).astype(np.uint8), pts


@pytest.fixture
def tiny_dataset(tmp_path):
    """A manifest-layout dataset: 1 train and 3 test images (one of them not a multiple of 8)."""
    root = tmp_path / "blobs"
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    rng = np.random.default_rng(0)
    lines = ["name,count,split,um_per_px,n_points"]
    specs = (("t0", 3, "train", 48), ("a", 4, "test", 48), ("b", 0, "test", 40), ("c", 2, "test", 44))
    for name, n, split, size in specs:
        img, pts = _blob_image(rng, n, size)
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        np.savetxt(root / "points" / f"{name}.csv", pts.reshape(-1, 2), delimiter=",", header="x,y", comments="")
        lines.append(f"{name},{n},{split},0.5,{n}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny_model(tmp_path):
    """Card path of a randomly initialised narrow U-Net packaged like a real model."""
    torch.manual_seed(0)
    m = build_model("unet", base_filters=8).eval()
    card = ModelCard(name="tiny-unet", arch="unet", arch_kwargs={"in_channels": 1, "base_filters": 8}, sigma_px=2.0)
    return save_model(m, card, tmp_path / "model" / "tiny-unet")


def test_evaluate_end_to_end(tiny_dataset, tiny_model, tmp_path):
    seen = []
    res = evaluate(tiny_model, tiny_dataset, split="test", progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert (res.model, res.split, res.match_radius_px) == ("tiny-unet", "test", 3.0)  # 1.5 x sigma_px
    assert [r.name for r in res.images] == ["a", "b", "c"]
    assert [r.true for r in res.images] == [4.0, 0.0, 2.0]
    m = res.metrics
    assert m["n_images"] == 3 and all(math.isfinite(m[k]) for k in ("mae", "rmse", "a_err", "t_err"))
    assert m["mae"] == pytest.approx(np.mean([r.abs_err for r in res.images]))
    assert m["tp"] + m["fn"] == 6 and m["tp"] + m["fp"] == sum(r.n_peaks for r in res.images)
    if m["tp"]:
        assert m["loc_error_um"] == pytest.approx(0.5 * m["loc_error_px"])
    paths = write_evaluation(res, tmp_path / "e.json", tmp_path / "e.csv", tmp_path / "e.png")
    assert all(p.stat().st_size > 0 for p in paths)
    summary = json.loads(paths[0].read_text())
    assert summary["split"] == "test"
    # what ran is recorded: the resolved precision and the exact card and weights
    assert summary["inference_precision"] == res.precision == "fp32"  # the card validates no bf16
    assert summary["card_sha256"] == hashlib.sha256(Path(tiny_model).read_bytes()).hexdigest()
    weights = Path(tiny_model).with_suffix(".safetensors").read_bytes()
    assert summary["weights_sha256"] == hashlib.sha256(weights).hexdigest()


def test_evaluate_detection_is_perfect_for_a_perfect_density(tiny_dataset, tiny_model, monkeypatch):
    """With predictions equal to the targets, counts and detections are exact."""
    import wsicount.training.evaluate as ev
    from wsicount.training.data import load_dataset

    targets = {s.image.tobytes(): density_map(s.points, s.image.shape, 2.0) for s in load_dataset(tiny_dataset)}
    monkeypatch.setattr(ev, "predict_image", lambda model, image, **kw: targets[image.tobytes()])
    res = evaluate(tiny_model, tiny_dataset, split="test", match_radius_px=1.0)
    m = res.metrics
    assert m["mae"] == pytest.approx(0.0, abs=1e-4)
    assert (m["tp"], m["fp"], m["fn"]) == (6, 0, 0) and m["f1"] == 1.0
    assert m["loc_error_px"] < 0.05


def test_evaluate_empty_split_is_an_input_error(tiny_dataset, tiny_model):
    with pytest.raises(InputError, match="val"):
        evaluate(tiny_model, tiny_dataset, split="val")


def test_evaluate_writes_calibrated_intervals(tiny_dataset, tiny_model, tmp_path):
    """A card calibrated with calibrate() makes evaluate() report lo/hi, coverage and mean width."""
    from wsicount.models import read_card
    from wsicount.training.calibrate import calibrate, save_calibration

    rec = calibrate(tiny_model, tiny_dataset, split="train", grids=(5,))  # 25 units: a finite 95 % quantile
    assert (rec["method"], rec["data"], rec["split"], rec["n_images"], rec["n_units"]) == (
        "shared", "blobs", "train", 1, 25)
    assert rec["coverage"]["units"]["0.9"] >= 0.9  # in-sample: the conformal rank guarantees it
    save_calibration(tiny_model, rec)
    assert read_card(tiny_model)[0].calibration["scores"] == rec["scores"]
    res = evaluate(tiny_model, tiny_dataset, split="test")
    for r in res.images:
        assert 0 <= r.lo <= r.hi < math.inf and (r.lo <= r.pred <= r.hi or r.pred < 0)  # a random net may be < 0
    m = res.metrics
    assert set(m["coverage"]) == set(m["mean_width"]) == {"0.8", "0.9", "0.95"}
    inside = np.mean([r.lo <= r.true <= r.hi for r in res.images])
    assert m["coverage"]["0.95"] == pytest.approx(inside)
    paths = write_evaluation(res, tmp_path / "e.json", tmp_path / "e.csv")
    assert json.loads(paths[0].read_text())["interval_level"] == 0.95
    with open(paths[1], newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["lo"]) == pytest.approx(res.images[0].lo)


def test_calibrate_uses_the_cards_held_out_names(tiny_dataset, tiny_model):
    from wsicount.models import read_card
    from wsicount.training.calibrate import calibrate, save_calibration

    card, path = read_card(tiny_model)
    card.training = {"val_names": ["a", "c"]}
    path.write_text(card.to_json())
    rec = calibrate(tiny_model, tiny_dataset, split="val", grids=(3, 1))
    assert rec["n_images"] == 2 and rec["n_units"] == 2 * (9 + 1) and "val_names" in rec["split"]
    assert rec["units"] == "each image and its 3x3 crops"
    card.training = {"val_names": ["a", "c"], "cal_names": ["b"]}  # calibration images win over validation's
    path.write_text(card.to_json())
    rec = calibrate(tiny_model, tiny_dataset, split="val", grids=(3, 1))
    assert rec["n_images"] == 1 and "cal_names" in rec["split"]
    card.training = {}
    path.write_text(card.to_json())
    with pytest.raises(InputError, match="val"):
        calibrate(tiny_model, tiny_dataset, split="val")
    save_calibration(tiny_model, {**rec, "method": "magic"})
    with pytest.raises(Exception, match="unknown calibration method"):
        evaluate(tiny_model, tiny_dataset, split="test")


def test_evaluate_in_background_context_counts_the_image_and_its_rim(tiny_dataset, tmp_path):
    """``context='background'``: each count is the sum of predict_in_context's map (image grown by the receptive radius)."""
    from wsicount.infer import predict_in_context
    from wsicount.models import load_model
    from wsicount.training.data import load_dataset

    lm = load_model()  # the bundled default: a trained network answers the blobs (a random ReLU one gives 0)
    res = evaluate(lm, tiny_dataset, split="test", context="background", precision="fp32")
    for r, s in zip(res.images, load_dataset(tiny_dataset, split="test")):
        assert r.pred == pytest.approx(float(predict_in_context(lm, s.image).sum(dtype=np.float64)), rel=1e-6)
    alone = evaluate(lm, tiny_dataset, split="test", precision="fp32")
    assert sum(r.pred for r in res.images) > 0
    assert [r.pred for r in res.images] != [r.pred for r in alone.images]  # the framings differ
    paths = write_evaluation(res, tmp_path / "e.json")
    assert json.loads(paths[0].read_text())["context"] == "background"
    with pytest.raises(InputError, match="context"):
        evaluate(lm, tiny_dataset, split="test", context="mirror")


def test_cli_evaluate_context_option(tiny_dataset, tmp_path):
    """``wsicount evaluate --context background`` gives the library's framing and records it; a bad value is a usage error."""
    from click.testing import CliRunner

    from wsicount.cli import cli

    out = tmp_path / "e.json"
    args = ["evaluate", "melanocyte-trp1", str(tiny_dataset), "--split", "test", "--precision", "fp32"]
    res = CliRunner().invoke(cli, [*args, "--context", "background", "--json", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    lib = evaluate("melanocyte-trp1", tiny_dataset, split="test", precision="fp32", context="background")
    assert summary["context"] == "background" and summary["mae"] == pytest.approx(lib.metrics["mae"], rel=1e-6)
    assert CliRunner().invoke(cli, [*args, "--context", "mirror"]).exit_code == 2
