"""Write Hamamatsu NDPI files that both OpenSlide and tifffile read, one band at a time.

Layout (little-endian classic TIFF in NanoZoomer's 64-bit-offset dialect, all high words
zero): an 8-byte header followed by 8 zero bytes (NDPI readers take the first-IFD offset as
64-bit), then per level an IFD block (entries, 64-bit next-IFD offset, the NDPI block of
per-tag high offset words, out-of-line values) followed by the level's single-strip JPEG.
libtiff reads the low words and ignores the rest, so OpenSlide and tifffile (which applies
the NDPI conventions to files named ``.ndpi``) see the same file.

Each level is one baseline 4:4:4 JPEG with restart markers every ``interval`` MCUs, where
``interval`` divides the MCUs of a row so that every restart segment is a rectangle of
(8 * interval) x 8 px: OpenSlide and tifffile decode those segments as tiles (their offsets
are listed in the McuStarts tag 65426). The JPEG is encoded band by band (bands a multiple
of 8 rows), and the entropy-coded segments of all bands are concatenated with renumbered
RST markers under the first band's header, so a level is never held whole in memory.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import struct
from fractions import Fraction
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_ndpi", "restart_interval", "MAX_TILE_WIDTH"]

# NDPI private tags (as read by OpenSlide's hamamatsu driver and tifffile)
_FORMAT_FLAG, _SOURCE_LENS, _X_OFFSET, _Y_OFFSET, _FOCAL_PLANE, _MCU_STARTS = (
    65420, 65421, 65422, 65423, 65424, 65426,
)
_SHORT, _LONG, _RATIONAL, _ASCII, _SLONG, _FLOAT = 3, 4, 5, 2, 9, 11
_TYPE_FMT = {_SHORT: "H", _LONG: "I", _SLONG: "i", _FLOAT: "f"}
_RST = re.compile(rb"\xff[\xd0-\xd7]")
MAX_TILE_WIDTH = 2048  # restart segments wider than this decode wastefully for small reads
_MIN_TILE_WIDTH = 128  # below this, one segment per MCU row beats many tiny segments


def restart_interval(width: int) -> int:
    """MCUs per restart segment: a divisor of the MCUs in a row, segment <= 2048 px wide."""
    mcus = math.ceil(width / 8)
    best = max(d for d in range(1, min(mcus, MAX_TILE_WIDTH // 8) + 1) if mcus % d == 0)
    if best * 8 < _MIN_TILE_WIDTH and mcus > best:
        return mcus if mcus <= 0xFFFF else best  # DRI is 16-bit
    return best


def _encode_band(band: np.ndarray, quality: int, interval: int) -> bytes:
    """Baseline 4:4:4 JPEG of an RGB band with a restart marker every ``interval`` MCUs."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(band), "RGB").save(
        buf, "JPEG", quality=quality, subsampling=0, optimize=False,
        restart_marker_blocks=interval,
    )
    return buf.getvalue()


def _split_jpeg(jpeg: bytes) -> tuple[bytes, int, list[bytes]]:
    """(header through SOS, offset of the SOF height field, entropy-coded segments)."""
    i, sof = 2, -1
    while True:
        marker, length = struct.unpack(">HH", jpeg[i : i + 4])
        if marker == 0xFFC0:
            sof = i + 5
        if marker == 0xFFDA:
            end = i + 2 + length
            break
        i += 2 + length
    if sof < 0 or jpeg[-2:] != b"\xff\xd9":
        raise ValueError("encoder produced an unexpected JPEG layout")
    return jpeg[:end], sof, _RST.split(jpeg[end:-2])


