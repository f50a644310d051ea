"""Where the tile tasks run: a thread pool here, a LocalCluster of worker processes, or a Dask cluster.

The choice is made once per run (:class:`Placement`) and everything that depends on it reads
it from there: how many tasks share a device, how many torch threads each takes, and which
memory the tile size is planned for (:func:`wsicount.runner.plan.plan_tile`). Results do not depend
on the placement: each tile's record is a pure function of the tile (see :mod:`wsicount.runner.task`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable

from ..store import TileRecord
from .config import RunConfig

__all__ = ["Placement", "run_tasks", "run_threads", "local_cluster"]

#: a tile task: (job, tiles) -> the tiles' records
TaskFn = Callable[[Any, list], list]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Placement:
    """Where a run's tile tasks run, decided once.

    ``kind``: ``"threads"`` (a pool of ``threads`` threads in this process), ``"local-cluster"``
    (``workers`` one-thread processes on this machine: created here, or a client's given by
    ``wsicount batch``) or ``"cluster"`` (a client's workers, e.g. ``--scheduler``).
    ``device_tasks``: tasks sharing one device at once (they split its memory for batches);
    ``torch_threads``: intra-op threads per task so that tasks do not oversubscribe the cores
    (None: a cluster's workers know their own cores).
    """

    kind: str
    threads: int
    workers: int | None
    device_tasks: int
    torch_threads: int | None

    @classmethod
    def decide(cls, cfg: RunConfig, client: Any = None, cores: int | None = None) -> "Placement":
        """The placement for ``cfg`` (``client``: a connected ``distributed.Client`` or None)."""
        cores = cores or usable_cores()
        threads = cfg.threads or min(2, os.cpu_count() or 1)
        if cfg.workers:
            return cls("local-cluster", threads, cfg.workers, cfg.workers, max(1, cores // cfg.workers))
        if client is not None or cfg.scheduler:
            # a cluster's workers are assumed to have a device each; they size batches from its free memory
            return cls("cluster", threads, None, 1, None)
        return cls("threads", threads, None, threads, max(1, cores // threads))

    @property
    def in_process(self) -> bool:
        """Whether the tasks run in this process (and can share its model, mask and stores)."""
        return self.kind == "threads"


def run_tasks(fn: TaskFn, job: Any, batches: list[list], placement: Placement, client: Any = None,
              on_done: Callable[[int], None] | None = None) -> dict[str, TileRecord]:
    """Run ``fn(job, batch)`` for every batch where ``placement`` says; the records by tile key.

    ``on_done(n)`` is called as each task finishes with its number of records.
    """
    done = on_done or (lambda n: None)
    if placement.in_process:
        results = run_threads(fn, job, batches, placement.threads, done)
    else:
        results = _run_distributed(fn, job, batches, placement, client, done)
    return {r.key: r for recs in results for r in recs}


def run_threads(fn: TaskFn, job: Any, batches: list[list], threads: int,
                on_done: Callable[[int], None]) -> list[list]:
    """A pool of ``threads`` threads taking the tasks strictly in the given order; the tasks' results.

    Not Dask's threaded scheduler: that one orders independent tasks by its own heuristics,
    and the order matters (largest tiles first, see :func:`wsicount.runner.task.task_order`).
    The first failure cancels the tasks not yet started.
    """
    results = []
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsicount-tiles") as pool:
        futures = [pool.submit(fn, job, b) for b in batches]
        try:
            for fut in as_completed(futures):
                results.append(fut.result())
                on_done(len(results[-1]))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results


def _run_distributed(fn: TaskFn, job: Any, batches: list[list], placement: Placement, client: Any,
                     on_done: Callable[[int], None]) -> list[list]:
    """The tasks on a dask.distributed client (given, or a LocalCluster of ``placement.workers`` made here)."""
    from distributed import Client, as_completed as completed

    def collect(c: Any) -> list[list]:
        results = []
        for fut in completed(c.map(fn, [job] * len(batches), batches, pure=False, retries=3)):
            results.append(fut.result())
            on_done(len(results[-1]))
        return results

    if client is not None:
        return collect(client)
    cluster = local_cluster(placement.workers or 1)
    own = Client(cluster)
    try:
        return collect(own)
    finally:
        own.close()
        cluster.close()


def local_cluster(workers: int) -> Any:
    """A Dask LocalCluster of ``workers`` one-thread worker processes, with this process's allocator tuning."""
    import dask
    from distributed import LocalCluster

    from ..allocator import worker_environ

    environ = worker_environ(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
