"""Focal-plane choice: the sharp plane wins even against a sharp rim outside the centre."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsicount.timelapse.focus import choose_planes, focus_scores


def _frame(sharp: int, z: int = 5, size: int = 96) -> np.ndarray:
    """(z, 1, y, x): blobs blurred by distance from plane ``sharp``; a sharp frame border in every plane."""
    rng = np.random.default_rng(1)
    base = np.zeros((size, size), np.float32)
    base[rng.integers(20, 76, 40), rng.integers(20, 76, 40)] = 255
    planes = []
    for k in range(z):
        p = ndi.gaussian_filter(base, 0.8 + 2.0 * abs(k - sharp))
        p = p / max(p.max(), 1e-6) * 200
        p[:4] = 255  # the well's rim / burned-in text: sharp everywhere, outside the centre
        planes.append(p)
    return np.stack(planes)[:, None]


@pytest.mark.parametrize("sharp", [0, 2, 4])
def test_best_plane_is_the_sharp_one(sharp):
    f = _frame(sharp)
    c = choose_planes(f, "best")
    assert c.planes == (sharp,) and c.mode == "best"
    assert int(np.argmax(focus_scores(f))) == sharp


def test_all_fixed_and_single_plane():
    f = _frame(1)
    assert choose_planes(f, "all").planes == (0, 1, 2, 3, 4)
    assert choose_planes(f, 3).planes == (3,)
    assert choose_planes(f[:1], "best").mode == "single"
    with pytest.raises(ValueError):
        choose_planes(f, 7)
    with pytest.raises(ValueError):
        choose_planes(f, "sharpest")
