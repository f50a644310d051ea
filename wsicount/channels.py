"""Which channel of a slide or image a model reads: ``--channel NAME|INDEX`` resolved to indices.

An RGB scan's channels are ``red``, ``green`` and ``blue`` (``R``/``G``/``B`` as the readers
name them); the usual fluorophores map to the channel a colour camera records them in
(DAPI and Hoechst: blue; FITC and GFP: green; TRITC and Cy3: red). A multichannel file's
channels are its own names (OME ``Channel/@Name``) or indices. A one-channel image is that
channel whatever is asked, as :func:`wsicount.preprocess.select_channels` uses it as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .io import Slide

__all__ = ["resolve_channel", "display_names", "overview", "channel_table", "FLUOROPHORES"]

_RGB = ("red", "green", "blue")
_SHORT = {"r": "red", "g": "green", "b": "blue"}
#: fluorophore -> the colour channel an RGB camera records it in
FLUOROPHORES = {"dapi": "blue", "hoechst": "blue", "fitc": "green", "gfp": "green", "tritc": "red", "cy3": "red"}


def display_names(names: Sequence[str]) -> list[str]:
    """Names as users type them: an RGB triple ``R, G, B`` becomes ``red, green, blue``."""
    if [n.upper() for n in names] == ["R", "G", "B"]:
        return list(_RGB)
    return [str(n) for n in names]


def _colour(word: str) -> str | None:
    """The RGB colour a word stands for (``b``, ``blue``, ``dapi`` -> ``blue``), or None."""
    w = word.strip().lower()
    w = _SHORT.get(w, w)
    return w if w in _RGB else FLUOROPHORES.get(w)


def _match_name(spec: str, names: list[str]) -> int | None:
    """Index of the channel ``spec`` names: exact (case-insensitive), then by colour or fluorophore group."""
    low = [n.lower() for n in names]
    s = spec.strip().lower()
    if s in low:
        return low.index(s)
    colour = _colour(s)
    if colour is None:
        return None
    if colour in low:  # an RGB scan (display names) or channels named by colour
        return low.index(colour)
    group = {colour} | {f for f, c in FLUOROPHORES.items() if c == colour}
    hits = [i for i, n in enumerate(low) if any(g in n for g in group)]  # "Hoechst 33342" for dapi
    return hits[0] if len(hits) == 1 else None


def resolve_channel(spec: str | int | None, names: Sequence[str], default: Sequence[int],
                    n_model: int = 1) -> list[int]:
    """Channel indices a model reads: ``default`` (the card's) unless ``spec`` names or indexes one channel.

    ``names`` are the channels of the slide or image (as the readers name them). Raises
    InputError for an unknown name or index (naming the channels that exist), or when the
    model reads more than one channel (``--channel`` picks the channel of a one-channel model).
    """
    if spec is None:
        return list(default)
    if n_model != 1:
        raise InputError(f"--channel picks the input of a one-channel model; this model reads {n_model} channels")
    shown = display_names(names)
    if len(shown) == 1:
        return [0]
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if 0 <= i < len(shown):
            return [i]
        raise InputError(f"channel index {i} does not exist; channels: {_listing(shown)}")
    i = _match_name(text, shown)
    if i is None:
        raise InputError(f"no channel {text!r}; channels: {_listing(shown)}")
    return [i]


def _listing(names: Sequence[str]) -> str:
    """``0=red, 1=green, 2=blue``."""
    return ", ".join(f"{i}={n}" for i, n in enumerate(names))


def overview(slide: Slide, max_side: int = 1024) -> np.ndarray:
    """The slide's coarsest level, subsampled to at most about ``max_side`` px: (h, w, c) uint8."""
    from .io import reduce_level

    level = len(slide.shapes) - 1
    h, w, _ = slide.shapes[level]
    factor = max(1, math.ceil(max(h, w) / max_side))
    if factor == 1:
        return slide.read_region(level, 0, 0, h, w)
    return reduce_level(slide, level, factor, "subsample")


def channel_table(slide: Slide, names: Sequence[str] | None = None) -> list[dict]:
    """One row per channel: index, name (as ``--channel`` takes it) and mean intensity (0-255) at low resolution."""
    from .io import slide_info

    names = display_names(names if names is not None else slide_info(slide)["channel_names"])
    img = overview(slide)
    means = img.reshape(-1, img.shape[-1]).astype(np.float64).mean(axis=0) if img.size else np.zeros(len(names))
    return [{"index": i, "name": n, "mean": round(float(m), 2)} for i, (n, m) in enumerate(zip(names, means))]
