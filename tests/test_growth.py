"""Growth curves: the doubling-time fit (known rates, flat, decreasing, not exponential) and per-region
counts over a stack whose cells double at a known rate, counted by an exact oracle model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from wsicount.errors import RegionError
from wsicount.models import LoadedModel
from wsicount.timelapse.growth import FIELD, doubling_time
from wsicount.timelapse.run import count_stack
from wsicount.timelapse.write import write_tiff_stack

T = np.arange(0.0, 25.0, 1.0)  # hours


def test_doubling_time_of_noisy_exponential_growth_is_recovered_with_its_interval():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(40):
        c = 50 * 2 ** (T / 8.0) * np.exp(rng.normal(0, 0.05, T.size))
        g = doubling_time(T, c)
        assert g["reason"] is None and g["doubling_time_h"] == pytest.approx(8.0, rel=0.05)
        lo, hi = g["ci_h"]
        assert lo < g["doubling_time_h"] < hi
        hits += lo <= 8.0 <= hi
        assert g["window"] == {"first_frame": 0, "last_frame": 24, "start_h": 0.0, "end_h": 24.0, "frames": 25}
    assert hits >= 34  # a 95 % interval: 38 of 40 expected, 34 is 3 sd below


def test_frames_without_cells_are_left_out_of_the_window():
    c = 10 * 2 ** (T / 5.0)
    c[:4] = [0.0, 0.2, np.nan, 0.0]
    g = doubling_time(T, c)
    assert g["window"]["first_frame"] == 3 + 1 and g["window"]["frames"] == T.size - 4
    assert g["doubling_time_h"] == pytest.approx(5.0, rel=1e-6)


@pytest.mark.parametrize("counts, why", [
    (np.full(T.size, 30.0) * np.exp(np.random.default_rng(1).normal(0, 0.05, T.size)), "flat or decreasing"),
    (80 * 2 ** (-T / 10.0), "flat or decreasing"),
    (10 + 20 * T, "not exponential"),  # linear growth: the log-rate falls tenfold across the window
    (200 / (1 + 19 * np.exp(-0.5 * T)), "not exponential"),  # logistic: a plateau
    (np.array([0.0] * 23 + [3.0, 6.0]), "the fit needs 3"),
])
def test_no_doubling_time_when_growth_is_not_exponential(counts, why):
    g = doubling_time(T, counts)
    assert g["doubling_time_h"] is None and g["ci_h"] is None and why in g["reason"]


@pytest.fixture(scope="module")
def oracle(oracle_model) -> LoadedModel:
    """The exact counting model (density = image / 255): one 255 pixel is one cell."""
    return oracle_model


def _growing_stack(path: Path, td_left: float = 6.0, n_right: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A 64 x 64 field: cells (single 255 pixels) in the left half double every ``td_left`` h; the right half keeps
    ``n_right`` cells. Returns the true left and right counts per frame."""
    rng = np.random.default_rng(3)
    arr = np.zeros((T.size, 1, 1, 64, 64), np.uint8)
    left = np.round(3 * 2 ** (T / td_left)).astype(int)
    spots = rng.permutation(64 * 28)[: left.max()]  # left half: columns 2..29
    for i, n in enumerate(left):
        r, c = np.divmod(spots[:n], 28)
        arr[i, 0, 0, r, c + 2] = 255
    r, c = np.divmod(rng.permutation(64 * 28)[:n_right], 28)
    arr[:, 0, 0, r, c + 34] = 255
    write_tiff_stack(path, arr, T)
    return left, np.full(T.size, n_right)


