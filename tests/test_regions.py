"""User regions: GeoJSON / label-image reading, rasterised counts against a pixel-centre reference."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon

import wsicount.regions as regions_mod
from wsicount.errors import RegionError, WsicountError
from wsicount.regions import LabelRegions, Region, check_regions, read_geojson, read_regions, region_counts
from wsicount.uncertainty import fit_calibration


def reference_sum(geom, density: np.ndarray, scale: float) -> tuple[float, int]:
    """Density sum and pixel count over model pixels whose level-0 centre lies in ``geom`` (shapely test)."""
    h, w = density.shape
    rr, cc = np.mgrid[0:h, 0:w]
    inside = shapely.contains_xy(geom, (cc.ravel() + 0.5) * scale, (rr.ravel() + 0.5) * scale).reshape(h, w)
    return float(density[inside].sum(dtype=np.float64)), int(inside.sum())


@pytest.fixture
def density() -> np.ndarray:
    return np.random.default_rng(0).random((120, 160)).astype(np.float32)


def holed_shapes() -> dict[str, object]:
    """A square with a hole, a concave L, and a two-part MultiPolygon whose first part has two holes."""
    square = Polygon([(10.3, 12.1), (150.7, 12.1), (150.7, 140.9), (10.3, 140.9)],
                     [[(40.2, 40.4), (90.6, 40.4), (90.6, 90.8), (40.2, 90.8)]])
    ell = Polygon([(200.1, 20.2), (300.3, 20.2), (300.3, 60.6), (240.4, 60.6), (240.4, 200.2), (200.1, 200.2)])
    multi = MultiPolygon([
        Polygon([(20.5, 160.5), (180.5, 160.5), (180.5, 230.5), (20.5, 230.5)],
                [[(30.2, 170.2), (60.2, 170.2), (60.2, 200.2), (30.2, 200.2)],
                 [(100.7, 180.7), (140.7, 180.7), (120.7, 220.7)]]),
        Polygon([(250.5, 215.5), (310.5, 215.5), (280.5, 235.5)]),
    ])
    return {"holed": square, "ell": ell, "multi": multi}


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5])
def test_polygon_counts_match_pixel_centre_reference(density: np.ndarray, scale: float) -> None:
    shapes = holed_shapes()
    shapes = {k: shapely.affinity.scale(g, scale / 2, scale / 2, origin=(0, 0)) for k, g in shapes.items()}
    rows = region_counts([Region(k, "c", g) for k, g in shapes.items()], density, model_mpp=0.5 * scale,
                         scale=scale)
    for row in rows:
        ref, n = reference_sum(shapes[row["region"]], density, scale)
        assert row["n_px"] == n
        assert row["count"] == pytest.approx(ref, rel=1e-9)
    holed = rows[0]
    assert holed["tissue_mm2"] == pytest.approx(holed["n_px"] * (0.5 * scale * 1e-3) ** 2)
    assert holed["cells_per_mm2"] == pytest.approx(holed["count"] / holed["tissue_mm2"])
    x0, y0, x1, y1 = shapes["holed"].bounds
    um0 = 0.5  # µm per level-0 px = model_mpp / scale
    assert (holed["x0_um"], holed["y0_um"], holed["x1_um"], holed["y1_um"]) == pytest.approx(
        (x0 * um0, y0 * um0, x1 * um0, y1 * um0))


@pytest.mark.parametrize("block", [8, 33])
def test_blocks_inside_outside_and_on_the_boundary_agree(density: np.ndarray, block: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Small blocks make most of them wholly inside or outside; sums still equal the pixel-centre reference."""
    monkeypatch.setattr(regions_mod, "_BLOCK", block)
    shapes = holed_shapes()
    rows = region_counts([Region(k, None, g) for k, g in shapes.items()], density, 1.0, 2.0)
    for row in rows:
        ref, n = reference_sum(shapes[row["region"]], density, 2.0)
        assert row["n_px"] == n and row["count"] == pytest.approx(ref, rel=1e-9)


def test_hole_removes_its_density() -> None:
    dens = np.ones((50, 50))
    outer = [(0, 0), (50, 0), (50, 50), (0, 50)]
    full = region_counts([Region("a", None, Polygon(outer))], dens, 1.0, 1.0)[0]
    holed = region_counts([Region("a", None, Polygon(outer, [[(10, 10), (20, 10), (20, 20), (10, 20)]]))],
                          dens, 1.0, 1.0)[0]
    assert full["count"] == 2500
    assert holed["count"] == 2500 - 100


