"""Crash safety for an output folder: lock, run manifest, per-tile completion records.

``OUT/.wsicount/`` (paths in :class:`~wsicount.store.layout.Layout`) holds:

- ``lock``: ``{"pid", "host", "started"}`` of the run writing this folder. A second run
  refuses to start; a lock whose process is gone (same host) is stale and taken over.
- ``run.json``: the fingerprint of the job (slide identity, model, every parameter that
  changes results). Resuming with a different fingerprint is refused unless ``--overwrite``
  or the folder holds no results yet (no summary, no finished tile).
- ``tiles/<ty>_<tx>.json``: a :class:`TileRecord`, written atomically *after* the tile's
  density chunk is written; its presence means the chunk is final. A rerun skips those tiles
  and reuses their records, so resumed outputs equal uninterrupted ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError
from .atomic import atomic_write
from .layout import STATE, Layout

__all__ = ["TileRecord", "RunState", "slide_fingerprint"]


@dataclass
class TileRecord:
    """What one finished tile contributes: everything aggregation needs, so nothing is read back from the density.

    ``sum`` is the tile core's masked density sum (its share of the count); ``peaks`` the
    density maxima whose pixel lies in the core, as ``[y, x, value]`` on the model grid;
    ``grid`` maps each grid size (µm, as text) to ``{"i": flat cell indices, "v": sums}``;
    ``t`` the tile's stage seconds. ``var`` is the tile's count-variance term (intervals add
    them over tiles) and ``frame`` its time point in a stack; both are written only when set.
    """

    key: str
    sum: float = 0.0
    peaks: list[list[float]] = field(default_factory=list)
    grid: dict[str, dict[str, list]] = field(default_factory=dict)
    t: dict[str, float] = field(default_factory=dict)
    bad: bool = False
    error: str = ""
    var: float | None = None
    frame: int | None = None

    @classmethod
    def failed(cls, key: str, error: str) -> "TileRecord":
        """The record of a tile that could not be decoded (``--skip-bad-tiles``): 0 cells."""
        return cls(key, bad=True, error=error)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: optional fields only when set."""
        d: dict[str, Any] = {"key": self.key}
        if self.bad:
            d.update(bad=True, error=self.error)
        d.update({"sum": self.sum, "peaks": self.peaks, "grid": self.grid, "t": self.t})
        if self.var is not None:
            d["var"] = self.var
        if self.frame is not None:
            d["frame"] = self.frame
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TileRecord":
        """A record from its JSON form."""
        return cls(d["key"], float(d.get("sum", 0.0)), d.get("peaks", []), d.get("grid", {}), d.get("t", {}),
                   bool(d.get("bad", False)), d.get("error", ""), d.get("var"), d.get("frame"))


def slide_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a slide file or folder: name, size and a hash of its first and last MiB."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and q.name in (".zattrs", "zarr.json", ".zarray"))
        h = hashlib.sha256()
        for q in files:
            h.update(str(q.relative_to(p)).encode())
            h.update(q.read_bytes())
        return {"name": p.name, "size": sum(q.stat().st_size for q in files), "sha256_head_tail": h.hexdigest()}
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if size > (2 << 20):
            f.seek(size - (1 << 20))
            h.update(f.read())
    return {"name": p.name, "size": size, "sha256_head_tail": h.hexdigest()}


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunState:
    """Lock + manifest + tile records of one output folder."""

    def __init__(self, out: Path) -> None:
        self.layout = Layout(out)
        self.out = self.layout.root
        self.dir = self.layout.state
        self.tiles_dir = self.layout.tiles
        self._locked = False

    # --- lifecycle -------------------------------------------------------------------
    def prepare(self, fingerprint: dict[str, Any], overwrite: bool) -> bool:
        """Create/verify the folder and take the lock; returns True when resuming."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise OutputError(f"output folder {self.out} is not writable ({e.strerror or e})") from None
        self.dir.mkdir(exist_ok=True)
        self._acquire()
        manifest = self.layout.run_json
        if overwrite or (manifest.exists() and not self._has_results()):
            # a run that failed before finishing a tile (e.g. no tissue found) left nothing worth
            # keeping: a rerun with other settings (--mask, --mpp) must not be refused for it
            self._clear()
        elif manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("slide") != fingerprint.get("slide"):
                self.release()
                raise OutputError(
                    f"output folder {self.out} holds results of another slide "
                    f"({old.get('slide', {}).get('name')}); use another --out or --overwrite"
                )
            if old != fingerprint:
                changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                self.release()
                raise OutputError(
                    f"output folder {self.out} holds a run with different settings ({', '.join(changed)}); "
                    "use the same settings to resume, another --out, or --overwrite"
                )
            self.tiles_dir.mkdir(exist_ok=True)
            return True
        elif any(p.name != STATE for p in self.out.iterdir()):
            self.release()
            raise OutputError(f"output folder {self.out} is not empty and holds no wsicount run; use --overwrite")
        self.tiles_dir.mkdir(exist_ok=True)
        atomic_write(manifest, json.dumps(fingerprint, indent=2, sort_keys=True))
        return False

    def stored_params(self) -> dict[str, Any]:
        """The parameters recorded by the run that started this folder ({} if none)."""
        try:
            return dict(json.loads(self.layout.run_json.read_text()).get("params", {}))
        except (OSError, ValueError, AttributeError):
            return {}

    def _has_results(self) -> bool:
        """Whether the folder holds a summary or at least one finished tile."""
        return self.layout.file("summary.json").exists() or bool(self.done_keys())

    def _clear(self) -> None:
        """Remove everything in the output folder except the lock."""
        for p in self.out.iterdir():
            if p.name == STATE:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for p in self.dir.iterdir():
            if p.name == "lock":
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _acquire(self) -> None:
        """Take the folder lock, taking over a stale one left by a dead process."""
        lock = self.layout.lock
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(lock.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    other = {}
                same_host = other.get("host") == socket.gethostname()
                if other and same_host and not _pid_alive(int(other.get("pid", -1))):
                    lock.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if not other and time.time() - lock.stat().st_mtime > 60:
                    lock.unlink(missing_ok=True)  # half-written lock of a crashed start
                    continue
                raise OutputError(
                    f"output folder {self.out} is in use by another run (pid {other.get('pid')} on "
                    f"{other.get('host')}); remove {lock} if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return
        raise OutputError(f"could not lock output folder {self.out}")

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._locked:
            self.layout.lock.unlink(missing_ok=True)
            self._locked = False

    # --- tile records -----------------------------------------------------------------
    def done_keys(self) -> set[str]:
        """Keys of tiles whose chunk and record are complete."""
        if not self.tiles_dir.exists():
            return set()
        return {p.stem for p in self.tiles_dir.glob("*.json") if not p.name.startswith(".")}

    def record(self, key: str) -> TileRecord:
        """Read one tile's completion record."""
        return TileRecord.from_dict(json.loads(self.layout.tile_record(key).read_text()))

    def write_record(self, rec: TileRecord) -> None:
        """Mark a tile done (call only after its chunk is written)."""
        atomic_write(self.layout.tile_record(rec.key), json.dumps(rec.to_dict(), separators=(",", ":")))
