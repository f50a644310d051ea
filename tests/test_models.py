"""Architectures (shape, receptive radius, trainability) and model packaging (save/load, errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsicount.errors import ModelError
from wsicount.training.losses import density_loss
from wsicount.models import ARCHITECTURES, ModelCard, build_model, load_model, save_model
from wsicount.training.targets import density_map

# Narrow variants keep the tests fast on a shared 2-core CPU; the receptive radius is a
# property of the layer structure (kernel sizes, strides, dilations), not of the width.
NARROW = {"unet": {"base_filters": 8}, "fcrn": {"width": 8}, "cellnet": {"width": 8}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _narrow(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A seeded narrow instance of ``arch``."""
    torch.manual_seed(seed)
    return build_model(arch, **NARROW[arch], **kwargs)


def test_all_architectures_registered():
    assert set(NARROW) <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(NARROW))
@pytest.mark.parametrize("shape", [(2, 48, 72), (1, 64, 40)])
def test_output_keeps_size(arch, shape):
    n, h, w = shape
    m = build_model(arch, in_channels=2).eval()
    assert h % m.stride == 0 and w % m.stride == 0
    with torch.no_grad():
        y = m(torch.randn(n, 2, h, w))
    assert y.shape == (n, 1, h, w)


def test_fcrn_without_batchnorm_is_the_papers_net():
    m = build_model("fcrn", batch_norm=False)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 512, 128, 64, 32, 1]
    with torch.no_grad():
        assert m(torch.randn(1, 1, 16, 24)).shape == (1, 1, 16, 24)


def test_unet_without_norm_has_no_batchnorm_and_keeps_the_weight_names():
    """``norm="none"`` drops every BatchNorm; the conv weights keep their names (cards stay readable)."""
    m = build_model("unet", base_filters=8, norm="none")
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert set(m.state_dict()) < set(build_model("unet", base_filters=8).state_dict())
    with torch.no_grad():
        assert m(torch.randn(1, 1, 32, 40)).shape == (1, 1, 32, 40)
    with pytest.raises(ValueError, match="norm"):
        build_model("unet", norm="group")


def test_unet_without_norm_crop_with_halo_reproduces_whole_image():
    """The tiler's invariant holds without BatchNorm too (same receptive radius)."""
    m = build_model("unet", base_filters=4, norm="none", head="linear").double().eval()
    r = m.receptive_radius + (-m.receptive_radius) % m.stride
    x = torch.randn(1, 1, 2 * r + 32, 2 * r + 48, dtype=torch.float64)
    with torch.no_grad():
        whole, crop = m(x), m(x[:, :, :, 16:])
    np.testing.assert_allclose(crop[..., r:].numpy(), whole[..., 16 + r :].numpy(), rtol=0, atol=1e-10)


def measure_receptive_radius(model: torch.nn.Module) -> int:
    """Max Chebyshev distance between a perturbed input pixel and any output pixel it changes.

    Eval mode, float64; one pixel is perturbed at each of the ``stride`` phases (diagonal
    positions c+k, c+k cover every row phase and every column phase) in the middle of an input
    large enough that the dependency square never reaches the border.
    """
    m = model.double().eval()
    s = m.stride
    size = max(256, 2 * (m.receptive_radius + 4 * s))
    size += (-size) % s
    c = size // 2 - (size // 2) % s
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, m.in_channels, size, size, generator=g, dtype=torch.float64)
    xs = base.repeat(s + 1, 1, 1, 1)
    for k in range(s):
        xs[k + 1, :, c + k, c + k] += 10.0  # large: max-pools and ReLUs must pass the change on
    with torch.no_grad():
        y = m(xs)[:, 0]
    radius = 0
    for k in range(s):
        rows, cols = torch.nonzero(y[k + 1] != y[0], as_tuple=True)
        radius = max(radius, int((rows - (c + k)).abs().max()), int((cols - (c + k)).abs().max()))
    return radius


@pytest.mark.slow  # ~20 s per architecture; changes only with the architectures (make test-all)
@pytest.mark.parametrize("arch", sorted(NARROW))
def test_declared_receptive_radius_is_measured_one(arch):
    # the output head is pointwise; a linear one lets every dependency show (a ReLU hides changes
    # at pixels it clamps to zero)
    m = _narrow(arch, head="linear")
    assert measure_receptive_radius(m) == m.receptive_radius


@pytest.mark.parametrize("arch", sorted(NARROW))
def test_crop_with_halo_reproduces_whole_image(arch):
    """The tiler's invariant: a stride-aligned crop with a halo of receptive_radius is exact."""
    m = _narrow(arch).double().eval()
    s, r = m.stride, m.receptive_radius
    halo = r + (-r) % s  # halo rounded up to the stride keeps the crop origin aligned
    size = 2 * halo + 32
    x = torch.randn(1, 1, size, size + 16, dtype=torch.float64)
    with torch.no_grad():
        whole = m(x)
        crop = m(x[:, :, :, 16:])
    # the crop shares the image's top, bottom and right edges; only its left edge is new, and
    # crop columns >= halo are at least a halo away from it
    np.testing.assert_allclose(crop[..., halo:].numpy(), whole[..., 16 + halo :].numpy(), rtol=0, atol=1e-10)


