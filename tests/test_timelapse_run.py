"""count_stack: outputs, t-chunking invariance, resume per frame, unreadable frames named and bridged."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from wsicount.errors import OutputError
from wsicount.models import ModelCard, load_model
from wsicount.synth.embryo import EmbryoParams, synth_embryo
from wsicount.timelapse.run import count_stack

SMALL = EmbryoParams(size=96, mpp=2.0, n_frames=9, n_planes=2, polar_bodies=1, n_fragments=1, jpeg_quality=90)


@pytest.fixture(scope="module")
def model(tiny_cellnet):
    """The shared untrained Cell-Net, loaded: the pipeline's plumbing does not need accuracy."""
    return load_model(tiny_cellnet)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("s") / "emb"
    truth = synth_embryo(d, format="frames", params=SMALL, seed=2)
    return d, truth


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_outputs_and_chunking_invariance(tmp_path, model, stack):
    d, truth = stack
    a = count_stack(d, tmp_path / "a", model, chunk_frames=1, batch_size=1)
    b = count_stack(d, tmp_path / "b", model, chunk_frames=4, batch_size=3)
    assert np.allclose(np.array(a["counts"]), np.array(b["counts"]), rtol=1e-4, atol=1e-4)
    assert a["stages"] == b["stages"] and a["cleavage"] == b["cleavage"]
    tl = _rows(tmp_path / "a" / "timeline.csv")
    assert [r["frame"] for r in tl] == [str(i) for i in range(9)]
    assert np.allclose([float(r["time_h"]) for r in tl], truth.times_h, atol=1e-3)
    assert all(int(r["stage"]) >= 1 for r in tl) and list(tl[0]) == ["frame", "time_h", "count", "count_lo",
                                                                        "count_hi", "stage", "planes", "status"]
    import zarr

    z = zarr.open_group(str(tmp_path / "a" / "density.ome.zarr"), mode="r")
    assert z["0"].shape == (9, 96, 96)
    assert np.allclose(np.asarray(z["0"]).sum(axis=(1, 2)), a["counts"], rtol=1e-3)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["cleavage"]["frames"].keys() >= {"t2", "t8"}
    assert (tmp_path / "a" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "a" / "cells.csv").read_text().splitlines()[0] == "t,time_h,x,y"


def _calibrated(model):
    """The tiny model with a calibration fitted on synthetic residuals (sd ~ 0.3 + 10 % of the count)."""
    from wsicount.uncertainty import fit_calibration

    rng = np.random.default_rng(1)
    pred = rng.uniform(0.5, 20.0, 200)
    true = pred + rng.normal(0, 1, 200) * (0.3 + 0.1 * pred)
    cal = fit_calibration(true, pred, {"pred": pred, "area": np.full(200, 96.0 * 96.0)}, "shared")
    return replace(model, card=replace(model.card, calibration={**cal.to_dict(), "data": "synthetic", "split": "all"}))


def test_per_frame_intervals_from_the_cards_calibration(tmp_path, model, stack):
    from wsicount.uncertainty import Calibration

    lm = _calibrated(model)
    s = count_stack(stack[0], tmp_path / "c", lm)
    assert s["count_interval"]["method"] == "shared" and s["count_interval"]["level"] == 0.95
    assert s["count_interval"]["calibration"] == {"data": "synthetic", "split": "all"}
    cal = Calibration.from_dict(lm.card.calibration)
    for r in _rows(tmp_path / "c" / "timeline.csv"):
        c, lo, hi = float(r["count"]), float(r["count_lo"]), float(r["count_hi"])
        want = cal.interval(c, {"pred": max(c, 0.0), "area": 96 * 96}, 0.95)
        assert (lo, hi) == pytest.approx(want, abs=2e-3) and 0.0 <= lo < hi
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "c" / "timeline.png").convert("RGB"))
    assert (img == (200, 220, 245)).all(axis=-1).sum() > 100  # the band is drawn
    plain = count_stack(stack[0], tmp_path / "u", model)  # no calibration: empty columns and a note, no numbers
    assert plain["count_interval"]["method"] is None and "no count calibration" in plain["count_interval"]["note"]
    assert all(r["count_lo"] == "" and r["count_hi"] == "" for r in _rows(tmp_path / "u" / "timeline.csv"))
    img = np.asarray(Image.open(tmp_path / "u" / "timeline.png").convert("RGB"))
    assert not (img == (200, 220, 245)).all(axis=-1).any()


