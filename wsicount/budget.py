"""What a run can afford: the memory there is, and the largest tile that fits in it.

A tile task holds its decoded windows, one forward pass's activations and its output core
(README, "Memory"); with ``T`` tasks at once the run needs about

    T x ( (P + 1) x b x t² x C x 4 B  +  b x t² x A  +  2 x core² x 4 B )

beyond what the process already holds, where ``A`` is the network's peak activation bytes per
input pixel. :func:`choose_tile_size` takes the largest tile, up to ``AUTO_TILE_MAX`` and in
steps of ``AUTO_TILE_STEP``, whose need stays within ``AVAILABLE_FRACTION`` of the memory
available (the lesser of the machine's ``MemAvailable`` and the free room under the cgroup
limit of a container or batch job), and says why. Counts do not depend on the tile size
(tested), so this only decides whether the run fits: on a machine with room it is 1024.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["available_memory", "task_bytes", "TilePlan", "choose_tile_size",
           "AUTO_TILE_MAX", "AUTO_TILE_MIN", "AVAILABLE_FRACTION"]

#: the largest tile auto picks. Larger windows lose less to the halo but run no faster per
#: pixel on CPU (cache-bound activations), and multiply the memory
AUTO_TILE_MAX = 1024
#: below this, more than half of each window would be halo for the bundled U-Net (56 px)
AUTO_TILE_MIN = 384
AUTO_TILE_STEP = 128
#: share of the available memory the tile tasks may take: the rest is for the page cache, the
#: side worker's pictures and the allocator's slack (the activation estimate already includes
#: the tuned allocator's reuse pattern, see ``infer.activation_bytes_per_px``)
AVAILABLE_FRACTION = 0.7


def _cgroup_room(proc: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1); None without a limit or a readable one."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":  # cgroup v2: one unified hierarchy
            mount, names = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # cgroup v1
            mount, names = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        # the process's own group below the mount, or the mount itself inside a container's
        # cgroup namespace (where /proc/self/cgroup still names the host's path)
        for base in (mount / path.lstrip("/"), mount):
            limit, used = base / names[0], base / names[1]
            if not limit.is_file():
                continue
            try:
                raw = limit.read_text().strip()
                if raw == "max" or int(raw) >= 1 << 60:  # v1 writes "no limit" as a huge number
                    return None
                return max(0, int(raw) - int(used.read_text().strip()))
            except (OSError, ValueError):
                return None
    return None


def available_memory() -> int | None:
    """Bytes this process can still take: the machine's available memory, or less under a cgroup limit; None if unknown."""
    try:
        import psutil

        machine = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - an unknown platform: no figure rather than a failed run
        return None
    room = _cgroup_room()
    return machine if room is None else min(machine, room)


def task_bytes(tile: int, core: int, channels: int, act_per_px: float, batch: int = 1, prefetch: int = 2) -> int:
    """Memory of one tile task (README formula): decoded windows, activations and the output core."""
    px = batch * tile * tile
    return int((prefetch + 1) * px * channels * 4 + px * act_per_px + 2 * core * core * 4)


@dataclass(frozen=True)
class TilePlan:
    """The tile size a run uses and why (recorded in summary.json)."""

    tile_size: int
    reason: str
    #: memory the tile tasks need at this size, and what there was (None: not checked)
    need_bytes: int | None = None
    available_bytes: int | None = None
    #: False when the need exceeds the share of the available memory the tiles may take
    fits: bool = True


def choose_tile_size(requested: int, *, tasks: int, available: int | None, act_per_px: float, channels: int,
                     core_of: Callable[[int], int], batch: int = 1, prefetch: int = 2, fixed_bytes: int = 0) -> TilePlan:
    """The tile for ``requested`` (0 = auto) given ``tasks`` concurrent tasks and ``available`` bytes.

    ``core_of(tile)`` is the core a window of that side gets (``TileGrid.core_for``: the halo
    depends on the model); a size whose core is not positive is never picked. ``fixed_bytes``
    is what the run adds whatever the tile (e.g. the decode cache, a worker's baseline). A
    requested size is kept; its reason says when it does not fit.
    """
    def need(t: int) -> int:
        return fixed_bytes + tasks * task_bytes(t, max(0, core_of(t)), channels, act_per_px, batch, prefetch)

    gib = 1 << 30
    if requested:
        n = need(requested)
        if available is not None and n > AVAILABLE_FRACTION * available:
            return TilePlan(requested, f"requested; {tasks} task(s) need ~{n / gib:.2f} GiB of {available / gib:.2f} GiB "
                                       "available: the run may swap or be stopped (a smaller --tile-size fits)",
                            n, available, fits=False)
        return TilePlan(requested, "requested", n, available)
    sizes = [t for t in range(AUTO_TILE_MAX, AUTO_TILE_MIN - 1, -AUTO_TILE_STEP) if core_of(t) > 0] or [AUTO_TILE_MAX]
    if available is None:
        return TilePlan(sizes[0], "auto: available memory unknown, the default size", need(sizes[0]))
    for t in sizes:
        if need(t) <= AVAILABLE_FRACTION * available:
            why = "fits" if t == AUTO_TILE_MAX else f"reduced from {AUTO_TILE_MAX} to fit"
            return TilePlan(t, f"auto: {why} ({tasks} task(s) need ~{need(t) / gib:.2f} GiB of "
                               f"{available / gib:.2f} GiB available)", need(t), available)
    t = sizes[-1]
    return TilePlan(t, f"auto: the smallest size, and {tasks} task(s) still need ~{need(t) / gib:.2f} GiB of "
                       f"{available / gib:.2f} GiB available: the run may swap or be stopped (fewer --threads need less)",
                    need(t), available, fits=False)
