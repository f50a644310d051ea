"""Folders of frames: one image per time point, optionally one subfolder per focal plane.

Layouts: ``DIR/<frame>.jpg`` (one plane) or ``DIR/<plane>/<frame>.jpg`` (one subfolder per focal
plane, e.g. EmbryoScope's ``F-15``, ``F0``, ``F15``; planes ordered by the signed number in their
name, frames matched across planes by sort order). Frames sort naturally (``f2`` before ``f10``).

Times, first found: a CSV (``times_csv``, else ``DIR/times.csv``) with a ``file`` or ``frame``
column and one of ``time_h``, ``time_min``, ``time_s``; TIFF frames' OME ``DeltaT``; EXIF
``DateTimeOriginal`` (hours since the first frame); a time in every file name (``12.5h``,
``750min``, ``45000s``); ``frame_interval_min``; else NaN.
"""

from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path

import numpy as np

from wsicount.errors import FrameReadError, InputError, SlideFormatError

from .stack import Stack, interval_times, labelled, to_hours

__all__ = ["IMAGE_SUFFIXES", "is_frames_dir", "open_frames", "natural_key"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_NAME_TIME = re.compile(r"(?<![a-z0-9.])[a-z]*?(\d+(?:\.\d+)?)\s*(h|hr|min|s)(?![a-z])", re.IGNORECASE)


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as (signed) numbers: F-15 < F0 < F15, f2 < f10."""
    parts = re.split(r"(-?\d+(?:\.\d+)?)", name)
    return tuple((0, float(p)) if i % 2 else (1, p.lower()) for i, p in enumerate(parts) if p)


def _images(d: Path) -> list[Path]:
    """Image files directly in ``d``, naturally sorted (hidden files skipped)."""
    return sorted((f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                   and not f.name.startswith(".")), key=lambda f: natural_key(f.name))


def _layout(d: Path) -> tuple[list[str], list[list[Path]]]:
    """(plane names, files per plane) of a frames folder; [] when it holds no frames."""
    top = _images(d)
    if top:
        return [""], [top]
    subs = sorted((s for s in d.iterdir() if s.is_dir() and not s.name.startswith(".")), key=lambda s: natural_key(s.name))
    planes = [(s.name, _images(s)) for s in subs]
    planes = [(n, f) for n, f in planes if f]
    return [n for n, _ in planes], [f for _, f in planes]


def is_frames_dir(d: Path) -> bool:
    """A folder (not a Zarr store) holding image frames, directly or in plane subfolders."""
    if not d.is_dir() or (d / ".zgroup").exists() or (d / "zarr.json").exists():
        return False
    return bool(_layout(d)[1])


def _decode(f: Path, mode: str | None = None) -> np.ndarray:
    """One frame as (c, y, x); ``mode`` converts Pillow images to the stack's mode."""
    if f.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        a = tifffile.imread(f)
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = np.moveaxis(a[..., :3], -1, 0)
        return a[None] if a.ndim == 2 else a
    from PIL import Image

    with Image.open(f) as im:
        im.load()
        if mode and im.mode != mode:
            im = im.convert(mode)
        elif im.mode not in ("L", "RGB", "I;16", "I", "F"):
            im = im.convert("RGB")
        a = np.asarray(im)
    return a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)


def _probe(planes: list[list[Path]]) -> tuple[tuple[int, int, int], np.dtype, str | None]:
    """(c, y, x) shape, dtype and Pillow mode of the first decodable frame."""
    from PIL import Image

    for f in planes[0]:
        try:
            a = _decode(f)
        except Exception:  # noqa: BLE001 - a corrupt frame: try the next one
            continue
        mode = None
        if f.suffix.lower() not in (".tif", ".tiff"):
            with Image.open(f) as im:
                mode = "RGB" if a.shape[0] == 3 else im.mode
        return a.shape, a.dtype, mode
    raise SlideFormatError(f"{planes[0][0].parent.name}: none of the {len(planes[0])} frames can be decoded")


