"""CPU time of a process and its descendants, from /proc (Linux).

    cpu = process_cpu_s(pid)   # user + system seconds: pid, its live descendants, and its waited-for children

Used for the server's CPU per request (`inferline bench --server-pid`: with --workers the worker
processes are the server's children) and by bench/server/bench_grpc.py.
"""

from __future__ import annotations

import os
from typing import Dict, Tuple


def _stat(pid: str) -> Tuple[int, int, int, int, int]:
    """(ppid, utime, stime, cutime, cstime) in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return int(fields[1]), int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and every live descendant, plus the time of children that
    already ended and were waited for (so a worker that exits between two readings still counts).
    Raises ProcessLookupError when `pid` does not exist."""
    stats: Dict[int, Tuple[int, int, int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stats[int(entry)] = _stat(entry)
            except OSError:
                continue  # ended while we looked
    if pid not in stats:
        raise ProcessLookupError(f"no process {pid}")
    children: Dict[int, list] = {}
    for p, st in stats.items():
        children.setdefault(st[0], []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        _, utime, stime, cutime, cstime = stats[p]
        total += utime + stime + cutime + cstime
        todo.extend(children.get(p, ()))
    return total / os.sysconf("SC_CLK_TCK")