def test_focus_all_uses_every_plane(tmp_path, model, stack):
    s = count_stack(stack[0], tmp_path / "o", model, focus="all")
    assert all(p == [0, 1] for p in s["focus"]["planes_per_frame"])
    best = count_stack(stack[0], tmp_path / "p", model, focus="best")
    assert all(len(p) == 1 for p in best["focus"]["planes_per_frame"])


def test_resume_skips_recorded_frames_and_checks_settings(tmp_path, model, stack):
    out = tmp_path / "r"
    first = count_stack(stack[0], out, model)
    rec = out / ".wsicount-stack" / "frames" / "000003.json"
    r = json.loads(rec.read_text())
    r["count"] = 42.0  # a resumed run must take the record, not recompute the frame
    rec.write_text(json.dumps(r))
    again = count_stack(stack[0], out, model)
    assert again["resumed"] and again["counts"][3] == 42.0
    assert again["counts"][:3] == first["counts"][:3]
    with pytest.raises(OutputError, match="focus"):
        count_stack(stack[0], out, model, focus="all")
    fresh = count_stack(stack[0], out, model, overwrite=True)
    assert not fresh["resumed"] and fresh["counts"][3] == first["counts"][3]


def test_unreadable_frame_is_named_and_others_counted(tmp_path, model):
    d = tmp_path / "bad"
    synth_embryo(d, format="frames", params=replace(SMALL, n_planes=1), seed=5)
    victim = sorted(d.glob("*.jpg"))[4]
    victim.write_bytes(b"not a jpeg")
    s = count_stack(d, tmp_path / "o", model)
    assert [b["frame"] for b in s["unreadable_frames"]] == [4]
    assert victim.name in s["unreadable_frames"][0]["error"]
    assert s["counts"][4] is None and all(c is not None for i, c in enumerate(s["counts"]) if i != 4)
    tl = _rows(tmp_path / "o" / "timeline.csv")
    assert tl[4]["status"] == "unreadable" and tl[4]["count"] == "" and tl[3]["status"] == "ok"
    s = count_stack(d, tmp_path / "c", _calibrated(model))
    tl = _rows(tmp_path / "c" / "timeline.csv")
    assert tl[4]["count_lo"] == tl[4]["count_hi"] == "" and all(r["count_hi"] for i, r in enumerate(tl) if i != 4)


def test_bundled_model_recovers_cleavage_times_within_a_frame(tmp_path):
    from wsicount.models import bundled_models

    if "blastomere" not in bundled_models():
        pytest.skip("the bundled blastomere model is not installed")
    p = EmbryoParams(n_frames=36, n_planes=3, start_h=22.0, end_h=62.0)
    truth = synth_embryo(tmp_path / "e.ome.tif", format="ome-tiff", params=p, seed=4242)  # a seed no training used
    s = count_stack(tmp_path / "e.ome.tif", tmp_path / "out", "blastomere")
    got = s["cleavage"]["frames"]
    for name in ("t2", "t4", "t8"):
        assert abs(got[name] - truth.cleavage_frames[name]) <= 1, (name, got, truth.cleavage_frames)
    assert np.mean(np.array(s["stages"]) == np.minimum(truth.counts, 8)) > 0.8


