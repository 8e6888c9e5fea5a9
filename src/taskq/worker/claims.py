"""Choosing and claiming the next job: the index of pending/ kept current, drop-in
files taken in, dependencies judged (:func:`taskq.policy.dependency_verdict`), and the
claim itself (:meth:`taskq.transitions.Transitions.claim`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from .. import times
from ..errors import FencedError, SpoolError, TaskqError, ValidationError
from ..policy import Verdict, dependency_verdict
from ..spool import layout
from ..spool.jobs import pending_file
from ..spool.layout import PendingName
from ..transitions import Claimed
from ..watch import Watcher
from .index import PendingIndex

if TYPE_CHECKING:
    from ..api import Spool

#: When a ready job's run lock is busy but the job is still in pending/, try again
#: after this many seconds (the holder is about to let go of it).
CLAIM_RETRY = 0.25
#: A claim that failed on an I/O error is tried again this much later.
CLAIM_ERROR_RETRY = 5.0
#: Without inotify, pending/ is listed again at least this often (the directory's
#: mtime has a coarse clock: a change within one tick of a listing goes unseen).
RELIST_PERIOD = 1.0


class Claims:
    """The worker's view of pending/ and its claims."""

    def __init__(self, spool: Spool, watcher: Watcher, event: Callable[[str], None]) -> None:
        self.spool = spool
        self.store = spool.store
        self.watcher = watcher
        self.event = event
        self.index = PendingIndex()
        self.poll_interval = spool.config.poll_interval
        self._pending_mtime = -1
        self._last_relist = 0.0
        #: Drop-in files that could not be taken in (an I/O error): tried again later.
        self._retry_foreign: set[str] = set()

    # -- keeping the index current -----------------------------------------------------

    def relist(self, now: float, merge: bool = False) -> None:
        """List pending/ afresh: the index starts over, or with *merge* keeps what it
        knows of the names still there (see :meth:`PendingIndex.merge`)."""
        try:
            mtime = self.store.dir_mtime("pending")
            names = self.store.names("pending")
        except (OSError, TaskqError) as exc:
            self.event(f"cannot list pending/: {exc}")
            return
        if merge:
            self.index.merge(names, times.name_key(now))
            # Jobs held back by a dependency are judged again: it may have been settled
            # where no inotify event tells (another host; no inotify at all).
            self.index.unblock()
        else:
            self.index.reset(names, times.name_key(now))
        self._pending_mtime = mtime
        self._last_relist = now

    def refresh(self, now: float) -> None:
        """Bring the index up to date with the directory: inotify's news, and a new
        listing every ``poll_interval`` whatever inotify says, for the jobs that other
        hosts of a shared filesystem add (inotify sees only this host's changes)."""
        if not self.watcher.available:
            try:
                mtime = self.store.dir_mtime("pending")
            except OSError:
                return
            if mtime != self._pending_mtime or now - self._last_relist >= min(RELIST_PERIOD, self.poll_interval):
                self.relist(now, merge=True)
            return
        changes = self.watcher.read()
        if changes is None:  # the event queue overflowed
            self.relist(now)
            return
        if now - self._last_relist >= self.poll_interval:
            self.relist(now, merge=True)
        now_key = times.name_key(now)
        settled = False
        for label, name, added, created in changes:
            if label == "pending":
                # taskq publishes complete files by link(2) under its own names; a
                # foreign name just created may be half-written: wait for its close
                # or rename.
                if added and not (created and layout.parse_pending_name(name) is None):
                    if self.store.has("pending", name):  # regular files only
                        self.index.add(name, now_key)
                else:
                    self.index.remove(name)
            else:
                settled = True
        if settled:
            self.index.unblock()  # a dependency may have settled

    def retry_later(self) -> None:
        """Periodically: look again at what was held back or failed to be taken in."""
        self.index.unblock()
        self.index.foreign |= {n for n in self._retry_foreign if self.store.has("pending", n)}
        self._retry_foreign.clear()

    # -- judging -----------------------------------------------------------------------

    def verdict(self, entry: PendingName) -> Verdict | None:
        """The dependency verdict on a pending entry, opening its file only when its
        name says it has dependencies; None if it has gone. A file that cannot be
        read is ready: its claim files it in failed/."""
        if not entry.has_deps:
            return Verdict("ready")
        jobs = self.spool.jobs
        try:
            job = jobs.load("pending", entry.name)
        except FileNotFoundError:
            return None
        except (ValidationError, SpoolError):
            return Verdict("ready")
        retried = times.parse_iso(job.retried_at) if job.retried_at else None
        return dependency_verdict(job.after, retried, jobs.state_of, jobs.settled_at)

    def any_ready(self, now: float) -> bool:
        """Whether a claim would find something to do now (for ``--burst``)."""
        self.index.promote(times.name_key(now))
        if self.index.foreign:
            return True
        # Entries held back by dependencies may have become ready: look once more.
        self.index.unblock()
        entry = self.index.pop()
        while entry is not None:
            verdict = self.verdict(entry)
            if verdict is not None and verdict.kind != "waiting":
                self.index.push(entry)
                return True
            self.index.block(entry)
            entry = self.index.pop()
        return False

    # -- claiming ----------------------------------------------------------------------

    def next(self, now: float, busy: Collection[str]) -> Claimed | None:
        """Claim the next ready job, or None. *busy*: ids this worker runs (one of its
        threads may still hold such a job's lock while settling it)."""
        self._take_in(now)
        self.index.promote(times.name_key(now))
        while True:
            entry = self.index.pop()
            if entry is None:
                return None
            try:
                claimed = self._try(entry, now, busy)
            except FencedError:
                self.index.push(entry)  # still pending: for this worker's next lease
                return None
            except SpoolError as exc:
                self.event(f"cannot claim {entry.id}: {exc}")
                # Not forgotten: if it is still pending, look again a little later.
                self.index.defer(entry, times.name_key(now + CLAIM_ERROR_RETRY))
                continue
            if claimed is not None:
                return claimed

    def _try(self, entry: PendingName, now: float, busy: Collection[str]) -> Claimed | None:
        verdict = self.verdict(entry)
        if verdict is None:
            return None
        if verdict.kind == "waiting" or entry.id in busy:
            self.index.block(entry)
            return None
        if verdict.kind == "failed":
            if self.spool.transitions.fail_dependent(entry, verdict.dep or "?", now):
                self.event(f"failed for good {entry.id}: dependency {verdict.dep} failed")
            self.index.remove(entry.name)
            return None
        claimed = self.spool.transitions.claim(entry)
        if claimed is None and self.store.has("pending", entry.name):
            # Still pending, but its lock is held for a moment by another process (a
            # worker that has just put it back, or is claiming it): try again shortly
            # rather than forget it.
            self.index.defer(entry, times.name_key(now + CLAIM_RETRY))
            return None
        self.index.remove(entry.name)
        if claimed is None and self.store.has("failed", layout.job_file(entry.id)):
            if not self.store.has("running", layout.job_file(entry.id)):
                self.event(f"failed for good {entry.id}: not a valid job file (moved to failed/)")
        return claimed

    def _take_in(self, now: float) -> None:
        """Give drop-in files their id and proper name."""
        config = self.spool.config
        for name in sorted(self.index.foreign):
            self.index.foreign.discard(name)
            try:
                job = self.spool.transitions.normalise(name, now, os.getcwd(), config.defaults, config.tasks)
            except SpoolError as exc:
                self.event(f"cannot take in pending/{name}: {exc}")
                self._retry_foreign.add(name)
                continue
            if job is not None:
                self.event(f"accepted {job.id} from pending/{name}")
                self.index.add(pending_file(job), times.name_key(now))
            elif not self.store.has("pending", name):
                self.event(f"pending/{name} is not a valid job: moved to failed/")
