"""The classical scikit-image nuclei count (wsicount.baseline)."""

from __future__ import annotations

import numpy as np

from wsicount.baseline import classical_count, classical_peaks, nuclear_signal


def _dots(rgb: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Four well-separated bright discs on a dark background (blue channel when RGB)."""
    centres = [(20, 20), (20, 70), (70, 30), (75, 80)]
    yy, xx = np.mgrid[:100, :100]
    sig = np.zeros((100, 100))
    for r, c in centres:
        sig[(yy - r) ** 2 + (xx - c) ** 2 <= 36] = 200
    img = sig.astype(np.uint8)
    if rgb:
        img = np.stack([np.zeros_like(img), np.zeros_like(img), img], axis=-1)
    return img, centres


def test_counts_separated_nuclei_in_gray_and_rgb():
    for rgb in (False, True):
        img, centres = _dots(rgb)
        peaks = classical_peaks(img)
        assert len(peaks) == len(centres) == classical_count(img)
        for r, c in centres:
            assert np.min(np.hypot(peaks[:, 0] - r, peaks[:, 1] - c)) <= 2


def test_blank_image_has_no_nuclei_and_he_reads_hematoxylin():
    assert classical_count(np.zeros((50, 50), np.uint8)) == 0
    he = np.full((40, 40, 3), (235, 200, 220), np.uint8)
    he[10:20, 10:20] = (80, 40, 150)  # hematoxylin-purple blob
    h = nuclear_signal(he, "brightfield")
    assert h[15, 15] > h[30, 30]
