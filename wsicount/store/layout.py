"""The output folder's layout: every path a run writes, defined once.

``OUT/`` is an OME-Zarr root (NGFF 0.4, Zarr v2) plus plain files. The root is itself the
density image (its ``multiscales`` list ``density/0 .. n``), so that a reader given ``OUT``
finds the density and, in the standard ``labels`` group, the tissue mask::

    density/0 .. n          float32 density (cells per pixel) at model resolution and 2x2-sum levels;
                            each level sums to the count. A time-lapse run stores (t, y, x).
    labels/tissue/0         uint8 tissue mask (NGFF label image of the root)
    counts_<G>um/0          float32 cells per grid cell of G µm
    tissue_<G>um/0          float32 tissue area (mm²) per grid cell
    summary.json            the run's results and provenance (written last: its presence means done)
    regions.csv             one row per grid cell with tissue or counts (user regions: a ``region`` column)
    cells.csv, cells.geojson  detected cell centres
    bad_tiles.csv           tiles skipped as undecodable
    thumbnail.png, heatmap.png, report.html
    .wsicount/lock, .wsicount/run.json, .wsicount/tiles/<key>.json   crash-safety state (see records.py)

A time-lapse stack's folder has its own layout (:class:`StackLayout`), so a slide run owns none
of its names and a stack run none of a slide run's::

    density.ome.zarr/0      float32 (t, y, x) density (cells per pixel) at model resolution, one chunk per frame
    timeline.csv            frame, time_h, count, count_lo, count_hi, stage, planes, status
    growth.csv              frame, time_h, region, count, count_lo, count_hi (the field and each user region)
    cells.csv               t, time_h, x, y of the detected cells, in frame pixels
    summary.json            cleavage times, intervals, growth fits, provenance (written last)
    timeline.png            counts, interval band, fitted stages and cleavage times
    .wsicount-stack/params.json, .wsicount-stack/frames/<t>.json   per-frame resume records
    t0000/, t0001/, ...     a whole-slide time series: each time point's slide-run folder (:class:`Layout`)
 :meth:`Layout.owned` lists exactly the top-level names a run may write and
:meth:`Layout.foreign` every entry under the root that no run writes, so that clearing a
folder never touches anything else: a folder holding a foreign entry is not cleared at all.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["remove_owned", "Layout", "STATE", "DENSITY", "LABELS", "TISSUE_LABEL", "FILES", "StackLayout", "STACK_STATE",
           "STACK_DENSITY", "STACK_FILES"]

STATE = ".wsicount"
DENSITY = "density"
#: the root's NGFF labels group
LABELS = "labels"
#: the tissue label image, relative to the root
TISSUE_LABEL = f"{LABELS}/tissue"
#: the plain files a run writes at the root
FILES = ("summary.json", "regions.csv", "cells.csv", "cells.geojson", "bad_tiles.csv",
         "thumbnail.png", "heatmap.png", "report.html")
#: a time-lapse stack run's state folder, density image and plain files
STACK_STATE = ".wsicount-stack"
STACK_DENSITY = "density.ome.zarr"
STACK_FILES = ("timeline.csv", "growth.csv", "cells.csv", "summary.json", "timeline.png")
#: a whole-slide time series' per-time-point slide folder
_FRAME_DIR = re.compile(r"t[0-9]{4,}")
#: Zarr metadata files a run writes at the root (the root group)
ROOT_META = (".zgroup", ".zattrs", "zarr.json")
#: a count or tissue-area map group of any grid size (``counts_100um``, ``tissue_12.5um``)
_MAP = re.compile(r"(counts|tissue)_[0-9][0-9.e+-]*um")
#: a name inside an image group a run writes: levels, chunk keys (v2 and v3), Zarr metadata, labels
_IN_IMAGE = re.compile(r"[0-9]+([.][0-9]+)*|c|labels|tissue|[.]zgroup|[.]zattrs|[.]zarray|zarr[.]json")
#: the writability probe of :meth:`~wsicount.store.records.RunState.prepare`
_PROBE = re.compile(r"[.]write-test-[0-9]+")


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
        return {STATE, DENSITY, LABELS, *FILES, *ROOT_META} | maps

    def foreign(self, limit: int = 20) -> list[str]:
        """Up to ``limit`` entries under the root that no run writes (relative paths, sorted); [] if none.

        Ours: the state folder, the plain files (and an atomic write's leftover temporary
        ``.NAME.*.tmp*``), the root's Zarr metadata, and the image groups (density, labels, count
        maps of any grid) holding only Zarr levels, chunks and metadata. A symbolic link is
        never ours. A foreign folder is listed once, not walked.
        """
        found: list[str] = []
        if not self.root.is_dir():
            return found
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            if entry.is_symlink() or (entry.is_dir() != (name in (STATE, DENSITY, LABELS) or _MAP.fullmatch(name)
                                                         is not None)):
                found.append(name)
            elif entry.is_dir() and name != STATE:
                found.extend(_foreign_in_image(entry, self.root))
            elif not entry.is_dir() and not _own_file(name):
                found.append(name)
            if len(found) >= limit:
                break
        return found[:limit]


def remove_owned(root: Path, names: set[str]) -> None:
    """Delete ``root / name`` for each owned ``name`` (folders recursively; a link is removed, not followed)."""
    for name in names:
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


@dataclass(frozen=True)
class StackLayout:
    """Paths of one time-lapse stack's output folder (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def state(self) -> Path:
        """The resume folder: the run's parameters and one record per counted frame."""
        return self.root / STACK_STATE

    @property
    def params(self) -> Path:
        """What the frame records depend on (input identity, model, options)."""
        return self.state / "params.json"

    @property
    def frames(self) -> Path:
        """Folder of per-frame records."""
        return self.state / "frames"

    def frame_record(self, t: int) -> Path:
        """The record of frame ``t``."""
        return self.frames / f"{t:06d}.json"

    @property
    def density(self) -> Path:
        """The (t, y, x) density OME-Zarr."""
        return self.root / STACK_DENSITY

    def file(self, name: str) -> Path:
        """One of the plain files in :data:`STACK_FILES`."""
        if name not in STACK_FILES:
            raise KeyError(f"{name!r} is not an output file of a wsicount stack run")
        return self.root / name

    def frame_dir(self, t: int) -> Path:
        """The slide-run folder of time point ``t`` of a whole-slide time series."""
        return self.root / f"t{t:04d}"

    def frame_dirs(self) -> list[Path]:
        """The time points' slide-run folders present, in time order."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()
                       and _FRAME_DIR.fullmatch(p.name)), key=lambda p: int(p.name[1:]))

    def owned(self) -> set[str]:
        """Top-level names a stack run writes (with the time points' folders present): nothing else is ever removed."""
        return {STACK_STATE, STACK_DENSITY, *STACK_FILES} | {p.name for p in self.frame_dirs()}

    def has_outputs(self) -> bool:
        """Whether any name a stack run writes is present."""
        return any((self.root / n).exists() for n in self.owned())

    def foreign(self, limit: int = 20) -> list[str]:
        """Up to ``limit`` entries under the root that no stack run writes (relative paths, sorted); [] if none.

        Ours: the state folder, the plain files (and an atomic write's leftover temporary), and
        the density image holding only Zarr levels, chunks and metadata. A symbolic link is
        never ours; a foreign folder is listed once, not walked.
        """
        found: list[str] = []
        if not self.root.is_dir():
            return found
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            frame_dir = _FRAME_DIR.fullmatch(name) is not None
            if entry.is_symlink() or entry.is_dir() != (name in (STACK_STATE, STACK_DENSITY) or frame_dir):
                found.append(name)
            elif frame_dir:
                found.extend(f"{name}/{f}" for f in Layout(entry).foreign(limit))
            elif name == STACK_DENSITY:
                found.extend(_foreign_in_image(entry, self.root))
            elif not entry.is_dir() and not _own_file(name, STACK_FILES, ()):
                found.append(name)
            if len(found) >= limit:
                break
        return found[:limit]


def _own_file(name: str, files: tuple[str, ...] = FILES, meta: tuple[str, ...] = ROOT_META) -> bool:
    """Whether a root-level file of this name is one a run writes (or a leftover of its atomic writes)."""
    return (name in files or name in meta or _PROBE.fullmatch(name) is not None
            or any(name.startswith(f".{f}.") and ".tmp" in name for f in files))


def _foreign_in_image(group: Path, root: Path) -> list[str]:
    """Entries of an image group that Zarr does not write there (relative to ``root``)."""
    found = []
    for here, dirs, files in os.walk(group):
        for name in sorted(dirs + files):
            p = Path(here) / name
            if p.is_symlink() or not _IN_IMAGE.fullmatch(name):
                found.append(p.relative_to(root).as_posix())
                if name in dirs:
                    dirs.remove(name)
    return found
