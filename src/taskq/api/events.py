"""Reading the event log: ``taskq events`` (:func:`read`) and the last minute that
``status --watch`` shows (:class:`RecentEvents`)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import times
from ..events import Event, decode, is_failure, selected, throughput
from ..ids import check_id
from ..spool.eventlog import EventFollower

if TYPE_CHECKING:
    from . import Spool

#: How often ``--follow`` looks for new lines.
FOLLOW_POLL = 0.2
#: The window of ``status --watch``'s throughput, in seconds.
WINDOW = 60.0
#: How many of the latest failures ``status --watch`` shows.
LATEST_FAILURES = 5
#: How much of the log's end ``status --watch`` reads when it starts (later it reads
#: only what is added): enough for a minute of a busy spool.
WATCH_TAIL_BYTES = 8 << 20


def read(spool: Spool, job_id: str | None, since: float | None, follow: bool) -> Iterator[dict[str, Any]]:
    """:meth:`taskq.Spool.events`: checks first, then a generator."""
    if job_id is not None:
        check_id(job_id)
    spool.require()
    return _read(spool, job_id, since, follow)


def _read(spool: Spool, job_id: str | None, since: float | None, follow: bool) -> Iterator[dict[str, Any]]:
    follower = EventFollower(spool.store)
    try:
        follower.start()
        for event in _events(follower.history(newer_than=since)):
            if selected(event, job_id, since):
                yield event.record
        while True:
            for event in _events(follower.poll(times.now())):
                if selected(event, job_id, since):
                    yield event.record
            if not follow:
                return
            time.sleep(FOLLOW_POLL)
    finally:
        follower.close()


def _events(lines: Iterator[bytes]) -> Iterator[Event]:
    for line in lines:
        event = decode(line)
        if event is not None:
            yield event


class RecentEvents:
    """The event log's last minute and latest failures, kept current by reading only
    what is added between two calls of :meth:`update`."""

    def __init__(self, spool: Spool, window: float = WINDOW, failures: int = LATEST_FAILURES) -> None:
        self.window = window
        self._follower = EventFollower(spool.store)
        self._started = False
        self._recent: deque[Event] = deque()
        self._failures: deque[dict[str, Any]] = deque(maxlen=failures)

    def update(self, now: float) -> dict[str, Any]:
        """``{"throughput": {...}, "latest_failures": [...]}`` as of *now*: the
        counts of :func:`taskq.events.throughput` over the last window, and the
        latest failures, newest first."""
        if not self._started:
            self._started = True
            self._follower.start(tail_bytes=WATCH_TAIL_BYTES)
            self._take(self._follower.history(tail_bytes=WATCH_TAIL_BYTES))
        self._take(self._follower.poll(now))
        cutoff = now - self.window
        while self._recent and self._recent[0].ts < cutoff:
            self._recent.popleft()
        latest = [{key: r.get(key) for key in ("time", "id", "name", "to", "attempt", "error")}
                  for r in reversed(self._failures)]
        return {"throughput": throughput((e.record for e in self._recent if e.ts >= cutoff), self.window),
                "latest_failures": latest}

    def _take(self, lines: Iterator[bytes]) -> None:
        for event in _events(lines):
            self._recent.append(event)
            if is_failure(event.record):
                self._failures.append(event.record)

    def close(self) -> None:
        self._follower.close()
