"""How much of this process's CPUs other processes took over a stretch of time (Linux ``/proc``).

Tuning times candidate schedules on the very cores it runs on: a process beside it stalls every
parallel region of a multi-threaded candidate (TVM's workers meet at spin barriers), and MetaSchedule
keeps whichever candidate timed fastest without a word. :class:`OtherLoad` reads, for the CPUs this
process may run on, the time they were busy (``/proc/stat``, plus the time a hypervisor gave to other
guests: steal) less the CPU time of this process and its descendants (``/proc/<pid>/stat``; the
builder and runner pools are children), so a tuning run can say it was disturbed.
"""

from __future__ import annotations

import os
import time

#: Cores' worth of other processes' CPU time over a tuning run above which it is called disturbed.
OTHER_LOAD_CORES = 0.2


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100


def cpus_busy_s(cpus: set[int]) -> float | None:
    """Seconds the CPUs ``cpus`` were busy (user, nice, system, irq, softirq) or stolen by the hypervisor
    since boot; None where ``/proc/stat`` cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ticks, seen = 0, 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in rest.split()[:8])
        ticks += user + nice + system + irq + softirq + steal
        seen += 1
    return ticks / _clock_ticks() if seen else None


def tree_cpu_s(root: int) -> float | None:
    """CPU seconds run by process ``root`` and its living descendants, each with the children it has
    reaped; None where ``root`` cannot be read."""
    children: dict[int, list[int]] = {}
    times: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat")) as f:
                fields = f.read().rpartition(")")[2].split()  # after "pid (comm)", which may hold spaces
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        # utime, stime, cutime, cstime: fields 14-17 of the line, 12-15 after the comm
        times[pid] = (int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    if root not in times:
        return None
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(sum(times[p]) for p in tree) / _clock_ticks()  # a reaped child's time is in its parent's


class OtherLoad:
    """From its creation on: how many cores' worth of CPU time processes outside ``root``'s tree (default:
    this process) took from the CPUs this process may run on."""

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        try:
            self.cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = set(range(os.cpu_count() or 1))
        self.start = time.perf_counter()
        self._busy, self._ours = cpus_busy_s(self.cpus), tree_cpu_s(self.root)

    def cores(self) -> float | None:
        """Average cores' worth of other processes' CPU time since creation (None: ``/proc`` unreadable)."""
        busy, ours = cpus_busy_s(self.cpus), tree_cpu_s(self.root)
        if None in (busy, ours, self._busy, self._ours):
            return None
        elapsed = max(time.perf_counter() - self.start, 1e-3)
        return max(0.0, (busy - self._busy) - (ours - self._ours)) / elapsed


__all__ = ["OTHER_LOAD_CORES", "OtherLoad", "cpus_busy_s", "tree_cpu_s"]
