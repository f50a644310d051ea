"""Time-lapse stacks read lazily as a Dask-backed ``xarray.DataArray`` with dims (t, z, c, y, x).

Invariants of an open :class:`Stack`:

* ``data`` has dims ``('t', 'z', 'c', 'y', 'x')`` in the file's dtype, one Dask chunk per
  (frame, focal plane); nothing is decoded until a frame is read.
* coordinate ``t`` is the time of each frame in hours (NaN where nothing gives a time),
  coordinate ``frame`` its index; ``time_source`` says where the times came from
  ('ome', 'imagej', 'ngff', 'csv', 'exif', 'filename', 'interval' or 'none').
* :meth:`Stack.read_frame` raises :class:`~wsicount.errors.FrameReadError` naming the frame
  (and its file) when a frame cannot be decoded; the other frames stay readable.

Readers: multi-page TIFF and OME-TIFF (tifffile; T, Z, C from the OME or ImageJ metadata,
every page a frame otherwise), OME-Zarr with a ``t`` axis (zarr) and folders of frames
(:mod:`wsicount.timelapse.frames`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsicount.errors import FrameReadError, InputError, SlideFormatError

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["Stack", "open_stack", "is_stack", "to_hours", "STACK_SUFFIXES"]

#: file suffixes read as stacks (folders of frames and OME-Zarr folders are recognised by content)
STACK_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
_HOURS_PER = {"h": 1.0, "hr": 1.0, "hour": 1.0, "hours": 1.0, "min": 1 / 60, "m": 1 / 60, "minute": 1 / 60,
              "minutes": 1 / 60, "s": 1 / 3600, "sec": 1 / 3600, "second": 1 / 3600, "seconds": 1 / 3600,
              "ms": 1 / 3.6e6, "millisecond": 1 / 3.6e6, "d": 24.0, "day": 24.0, "days": 24.0}
_AXIS = {"T": "t", "I": "t", "Q": "t", "Z": "z", "C": "c", "S": "c", "Y": "y", "X": "x"}


def to_hours(value: float, unit: str | None) -> float:
    """``value`` in ``unit`` (s, min, h, d, ms; OME and NGFF spellings) as hours; no unit = seconds."""
    u = (unit or "s").strip().lower()
    if u not in _HOURS_PER:
        raise InputError(f"unknown time unit {unit!r} (use s, min, h or d)")
    return float(value) * _HOURS_PER[u]


@dataclass(eq=False)
class Stack:
    """An open time-lapse stack (see the module docstring for the invariants)."""

    data: "xr.DataArray"
    path: Path
    kind: str
    mpp: float | None
    time_source: str
    frame_names: list[str]
    plane_names: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        """Number of time points."""
        return int(self.data.sizes["t"])

    @property
    def times_h(self) -> np.ndarray:
        """Time of each frame in hours (NaN where unknown)."""
        return np.asarray(self.data.coords["t"].values, dtype=np.float64)

    def read_frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as a (z, c, y, x) array; FrameReadError names the frame when it cannot be decoded."""
        try:
            return np.asarray(self.data.isel(t=t).data.compute(scheduler="synchronous"))
        except FrameReadError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure of this frame
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FrameReadError(f"frame {t} ({self.frame_names[t]}) of {self.path.name} cannot be decoded: {first}",
                                 frame=t) from e


def is_stack(path: str | Path) -> bool:
    """True when ``path`` is a folder of frames, or a TIFF / OME-Zarr with more than one time point."""
    from .frames import is_frames_dir

    p = Path(path)
    if p.is_dir():
        return is_frames_dir(p) or (_is_zarr(p) and _zarr_sizes(p).get("t", 1) > 1)
    if p.suffix.lower() in (".tif", ".tiff") and p.is_file():
        try:
            import tifffile

            with tifffile.TiffFile(p) as tf:
                return _tiff_layout(tf)[1].get("t", 1) > 1
        except Exception:  # noqa: BLE001 - not a readable TIFF: not a stack either
            return False
    return False


