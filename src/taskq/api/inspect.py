"""Reading the spool: one job, a listing, the status at a glance.

Readers never lock and never wait: they see every state a change passes through, and
each must read as a job. A drop-in file is shown as the job it will become (defaults
filled, ``created_at`` the time it was dropped), in pending/ and while a worker takes
it in (its raw file is then briefly ``running/ID.json``); a file in failed/ that is not
a valid job is shown with the reason it was filed there.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import times
from ..errors import JobNotFoundError, SpoolError, ValidationError
from ..ids import check_id, id_time, is_id
from ..job import Job, build, is_complete, parse_json_bytes
from ..policy import Verdict, dependency_verdict
from ..spool import layout
from ..spool.jobs import JobStore, mtime_of

if TYPE_CHECKING:
    from . import Spool

#: How many full looks ``get`` takes before it believes a job does not exist (a job
#: moving between directories can be missed by one look).
LOOKS = 3


def load(spool: Spool, state: str, name: str) -> Job:
    """One job file as a reader sees it (raises FileNotFoundError if it has gone).
    The file is read once: drop-in files are many, and read again at every look."""
    raw: bytes | None = None
    try:
        raw = spool.store.read(state, name)
        job = Job.from_bytes(raw)
        job.state = state
        return spool.jobs.with_note(job) if state == "running" else job
    except (ValidationError, SpoolError) as exc:  # SpoolError: too large, not readable
        if state == "failed":
            return _unreadable(spool, name, str(exc))
        why = str(exc)
    data = None
    if raw is not None:
        try:
            data = parse_json_bytes(raw)
        except ValidationError:
            pass
    return _preview(spool, state, name, data, why)


def _unreadable(spool: Spool, name: str, why: str) -> Job:
    """A file in failed/ that is not a valid job, as a record saying why."""
    job_id = layout.stem(name) or name
    reason = spool.jobs.read_reason(job_id) or {"last_error": f"unreadable job file: {why}"}
    stamp = reason.get("settled_at") or times.iso(0)
    job = Job(id=job_id, command=[], cwd="/", created_at=stamp, run_at=stamp,
              last_error=reason.get("last_error"), settled_at=reason.get("settled_at"),
              extra={"unreadable": True, "original_name": reason.get("original_name")})
    job.state = "failed"
    return job


def _preview(spool: Spool, state: str, name: str, data: Any, why: str) -> Job:
    """A file of pending/ or running/ that is not a complete record (*data*: its JSON,
    or None). A drop-in file (in pending/, or in running/ while a worker takes it in)
    is shown as the job it will become, pending; anything else with ``last_error``
    saying what is wrong (a worker files it in failed/)."""
    dropped = spool.store.mtime(state, name)
    given = data.get("id") if isinstance(data, dict) else None
    job_id = layout.id_in(state, name) or (given if is_id(given) else "")
    stamp = dropped if dropped is not None else times.now()
    job: Job | None = None
    if isinstance(data, dict) and not is_complete(data):
        config = spool.config
        try:
            job = build({**data, "id": job_id or None}, now=stamp, default_cwd=os.getcwd(),
                        defaults=config.defaults, tasks=config.tasks)
            state = "pending"
        except ValidationError as exc:
            why = str(exc)
    if job is None:
        job = Job(id="", command=[], cwd="/", created_at=times.iso(stamp), run_at=times.iso(stamp),
                  last_error=f"not a valid job: {why}")
    job.id = job_id
    job.state = state
    if not job_id:
        job.file = layout.place("pending", name)
    return job


def dropins(spool: Spool) -> Iterator[Job]:
    """The drop-in files in pending/ that no worker has taken in yet, as previews."""
    for name in spool.store.names("pending"):
        if layout.parse_pending_name(name) is None:
            try:
                yield load(spool, "pending", name)
            except FileNotFoundError:
                continue


def get(spool: Spool, job_id: str) -> Job:
    check_id(job_id)
    spool.require()
    for _ in range(LOOKS):
        found = spool.jobs.where_once(job_id)
        if found is not None:
            try:
                return load(spool, *found)
            except FileNotFoundError:
                continue  # it moved while we read it: look again
        for job in dropins(spool):
            if job.id == job_id:
                return job
    raise JobNotFoundError(job_id)


def list_jobs(spool: Spool, state: str | None, limit: int | None) -> list[Job]:
    if state is not None and state not in layout.STATES:
        raise ValidationError(f"unknown state {state!r} (use {', '.join(layout.STATES)})", "--state")
    if limit is not None and limit < 0:
        raise ValidationError("must be >= 0", "--limit")
    spool.require()
    found: list[tuple[float, str, str, str]] = []
    for st in (state,) if state else layout.STATES:
        for name in spool.store.names(st):
            job_id = layout.id_in(st, name)
            if job_id is None:
                continue  # a drop-in file: below
            created = id_time(job_id)
            if created is None:
                try:
                    created = load(spool, st, name).created_ts
                except (FileNotFoundError, ValueError):
                    created = 0.0
            found.append((created, job_id, st, name))
    previews = list(dropins(spool)) if state in (None, "pending") else []
    found += [(job.created_ts, job.id, "", str(i)) for i, job in enumerate(previews)]
    found.sort(reverse=True)
    jobs: list[Job] = []
    for _, _, st, name in found:
        if limit is not None and len(jobs) >= limit:
            break
        if not st:
            jobs.append(previews[int(name)])
            continue
        try:
            jobs.append(load(spool, st, name))
        except FileNotFoundError:
            continue  # moved since the listing; it shows up next time
    return jobs


def status(spool: Spool, now: float | None) -> dict[str, Any]:
    spool.require()
    now = times.now() if now is None else now
    # Settled jobs only need counting; pending/ and running/ names are read.
    names = {st: spool.store.names(st) for st in ("pending", "running")}
    counts = {st: len(names[st]) if st in names else spool.store.count(st) for st in layout.STATES}
    running, taking_in = _running(spool, names["running"], now)
    # A drop-in file being taken in is still pending for the people reading this.
    counts["running"] -= taking_in
    counts["pending"] += taking_in
    pending = _pending(spool, names, now)
    pending["ready"] += taking_in
    return {
        "spool": spool.path,
        "paused": spool.store.is_paused(),
        "counts": counts,
        **pending,
        "running": running,
        "recent_failures": _recent_failures(spool, counts["failed"]),
    }


def _pending(spool: Spool, names: dict[str, list[str]], now: float) -> dict[str, Any]:
    """Ready, scheduled and waiting counts of pending/, and the oldest ready job's age.
    "Ready" is what a worker acts on at once: that includes a job whose dependency
    failed (a worker moves it to failed/), as ``explain`` says."""
    now_key = times.name_key(now)
    parsed = layout.scan_pending_names(names["pending"])
    # A drop-in file not yet taken in is ready at once.
    ready = len(names["pending"]) - len(parsed)
    scheduled = waiting = 0
    oldest_id: str | None = None
    facts: _Facts | None = None
    for prio_key, run_key, job_id, after in parsed:
        if run_key > now_key:
            scheduled += 1
            continue
        if after:
            facts = facts or _Facts(spool.jobs, {**names, "done": spool.store.names("done"),
                                                  "failed": spool.store.names("failed")})
            if facts.verdict_of(layout.pending_file(prio_key, run_key, job_id, after)).kind == "waiting":
                waiting += 1
                continue
        ready += 1
        # Generated ids sort by creation time: only the smallest needs decoding.
        if len(job_id) == 26 and (oldest_id is None or job_id < oldest_id):
            oldest_id = job_id
    oldest = id_time(oldest_id) if oldest_id else None
    return {
        "ready": ready,
        "scheduled": scheduled,
        "waiting": waiting,
        "oldest_ready_age": round(now - oldest, 3) if oldest is not None else None,
    }


class _Facts:
    """What status knows of other jobs' states, from the listings it made once."""

    def __init__(self, jobs: JobStore, names: dict[str, list[str]]) -> None:
        self.jobs = jobs
        self.state: dict[str, str] = {}
        for st in ("pending", "running", "failed", "done"):  # later wins: settled first
            for name in names[st]:
                job_id = layout.id_in(st, name)
                if job_id is not None:
                    self.state[job_id] = st

    def verdict_of(self, name: str) -> Verdict:
        try:
            job = self.jobs.load("pending", name)
        except (FileNotFoundError, ValidationError, SpoolError):
            return Verdict("ready")  # gone, or not a job: a worker files it in failed/
        retried = times.parse_iso(job.retried_at) if job.retried_at else None
        return dependency_verdict(job.after, retried, self.state.get, self.jobs.settled_at)