def _regions(path: Path) -> Path:
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[x0, 0], [x1, 0], [x1, 64], [x0, 64],
                                                                                  [x0, 0]]]},
              "properties": {"objectType": "annotation", "name": name}}
             for name, x0, x1 in (("left", 0, 32), ("right", 32, 64))]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def test_growth_per_region_on_a_stack_doubling_at_a_known_rate(tmp_path, oracle):
    left, right = _growing_stack(tmp_path / "g.ome.tif")
    s = count_stack(tmp_path / "g.ome.tif", tmp_path / "out", oracle, regions=_regions(tmp_path / "r.geojson"))
    assert np.allclose(s["counts"], left + right, atol=1e-3)
    with open(tmp_path / "out" / "growth.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["frame", "time_h", "region", "count", "count_lo", "count_hi"]
    by = {name: np.array([float(r["count"]) for r in rows if r["region"] == name]) for name in (FIELD, "left", "right")}
    assert np.allclose(by["left"], left, atol=1e-3) and np.allclose(by["right"], right, atol=1e-3)
    assert np.allclose(by[FIELD], left + right, atol=1e-3)
    assert all(r["count_lo"] == "" for r in rows)  # the oracle is uncalibrated: no interval
    g = json.loads((tmp_path / "out" / "summary.json").read_text())["growth"]
    gl = g["regions"]["left"]
    assert gl["doubling_time_h"] == pytest.approx(6.0, rel=0.03) and gl["ci_h"][0] <= 6.0 <= gl["ci_h"][1]
    assert gl["window"]["frames"] == T.size
    assert g["regions"]["right"]["doubling_time_h"] is None and "flat" in g["regions"]["right"]["reason"]
    assert set(g["field"]) >= {"doubling_time_h", "ci_h", "window", "reason"}
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "out" / "timeline.png").convert("RGB"))
    assert ((img == (20, 150, 60)).all(axis=-1).sum() > 50) == (g["field"]["doubling_time_h"] is not None)


def test_regions_from_a_label_image_and_interval_columns_when_calibrated(tmp_path, oracle):
    from dataclasses import replace

    from PIL import Image

    from wsicount.uncertainty import fit_calibration

    left, right = _growing_stack(tmp_path / "g.ome.tif", td_left=4.0)
    lab = np.zeros((64, 64), np.uint8)
    lab[:, :32], lab[:, 32:] = 1, 2
    Image.fromarray(lab).save(tmp_path / "lab.png")
    rng = np.random.default_rng(0)
    p = rng.uniform(1, 50, 100)
    cal = fit_calibration(p + rng.normal(0, 1, 100), p, {"pred": p, "area": np.full(100, 4096.0)}, "poisson")
    lm = replace(oracle, card=replace(oracle.card, calibration=cal.to_dict()))
    s = count_stack(tmp_path / "g.ome.tif", tmp_path / "out", lm, regions=tmp_path / "lab.png")
    assert s["growth"]["regions"]["1"]["doubling_time_h"] == pytest.approx(4.0, rel=0.03)
    with open(tmp_path / "out" / "growth.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["region"] == "1"]
    assert all(float(r["count_lo"]) <= float(r["count"]) + 0.5 <= float(r["count_hi"]) + 1 for r in rows)
    assert all(float(r["count_lo"]) < float(r["count_hi"]) for r in rows)


def test_a_region_outside_the_frame_fails_before_any_frame_is_counted(tmp_path, oracle):
    _growing_stack(tmp_path / "g.ome.tif")
    bad = {"type": "Feature", "properties": {"name": "far"},
           "geometry": {"type": "Polygon", "coordinates": [[[500, 500], [600, 500], [600, 600], [500, 500]]]}}
    (tmp_path / "r.geojson").write_text(json.dumps(bad))
    with pytest.raises(RegionError, match="far"):
        count_stack(tmp_path / "g.ome.tif", tmp_path / "out", oracle, regions=tmp_path / "r.geojson")
    assert not (tmp_path / "out" / "density.ome.zarr").exists()


def test_no_frame_times_no_doubling_time(tmp_path, oracle):
    from wsicount.timelapse.write import write_frames

    arr = np.zeros((4, 1, 1, 16, 16), np.uint8)
    arr[:, 0, 0, 3, 3] = 255
    d = write_frames(tmp_path / "f", arr, np.arange(4.0), fmt="png", times_csv=False)
    for p in d.glob("*.png"):  # names without times
        p.rename(p.with_name(p.name.split("_")[0] + "_" + p.name.split("_")[1] + ".png"))
    s = count_stack(d, tmp_path / "out", oracle)
    assert "reason" in s["growth"] and "field" not in s["growth"]
    assert math.isclose(s["counts"][0], 1.0, abs_tol=1e-3)
