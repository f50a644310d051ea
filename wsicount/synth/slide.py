"""Synthetic whole-slide images with known cell positions: ground truth for counting.

A slide is a pure function of its parameters: every pixel depends only on its (y, x)
position (tissue shape, smooth texture fields, cells composited with ``max``, noise seeded
per row), so rendering band by band gives the same image as rendering it whole, and the
same seed gives the same cells and pixels. Level 0 is rendered in bands and streamed to the
writer (``wsicount.synth.write``), so gigapixel slides need only a few bands of memory.

Invariants: ``len(points) == n_cells == round(cell_density_per_mm2 * tissue_area_mm2)``;
every point lies inside the tissue shape; points are (x, y) in level-0 pixels with pixel
centres at integer coordinates; for a disk, ``tissue_area_mm2 == pi r^2 mpp^2 / 1e6``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .scene import DEFAULT_CELL_PARAMS, LOOKS, TISSUES, Scene, Tissue, streams
from .write import COMPRESSIONS, FORMATS, default_suffix, level_shapes, write_pyramid

__all__ = ["SynthTruth", "synth_slide", "synth_array", "LOOKS", "TISSUES",
           "FORMATS", "COMPRESSIONS", "DEFAULT_CELL_PARAMS"]

@dataclass
class SynthTruth:
    """Ground truth of a synthetic slide (also written to ``<out>.truth.json``)."""

    path: Path
    points_path: Path
    n_cells: int
    tissue_area_mm2: float
    mpp: float
    shape: tuple[int, int]
    look: str
    seed: int
    tissue_center_yx: tuple[float, float]
    tissue_radius_px: float | None
    tissue: str = "disk"  # tissue kind and fraction: enough to rebuild the shape from the seed
    tissue_fraction: float = 0.6

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether points (level-0 pixels) lie inside this slide's tissue shape."""
        rng = streams(self.seed)[0]
        return Tissue(tuple(self.shape), self.tissue, self.tissue_fraction, rng).contains(x, y)

    def to_json(self) -> dict:
        """JSON-ready dict of the fields."""
        d = asdict(self)
        d["path"], d["points_path"] = str(self.path), str(self.points_path)
        d["shape"], d["tissue_center_yx"] = list(self.shape), list(self.tissue_center_yx)
        return d

    @classmethod
    def load(cls, path: str | Path) -> SynthTruth:
        """Read a ``.truth.json`` (extra keys such as 'format' or 'cell_params' are ignored)."""
        d = json.loads(Path(path).read_text())
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["path"], kw["points_path"] = Path(kw["path"]), Path(kw["points_path"])
        kw["shape"], kw["tissue_center_yx"] = tuple(kw["shape"]), tuple(kw["tissue_center_yx"])
        return cls(**kw)


def _objective_for(mpp: float) -> float:
    """Nominal objective of a NanoZoomer-like scanner at ``mpp`` (20x ~ 0.45 um/px)."""
    powers = np.array([1.25, 2.5, 5, 10, 20, 40, 60, 80, 100])
    return float(powers[np.argmin(np.abs(np.log(powers * mpp / 9.05)))])


def synth_array(
    size: tuple[int, int] = (2048, 2048), seed: int = 0, look: str = "fluorescence",
    mpp: float = 0.4523, cell_density_per_mm2: float = 300.0, tissue: str = "disk",
    tissue_fraction: float = 0.6, cell_params: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(level-0 image (h, w, 3) uint8, points (n, 2) x, y) rendered in memory.

    Pixel-identical to level 0 of :func:`synth_slide` with the same arguments (before any
    lossy compression); meant for small sizes, tests and previews.
    """
    scene = Scene(_shape(size), seed, look, mpp, cell_density_per_mm2, tissue, tissue_fraction,
                   cell_params)
    return scene.render(0, scene.shape[0]), scene.cells.xy.copy()


def _shape(size) -> tuple[int, int]:
    """Validated (h, w)."""
    h, w = (int(v) for v in size)
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least 16x16 px, got {h}x{w}")
    return h, w


def _output_path(out: str | Path, fmt: str) -> Path:
    """``out`` as given, or with the format's suffix appended when it has none."""
    p = Path(out).expanduser()
    return p if p.suffix else p.with_name(p.name + default_suffix(fmt))


def synth_slide(
    out: str | Path, format: str = "ndpi", size: tuple[int, int] = (8192, 8192), seed: int = 0,
    look: str = "fluorescence", mpp: float = 0.4523, cell_density_per_mm2: float = 300.0,
    tissue: str = "disk", tissue_fraction: float = 0.6, write_mpp: bool = True,
    tile: int = 512, quality: int = 90, cell_params: dict | None = None,
    compression: str | None = None,
) -> SynthTruth:
    """Write a synthetic pyramidal slide plus ``<out>.points.csv`` and ``<out>.truth.json``.

    ``format``: ndpi, tiff (generic tiled TIFF, levels as SubFileType-1 IFDs), ome-tiff
    (SubIFDs), ome-zarr (NGFF 0.4) or svs. ``compression`` None uses the format's default
    (JPEG; zstd for OME-Zarr); 'deflate' makes TIFF/OME-TIFF lossless. ``write_mpp=False``
    stores no pixel size. NDPI sizes must be multiples of 8 px.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    shape = _shape(size)
    level_shapes(format, shape)  # fail fast on sizes the format cannot store
    scene = Scene(shape, seed, look, mpp, cell_density_per_mm2, tissue, tissue_fraction, cell_params)
    path = _output_path(out, format)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = write_pyramid(path, format, shape, scene.render, mpp if write_mpp else None,
                           _objective_for(mpp), tile=tile, quality=quality, compression=compression)
    points_path = path.with_name(path.name + ".points.csv")
    _write_points(points_path, scene.cells.xy)
    t = scene.tissue
    truth = SynthTruth(path=path, points_path=points_path, n_cells=int(len(scene.cells.xy)),
                       tissue_area_mm2=float(scene.area_mm2), mpp=float(mpp), shape=shape, look=look,
                       seed=int(seed), tissue_center_yx=(float(t.cy), float(t.cx)),
                       tissue_radius_px=float(t.r0) if tissue == "disk" else None,
                       tissue=tissue, tissue_fraction=float(tissue_fraction))
    meta = truth.to_json() | {"format": format, "cell_density_per_mm2": cell_density_per_mm2,
                              "write_mpp": write_mpp, "levels": [list(s) for s in shapes],
                              "cell_params": scene.p}
    path.with_name(path.name + ".truth.json").write_text(json.dumps(meta, indent=2) + "\n")
    return truth


def _write_points(path: Path, xy: np.ndarray) -> None:
    """CSV with header x,y (level-0 pixels, pixel centres at integers)."""
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["x", "y"])
        wr.writerows((f"{x:.3f}", f"{y:.3f}") for x, y in xy)
