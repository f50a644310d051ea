"""Stage fitting on hand-made count sequences and the cleavage times read from it."""

from __future__ import annotations

import numpy as np
import pytest

from wsicount.timelapse import cleavage_times, fit_stages


def _steps(*runs: tuple[int, int]) -> np.ndarray:
    """A clean count sequence: (count, frames) runs."""
    return np.concatenate([np.full(n, c, dtype=float) for c, n in runs])


def test_clean_sequence_is_reproduced():
    c = _steps((1, 10), (2, 8), (3, 4), (4, 9), (5, 3), (8, 6))
    assert np.array_equal(fit_stages(c), c.astype(int))


def test_one_frame_glitches_are_ignored():
    truth = _steps((1, 10), (2, 10), (4, 10))
    noisy = truth.copy()
    noisy[4] = 2  # a spurious extra cell for one frame
    noisy[14] = 1  # a cell missed for one frame
    noisy[25] = 6  # a wild over-count
    assert np.array_equal(fit_stages(noisy), truth.astype(int))


def test_hidden_blastomeres_do_not_lower_the_stage():
    truth = _steps((2, 8), (4, 15))
    noisy = truth.copy()
    noisy[12:15] = 3  # one blastomere occluded for three frames
    st = fit_stages(noisy, first_stage=1)
    assert np.array_equal(st, truth.astype(int))


def test_fit_never_decreases_and_stays_in_range():
    rng = np.random.default_rng(0)
    c = _steps((1, 20), (2, 20), (4, 20), (8, 20)) + rng.normal(0, 0.6, 80)
    st = fit_stages(c, max_stage=8)
    assert np.all(np.diff(st) >= 0)
    assert st.min() >= 1 and st.max() <= 8
    # noise of 0.6 cells per frame still leaves each division within a frame
    for n, true_frame in ((2, 20), (4, 40), (8, 60)):
        assert abs(int(np.flatnonzero(st >= n)[0]) - true_frame) <= 1


def test_noisy_fractional_counts_keep_the_step():
    c = _steps((1, 6), (2, 6)) + np.array([0.2, -0.3, 0.4, 0.1, -0.2, 0.3, 0.3, -0.4, 0.1, 0.2, -0.1, 0.4])
    assert np.array_equal(fit_stages(c), _steps((1, 6), (2, 6)).astype(int))


def test_unreadable_frames_take_their_neighbours_stage():
    c = _steps((1, 5), (2, 5))
    c[[2, 7]] = np.nan
    assert np.array_equal(fit_stages(c), _steps((1, 5), (2, 5)).astype(int))


def test_cleavage_times_with_a_skipped_stage():
    st = _steps((1, 5), (2, 6), (4, 7), (5, 2), (8, 3)).astype(int)  # stage 3 skipped: 2 -> 4
    times = np.arange(st.size) * 0.25 + 20.0
    ct = cleavage_times(st, times)
    assert ct.frames == {"t2": 5, "t3": 11, "t4": 11, "t5": 18, "t8": 20}
    assert ct.hours["t2"] == pytest.approx(21.25)
    assert ct.durations_frames == {"cc2": 6, "s2": 0}
    assert ct.durations_h["cc2"] == pytest.approx(1.5)
    assert ct.censored == ()


def test_missing_stages_are_none_and_early_ones_censored():
    st = _steps((2, 4), (3, 4)).astype(int)  # the video starts at the 2-cell stage, never reaches 4
    ct = cleavage_times(st)
    assert ct.frames["t2"] == 0 and ct.censored == ("t2",)
    assert ct.frames["t4"] is None and ct.hours["t8"] is None
    assert ct.durations_h["s2"] is None and ct.durations_frames["cc2"] == 4
    assert ct.as_dict()["censored_at_first_frame"] == ["t2"]


def test_bad_arguments():
    assert fit_stages(np.array([])).size == 0
    with pytest.raises(ValueError):
        fit_stages(np.ones(3), max_stage=0)
    with pytest.raises(ValueError):
        cleavage_times(np.ones(3, dtype=int), np.arange(4.0))
