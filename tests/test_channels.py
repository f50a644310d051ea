"""``--channel``: names, fluorophores and indices resolved to the channel a model reads; ``info``'s channel table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from wsicount.channels import channel_table, display_names, resolve_channel
from wsicount.cli import cli
from wsicount.errors import InputError
from wsicount.io import open_slide

RGB = ["R", "G", "B"]


@pytest.mark.parametrize("spec, idx", [("red", 0), ("Green", 1), ("b", 2), ("DAPI", 2), ("hoechst", 2),
                                       ("fitc", 1), ("GFP", 1), ("tritc", 0), ("cy3", 0), ("2", 2), (0, 0)])
def test_rgb_names_fluorophores_and_indices(spec, idx):
    assert resolve_channel(spec, RGB, default=[1]) == [idx]


def test_no_channel_keeps_the_cards():
    assert resolve_channel(None, RGB, default=[1]) == [1]
    assert resolve_channel(None, RGB, default=[0, 1, 2], n_model=3) == [0, 1, 2]


def test_multichannel_names_exact_then_by_fluorophore():
    names = ["Hoechst 33342", "Alexa 488", "TRP1"]
    assert resolve_channel("trp1", names, default=[0]) == [2]
    assert resolve_channel("dapi", names, default=[1]) == [0]  # same fluorophore group as Hoechst
    assert resolve_channel("1", names, default=[0]) == [1]


def test_unknown_channel_names_the_ones_that_exist():
    with pytest.raises(InputError, match=r"no channel 'purple'; channels: 0=red, 1=green, 2=blue"):
        resolve_channel("purple", RGB, default=[1])
    with pytest.raises(InputError, match="index 3 does not exist"):
        resolve_channel(3, RGB, default=[1])
    with pytest.raises(InputError, match="no channel 'dapi'; channels: 0=c0, 1=c1"):
        resolve_channel("dapi", ["c0", "c1"], default=[0])


def test_one_channel_image_is_the_channel_and_three_channel_models_refuse():
    assert resolve_channel("dapi", ["c0"], default=[1]) == [0]
    with pytest.raises(InputError, match="reads 3 channels"):
        resolve_channel("blue", RGB, default=[0, 1, 2], n_model=3)


def test_display_names():
    assert display_names(["R", "G", "B"]) == ["red", "green", "blue"]
    assert display_names(["DAPI", "FITC"]) == ["DAPI", "FITC"]


def _rgb_tiff(path, img: np.ndarray) -> str:
    """A plain RGB TIFF at 0.5 µm/px."""
    tifffile.imwrite(path, img, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return str(path)


def test_channel_table_means_and_info_lists_them(tmp_path):
    img = np.zeros((64, 96, 3), np.uint8)
    img[..., 2] = 90
    img[:, :48, 0] = 20
    path = _rgb_tiff(tmp_path / "blue.tif", img)
    table = channel_table(open_slide(path))
    assert [(r["name"], r["mean"]) for r in table] == [("red", 10.0), ("green", 0.0), ("blue", 90.0)]
    res = CliRunner().invoke(cli, ["info", path, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["channel_table"] == table
    text = CliRunner().invoke(cli, ["info", path]).output
    assert "2  blue" in text and "mean 90.0" in text


def _blue_dataset(root, rng: np.random.Generator):
    """Two 64x64 RGB test images: Gaussian blobs in blue, red and green empty."""
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    lines = ["name,count,split,um_per_px,n_points"]
    yy, xx = np.mgrid[:64, :64]
    for k in range(2):
        pts = rng.uniform(8, 56, size=(6, 2))
        sig = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0) for x, y in pts)
        img = np.zeros((64, 64, 3), np.uint8)
        img[..., 2] = np.clip(20 + 200 * sig, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"im{k}.png")
        (root / "points" / f"im{k}.csv").write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in pts))
        lines.append(f"im{k},6,test,,6")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_reads_the_chosen_channel(tmp_path):
    from wsicount.training.evaluate import evaluate

    data = _blue_dataset(tmp_path / "ds", np.random.default_rng(0))
    default = [r.pred for r in evaluate("vgg-cells", data).images]  # the card reads blue
    blue = [r.pred for r in evaluate("vgg-cells", data, channel="dapi").images]
    red = [r.pred for r in evaluate("vgg-cells", data, channel="red").images]
    assert blue == default
    assert max(abs(v) for v in red) < 0.2 * min(default)  # an empty channel gives (almost) nothing
    with pytest.raises(InputError, match="no channel 'purple'"):
        evaluate("vgg-cells", data, channel="purple")
