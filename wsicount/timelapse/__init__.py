"""Time-lapse stacks: frames over time (and focal planes) counted frame by frame.

``stack``/``frames``: lazy (t, z, c, y, x) readers for multi-page TIFF, OME-TIFF, OME-Zarr and
folders of frames; ``write``: writers of the same formats; ``focus``: focal-plane choice;
``stages``: non-decreasing cell-stage fit and cleavage times; ``run``: the per-frame counting
pipeline and its outputs; ``growth``: per-region counts over time and doubling times; ``series``:
a whole-slide time series counted through the slide tile path frame by frame; ``study``: the
per-embryo (per-well) table of a batch; ``plot``: the timeline picture.
"""

from __future__ import annotations

from .run import count_stack
from .stack import Stack, is_stack, open_stack
from .stages import CLEAVAGES, CleavageTimes, cleavage_times, fit_stages

__all__ = ["CLEAVAGES", "CleavageTimes", "Stack", "cleavage_times", "count_stack", "fit_stages", "is_stack",
           "open_stack"]
