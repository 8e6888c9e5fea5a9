"""Managing jobs: pause and resume the spool, retry, cancel and purge jobs. Each
change of a job is a transition (:mod:`taskq.transitions`) made while owning it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import times
from ..errors import JobNotFoundError, SpoolError, StateConflictError, ValidationError
from ..ids import check_id
from ..job import Job
from ..spool import layout, locks
from ..spool.fileio import VANISHED
from ..spool.jobs import Owned, mtime_of
from ..spool.locks import Lock
from .enqueue import key_holder

if TYPE_CHECKING:
    from . import Progress, Spool

#: How often ``cancel`` looks whether a running job has settled.
CANCEL_POLL = 0.05


def set_paused(spool: Spool, paused: bool) -> bool:
    """Pause or resume; return whether the spool was paused before."""
    spool.require()
    was = spool.store.is_paused()
    spool.store.set_paused(paused)
    return was


def failed_ids(spool: Spool, name: str | None) -> list[str]:
    """:meth:`taskq.Spool.failed_ids`."""
    _check_name(name)
    spool.require()
    return sorted(job_id for job_id in spool.jobs.ids("failed")
                  if name is None or _named(spool, "failed", layout.job_file(job_id), name))


def _check_name(name: str | None) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ValidationError("must be a non-empty string", "--name")


def _named(spool: Spool, state: str, file: str, name: str) -> bool:
    """Whether the job in *state*/*file* is named *name*. A name never changes, so
    this needs no lock; a file that has gone or is not a valid job has no name."""
    try:
        return spool.jobs.load(state, file).name == name
    except (FileNotFoundError, ValidationError, SpoolError):
        return False


def retry(spool: Spool, job_ids: Sequence[str]) -> list[Job]:
    for job_id in job_ids:
        check_id(job_id)
    spool.require()
    return [_retry_one(spool, job_id, times.now()) for job_id in job_ids]


def _retry_one(spool: Spool, job_id: str, now: float) -> Job:
    where = ("failed", layout.job_file(job_id))
    if not spool.store.has(*where):
        found = spool.jobs.locate(job_id)
        if found is None:
            raise JobNotFoundError(job_id)
        raise StateConflictError(f"job {job_id} is {found[0]}, not failed")
    owned = spool.jobs.own(job_id, where)
    if owned is None:
        raise StateConflictError(f"job {job_id} is busy (being claimed or run)")
    key_lock: Lock | None = None
    try:
        try:
            job = spool.jobs.load(owned.state, owned.name)
        except ValidationError as exc:
            raise StateConflictError(f"job {job_id} is not a valid job file ({exc}); fix it or purge it") from None
        if job.unique_key:
            key_lock = locks.key_lock(spool.store, job.unique_key)
            holder = key_holder(spool, key_lock)
            if holder is not None and holder.id != job_id:
                raise StateConflictError(
                    f"job {job_id}: unique key {job.unique_key!r} is held by job {holder.id} ({holder.state})")
            key_lock.write(job_id)
        return spool.transitions.retry(owned, job, now)
    finally:
        if key_lock is not None:
            key_lock.release(remove=False)
        owned.release()


def cancel(spool: Spool, job_ids: Sequence[str], wait: float) -> list[Job]:
    for job_id in job_ids:
        check_id(job_id)
    spool.require()
    return [_cancel_one(spool, job_id, wait) for job_id in job_ids]


def _cancel_one(spool: Spool, job_id: str, wait: float) -> Job:
    """Cancel a job: directly if no worker owns it, else by asking its worker (a
    ``running/ID.cancel`` file, which the worker watches) and waiting for it."""
    deadline = time.monotonic() + wait
    asked = False
    while True:
        try:
            found = spool.jobs.locate(job_id)
            if found is None:
                raise JobNotFoundError(job_id)
            state = found[0]
            if state in layout.SETTLED:
                if asked and state == "failed":
                    return spool.get(job_id)
                raise StateConflictError(f"job {job_id} is already {state}")
            owned = spool.jobs.own(job_id, found)
            if owned is not None and state == "running" and spool.transitions.held_elsewhere(job_id, owned.lock):
                # Its lock was free only because its worker is on another host (README,
                # "Several hosts"): ask that worker, like any worker that holds its job.
                owned.lock.release(remove=False)
                owned = None
            if owned is not None:
                try:
                    _stop_leftovers(spool, owned)
                    return spool.transitions.cancel(owned, times.now())
                except FileNotFoundError:
                    pass  # it moved while we took the lock: look again
                finally:
                    owned.release()
                continue
            if not spool.store.has(*found):
                continue  # it moved: look again
            if state == "running" and not asked:
                spool.jobs.request_cancel(job_id)
                asked = True
        except OSError as exc:
            # A file of the job that another host has just removed (its worker settled
            # it): look again after the pause.
            if exc.errno not in VANISHED:
                raise
        if time.monotonic() >= deadline:
            if asked:
                return spool.get(job_id)
            raise StateConflictError(f"job {job_id} is busy; try again")
        time.sleep(CANCEL_POLL)


def _stop_leftovers(spool: Spool, owned: Owned) -> None:
    """No worker owns this job; stop what is left of its attempt, if anything (a
    process that dropped the lock's descriptor)."""
    pgid = spool.jobs.attempt_group(owned.lock) if owned.state == "running" else None
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def purge(spool: Spool, state: str, older_than: float | None, now: float | None, *,
          name: str | None = None, dry_run: bool = False, progress: Progress | None = None) -> list[str]:
    """:meth:`taskq.Spool.purge`."""
    if state not in layout.SETTLED:
        raise ValidationError(f"can only purge done or failed jobs, not {state!r}", "--state")
    if older_than is not None and older_than < 0:
        raise ValidationError("must be >= 0", "--older-than")
    _check_name(name)
    spool.require()
    now = times.now() if now is None else now
    candidates = []
    for entry in sorted(spool.store.entries(state), key=lambda e: e.name):
        job_id = layout.stem(entry.name)
        if job_id is None:
            continue
        # The file was last written when the job settled (or was moved back by hand):
        # its mtime is the settle time without opening it.
        if older_than is not None and now - mtime_of(entry) < older_than:
            continue
        candidates.append((job_id, entry.name))
    purged = []
    for done, (job_id, file) in enumerate(candidates, 1):
        if name is None or _named(spool, state, file, name):
            if dry_run:
                purged.append(job_id)
            elif _purge_one(spool, job_id, state, file):
                purged.append(job_id)
        if progress is not None:
            progress(done, len(candidates))
    if purged and not dry_run:
        spool.store.sync_dir(state)
        locks.drop_keys(spool.store, set(purged))
    return purged


def _purge_one(spool: Spool, job_id: str, state: str, file: str) -> bool:
    """Delete one settled job and its log; False if it is busy (being retried right
    now) or gone."""
    owned = spool.jobs.own(job_id, (state, file))
    if owned is None:
        return False
    try:
        spool.transitions.purge(owned)
        return True
    finally:
        owned.release()
