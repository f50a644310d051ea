"""The CLI's bad-input matrix: one readable line on stderr, the documented exit code, no
traceback, and nothing written that claims to be complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsicount.synth import synth_slide


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "wsicount", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def small_ndpi(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    return synth_slide(d / "small.ndpi", format="ndpi", size=(2048, 2048), seed=5).path


def _bad_inputs(tmp: Path, small: Path) -> dict[str, tuple[Path, list[str], int]]:
    (tmp / "adir").mkdir()
    (tmp / "empty.ndpi").write_bytes(b"")
    (tmp / "notes.ndpi").write_text("this is not a slide\n" * 50)
    data = small.read_bytes()
    (tmp / "trunc.ndpi").write_bytes(data[: len(data) // 2])
    nompp = synth_slide(tmp / "nompp.tiff", format="tiff", size=(1024, 1024), seed=2, write_mpp=False).path
    return {
        "nonexistent": (tmp / "nope.ndpi", [], 2),
        "directory": (tmp / "adir", [], 2),
        "empty": (tmp / "empty.ndpi", [], 3),
        "text-as-ndpi": (tmp / "notes.ndpi", [], 3),
        "truncated": (tmp / "trunc.ndpi", [], 3),
        "missing-mpp": (nompp, [], 4),
        "corrupt-model": (small, ["--model", str(_corrupt_model(tmp))], 6),
    }


def _corrupt_model(tmp: Path) -> Path:
    from wsicount.models import resolve_model_path

    card = resolve_model_path(None)
    (tmp / "bad.json").write_text(card.read_text())
    (tmp / "bad.safetensors").write_bytes(b"\x00" * 100)
    return tmp / "bad.json"


@pytest.fixture(scope="module")
def cases(tmp_path_factory, small_ndpi):
    return _bad_inputs(tmp_path_factory.mktemp("bad"), small_ndpi)


@pytest.mark.parametrize("case", ["nonexistent", "directory", "empty", "text-as-ndpi", "truncated", "missing-mpp",
                                  "corrupt-model"])
def test_bad_input_is_one_line_error(cases, case, tmp_path):
    path, extra, code = cases[case]
    out = tmp_path / "out"
    r = _cli("run", str(path), "--out", str(out), "-q", *extra)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("wsicount: error:")
    assert "Traceback" not in r.stderr
    assert not (out / "summary.json").exists()


def test_debug_shows_traceback(cases, tmp_path):
    path, _, _ = cases["text-as-ndpi"]
    r = _cli("--debug", "run", str(path), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_missing_mpp_can_be_given(cases, tmp_path):
    path, _, _ = cases["missing-mpp"]
    r = _cli("info", str(path), "--mpp", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mpp"] == pytest.approx(0.5)


def test_info_and_synth_commands(tmp_path):
    r = _cli("synth", str(tmp_path / "s.tiff"), "--format", "tiff", "--size", "1024", "1536", "--seed", "4")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.tiff.points.csv").exists() or any(tmp_path.glob("*.points.csv"))
    r = _cli("info", str(tmp_path / "s.tiff"))
    assert r.returncode == 0, r.stderr
    assert "1536" in r.stdout and "mpp" in r.stdout
