"""One attempt of a claimed job, start to settle: record the attempt, run it (the
worker's :class:`~taskq.runner.Runner`) with its output in the job's log (capped at
the job's ``log_max``), then settle it by its outcome. Runs in one of the worker's
slot threads, one attempt at a time; the settle may come after the next attempt's
process has started (see :meth:`taskq.worker.loop.Worker._slot`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .. import times
from ..config import DEFAULT_LOG_MAX
from ..errors import FencedError, SpoolError
from ..job import CANCELLED, INTERRUPTED, Attempt, Outcome
from ..policy import Decision, describe
from ..runner import Control, Runner
from ..spool.joblog import JobLog
from ..transitions import Claimed, Transitions

#: A slot whose attempt could not even be recorded stays busy this long, so that a
#: failing disk is not hammered.
START_FAILED_PAUSE = 0.25


@dataclass
class Running:
    """A job this worker runs: its claim, the controls of its attempt, and whether
    it has been settled (set by the thread that settled it: its slot or a settler)."""

    claimed: Claimed
    control: Control
    finished: bool = False
    #: The ended attempt of the job run before this one in the same slot, settled once
    #: this one's process has started (see :meth:`taskq.worker.loop.Worker._slot`).
    previous: Callable[[], None] | None = None


class Ended(NamedTuple):
    """An attempt whose process has ended, still to be settled."""

    claimed: Claimed
    attempt: Attempt
    outcome: Outcome


@dataclass
class AttemptRunner:
    """What one attempt needs from its worker."""

    transitions: Transitions
    runner: Runner
    event: Callable[[str], None]
    rng: random.Random
    #: The ``log_max`` of a job, by its name (see :meth:`taskq.config.Config.log_max_for`).
    log_max: Callable[[str | None], int] = lambda name: DEFAULT_LOG_MAX

    def run(self, claimed: Claimed, control: Control) -> Ended | None:
        """start → run, to be followed by :meth:`settle` (the worker settles an attempt
        once the next one's process has started). Never raises: returns None when
        there is nothing to settle (the attempt could not start; a failure, reported,
        with the job left for recovery)."""
        try:
            attempt = self._start(claimed)
            if attempt is None:
                return None
            return Ended(claimed, attempt, self._execute(claimed, attempt, control))
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the worker stuck
            self.event(f"internal error on {claimed.job.id}: {exc!r}")
            claimed.lock.release(remove=False)
            return None

    def settle(self, ended: Ended) -> None:
        """Settle an ended attempt by its outcome. Never raises: what could not be
        written is left for recovery (the outcome recorded, or the attempt closed as
        "worker lost")."""
        claimed = ended.claimed
        try:
            try:
                decision = self.transitions.settle(claimed, ended.outcome, times.now(), self.rng.random())
            except FencedError as exc:
                self.event(f"fenced: attempt {ended.attempt.number} of {claimed.job.id} not settled: {exc}")
                return
            except SpoolError as exc:
                self.event(f"cannot settle {claimed.job.id}: {exc} (recovery will retry it)")
                return
            self.event(settled_message(claimed, ended.attempt, ended.outcome, decision))
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the worker stuck
            self.event(f"internal error on {claimed.job.id}: {exc!r}")
            claimed.lock.release(remove=False)

    def _start(self, claimed: Claimed) -> Attempt | None:
        job = claimed.job
        try:
            attempt = self.transitions.start(claimed, times.now(), self.event)
        except FencedError as exc:
            self.event(f"fenced: not starting {job.id}: {exc}")
            claimed.lock.release(remove=False)
            return None
        except SpoolError as exc:
            # Nothing ran: put the job back as it was, uncounted. If even that fails,
            # it stays in running/ unowned and recovery returns it.
            self.event(f"cannot start {job.id}: {exc}")
            try:
                self.transitions.unclaim(claimed, times.now())
            except SpoolError:
                claimed.lock.release(remove=False)
            time.sleep(START_FAILED_PAUSE)
            return None
        label = f" ({job.name})" if job.name else ""
        self.event(f"claimed {job.id}{label} attempt {attempt.number} (try {job.failures + 1} of {job.max_attempts})")
        return attempt

    def _execute(self, claimed: Claimed, attempt: Attempt, control: Control) -> Outcome:
        """Run the attempt with its output appended to the job's log, under a header."""
        job = claimed.job
        try:
            log = JobLog(self.transitions.store, job.id, self.log_max(job.name))
        except SpoolError as exc:
            return Outcome(error=f"cannot open log: {exc}")
        try:
            try:
                log.line(f"=== taskq: attempt {attempt.number} started {attempt.started_at} on {attempt.worker} ===")
            except SpoolError as exc:  # nothing ran: a failed attempt, like a log that cannot open
                return Outcome(error=f"cannot write log: {exc}")
            outcome = self.runner(job, attempt.number, log, claimed.lock.fd, control)
            log.end_output()  # the runner has (a runner that wrote output without ending it)
            if log.lost:
                self.event(f"output of {job.id} lost: {log.lost} bytes not written: {log.error}")
            if log.cut_error is not None:
                self.event(f"cannot cut the log of {job.id} to log_max: {log.cut_error}")
            if outcome.error:
                try:
                    log.line(f"=== taskq: {outcome.error} ===")
                except SpoolError:
                    pass  # the outcome is in the job's record all the same
            return outcome
        finally:
            log.close()


def settled_message(claimed: Claimed, attempt: Attempt, outcome: Outcome, decision: Decision) -> str:
    """The worker's event line for a settled attempt."""
    job = claimed.job
    if outcome.error == CANCELLED:
        return f"cancelled {job.id}"
    if decision.state == "done":
        return f"succeeded {job.id}" + (f" ({job.name})" if job.name else "")
    if decision.state == "pending" and outcome.error == INTERRUPTED:
        return f"interrupted {job.id}: back to pending"
    if decision.state == "pending":
        return (f"failed {job.id} attempt {attempt.number}: {describe(outcome, job.timeout)}; "
                f"retry at {times.iso(decision.run_at or 0)}")
    return f"failed for good {job.id}: {decision.last_error}"
