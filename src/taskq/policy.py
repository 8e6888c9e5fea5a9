"""Pure decisions: what an attempt's outcome means for its job, how long to back off,
whether a job's dependencies let it run, and how an outcome reads. Time and chance
are parameters, and facts about other jobs are passed in, so every rule is testable
without a clock, a random generator or a spool.

The rules (README, "Retries"):

* exit status 0 → done;
* an exit status listed in the job's ``permanent_exit_codes`` → failed at once;
* "interrupted" (the worker shut down) → back to pending, ready now, not counted;
* "cancelled" → failed, not counted;
* anything else (non-zero exit, signal, timeout, cannot start, worker lost) uses up one
  attempt: while attempts remain, back to pending with ``run_at`` = the attempt's end
  + backoff, else failed.

Backoff after the k-th counted failure of the current budget:
``min(backoff_max, backoff * 2**(k-1))``, jittered uniformly within [50 %, 100 %].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from .job import CANCELLED, INTERRUPTED, WORKER_LOST, Job, Outcome

__all__ = [
    "CANCELLED", "INTERRUPTED", "PERMANENT", "RECORD", "WORKER_LOST", "Decision", "Outcome", "Verdict",
    "Wording", "backoff_delay", "decide", "dependency_verdict", "describe",
]


class Wording(NamedTuple):
    """The words :func:`describe` puts in its one sentence structure: how an exit
    status, a signal and a time limit read. :data:`RECORD` is the wording of the job
    record's ``last_error`` and the worker's event lines; the human outputs use
    ``taskq.humanize.WORDS``, so both say the same thing in two registers."""

    exited: Callable[[int | None], str]
    signal: Callable[[int | None], str]
    seconds: Callable[[float], str]


#: Appended to ``last_error`` when the exit status is one of ``permanent_exit_codes``.
PERMANENT = " (permanent)"

#: The wording of ``last_error``: ``exit status 3``, ``killed by signal 9``,
#: ``timed out after 5s (signal 15)``. Scripts match these texts: they do not change.
RECORD = Wording(
    exited=lambda code: f"exit status {code}",
    signal=lambda number: f"signal {number}",
    seconds=lambda limit: f"{limit:g}s",
)


def describe(outcome: Outcome, timeout: float | None = None, wording: Wording = RECORD) -> str:
    """How an attempt ended, in a few words: the job's ``last_error``, the worker's
    event lines, ``show`` and ``explain`` all say it this way (*wording* chooses the
    words, not the structure)."""
    if outcome.timed_out:
        limit = f" after {wording.seconds(timeout)}" if timeout else ""
        return f"timed out{limit} ({wording.signal(outcome.signal)})"
    if outcome.error:
        return outcome.error
    if outcome.signal is not None:
        return f"killed by {wording.signal(outcome.signal)}"
    return wording.exited(outcome.exit_code)


class Decision(NamedTuple):
    """Where a job goes after an attempt: ``done``, ``pending`` (at ``run_at``) or ``failed``."""

    state: str
    run_at: float | None = None
    last_error: str | None = None


def backoff_delay(failures: int, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait after the *failures*-th counted failure (1-based).

    *jitter* is a number in [0, 1) (``random.random()``): the delay is spread over
    [50 %, 100 %] of the nominal value, so jobs that failed together do not retry in
    lock-step.
    """
    if failures < 1:
        return 0.0
    exponent = min(failures - 1, 64)  # 2**64 * anything >= any cap worth having
    nominal = min(cap, base * (2.0 ** exponent))
    return nominal * (0.5 + 0.5 * jitter)


def decide(job: Job, outcome: Outcome, finished_at: float, jitter: float) -> Decision:
    """The job's next state, given that its latest attempt (already recorded in
    ``job.attempts`` with this *outcome*) finished at *finished_at*."""
    if outcome.succeeded:
        return Decision("done")
    reason = describe(outcome, job.timeout)
    if outcome.error == INTERRUPTED:
        return Decision("pending", run_at=min(job.run_at_ts, finished_at), last_error=job.last_error)
    if outcome.error == CANCELLED:
        return Decision("failed", last_error=CANCELLED)
    if outcome.exit_code is not None and outcome.exit_code in job.permanent_exit_codes:
        return Decision("failed", last_error=reason + PERMANENT)
    failures = job.failures
    if failures >= job.max_attempts:
        return Decision("failed", last_error=reason)
    delay = backoff_delay(failures, job.backoff, job.backoff_max, jitter)
    return Decision("pending", run_at=finished_at + delay, last_error=reason)


class Verdict(NamedTuple):
    """What a job's dependencies (``after``) say: ``ready`` (all done), ``waiting``
    (one is not settled, or failed before this job was retried: it may yet be
    retried) or ``failed`` (one failed, or does not exist: the job cannot run).
    ``dep`` is the dependency that decided, ``dep_state`` its state (None: missing)."""

    kind: str
    dep: str | None = None
    dep_state: str | None = None


def dependency_verdict(
    after: Sequence[str],
    retried_at: float | None,
    state_of: Callable[[str], str | None],
    settled_at_of: Callable[[str], float | None],
) -> Verdict:
    """The verdict on a job waiting for *after*, given each dependency's state
    (*state_of*) and, for a failed one, when it settled (*settled_at_of*).

    A dependency that failed *before* this job was retried does not fail it again:
    the retried job waits until that dependency is retried and settles once more.
    """
    for dep in after:
        state = state_of(dep)
        if state == "done":
            continue
        if state == "failed":
            settled = settled_at_of(dep) if retried_at is not None else None
            if retried_at is not None and settled is not None and settled <= retried_at:
                return Verdict("waiting", dep, state)
            return Verdict("failed", dep, state)
        if state is None:
            return Verdict("failed", dep, None)
        return Verdict("waiting", dep, state)
    return Verdict("ready")
