"""A job's state changes on the worker side: claim → start → settle, recovery of jobs
whose worker died, normalisation of drop-in files, quarantine of files that are not
jobs, and failing the dependents of failed jobs.

Each change keeps the spool's invariant: a job file is in exactly one state directory
at every instant. When the record changes with the state, the new record is first
written over the file where it is (stage in tmp/, fsync, rename, fsync), then the file
is renamed into its new directory. A crash between the two leaves the job in running/
with its outcome recorded; recovery finishes the move (see :func:`recover`).

Every change of a job is made while holding its run lock (``running/ID.lock``), which
is taken *before* the claim's rename: whoever holds it owns the job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from . import times
from .errors import SpoolError, ValidationError
from .job import Attempt, Job, build, check_id, new_id, parse_json_bytes
from .policy import WORKER_LOST, Decision, Outcome, decide
from .spool import Lock, PendingName, SpoolDir, boot_id, pending_name

def worker_name() -> str:
    """``host:pid``, recorded in each attempt."""
    return f"{os.uname().nodename}:{os.getpid()}"


@dataclass
class Claimed:
    """A job this process owns: it is in running/ and we hold its run lock."""

    job: Job
    lock: Lock


def job_file(job_id: str) -> str:
    return f"{job_id}.json"


def pending_file(job: Job) -> str:
    return pending_name(job.id, job.priority, times.name_key(job.run_at_ts), bool(job.after))


def claim(sd: SpoolDir, entry: PendingName) -> Claimed | None:
    """Claim one pending job: lock, rename pending → running, read it.

    Returns None when another worker got there first, or when the file turned out
    not to be a valid job (it is then moved to failed/ with the reason beside it).
    """
    if not sd.has("pending", entry.name):
        return None  # gone, or not a regular file: never touched
    lock = sd.lock_job(entry.id)
    if lock is None:
        return None
    try:
        sd.move("pending", entry.name, "running", job_file(entry.id))
    except FileNotFoundError:
        lock.release(remove=True)
        return None
    except SpoolError:
        lock.release(remove=True)
        raise
    try:
        job = _read_job(sd, "running", job_file(entry.id))
        if job.id != entry.id:
            raise ValidationError(f"id {job.id!r} in the file does not match its name")
    except (ValidationError, SpoolError) as exc:
        try:
            quarantine(sd, "running", job_file(entry.id), entry.id, str(exc))
        finally:
            lock.release(remove=True)
        return None
    job.state = "running"
    return Claimed(job, lock)


def start_attempt(sd: SpoolDir, claimed: Claimed, now: float) -> Attempt:
    """Record a new attempt (not finished) in the running job's file."""
    job = claimed.job
    attempt = Attempt(number=len(job.attempts) + 1, started_at=times.iso(now), worker=worker_name())
    job.attempts.append(attempt)
    try:
        sd.write("running", job_file(job.id), job.to_bytes())
    except SpoolError:
        job.attempts.pop()
        raise
    return attempt


def unclaim(sd: SpoolDir, claimed: Claimed, not_before: float) -> None:
    """Put a claimed job whose attempt never started back to pending/, with no attempt
    recorded, ready again at *not_before* at the earliest. Releases the run lock."""
    job = claimed.job
    try:
        run_at = max(job.run_at_ts, not_before)
        apply(sd, job, Decision("pending", run_at=run_at, last_error=job.last_error), times.now())
    finally:
        claimed.lock.release(remove=True)


def settle(sd: SpoolDir, claimed: Claimed, outcome: Outcome, now: float, jitter: float) -> Decision:
    """Record how the current attempt ended, decide, and move the job (done/, failed/,
    or back to pending/ at its retry time). Releases the run lock."""
    job = claimed.job
    try:
        attempt = job.attempts[-1]
        attempt.finished_at = times.iso(now)
        attempt.exit_code = outcome.exit_code
        attempt.signal = outcome.signal
        attempt.timed_out = outcome.timed_out
        attempt.error = outcome.error
        decision = decide(job, outcome, now, jitter)
        apply(sd, job, decision, now)
        sd.remove("running", cancel_file(job.id))
        return decision
    finally:
        claimed.lock.release(remove=True)


def cancel_file(job_id: str) -> str:
    """``running/ID.cancel``: asks the worker running the job to stop it."""
    return f"{job_id}.cancel"


