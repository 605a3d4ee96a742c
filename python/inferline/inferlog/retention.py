"""Retention: whole date partitions older than a number of days go, oldest first.

A partition ``date=D`` is older than N days when D < today - N (UTC): with N = 14 a server keeps
today's partition and the 14 before it. Today's partition, the one being written, is never
removed, whatever N (N is at least 1, so yesterday's, which a flush just after midnight may still
be writing, stays too). Every worker of a server may sweep: a partition another sweep removed
first is no error.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import List, Optional

from ..errors import InvalidArgument
from .schema import utc_now
from .store import LogStore

log = logging.getLogger("inferline.inferlog")


@dataclass(frozen=True)
class Retention:
    inference_days: int = 14
    """Days of inference records (inputs and outputs) kept besides today's."""
    hardware_days: int = 30
    """Days of hardware samples kept besides today's."""

    def __post_init__(self):
        for name in ("inference_days", "hardware_days"):
            if not getattr(self, name) >= 1:
                raise InvalidArgument(f"retention {name.replace('_', ' ')}: at least 1, got {getattr(self, name)!r}")

    def days(self, table: str) -> int:
        return self.inference_days if table == "inference" else self.hardware_days


def expired(store: LogStore, retention: Retention, today: Optional[_dt.date] = None) -> List[str]:
    """The partitions a sweep would remove now, oldest first."""
    today = today or utc_now().date()
    out = []
    for table in ("inference", "hardware"):
        cutoff = today - _dt.timedelta(days=retention.days(table))
        out += [path for day, path in store.partitions(table) if day < cutoff and day < today]
    return out


def sweep(store: LogStore, retention: Retention, today: Optional[_dt.date] = None, dry_run: bool = False) -> List[str]:
    """Removes the expired partitions, one at a time; the paths removed (or that would be)."""
    paths = expired(store, retention, today)
    if not dry_run:
        for path in paths:
            store.remove(path)
            log.info("inference log: retention removed %s", path)
    return paths
