"""Shared fixtures: small synthetic slides written once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsicount.synth import synth_slide

# 3 pyramid levels (2048x2560 -> 1024x1280 -> 512x640), ~90 cells: small but realistic
SMALL = (2048, 2560)


@pytest.fixture(scope="session")
def make_slide(tmp_path_factory):
    """Factory ``make_slide(format, **synth_kwargs) -> SynthTruth`` caching identical requests."""
    root = tmp_path_factory.mktemp("slides")
    cache: dict[str, object] = {}

    def make(fmt: str, **kw):
        kw.setdefault("size", SMALL)
        kw.setdefault("seed", 7)
        key = json.dumps([fmt, kw], sort_keys=True, default=str)
        if key not in cache:
            name = f"s{len(cache)}" + {"ndpi": ".ndpi", "tiff": ".tiff", "svs": ".svs",
                                       "ome-tiff": ".ome.tiff", "ome-zarr": ".ome.zarr"}[fmt]
            cache[key] = synth_slide(Path(root) / name, format=fmt, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP spin-waits make tiny convs 10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
