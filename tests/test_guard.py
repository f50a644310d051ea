"""The domain guard: refusals before a run (modality, µm/px, empty channel) and warnings after it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from wsicount.errors import DomainError
from wsicount.guard import (check_result, check_slide, expected_density, image_modality, model_mpp,
                            slide_modality)
from wsicount.io import open_slide
from wsicount.models import read_card
from wsicount.synth import synth_array


def _opts(force: bool = False, model_mpp: float | None = None, channel: str | None = None) -> SimpleNamespace:
    """The run options check_slide reads."""
    return SimpleNamespace(force=force, model_mpp=model_mpp, channel=channel)


def _tiff(path, img: np.ndarray, mpp: float = 0.5) -> str:
    """A plain RGB TIFF at ``mpp`` µm/px."""
    tifffile.imwrite(path, img, photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return str(path)


def _card(name: str, **changes):
    """A bundled card with fields replaced."""
    return dataclasses.replace(read_card(name)[0], **changes)


@pytest.mark.parametrize("look", ["fluorescence", "brightfield"])
def test_synthetic_looks_are_recognised(look):
    img, _ = synth_array((256, 256), look=look, seed=1)
    assert image_modality(img).kind == look


def test_a_view_full_of_mid_grey_is_undecided():
    assert image_modality(np.full((32, 32, 3), 120, np.uint8)).kind is None


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Brightfield and fluorescence slides at 0.5 µm/px; the fluorescence signal is in blue only."""
    root = tmp_path_factory.mktemp("guard")
    bf, _ = synth_array((512, 512), look="brightfield", seed=2)
    fl, _ = synth_array((512, 512), look="fluorescence", seed=2)
    blue = np.zeros_like(fl)
    blue[..., 2] = fl[..., 1]
    return {"bf": open_slide(_tiff(root / "bf.tif", bf)), "blue": open_slide(_tiff(root / "blue.tif", blue))}


def test_fluorescence_model_on_brightfield_slide_is_refused(slides):
    assert slide_modality(slides["bf"]).kind == "brightfield"
    card = _card("melanocyte-trp1")
    with pytest.raises(DomainError, match=r"trained on fluorescence images but bf.tif looks brightfield") as e:
        check_slide(card, slides["bf"], _opts())
    assert "\n" not in str(e.value) and "--force" in str(e.value)
    assert e.value.exit_code == 11


def test_force_turns_refusals_into_warnings(slides):
    warnings = check_slide(_card("melanocyte-trp1"), slides["bf"], _opts(force=True))
    assert len(warnings) == 1 and "looks brightfield" in warnings[0]


def test_brightfield_model_on_fluorescence_slide_is_refused(slides):
    with pytest.raises(DomainError, match="trained on brightfield images but blue.tif looks fluorescence"):
        check_slide(_card("adipocyte-he"), slides["blue"], _opts(model_mpp=5.6))


def test_card_without_mpp_needs_model_mpp(slides):
    card = _card("vgg-cells")
    assert model_mpp(card) is None
    with pytest.raises(DomainError, match="does not state the µm/px.*--model-mpp"):
        check_slide(card, slides["blue"], _opts())
    assert check_slide(card, slides["blue"], _opts(model_mpp=1.0)) == []
    assert model_mpp(card, 1.0) == 1.0


def test_mpp_finer_than_the_slide_is_refused(slides):
    card = _card("vgg-cells")
    with pytest.raises(DomainError, match=r"runs at 0.1 µm/px but blue.tif's finest level is 0.5 µm/px \(5.0x"):
        check_slide(card, slides["blue"], _opts(model_mpp=0.1))


def test_empty_channel_is_refused_and_the_right_one_named(slides):
    card = _card("melanocyte-trp1", mpp=1.0)  # reads green
    with pytest.raises(DomainError, match="reads channel green, which is empty.*pass --channel blue"):
        check_slide(card, slides["blue"], _opts())
    assert check_slide(card, slides["blue"], _opts(channel="dapi")) == []


def test_expected_density_from_mm2_or_per_megapixel():
    trp1 = read_card("melanocyte-trp1")[0]
    assert expected_density(trp1, None) == tuple(trp1.domain["cells_per_mm2"])
    vgg = read_card("vgg-cells")[0]
    assert expected_density(vgg, None) is None
    lo, hi = expected_density(vgg, 2.0)
    assert (lo, hi) == pytest.approx((vgg.domain["cells_per_mpx"][0] / 4, vgg.domain["cells_per_mpx"][1] / 4))


def _regional(pooled: float, lo: float, hi: float, g: str = "1000um") -> dict:
    return {g: {"n_cells": 4, "pooled": pooled, "min": {"density": lo}, "max": {"density": hi}}}


def test_plausible_result_has_no_warnings():
    card = read_card("melanocyte-trp1")[0]
    assert check_result(card, total=500.0, tile_sums=[200.0, 300.0, -0.4], tile_mins=[-0.001, -0.002],
                        regional=_regional(300.0, 50.0, 600.0), mpp=1.8092, density_outside_mask=0.01) == []


