"""The parameters of a slide run, checked once and never mutated after."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable

__all__ = ["RunConfig", "with_options"]


@dataclass(frozen=True)
class RunConfig:
    """Parameters of :func:`wsicount.run` (all recorded in summary.json)."""

    tile_size: int = 0  # 0: auto (budget.choose_tile_size: 1024 where it fits)
    batch_size: int = 0  # 0: auto (infer.auto_batch_size)
    device: str = "auto"
    precision: str = "auto"
    prefetch: int = 2
    decode_cache_mb: int = 128  # decoded segments kept per process (io.SegmentCache); results do not depend on it
    mpp: float | None = None
    mask: str | None = None
    tissue_mode: str | None = None
    grid_um: tuple[float, ...] = (100.0, 1000.0)
    threads: int | None = None
    workers: int | None = None
    scheduler: str | None = None
    backend: str = "auto"
    tiles_per_task: int | None = None
    overwrite: bool = False
    skip_bad_tiles: bool = False
    #: False: silent (library default); True: the console display (the CLI); or fn(stage, done, total)
    progress: bool | Callable[[str, int, int], None] = False
    geojson_units: str = "px"
    #: user regions: a QuPath GeoJSON export or a label image (wsicount.regions.read_regions)
    regions: str | None = None
    #: the GeoJSON's coordinates, "px" (level 0) or "um"; None: what the file states, else px
    regions_units: str | None = None
    #: a label image's level-0 pixels per label pixel
    regions_scale: float = 1.0
    #: nominal coverage of the count intervals (from the model card's calibration)
    interval_level: float = 0.95
    #: the count interval's method (``--uncertainty``): one the card has a calibration for; None: the card's
    #: default. ``tta`` and ``ensemble`` count the mean of several predictions (8x / K x the compute)
    uncertainty: str | None = None
    #: the channel a one-channel model reads (``--channel``: a name, fluorophore or index); None: the card's
    channel: str | None = None
    #: µm/px the model runs at (``--model-mpp``), for a card that states none; None: the card's
    model_mpp: float | None = None
    #: run a slide the domain guard refuses, recording the mismatch as a warning (``--force``)
    force: bool = False
    #: the time point counted in a whole-slide time series (one pyramid per time point)
    time_index: int = 0

    def result_params(self) -> dict[str, Any]:
        """Parameters that change the results (resuming requires them unchanged)."""
        return {"tile_size": self.tile_size, "precision": self.precision, "mpp": self.mpp,
                "mask": self.mask, "tissue_mode": self.tissue_mode, "grid_um": list(self.grid_um),
                "backend": self.backend, "skip_bad_tiles": self.skip_bad_tiles, "channel": self.channel,
                "model_mpp": self.model_mpp, "uncertainty": self.uncertainty,
                **({"time_index": self.time_index} if self.time_index else {})}


def with_options(config: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    """A new config: ``config`` (or the defaults) with ``options`` applied; the caller's config is left as it was."""
    cfg = config or RunConfig()
    names = {f.name for f in fields(RunConfig)}
    for k in options:
        if k not in names:
            raise TypeError(f"unknown run option {k!r}")
    cfg = replace(cfg, **options)
    return replace(cfg, grid_um=tuple(float(g) for g in cfg.grid_um))
