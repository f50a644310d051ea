"""Peak memory of ``wsicount run`` as the slide grows: it must stay flat (target: the larger
slide needs at most 1.3x the peak RSS of the smaller one), on the local scheduler and with
``--workers N`` (client process and every worker process measured separately).

    python benchmarks/memory.py                                  # 32768² and 65496² NDPI (~1.07 and ~4.29 Gpx)
    python benchmarks/memory.py --sizes 2048 3072 --no-write     # a quick check of the script itself
    python benchmarks/memory.py --mask-probe --sizes 26624x30000 65496   # the tissue mask's bytes per mask pixel
    python benchmarks/memory.py --activation                     # the planner's activation estimate vs measured

Slides are synthesized once (NDPI, fluorescence look, 60 % tissue) and cached in
``runs/bench-slides/`` under the names ``benchmarks/throughput.py`` uses, so both share them.
Each run is a ``wsicount run`` subprocess; its process tree is polled and each process's
peak RSS is read from ``/proc/PID/status`` (VmHWM, the kernel's high-water mark, so short
spikes between polls are not missed; other systems fall back to sampled RSS). Each run's CPU
budget is recorded too (as in ``throughput.py``): on a larger slide the run's fixed costs
(imports, tissue mask, pictures) weigh less, and the network's share shows by how much.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ROOT, publish  # noqa: E402
from throughput import CORES, _rusage, steal_seconds  # noqa: E402

MiB = 2**20


@dataclass
class Result:
    """One measured run."""

    size: tuple[int, int]  # (H, W) px
    mode: str
    wall_s: float
    client_peak: int  # bytes
    worker_peaks: list[int]
    side_peak: int  # the side worker's (a fork of the client: tissue mask, pictures); 0 if it ran as a thread
    n_tiles: int
    total_cells: float
    precision: str
    cpu_s: float | None = None  # CPU seconds of the run's process tree (RUSAGE_CHILDREN)
    steal_s: float | None = None  # CPU seconds the hypervisor took meanwhile (machine-wide)
    net_cpu_s: float | None = None  # the network's: summary.json Σ infer_cpu

    def share(self) -> float | None:
        """Network CPU ÷ the CPU the VM gave the run (cores × wall − steal), as throughput.py's CPU budget."""
        if self.net_cpu_s is None or self.steal_s is None:
            return None
        return self.net_cpu_s / (CORES * self.wall_s - self.steal_s)

    @property
    def gpx(self) -> float:
        """Level-0 gigapixels of the slide."""
        return self.size[0] * self.size[1] / 1e9

    @property
    def peak(self) -> int:
        """The largest single-process peak of the run (client, side worker or any Dask worker)."""
        return max([self.client_peak, self.side_peak, *self.worker_peaks])


def _size(text: str) -> tuple[int, int]:
    """'N' or 'HxW' -> (H, W)."""
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _slide(size: tuple[int, int], folder: Path, seed: int, tissue_fraction: float = 0.6) -> Path:
    """The cached synthetic NDPI slide of ``size`` (H, W) px (written on first use)."""
    from wsicount.synth import synth_slide

    path = folder / f"nz-{size[0]}x{size[1]}-tf{tissue_fraction:g}-s{seed}.ndpi"
    if not (path.exists() and path.with_name(path.name + ".truth.json").exists()):
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        print(f"synthesizing {path} ...", flush=True)
        synth_slide(path, format="ndpi", size=size, seed=seed, tissue_fraction=tissue_fraction)
        print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    return path


def _peak_rss(proc) -> int:
    """Peak resident set of a process so far (VmHWM on Linux, else the current RSS)."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return proc.memory_info().rss


def _is_helper(proc) -> bool:
    """multiprocessing's resource tracker and similar helpers are not workers."""
    try:
        return "resource_tracker" in " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - a process that just ended
        return True


