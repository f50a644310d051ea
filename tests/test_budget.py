"""The tile size from the memory there is: the planner's rule, the memory it sees, the activation
estimate it rests on, and a run that has to shrink its tiles (same counts, recorded, resumable)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import wsicount
from wsicount import budget
from wsicount.budget import AUTO_TILE_MAX, AUTO_TILE_MIN, AUTO_TILE_STEP, AVAILABLE_FRACTION, choose_tile_size, task_bytes
from wsicount.tiling import TileGrid

GIB = 1 << 30
HALO = 56  # the bundled U-Net's: receptive radius 50 + peak margin, to the stride 8


def core_of(t: int) -> int:
    return TileGrid.core_for(t, HALO, 8)


def plan(requested: int = 0, available: int | None = 8 * GIB, tasks: int = 2, **kw):
    kw.setdefault("act_per_px", 900.0)
    return choose_tile_size(requested, tasks=tasks, available=available, channels=1, core_of=core_of, **kw)


def need(t: int, tasks: int = 2, act: float = 900.0, fixed: int = 0) -> int:
    return fixed + tasks * task_bytes(t, core_of(t), 1, act)


def test_plenty_of_memory_gives_the_default():
    p = plan(available=64 * GIB)
    assert (p.tile_size, p.fits) == (AUTO_TILE_MAX, True)
    assert p.need_bytes == need(AUTO_TILE_MAX) and p.available_bytes == 64 * GIB


@pytest.mark.parametrize("available_gib", [2.5, 1.6, 1.0])
def test_tight_memory_gives_the_largest_size_that_fits(available_gib):
    avail = int(available_gib * GIB)
    p = plan(available=avail, fixed_bytes=100 << 20)
    t = p.tile_size
    assert AUTO_TILE_MIN <= t < AUTO_TILE_MAX and t % AUTO_TILE_STEP == 0 and p.fits
    assert need(t, fixed=100 << 20) <= AVAILABLE_FRACTION * avail
    assert need(t + AUTO_TILE_STEP, fixed=100 << 20) > AVAILABLE_FRACTION * avail  # the next size up would not fit
    assert "reduced" in p.reason


def test_more_tasks_need_smaller_tiles():
    avail = 3 * GIB
    assert plan(available=avail, tasks=4).tile_size < plan(available=avail, tasks=1).tile_size


def test_too_little_memory_gives_the_smallest_size_and_says_so():
    p = plan(available=200 << 20)
    assert p.tile_size == AUTO_TILE_MIN and not p.fits and "may swap" in p.reason


def test_a_requested_size_is_kept_and_flagged_when_it_does_not_fit():
    assert plan(1024, available=64 * GIB).fits
    p = plan(1024, available=1 * GIB)
    assert p.tile_size == 1024 and not p.fits and "smaller --tile-size" in p.reason


def test_unknown_memory_gives_the_default():
    p = plan(available=None)
    assert p.tile_size == AUTO_TILE_MAX and p.available_bytes is None and p.fits


def test_sizes_without_a_core_are_never_picked():
    big_halo = lambda t: TileGrid.core_for(t, 400, 8)  # noqa: E731 - a model with a huge receptive field
    p = choose_tile_size(0, tasks=1, available=100 << 20, act_per_px=900.0, channels=1, core_of=big_halo)
    assert big_halo(p.tile_size) > 0


def _fake_cgroup(tmp_path: Path, cgroup_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text(cgroup_line + "\n")
    root = tmp_path / "sys"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return proc, root


def test_cgroup_v2_limit(tmp_path):
    proc, root = _fake_cgroup(tmp_path, "0::/job.slice/run", {"job.slice/run/memory.max": "4294967296\n",
                                                               "job.slice/run/memory.current": "1073741824\n"})
    assert budget._cgroup_room(proc, root) == 3 * GIB


def test_cgroup_v2_without_limit(tmp_path):
    proc, root = _fake_cgroup(tmp_path, "0::/", {"memory.max": "max\n", "memory.current": "5\n"})
    assert budget._cgroup_room(proc, root) is None


def test_cgroup_v1_limit(tmp_path):
    proc, root = _fake_cgroup(tmp_path, "4:memory:/docker/abc", {"memory/docker/abc/memory.limit_in_bytes": "2147483648",
                                                                  "memory/docker/abc/memory.usage_in_bytes": "536870912"})
    assert budget._cgroup_room(proc, root) == int(1.5 * GIB)
    proc, root = _fake_cgroup(tmp_path / "nolimit", "4:memory:/", {"memory/memory.limit_in_bytes": str(1 << 62),
                                                                    "memory/memory.usage_in_bytes": "5"})
    assert budget._cgroup_room(proc, root) is None


def test_available_memory_is_the_lesser_of_machine_and_cgroup(monkeypatch):
    import psutil

    machine = psutil.virtual_memory().available
    monkeypatch.setattr(budget, "_cgroup_room", lambda: 123 << 20)
    assert budget.available_memory() == min(machine, 123 << 20)
    monkeypatch.setattr(budget, "_cgroup_room", lambda: None)
    assert abs(budget.available_memory() - machine) < 512 << 20  # the machine's figure (it moves a little)


# --- the activation estimate ------------------------------------------------------------------
def test_activation_estimate_of_a_known_network():
    """One 3x3 conv, 1 -> 8 channels, fp32: input (4 B/px) and output (32 B/px) are alive together."""
    import torch

    from wsicount.infer import ACTIVATION_OVERHEAD, activation_bytes_per_px
    from wsicount.models import LoadedModel, ModelCard

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(inplace=True)).eval()
    lm = LoadedModel(net, ModelCard(name="t", arch="unet", channels=[0]), Path("t.json"))
    assert activation_bytes_per_px(lm, torch.device("cpu"), "fp32") == pytest.approx(ACTIVATION_OVERHEAD * 36)
    assert activation_bytes_per_px(lm, torch.device("cpu"), "bf16") == pytest.approx(ACTIVATION_OVERHEAD * 18)


def _memory_benchmark():
    """``benchmarks/memory.py`` as a module: its activation probe is the measurement the factor comes from."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("wsicount_memory_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read from /proc (Linux)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_estimate_covers_the_measured_peak(precision):
    """The U-Net's estimate is at least its measured peak (one 768² pass, fresh tuned process): the planner errs small."""
    import torch

    if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    r = _memory_benchmark().activation_probe("unet", precision, 768)
    assert r["measured"] > 100  # the probe saw the pass at all
    assert r["estimate"] >= r["measured"], r


