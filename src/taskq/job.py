"""The job record: fields, defaults, validation and (de)serialisation. Pure: no I/O.

A job file's top-level keys are the record's fields (CONTRACT §4) except ``state``,
which is the directory the file is in, plus ``"version": 1``. Keys this version does
not know are kept in :attr:`Job.extra` and written back unchanged.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from . import times
from .errors import InvalidIdError, ValidationError

FORMAT_VERSION = 1
STATES = ("pending", "running", "done", "failed")

#: Built-in defaults (CONTRACT §5); ``taskq.toml`` and task types override them.
DEFAULTS: dict[str, Any] = {
    "max_attempts": 5,
    "backoff": 10.0,
    "backoff_max": 3600.0,
    "timeout": None,
    "priority": 0,
    "permanent_exit_codes": [100],
}

#: Largest payload, as encoded JSON, that a job may carry. Job files are read whole
#: by workers and listings; a queue is no place for bulk data (pass a path instead).
MAX_PAYLOAD_BYTES = 1024 * 1024

#: Priorities are bounded so that they fit the fixed-width key in pending/ file names.
PRIORITY_MIN, PRIORITY_MAX = -999_999_999, 999_999_999

#: Attempts that ended this way do not count against ``max_attempts`` (CONTRACT §7).
UNCOUNTED_ERRORS = ("interrupted", "cancelled")

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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
    if not isinstance(job_id, str) or not ID_RE.match(job_id):
        raise InvalidIdError(f"invalid job id {job_id!r} (allowed: A-Z a-z 0-9 _ -)", what)
    return job_id


@dataclass
class Attempt:
    """One run of a job. ``finished_at`` is None while the attempt is in progress."""

    number: int
    started_at: str
    worker: str
    finished_at: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None

    @property
    def counted(self) -> bool:
        """Whether this attempt uses up one of the job's ``max_attempts``."""
        return self.finished_at is not None and self.error not in UNCOUNTED_ERRORS

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "error": self.error,
            "worker": self.worker,
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> "Attempt":
        if not isinstance(data, dict):
            raise ValidationError("must be an object", where)
        number = data.get("number")
        if not _is_int(number) or number < 1:
            raise ValidationError("must be an integer >= 1", f"{where}.number")
        started = _timestamp(data.get("started_at"), f"{where}.started_at")
        finished = data.get("finished_at")
        if finished is not None:
            finished = _timestamp(finished, f"{where}.finished_at")
        for key in ("exit_code", "signal"):
            if data.get(key) is not None and not _is_int(data.get(key)):
                raise ValidationError("must be an integer or null", f"{where}.{key}")
        if not isinstance(data.get("timed_out", False), bool):
            raise ValidationError("must be true or false", f"{where}.timed_out")
        for key in ("error", "worker"):
            if data.get(key) is not None and not isinstance(data.get(key), str):
                raise ValidationError("must be a string or null", f"{where}.{key}")
        return cls(
            number=number,
            started_at=started,
            worker=data.get("worker") or "",
            finished_at=finished,
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            timed_out=data.get("timed_out", False),
            error=data.get("error"),
        )


