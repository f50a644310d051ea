"""Error types with the CLI exit code each maps to.

Every failure a user can cause (bad path, corrupt slide, missing mpp, mismatched model,
unwritable output) raises a subclass of :class:`WsicountError`; the CLI prints its message
as one line on stderr and exits with ``exit_code`` (a traceback only with ``--debug``).
"""

from __future__ import annotations

__all__ = [
    "WsicountError",
    "InputError",
    "SlideFormatError",
    "MissingMppError",
    "NoTissueError",
    "ModelError",
    "OutputError",
    "TileReadError",
    "RegionError",
]


class WsicountError(Exception):
    """Base class of the errors reported to users without a traceback."""

    exit_code = 1


class InputError(WsicountError):
    """The input path does not exist, is a directory, or is empty."""

    exit_code = 2


class SlideFormatError(WsicountError):
    """The file is not a readable slide (unsupported, corrupt or truncated)."""

    exit_code = 3


class MissingMppError(WsicountError):
    """The slide carries no pixel size and none was given with ``--mpp``."""

    exit_code = 4


class NoTissueError(WsicountError):
    """The tissue mask is empty: nothing to count."""

    exit_code = 5


class ModelError(WsicountError):
    """The model file is missing, corrupt, or does not match its card."""

    exit_code = 6


class OutputError(WsicountError):
    """The output folder cannot be written, is locked, or holds another slide's results."""

    exit_code = 7


class TileReadError(WsicountError):
    """A tile of the slide could not be decoded (names level and position)."""

    exit_code = 8


class RegionError(InputError):
    """A user region (GeoJSON feature or label image) is unreadable, empty, invalid or off the slide."""
