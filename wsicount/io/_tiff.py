"""tifffile backend: plain and OME-TIFF (pyramidal or not), and NDPI/SVS/generic tiled TIFF.

Windows are decoded tile by tile straight from the file (segment reads under the file
lock, decoding outside it), so concurrent dask threads decode in parallel. NDPI levels are
single JPEGs with restart markers; tifffile exposes each restart segment as a tile through
the McuStarts tag, which is what makes NDPI windows cheap here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from wsicount.errors import InputError, SlideFormatError, TileReadError
from wsicount.io._base import Backend, IntensityMap, SegmentCache

__all__ = ["TiffBackend", "open_tiff", "plausible_mpp", "level_pages_in_bounds"]

_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "nm": 1e-3,
                "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4,
                "m": 1e6, "meter": 1e6, "Å": 1e-4, "angstrom": 1e-4, "pm": 1e-6}
# ResolutionUnit tag -> micrometres per unit (1 = no absolute unit)
_UM_PER_RESUNIT = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}


def plausible_mpp(mpp: float | None) -> float | None:
    """``mpp`` if it is a believable microscope pixel size (0.01..100 um), else None.

    Files often carry a meaningless default resolution (72 dpi = 353 um/px); that must
    read as "no pixel size" rather than a wrong one.
    """
    if mpp is None or not np.isfinite(mpp) or not 0.01 <= mpp <= 100.0:
        return None
    return float(mpp)


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's log messages about corrupt structures while probing a file."""
    log = logging.getLogger("tifffile")
    old = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(old)


def _level_series(tf: tifffile.TiffFile) -> list[tifffile.TiffPageSeries]:
    """Pyramid levels of the main image series (largest first).

    tifffile only chains levels whose sides are exact halves (floor or ceil) of the previous
    ones; OpenSlide takes every tiled IFD of an NDPI (source lens > 0) or generic tiled TIFF
    as a level. The same rule is applied here so both backends see the same pyramid, e.g.
    NDPI levels padded to multiples of 8 px.
    """
    if not tf.series:
        return []
    main = tf.series[0]
    levels = list(main.levels)
    first = tf.pages.first
    if not (first.is_ndpi or (main.kind == "generic" and not first.is_ome and not first.is_svs)):
        return levels
    key = main.keyframe
    aspect = key.imagewidth / key.imagelength
    for s in tf.series[1:]:
        k = s.keyframe
        if (k is None or not k.is_tiled or k.dtype != key.dtype or k.axes != key.axes
                or k.samplesperpixel != key.samplesperpixel or k.imagewidth >= key.imagewidth
                or abs(k.imagewidth / k.imagelength / aspect - 1.0) > 0.05
                or (first.is_ndpi and not (k.tags.valueof(65421) or 0) > 0)):
            continue
        levels.extend(s.levels)
    levels.sort(key=lambda lv: -lv.keyframe.imagewidth)
    return [lv for i, lv in enumerate(levels)
            if i == 0 or lv.keyframe.shape != levels[i - 1].keyframe.shape]


def level_pages_in_bounds(tf: tifffile.TiffFile) -> tuple[bool, str]:
    """Whether every level page's segments lie inside the file (and a reason if not)."""
    size = tf.filehandle.size
    levels = _level_series(tf)
    if not levels:
        return False, "no image series"
    for k, lev in enumerate(levels):
        for page in lev.pages:
            if page is None:
                return False, f"level {k} has a missing page"
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c > 0]
            if not ends:
                continue
            end = max(ends)
            if end > size:
                return False, f"level {k} data extends to byte {end} but the file has {size} bytes"
    return True, ""


def open_tiff(path: str) -> tifffile.TiffFile:
    """TiffFile whose level data lies inside the file, trying both NDPI offset dialects.

    tifffile applies NanoZoomer's 64-bit offset conventions to every file named ``.ndpi``;
    real NanoZoomer files need them, classic TIFFs with NDPI tags must be read without.
    Raises SlideFormatError (truncated or corrupt) or tifffile's errors (not a TIFF).
    """
    attempts: list[dict] = [{}]
    if Path(path).suffix.lower() == ".ndpi":
        attempts.append({"is_ndpi": False})
    reason, first_exc = "", None
    for kwargs in attempts:
        with _quiet_tifffile():
            try:
                tf = tifffile.TiffFile(path, **kwargs)
            except Exception as exc:  # noqa: BLE001 - try the other dialect
                first_exc = first_exc or exc
                continue
            try:
                ok, why = level_pages_in_bounds(tf)
            except Exception as exc:  # noqa: BLE001 - unparsable pages
                ok, why = False, f"unreadable page structure ({exc})"
        if ok:
            return tf
        tf.close()
        reason = reason or why
    if reason:
        raise SlideFormatError(f"{path} is truncated or corrupt: {reason}")
    raise first_exc if first_exc is not None else SlideFormatError(f"{path} is not a TIFF")


