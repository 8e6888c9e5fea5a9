"""The Python API: :class:`Spool`. The CLI is a thin layer over it.

Example::

    import taskq
    job = taskq.Spool("/var/spool/myapp").add(["convert", "in.png", "out.jpg"], payload={"user": 7})
    print(job.id, job.state)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

from . import times
from .config import Config, parse_config, resolve_spool
from .errors import (
    DependencyError,
    DiskFullError,
    JobNotFoundError,
    SpoolError,
    StateConflictError,
    ValidationError,
)
from .job import STATES, Job, build, check_id, id_time, parse_json_bytes
from .lifecycle import attempt_group, cancel_file, cancel_owned, pending_file
from .spool import Lock, SpoolDir, parse_pending_name

#: Fields a producer may set in ``add --batch`` lines and drop-in files.
LIVE_STATES = ("pending", "running", "done")


class Spool:
    """A taskq spool: enqueue jobs and inspect them.

    ``Spool(path)`` does not touch the disk; :meth:`add` creates a missing spool,
    read methods raise :class:`~taskq.errors.NoSpoolError` when there is none.
    *path* defaults to ``$TASKQ_SPOOL``, else ``$XDG_DATA_HOME/taskq/spool``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = resolve_spool(path)
        self.dir = SpoolDir(self.path)
        self._config: Config | None = None

    def __repr__(self) -> str:
        return f"Spool({self.path!r})"

    @property
    def config(self) -> Config:
        """The spool's ``taskq.toml``, read once (ValidationError if it is invalid)."""
        if self._config is None:
            self._config = parse_config(self.dir.read_config(), self.dir.config_path())
            self.dir.sync = self._config.fsync
        return self._config

    # -- enqueue -----------------------------------------------------------------------

    def add(
        self,
        command: Sequence[str] | None = None,
        *,
        name: str | None = None,
        payload: Any = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: float | None = None,
        max_attempts: int | None = None,
        backoff: float | None = None,
        backoff_max: float | None = None,
        timeout: float | None = None,
        unique_key: str | None = None,
        permanent_exit_codes: Sequence[int] | None = None,
        after: Sequence[str] | None = None,
    ) -> Job:
        """Enqueue one job and return its record (``job.state == "pending"``).

        Options left as None take the task type's default (when *name* names one in
        ``taskq.toml``), else the spool's ``[defaults]``, else the built-in default.
        *delay* (seconds from now) and *run_at* (epoch seconds) are alternatives.
        With *unique_key*, if a pending, running or done job holds the key, nothing is
        created and that job is returned with ``job.duplicate`` set.

        Raises ValidationError (bad field), DependencyError (an *after* job is
        missing or failed), DiskFullError or SpoolError.
        """
        if delay is not None and run_at is not None:
            raise ValidationError("give either a delay or a run_at time, not both")
        given: dict[str, Any] = {
            "command": list(command) if command is not None else None,
            "name": name,
            "payload": payload,
            "env": dict(env) if env else None,
            "cwd": os.path.abspath(cwd) if cwd is not None else None,
            "priority": priority,
            "delay": delay,
            "run_at": _iso_or_invalid(run_at, "run_at") if run_at is not None else None,
            "max_attempts": max_attempts,
            "backoff": backoff,
            "backoff_max": backoff_max,
            "timeout": timeout,
            "unique_key": unique_key,
            "permanent_exit_codes": list(permanent_exit_codes) if permanent_exit_codes is not None else None,
            "after": list(after) if after else None,
        }
        return self._add([{k: v for k, v in given.items() if v is not None}], None)[0]

    def add_batch(
        self, records: Iterable[dict[str, Any]], line_numbers: Sequence[int] | None = None
    ) -> list[Job]:
        """Enqueue several jobs, all or nothing; return their records in order.

        Each record holds job fields (CONTRACT §4; durations as seconds or DURATION
        strings; ``delay`` allowed). Every record is validated before anything is
        written; a ValidationError names the record (``line N``: its position, or
        the matching entry of *line_numbers*) and the field.
        """
        records = list(records)
        numbers = list(line_numbers) if line_numbers is not None else list(range(1, len(records) + 1))
        return self._add(records, numbers)

    def _add(self, records: list[dict[str, Any]], numbers: list[int] | None) -> list[Job]:
        self.dir.create()
        config = self.config
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
        batch_ids = {job.id for job in jobs}
        if len(batch_ids) != len(jobs):
            raise ValidationError("the same id is given twice")
        for i, job in enumerate(jobs, 1):
            if "id" in records[i - 1] and self.dir.locate(job.id):
                raise ValidationError(f"a job with id {job.id} exists already", "id")
            for dep in job.after:
                if dep in batch_ids:
                    continue
                found = self.dir.locate(dep)
                where = f"line {numbers[i - 1]}: " if numbers is not None else ""
                if found is None:
                    raise DependencyError(f"{where}--after {dep}: no such job")
                if found[0] == "failed":
                    raise DependencyError(f"{where}--after {dep}: that job has failed")
        self._check_free_space()
        return self._enqueue(jobs)

    def _check_free_space(self) -> None:
        limit = self.config.min_free
        if limit and self.dir.free_bytes() < limit:
            raise DiskFullError(f"spool at {self.path}: less than {limit} bytes free, nothing enqueued")

    def _enqueue(self, jobs: list[Job]) -> list[Job]:
        keys = sorted({job.unique_key for job in jobs if job.unique_key})
        locks: dict[str, Lock] = {}
        try:
            for key in keys:  # sorted: two batches never wait for each other in a cycle
                locks[key] = self.dir.lock_key(key)
            result: list[Job] = []
            fresh: list[Job] = []
            claimed: dict[str, Job] = {}
            for job in jobs:
                key = job.unique_key
                if key:
                    if key in claimed:
                        result.append(_as_duplicate(claimed[key]))
                        continue
                    holder = self._key_holder(locks[key])
                    if holder is not None:
                        result.append(_as_duplicate(holder))
                        continue
                    claimed[key] = job
                job.state = "pending"
                fresh.append(job)
                result.append(job)
            # The key files name their new holders before the jobs appear: a crash in
            # between leaves a key naming a missing job, which counts as free.
            for job in fresh:
                if job.unique_key:
                    self.dir.write_lock_file(locks[job.unique_key], job.id)
            self._publish(fresh)
            return result
        finally:
            for lock in locks.values():
                lock.release(remove=False)

    def _key_holder(self, lock: Lock) -> Job | None:
        """The live (pending, running or done) job holding a key, if any."""
        holder = self.dir.read_lock_file(lock)
        if not holder:
            return None
        try:
            check_id(holder)
            job = self.get(holder)
        except (ValidationError, JobNotFoundError):
            return None
        return job if job.state in LIVE_STATES else None

    def _publish(self, jobs: list[Job]) -> None:
        self.dir.publish_new([(job.to_bytes(), pending_file(job)) for job in jobs], "pending")

    # -- manage ----------------------------------------------------------------------

    def pause(self) -> bool:
        """Stop workers from claiming (running jobs go on). Idempotent; returns whether
        the spool was paused already. Raises NoSpoolError if there is no spool."""
        self.dir.require()
        was = self.dir.is_paused()
        self.dir.set_paused(True)
        return was

    def resume(self) -> bool:
        """Let workers claim again. Idempotent; returns whether the spool was paused."""
        self.dir.require()
        was = self.dir.is_paused()
        self.dir.set_paused(False)
        return was

    def retry(self, job_ids: Sequence[str]) -> list[Job]:
        """Put failed jobs back to pending/, ready now, with a fresh budget of
        ``max_attempts`` (earlier attempts stay in the history).

        Raises JobNotFoundError, StateConflictError (not in failed/, not a valid job
        file, or its unique key is now held by another live job: the message names it).
        """
        for job_id in job_ids:
            check_id(job_id)
        self.dir.require()
        return [self._retry_one(job_id, times.now()) for job_id in job_ids]

    def failed_ids(self) -> list[str]:
        """Ids of the jobs in failed/ (for ``retry --all``)."""
        self.dir.require()
        return sorted(name[:-5] for name in self.dir.names("failed"))

    def _retry_one(self, job_id: str, now: float) -> Job:
        lock = self.dir.lock_job(job_id)
        if lock is None:
            raise StateConflictError(f"job {job_id} is busy (being claimed or run)")
        key_lock: Lock | None = None
        try:
            if not self.dir.has("failed", f"{job_id}.json"):
                found = self.dir.locate(job_id)
                if found is None:
                    raise JobNotFoundError(job_id)
                raise StateConflictError(f"job {job_id} is {found[0]}, not failed")
            try:
                job = Job.from_bytes(self.dir.read("failed", f"{job_id}.json"))
            except ValidationError as exc:
                raise StateConflictError(f"job {job_id} is not a valid job file ({exc}); fix it or purge it") from None
            if job.unique_key:
                key_lock = self.dir.lock_key(job.unique_key)
                holder = self._key_holder(key_lock)
                if holder is not None and holder.id != job_id:
                    raise StateConflictError(
                        f"job {job_id}: unique key {job.unique_key!r} is held by job {holder.id} ({holder.state})")
                self.dir.write_lock_file(key_lock, job_id)
            job.budget_start = len(job.attempts)
            job.run_at = job.retried_at = times.iso(now)
            job.settled_at = None
            self.dir.write("failed", f"{job_id}.json", job.to_bytes())
            self.dir.move("failed", f"{job_id}.json", "pending", pending_file(job))
            job.state = "pending"
            return job
        finally:
            if key_lock is not None:
                key_lock.release(remove=False)
            lock.release(remove=True)

    def cancel(self, job_ids: Sequence[str], wait: float = 10.0) -> list[Job]:
        """Cancel jobs: a pending one goes to failed/ with ``last_error`` "cancelled";
        a running one is stopped like a timeout (its worker SIGTERMs its process
        group, SIGKILL after ``kill_grace``) and goes there too. Waits up to *wait*
        seconds for running jobs to settle.

        Raises JobNotFoundError, StateConflictError (already done or failed).
        """
        for job_id in job_ids:
            check_id(job_id)
        self.dir.require()
        return [self._cancel_one(job_id, wait) for job_id in job_ids]

    def _cancel_one(self, job_id: str, wait: float) -> Job:
        import time  # noqa: PLC0415

        deadline = time.monotonic() + wait
        asked = False
        while True:
            found = self.dir.locate(job_id)
            if found is None:
                raise JobNotFoundError(job_id)
            state, name = found
            if state in ("done", "failed"):
                if asked and state == "failed":
                    return self.get(job_id)
                raise StateConflictError(f"job {job_id} is already {state}")
            lock = self.dir.lock_job(job_id)
            if lock is not None:
                try:
                    if self.dir.has(state, name):
                        # No worker owns it; stop what is left of its attempt, if anything.
                        pgid = attempt_group(self.dir, lock) if state == "running" else None
                        if pgid is not None:
                            import signal  # noqa: PLC0415

                            try:
                                os.killpg(pgid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                        return cancel_owned(self.dir, state, name, job_id, times.now())
                except FileNotFoundError:
                    pass
                finally:
                    lock.release(remove=True)
                continue  # it moved while we took the lock: look again
            if state == "running" and not asked:
                # Its worker owns it: ask it to stop the job (it watches running/).
                self.dir.write("running", cancel_file(job_id), b"", tag="cancel")
                asked = True
            if time.monotonic() >= deadline:
                if asked:
                    return self.get(job_id)
                raise StateConflictError(f"job {job_id} is busy; try again")
            time.sleep(0.05)

    def purge(self, state: str, older_than: float | None = None, now: float | None = None) -> list[str]:
        """Delete finished jobs (``done`` or ``failed``) and their logs; with
        *older_than*, only those settled more than that many seconds ago. Returns
        the ids deleted."""
        if state not in ("done", "failed"):
            raise ValidationError(f"can only purge done or failed jobs, not {state!r}", "--state")
        if older_than is not None and older_than < 0:
            raise ValidationError("must be >= 0", "--older-than")
        self.dir.require()
        now = times.now() if now is None else now
        purged = []
        for entry in list(self.dir.entries(state)):
            job_id = entry.name[:-5]
            if older_than is not None:
                # The file was last written when the job settled (or was moved back
                # by hand); its mtime is the settle time without opening it.
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                        continue
                except OSError:
                    continue
            lock = self.dir.lock_job(job_id)
            if lock is None:
                continue  # being retried right now
            try:
                if not self.dir.has(state, entry.name):
                    continue
                # The job file last: if a removal fails, the job is still listed and
                # a second purge finds its log and reason (none is left orphaned).
                self.dir.remove("logs", f"{job_id}.log")
                self.dir.remove(state, f"{job_id}.reason")
                self.dir.remove(state, entry.name)
                purged.append(job_id)
            finally:
                lock.release(remove=True)
        if purged:
            self.dir.sync_dir(state)
            self.dir.drop_keys(set(purged))
        return purged

    def log_path(self, job_id: str) -> str:
        """The path of the job's output log (which exists once it has run)."""
        self.get(job_id)
        return self.dir.log_path(job_id)

    def read_log(self, job_id: str, offset: int = 0) -> bytes:
        """The job's output from byte *offset* on: every attempt, each under its header
        line (empty before its first run). Raises JobNotFoundError."""
        self.get(job_id)
        return self.dir.read_log(job_id, offset)

    def wait(self, job_ids: Sequence[str], timeout: float | None = None) -> dict[str, str]:
        """Block until every job is settled (done/ or failed/); return id → state.

        Raises ValidationError for an invalid id, JobNotFoundError for an unknown one
        (checked before waiting), and TimeoutError when *timeout* seconds pass first.
        """
        for job_id in job_ids:
            check_id(job_id)
        self.dir.require()
        for job_id in job_ids:
            self.get(job_id)  # JobNotFoundError (a drop-in that gives its id counts)
        from .watch import Watcher  # noqa: PLC0415

        watcher = Watcher()
        for state in ("done", "failed"):
            watcher.add(self.dir.dir(state), state, added_only=True)
        deadline = None if timeout is None else times.now() + timeout
        settled: dict[str, str] = {}
        try:
            while True:
                for job_id in job_ids:
                    if job_id in settled:
                        continue
                    for state in ("done", "failed"):
                        if self.dir.has(state, f"{job_id}.json"):
                            settled[job_id] = state
                if len(settled) == len(set(job_ids)):
                    return settled
                left = None if deadline is None else deadline - times.now()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{len(set(job_ids)) - len(settled)} job(s) not settled")
                # inotify wakes us at once; the timeout bounds a missed event.
                step = 1.0 if watcher.available else 0.1
                if left is not None:
                    step = min(step, left)
                if watcher.available:
                    import select  # noqa: PLC0415

                    if select.select([watcher.fd], [], [], step)[0]:  # done/ or failed/ changed
                        watcher.read()
                else:
                    import time  # noqa: PLC0415

                    time.sleep(step)
        finally:
            watcher.close()

    def explain(self, job_id: str, now: float | None = None) -> dict[str, Any]:
        """Why the job is where it is: ``{"id", "state", "reason", "until"?}`` with
        ``reason`` a plain sentence and ``until`` the time it is waiting for, if any."""
        job = self.get(job_id)
        now = times.now() if now is None else now
        out: dict[str, Any] = {"id": job.id, "state": job.state}
        attempts = len(job.attempts)
        if job.state == "done":
            out["reason"] = f"done at {_local(job.settled_at)} after {_plural(attempts, 'attempt')}."
        elif job.state == "failed":
            why = job.last_error or "unknown reason"
            if job.extra.get("unreadable"):
                out["reason"] = f"failed: the file is not a valid job ({why})."
            elif why == "cancelled":
                out["reason"] = f"cancelled at {_local(job.settled_at)}."
            elif why.startswith("dependency "):
                out["reason"] = f"failed at {_local(job.settled_at)}: {why}."
            else:
                out["reason"] = (f"failed at {_local(job.settled_at)} after "
                                 f"{_plural(job.failures, 'counted attempt')} of {job.max_attempts}: {why}.")
        elif job.state == "running":
            current = job.current_attempt
            if current is None:
                out["reason"] = "claimed by a worker, starting or settling."
            else:
                out["reason"] = (f"running since {_local(current.started_at)} (attempt {current.number}, "
                                 f"worker {current.worker}).")
                if job.timeout:
                    until = times.parse_iso(current.started_at) + job.timeout
                    out["reason"] += f" Its time limit ends at {_local(times.iso(until))}."
                    out["until"] = times.iso(until)
        else:
            out.update(self._explain_pending(job, now))
        return out

    def _explain_pending(self, job: Job, now: float) -> dict[str, Any]:
        if job.run_at_ts > now:
            last = job.budget_attempts[-1] if job.budget_attempts else None
            if last is not None and last.counted:
                reason = (f"backing off after attempt {last.number} ({job.last_error}); "
                          f"runs again at {_local(job.run_at)}.")
            else:
                reason = f"scheduled: waiting until {_local(job.run_at)}."
            return {"reason": reason, "until": job.run_at}
        for dep in job.after:
            found = self.dir.locate(dep)
            state = found[0] if found else None
            if state == "done":
                continue
            if state == "failed" and job.retried_at:
                from .lifecycle import dependency_state  # noqa: PLC0415

                if dependency_state(self.dir, job) == ("waiting", dep):
                    return {"reason": f"waiting for dependency {dep}, which failed before this job "
                                      f"was retried: retry {dep} too."}
            if state == "failed" or state is None:
                what = "failed" if state else "does not exist"
                return {"reason": f"dependency {dep} {what}: a worker will move this job to failed/."}
            return {"reason": f"blocked by dependency {dep}, which is {state}."}
        if self.dir.is_paused():
            return {"reason": "ready, but the spool is paused (taskq resume)."}
        limit = self.config.min_free
        if limit and self.dir.free_bytes() < limit:
            return {"reason": "ready, but free space is below min_free: workers do not claim."}
        return {"reason": "ready: waiting for a worker."}

    # -- read --------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job *job_id* in whatever state it is. Raises JobNotFoundError."""
        check_id(job_id)
        self.dir.require()
        for _ in range(3):
            found = self.dir.locate(job_id)
            if found is None:
                break
            try:
                return self._load(*found)
            except FileNotFoundError:
                continue  # it moved while we read it: look again
        for job in self._dropins():
            if job.id == job_id:
                return job
        raise JobNotFoundError(job_id)

    def _dropins(self) -> list[Job]:
        """Drop-in files in pending/ that give an ``id`` and that no worker has taken in
        yet, as the jobs they will become (defaults filled, nothing written). Files
        without an id get one only when a worker takes them in: they are not shown."""
        jobs = []
        for entry in self.dir.entries("pending"):
            if parse_pending_name(entry.name) is not None:
                continue
            try:
                data = parse_json_bytes(self.dir.read("pending", entry.name))
                if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                    continue
                dropped = entry.stat(follow_symlinks=False).st_mtime
                config = self.config
                job = build(data, now=dropped, default_cwd=os.getcwd(),
                            defaults=config.defaults, tasks=config.tasks)
            except (FileNotFoundError, OSError, SpoolError, ValidationError):
                continue  # gone, or not a valid job: a worker will file it in failed/
            job.state = "pending"
            jobs.append(job)
        return jobs

    def list(self, state: str | None = None, limit: int | None = 50) -> list[Job]:
        """Jobs, newest first by ``created_at``; one *state* or all; at most *limit*."""
        if state is not None and state not in STATES:
            raise ValidationError(f"unknown state {state!r} (use {', '.join(STATES)})", "--state")
        if limit is not None and limit < 0:
            raise ValidationError("must be >= 0", "--limit")
        self.dir.require()
        found: list[tuple[float, str, str, str]] = []
        for st in (state,) if state else STATES:
            for name in self.dir.names(st):
                job_id = _id_of(st, name)
                if job_id is None:
                    continue
                created = id_time(job_id)
                if created is None:
                    try:
                        created = self._load(st, name).created_ts
                    except (FileNotFoundError, ValueError):
                        created = 0.0
                found.append((created, job_id, st, name))
        dropins = {job.id: job for job in self._dropins()} if state in (None, "pending") else {}
        found += [(job.created_ts, job.id, "pending", "") for job in dropins.values()]
        found.sort(reverse=True)
        jobs: list[Job] = []
        for _, job_id, st, name in found:
            if limit is not None and len(jobs) >= limit:
                break
            if not name:
                jobs.append(dropins[job_id])
                continue
            try:
                jobs.append(self._load(st, name))
            except FileNotFoundError:
                continue  # moved since the listing; it shows up next time
        return jobs

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The spool at a glance, from directory listings (job files are opened only
        for running jobs, recent failures, and pending jobs with dependencies)."""
        self.dir.require()
        now = times.now() if now is None else now
        now_key = times.name_key(now)
        names = {st: self.dir.names(st) for st in STATES}
        done_ids = None
        ready = scheduled = waiting = 0
        oldest_id: str | None = None
        for name in names["pending"]:
            parsed = parse_pending_name(name)
            if parsed is None:  # a drop-in file not yet normalised: ready at once
                ready += 1
                continue
            if parsed.run_key > now_key:
                scheduled += 1
                continue
            if parsed.has_deps:
                if done_ids is None:
                    done_ids = {n[:-5] for n in names["done"]}
                if not self._deps_done(name, done_ids):
                    waiting += 1
                    continue
            ready += 1
            # Generated ids sort by creation time: only the smallest needs decoding.
            if len(parsed.id) == 26 and (oldest_id is None or parsed.id < oldest_id):
                oldest_id = parsed.id
        oldest = id_time(oldest_id) if oldest_id else None
        running = []
        for name in sorted(names["running"]):
            try:
                job = self._load("running", name)
            except (FileNotFoundError, ValueError):
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
        failures = []
        recent = sorted(self.dir.entries("failed"), key=_mtime, reverse=True)[:5]
        for entry in recent:
            try:
                job = self._load("failed", entry.name)
            except (FileNotFoundError, ValueError):
                continue
            failures.append({"id": job.id, "name": job.name, "last_error": job.last_error,
                             "settled_at": job.settled_at})
        return {
            "spool": self.path,
            "paused": self.dir.is_paused(),
            "counts": {st: len(names[st]) for st in STATES},
            "ready": ready,
            "scheduled": scheduled,
            "waiting": waiting,
            "oldest_ready_age": round(now - oldest, 3) if oldest is not None else None,
            "running": running,
            "recent_failures": failures,
        }

    def _deps_done(self, name: str, done_ids: set[str]) -> bool:
        try:
            data = parse_json_bytes(self.dir.read("pending", name))
        except (FileNotFoundError, SpoolError, ValidationError):
            return False
        after = data.get("after") if isinstance(data, dict) else None
        return isinstance(after, list) and all(dep in done_ids for dep in after)

    def _load(self, state: str, name: str) -> Job:
        """Read one job file. A failed/ file that is not a valid job is presented as a
        record whose ``last_error`` says why (from its ``.reason`` file)."""
        try:
            job = Job.from_bytes(self.dir.read(state, name))
        except (ValidationError, SpoolError) as exc:  # SpoolError: too large, not readable
            if state != "failed":
                raise
            job = self._unreadable(name, str(exc))
        job.state = state
        return job

    def _unreadable(self, name: str, why: str) -> Job:
        job_id = name[:-5]
        reason: dict[str, Any] = {}
        try:
            reason = json.loads(self.dir.read("failed", f"{job_id}.reason"))
        except (FileNotFoundError, SpoolError, ValueError):
            reason = {"last_error": f"unreadable job file: {why}"}
        stamp = reason.get("settled_at") or times.iso(0)
        return Job(
            id=job_id, command=[], cwd="/", created_at=stamp, run_at=stamp,
            last_error=reason.get("last_error"), settled_at=reason.get("settled_at"),
            extra={"unreadable": True, "original_name": reason.get("original_name")},
        )


def _iso_or_invalid(ts: float, field: str) -> str:
    try:
        return times.iso(ts)
    except (ValueError, OverflowError, OSError):
        raise ValidationError("is out of range", field) from None


def _local(stamp: str | None) -> str:
    """A record's timestamp as local time, for sentences."""
    if not stamp:
        return "an unknown time"
    import time  # noqa: PLC0415

    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(times.parse_iso(stamp)))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _id_of(state: str, name: str) -> str | None:
    if state == "pending":
        parsed = parse_pending_name(name)
        return parsed.id if parsed else None
    return name[:-5]


def _as_duplicate(job: Job) -> Job:
    return dataclasses.replace(job, duplicate=True)


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0