# --- a run that has to shrink its tiles ------------------------------------------------------
@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from wsicount.synth import synth_slide

    d = tmp_path_factory.mktemp("budget")
    return synth_slide(d / "b.ndpi", format="ndpi", size=(3072, 3072), seed=5, look="fluorescence",
                       cell_density_per_mm2=300.0, tissue="disk", tissue_fraction=0.6)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_short_memory_shrinks_tiles_with_the_same_counts(slide, tmp_path, monkeypatch):
    roomy = wsicount.count(slide.path, tmp_path / "roomy", progress=False)
    assert roomy["processing"]["tile_plan"]["tile_size"] == AUTO_TILE_MAX
    monkeypatch.setattr(budget, "available_memory", lambda: 1 * GIB)
    short = wsicount.count(slide.path, tmp_path / "short", progress=False)
    p = short["processing"]["tile_plan"]
    assert AUTO_TILE_MIN <= p["tile_size"] < AUTO_TILE_MAX and p["fits"] and p["available_bytes"] == GIB
    assert short["processing"]["tile_size"] <= p["tile_size"]
    assert short["parameters"]["tile_size"] == 0  # what was asked: auto
    assert short["total_cells"] == pytest.approx(roomy["total_cells"], rel=1e-4)
    # a resumed auto run keeps the size it started with, whatever the memory is now
    monkeypatch.setattr(budget, "available_memory", lambda: 64 * GIB)
    again = wsicount.count(slide.path, tmp_path / "short", progress=False)
    assert again["processing"]["tile_plan"]["tile_size"] == p["tile_size"]
    assert again["processing"]["n_tiles_resumed"] == again["processing"]["n_tiles_tissue"]
    assert again["total_cells"] == short["total_cells"]


def test_cli_warns_when_the_requested_tile_does_not_fit(slide, tmp_path, monkeypatch):
    from wsicount.cli import cli

    monkeypatch.setattr(budget, "available_memory", lambda: GIB // 2)
    res = CliRunner().invoke(cli, ["run", str(slide.path), "-o", str(tmp_path / "o"), "--tile-size", "1024", "-q"])
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line.startswith("wsicount: warning: tile size 1024")]
    assert len(warnings) == 1 and "smaller --tile-size" in warnings[0]
    assert _summary(tmp_path / "o")["processing"]["tile_plan"]["fits"] is False


def test_cgroup_namespace_reads_the_mount_itself(tmp_path):
    """Inside a container /proc/self/cgroup names the host's path, but the limit sits at the mount."""
    proc, root = _fake_cgroup(tmp_path, "4:memory:/process_api/abc", {"memory/memory.limit_in_bytes": "1073741824",
                                                                       "memory/memory.usage_in_bytes": "0"})
    assert budget._cgroup_room(proc, root) == GIB
