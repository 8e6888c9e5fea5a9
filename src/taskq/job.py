"""The job record: an attempt, how it ended, the job; (de)serialisation. Pure: no I/O.

A job file's top-level keys are the record's fields (README, "The job record") except
``state``, which is the directory the file is in, plus ``"version": 1``. Keys this
version does not know are kept in :attr:`Job.extra` and written back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import times
from .errors import ValidationError
from .fields import DEFAULTS, check_encodable, check_one_start_time, is_int, seconds, timestamp, validate_fields
from .ids import new_id

FORMAT_VERSION = 1

#: ``error`` of an attempt stopped because its worker shut down: not counted.
INTERRUPTED = "interrupted"
#: ``error`` (and ``last_error``) of a cancelled job: not counted.
CANCELLED = "cancelled"
#: ``error`` of an attempt whose worker died while it ran: counted.
WORKER_LOST = "worker lost"
#: Attempts that ended this way do not count against ``max_attempts``.
UNCOUNTED_ERRORS = (INTERRUPTED, CANCELLED)
#: Fields every complete record has; a JSON object without them is a drop-in file.
COMPLETE = ("cwd", "created_at", "run_at")


class Outcome(NamedTuple):
    """How one attempt ended. ``error`` is set when the command did not simply exit
    (could not start, cancelled, interrupted, worker lost). What it means for the job
    is :func:`taskq.policy.decide`; how it reads is :func:`taskq.policy.describe`."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


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
    #: The worker's id, unique across hosts (:func:`taskq.ids.new_worker_uid`).
    worker_id: str | None = None
    #: Why the attempt was closed by another worker than its own, in words (a lease
    #: that expired: README, "Several hosts"); None otherwise.
    detail: str | None = None

    @property
    def outcome(self) -> Outcome | None:
        """How the attempt ended (None while it runs)."""
        if self.finished_at is None:
            return None
        return Outcome(self.exit_code, self.signal, self.timed_out, self.error)

    def close(self, outcome: Outcome, finished_at: float) -> None:
        """Record how the attempt ended."""
        self.finished_at = times.iso(finished_at)
        self.exit_code = outcome.exit_code
        self.signal = outcome.signal
        self.timed_out = outcome.timed_out
        self.error = outcome.error

    @property
    def counted(self) -> bool:
        """Whether this attempt uses up one of the job's ``max_attempts``."""
        return self.finished_at is not None and self.error not in UNCOUNTED_ERRORS

    def to_dict(self) -> dict[str, Any]:
        data = {
            "number": self.number,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "error": self.error,
            "worker": self.worker,
        }
        if self.worker_id is not None:
            data["worker_id"] = self.worker_id
        if self.detail is not None:
            data["detail"] = self.detail
        return data

    @classmethod
    def from_dict(cls, data: object, where: str) -> Attempt:
        if not isinstance(data, dict):
            raise ValidationError("must be an object", where)
        number = data.get("number")
        if not is_int(number) or number < 1:
            raise ValidationError("must be an integer >= 1", f"{where}.number")
        started = timestamp(data.get("started_at"), f"{where}.started_at")
        finished = data.get("finished_at")
        if finished is not None:
            finished = timestamp(finished, f"{where}.finished_at")
        for key in ("exit_code", "signal"):
            if data.get(key) is not None and not is_int(data.get(key)):
                raise ValidationError("must be an integer or null", f"{where}.{key}")
        if not isinstance(data.get("timed_out", False), bool):
            raise ValidationError("must be true or false", f"{where}.timed_out")
        for key in ("error", "worker", "worker_id", "detail"):
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
            worker_id=data.get("worker_id"),
            detail=data.get("detail"),
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
    #: For a drop-in file no worker has taken in yet: its place in the spool
    #: (``pending/NAME``); its ``id`` is "" until it gets one. Not stored.
    file: str | None = None

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
        if self.file is not None:
            record["id"] = self.id or None
            record["file"] = self.file
        return record

    def to_bytes(self) -> bytes:
        # One line, no indent: json's C encoder handles only that form, and the
        # indented one (pure Python) cost more than the rest of a settle together.
        return json.dumps(self.to_record(), ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_record(cls, data: object) -> Job:
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
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "state", "duplicate", "file")}
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
                timestamp(fields[key], key)
        budget = data.get("budget_start", 0)
        if not is_int(budget) or not 0 <= budget <= len(fields["attempts"]):
            raise ValidationError("must be an integer within the attempts list", "budget_start")
        fields["budget_start"] = budget
        extra = {k: v for k, v in data.items() if k not in known and k not in ("version", "state")}
        check_encodable({k: v for k, v in data.items() if k != "payload"})  # payload: its own rule
        return cls(**fields, extra=extra)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Job:
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


def is_complete(data: dict[str, Any]) -> bool:
    """Whether a JSON object is a complete record rather than a drop-in file."""
    return all(key in data for key in COMPLETE)


def build(
    given: dict[str, Any],
    *,
    now: float,
    default_cwd: str,
    defaults: dict[str, Any],
    tasks: dict[str, dict[str, Any]],
) -> Job:
    """Make a complete, validated Job from the fields a producer gave.

    Precedence (README, "taskq.toml"): fields in *given* override the task type named by
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
        check_one_start_time({"delay": delay, "run_at": given.get("run_at")})
        try:
            fields["run_at"] = times.iso(now + seconds(delay, "delay"))
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
