"""The worker: claim → run → settle, until stopped.

One process runs up to ``concurrency`` jobs at once, each attempt in a thread that
starts the command, waits for it and settles it; the main thread claims, watches the
spool, recovers jobs of dead workers, and handles signals. Any number of workers may
share a spool: a claim is a rename, which only one of them can win.

The main loop keeps an ordered index of pending/ built from file names (see
:mod:`taskq.spool`) and kept current by inotify events, so a claim costs O(log n)
whatever the depth of the queue; without inotify it re-lists when the directory's
mtime changes and once a second.
"""

from __future__ import annotations

import heapq
import os
import random
import select
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from . import lifecycle, times
from .api import Spool
from .errors import SpoolError, TaskqError
from .lifecycle import Claimed
from .policy import Outcome
from .runner import Control, become_subreaper, run_attempt
from .spool import PendingName, parse_pending_name
from .stopping import STOP, StopState
from .watch import Watcher

if TYPE_CHECKING:
    from .render import LiveView

#: How often running/ is scanned for jobs of dead workers.
RECOVERY_PERIOD = 5.0
#: Staging files older than this are left-overs of crashed writers (as in Maildir).
STALE_TMP_AGE = 3600.0
TMP_CLEAN_PERIOD = 600.0
#: Longest sleep of an idle worker: bounds how late periodic work and polling run.
IDLE_WAKE = 1.0
#: When a ready job's run lock is busy but the job is still in pending/, try again
#: after this many seconds (the holder is about to let go of it).
CLAIM_RETRY = 0.25


class PendingIndex:
    """pending/ in claim order, from file names: a heap of ready entries ordered by
    (priority, id), a heap of scheduled ones ordered by run_at, the set of names
    present (entries popped for names no longer present are skipped), drop-in files
    still to normalise, and jobs held back by their dependencies."""

    def __init__(self) -> None:
        self.present: set[str] = set()
        self.ready: list[tuple[str, str, str]] = []
        self.scheduled: list[tuple[str, str]] = []
        self.entries: dict[str, PendingName] = {}
        self.foreign: set[str] = set()
        self.blocked: dict[str, PendingName] = {}

    def reset(self, names: list[str], now_key: str) -> None:
        self.__init__()  # type: ignore[misc]
        for name in names:
            self.add(name, now_key)

    def add(self, name: str, now_key: str) -> None:
        if name.startswith(".") or not name.endswith(".json") or name in self.present:
            return
        entry = parse_pending_name(name)
        if entry is None:
            self.foreign.add(name)
            return
        self.present.add(name)
        self.entries[name] = entry
        if entry.run_key <= now_key:
            self.push(entry)
        else:
            heapq.heappush(self.scheduled, (entry.run_key, name))

    def remove(self, name: str) -> None:
        self.present.discard(name)
        self.entries.pop(name, None)
        self.foreign.discard(name)
        self.blocked.pop(name, None)

    def push(self, entry: PendingName) -> None:
        """Make *entry* a candidate for the next claims (it is ready by its time)."""
        heapq.heappush(self.ready, (entry.prio_key, entry.id, entry.name))

    def promote(self, now_key: str) -> None:
        """Move entries whose run_at has come from the scheduled heap to the ready one."""
        while self.scheduled and self.scheduled[0][0] <= now_key:
            _, name = heapq.heappop(self.scheduled)
            entry = self.entries.get(name)
            if entry is not None:
                self.push(entry)

    def pop(self) -> PendingName | None:
        while self.ready:
            _, _, name = heapq.heappop(self.ready)
            entry = self.entries.get(name)
            if entry is not None and name not in self.blocked:
                return entry
        return None

    def block(self, entry: PendingName) -> None:
        self.blocked[entry.name] = entry

    def defer(self, entry: PendingName, run_key: str) -> None:
        """Look at an entry that is still present again once *run_key* has come."""
        heapq.heappush(self.scheduled, (run_key, entry.name))

    def unblock(self) -> None:
        for name, entry in self.blocked.items():
            if name in self.entries:
                self.push(entry)
        self.blocked.clear()

    def next_due(self) -> str | None:
        while self.scheduled and self.scheduled[0][1] not in self.entries:
            heapq.heappop(self.scheduled)
        return self.scheduled[0][0] if self.scheduled else None

    def has_ready(self) -> bool:
        return any(name in self.entries and name not in self.blocked for _, _, name in self.ready) or bool(self.foreign)


