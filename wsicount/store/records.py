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

__all__ = ["TileRecord", "RunState", "slide_fingerprint", "differences"]


@dataclass
class TileRecord:
    """What one finished tile contributes: everything aggregation needs, so nothing is read back from the density.

    ``sum`` is the tile core's masked density sum (its share of the count); ``peaks`` the
    density maxima whose pixel lies in the core, as ``[y, x, value]`` on the model grid;
    ``grid`` maps each grid size (µm, as text) to ``{"i": flat cell indices, "v": sums}``;
    ``t`` the tile's stage seconds. ``outside`` is the density of the core that fell outside the
    counted region (removed by the mask); ``var`` is the tile's count-variance term (intervals
    add them over tiles), ``views`` its per-view sums under a view method (tta: 8, ensemble: one per
    member; their spread over a union is its interval's extra term) and ``frame`` its time point in
    a stack; each is written only when set.
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
    outside: float = 0.0
    views: list[float] | None = None

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
        if self.outside:
            d["outside"] = self.outside
        if self.views is not None:
            d["views"] = self.views
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TileRecord":
        """A record from its JSON form."""
        return cls(d["key"], float(d.get("sum", 0.0)), d.get("peaks", []), d.get("grid", {}), d.get("t", {}),
                   bool(d.get("bad", False)), d.get("error", ""), d.get("var"), d.get("frame"),
                   float(d.get("outside", 0.0)), d.get("views"))


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


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two run fingerprints, one ``name: old -> new`` per leaf (nested keys joined by '.')."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}: {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    """A fingerprint value for a one-line message (long values cut)."""
    text = "unset" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _foreign_message(out: Path, foreign: list[str]) -> str:
    """The refusal of a folder holding entries no run wrote: what they are, and what to do instead."""
    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
    return (f"output folder {out} holds files wsicount did not write ({shown}); wsicount writes only into a new "
            "or empty folder or its own earlier output, and never removes anything else: choose another --out")


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
        """Create/verify the folder and take the lock; returns True when resuming.

        Nothing is written into a folder holding entries no run writes (:meth:`Layout.foreign`)
        unless the run resumes there (which removes nothing); ``overwrite`` and the clearing
        of a failed run's folder remove only what a run wrote.
        """
        self._check_writable()
        manifest = self.layout.run_json
        foreign = self.layout.foreign()
        if foreign and (overwrite or not manifest.exists() or not self._has_results()):
            raise OutputError(_foreign_message(self.out, foreign))
        self.dir.mkdir(exist_ok=True)
        self._acquire()
        try:
            return self._claim(fingerprint, overwrite, replaceable=not foreign)
        except BaseException:
            self.release()
            raise

    def _check_writable(self) -> None:
        """Create the folder if needed and prove it writable (OutputError otherwise)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise OutputError(f"output folder {self.out} is not writable ({e.strerror or e})") from None

    def _claim(self, fingerprint: dict[str, Any], overwrite: bool, replaceable: bool = True) -> bool:
        """With the lock held: start fresh, resume, or refuse; True when resuming.

        ``replaceable``: the folder holds nothing but a run's outputs, so a refusal may advise
        ``--overwrite`` (which would otherwise be refused in turn).
        """
        manifest = self.layout.run_json
        instead = "another --out or --overwrite" if replaceable else "another --out"
        if overwrite or (manifest.exists() and not self._has_results()):
            # a run that failed before finishing a tile (e.g. no tissue found) left nothing worth
            # keeping: a rerun with other settings (--mask, --mpp) must not be refused for it
            self._clear()
        elif manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("slide") != fingerprint.get("slide"):
                raise OutputError(
                    f"output folder {self.out} holds results of another slide "
                    f"({old.get('slide', {}).get('name')}); use {instead}"
                )
            if old != fingerprint:
                raise OutputError(
                    f"output folder {self.out} holds a run with different settings "
                    f"({'; '.join(differences(old, fingerprint))}); "
                    f"use the same settings to resume, or {instead}"
                )
            self.tiles_dir.mkdir(exist_ok=True)
            return True
        elif any(p.name != STATE for p in self.out.iterdir()):
            raise OutputError(f"output folder {self.out} holds wsicount outputs but no record of their run "
                              f"({self.layout.run_json.relative_to(self.out)}); use --overwrite to replace them, "
                              "or another --out")
        self.tiles_dir.mkdir(exist_ok=True)
        atomic_write(manifest, json.dumps(fingerprint, indent=2, sort_keys=True))
        return False

    def stored_params(self) -> dict[str, Any]:
        """The parameters recorded by the run that started this folder; {} if none, or if it finished no tile.

        A run that failed before finishing a tile (a bad option, no tissue) binds nothing: its
        folder is cleared by the next run, whose own settings then apply.
        """
        if not self._has_results():
            return {}
        try:
            return dict(json.loads(self.layout.run_json.read_text()).get("params", {}))
        except (OSError, ValueError, AttributeError):
            return {}

    def _has_results(self) -> bool:
        """Whether the folder holds a summary or at least one finished tile."""
        return self.layout.file("summary.json").exists() or bool(self.done_keys())

    def _clear(self) -> None:
        """Remove what a run wrote, keeping the lock; refuse (removing nothing) if anything else is there.

        :meth:`prepare` checked the folder before taking the lock; this checks again under it.
        """
        foreign = self.layout.foreign()
        if foreign:
            raise OutputError(_foreign_message(self.out, foreign))
        for p in self.out.iterdir():
            if p.name != STATE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in self.dir.iterdir():
            if p.name != "lock":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

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
