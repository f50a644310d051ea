"""No architecture and no bundled model outputs a negative density, whatever the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsicount.infer import predict_image
from wsicount.models import build_model, bundled_models, load_model, read_card
from wsicount.models.heads import HEADS, output_activation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NARROW = {"unet": {"base_filters": 8}, "fcrn": {"width": 8}, "cellnet": {"width": 8}}


def _inputs(c: int, size: int = 64) -> dict[str, torch.Tensor]:
    """Adversarial (N, C, H, W) batches: noise at several scales, blank, constant extremes, a checkerboard."""
    g = torch.Generator().manual_seed(0)
    board = ((torch.arange(size)[:, None] // 4 + torch.arange(size)[None] // 4) % 2).float()
    return {
        "noise": torch.randn(2, c, size, size, generator=g),
        "loud noise": 1e3 * torch.randn(2, c, size, size, generator=g),
        "blank": torch.zeros(2, c, size, size),
        "saturated": torch.full((2, c, size, size), 1e4),
        "negative": torch.full((2, c, size, size), -1e4),
        "checkerboard": (board * 50 - 25).expand(2, c, size, size).contiguous(),
    }


def _perturbed(m: torch.nn.Module) -> torch.nn.Module:
    """Push the last conv's bias far negative: a linear output would then be negative everywhere."""
    last = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.bias.fill_(-50.0)
    return m


@pytest.mark.parametrize("arch", sorted(NARROW))
@pytest.mark.parametrize("head", ["softplus", "relu"])
def test_every_architecture_head_is_non_negative(arch, head):
    torch.manual_seed(0)
    m = _perturbed(build_model(arch, in_channels=2, head=head, **NARROW[arch])).eval()
    with torch.no_grad():
        for what, x in _inputs(2).items():
            y = m(x)
            assert torch.isfinite(y).all(), what
            assert float(y.min()) >= 0.0, f"{arch}/{head} negative on {what}"


def test_linear_head_can_go_negative_so_the_check_above_can_fail():
    torch.manual_seed(0)
    m = _perturbed(build_model("unet", in_channels=1, head="linear", base_filters=8)).eval()
    with torch.no_grad():
        assert float(m(torch.randn(1, 1, 32, 32)).min()) < 0


def test_default_head_is_relu_and_unknown_head_is_rejected():
    assert isinstance(build_model("fcrn", width=8).out_act, torch.nn.ReLU)
    assert isinstance(build_model("unet", base_filters=8, head="softplus").out_act, torch.nn.Softplus)
    assert set(HEADS) == {"softplus", "relu", "linear"}
    with pytest.raises(ValueError, match="unknown head"):
        output_activation("exp")


def test_head_holds_no_parameters_so_weights_are_interchangeable():
    a = build_model("cellnet", width=8, head="softplus").state_dict()
    b = build_model("cellnet", width=8, head="relu").state_dict()
    assert list(a) == list(b)


def _images(rgb: bool) -> dict[str, np.ndarray]:
    """uint8 images a user might feed: noise, blank, saturated, an H&E-like pink, a dark fluorescence-like one."""
    rng = np.random.default_rng(1)
    shape = (96, 96, 3) if rgb else (96, 96)
    pink = np.zeros((96, 96, 3), np.uint8)
    pink[...] = (230, 160, 200)
    pink[20:40, 20:40] = (90, 40, 140)  # a hematoxylin-like blob
    dark = np.zeros((96, 96, 3), np.uint8)
    dark[30:45, 50:65, 2] = 220  # one bright blue nucleus on black
    out = {"noise": rng.integers(0, 256, shape, dtype=np.uint8), "blank": np.zeros(shape, np.uint8),
           "white": np.full(shape, 255, np.uint8), "out-of-domain stain (H&E-like)": pink,
           "out-of-domain stain (DAPI-like)": dark}
    if not rgb:
        out = {k: (v if v.ndim == 2 else v.max(axis=-1)) for k, v in out.items()}
    return out


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_every_bundled_model_is_non_negative_on_any_input(name):
    card, _ = read_card(name)
    # a card without a head predates them (linear output): loading clamps it with ReLU
    assert card.arch_kwargs.get("head", "relu") in ("softplus", "relu"), f"{name}: card names a linear head"
    lm = load_model(name)
    assert isinstance(lm.module.out_act, (torch.nn.ReLU, torch.nn.Softplus))
    for rgb in (True, False):
        for what, img in _images(rgb).items():
            dens = predict_image(lm, img, precision="fp32")
            assert np.isfinite(dens).all(), (name, what)
            assert float(dens.min()) >= 0.0, f"{name} negative on {what} ({'RGB' if rgb else 'gray'})"