class _LevelJpeg:
    """Streams one level's JPEG into ``fh`` and records segment offsets (McuStarts)."""

    def __init__(self, fh, height: int, width: int, quality: int) -> None:
        """Prepare to write a ``height`` x ``width`` JPEG at the current file position."""
        self.fh, self.height, self.width, self.quality = fh, height, width, quality
        self.interval = restart_interval(width)
        self.start = fh.tell()
        self.header: bytes | None = None
        self.mcu_starts: list[int] = []
        self.rows = 0

    def add(self, jpeg: bytes, rows: int) -> None:
        """Append the segments of one encoded band of ``rows`` rows."""
        if self.rows % 8:
            raise ValueError("only the last band of an NDPI level may have rows % 8 != 0")
        header, sof, segments = _split_jpeg(jpeg)
        key = header[:sof] + header[sof + 2 :]  # tables must match; only the height differs
        if self.header is None:
            self.header = header[:sof] + struct.pack(">H", self.height) + header[sof + 2 :]
            self._key = key
            self.fh.write(self.header)
        elif key != self._key:
            raise RuntimeError("JPEG tables differ between bands; cannot concatenate")
        expect = math.ceil(rows / 8) * (math.ceil(self.width / 8) // self.interval)
        if len(segments) != expect:
            raise RuntimeError(f"band has {len(segments)} restart segments, expected {expect}")
        out = bytearray()
        pos = self.fh.tell() - self.start
        for seg in segments:
            n = len(self.mcu_starts)
            if n:
                out += bytes((0xFF, 0xD0 + (n - 1) % 8))
            self.mcu_starts.append(pos + len(out))
            out += seg
        self.fh.write(out)
        self.rows += rows

    def close(self) -> int:
        """Write EOI; return the JPEG's byte count."""
        if self.rows != self.height:
            raise RuntimeError(f"level got {self.rows} rows, expected {self.height}")
        self.fh.write(b"\xff\xd9")
        return self.fh.tell() - self.start


def _rational(value: float) -> tuple[int, int]:
    """The closest TIFF RATIONAL to ``value`` with both terms below 2**32."""
    max_den = max(1, min(0xFFFF, (2**32 - 1) // max(1, math.ceil(value))))
    f = Fraction(value).limit_denominator(max_den)
    return max(1, f.numerator), f.denominator


def _level_tags(
    shape: tuple[int, int], mpp_xy: tuple[float, float] | None, lens: float,
    n_segments: int, software: str,
) -> list[tuple[int, int, object]]:
    """(code, type, value) of one level's IFD; offsets and McuStarts are placeholders."""
    h, w = shape
    tags: list[tuple[int, int, object]] = [
        (254, _LONG, [0]), (256, _LONG, [w]), (257, _LONG, [h]), (258, _SHORT, [8, 8, 8]),
        (259, _SHORT, [7]), (262, _SHORT, [6]), (271, _ASCII, "Hamamatsu"),
        (272, _ASCII, "C13210"), (273, _LONG, [0]), (277, _SHORT, [3]), (278, _LONG, [h]),
        (279, _LONG, [0]), (284, _SHORT, [1]), (305, _ASCII, software),
        (530, _SHORT, [1, 1]),  # YCbCr 4:4:4, as in the JPEG (Photometric 6 = YCbCr)
        (_FORMAT_FLAG, _LONG, [1]), (_SOURCE_LENS, _FLOAT, [lens]), (_X_OFFSET, _SLONG, [0]),
        (_Y_OFFSET, _SLONG, [0]), (_FOCAL_PLANE, _SLONG, [0]),
        (_MCU_STARTS, _LONG, [0] * n_segments),
    ]
    if mpp_xy is not None:
        # NDPI stores pixel size as X/YResolution in pixels per centimetre
        tags += [(282, _RATIONAL, [_rational(1e4 / mpp_xy[0])]),
                 (283, _RATIONAL, [_rational(1e4 / mpp_xy[1])]), (296, _SHORT, [3])]
    return sorted(tags, key=lambda t: t[0])


def _pack_value(typ: int, value: object) -> bytes:
    """Little-endian bytes of a tag value."""
    if typ == _ASCII:
        return str(value).encode("ascii") + b"\x00"
    if typ == _RATIONAL:
        return b"".join(struct.pack("<II", *r) for r in value)  # type: ignore[union-attr]
    vals = list(value)  # type: ignore[call-overload]
    return struct.pack(f"<{len(vals)}{_TYPE_FMT[typ]}", *vals)


def _value_count(typ: int, value: object) -> int:
    """TIFF count field of a tag value."""
    return len(str(value)) + 1 if typ == _ASCII else len(value)  # type: ignore[arg-type]


def _ifd_bytes(tags: list[tuple[int, int, object]], at: int) -> bytes:
    """NDPI-dialect IFD block placed at file offset ``at`` (next-IFD offset left zero)."""
    n = len(tags)
    extern_at = at + 2 + 12 * n + 8 + 4 * n
    entries, extern = bytearray(), bytearray()
    for code, typ, value in tags:
        data = _pack_value(typ, value)
        field = data.ljust(4, b"\x00")
        if len(data) > 4:
            field = struct.pack("<I", extern_at + len(extern))
            extern += data + b"\x00" * (len(data) % 2)  # keep word alignment
        entries += struct.pack("<HHI", code, typ, _value_count(typ, value)) + field
    return struct.pack("<H", n) + bytes(entries) + b"\x00" * 8 + b"\x00" * (4 * n) + bytes(extern)


def _set_tag(tags: list[tuple[int, int, object]], code: int, value: object) -> None:
    """Replace the value of tag ``code`` in place."""
    for i, (c, typ, _v) in enumerate(tags):
        if c == code:
            tags[i] = (c, typ, value)
            return
    raise KeyError(code)


def write_ndpi(
    path: Path,
    shapes: list[tuple[int, int]],
    level_bands: Iterable[Iterable[np.ndarray]],
    mpp: float | None,
    lens: float,
    quality: int = 90,
    software: str = "wsicount synth",
) -> None:
    """Write an NDPI pyramid; ``level_bands`` yields, per level, RGB uint8 bands in row order.

    Bands must be a multiple of 8 rows except the last of a level; level widths must shrink
    and fit a JPEG (<= 65535 px). ``mpp`` None writes no resolution tags.
    """
    if max(max(s) for s in shapes) > 0xFFFF:
        raise ValueError("NDPI levels are single JPEGs: each side must be <= 65535 px")
    if any(b[1] >= a[1] for a, b in itertools.pairwise(shapes)):
        raise ValueError("NDPI level widths must strictly decrease")
    with open(path, "wb") as fh, ThreadPoolExecutor(max_workers=2) as pool:
        fh.write(b"II" + struct.pack("<HI", 42, 16) + b"\x00" * 8)
        prev_next_at = None
        for shape, bands in zip(shapes, level_bands, strict=True):
            ds = shapes[0][1] / shape[1], shapes[0][0] / shape[0]
            mpp_xy = None if mpp is None else (mpp * ds[0], mpp * ds[1])
            n_seg = math.ceil(shape[0] / 8) * (math.ceil(shape[1] / 8) // restart_interval(shape[1]))
            tags = _level_tags(shape, mpp_xy, lens, n_seg, software)
            ifd_at = fh.tell()
            size = len(_ifd_bytes(tags, ifd_at))
            if prev_next_at is not None:
                fh.seek(prev_next_at)
                fh.write(struct.pack("<Q", ifd_at))
                fh.seek(ifd_at)
            fh.write(b"\x00" * size)
            jpeg = _LevelJpeg(fh, shape[0], shape[1], quality)
            _stream_bands(pool, jpeg, bands, quality)
            count = jpeg.close()
            for code, value in ((273, [jpeg.start]), (279, [count]), (_MCU_STARTS, jpeg.mcu_starts)):
                _set_tag(tags, code, value)
            block = _ifd_bytes(tags, ifd_at)
            if len(block) != size or jpeg.start + count >= 2**32:
                raise RuntimeError("NDPI writer: IFD size changed or file exceeds 4 GiB")
            end = fh.tell()
            fh.seek(ifd_at)
            fh.write(block)
            fh.seek(end)
            prev_next_at = ifd_at + 2 + 12 * len(tags)


def _stream_bands(pool: ThreadPoolExecutor, jpeg: _LevelJpeg, bands: Iterable[np.ndarray],
                  quality: int) -> None:
    """Encode bands on a worker thread (one ahead) while the next band is produced."""
    pending = None
    for band in bands:
        if band.shape[1] != jpeg.width or band.ndim != 3 or band.shape[2] != 3:
            raise ValueError(f"band shape {band.shape} does not fit level width {jpeg.width}")
        fut = pool.submit(_encode_band, band, quality, jpeg.interval)
        if pending is not None:
            jpeg.add(pending[0].result(), pending[1])
        pending = (fut, band.shape[0])
    if pending is not None:
        jpeg.add(pending[0].result(), pending[1])
