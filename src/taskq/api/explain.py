"""``taskq explain``: why a job is where it is, in one plain sentence. The facts come
from the spool, the judgements from :mod:`taskq.policy` (the same dependency verdict
that workers and ``status`` use)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import humanize, times
from ..job import CANCELLED, Job
from ..policy import dependency_verdict
from .inspect import get

if TYPE_CHECKING:
    from . import Spool


def explain(spool: Spool, job_id: str, now: float | None, words: bool = False) -> dict[str, Any]:
    job = get(spool, job_id)
    now = times.now() if now is None else now
    say = _Say(now, words)
    out: dict[str, Any] = {"id": job.id, "state": job.state}
    if job.state == "done":
        out["reason"] = f"done at {say.at(job.settled_at)} after {_plural(len(job.attempts), 'attempt')}."
    elif job.state == "failed":
        out["reason"] = _failed(job, say)
    elif job.state == "running":
        out.update(_running(job, say))
    else:
        out.update(_pending(spool, job, now, say))
    return out


class _Say:
    """How the sentences give times and errors: local times and ``last_error`` as
    recorded (the ``reason`` of ``--json``), or, with *words*, each time followed by
    how long ago it is (or from now) and errors in words (what ``taskq explain``
    prints for people)."""

    def __init__(self, now: float, words: bool) -> None:
        self.now = now
        self.words = words

    def at(self, stamp: str | None) -> str:
        if not stamp:
            return "an unknown time"
        ts = times.parse_iso(stamp)
        local = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))
        if not self.words:
            return local
        return f"{local} ({humanize.relative(ts, self.now)})"

    def error(self, text: str | None) -> str | None:
        return humanize.error(text) if self.words else text


def _failed(job: Job, say: _Say) -> str:
    why = say.error(job.last_error) or "unknown reason"
    if job.extra.get("unreadable"):
        return f"failed: the file is not a valid job ({why})."
    if why == CANCELLED:
        return f"cancelled at {say.at(job.settled_at)}."
    if why.startswith("dependency "):
        return f"failed at {say.at(job.settled_at)}: {why}."
    return (f"failed at {say.at(job.settled_at)} after "
            f"{_plural(job.failures, 'counted attempt')} of {job.max_attempts}: {why}.")


def _running(job: Job, say: _Say) -> dict[str, Any]:
    current = job.current_attempt
    if current is None:
        return {"reason": "claimed by a worker, starting or settling."}
    out: dict[str, Any] = {"reason": f"running since {say.at(current.started_at)} (attempt {current.number}, "
                                     f"worker {current.worker})."}
    if job.timeout:
        until = times.iso(times.parse_iso(current.started_at) + job.timeout)
        out["reason"] += f" Its time limit ends at {say.at(until)}."
        out["until"] = until
    return out


def _pending(spool: Spool, job: Job, now: float, say: _Say) -> dict[str, Any]:
    if job.last_error and not job.command:
        return {"reason": f"{job.last_error}: a worker will move it to failed/."}
    if job.run_at_ts > now:
        last = job.budget_attempts[-1] if job.budget_attempts else None
        if last is not None and last.counted:
            reason = (f"backing off after attempt {last.number} ({say.error(job.last_error)}); "
                      f"runs again at {say.at(job.run_at)}.")
        else:
            reason = f"scheduled: waiting until {say.at(job.run_at)}."
        return {"reason": reason, "until": job.run_at}
    retried = times.parse_iso(job.retried_at) if job.retried_at else None
    verdict = dependency_verdict(job.after, retried, spool.jobs.state_of, spool.jobs.settled_at)
    if verdict.kind == "waiting" and verdict.dep_state == "failed":
        return {"reason": f"waiting for dependency {verdict.dep}, which failed before this job "
                          f"was retried: retry {verdict.dep} too."}
    if verdict.kind == "waiting":
        return {"reason": f"blocked by dependency {verdict.dep}, which is {verdict.dep_state}."}
    if verdict.kind == "failed":
        what = "failed" if verdict.dep_state else "does not exist"
        return {"reason": f"dependency {verdict.dep} {what}: a worker will move this job to failed/."}
    if spool.store.is_paused():
        return {"reason": "ready, but the spool is paused (taskq resume)."}
    limit = spool.config.min_free
    if limit and spool.store.free_bytes() < limit:
        return {"reason": "ready, but free space is below min_free: workers do not claim."}
    return {"reason": "ready: waiting for a worker."}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
