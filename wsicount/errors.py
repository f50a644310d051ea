"""Error types with the CLI exit code each maps to.

Every failure a user can cause (bad option, bad path, corrupt slide, missing mpp, mismatched
model, unwritable output) raises a subclass of :class:`WsicountError`; the CLI prints its
message as one line on stderr and exits with ``exit_code`` (a traceback only with ``--debug``).

====  =====================================================================================
code  meaning
====  =====================================================================================
0     success
1     internal error: a bug (rerun with ``--debug`` and report it)
2     usage: an option value outside its range, an unknown option or command, a missing
      argument, contradicting options (:class:`UsageError`; click's own usage errors too)
3     not a supported slide (:class:`SlideFormatError`)
4     the slide has no pixel size (:class:`MissingMppError`)
5     no tissue found (:class:`NoTissueError`)
6     model missing, corrupt or not matching its card (:class:`ModelError`)
7     output folder unusable (:class:`OutputError`)
8     a tile could not be decoded (:class:`TileReadError`)
9     ``batch``: at least one slide failed (the others finished)
10    an input path (slide, mask, manifest, dataset) is missing, unreadable or a plain
      directory (:class:`InputError`); a user region file unreadable, empty, invalid or off
      the slide (:class:`RegionError`)
130   interrupted
====  =====================================================================================

Usage errors keep 2, the code click and argparse give them, so a missing input path has
its own code: a script can tell "fix the command line" from "fix the file system".
"""

from __future__ import annotations

__all__ = [
    "WsicountError",
    "UsageError",
    "InputError",
    "SlideFormatError",
    "MissingMppError",
    "NoTissueError",
    "ModelError",
    "OutputError",
    "TileReadError",
    "FrameReadError",
    "RegionError",
    "DomainError",
]


class WsicountError(Exception):
    """Base class of the errors reported to users without a traceback."""

    exit_code = 1


class UsageError(WsicountError):
    """An option value is outside its allowed range, or options contradict each other."""

    exit_code = 2


class InputError(WsicountError):
    """An input path does not exist, is not readable, or is a directory that is not a slide."""

    exit_code = 10


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


class FrameReadError(TileReadError):
    """A frame of a time-lapse stack could not be decoded (names the frame and its file)."""

    def __init__(self, message: str, frame: int | None = None) -> None:
        super().__init__(message)
        self.frame = frame


class RegionError(InputError):
    """A user region (GeoJSON feature or label image) is unreadable, empty, invalid or off the slide."""


class DomainError(WsicountError):
    """The slide is outside the model's domain (modality, pixel size, empty channel); ``--force`` runs anyway."""

    exit_code = 11


#: exit code of ``wsicount batch`` when at least one slide failed
EXIT_BATCH_FAILED = 9
#: exit code of an interrupted command (128 + SIGINT)
EXIT_INTERRUPTED = 130
