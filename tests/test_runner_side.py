"""The run's side worker (tissue, normalisation, pictures): stopping it when a run fails."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from wsicount.runner.side import SideStopped, init_side_process, side_submit, stop_side


def _mark_and_sleep(marker: str, seconds: float) -> str:
    """A side task that says it started, then works for ``seconds``."""
    Path(marker).write_text("started")
    time.sleep(seconds)
    return "finished"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the side worker is a forked process only on Linux")
def test_stop_side_ends_the_running_task_without_killing_the_worker(tmp_path):
    """stop_side asks the side process to end its task (a worker killed while sending a result
    hangs the pool's manager thread): the running task ends early, the queued one does not
    run, the shutdown returns, and the worker exits by itself."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                               initializer=init_side_process, initargs=(os.getpid(),))
    pool.submit(int).result()  # the worker is up, its handler installed
    workers = list(pool._processes.values())
    marker = tmp_path / "started"
    running = side_submit(pool, _mark_and_sleep, str(marker), 600)
    queued = side_submit(pool, _mark_and_sleep, str(tmp_path / "second"), 600)
    for _ in range(6000):  # a liveness bound, not a timing: the task starts within a minute
        if marker.exists():
            break
        time.sleep(0.01)
    assert marker.exists()
    stopper = threading.Thread(target=stop_side, args=(pool,), daemon=True)
    stopper.start()
    stopper.join(120)  # the task sleeps 600 s: only an interrupted task lets the stop return
    assert not stopper.is_alive()
    assert isinstance(running.exception(), SideStopped)
    assert queued.cancelled() or isinstance(queued.exception(), SideStopped)
    assert not (tmp_path / "second").exists()
    assert [w.exitcode for w in workers] == [0]  # ended on the shutdown sentinel, not killed



def test_tiles_wait_for_the_density_store_created_beside_them(tmp_path):
    """A tile's first write waits for the store that a thread is still creating (the run starts the tiles
    before it is done); the tile gets the store once it exists, and a failure to create it is the tile's failure."""
    from concurrent.futures import Future

    from wsicount.runner.task import pending_stores, worker_density
    from wsicount.store.density import create_density

    out = tmp_path / "out"
    (out / ".wsicount").mkdir(parents=True)
    (out / ".wsicount" / "run.json").write_text("{}")
    pending: Future = Future()
    pending_stores.add(str(out), pending)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(worker_density(str(out))))
    try:
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and not got  # waiting: the store does not exist yet
        create_density(out, (64, 64), 32, 1.0)
        pending.set_result(None)
        reader.join(60)
        assert not reader.is_alive() and got[0].level0.shape == (64, 64)
    finally:
        pending_stores.discard(str(out))

    failed: Future = Future()
    failed.set_exception(OSError("disk full"))
    elsewhere = str(tmp_path / "elsewhere")
    pending_stores.add(elsewhere, failed)
    try:
        with pytest.raises(OSError, match="disk full"):
            worker_density(elsewhere)
    finally:
        pending_stores.discard(elsewhere)
