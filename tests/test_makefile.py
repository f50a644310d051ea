"""make demo / make test say what each step does before doing it, and pip is not silenced."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(target: str, tmp_path: Path) -> list[str]:
    """The commands ``make -n target`` would run for a fresh clone (a venv that does not exist yet)."""
    r = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}", f"DEMO_DIR={tmp_path / 'demo'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [ln for ln in r.stdout.splitlines() if ln.strip()]


@pytest.mark.parametrize("target", ["demo", "test"])
def test_every_slow_step_is_announced(target: str, tmp_path: Path) -> None:
    lines = _dry_run(target, tmp_path)
    slow = (" -m venv ", "/pip install", "/wsicount synth", "/wsicount run", " -m pytest")
    for i, ln in enumerate(lines):
        if "==>" not in ln and any(s in ln for s in slow):
            said = [x for x in lines[max(0, i - 3):i] if "==>" in x]
            assert said, f"no '==>' line before: {ln}"
    assert not [ln for ln in lines if "pip install" in ln and " -q" in ln]  # pip shows what it fetches


def test_make_test_leaves_out_the_slow_tier_and_test_all_runs_it(tmp_path: Path) -> None:
    test = [ln for ln in _dry_run("test", tmp_path) if " -m pytest" in ln]
    every = [ln for ln in _dry_run("test-all", tmp_path) if " -m pytest" in ln]
    assert len(test) == 1 and test[0].endswith('-m pytest -q -m "not slow"')
    assert len(every) == 1 and every[0].endswith("-m pytest -q")
