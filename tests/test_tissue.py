"""Tissue-mask resolution: about 4 µm/px, coarser for huge slides so its memory stays bounded."""

from __future__ import annotations

import pytest

from wsicount.tissue import MASK_MAX_PX, MASK_MPP, choose_mask_level, mask_target_mpp


def test_mask_resolution_is_the_target_on_ordinary_slides():
    assert mask_target_mpp(0.4523, 26624, 30000) == MASK_MPP  # the paper's slide: 3.0 x 3.4 kpx mask


@pytest.mark.parametrize("side", [65496, 131072])
def test_mask_pixels_are_capped_on_huge_slides(side: int):
    mpp0 = 0.4523
    target = mask_target_mpp(mpp0, side, side)
    assert target > MASK_MPP
    assert (side * mpp0 / target) ** 2 == pytest.approx(MASK_MAX_PX, rel=1e-6)
    # a pyramid of x2 levels: the chosen level/factor stays within the 5 % tolerance of the cap
    mpps = [mpp0 * 2**i for i in range(9)]
    level, factor = choose_mask_level(mpps, target)
    assert (side * mpp0 / (mpps[level] * factor)) ** 2 <= MASK_MAX_PX * 1.05**2 * 1.0001
    assert mpps[level] * factor <= target * 1.05
