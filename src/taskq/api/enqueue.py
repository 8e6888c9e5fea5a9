"""Enqueueing: validate what a producer gave, check dependencies and unique keys,
publish the new jobs (through :meth:`taskq.transitions.Transitions.enqueue`)."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from .. import times
from ..errors import DependencyError, DiskFullError, JobNotFoundError, ValidationError
from ..fields import check_one_start_time
from ..ids import check_id
from ..job import Job, build
from ..spool import layout, locks
from ..spool.locks import Lock

if TYPE_CHECKING:
    from . import Progress, Spool


def add(spool: Spool, given: dict[str, Any]) -> Job:
    """:meth:`taskq.Spool.add`: *given* holds its keyword arguments."""
    return _add(spool, [record_of(given)], None)[0]


def record_of(given: dict[str, Any]) -> dict[str, Any]:
    """The record fields of :meth:`taskq.Spool.add`'s keyword arguments: options not
    given (None, an empty env or list) left out, ``cwd`` made absolute and checked,
    ``run_at`` (epoch seconds) as a timestamp. ``add --each`` shares it for the options
    common to all its jobs."""
    check_one_start_time(given)
    record: dict[str, Any] = {}
    for key, value in given.items():
        if key in ("command", "permanent_exit_codes", "after", "env"):
            value = (dict(value) if key == "env" else list(value)) if value else None
        if value is not None:
            record[key] = value
    if "cwd" in record:
        cwd = os.path.abspath(record["cwd"])
        if not os.path.isdir(cwd):
            raise ValidationError(f"no such directory: {record['cwd']}", "cwd")
        record["cwd"] = cwd
    if "run_at" in record:
        record["run_at"] = _iso_or_invalid(record["run_at"], "run_at")
    return record


def add_batch(spool: Spool, records: list[Any], line_numbers: Any, progress: Progress | None = None) -> list[Job]:
    """:meth:`taskq.Spool.add_batch`."""
    numbers = list(line_numbers) if line_numbers is not None else list(range(1, len(records) + 1))
    return _add(spool, records, numbers, progress)


def _add(spool: Spool, records: list[Any], numbers: list[int] | None,
         progress: Progress | None = None) -> list[Job]:
    spool.store.ensure()
    config = spool.config
    now = times.now()
    cwd = os.getcwd()
    jobs: list[Job] = []
    for i, record in enumerate(records):
        where = f"line {numbers[i]}: " if numbers is not None else ""
        if not isinstance(record, dict):
            raise ValidationError(f"{where}a job must be a JSON object")
        try:
            jobs.append(build(record, now=now, default_cwd=cwd, defaults=config.defaults, tasks=config.tasks))
        except ValidationError as exc:
            raise ValidationError(f"{where}{exc}") from None
    _check_ids_and_dependencies(spool, records, jobs, numbers)
    limit = config.min_free
    if limit and spool.store.recent_free_bytes() < limit:
        raise DiskFullError(f"spool at {spool.path}: less than {limit} bytes free, nothing enqueued")
    return _publish(spool, jobs, progress)


def _check_ids_and_dependencies(spool: Spool, records: list[Any], jobs: list[Job],
                                numbers: list[int] | None) -> None:
    batch_ids = {job.id for job in jobs}
    if len(batch_ids) != len(jobs):
        raise ValidationError("the same id is given twice")
    for i, job in enumerate(jobs):
        where = f"line {numbers[i]}: " if numbers is not None else ""
        if "id" in records[i] and spool.jobs.locate(job.id):
            raise ValidationError(f"a job with id {job.id} exists already", "id")
        for dep in job.after:
            if dep in batch_ids:
                continue
            state = spool.jobs.state_of(dep)
            if state is None:
                raise DependencyError(f"{where}--after {dep}: no such job")
            if state == "failed":
                raise DependencyError(f"{where}--after {dep}: that job has failed")


def _publish(spool: Spool, jobs: list[Job], progress: Progress | None = None) -> list[Job]:
    """Publish *jobs*, except those whose unique key a live job holds (that job is
    returned in their place, marked as a duplicate)."""
    keys = sorted({job.unique_key for job in jobs if job.unique_key})
    held: dict[str, Lock] = {}
    try:
        for key in keys:  # sorted: two batches never wait for each other in a cycle
            held[key] = locks.key_lock(spool.store, key)
        result: list[tuple[Job, bool]] = []  # (job, whether it is a duplicate)
        fresh: list[Job] = []
        claimed: dict[str, Job] = {}
        for job in jobs:
            job_key = job.unique_key
            if job_key is not None:
                holder = claimed.get(job_key) or key_holder(spool, held[job_key])
                if holder is not None:
                    result.append((holder, True))
                    continue
                claimed[job_key] = job
            fresh.append(job)
            result.append((job, False))
        # The key files name their new holders before the jobs appear: a crash in
        # between leaves a key naming a missing job, which counts as free.
        for job in fresh:
            if job.unique_key:
                held[job.unique_key].write(job.id)
        spool.transitions.enqueue(fresh, progress)
        return [dataclasses.replace(job, duplicate=True) if dup else job for job, dup in result]
    finally:
        for lock in held.values():
            lock.release(remove=False)


def key_holder(spool: Spool, lock: Lock) -> Job | None:
    """The live (pending, running or done) job holding a key, if any."""
    holder = lock.read()
    if not holder:
        return None
    try:
        check_id(holder)
        job = spool.get(holder)
    except (ValidationError, JobNotFoundError):
        return None
    return job if job.state in layout.LIVE_STATES else None


def _iso_or_invalid(ts: float, field: str) -> str:
    try:
        return times.iso(ts)
    except (ValueError, OverflowError, OSError):
        raise ValidationError("is out of range", field) from None
