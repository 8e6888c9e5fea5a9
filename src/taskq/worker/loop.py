"""The worker: claim → run → settle, until stopped.

One process runs up to ``concurrency`` jobs at once, each attempt in one of
``concurrency`` slot threads (:mod:`.attempt`). A slot thread whose attempt has ended
claims its next job itself and, once the next one's process has started, settles the
ended one while the next runs (on a network filesystem it hands it to a settler thread
instead, see :meth:`Worker._slot`), so a queue of short jobs drains without waking the
main thread between them. The main thread gives work to idle slots, watches the spool,
passes on cancel requests, recovers jobs of dead workers and handles signals. Any
number of workers may share a spool, on one host or several (a lease each,
:mod:`.lease`): a claim is a rename, which only one of them can win.

:meth:`Worker.run_once` is one iteration of the main loop and takes the time as a
parameter; :meth:`Worker.run` sets up, then repeats it, waiting in between for
inotify, a finished attempt, a signal or the next scheduled job. The index of pending/
(:mod:`.index`) is kept current by inotify events, and merged with a new listing every
``poll_interval`` (other hosts' changes raise no inotify event); without inotify it
re-lists when the directory's mtime changes and once a second.
"""

from __future__ import annotations

import os
import queue
import random
import select
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from .. import times
from ..api import Spool
from ..errors import SpoolError, TaskqError, ValidationError
from ..ids import worker_id
from ..runner import Control, ProcessRunner, Runner, become_subreaper
from ..spool.fileio import VANISHED
from ..spool.layout import STATES
from ..spool.store import LOCAL_FILESYSTEMS, STALE_TMP_AGE
from ..stopping import STOP, StopState
from ..watch import Watcher
from .attempt import AttemptRunner, Ended, Running
from .claims import Claims
from .hooks import Hooks
from .index import key_to_ts
from .lease import LeaseKeeper
from .metrics import DEFAULT_INTERVAL, MetricsFile

if TYPE_CHECKING:
    from ..render import LiveView

#: How often running/ is scanned for jobs of dead workers.
RECOVERY_PERIOD = 5.0
TMP_CLEAN_PERIOD = 600.0
#: How often free space is checked against ``min_free`` (a statfs per loop would cost
#: a system call per job for a value that changes slowly).
SPACE_CHECK_PERIOD = 1.0
#: How often the main thread looks for cancel requests (running/ID.cancel) of all its
#: jobs. The thread supervising an attempt looks for its own every ``runner.POLL``
#: seconds (:meth:`Worker._watch_cancel`); this is for runners that do not.
CANCEL_CHECK_PERIOD = 1.0
#: How long closing waits for each slot thread to end.
SLOT_JOIN = 5.0
#: Longest sleep of an idle worker: bounds how late periodic work and polling run.
IDLE_WAKE = 1.0
#: Threads that settle ended attempts handed over by the slots, on a network
#: filesystem (on a local one each slot settles its own: measured on ext4, handing the
#: settle to another thread cost 40 % more CPU per job and a quarter of the drain's
#: speed, the two threads' renames and fsyncs contending for one journal and the
#: interpreter lock). Several, so that their fsyncs overlap (group commit). There a
#: slot's thread stays free to supervise its next attempt while a settle waits for a
#: server that does not answer: that is how an attempt of a worker whose lease ran out
#: is stopped within 0.1 s (README, "Several hosts").
SETTLERS = 2
#: At most this many ended attempts wait for a settler; beyond, a slot settles its
#: ended attempt itself. Without a bound, jobs that end faster than the disk records
#: them would pile up, each with its open run lock, its record in memory, and a finished
#: job not yet in done/.
SETTLE_BACKLOG = 8


