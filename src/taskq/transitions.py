"""Every state change of a job, in one shape: **own → read → decide → commit**.

* *own*: take the job's run lock (:meth:`JobStore.own`), so no other process changes
  it at the same time;
* *read*: bring it into running/ if it is pending (the claim's rename) and load its
  record; a file that is not a valid job is quarantined to failed/ instead;
* *decide*: a pure rule of :mod:`taskq.policy` (or the user's request: cancel, retry);
* *commit* (:meth:`Transitions._commit`): tell the preparers of the :class:`Change`
  about to be written (they may write files that must exist if the change lands: a
  hook's marker), write the new record over the file where it is (stage in tmp/,
  fsync, rename, fsync), then rename it into its new directory, and report the change
  to the observers.

A crash between the two renames of a commit leaves the job in running/ with its
outcome recorded; :meth:`Transitions.recover` finishes the move. ``_commit`` and
``_changed`` are the one place where a state change is written and reported: an event
record, a hook, a fencing check or a group commit is added there, once. Observers and
preparers are added with :meth:`Transitions.subscribe`, each one beside the others.

The changes: enqueue, claim, start, settle (done / retry / failed), unclaim, recover,
cancel, retry, fail a dependent, normalise a drop-in file, quarantine, purge; and the
repairs of ``fsck``: rename a misnamed pending file, set aside a second copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from . import times
from .errors import FencedError, SpoolError, StateConflictError, ValidationError
from .ids import is_id, new_id, worker_id
from .job import CANCELLED, WORKER_LOST, Attempt, Job, Outcome, build, is_complete
from .policy import Decision, decide
from .spool import layout
from .spool.jobs import Fences, JobStore, Owned, noted_worker
from .spool.layout import Fence, PendingName
from .spool.locks import Lock

if TYPE_CHECKING:
    from .spool.leases import Judge, Lease


class Change(NamedTuple):
    """One state change that happened. ``src`` is None for a new job, ``dst`` None for
    a job deleted; ``job`` is the record after the change (None for a file that was
    not a valid job)."""

    kind: str
    job_id: str
    src: str | None
    dst: str | None
    job: Job | None = None
    decision: Decision | None = None
    #: How the attempt that this change closed ended (a settle, or a recovery that
    #: closed an attempt as "worker lost"); None when no attempt ended here.
    outcome: Outcome | None = None


Callback = Callable[[Change], None]


class Claimed:
    """A job this process owns in running/: its record, its run lock, and its fence
    file's name (None for a process that is not a worker)."""

    __slots__ = ("job", "owned", "fence")

    def __init__(self, job: Job, owned: Owned, fence: str | None = None) -> None:
        self.job = job
        self.owned = owned
        self.fence = fence

    @property
    def lock(self) -> Lock:
        return self.owned.lock


#: The worker's own changes, whose renames are not made durable one by one (no
#: directory fsync; the record itself is always fsynced before it is renamed). A
#: power cut can undo the latest of them, newest first, and recovery takes each undone
#: step again: with its move undone, a settle leaves the job in running/ with the
#: outcome recorded (settled by that outcome, not run again); with its record undone
#: too, the attempt looks cut short ("worker lost", run again); a start undone leaves
#: the job claimed (back to pending uncounted); a claim undone leaves it pending.
#: Nothing acknowledged to a user is among them: ``add``, ``cancel``, ``retry`` and
#: taking in a drop-in file are durable when they return.
LAZY = frozenset({"claim", "start", "settle", "unclaim", "recover", "fail_dependent"})


