"""Every name and format of the spool on disk: the only module that builds or parses
a file name. Pure: no I/O.

::

    SPOOL/tmp/      staging: written and fsynced here, then renamed into place
    SPOOL/pending/  PRIO.RUNAT.ID[.after].json   (see below), and drop-in files
    SPOOL/running/  ID.json; ID.lock held by the attempt's processes; ID.cancel;
                    ID.N.WORKER[.settle].fence: the claim (N=0) or attempt N of a worker,
                    and its settle in progress (below); ID.claim, linked to the fence
    SPOOL/done/     ID.json
    SPOOL/failed/   ID.json, and ID.reason beside a file that was not a valid job
    SPOOL/logs/     ID.log; ID.cuts beside a log that ``log_max`` has cut
    SPOOL/keys/     one small file per unique key (sha256 of the key), naming its job
    SPOOL/hooks/    ID.attempt-N.json, ID.dependency.json: a hook due (see below)
    SPOOL/leases/   WORKER.lease: a worker's lease, its mtime renewed (README, "Several hosts")
    SPOOL/paused    present while the spool is paused
    SPOOL/events.jsonl   one JSON line per state change; events.jsonl.1 ... older ones
    SPOOL/events.lock    taken (flock) by the process that rotates the event log
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

A file in hooks/ is a *marker*: a hook of ``taskq.toml`` is due for an event of a job
(README, "Hooks"). It is written in the commit of the change that makes the event,
before the job's rename, and removed once the hook has run. Its name says which event:
``ID.attempt-N.json`` for the end of attempt N (success, retry or failure),
``ID.dependency.json`` for a job failed because a dependency failed. Its content
(:func:`hook_marker`) is one JSON object: ``version``, ``event``, ``state`` (the job's
state after the event), ``attempt``, and ``job``, the record as the change wrote it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from datetime import datetime
from typing import Any, NamedTuple

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
LEASES = "leases"
HOOKS = "hooks"
PAUSED = "paused"
CONFIG = "taskq.toml"
#: The event log (README, "taskq events"); rotated to ``events.jsonl.1``, ``.2``...
EVENTS = "events.jsonl"
EVENTS_LOCK = "events.lock"

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
FENCE = ".fence"
CLAIM = ".claim"
LEASE = ".lease"


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


def fence_file(job_id: str, attempt: int, worker: str, settling: bool = False) -> str:
    """``running/ID.N.WORKER.fence``: the fencing token of a worker's hold on a job in
    running/, N = 0 from its claim, the attempt's number once started. Every change
    the worker makes to the job consumes it first (a rename's source must exist): a
    settle renames it to ``ID.N.WORKER.settle.fence``, which still names the worker
    until the job has moved, and removes that after. A host taking the job over
    consumes it too: a worker that finds its token gone has been fenced, and must not
    touch the job (README, "Several hosts")."""
    return f"{job_id}.{attempt}.{worker}{'.settle' if settling else ''}{FENCE}"


class Fence(NamedTuple):
    job_id: str
    attempt: int
    worker: str
    name: str
    settling: bool = False


_FENCE_RE = re.compile(r"([A-Za-z0-9_-]{1,128})\.([0-9]{1,9})\.([A-Za-z0-9_~-]{1,120}?)(\.settle)?\.fence")


def parse_fence_file(name: str) -> Fence | None:
    m = _FENCE_RE.fullmatch(name)
    if m is None:
        return None
    return Fence(m.group(1), int(m.group(2)), m.group(3), name, m.group(4) is not None)


def claim_file(job_id: str) -> str:
    """``running/ID.claim``: a link to the fence file of the worker whose claim of the
    job is in progress or done, made before the claim's rename and removed once the
    job has left running/. A link's target must not exist: of two claimers, even on
    two hosts whose filesystem client does not make renames exclusive, one wins."""
    return job_id + CLAIM


def lease_file(worker: str) -> str:
    """``leases/WORKER.lease``: the lease of the worker whose id is *worker*."""
    return worker + LEASE


def reason_file(job_id: str) -> str:
    """``failed/ID.reason``: why the file beside it is not a valid job."""
    return job_id + REASON


def log_file(job_id: str) -> str:
    """``logs/ID.log``: the output of every attempt of a job."""
    return job_id + ".log"


def hook_file(job_id: str, attempt: int | None) -> str:
    """``hooks/ID.attempt-N.json`` (the end of attempt N), or ``hooks/ID.dependency.json``
    (*attempt* None: the job failed because a dependency failed)."""
    return f"{job_id}.{'dependency' if attempt is None else f'attempt-{attempt}'}{JSON}"


_HOOK_RE = re.compile(r"([A-Za-z0-9_-]+)\.(?:attempt-([1-9][0-9]{0,8})|dependency)\.json")


def parse_hook_file(name: str) -> tuple[str, int | None] | None:
    """(job id, attempt number or None) of a marker's name; None for any other name."""
    m = _HOOK_RE.fullmatch(name)
    if m is None:
        return None
    return m.group(1), int(m.group(2)) if m.group(2) else None


class HookMarker(NamedTuple):
    """What a marker in hooks/ says: *event* (``success``, ``retry``, ``failure``) of
    the job whose record is *job*, the job's *state* after it, the *attempt* whose end
    it was (for a dependency failure: how many attempts the job had)."""

    event: str
    state: str
    attempt: int
    job: dict[str, Any]


HOOK_EVENTS = {"success": "done", "retry": "pending", "failure": "failed"}


def hook_marker(marker: HookMarker) -> bytes:
    """The bytes of a marker file."""
    data = {"version": 1, "event": marker.event, "state": marker.state, "attempt": marker.attempt,
            "job": marker.job}
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


def parse_hook_marker(raw: bytes) -> HookMarker:
    """Decode a marker file; ValueError saying what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("not a JSON marker") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError("not a version 1 marker")
    event, state, attempt, job = (data.get(k) for k in ("event", "state", "attempt", "job"))
    if not isinstance(event, str) or not isinstance(state, str) or HOOK_EVENTS.get(event) != state:
        raise ValueError(f"unknown event {event!r} or state {state!r}")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0 or not isinstance(job, dict):
        raise ValueError("bad attempt number or job record")
    return HookMarker(event, state, attempt, job)


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


# -- the event log -----------------------------------------------------------------------


def event_file(generation: int) -> str:
    """The event log's file of *generation*: 0 is the live ``events.jsonl``, N the
    N-th older one, ``events.jsonl.N``."""
    return EVENTS if generation == 0 else f"{EVENTS}.{generation}"


def event_generation(name: str) -> int | None:
    """Which generation of the event log the top-level file *name* is (see
    :func:`event_file`); None for any other name."""
    if name == EVENTS:
        return 0
    suffix = name[len(EVENTS) + 1:] if name.startswith(EVENTS + ".") else ""
    if suffix.isascii() and suffix.isdigit() and suffix[0] != "0" and len(suffix) <= 9:
        return int(suffix)
    return None


def event_rotation(keep: int, existing: list[int]) -> list[tuple[str, str | None]]:
    """The steps that rotate the event log, given the generations that exist: each
    file moves one generation up (``events.jsonl`` → ``.1`` → ``.2``...), and the
    files that would go past *keep* are deleted (a None destination; with *keep* 0,
    the live file itself). The oldest file first, so that no rename replaces a file
    that has yet to move."""
    steps: list[tuple[str, str | None]] = []
    for generation in sorted(set(existing), reverse=True):
        target = event_file(generation + 1) if generation + 1 <= keep else None
        steps.append((event_file(generation), target))
    return steps


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
    return pending_file(f"{PRIO_MAX - priority:010d}", run_key, job_id, ".after" if has_deps else "")


def pending_file(prio_key: str, run_key: str, job_id: str, after: str) -> str:
    """The pending/ file name of its parts (*after*: ".after" or "")."""
    return f"{prio_key}.{run_key}.{job_id}{after}{JSON}"


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


@functools.cache
def _pending_in_listing() -> re.Pattern[str]:
    """:data:`_PENDING_RE`, found in a listing joined by NULs (no file name holds one),
    each match bounded by them: one C-level pass over all the names instead of a match
    per name, for status. Compiled when first used, not by every command that imports
    this module."""
    return re.compile(r"(?<![^\0])" + _PENDING_RE.pattern + r"(?![^\0])")


def scan_pending_names(names: list[str]) -> list[tuple[str, str, str, str]]:
    """(prio_key, run_key, id, ".after" or "") of each name of *names* that
    :func:`parse_pending_name` decodes, in one pass: what status needs of pending/.
    The other names (drop-ins) are the rest of the listing."""
    found: list[tuple[str, str, str, str]] = _pending_in_listing().findall("\0".join(names))
    if not all(_valid_time(stamp) for stamp in {m[1][:15] for m in found}):
        found = [m for m in found if _valid_time(m[1][:15])]
    return found


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
