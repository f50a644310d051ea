"""Task order (largest windows first) and the thread executor, which runs tasks strictly in that order."""

from __future__ import annotations

import threading
import time

import pytest

from wsicount.runner.execute import run_threads
from wsicount.runner.task import task_order
from wsicount.tiling import Tile


def _tile(ty: int, tx: int, h: int, w: int) -> Tile:
    return Tile(ty, tx, (0, h, 0, w), (0, h, 0, w))


def test_task_order_is_largest_window_first_with_equal_shapes_adjacent():
    tiles = [_tile(0, 0, 100, 50), _tile(0, 1, 200, 200), _tile(1, 0, 100, 50), _tile(1, 1, 50, 100),
             _tile(2, 0, 200, 200)]
    order = task_order(tiles)
    areas = [t.window_shape[0] * t.window_shape[1] for t in order]
    assert areas == sorted(areas, reverse=True)
    assert [t.key for t in order] == ["0_1", "2_0", "1_1", "0_0", "1_0"]  # ties: by shape, then row and column


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


def test_local_executor_takes_tasks_in_order():
    seen: list[int] = []
    lock = threading.Lock()

    def fake(job, tiles):
        with lock:
            seen.append(tiles[0])
        return tiles

    bar = _Bar()
    run_threads(fake, None, [[i] for i in range(40)], 1, bar.update)
    assert seen == list(range(40)) and bar.n == 40


def test_local_executor_stops_at_the_first_failure():
    started: list[int] = []

    def fake(job, tiles):
        started.append(tiles[0])
        time.sleep(0.005)  # a task takes time, as a tile does
        if tiles[0] == 3:
            raise RuntimeError("tile 3 failed")
        return tiles

    with pytest.raises(RuntimeError, match="tile 3"):
        run_threads(fake, None, [[i] for i in range(200)], 1, _Bar().update)
    assert len(started) < 200  # the rest was cancelled, not run
