"""Synthetic inputs with known ground truth, written in the real vendor formats.

``slide``: whole-slide images with known cell positions; ``write``: the pyramid writers
(NDPI, tiled TIFF, SVS, OME-TIFF, OME-Zarr) they stream into.
"""

from __future__ import annotations

from .slide import DEFAULT_CELL_PARAMS, SynthTruth, synth_array, synth_slide

__all__ = ["DEFAULT_CELL_PARAMS", "SynthTruth", "synth_array", "synth_slide"]
