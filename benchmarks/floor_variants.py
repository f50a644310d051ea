"""The measurements behind the CPU inference defaults: how to run bf16, which tile size, which batch.

    python benchmarks/floor_variants.py                 # variants at 1024², tile and batch sweeps
    python benchmarks/floor_variants.py --compile       # adds torch.compile (about a minute of compiling)
    python benchmarks/floor_variants.py --tiles 256 --batches 1 --seconds 1 --no-write   # a quick check
    python benchmarks/floor_variants.py --allocator     # glibc's default allocator vs wsicount.allocator

Every figure is the model alone on a pre-loaded random batch (network-input Mpx/s), measured
two ways: one stream using all cores, and ``--streams`` concurrent 1-thread streams, which is
how ``wsicount run`` uses a CPU (``--threads`` tile tasks, cores / threads intra-op threads each).

* variants, at ``--tile`` px and batch 1: fp32 (channels_last); bf16 by autocast over the
  fp32 module; bf16 as a whole-network copy (``infer.module_for``, what ``wsicount run`` uses);
  optionally ``torch.compile`` of that copy;
* tile sweep (whole-network bf16, batch 1) over ``--tiles``;
* batch sweep (whole-network bf16) over ``--batches`` at ``--tile``;
* ``--allocator`` (instead of the above): the whole-network bf16 floor as ``--streams`` streams
  in two fresh processes, glibc's default allocator and ``wsicount.allocator.tune_allocator``
  (what the CLI applies), with each forward pass's user and system CPU seconds and minor page
  faults (``getrusage(RUSAGE_THREAD)``) and the process's peak RSS.

It appends one dated section to ``BENCHMARKS.md`` ("Model floor variants"; ``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine, publish, stream_rate  # noqa: E402
from throughput import md_table, timed_rate  # noqa: E402


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def variant_step(lm, name: str, tile: int, batch: int) -> Callable[[], Callable[[], object]]:
    """A factory of forward-pass closures for variant ``name`` (inputs made in the calling thread)."""
    import torch

    from wsicount.infer import module_for

    cpu = torch.device("cpu")
    c = len(lm.card.channels)
    if name == "fp32":
        module, dtype, ctx = module_for(lm, cpu, "fp32"), torch.float32, None
        module = module.to(memory_format=torch.channels_last)
    elif name == "bf16 autocast":
        module, dtype, ctx = module_for(lm, cpu, "fp32"), torch.float32, torch.bfloat16
        module = module.to(memory_format=torch.channels_last)
    elif name in ("bf16 whole", "bf16 whole + compile"):
        module, dtype, ctx = module_for(lm, cpu, "bf16"), torch.bfloat16, None
        if name.endswith("compile"):
            module = _compiled(module)
    else:
        raise ValueError(name)

    def make() -> Callable[[], object]:
        x = torch.randn(batch, c, tile, tile, dtype=dtype).contiguous(memory_format=torch.channels_last)
        if ctx is None:
            return lambda: module(x)

        def step():
            with torch.autocast("cpu", dtype=ctx):
                return module(x)

        return step

    return make


_COMPILED: dict[int, object] = {}


def _compiled(module):
    """``torch.compile`` of ``module`` (cached: compiling takes about a minute here)."""
    import torch

    if id(module) not in _COMPILED:
        _COMPILED[id(module)] = torch.compile(module)
    return _COMPILED[id(module)]


def measure(lm, name: str, tile: int, batch: int, args: argparse.Namespace) -> list[str]:
    """One table row: Mpx/s as one all-core stream and as ``--streams`` 1-thread streams."""
    import torch

    px = batch * tile * tile / 1e6
    make = variant_step(lm, name, tile, batch)
    torch.set_num_threads(cores())
    t0 = time.perf_counter()
    step = make()
    with torch.inference_mode():
        step()  # the first call builds kernels (and compiles, with torch.compile)
        first = time.perf_counter() - t0
        one = px / timed_rate(step, torch.device("cpu"), args.seconds, args.warmup)
    many = px * stream_rate(make, args.streams, 2 * args.seconds, args.warmup) if args.streams > 1 else None
    print(f"  {name:>22} tile {tile:>4} batch {batch}: {one:.3f} Mpx/s one stream"
          + (f", {many:.3f} as {args.streams} streams" if many else "") + f" (first call {first:.1f} s)", flush=True)
    return [name, str(tile), str(batch), f"{one:.3f}", f"{many:.3f}" if many else "—", f"{first:.1f}"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or path [the bundled default]")
    ap.add_argument("--tile", type=int, default=1024, help="tile side of the variants and the batch sweep [1024]")
    ap.add_argument("--tiles", type=int, nargs="+", default=[512, 768, 1024, 1536], help="tile sweep [512 768 1024 1536]")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4], help="batch sweep [1 2 4]")
    ap.add_argument("--streams", type=int, default=None, help="concurrent 1-thread streams [cores; 1 = skip]")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per one-stream figure [4]")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before timing [1]")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the whole-bf16 module")
    ap.add_argument("--allocator", action="store_true", help="only compare glibc's default allocator with the tuned one")
    ap.add_argument("--calls", type=int, default=6, help="timed forward passes per stream with --allocator [6]")
    ap.add_argument("--allocator-probe", choices=["default", "tuned"], help=argparse.SUPPRESS)  # internal: the child
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = ap.parse_args(argv)
    args.streams = args.streams or cores()
    return args


def allocator_probe(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """(In a fresh process) the bf16 floor as ``--streams`` streams, with per-pass CPU and page faults."""
    import resource
    import threading

    if mode == "tuned":
        from wsicount.allocator import tune_allocator

        if not tune_allocator():
            raise SystemExit("tune_allocator() is not available here (Linux/glibc only)")
    import torch

    from wsicount.models import load_model

    make = variant_step(load_model(args.model), "bf16 whole", args.tile, 1)
    per_call: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def stream(n: int) -> None:
        torch.set_num_threads(1)
        step = make()
        with torch.inference_mode():
            for i in range(n + args.warmup):
                r0 = resource.getrusage(resource.RUSAGE_THREAD)
                step()
                r1 = resource.getrusage(resource.RUSAGE_THREAD)
                if i >= args.warmup:
                    with lock:
                        per_call.append((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))

    def timed(n: int) -> float:
        threads = [threading.Thread(target=stream, args=(n,)) for _ in range(args.streams)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    timed(0)  # warm-up only
    wall = timed(args.calls)
    n = len(per_call)
    hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return {"mpx_s": n * args.tile * args.tile / 1e6 / wall, "user": sum(c[0] for c in per_call) / n,
            "sys": sum(c[1] for c in per_call) / n, "faults": sum(c[2] for c in per_call) / n, "hwm": hwm}


def allocator_table(args: argparse.Namespace) -> str:
    """Both allocators, each in a fresh process of this script; markdown table."""
    rows = []
    for mode in ("default", "tuned"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--allocator-probe", mode, "--tile", str(args.tile),
               "--streams", str(args.streams), "--calls", str(args.calls), "--warmup", str(args.warmup)]
        cmd += ["--model", args.model] if args.model else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"  {mode}: {r['mpx_s']:.3f} Mpx/s, per pass user {r['user']:.2f} s, sys {r['sys']:.2f} s, "
              f"{r['faults']:.0f} minor faults", flush=True)
        rows.append([mode, f"{r['mpx_s']:.3f}", f"{r['user']:.2f}", f"{r['sys']:.2f}", f"{r['faults']:.0f}",
                     f"{r['hwm'] / 2**20:.0f}"])
    return (md_table(["allocator", f"Mpx/s, {args.streams} streams × 1 thread", "user CPU s / pass",
                      "system CPU s / pass", "minor page faults / pass", "peak RSS MiB"], rows)
            + f"\n\nWhole-network bf16, {args.tile}² random input, batch 1, {args.calls} timed passes per stream after "
              f"{args.warmup} untimed, each allocator in a fresh process. `default`: glibc as configured at start; "
              "`tuned`: `wsicount.allocator.tune_allocator()` (one heap, no mmap for large blocks, no trimming), "
              "which the `wsicount` CLI applies before anything else.")


def main(argv: list[str] | None = None) -> None:
    """Measure the variants and sweeps, print and append the table."""
    args = parse_args(argv)
    if args.allocator_probe:
        print(json.dumps(allocator_probe(args.allocator_probe, args)))
        return
    if args.allocator:
        print(f"machine: {machine()}", flush=True)
        publish("Allocator (cpu)", allocator_table(args), not args.no_write)
        return
    from wsicount.models import load_model

    lm = load_model(args.model)
    print(f"machine: {machine()}\nmodel: {lm.card.name}", flush=True)
    variants = ["fp32", "bf16 autocast", "bf16 whole"] + (["bf16 whole + compile"] if args.compile else [])
    rows = [measure(lm, v, args.tile, 1, args) for v in variants]
    rows += [measure(lm, "bf16 whole", t, 1, args) for t in args.tiles if t != args.tile]
    rows += [measure(lm, "bf16 whole", args.tile, b, args) for b in args.batches if b != 1]
    body = (md_table(["variant", "tile", "batch", "Mpx/s, 1 stream × all cores",
                      f"Mpx/s, {args.streams} streams × 1 thread", "first call s"], rows)
            + f"\n\nModel `{lm.card.name}` alone on random pre-loaded inputs (network-input Mpx/s; "
              f"{args.seconds:g} s timed per one-stream figure, {2 * args.seconds:g} s per streams figure). "
              "`bf16 whole`: the bf16 copy of the network that `wsicount run` uses; `bf16 autocast`: the fp32 "
              "network under `torch.autocast`. The first row of each variant is at the default tile size, batch 1.")
    publish("Model floor variants (cpu)", body, not args.no_write)


if __name__ == "__main__":
    main()
