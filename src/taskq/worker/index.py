"""pending/ in claim order, kept current from file names alone (see
:mod:`taskq.spool.layout`): a claim costs O(log n) whatever the depth of the queue."""

from __future__ import annotations

import heapq
from datetime import datetime, timezone

from ..spool.layout import PendingName, is_listed, parse_pending_name


class PendingIndex:
    """pending/ in claim order, from file names: a heap of ready entries ordered by
    (priority, id), a heap of scheduled ones ordered by run_at, the set of names
    present (entries popped for names no longer present are skipped), drop-in files
    still to normalise, and jobs held back by their dependencies."""

    def __init__(self) -> None:
        self.present: set[str] = set()
        self.ready: list[tuple[str, str, str]] = []
        self.scheduled: list[tuple[str, str]] = []
        self.entries: dict[str, PendingName] = {}
        self.foreign: set[str] = set()
        self.blocked: dict[str, PendingName] = {}

    def reset(self, names: list[str], now_key: str) -> None:
        self.present.clear()
        self.ready.clear()
        self.scheduled.clear()
        self.entries.clear()
        self.foreign.clear()
        self.blocked.clear()
        for name in names:
            self.add(name, now_key)

    def merge(self, names: list[str], now_key: str) -> None:
        """Bring the index in line with a fresh listing of pending/: names new to it are
        added, names gone are dropped; what it knows of the others (held back by a
        dependency, deferred) stays."""
        listed = set(names)
        for name in self.present - listed:
            self.remove(name)
        self.foreign &= listed
        for name in listed - self.present - self.foreign:
            self.add(name, now_key)

    def add(self, name: str, now_key: str) -> None:
        if not is_listed(name) or name in self.present:
            return
        entry = parse_pending_name(name)
        if entry is None:
            self.foreign.add(name)
            return
        self.present.add(name)
        self.entries[name] = entry
        if entry.run_key <= now_key:
            self.push(entry)
        else:
            heapq.heappush(self.scheduled, (entry.run_key, name))

    def remove(self, name: str) -> None:
        self.present.discard(name)
        self.entries.pop(name, None)
        self.foreign.discard(name)
        self.blocked.pop(name, None)

    def push(self, entry: PendingName) -> None:
        """Make *entry* a candidate for the next claims (it is ready by its time)."""
        heapq.heappush(self.ready, (entry.prio_key, entry.id, entry.name))

    def promote(self, now_key: str) -> None:
        """Move entries whose run_at has come from the scheduled heap to the ready one."""
        while self.scheduled and self.scheduled[0][0] <= now_key:
            _, name = heapq.heappop(self.scheduled)
            entry = self.entries.get(name)
            if entry is not None:
                self.push(entry)

    def pop(self) -> PendingName | None:
        while self.ready:
            _, _, name = heapq.heappop(self.ready)
            entry = self.entries.get(name)
            if entry is not None and name not in self.blocked:
                return entry
        return None

    def block(self, entry: PendingName) -> None:
        self.blocked[entry.name] = entry

    def defer(self, entry: PendingName, run_key: str) -> None:
        """Look at an entry that is still present again once *run_key* has come."""
        heapq.heappush(self.scheduled, (run_key, entry.name))

    def unblock(self) -> None:
        for name, entry in self.blocked.items():
            if name in self.entries:
                self.push(entry)
        self.blocked.clear()

    def next_due(self) -> str | None:
        while self.scheduled and self.scheduled[0][1] not in self.entries:
            heapq.heappop(self.scheduled)
        return self.scheduled[0][0] if self.scheduled else None

    def has_ready(self) -> bool:
        return any(name in self.entries and name not in self.blocked for _, _, name in self.ready) or bool(self.foreign)


def key_to_ts(key: str) -> float:
    """Inverse of :func:`taskq.times.name_key`."""
    dt = datetime.strptime(key[:15], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + int(key[15:18]) / 1000.0