def test_streams_in_bands(density: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny bands give the same sums, and no read holds more elements than one band."""
    shapes = holed_shapes()
    whole = region_counts([Region(k, None, g) for k, g in shapes.items()], density, 1.0, 2.0)

    class Spy:
        shape = density.shape
        rows: list[int] = []

        def __getitem__(self, key):
            out = density[key]
            self.rows.append(out.size)
            return out

    spy = Spy()
    monkeypatch.setattr(regions_mod, "_BAND_ELEMENTS", 7 * density.shape[1])
    banded = region_counts([Region(k, None, g) for k, g in shapes.items()], spy, 1.0, 2.0)
    assert [r["count"] for r in banded] == pytest.approx([r["count"] for r in whole])
    assert max(spy.rows) <= 7 * density.shape[1]


def test_tissue_mask_limits_area_not_count(density: np.ndarray) -> None:
    tissue = np.zeros((12, 16), bool)  # 10x coarser than the grid
    tissue[:, :8] = True
    geom = Polygon([(0, 0), (160, 0), (160, 120), (0, 120)])
    row = region_counts([Region("all", None, geom)], density, 1.0, 1.0, tissue_mask=tissue)[0]
    assert row["count"] == pytest.approx(float(density.sum(dtype=np.float64)))
    assert row["tissue_px"] == 120 * 80
    assert row["n_px"] == 120 * 160


def qupath_feature(name: str, cls: str, color: list[int], geometry: dict) -> dict:
    """A feature the way QuPath's 'Export objects as GeoJSON' writes an annotation."""
    return {"type": "Feature", "id": "6d1f0f9e-3a55-4c1d-9b2e-8c3a7d1e2f40", "geometry": geometry,
            "properties": {"objectType": "annotation", "name": name,
                           "classification": {"name": cls, "color": color}, "isLocked": False}}


def test_qupath_export_round_trips(tmp_path, density: np.ndarray) -> None:
    shapes = holed_shapes()
    feats = [qupath_feature("Tumour core", "Tumor", [200, 0, 0], shapely.geometry.mapping(shapes["holed"])),
             qupath_feature("Dermis", "Stroma", [150, 200, 150], shapely.geometry.mapping(shapes["multi"]))]
    detection = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
                 "properties": {"objectType": "detection"}}
    path = tmp_path / "export.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats + [detection]}))
    regions = read_regions(path)
    assert [(r.name, r.cls) for r in regions] == [("Tumour core", "Tumor"), ("Dermis", "Stroma")]
    assert regions[0].geometry.equals(shapes["holed"]) and regions[1].geometry.equals(shapes["multi"])
    # a bare list of features (QuPath's other export form) reads the same
    path.write_text(json.dumps(feats))
    assert [r.geometry.wkt for r in read_geojson(path)] == [r.geometry.wkt for r in regions]
    rows = region_counts(regions, density, 1.0, 2.0)
    assert rows[1]["class"] == "Stroma"
    assert rows[1]["count"] == pytest.approx(reference_sum(shapes["multi"], density, 2.0)[0])


def test_micrometre_coordinates(tmp_path) -> None:
    geom = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    path = tmp_path / "um.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "units": "µm",
                                "features": [qupath_feature("a", "x", [1, 2, 3], geom)]}))
    assert read_geojson(path, mpp0=0.25)[0].geometry.bounds == (0, 0, 40, 40)
    assert read_geojson(path, units="px")[0].geometry.bounds == (0, 0, 10, 10)  # explicit units win
    with pytest.raises(RegionError, match="'a'.*µm/px is unknown"):
        read_geojson(path)


