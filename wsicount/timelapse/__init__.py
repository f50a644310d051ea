"""Time-lapse stacks: frames over time (and focal planes) counted frame by frame.

``stages``: non-decreasing cell-stage fit and cleavage times; ``stack``: lazy (t, z, c, y, x)
readers for multi-page TIFF, OME-TIFF, OME-Zarr and folders of frames; ``focus``: focal-plane
choice; ``run``: the per-frame counting pipeline and its outputs.
"""

from __future__ import annotations

from .stages import CLEAVAGES, CleavageTimes, cleavage_times, fit_stages

__all__ = ["CLEAVAGES", "CleavageTimes", "cleavage_times", "fit_stages"]