def _running(spool: Spool, names: list[str], now: float) -> tuple[list[dict[str, Any]], int]:
    """The running jobs, and how many files in running/ are drop-ins being taken in."""
    running = []
    taking_in = 0
    for name in sorted(names):
        try:
            job = load(spool, "running", name)
        except (FileNotFoundError, ValueError):
            continue
        if job.state != "running":
            taking_in += 1
            continue
        attempt = job.current_attempt
        started = times.parse_iso(attempt.started_at) if attempt else None
        running.append({
            "id": job.id,
            "name": job.name,
            "attempt": attempt.number if attempt else None,
            "started_at": attempt.started_at if attempt else None,
            "runtime": round(now - started, 3) if started else None,
            "worker": attempt.worker if attempt else None,
        })
    return running, taking_in


#: How much of the event log's end status reads for its latest failures.
FAILURES_TAIL = 64 << 10


def _recent_failures(spool: Spool, in_failed: int, count: int = 5) -> list[dict[str, Any]]:
    """The *count* jobs in failed/ (which holds *in_failed*) that failed last, newest
    first. The event log's end names them without a stat of every file in failed/
    (thousands, on a long-lived queue); where it does not name enough of them (a new,
    rotated or missing log), the newest of failed/ by mtime.

    A worker settles several ended attempts at once (its slots, or settler threads),
    so the order of the log's lines (or of mtimes) is only nearly the order in which
    the jobs failed: a few more candidates are read, and ordered by when their last
    attempt finished."""
    if not in_failed:
        return []
    want = count + FAILURES_MARGIN
    names = _failed_from_events(spool, want, count, in_failed)
    if names is None:
        names = [entry.name for entry in heapq.nlargest(want, spool.store.entries("failed"), key=mtime_of)]
    jobs = []
    for name in names:
        try:
            jobs.append(load(spool, "failed", name))
        except (FileNotFoundError, ValueError):
            continue
    # Stable: jobs that finished in the same millisecond keep the log's order.
    jobs.sort(key=_failed_when, reverse=True)
    return [{"id": job.id, "name": job.name, "last_error": job.last_error, "settled_at": job.settled_at}
            for job in jobs[:count]]