def cancel_owned(sd: SpoolDir, state: str, name: str, job_id: str, now: float) -> Job:
    """Cancel a job whose run lock the caller holds: pending (moved through running/)
    or running with no live process (its attempt is closed as cancelled)."""
    current = job_file(job_id)
    if state == "pending":
        sd.move("pending", name, "running", current)
    job = _read_job(sd, "running", current)
    attempt = job.current_attempt
    if attempt is not None:
        attempt.finished_at = times.iso(now)
        attempt.error = "cancelled"
    apply(sd, job, Decision("failed", last_error="cancelled"), now)
    sd.remove("running", cancel_file(job_id))
    return job


def apply(sd: SpoolDir, job: Job, decision: Decision, now: float) -> None:
    """Write *job* updated by *decision* in running/, then move it to its new state."""
    current = job_file(job.id)
    job.last_error = decision.last_error
    if decision.state == "pending":
        job.run_at = times.iso(decision.run_at if decision.run_at is not None else now)
        job.settled_at = None
        dest_state, dest_name = "pending", pending_file(job)
    else:
        job.settled_at = times.iso(now)
        dest_state, dest_name = decision.state, current
    sd.write("running", current, job.to_bytes())
    sd.move("running", current, dest_state, dest_name)
    job.state = dest_state


def recover(sd: SpoolDir, job_id: str, now: float, jitter: float) -> tuple[str, Decision] | None:
    """Recover running/ID.json if nobody owns it any more (its run lock is free: no
    worker and no process of the attempt is alive). Returns what was done, or None
    when the job is alive or already gone.

    * an attempt in progress is closed as "worker lost" (it counts) and the job goes
      through the retry policy;
    * an attempt that had finished (the worker died while settling) is settled by its
      recorded outcome;
    * a job claimed but never started goes back to pending as it was.
    """
    lock = sd.lock_job(job_id)
    if lock is None:
        return None
    remove_lock = True
    try:
        name = job_file(job_id)
        if not sd.has("running", name):
            return None
        if attempt_group(sd, lock) is not None:
            # A process of the attempt that did not keep the lock's descriptor (a
            # daemon, a child that closed its fds) is still alive: not yet.
            remove_lock = False
            return None
        try:
            job = _read_job(sd, "running", name)
        except (ValidationError, SpoolError) as exc:
            if _is_drop_in(sd, name):
                # normalise() stopped (crash, I/O error) between moving a drop-in file
                # here and writing its complete record: it goes back as the drop-in it was.
                sd.move("running", name, "pending", name)
                return "returned", Decision("pending", run_at=now)
            quarantine(sd, "running", name, job_id, str(exc))
            return "quarantined", Decision("failed", last_error=str(exc))
        current = job.current_attempt
        if current is not None:
            current.finished_at = times.iso(now)
            current.error = WORKER_LOST
            decision = decide(job, Outcome(error=WORKER_LOST), now, jitter)
            what = "worker lost"
        elif job.budget_attempts:
            last = job.budget_attempts[-1]
            outcome = Outcome(last.exit_code, last.signal, last.timed_out, last.error)
            decision = decide(job, outcome, times.parse_iso(last.finished_at or job.run_at), jitter)
            what = "settled"
        else:
            decision = Decision("pending", run_at=job.run_at_ts, last_error=job.last_error)
            what = "returned"
        apply(sd, job, decision, now)
        return what, decision
    finally:
        lock.release(remove=remove_lock)


def record_group(sd: SpoolDir, lock: Lock, pgid: int) -> None:
    """Note the attempt's process group in its lock file (see :func:`attempt_group`)."""
    sd.write_lock_file(lock, f"pgid={pgid} boot={boot_id()}", durable=False)


def attempt_group(sd: SpoolDir, lock: Lock) -> int | None:
    """The process group of the attempt recorded in a held run lock's file, if a
    process of it is still alive (in this boot)."""
    fields = dict(part.split("=", 1) for part in sd.read_lock_file(lock).split() if "=" in part)
    try:
        pgid = int(fields.get("pgid", ""))
    except ValueError:
        return None
    if pgid <= 1 or fields.get("boot") != boot_id():
        return None
    from .runner import group_alive  # noqa: PLC0415 - the worker side only

    return pgid if group_alive(pgid) else None


