"""The side worker: one process (or thread) that takes the run's fixed costs off the main thread.

Tissue detection, the normalisation sample, the slide picture, the heat map and the text
tables are GIL-bound Python and scipy; the main thread meanwhile imports torch, loads the
weights and runs the tiles. The worker is a forked process where forking is safe (Linux, one
Python thread, torch not imported yet: the CLI's case), else a thread. Its process-local state
(a task running, a stop requested, masks handed between its tasks) is owned by this module.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable

__all__ = ["side_executor", "side_submit", "stop_side", "SideStopped", "init_side_process", "keep_mask", "take_mask"]

def side_executor() -> tuple[Executor, str]:
    """One side worker for the fixed costs: a forked process where forking is safe, else a thread.

    Tissue detection, the normalisation sample and the pictures are GIL-bound; on a thread
    they queue behind the torch import for the GIL. A fork is safe only before any other thread, torch's OpenMP pool included,
    exists in this process: on Linux, with one Python thread and torch not imported yet (the
    CLI's case). The worker is forked now, before opening the slide starts any reader thread.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1 and "torch" not in sys.modules:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                   initializer=init_side_process, initargs=(os.getpid(),))
        pool.submit(int).result()  # fork now
        return pool, "process"
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsicount-side"), "thread"


def init_side_process(parent: int) -> None:
    """In the forked side worker: leave Ctrl-C to the main process, stop on request, and die with it.

    A main process killed outright (SIGKILL, out of memory) cannot stop its worker, and the
    worker, holding its own copy of the task pipe, would wait for work forever: the kernel
    sends it SIGTERM when the main process's thread that forked it ends (PR_SET_PDEATHSIG).
    SIGUSR1 is :func:`stop_side`'s request to end the current task (:func:`_on_stop_request`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_stop_request)
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the main process died before the line above
        os._exit(0)


class SideStopped(BaseException):
    """A side-process task ended early because the run failed (see :func:`stop_side`).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in the task
    swallows it.
    """


# in the side process: whether one of our tasks is running, and whether a stop was requested
_side_busy = False
_side_stopping = False


def _side_task(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the side process, interruptible by a stop request until it returns.

    The result is sent back by the pool after this returns, when a stop request no longer
    raises: a worker interrupted (or killed) while sending leaves the pool's manager thread
    waiting forever for the rest of the message, and the process hanging at exit.
    """
    global _side_busy
    if _side_stopping:
        raise SideStopped()  # a task queued behind the one the request ended
    _side_busy = True
    try:
        return fn(*args)
    finally:
        _side_busy = False


def _on_stop_request(signum: int, frame: Any) -> None:
    """SIGUSR1 in the side process: end the running task and skip the queued ones."""
    global _side_stopping
    _side_stopping = True
    if _side_busy:
        raise SideStopped()


def side_submit(side: Executor, fn: Callable[..., Any], *args: Any) -> Future:
    """Submit ``fn(*args)`` to the side worker (through :func:`_side_task` in a process)."""
    if isinstance(side, ProcessPoolExecutor):
        return side.submit(_side_task, fn, *args)
    return side.submit(fn, *args)


def stop_side(side: Executor) -> None:
    """On failure: drop the side worker's queued work and, if it is a process, end its current task now.

    Without this the process would exit only after the worker's current task (seconds of
    tissue detection for a run that already failed). The worker is asked (SIGUSR1) rather
    than killed: terminating it could cut a result it was sending, and the pool's manager
    thread then waits for the rest forever. Asked, it ends the task at the next Python bytecode
    (after the current numpy or scipy call), sends that small exception back, and exits on
    the shutdown below, which waits for it and for the manager thread: nothing of the pool is
    left closing when the interpreter's exit hook runs (which would print a traceback after
    the one-line error).
    """
    if not isinstance(side, ProcessPoolExecutor):
        side.shutdown(wait=False, cancel_futures=True)  # a thread cannot be stopped; don't wait for it
        return
    for proc in list((getattr(side, "_processes", None) or {}).values()):  # no public API for the workers
        if proc.is_alive() and proc.pid:
            try:
                os.kill(proc.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
    side.shutdown(wait=True, cancel_futures=True)


#: in the side process: tissue masks handed from the preparation to the slide picture, its next task
_masks: dict[str, Any] = {}


def keep_mask(token: str, tm: Any) -> None:
    """Keep a tissue mask in this (side) process for a later task of the same run."""
    _masks[token] = tm


def take_mask(token: str) -> Any | None:
    """The mask :func:`keep_mask` left under ``token`` (None if the preparation failed)."""
    return _masks.pop(token, None)