def open_frames(d: Path, frame_interval_min: float | None = None, times_csv: str | Path | None = None) -> Stack:
    """A folder of frames as a lazy (t, z, c, y, x) stack, one Dask chunk per file."""
    import dask
    import dask.array as da

    plane_names, planes = _layout(d)
    if not planes:
        raise InputError(f"{d}: no image frames ({', '.join(IMAGE_SUFFIXES)}) in the folder or its subfolders")
    counts = {n or ".": len(f) for n, f in zip(plane_names, planes, strict=True)}
    if len(set(counts.values())) > 1:
        raise InputError(f"{d.name}: focal-plane folders hold different numbers of frames: {counts}")
    shape, dtype, mode = _probe(planes)
    names = [f.name if not plane_names[0] else f"{plane_names[0]}/{f.name}" for f in planes[0]]

    def read(f: Path, t: int) -> np.ndarray:
        try:
            a = _decode(f, mode)
        except Exception as e:  # noqa: BLE001 - any decoder failure names its file
            raise FrameReadError(f"frame {t} ({f.name}) of {d.name} cannot be decoded: {e}", frame=t) from e
        if a.shape != shape:
            raise FrameReadError(f"frame {t} ({f.name}) of {d.name} is {a.shape[1]}x{a.shape[2]}x{a.shape[0]}, "
                                 f"the others {shape[1]}x{shape[2]}x{shape[0]}", frame=t)
        return a.astype(dtype, copy=False)

    frames = [da.stack([da.from_delayed(dask.delayed(read, pure=True)(p[t], t), shape, dtype) for p in planes])
              for t in range(len(planes[0]))]
    arr = da.stack(frames)
    times, source = _times(d, planes[0], frame_interval_min, times_csv)
    chans = ["R", "G", "B"] if shape[0] == 3 else None
    return Stack(labelled(arr, times, chans), d, "frames", None, source, names, [n or "z=0" for n in plane_names])


def _times(d: Path, files: list[Path], interval: float | None, times_csv: str | Path | None) -> tuple[np.ndarray, str]:
    """Per-frame hours and their source, by the precedence of the module docstring."""
    csv_path = Path(times_csv) if times_csv else d / "times.csv"
    if csv_path.exists():
        return _csv_times(csv_path, files), "csv"
    for source, fn in (("ome", _ome_times), ("exif", _exif_times), ("filename", _name_times)):
        t = fn(files)
        if t is not None:
            return t, source
    return interval_times(len(files), interval)


def _csv_times(path: Path, files: list[Path]) -> np.ndarray:
    """Times from a CSV keyed by file name or frame index."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    col = next((c for c in ("time_h", "time_min", "time_s") if rows and c in rows[0]), None)
    key = next((k for k in ("file", "frame") if rows and k in rows[0]), None)
    if col is None or key is None:
        raise InputError(f"{path.name}: needs a 'file' or 'frame' column and one of time_h, time_min, time_s")
    unit = {"time_h": "h", "time_min": "min", "time_s": "s"}[col]
    by = {r[key].strip(): to_hours(float(r[col]), unit) for r in rows}
    keys = [f.name for f in files] if key == "file" else [str(i) for i in range(len(files))]
    missing = [k for k in keys if k not in by]
    if missing:
        raise InputError(f"{path.name}: no time for {len(missing)} frame(s), first {missing[0]!r}")
    return np.array([by[k] for k in keys])


def _ome_times(files: list[Path]) -> np.ndarray | None:
    """OME Plane DeltaT of single-frame OME-TIFF files, when every frame has one."""
    if files[0].suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    out = []
    for f in files:
        try:
            with tifffile.TiffFile(f) as tf:
                px = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"] if tf.is_ome else {}
        except Exception:  # noqa: BLE001 - a corrupt frame has no time: fall back to other sources
            return None
        plane = px.get("Plane")
        plane = plane[0] if isinstance(plane, list) else plane
        if not plane or "DeltaT" not in plane:
            return None
        out.append(to_hours(plane["DeltaT"], plane.get("DeltaTUnit", "s")))
    return np.array(out)


def _exif_times(files: list[Path]) -> np.ndarray | None:
    """EXIF DateTimeOriginal (or DateTime) as hours since the first frame, when every frame has one."""
    from PIL import Image

    stamps = []
    for f in files:
        try:
            with Image.open(f) as im:
                ex = im.getexif()
                s = ex.get_ifd(0x8769).get(0x9003) or ex.get(0x0132)
        except Exception:  # noqa: BLE001 - unreadable header: no EXIF time
            return None
        if not s:
            return None
        try:
            stamps.append(datetime.strptime(str(s).strip(), "%Y:%m:%d %H:%M:%S"))
        except ValueError:
            return None
    t = np.array([(s - stamps[0]).total_seconds() / 3600.0 for s in stamps])
    return t if np.unique(t).size == t.size else None


def _name_times(files: list[Path]) -> np.ndarray | None:
    """A time with a unit in every file name (the last one in the name), when they are all distinct."""
    out = []
    for f in files:
        m = _NAME_TIME.findall(f.stem)
        if not m:
            return None
        value, unit = m[-1]
        out.append(to_hours(float(value), unit))
    t = np.array(out)
    return t if np.unique(t).size == t.size else None
