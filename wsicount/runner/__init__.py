"""Running a slide: config -> plan -> tile tasks on an executor -> aggregate and report.

``config``: :class:`RunConfig`; ``plan``: the slide's tissue, geometry, normalisation and tile
plan, fixed before the first tile; ``task``: the tile task; ``execute``: where tasks run
(:class:`Placement`); ``side``: the side worker for fixed costs; ``prepare``: a slide opened, checked and its preparation queued; ``slide``: one slide's stages
and the public :func:`run`, :func:`count`, :func:`count_each`.
"""

from __future__ import annotations

from .config import RunConfig
from .execute import Placement, local_cluster
from .slide import count, count_each, run

__all__ = ["RunConfig", "Placement", "local_cluster", "count", "count_each", "run"]
