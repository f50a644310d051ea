"""A dask worker process killed (SIGKILL) while tiles are being processed: the nanny restarts
it, the scheduler reruns its tasks elsewhere, and the run completes with the results of an
uninterrupted run on the same cluster."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import wsicount
from wsicount.synth import synth_slide

distributed = pytest.importorskip("distributed")


def _density(out: Path) -> np.ndarray:
    return zarr.open_array(str(out / "density" / "0"), mode="r")[...]


def _run_in_thread(result: dict, **kw) -> threading.Thread:
    """Start wsicount.run in a thread; its Dataset or exception lands in ``result``."""
    def target() -> None:
        try:
            result["ds"] = wsicount.run(**kw)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            result["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th


def _kill_a_busy_worker(client, tiles: Path, deadline: float) -> int:
    """Once the first tile records exist, SIGKILL a worker process that is running a task."""
    pids = client.run(os.getpid)  # worker address -> pid
    while time.time() < deadline and not any(tiles.glob("*.json")):
        time.sleep(0.02)
    busy = [w for w, keys in client.processing().items() if keys and w in pids]
    assert busy, "no worker was processing tiles when the first records appeared"
    os.kill(pids[busy[0]], signal.SIGKILL)
    return pids[busy[0]]


def test_killed_worker_run_equals_uninterrupted(tmp_path):
    slide = synth_slide(tmp_path / "w.ndpi", format="ndpi", size=(1536, 2048), seed=41).path
    mask = tmp_path / "all.png"  # the whole slide is tissue: 3 x 4 tiles of 256 px with the default model,
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(mask)  # one per task: work is left at the kill
    opts = dict(slide=slide, mask=str(mask), tile_size=256, tiles_per_task=1, progress=False)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        ref = wsicount.run(out=tmp_path / "ref", client=client, **opts)
        out = tmp_path / "killed"
        result: dict = {}
        th = _run_in_thread(result, out=out, client=client, **opts)
        victim = _kill_a_busy_worker(client, out / ".wsicount" / "tiles", time.time() + 120)
        th.join(timeout=300)
        assert not th.is_alive(), "run did not finish after a worker was killed"
        assert "error" not in result, repr(result.get("error"))
        client.wait_for_workers(2, timeout=60)
        assert victim not in client.run(os.getpid).values()  # it really died and was replaced
    ds = result["ds"]
    assert ds.attrs["complete"]
    s, r = ds.attrs["summary"], ref.attrs["summary"]
    assert s["processing"]["n_tiles_tissue"] == r["processing"]["n_tiles_tissue"] >= 6
    assert s["total_cells"] == r["total_cells"]
    assert s["regional"] == r["regional"]
    assert np.array_equal(_density(out), _density(tmp_path / "ref"))
    assert (out / "cells.csv").read_text() == (tmp_path / "ref" / "cells.csv").read_text()
