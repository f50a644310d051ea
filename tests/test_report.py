"""Cell tables: cells.csv and cells.geojson agree with the peaks, in level-0 pixels or µm, empty or not."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest

from wsicount.report import CELL_FIELDS, Aggregate, _cells, _cells_csv, _geojson


def _agg(peaks: np.ndarray) -> Aggregate:
    return Aggregate(total=float(len(peaks)), peaks=peaks, counts={}, tissue_mm2={})


@pytest.mark.parametrize("n", [0, 1, 2500])
def test_cells_csv_and_geojson_match_the_peaks(n: int):
    rng = np.random.default_rng(n)
    peaks = np.column_stack([rng.uniform(0, 5000, n), rng.uniform(0, 7000, n), rng.uniform(0.01, 0.5, n)])
    geom = SimpleNamespace(model_mpp=1.8092)
    mpp0 = 0.4523
    cells = _cells(_agg(peaks), geom, mpp0)
    rows = list(csv.DictReader(io.StringIO(_cells_csv(cells))))
    assert len(rows) == n and (n == 0 or list(rows[0]) == CELL_FIELDS)
    x_um = (peaks[:, 1] + 0.5) * geom.model_mpp
    y_px = (peaks[:, 0] + 0.5) * geom.model_mpp / mpp0 - 0.5
    np.testing.assert_allclose([float(r["x_um"]) for r in rows], x_um, atol=5e-4)
    np.testing.assert_allclose([float(r["y_px"]) for r in rows], y_px, atol=5e-3)
    np.testing.assert_array_equal([float(r["peak_density"]) for r in rows], peaks[:, 2])
    for units, (kx, ky) in (("px", ("x_px", "y_px")), ("um", ("x_um", "y_um"))):
        gj = json.loads(_geojson(cells, units, mpp0))
        assert gj["type"] == "FeatureCollection" and gj["wsicount"]["mpp"] == mpp0
        assert len(gj["features"]) == n
        if n:
            f = gj["features"][-1]
            assert f["geometry"] == {"type": "Point", "coordinates": [float(rows[-1][kx]), float(rows[-1][ky])]}
            assert f["properties"]["classification"]["name"] == "Cell"