def _blob_batch(n: int = 4, size: int = 48, sigma: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of Gaussian blobs and their density targets (scale 100)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    xs, ys = [], []
    for _ in range(n):
        pts = rng.uniform(4, size - 4, (int(rng.integers(2, 6)), 2))
        img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in pts)
        xs.append(img[None].astype(np.float32))
        ys.append(density_map(pts, (size, size), sigma, scale=100.0)[None])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


@pytest.mark.parametrize("arch", sorted(NARROW))
def test_few_adam_steps_lower_the_loss(arch):
    m = _narrow(arch).train()
    x, y = _blob_batch()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(density_loss(m(x), y, "mse"))
    for _ in range(15):
        loss = density_loss(m(x), y, "mse")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(density_loss(m(x), y, "mse"))
    assert after < 0.5 * before


def _trained_stats_model(arch: str = "unet") -> torch.nn.Module:
    """A narrow model whose BatchNorm running statistics are not the defaults."""
    m = _narrow(arch).train()
    with torch.no_grad():
        m(torch.randn(2, 1, 32, 32) * 3 + 1)
    return m.eval()


def _card(arch: str = "unet", **kw) -> ModelCard:
    """A card for a narrow single-channel model."""
    return ModelCard(name="tiny", arch=arch, arch_kwargs={"in_channels": 1, **NARROW[arch]}, **kw)


@pytest.mark.parametrize("arch", sorted(NARROW))
def test_save_load_roundtrip_fp32_exact(tmp_path, arch):
    m = _trained_stats_model(arch)
    card_path = save_model(m, _card(arch), tmp_path / "tiny", half=False)
    lm = load_model(card_path)
    assert not lm.module.training
    assert lm.card.arch == arch and lm.module.receptive_radius == m.receptive_radius
    x = torch.randn(1, 1, 32, 40)
    with torch.no_grad():
        assert torch.equal(lm.module(x), m(x))


def test_save_load_fp16_storage_is_close(tmp_path):
    m = _trained_stats_model()
    save_model(m, _card(), tmp_path / "tiny", half=True)
    lm = load_model(tmp_path / "tiny.safetensors")  # the weights path resolves to its card too
    x = torch.randn(1, 1, 32, 40)
    with torch.no_grad():
        ref, out = m(x), lm.module(x)
    assert float((out - ref).abs().max()) <= 2e-2 * float(ref.abs().max())


def _assert_one_line_model_error(path) -> str:
    """Loading ``path`` raises a ModelError whose message is one line; returns the message."""
    with pytest.raises(ModelError) as ei:
        load_model(path)
    msg = str(ei.value)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture
def saved(tmp_path):
    """Card path of a saved narrow U-Net."""
    return save_model(_narrow("unet"), _card(), tmp_path / "tiny")


def test_corrupt_weights_raise_model_error(saved):
    saved.with_suffix(".safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "corrupt" in _assert_one_line_model_error(saved)


def test_truncated_weights_raise_model_error(saved):
    w = saved.with_suffix(".safetensors")
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    assert "corrupt" in _assert_one_line_model_error(saved)


def test_card_arch_not_matching_weights_raises_model_error(saved):
    card = json.loads(saved.read_text())
    card["arch"], card["arch_kwargs"] = "fcrn", {"in_channels": 1}
    saved.write_text(json.dumps(card))
    assert "do not match" in _assert_one_line_model_error(saved)


def test_card_with_invalid_json_raises_model_error(saved):
    saved.write_text(saved.read_text()[:-20])
    assert "JSON" in _assert_one_line_model_error(saved)


def test_card_without_arch_raises_model_error(saved):
    card = json.loads(saved.read_text())
    del card["arch"]
    saved.write_text(json.dumps(card))
    assert "incomplete" in _assert_one_line_model_error(saved)


def test_card_that_is_not_an_object_raises_model_error(saved):
    saved.write_text("[1, 2]")
    assert "JSON object" in _assert_one_line_model_error(saved)


def test_card_with_unknown_key_raises_model_error(saved):
    card = json.loads(saved.read_text())
    card["sigma"] = 3.0
    saved.write_text(json.dumps(card))
    _assert_one_line_model_error(saved)


def test_missing_model_raises_model_error(tmp_path):
    _assert_one_line_model_error(tmp_path / "nothing.json")


def test_reading_a_card_does_not_import_torch():
    """``wsicount.models`` and ``read_card`` stay torch-free: input errors come before torch's start-up,
    and ``run`` loads the weights on one thread while another computes the tissue mask."""
    import subprocess
    import sys

    code = ("import sys, wsicount.models as m; card, path = m.read_card(None); "
            "assert card.name and path.exists(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
