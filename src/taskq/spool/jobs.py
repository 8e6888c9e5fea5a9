"""Jobs in the spool: find, load, publish new ones, own one, move it, quarantine.

This layer knows that a job is a file whose directory is its state, and how its name
depends on the state (:mod:`taskq.spool.layout`); it does not decide anything. Every
state change is made by :mod:`taskq.transitions` through these operations, while it
*owns* the job: it holds the job's run lock (``running/ID.lock``), taken before the
job is touched, so that no two processes ever change one job at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .. import times
from ..errors import FencedError, SpoolError, ValidationError
from ..ids import boot_id, new_id
from ..job import Attempt, Job, is_complete, parse_json_bytes
from . import layout, locks
from .fileio import VANISHED
from .locks import Lock
from .store import Store, io_error, open_to_read

#: A job's place: (state directory, file name).
Where = tuple[str, str]


def pending_file(job: Job) -> str:
    """The pending/ name of *job* (its priority, run_at and id; ``.after`` if it waits)."""
    return layout.pending_name(job.id, job.priority, times.name_key(job.run_at_ts), bool(job.after))


def file_in(state: str, job: Job) -> str:
    """The file name of *job* in *state*."""
    return pending_file(job) if state == "pending" else layout.job_file(job.id)


class Owned:
    """A job this process owns (it holds the run lock), where its file is now, and
    the state it was in when it was taken (``origin``: what a change reports as its
    "from"). A plain class: ``taskq add`` imports it, and a dataclass costs a
    millisecond to define."""

    __slots__ = ("id", "lock", "state", "name", "origin")

    def __init__(self, id: str, lock: Lock, state: str, name: str) -> None:  # noqa: A002 - the job's id
        self.id = id
        self.lock = lock
        self.state = state
        self.name = name
        self.origin = state

    def release(self) -> None:
        """Let go of the job. The lock's file is removed unless the job is still in
        running/: there it may hold the note of an attempt in progress, which recovery
        needs (a change that failed half-way leaves the job there)."""
        self.lock.release(remove=self.state != "running")


class JobStore:
    """The jobs of one spool, over its :class:`~taskq.spool.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- finding -----------------------------------------------------------------------

    def where_once(self, job_id: str) -> Where | None:
        """One look for the job's file in each state directory."""
        name = layout.job_file(job_id)
        for state in ("running", "done", "failed"):
            if self.store.has(state, name):
                return state, name
        for pname in self.store.names("pending"):
            if layout.matches_id(pname, job_id):
                return "pending", pname
        return None

    def locate(self, job_id: str) -> Where | None:
        """Find the job *job_id*: its (state, file name), or None.

        A job moves between directories while we look (and may move from one not yet
        looked at into one already looked at), so a miss is believed only after three
        full passes.
        """
        for _ in range(3):
            found = self.where_once(job_id)
            if found is not None:
                return found
        return None

    def state_of(self, job_id: str) -> str | None:
        """The state of job *job_id*, or None if there is no such job."""
        for state in ("done", "failed"):  # the usual answer for a dependency: first
            if self.store.has(state, layout.job_file(job_id)):
                return state
        found = self.locate(job_id)
        return found[0] if found else None

    def settled_at(self, job_id: str) -> float | None:
        """When the settled job *job_id* settled (None if unknown)."""
        for state in ("failed", "done"):
            try:
                settled = self.load(state, layout.job_file(job_id)).settled_at
            except (FileNotFoundError, ValidationError, SpoolError):
                continue
            return times.parse_iso(settled) if settled else None
        return None

    def ids(self, state: str) -> list[str]:
        """Ids of the job files in a state directory (drop-in files have none yet)."""
        out = []
        for name in self.store.names(state):
            job_id = layout.id_in(state, name)
            if job_id is not None:
                out.append(job_id)
        return out

    # -- reading -----------------------------------------------------------------------

    def read_data(self, state: str, name: str) -> Any:
        """The file's JSON (ValidationError if it is not JSON; FileNotFoundError if gone)."""
        return parse_json_bytes(self.store.read(state, name))

    def load(self, state: str, name: str) -> Job:
        """A complete job record (raises FileNotFoundError, ValidationError, SpoolError),
        with the attempt in progress noted beside it (:meth:`with_note`)."""
        job = Job.from_bytes(self.store.read(state, name))
        job.state = state
        if state == "running":
            self.with_note(job)
        return job

    def is_drop_in(self, state: str, name: str) -> bool:
        """Whether the file is a drop-in not yet taken in: a JSON object without the
        fields every complete record has."""
        try:
            data = self.read_data(state, name)
        except (FileNotFoundError, ValidationError, SpoolError):
            return False
        return isinstance(data, dict) and not is_complete(data)

    def read_reason(self, job_id: str) -> dict[str, Any] | None:
        """The ``failed/ID.reason`` of a quarantined file, if readable."""
        try:
            data = json.loads(self.store.read("failed", layout.reason_file(job_id)))
        except (FileNotFoundError, SpoolError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- changing ----------------------------------------------------------------------

    def put_new(self, jobs: list[Job], progress: Callable[[int, int], None] | None = None) -> None:
        """Publish new jobs into pending/, all or nothing (never over an existing file);
        *progress* is called as each one is staged."""
        self.store.publish_new([(job.to_bytes(), pending_file(job)) for job in jobs], "pending", progress)

    def own(self, job_id: str, where: Where | None = None) -> Owned | None:
        """Take the job's run lock without waiting and find its file (at *where* if
        given). None if the lock is held, or if the job is not there (any more)."""
        lock = locks.run_lock(self.store, job_id)
        if lock is None:
            return None
        found = where if where is not None and self.store.has(*where) else None
        if found is None and where is None:
            found = self.locate(job_id)
        if found is None:
            self.let_go(lock)
            return None
        return Owned(job_id, lock, *found)

    def let_go(self, lock: Lock) -> None:
        """Release a run lock taken for a job that was not where expected. Its file is
        removed unless the job is in running/: on a filesystem shared by several
        hosts, that may be another host's claim, which its flock does not protect
        here (recovery removes the file once it is no one's)."""
        job_id = layout.stem(os.path.basename(lock.path), layout.LOCK)
        lock.release(remove=job_id is None or not self.store.has("running", layout.job_file(job_id)))

    def own_lock(self, job_id: str) -> Lock | None:
        """The job's run lock alone (for a job that may have no file left)."""
        return locks.run_lock(self.store, job_id)

    def take(self, owned: Owned, sync_dir: bool = True) -> None:
        """Bring an owned pending job into running/ (the claim's rename). Raises
        FileNotFoundError if the file has gone."""
        if owned.state != "running":
            name = layout.job_file(owned.id)
            self.store.move(owned.state, owned.name, "running", name, sync_dir)
            owned.state, owned.name = "running", name

    def put_back(self, owned: Owned) -> None:
        """Return an owned file, unchanged, to pending/ under the name it has (a drop-in
        file whose intake was cut short)."""
        self.store.move(owned.state, owned.name, "pending", owned.name)
        owned.state = "pending"

    def save(self, owned: Owned, job: Job, sync_dir: bool = True) -> None:
        """Write *job* over the owned job's file where it is (stage, rename, fsync)."""
        self.store.write(owned.state, owned.name, job.to_bytes(), sync_dir=sync_dir)

    def move(self, owned: Owned, job: Job, state: str, sync_dir: bool = True) -> None:
        """Rename the owned job's file into *state* under the name it has there."""
        name = file_in(state, job)
        self.store.move(owned.state, owned.name, state, name, sync_dir)
        owned.state, owned.name = state, name
        job.state = state

    def quarantine(self, owned: Owned, why: str, original: str | None = None, fresh: bool = False) -> str:
        """Move a file that is not a valid job to failed/, bytes untouched, with the
        reason in ``failed/ID.reason`` beside it. Returns the id it is filed under:
        the owned id, or a fresh one if failed/ has that id already or *fresh* is set
        (a second copy of a job that stays elsewhere)."""
        job_id = owned.id
        if fresh or self.store.has("failed", layout.job_file(job_id)):
            job_id = new_id()
        self.write_reason(job_id, why, original or owned.name)
        try:
            self.store.move(owned.state, owned.name, "failed", layout.job_file(job_id))
        except FileNotFoundError:
            # Gone before we moved it (a drop-in file a worker took in first): the
            # reason must not stay behind, explaining a file that is not there.
            self.store.remove("failed", layout.reason_file(job_id))
            raise
        owned.state, owned.name = "failed", layout.job_file(job_id)
        return job_id

    def write_reason(self, job_id: str, why: str, original: str) -> None:
        """Write ``failed/ID.reason``: why ``failed/ID.json`` is not a valid job, and
        the name the file had (*original*)."""
        reason = {
            "last_error": f"invalid job file: {why}",
            "original_name": original,
            "settled_at": times.iso(times.now()),
        }
        self.store.write("failed", layout.reason_file(job_id), json.dumps(reason).encode() + b"\n", tag="reason")

    def has_reason(self, job_id: str) -> bool:
        """Whether ``failed/ID.reason`` exists (the file beside it was filed as invalid)."""
        return self.store.has("failed", layout.reason_file(job_id))

    def drop_copy(self, owned: Owned) -> None:
        """Remove the owned file alone (not the job's log or reason): a byte-identical
        second copy of a job that stays in another directory."""
        self.store.remove(owned.state, owned.name)

    def delete(self, owned: Owned) -> None:
        """Remove a settled job with its log and reason file. The job file last: if a
        removal fails, the job is still listed and a second purge finds its log and
        reason (none is left orphaned)."""
        self.store.remove_log(owned.id)
        self.store.remove(owned.state, layout.reason_file(owned.id))
        self.store.remove(owned.state, owned.name)

    # -- cancel requests ---------------------------------------------------------------

    def request_cancel(self, job_id: str) -> None:
        self.store.write("running", layout.cancel_file(job_id), b"", tag="cancel")

    def cancel_requested(self, job_id: str) -> bool:
        return self.store.has("running", layout.cancel_file(job_id))

    def clear_cancel(self, job_id: str) -> None:
        self.store.remove("running", layout.cancel_file(job_id))

    # -- the attempt in progress, noted in its run lock's file --------------------------
    #
    # A started attempt is written into the job's record only when it is settled. While
    # it runs, it is noted in running/ID.lock, the file its worker holds locked:
    # ``attempt=N started=ISO worker=HOST:PID``, and ``pgid=P boot=B`` once its process
    # group exists. Noting it is one write into a file already open, where rewriting the
    # record would be a new file, an fsync and a rename before every job. Nothing is
    # fsynced: a note lost in a power cut is an attempt that never started (README,
    # "Durability and speed"). Readers of a record in running/ add the noted attempt
    # (:meth:`with_note`), so ``show``, ``status`` and recovery see it as before.

    def note_attempt(self, lock: Lock, attempt: Attempt, pgid: int | None = None) -> None:
        """Note *attempt* (in progress) in its run lock's file, with its process group
        once there is one."""
        text = f"attempt={attempt.number} started={attempt.started_at} worker={attempt.worker}"
        if attempt.worker_id:
            text += f" wid={attempt.worker_id}"
        if pgid is not None:
            text += f" pgid={pgid} boot={boot_id()}"
        lock.write(text, durable=False)

    def note_text(self, job_id: str) -> str:
        """What running/ID.lock says, read without locking it ("" if unreadable)."""
        path = self.store.path("running", layout.lock_file(job_id))
        try:
            fd = open_to_read(path)
        except SpoolError:
            return ""
        if fd is None:
            return ""
        try:
            return os.read(fd, 4096).decode("utf-8", "replace")
        except OSError:
            return ""
        finally:
            os.close(fd)

    def open_lock_file(self, job_id: str) -> Lock | None:
        """running/ID.lock opened without taking its lock (a holder that lost its lease
        may keep it locked); None if it is not there."""
        path = self.store.path("running", layout.lock_file(job_id))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        return Lock(self.store, path, fd)

    def noted_attempt(self, job_id: str, recorded: int) -> Attempt | None:
        """The attempt in progress noted in running/ID.lock, if it is the one after the
        *recorded* attempts of the job's record (an older note is stale: left by a
        worker that died after settling that attempt)."""
        fields = _fields(self.note_text(job_id))
        try:
            number = int(fields.get("attempt", ""))
            started = fields["started"]
            times.parse_iso(started)
            worker = fields["worker"]
        except (KeyError, ValueError):
            return None
        if number != recorded + 1:
            return None
        return Attempt(number=number, started_at=started, worker=worker, worker_id=fields.get("wid"))

    def with_note(self, job: Job) -> Job:
        """*job* (read from running/) with its noted attempt in progress added, if any."""
        noted = self.noted_attempt(job.id, len(job.attempts))
        if noted is not None:
            job.attempts.append(noted)
        return job

    def attempt_group(self, lock: Lock) -> int | None:
        """The process group recorded in a held run lock's file, if a process of it is
        still alive in this boot (a process that dropped the lock's descriptor: a
        daemon, a child that closed its fds)."""
        fields = _fields(lock.read())
        try:
            pgid = int(fields.get("pgid", ""))
        except ValueError:
            return None
        if pgid <= 1 or fields.get("boot") != boot_id():
            return None
        from ..runner import group_alive  # noqa: PLC0415 - the worker side only

        return pgid if group_alive(pgid) else None

    def strays(self) -> list[str]:
        """Ids of the jobs that have a run lock, a fence or a claim file in running/ but
        no job file there: left by a worker that died after settling a job or before
        its claim's rename, or by a claim that lost its race. One listing."""
        try:
            names = os.listdir(self.store.dir("running"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise io_error("list", self.store.dir("running"), exc) from None
        jobs = {name for name in names if name.endswith(layout.JSON)}
        out: dict[str, None] = {}
        for name in names:
            if name.startswith("."):
                continue
            if name.endswith(layout.FENCE):
                fence = layout.parse_fence_file(name)
                job_id = fence.job_id if fence is not None else None
            else:
                job_id = layout.stem(name, layout.LOCK) or layout.stem(name, layout.CLAIM)
            if job_id and layout.job_file(job_id) not in jobs:
                out[job_id] = None
        return list(out)


class Fences:
    """The fencing tokens of jobs in running/ (``ID.N.WORKER.fence``, see
    :func:`taskq.spool.layout.fence_file`). Each change is one operation that the
    server of a shared filesystem makes atomically for all its clients: create with
    O_EXCL, rename (its source must exist), unlink (likewise); whoever finds the name
    gone has lost the job."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def make(self, job_id: str, worker: str) -> str:
        """A worker's token for a job it is claiming (N = 0), made before the claim's
        rename: from the moment the job is in running/, it names its owner.

        Only its name counts, so it is made as a second name of the run lock's file,
        which the claimer has just made: a link costs a tenth of creating a file (an
        inode) on ext4. Where that file is gone already (another host's lost claim
        removed it), the token is a new empty file."""
        name = layout.fence_file(job_id, 0, worker)
        path = self.store.path("running", name)
        try:
            self.store.io.link(self.store.path("running", layout.lock_file(job_id)), path)
            return name
        except OSError as exc:
            if exc.errno not in VANISHED:
                raise io_error("create", path, exc) from None
        try:
            self.store.io.create_empty(path, layout.FILE_MODE)
        except OSError as exc:
            raise io_error("create", path, exc) from None
        return name

    def advance(self, name: str, job_id: str, attempt: int, worker: str, settling: bool = False) -> str:
        """Trade the token *name* for attempt *attempt*'s (the start of the attempt)."""
        new = layout.fence_file(job_id, attempt, worker, settling)
        try:
            self.store.io.rename(self.store.path("running", name), self.store.path("running", new))
        except FileNotFoundError:
            raise FencedError(f"job {job_id} was taken over by another worker") from None
        except OSError as exc:
            raise io_error("rename", self.store.path("running", name), exc) from None
        return new

    def settling(self, name: str, job_id: str) -> str:
        """Trade the token *name* for its settle's (which still names the worker, so
        that no other host takes the job for ownerless while it moves)."""
        fence = layout.parse_fence_file(name)
        assert fence is not None  # one of ours
        return self.advance(name, job_id, fence.attempt, fence.worker, settling=True)

    def consume(self, name: str, job_id: str) -> None:
        """Give up the token *name* before changing the job; FencedError if it is gone."""
        try:
            self.store.io.unlink(self.store.path("running", name))
        except FileNotFoundError:
            raise FencedError(f"job {job_id} was taken over by another worker") from None
        except OSError as exc:
            raise io_error("remove", self.store.path("running", name), exc) from None

    def hold(self, name: str, job_id: str) -> bool:
        """Link the claim file of *job_id* to our fence *name*; False if another
        worker's claim holds it (see :func:`taskq.spool.layout.claim_file`)."""
        target = self.store.path("running", layout.claim_file(job_id))
        try:
            self.store.io.link(self.store.path("running", name), target)
        except FileExistsError:
            return False
        except OSError as exc:
            raise io_error("link", target, exc) from None
        return True

    def unhold(self, job_id: str) -> None:
        """Remove the claim file of *job_id* (the job has left running/, or its claim
        did not happen)."""
        self.store.discard(self.store.path("running", layout.claim_file(job_id)))

    def drop(self, name: str) -> None:
        """Remove a token of our own that no longer matters (a lost claim)."""
        self.store.discard(self.store.path("running", name))

    def of(self, job_id: str) -> list[layout.Fence]:
        """The tokens of *job_id* (one, except for a moment while claims race)."""
        prefix = job_id + "."
        out = []
        for name in self.store.names("running", suffix=layout.FENCE):
            if name.startswith(prefix):
                fence = layout.parse_fence_file(name)
                if fence is not None and fence.job_id == job_id:
                    out.append(fence)
        return out

    def take_over(self, fences: list[layout.Fence], job_id: str) -> None:
        """Consume the tokens of another worker's hold on *job_id* (recovery, cancel):
        if it comes back, it is fenced. FencedError if one is gone already (its worker
        is settling the job, or another process took it first)."""
        for fence in fences:
            self.consume(fence.name, job_id)

    def release(self, job_id: str, fence: str | None, held: bool) -> None:
        """Remove a worker's claim file (if *held*) and its token *fence*: the job has
        left running/, or the claim did not happen. The claim file first: a worker
        that dies in between leaves a stray token, which recovery removes."""
        if held:
            self.unhold(job_id)
        if fence is not None:
            self.drop(fence)


def noted_worker(text: str) -> str | None:
    """The worker id (``wid=``) in a run lock's note, if any."""
    return _fields(text).get("wid")


def _fields(text: str) -> dict[str, str]:
    """The ``key=value`` words of a run lock's note: its first line (what follows it
    is the tail of a longer note cut short, see ``FileIO.overwrite``)."""
    return dict(part.split("=", 1) for part in text.split("\n", 1)[0].split() if "=" in part)


def mtime_of(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0
