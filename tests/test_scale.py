"""Input-scale rule: the nucleus-size estimate, resampling of images with their points, the card's rule."""

from __future__ import annotations

import numpy as np
import pytest

from wsicount.training.data import Sample
from wsicount.training.scale import FACTOR_RANGE, nucleus_diameter_px, resample_sample, scale_factor, to_input_scale

RULE = {"kind": "nucleus_diameter", "target_px": 16.0}


def _disks(diameter: float, size: int = 400, n: int = 12, seed: int = 0, gradient: bool = False) -> Sample:
    """Uniform bright disks of ``diameter`` px on a dark, noisy (optionally sloped) background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(20, 3, (size, size))
    if gradient:
        img += 60 * xx / size  # uneven illumination, brighter than the disks' contrast at one side
    pts = []
    r = diameter / 2
    while len(pts) < n:
        p = rng.uniform(r + 2, size - r - 2, 2)
        if all(np.hypot(*(p - q)) > diameter * 1.3 for q in pts):
            pts.append(p)
    for x, y in pts:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] += 120
    return Sample("disks", np.clip(img, 0, 255).astype(np.uint8), np.array(pts), float(n), "test", None)


@pytest.mark.parametrize("diameter, rel", [(12.0, 0.3), (30.0, 0.15), (70.0, 0.15)])
def test_nucleus_diameter_follows_the_disk_size(diameter, rel):
    # the 2 px smoothing widens the smallest disks' blobs (a bias the rule applies alike in
    # training and evaluation)
    size = int(max(400, diameter * 14))
    d = nucleus_diameter_px(_disks(diameter, size=size).image, [0])
    assert d == pytest.approx(diameter, rel=rel)


def test_nucleus_diameter_ignores_a_background_gradient_and_a_saturated_speck():
    s = _disks(30.0, gradient=True)
    img = s.image.copy()
    img[10:14, 10:14] = 255
    assert nucleus_diameter_px(img, [0]) == pytest.approx(30.0, rel=0.2)


def test_resampling_keeps_the_count_and_moves_points_with_the_pixels():
    s = _disks(40.0)
    r = resample_sample(s, 0.4, mpp=0.625)
    assert r.count == s.count and len(r.points) == len(s.points)
    assert r.image.shape == (160, 160) and r.image.dtype == s.image.dtype and r.mpp == 0.625
    for x, y in r.points:  # each moved point still sits on its (now smaller) disk
        assert r.image[int(round(y)), int(round(x))] > 100


def test_the_rule_brings_different_sizes_to_the_target():
    for d in (20.0, 60.0):
        s = _disks(d, size=int(d * 14))
        f = scale_factor(s, RULE, [0], mpp=0.625)
        out = to_input_scale([s], RULE, [0], 0.625)[0]
        assert f == pytest.approx(16.0 / d, rel=0.15)
        assert nucleus_diameter_px(out.image, [0]) == pytest.approx(16.0, rel=0.2)


def test_known_pixel_size_wins_and_no_rule_means_as_is():
    s = _disks(20.0)
    s_mpp = Sample(s.name, s.image, s.points, s.count, s.split, 0.25)
    assert scale_factor(s_mpp, RULE, [0], mpp=0.5) == pytest.approx(0.5)
    assert to_input_scale([s], {}, [0], None)[0] is s
    huge = Sample(s.name, s.image, s.points, s.count, s.split, 100.0)
    assert scale_factor(huge, RULE, [0], mpp=0.5) == FACTOR_RANGE[1]
    with pytest.raises(ValueError):
        scale_factor(s, {"kind": "magic"}, [0], None)


def test_mpp_rule_takes_the_stated_default_for_images_without_a_pixel_size():
    s = _disks(20.0)
    rule = {"kind": "mpp", "default_mpp": 0.25}
    assert scale_factor(s, rule, [0], mpp=0.5) == pytest.approx(0.5)
    s_mpp = Sample(s.name, s.image, s.points, s.count, s.split, 0.125)
    out = to_input_scale([s_mpp], rule, [0], 0.5)[0]
    assert out.image.shape == (100, 100) and out.mpp == 0.5 and out.count == s.count


def test_resampling_scales_ellipse_axes_and_keeps_angles():
    s = _disks(20.0)
    s = Sample(s.name, s.image, s.points, s.count, s.split, None, np.tile([10.0, 6.0, 0.4], (len(s.points), 1)))
    r = resample_sample(s, 0.5)
    assert np.allclose(r.ellipses, [[5.0, 3.0, 0.4]] * len(s.points))
