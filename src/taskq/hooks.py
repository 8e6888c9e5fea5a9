"""Hooks: which state change is which event, and what a hook is given. Pure.

A hook is a command of ``taskq.toml`` (``[hooks]``, or a task type's ``[tasks.NAME]``,
which replaces the spool-wide one of the same kind) that a worker runs after an event
of a job (README, "Hooks"):

* ``on_success``: an attempt succeeded (the job is in done/);
* ``on_retry``: an attempt failed and will be retried (the job is back in pending/);
* ``on_failure``: the job ended in failed/ (its last attempt failed, an exit status
  was permanent, or a job it waits for failed).

The events come from the transition engine's changes made by workers: settles, and
recoveries that close an attempt as "worker lost". A cancelled job and an attempt
interrupted by a worker's shutdown are no event (nothing failed). Running hooks is
:mod:`taskq.worker.hooks`; their markers are :mod:`taskq.spool.hooks`.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from .job import CANCELLED, INTERRUPTED
from .spool import layout
from .spool.layout import HookMarker
from .transitions import Change

#: The hook of each event.
HOOK_OF = {"success": "on_success", "retry": "on_retry", "failure": "on_failure"}
EVENT_OF_STATE = {state: event for event, state in layout.HOOK_EVENTS.items()}


class Event(NamedTuple):
    """An event a change makes: ``success``, ``retry`` or ``failure``, its hook
    (``on_success``...), and its marker's file name."""

    event: str
    hook: str
    marker: str


def event_of(change: Change) -> Event | None:
    """The event *change* makes, or None if it makes none. Cheap: called for every
    change a worker commits."""
    job = change.job
    if job is None or change.decision is None or change.dst not in EVENT_OF_STATE:
        return None
    if change.kind == "fail_dependent":
        attempt: int | None = None
    elif change.kind in ("settle", "recover") and change.outcome is not None:
        if change.outcome.error in (CANCELLED, INTERRUPTED):
            return None
        attempt = len(job.attempts)
    else:
        return None  # claims, returns to pending, user's commands, recovery by a recorded outcome
    event = EVENT_OF_STATE[change.dst]
    return Event(event, HOOK_OF[event], layout.hook_file(job.id, attempt))


def due(change: Change) -> tuple[str, HookMarker] | None:
    """The marker (its file name, its content) of the event *change* makes, or None
    if it makes none."""
    found = event_of(change)
    if found is None or change.job is None or change.dst is None:
        return None
    job = change.job
    record = job.to_dict()
    record["state"] = change.dst
    return found.marker, HookMarker(found.event, change.dst, len(job.attempts), record)


def environment(marker: HookMarker, spool_path: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """A hook's environment: *base* (the worker's) and the ``TASKQ_*`` variables of
    its event."""
    job = marker.job
    env = dict(os.environ if base is None else base)
    exit_code = _attempt(marker).get("exit_code")
    last_error = job.get("last_error")
    env.update(
        TASKQ_SPOOL=spool_path,
        TASKQ_JOB_ID=str(job.get("id", "")),
        TASKQ_JOB_NAME=str(job.get("name") or ""),
        TASKQ_EVENT=marker.event,
        TASKQ_JOB_STATE=marker.state,
        TASKQ_ATTEMPT=str(marker.attempt),
        TASKQ_EXIT_CODE="" if exit_code is None else str(exit_code),
        TASKQ_ERROR="" if last_error is None else str(last_error),
    )
    return env


def _attempt(marker: HookMarker) -> dict[str, Any]:
    """The marker's attempt as the record holds it ({} for none)."""
    attempts = marker.job.get("attempts")
    if isinstance(attempts, list) and 1 <= marker.attempt <= len(attempts):
        attempt = attempts[marker.attempt - 1]
        return attempt if isinstance(attempt, dict) else {}
    return {}


def landed(marker: HookMarker, dependency: bool, state: str | None, attempts: list[dict[str, Any]] | None) -> str:
    """Whether the change that wrote *marker* has landed, given where the job is now
    (*state*, None if it is gone) and its attempts there (None if unreadable):

    * ``"wait"``: the job is still in running/ with the marker's attempt its last one:
      the change is under way or its worker died during it (recovery will finish it);
      also a job claimed again and not started yet. Asked again later;
    * ``"stale"``: the record holds that attempt ended otherwise than the marker says:
      the change never landed (its worker died before the job's rename, and recovery
      settled it another way): the marker is dropped;
    * ``"run"``: it landed (a job purged since, or unreadable, also runs its hook: at
      least once).
    """
    if state is None or attempts is None:
        return "run"
    if state == "running" and len(attempts) == marker.attempt:
        return "wait"
    if dependency:
        return "run"
    if len(attempts) < marker.attempt or attempts[marker.attempt - 1] != _attempt(marker):
        return "stale"
    return "run"
