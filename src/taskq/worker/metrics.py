"""``taskq work --metrics-file PATH``: keep a metrics file current for node_exporter's
textfile collector.

The file holds what ``taskq metrics`` prints plus this worker's own families
(:func:`taskq.metrics.worker_families`). It is written at start, every interval, and
once more when the worker stops. Each write goes to a hidden temporary file beside
PATH that is then renamed over PATH, so a reader sees the old file or the new one,
never half of one. Writes happen in a thread of their own: collecting the spool's
numbers lists every directory, and neither that nor a slow disk may hold up claiming.

A write that fails (directory missing, disk full, spool gone) is reported in one
event line and the worker goes on; the next failure is reported only if its reason
differs, and the first success after failures says so.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from .. import times
from ..api import Spool
from ..ids import worker_id
from ..job import INTERRUPTED
from ..metrics import OUTCOMES, WorkerCounts, exposition, worker_families
from ..transitions import Change, Transitions

#: How often the file is rewritten unless ``--metrics-interval`` says otherwise.
DEFAULT_INTERVAL = 15.0
#: How long stopping waits for a write in progress before giving up the last one.
STOP_JOIN = 10.0


class MetricsFile:
    """The metrics file of one worker: ``start()``, then ``stop()`` once its jobs
    are settled. *running* tells how many jobs the worker runs now; *event* reports
    a failed write (one line)."""

    def __init__(self, spool: Spool, path: str, interval: float, concurrency: int,
                 running: Callable[[], int], event: Callable[[str], None]) -> None:
        self.path = os.path.abspath(path)
        self.interval = interval
        self.concurrency = concurrency
        self._running = running
        self._event = event
        # A reader of its own: the worker's Spool is used by its main thread.
        self._reader = Spool(spool.path)
        self._worker = worker_id()
        self._started_at = times.now()
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: str | None = None
        self._tmp = os.path.join(os.path.dirname(self.path),
                                 f".{os.path.basename(self.path)}.{os.getpid()}.tmp")

    # -- counting ----------------------------------------------------------------------

    def observe(self, change: Change) -> None:
        """Count an attempt this worker settled (called from its slot threads). An
        attempt interrupted by the worker's own stop is not an outcome of the job."""
        if change.kind != "settle" or change.decision is None or change.job is None:
            return
        state = change.decision.state
        if state == "pending":
            last = change.job.attempts[-1] if change.job.attempts else None
            if last is not None and last.error == INTERRUPTED:
                return
            outcome = "retry"
        else:
            outcome = state
        with self._lock:
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    def attach(self, transitions: Transitions) -> None:
        """Be told of *transitions*' changes, after the observers it has already."""
        transitions.subscribe(observe=self.observe)

    def counts(self) -> WorkerCounts:
        with self._lock:
            outcomes = dict(self._outcomes)
        return WorkerCounts(self._worker, self._started_at, self.concurrency, self._running(), outcomes)

    # -- writing -----------------------------------------------------------------------

    def start(self) -> None:
        """Write the file now (in the writer thread), then every interval."""
        self._thread = threading.Thread(target=self._loop, daemon=True, name="taskq-metrics")
        self._thread.start()

    def stop(self) -> None:
        """Stop the writer thread and write the file a last time."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN)
            if self._thread.is_alive():
                self._event(f"metrics file {self.path}: a write is still in progress; no last write")
                return
        self.write()

    def _loop(self) -> None:
        self.write()
        while not self._stopped.wait(self.interval):
            self.write()

    def write(self) -> bool:
        """Collect and write the file once; False (reported) if that failed."""
        try:
            text = exposition(self._reader.metrics() + worker_families(self.counts()))
            self._replace(text.encode("utf-8"))
        except OSError as exc:
            self._failed(exc.strerror or str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - metrics must never stop the worker
            self._failed(str(exc) or repr(exc))
            return False
        if self._failing is not None:
            self._failing = None
            self._event(f"metrics file {self.path} written again")
        return True

    def _replace(self, data: bytes) -> None:
        """Write *data* to the hidden temporary file beside the target, then rename it
        over the target. No fsync: the file is rewritten every interval, and a flush
        to disk each time would cost more than a lost snapshot."""
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(self._tmp, self.path)
        except BaseException:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            raise

    def _failed(self, why: str) -> None:
        if why != self._failing:
            self._failing = why
            self._event(f"cannot write metrics file {self.path}: {why}")
