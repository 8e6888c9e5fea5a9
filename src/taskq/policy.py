"""Retry policy: what an attempt's outcome means for its job. Pure: time and chance
are parameters, so every rule is testable without a clock or a random generator.

The rules (CONTRACT §5, §7):

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

from dataclasses import dataclass

from .job import Job

INTERRUPTED = "interrupted"
CANCELLED = "cancelled"
WORKER_LOST = "worker lost"


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. ``error`` is set when the command did not simply exit."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def describe(self, timeout: float | None = None) -> str:
        """A short reason for ``last_error``."""
        if self.timed_out:
            limit = f" after {timeout:g}s" if timeout else ""
            return f"timed out{limit} (signal {self.signal})"
        if self.error:
            return self.error
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exit status {self.exit_code}"


@dataclass(frozen=True)
class Decision:
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
    reason = outcome.describe(job.timeout)
    if outcome.error == INTERRUPTED:
        return Decision("pending", run_at=min(job.run_at_ts, finished_at), last_error=job.last_error)
    if outcome.error == CANCELLED:
        return Decision("failed", last_error=CANCELLED)
    if outcome.exit_code is not None and outcome.exit_code in job.permanent_exit_codes:
        return Decision("failed", last_error=f"{reason} (permanent)")
    failures = job.failures
    if failures >= job.max_attempts:
        return Decision("failed", last_error=reason)
    delay = backoff_delay(failures, job.backoff, job.backoff_max, jitter)
    return Decision("pending", run_at=finished_at + delay, last_error=reason)
