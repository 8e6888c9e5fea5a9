"""The worker's hooks (README, "Hooks"): markers written in the commit of each event,
hooks run from them in background threads, at least once.

* :meth:`Hooks.prepare` (a preparer of the transition engine) writes the marker of a
  change that makes an event with a hook configured, before the change is written:
  a crash after it leaves the hook due;
* :meth:`Hooks.observe` (an observer) hands the marker to the hook threads once the
  change is made;
* :meth:`Hooks.tick` (every loop of the worker) looks at hooks/ every few seconds, so
  markers left by dead workers, or by changes that were still under way, are run;
* :meth:`Hooks.drain` (``work --burst`` and ``--max-jobs`` before exiting) runs every
  hook due; :meth:`Hooks.finish` (a stop) gives running hooks the worker's grace, then
  stops them: their markers stay, and they run again later.

A hook never changes its job: its outcome goes to the job's log and the worker's event
lines, and the marker is removed whatever its exit status (not when its worker stopped
it).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import times
from ..errors import SpoolError, TaskqError, ValidationError
from ..hooks import HOOK_OF, Event, due, environment, event_of, landed
from ..ids import worker_id
from ..job import INTERRUPTED, Outcome
from ..policy import describe
from ..runner import Control, run_hook
from ..spool import layout
from ..spool.hooks import HeldMarker, HookMarkers
from ..spool.layout import HookMarker
from ..stopping import StopState
from ..transitions import Change

if TYPE_CHECKING:
    from ..api import Spool

#: Hooks run at once, each in a thread of its own (most of the time, waiting for its
#: process): a slow hook does not hold up the others, nor ever a job.
HOOK_THREADS = 4
#: How often hooks/ is looked at for markers not handed over by an observed change.
SCAN_PERIOD = 5.0
#: A marker whose change is still under way is looked at again this much later.
WAIT_RETRY = 0.5
#: How long a stopping worker waits for a hook thread, beyond the hook's own stop.
JOIN_MARGIN = 5.0


class Hooks:
    """The hooks of one worker on *spool*; *event* writes the worker's event lines."""

    def __init__(self, spool: Spool, event: Callable[[str], None], threads: int = HOOK_THREADS) -> None:
        self.spool = spool
        self.markers = HookMarkers(spool.store)
        self.event = event
        self._size = threads
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: Markers queued or being handled (so none is queued twice).
        self._busy: set[str] = set()
        #: Markers submitted again while being handled: queued again once handled.
        self._again: set[str] = set()
        #: Controls of the hooks running now, by marker.
        self._running: dict[str, Control] = {}
        #: Markers whose change was under way: when to look at them again (monotonic).
        self._waiting: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._hard = False
        self._last_scan = -SCAN_PERIOD
        #: Markers handled (run or dropped) so far: whether a drain round made progress.
        self._handled = 0

    # -- the transition engine's side --------------------------------------------------

    def _command(self, marker: HookMarker) -> str | None:
        name = marker.job.get("name")
        return self.spool.config.hook(name if isinstance(name, str) else None, HOOK_OF[marker.event])

    def _hooked(self, change: Change) -> Event | None:
        """The event of *change*, if it has a hook."""
        config = self.spool.config
        if not (config.hooks or config.task_hooks):
            return None  # the usual case: no hooks at all, nothing to work out
        found = event_of(change)
        if found is None or change.job is None or config.hook(change.job.name, found.hook) is None:
            return None
        return found

    def prepare(self, change: Change) -> None:
        """Before a change is written: if it makes an event with a hook, write its
        marker (a SpoolError stops the change: its job stays where it was)."""
        if self._hooked(change) is not None:
            found = due(change)
            assert found is not None
            self.markers.write(found[0], layout.hook_marker(found[1]))

    def observe(self, change: Change) -> None:
        """Once a change is made: hand its marker, if any, to the hook threads."""
        found = self._hooked(change)
        if found is not None:
            self.submit(found.marker)

    # -- queueing ----------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._thread, daemon=True, name=f"taskq-hook-{n}")
                         for n in range(self._size)]
        for thread in self._threads:
            thread.start()

    def submit(self, name: str) -> None:
        with self._lock:
            if self._closing:
                return
            if name in self._busy:
                self._again.add(name)  # it may have been rewritten since it was taken
                return
            self._busy.add(name)
            self._waiting.pop(name, None)
        self._queue.put(name)

    def scan(self) -> None:
        """Queue every marker in hooks/."""
        self._last_scan = time.monotonic()
        try:
            names = self.markers.names()
        except TaskqError as exc:
            self.event(f"cannot list hooks/: {exc}")
            return
        for name in names:
            self.submit(name)

    def tick(self) -> None:
        """Periodic work of the worker's loop: look at hooks/ every SCAN_PERIOD, and
        again at markers that were waiting for their change."""
        mono = time.monotonic()
        if mono - self._last_scan >= SCAN_PERIOD:
            self.scan()
        with self._lock:
            again = [name for name, when in self._waiting.items() if when <= mono]
        for name in again:
            self.submit(name)

    def idle(self) -> bool:
        with self._lock:
            return not self._busy

    # -- ending ------------------------------------------------------------------------

    def drain(self, stop: StopState) -> bool:
        """Run every hook due now, and wait for them (``--burst``, ``--max-jobs``).
        Markers whose change is under way in another worker are left for later.
        Returns False if a stop was asked for meanwhile."""
        while True:
            handled = self._handled
            self.scan()
            with self._lock:
                while self._busy:
                    if stop.requested:
                        return False
                    self._changed.wait(0.1)
                waiting = bool(self._waiting)
            # Another round while markers wait for earlier ones that have just run.
            if not waiting or self._handled == handled:
                return True

    def finish(self, grace: float, stop: StopState) -> None:
        """Stop: start no other hook; let running ones go on for *grace* seconds (none
        after a hard stop), then stop them (their markers stay). Idempotent."""
        with self._lock:
            self._closing = True
            deadline = time.monotonic() + max(0.0, grace)
            while self._running and not stop.hard and time.monotonic() < deadline:
                self._changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._hard = stop.hard
            for control in self._running.values():
                if stop.hard:
                    control.hard.set()
                control.interrupt.set()
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join(timeout=self.spool.config.kill_grace + JOIN_MARGIN)

    # -- running one ---------------------------------------------------------------------

    def _thread(self) -> None:
        while (name := self._queue.get()) is not None:
            try:
                if not self._closing:
                    self._deliver(name)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the hooks
                self.event(f"internal error on hooks/{name}: {exc!r}")
            finally:
                with self._lock:
                    again = name in self._again and not self._closing
                    self._again.discard(name)
                    if not again:  # (queued again, it stays busy: a drain waits for it)
                        self._busy.discard(name)
                    self._changed.notify_all()
                if again:
                    self._queue.put(name)

    def _deliver(self, name: str) -> None:
        parsed = layout.parse_hook_file(name)
        if parsed is None:
            return
        job_id, attempt = parsed
        try:
            held = self.markers.claim(name)
        except SpoolError as exc:
            self.event(f"cannot read hooks/{name}: {exc}")
            return
        if held is None:
            return  # gone, or another worker runs it (or its hook outlived its worker)
        try:
            self._handle(held, job_id, attempt is None)
        finally:
            held.release()

    def _handle(self, held: HeldMarker, job_id: str, dependency: bool) -> None:
        try:
            marker = layout.parse_hook_marker(held.data)
        except ValueError as exc:
            self.event(f"removed hooks/{held.name}: {exc}")
            self._remove(held)
            return
        kind = HOOK_OF[marker.event]
        # A job's hooks run in the order of its attempts: one waits for the markers
        # of earlier attempts (released at once when they are removed).
        state, verdict = (None, "wait") if self._earlier_due(job_id, marker, dependency) \
            else self._landed(job_id, marker, dependency)
        if verdict == "wait":
            with self._lock:
                self._waiting[held.name] = time.monotonic() + WAIT_RETRY
            return
        if verdict == "stale":
            self.event(f"dropped hook {kind} of {job_id}: attempt {marker.attempt} was settled otherwise")
            self._remove(held)
            return
        command = self._command(marker)
        if command is None:
            self.event(f"dropped hook {kind} of {job_id}: taskq.toml has no {kind} for it any more")
            self._remove(held)
            return
        what = "a failed dependency" if dependency else f"attempt {marker.attempt}"
        outcome = self._run(held, job_id, f"{kind} for {what}", command, marker, logged=state is not None)
        if outcome.error != INTERRUPTED:
            self._remove(held)

    def _earlier_due(self, job_id: str, marker: HookMarker, dependency: bool) -> bool:
        if dependency:
            return False
        for name in self.markers.names():
            parsed = layout.parse_hook_file(name)
            if parsed is not None and parsed[0] == job_id and parsed[1] is not None and parsed[1] < marker.attempt:
                return True
        return False

    def _landed(self, job_id: str, marker: HookMarker, dependency: bool) -> tuple[str | None, str]:
        """Where the job is, and :func:`taskq.hooks.landed`'s verdict."""
        jobs = self.spool.jobs
        for _ in range(3):
            try:
                found = jobs.locate(job_id)
                if found is None:
                    return None, landed(marker, dependency, None, None)
                data = jobs.read_data(*found)
            except FileNotFoundError:
                continue  # it moved while we looked
            except (ValidationError, SpoolError):
                return "?", "run"
            attempts = data.get("attempts") if isinstance(data, dict) else None
            if found[0] == "running" and isinstance(attempts, list):
                # The attempt in progress is noted beside the record, not in it.
                noted = jobs.noted_attempt(job_id, len(attempts))
                if noted is not None:
                    attempts = [*attempts, noted.to_dict()]
            return found[0], landed(marker, dependency, found[0], attempts if isinstance(attempts, list) else None)
        return "?", "wait"

    def _run(self, held: HeldMarker, job_id: str, label: str, command: str, marker: HookMarker,
             logged: bool) -> Outcome:
        """Run the hook with its output in the job's log (none for a purged job)."""
        kind = HOOK_OF[marker.event]
        store = self.spool.store
        config = self.spool.config
        log_fd = -1
        if logged:
            try:
                log_fd = store.open_log(job_id)
            except SpoolError as exc:
                self.event(f"hook {kind} of {job_id}: {exc} (its output is lost)")
        if log_fd < 0:
            log_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        control = Control()
        with self._lock:
            if self._closing:
                control.interrupt.set()
            if self._hard:
                control.hard.set()
            self._running[held.name] = control
        try:
            self._log(log_fd, job_id, f"=== taskq: hook {label} started "
                                      f"{times.iso(times.now())} on {worker_id()} ===")
            cwd = marker.job.get("cwd")
            outcome = run_hook(command, cwd if isinstance(cwd, str) and os.path.isdir(cwd) else store.root,
                               environment(marker, store.root), marker.job, log_fd, held.fd,
                               config.hook_timeout, config.kill_grace, control)
            self._report(log_fd, job_id, kind, outcome, config.hook_timeout)
            return outcome
        finally:
            os.close(log_fd)
            with self._lock:
                self._running.pop(held.name, None)
                self._changed.notify_all()

    def _report(self, log_fd: int, job_id: str, kind: str, outcome: Outcome, timeout: float) -> None:
        if outcome.timed_out:
            why = f"timed out after {timeout:g} s"
        elif outcome.error == INTERRUPTED:
            why = "stopped with the worker; it runs again later"
        elif not outcome.succeeded:
            why = f"failed: {describe(outcome)}"
        else:
            self.event(f"ran hook {kind} of {job_id}")
            return
        self._log(log_fd, job_id, f"=== taskq: hook {kind} {why} ===")
        self.event(f"hook {kind} of {job_id} {why}")

    def _log(self, log_fd: int, job_id: str, line: str) -> None:
        try:
            self.spool.store.log_line(log_fd, job_id, line)
        except SpoolError:
            pass  # the worker's event line says it all the same

    def _remove(self, held: HeldMarker) -> None:
        try:
            self.markers.remove(held)
        except SpoolError as exc:
            self.event(f"cannot remove hooks/{held.name}: {exc} (its hook may run again)")
        self._handled += 1
        # The job's later markers waited for this one: look at them now.
        parsed = layout.parse_hook_file(held.name)
        prefix = f"{parsed[0] if parsed else held.name}."
        with self._lock:
            followers = [name for name in self._waiting if name.startswith(prefix)]
            for name in followers:
                self._waiting[name] = 0.0
        for name in followers:
            self.submit(name)
