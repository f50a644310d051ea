"""User regions and count intervals through a whole slide run: region counts are the density inside each polygon."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import zarr
import shapely
from shapely.geometry import Polygon

import wsicount
from wsicount.errors import RegionError


def _qupath(path, features):
    """A QuPath-style annotation export."""
    feats = [{"type": "Feature", "properties": {"objectType": "annotation", "name": name,
                                                 "classification": {"name": cls, "color": [200, 0, 0]}},
              "geometry": geom} for name, cls, geom in features]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def _inside(shape_hw, poly: Polygon, scale0: float) -> np.ndarray:
    """Model-grid pixels whose centre (in level-0 px) lies inside ``poly``: the reference rasterisation."""
    ys, xs = np.mgrid[0 : shape_hw[0], 0 : shape_hw[1]]
    return shapely.contains_xy(poly, (xs + 0.5) * scale0, (ys + 0.5) * scale0)


def test_region_counts_are_the_density_inside_each_polygon(make_slide, tmp_path):
    truth = make_slide("ndpi")
    ring = [[300, 300], [1700, 300], [1700, 1500], [300, 1500], [300, 300]]
    hole = [[700, 700], [1100, 700], [1100, 1000], [700, 1000], [700, 700]]
    tri = [[1800, 200], [2500, 900], [1800, 1900], [1800, 200]]
    regions = _qupath(tmp_path / "r.geojson", [("with hole", "Tumor", {"type": "Polygon", "coordinates": [ring, hole]}),
                                               ("triangle", "Stroma", {"type": "Polygon", "coordinates": [tri]})])
    out = tmp_path / "out"
    s = wsicount.count(truth.path, out, regions=str(regions), tile_size=512)
    dens = zarr.open_array(str(out / "density" / "0"), mode="r")[...]
    scale0 = s["processing"]["model_mpp"] / s["slide"]["mpp"]  # level-0 px per model px
    by_name = {r["region"]: r for r in s["user_regions"]}
    for name, poly in (("with hole", Polygon(ring, [hole])), ("triangle", Polygon(tri))):
        ref = float(dens[_inside(dens.shape, poly, scale0)].sum(dtype=np.float64))
        assert by_name[name]["count"] == pytest.approx(ref, rel=1e-6, abs=1e-6)
        assert by_name[name]["count_lo"] <= by_name[name]["count_hi"]
    with open(out / "regions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["region"]]
    assert [(r["region"], r["class"]) for r in rows] == [("with hole", "Tumor"), ("triangle", "Stroma")]
    ci = s["total_cells_ci"]
    assert ci["level"] == 0.95 and 0 <= ci["lo"] < ci["hi"]


def test_a_region_outside_the_slide_fails_before_any_tile(make_slide, tmp_path):
    truth = make_slide("ndpi")
    far = [[90000, 90000], [91000, 90000], [91000, 91000], [90000, 90000]]
    regions = _qupath(tmp_path / "far.geojson", [("far away", "Tumor", {"type": "Polygon", "coordinates": [far]})])
    with pytest.raises(RegionError, match="far away"):
        wsicount.count(truth.path, tmp_path / "out", regions=str(regions), tile_size=512)
    assert not (tmp_path / "out" / ".wsicount" / "tiles").exists() or not any((tmp_path / "out" / ".wsicount" / "tiles").iterdir())
