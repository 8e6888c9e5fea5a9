"""The event log's records: which state changes become events, and what a line says.

Every change of a job's state appends one JSON line to ``SPOOL/events.jsonl``
(README, "taskq events"), with the fields of :data:`FIELDS`:

* enqueue (``add``, ``add --batch``, the API) and the intake of a drop-in file: from
  null to ``pending`` (a job's history starts there);
* claim: ``pending`` → ``running``, with the number of the attempt about to start;
* settle, recover, cancel of a running job: ``running`` → ``done``, ``pending`` or
  ``failed``, with the attempt's number, ``exit_code``, ``signal`` and ``error``
  (:func:`taskq.policy.describe`; null when it succeeded); a claimed job whose
  attempt never started goes back to ``pending`` with no attempt;
* cancel of a pending job, a dependent whose dependency failed, a file that is not
  a valid job: to ``failed``, ``error`` saying why;
* retry: ``failed`` → ``pending``; purge: ``done``/``failed`` → null.

Changes that leave a job where it is are not events: recording the start of an
attempt (the claim just before is the event), and putting a drop-in file caught half
taken in back as it was (it is not a job yet). ``worker`` is ``HOST:PID`` of the
worker that made the change, null for every other command.

Writing is :class:`EventRecorder`, an observer of :class:`taskq.transitions.Transitions`;
it never fails or blocks a state change. The files are :mod:`taskq.spool.eventlog`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from . import times
from .errors import ValidationError
from .policy import describe

if TYPE_CHECKING:
    from .job import Attempt
    from .spool.eventlog import EventLog
    from .transitions import Change

#: The fields of an event line, in the order they are written.
FIELDS = ("time", "id", "name", "from", "to", "attempt", "exit_code", "signal", "error", "worker")
#: Kinds of change that may close an attempt (and so report its outcome).
_CLOSING = ("settle", "recover", "cancel")
#: The error of an attempt stopped by a worker's shutdown: not a failure.
_INTERRUPTED = "interrupted"


def record_of(change: Change, now: float, worker: str | None) -> dict[str, Any] | None:
    """The event line's record of *change* at *now*, or None when it is not an event
    (the job stays in its directory)."""
    kind, job = change.kind, change.job
    src = None if kind == "normalise" else change.src
    if src == change.dst or (kind == "recover" and job is None):
        return None
    attempt = _closed_attempt(change)
    outcome = attempt.outcome if attempt is not None else None
    number: int | None = attempt.number if attempt is not None else None
    if kind == "claim" and job is not None:
        number = len(job.attempts) + 1
    error = None
    if outcome is not None and not outcome.succeeded:
        error = describe(outcome, job.timeout if job is not None else None)
    elif change.dst == "failed":
        error = (change.decision.last_error if change.decision is not None else None) or (
            job.last_error if job is not None else None)
    return {
        "time": times.iso(now),
        "id": change.job_id,
        "name": job.name if job is not None else None,
        "from": src,
        "to": change.dst,
        "attempt": number,
        "exit_code": outcome.exit_code if outcome is not None else None,
        "signal": outcome.signal if outcome is not None else None,
        "error": error,
        "worker": worker,
    }


def _closed_attempt(change: Change) -> Attempt | None:
    """The attempt whose end *change* records, if any: the last one of the current
    budget, finished, when a running job is settled, recovered or cancelled. (A job
    claimed but never started has no such attempt; recovery settles one whose worker
    died while settling by the attempt it had finished.)"""
    job = change.job
    if job is None or change.src != "running" or change.kind not in _CLOSING:
        return None
    attempts = job.budget_attempts
    last = attempts[-1] if attempts else None
    if last is None or last.outcome is None:
        return None
    if change.kind == "cancel" and last.error != "cancelled":
        return None  # cancelled between claim and start: the last attempt is an older one
    return last


def encode(record: dict[str, Any]) -> bytes:
    """One line of the log: compact JSON and a newline (JSON escapes any newline
    inside a value, so a record is always exactly one line)."""
    try:
        return json.dumps(record, ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate in some text: escaped, still JSON
        return json.dumps(record).encode() + b"\n"


class Event(NamedTuple):
    """A line read back: its time (epoch seconds) and its record."""

    ts: float
    record: dict[str, Any]


#: Every line taskq writes starts so: where a line holds the torn remains of a write
#: cut short (a full disk) followed by a whole one, the whole one is found from here.
_START = b'{"time"'


def decode(line: bytes) -> Event | None:
    """The event of one line of the log, or None if it is not one (torn, foreign)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        start = line.rfind(_START)
        return decode(line[start:]) if start > 0 else None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return None
    try:
        return Event(times.parse_iso(record.get("time")), record)  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return None