def test_bundled_blastomere_gives_calibrated_frame_intervals(tmp_path):
    from PIL import Image

    from wsicount.models import bundled_models

    if "blastomere" not in bundled_models():
        pytest.skip("the bundled blastomere model is not installed")
    p = EmbryoParams(n_frames=8, n_planes=1, start_h=22.0, end_h=62.0)
    synth_embryo(tmp_path / "e.ome.tif", format="ome-tiff", params=p, seed=4343)  # a seed no training or calibration used
    s = count_stack(tmp_path / "e.ome.tif", tmp_path / "out", "blastomere")
    assert s["count_interval"]["method"] == "shared" and s["count_interval"]["level"] == 0.95
    assert s["count_interval"]["calibration"]["n_units"] > 0
    for r in _rows(tmp_path / "out" / "timeline.csv"):
        c, lo, hi = float(r["count"]), float(r["count_lo"]), float(r["count_hi"])
        assert 0.0 <= lo <= c <= hi and lo < hi, r
    img = np.asarray(Image.open(tmp_path / "out" / "timeline.png").convert("RGB"))
    assert (img == (200, 220, 245)).all(axis=-1).sum() > 100  # the interval band is drawn


def test_strongest_peaks_agree_with_the_count():
    from wsicount.timelapse.run import strongest_peaks

    d = np.zeros((20, 20))
    pk = np.array([[2.0, 2.0], [5.0, 9.0], [15.0, 4.0], [10.0, 10.0]])
    d[2, 2], d[5, 9], d[15, 4], d[10, 10] = 0.1, 0.9, 0.5, 0.05
    assert np.array_equal(strongest_peaks(d, pk, 2.2), pk[[1, 2]])  # order of the input kept
    assert np.array_equal(strongest_peaks(d, pk, 7.0), pk)
    assert strongest_peaks(d, pk, 0.3).shape == (0, 2)


def test_run_cli_on_a_stack_with_regions_writes_growth(tmp_path, stack):
    from click.testing import CliRunner

    from wsicount.cli import cli
    from wsicount.models import bundled_models

    if "blastomere" not in bundled_models():
        pytest.skip("the bundled blastomere model is not installed")
    left = {"type": "Feature", "properties": {"objectType": "annotation", "name": "left"},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [48, 0], [48, 96], [0, 96], [0, 0]]]}}
    (tmp_path / "r.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [left]}))
    res = CliRunner().invoke(cli, ["run", str(stack[0]), "--out", str(tmp_path / "o"), "--regions",
                                   str(tmp_path / "r.geojson"), "--mpp", "2", "-q"])
    assert res.exit_code == 0, res.output
    rows = _rows(tmp_path / "o" / "growth.csv")
    assert [r["region"] for r in rows] == ["(field)"] * 9 + ["left"] * 9
    assert all(float(r["count"]) <= float(f["count"]) + 1e-3 for r, f in zip(rows[9:], rows[:9]))
    assert set(json.loads((tmp_path / "o" / "summary.json").read_text())["growth"]["regions"]) == {"left"}


def test_frame_intervals_use_a_method_a_frame_can_compute():
    from wsicount.timelapse.run import frame_intervals
    from wsicount.uncertainty import fit_calibration

    rng = np.random.default_rng(2)
    p = rng.uniform(1, 20, 100)
    terms = {"pred": p, "area": np.full(100, 900.0), "tta_var": rng.uniform(0, 1, 100)}
    tta = {**fit_calibration(p + rng.normal(0, 1, 100), p, terms, "tta").to_dict(), "data": "d"}
    shared = {**fit_calibration(p + rng.normal(0, 1, 100), p, terms, "shared").to_dict(), "data": "s"}
    card = ModelCard(name="m", arch="cellnet", calibration=tta)
    lo, hi, info = frame_intervals(card, np.array([3.0, np.nan]), 900)
    assert np.isnan(lo).all() and info["method"] is None and "tta" in info["note"]
    card.calibration = {**tta, "methods": {"shared": shared}}
    lo, hi, info = frame_intervals(card, np.array([3.0, np.nan]), 900)
    assert info["method"] == "shared" and info["calibration"] == {"data": "s"}
    assert lo[0] < 3.0 * (1 + shared["bias"]) < hi[0] and np.isnan(lo[1])
