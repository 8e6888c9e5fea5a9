"""The Python API: :class:`Spool`. The CLI is a thin layer over it.

The parts are imported when first used, so that ``taskq add`` loads only what it
needs. Example::

    import taskq
    job = taskq.Spool("/var/spool/myapp").add(["convert", "in.png", "out.jpg"], payload={"user": 7})
    print(job.id, job.state)

:class:`Spool` is a facade: enqueueing is :mod:`.enqueue`, managing jobs (pause,
retry, cancel, purge) :mod:`.manage`, reading them :mod:`.inspect`, :mod:`.explain`
and :mod:`.waiting`.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import Config, parse_config, resolve_spool
from ..job import Job
from ..spool.jobs import JobStore
from ..spool.store import Store
from ..transitions import Transitions
from . import enqueue

if TYPE_CHECKING:
    from ..spool.joblog import LogReader


class Spool:
    """A taskq spool: enqueue jobs and inspect them.

    ``Spool(path)`` does not touch the disk; :meth:`add` creates a missing spool,
    read methods raise :class:`~taskq.errors.NoSpoolError` when there is none.
    *path* defaults to ``$TASKQ_SPOOL``, else ``$XDG_DATA_HOME/taskq/spool``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = resolve_spool(path)
        self.store = Store(self.path)
        self.jobs = JobStore(self.store)
        self.transitions = Transitions(self.jobs)
        self._config: Config | None = None

    def __repr__(self) -> str:
        return f"Spool({self.path!r})"

    @property
    def config(self) -> Config:
        """The spool's ``taskq.toml``, read once (ValidationError if it is invalid)."""
        if self._config is None:
            self._config = parse_config(self.store.read_config(), self.store.config_path())
            self.store.sync = self._config.fsync
        return self._config

    def require(self) -> None:
        """Raise NoSpoolError unless the spool exists."""
        self.store.require()

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
        *cwd* must be an existing directory. With *unique_key*, if a pending, running
        or done job holds the key, nothing is created and that job is returned with
        ``job.duplicate`` set.

        Raises ValidationError (bad field), DependencyError (an *after* job is
        missing or failed), DiskFullError or SpoolError.
        """
        given = dict(
            command=command, name=name, payload=payload, env=env, cwd=cwd, priority=priority,
            delay=delay, run_at=run_at, max_attempts=max_attempts, backoff=backoff,
            backoff_max=backoff_max, timeout=timeout, unique_key=unique_key,
            permanent_exit_codes=permanent_exit_codes, after=after,
        )
        return enqueue.add(self, given)

    def add_batch(self, records: Iterable[dict[str, Any]], line_numbers: Sequence[int] | None = None) -> list[Job]:
        """Enqueue several jobs, all or nothing; return their records in order.

        Each record holds job fields (README, "The job record"; durations as seconds
        or DURATION strings; ``delay`` allowed). Every record is validated before
        anything is written; a ValidationError names the record (``line N``: its
        position, or the matching entry of *line_numbers*) and the field.
        """
        return enqueue.add_batch(self, list(records), line_numbers)

    # -- manage ------------------------------------------------------------------------

    def pause(self) -> bool:
        """Stop workers from claiming (running jobs go on). Idempotent; returns whether
        the spool was paused already. Raises NoSpoolError if there is no spool."""
        from . import manage  # noqa: PLC0415 - `taskq add` does not need it

        return manage.set_paused(self, True)

    def resume(self) -> bool:
        """Let workers claim again. Idempotent; returns whether the spool was paused."""
        from . import manage  # noqa: PLC0415

        return manage.set_paused(self, False)

    def retry(self, job_ids: Sequence[str]) -> builtins.list[Job]:
        """Put failed jobs back to pending/, ready now, with a fresh budget of
        ``max_attempts`` (earlier attempts stay in the history).

        Raises JobNotFoundError, StateConflictError (not in failed/, not a valid job
        file, or its unique key is now held by another live job: the message names it).
        """
        from . import manage  # noqa: PLC0415

        return manage.retry(self, job_ids)

    def failed_ids(self) -> builtins.list[str]:
        """Ids of the jobs in failed/ (for ``retry --all``)."""
        self.require()
        return sorted(self.jobs.ids("failed"))

    def cancel(self, job_ids: Sequence[str], wait: float = 10.0) -> builtins.list[Job]:
        """Cancel jobs: a pending one goes to failed/ with ``last_error`` "cancelled";
        a running one is stopped like a timeout (its worker SIGTERMs its process
        group, SIGKILL after ``kill_grace``) and goes there too. Waits up to *wait*
        seconds for running jobs to settle.

        Raises JobNotFoundError, StateConflictError (already done or failed).
        """
        from . import manage  # noqa: PLC0415

        return manage.cancel(self, job_ids, wait)

    def purge(self, state: str, older_than: float | None = None, now: float | None = None) -> builtins.list[str]:
        """Delete finished jobs (``done`` or ``failed``) and their logs; with
        *older_than*, only those settled more than that many seconds ago. Returns
        the ids deleted."""
        from . import manage  # noqa: PLC0415

        return manage.purge(self, state, older_than, now)

    # -- inspect -----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job *job_id* in whatever state it is. Raises JobNotFoundError."""
        from . import inspect  # noqa: PLC0415 - `taskq add` needs it only for unique keys

        return inspect.get(self, job_id)

    def list(self, state: str | None = None, limit: int | None = 50) -> builtins.list[Job]:
        """Jobs, newest first by ``created_at``; one *state* or all; at most *limit*.
        Drop-in files not yet taken in are listed as pending (one without an ``id``
        shows ``id`` None and its ``file``)."""
        from . import inspect  # noqa: PLC0415 - `taskq add` needs it only for unique keys

        return inspect.list_jobs(self, state, limit)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The spool at a glance, from directory listings (job files are opened only
        for running jobs, recent failures, and pending jobs with dependencies)."""
        from . import inspect  # noqa: PLC0415 - `taskq add` needs it only for unique keys

        return inspect.status(self, now)

    def explain(self, job_id: str, now: float | None = None) -> dict[str, Any]:
        """Why the job is where it is: ``{"id", "state", "reason", "until"?}`` with
        ``reason`` a plain sentence and ``until`` the time it is waiting for, if any."""
        from .explain import explain  # noqa: PLC0415 - only `taskq explain` needs it

        return explain(self, job_id, now)

    def wait(self, job_ids: Sequence[str], timeout: float | None = None) -> dict[str, str]:
        """Block until every job is settled (done/ or failed/); return id → state.

        Raises ValidationError for an invalid id, JobNotFoundError for an unknown one
        (checked before waiting), and TimeoutError when *timeout* seconds pass first.
        """
        from .waiting import wait  # noqa: PLC0415 - only `taskq wait` needs it

        return wait(self, job_ids, timeout)

    def log_path(self, job_id: str) -> str:
        """The path of the job's output log (which exists once it has run)."""
        self.get(job_id)
        return self.store.log_path(job_id)

    def read_log(self, job_id: str, offset: int = 0) -> bytes:
        """The job's output from byte *offset* on: every attempt, each under its header
        line (empty before its first run). Raises JobNotFoundError. These are the
        file's bytes: while an attempt runs, output ``log_max`` dropped may read as NUL
        bytes (a hole), and a cut replaces the file by a shorter one. To read a running
        job's log, and to follow one, use :meth:`log_reader`."""
        self.get(job_id)
        return self.store.read_log(job_id, offset)

    def log_reader(self, job_id: str) -> LogReader:
        """A reader of the job's log whose ``read()`` returns, each time, what was added
        since the last call (the whole log the first time), across cuts made by
        ``log_max``. Raises JobNotFoundError."""
        from ..spool.joblog import LogReader  # noqa: PLC0415 - only `taskq logs` needs it

        self.get(job_id)
        return LogReader(self.store, job_id)
