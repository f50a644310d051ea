"""Training defaults inferred from hardware and annotations (wsicount.training.recipe)."""

from __future__ import annotations

import numpy as np
import pytest

from wsicount.training.data import Sample
from wsicount.training.recipe import (
    SIGMA_RANGE, auto_sigma_px, cpu_has_amx_bf16, data_domain, default_channels, lr_factor,
    neighbour_spacing_px, training_precision,
)

AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
NO_AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"


def test_bf16_training_only_with_amx(tmp_path):
    (tmp_path / "amx").write_text(AMX)
    (tmp_path / "no").write_text(NO_AMX)
    assert cpu_has_amx_bf16(tmp_path / "amx") and not cpu_has_amx_bf16(tmp_path / "no")
    assert not cpu_has_amx_bf16(tmp_path / "missing")
    assert training_precision("auto", "cpu", tmp_path / "amx") == "bf16"
    # avx512_bf16 alone (no AMX tiles) is not enough: autocast training there is emulated and slow
    assert training_precision("auto", "cpu", tmp_path / "no") == "fp32"
    assert training_precision("bf16", "cpu", tmp_path / "no") == "bf16"
    with pytest.raises(ValueError):
        training_precision("fp16")


def _grid_sample(spacing: float, n: int = 6, name: str = "a", image: np.ndarray | None = None,
                 mpp: float | None = None) -> Sample:
    """Cells on a square grid ``spacing`` px apart."""
    g = np.arange(n) * spacing + 5.0
    pts = np.array([(x, y) for x in g for y in g], dtype=float)
    img = image if image is not None else np.zeros((int(g[-1]) + 10,) * 2, np.uint8)
    return Sample(name, img, pts, float(len(pts)), "train", mpp)


def test_sigma_follows_the_cell_spacing_and_is_clamped():
    assert neighbour_spacing_px([_grid_sample(10.0)]) == pytest.approx(10.0)
    assert auto_sigma_px([_grid_sample(10.0)]) == pytest.approx(4.0)
    assert auto_sigma_px([_grid_sample(20.0)]) == pytest.approx(8.0)
    assert auto_sigma_px([_grid_sample(1.0)]) == SIGMA_RANGE[0]
    assert auto_sigma_px([_grid_sample(500.0, n=3)]) == SIGMA_RANGE[1]
    one = Sample("one", np.zeros((8, 8), np.uint8), np.array([[2.0, 2.0]]), 1.0, "train", None)
    assert neighbour_spacing_px([one]) is None and auto_sigma_px([one]) == 3.0


def test_channels_brightest_on_dark_rgb_all_on_bright_gray_as_is():
    dark = np.zeros((8, 8, 3), np.uint8)
    dark[..., 2] = 60
    bright = np.full((8, 8, 3), 200, np.uint8)
    gray = np.zeros((8, 8), np.uint8)
    s = lambda im: Sample("x", im, np.zeros((0, 2)), 0.0, "train", None)  # noqa: E731
    assert default_channels([s(gray), s(dark)]) == [2]  # a gray first image must not hide the RGB ones
    assert default_channels([s(bright)]) == [0, 1, 2]
    assert default_channels([s(gray)]) == [0]


def test_domain_records_modality_stain_size_density_intensity_channel():
    img = np.zeros((80, 80, 3), np.uint8)
    img[..., 1] = np.linspace(10, 200, 80, dtype=np.uint8)[None, :]
    a = _grid_sample(10.0, image=img, mpp=0.5)
    d = data_domain([a], [1], "fluorescence", "TRP1")
    assert (d["modality"], d["stain"], d["mpp"], d["channel"]) == ("fluorescence", "TRP1", 0.5, "green")
    assert d["cell_diameter_um"] == pytest.approx(5.0) and d["cell_diameter_px"] == pytest.approx(10.0)
    given = data_domain([a], [1], "fluorescence", "TRP1", cell_diameter_um=7.0)
    assert given["cell_diameter_px"] == pytest.approx(14.0)  # the stated size at the data's µm/px, not the spacing
    assert d["cells_per_image"] == [36.0, 36.0]
    assert d["cells_per_mpx"] == [round(36 / 6400 * 1e6, 1)] * 2
    area_mm2 = 80 * 80 * 0.25 * 1e-6
    assert d["cells_per_mm2"][0] == pytest.approx(36 / area_mm2, rel=1e-3)
    assert 10 <= d["intensity"][0] < d["intensity"][1] <= 200
    nompp = data_domain([_grid_sample(10.0)], [0], "brightfield", None, cell_diameter_um=12.0)
    assert nompp["mpp"] is None and nompp["cells_per_mm2"] is None and nompp["cell_diameter_um"] == 12.0
    assert nompp["channel"] == "gray"
    side = _grid_sample(10.0).image.shape[0]  # a gray image: density over all its pixels
    assert nompp["cells_per_mpx"] == [round(36 / side**2 * 1e6, 1)] * 2


def test_lr_schedule_warms_up_then_anneals_to_zero():
    assert lr_factor(0.0) < 0.1 and lr_factor(0.05) == pytest.approx(1.0)
    assert lr_factor(0.5) < lr_factor(0.2) and lr_factor(1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(3.0) == pytest.approx(0.0, abs=1e-12)  # past the budget: stays annealed
