"""Crash safety: kill -9 mid-run then rerun gives identical outputs without recomputing
finished tiles; a live lock refuses a second writer; a stale lock is taken over; a folder
holding another slide's results is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import wsicount
from wsicount.errors import OutputError
from wsicount.synth import synth_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    return synth_slide(d / "r.ndpi", format="ndpi", size=(3072, 3072), seed=31).path


def _density(out: Path) -> np.ndarray:
    return zarr.open_array(str(out / "density" / "0"), mode="r")[...]


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"PPid:\t{pid}\n" in status.read_text():
                kids.append(int(status.parent.name))
        except OSError:
            continue
    return kids


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_kill9_then_resume_is_identical(slide, tmp_path):
    ref = wsicount.run(slide, tmp_path / "ref", tile_size=256, threads=1, progress=False)
    out = tmp_path / "crash"
    cmd = [sys.executable, "-m", "wsicount", "run", str(slide), "--out", str(out), "--tile-size", "256",
           "--threads", "1", "-q"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tiles = out / ".wsicount" / "tiles"
    n_total = ref.attrs["summary"]["processing"]["n_tiles_tissue"]
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if tiles.exists() and len(list(tiles.glob("*.json"))) >= max(3, n_total // 3):
            break
        time.sleep(0.05)
    assert p.poll() is None, "run finished before it could be killed: " + p.stderr.read().decode()[-500:]
    children = _children(p.pid)
    assert children or not sys.platform.startswith("linux")  # the CLI's forked side worker
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # the forked side worker dies with it (it would otherwise wait for work forever)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.05)
    assert not [c for c in children if _alive(c)], "orphaned side worker"
    done_before = len(list(tiles.glob("*.json")))
    assert 0 < done_before < n_total
    assert not (out / "summary.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["processing"]["n_tiles_resumed"] == done_before  # finished tiles were not recomputed
    assert s["total_cells"] == pytest.approx(ref.attrs["total_cells"], rel=1e-12)
    assert np.array_equal(_density(out), _density(tmp_path / "ref"))  # bit-identical chunks


def test_live_lock_refuses_second_writer(slide, tmp_path):
    out = tmp_path / "locked"
    (out / ".wsicount").mkdir(parents=True)
    import socket

    (out / ".wsicount" / "lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(OutputError, match="in use"):
        wsicount.run(slide, out, progress=False)


def test_stale_lock_is_taken_over(slide, tmp_path):
    out = tmp_path / "stale"
    (out / ".wsicount").mkdir(parents=True)
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".wsicount" / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    ds = wsicount.run(slide, out, progress=False)
    assert ds.attrs["complete"] and not (out / ".wsicount" / "lock").exists()


def test_other_slide_results_refused_and_kept(slide, tmp_path):
    out = tmp_path / "o"
    first = wsicount.run(slide, out, progress=False)
    other = synth_slide(tmp_path / "other.ndpi", format="ndpi", size=(2048, 2048), seed=99).path
    before = (out / "summary.json").read_text()
    with pytest.raises(OutputError, match="another slide"):
        wsicount.run(other, out, progress=False)
    assert (out / "summary.json").read_text() == before
    assert first.attrs["complete"]