def open_stack(path: str | Path, mpp: float | None = None, frame_interval_min: float | None = None,
               times_csv: str | Path | None = None) -> Stack:
    """Open a stack file or folder lazily; ``mpp`` overrides the file's pixel size."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir() and _is_zarr(p):
        st = _open_zarr(p, frame_interval_min)
    elif p.is_dir():
        from .frames import open_frames

        st = open_frames(p, frame_interval_min=frame_interval_min, times_csv=times_csv)
    elif p.suffix.lower() in (".tif", ".tiff"):
        st = _open_tiff(p, frame_interval_min)
    else:
        raise SlideFormatError(f"{p.name}: not a stack (a multi-page TIFF/OME-TIFF, an OME-Zarr or a folder of frames)")
    if mpp is not None:
        st.mpp = float(mpp)
    return st


def labelled(arr, times_h: np.ndarray, channel_names: list[str] | None = None) -> "xr.DataArray":
    """Wrap a (t, z, c, y, x) dask array as the stack's DataArray with its time coordinate."""
    import xarray as xr

    t, _, c, _, _ = arr.shape
    coords = {"t": ("t", np.asarray(times_h, dtype=np.float64)), "frame": ("t", np.arange(t))}
    if channel_names and len(channel_names) == c:
        coords["c"] = ("c", list(channel_names))
    return xr.DataArray(arr, dims=("t", "z", "c", "y", "x"), coords=coords, attrs={"time_unit": "h"})


def interval_times(n: int, frame_interval_min: float | None) -> tuple[np.ndarray, str]:
    """Times from a fixed interval, or NaN (source 'none') without one."""
    if frame_interval_min is None:
        return np.full(n, np.nan), "none"
    if frame_interval_min <= 0:
        raise InputError("--frame-interval must be positive (minutes)")
    return np.arange(n) * frame_interval_min / 60.0, "interval"


# --- TIFF / OME-TIFF ------------------------------------------------------------------------


def _tiff_layout(tf) -> tuple[object, dict[str, int], list[str]]:
    """(series, sizes by stack axis, stack axis per series axis) of a TIFF's first series."""
    s = tf.series[0]
    names: list[str] = []
    for a in s.axes:
        n = _AXIS.get(a)
        if n is None or n in names:  # an extra axis: one more time-like axis is folded into t below
            n = "t" if "t" not in names else "extra"
        names.append(n)
    sizes: dict[str, int] = {}
    for n, k in zip(names, s.shape, strict=True):
        sizes[n] = sizes.get(n, 1) * int(k)
    return s, sizes, names


def _open_tiff(p: Path, frame_interval_min: float | None) -> Stack:
    """Multi-page TIFF / OME-TIFF through tifffile's Zarr view, one chunk per plane."""
    import dask.array as da
    import tifffile
    import zarr

    try:
        tf = tifffile.TiffFile(p)
        s, sizes, names = _tiff_layout(tf)
        z = zarr.open(s.aszarr(level=0 if len(s.levels) > 1 else None), mode="r")  # a pyramid: its full level
    except Exception as e:  # noqa: BLE001 - unreadable header or layout
        raise SlideFormatError(f"{p.name}: not a readable TIFF stack ({e})") from e
    if "extra" in names:
        raise SlideFormatError(f"{p.name}: unsupported TIFF axes {s.axes!r} (expected T, Z, C, Y, X, S)")
    arr = da.from_zarr(z, chunks=tuple(1 if n in "tz" else -1 for n in names))
    for n in ("t", "z", "c"):
        if n not in names:
            arr, names = arr[..., None], [*names, n]
    arr = arr.transpose([names.index(n) for n in ("t", "z", "c", "y", "x")])
    times, source = _tiff_times(tf, arr.shape[0], frame_interval_min)
    ome = _ome_pixels(tf)
    chans = [c.get("Name", "") for c in _as_list(ome.get("Channel"))] if ome else None
    kind = "ome-tiff" if tf.is_ome else "tiff"
    return Stack(labelled(arr, times, chans if chans and all(chans) else None), p, kind, _tiff_mpp(tf, ome),
                 source, [f"t={i}" for i in range(arr.shape[0])], [f"z={i}" for i in range(arr.shape[1])])


def _as_list(v) -> list:
    """An OME element that may be one dict or a list of them, as a list."""
    return [] if v is None else (v if isinstance(v, list) else [v])


def _ome_pixels(tf) -> dict:
    """The first image's OME Pixels element as a dict (empty when not OME)."""
    import tifffile

    if not tf.is_ome or not tf.ome_metadata:
        return {}
    img = _as_list(tifffile.xml2dict(tf.ome_metadata).get("OME", {}).get("Image"))
    return img[0].get("Pixels", {}) if img else {}


def _tiff_times(tf, n: int, frame_interval_min: float | None) -> tuple[np.ndarray, str]:
    """Per-frame hours from OME Plane DeltaT / TimeIncrement or ImageJ finterval, else the interval."""
    px = _ome_pixels(tf)
    planes = [pl for pl in _as_list(px.get("Plane")) if "DeltaT" in pl]
    if planes:
        t = np.full(n, np.nan)
        for pl in planes:
            i = int(pl.get("TheT", 0))
            if i < n and np.isnan(t[i]):
                t[i] = to_hours(pl["DeltaT"], pl.get("DeltaTUnit", "s"))
        if np.isfinite(t).all():
            return t, "ome"
    if "TimeIncrement" in px:
        return np.arange(n) * to_hours(px["TimeIncrement"], px.get("TimeIncrementUnit", "s")), "ome"
    ij = tf.imagej_metadata or {}
    if ij.get("finterval"):
        return np.arange(n) * to_hours(ij["finterval"], ij.get("tunit", "s")), "imagej"
    return interval_times(n, frame_interval_min)