def normalise(sd: SpoolDir, name: str, now: float, default_cwd: str,
              defaults: dict, tasks: dict) -> Job | None:
    """Turn a drop-in file (any ``*.json`` name in pending/) into a job with an id and a
    proper name, filling defaults. A file that is not a valid job goes to failed/.
    Returns the job (now pending), or None (lost a race, or quarantined)."""
    if not sd.has("pending", name):
        return None  # gone, or a directory, symlink...: left where it is, never read
    try:
        data = parse_json_bytes(sd.read("pending", name))
        given = data.get("id") if isinstance(data, dict) else None
    except FileNotFoundError:
        return None
    except (ValidationError, SpoolError):
        given = None
    job_id = given if isinstance(given, str) and _valid_id(given) and not sd.locate(given) else new_id(now)
    lock = sd.lock_job(job_id)
    if lock is None:
        return None
    try:
        current = job_file(job_id)
        try:
            sd.move("pending", name, "running", current)
        except FileNotFoundError:
            return None
        try:
            data = parse_json_bytes(sd.read("running", current))
            if not isinstance(data, dict):
                raise ValidationError("a job must be a JSON object")
            data["id"] = job_id
            if all(k in data for k in ("cwd", "created_at", "run_at")):
                job = Job.from_record(data)  # a complete record, e.g. moved back by hand
            else:
                job = build(data, now=now, default_cwd=default_cwd, defaults=defaults, tasks=tasks)
        except (ValidationError, SpoolError) as exc:
            quarantine(sd, "running", current, job_id, str(exc), original=name)
            return None
        sd.write("running", current, job.to_bytes())
        sd.move("running", current, "pending", pending_file(job))
        job.state = "pending"
        return job
    finally:
        lock.release(remove=True)


def quarantine(sd: SpoolDir, state: str, name: str, job_id: str, why: str,
               original: str | None = None) -> str:
    """Move a file that is not a valid job to failed/, bytes untouched, with the
    reason in ``failed/ID.reason`` beside it. Returns the id it is filed under."""
    if sd.has("failed", job_file(job_id)):
        job_id = new_id()
    reason = {
        "last_error": f"invalid job file: {why}",
        "original_name": original or name,
        "settled_at": times.iso(times.now()),
    }
    sd.write("failed", f"{job_id}.reason", json.dumps(reason).encode() + b"\n", tag="reason")
    sd.move(state, name, "failed", job_file(job_id))
    return job_id


def dependency_state(sd: SpoolDir, job: Job) -> tuple[str, str | None]:
    """``("ready", None)`` when every job in ``after`` is done, ``("waiting", id)``
    while one is not settled, ``("failed", id)`` when one failed or does not exist.

    A dependency that failed *before* this job was retried does not fail it again:
    the retried job waits (CONTRACT §7: "retry of such a dependent puts it back to
    waiting") until that dependency is retried and settles once more.
    """
    for dep in job.after:
        if sd.has("done", job_file(dep)):
            continue
        if sd.has("failed", job_file(dep)):
            if job.retried_at and _failed_before(sd, dep, times.parse_iso(job.retried_at)):
                return "waiting", dep
            return "failed", dep
        if sd.locate(dep) is None:
            return "failed", dep
        return "waiting", dep
    return "ready", None


def _failed_before(sd: SpoolDir, dep: str, since: float) -> bool:
    try:
        settled = _read_job(sd, "failed", job_file(dep)).settled_at
    except (FileNotFoundError, ValidationError, SpoolError):
        return False
    return settled is not None and times.parse_iso(settled) <= since


def fail_dependent(sd: SpoolDir, entry: PendingName, dep: str, now: float) -> bool:
    """Move a pending job whose dependency *dep* failed to failed/."""
    lock = sd.lock_job(entry.id)
    if lock is None:
        return False
    try:
        current = job_file(entry.id)
        try:
            sd.move("pending", entry.name, "running", current)
        except FileNotFoundError:
            return False
        try:
            job = _read_job(sd, "running", current)
        except (ValidationError, SpoolError) as exc:
            quarantine(sd, "running", current, entry.id, str(exc))
            return True
        apply(sd, job, Decision("failed", last_error=f"dependency {dep} failed"), now)
        return True
    finally:
        lock.release(remove=True)


def read_pending(sd: SpoolDir, entry: PendingName) -> Job | None:
    """Read a pending job without claiming it (None if gone or unreadable)."""
    try:
        return _read_job(sd, "pending", entry.name)
    except (FileNotFoundError, ValidationError, SpoolError):
        return None


def _read_job(sd: SpoolDir, state: str, name: str) -> Job:
    return Job.from_bytes(sd.read(state, name))


def _is_drop_in(sd: SpoolDir, name: str) -> bool:
    """Whether running/*name* is a drop-in file not yet normalised: a JSON object
    without the fields every complete record has."""
    try:
        data = parse_json_bytes(sd.read("running", name))
    except (FileNotFoundError, ValidationError, SpoolError):
        return False
    return isinstance(data, dict) and not all(k in data for k in ("cwd", "created_at", "run_at"))


def _valid_id(value: str) -> bool:
    try:
        check_id(value)
        return True
    except ValidationError:
        return False
