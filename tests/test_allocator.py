"""``tune_allocator`` keeps freed memory in the process (glibc), and the CLI applies it first."""

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
