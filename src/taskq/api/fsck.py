"""``taskq fsck``: check the spool's invariants, and with ``repair`` mend what breaks
them (README, "taskq fsck").

Each problem has a *kind* (:data:`KINDS`), a one-line message, the job id it concerns
(or None) and the file's path. A check never changes a job; it takes a job's run lock
for a moment where it must know that no process is working on the job (a live attempt
holds that lock, so a job in use is never reported, never touched). A repair works
through the same layers as everything else: files through :mod:`taskq.spool`, job
changes through :class:`taskq.transitions.Transitions` (recover, quarantine, rename,
set aside). It never deletes a job: a file it cannot keep goes to failed/ with its
reason; what it removes is only a byte-identical second copy of a job, a stale
staging file, a key file naming no job, or a log with no job.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import times
from ..errors import SpoolError, TaskqError, ValidationError
from ..ids import is_id, new_id
from ..job import Job, is_complete, parse_json_bytes
from ..spool import layout, locks
from ..spool.jobs import Owned, pending_file
from ..spool.layout import PendingName
from ..spool.locks import Lock
from ..spool.store import STALE_TMP_AGE

if TYPE_CHECKING:
    from . import Spool

#: The kinds of problem, in the order they are reported and repaired: duplicates
#: first, so that every later check sees one copy of each job.
KINDS = ("duplicate", "unreadable", "misnamed_pending", "orphan_running", "stale_tmp", "orphan_key",
         "orphan_log")

#: Which copy of a job found in several places is kept: the most advanced state.
#: done/ only ever follows a successful run and nothing leaves it but purge; failed/
#: is left only by a retry, which would have moved the file away.
STATE_RANK = {"pending": 0, "running": 1, "failed": 2, "done": 3}


#: A repair that finds its job's lock held while the file stays tries this many times,
#: this many seconds apart (a worker between taking the lock and renaming the file).
OWN_TRIES = 20
OWN_WAIT = 0.05
#: What a repair says when a worker took the file meanwhile, which settles the problem.
GONE = "already resolved (a worker took the file meanwhile)"


class RepairError(TaskqError):
    """Raised when a problem cannot be repaired now (the job is in use, a file moved)."""


@dataclass
class Problem:
    """One broken invariant. ``repaired`` is None unless a repair was asked for; then
    ``action`` says what it did, or why it could not."""

    kind: str
    message: str
    id: str | None
    path: str
    repaired: bool | None = None
    action: str | None = None
    fix: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form: kind, message, id, path (+ repaired, action)."""
        out: dict[str, Any] = {"kind": self.kind, "message": self.message, "id": self.id, "path": self.path}
        if self.repaired is not None:
            out["repaired"] = self.repaired
            out["action"] = self.action
        return out

    def line(self) -> str:
        """The problem as one line for people."""
        text = f"{self.kind}: {self.message}"
        if self.repaired is None:
            return text
        return f"{text} [{'repaired' if self.repaired else 'not repaired'}: {self.action}]"


@dataclass
class Report:
    """What ``fsck`` found (and, with *repaired*, did)."""

    problems: list[Problem]
    repair: bool = False

    @property
    def ok(self) -> bool:
        """Whether the spool is consistent: no problem found, or every one repaired."""
        return all(p.repaired for p in self.problems) if self.repair else not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.to_dict() for p in self.problems]}


# -- pure rules --------------------------------------------------------------------------


class Copy(NamedTuple):
    """One file of a job found in several places: its bytes (None if unreadable), its
    record (None if not a valid one) and why not."""

    state: str
    name: str
    raw: bytes | None
    job: Job | None
    why: str | None
    mtime: float


def rank(copy: Copy) -> tuple[bool, int, bool, float, str]:
    """The order of :func:`keeper`: a valid record before an invalid one, then the most
    advanced state, then (two pending files) the one whose name fits its record,
    then the newest file."""
    fits = copy.job is not None and copy.state == "pending" and pending_file(copy.job) == copy.name
    return (copy.job is not None, STATE_RANK[copy.state], fits, copy.mtime, copy.name)


def keeper(copies: list[Copy]) -> Copy:
    """The copy of a job that stays where it is; the others are set aside."""
    return max(copies, key=rank)