@dataclass
class Running:
    claimed: Claimed
    control: Control
    thread: threading.Thread
    finished: bool = False


@dataclass
class Worker:
    """Runs jobs from *spool* until stopped (or, with *burst*, until idle)."""

    spool: Spool
    concurrency: int = 1
    burst: bool = False
    max_jobs: int | None = None
    grace: float = 30.0
    stop: StopState = STOP
    log: TextIO = field(default_factory=lambda: sys.stderr)
    #: Called with the event lines and a snapshot of running jobs, to draw a live view
    #: (on a terminal); None = plain event lines on *log*.
    view: "LiveView | None" = None

    def __post_init__(self) -> None:
        self.sd = self.spool.dir
        self.index = PendingIndex()
        self.running: dict[str, Running] = {}
        self.started = 0
        self._log_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stop.wake = self.wake
        self.watcher = Watcher()
        self._pending_mtime = -1
        self._last_relist = 0.0
        self._last_recovery = 0.0
        self._last_tmp_clean = 0.0
        self._disk_low = False
        self._last_draw = 0.0
        self._stop_deadline: float | None = None
        self._rng = random.Random()
        #: Drop-in files that could not be taken in (an I/O error): tried again later.
        self._retry_foreign: set[str] = set()

    # -- plumbing --------------------------------------------------------------------

    def wake(self) -> None:
        """Interrupt the main loop's wait (safe from signal handlers and threads)."""
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def event(self, message: str) -> None:
        line = f"taskq[{os.getpid()}] {times.iso(times.now())} {message}\n"
        with self._log_lock:
            if self.view is not None:
                self.view.event(line.rstrip("\n"))
                return
            try:
                self.log.write(line)
                self.log.flush()
            except (OSError, ValueError):
                pass

    # -- main loop -------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped; return the exit status (0, or 130 after a hard stop)."""
        if self.stop.requested:
            return 0
        self.sd.create()
        self.sd.check_safe()
        config = self.spool.config
        become_subreaper()
        self.watcher.add(self.sd.dir("pending"), "pending")
        for label in ("done", "failed", "running"):
            self.watcher.add(self.sd.dir(label), label, added_only=True)
        self.event(f"worker started on {self.sd.root} (concurrency {self.concurrency}"
                   + (", burst" if self.burst else "") + ")")
        now = times.now()
        self._clean_tmp(now)
        self._recover(now)
        self._relist(now)
        try:
            while True:
                now = times.now()
                self._reap()
                if self.stop.requested:
                    if not self._stopping(now):
                        break
                else:
                    if self.max_jobs is not None and self.started >= self.max_jobs and not self.running:
                        break
                    self._refresh(now)
                    self._check_cancels()
                    self._periodic(now, config.min_free)
                    paused = self.sd.is_paused()
                    if not paused and not self._disk_low:
                        self._fill(now)
                    if self.burst and not self.running and (paused or self._disk_low or not self._any_ready(now)):
                        break
                if self.view is not None:
                    self._draw(now)
                self._wait(self._timeout(now))
        finally:
            if self.view is not None:
                self.view.stop()
            self.watcher.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        self.event("worker stopped")
        return 130 if self.stop.hard else 0

    def _draw(self, now: float) -> None:
        """Refresh the live view (at most about once a second)."""
        if now - self._last_draw < 0.5:
            return
        self._last_draw = now
        rows = []
        for job_id, run in list(self.running.items()):
            job = run.claimed.job
            attempt = job.current_attempt
            started = times.parse_iso(attempt.started_at) if attempt else now
            rows.append((job_id, job.name or "", str(attempt.number) if attempt else "-", now - started))
        try:
            counts = {st: len(self.sd.names(st)) for st in ("pending", "running", "done", "failed")}
        except TaskqError:
            counts = {}
        state = "stopping" if self.stop.requested else ("paused" if self.sd.is_paused() else "working")
        self.view.update(state, counts, rows)

    def _stopping(self, now: float) -> bool:
        """Handle a requested stop; False once nothing of ours is running."""
        if self._stop_deadline is None:
            self._stop_deadline = now + self.grace
            if self.running:
                self.event(f"stopping: waiting up to {self.grace:g}s for {len(self.running)} running job(s)")
        for run in self.running.values():
            if self.stop.hard:
                run.control.hard.set()
                run.control.interrupt.set()
            elif now >= self._stop_deadline and not run.control.interrupt.is_set():
                self.event(f"grace period over: stopping {run.claimed.job.id}")
                run.control.interrupt.set()
        return bool(self.running)

    def _timeout(self, now: float) -> float:
        if self.stop.requested:
            return 0.1
        timeout = IDLE_WAKE
        due = self.index.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, _key_to_ts(due) - now) + 0.001)
        if not self.watcher.available:
            timeout = min(timeout, 0.2)
        return timeout

    def _wait(self, timeout: float) -> None:
        fds = [self._wake_r] + ([self.watcher.fd] if self.watcher.available else [])
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    # -- the pending index -------------------------------------------------------------

    def _relist(self, now: float) -> None:
        try:
            mtime = self.sd.dir_mtime("pending")
            names = self.sd.names("pending")
        except (OSError, TaskqError) as exc:
            self.event(f"cannot list pending/: {exc}")
            return
        self.index.reset(names, times.name_key(now))
        self._pending_mtime = mtime
        self._last_relist = now

    def _refresh(self, now: float) -> None:
        """Bring the index up to date with the directory."""
        if self.watcher.available:
            changes = self.watcher.read()
            if changes is None:
                self._relist(now)
                return
            now_key = times.name_key(now)
            deps_changed = False
            for label, name, added, created in changes:
                if label == "pending":
                    # taskq publishes complete files by link(2) under its own names; a
                    # foreign name just created may be half-written: wait for its
                    # close or rename.
                    if added and not (created and parse_pending_name(name) is None):
                        if self.sd.has("pending", name):  # regular files only
                            self.index.add(name, now_key)
                    else:
                        self.index.remove(name)
                elif label != "running":
                    deps_changed = True
            if deps_changed:
                self.index.unblock()
            return
        try:
            mtime = self.sd.dir_mtime("pending")
        except OSError:
            return
        # mtime has a coarse clock: also re-list once a second to catch changes made
        # within one tick of the last listing.
        if mtime != self._pending_mtime or now - self._last_relist >= IDLE_WAKE:
            self._relist(now)

    def _check_cancels(self) -> None:
        """Stop own jobs that ``taskq cancel`` asked to stop (running/ID.cancel)."""
        for job_id, run in self.running.items():
            if not run.control.cancel.is_set() and self.sd.has("running", lifecycle.cancel_file(job_id)):
                self.event(f"cancelling {job_id}")
                run.control.cancel.set()

    def _periodic(self, now: float, min_free: int) -> None:
        if now - self._last_recovery >= RECOVERY_PERIOD:
            self._recover(now)
            self.index.unblock()
            self.index.foreign |= {n for n in self._retry_foreign if self.sd.has("pending", n)}
            self._retry_foreign.clear()
        if now - self._last_tmp_clean >= TMP_CLEAN_PERIOD:
            self._clean_tmp(now)
        low = bool(min_free) and self.sd.free_bytes() < min_free
        if low != self._disk_low:
            self._disk_low = low
            self.event("free space below min_free: claiming paused" if low else "free space recovered: claiming resumed")

    def _any_ready(self, now: float) -> bool:
        self.index.promote(times.name_key(now))
        if self.index.foreign:
            return True
        # Entries held back by dependencies may have become ready: look once more.
        self.index.unblock()
        entry = self.index.pop()
        while entry is not None:
            if self._dependencies(entry)[0] != "waiting":
                self.index.push(entry)
                return True
            self.index.block(entry)
            entry = self.index.pop()
        return False

    def _dependencies(self, entry: PendingName) -> tuple[str, str | None]:
        """:func:`lifecycle.dependency_state` of a pending entry, opening its file only
        when its name says it has dependencies (``("gone", None)`` if it vanished)."""
        if not entry.has_deps:
            return "ready", None
        job = lifecycle.read_pending(self.sd, entry)
        if job is None:
            return "gone", None
        return lifecycle.dependency_state(self.sd, job)

    # -- claiming ----------------------------------------------------------------------

    def _fill(self, now: float) -> None:
        while len(self.running) < self.concurrency:
            if self.max_jobs is not None and self.started >= self.max_jobs:
                return
            if self.stop.requested:
                return
            claimed = self._claim_next(times.now())
            if claimed is None:
                return
            self._start(claimed)

    def _claim_next(self, now: float) -> Claimed | None:
        now_key = times.name_key(now)
        self._normalise_dropins(now)
        self.index.promote(now_key)
        while True:
            entry = self.index.pop()
            if entry is None:
                return None
            try:
                state, dep = self._dependencies(entry)
                if state == "gone":
                    continue
                if state == "waiting":
                    self.index.block(entry)
                    continue
                if state == "failed":
                    if lifecycle.fail_dependent(self.sd, entry, dep or "?", now):
                        self.event(f"failed for good {entry.id}: dependency {dep} failed")
                    self.index.remove(entry.name)
                    continue
                if entry.id in self.running:
                    # One of our threads is settling it and still holds its lock: look
                    # again once it is reaped.
                    self.index.block(entry)
                    continue
                claimed = lifecycle.claim(self.sd, entry)
            except SpoolError as exc:
                self.event(f"cannot claim {entry.id}: {exc}")
                # Not forgotten: if it is still pending, look again at the next recovery.
                self.index.defer(entry, times.name_key(now + RECOVERY_PERIOD))
                continue
            if claimed is None and self.sd.has("pending", entry.name):
                # Still pending, but its lock is held for a moment by another process
                # (a worker that has just put it back, or is claiming it): try again
                # shortly rather than forget it.
                self.index.defer(entry, times.name_key(now + CLAIM_RETRY))
                continue
            self.index.remove(entry.name)
            if claimed is not None:
                return claimed
            if not self.sd.has("running", f"{entry.id}.json") and self.sd.has("failed", f"{entry.id}.json"):
                self.event(f"failed for good {entry.id}: not a valid job file (moved to failed/)")

    def _normalise_dropins(self, now: float) -> None:
        config = self.spool.config
        for name in sorted(self.index.foreign):
            self.index.foreign.discard(name)
            try:
                job = lifecycle.normalise(self.sd, name, now, os.getcwd(), config.defaults, config.tasks)
            except SpoolError as exc:
                self.event(f"cannot take in pending/{name}: {exc}")
                self._retry_foreign.add(name)
                continue
            if job is not None:
                self.event(f"accepted {job.id} from pending/{name}")
                self.index.add(lifecycle.pending_file(job), times.name_key(now))
            elif not self.sd.has("pending", name):
                self.event(f"pending/{name} is not a valid job: moved to failed/")

    # -- running -----------------------------------------------------------------------

    def _start(self, claimed: Claimed) -> None:
        control = Control(on_spawn=lambda pgid: lifecycle.record_group(self.sd, claimed.lock, pgid))
        if self.stop.hard:
            control.hard.set()
        thread = threading.Thread(target=self._run_one, args=(claimed, control), daemon=True,
                                  name=f"taskq-job-{claimed.job.id}")
        self.running[claimed.job.id] = Running(claimed, control, thread)
        self.started += 1
        thread.start()

    def _run_one(self, claimed: Claimed, control: Control) -> None:
        job = claimed.job
        try:
            try:
                attempt = lifecycle.start_attempt(self.sd, claimed, times.now())
            except SpoolError as exc:
                # Nothing ran: put the job back as it was, uncounted. If even that
                # fails, it stays in running/ unowned and recovery returns it. The
                # pause keeps this slot busy a moment, so a failing disk is not hammered.
                self.event(f"cannot start {job.id}: {exc}")
                try:
                    lifecycle.unclaim(self.sd, claimed, times.now())
                except SpoolError:
                    claimed.lock.release(remove=False)
                time.sleep(CLAIM_RETRY)
                return
            name = f" ({job.name})" if job.name else ""
            self.event(f"claimed {job.id}{name} attempt {attempt.number}"
                       f" (try {job.failures + 1} of {job.max_attempts})")
            try:
                log_fd = self.sd.open_log(job.id)
            except SpoolError as exc:
                outcome = Outcome(error=f"cannot open log: {exc}")
            else:
                try:
                    header = f"=== taskq: attempt {attempt.number} started {attempt.started_at} on {attempt.worker} ===\n"
                    os.write(log_fd, header.encode())
                    outcome = run_attempt(job, attempt.number, self.sd.root, log_fd, claimed.lock.fd,
                                          self.spool.config.kill_grace, control)
                    if outcome.error:
                        os.write(log_fd, f"=== taskq: {outcome.error} ===\n".encode())
                finally:
                    os.close(log_fd)
            try:
                decision = lifecycle.settle(self.sd, claimed, outcome, times.now(), self._rng.random())
            except SpoolError as exc:
                self.event(f"cannot settle {job.id}: {exc} (recovery will retry it)")
                return
            reason = outcome.describe(job.timeout)
            if outcome.error == "cancelled":
                self.event(f"cancelled {job.id}")
            elif decision.state == "done":
                self.event(f"succeeded {job.id}{name}")
            elif decision.state == "pending" and outcome.error == "interrupted":
                self.event(f"interrupted {job.id}: back to pending")
            elif decision.state == "pending":
                self.event(f"failed {job.id} attempt {attempt.number}: {reason}; retry at {times.iso(decision.run_at or 0)}")
            else:
                self.event(f"failed for good {job.id}: {decision.last_error}")
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the worker stuck
            self.event(f"internal error on {job.id}: {exc!r}")
            claimed.lock.release(remove=False)
        finally:
            self.running[job.id].finished = True
            self.wake()

    def _reap(self) -> None:
        for job_id in [j for j, r in self.running.items() if r.finished]:
            self.running.pop(job_id).thread.join()
            if not self.stop.requested:
                self.index.unblock()  # a dependency may just have been settled

    # -- maintenance -------------------------------------------------------------------

    def _recover(self, now: float) -> None:
        self._last_recovery = now
        try:
            names = self.sd.names("running")
            # A lock file with no job beside it was left by a worker that died after
            # settling the job (or before claiming it): recover() removes it.
            names += [n for n in self.sd.names("running", suffix=".lock") if f"{n[:-5]}.json" not in names]
        except TaskqError:
            return
        for name in names:
            job_id = name[:-5]
            if job_id in self.running:
                continue
            try:
                result = lifecycle.recover(self.sd, job_id, times.now(), self._rng.random())
            except (SpoolError, ValueError) as exc:
                self.event(f"cannot recover {job_id}: {exc}")
                continue
            if result is None:
                continue
            what, decision = result
            if what == "quarantined":
                self.event(f"recovered {job_id}: not a valid job file, moved to failed/")
            elif decision.state == "pending":
                self.event(f"recovered {job_id} ({what}): back to pending, run at {times.iso(decision.run_at or now)}")
            else:
                self.event(f"recovered {job_id} ({what}): {decision.state}")

    def _clean_tmp(self, now: float) -> None:
        self._last_tmp_clean = now
        for name in self.sd.clean_tmp(now - STALE_TMP_AGE):
            self.event(f"removed stale staging file tmp/{name}")


def _key_to_ts(key: str) -> float:
    """Inverse of :func:`taskq.times.name_key`."""
    from datetime import datetime, timezone

    dt = datetime.strptime(key[:15], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + int(key[15:18]) / 1000.0
