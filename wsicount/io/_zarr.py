"""OME-Zarr (NGFF multiscales, v0.1-0.5, Zarr v2 or v3) backend.

Axes may be any NGFF order (c,y,x / t,c,z,y,x / y,x / ...): the first time point and
focal plane are taken (their sizes go to the properties ``wsicount.t_size``/``z_size`` so a
time-lapse reader can be added without changing the geometry), channels become the last
axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsicount.errors import InputError, SlideFormatError
from wsicount.io._base import Backend, IntensityMap
from wsicount.io._tiff import plausible_mpp

if TYPE_CHECKING:
    import zarr

__all__ = ["ZarrBackend", "is_zarr_dir"]

_UM_PER_UNIT = {"micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3,
                "nm": 1e-3, "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "meter": 1e6,
                "angstrom": 1e-4, "picometer": 1e-6}


def is_zarr_dir(path: Path) -> bool:
    """Whether a directory is a Zarr v2 or v3 store root."""
    return any((path / n).is_file() for n in ("zarr.json", ".zgroup", ".zattrs", ".zarray"))


def _multiscales(group: zarr.Group, path: str) -> tuple[zarr.Group, dict]:
    """(image group, its first multiscales entry); follows a bioformats2raw layout."""
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms and ("bioformats2raw.layout" in attrs or "bioformats2raw.layout" in attrs.get("ome", {})):
        group = group["0"]
        attrs = dict(group.attrs)
        ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        raise SlideFormatError(f"{path} is a Zarr store without OME-NGFF multiscales metadata")
    return group, ms[0]


def _axes(ms: dict, ndim: int, path: str) -> tuple[list[str], list[str | None]]:
    """Axis names and units; NGFF < 0.3 has no axes and means t,c,z,y,x."""
    raw = ms.get("axes") or ["t", "c", "z", "y", "x"][-ndim:]
    names = [a["name"] if isinstance(a, dict) else str(a) for a in raw]
    units = [a.get("unit") if isinstance(a, dict) else None for a in raw]
    if len(names) != ndim or "y" not in names or "x" not in names:
        raise SlideFormatError(f"{path}: unsupported NGFF axes {names} for {ndim}-D arrays")
    return [n.lower() for n in names], units


def _scale(transforms: list[dict] | None, ndim: int) -> np.ndarray:
    """Product of the 'scale' transformations (identity if none)."""
    s = np.ones(ndim)
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            s = s * np.asarray(t["scale"], dtype=float)
    return s


class ZarrBackend(Backend):
    """Reads OME-Zarr multiscale images with zarr-python."""

    name = "zarr"
    vendor = "ome-zarr"

    def __init__(self, path: str, t: int = 0) -> None:
        """Open time point ``t`` of the multiscale image at ``path`` (a directory)."""
        import zarr  # here: an import that only Zarr slides need

        root = zarr.open_group(path, mode="r")
        self._group, ms = _multiscales(root, path)
        paths = [d["path"] for d in ms["datasets"]]
        self._arrays = [self._group[p] for p in paths]
        ndim = self._arrays[0].ndim
        self.axes, units = _axes(ms, ndim, path)
        self._yi, self._xi = self.axes.index("y"), self.axes.index("x")
        self._ci = self.axes.index("c") if "c" in self.axes else None
        self.shapes = [(int(a.shape[self._yi]), int(a.shape[self._xi])) for a in self._arrays]
        self.tiles = [(int(a.chunks[self._yi]), int(a.chunks[self._xi])) for a in self._arrays]
        self.channels = int(self._arrays[0].shape[self._ci]) if self._ci is not None else 1
        sizes = dict(zip(self.axes, self._arrays[0].shape, strict=True))
        if not 0 <= t < sizes.get("t", 1):
            raise InputError(f"time point {t} does not exist: the image has {sizes.get('t', 1)}")
        self._t = t
        attrs = dict(self._group.attrs)
        self._omero = attrs.get("omero") or attrs.get("ome", {}).get("omero") or {}
        self.channel_names = self._names()
        self.properties = {"wsicount.backend": "zarr", "wsicount.t_size": str(sizes.get("t", 1)),
                           "wsicount.z_size": str(sizes.get("z", 1)), "wsicount.t_index": str(t),
                           "ngff.version": str(ms.get("version", "")), "ngff.axes": ",".join(self.axes),
                           "ngff.dtype": str(self._arrays[0].dtype)}
        self.mpp_xy = self._pixel_size(ms, units, ndim)
        self.objective_power = None
        self.intensity = IntensityMap()

    def _names(self) -> list[str]:
        """Channel labels from omero metadata, else R/G/B or c0.."""
        labels = [c.get("label") for c in self._omero.get("channels", [])]
        if len(labels) == self.channels and all(labels):
            return [str(x) for x in labels]
        return ["R", "G", "B"] if self.channels == 3 else [f"c{i}" for i in range(self.channels)]

    def _pixel_size(self, ms: dict, units: list[str | None], ndim: int) -> tuple[float, float] | None:
        """Level-0 (x, y) scale in um; unitless all-1 scales are placeholders, not a size."""
        d0 = ms["datasets"][0]
        s = _scale(d0.get("coordinateTransformations"), ndim)
        s = s * _scale(ms.get("coordinateTransformations"), ndim)  # optional global transform
        sx, sy = float(s[self._xi]), float(s[self._yi])
        ux, uy = units[self._xi], units[self._yi]
        if ux is None and uy is None:
            if sx == 1.0 and sy == 1.0:
                return None
            ux = uy = "micrometer"  # NGFF's customary unit when a writer omits it
        fx, fy = _UM_PER_UNIT.get(str(ux).lower()), _UM_PER_UNIT.get(str(uy or ux).lower())
        mx = plausible_mpp(sx * fx) if fx else None
        my = plausible_mpp(sy * fy) if fy else None
        return (mx, my or mx) if mx else None

    def prepare_intensity(self) -> None:
        """Non-uint8 data: omero display windows, else per-channel max of the smallest level."""
        if self._arrays[0].dtype == np.uint8:
            return
        windows = []
        for c in self._omero.get("channels", []):
            w = c.get("window") or {}
            if "start" in w and "end" in w:
                windows.append((float(w["start"]), float(w["end"])))
        k = len(self.shapes) - 1
        h, w = self.shapes[k]
        sample = self._read_raw(k, 0, 0, min(h, 2048), min(w, 2048))
        self.intensity = IntensityMap.from_sample(sample, windows if len(windows) == self.channels else None)
        self.properties["wsicount.intensity_map"] = self.intensity.describe()

    def read(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """(h, w, c) uint8 window inside the level."""
        return self.intensity.apply(self._read_raw(level, y0, x0, h, w))

    def _read_raw(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """(h, w, c) window in the store's dtype (the backend's time point; z = 0)."""
        index: list[int | slice] = []
        kept: list[str] = []
        for name in self.axes:
            if name == "y":
                index.append(slice(y0, y0 + h))
            elif name == "x":
                index.append(slice(x0, x0 + w))
            elif name == "c":
                index.append(slice(None))
            elif name == "t":
                index.append(self._t)
                continue
            else:  # t, z and any other non-spatial axis: first index
                index.append(0)
                continue
            kept.append(name)
        a = np.asarray(self._arrays[level][tuple(index)])
        if "c" not in kept:
            a, kept = a[..., None], [*kept, "c"]
        return np.ascontiguousarray(np.transpose(a, [kept.index(n) for n in ("y", "x", "c")]))

    def close(self) -> None:
        """Nothing to release (zarr reads open files per chunk)."""
