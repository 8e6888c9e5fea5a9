"""Time: the clock, ISO 8601 timestamps, durations and user-given date-times.

Timestamps travel as floats (seconds since the epoch) inside taskq and as ISO 8601 UTC
strings with millisecond precision and a trailing ``Z`` in job files (README, "The job record").
"""

from __future__ import annotations

import functools
import re
import time
from datetime import datetime, timedelta, timezone

from .errors import ValidationError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?$"
)


#: Longest duration accepted (100 years): beyond it, times leave the calendar's range.
MAX_DURATION = 36500 * 86400.0


def now() -> float:
    """The current time, seconds since the epoch."""
    return time.time()


def iso(ts: float) -> str:
    """Format *ts* as ISO 8601 UTC with milliseconds: ``2026-11-28T05:18:30.123Z``."""
    ms = int(round(ts * 1000))
    return _second(ms // 1000)[0] + f".{ms % 1000:03d}Z"


def name_key(ts: float) -> str:
    """Compact, fixed-width, lexically ordered form of *ts*, used in file names."""
    ms = int(round(ts * 1000))
    return _second(ms // 1000)[1] + f"{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def _second(second: int) -> tuple[str, str]:
    """The :func:`iso` and :func:`name_key` forms of a whole second, remembered: a
    worker formats the same few seconds many times per job, and strftime is slow."""
    dt = datetime.fromtimestamp(second, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S"), dt.strftime("%Y%m%dT%H%M%S")


def parse_iso(text: str) -> float:
    """Parse a timestamp of a job record (ISO 8601; a missing offset means UTC)."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_duration(text: str, option: str = "duration") -> float:
    """Parse ``30``, ``1.5``, ``30s``, ``10m``, ``2h`` or ``1d`` into seconds."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ValidationError(
            f"invalid duration {text!r} (use e.g. 30, 1.5, 30s, 10m, 2h, 1d)", option
        )
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds > MAX_DURATION:
        raise ValidationError(f"duration {text!r} is out of range (at most 36500d)", option)
    return seconds


def parse_datetime(text: str, option: str = "--at") -> float:
    """Parse ``YYYY-MM-DD[THH:MM[:SS[.fff]]][Z|±HH:MM]``; local time unless it has an offset."""
    m = _DATETIME_RE.match(text.strip())
    if not m:
        raise ValidationError(
            f"invalid date-time {text!r} (use YYYY-MM-DD[THH:MM[:SS[.fff]]][Z|+HH:MM])",
            option,
        )
    year, month, day, hour, minute, sec, frac, off = m.groups()
    try:
        dt = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0),
            int(sec or 0), int((frac or "0").ljust(6, "0")),
        )
    except ValueError as exc:
        raise ValidationError(f"invalid date-time {text!r}: {exc}", option) from None
    try:
        if off is None:
            ts = time.mktime(dt.timetuple()) + dt.microsecond / 1e6
        else:
            if off == "Z":
                tz = timezone.utc
            else:
                sign = 1 if off[0] == "+" else -1
                tz = timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[4:6])))
            ts = dt.replace(tzinfo=tz).timestamp()
        iso(ts)  # it must also be representable in a record (UTC years 1-9999)
    except (ValueError, OverflowError, OSError):
        raise ValidationError(f"date-time {text!r} is out of range", option) from None
    return ts


def format_duration(seconds: float) -> str:
    """A short human form of a duration: ``45s``, ``12m``, ``3h05m``, ``2d``."""
    s = int(round(seconds))
    if s < 60:
        return f"{max(seconds, 0):.0f}s" if seconds >= 1 or seconds <= 0 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
