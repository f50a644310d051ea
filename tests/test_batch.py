"""Scale-out: a LocalCluster gives the local scheduler's counts; a batch with a broken slide
records the failure and finishes the others; the local-cluster workflow recipe runs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import wsicount
from wsicount.batch import batch
from wsicount.synth import synth_slide

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    return [synth_slide(d / f"s{i}.ndpi", format="ndpi", size=(2560, 2560), seed=20 + i).path for i in range(2)]


def test_local_cluster_equals_local_scheduler(slides, tmp_path):
    a = wsicount.run(slides[0], tmp_path / "local", tile_size=256, progress=False)
    b = wsicount.run(slides[0], tmp_path / "cluster", tile_size=256, workers=2, progress=False)
    assert b.attrs["total_cells"] == pytest.approx(a.attrs["total_cells"], rel=1e-6)
    da_ = zarr.open_array(str(tmp_path / "local" / "density" / "0"), mode="r")[...]
    db_ = zarr.open_array(str(tmp_path / "cluster" / "density" / "0"), mode="r")[...]
    assert np.abs(da_ - db_).max() <= 1e-5 * max(da_.max(), 1e-12)


def test_batch_records_failure_and_finishes_others(slides, tmp_path):
    broken = tmp_path / "broken.ndpi"
    broken.write_bytes(slides[0].read_bytes()[:5000])
    rows = batch([slides[0], broken, slides[1]], tmp_path / "study", workers=2, progress=False)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["error"]
    with open(tmp_path / "study" / "study.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and table[1]["status"] == "failed"
    assert float(table[0]["total_cells"]) > 0 and float(table[2]["tissue_area_mm2"]) > 0
    assert (tmp_path / "study" / "s0" / "summary.json").exists()


def test_local_workflow_recipe(slides, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "workflows" / "local_batch.py"), str(slides[1]),
                        "--out", str(tmp_path / "wf"), "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "wf" / "study.csv").exists()
