"""Shared helpers for the benchmark scripts: machine description and BENCHMARKS.md rows."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def machine() -> str:
    """One line describing CPU, cores, memory, torch and (if any) GPU."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {cores} cores{mem}{gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def git_rev() -> str:
    """Short commit hash of the working tree (or 'unknown')."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command() -> str:
    """The command line that produced a result."""
    return "python " + " ".join([Path(sys.argv[0]).relative_to(ROOT).as_posix() if Path(sys.argv[0]).is_absolute()
                                 else sys.argv[0], *sys.argv[1:]])


def append_section(title: str, body: str) -> None:
    """Append a dated section to BENCHMARKS.md (created with a header if missing)."""
    if not BENCHMARKS_MD.exists():
        BENCHMARKS_MD.write_text("# Benchmarks\n\nEvery number here was produced by a script in `benchmarks/`; "
                                 "each section names its command, machine, commit and date.\n")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(BENCHMARKS_MD, "a") as f:
        f.write(f"\n## {title}\n\n- date: {stamp}\n- command: `{command()}`\n- machine: {machine()}\n"
                f"- commit: {git_rev()}\n\n{body.rstrip()}\n")


def publish(title: str, body: str, write: bool = True) -> None:
    """Print a benchmark's result and, unless ``write`` is false (``--no-write``), append it to BENCHMARKS.md."""
    print("\n" + body)
    if write:
        append_section(title, body)
        print(f"\nappended to {BENCHMARKS_MD}")


def stream_rate(make_step, n: int, seconds: float, warmup: int) -> float:
    """CPU: calls per second of ``n`` threads each calling its own ``make_step()`` with 1 intra-op thread.

    ``make_step`` runs in the thread (inputs are made there); this is how ``wsicount run`` uses a
    CPU by default: ``--threads`` concurrent tile tasks with cores / threads intra-op threads each.
    Each stream's rate is its calls completed before the stop ÷ the time of its last such
    completion, summed over the streams: all of them run concurrently over that span, and a
    call still in flight at the stop is neither counted nor timed. (Until 2026-11-22 the
    calls were divided by the time of the stop, which dropped the in-flight calls' partial
    work: with ~1 s calls and 5 s windows, floors came out up to ~15 % low.)
    """
    import threading
    import time

    import torch

    done: list[list[float]] = [[] for _ in range(n)]  # completion times per stream
    start, stop = threading.Barrier(n + 1), threading.Event()

    def worker(i: int) -> None:
        torch.set_num_threads(1)  # per calling thread (OpenMP)
        step = make_step()
        with torch.inference_mode():
            for _ in range(warmup):
                step()
            start.wait()
            while not stop.is_set():
                step()
                done[i].append(time.perf_counter())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    while min(len(d) for d in done) < 2:  # slow calls: at least two per stream
        time.sleep(0.01)
    t_stop = time.perf_counter()
    stop.set()
    for t in threads:
        t.join()
    torch.set_num_threads(os.cpu_count() or 1)
    rate = 0.0
    for d in done:
        kept = [x for x in d if x <= t_stop]
        rate += len(kept) / (kept[-1] - t0)
    return rate