def disagreement(entry: PendingName, job: Job) -> str | None:
    """How a pending file's name (*entry*) disagrees with its record, or None."""
    want = layout.parse_pending_name(pending_file(job))
    assert want is not None  # a valid record always makes a valid name
    parts = []
    if entry.id != job.id:
        parts.append(f"id {entry.id} but the record is job {job.id}")
    if entry.prio_key != want.prio_key:
        parts.append(f"priority {entry.priority} but the record says {job.priority}")
    if entry.run_key != want.run_key:
        parts.append(f"run at {entry.run_key} but the record says {want.run_key}")
    if entry.has_deps != want.has_deps:
        parts.append("dependencies" if entry.has_deps else "no dependencies")
        parts[-1] += f" but the record has {'some' if want.has_deps else 'none'}"
    return "the name says " + "; ".join(parts) if parts else None


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


# -- the check ---------------------------------------------------------------------------


def fsck(spool: Spool, repair: bool = False, now: float | None = None) -> Report:
    """:meth:`taskq.Spool.fsck`."""
    spool.require()
    if repair:
        _ = spool.config  # taskq.toml's fsync setting applies to the repairs' writes
    checker = _Checker(spool, times.now() if now is None else now)
    problems = checker.scan()
    if repair:
        for problem in problems:
            try:
                action = problem.fix() if problem.fix is not None else "nothing to do"
                problem.repaired, problem.action = True, action
            except FileNotFoundError:
                problem.repaired, problem.action = False, "a file moved meanwhile; run fsck again"
            except TaskqError as exc:
                problem.repaired, problem.action = False, str(exc)
    return Report(problems, repair)