@dataclass
class Job:
    """A job record. ``state`` is not stored in the file: it is the file's directory."""

    id: str
    command: list[str]
    cwd: str
    created_at: str
    run_at: str
    name: str | None = None
    payload: Any = None
    env: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 5
    timeout: float | None = None
    unique_key: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    last_error: str | None = None
    backoff: float = 10.0
    backoff_max: float = 3600.0
    permanent_exit_codes: list[int] = field(default_factory=lambda: [100])
    after: list[str] = field(default_factory=list)
    #: When the job reached done/ or failed/ (``purge --older-than`` measures from it).
    settled_at: str | None = None
    #: Index in ``attempts`` where the current attempt budget starts: ``retry`` moves it
    #: to the end so the history is kept while the budget is fresh.
    budget_start: int = 0
    #: When ``retry`` last put the job back to pending/ (None if never).
    retried_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    state: str | None = None
    #: Set by ``add`` when a unique key matched an existing job; not stored.
    duplicate: bool = False

    # -- derived facts -------------------------------------------------------------

    @property
    def run_at_ts(self) -> float:
        return times.parse_iso(self.run_at)

    @property
    def created_ts(self) -> float:
        return times.parse_iso(self.created_at)

    @property
    def budget_attempts(self) -> list[Attempt]:
        """Attempts of the current budget (since the last ``retry``)."""
        return self.attempts[self.budget_start:]

    @property
    def failures(self) -> int:
        """How many attempts of the current budget count against ``max_attempts``."""
        return sum(1 for a in self.budget_attempts if a.counted)

    @property
    def current_attempt(self) -> Attempt | None:
        """The attempt in progress, if the last one has not finished."""
        if self.attempts and self.attempts[-1].finished_at is None:
            return self.attempts[-1]
        return None

    # -- (de)serialisation ---------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The file form: every field but ``state``, plus ``version``, plus extra keys."""
        record: dict[str, Any] = dict(self.extra)
        record.update(
            version=FORMAT_VERSION,
            id=self.id,
            name=self.name,
            command=list(self.command),
            payload=self.payload,
            env=dict(self.env),
            cwd=self.cwd,
            priority=self.priority,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
            unique_key=self.unique_key,
            created_at=self.created_at,
            run_at=self.run_at,
            attempts=[a.to_dict() for a in self.attempts],
            last_error=self.last_error,
            backoff=self.backoff,
            backoff_max=self.backoff_max,
            permanent_exit_codes=list(self.permanent_exit_codes),
            after=list(self.after),
            settled_at=self.settled_at,
            budget_start=self.budget_start,
            retried_at=self.retried_at,
        )
        return record

    def to_dict(self) -> dict[str, Any]:
        """The public form (``show --json``): the file form plus ``state``."""
        record = self.to_record()
        record["state"] = self.state
        return record

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_record(), ensure_ascii=False, indent=1).encode() + b"\n"

    @classmethod
    def from_record(cls, data: object) -> "Job":
        """Validate a complete record (a job file) and build the Job.

        Raises ValidationError naming the first bad field.
        """
        if not isinstance(data, dict):
            raise ValidationError("a job must be a JSON object")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValidationError(f"unsupported format version {version!r}", "version")
        for key in ("id", "command", "cwd", "created_at", "run_at"):
            if key not in data:
                raise ValidationError("missing", key)
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "state", "duplicate")}
        fields = validate_fields({k: v for k, v in data.items() if k in known})
        attempts = data.get("attempts", [])
        if not isinstance(attempts, list):
            raise ValidationError("must be a list", "attempts")
        fields["attempts"] = [
            Attempt.from_dict(a, f"attempts[{i}]") for i, a in enumerate(attempts)
        ]
        for key in ("last_error", "settled_at", "retried_at"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValidationError("must be a string or null", key)
            fields[key] = value
        for key in ("settled_at", "retried_at"):
            if fields.get(key) is not None:
                _timestamp(fields[key], key)
        budget = data.get("budget_start", 0)
        if not _is_int(budget) or not 0 <= budget <= len(fields["attempts"]):
            raise ValidationError("must be an integer within the attempts list", "budget_start")
        fields["budget_start"] = budget
        extra = {k: v for k, v in data.items() if k not in known and k not in ("version", "state")}
        _check_encodable({k: v for k, v in data.items() if k != "payload"})  # payload: its own rule
        return cls(**fields, extra=extra)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Job":
        """Parse and validate a job file's bytes (ValidationError if unreadable)."""
        return cls.from_record(parse_json_bytes(raw))


def parse_json_bytes(raw: bytes) -> Any:
    """Decode a job file: UTF-8 JSON. Raises ValidationError saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise ValidationError("invalid JSON (nested too deeply)") from None


# -- field validation, shared by add, --batch, drop-in files and taskq.toml -----------


def validate_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Validate the user-settable fields present in *data*; return them normalised.

    Durations may be numbers of seconds or DURATION strings (``10m``). Raises
    ValidationError naming the field.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        check = _CHECKS.get(key)
        out[key] = check(value, key) if check else value
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_encodable(data: dict[str, Any]) -> None:
    """A record is stored as UTF-8 JSON: refuse what it cannot hold (a lone surrogate,
    from non-UTF-8 bytes in argv or a ``\\udXXX`` escape in a file), so that a valid
    record never fails when it is written. The error names the field."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        return
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        pass
    for key, value in data.items():
        field = str(key) if str(key).isprintable() and str(key).isascii() else ascii(key)
        try:
            json.dumps({key: value}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("must be valid UTF-8 text (it holds a lone surrogate)", field) from None
        except (TypeError, ValueError, RecursionError):
            raise ValidationError("must be JSON-serialisable", field) from None
    raise ValidationError("must be JSON-serialisable")


def _no_nul(value: str, key: str) -> str:
    if "\x00" in value:
        raise ValidationError("must not contain NUL characters", key)
    return value


def _check_id(value: object, key: str) -> str:
    return check_id(value, key)


def _check_command(value: object, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ValidationError("must be a list of strings", key)
    if not value or value[0] == "":
        raise ValidationError("must not be empty", key)
    for arg in value:
        _no_nul(arg, key)
    return list(value)


def _check_name(value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ValidationError("must be a non-empty string of at most 200 characters", key)
    return _no_nul(value, key)


def _check_payload(value: object, key: str) -> Any:
    try:
        # allow_nan=False: NaN and Infinity are not JSON; the command must get JSON.
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError, RecursionError):
        raise ValidationError("must be standard JSON (no NaN or Infinity)", key) from None
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            f"is {size} bytes, over the limit of {MAX_PAYLOAD_BYTES} bytes", key
        )
    return value


def _check_env(value: object, key: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValidationError("must be an object of strings", key)
    for k, v in value.items():
        if not ENV_KEY_RE.match(k):
            raise ValidationError(f"invalid variable name {k!r}", key)
        if not isinstance(v, str):
            raise ValidationError(f"value of {k} must be a string", key)
        _no_nul(v, key)
    return dict(value)


def _check_cwd(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValidationError("must be an absolute path", key)
    return _no_nul(value, key)


def _check_priority(value: object, key: str) -> int:
    if not _is_int(value) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValidationError(f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}", key)
    return value


def _check_max_attempts(value: object, key: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValidationError("must be an integer >= 1", key)
    return value


def _seconds(value: object, key: str) -> float:
    if isinstance(value, str):
        return times.parse_duration(value, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValidationError("must be a number of seconds or a duration", key)
    if value < 0 or value == float("inf"):
        raise ValidationError("must be a finite number >= 0", key)
    return float(value)


def _check_timeout(value: object, key: str) -> float | None:
    if value is None:
        return None
    seconds = _seconds(value, key)
    if seconds <= 0:
        raise ValidationError("must be greater than 0", key)
    return seconds


def _check_unique_key(value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1000:
        raise ValidationError("must be a non-empty string of at most 1000 characters", key)
    return _no_nul(value, key)


def _timestamp(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ValidationError("must be an ISO 8601 timestamp", key)
    try:
        return times.iso(times.parse_iso(value))
    except (ValueError, OverflowError, OSError):
        raise ValidationError(f"invalid timestamp {value!r}", key) from None


def _check_exit_codes(value: object, key: str) -> list[int]:
    if not isinstance(value, list) or not all(_is_int(c) and 1 <= c <= 255 for c in value):
        raise ValidationError("must be a list of integers from 1 to 255", key)
    return sorted(set(value))


def _check_after(value: object, key: str) -> list[str]:
    if not isinstance(value, list):
        raise ValidationError("must be a list of job ids", key)
    return [check_id(v, key) for v in value]


_CHECKS = {
    "id": _check_id,
    "command": _check_command,
    "name": _check_name,
    "payload": _check_payload,
    "env": _check_env,
    "cwd": _check_cwd,
    "priority": _check_priority,
    "max_attempts": _check_max_attempts,
    "timeout": _check_timeout,
    "unique_key": _check_unique_key,
    "created_at": _timestamp,
    "run_at": _timestamp,
    "backoff": _seconds,
    "backoff_max": _seconds,
    "permanent_exit_codes": _check_exit_codes,
    "after": _check_after,
}

#: Fields a task type in ``taskq.toml`` (or ``[defaults]``) may set.
TASK_FIELDS = (
    "command", "env", "cwd", "priority", "max_attempts", "timeout",
    "backoff", "backoff_max", "permanent_exit_codes",
)
DEFAULTABLE = ("priority", "max_attempts", "timeout", "backoff", "backoff_max", "permanent_exit_codes")


def build(
    given: dict[str, Any],
    *,
    now: float,
    default_cwd: str,
    defaults: dict[str, Any],
    tasks: dict[str, dict[str, Any]],
) -> Job:
    """Make a complete, validated Job from the fields a producer gave.

    Precedence (CONTRACT §5): fields in *given* override the task type named by
    ``given["name"]`` (a ``[tasks.NAME]`` table), which overrides the spool-wide
    *defaults*, which override :data:`DEFAULTS`. ``given`` may also carry ``delay``
    (seconds) instead of ``run_at``. Used by ``add``, ``add --batch`` and by workers
    normalising drop-in files, so every producer gets the same rules.
    """
    given = dict(given)
    given.pop("state", None)
    version = given.pop("version", None)
    if version is not None and version != FORMAT_VERSION:
        raise ValidationError(f"unsupported format version {version!r}", "version")
    delay = given.pop("delay", None)
    fields: dict[str, Any] = dict(DEFAULTS)
    fields.update(defaults)
    name = given.get("name")
    task = tasks.get(name) if isinstance(name, str) else None
    if task:
        fields.update(task)
    fields.update({k: v for k, v in given.items() if v is not None})
    if "command" not in fields or fields["command"] is None:
        if isinstance(name, str) and not task:
            raise ValidationError(f"no command given and no task type {name!r} in taskq.toml", "command")
        raise ValidationError("missing", "command")
    if fields.get("attempts"):
        raise ValidationError("a new job cannot carry attempts", "attempts")
    fields.pop("attempts", None)
    fields.setdefault("id", None)
    if fields["id"] is None:
        fields["id"] = new_id(now)
    fields.setdefault("created_at", times.iso(now))
    if delay is not None:
        if "run_at" in given and given["run_at"] is not None:
            raise ValidationError("give either delay or run_at, not both", "run_at")
        try:
            fields["run_at"] = times.iso(now + _seconds(delay, "delay"))
        except (OverflowError, ValueError, OSError):
            raise ValidationError(f"{delay!r} is out of range", "delay") from None
    fields.setdefault("run_at", fields["created_at"])
    fields.setdefault("cwd", default_cwd)
    fields.setdefault("env", {})
    fields.setdefault("after", [])
    fields["after"] = fields["after"] or []
    if fields.get("env") is None:
        fields["env"] = {}
    record = {k: v for k, v in fields.items()}
    record["version"] = FORMAT_VERSION
    return Job.from_record(record)
