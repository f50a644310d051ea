"""Option checks that need no heavy import, run before a slide is opened or anything is written.

Each check raises :class:`~wsicount.errors.UsageError` (exit 2) with one line naming the option,
the value and what it accepts, or :class:`~wsicount.errors.InputError` (exit 10) for an input path
that is missing. Only a CUDA or MPS ``--device`` imports torch, to ask whether the device exists.
Plain numeric ranges are declared on the CLI's options (click ranges); these are the checks that
depend on a model card, on another option or on the machine.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .errors import InputError, OutputError, UsageError

__all__ = ["min_tile_size", "check_tile_size", "check_device", "parse_channels", "check_synth_size",
           "check_split", "require_path", "require_parent"]

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: NDPI levels are single JPEGs: a side is at most this many pixels (JPEG's limit)
NDPI_MAX_SIDE = 65535
#: the smallest synthetic slide side
SYNTH_MIN_SIDE = 16


def min_tile_size(model: str | None) -> tuple[int, str]:
    """Smallest ``--tile-size`` whose core holds one stride for ``model``, and the card's name.

    The halo covers the receptive radius plus the peak margin (``peak_min_distance_px + 1``),
    rounded up to the stride, on both sides; the core must be at least one stride.
    """
    from .models.card import read_card
    from .tiling import TileGrid

    card, _ = read_card(model)
    halo = TileGrid.halo_for(card.receptive_radius, card.stride, card.peak_min_distance_px + 1)
    return 2 * halo + card.stride, card.name


def check_tile_size(tile_size: int, model: str | None) -> None:
    """``model``'s card reads (else ModelError) and ``tile_size`` is 0 (auto) or fits its halo."""
    low, name = min_tile_size(model)
    if tile_size and tile_size < low:
        raise UsageError(f"Invalid value for '--tile-size': {tile_size} is neither 0 (auto) nor at least {low} px "
                         f"(model {name}: its halo on both sides plus one stride).")


def check_device(device: str) -> None:
    """``device`` is auto, cpu, mps, cuda or cuda:N, and a named accelerator exists here."""
    if not _DEVICE.match(device):
        raise UsageError(f"Invalid value for '--device': {device!r} is not auto, cpu, cuda, cuda:N or mps.")
    if device in ("auto", "cpu"):
        return
    import torch

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("Invalid value for '--device': mps is not available here; use auto or cpu.")
        return
    if torch.version.cuda is None:
        raise UsageError(f"Invalid value for '--device': {device}, but this torch ({torch.__version__}) is built "
                         "without CUDA; use auto or cpu.")
    n = torch.cuda.device_count()
    index = int(device.partition(":")[2] or 0)
    if index >= n:
        seen = f"{n} CUDA device(s) visible" if n else "no CUDA device visible"
        raise UsageError(f"Invalid value for '--device': {device}, but {seen}; use auto or cpu.")


def parse_channels(text: str | None) -> list[int] | None:
    """``--channels`` ("1" or "0,2") as distinct RGB indices 0-2; None stays None (auto)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(p in ("0", "1", "2") for p in parts) or len(set(parts)) != len(parts):
        raise UsageError(f"Invalid value for '--channels': {text!r} is not distinct RGB indices 0, 1, 2 "
                         "separated by commas, e.g. 1 or 0,1,2.")
    return [int(p) for p in parts]


def check_synth_size(fmt: str, size: tuple[int, int]) -> None:
    """Both sides at least 16 px; NDPI sides multiples of 8 and at most 65535 px."""
    h, w = size
    if min(h, w) < SYNTH_MIN_SIDE:
        raise UsageError(f"Invalid value for '--size': {h} {w}; each side must be at least {SYNTH_MIN_SIDE} px.")
    if fmt == "ndpi" and (h % 8 or w % 8 or max(h, w) > NDPI_MAX_SIDE):
        raise UsageError(f"Invalid value for '--size': {h} {w}; NDPI sides must be multiples of 8 px "
                         f"and at most {NDPI_MAX_SIDE} px.")


def check_split(data: Path, split: str) -> None:
    """``split`` names a split of ``data``'s manifest.csv (when the dataset has one)."""
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        return
    with open(manifest, newline="") as f:
        splits = sorted({row.get("split") or "" for row in csv.DictReader(f)} - {""})
    if splits and split not in splits:
        raise UsageError(f"Invalid value for '--split': {split!r} is not one of {manifest}'s splits: {', '.join(splits)}.")


def require_path(path: Path, what: str, kind: str = "any") -> None:
    """InputError unless ``path`` exists (``kind``: "file", "dir" or "any")."""
    if not path.exists():
        raise InputError(f"{what} {path}: no such file or directory")
    if kind == "file" and path.is_dir():
        raise InputError(f"{what} {path} is a directory, not a file")
    if kind == "dir" and not path.is_dir():
        raise InputError(f"{what} {path} is not a directory")



def require_parent(path: Path | None, option: str) -> None:
    """OutputError unless ``path``'s folder exists, so a file asked for is not lost after the work."""
    if path is not None and not path.absolute().parent.is_dir():
        raise OutputError(f"{option} {path}: folder {path.absolute().parent} does not exist")