def test_negative_total_and_mass_are_flagged():
    card = read_card("adipocyte-he")[0]
    w = check_result(card, total=-27319.0, tile_sums=[-20000.0, -8000.0, 681.0], tile_mins=[-3.0],
                     regional=_regional(-10850.0, -21771.0, 50.0), mpp=5.6)
    text = " | ".join(w)
    assert "sums to -27319" in text
    assert "2 of 3 tiles have negative density" in text
    assert "density pixels down to -3" in text
    assert "regional density down to -21771" in text


def test_density_far_above_training_range_is_flagged():
    card = read_card("adipocyte-he")[0]
    hi = expected_density(card, 5.6)[1]
    w = check_result(card, total=5000.0, tile_sums=[5000.0], regional=_regional(10219.0, 5000.0, 30000.0), mpp=5.6)
    assert len(w) == 1 and "10219 cells/mm²" in w[0] and f"-{hi:.0f}" in w[0]
    w = check_result(card, total=5000.0, tile_sums=[5000.0], regional=_regional(300.0, 100.0, 30000.0), mpp=5.6)
    assert len(w) == 1 and "regional density up to 30000" in w[0]


def test_small_grid_clusters_are_not_flagged():
    """A 100 µm cell may hold a denser cluster than any whole training image: only grids as wide count."""
    card = read_card("melanocyte-trp1")[0]
    regional = {**_regional(300.0, 0.0, 2500.0, "100um"), **_regional(300.0, 10.0, 600.0, "1000um")}
    assert check_result(card, total=300.0, tile_sums=[300.0], regional=regional, mpp=1.8092) == []


def test_density_outside_the_mask():
    card = read_card("melanocyte-trp1")[0]
    w = check_result(card, total=100.0, tile_sums=[100.0], regional={}, mpp=1.8092, density_outside_mask=0.7)
    assert len(w) == 1 and "70 % of the density fell outside the tissue mask" in w[0]
    w = check_result(card, total=100.0, tile_sums=[100.0], regional={}, mpp=1.8092, density_outside_mask=0.06)
    assert len(w) == 1 and "6.0 % of the density fell outside" in w[0]
    assert check_result(card, total=100.0, tile_sums=[100.0], regional={}, mpp=1.8092, density_outside_mask=0.04) == []


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_refuses_with_exit_11_and_force_prints_warnings(slides, tmp_path):
    from click.testing import CliRunner

    from wsicount.cli import cli

    path = str(slides["bf"].path)
    res = CliRunner().invoke(cli, ["run", path, "-o", str(tmp_path / "a"), "-q"])
    assert res.exit_code == 11
    assert res.output.count("\n") == 1 and res.output.startswith("wsicount: error: model melanocyte-trp1 was trained")
    res = CliRunner().invoke(cli, ["run", path, "-o", str(tmp_path / "b"), "-q", "--force"])
    assert res.exit_code == 0, res.output
    assert "wsicount: warning: model melanocyte-trp1 was trained on fluorescence images" in res.output


def test_cli_never_prints_a_negative_total_as_a_count(slides, monkeypatch, tmp_path):
    from click.testing import CliRunner

    import wsicount.runner
    from wsicount.cli import cli

    summary = {"total_cells": -27319.0, "tissue_area_mm2": 2.5, "cells_per_mm2": -10927.6, "bad_tiles": [],
               "timings": {"total": 1.0}, "warnings": ["the density sums to -27319: a negative total is not a count"]}
    monkeypatch.setattr(wsicount.runner, "count", lambda *a, **k: summary)
    res = CliRunner().invoke(cli, ["run", str(slides["bf"].path), "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    assert "wsicount: warning: the density sums to -27319" in res.output
    assert "no count (the density map sums to -27319" in res.output
    assert "cells in" not in res.output and "cells/mm²" not in res.output


def test_an_undecodable_overview_leaves_modality_and_channel_unjudged(slides, monkeypatch):
    import wsicount.guard as guard
    from wsicount.errors import TileReadError

    def broken(slide, max_side=1024):
        raise TileReadError("cannot decode level 0 tile")

    monkeypatch.setattr(guard, "overview", broken)
    card = _card("melanocyte-trp1")
    assert check_slide(card, slides["bf"], _opts()) == []  # the brightfield look cannot be seen
    with pytest.raises(DomainError, match="--model-mpp"):
        check_slide(_card("vgg-cells"), slides["bf"], _opts())


def test_density_beyond_cell_packing_is_flagged_whatever_the_scale():
    """adipocyte-he states ~100 µm cells: 10219 cells/mm² cannot be adipocytes, at any µm/px."""
    card = read_card("adipocyte-he")[0]
    w = check_result(card, total=6387.0, tile_sums=[6387.0], regional={}, mpp=0.499, tissue_mm2=0.625)
    assert len(w) == 1 and "10219 cells/mm² over the tissue: cells of ~100 µm cannot exceed ~115" in w[0]
    assert check_result(card, total=60.0, tile_sums=[60.0], regional={}, mpp=5.6, tissue_mm2=0.625) == []
