"""A whole-slide time series (pyramidal OME-TIFF, T > 1) counted through the slide tile path frame by frame:
each time point is read as its own slide, counts equal the same pixels' single-slide count, growth is fitted."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from wsicount.errors import InputError, OutputError
from wsicount.io import open_slide
from wsicount.models import load_model
from wsicount.runner import count
from wsicount.store import StackLayout
from wsicount.synth import synth_slide
from wsicount.timelapse.series import count_slide_series, is_slide_series
from wsicount.timelapse.stack import is_stack
from wsicount.timelapse.write import write_pyramid_series

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMES = np.array([0.0, 10.0, 20.0])
DENSITIES = (150.0, 300.0, 600.0)  # cells per mm²: doubling every 10 h


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three 1024 px fluorescence frames (lossless) at the default model's µm/px, as one pyramidal OME-TIFF."""
    mpp = load_model().card.mpp
    d = tmp_path_factory.mktemp("series")
    frames = []
    for i, dens in enumerate(DENSITIES):
        truth = synth_slide(d / f"f{i}.tiff", format="tiff", size=(1024, 1024), seed=10 + i, mpp=mpp,
                            cell_density_per_mm2=dens, tissue_fraction=0.9, compression="deflate")
        with open_slide(truth.path) as sl:
            frames.append(sl.read_region(0, 0, 0, 1024, 1024))
    path = write_pyramid_series(d / "s.ome.tif", np.stack(frames), TIMES, mpp)
    single = write_pyramid_series(d / "one.ome.tif", np.stack(frames[1:2]), TIMES[1:2], mpp)
    return path, single, frames


def test_each_time_point_opens_as_its_own_slide(series):
    path, _, frames = series
    assert is_stack(path) and is_slide_series(path)
    for t, f in enumerate(frames):
        with open_slide(path, t=t) as sl:
            assert np.array_equal(sl.read_region(0, 100, 200, 64, 64), f[100:164, 200:264])
            assert sl.properties["wsicount.t_index"] == str(t)
    with pytest.raises(InputError, match="time point 3"):
        open_slide(path, t=3)


def test_series_counts_equal_single_slide_counts_and_growth_is_fitted(series, tmp_path):
    path, single, _ = series
    left = {"type": "Feature", "properties": {"objectType": "annotation", "name": "left"},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [512, 0], [512, 1024], [0, 1024], [0, 0]]]}}
    (tmp_path / "r.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [left]}))
    s = count_slide_series(path, tmp_path / "out", tile_size=512, regions=str(tmp_path / "r.geojson"))
    one = count(single, tmp_path / "one", tile_size=512)
    assert s["counts"][1] == pytest.approx(one["total_cells"], abs=1e-3)
    assert s["counts"][0] < s["counts"][1] < s["counts"][2]
    with open(tmp_path / "out" / "timeline.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["time_h"]) for r in rows] == list(TIMES) and all(r["status"] == "ok" for r in rows)
    assert all(float(r["count_lo"]) <= float(r["count"]) <= float(r["count_hi"]) for r in rows)  # calibrated model
    with open(tmp_path / "out" / "growth.csv", newline="") as fh:
        growth = list(csv.DictReader(fh))
    field, part = ([float(r["count"]) for r in growth if r["region"] == n] for n in ("(field)", "left"))
    assert field == pytest.approx(s["counts"], abs=1e-3) and len(part) == 3
    assert all(0 < p < f for p, f in zip(part, field)) and s["growth"]["regions"]["left"]["window"]["frames"] == 3
    g = s["growth"]["field"]
    assert g["doubling_time_h"] == pytest.approx(10.0, rel=0.25) and g["window"]["frames"] == 3
    lay = StackLayout(tmp_path / "out")
    assert [p.name for p in lay.frame_dirs()] == ["t0000", "t0001", "t0002"] and lay.foreign() == []
    for t in range(3):
        run = json.loads((lay.frame_dir(t) / "summary.json").read_text())
        assert run["total_cells"] == pytest.approx(s["counts"][t], abs=1e-3)
    (tmp_path / "out" / "t0001" / "mine.txt").write_text("precious")
    with pytest.raises(OutputError, match="t0001/mine.txt"):
        count_slide_series(path, tmp_path / "out", tile_size=512, overwrite=True)
    assert (tmp_path / "out" / "t0001" / "mine.txt").read_text() == "precious"
