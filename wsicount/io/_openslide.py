"""OpenSlide backend: vendor formats (NDPI, SVS, MRXS, generic tiled TIFF, ...)."""

from __future__ import annotations

import threading

import numpy as np
import openslide

from wsicount.io._base import Backend

__all__ = ["OpenSlideBackend", "detect_vendor"]


def detect_vendor(path: str) -> str | None:
    """OpenSlide's vendor name for ``path`` ('hamamatsu', 'aperio', ...) or None."""
    try:
        return openslide.OpenSlide.detect_format(path)
    except Exception:  # noqa: BLE001 - unreadable means "not an OpenSlide slide"
        return None


def _float_prop(props: dict[str, str], name: str) -> float | None:
    """A positive float property, or None if absent or malformed."""
    try:
        v = float(props[name])
    except (KeyError, ValueError):
        return None
    return v if v > 0 and np.isfinite(v) else None


class OpenSlideBackend(Backend):
    """Reads through ``openslide.OpenSlide`` (thread-safe; levels include NDPI's JPEG-scaled ones).

    An OpenSlide handle is unusable after any error (every later call fails), so a failed
    read replaces the shared handle and retries on a private one: one undecodable tile never
    poisons the other windows, and a window is only reported bad if it fails on its own.
    """

    name = "openslide"

    def __init__(self, path: str) -> None:
        """Open ``path``; raises OpenSlide's errors for unreadable files."""
        self._path = path
        self._swap_lock = threading.Lock()
        self._osr = openslide.OpenSlide(path)
        props = dict(self._osr.properties)
        self.vendor = props.get("openslide.vendor") or detect_vendor(path) or "unknown"
        self.shapes = [(h, w) for (w, h) in self._osr.level_dimensions]
        self.tiles = [self._tile(props, i) for i in range(len(self.shapes))]
        self.channels, self.channel_names = 3, ["R", "G", "B"]
        mx, my = _float_prop(props, "openslide.mpp-x"), _float_prop(props, "openslide.mpp-y")
        self.mpp_xy = (mx, my or mx) if mx else ((my, my) if my else None)
        self.objective_power = _float_prop(props, "openslide.objective-power")
        self.properties = props
        bg = props.get("openslide.background-color", "")
        self._background = (np.array([int(bg[i:i + 2], 16) for i in (0, 2, 4)], np.float32)
                            if len(bg) == 6 else None)

    @staticmethod
    def _tile(props: dict[str, str], level: int) -> tuple[int, int]:
        """Native tile (h, w) of a level, 256 when OpenSlide does not say."""
        th = props.get(f"openslide.level[{level}].tile-height", "256")
        tw = props.get(f"openslide.level[{level}].tile-width", "256")
        return int(th), int(tw)

    def read(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Window via read_region; level-0 origin rounded so it maps onto pixel (y0, x0)."""
        osr = self._osr
        try:
            return self._read_with(osr, level, y0, x0, h, w)
        except openslide.OpenSlideError:
            self._replace(osr)
            # the failure may be another thread's bad tile on the shared handle: retry alone
            private = openslide.OpenSlide(self._path)
            try:
                return self._read_with(private, level, y0, x0, h, w)
            finally:
                private.close()

    def _replace(self, failed: openslide.OpenSlide) -> None:
        """Swap in a fresh shared handle unless another thread already did.

        The failed handle is not closed here: other threads may still be inside it; it is
        closed when the last reference goes.
        """
        with self._swap_lock:
            if self._osr is failed:
                self._osr = openslide.OpenSlide(self._path)

    def _read_with(self, osr: openslide.OpenSlide, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """RGB window read through a given handle, unscanned areas in the background colour."""
        ds = osr.level_downsamples[level]
        region = osr.read_region((round(x0 * ds), round(y0 * ds)), level, (w, h))
        rgba = np.asarray(region)
        rgb = np.ascontiguousarray(rgba[..., :3])
        if self._background is not None and rgba[..., 3].min() < 255:
            # unscanned areas are transparent: show the slide's declared background colour
            a = rgba[..., 3:4].astype(np.float32) / 255.0
            rgb = (rgb * a + self._background * (1.0 - a) + 0.5).astype(np.uint8)
        return rgb

    def close(self) -> None:
        """Close the OpenSlide handle."""
        self._osr.close()