class _Level:
    """One pyramid level: the pages (t=0, z=0, every channel) whose samples form channels."""

    def __init__(self, series: tifffile.TiffPageSeries, t: int = 0) -> None:
        """Select the pages of time point ``t`` and the first focal plane."""
        key = series.keyframe
        page_axes = key.axes  # e.g. 'YXS', 'SYX' (planar) or 'YX'
        axes = series.get_axes(False)
        shape = series.get_shape(False)
        outer_axes, outer_shape = axes[: len(axes) - len(page_axes)], shape[: len(axes) - len(page_axes)]
        self.sizes = dict(zip(outer_axes, outer_shape, strict=True))
        if not 0 <= t < self.sizes.get("T", 1):
            raise InputError(f"time point {t} does not exist: the image has {self.sizes.get('T', 1)}")
        pages = list(series.pages)
        idx = np.arange(int(np.prod(outer_shape, dtype=np.int64))).reshape(outer_shape or (1,))
        sel = tuple(slice(None) if a == "C" else t if a == "T" else 0 for a in outer_axes)
        chosen = np.atleast_1d(idx[sel] if outer_axes else idx).ravel().tolist()
        self.pages = [pages[i] if i < len(pages) else None for i in chosen]
        if any(p is None for p in self.pages):
            raise SlideFormatError("image series has missing pages")
        self.keyframe = key
        self.height, self.width = int(key.imagelength), int(key.imagewidth)
        self.samples = int(key.samplesperpixel)
        self.planar = key.planarconfig == 2 and self.samples > 1
        if key.is_tiled:
            self.tile = (int(key.tilelength), int(key.tilewidth))
        else:
            self.tile = (int(min(key.rowsperstrip or self.height, self.height)), self.width)
        self.dtype = key.dtype
        for p in self.pages:
            k = p.keyframe if hasattr(p, "keyframe") else p
            if k.jpegheader is not None and k.jpegheader[6:10] == b"JFIF":
                # NDPI tiles: tifffile sniffs JFIF at the first tile, which is past the JPEG
                # header, and would then skip the YCbCr->RGB conversion of RGB-tagged files
                k.__dict__["is_jfif"] = True
            k.init_decode()  # build the decoder here: doing it lazily is not thread-safe

    @property
    def channels(self) -> int:
        """Output channels: selected pages times samples per page."""
        return len(self.pages) * self.samples


