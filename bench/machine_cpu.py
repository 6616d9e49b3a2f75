"""How busy the whole machine's CPU was over an interval, from ``/proc/stat`` (Linux).

A benchmark row on a 2-core machine is often bound by CPU rather than by the path it
measures; the share printed next to a figure tells which (everything on the machine counts:
the lab's user-space links, the apps, the clients).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...
_IDLE_FIELDS = (3, 4)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """The machine's CPU time so far, in clock ticks."""

    total: int
    idle: int


def parse_cpu_line(line: str) -> CpuTimes:
    """The aggregate ``cpu`` line of ``/proc/stat`` (guest time is already in user time)."""
    name, *rest = line.split()
    if name != "cpu" or len(rest) < 5:
        raise ValueError(f"not the aggregate cpu line of /proc/stat: {line!r}")
    ticks = [int(x) for x in rest[:8]]
    return CpuTimes(sum(ticks), sum(ticks[i] for i in _IDLE_FIELDS))


def cpu_times(stat: Path = PROC_STAT) -> CpuTimes | None:
    """Now, or None where there is no ``/proc/stat``."""
    try:
        with stat.open() as f:
            return parse_cpu_line(f.readline())
    except (OSError, ValueError):
        return None


def busy_share(start: CpuTimes | None, end: CpuTimes | None) -> float | None:
    """The share of all cores' time that was busy between two readings (0..1)."""
    if start is None or end is None or end.total <= start.total:
        return None
    idle = end.idle - start.idle
    return max(0.0, min(1.0, 1 - idle / (end.total - start.total)))
