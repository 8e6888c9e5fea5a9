"""The Python API: :class:`Spool`. The CLI is a thin layer over it.

The parts are imported when first used, so that ``taskq add`` loads only what it
needs. Example::

    import taskq
    job = taskq.Spool("/var/spool/myapp").add(["convert", "in.png", "out.jpg"], payload={"user": 7})
    print(job.id, job.state)

:class:`Spool` is a facade: enqueueing is :mod:`.enqueue`, managing jobs (pause,
retry, cancel, purge) :mod:`.manage`, reading them :mod:`.inspect`, :mod:`.explain`
and :mod:`.waiting`, checking and repairing the spool :mod:`.fsck`.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..config import Config, parse_config, resolve_spool
from ..events import EventRecorder
from ..job import Job
from ..spool.eventlog import EventLog
from ..spool.jobs import JobStore
from ..spool.store import Store
from ..transitions import Transitions
from . import enqueue

#: A progress report: called with (jobs handled so far, jobs in all) after each job.
Progress = Callable[[int, int], None]

if TYPE_CHECKING:
    from ..metrics import Family
    from ..spool.joblog import LogReader
    from .fsck import Report as FsckReport


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
        self.transitions = Transitions(self.jobs, lease_timeout=lambda: self.config.lease_timeout)
        #: writes each state change to the event log (a worker sets its ``worker``)
        self.event_recorder = EventRecorder(EventLog(self.store), self._event_settings)
        self.transitions.subscribe(observe=self.event_recorder)
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

    def init(self) -> builtins.list[str]:
        """Create the spool where it is missing: the directory (and its parents) and
        every state directory, mode 0700, as ``add`` and ``work`` do. Idempotent;
        returns the directories created (empty: the spool was complete). Raises
        SpoolError when the path, or one of its directories, is not a directory."""
        return self.store.create()

    def _event_settings(self) -> tuple[int, int]:
        return self.config.events_max, self.config.events_keep

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

    def add_batch(self, records: Iterable[dict[str, Any]], line_numbers: Sequence[int] | None = None,
                  *, progress: Progress | None = None) -> list[Job]:
        """Enqueue several jobs, all or nothing; return their records in order.

        Each record holds job fields (README, "The job record"; durations as seconds
        or DURATION strings; ``delay`` allowed). Every record is validated before
        anything is written; a ValidationError names the record (``line N``: its
        position, or the matching entry of *line_numbers*) and the field.
        *progress*, if given, is called as each new job is written (made durable),
        with the count so far and the number of new jobs (duplicates of a unique
        key are not written); they appear in pending/ together at the end.
        """
        return enqueue.add_batch(self, list(records), line_numbers, progress)

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

    def failed_ids(self, *, name: str | None = None) -> builtins.list[str]:
        """Ids of the jobs in failed/ (for ``retry --all``); with *name*, only those of
        jobs with that name (their files are then read). Raises ValidationError for
        an empty *name*."""
        from . import manage  # noqa: PLC0415

        return manage.failed_ids(self, name)

    def cancel(self, job_ids: Sequence[str], wait: float = 10.0) -> builtins.list[Job]:
        """Cancel jobs: a pending one goes to failed/ with ``last_error`` "cancelled";
        a running one is stopped like a timeout (its worker SIGTERMs its process
        group, SIGKILL after ``kill_grace``) and goes there too. Waits up to *wait*
        seconds for running jobs to settle.

        Raises JobNotFoundError, StateConflictError (already done or failed).
        """
        from . import manage  # noqa: PLC0415

        return manage.cancel(self, job_ids, wait)

    def purge(self, state: str, older_than: float | None = None, now: float | None = None, *,
              name: str | None = None, dry_run: bool = False,
              progress: Progress | None = None) -> builtins.list[str]:
        """Delete finished jobs (``done`` or ``failed``) and their logs; with
        *older_than*, only those settled more than that many seconds ago; with
        *name*, only jobs of that name. Returns the ids deleted, sorted.

        *dry_run*: delete nothing, return the ids that would be deleted now (a job
        being retried at that moment would be skipped by the real purge).
        *progress*, if given, is called after each candidate file is handled, with
        the count so far and the number of candidates (files in the state's
        directory that pass *older_than*).
        """
        from . import manage  # noqa: PLC0415

        return manage.purge(self, state, older_than, now, name=name, dry_run=dry_run, progress=progress)

    def fsck(self, repair: bool = False, now: float | None = None) -> FsckReport:
        """Check the spool's invariants (README, "taskq fsck"): no job in two places,
        no stale staging file, no job in running/ that nobody runs, no unreadable or
        empty job file, no unique key or log naming no job, no pending file whose name
        disagrees with its record. A drop-in file not taken in yet is not a problem.

        Returns a report: ``report.ok``, and ``report.problems``, each with ``kind``,
        ``message``, ``id`` (or None) and ``path``. With *repair*, each problem is
        mended (``problem.repaired``, ``problem.action``) and ``ok`` says whether all
        were; no job is ever deleted (a file that cannot be kept goes to failed/ with
        its reason). Safe while workers run: a job in use is neither reported nor
        touched. Raises NoSpoolError if there is no spool.
        """
        from .fsck import fsck  # noqa: PLC0415 - only `taskq fsck` needs it

        return fsck(self, repair, now)

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

    def metrics(self, now: float | None = None) -> builtins.list[Family]:
        """The spool's metrics (``taskq_jobs{state}``, ``taskq_jobs_ready``,
        ``_scheduled``, ``_waiting``, ``taskq_oldest_ready_age_seconds``,
        ``taskq_paused``): the numbers of :meth:`status`, as metric families.
        ``taskq.metrics.exposition(spool.metrics())`` (import :mod:`taskq.metrics`)
        is the text ``taskq metrics`` prints. Raises NoSpoolError if there is no spool."""
        from ..metrics import spool_families  # noqa: PLC0415 - only `taskq metrics` and workers need it

        return spool_families(self.status(now))

    def explain(self, job_id: str, now: float | None = None, *, words: bool = False) -> dict[str, Any]:
        """Why the job is where it is: ``{"id", "state", "reason", "until"?}`` with
        ``reason`` a plain sentence and ``until`` the time it is waiting for, if any.
        Times in ``reason`` are local; with *words*, each is followed by how long ago
        (or from *now*) it is and exit statuses and signals are named in words
        (``killed by SIGKILL``), as ``taskq explain`` prints it; without, ``reason``
        quotes ``last_error`` as recorded (``explain --json``)."""
        from .explain import explain  # noqa: PLC0415 - only `taskq explain` needs it

        return explain(self, job_id, now, words)

    def wait(self, job_ids: Sequence[str], timeout: float | None = None) -> dict[str, str]:
        """Block until every job is settled (done/ or failed/); return id → state.

        Raises ValidationError for an invalid id, JobNotFoundError for an unknown one
        (checked before waiting), and TimeoutError when *timeout* seconds pass first.
        """
        from .waiting import wait  # noqa: PLC0415 - only `taskq wait` needs it

        return wait(self, job_ids, timeout)

    def events(self, job_id: str | None = None, since: float | None = None,
               follow: bool = False) -> Iterator[dict[str, Any]]:
        """The event log's records (README, "taskq events"), oldest first: of job
        *job_id* only, of *since* (epoch seconds) or later only. With *follow*, the
        iterator then waits for new events and never ends (``tail -F``: it waits for
        a log that does not exist yet and follows rotation). Raises NoSpoolError, and
        ValidationError for an invalid id."""
        from .events import read  # noqa: PLC0415 - only `taskq events` needs it

        return read(self, job_id, since, follow)

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