class Transitions:
    """The state changes of one spool's jobs. Observers are told of every change once it
    is made, preparers of every committed change before it is written (see
    :meth:`subscribe`); each in the order they were added."""

    def __init__(self, jobs: JobStore, observe: Callback | None = None, prepare: Callback | None = None,
                 lease_timeout: Callable[[], float] | None = None) -> None:
        self.jobs = jobs
        self.store = jobs.store
        self.fences = Fences(self.store)
        self.observers: list[Callback] = [observe] if observe is not None else []
        self.preparers: list[Callback] = [prepare] if prepare is not None else []
        #: Set by a worker (:meth:`hold_lease`): its lease, whose id its claims' fence
        #: files carry, and which must be valid for any change to a job it holds.
        self.lease: Lease | None = None
        self._lease_timeout = lease_timeout
        self._judge: Judge | None = None

    def hold_lease(self, lease: Lease) -> None:
        """Make the claims and changes of this process a worker's, under *lease*."""
        from .spool.leases import Judge  # noqa: PLC0415 - workers and recovery only: not on add's path

        self.lease = lease
        self._judge = Judge(self.store, lease.timeout, lease)

    @property
    def judge(self) -> Judge:
        """Judges whether another host's worker still holds a job (by its lease)."""
        if self._judge is None:
            from .config import DEFAULT_LEASE_TIMEOUT  # noqa: PLC0415 - as above
            from .spool.leases import Judge  # noqa: PLC0415

            timeout = self._lease_timeout() if self._lease_timeout is not None else DEFAULT_LEASE_TIMEOUT
            self._judge = Judge(self.store, timeout)
        return self._judge

    def _fenced(self, claimed: Claimed) -> None:
        """Before a change to a job this worker holds: FencedError if its lease has run
        out (another host may have taken the job over). The caller then consumes or
        trades the job's fence file, which fails if one did."""
        lease = self.lease
        if lease is None:
            return
        if claimed.fence is not None and not claimed.fence.endswith(f".{lease.uid}{layout.FENCE}"):
            raise FencedError(f"job {claimed.job.id} was claimed under an earlier lease of this worker")
        if not lease.valid():
            raise FencedError(f"the lease of this worker ran out while it held job {claimed.job.id} "
                              f"(not renewed for {lease.since_renewal():.1f}s)")

    def subscribe(self, observe: Callback | None = None, prepare: Callback | None = None) -> None:
        """Add an observer (told of each change once it is made; it must not raise: the
        change is done) and/or a preparer (told of each change that :meth:`_commit`
        writes, before anything of it is written: it may write files that must exist if
        the change lands, and a SpoolError it raises stops the change). Those already
        there stay, and are told first."""
        if observe is not None:
            self.observers.append(observe)
        if prepare is not None:
            self.preparers.append(prepare)

    # -- the one place where a change is written and reported ---------------------------

    def _commit(self, kind: str, owned: Owned, job: Job, state: str, decision: Decision | None = None,
                outcome: Outcome | None = None) -> None:
        """Prepare, write *job* where it is, then move it into *state*, and report it.
        The record is always fsynced before its name can reach the disk; the
        directories only for the changes that are not :data:`LAZY` (README,
        "Durability and speed")."""
        change = Change(kind, job.id, owned.origin, state, job, decision, outcome)
        for prepare in self.preparers:
            prepare(change)
        sync_dir = kind not in LAZY
        self.jobs.save(owned, job, sync_dir)
        self.jobs.move(owned, job, state, sync_dir)
        owned.origin = state
        self._changed(change)

    def _changed(self, change: Change) -> None:
        for observe in self.observers:
            observe(change)

    def _take(self, owned: Owned, sync_dir: bool = True) -> Job | None:
        """Bring an owned job into running/ and read it; a file that is not a valid job
        is quarantined (None). Raises FileNotFoundError if it moved away first."""
        self.jobs.take(owned, sync_dir)
        try:
            job = self.jobs.load(owned.state, owned.name)
            if job.id != owned.id:
                raise ValidationError(f"id {job.id!r} in the file does not match its name")
        except (ValidationError, SpoolError) as exc:
            self.quarantine(owned, str(exc))
            return None
        return job

    # -- producer side -----------------------------------------------------------------

    def enqueue(self, jobs: list[Job], progress: Callable[[int, int], None] | None = None) -> None:
        """Publish new jobs in pending/, all or nothing (*progress*: as each is written)."""
        self.jobs.put_new(jobs, progress)
        for job in jobs:
            job.state = "pending"
            self._changed(Change("enqueue", job.id, None, "pending", job))

    # -- worker side -------------------------------------------------------------------

    def claim(self, entry: PendingName) -> Claimed | None:
        """Claim one pending job: own it, rename pending → running, read it.

        Returns None when another process got there first, or when the file turned
        out not to be a valid job (it is then in failed/ with the reason beside it).
        """
        owned = self.jobs.own(entry.id, ("pending", entry.name))
        if owned is None:
            return None  # busy, gone, or not a regular file: never touched
        fence = None
        held = False
        try:
            if self.lease is not None:
                if not self.lease.valid():
                    raise FencedError("this worker's lease has run out: it claims nothing")
                # Before the rename: from its first instant in running/, the job names
                # its owner to other hosts.
                fence = self.fences.make(entry.id, self.lease.uid)
                held = self.fences.hold(fence, entry.id)
                if not held:
                    # Another worker's claim of it is under way (or done): ours is lost
                    # before anything moved. Its run lock's file may be that claim's.
                    self.fences.drop(fence)
                    owned.lock.release(remove=False)
                    return None
            job = self._take(owned, sync_dir=False)  # a lost claim leaves the job pending
        except FileNotFoundError:
            # Another process renamed it first (see JobStore.let_go for its lock file).
            self.fences.release(entry.id, fence, held)
            self.jobs.let_go(owned.lock)
            return None
        except BaseException:
            self.fences.release(entry.id, fence, held)
            owned.release()
            raise
        if job is None:  # not a valid job: filed in failed/
            self.fences.release(entry.id, fence, held)
            owned.release()
            return None
        owned.origin = "running"
        self._changed(Change("claim", job.id, "pending", "running", job))
        return Claimed(job, owned, fence)

    def start(self, claimed: Claimed, now: float, warn: Callable[[str], None] | None = None) -> Attempt:
        """Begin a new attempt: note it (in progress) beside the job, in its run lock's
        file; the record gets it when it is settled (:meth:`JobStore.note_attempt`).
        *warn* is told if the note had to go into the record instead."""
        job = claimed.job
        attempt = Attempt(number=len(job.attempts) + 1, started_at=times.iso(now), worker=worker_id(),
                          worker_id=self.lease.uid if self.lease is not None else None)
        if claimed.fence is not None and self.lease is not None:
            self._fenced(claimed)
            claimed.fence = self.fences.advance(claimed.fence, job.id, attempt.number, self.lease.uid)
        job.attempts.append(attempt)
        try:
            self.jobs.note_attempt(claimed.lock, attempt)
        except SpoolError as exc:
            # The lock's file cannot be written: the record carries the attempt instead
            # (a new file and an fsync); only if that fails too does the start fail.
            if warn is not None:
                warn(f"cannot note the attempt of {job.id} ({exc}): writing it into the record")
            try:
                self.jobs.save(claimed.owned, job, sync_dir="start" not in LAZY)
            except SpoolError:
                job.attempts.pop()
                raise
        self._changed(Change("start", job.id, "running", "running", job))
        return attempt

    def settle(self, claimed: Claimed, outcome: Outcome, now: float, jitter: float) -> Decision:
        """Record how the current attempt ended, decide, and move the job (done/,
        failed/, or back to pending/ at its retry time). Releases the run lock."""
        job = claimed.job
        try:
            settling = self._let_go(claimed)
            job.attempts[-1].close(outcome, now)
            decision = decide(job, outcome, now, jitter)
            self._settle_record(job, decision, now)
            self._commit("settle", claimed.owned, job, decision.state, decision, outcome)
            self.fences.release(job.id, settling, settling is not None)
            self.jobs.clear_cancel(job.id)
            return decision
        finally:
            claimed.owned.release()

    def unclaim(self, claimed: Claimed, not_before: float) -> None:
        """Put a claimed job whose attempt never started back to pending/, with no
        attempt recorded, ready at *not_before* at the earliest. Releases the lock."""
        job = claimed.job
        try:
            settling = self._let_go(claimed)
            decision = Decision("pending", run_at=max(job.run_at_ts, not_before), last_error=job.last_error)
            self._settle_record(job, decision, times.now())
            self._commit("unclaim", claimed.owned, job, "pending", decision)
            self.fences.release(job.id, settling, settling is not None)
        finally:
            claimed.owned.release()

    def _let_go(self, claimed: Claimed) -> str | None:
        """Trade this worker's fence file of *claimed* for its settle's before settling
        it (FencedError if its lease ran out or the file is gone: another host took
        the job over). Returns the settle's fence, removed once the job has moved."""
        if claimed.fence is None:
            return None
        self._fenced(claimed)
        fence, claimed.fence = claimed.fence, None
        return self.fences.settling(fence, claimed.job.id)

    def record_group(self, claimed: Claimed, pgid: int) -> None:
        """Note the attempt's process group beside it, for recovery."""
        attempt = claimed.job.current_attempt
        assert attempt is not None  # started
        self.jobs.note_attempt(claimed.lock, attempt, pgid)

    def recover(self, job_id: str, now: float, jitter: float) -> tuple[str, Decision] | None:
        """Recover running/ID.json if nobody owns it any more (its run lock is free: no
        worker and no process of the attempt is alive). Returns what was done, or None
        when the job is alive or already gone.

        * an attempt in progress is closed as "worker lost" (it counts) and the job
          goes through the retry policy;
        * an attempt that had finished (the worker died while settling) is settled by
          its recorded outcome;
        * a job claimed but never started goes back to pending as it was;
        * a drop-in file caught half taken in goes back to pending/ as it was.

        A job held by another host's worker is judged by that worker's lease instead
        (README, "Several hosts"), even when its run lock is held: on a filesystem
        whose locks reach across hosts, a frozen or cut-off host keeps its locks until
        the server gives up on it, which can be long after its lease ran out.
        """
        lock = self.jobs.own_lock(job_id) or self._lapsed_holders_lock(job_id)
        if lock is None:
            return None
        owned = Owned(job_id, lock, "running", layout.job_file(job_id))
        remove_lock = True
        try:
            # On a filesystem shared by several hosts the free lock says nothing of
            # another host's worker: its lease does (README, "Several hosts"). The
            # job file is looked for before its fences are listed: a claim makes its
            # fence before its rename, so a claim whose job file is seen here has
            # its fence in the listing that follows.
            present = self.store.has("running", owned.name)
            fences = self.fences.of(job_id)
            holder, lapsed = self._holder_elsewhere(job_id, lock, fences)
            if holder is not None:
                remove_lock = False
                return None
            if not present:
                for fence in fences:  # a claim that lost its race, or died before its rename
                    self.fences.drop(fence.name)
                self.fences.unhold(job_id)
                return None
            if self.jobs.attempt_group(lock) is not None:
                remove_lock = False  # a process of the attempt is still alive: not yet
                return None
            try:
                self.fences.take_over(fences, job_id)
            except FencedError:
                remove_lock = False  # its worker is settling it, or another host took it first
                return None
            try:
                job = self.jobs.load("running", owned.name)
            except FileNotFoundError:
                return None  # moved meanwhile: by a worker that holds it after all
            except (ValidationError, SpoolError) as exc:
                result = self._recover_unreadable(owned, str(exc), now)
                self.fences.unhold(job_id)
                return result
            what, decision = self._recovery(job, now, jitter)
            if what == "worker lost" and lapsed is not None:
                job.attempts[-1].detail = lapsed
            self._settle_record(job, decision, now)
            closed = Outcome(error=WORKER_LOST) if what == "worker lost" else None
            self._commit("recover", owned, job, decision.state, decision, closed)
            self.fences.unhold(job_id)  # the claim it took over is over
            return what, decision
        finally:
            lock.release(remove=remove_lock)

    def _lapsed_holders_lock(self, job_id: str) -> Lock | None:
        """The run lock's file of *job_id*, opened but not locked, if every worker that
        holds the job is another host's and its lease has run out; else None. Taking
        the job over is then decided by consuming its fence files, which only one
        process can do."""
        judge = self.judge
        noted = noted_worker(self.jobs.note_text(job_id))
        if noted is not None and judge.is_local(noted):
            return None  # the usual case, on one host: no listing of running/ for it
        holders = _holders(self.fences.of(job_id), noted)
        if not holders or any(judge.is_local(uid) or judge.alive(uid) for uid in holders):
            return None
        return self.jobs.open_lock_file(job_id)

    def held_elsewhere(self, job_id: str, lock: Lock) -> str | None:
        """The worker of another host that still holds the job in running/ whose run
        lock the caller holds (its lease is live), or None."""
        return self._holder_elsewhere(job_id, lock, self.fences.of(job_id))[0]

    def _holder_elsewhere(self, job_id: str, lock: Lock, fences: list[Fence]) -> tuple[str | None, str | None]:
        """A worker that still holds *job_id* although the caller holds its run lock
        (another host's, whose lease is live; or one of this host's whose run lock's
        file was removed under it by another host's lost claim), or None; and if its
        holders were other hosts' workers whose leases ran out, what happened, in
        words."""
        judge = self.judge
        lapsed = []
        for uid in sorted(_holders(fences, noted_worker(lock.read()))):
            if judge.alive(uid):
                return uid, None
            if judge.is_local(uid):
                continue
            age = judge.age(uid)
            lapsed.append(f"lease of worker {uid} " + ("gone" if age is None else
                          f"expired ({age:.1f}s old by the server's clock)") + f", taken over from {judge.host}")
        return None, "; ".join(lapsed) or None

    @staticmethod
    def _recovery(job: Job, now: float, jitter: float) -> tuple[str, Decision]:
        current = job.current_attempt
        if current is not None:
            outcome = Outcome(error=WORKER_LOST)
            current.close(outcome, now)
            return "worker lost", decide(job, outcome, now, jitter)
        last = job.budget_attempts[-1] if job.budget_attempts else None
        if last is not None and last.outcome is not None:
            ended = times.parse_iso(last.finished_at or job.run_at)
            return "settled", decide(job, last.outcome, ended, jitter)
        return "returned", Decision("pending", run_at=job.run_at_ts, last_error=job.last_error)

    def _recover_unreadable(self, owned: Owned, why: str, now: float) -> tuple[str, Decision]:
        if self.jobs.is_drop_in("running", owned.name):
            # normalise() stopped (crash, I/O error) between moving a drop-in file here
            # and writing its complete record: it goes back as the drop-in it was.
            self.jobs.put_back(owned)
            self._changed(Change("recover", owned.id, "running", "pending"))
            return "returned", Decision("pending", run_at=now)
        self.quarantine(owned, why)
        return "quarantined", Decision("failed", last_error=why)

    def fail_dependent(self, entry: PendingName, dep: str, now: float) -> bool:
        """Move a pending job whose dependency *dep* failed to failed/."""
        owned = self.jobs.own(entry.id, ("pending", entry.name))
        if owned is None:
            return False
        try:
            try:
                job = self._take(owned)
            except FileNotFoundError:
                return False
            if job is not None:
                decision = Decision("failed", last_error=f"dependency {dep} failed")
                self._settle_record(job, decision, now)
                self._commit("fail_dependent", owned, job, "failed", decision)
            return True
        finally:
            owned.release()

    def normalise(self, name: str, now: float, default_cwd: str, defaults: dict, tasks: dict) -> Job | None:
        """Take in a drop-in file (any other ``*.json`` name in pending/): give it an id
        and its proper name, filling defaults, its ``created_at`` the time it was
        dropped (the file's mtime). A file that is not a valid job goes to failed/.
        Returns the job (now pending), or None (lost a race, or quarantined)."""
        dropped = self.store.mtime("pending", name)
        if dropped is None:
            return None  # gone, or a directory, symlink...: left where it is, never read
        try:
            data = self.jobs.read_data("pending", name)
        except FileNotFoundError:
            return None
        except (ValidationError, SpoolError):
            data = None
        given = data.get("id") if isinstance(data, dict) else None
        # The file's own id if it is valid and no job has it yet.
        job_id = given if is_id(given) and self.jobs.locate(given) is None else new_id(dropped)
        lock = self.jobs.own_lock(job_id)
        if lock is None:
            return None
        owned = Owned(job_id, lock, "pending", name)
        try:
            try:
                self.jobs.take(owned)
            except FileNotFoundError:
                return None
            try:
                job = self._complete(self.jobs.read_data("running", owned.name), job_id, dropped,
                                     default_cwd, defaults, tasks)
            except (ValidationError, SpoolError) as exc:
                self.quarantine(owned, str(exc), original=name)
                return None
            self._commit("normalise", owned, job, "pending")
            return job
        finally:
            owned.release()

    @staticmethod
    def _complete(data: object, job_id: str, dropped: float, default_cwd: str,
                  defaults: dict, tasks: dict) -> Job:
        if not isinstance(data, dict):
            raise ValidationError("a job must be a JSON object")
        data["id"] = job_id
        if is_complete(data):
            return Job.from_record(data)  # a complete record, e.g. moved back by hand
        return build(data, now=dropped, default_cwd=default_cwd, defaults=defaults, tasks=tasks)

    def quarantine(self, owned: Owned, why: str, original: str | None = None, fresh: bool = False) -> str:
        """Move a file that is not a valid job to failed/ with the reason beside it
        (under a fresh id with *fresh*). Returns the id it is filed under."""
        src = owned.origin
        filed = self.jobs.quarantine(owned, why, original, fresh)
        self._changed(Change("quarantine", filed, src, "failed", decision=Decision("failed", last_error=why)))
        return filed

    # -- repairs (fsck) -----------------------------------------------------------------

    def rename(self, owned: Owned, job: Job) -> None:
        """Give an owned pending file whose name disagrees with its record (*job*) the
        name the record calls for; the record is authoritative, the name derived."""
        self._commit("rename", owned, job, "pending")

    def set_aside(self, owned: Owned, job: Job, why: str, now: float) -> str:
        """File an owned second copy of a job (a valid record) in failed/ as a job of
        its own: a fresh id, ``last_error`` *why*, and an extra ``set_aside`` field
        keeping what it was (its id, its file, its own ``last_error``). Returns the new
        id.

        The file is renamed into failed/ first and rewritten there: a crash in
        between leaves a copy that cannot run, never a runnable job under a new id.
        """
        new = new_id(now)
        job.extra["set_aside"] = {
            "id": job.id,
            "file": layout.place(owned.state, owned.name),
            "last_error": job.last_error,
            "at": times.iso(now),
        }
        job.id = new
        self.jobs.move(owned, job, "failed")
        decision = Decision("failed", last_error=why)
        self._settle_record(job, decision, now)
        self._commit("set_aside", owned, job, "failed", decision)
        return new

    # -- user side ---------------------------------------------------------------------

    def cancel(self, owned: Owned, now: float) -> Job:
        """Cancel an owned job: pending (moved through running/), or running with no
        live process (its attempt is closed as cancelled)."""
        if owned.state == "running":
            try:
                self.fences.take_over(self.fences.of(owned.id), owned.id)
            except FencedError:
                raise StateConflictError(f"job {owned.id} is busy; try again") from None
        job = self._take(owned)
        if job is None:
            raise StateConflictError(f"job {owned.id} is not a valid job file: moved to failed/")
        attempt = job.current_attempt
        if attempt is not None:
            attempt.close(Outcome(error=CANCELLED), now)
        decision = Decision("failed", last_error=CANCELLED)
        self._settle_record(job, decision, now)
        self._commit("cancel", owned, job, "failed", decision)
        self.fences.unhold(job.id)
        self.jobs.clear_cancel(job.id)
        return job

    def retry(self, owned: Owned, job: Job, now: float) -> Job:
        """Put an owned failed job back to pending/, ready now, with a fresh budget of
        ``max_attempts`` (earlier attempts stay in the history)."""
        job.budget_start = len(job.attempts)
        job.run_at = job.retried_at = times.iso(now)
        job.settled_at = None
        self._commit("retry", owned, job, "pending")
        return job

    def purge(self, owned: Owned) -> None:
        """Delete an owned settled job, its log and its reason file."""
        src = owned.origin
        self.jobs.delete(owned)
        self._changed(Change("purge", owned.id, src, None))

    # -- records -----------------------------------------------------------------------

    @staticmethod
    def _settle_record(job: Job, decision: Decision, now: float) -> None:
        """What a decision changes in the record: ``last_error``, and ``run_at`` (back
        to pending) or ``settled_at`` (done or failed)."""
        job.last_error = decision.last_error
        if decision.state == "pending":
            job.run_at = times.iso(decision.run_at if decision.run_at is not None else now)
            job.settled_at = None
        else:
            job.settled_at = times.iso(now)



def _holders(fences: list[Fence], noted: str | None) -> set[str]:
    """The workers that hold a job: those its fence files name, and the one its run
    lock's note names."""
    holders = {fence.worker for fence in fences}
    if noted is not None:
        holders.add(noted)
    return holders
