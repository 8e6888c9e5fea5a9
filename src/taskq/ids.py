"""Job ids: ``[A-Za-z0-9_-]+``, and the ids taskq makes (sortable by creation time).
Pure but for the clock and the random source."""

from __future__ import annotations

import os
import re
import time
from typing import TypeGuard

from .errors import InvalidIdError

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")  # \Z: "$" would let a final newline through

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


_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_BOOT: list[str] = []


def boot_id() -> str:
    """This boot's identity (Linux: a random UUID drawn at boot), so that a process id
    recorded before a reboot, or on another machine, is never mistaken for a live one."""
    if not _BOOT:
        try:
            with open("/proc/sys/kernel/random/boot_id") as fh:
                _BOOT.append(fh.read().strip() or "unknown")
        except OSError:
            _BOOT.append("unknown")
    return _BOOT[0]


def host_id() -> str:
    """This host, as its workers' ids name it: ``HOST~BOOT`` (the host name made safe
    for a file name, and the first 8 characters of the boot id). Two hosts with one
    name still differ by boot; one host after a reboot is another host."""
    host = _HOST_UNSAFE.sub("_", os.uname().nodename)[:64] or "host"
    boot = _HOST_UNSAFE.sub("_", boot_id())[:8]
    return f"{host}~{boot}"


def new_worker_uid() -> str:
    """A worker's id, unique across hosts and restarts: ``HOST~BOOT~PID~NONCE`` (see
    :func:`host_id`; the nonce is random, drawn when the worker starts, and again if it
    loses its lease). Its lease, its claims' fence files and its notes carry it."""
    return f"{host_id()}~{os.getpid()}~{os.urandom(4).hex()}"


WORKER_UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}~[A-Za-z0-9_-]{1,8}~[0-9]{1,10}~[0-9a-f]{8}\Z")


def is_worker_uid(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and WORKER_UID_RE.match(value) is not None


def host_of(uid: str) -> str:
    """The :func:`host_id` part of a worker's id."""
    return uid.rsplit("~", 2)[0]


def pid_of(uid: str) -> int:
    """The process id part of a worker's id (meaningful on its own host only)."""
    return int(uid.rsplit("~", 2)[1])
