"""A slide with one undecodable JPEG tile at the level the pipeline reads: both readers raise
TileReadError naming level and tile, ``wsicount run`` exits 8 with one line, and with
``--skip-bad-tiles`` the run completes, lists the bad tiles and counts 0 cells in them."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from wsicount.errors import TileReadError
from wsicount.io import open_slide
from wsicount.models import load_model
from wsicount.synth import synth_slide
from wsicount.tiling import plan_geometry

FILE_TILE = 128  # native tile side of the synthetic TIFF


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "wsicount", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _zero_tile(path: Path, level_shape: tuple[int, int], row: int, col: int) -> None:
    """Zero the compressed bytes of one tile of the level of ``level_shape`` in place."""
    with tifffile.TiffFile(path) as tf:
        page = next(p for p in tf.pages if (p.imagelength, p.imagewidth) == level_shape)
        ntx = -(-page.imagewidth // page.tilewidth)
        off, n = page.dataoffsets[row * ntx + col], page.databytecounts[row * ntx + col]
    data = bytearray(path.read_bytes())
    data[off : off + n] = bytes(n)  # e.g. a disk block lost: the JPEG no longer starts with SOI
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    """(clean slide, corrupt copy, full-slide mask, level, (row, col) of the zeroed tile)."""
    d = tmp_path_factory.mktemp("badtile")
    # level 2 (4x downsampled) is read as is by the default model: model grid = level pixels
    model_mpp = load_model().card.mpp
    clean = synth_slide(d / "clean.tiff", format="tiff", size=(2048, 2560), seed=11, tile=FILE_TILE,
                        mpp=model_mpp / 4).path
    with open_slide(clean) as s:
        geom = plan_geometry(s, model_mpp)
        assert not geom.resampled and geom.level == 2
        shapes = [tuple(int(v) for v in lv.shape[:2]) for lv in s.levels]
    level = geom.level
    # last tile column, middle row: inside the slide but outside the window the opener validates
    row, col = shapes[level][0] // FILE_TILE // 2, -(-shapes[level][1] // FILE_TILE) - 1
    assert col * FILE_TILE >= 512 or row * FILE_TILE >= 512
    bad = d / "bad.tiff"
    shutil.copy(clean, bad)
    _zero_tile(bad, shapes[level], row, col)
    _zero_tile(bad, shapes[1], 0, 0)  # the report's thumbnail level: a picture must not fail a count
    mask = d / "mask.png"  # everything is tissue: keeps the test about tiles, not tissue detection
    Image.fromarray(np.full((64, 80), 255, np.uint8)).save(mask)
    return clean, bad, mask, level, (row, col)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_decode_error_is_tile_read_error(corrupt, backend):
    clean, bad, _, level, (row, col) = corrupt
    y, x = row * FILE_TILE, col * FILE_TILE
    with open_slide(bad, backend=backend) as s, open_slide(clean, backend=backend) as ref:
        assert s.backend == backend
        with pytest.raises(TileReadError, match=f"level {level} ") as e:
            s.read_region(level, y - 16, x - 16, 64, 64)
        msg = str(e.value)
        assert "\n" not in msg
        # tifffile knows the failing tile; OpenSlide only the window that was asked for
        assert (f"(row {row}, col {col})" if backend == "tifffile" else f"y={y - 16}, x={x - 16}") in msg
        # the reader stays usable (an OpenSlide handle is dead after an error unless replaced)
        np.testing.assert_array_equal(s.read_region(level, 0, 0, 256, 256), ref.read_region(level, 0, 0, 256, 256))
        with pytest.raises(TileReadError):
            s.read_region(level, y, x, 8, 8)


def test_corrupt_tile_fails_with_exit_8(corrupt, tmp_path):
    _, bad, mask, level, (row, col) = corrupt
    out = tmp_path / "out"
    r = _cli("run", str(bad), "--out", str(out), "--mask", str(mask), "-q")
    assert r.returncode == 8, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsicount: error:"), r.stderr
    assert f"level {level} tile (row {row}, col {col})" in lines[0]
    assert not (out / "summary.json").exists()


def test_skip_bad_tiles_completes_with_zero_density_there(corrupt, tmp_path):
    _, bad, mask, level, (row, col) = corrupt
    out = tmp_path / "out"
    # the OpenSlide reader here (the tifffile one is used above): both paths must skip
    # small tiles: several of them on this small slide, only some touching the bad file tile
    r = _cli("run", str(bad), "--out", str(out), "--mask", str(mask), "--skip-bad-tiles", "--backend", "openslide",
             "--tile-size", "256", "-q")
    assert r.returncode == 0, r.stderr
    assert "undecodable tile" in r.stderr and "Traceback" not in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["complete"] is True
    bad_tiles = s["bad_tiles"]
    assert bad_tiles and all(f"level {level} " in b["error"] for b in bad_tiles)
    assert s["bad_tiles_tissue_mm2"] > 0
    assert s["bad_tiles_tissue_mm2"] == pytest.approx(sum(b["tissue_mm2"] for b in bad_tiles))
    with open(out / "bad_tiles.csv", newline="") as f:
        assert [r_["tile"] for r_ in csv.DictReader(f)] == [b["tile"] for b in bad_tiles]
    # exactly the tiles whose input window reaches the zeroed file tile are bad
    core, halo = s["processing"]["tile_core"], s["processing"]["halo"]
    ty0, ty1 = row * FILE_TILE, (row + 1) * FILE_TILE
    tx0, tx1 = col * FILE_TILE, (col + 1) * FILE_TILE
    dens = zarr.open_array(str(out / "density" / "0"), mode="r")[...]
    n_ty, n_tx = -(-dens.shape[0] // core), -(-dens.shape[1] // core)
    expected = {f"{i}_{j}" for i in range(n_ty) for j in range(n_tx)
                if i * core - halo < ty1 and (i + 1) * core + halo > ty0
                and j * core - halo < tx1 and (j + 1) * core + halo > tx0}
    assert {b["tile"] for b in bad_tiles} == expected and len(expected) < n_ty * n_tx
    for b in bad_tiles:
        i, j = b["row"], b["col"]
        assert not dens[i * core : (i + 1) * core, j * core : (j + 1) * core].any()
    assert dens.sum(dtype=np.float64) > 0
    assert s["total_cells"] == pytest.approx(float(dens.sum(dtype=np.float64)), rel=1e-5)
    assert s["processing"]["level"] == level


@pytest.fixture(scope="module")
def corrupt_mask_level(corrupt, tmp_path_factory):
    """A copy of the clean slide with one tile zeroed at the level tissue detection reads."""
    from wsicount.tissue import choose_mask_level

    clean = corrupt[0]
    with open_slide(clean) as s:
        level, _ = choose_mask_level([s.level_mpp(i) for i in range(len(s.levels))])
        shape = tuple(int(v) for v in s.levels[level].shape[:2])
    bad = tmp_path_factory.mktemp("badmask") / "badmask.tiff"
    shutil.copy(clean, bad)
    # middle row, last column: past the window that opening the slide validates
    _zero_tile(bad, shape, shape[0] // FILE_TILE // 2, -(-shape[1] // FILE_TILE) - 1)
    return clean, bad, level


def test_bad_tile_at_mask_level_falls_back_with_skip(corrupt_mask_level, tmp_path):
    clean, bad, level = corrupt_mask_level
    r = _cli("run", str(bad), "--out", str(tmp_path / "strict"), "-q")
    assert r.returncode == 8 and f"level {level} " in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _cli("run", str(bad), "--out", str(tmp_path / "skip"), "--skip-bad-tiles", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "skip" / "summary.json").read_text())
    source = s["processing"]["tissue_source"]
    assert not source.startswith(f"level {level} ") and f"level {level} undecodable" in source
    r = _cli("run", str(clean), "--out", str(tmp_path / "clean"), "-q")
    assert r.returncode == 0, r.stderr
    ref = json.loads((tmp_path / "clean" / "summary.json").read_text())
    # the mask from a neighbouring level measures the same tissue
    assert s["tissue_area_mm2"] == pytest.approx(ref["tissue_area_mm2"], rel=0.05)