@dataclass
class Worker:
    """Runs jobs from *spool* until stopped (or, with *burst*, until idle).

    *runner* runs one attempt (default: a process group per attempt, see
    :mod:`taskq.runner`); *view* draws a live panel on a terminal (None: plain event
    lines on *log*). With *metrics_file*, that file is kept current every
    *metrics_interval* seconds (:mod:`.metrics`).
    """

    spool: Spool
    concurrency: int = 1
    burst: bool = False
    max_jobs: int | None = None
    grace: float = 30.0
    stop: StopState = STOP
    log: TextIO = field(default_factory=lambda: sys.stderr)
    view: LiveView | None = None
    runner: Runner | None = None
    metrics_file: str | None = None
    metrics_interval: float = DEFAULT_INTERVAL
    #: Whether a slot settles its ended attempt itself once the next one's process has
    #: started, or hands it to a settler thread; None: itself where the spool's
    #: filesystem is a local one (:data:`taskq.spool.store.LOCAL_FILESYSTEMS`).
    settle_in_slot: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValidationError("must be >= 1", "--concurrency")
        if self.max_jobs is not None and (not isinstance(self.max_jobs, int) or self.max_jobs < 1):
            raise ValidationError("must be >= 1", "--max-jobs")
        if not self.grace >= 0:
            raise ValidationError("must be >= 0", "--grace")
        if not self.metrics_interval > 0:
            raise ValidationError("must be > 0", "--metrics-interval")
        self.store = self.spool.store
        # Event lines name this worker; an event it cannot write is said in its log.
        self.spool.event_recorder.worker = worker_id()
        self.spool.event_recorder.warn = self.event
        self.spool.event_recorder.log.keep_open = True  # a few lines per job: one open file
        #: Jobs claimed and not yet settled (and reaped) by id. Slot threads add to it
        #: and the main thread removes from it, both holding ``_claiming``, which also
        #: guards the claims (the index of pending/) and ``started``.
        self.running: dict[str, Running] = {}
        self.started = 0
        #: Slot threads waiting for a job from the main thread (also under ``_claiming``).
        #: Not ``concurrency - len(running)``: an ended attempt handed to a settler stays
        #: in ``running`` until it is settled and reaped, while its slot runs the next job.
        self._free = self.concurrency
        self._claiming = threading.Lock()
        self._log_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stop.wake = self.wake
        self.watcher = Watcher()
        self.claims = Claims(self.spool, self.watcher, self.event)
        self.hooks = Hooks(self.spool, self.event)
        self._rng = random.Random()
        self._attempts: AttemptRunner | None = None
        self._slots: queue.SimpleQueue[Running | None] = queue.SimpleQueue()
        self._settles: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._last_recovery = 0.0
        self._last_tmp_clean = 0.0
        self._disk_low = False
        self._last_space_check = -SPACE_CHECK_PERIOD
        self._last_cancel_check = -CANCEL_CHECK_PERIOD
        self._last_draw = 0.0
        self._stop_deadline: float | None = None
        self._metrics: MetricsFile | None = None
        self.keeper: LeaseKeeper | None = None

    # -- plumbing ----------------------------------------------------------------------

    def wake(self) -> None:
        """Interrupt the main loop's wait (safe from signal handlers and threads)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
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

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped; return the exit status (0, or 130 after a hard stop)."""
        if self.stop.requested:
            return 0
        try:
            self.begin()
            while True:
                now = times.now()
                if not self.run_once(now):
                    break
                if self.view is not None:
                    self._draw(now)
                self._wait(self._timeout(now))
            if not self.stop.requested:
                # A last look for what dead workers, and claims lost to other hosts,
                # left in running/ (a burst from cron may be the only worker).
                self._recover(times.now())
            self._end_hooks()
        finally:
            self.close()
        self.event("worker stopped")
        return 130 if self.stop.hard else 0

    def begin(self) -> None:
        """Set up: the spool, its safety, watches; clean tmp/, recover, list pending/."""
        self.store.create()
        self.store.check_safe()
        config = self.spool.config
        if self.runner is None:
            self.runner = ProcessRunner(self.store.root, config.kill_grace)
        self._attempts = AttemptRunner(self.spool.transitions, self.runner, self.event, self._rng,
                                       config.log_max_for)
        # Before recovery: a job recovered as "worker lost" is an event with hooks too.
        self.spool.transitions.subscribe(observe=self.hooks.observe, prepare=self.hooks.prepare)
        self.hooks.start()
        become_subreaper()
        # The lease before recovery: recovery judges other hosts' leases by the time
        # the server gives ours.
        self.keeper = LeaseKeeper(self.spool.transitions, config.lease_timeout, self.event, self._fence)
        self.keeper.start()
        self._threads = [threading.Thread(target=self._slot, daemon=True, name=f"taskq-slot-{n}")
                         for n in range(self.concurrency)]
        if self.settle_in_slot is None:
            self.settle_in_slot = self.store.filesystem_type() in LOCAL_FILESYSTEMS
        if not self.settle_in_slot:
            self._threads += [threading.Thread(target=self._settler, daemon=True, name=f"taskq-settle-{n}")
                              for n in range(SETTLERS)]
        for thread in self._threads:
            thread.start()
        if self.metrics_file is not None:
            self._metrics = MetricsFile(self.spool, self.metrics_file, self.metrics_interval, self.concurrency,
                                        self.busy, self.event)
            self._metrics.attach(self.spool.transitions)
            self._metrics.start()
        self.watcher.add(self.store.dir("pending"), "pending")
        for label in ("done", "failed"):
            self.watcher.add(self.store.dir(label), label, added_only=True)
        self.event(f"worker started on {self.store.root} (concurrency {self.concurrency}"
                   + (", burst" if self.burst else "") + ")")
        now = times.now()
        self._clean_tmp(now)
        self._recover(now)
        self.claims.relist(now)

    def run_once(self, now: float) -> bool:
        """One iteration at time *now*: reap finished attempts, bring the index up to
        date, pass on cancel requests, do periodic work, claim and start jobs into
        free slots. Returns False when the worker should stop (a stop was asked for
        and nothing runs any more; ``max_jobs`` reached; a burst found nothing to do)."""
        self._reap()
        if self.stop.requested:
            return self._stopping(now)
        if self.max_jobs is not None and self.started >= self.max_jobs and not self.running:
            return False
        with self._claiming:
            self.claims.refresh(now)
        if now - self._last_cancel_check >= CANCEL_CHECK_PERIOD:
            self._last_cancel_check = now
            self._check_cancels()
        self._periodic(now)
        # The pause flag is looked at only when a slot is free: most wake-ups of a busy
        # worker come from its own jobs' files, with every slot taken.
        paused: bool | None = None
        if self._free and not self._disk_low and self._leased():
            paused = self.store.is_paused()
            if not paused:
                self._fill(now)
        if self.burst and not self.running:
            if paused is None:
                paused = self.store.is_paused()
            if paused or self._disk_low or not self._leased():
                return False
            with self._claiming:
                return self.claims.any_ready(now)
        return True

    def _leased(self) -> bool:
        """Whether this worker's lease lets it claim (see :mod:`.lease`)."""
        return self.keeper is None or self.keeper.valid()

    def _fence(self) -> None:
        """The lease is lost: stop every attempt at once (their settles are refused),
        and return once they have all ended."""
        runs = [run for run in list(self.running.values()) if not run.finished]
        for run in runs:
            run.control.stop_now()
        while not all(run.finished for run in runs) and not self.stop.hard:
            time.sleep(0.05)

    def busy(self) -> int:
        """How many attempts run (or await their settle) right now."""
        return sum(not run.finished for run in list(self.running.values()))

    def _end_hooks(self) -> None:
        """Before exiting: run the hooks due (a burst, or ``--max-jobs`` reached); on a
        stop, give running hooks what is left of the grace period, then stop them."""
        if not self.stop.requested and self.hooks.drain(self.stop):
            self.hooks.finish(0.0, self.stop)
            return
        now = times.now()
        if self._stop_deadline is None:
            self._stop_deadline = now + self.grace
        self.hooks.finish(self._stop_deadline - now, self.stop)

    def close(self) -> None:
        self.hooks.finish(0.0, self.stop)  # after an error: hooks still running are stopped
        for _ in self._threads:
            self._slots.put(None)
            self._settles.put(None)
        for thread in self._threads:
            thread.join(timeout=SLOT_JOIN)  # after a hard stop an attempt may still be ending
        self._threads = []
        if self.keeper is not None:
            # Given up only if nothing of ours runs any more: else it expires, and
            # other hosts wait that long before taking over what may still run.
            self.keeper.stop(remove=all(run.finished for run in self.running.values()))
        if self._metrics is not None:
            self._metrics.stop()  # the last write, with every attempt settled
        if self.view is not None:
            self.view.stop()
        self.watcher.close()
        self.spool.event_recorder.log.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _timeout(self, now: float) -> float:
        if self.stop.requested:
            return 0.1
        timeout = IDLE_WAKE if not self._free else min(IDLE_WAKE, self.claims.poll_interval)
        due = self.claims.index.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, key_to_ts(due) - now) + 0.001)
        if not self.watcher.available:
            timeout = min(timeout, 0.2)
        return timeout

    def _wait(self, timeout: float) -> None:
        # With every slot busy, news of pending/ can wait: the slot thread that claims
        # next reads it first. Waking for it would only take the GIL from the slots.
        watch = self.watcher.available and (self._free > 0 or self.stop.requested)
        fds = [self._wake_r] + ([self.watcher.fd] if watch else [])
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

    # -- claiming and starting ---------------------------------------------------------

    def _fill(self, now: float) -> None:
        """Give idle slots a job each."""
        while self._free and not self.stop.requested:
            with self._claiming:
                run = self._claim(now, None)
                if run is None:
                    return
                self._free -= 1
            self._slots.put(run)

    def _claim(self, now: float, previous: _Later | None) -> Running | None:
        """Claim the next job (holding ``_claiming``) and note it as running; None if
        there is none, or ``max_jobs`` have been started. *previous*: an ended attempt
        handed to the settlers once this job's process has started."""
        if self.max_jobs is not None and self.started >= self.max_jobs:
            return None
        claimed = self.claims.next(now, busy=self.running.keys())
        if claimed is None:
            return None

        def on_spawn(pgid: int) -> None:
            try:
                self.spool.transitions.record_group(claimed, pgid)
            except SpoolError as exc:  # recovery then relies on the lock alone
                self.event(f"cannot note the process group of {claimed.job.id}: {exc}")
            later, run.previous = run.previous, None
            if later is not None:
                if not self.settle_in_slot and self._settles.qsize() < SETTLE_BACKLOG:
                    self._settles.put(later)
                else:
                    later()  # while the new attempt's process runs (or: the settlers are behind)
                    self._settled()

        control = Control(on_spawn=on_spawn)
        control.tick = lambda: self._watch(claimed.job.id, control)
        if self.stop.hard:
            control.hard.set()
        run = Running(claimed, control, previous=previous)
        self.running[claimed.job.id] = run
        self.started += 1
        return run

    def _claim_next(self, previous: _Later) -> Running | None:
        """For a slot thread whose attempt has ended: the next job, claimed as the main
        thread would (not while stopping, paused or short of space; inotify's news of
        pending/ read first), or None."""
        if self.stop.requested or self._disk_low or not self._leased() or self.store.is_paused():
            return None
        with self._claiming:
            now = times.now()
            self.claims.refresh(now)
            return self._claim(now, previous)

    def _slot(self) -> None:
        """One of ``concurrency`` threads, each running one attempt at a time (a thread
        per attempt would cost its start-up at every job).

        When an attempt ends, the thread claims the next job itself and, once the next
        one's process has started, settles the ended attempt while that process runs
        (on a network filesystem it hands it to a settler thread, see
        :data:`SETTLERS`; if the next one never starts a process, it settles it itself,
        once that attempt is over): the bookkeeping of one job overlaps the next one's
        run, and the main thread is not woken between jobs. With nothing to claim it settles at once,
        wakes the main thread and waits for a job from it.
        Nothing is lost by the delay: until its settle, an ended job stays in running/
        with its run lock held, and if the worker dies meanwhile, recovery runs it
        again, as for any job whose end was not yet recorded."""
        assert self._attempts is not None  # set by begin()
        attempts = self._attempts
        run = self._slots.get()
        while run is not None:
            ended = attempts.run(run.claimed, run.control)
            # Its callbacks refer back to the run: drop them, so that no reference cycle
            # keeps each job's objects alive until the garbage collector's next full pass.
            run.control.on_spawn = run.control.tick = None
            if run.previous is not None:
                run.previous()  # not handed over at the spawn: this attempt never started a process
            nxt = None
            if ended is None:
                run.finished = True
            else:
                later = _Later(attempts, ended, run)
                nxt = self._claim_next(later)
                if nxt is None:
                    later()
            if nxt is None:
                with self._claiming:
                    self._free += 1
                self.wake()  # this slot is free
                run = self._slots.get()
            else:
                run = nxt

    def _settler(self) -> None:
        """One of :data:`SETTLERS` threads settling the ended attempts that slots hand
        over once their next job's process has started: the record's fsync is waited
        for here, not on the way to the next job."""
        while (later := self._settles.get()) is not None:
            later()
            self._settled()

    def _settled(self) -> None:
        """After a settle handed over at a spawn (by a settler or the slot itself). The
        main thread reaps settled jobs when it wakes; it needs to soon only if a slot
        waits for a job (a dependency may just be met, a burst may be over) or a stop
        waits for the last job. With every slot busy, waking it would only take the
        interpreter lock from them."""
        if self._free or self.stop.requested:
            self.wake()

    def _reap(self) -> None:
        with self._claiming:
            done = [j for j, r in self.running.items() if r.finished]
            for job_id in done:
                self.running.pop(job_id)
            if done and not self.stop.requested:
                self.claims.index.unblock()  # a dependency may just have been settled

    def _check_cancels(self) -> None:
        """Stop own jobs that ``taskq cancel`` asked to stop (running/ID.cancel)."""
        for job_id, run in list(self.running.items()):
            if not run.finished:
                self._watch_cancel(job_id, run.control)

    def _watch(self, job_id: str, control: Control) -> None:
        """For the thread supervising an attempt: stop it at once if the worker's lease
        has run out (another host may take the job over: README, "Several hosts"; the
        lease thread may be stuck on an unreachable server), or if cancelled."""
        if not control.hard.is_set() and not self._leased():
            self.event(f"lease lost: stopping {job_id}")
            control.stop_now()
            return
        self._watch_cancel(job_id, control)

    def _watch_cancel(self, job_id: str, control: Control) -> None:
        """Stop the attempt of *job_id* if ``taskq cancel`` has asked for it."""
        if not control.cancel.is_set() and self.spool.jobs.cancel_requested(job_id):
            self.event(f"cancelling {job_id}")
            control.cancel.set()

    # -- stopping ----------------------------------------------------------------------

    def _stopping(self, now: float) -> bool:
        """Handle a requested stop; False once nothing of ours is running."""
        if self._stop_deadline is None:
            self._stop_deadline = now + self.grace
            if self.running:
                self.event(f"stopping: waiting up to {self.grace:g}s for {len(self.running)} running job(s)")
        for run in list(self.running.values()):
            if self.stop.hard:
                run.control.stop_now()
            elif now >= self._stop_deadline and not run.control.interrupt.is_set():
                self.event(f"grace period over: stopping {run.claimed.job.id}")
                run.control.interrupt.set()
        return bool(self.running)

    # -- maintenance -------------------------------------------------------------------

    def _periodic(self, now: float) -> None:
        self.hooks.tick()
        if now - self._last_recovery >= RECOVERY_PERIOD:
            self._recover(now)
            self.claims.retry_later()
        if now - self._last_tmp_clean >= TMP_CLEAN_PERIOD:
            self._clean_tmp(now)
        if now - self._last_space_check < SPACE_CHECK_PERIOD:
            return
        self._last_space_check = now
        min_free = self.spool.config.min_free
        low = bool(min_free) and self.store.free_bytes() < min_free
        if low != self._disk_low:
            self._disk_low = low
            self.event("free space below min_free: claiming paused" if low
                       else "free space recovered: claiming resumed")

    def _recover(self, now: float) -> None:
        self._last_recovery = now
        transitions = self.spool.transitions
        try:
            ids = self.spool.jobs.ids("running") + self.spool.jobs.strays()
            for uid in transitions.judge.reap():
                self.event(f"removed the lease of worker {uid}: gone")
        except (TaskqError, OSError):
            return
        for job_id in dict.fromkeys(ids):
            if job_id in self.running:
                continue
            try:
                result = self.spool.transitions.recover(job_id, times.now(), self._rng.random())
            except OSError as exc:
                # The job moved meanwhile (its holder settled it), or a shared
                # filesystem's client failed on a file another host has just removed
                # (ESTALE; some FUSE clients say EFAULT): the next pass looks again.
                if exc.errno not in VANISHED:
                    self.event(f"cannot recover {job_id}: {exc}")
                continue
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
        for name in self.store.clean_tmp(now - STALE_TMP_AGE):
            self.event(f"removed stale staging file tmp/{name}")

    def _draw(self, now: float) -> None:
        """Refresh the live view (at most about twice a second)."""
        if self.view is None or now - self._last_draw < 0.5:
            return
        self._last_draw = now
        rows = []
        for job_id, run in list(self.running.items()):
            job = run.claimed.job
            attempt = job.current_attempt
            started = times.parse_iso(attempt.started_at) if attempt else now
            rows.append((job_id, job.name or "", str(attempt.number) if attempt else "-", now - started))
        try:
            counts = {st: len(self.store.names(st)) for st in STATES}
        except TaskqError:
            counts = {}
        state = "stopping" if self.stop.requested else ("paused" if self.store.is_paused() else "working")
        self.view.update(state, counts, rows)


class _Later:
    """An ended attempt awaiting its settle, which happens once, by the first thread
    that calls it (a settler, or the slot thread)."""

    __slots__ = ("attempts", "ended", "run", "_token")

    def __init__(self, attempts: AttemptRunner, ended: Ended, run: Running) -> None:
        self.attempts = attempts
        self.ended = ended
        self.run = run
        self._token = [True]  # popped by the one caller that settles: list.pop is atomic

    def __call__(self) -> None:
        try:
            self._token.pop()
        except IndexError:
            return
        try:
            self.attempts.settle(self.ended)
        finally:
            self.run.finished = True