#: Candidates read beyond the failures shown (see :func:`_recent_failures`): more than
#: the attempts a worker may have ended and not yet settled at once.
FAILURES_MARGIN = 8


def _failed_when(job: Job) -> str:
    """When *job* failed: its last attempt's end (ISO strings of one width sort as
    times), else its settle."""
    last = job.attempts[-1] if job.attempts else None
    return (last.finished_at if last is not None and last.finished_at else None) or job.settled_at or ""


def _failed_from_events(spool: Spool, want: int, count: int, in_failed: int) -> list[str] | None:
    """The failed/ names of the latest (up to *want*) jobs that the event log's end
    shows going to failed/ and that are still there; None unless that makes *count*
    of them, or all that failed/ holds."""
    from ..events import decode  # noqa: PLC0415 - only status reads events
    from ..spool.eventlog import EventLog  # noqa: PLC0415

    try:
        lines = EventLog(spool.store).tail(FAILURES_TAIL)
    except (OSError, SpoolError):
        return None
    names: list[str] = []
    for line in reversed(lines):
        if b'"failed"' not in line:  # cheaper than decoding the line: not a failure
            continue
        event = decode(line)
        job_id = event.record.get("id") if event is not None and event.record.get("to") == "failed" else None
        if not isinstance(job_id, str) or not is_id(job_id):
            continue
        name = layout.job_file(job_id)
        if name not in names and spool.store.has("failed", name):
            names.append(name)
            if len(names) == want:
                return names
    return names if len(names) >= min(count, in_failed) else None
