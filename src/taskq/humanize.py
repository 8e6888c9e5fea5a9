"""Words for people: relative ages ("3 min ago", "in 40 s"), durations ("2 min 5 s")
and how an attempt ended ("killed by SIGKILL", "timed out after 30 s (SIGTERM)").

Pure: the current time is a parameter (``now``), nothing is read from the clock, the
disk or the terminal. ``status``, ``list``, ``show`` and ``explain`` speak this way;
``--json`` and the job record keep exact timestamps and the ``last_error`` texts of
:data:`taskq.policy.RECORD`.

How an attempt ended is said by :func:`taskq.policy.describe` itself, given the
wording :data:`WORDS`: one sentence structure, two registers, so the human words and
``last_error`` can never tell different stories.
"""

from __future__ import annotations

import re
import signal
from datetime import datetime

from .job import Outcome
from .policy import PERMANENT, Wording, describe

MINUTE = 60
HOUR = 3600
DAY = 86400


def _count(n: int, unit: str) -> str:
    """``1 day``, ``3 days``; the short units (s, min, h) take no plural."""
    if unit == "day":
        return f"{n} day" if n == 1 else f"{n} days"
    return f"{n} {unit}"


def _coarse(seconds: float) -> str:
    """*seconds* (≥ 1) in its largest whole unit, rounded down: ``59 s``, ``1 min``,
    ``23 h``, ``3 days``; as people say an age."""
    s = int(seconds)
    if s < MINUTE:
        return _count(s, "s")
    if s < HOUR:
        return _count(s // MINUTE, "min")
    if s < DAY:
        return _count(s // HOUR, "h")
    return _count(s // DAY, "day")


def relative(then: float, now: float) -> str:
    """When *then* is, seen from *now* (both epoch seconds): ``just now`` within a
    second, else ``3 min ago`` (past) or ``in 40 s`` (future). Rounded down to the
    largest whole unit: 59 s, then 1 min, 59 min, then 1 h, 23 h, then 1 day."""
    delta = now - then
    if abs(delta) < 1:
        return "just now"
    words = _coarse(abs(delta))
    return f"{words} ago" if delta > 0 else f"in {words}"


def duration(seconds: float) -> str:
    """A length of time in words, to a precision people use: ``0 s``, ``0.25 s``,
    ``2.5 s``, ``45 s``, ``3 min 5 s``, ``2 h 5 min``, ``3 days 4 h``. A negative
    length reads ``0 s``."""
    if seconds <= 0:
        return "0 s"
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 10:
        return f"{round(seconds, 1):g} s"
    s = int(round(seconds))
    if s < MINUTE:
        return _count(s, "s")
    if s < HOUR:
        big, small = _count(s // MINUTE, "min"), _count(s % MINUTE, "s") if s % MINUTE else ""
    elif s < DAY:
        big, small = _count(s // HOUR, "h"), _count(s % HOUR // MINUTE, "min") if s % HOUR // MINUTE else ""
    else:
        big, small = _count(s // DAY, "day"), _count(s % DAY // HOUR, "h") if s % DAY // HOUR else ""
    return f"{big} {small}" if small else big


def signal_name(number: int | None) -> str:
    """``SIGKILL`` for 9; ``signal 77`` for a number this system does not name."""
    if number is None:
        return "an unknown signal"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


#: The human wording of :func:`taskq.policy.describe`: ``exited with status 3``,
#: ``killed by SIGKILL``, ``timed out after 30 s (SIGTERM)``.
WORDS = Wording(
    exited=lambda code: f"exited with status {code}",
    signal=signal_name,
    seconds=duration,
)


def outcome(ended: Outcome, timeout: float | None = None) -> str:
    """How an attempt ended, in words (:func:`taskq.policy.describe` with :data:`WORDS`)."""
    return describe(ended, timeout, WORDS)


#: The shapes :func:`taskq.policy.describe` gives ``last_error`` with its record wording.
_RECORD_SHAPES = re.compile(
    r"timed out(?: after (?P<limit>\S+)s)? \(signal (?P<tsig>-?\d+)\)"
    r"|killed by signal (?P<sig>-?\d+)"
    r"|exit status (?P<code>-?\d+)"
)


def error(last_error: str | None) -> str | None:
    """A job's ``last_error`` in words: the texts :func:`taskq.policy.describe` wrote
    (``killed by signal 9`` → ``killed by SIGKILL``, with ``(permanent)`` kept), and
    any other text (``cancelled``, ``worker lost``, ``dependency X failed``, what a
    drop-in file got wrong) unchanged.

    A text is reworded only if ``describe`` gives back exactly that text for the
    outcome read from it, so a text of another origin is never misread.
    """
    if not last_error:
        return last_error
    core, permanent = last_error, ""
    if core.endswith(PERMANENT):
        core, permanent = core[: -len(PERMANENT)], PERMANENT
    m = _RECORD_SHAPES.fullmatch(core)
    if m is None:
        return last_error
    try:
        limit = float(m["limit"]) if m["limit"] else None
    except ValueError:
        return last_error
    if m["code"] is not None:
        ended = Outcome(exit_code=int(m["code"]))
    elif m["sig"] is not None:
        ended = Outcome(signal=int(m["sig"]))
    else:
        ended = Outcome(signal=int(m["tsig"]), timed_out=True)
    if describe(ended, limit) != core:
        return last_error
    return outcome(ended, limit) + permanent


def local_time(ts: float) -> str:
    """*ts* (epoch seconds) as local wall-clock time, ``2026-12-01 10:00:03``."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def moment(ts: float, now: float) -> str:
    """A date for people who also want to know how long ago it was:
    ``2026-12-01 10:00:03 (3 min ago)``."""
    return f"{local_time(ts)} ({relative(ts, now)})"
