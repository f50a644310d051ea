"""Cell-stage timelines: a non-decreasing stage sequence fitted to noisy per-frame counts.

The fit minimises ``sum_i min(|count_i - stage_i|, cap) + penalty * (number of stage changes)``
over integer sequences ``first <= stage_0 <= stage_1 <= ... <= max_stage`` by dynamic
programming (O(frames x stages)). Why it is robust:

* a one-frame glitch (a count one too high or too low) cannot be followed, because the
  stage never decreases: following an upward glitch costs every later frame of the stage;
* blastomeres hidden for a few frames (counts dip below the stage) cost the dip's frames
  but never lower the stage;
* the switch penalty keeps noise near a division from adding spurious stages, while any
  jump size costs one penalty, so a synchronous division (2 -> 4) may skip stage 3;
* frames without a count (NaN: an unreadable frame) cost nothing and take their
  neighbours' stage.

Cleavage time ``tN`` is the first frame whose fitted stage is >= N (the embryologists'
definition "first frame with >= N cells"); ``cc2 = t3 - t2`` and ``s2 = t4 - t3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CLEAVAGES", "DURATIONS", "fit_stages", "cleavage_times", "CleavageTimes"]

#: the cleavage events reported, as the stage each one starts
CLEAVAGES = {"t2": 2, "t3": 3, "t4": 4, "t5": 5, "t8": 8}
#: durations reported, as (name, later event, earlier event)
DURATIONS = (("cc2", "t3", "t2"), ("s2", "t4", "t3"))


def _frame_costs(counts: np.ndarray, stages: np.ndarray, cap: float) -> np.ndarray:
    """(frames, stages) truncated-L1 cost of each stage at each frame; NaN counts cost 0."""
    c = np.asarray(counts, dtype=np.float64)[:, None]
    cost = np.minimum(np.abs(c - stages[None, :]), cap)
    cost[~np.isfinite(c[:, 0])] = 0.0
    return cost


def fit_stages(
    counts: np.ndarray,
    penalty: float = 1.5,
    max_stage: int = 8,
    first_stage: int = 1,
    cap: float = 3.0,
) -> np.ndarray:
    """Best non-decreasing integer stage per frame for these counts (int array, same length).

    ``penalty`` is the cost of one stage change in count units (a stage must be supported by
    more than ``penalty`` frames' worth of evidence); ``cap`` bounds one frame's cost so a
    wildly wrong frame weighs no more than ``cap``.
    """
    c = np.asarray(counts, dtype=np.float64).ravel()
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if max_stage < first_stage:
        raise ValueError("max_stage must be >= first_stage")
    if penalty < 0 or cap <= 0:
        raise ValueError("penalty must be >= 0 and cap > 0")
    stages = np.arange(first_stage, max_stage + 1, dtype=np.float64)
    cost = _frame_costs(c, stages, cap)
    n, s = cost.shape
    total = cost[0].copy()
    back = np.zeros((n, s), dtype=np.int64)  # stage index of the previous frame
    idx = np.arange(s)
    for i in range(1, n):
        # best previous state strictly below each stage, by prefix minimum
        best_below = np.minimum.accumulate(total)
        arg_below = _prefix_argmin(total)
        stay = total
        jump = np.full(s, np.inf)
        jump[1:] = best_below[:-1] + penalty
        take_jump = jump < stay
        back[i] = np.where(take_jump, np.r_[0, arg_below[:-1]], idx)
        total = np.where(take_jump, jump, stay) + cost[i]
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(np.argmin(total))
    for i in range(n - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path + first_stage


def _prefix_argmin(a: np.ndarray) -> np.ndarray:
    """Index of the minimum of ``a[:k+1]`` for every k (first index on ties)."""
    out = np.empty(a.size, dtype=np.int64)
    best = 0
    for k in range(a.size):
        if a[k] < a[best]:
            best = k
        out[k] = best
    return out


@dataclass(frozen=True)
class CleavageTimes:
    """Cleavage events of one fitted timeline: frame index and hours (None when not reached)."""

    frames: dict[str, int | None]
    hours: dict[str, float | None]
    durations_h: dict[str, float | None]
    durations_frames: dict[str, int | None]
    #: events already reached at the first frame (their true time is at or before it)
    censored: tuple[str, ...]

    def as_dict(self) -> dict:
        """JSON-ready form for summary.json."""
        return {"frames": self.frames, "hours": self.hours, "durations_h": self.durations_h,
                "durations_frames": self.durations_frames, "censored_at_first_frame": list(self.censored)}


def cleavage_times(stages: np.ndarray, times_h: np.ndarray | None = None) -> CleavageTimes:
    """t2, t3, t4, t5, t8 (first frame with stage >= N) and cc2, s2 from a fitted stage sequence."""
    st = np.asarray(stages).ravel()
    t = np.arange(st.size, dtype=np.float64) if times_h is None else np.asarray(times_h, dtype=np.float64).ravel()
    if t.size != st.size:
        raise ValueError(f"{st.size} stages but {t.size} times")
    frames: dict[str, int | None] = {}
    hours: dict[str, float | None] = {}
    censored = []
    for name, n in CLEAVAGES.items():
        hit = np.flatnonzero(st >= n)
        frames[name] = int(hit[0]) if hit.size else None
        hours[name] = float(t[hit[0]]) if hit.size else None
        if hit.size and hit[0] == 0:
            censored.append(name)
    dur_h: dict[str, float | None] = {}
    dur_f: dict[str, int | None] = {}
    for name, later, earlier in DURATIONS:
        ok = hours[later] is not None and hours[earlier] is not None
        dur_h[name] = hours[later] - hours[earlier] if ok else None
        dur_f[name] = frames[later] - frames[earlier] if ok else None
    return CleavageTimes(frames, hours, dur_h, dur_f, tuple(censored))