def _tiff_mpp(tf, ome: dict) -> float | None:
    """Pixel size in µm from OME PhysicalSizeX, else the resolution tags (cm or inch units)."""
    from wsicount.io._tiff import plausible_mpp

    if "PhysicalSizeX" in ome:
        unit = str(ome.get("PhysicalSizeXUnit", "µm"))
        scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
        return plausible_mpp(float(ome["PhysicalSizeX"]) * scale) if scale else None
    page = tf.pages[0]
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    ij_unit = str((tf.imagej_metadata or {}).get("unit", "")).lower()
    unit_code = int(unit.value) if unit is not None else 1
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit_code)
    if unit_code == 1 and ij_unit in ("um", "micron", "µm"):  # ImageJ: pixels per micron
        per_unit_um = 1.0
    if res is None or per_unit_um is None or not res.value[0]:
        return None
    num, den = res.value
    return plausible_mpp(per_unit_um * den / num)


# --- OME-Zarr ------------------------------------------------------------------------------


def _is_zarr(p: Path) -> bool:
    """A Zarr v2 or v3 group folder."""
    return (p / ".zgroup").exists() or (p / "zarr.json").exists()


def _multiscale(p: Path) -> tuple[object, dict]:
    """(root group, first multiscales entry) of an OME-Zarr folder."""
    import zarr

    root = zarr.open_group(str(p), mode="r")
    attrs = dict(root.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        raise SlideFormatError(f"{p.name}: a Zarr group without OME-NGFF multiscales metadata")
    return root, ms[0]


def _zarr_sizes(p: Path) -> dict[str, int]:
    """Axis sizes of an OME-Zarr's full-resolution array."""
    try:
        root, ms = _multiscale(p)
    except Exception:  # noqa: BLE001 - not an OME-Zarr: no axes
        return {}
    a = root[ms["datasets"][0]["path"]]
    return {ax["name"] if isinstance(ax, dict) else ax: int(k) for ax, k in zip(ms["axes"], a.shape, strict=True)}


def _open_zarr(p: Path, frame_interval_min: float | None) -> Stack:
    """OME-Zarr (NGFF 0.4/0.5) full-resolution array with any of the axes t, c, z, y, x."""
    import dask.array as da

    root, ms = _multiscale(p)
    d0 = ms["datasets"][0]
    a = root[d0["path"]]
    axes = [ax["name"] if isinstance(ax, dict) else ax for ax in ms["axes"]]
    units = [ax.get("unit") if isinstance(ax, dict) else None for ax in ms["axes"]]
    if not {"y", "x"} <= set(axes) or not set(axes) <= {"t", "z", "c", "y", "x"}:
        raise SlideFormatError(f"{p.name}: unsupported OME-Zarr axes {axes}")
    arr = da.from_zarr(a, chunks=tuple(1 if n in "tz" else -1 for n in axes))
    names = list(axes)
    for n in ("t", "z", "c"):
        if n not in names:
            arr, names = arr[..., None], [*names, n]
    arr = arr.transpose([names.index(n) for n in ("t", "z", "c", "y", "x")])
    scale = np.ones(len(axes))
    for tr in d0.get("coordinateTransformations", []):
        if tr.get("type") == "scale":
            scale = scale * np.asarray(tr["scale"], dtype=float)
    exact = dict(root.attrs).get("wsicount", {}).get("times_h")  # exact times written beside NGFF's one scale
    if exact is not None and len(exact) == arr.shape[0]:
        times, source = np.asarray(exact, dtype=np.float64), "ngff"
    elif "t" in axes and units[axes.index("t")]:
        times, source = np.arange(arr.shape[0]) * to_hours(scale[axes.index("t")], units[axes.index("t")]), "ngff"
    else:
        times, source = interval_times(arr.shape[0], frame_interval_min)
    mpp = None
    xu = units[axes.index("x")]
    if xu in ("micrometer", "µm", "um"):
        mpp = float(scale[axes.index("x")])
    omero = dict(root.attrs).get("omero", {})
    chans = [c.get("label", "") for c in omero.get("channels", [])]
    return Stack(labelled(arr, times, chans if chans and all(chans) else None), p, "ome-zarr", mpp, source,
                 [f"t={i}" for i in range(arr.shape[0])], [f"z={i}" for i in range(arr.shape[1])])
