"""Calibrating on time-lapse stacks: every frame one unit, counted as a stack run counts it; the CLI's record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wsicount.errors import InputError
from wsicount.models import load_model, read_card
from wsicount.synth.embryo import EmbryoParams, synth_embryo
from wsicount.timelapse.run import count_stack
from wsicount.training.calibrate import calibrate_stacks, main
from wsicount.uncertainty import Calibration, fit_calibration

SMALL = EmbryoParams(size=96, mpp=2.0, n_frames=8, n_planes=2, polar_bodies=1, n_fragments=1, jpeg_quality=90)


@pytest.fixture(scope="module")
def model_path(tiny_cellnet):
    """The shared untrained Cell-Net: calibration plumbing does not need accuracy."""
    return tiny_cellnet


@pytest.fixture(scope="module")
def calset(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    truths = [synth_embryo(d / f"e{s}.ome.tif", format="ome-tiff", params=SMALL, seed=s) for s in (5, 6)]
    (d / "calset.json").write_text(json.dumps({"description": "two tiny stacks", "seeds": [5, 6],
                                               "command": "make-the-set"}))
    return d, truths


def test_each_frame_is_a_unit_counted_as_a_stack_run_counts_it(tmp_path, model_path, calset):
    d, truths = calset
    lm = load_model(model_path)
    rec = calibrate_stacks(lm, d, method="shared", units_csv=tmp_path / "units.csv")
    assert rec["n_stacks"] == 2 and rec["n_units"] == 16 and rec["method"] == "shared"
    assert rec["data"] == "two tiny stacks" and rec["split"] == "all frames (seeds 5-6)"
    counts = np.concatenate([count_stack(d / f"e{s}.ome.tif", tmp_path / str(s), lm)["counts"] for s in (5, 6)])
    true = np.concatenate([t.counts for t in truths]).astype(float)
    want = fit_calibration(true, counts, {"pred": np.maximum(counts, 0), "area": np.full(16, 96.0 * 96.0)}, "shared")
    units = np.genfromtxt(tmp_path / "units.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert units.size == 16 and np.allclose(units["count"], counts) and np.array_equal(units["true"], true)
    got = Calibration.from_dict(rec)
    assert got.weights == pytest.approx(want.weights, rel=1e-6, abs=1e-9)
    assert got.scores == pytest.approx(want.scores, rel=1e-6, abs=1e-9) and got.bias == pytest.approx(want.bias)
    # in-sample, a conformal quantile covers at least its level of the units it was taken from
    assert all(rec["coverage"]["units"][f"{lv:g}"] >= lv for lv in (0.8, 0.9))


def test_only_frame_methods_and_a_folder_with_truth(tmp_path, model_path, calset):
    with pytest.raises(InputError, match="shared or poisson"):
        calibrate_stacks(model_path, calset[0], method="tta")
    with pytest.raises(InputError, match="truth.json"):
        calibrate_stacks(model_path, tmp_path, method="shared")
    (tmp_path / "lost.ome.tif.truth.json").write_text("{}")
    with pytest.raises(InputError, match="no stack"):
        calibrate_stacks(model_path, tmp_path, method="shared")


def test_cli_saves_the_record_with_its_reproducing_command(tmp_path, model_path, calset, capsys):
    card = tmp_path / "tiny"
    shutil.copytree(model_path.parent, card)
    path = card / model_path.name
    main([str(path), str(calset[0]), "--stacks", "--method", "shared", "--save"])
    cal = read_card(path)[0].calibration
    assert cal["method"] == "shared" and cal["n_units"] == 16
    assert cal["command"] == (f"make-the-set && python -m wsicount.training.calibrate {path.as_posix()} "
                              f"{calset[0].as_posix()} --stacks --method shared")
    assert "16 units" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(path), str(calset[0]), "--stacks", "--grids", "2"])