def selected(event: Event, job_id: str | None, since: float | None) -> bool:
    """Whether ``taskq events --id/--since`` shows *event*."""
    return (job_id is None or event.record.get("id") == job_id) and (since is None or event.ts >= since)


def parse_since(text: str, now: float) -> float:
    """``--since``: a DURATION back from *now* (``10m``) or a DATETIME (README,
    "Durations and times"); epoch seconds."""
    try:
        return now - times.parse_duration(text, "--since")
    except ValidationError:
        pass
    try:
        return times.parse_datetime(text, "--since")
    except ValidationError:
        raise ValidationError(
            f"invalid value {text!r} (use a duration such as 10m or 2h, or a date-time "
            f"YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM])", "--since") from None


# -- status --watch ------------------------------------------------------------------------


def is_failure(record: dict[str, Any]) -> bool:
    """A failed attempt (retried or not) or a job gone to failed/; an attempt stopped
    by a worker's shutdown is not one."""
    if record.get("to") == "failed":
        return True
    return record.get("from") == "running" and bool(record.get("error")) and record.get("error") != _INTERRUPTED


def throughput(records: Iterable[dict[str, Any]], window: float) -> dict[str, Any]:
    """What *records* (the events of the last *window* seconds) add up to: jobs done
    and failed for good, failed attempts to be retried, claims."""
    out: dict[str, Any] = {"window": window, "done": 0, "failed": 0, "retries": 0, "claims": 0}
    for r in records:
        src, dst = r.get("from"), r.get("to")
        if dst == "done":
            out["done"] += 1
        elif dst == "failed":
            out["failed"] += 1
        elif src == "running" and dst == "pending" and is_failure(r):
            out["retries"] += 1
        elif src == "pending" and dst == "running":
            out["claims"] += 1
    return out


# -- writing -------------------------------------------------------------------------------


def _to_stderr(message: str) -> None:
    try:
        sys.stderr.write(f"taskq: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class EventRecorder:
    """An observer of :class:`taskq.transitions.Transitions` that appends the event
    line of each change to the spool's event log.

    *settings* gives ``(events_max, events_keep)`` (read when first needed: most
    commands that change nothing never ask). It never raises: an event that cannot be
    written (disk full, no permission, an invalid ``taskq.toml``) is lost, the state
    change stands, and *warn* is told once, the first time (later failures of this
    recorder are silent, so a failing disk does not flood a worker's log).
    ``worker`` is set by a worker to its ``HOST:PID``.
    """

    def __init__(self, log: EventLog, settings: Callable[[], tuple[int, int]],
                 warn: Callable[[str], None] | None = None) -> None:
        self.log = log
        self.settings = settings
        self.warn = warn or _to_stderr
        self.worker: str | None = None
        #: one token, popped by the first warning: list.pop is atomic, so two slot
        #: threads failing at once still warn once
        self._warning = [True]

    def __call__(self, change: Change) -> None:
        try:
            record = record_of(change, times.now(), self.worker)
            if record is None:
                return
            max_bytes, keep = self.settings()
            self.log.append(encode(record), max_bytes, keep)
        except Exception as exc:  # noqa: BLE001 - an event must never fail a state change
            if self._first_failure():
                self.warn(f"cannot record an event ({exc}); the state change is made all the same "
                          "(further event errors are not reported)")

    def _first_failure(self) -> bool:
        try:
            self._warning.pop()
        except IndexError:
            return False
        return True