def _watch(cmd: list[str], interval: float) -> tuple[float, int, dict[int, int], int, str]:
    """Run ``cmd``; (wall s, client peak, {worker pid: peak}, side worker peak, stderr) from polling its tree.

    The side worker is the child forked by the client (same command line); Dask workers are
    started afresh by multiprocessing (another command line).
    """
    import psutil

    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client, workers, side = 0, {}, 0
    while proc.poll() is None:
        try:
            client = max(client, _peak_rss(proc))
            for child in proc.children(recursive=True):
                if _is_helper(child):
                    continue
                if child.ppid() == proc.pid and child.cmdline() == proc.cmdline():
                    side = max(side, _peak_rss(child))
                else:
                    workers[child.pid] = max(workers.get(child.pid, 0), _peak_rss(child))
        except psutil.Error:
            pass  # a process ended between listing and reading it
        time.sleep(interval)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, client, workers, side, err


def measure(slide: Path, size: tuple[int, int], mode: str, args: argparse.Namespace) -> Result:
    """Run wsicount on ``slide`` in ``mode`` ('local' or 'workers') and measure it."""
    out = ROOT / "runs" / "bench-memory" / f"{slide.stem}-{mode}"
    cmd = [sys.executable, "-m", "wsicount", "run", str(slide), "--out", str(out), "--overwrite", "-q"]
    if args.tile_size:
        cmd += ["--tile-size", str(args.tile_size)]
    if mode == "workers":
        cmd += ["--workers", str(args.workers)]
    if args.model:
        cmd += ["--model", args.model]
    print(f"{slide.name} [{mode}] ...", flush=True)
    r0, st0 = _rusage(children=True), steal_seconds()
    wall, client, workers, side, _ = _watch(cmd, args.interval)
    r1, st1 = _rusage(children=True), steal_seconds()
    s = json.loads((out / "summary.json").read_text())
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    r = Result(size, mode, wall, client, sorted(workers.values()), side, s["processing"]["n_tiles_tissue"],
               s["total_cells"], s["processing"]["precision"],
               cpu_s=None if r0 is None else r1 - r0, steal_s=None if st0 is None else st1 - st0,
               net_cpu_s=s["timings"].get("stage_seconds_summed_over_tiles", {}).get("infer_cpu"))
    print(f"  {wall:.1f} s, client {client / MiB:.0f} MiB, side worker {side / MiB:.0f} MiB, workers "
          f"{', '.join(f'{w / MiB:.0f}' for w in r.worker_peaks) or '-'} MiB", flush=True)
    return r


_MASK_PROBE = """
import json, sys, tracemalloc
from wsicount.io import open_slide
from wsicount.tissue import detect_tissue
slide = open_slide(sys.argv[1])
tracemalloc.start()  # numpy reports its buffers to tracemalloc: the peak is the arrays' peak
tm = detect_tissue(slide)
held, peak = tracemalloc.get_traced_memory()
print(json.dumps({"shape": list(tm.mask.shape), "mpp": tm.mpp, "peak": peak, "held": held, "source": tm.source}))
"""


