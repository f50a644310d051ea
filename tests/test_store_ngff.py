"""The output folder opens in standard OME-Zarr readers: ome-zarr's Reader and ``ome_zarr info``
find the density image at the root and the tissue as its label, and the nodes give the layers
napari-ome-zarr builds from them (an image pyramid and a label, both in µm)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import wsicount
from wsicount.synth import synth_slide

ome_zarr_io = pytest.importorskip("ome_zarr.io", reason="the ome-zarr package (test extra) is not installed")
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """A finished run with a density pyramid of two levels (a 4096 px slide: 1024 px at the model's µm/px)."""
    d = tmp_path_factory.mktemp("ngff")
    slide = synth_slide(d / "s.ndpi", format="ndpi", size=(4096, 4096), seed=12).path
    wsicount.count(slide, d / "out", progress=False)
    return d / "out"


def _nodes(path: Path) -> list:
    return list(Reader(ome_zarr_io.parse_url(str(path)))())


def _layers(path: Path) -> list[dict]:
    """What napari-ome-zarr's reader makes of the nodes: one layer per node holding data."""
    layers = []
    for node in _nodes(path):
        if not node.data:
            continue
        scale = node.metadata["coordinateTransformations"][0][0]["scale"]
        layers.append({"kind": "labels" if node.load(Label) else "image", "name": node.metadata.get("name"),
                       "shapes": [d.shape for d in node.data], "scale": scale, "visible": node.visible,
                       "data": node.data})
    return layers


def test_reader_finds_the_density_and_its_tissue_label_at_the_root(out: Path) -> None:
    nodes = _nodes(out)
    root = nodes[0]
    assert root.load(Multiscales) is not None and root.visible
    density = zarr.open_group(str(out / "density"), mode="r")
    levels = sorted((k for k in density.array_keys()), key=int)
    assert len(levels) >= 2
    assert [d.shape for d in root.data] == [density[k].shape for k in levels]
    np.testing.assert_array_equal(np.asarray(root.data[0]), density["0"][...])
    labels = [n for n in nodes if n.load(Label) is not None]
    assert [n.zarr.basename() for n in labels] == ["tissue"]
    assert len([n for n in nodes if n.data and n.load(Label) is None]) == 1  # the density once, not twice


def test_napari_layers_line_up_in_micrometres(out: Path) -> None:
    layers = _layers(out)
    assert [(x["kind"], x["name"]) for x in layers] == [("image", "density"), ("labels", "tissue")]
    image, label = layers
    extent = [s * n for s, n in zip(image["scale"], image["shapes"][0])]
    label_extent = [s * n for s, n in zip(label["scale"], label["shapes"][0])]
    np.testing.assert_allclose(extent, label_extent, rtol=0.02)  # same slide area
    total = float(np.asarray(image["data"][0]).sum(dtype=np.float64))
    assert total == pytest.approx(float(np.asarray(image["data"][-1]).sum(dtype=np.float64)), rel=1e-4)  # sum pyramid


def test_ome_zarr_info_lists_the_image_and_the_label(out: Path) -> None:
    exe = Path(sys.executable).with_name("ome_zarr")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ome_zarr.cli"]
    r = subprocess.run([*cmd, "info", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{out} [zgroup]" in r.stdout and "Multiscales" in r.stdout
    assert f"{out / 'labels' / 'tissue'} [zgroup]" in r.stdout and "Label" in r.stdout


def test_density_group_still_opens_on_its_own(out: Path) -> None:
    nodes = _nodes(out / "density")
    assert nodes[0].load(Multiscales) is not None and nodes[0].data
