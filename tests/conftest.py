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


@pytest.fixture(scope="session")
def tiny_cellnet(tmp_path_factory) -> Path:
    """Card path of a small untrained Cell-Net (fixed seed): pipeline plumbing does not need accuracy."""
    import torch

    from wsicount.models import ModelCard, save_model
    from wsicount.models.cellnet import cellnet

    torch.manual_seed(0)
    net = cellnet(in_channels=1, width=8)
    card = ModelCard(name="tiny", arch="cellnet", arch_kwargs={"in_channels": 1, "width": 8}, sigma_px=3.0,
                     stride=net.stride, receptive_radius=net.receptive_radius, modality="brightfield")
    return save_model(net, card, tmp_path_factory.mktemp("tiny") / "tiny", half=False)


@pytest.fixture(scope="session")
def oracle_model():
    """An exact counting model: density = image / 255 (a 1x1 convolution of weight 1, fixed 0-255 scaling)."""
    import torch

    from wsicount.models import LoadedModel, ModelCard

    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.zero_()
    card = ModelCard(name="oracle", arch="identity", stride=1, receptive_radius=0, density_scale=1.0, sigma_px=1.0,
                     normalization={"kind": "fixed", "offset": 0.0, "span": 255.0}, peak_min_distance_px=1)
    return LoadedModel(net.eval(), card, Path("oracle.json"))
