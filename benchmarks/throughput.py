"""Throughput and memory of ``wsicount run`` next to the model's floor and a naive script.

    python benchmarks/throughput.py                          # default workload
    python benchmarks/throughput.py --runs fp32:2 bf16:2 bf16:1  # every run on every slide
    python benchmarks/throughput.py --sizes 2048x2048 3072x3072 --crop 1024 --no-write   # a quick check

Workload: synthetic NanoZoomer-like ``.ndpi`` slides (``wsicount.synth.synth_slide``, cached under
``runs/bench-slides/``): by default 26624x30000 px (H x W, the melanocyte paper's slide) and
32768x32768 px (1.07 Gpx), both with ~60 % tissue, 0.4523 um/px (the model reads pyramid level 2).

Measured in one run, on one device (``--device auto``: CUDA if present):

* model floor -- the network alone on pre-loaded random tensors of the pipeline's tile/batch
  shape (channels_last, inference_mode, after warm-up), fp32 and bf16 (the module wsicount run
  uses: ``wsicount.infer.module_for``, weights and activations in that dtype), in Mpx/s of
  network-input pixels; the device's matmul rate (GFLOP/s) and the model's FLOPs per input
  pixel (torch FlopCounterMode: convolutions; BatchNorm/activations/upsampling not counted),
  so floor FLOP/s / matmul FLOP/s shows the gap to the compute bound; the activation memory
  of one batch (Linux VmHWM delta of one forward pass in a fresh process; CUDA:
  max_memory_allocated delta);
* end-to-end -- ``wsicount run`` in a subprocess (its own memory; peak RSS = the larger of its
  VmHWM and psutil polling of its process tree): wall time, slide Mpx/s (level-0 pixels / wall),
  network-input Mpx/s (pixels of the tissue tiles' input windows / wall), tissue Mpx/s on the
  model grid, peak RSS and the stage timings of summary.json, for each ``--runs`` entry
  PRECISION:THREADS[@SLIDE];
* naive baseline -- (in a fresh process with glibc's default allocator; this process applies
  ``wsicount.allocator.tune_allocator`` as the CLI does, so the floors are the model as
  ``wsicount run`` runs it) what a user would otherwise write: OpenSlide ``read_region`` tile by tile
  at level 0, PIL box resize to the model's um/px, the model one tile at a time (fp32, no halo,
  every tile, tissue or not), stitched into an in-memory numpy array; run on a centred
  ``--crop`` of the slide and scaled to the whole slide by pixel count (the table says so);
* floor around each run -- a shared or virtual machine's speed can drift by tens of per cent within minutes, so a floor
  measured once at the start is a poor yardstick for a run made ten minutes later: the floor
  of the run's own configuration (THREADS streams x cores/THREADS intra-op threads, its
  precision) is measured again right before and right after each ``wsicount run``
  (``--bracket-seconds`` each; 0 = off), and their mean is the run's own yardstick;
* floor on the run's windows -- windows trimmed to the tissue are smaller than the tile and
  run faster per pixel, so the tile-shaped floor is not an upper bound for a run: right after
  each non-fp32 run, the model alone makes one pass over exactly that run's input windows
  (``summary.json`` ``processing.window_shapes``), with the run's threads;
* repetitions -- each non-fp32 run is made ``--repeat`` times (default 3; the floors around
  it and on its windows each time) and the ratios are the medians, with their range: on a
  machine whose speed drifts, one run proves little;
* CPU budget -- the run's process-tree CPU seconds (``RUSAGE_CHILDREN``) split into the
  network's (summary.json ``infer_cpu``, the tile threads' CPU inside the forward pass), the
  rest, CPU time stolen by the hypervisor (/proc/stat) and idle; the network share (network
  CPU / cores x wall, and / (cores x wall - steal)) measures the overhead without the drift
  between a run and its floors: a slower or faster CPU moves both its terms, though not
  alike (bf16 on AMX gains more from a faster CPU than Python and decoding do, so the share
  reads a little lower on a fast one);
* ratios -- end-to-end network-input rate / model floor (target >= 0.8; against the start
  floor and against the floor around the run), naive time / end-to-end time (target >= 5x),
  1-thread wall / 2-thread wall, and the relative count difference of bf16 vs fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ROOT, machine, publish, stream_rate  # noqa: E402

DEFAULT_SIZES = ("26624x30000", "32768x32768")
DEFAULT_RUNS = ("bf16:2", "fp32:2@0", "bf16:1@0")
MIB = 2**20
try:
    import resource  # POSIX only: CPU seconds of the runs
except ImportError:  # Windows: the CPU budget stays empty
    resource = None
#: cores this process may run on (the run inherits them): the machine's CPU capacity per second
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --- data classes -------------------------------------------------------------------------
@dataclass
class SlideSpec:
    """One benchmark slide on disk."""

    path: Path
    height: int
    width: int
    tissue_fraction: float
    n_cells: int
    synth_seconds: float | None  # None: taken from the cache

    @property
    def mpx(self) -> float:
        """Level-0 megapixels."""
        return self.height * self.width / 1e6


@dataclass
class Floor:
    """Model-alone throughput for one precision."""

    precision: str
    mpx_s: float
    gflop_s: float
    matmul_gflop_s: float
    act_bytes: float | None = None  # peak activation bytes of one batch
    streams_mpx_s: float | None = None  # CPU: N concurrent 1-thread streams, as wsicount run schedules tiles

    @property
    def best(self) -> float:
        """The higher of the one-stream and the concurrent-streams floor (the stricter yardstick)."""
        return max(self.mpx_s, self.streams_mpx_s or 0.0)


@dataclass
class E2E:
    """One ``wsicount run`` measurement."""

    slide: SlideSpec
    precision: str
    threads: int
    wall: float
    peak_rss: int
    summary: dict[str, Any]
    net_px: int  # network-input pixels of the processed tiles
    floor_around: tuple[float, float] | None = None  # floor (Mpx/s) right before and after the run
    shape_floor: float | None = None  # Mpx/s of the model alone on this run's own window shapes
    rep: int = 1  # repetition number (--repeat)
    cpu: float | None = None  # CPU seconds (user + sys) of the run's process tree
    shape_cpu: float | None = None  # CPU seconds of the model alone on this run's windows
    steal: float | None = None  # CPU seconds the hypervisor took from this machine's CPUs during the run

    @property
    def capacity(self) -> float:
        """CPU seconds the machine offered during the run (cores x wall)."""
        return CORES * self.wall

    @property
    def net_cpu(self) -> float | None:
        """CPU seconds the run's tile threads spent in the network (summary.json ``infer_cpu``).

        ``infer_cpu`` is the calling thread's CPU time, all of the network's only when each
        tile thread runs the network on one thread (threads >= cores); with fewer tile
        threads OpenMP's helper threads do part of each pass and go uncounted: None then.
        """
        if self.threads < CORES:
            return None
        return self.summary["timings"].get("stage_seconds_summed_over_tiles", {}).get("infer_cpu")

    @property
    def share(self) -> float | None:
        """Network CPU ÷ (cores x wall): the fraction of the machine the run gave to the network.

        Numerator and denominator are measured in the same run, so a slower or faster CPU moves
        both; CPU time the hypervisor steals lowers it (see :attr:`share_got`). It bounds the
        strict ratio (÷ the model alone on the run's windows) from above unless the network ran
        faster in the run than alone.
        """
        return self.net_cpu / self.capacity if self.net_cpu else None

    @property
    def share_got(self) -> float | None:
        """Network CPU ÷ the CPU time the VM actually got during the run (cores x wall - steal)."""
        if not self.net_cpu or self.steal is None:
            return None
        return self.net_cpu / (self.capacity - self.steal)

    @property
    def around(self) -> float | None:
        """Mean of the floors measured right before and after the run."""
        return sum(self.floor_around) / 2 if self.floor_around else None

    @property
    def key(self) -> str:
        """PRECISION:THREADS."""
        return f"{self.precision}:{self.threads}"

    @property
    def label(self) -> str:
        """PRECISION:THREADS and the repetition."""
        return f"{self.key} #{self.rep}"

    @property
    def net_mpx_s(self) -> float:
        """Network-input Mpx per wall second."""
        return self.net_px / 1e6 / self.wall

    @property
    def tissue_mpx_s(self) -> float:
        """Tissue area on the model grid, Mpx per wall second."""
        mpp = self.summary["processing"]["model_mpp"]
        return self.summary["tissue_area_mm2"] * 1e6 / mpp**2 / 1e6 / self.wall


@dataclass
class Naive:
    """The naive script on a crop, scaled to the whole slide."""

    slide: SlideSpec
    crop: tuple[int, int]
    seconds: float
    net_px: int
    tiles: int
    full_array_bytes: int
    stage: dict[str, float] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """Whole-slide pixels / crop pixels."""
        return self.slide.height * self.slide.width / (self.crop[0] * self.crop[1])

    @property
    def full_seconds(self) -> float:
        """Estimated wall time on the whole slide."""
        return self.seconds * self.scale


# --- helpers ------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 26624x30000), got {text!r}") from None
    if h % 8 or w % 8 or h < 512 or w < 512:
        raise argparse.ArgumentTypeError(f"NDPI sizes must be multiples of 8 and >= 512, got {text!r}")
    return h, w


def parse_run(text: str) -> tuple[str, int, int | None]:
    """'PRECISION:THREADS[@SLIDE]' -> (precision, threads, slide index or None for every slide)."""
    try:
        spec, _, where = text.partition("@")
        prec, thr = spec.split(":")
        threads, slide = int(thr), (int(where) if where else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a run is PRECISION:THREADS[@SLIDE] (e.g. bf16:2@0), got {text!r}") from None
    if prec not in ("fp32", "bf16", "fp16") or threads < 1 or (slide is not None and slide < 0):
        raise argparse.ArgumentTypeError(f"precision fp32|bf16|fp16, threads >= 1, slide index >= 0; got {text!r}")
    return prec, threads, slide


def sync(device) -> None:
    """Wait for queued device work (CUDA/MPS); no-op on CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed_rate(fn: Callable[[], Any], device, min_seconds: float, warmup: int, min_iters: int = 3) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls, over at least ``min_seconds``."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
        if n % 4 == 0 or n >= min_iters:
            sync(device)
    sync(device)
    return (time.perf_counter() - t0) / n


def device_name(device) -> str:
    """Human name of a torch device."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} torch threads)"
    return device.type


# --- slides -------------------------------------------------------------------------------
def ensure_slide(folder: Path, size: tuple[int, int], tissue_fraction: float, seed: int) -> SlideSpec:
    """The cached synthetic NDPI of this size, written first if missing."""
    from wsicount.synth import synth_slide

    h, w = size
    path = folder / f"nz-{h}x{w}-tf{tissue_fraction:g}-s{seed}.ndpi"
    truth = path.with_name(path.name + ".truth.json")
    took = None
    if not (path.exists() and truth.exists()):
        print(f"synthesising {path.name} ({h * w / 1e9:.2f} Gpx) ...", flush=True)
        t0 = time.perf_counter()
        synth_slide(path, format="ndpi", size=(h, w), seed=seed, tissue_fraction=tissue_fraction)
        took = time.perf_counter() - t0
    meta = json.loads(truth.read_text())
    fraction = meta["tissue_area_mm2"] * 1e6 / meta["mpp"] ** 2 / (h * w)
    return SlideSpec(path, h, w, fraction, int(meta["n_cells"]), took)


# --- model floor --------------------------------------------------------------------------
def flops_per_pixel(module, channels: int, tile: int) -> float:
    """FLOPs (2 x MACs, convolutions and matmuls) per network-input pixel, counted on one tile."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(module.parameters())
    x = torch.zeros(1, channels, tile, tile, device=p.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        module(x)
    return fc.get_total_flops() / (tile * tile)


def matmul_gflops(device, dtype, n: int, seconds: float) -> float:
    """GFLOP/s of n x n matmuls in ``dtype`` on ``device``."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with torch.inference_mode():
        dt = timed_rate(lambda: torch.mm(a, b), device, seconds, warmup=1, min_iters=2)
    return 2.0 * n**3 / dt / 1e9


def model_floor(lm, device, tile: int, batch: int, precision: str, seconds: float, warmup: int) -> float:
    """Network-input Mpx/s of the model alone on a pre-loaded random batch."""
    import torch

    from wsicount.infer import DTYPES, module_for

    c = len(lm.card.channels)
    module = module_for(lm, device, precision)  # the very module wsicount run uses
    x = torch.randn(batch, c, tile, tile, device=device, dtype=DTYPES[precision])
    x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode():
            return module(x)

    dt = timed_rate(step, device, seconds, warmup)
    return batch * tile * tile / dt / 1e6


def model_floor_streams(lm, tile: int, batch: int, precision: str, seconds: float, warmup: int, n: int) -> float:
    """CPU: aggregate Mpx/s of ``n`` threads each running the model with 1 intra-op thread.

    This is how ``wsicount run`` uses a CPU by default (``--threads`` concurrent tile tasks,
    cores / threads intra-op threads each); on 2 cores it beats one 2-thread stream.
    """
    import torch

    from wsicount.infer import DTYPES, module_for

    module = module_for(lm, torch.device("cpu"), precision)
    c = len(lm.card.channels)

    def make_step():
        x = torch.randn(batch, c, tile, tile, dtype=DTYPES[precision]).contiguous(memory_format=torch.channels_last)
        return lambda: module(x)

    return stream_rate(make_step, n, seconds, warmup) * batch * tile * tile / 1e6


def vm_hwm(pid: int | str = "self") -> int | None:
    """Peak resident memory (VmHWM) of a process's current address space, bytes; None off Linux.

    Unlike ``ru_maxrss`` it does not include the parent's memory from before ``exec``.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _activation_child(model: str | None, device: str, tile: int, batch: int, precision: str) -> dict[str, float]:
    """(In a fresh process) RSS of the bare process, of the model, and the activation peak of one batch."""
    import psutil
    import torch

    from wsicount.infer import DTYPES, module_for, pick_device
    from wsicount.models import load_model

    proc = psutil.Process()
    rss_import = proc.memory_info().rss
    dev = pick_device(device)
    lm = load_model(model, device=dev)
    module = module_for(lm, dev, precision)
    rss_model = proc.memory_info().rss
    c = len(lm.card.channels)
    x = torch.randn(batch, c, tile, tile, device=dev, dtype=DTYPES[precision])
    x = x.contiguous(memory_format=torch.channels_last)

    def fwd(inp: torch.Tensor) -> None:
        with torch.inference_mode():
            module(inp)
        sync(dev)

    fwd(x[..., :64, :64].contiguous(memory_format=torch.channels_last))  # load kernels/libraries first
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fwd(x)
        act = torch.cuda.max_memory_allocated(dev) - base
    else:
        try:  # reset VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        before = proc.memory_info().rss
        fwd(x)
        hwm = vm_hwm()
        act = (hwm - before) if hwm is not None else float("nan")
    return {"rss_import": rss_import, "rss_model": rss_model, "act": float(act)}


def activation_memory(args: argparse.Namespace, precision: str) -> dict[str, float]:
    """Run :func:`_activation_child` in a fresh interpreter (so its memory is its own)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--activation-probe", precision, "--device", args.device,
           "--tile-size", str(args.tile_size), "--batch-size", str(args.batch_size)]
    if args.model:
        cmd += ["--model", str(args.model)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"activation probe failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- end-to-end ---------------------------------------------------------------------------
def _rusage(children: bool = False) -> float | None:
    """User + system CPU seconds of this process, or of its waited-for descendants; None off POSIX."""
    if resource is None:
        return None
    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def steal_seconds() -> float | None:
    """CPU seconds the hypervisor has taken from this machine since boot, all CPUs (/proc/stat 'steal'); None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def measure_process(cmd: list[str], log: Path) -> tuple[float, int, int, float | None, float | None]:
    """Run ``cmd``; returns (wall s, peak RSS bytes, exit code, CPU s of its process tree, steal s).

    CPU: user + system seconds of the child and of the descendants it waited for (its side
    worker), from this process's ``RUSAGE_CHILDREN`` before and after (None off POSIX). Steal:
    CPU seconds the hypervisor withheld from this machine's CPUs during the run (machine-wide).

    Peak RSS: the child's VmHWM (read while it runs) and psutil polling of its process tree,
    whichever is larger; not ``ru_maxrss``, which also counts this process's memory before exec.
    """
    import psutil

    r0, st0 = _rusage(children=True), steal_seconds()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, tree, vm_hwm(proc.pid) or 0)
            except psutil.Error:
                pass
            time.sleep(0.25)  # polling every 50 ms cost ~5 % of a core during the run; VmHWM needs no fast polling
    wall = time.perf_counter() - t0
    r1, st1 = _rusage(children=True), steal_seconds()
    cpu = r1 - r0 if r0 is not None and r1 is not None else None
    return wall, peak, proc.returncode, cpu, (st1 - st0 if st0 is not None and st1 is not None else None)


def network_input_pixels(summary: dict[str, Any]) -> int:
    """Pixels the network ran on in this run (windows trimmed to the tissue, halos included)."""
    return int(summary["processing"]["network_input_px"])


def run_floor(lm, device, precision: str, threads: int, args: argparse.Namespace) -> float:
    """The model floor in the configuration a run with ``threads`` tile threads uses (Mpx/s)."""
    if device.type == "cpu" and threads > 1:
        return model_floor_streams(lm, args.tile_size, args.batch_size, precision, args.bracket_seconds, 1, threads)
    return model_floor(lm, device, args.tile_size, args.batch_size, precision, args.bracket_seconds, 1)


def shape_floor(lm, device, precision: str, threads: int, shapes: list[list[int]]) -> tuple[float, float | None]:
    """(Mpx/s, CPU s) of the model alone on the run's own input windows (``summary.processing.window_shapes``).

    The strict yardstick for a run whose windows were trimmed to the tissue: those are
    smaller than the tile and run faster per pixel. One pass over every window, largest first,
    shared by ``threads`` 1-thread streams (CPU; otherwise one stream), as the tile stage runs
    them; each distinct shape is run once untimed first.
    """
    import threading

    import torch

    from wsicount.infer import DTYPES, module_for

    module = module_for(lm, device, precision)
    c = len(lm.card.channels)
    work = [(h, w) for h, w, n in shapes for _ in range(n)]
    streams = threads if device.type == "cpu" else 1
    lock, it = threading.Lock(), iter(work)

    def run_all(todo) -> None:
        torch.set_num_threads(1 if streams > 1 else (os.cpu_count() or 1))
        with torch.inference_mode():
            while True:
                with lock:
                    hw = next(todo, None)
                if hw is None:
                    return
                x = torch.randn(1, c, *hw, device=device, dtype=DTYPES[precision])
                module(x.contiguous(memory_format=torch.channels_last))
                sync(device)

    warm = iter([(h, w) for h, w, _ in shapes])
    pool = [threading.Thread(target=run_all, args=(warm,)) for _ in range(streams)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    c0, t0 = _rusage(), time.perf_counter()
    pool = [threading.Thread(target=run_all, args=(it,)) for _ in range(streams)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    dt, c1 = time.perf_counter() - t0, _rusage()
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = c1 - c0 if c0 is not None and c1 is not None else None  # this process: only the streams run now
    return sum(h * w for h, w in work) / dt / 1e6, cpu


def run_e2e(slide: SlideSpec, precision: str, threads: int, args: argparse.Namespace, lm, device, rep: int = 1) -> E2E:
    """One ``wsicount run`` in a subprocess, bracketed by floor measurements; reads its summary.json."""
    out = Path(args.work) / f"{slide.path.stem}-{precision}-t{threads}"
    cmd = [sys.executable, "-m", "wsicount", "run", str(slide.path), "--out", str(out), "--overwrite", "-q",
           "--precision", precision, "--threads", str(threads), "--tile-size", str(args.tile_size),
           "--batch-size", str(args.batch_size), "--device", args.device]
    if args.model:
        cmd += ["--model", str(args.model)]
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"  wsicount run {slide.path.name} {precision} threads={threads} #{rep} ...", flush=True)
    log = out.parent / f"{out.name}.log"
    before = run_floor(lm, device, precision, threads, args) if args.bracket_seconds > 0 else None
    wall, rss, rc, cpu, steal = measure_process(cmd, log)
    after = run_floor(lm, device, precision, threads, args) if args.bracket_seconds > 0 else None
    print(f"    {wall:.1f} s, peak RSS {rss / MIB:.0f} MiB"
          + (f"; floor before/after {before:.3f}/{after:.3f} Mpx/s" if before is not None else ""), flush=True)
    if rc != 0:
        raise SystemExit(f"wsicount run failed (exit {rc}); see {log}:\n{log.read_text()[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    e = E2E(slide, precision, threads, wall, rss, summary, network_input_pixels(summary),
            (before, after) if before is not None else None, rep=rep, cpu=cpu, steal=steal)
    shapes = summary["processing"].get("window_shapes")
    if args.shape_floor and precision != "fp32" and shapes:  # fp32 would take as long as its run (minutes)
        e.shape_floor, e.shape_cpu = shape_floor(lm, device, precision, threads, shapes)
        print(f"    model alone on this run's {sum(n for *_, n in shapes)} windows: {e.shape_floor:.3f} Mpx/s", flush=True)
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return e


# --- naive baseline -----------------------------------------------------------------------
def naive_crop(slide: SlideSpec, lm, device, tile: int, crop: int) -> Naive:
    """The naive per-tile OpenSlide + PIL + model loop on a centred crop of ``crop`` level-0 px."""
    import openslide
    import torch
    from PIL import Image

    from wsicount.preprocess import apply_normalization, norm_floor, percentile_stats

    osr = openslide.OpenSlide(str(slide.path))
    mpp0 = float(osr.properties["openslide.mpp-x"])
    f = lm.card.mpp / mpp0 if lm.card.mpp else 1.0  # level-0 px per model px (~4)
    ch, cw = min(crop, slide.height), min(crop, slide.width)
    y0, x0 = (slide.height - ch) // 2, (slide.width - cw) // 2
    step = int(round(tile * f))  # level-0 px read per tile
    out = np.zeros((int(ch / f), int(cw / f)), np.float32)  # the whole stitched density, in memory
    stage = {"read": 0.0, "resize": 0.0, "infer": 0.0}
    net_px = tiles = 0
    t0 = time.perf_counter()
    for ty in range(0, ch, step):
        for tx in range(0, cw, step):
            h, w = min(step, ch - ty), min(step, cw - tx)
            oh, ow = int(h / f), int(w / f)
            ta = time.perf_counter()
            region = osr.read_region((x0 + tx, y0 + ty), 0, (w, h))
            tb = time.perf_counter()
            g = np.asarray(region.convert("RGB").resize((ow, oh), Image.BOX))[..., lm.card.channels]
            x = np.moveaxis(g, -1, 0).astype(np.float32)
            lo, span = percentile_stats(x, lm.card.normalization)
            x = apply_normalization(x, lo, span, norm_floor(lm.card.normalization))
            tc = time.perf_counter()
            ph, pw = -oh % lm.card.stride, -ow % lm.card.stride
            xt = torch.from_numpy(np.pad(x, [(0, 0), (0, ph), (0, pw)], mode="symmetric")[None]).to(device)
            with torch.inference_mode():
                d = lm.module(xt)[0, 0, :oh, :ow].float().cpu().numpy() / lm.card.density_scale
            oy, ox = int(ty / f), int(tx / f)
            out[oy : oy + oh, ox : ox + ow] = d[: out.shape[0] - oy, : out.shape[1] - ox]
            td = time.perf_counter()
            stage["read"] += tb - ta
            stage["resize"] += tc - tb
            stage["infer"] += td - tc
            net_px += (oh + ph) * (ow + pw)
            tiles += 1
    secs = time.perf_counter() - t0
    osr.close()
    full_bytes = int(slide.height / f) * int(slide.width / f) * 4
    return Naive(slide, (ch, cw), secs, net_px, tiles, full_bytes, stage)


def _naive_child(path: Path, size: tuple[int, int], crop: int, args: argparse.Namespace) -> dict[str, Any]:
    """(In a fresh process) :func:`naive_crop`, as JSON-ready fields."""
    from wsicount.infer import pick_device
    from wsicount.models import load_model

    device = pick_device(args.device)
    n = naive_crop(SlideSpec(path, size[0], size[1], 0.0, 0, None), load_model(args.model, device=device), device,
                   args.tile_size, crop)
    return {"crop": list(n.crop), "seconds": n.seconds, "net_px": n.net_px, "tiles": n.tiles,
            "full_array_bytes": n.full_array_bytes, "stage": n.stage}


def naive_baseline(slide: SlideSpec, args: argparse.Namespace) -> Naive:
    """:func:`naive_crop` in a fresh interpreter: a user's script gets glibc's default allocator."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--naive-probe", str(slide.path),
           f"{slide.height}x{slide.width}", str(args.crop), "--device", args.device, "--tile-size", str(args.tile_size)]
    if args.model:
        cmd += ["--model", str(args.model)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"naive baseline failed:\n{res.stderr[-2000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return Naive(slide, tuple(r["crop"]), r["seconds"], r["net_px"], r["tiles"], r["full_array_bytes"], r["stage"])


# --- tables -------------------------------------------------------------------------------
def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(v: float | None, nd: int = 2) -> str:
    """Number or an em dash."""
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def setup_text(slides: list[SlideSpec], args: argparse.Namespace, lm, dev_label: str, fpp: float) -> str:
    """Workload and settings."""
    rows = [[s.path.name, f"{s.height}×{s.width}", fmt(s.mpx / 1000, 3), fmt(s.tissue_fraction), s.n_cells,
             fmt(s.path.stat().st_size / MIB, 0), "cached" if s.synth_seconds is None else fmt(s.synth_seconds, 0)]
            for s in slides]
    head = (f"Model `{lm.card.name}` v{lm.card.version} ({lm.card.arch}, {len(lm.card.channels)} input channel(s), "
            f"{lm.card.mpp} µm/px), tile {args.tile_size} px (network input, halo included), "
            f"batch {args.batch_size}, device {dev_label}; {fpp / 1e3:.1f} kFLOP per network-input px "
            "(FlopCounterMode: convolutions, 2×MAC). Allocator of this process (floors) and of `wsicount run`: "
            f"{args.allocator} (`wsicount.allocator`); the naive baseline runs in a fresh process with glibc's "
            "default allocator, as a user's script would.\n\n")
    return head + md_table(["slide", "H×W px", "Gpx", "tissue fraction", "cells", "file MiB", "synth s"], rows)


def floor_text(floors: list[Floor], act: dict[str, dict[str, float]], args: argparse.Namespace, mm_n: int) -> str:
    """Model-floor table."""
    rows = []
    for f in floors:
        a = f.act_bytes
        per_px = a / (args.batch_size * args.tile_size**2) if a is not None else None
        rows.append([f.precision, fmt(f.mpx_s), fmt(f.streams_mpx_s), fmt(f.gflop_s, 1), fmt(f.matmul_gflop_s, 1),
                     fmt(f.gflop_s / f.matmul_gflop_s if f.matmul_gflop_s else None, 2),
                     fmt(a / MIB if a is not None else None, 0), fmt(per_px, 0)])
    base = next(iter(act.values()), {})
    note = ""
    if base:
        note = (f"\n\nBare process (python + torch + wsicount imported): {base['rss_import'] / MIB:.0f} MiB RSS; "
                f"model loaded: +{(base['rss_model'] - base['rss_import']) / MIB:.0f} MiB. Activation peak = "
                f"peak-memory delta (Linux VmHWM after resetting it; CUDA: "
                f"max_memory_allocated) of one {args.batch_size}×{args.tile_size}² forward in a fresh process, "
                "input tensor excluded.")
    return md_table(["precision", "net-in Mpx/s (1 stream, all threads)", "net-in Mpx/s (2 streams × 1 thread)",
                     "model GFLOP/s (1 stream)", f"matmul {mm_n}² GFLOP/s", "model ÷ matmul",
                     "activation MiB / batch", "activation B / input px"], rows) + note


def e2e_text(runs: list[E2E], floors: dict[str, Floor]) -> str:
    """End-to-end table."""
    rows = []
    for e in runs:
        f = floors.get(e.precision)
        rows.append([e.slide.path.name, e.label, fmt(e.wall, 1), fmt(e.summary["timings"].get("total"), 1),
                     fmt(e.slide.mpx / e.wall, 1), fmt(e.net_mpx_s), fmt(e.tissue_mpx_s),
                     e.summary["processing"]["n_tiles_tissue"], fmt(e.peak_rss / MIB, 0),
                     fmt(e.summary["total_cells"], 0), fmt(e.net_mpx_s / f.best if f else None),
                     " / ".join(fmt(v, 3) for v in e.floor_around) if e.floor_around else "—",
                     fmt(e.net_mpx_s / e.around if e.around else None), fmt(e.shape_floor, 3),
                     fmt(e.net_mpx_s / e.shape_floor if e.shape_floor else None)])
    return (md_table(["slide", "precision:threads", "wall s", "in-process s", "slide Mpx/s", "net-in Mpx/s",
                      "tissue Mpx/s (model grid)", "tissue tiles", "peak RSS MiB", "cells", "÷ model floor (start)",
                      "floor before / after run", "÷ floor around run", "floor on the run's windows",
                      "÷ floor on the run's windows"], rows)
            + "\n\nFloor on the run's windows: the model alone, one pass over exactly the input windows the run "
              "processed (trimmed to the tissue, so smaller than the tile and faster per pixel), measured right "
              "after the run; the strictest yardstick (not measured for fp32: it would take as long as the run).")


def stages_text(runs: list[E2E]) -> str:
    """Per-stage seconds from summary.json."""
    rows = []
    for e in runs:
        t = e.summary["timings"]
        s = t.get("stage_seconds_summed_over_tiles", {})
        rows.append([e.slide.path.name, e.label, fmt(e.wall - t.get("total", e.wall), 1)]
                    + [fmt(t.get(k), 1) for k in ("open", "tissue", "normalization", "tissue_wait", "plan",
                                                  "before_tiles", "tiles", "stitch", "report", "total")]
                    + [fmt(s.get(k), 1) for k in ("read", "read_cpu", "infer", "post", "post_cpu")])
    return (md_table(["slide", "run", "process start + exit", "open (+ torch, model)", "tissue (side worker)",
                      "normalization (side worker)", "tissue wait", "plan", "start → first tile", "tiles",
                      "stitch (pyramid)", "report", "total", "Σ read", "Σ read CPU", "Σ infer", "Σ post",
                      "Σ post CPU"], rows)
            + "\n\n`tissue` and `normalization` run in the side worker (a forked process under the CLI) while "
              "`open` imports torch and loads the model; only `tissue wait` is on the critical path. "
              "`start → first tile` is everything before the tile stage. `stitch` (the density pyramid) runs on "
              "a thread while `report` aggregates and writes the count maps and waits for the side worker's "
              "text tables, so the two overlap. Σ columns: summed over tiles, wall seconds and the reading or "
              "tile thread's CPU seconds ('—' where the run did not record them).")


def cpu_text(runs: list[E2E]) -> str:
    """Where each run's CPU time went: network, everything else, idle; and the network's share."""
    rows = []
    for e in runs:
        if e.cpu is None:
            continue
        net = e.net_cpu
        rows.append([e.slide.path.name, e.label, fmt(e.capacity, 1), fmt(e.cpu, 1), fmt(net, 1),
                     fmt(e.cpu - net if net else None, 1), fmt(e.steal, 1),
                     fmt(e.capacity - e.cpu - (e.steal or 0.0), 1), fmt(e.share), fmt(e.share_got),
                     fmt(e.shape_cpu, 1), fmt(net / e.shape_cpu if net and e.shape_cpu else None)])
    return (md_table(["slide", "run", f"cores × wall ({CORES} cores)", "run CPU-s (process tree)",
                      "network CPU-s (Σ infer_cpu)", "other CPU-s", "stolen CPU-s (hypervisor)",
                      "idle CPU-s (the rest)", "network share", "network share of the CPU the VM got (steal excluded)",
                      "model alone on the run's windows, CPU-s", "network CPU in run ÷ alone"], rows)
            + "\n\nnetwork share = network CPU-s ÷ (cores × wall). Both come from the same run, so a slower or "
              "faster CPU, which moves every floor ratio, moves both terms (not quite alike: the network gains more "
              "from a faster CPU than the rest, so the share reads a little lower then): it says how much of the machine went "
              "to anything but the network (start-up imports, tissue, reading, post-processing, pictures, "
              "tables, exit), stood idle, or was taken by the hypervisor (`steal` in /proc/stat, machine-wide: "
              "time this machine's CPUs were ready to run but other guests ran); "
              "the share of the CPU the VM got leaves the stolen seconds out of the capacity, so it does not "
              "drift with the neighbours' load either. Network CPU-s "
              "are the tile threads' own CPU time in the forward pass, all of the network's only when each "
              "tile thread runs it on one thread (threads ≥ cores); other rows show '—'. The strict ratio (÷ the model alone on the run's windows) equals "
              "the share × (alone CPU-s ÷ in-run CPU-s) when the streams keep the cores busy; the last column "
              "compares those CPU-s, measured minutes apart, so it carries the VM's drift.")


def naive_text(naives: list[Naive]) -> str:
    """Naive-baseline table."""
    rows = []
    for n in naives:
        rows.append([n.slide.path.name, f"{n.crop[0]}×{n.crop[1]}", n.tiles, fmt(n.seconds, 1),
                     f"×{n.scale:.1f}", fmt(n.full_seconds, 0), fmt(n.slide.mpx / n.full_seconds),
                     fmt(n.net_px / 1e6 / n.seconds), " / ".join(fmt(n.stage[k], 1) for k in n.stage),
                     fmt(n.full_array_bytes / MIB, 0)])
    return (md_table(["slide", "crop px", "tiles", "crop s", "scale (px)", "full slide s (scaled)", "slide Mpx/s",
                      "net-in Mpx/s", "read / resize / infer s", "full stitch array MiB"], rows)
            + "\n\nThe naive full-slide time is the crop's time × (slide px ÷ crop px): it processes every tile, "
              "tissue or not, so its time is proportional to the slide area.")


def _spread(values: list[float | None], nd: int = 2) -> str:
    """Median of the values, with their range when there are several ('—' if none)."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return "—"
    med = fmt(float(np.median(v)), nd)
    return med if len(v) == 1 else f"{med} ({fmt(v[0], nd)}–{fmt(v[-1], nd)})"


def ratio_text(slides: list[SlideSpec], runs: list[E2E], floors: dict[str, Floor], naives: list[Naive]) -> str:
    """Headline ratios per slide: medians over the repetitions (range in brackets)."""
    rows = []
    for s in slides:
        mine: dict[str, list[E2E]] = {}
        for e in runs:
            if e.slide is s:
                mine.setdefault(e.key, []).append(e)
        best = {p: max((k for k in mine if k.startswith(p + ":")), key=lambda k: mine[k][0].threads, default=None)
                for p in ("fp32", "bf16")}
        fp, bf = mine.get(best["fp32"] or "", []), mine.get(best["bf16"] or "", [])
        nv = next((n for n in naives if n.slide is s), None)
        wall = {k: float(np.median([e.wall for e in v])) for k, v in mine.items()}
        pair = [(f"{p}:1", f"{p}:2") for p in ("bf16", "fp32") if f"{p}:1" in mine and f"{p}:2" in mine]
        t1, t2 = pair[0] if pair else (None, None)
        rows.append([
            s.path.name,
            _spread([e.net_mpx_s / floors["fp32"].best for e in fp] if "fp32" in floors else []),
            _spread([e.net_mpx_s / floors["bf16"].best for e in bf] if "bf16" in floors else []),
            _spread([e.net_mpx_s / e.around for e in fp if e.around]),
            _spread([e.net_mpx_s / e.around for e in bf if e.around]),
            _spread([e.net_mpx_s / e.shape_floor for e in bf if e.shape_floor]),
            _spread([e.share for e in bf]),
            _spread([e.share_got for e in bf]),
            fmt(nv.full_seconds / wall[best["fp32"]] if nv and fp else None, 1),
            fmt(nv.full_seconds / wall[best["bf16"]] if nv and bf else None, 1),
            fmt(wall[t1] / wall[t2] if t1 else None),
            fmt(100 * (bf[0].summary["total_cells"] / fp[0].summary["total_cells"] - 1) if fp and bf else None, 3),
        ])
    return (md_table(["slide", "e2e ÷ floor fp32 (≥ 0.8)", "e2e ÷ floor bf16", "e2e ÷ floor around run fp32",
                      "e2e ÷ floor around run bf16", "e2e ÷ floor on the run's windows bf16", "network share bf16",
                      "network share bf16, steal excluded",
                      "naive ÷ e2e fp32 (≥ 5)",
                      "naive ÷ e2e bf16", "threads 2 ÷ 1 (speed-up, bf16 if run)", "count bf16 vs fp32 %"], rows)
            + "\n\ne2e rows use the runs with the most threads of each precision: the median over their repetitions "
              "(`--repeat`), the range in brackets; e2e ÷ floor = end-to-end "
              "network-input Mpx/s (wall time, process start included) ÷ the better of the two model-alone floors "
              "measured at the start; e2e ÷ floor around run: ÷ the mean of the floors measured right before and "
              "after that run in its own configuration (the VM's speed drifts between the start and the run). "
              "Wall-time ratios (naive, threads) use the median wall time.")


# --- main ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size(s) for s in DEFAULT_SIZES],
                    metavar="HxW",
                    help=f"slide sizes in level-0 px, multiples of 8 (default: {' '.join(DEFAULT_SIZES)})")
    ap.add_argument("--tissue-fraction", type=float, default=0.6, help="tissue fraction of the synthetic slides (0.6)")
    ap.add_argument("--seed", type=int, default=0, help="synthetic slide seed (0)")
    ap.add_argument("--model", default=None, help="model name or card path (default: the bundled default model)")
    ap.add_argument("--tile-size", type=int, default=1024, help="network-input px per tile side, as wsicount run (1024)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="tiles per forward pass; 0 = what wsicount run's auto picks on this device (0)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (auto)")
    ap.add_argument("--runs", type=parse_run, nargs="+", default=[parse_run(r) for r in DEFAULT_RUNS],
                    metavar="PREC:THREADS[@I]",
                    help=f"end-to-end runs: precision fp32|bf16|fp16 and --threads, on every slide or only on "
                         f"slide I of --sizes (0-based). Default: {' '.join(DEFAULT_RUNS)} (bf16, what 'auto' picks on "
                         "CPUs with AMX/AVX512-BF16, on every slide; fp32 and 1 thread, for the count difference and "
                         "the thread scaling, on the first)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each non-fp32 --runs entry (fp32 runs once: minutes each); ratios are medians (3)")
    ap.add_argument("--crop", type=int, default=8192, help="naive baseline: centred crop side in level-0 px (8192)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--no-floor", action="store_true", help="skip the model floor, matmul and activation measurements")
    ap.add_argument("--floor-seconds", type=float, default=5.0, help="timed seconds per floor/matmul measurement (5)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up iterations of the model floor (3)")
    ap.add_argument("--no-shape-floor", dest="shape_floor", action="store_false",
                    help="skip the model-alone pass over each (non-fp32) run's own window shapes")
    ap.add_argument("--bracket-seconds", type=float, default=5.0,
                    help="seconds of floor measured right before and after each run, in its configuration (5; 0 = off)")
    ap.add_argument("--matmul-size", type=int, default=None, help="matmul side (default 2048 on CPU, 8192 on CUDA)")
    ap.add_argument("--slides-dir", default=str(ROOT / "runs" / "bench-slides"), help="slide cache folder")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-throughput"), help="folder for run outputs and logs")
    ap.add_argument("--keep-outputs", action="store_true", help="keep each run's output folder")
    ap.add_argument("--no-write", action="store_true", help="print only, do not append to BENCHMARKS.md")
    ap.add_argument("--activation-probe", choices=["fp32", "bf16", "fp16"], help=argparse.SUPPRESS)
    ap.add_argument("--naive-probe", nargs=3, metavar=("SLIDE", "HxW", "CROP"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def measure_floor(lm, device, args: argparse.Namespace, precisions: list[str],
                  fpp: float) -> tuple[dict[str, Floor], dict[str, dict[str, float]], int]:
    """Model floor and activation memory per precision, and the matmul side used."""
    import torch

    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    floors, act = {}, {}
    for prec in precisions:
        print(f"  model floor {prec} ...", flush=True)
        mpx = model_floor(lm, device, args.tile_size, args.batch_size, prec, args.floor_seconds, args.warmup)
        streams = None
        if device.type == "cpu" and (os.cpu_count() or 1) > 1:
            k = min(2, os.cpu_count() or 1)  # wsicount run's default --threads
            print(f"  model floor {prec}, {k} concurrent 1-thread streams ...", flush=True)
            streams = model_floor_streams(lm, args.tile_size, args.batch_size, prec, 2 * args.floor_seconds,
                                          1, k)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
        mm = matmul_gflops(device, dtype, n, args.floor_seconds / 2)
        floors[prec] = Floor(prec, mpx, mpx * 1e6 * fpp / 1e9, mm, streams_mpx_s=streams)
        act[prec] = activation_memory(args, prec)
        floors[prec].act_bytes = act[prec]["act"] if math.isfinite(act[prec]["act"]) else None
    return floors, act, n


def main(argv: list[str] | None = None) -> None:
    """Measure, print the tables, append them to BENCHMARKS.md."""
    args = parse_args(argv)
    t_bench = time.perf_counter()
    if args.naive_probe:  # internal: the fresh process of naive_baseline(), glibc's allocator as a user has it
        path, hw, crop = args.naive_probe
        print(json.dumps(_naive_child(Path(path), parse_size(hw), int(crop), args)))
        return
    # the model runs as the wsicount CLI runs it (see wsicount.allocator): floors and probes alike
    from wsicount.allocator import tune_allocator

    args.allocator = "tuned" if tune_allocator() else "default (tuning unavailable)"
    if args.activation_probe:  # internal: the fresh process of activation_memory()
        print(json.dumps(_activation_child(args.model, args.device, args.tile_size, args.batch_size,
                                           args.activation_probe)))
        return
    from wsicount.infer import pick_device
    from wsicount.models import load_model

    device = pick_device(args.device)
    lm = load_model(args.model, device=device)
    dev_label = device_name(device)
    precisions = sorted({r[0] for r in args.runs} | {"fp32"}, key=["fp32", "bf16", "fp16"].index)
    if not args.batch_size:  # the batch wsicount run's auto picks (1 on CPU), used for the floor too
        from wsicount.infer import auto_batch_size

        args.batch_size = auto_batch_size(lm, device, precisions[-1], args.tile_size)
    print(f"machine: {machine()}\ndevice: {dev_label}", flush=True)
    slides = [ensure_slide(Path(args.slides_dir), s, args.tissue_fraction, args.seed) for s in args.sizes]
    fpp = flops_per_pixel(lm.module, len(lm.card.channels), args.tile_size)
    floors, act, mm_n = ({}, {}, 0) if args.no_floor else measure_floor(lm, device, args, precisions, fpp)
    runs, naives = [], []
    for i, s in enumerate(slides):
        print(f"{s.path.name}:", flush=True)
        for p, t, only in args.runs:
            if only in (None, i):
                runs += [run_e2e(s, p, t, args, lm, device, rep)
                         for rep in range(1, (1 if p == "fp32" else max(1, args.repeat)) + 1)]
        if not args.no_naive:
            print(f"  naive baseline on a {args.crop}² crop ...", flush=True)
            naives.append(naive_baseline(s, args))
    parts = [("Setup", setup_text(slides, args, lm, dev_label, fpp))]
    if floors:
        parts.append(("Model floor", floor_text(list(floors.values()), act, args, mm_n)))
    parts += [("End-to-end (`wsicount run`)", e2e_text(runs, floors)),
              ("Stage seconds (summary.json)", stages_text(runs)),
              ("CPU budget", cpu_text(runs))]
    if naives:
        parts.append(("Naive baseline", naive_text(naives)))
    parts.append(("Ratios", ratio_text(slides, runs, floors, naives)))
    body = "\n\n".join(f"### {t}\n\n{b}" for t, b in parts)
    body += f"\n\nBenchmark wall time: {(time.perf_counter() - t_bench) / 60:.1f} min."
    publish(f"Throughput ({dev_label.split(' (')[0]})", body, not args.no_write)


if __name__ == "__main__":
    main()
