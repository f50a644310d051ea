"""Progress of a run as (stage, done, total) events: silent in library use unless asked.

A run calls its progress function at the start of each stage with ``done = 0`` and, during
``"tiles"``, after every finished task with the tiles done so far. ``total`` is the number of
items of the stage (tiles, slides), 0 where the stage is not counted. Library callers pass
``progress=False`` (nothing), ``True`` (the CLI's display: a line per stage on stderr, then a
bar for the tiles) or their own function, e.g. to update a notebook widget or a log.
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO

__all__ = ["ProgressFn", "STAGES", "ConsoleProgress", "progress_fn", "tile_updates"]

#: ``fn(stage, done, total)``: ``stage`` is a key of :data:`STAGES`
ProgressFn = Callable[[str, int, int], None]

#: each stage of a run and the line the console shows when it starts ({total}: its item count)
STAGES = {
    "slide": "slide {done}/{total}",
    "open": "opening the slide and loading the model",
    "tissue": "finding the tissue and the intensity range",
    "plan": "planning the tiles",
    "tiles": "counting the cells of {total} tissue tile(s)",
    "pyramid": "building the density pyramid and count maps",
    "report": "writing the reports",
}


def progress_fn(progress: bool | ProgressFn | None) -> ProgressFn | None:
    """The function a run reports to: None for False/None, the console display for True, else ``progress``."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return ConsoleProgress()
    if not callable(progress):
        raise TypeError(f"progress must be a bool or a function (stage, done, total), not {type(progress).__name__}")
    return progress


def tile_updates(fn: ProgressFn | None, total: int) -> Callable[[int], None]:
    """Start the ``"tiles"`` stage of ``total`` tiles; the returned ``update(n)`` reports n more done."""
    done = 0
    if fn is not None:
        fn("tiles", 0, total)

    def update(n: int) -> None:
        nonlocal done
        done += n
        if fn is not None:
            fn("tiles", done, total)

    return update


class ConsoleProgress:
    """The CLI's display on ``stream`` (stderr): a line when a stage starts, then the tiles' progress.

    On a terminal the tiles get a tqdm bar; otherwise (a log file, CI) a line at every tenth
    of the tiles, so that a log shows the run advancing without a line per tile.
    """

    def __init__(self, stream: TextIO | None = None, prefix: str = "wsicount: ") -> None:
        self.stream = stream
        self.prefix = prefix
        self._stage: str | None = None
        self._bar = None
        self._tenths = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Show the start of ``stage``, or ``done`` of ``total`` items of the current one."""
        out = self.stream or sys.stderr
        if stage != self._stage or done == 0:
            self._close()
            self._stage, self._tenths = stage, 0
            text = STAGES.get(stage, stage).format(done=done, total=total)
            print(f"{self.prefix}{text}", file=out, flush=True)
            if stage == "tiles" and total and out.isatty():
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, unit="tile", file=out, leave=False)
            return
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            if done >= total:
                self._close()
        elif total and done * 10 // total > self._tenths:
            self._tenths = done * 10 // total
            print(f"{self.prefix}{stage}: {done}/{total} ({100 * done // total} %)", file=out, flush=True)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
