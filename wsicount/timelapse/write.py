"""Writers of (t, z, c, y, x) stacks in the formats :func:`wsicount.timelapse.open_stack` reads.

Multi-page TIFF (ImageJ hyperstack with ``finterval``) and OME-TIFF (``Plane DeltaT`` per plane,
``PhysicalSizeX``) through tifffile; OME-Zarr (NGFF 0.4, time axis in hours) through zarr;
folders of frames (one JPEG/PNG per frame, a subfolder per focal plane when there are several,
the time in each file name and in ``times.csv``) through Pillow.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["write_tiff_stack", "write_pyramid_series", "create_ome_zarr", "write_ome_zarr", "write_frames",
           "STACK_FORMATS"]

#: stack formats the writers produce
STACK_FORMATS = ("ome-tiff", "tiff", "ome-zarr", "frames")


def _check(arr: np.ndarray, times_h: np.ndarray) -> np.ndarray:
    """Validate a (t, z, c, y, x) array against its times."""
    a = np.asarray(arr)
    if a.ndim != 5:
        raise ValueError(f"stack must be (t, z, c, y, x), got shape {a.shape}")
    if len(times_h) != a.shape[0]:
        raise ValueError(f"{a.shape[0]} frames but {len(times_h)} times")
    return a


def write_tiff_stack(path: str | Path, arr: np.ndarray, times_h: np.ndarray, mpp: float | None = None,
                     ome: bool = True, compression: str | None = "zlib") -> Path:
    """Write an OME-TIFF (times per plane) or an ImageJ multi-page TIFF (uniform ``finterval``)."""
    import tifffile

    a = _check(arr, times_h)
    t, z, c = a.shape[:3]
    p = Path(path)
    if ome:
        dt = np.repeat(np.asarray(times_h, dtype=float) * 3600.0, z * c)
        md = {"axes": "TZCYX", "Plane": {"DeltaT": dt.tolist(), "DeltaTUnit": ["s"] * dt.size}}
        if mpp:
            md.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
        tifffile.imwrite(p, a, ome=True, metadata=md, compression=compression)
        return p
    step = float(np.median(np.diff(times_h))) * 3600.0 if t > 1 else 0.0
    md = {"axes": "TZCYX", "finterval": step, "unit": "um"}
    res = {"resolution": (1.0 / mpp, 1.0 / mpp)} if mpp else {}
    tifffile.imwrite(p, a, imagej=True, metadata=md, compression=compression, **res)
    return p


def write_pyramid_series(path: str | Path, frames: np.ndarray, times_h: np.ndarray, mpp: float, levels: int = 3,
                         tile: int = 256, compression: str | None = "zlib") -> Path:
    """Write (t, y, x, 3) uint8 RGB frames as a pyramidal OME-TIFF time series: one tiled pyramid per time point.

    Level k is level 0 subsampled by 2**k (SubIFDs, as OME-TIFF pyramids store them); times per
    plane (``DeltaT``) and the level-0 pixel size in the OME metadata.
    """
    import tifffile

    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"frames must be (t, y, x, 3) uint8, got {a.dtype} {a.shape}")
    if len(times_h) != a.shape[0]:
        raise ValueError(f"{a.shape[0]} frames but {len(times_h)} times")
    md = {"axes": "TYXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm",
          "PhysicalSizeYUnit": "µm", "Plane": {"DeltaT": [float(v) * 3600.0 for v in times_h],
                                               "DeltaTUnit": ["s"] * len(times_h)}}
    opts = {"tile": (tile, tile), "photometric": "rgb", "compression": compression}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(a, subifds=levels - 1, metadata=md, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
                 **opts)
        for k in range(1, levels):
            f = 2**k
            tw.write(a[:, ::f, ::f], subfiletype=1, metadata=None, resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)),
                     resolutionunit="CENTIMETER", **opts)
    return Path(path)


def create_ome_zarr(path: str | Path, shape: tuple[int, ...], dtype: str, times_h: np.ndarray | None = None,
                    mpp: float | None = None, axes: str = "tzcyx", chunks: tuple[int, ...] | None = None) -> object:
    """Create an empty single-scale OME-Zarr (NGFF 0.4) with the given axes; returns its array.

    The time axis is in hours with the median frame interval as its scale (NGFF allows one
    scale per axis; the exact times go to the ``wsicount.times_h`` attribute); ``mpp`` gives
    the y/x scale in micrometres.
    """
    import zarr

    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} does not match axes {axes!r}")
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    kinds = {"t": ("time", "hour"), "c": ("channel", None), "z": ("space", None), "y": ("space", "micrometer"),
             "x": ("space", "micrometer")}
    axis_md, scale = [], []
    for n in axes:
        kind, unit = kinds[n]
        entry = {"name": n, "type": kind}
        if unit and (n != "t" or times_h is not None) and (n not in "yx" or mpp):
            entry["unit"] = unit
        axis_md.append(entry)
        if n == "t" and times_h is not None and len(times_h) > 1:
            scale.append(float(np.median(np.diff(times_h))))
        elif n in "yx" and mpp:
            scale.append(float(mpp))
        else:
            scale.append(1.0)
    ch = chunks or tuple(1 if n in "tzc" else k for n, k in zip(axes, shape, strict=True))
    z = root.create_array("0", shape=tuple(shape), chunks=ch, dtype=dtype, fill_value=0)
    root.attrs["multiscales"] = [{"version": "0.4", "name": Path(path).stem, "axes": axis_md,
                                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
    if times_h is not None:
        root.attrs["wsicount"] = {"times_h": [float(v) for v in times_h]}
    return z


def write_ome_zarr(path: str | Path, arr: np.ndarray, times_h: np.ndarray | None = None, mpp: float | None = None,
                   axes: str = "tzcyx") -> Path:
    """Write an array as a single-scale OME-Zarr (see :func:`create_ome_zarr`)."""
    a = np.asarray(arr)
    z = create_ome_zarr(path, a.shape, str(a.dtype), times_h, mpp, axes)
    z[...] = a
    return Path(path)


def write_frames(folder: str | Path, arr: np.ndarray, times_h: np.ndarray, fmt: str = "jpg", quality: int = 90,
                 prefix: str = "frame", plane_names: list[str] | None = None, times_csv: bool = True) -> Path:
    """Write one image per frame (and focal plane), times in the names (``_012.50h``) and in times.csv."""
    from PIL import Image

    a = _check(arr, times_h)
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    t, z = a.shape[:2]
    planes = plane_names or ([""] if z == 1 else [f"F{k}" for k in range(z)])
    if len(planes) != z:
        raise ValueError(f"{z} planes but {len(planes)} plane names")
    names = [f"{prefix}_{i:04d}_{times_h[i]:07.3f}h.{fmt}" for i in range(t)]
    for k, plane in enumerate(planes):
        pd = d / plane if plane else d
        pd.mkdir(exist_ok=True)
        for i in range(t):
            img = a[i, k]
            im = Image.fromarray(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1))
            opts = {"quality": quality} if fmt in ("jpg", "jpeg") else {}
            im.save(pd / names[i], **opts)
    if times_csv:
        with open(d / "times.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "time_h"])
            w.writerows([n, f"{times_h[i]:.6f}"] for i, n in enumerate(names))
    return d
