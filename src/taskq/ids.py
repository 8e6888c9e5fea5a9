"""Job ids: ``[A-Za-z0-9_-]+``, and the ids taskq makes (sortable by creation time).
Pure but for the clock and the random source."""

from __future__ import annotations

import os
import re
import time
from typing import TypeGuard

from .errors import InvalidIdError

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_last_id: tuple[int, int, int] = (0, 0, 0)  # (pid, ms, random part) of the last id


def new_id(ts: float | None = None) -> str:
    """A fresh job id: 26 characters, unique across processes and hosts, sortable by time.

    The layout is that of a ULID: 48 bits of milliseconds since the epoch, then 80
    random bits. Within one process ids are strictly increasing even inside one
    millisecond (the random part is incremented), so a batch keeps its order.
    """
    global _last_id
    ms = int((time.time() if ts is None else ts) * 1000)
    pid = os.getpid()
    last_pid, last_ms, last_rand = _last_id
    # A forked child inherits _last_id: it must draw its own random part.
    if ms <= last_ms and pid == last_pid:
        ms, rand = last_ms, last_rand + 1
    else:
        rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment
    _last_id = (pid, ms, rand)
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def id_time(job_id: str) -> float | None:
    """The creation time encoded in an id made by :func:`new_id`, or None for other ids."""
    if len(job_id) != 26:
        return None
    value = 0
    for ch in job_id[:10]:
        pos = _CROCKFORD.find(ch)
        if pos < 0:
            return None
        value = value * 32 + pos
    # The first 10 characters hold 50 bits: the 48-bit time behind 2 zero bits.
    return value / 1000.0 if value < (1 << 48) else None


def check_id(job_id: object, what: str = "id") -> str:
    """Return *job_id* if it is a valid job id, else raise InvalidIdError (exit 2)."""
    if not is_id(job_id):
        raise InvalidIdError(f"invalid job id {job_id!r} (allowed: A-Z a-z 0-9 _ -)", what)
    return job_id




def is_id(value: object) -> TypeGuard[str]:
    """Whether *value* is a valid job id (:func:`check_id` without the error)."""
    return isinstance(value, str) and ID_RE.match(value) is not None


def worker_id() -> str:
    """``host:pid``: the worker recorded in each attempt."""
    return f"{os.uname().nodename}:{os.getpid()}"
