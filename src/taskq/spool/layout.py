"""Every name and format of the spool on disk: the only module that builds or parses
a file name. Pure: no I/O.

::

    SPOOL/tmp/      staging: written and fsynced here, then renamed into place
    SPOOL/pending/  PRIO.RUNAT.ID[.after].json   (see below), and drop-in files
    SPOOL/running/  ID.json; ID.lock held by the attempt's processes; ID.cancel
    SPOOL/done/     ID.json
    SPOOL/failed/   ID.json, and ID.reason beside a file that was not a valid job
    SPOOL/logs/     ID.log; ID.cuts beside a log that ``log_max`` has cut
    SPOOL/keys/     one small file per unique key (sha256 of the key), naming its job
    SPOOL/paused    present while the spool is paused
    SPOOL/taskq.toml

A pending file's name carries all that ordering and readiness need, so a listing
answers "what is ready, in which order" without opening a file:

* ``PRIO`` is ``999999999 - priority``, ten digits: lexical order = highest first;
* ``RUNAT`` is ``run_at`` as ``YYYYMMDDTHHMMSSmmmZ`` (UTC): ready when <= now's key;
* ``ID`` is the job id, which sorts by creation time (ties among ready jobs);
* ``.after`` marks a job with dependencies: only those files are opened, to check
  the jobs they wait for.

Any other ``*.json`` name in pending/ is a drop-in file (README, "Drop-in protocol"):
a worker gives it an id and its proper name.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import datetime
from typing import NamedTuple

#: The state directories: a job's state is the one its file is in.
STATES = ("pending", "running", "done", "failed")
#: States a job leaves only when a user acts (retry, purge).
SETTLED = ("done", "failed")
#: States in which a job holds its unique key.
LIVE_STATES = ("pending", "running", "done")
#: Every directory of a spool, created by ``add`` and ``work``.
DIRS = ("tmp", *STATES, "logs")
TMP = "tmp"
LOGS = "logs"
KEYS = "keys"
PAUSED = "paused"
CONFIG = "taskq.toml"

PRIO_MAX = 999_999_999
#: Job files larger than this are not read (a hostile or broken file must not exhaust
#: memory); the largest valid job is far smaller (payload limit + command).
MAX_FILE_BYTES = 16 * 1024 * 1024
DIR_MODE = 0o700
FILE_MODE = 0o600

JSON = ".json"
LOCK = ".lock"
CANCEL = ".cancel"
REASON = ".reason"


# -- per-job names -----------------------------------------------------------------------


def job_file(job_id: str) -> str:
    """``ID.json``: a job's file in running/, done/ and failed/."""
    return job_id + JSON


def lock_file(job_id: str) -> str:
    """``running/ID.lock``: the job's run lock (see :mod:`taskq.spool.jobs`)."""
    return job_id + LOCK


def cancel_file(job_id: str) -> str:
    """``running/ID.cancel``: asks the worker running the job to stop it."""
    return job_id + CANCEL


def reason_file(job_id: str) -> str:
    """``failed/ID.reason``: why the file beside it is not a valid job."""
    return job_id + REASON


def log_file(job_id: str) -> str:
    """``logs/ID.log``: the output of every attempt of a job."""
    return job_id + ".log"


def cuts_file(job_id: str) -> str:
    """``logs/ID.cuts``: where the cuts of a capped log are (:class:`taskq.logcap.LogMap`),
    so that a reader following the log keeps its place when it is cut."""
    return job_id + ".cuts"


def key_file(key: str) -> str:
    """``keys/<sha256>``: any key becomes a safe, fixed-length file name."""
    import hashlib  # noqa: PLC0415 - only adds with a unique key pay for it

    return hashlib.sha256(key.encode()).hexdigest()


def staging_name(tag: str) -> str:
    """A fresh name in tmp/, unique across processes (pid + random)."""
    return f"{tag}.{os.getpid()}.{os.urandom(6).hex()}.tmp"


def stem(name: str, suffix: str = JSON) -> str | None:
    """The id part of ``ID<suffix>`` (None if *name* does not end with *suffix*)."""
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


def id_in(state: str, name: str) -> str | None:
    """The id a job file's name gives: from the pending name, else ``ID.json``.
    None for a drop-in file (its id, if any, is in its content)."""
    if state == "pending":
        parsed = parse_pending_name(name)
        return parsed.id if parsed else None
    return stem(name)


# -- pending names -----------------------------------------------------------------------


class PendingName(NamedTuple):
    """What a pending/ file name says about its job (a tuple: made for every name of
    every listing, so it must be cheap)."""

    name: str
    prio_key: str
    run_key: str
    id: str
    has_deps: bool

    @property
    def priority(self) -> int:
        return PRIO_MAX - int(self.prio_key)


def pending_name(job_id: str, priority: int, run_key: str, has_deps: bool) -> str:
    """The pending/ file name of a job (see the module docstring)."""
    deps = ".after" if has_deps else ""
    return f"{PRIO_MAX - priority:010d}.{run_key}.{job_id}{deps}{JSON}"


#: PRIO (10 digits) . RUNAT . ID [.after] .json; ASCII only (`\d` would take any
#: Unicode digit). One match per name: listings of tens of thousands of jobs parse
#: every name.
_PENDING_RE = re.compile(r"([0-9]{10})\.([0-9]{8}T[0-9]{9}Z)\.([A-Za-z0-9_-]+)(\.after)?\.json")


def parse_pending_name(name: str) -> PendingName | None:
    """Decode a pending/ name made by :func:`pending_name`; None for any other name."""
    return parse_pending_names([name])[0]


def parse_pending_names(names: list[str]) -> list[PendingName | None]:
    """:func:`parse_pending_name` of many names at once (a listing's worth)."""
    match, valid = _PENDING_RE.fullmatch, _valid_time
    out: list[PendingName | None] = []
    for name in names:
        m = match(name)
        if m is None:
            out.append(None)
            continue
        prio, run_key, job_id, deps = m.groups()
        out.append(PendingName(name, prio, run_key, job_id, deps is not None) if valid(run_key[:15]) else None)
    return out


def matches_id(name: str, job_id: str) -> bool:
    """Whether the pending/ file *name* is the one of job *job_id* (cheap test first)."""
    if not (name.endswith(f".{job_id}.json") or name.endswith(f".{job_id}.after.json")):
        return False
    parsed = parse_pending_name(name)
    return parsed is not None and parsed.id == job_id


@functools.lru_cache(maxsize=4096)
def _valid_time(stamp: str) -> bool:
    """Whether ``YYYYMMDDTHHMMSS`` (digits checked already) is a real date and time, as
    :func:`taskq.times.name_key` makes it (a worker turns it back into a time).
    Remembered: jobs made in the same second share it."""
    try:
        datetime(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
                 int(stamp[13:15]))
    except ValueError:
        return False
    return True


def place(state: str, name: str) -> str:
    """A file's place in the spool as people read it: ``pending/NAME.json``."""
    return f"{state}/{name}"


def is_listed(name: str, suffix: str = JSON) -> bool:
    """Whether a directory entry is one of ours: never a hidden name (``.x``)."""
    return not name.startswith(".") and name.endswith(suffix)
