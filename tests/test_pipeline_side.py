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

from wsicount.pipeline import _side_init, _side_submit, _SideStopped, _stop_side


def _mark_and_sleep(marker: str, seconds: float) -> str:
    """A side task that says it started, then works for ``seconds``."""
    Path(marker).write_text("started")
    time.sleep(seconds)
    return "finished"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the side worker is a forked process only on Linux")
def test_stop_side_ends_the_running_task_without_killing_the_worker(tmp_path):
    """_stop_side asks the side process to end its task (a worker killed while sending a result
    hangs the pool's manager thread): the running task ends early, the queued one does not
    run, the shutdown returns, and the worker exits by itself."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                               initializer=_side_init, initargs=(os.getpid(),))
    pool.submit(int).result()  # the worker is up, its handler installed
    workers = list(pool._processes.values())
    marker = tmp_path / "started"
    running = _side_submit(pool, _mark_and_sleep, str(marker), 600)
    queued = _side_submit(pool, _mark_and_sleep, str(tmp_path / "second"), 600)
    for _ in range(6000):  # a liveness bound, not a timing: the task starts within a minute
        if marker.exists():
            break
        time.sleep(0.01)
    assert marker.exists()
    stopper = threading.Thread(target=_stop_side, args=(pool,), daemon=True)
    stopper.start()
    stopper.join(120)  # the task sleeps 600 s: only an interrupted task lets the stop return
    assert not stopper.is_alive()
    assert isinstance(running.exception(), _SideStopped)
    assert queued.cancelled() or isinstance(queued.exception(), _SideStopped)
    assert not (tmp_path / "second").exists()
    assert [w.exitcode for w in workers] == [0]  # ended on the shutdown sentinel, not killed

