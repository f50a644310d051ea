"""Crash safety for an output folder: lock, run manifest, per-tile completion records.

``OUT/.wsicount/`` holds:

- ``lock``: ``{"pid", "host", "started"}`` of the run writing this folder. A second run
  refuses to start; a lock whose process is gone (same host) is stale and taken over.
- ``run.json``: the fingerprint of the job (slide identity, model, every parameter that
  changes results). Resuming with a different fingerprint is refused unless ``--overwrite``
  or the folder holds no results yet (no summary, no finished tile).
- ``tiles/<ty>_<tx>.json``: written atomically *after* the tile's density chunk is
  written; its presence means the chunk is final. A rerun skips those tiles and reuses
  their records (sums, grid partials, peaks), so resumed outputs equal uninterrupted ones.

Final files are written to a temporary name and renamed (:func:`atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .errors import OutputError

__all__ = ["atomic_write", "atomic_write_with", "RunState", "slide_fingerprint"]

STATE = ".wsicount"


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Have ``writer(tmp)`` write a temporary file beside ``path``, then rename it over ``path``.

    The temporary name is hidden (``.NAME.XXXX.tmpSUFFIX``) and keeps the suffix, so writers
    that infer the format from it (matplotlib, PIL) work; readers of a folder skip dotfiles.
    A failed write leaves ``path`` as it was and no temporary file behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` atomically (see :func:`atomic_write_with`)."""
    raw = data.encode() if isinstance(data, str) else data
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(raw))


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
        self.out = Path(out)
        self.dir = self.out / STATE
        self.tiles_dir = self.dir / "tiles"
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
        manifest = self.dir / "run.json"
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
            return dict(json.loads((self.dir / "run.json").read_text()).get("params", {}))
        except (OSError, ValueError, AttributeError):
            return {}

    def _has_results(self) -> bool:
        """Whether the folder holds a summary or at least one finished tile."""
        return (self.out / "summary.json").exists() or bool(self.done_keys())

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
        lock = self.dir / "lock"
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
            (self.dir / "lock").unlink(missing_ok=True)
            self._locked = False

    # --- tile records -----------------------------------------------------------------
    def done_keys(self) -> set[str]:
        """Keys of tiles whose chunk and record are complete."""
        if not self.tiles_dir.exists():
            return set()
        return {p.stem for p in self.tiles_dir.glob("*.json") if not p.name.startswith(".")}

    def record(self, key: str) -> dict[str, Any]:
        """Read one tile's completion record."""
        return json.loads((self.tiles_dir / f"{key}.json").read_text())

    def write_record(self, key: str, rec: dict[str, Any]) -> None:
        """Mark a tile done (call only after its chunk is written)."""
        atomic_write(self.tiles_dir / f"{key}.json", json.dumps(rec, separators=(",", ":")))
