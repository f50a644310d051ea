"""``tune_allocator`` keeps freed memory in the process (glibc) and in the processes it starts, and the CLI applies it first."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")

_PROBE = """
import sys
import numpy as np
from wsicount.allocator import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else False
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) * 1024
before = rss()
a = np.ones(200 * 2**20, np.uint8)  # touched: 200 MiB resident
del a
print(applied, (rss() - before) / 2**20)
"""


def _retained(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True).stdout.split()
    return out[0] == "True", float(out[1])


def test_tuned_process_keeps_freed_memory_default_returns_it():
    applied, kept = _retained("tuned")
    if not applied:
        pytest.skip("not glibc")
    assert kept > 150  # the freed block stays in the heap for the next tensor
    _, kept_default = _retained("default")
    assert kept_default < 50  # glibc unmapped it


def test_cli_applies_it_before_running_a_command():
    code = ("import sys; sys.argv = ['wsicount', '--version']\n"
            "from wsicount import allocator, cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('applied', allocator._applied)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] in ("applied True",)


def test_cli_leaves_the_allocator_alone_when_asked():
    code = ("import sys; sys.argv = ['wsicount', '--version']\n"
            "from wsicount import allocator, cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('applied', allocator._applied)")
    env = {**__import__("os").environ, "WSICOUNT_ALLOCATOR": "default"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert out.strip().splitlines()[-1] == "applied False"


_SPAWN = """
import subprocess, sys
from wsicount.allocator import tune_allocator
if sys.argv[1] == "tuned":
    tune_allocator()
# a child that does not tune itself, as a Dask worker process
print(subprocess.run([sys.executable, "-c", sys.argv[2], "untouched"], check=True, capture_output=True,
                     text=True).stdout)
"""


def _retained_in_child(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _SPAWN, mode, _PROBE], check=True, capture_output=True, text=True,
                         env={k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")})
    return float(out.stdout.split()[1])


def test_processes_started_after_tuning_are_tuned_too():
    """A LocalCluster's workers are new processes: the tuning reaches them through glibc's environment variables."""
    if not _retained("tuned")[0]:
        pytest.skip("not glibc")
    assert _retained_in_child("tuned") > 150
    assert _retained_in_child("default") < 50


def test_local_cluster_workers_get_the_tuning_not_the_nannys_trim(monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers; a tuned process's LocalCluster passes its own."""
    from distributed import Client

    from wsicount import allocator
    from wsicount.runner import local_cluster

    monkeypatch.setattr(allocator, "_applied", True)
    cluster = local_cluster(1)
    try:
        with Client(cluster) as client:
            env = next(iter(client.run(lambda: {k: v for k, v in __import__("os").environ.items()
                                                if k.startswith("MALLOC_")}).values()))
    finally:
        cluster.close()
    for k, v in allocator.CHILD_ENV.items():  # all three, the nanny's 65536 trim threshold replaced
        assert str(env.get(k)) == v, k
    assert allocator.worker_environ({"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1})["OMP_NUM_THREADS"] == 1
    monkeypatch.setattr(allocator, "_applied", False)
    assert allocator.worker_environ({"MALLOC_TRIM_THRESHOLD_": 65536}) == {"MALLOC_TRIM_THRESHOLD_": 65536}