class TiffBackend(Backend):
    """Reads TIFF-based slides with tifffile, one decoded segment at a time."""

    name = "tifffile"

    def __init__(self, path: str, openslide_vendor: str | None = None, t: int = 0) -> None:
        """Open time point ``t`` of ``path`` (see :func:`open_tiff` for the errors raised)."""
        self._t = t
        self._tf = open_tiff(path)
        self._fh = self._tf.filehandle
        self._fh.set_lock(True)
        try:
            self._init(openslide_vendor)
        except Exception:
            self._tf.close()
            raise

    def _init(self, openslide_vendor: str | None) -> None:
        """Levels, vendor and metadata."""
        tf = self._tf
        self._levels = [_Level(s, self._t) for s in _level_series(tf)]
        if not self._levels:
            raise SlideFormatError(f"{self._fh.path} holds no image")
        first = self._levels[0]
        if any(lv.channels != first.channels or lv.dtype != first.dtype for lv in self._levels):
            raise SlideFormatError(f"{self._fh.path}: pyramid levels differ in channels or dtype")
        self.shapes = [(lv.height, lv.width) for lv in self._levels]
        self.tiles = [lv.tile for lv in self._levels]
        self.channels = first.channels
        self.vendor = self._vendor(openslide_vendor)
        self.properties = self._properties()
        self.channel_names = self._channel_names()
        self.mpp_xy, self.objective_power = self._pixel_size()
        self.intensity = IntensityMap()
        self._segments = SegmentCache(0)

    def set_decode_cache(self, nbytes: int) -> None:
        """Keep up to ``nbytes`` of decoded segments (see :class:`SegmentCache`)."""
        self._segments.resize(nbytes)

    def _vendor(self, openslide_vendor: str | None) -> str:
        """'hamamatsu', 'aperio', 'ome-tiff', 'generic-tiff' (OpenSlide-readable tiled) or 'tiff'."""
        page = self._tf.pages.first  # page flags: TiffFile's is_ndpi may be the dialect override
        if page.is_ndpi:
            return "hamamatsu"
        if page.is_svs:
            return "aperio"
        if page.is_ome:
            return "ome-tiff"
        return "generic-tiff" if openslide_vendor == "generic-tiff" else "tiff"

    def _properties(self) -> dict[str, str]:
        """String metadata in OpenSlide's naming style (tiff.*, hamamatsu.*, aperio.*)."""
        page = self._tf.pages.first
        props: dict[str, str] = {"wsicount.backend": "tifffile"}
        for code, name in ((270, "ImageDescription"), (271, "Make"), (272, "Model"),
                           (305, "Software"), (306, "DateTime"), (296, "ResolutionUnit")):
            v = page.tags.valueof(code)
            if v is None or (code == 270 and self._tf.is_ome):  # OME-XML is parsed, not copied
                continue
            props[f"tiff.{name}"] = str(v)[:4096]
        if page.is_ndpi:
            lens = page.tags.valueof(65421)
            if lens is not None:
                props["hamamatsu.SourceLens"] = f"{float(lens):g}"
        if page.is_svs:
            with contextlib.suppress(ValueError):
                for k, v in tifffile.tifffile.svs_description_metadata(page.description).items():
                    props[f"aperio.{k}"] = str(v)
        sizes = self._levels[0].sizes
        props["wsicount.t_size"] = str(sizes.get("T", 1))
        props["wsicount.t_index"] = str(self._t)
        props["wsicount.z_size"] = str(sizes.get("Z", 1))
        return props

    def _ome_pixels(self) -> ET.Element | None:
        """The OME Pixels element of the first image, if any."""
        if not self._tf.is_ome or not self._tf.ome_metadata:
            return None
        with contextlib.suppress(ET.ParseError):
            root = ET.fromstring(self._tf.ome_metadata)
            for el in root.iter():
                if el.tag.endswith("}Pixels") or el.tag == "Pixels":
                    return el
        return None

    def _channel_names(self) -> list[str]:
        """OME channel names, else R/G/B for RGB, else c0.."""
        pix = self._ome_pixels()
        if pix is not None:
            names = [ch.get("Name") or f"c{i}" for i, ch in
                     enumerate(e for e in pix if e.tag.endswith("Channel"))]
            if len(names) == self.channels:
                return names
        if self.channels == 3 and self._levels[0].samples == 3:
            return ["R", "G", "B"]
        return [f"c{i}" for i in range(self.channels)]

    def _pixel_size(self) -> tuple[tuple[float, float] | None, float | None]:
        """Level-0 (mpp_x, mpp_y) and objective power from OME, Aperio, ImageJ or TIFF tags."""
        page, props = self._tf.pages.first, self.properties
        mpp_xy, power = self._ome_pixel_size()
        if mpp_xy is None and "aperio.MPP" in props:
            m = plausible_mpp(_to_float(props["aperio.MPP"]))
            mpp_xy = (m, m) if m else None
        if mpp_xy is None:
            mpp_xy = self._resolution_mpp(page)
        for name in ("aperio.AppMag", "hamamatsu.SourceLens"):
            if power is None and name in props:
                v = _to_float(props[name])
                power = v if v and v > 0 else None
        return mpp_xy, power

    def _ome_pixel_size(self) -> tuple[tuple[float, float] | None, float | None]:
        """PhysicalSizeX/Y (unit-converted) and the nominal objective magnification."""
        pix = self._ome_pixels()
        if pix is None:
            return None, None
        xy = []
        for ax in ("X", "Y"):
            v = _to_float(pix.get(f"PhysicalSize{ax}"))
            unit = pix.get(f"PhysicalSize{ax}Unit", "µm")
            xy.append(plausible_mpp(v * _UM_PER_UNIT[unit]) if v and unit in _UM_PER_UNIT else None)
        mx, my = xy
        power = None
        for el in ET.fromstring(self._tf.ome_metadata).iter():
            if el.tag.endswith("}Objective") and el.get("NominalMagnification"):
                power = _to_float(el.get("NominalMagnification"))
                break
        mpp_xy = (mx, my or mx) if mx else ((my, my) if my else None)
        return mpp_xy, power

    def _resolution_mpp(self, page: tifffile.TiffPage) -> tuple[float, float] | None:
        """Pixel size from X/YResolution + ResolutionUnit (or ImageJ's 'unit=micron')."""
        if 282 not in page.tags:
            return None
        xres, yres = page.get_resolution()
        um_per_unit = _UM_PER_RESUNIT.get(page.resolutionunit)
        if um_per_unit is None and self._tf.is_imagej:
            unit = str((self._tf.imagej_metadata or {}).get("unit", "")).replace("\\u00B5", "µ")
            um_per_unit = _UM_PER_UNIT.get(unit)
        if um_per_unit is None or xres <= 0:
            return None
        mx = plausible_mpp(um_per_unit / xres)
        my = plausible_mpp(um_per_unit / yres) if yres > 0 else None
        return (mx, my or mx) if mx else None

    def prepare_intensity(self) -> None:
        """Non-uint8 data: scale each channel by its maximum on the smallest level."""
        if self._levels[0].dtype == np.uint8:
            return
        k = len(self._levels) - 1
        h, w = self.shapes[k]
        sample = self._read_raw(k, 0, 0, min(h, 2048), min(w, 2048))
        self.intensity = IntensityMap.from_sample(sample)
        self.properties["wsicount.intensity_map"] = self.intensity.describe()

    def read(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """(h, w, c) uint8 window inside the level."""
        return self.intensity.apply(self._read_raw(level, y0, x0, h, w))

    def _read_raw(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """(h, w, c) window in the file's dtype: each selected page fills its samples."""
        lv = self._levels[level]
        out = np.zeros((h, w, lv.channels), lv.dtype)
        for i, page in enumerate(lv.pages):
            self._read_page(level, i, lv, page, out[..., i * lv.samples : (i + 1) * lv.samples], y0, x0)
        return out

    def _read_page(self, level: int, pi: int, lv: _Level, page, out: np.ndarray, y0: int, x0: int) -> None:
        """Decode (or take from the cache) the segments of page ``pi`` covering the window ``out`` at (y0, x0)."""
        key = page.keyframe if hasattr(page, "keyframe") else page
        th, tw = lv.tile
        h, w = out.shape[:2]
        nty, ntx = math.ceil(lv.height / th), math.ceil(lv.width / tw)
        planes = lv.samples if lv.planar else 1
        idx = [s * nty * ntx + ty * ntx + tx
               for s in range(planes)
               for ty in range(y0 // th, (y0 + h - 1) // th + 1)
               for tx in range(x0 // tw, (x0 + w - 1) // tw + 1)]
        cache = self._segments
        if cache.limit:
            missing = []
            for i in idx:
                hit = cache.get((level, pi, i))
                if hit is None:
                    missing.append(i)
                else:
                    self._paste(out, hit[0], hit[1], y0, x0, lv.planar)
            idx = missing
            if not idx:
                return
        offsets = [page.dataoffsets[i] for i in idx]
        counts = [page.databytecounts[i] for i in idx]
        for data, i in self._fh.read_segments(offsets, counts, indices=idx, lock=self._fh.lock):
            if data is None or len(data) == 0:
                continue  # sparse (never written) segment: stays zero
            try:
                seg, pos, _shape = key.decode(data, i, jpegtables=key.jpegtables,
                                              jpegheader=key.jpegheader)
            except Exception as exc:  # noqa: BLE001 - report which tile failed
                ty, tx = divmod(i % (nty * ntx), ntx)
                msg = (f"{self._fh.path}: cannot decode level {level} tile (row {ty}, col {tx}) "
                       f"at y={ty * th}, x={tx * tw}: {exc}")
                raise TileReadError(" ".join(msg.split())) from exc  # one line for the CLI
            if seg is None:
                continue
            if cache.limit:
                cache.put((level, pi, i), seg, pos)
            self._paste(out, seg, pos, y0, x0, lv.planar)

    @staticmethod
    def _paste(out: np.ndarray, seg: np.ndarray, pos: tuple, y0: int, x0: int, planar: bool) -> None:
        """Copy the overlap of a decoded segment (d, l, w, c) at ``pos`` into the window."""
        s, _d, sy, sx, _c = pos
        seg = seg[0]  # depth 1 in 2-D slides
        ya, yb = max(sy, y0), min(sy + seg.shape[0], y0 + out.shape[0])
        xa, xb = max(sx, x0), min(sx + seg.shape[1], x0 + out.shape[1])
        if ya >= yb or xa >= xb:
            return
        part = seg[ya - sy : yb - sy, xa - sx : xb - sx]
        if planar:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0, s] = part[..., 0]
        else:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0, :] = part.reshape(part.shape[0], part.shape[1], -1)

    def close(self) -> None:
        """Close the file."""
        self._tf.close()


def _to_float(v: object) -> float | None:
    """float(v) or None."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None

