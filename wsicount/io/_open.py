"""Backend choice and open-time validation (existence, format, truncation, decodability).

``backend="auto"`` prefers tifffile for TIFF-based slides it decodes tile by tile (NDPI with
McuStarts, SVS, generic tiled TIFF, OME-TIFF, plain TIFF) -- it decodes JPEG several times
faster than OpenSlide's read_region -- and OpenSlide for everything else it knows (MRXS,
VMS, other vendors, NDPI levels stored as one unsegmented JPEG).
"""

from __future__ import annotations

import os
from pathlib import Path

from wsicount.errors import InputError, SlideFormatError, WsicountError
from wsicount.io._base import Backend, SlideKey
from wsicount.io._openslide import OpenSlideBackend, detect_vendor
from wsicount.io._tiff import TiffBackend, open_tiff
from wsicount.io._zarr import ZarrBackend, is_zarr_dir

__all__ = ["BACKENDS", "resolve", "open_backend", "validate"]

BACKENDS = ("auto", "openslide", "tifffile", "zarr")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TIFFFILE_VENDORS = (None, "generic-tiff", "hamamatsu", "aperio")
_MAX_UNSEGMENTED_PX = 4096 * 4096  # a level decoded whole per read beyond this is too slow


def _is_tiff(path: Path) -> bool:
    """Whether the file starts with a (Big)TIFF header."""
    with open(path, "rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


def _check_path(path: Path, backend: str) -> None:
    """InputError for missing paths and plain directories; SlideFormatError for empty files."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied (not readable)")
    if path.is_dir():
        if not is_zarr_dir(path):
            raise InputError(f"{path} is a directory, not a slide file or an OME-Zarr store")
        if backend not in ("auto", "zarr"):
            raise SlideFormatError(f"{path} is an OME-Zarr store; the {backend} backend cannot read it")
        return
    if backend == "zarr":
        raise SlideFormatError(f"{path} is a file; the zarr backend reads OME-Zarr directories")
    if path.stat().st_size == 0:
        raise SlideFormatError(f"{path} is empty (0 bytes)")


def _segmented(impl: TiffBackend) -> bool:
    """Whether every level decodes in pieces (tiles/strips), not as one huge JPEG."""
    return all(th * tw <= _MAX_UNSEGMENTED_PX for th, tw in impl.tiles)


def resolve(path: Path, backend: str = "auto", t: int = 0) -> tuple[str, Backend]:
    """(backend name, open and validated backend) for time point ``t`` of ``path``; raises WsicountError.

    A time point other than the first is read by tifffile or zarr (OpenSlide reads only the first).
    """
    _check_path(path, backend)
    p = str(path)
    if path.is_dir():
        return "zarr", _validated(ZarrBackend, path, p, t)
    if t:
        if backend not in ("auto", "tifffile") or not _is_tiff(path):
            raise InputError(f"{path}: time point {t} is read by the tifffile backend from TIFF files only")
        return "tifffile", _validated(TiffBackend, path, p, detect_vendor(p), t)
    vendor = detect_vendor(p)
    is_tiff = _is_tiff(path)
    if backend == "openslide" or (backend == "auto" and vendor is not None and
                                  (not is_tiff or vendor not in _TIFFFILE_VENDORS)):
        if is_tiff:
            _check_tiff_bounds(path)  # OpenSlide opens some truncated TIFFs and fails later
        if vendor is None:
            raise SlideFormatError(f"{path} is not a slide OpenSlide can read")
        return "openslide", _validated(OpenSlideBackend, path, p)
    if not is_tiff:
        raise SlideFormatError(f"{path} is not a supported slide (not a TIFF, NDPI, SVS, MRXS "
                               "or OME-TIFF file, nor an OME-Zarr store)")
    if backend == "tifffile":
        return "tifffile", _validated(TiffBackend, path, p, vendor)
    try:
        impl = _validated(TiffBackend, path, p, vendor)
    except SlideFormatError as exc:
        if vendor is None or "truncated" in str(exc):
            raise
        return "openslide", _validated(OpenSlideBackend, path, p)
    if vendor is not None and not _segmented(impl):
        impl.close()
        return "openslide", _validated(OpenSlideBackend, path, p)
    return "tifffile", impl


def _check_tiff_bounds(path: Path) -> None:
    """SlideFormatError if a TIFF's level data runs past the end of the file."""
    try:
        open_tiff(str(path)).close()
    except SlideFormatError:
        raise
    except Exception:  # noqa: BLE001 - TIFF dialects tifffile cannot parse are OpenSlide's call
        return


def _validated(cls: type[Backend], path: Path, *args) -> Backend:
    """Open a backend, then prove it can decode pixels of the smallest level."""
    try:
        impl = cls(*args)
    except WsicountError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure means "not readable"
        raise SlideFormatError(_one_line(f"{path} is not a supported slide or is corrupt: {exc}")) from exc
    try:
        validate(impl, path)
    except Exception:
        impl.close()
        raise
    return impl


def validate(impl: Backend, path: Path) -> None:
    """Decode a window of the smallest level and derive the intensity map from it."""
    k = len(impl.shapes) - 1
    h, w = impl.shapes[k]
    if h < 1 or w < 1 or impl.channels < 1:
        raise SlideFormatError(f"{path} has an empty image (level {k} is {h}x{w})")
    try:
        impl.read(k, 0, 0, min(h, 512), min(w, 512))
        impl.prepare_intensity()
    except Exception as exc:  # noqa: BLE001 - decoder errors of any library
        raise SlideFormatError(_one_line(f"{path} is corrupt: cannot decode level {k} ({exc})")) from exc


def open_backend(key: SlideKey) -> Backend:
    """Reopen a backend for a key in another process (already validated once)."""
    if key.backend == "zarr":
        impl: Backend = ZarrBackend(key.path, key.t)
    elif key.backend == "openslide":
        impl = OpenSlideBackend(key.path)
    else:
        impl = TiffBackend(key.path, detect_vendor(key.path), key.t)
    impl.prepare_intensity()
    return impl


def _one_line(msg: str) -> str:
    """Collapse whitespace so a message prints as one line."""
    return " ".join(msg.split())
