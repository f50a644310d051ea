"""Inference primitives: precision resolution, low-precision copies, tiling exactness per precision."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from wsicount.infer import PRECISIONS, pick_device, predict_batch, resolve_precision
from wsicount.models import load_model
from wsicount.preprocess import normalize_image
from wsicount.synth import synth_array


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def image(model):
    """A 640² fluorescence crop at the model's µm/px, normalised like an image."""
    img, _ = synth_array((2048, 2048), seed=1, mpp=model.card.mpp, tissue_fraction=0.9)
    return normalize_image(img[704:1344, 704:1344], model.card.channels, model.card.normalization)


def test_auto_precision_resolves_to_a_concrete_one():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") in ("fp32", "bf16")
    for p in PRECISIONS[1:]:
        assert resolve_precision(cpu, p) == p
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(cpu, "int8")


def test_auto_uses_bf16_only_for_models_validated_in_it(model):
    """bf16 raised the VGG and adipocyte models' MAE by 16 % and 6 % (BENCHMARKS.md): auto needs the card's consent."""
    cpu = torch.device("cpu")
    assert "bf16" in model.card.low_precision  # the default model was validated in bf16
    assert resolve_precision(cpu, "auto", model.card) == resolve_precision(cpu, "auto")
    assert resolve_precision(cpu, "auto", dataclasses.replace(model.card, low_precision=[])) == "fp32"
    assert load_model("vgg-cells").card.low_precision == []
    assert resolve_precision(cpu, "bf16", dataclasses.replace(model.card, low_precision=[])) == "bf16"  # explicit wins


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_windows_reproduce_whole_image_exactly(model, image, precision):
    """Two stride-aligned windows with a halo >= the receptive radius give the whole image's values bit for bit."""
    dev = pick_device("cpu")
    whole = predict_batch(model, image[None], dev, precision)[0]
    halo = 64  # >= receptive radius 50, multiple of the stride
    cut = 320  # a multiple of the stride
    top = predict_batch(model, image[None, :, : cut + halo], dev, precision)[0]
    bottom = predict_batch(model, image[None, :, cut - halo :], dev, precision)[0]
    stitched = np.concatenate([top[:cut], bottom[halo:]])
    inner = (slice(halo, -halo), slice(halo, -halo))  # away from the image border (conv zero padding)
    assert np.array_equal(stitched[inner], whole[inner])
    # batching does not change values either
    pair = predict_batch(model, np.stack([image[:, :384, :384], image[:, 256:, 256:]]), dev, precision)
    assert np.array_equal(pair[0], predict_batch(model, image[None, :, :384, :384], dev, precision)[0])


def test_low_precision_is_a_cached_copy_close_to_fp32(model, image):
    dev = pick_device("cpu")
    fp32 = predict_batch(model, image[None], dev, "fp32")[0]
    bf16 = predict_batch(model, image[None], dev, "bf16")[0]
    assert next(model.module.parameters()).dtype == torch.float32  # the fp32 module is untouched
    assert bf16.dtype == np.float32
    # measured on TRP1: bf16 moves per-image counts by ~0.5 cells, totals by < 0.5 %
    assert abs(bf16.sum() - fp32.sum()) <= 0.02 * abs(fp32.sum())
    assert not np.array_equal(bf16, fp32)  # it really ran in bf16
    first = model.__dict__["_variants"][("cpu", "bf16")]
    predict_batch(model, image[None, :, :64, :64], dev, "bf16")
    assert model.__dict__["_variants"][("cpu", "bf16")] is first


def test_batch_for_splits_the_free_memory_between_concurrent_tasks():
    """CUDA's auto batch: half the free memory over one tile's peak, divided among the tasks sharing the device."""
    from wsicount.infer import batch_for

    gib = 1 << 30
    assert batch_for(16 * gib, gib) == 8
    assert batch_for(16 * gib, gib, tasks=2) == 4  # two tile threads: together they stay within half the memory
    assert batch_for(16 * gib, gib, tasks=3) == 2
    assert batch_for(64 * gib, gib // 8) == 16  # capped
    assert batch_for(gib, 2 * gib, tasks=4) == 1  # at least one tile


def test_context_margin_is_enough_and_phase_free(model):
    """predict_in_context equals a wider background frame around the image at another stride-aligned place.

    Every pixel within the receptive radius of the image sees only image and background in a
    margin of :func:`context_margin`, so more background (as on a slide, any stride-aligned
    position) changes nothing: the slide path's density in the image's box is this map.
    """
    from wsicount.infer import background_level, context_margin, predict_in_context
    from wsicount.preprocess import apply_normalization, norm_floor, percentile_stats, select_channels

    card = model.card
    img, _ = synth_array((512, 512), seed=4, mpp=card.mpp, tissue_fraction=0.9)
    img = img[100:196, 150:270]  # 96 x 120: not a stride multiple wide
    d = predict_in_context(model, img)
    r = card.receptive_radius
    assert d.shape == (96 + 2 * r, 120 + 2 * r)
    assert context_margin(card) >= 2 * r and context_margin(card) % card.stride == 0
    x = select_channels(img, card.channels)
    off, span = percentile_stats(x, card.normalization)
    top, left = context_margin(card) + 3 * card.stride, context_margin(card) + 5 * card.stride
    framed = np.pad(x, ((0, 0), (top, 2 * top), (left, left)), constant_values=background_level(card))
    wide = predict_batch(model, apply_normalization(framed, off, span, norm_floor(card.normalization))[None],
                         pick_device("cpu"))[0]
    np.testing.assert_allclose(wide[top - r : top + 96 + r, left - r : left + 120 + r], d, rtol=1e-4, atol=1e-6)
    assert d.sum() > 0