def test_label_image(tmp_path, density: np.ndarray) -> None:
    labels = np.zeros((60, 80), np.uint16)  # half the grid's resolution: 4 level-0 px per label px at scale 2
    labels[5:20, 10:30] = 1
    labels[30:55, 40:75] = 7
    path = tmp_path / "labels.png"
    Image.fromarray(labels).save(path)
    lr = read_regions(path, label_scale=4.0)
    assert isinstance(lr, LabelRegions)
    rows = {r["region"]: r for r in region_counts(lr, density, 1.0, 2.0)}
    up = np.kron(labels, np.ones((2, 2), np.uint16))
    for k in (1, 7):
        assert rows[str(k)]["count"] == pytest.approx(float(density[up == k].sum(dtype=np.float64)))
        assert rows[str(k)]["n_px"] == int((up == k).sum())
    assert (rows["7"]["x0_um"], rows["7"]["y0_um"]) == pytest.approx((40 * 4 * 0.5, 30 * 4 * 0.5))


def test_calibrated_rows_have_intervals(density: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    pred = rng.uniform(5, 50, 200)
    cal = fit_calibration(pred + rng.normal(0, np.sqrt(pred)), pred, {"pred": pred, "area": np.full(200, 100.0)})
    geom = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)])
    row = region_counts([Region("r", None, geom)], density * 0.003, 2.0, 1.0, calibration=cal, level=0.9)[0]
    centre = row["count"] * (1 + cal.bias)  # intervals are centred on the bias-corrected count
    assert row["count_lo"] < centre < row["count_hi"]
    lo, hi = cal.interval(row["count"], {"pred": row["count"], "area": row["tissue_px"]}, 0.9)
    assert (row["count_lo"], row["count_hi"]) == (lo, hi)
    assert row["cells_per_mm2_lo"] == pytest.approx(row["count_lo"] / row["tissue_mm2"])


def test_invalid_regions_are_named(tmp_path, density: np.ndarray) -> None:
    def write(geometry, name="bad one"):
        p = tmp_path / "r.geojson"
        p.write_text(json.dumps([qupath_feature(name, "x", [0, 0, 0], geometry)]))
        return p

    with pytest.raises(RegionError, match="'bad one'.*LineString"):
        read_geojson(write({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}))
    with pytest.raises(RegionError, match="'bad one'.*empty"):
        read_geojson(write({"type": "Polygon", "coordinates": []}))
    with pytest.raises(RegionError, match="'bad one'.*no area left"):
        read_geojson(write({"type": "Polygon", "coordinates": [[[0, 0], [5, 5], [10, 10], [0, 0]]]}))
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [20, 20], [20, 0], [0, 20], [0, 0]]]}
    with pytest.warns(UserWarning, match="'bad one'.*make_valid"):
        fixed = read_geojson(write(bowtie))[0]
    assert fixed.geometry.is_valid and fixed.geometry.area == pytest.approx(200)
    far = Region("far away", None, Polygon([(1e5, 1e5), (1e5 + 9, 1e5), (1e5, 1e5 + 9)]))
    with pytest.raises(RegionError, match="'far away' lies outside the slide"):
        region_counts([far], density, 1.0, 1.0)
    with pytest.raises(RegionError, match="'far away' lies outside the slide"):
        check_regions([far], (5e4, 5e4))  # before inference, from the slide's level-0 size
    tiny = Region("speck", None, Polygon([(3.6, 3.6), (3.9, 3.6), (3.9, 3.9)]))
    with pytest.raises(RegionError, match="'speck'.*no pixel centre"):
        region_counts([tiny], density, 1.0, 1.0)
    with pytest.raises(RegionError, match="used twice"):
        p = tmp_path / "dup.geojson"
        sq = {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]}
        p.write_text(json.dumps([qupath_feature("a", "x", [0, 0, 0], sq)] * 2))
        read_geojson(p)
    (tmp_path / "junk.geojson").write_text("{not json")
    with pytest.raises(WsicountError, match="cannot read regions"):
        read_regions(tmp_path / "junk.geojson")
    with pytest.raises(RegionError, match="does not cover the slide"):
        region_counts(LabelRegions(np.ones((5, 5), np.int32)), density, 1.0, 1.0)


def test_edge_crossing_region_warns_and_clips(density: np.ndarray) -> None:
    geom = Polygon([(-20, -20), (40, -20), (40, 40), (-20, 40)])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        row = region_counts([Region("edge", None, geom)], density, None, 1.0)[0]
    assert any("edge" in str(x.message) for x in w)
    assert row["count"] == pytest.approx(float(density[:40, :40].sum(dtype=np.float64)))
    assert math.isnan(row["tissue_mm2"]) and math.isnan(row["x0_um"])
