"""Scale-out: a LocalCluster gives the local scheduler's counts; a batch with a broken slide
records the failure and finishes the others; the local-cluster workflow recipe runs."""

from __future__ import annotations

import csv
import json
import os
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


def test_scheduler_address_plans_for_its_workers(slides, tmp_path):
    """``scheduler=ADDR``: the run connects before planning, sizes tiles for the workers' memory limit, closes its client."""
    import distributed

    ref = wsicount.count(slides[0], tmp_path / "local", progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, memory_limit="1.5GiB",
                                  dashboard_address=None) as cluster:
        s = wsicount.count(slides[0], tmp_path / "remote", scheduler=cluster.scheduler_address, progress=False)
        plan = s["processing"]["tile_plan"]
        assert plan["available_bytes"] == int(1.5 * 2**30)  # the worker's limit, not this machine's
        assert plan["tile_size"] < 1024  # 2 tasks and this process's baseline in 1.5 GiB
        assert s["total_cells"] == pytest.approx(ref["total_cells"], rel=1e-4)
        clients = cluster.scheduler.clients
        assert set(clients) <= {"fire-and-forget"}, clients  # the run's own client is closed


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


def test_count_each_prepares_the_next_slide_while_tiles_run(slides, tmp_path):
    """Slide n+1 is opened and its preparation queued before slide n's tiles start; a bad slide
    is yielded as its error; the counts are those of count() slide by slide."""
    from wsicount.errors import WsicountError
    from wsicount.runner import count, count_each

    log = []
    broken = tmp_path / "broken.ndpi"
    broken.write_bytes(slides[0].read_bytes()[:5000])
    jobs = [(slides[0], tmp_path / "a"), (broken, tmp_path / "b"), (slides[1], tmp_path / "c")]
    got = list(count_each(jobs, tile_size=256, progress=False, on_stage=lambda stage, name: log.append((stage, name))))
    assert log == [("prepare", "s0.ndpi"), ("prepare", "broken.ndpi"), ("tiles", "s0.ndpi"),
                   ("prepare", "s1.ndpi"), ("tiles", "s1.ndpi")]
    assert got[1][0] is None and isinstance(got[1][1], WsicountError)
    for (summary, error), (slide, _) in ((got[0], jobs[0]), (got[2], jobs[2])):
        assert error is None
        alone = count(slide, tmp_path / f"alone-{slide.name}", tile_size=256, progress=False)
        assert summary["total_cells"] == alone["total_cells"]
        assert summary["n_cells_detected"] == alone["n_cells_detected"]


def test_cli_batch_shares_one_side_process(slides, tmp_path):
    """``wsicount batch`` (torch not imported yet: the side worker is a forked process) counts each slide as ``wsicount run`` does."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "wsicount", "batch", str(slides[0]), str(slides[1]), "-o", str(tmp_path / "b"),
                        "-q", "--tile-size", "256"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "b" / "study.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == ["ok", "ok"]
    for t, slide in zip(table, slides):
        s = json.loads((Path(t["output"]) / "summary.json").read_text())
        assert s["processing"]["side_worker"] == "process"
        alone = wsicount.count(slide, tmp_path / f"alone-{slide.name}", tile_size=256, progress=False)
        assert s["total_cells"] == pytest.approx(alone["total_cells"], rel=1e-6)


def test_study_table_lists_each_slides_guard_warnings(slides, tmp_path):
    """study.csv's ``warnings`` column holds summary.json's warnings: the forced brightfield slide's modality mismatch."""
    from wsicount.batch import WARNING_SEP

    bf = synth_slide(tmp_path / "bf.ndpi", format="ndpi", size=(2048, 2048), seed=3, look="brightfield").path
    rows = batch([slides[0], bf], tmp_path / "study", progress=False, force=True, tile_size=512)
    with open(tmp_path / "study" / "study.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == ["ok", "ok"] and [r["status"] for r in rows] == ["ok", "ok"]
    for t in table:
        s = json.loads((Path(t["output"]) / "summary.json").read_text())
        assert t["warnings"] == WARNING_SEP.join(s["warnings"])
    assert "brightfield" in table[1]["warnings"] and "brightfield" not in table[0]["warnings"], table
