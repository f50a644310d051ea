"""The output folder's layout: every path a run writes, defined once.

``OUT/`` is an OME-Zarr root (NGFF 0.4, Zarr v2) plus plain files::

    density/0 .. n          float32 density (cells per pixel) at model resolution and 2x2-sum levels;
                            each level sums to the count. A time-lapse run stores (t, y, x).
    density/labels/tissue/0 uint8 tissue mask (NGFF label image)
    counts_<G>um/0          float32 cells per grid cell of G µm
    tissue_<G>um/0          float32 tissue area (mm²) per grid cell
    summary.json            the run's results and provenance (written last: its presence means done)
    regions.csv             one row per grid cell with tissue or counts (user regions: a ``region`` column)
    cells.csv, cells.geojson  detected cell centres
    bad_tiles.csv           tiles skipped as undecodable
    timeline.csv            per-frame counts and stages of a time-lapse stack
    thumbnail.png, heatmap.png, report.html
    .wsicount/lock, .wsicount/run.json, .wsicount/tiles/<key>.json   crash-safety state (see records.py)

:meth:`Layout.owned` lists exactly the top-level names a run may write, so that clearing a
folder never touches anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Layout", "STATE", "DENSITY", "TISSUE_LABEL", "FILES"]

STATE = ".wsicount"
DENSITY = "density"
#: the tissue label image, relative to the root
TISSUE_LABEL = "density/labels/tissue"
#: the plain files a run writes at the root
FILES = ("summary.json", "regions.csv", "cells.csv", "cells.geojson", "bad_tiles.csv", "timeline.csv",
         "thumbnail.png", "heatmap.png", "report.html")
#: Zarr metadata files a run writes at the root (the root group)
ROOT_META = (".zgroup", ".zattrs", "zarr.json")


@dataclass(frozen=True)
class Layout:
    """Paths of one output folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def state(self) -> Path:
        """The crash-safety folder (lock, run manifest, tile records)."""
        return self.root / STATE

    @property
    def lock(self) -> Path:
        return self.state / "lock"

    @property
    def run_json(self) -> Path:
        """The run's fingerprint: slide identity, model, every parameter that changes results."""
        return self.state / "run.json"

    @property
    def tiles(self) -> Path:
        """Folder of tile completion records."""
        return self.state / "tiles"

    def tile_record(self, key: str) -> Path:
        """The completion record of tile ``key`` (see :attr:`wsicount.tiling.Tile.key`)."""
        return self.tiles / f"{key}.json"

    @property
    def density(self) -> Path:
        """The density image group (multiscale levels ``0..n``)."""
        return self.root / DENSITY

    def density_level(self, level: int) -> Path:
        return self.density / str(level)

    @property
    def tissue_label(self) -> Path:
        """The tissue label image group (one level, ``0``)."""
        return self.root / TISSUE_LABEL

    def count_map(self, g: float) -> str:
        """Name of the count map image of the ``g``-µm grid (a root group)."""
        return f"counts_{g:g}um"

    def tissue_map(self, g: float) -> str:
        """Name of the tissue-area map image of the ``g``-µm grid (a root group)."""
        return f"tissue_{g:g}um"

    def file(self, name: str) -> Path:
        """One of the plain files in :data:`FILES`."""
        if name not in FILES:
            raise KeyError(f"{name!r} is not an output file of wsicount")
        return self.root / name

    def owned(self, grid_um: tuple[float, ...] = ()) -> set[str]:
        """Top-level names a run writes (with count maps for ``grid_um``): nothing else is ever removed."""
        maps = {self.count_map(g) for g in grid_um} | {self.tissue_map(g) for g in grid_um}
        return {STATE, DENSITY, *FILES, *ROOT_META} | maps
