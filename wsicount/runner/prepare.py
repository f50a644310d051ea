"""A slide's preparation, queued on the side worker before torch is imported: open, check, then tissue and picture.

Opening the slide and reading the card need no torch, so a bad slide, a bad card or a slide
outside the model's domain is reported at once; the tissue mask, the normalisation field and
the slide picture are then computed by the side worker while the main thread loads the model.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..guard import check_slide
from . import side as side_worker
from .config import RunConfig
from .plan import SlidePrep, prepare

__all__ = ["OnStage", "Prepared", "submit_preparation"]

#: a stage callback: (stage, slide name); stages "prepare" and "tiles"
OnStage = Callable[[str, str], None]


@dataclass
class Prepared:
    """A slide opened, its model card read, and its preparation (and picture) queued on a side worker."""

    slide: Any
    card: Any
    prep: Future
    picture: Future | None  # None: drawn once the mask is back (side thread)
    warnings: list[str]  # the domain guard's mismatches a --force run records


def submit_preparation(side: Executor, slide: str | os.PathLike, model: str | os.PathLike | None,
                        cfg: RunConfig, on_stage: OnStage | None = None) -> Prepared:
    """Open ``slide``, read the card and check the slide against its domain (no torch yet: a bad slide, card
    or mismatch is reported at once), then queue the preparation.

    A side process queues the slide picture right behind the preparation, so that it is drawn
    while the main thread still loads torch; it hands the mask over in its own memory. A side
    thread draws it once the mask is back in the main thread.
    """
    from ..io import open_slide
    from ..models import read_card

    if on_stage is not None:
        on_stage("prepare", Path(slide).name)
    sl = open_slide(slide, mpp=cfg.mpp, backend=cfg.backend, t=cfg.time_index)
    card, _ = read_card(model)
    warnings = check_slide(card, sl, cfg)  # DomainError unless --force
    token = f"{os.getpid()}-{time.monotonic_ns()}" if isinstance(side, ProcessPoolExecutor) else None
    prep = side_worker.side_submit(side, _prepare_in_side, sl, replace(cfg, progress=False), card, token)
    picture = side_worker.side_submit(side, _slide_picture, sl, token) if token else None
    return Prepared(sl, card, prep, picture, warnings)


def _prepare_in_side(sl: Any, cfg: RunConfig, card: Any, token: str | None) -> SlidePrep:
    """:func:`~wsicount.runner.plan.prepare` on the side worker; a process keeps the mask for the picture."""
    return prepare(sl, cfg, card, keep=(lambda tm: side_worker.keep_mask(token, tm)) if token else None)


def _slide_picture(sl: Any, token: str) -> Any:
    """The slide picture with the tissue outline, from the mask the preparation left under ``token``."""
    from ..report import slide_figure

    tm = side_worker.take_mask(token)
    if tm is None:  # the preparation failed: the run is stopping with its error
        raise RuntimeError("no tissue mask to draw")
    return slide_figure(sl, tm)
