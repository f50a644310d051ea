"""Atomic file writes and strict JSON: a file on disk is either the old one or the whole new one.

Every output wsicount writes goes through :func:`atomic_write_with`: the bytes go to a hidden
temporary file beside the target, which is then renamed over it (``os.replace`` is atomic
within a folder). A reader, a resumed run or a crash never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["atomic_write", "atomic_write_with", "jsonable", "json_text"]


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


def jsonable(o: Any) -> Any:
    """``o`` with numpy scalars, paths and tuples made plain, and NaN/inf as None (strict JSON has no NaN)."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def tidy(o: Any, digits: int = 10) -> Any:
    """``o`` with every float rounded to ``digits`` significant digits: 0.45230000000000004 -> 0.4523.

    For measured values (pixel sizes, scales) whose last bits are arithmetic noise; 10 digits
    keep every digit a scanner writes. Not for counts that are compared exactly.
    """
    if isinstance(o, dict):
        return {k: tidy(v, digits) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return type(o)(tidy(v, digits) for v in o)
    if isinstance(o, float) and math.isfinite(o) and o != 0.0:
        return float(f"{o:.{digits}g}")
    return o


def json_text(o: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``o`` (see :func:`jsonable`)."""
    return json.dumps(jsonable(o), indent=indent, allow_nan=False)
