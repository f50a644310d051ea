"""End-to-end invariants of ``wsicount.run`` on synthetic slides read through the real readers.

- seam-free: tiled density == whole-image density (max abs diff <= 1e-4 of the max) for
  tiles of 256/512/1024 on a 1536x1536 image with cells straddling tile borders, in the
  precision the runs resolved ('auto': bf16 on CPUs with native bf16, else fp32; the
  network-level check of every precision is in test_infer.py);
- count invariance: totals identical (<= 1e-4 relative) across tile sizes and 1 vs 2 threads;
- accuracy: the bundled default model counts a synthetic slide within 10 %, and the tissue
  area of a synthetic disk is within 1 % of pi r².
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import zarr

import wsicount
from wsicount.infer import pad_to_stride, pick_device, predict_batch
from wsicount.io import open_slide
from wsicount.models import load_model
from wsicount.preprocess import select_channels
from wsicount.runner.config import RunConfig
from wsicount.runner.plan import prepare
from wsicount.synth import synth_slide
from wsicount.tiling import mask_on_grid

TILE_SIZES = (256, 512, 1024)


@pytest.fixture(scope="module")
def model():
    return load_model()  # the bundled default


@pytest.fixture(scope="module")
def grid_slide(tmp_path_factory, model):
    """1536x1536 fluorescence slide whose level 0 is exactly the model's grid (no resampling).

    Large enough for 2 x 2 tiles of 1024 (core 912) and 11 x 11 of 256, with cells across every
    border; the whole-image reference inference holds ~1 GiB (bf16) to ~2 GiB (fp32) of activations
    at this size (3000x3000: 4 to 8 GiB, the suite's peak).
    """
    d = tmp_path_factory.mktemp("seam")
    return synth_slide(d / "seam.tiff", format="tiff", size=(1536, 1536), seed=3, look="fluorescence",
                       mpp=model.card.mpp, cell_density_per_mm2=400.0, tissue="disk", tissue_fraction=0.6)


@pytest.fixture(scope="module")
def tiled_runs(grid_slide, tmp_path_factory):
    """One run per tile size (threads=2) plus a 1-thread run at 1024."""
    d = tmp_path_factory.mktemp("runs")
    runs = {}
    for ts in TILE_SIZES:
        runs[(ts, 2)] = wsicount.run(grid_slide.path, d / f"t{ts}", tile_size=ts, threads=2, progress=False)
    runs[(1024, 1)] = wsicount.run(grid_slide.path, d / "t1024-1", tile_size=1024, threads=1, progress=False)
    return runs


@pytest.fixture(scope="module")
def whole_density(grid_slide, tiled_runs, model):
    """Whole-image inference on the full level-0 image, normalised by the run's field, masked and in the precision of the runs."""
    precisions = {ds.attrs["summary"]["processing"]["precision"] for ds in tiled_runs.values()}
    assert len(precisions) == 1, precisions
    slide = open_slide(grid_slide.path)
    h, w = (int(v) for v in slide.levels[0].shape[:2])
    img = slide.read_region(0, 0, 0, h, w)
    field = prepare(slide, RunConfig(), model.card).field  # what the runs computed: a pure function of the slide
    x = field.apply(select_channels(img.astype(np.float32), model.card.channels), (0, h, 0, w), h, w)
    d = predict_batch(model, pad_to_stride(x, model.card.stride)[None], pick_device("cpu"), precisions.pop())[0, :h, :w]
    ds = tiled_runs[(512, 2)]
    mask = ds["tissue"].values
    scale = (h / mask.shape[0], w / mask.shape[1])
    return d * mask_on_grid(mask, *scale, (0, h, 0, w))


@pytest.mark.parametrize("tile", TILE_SIZES)
def test_tiled_equals_whole_image(tiled_runs, whole_density, tile):
    tiled = tiled_runs[(tile, 2)]["density"].values
    assert tiled.shape == whole_density.shape
    err = np.abs(tiled - whole_density).max()
    assert err <= 1e-4 * whole_density.max(), f"seam error {err:.3g} vs max {whole_density.max():.3g}"


def test_totals_invariant_to_tiles_and_threads(tiled_runs, whole_density):
    totals = {k: ds.attrs["total_cells"] for k, ds in tiled_runs.items()}
    ref = float(whole_density.sum(dtype=np.float64))
    assert ref > 10
    for k, v in totals.items():
        assert abs(v - ref) <= 1e-4 * ref, (k, v, ref)
    assert abs(totals[(1024, 1)] - totals[(1024, 2)]) <= 1e-4 * ref


def test_density_zarr_sums_to_total(tiled_runs):
    ds = tiled_runs[(512, 2)]
    total = ds.attrs["total_cells"]
    assert float(ds["density"].sum()) == pytest.approx(total, rel=1e-5)
    for g in (100, 1000):
        assert float(ds[f"counts_{g}um"].sum()) == pytest.approx(total, rel=1e-5)


@pytest.fixture(scope="module")
def ndpi_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("acc")
    truth = synth_slide(d / "acc.ndpi", format="ndpi", size=(6144, 6144), seed=11, look="fluorescence",
                        cell_density_per_mm2=300.0, tissue="disk", tissue_fraction=0.5)
    ds = wsicount.run(truth.path, d / "out", progress=False)
    return truth, ds, d / "out"


def test_default_model_counts_synthetic_slide(ndpi_run):
    truth, ds, _ = ndpi_run
    assert truth.n_cells > 200
    rel = abs(ds.attrs["total_cells"] - truth.n_cells) / truth.n_cells
    assert rel <= 0.10, f"counted {ds.attrs['total_cells']:.1f}, truth {truth.n_cells}"


def test_tissue_area_of_disk(ndpi_run):
    truth, ds, _ = ndpi_run
    expected = math.pi * truth.tissue_radius_px**2 * truth.mpp**2 / 1e6
    assert ds.attrs["tissue_area_mm2"] == pytest.approx(expected, rel=0.01)


def test_outputs_written(ndpi_run):
    truth, ds, out = ndpi_run
    s = json.loads((out / "summary.json").read_text())
    for k in ("total_cells", "tissue_area_mm2", "cells_per_mm2", "slide", "model", "parameters", "timings"):
        assert k in s
    assert s["complete"] is True
    assert s["slide"]["vendor"] == "hamamatsu"
    assert s["processing"]["level"] > 0  # never decode level 0 when a coarser level serves
    for f in ("regions.csv", "cells.csv", "cells.geojson", "report.html", "thumbnail.png", "heatmap.png"):
        assert (out / f).stat().st_size > 0, f
    gj = json.loads((out / "cells.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    assert gj["wsicount"]["coordinates"] == "level-0 pixels"
    # detections roughly agree with the integral
    assert abs(len(gj["features"]) - s["total_cells"]) <= 0.25 * s["total_cells"]
    root = zarr.open_group(str(out), mode="r")
    assert "multiscales" in root["density"].attrs
    assert root["labels/tissue/0"].dtype == np.uint8  # the root's NGFF label (root = the density image)
    assert [d["path"] for d in root.attrs["multiscales"][0]["datasets"]][0] == "density/0"
    lines = (out / "regions.csv").read_text().splitlines()
    col = lines[0].split(",").index("tissue_fraction")
    fractions = [float(line.split(",")[col]) for line in lines[1:]]
    assert max(fractions) <= 1.0  # tissue area by exact pixel overlap (gridarea): never more than the cell
    assert lines[0].startswith("grid_um,row,col")
    assert len(lines) > 10
    # every tile's reading, network and rest, as wall and as its thread's CPU seconds
    st = s["timings"]["stage_seconds_summed_over_tiles"]
    for k in ("read", "infer", "post"):
        assert 0 < st[f"{k}_cpu"] <= st[k] * 1.05 + 0.05, k  # a thread's CPU cannot exceed its wall time


@pytest.mark.parametrize("origin,cell", [((0, 0), 55.29), ((912, 1824), 55.29), ((3, 5), 7.0), ((40, 0), 552.9)])
def test_grid_sums_equal_a_scatter_by_pixel_centre(origin, cell):
    from wsicount.runner.task import grid_sums

    rng = np.random.default_rng(0)
    core = rng.normal(size=(300, 250)).astype(np.float32)
    core[:, :40] = 0  # cells with nothing in them are left out
    shape = (int(math.ceil((origin[0] + 400) / cell)), int(math.ceil((origin[1] + 300) / cell)))
    got = grid_sums(core, origin, cell, shape)
    iy = np.minimum(((np.arange(origin[0], origin[0] + 300) + 0.5) / cell).astype(int), shape[0] - 1)
    ix = np.minimum(((np.arange(origin[1], origin[1] + 250) + 0.5) / cell).astype(int), shape[1] - 1)
    ref = np.bincount((iy[:, None] * shape[1] + ix[None, :]).ravel(), weights=core.ravel().astype(np.float64))
    nz = np.nonzero(ref)[0]
    assert got["i"] == nz.tolist()
    np.testing.assert_allclose(got["v"], ref[nz], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forked side worker is used on Linux only")
def test_cli_side_process_gives_the_thread_results(grid_slide, tiled_runs, tmp_path):
    """The CLI (torch not yet imported) forks its side worker; results equal an in-process (thread) run."""
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "wsicount", "run", str(grid_slide.path), "-o", str(out),
                        "--tile-size", "512", "--threads", "2", "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    cli = json.loads((out / "summary.json").read_text())
    ref = tiled_runs[(512, 2)].attrs["summary"]
    assert cli["processing"]["side_worker"] == "process" and ref["processing"]["side_worker"] == "thread"
    assert cli["total_cells"] == ref["total_cells"]
    assert cli["tissue_area_mm2"] == ref["tissue_area_mm2"]
    assert cli["processing"]["normalization"] == ref["processing"]["normalization"]
    a = zarr.open_array(str(out / "density" / "0"), mode="r")[...]
    b = tiled_runs[(512, 2)]["density"].values
    assert np.array_equal(a, b)
    assert (out / "heatmap.png").stat().st_size > 0 and (out / "thumbnail.png").stat().st_size > 0
