"""Progress: off unless asked in library use, a callback or the console display when asked."""

from __future__ import annotations

import io

import pytest

from wsicount.progress import STAGES, ConsoleProgress, progress_fn, tile_updates


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_unless_asked() -> None:
    assert progress_fn(False) is None and progress_fn(None) is None
    assert isinstance(progress_fn(True), ConsoleProgress)
    seen = []
    assert progress_fn(lambda *e: seen.append(e)) is not None
    with pytest.raises(TypeError, match="progress"):
        progress_fn("yes")  # type: ignore[arg-type]


def test_tile_updates_report_running_totals() -> None:
    seen: list[tuple[str, int, int]] = []
    update = tile_updates(lambda *e: seen.append(e), 5)
    update(2)
    update(3)
    assert seen == [("tiles", 0, 5), ("tiles", 2, 5), ("tiles", 5, 5)]
    tile_updates(None, 5)(5)  # no function: nothing to call, nothing fails


def test_console_shows_a_line_per_stage_and_tenths_of_the_tiles() -> None:
    out = io.StringIO()
    show = ConsoleProgress(out)
    show("open", 0, 0)
    show("tissue", 0, 0)
    update = tile_updates(show, 200)
    for _ in range(200):
        update(1)
    show("report", 0, 0)
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["wsicount: " + STAGES["open"], "wsicount: " + STAGES["tissue"],
                         "wsicount: counting the cells of 200 tissue tile(s)"]
    assert [ln for ln in lines if ln.startswith("wsicount: tiles:")] == \
        [f"wsicount: tiles: {20 * k}/200 ({10 * k} %)" for k in range(1, 11)]
    assert lines[-1] == "wsicount: " + STAGES["report"]


def test_console_draws_a_bar_on_a_terminal() -> None:
    out = _Tty()
    show = ConsoleProgress(out)
    update = tile_updates(show, 50)
    update(25)
    assert show._bar is not None and show._bar.n == 25
    update(25)
    assert show._bar is None  # closed once every tile is done
    assert "tiles:" not in out.getvalue()  # the bar replaces the tenths lines