def mask_probe(slide: Path) -> dict:
    """Peak bytes of numpy arrays while ``detect_tissue`` runs on ``slide``, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MASK_PROBE, str(slide)], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    px = r["shape"][0] * r["shape"][1]
    print(f"{slide.name}: mask {r['shape'][0]}x{r['shape'][1]} at {r['mpp']:.2f} um/px, "
          f"peak {r['peak'] / MiB:.0f} MiB = {r['peak'] / px:.1f} B/mask px", flush=True)
    return {**r, "slide": slide.name, "px": px}


_ACT_PROBE = """
import json, sys
from pathlib import Path
from wsicount.allocator import tune_allocator
tune_allocator()  # as the CLI does: the figure the tile planner must cover
import torch
from wsicount.infer import ACTIVATION_OVERHEAD, DTYPES, activation_bytes_per_px, module_for
from wsicount.models import LoadedModel, ModelCard, build_model
torch.set_num_threads(1)
arch, prec, size, c = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
net = build_model(arch, in_channels=c).eval()  # random weights: memory does not depend on them
lm = LoadedModel(net, ModelCard(name=arch, arch=arch, channels=list(range(c)), stride=net.stride), Path(arch))
dev = torch.device("cpu")
module = module_for(lm, dev, prec)
size -= size % net.stride
x = torch.randn((1, c, size, size), dtype=DTYPES[prec]).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    module(x[..., :64, :64].contiguous(memory_format=torch.channels_last))  # kernels loaded first
def kib(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
before = kib("VmRSS:")
with torch.inference_mode():
    module(x)
est = activation_bytes_per_px(lm, dev, prec)
print(json.dumps({"measured": (kib("VmHWM:") - before) / size**2, "estimate": est,
                  "tracked": est / ACTIVATION_OVERHEAD, "factor": ACTIVATION_OVERHEAD}))
"""


def activation_probe(arch: str, precision: str, size: int) -> dict:
    """Measured peak activation bytes per input px of one forward pass (fresh process) and the planner's estimate."""
    c = 3 if arch == "cellnet" else 1
    out = subprocess.run([sys.executable, "-c", _ACT_PROBE, arch, precision, str(size), str(c)],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{arch} {precision}: measured {r['measured']:.0f} B/px, tracked {r['tracked']:.0f}, "
          f"estimate {r['estimate']:.0f}", flush=True)
    return {**r, "arch": arch, "precision": precision, "channels": c, "size": size}


def activation_table(rows: list[dict]) -> str:
    """Markdown table of the activation probes."""
    lines = ["| architecture | input channels | precision | measured B/px (one pass) | tracked live tensors B/px | "
             "measured ÷ tracked | planner's estimate B/px (× factor) | estimate ≥ measured |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['channels']} | {r['precision']} | {r['measured']:.0f} | {r['tracked']:.0f} | "
                     f"{r['measured'] / r['tracked']:.2f} | {r['estimate']:.0f} (× {r['factor']}) | "
                     f"{'yes' if r['estimate'] >= r['measured'] else '**no**'} |")
    return "\n".join(lines)


def mask_table(rows: list[dict]) -> str:
    """Markdown table of the mask probes."""
    lines = ["| slide | mask px | mask µm/px | level | peak MiB (numpy arrays) | B per mask px |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['slide']} | {r['shape'][0]}×{r['shape'][1]} | {r['mpp']:.2f} | {r['source']} | "
                     f"{r['peak'] / MiB:.0f} | {r['peak'] / r['px']:.1f} |")
    return "\n".join(lines)


def table(results: list[Result]) -> str:
    """Markdown table; the ratio compares each run's peak with the smallest slide's, same mode."""
    smallest = {}
    for r in sorted(results, key=lambda r: r.gpx):
        smallest.setdefault(r.mode, r)
    lines = ["| slide | Gpx | mode | precision | tissue tiles | wall s | client peak RSS MiB | "
             "side worker peak RSS MiB | Dask worker peak RSS MiB (each) | ratio to smallest | run CPU-s | "
             "network CPU-s | stolen CPU-s | network share of the CPU the VM got |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = smallest[r.mode]
        ratio = "—" if r is base else f"{r.peak / base.peak:.2f}"
        worker = ", ".join(f"{w / MiB:.0f}" for w in r.worker_peaks) if r.worker_peaks else "—"
        lines.append(f"| {r.size[0]}×{r.size[1]} | {r.gpx:.3g} | {r.mode} | {r.precision} | {r.n_tiles} | {r.wall_s:.1f} | "
                     f"{r.client_peak / MiB:.0f} | {r.side_peak / MiB:.0f} | {worker} | {ratio} | {_f(r.cpu_s)} | "
                     f"{_f(r.net_cpu_s)} | {_f(r.steal_s)} | {_f(r.share(), 2)} |")
    return "\n".join(lines)


def _f(v: float | None, nd: int = 1) -> str:
    """A number, or an em dash when not measured."""
    return "—" if v is None else f"{v:.{nd}f}"


def main() -> None:
    """Parse options, measure every (size, mode), print and append the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=_size, nargs="+", default=[(32768, 32768), (65496, 65496)],
                    help="slide sizes, N (square) or HxW, px, multiples of 8, smallest first; NDPI sides <= 65496 "
                         "[32768 65496]")
    ap.add_argument("--mask-probe", action="store_true",
                    help="measure only the tissue mask's peak memory per mask pixel")
    ap.add_argument("--activation", action="store_true",
                    help="measure only each architecture's activation memory against the tile planner's estimate")
    ap.add_argument("--act-size", type=int, default=1024, help="input side for --activation [1024]")
    ap.add_argument("--modes", nargs="+", choices=["local", "workers"], default=["local", "workers"])
    ap.add_argument("--workers", type=int, default=2, help="worker processes in 'workers' mode [2]")
    ap.add_argument("--tile-size", type=int, default=None, help="passed to wsicount run [its default]")
    ap.add_argument("--model", default=None, help="model name or path [bundled default]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slides", type=Path, default=ROOT / "runs" / "bench-slides", help="slide cache folder")
    ap.add_argument("--interval", type=float, default=0.2, help="polling interval, s")
    ap.add_argument("--keep-outputs", action="store_true", help="keep runs/bench-memory/* after measuring")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = ap.parse_args()
    if any(v % 8 for s in args.sizes for v in s):
        ap.error("NDPI slide sizes must be multiples of 8")
    if args.activation:
        import torch

        precisions = ["fp32"] + (["bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else [])
        rows = [activation_probe(a, p, args.act_size) for a in ("unet", "fcrn", "cellnet") for p in precisions]
        body = (f"{activation_table(rows)}\n\nOne {args.act_size}² forward pass per row in a fresh process with the CLI's "
                "allocator tuning, random weights, 1 torch thread; measured = VmHWM growth over the pass ÷ input px. "
                "Tracked = the peak of the tensors alive between layers (`infer.activation_bytes_per_px` before its "
                "factor); the estimate, tracked × `infer.ACTIVATION_OVERHEAD`, is what `--tile-size 0` (auto) plans with "
                "(`wsicount.budget`).")
        publish("Activation memory: the tile planner's estimate", body, not args.no_write)
        return
    if args.mask_probe:
        rows = [mask_probe(_slide(size, args.slides, args.seed)) for size in args.sizes]
        body = (f"{mask_table(rows)}\n\n`detect_tissue` alone in a fresh process; peak of the numpy arrays it allocates "
                "(tracemalloc), over the mask's pixels (README, Memory).")
        publish("Tissue-mask memory", body, not args.no_write)
        return
    results = []
    for size in sorted(args.sizes, key=lambda s: s[0] * s[1]):
        slide = _slide(size, args.slides, args.seed)
        results += [measure(slide, size, mode, args) for mode in args.modes]
    body = (f"{table(results)}\n\nPeak RSS per process (VmHWM). `local`: `wsicount run` on the threaded scheduler; "
            f"`workers`: `--workers {args.workers}` (LocalCluster), the client and each worker process measured "
            "separately. The side worker is the client's fork that computes the tissue mask and draws the pictures "
            "(its RSS counts the pages it shares with the client, copy-on-write). Ratio: the run's largest process peak over that of the smallest slide in the same mode "
            "(target ≤ 1.3). CPU budget as in `throughput.py`: the process tree's CPU seconds, the network's "
            "(Σ `infer_cpu`: the tile threads' or, with `--workers`, the workers' threads' CPU in the forward pass), "
            "the seconds stolen by the hypervisor, and the network's share of cores × wall − steal.")
    publish("Memory vs slide size", body, not args.no_write)


if __name__ == "__main__":
    main()