class _Checker:
    """One pass over a spool. Every ``_check_*`` method returns problems whose ``fix``
    checks again, under the job's lock, before it changes anything."""

    def __init__(self, spool: Spool, now: float) -> None:
        self.spool = spool
        self.store = spool.store
        self.jobs = spool.jobs
        self.transitions = spool.transitions
        self.now = now
        #: Ids of drop-in files not taken in yet (their ``id`` field): they are jobs.
        self.dropin_ids: set[str] = set()
        #: Ids the listings showed (a quick answer to "does job X exist?").
        self.listed: set[str] = set()

    def path(self, state: str, name: str) -> str:
        return self.store.path(state, name)

    def problem(self, kind: str, state: str, name: str, job_id: str | None, detail: str,
                fix: Callable[[], str]) -> Problem:
        place = layout.place(state, name)
        return Problem(kind, f"{place}: {detail}", job_id, self.path(state, name), fix=fix)

    def scan(self) -> list[Problem]:
        names = {state: self.store.names(state) for state in layout.STATES}
        copies = self._places(names)
        self.listed = set(copies)
        problems, losers = self._check_duplicates(copies)
        problems += self._check_pending([n for n in names["pending"] if ("pending", n) not in losers])
        problems += self._check_running([n for n in names["running"] if ("running", n) not in losers])
        for state in layout.SETTLED:
            problems += self._check_settled(state, [n for n in names[state] if (state, n) not in losers])
        problems += self._check_tmp()
        problems += self._check_keys()
        problems += self._check_logs()
        order = {kind: i for i, kind in enumerate(KINDS)}
        return sorted(problems, key=lambda p: order[p.kind])

    # -- reading -----------------------------------------------------------------------

    def _read(self, state: str, name: str) -> tuple[bytes | None, Job | None, str | None]:
        """A file's bytes, its record and why it is not a valid one (FileNotFoundError
        if it has gone)."""
        try:
            raw = self.store.read(state, name)
        except SpoolError as exc:
            return None, None, str(exc)
        if not raw.strip():
            return raw, None, "empty file"
        try:
            job = Job.from_bytes(raw)
        except ValidationError as exc:
            return raw, None, str(exc)
        job.state = state
        return raw, job, None

    @contextmanager
    def _quiet(self, job_id: str) -> Iterator[Lock | None]:
        """Hold the job's run lock if no worker and no process of an attempt has it
        (yields None when one does: the job is in use and must not be touched)."""
        lock = self.jobs.own_lock(job_id)
        if lock is None:
            yield None
            return
        # Another host's worker may hold it: its run lock is not seen from here.
        alive = self.jobs.attempt_group(lock) is not None or self.transitions.held_elsewhere(job_id, lock) is not None
        try:
            yield None if alive else lock
        finally:
            lock.release(remove=not alive)

    # -- duplicates --------------------------------------------------------------------

    @staticmethod
    def _places(names: dict[str, list[str]]) -> dict[str, list[tuple[str, str]]]:
        """Where each job id has a file, from the listings (pending names carry it)."""
        places: dict[str, list[tuple[str, str]]] = {}
        for state, listing in names.items():
            for name in listing:
                job_id = layout.id_in(state, name)
                if job_id is not None:
                    places.setdefault(job_id, []).append((state, name))
        return places

    def _copies(self, job_id: str) -> list[Copy]:
        """Every file of job *job_id* now (called while holding its lock)."""
        where = [(state, layout.job_file(job_id)) for state in ("running", "done", "failed")]
        where += [("pending", n) for n in self.store.names("pending") if layout.matches_id(n, job_id)]
        out = []
        for state, name in where:
            mtime = self.store.mtime(state, name)
            if mtime is None:
                continue
            try:
                raw, job, why = self._read(state, name)
            except FileNotFoundError:
                continue
            out.append(Copy(state, name, raw, job, why, mtime))
        return out

    def _check_duplicates(self, places: dict[str, list[tuple[str, str]]]
                          ) -> tuple[list[Problem], set[tuple[str, str]]]:
        problems: list[Problem] = []
        losers: set[tuple[str, str]] = set()
        for job_id in sorted(i for i, where in places.items() if len(where) > 1):
            # Listings are not atomic: a job claimed between two of them shows twice.
            # Under its lock nothing moves it, so what is found then is real.
            with self._quiet(job_id) as lock:
                if lock is None:
                    continue  # in use: a running job's files are not ours to judge
                copies = self._copies(job_id)
            if len(copies) < 2:
                continue
            kept = keeper(copies)
            for copy in copies:
                if copy is kept:
                    continue
                losers.add((copy.state, copy.name))
                detail = f"a second copy of job {job_id}, whose copy in {kept.state}/ is kept"
                if copy.why is not None:
                    detail += f" (and this one is not a valid job: {copy.why})"
                problems.append(self.problem("duplicate", copy.state, copy.name, job_id, detail,
                                             self._fix_duplicate(job_id, copy.state, copy.name)))
        return problems, losers

    def _fix_duplicate(self, job_id: str, state: str, name: str) -> Callable[[], str]:
        def fix() -> str:
            with self._quiet(job_id) as lock:
                if lock is None:
                    raise RepairError(f"job {job_id} is in use; run fsck again once its attempt has ended")
                copies = self._copies(job_id)
                kept = keeper(copies) if copies else None
                copy = next((c for c in copies if (c.state, c.name) == (state, name)), None)
                if kept is None or copy is None or copy is kept:
                    return "already resolved"
                owned = Owned(job_id, lock, state, name)
                if copy.raw is not None and copy.raw == kept.raw:
                    self.jobs.drop_copy(owned)
                    return f"removed: identical to the copy kept in {kept.state}/"
                why = f"duplicate of job {job_id}, whose copy in {kept.state}/ is kept"
                if copy.job is not None:
                    new = self.transitions.set_aside(owned, copy.job, why, self.now)
                    return f"set aside as failed job {new} (failed/{layout.job_file(new)})"
                filed = self.transitions.quarantine(owned, f"{copy.why}; {why}", fresh=True)
                return f"moved to failed/{layout.job_file(filed)}, with the reason beside it"
        return fix

    # -- job files, state by state -------------------------------------------------------

    def _check_pending(self, names: list[str]) -> list[Problem]:
        problems = []
        for name, entry in zip(names, layout.parse_pending_names(names), strict=True):
            try:
                raw, job, why = self._read("pending", name)
            except FileNotFoundError:
                continue  # claimed meanwhile
            if entry is None:  # a drop-in file: a JSON object is one, whatever it holds
                data = self._json(raw)
                if isinstance(data, dict):
                    if is_id(data.get("id")):
                        self.dropin_ids.add(data["id"])
                    continue
                detail = f"not a valid drop-in file: {why or 'not a JSON object'}"
                problems.append(self.problem("unreadable", "pending", name, None, detail,
                                             self._fix_dropin(name)))
            elif job is None:
                problems.append(self.problem("unreadable", "pending", name, entry.id, f"not a valid job file: {why}",
                                             self._fix_unreadable("pending", name, entry.id)))
            else:
                wrong = disagreement(entry, job)
                if wrong is not None:
                    problems.append(self.problem("misnamed_pending", "pending", name, job.id, wrong,
                                                 self._fix_misnamed(name, entry)))
        return problems

    @staticmethod
    def _json(raw: bytes | None) -> Any:
        try:
            return parse_json_bytes(raw) if raw else None
        except ValidationError:
            return None

    def _check_running(self, names: list[str]) -> list[Problem]:
        problems = []
        for name in names:
            job_id = layout.stem(name)
            if job_id is None:
                continue
            with self._quiet(job_id) as lock:
                if lock is None or not self.store.has("running", name):
                    continue  # a live attempt (not a problem), or it has moved on
                try:
                    raw, job, why = self._read("running", name)
                except FileNotFoundError:
                    continue
            fix = self._fix_running(job_id)
            if job is not None:
                detail = f"job {job_id} is in running/ but no worker and no process of its attempt is alive"
                problems.append(self.problem("orphan_running", "running", name, job_id, detail, fix))
            elif self._is_dropin(raw):
                detail = "a drop-in file caught while a worker took it in, and that worker is gone"
                problems.append(self.problem("orphan_running", "running", name, job_id, detail, fix))
            else:
                problems.append(self.problem("unreadable", "running", name, job_id,
                                             f"not a valid job file: {why}", fix))
        return problems

    def _is_dropin(self, raw: bytes | None) -> bool:
        data = self._json(raw)
        return isinstance(data, dict) and not is_complete(data)

    def _check_settled(self, state: str, names: list[str]) -> list[Problem]:
        problems = []
        for name in names:
            job_id = layout.stem(name)
            if job_id is None:
                continue
            try:
                _, job, why = self._read(state, name)
            except FileNotFoundError:
                continue
            if job is not None or (state == "failed" and self.jobs.has_reason(job_id)):
                continue  # valid, or filed in failed/ with the reason beside it
            problems.append(self.problem("unreadable", state, name, job_id, f"not a valid job file: {why}",
                                         self._fix_unreadable(state, name, job_id)))
        return problems

    # -- repairs of job files ----------------------------------------------------------

    def _own(self, job_id: str, state: str, name: str) -> Owned | None:
        """Own the job at *state*/*name*; None if the file has gone meanwhile (a worker
        claimed it: a claim files an invalid job in failed/ and runs a valid one under
        any pending name). A lock held while the file stays is a worker between its
        lock and its rename, which takes a moment: wait a little for it."""
        for _ in range(OWN_TRIES):
            owned = self.jobs.own(job_id, (state, name))
            if owned is not None:
                return owned
            if not self.store.has(state, name):
                return None
            time.sleep(OWN_WAIT)
        raise RepairError(f"job {job_id} is in use; run fsck again")

    def _fix_unreadable(self, state: str, name: str, job_id: str) -> Callable[[], str]:
        def fix() -> str:
            owned = self._own(job_id, state, name)
            if owned is None:
                return GONE
            try:
                _, job, why = self._read(state, name)
                if job is not None:
                    return "already resolved"
                if state == "failed":
                    if not self.jobs.has_reason(job_id):
                        self.jobs.write_reason(job_id, why or "unreadable", name)
                    return f"the reason written beside it (failed/{layout.reason_file(job_id)})"
                filed = self.transitions.quarantine(owned, why or "unreadable")
                return f"moved to failed/{layout.job_file(filed)}, with the reason beside it"
            finally:
                owned.release()
        return fix

    def _fix_dropin(self, name: str) -> Callable[[], str]:
        def fix() -> str:
            try:
                raw, _, why = self._read("pending", name)
            except FileNotFoundError:
                return GONE
            if isinstance(self._json(raw), dict):
                return "already resolved"
            mtime = self.store.mtime("pending", name)
            job_id = new_id(mtime)
            lock = self.jobs.own_lock(job_id)
            if lock is None:  # a fresh id: nobody else can hold it
                raise RepairError(f"cannot lock {job_id}")
            owned = Owned(job_id, lock, "pending", name)
            try:
                filed = self.transitions.quarantine(owned, why or "not a JSON object", original=name)
            except FileNotFoundError:
                return GONE
            finally:
                owned.release()
            return f"moved to failed/{layout.job_file(filed)}, with the reason beside it"
        return fix

    def _fix_misnamed(self, name: str, entry: PendingName) -> Callable[[], str]:
        def fix() -> str:
            owned = self._own(entry.id, "pending", name)
            if owned is None:
                return GONE
            try:
                _, job, _ = self._read("pending", name)
                if job is None or disagreement(entry, job) is None:
                    return "already resolved"
                if job.id != entry.id and self.jobs.locate(job.id) is not None:
                    why = f"its name said job {entry.id}, but it is a copy of job {job.id}, which exists"
                    new = self.transitions.set_aside(owned, job, why, self.now)
                    return f"set aside as failed job {new} (failed/{layout.job_file(new)})"
                target = pending_file(job)
                if self.store.has("pending", target):
                    raise RepairError(f"cannot rename it: pending/{target} exists")
                self.transitions.rename(owned, job)
                return f"renamed to pending/{target}"
            finally:
                owned.release()
        return fix

    def _fix_running(self, job_id: str) -> Callable[[], str]:
        def fix() -> str:
            # The workers' own recovery: the one rule for a job nobody runs any more.
            result = self.transitions.recover(job_id, times.now(), random.random())
            if result is None:
                if self.store.has("running", layout.job_file(job_id)):
                    raise RepairError(f"job {job_id} is in use again; run fsck again")
                return "already resolved (recovered by a worker)"
            what, decision = result
            if what == "quarantined":
                return "moved to failed/, with the reason beside it"
            if decision.state == "pending":
                return f"recovered ({what}): back to pending, run at {times.iso(decision.run_at or self.now)}"
            return f"recovered ({what}): {decision.state}"
        return fix

    # -- tmp/, keys/, logs/ ------------------------------------------------------------

    def _check_tmp(self) -> list[Problem]:
        problems = []
        for name, mtime in sorted(self.store.stale_tmp(self.now - STALE_TMP_AGE)):
            detail = f"a staging file left {_age(self.now - mtime)} ago by a writer that did not finish"
            problems.append(self.problem("stale_tmp", layout.TMP, name, None, detail, self._fix_tmp(name)))
        return problems

    def _fix_tmp(self, name: str) -> Callable[[], str]:
        def fix() -> str:
            # Judged again by the workers' rule: a file rewritten since is not stale.
            if name not in dict(self.store.stale_tmp(self.now - STALE_TMP_AGE)):
                return "already removed"
            self.store.remove(layout.TMP, name)
            return "removed"
        return fix

    def _key_orphan(self, lock: Lock) -> tuple[str | None, str | None]:
        """The holder a key file names (if an id) and why it is an orphan (None if the
        key names a job that exists)."""
        holder = lock.read()
        if not holder:
            return None, "names no job"
        if not is_id(holder):
            return None, f"names {holder[:60]!r}, which is not a job id"
        if self._exists(holder):
            return holder, None
        return holder, f"names job {holder}, which does not exist"

    def _check_keys(self) -> list[Problem]:
        problems = []
        for name in sorted(locks.key_names(self.store)):
            lock = locks.try_key(self.store, name)
            if lock is None:
                continue  # an add is deciding about this key right now
            try:
                holder, why = self._key_orphan(lock)
            finally:
                lock.release(remove=False)
            if why is not None:
                problems.append(self.problem("orphan_key", layout.KEYS, name, holder, f"unique key {why}",
                                             self._fix_key(name)))
        return problems

    def _fix_key(self, name: str) -> Callable[[], str]:
        def fix() -> str:
            lock = locks.try_key(self.store, name)
            if lock is None:
                raise RepairError("an add is using this key; run fsck again")
            orphan = False
            try:
                orphan = self._key_orphan(lock)[1] is not None
            finally:
                lock.release(remove=orphan)
            return "removed (the key is free)" if orphan else "already resolved"
        return fix

    def _exists(self, job_id: str) -> bool:
        """Whether job *job_id* exists: listed, a drop-in file's id, or found now."""
        return job_id in self.listed or job_id in self.dropin_ids or self.jobs.locate(job_id) is not None

    def _check_logs(self) -> list[Problem]:
        problems = []
        for name in sorted(self.store.names(layout.LOGS, ".log")):
            stem = layout.stem(name, ".log")
            job_id = stem if is_id(stem) else None
            if job_id is not None and self._exists(job_id):
                continue
            detail = f"a log of job {job_id}, which does not exist" if job_id else "a log of no job"
            problems.append(self.problem("orphan_log", layout.LOGS, name, job_id, detail, self._fix_log(name, job_id)))
        return problems

    def _fix_log(self, name: str, job_id: str | None) -> Callable[[], str]:
        def fix() -> str:
            if job_id is None:
                self.store.remove(layout.LOGS, name)
                return "removed"
            # Under the job's lock, so that no worker starts a job of that id meanwhile.
            with self._quiet(job_id) as lock:
                if lock is None or self.jobs.locate(job_id) is not None or job_id in self.dropin_ids:
                    return "already resolved (the job exists)"
                self.store.remove(layout.LOGS, name)
            return "removed (its job is gone, as purge would have left it)"
        return fix
