"""Cell tables: cells.csv and cells.geojson agree with the peaks, in level-0 pixels or µm, empty or not."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest

from wsicount.aggregate import Aggregate
from wsicount.report.tables import CELL_FIELDS, cell_table, cells_csv, cells_geojson


def _agg(peaks: np.ndarray) -> Aggregate:
    return Aggregate(total=float(len(peaks)), peaks=peaks, counts={}, tissue_mm2={})


@pytest.mark.parametrize("n", [0, 1, 2500])
def test_cells_csv_and_geojson_match_the_peaks(n: int):
    rng = np.random.default_rng(n)
    peaks = np.column_stack([rng.uniform(0, 5000, n), rng.uniform(0, 7000, n), rng.uniform(0.01, 0.5, n)])
    geom = SimpleNamespace(model_mpp=1.8092)
    mpp0 = 0.4523
    cells = cell_table(_agg(peaks), geom, mpp0)
    rows = list(csv.DictReader(io.StringIO(cells_csv(cells))))
    assert len(rows) == n and (n == 0 or list(rows[0]) == CELL_FIELDS)
    x_um = (peaks[:, 1] + 0.5) * geom.model_mpp
    y_px = (peaks[:, 0] + 0.5) * geom.model_mpp / mpp0 - 0.5
    np.testing.assert_allclose([float(r["x_um"]) for r in rows], x_um, atol=5e-4)
    np.testing.assert_allclose([float(r["y_px"]) for r in rows], y_px, atol=5e-3)
    np.testing.assert_array_equal([float(r["peak_density"]) for r in rows], peaks[:, 2])
    for units, (kx, ky) in (("px", ("x_px", "y_px")), ("um", ("x_um", "y_um"))):
        gj = json.loads(cells_geojson(cells, units, mpp0))
        assert gj["type"] == "FeatureCollection" and gj["wsicount"]["mpp"] == mpp0
        assert len(gj["features"]) == n
        if n:
            f = gj["features"][-1]
            assert f["geometry"] == {"type": "Point", "coordinates": [float(rows[-1][kx]), float(rows[-1][ky])]}
            assert f["properties"]["classification"]["name"] == "Cell"


def test_regions_csv_is_what_the_csv_module_writes():
    """regions.csv, built column-wise, is byte-identical to csv.DictWriter over one dict per grid cell."""
    from wsicount.report.tables import REGION_FIELDS, region_columns, region_rows, regions_csv

    rng = np.random.default_rng(3)
    counts, tissue = {}, {}
    for g, shape in ((100.0, (37, 53)), (1000.0, (4, 6))):
        t = rng.uniform(0, (g / 1000) ** 2, shape) * (rng.random(shape) < 0.6)
        c = rng.gamma(2.0, 30.0, shape) * (t > 0)
        c[0, 0], t[0, 0] = 1.5, 0.0  # counts without tissue: listed, with an empty density
        counts[g], tissue[g] = c, t.astype(np.float32)
    agg = Aggregate(total=0.0, peaks=np.zeros((0, 3)), counts=counts, tissue_mm2=tissue)
    ref = io.StringIO()
    w = csv.DictWriter(ref, fieldnames=REGION_FIELDS, lineterminator="\n")
    w.writeheader()
    for g in counts:
        t, c = tissue[g], counts[g]
        for r, col in zip(*np.nonzero((t > 0) | (c > 0))):
            w.writerow({"grid_um": g, "row": int(r), "col": int(col), "y0_um": r * g, "x0_um": col * g,
                        "y1_um": (r + 1) * g, "x1_um": (col + 1) * g,
                        "tissue_fraction": round(float(t[r, col] / (g / 1000.0) ** 2), 6),
                        "tissue_mm2": float(t[r, col]), "count": float(c[r, col]),
                        "cells_per_mm2": float(c[r, col] / t[r, col]) if t[r, col] > 0 else ""})
    columns = {g: region_columns(agg, g) for g in counts}
    assert regions_csv(columns) == ref.getvalue()
    rows = list(csv.DictReader(io.StringIO(ref.getvalue())))
    coarse = region_rows(columns[1000.0])
    assert [str(r["count"]) for r in coarse] == [r["count"] for r in rows if r["grid_um"] == "1000.0"]
    assert coarse[0]["cells_per_mm2"] == "" and coarse[0]["count"] == 1.5
