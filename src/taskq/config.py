"""Where the spool is, and what its ``taskq.toml`` says. Pure but for the environment.

``taskq.toml`` (optional, in the spool)::

    fsync = true                 # false trades durability for speed
    min_free = "16MiB"           # free-space guard; 0 disables
    kill_grace = 5               # seconds between SIGTERM and SIGKILL
    events_max = "64MiB"         # rotate events.jsonl before it grows past this; 0 = never
    events_keep = 4              # rotated files kept: events.jsonl.1 ... .4
    poll_interval = "1s"         # a worker re-lists pending/ this often (other hosts' jobs)
    lease_timeout = "60s"        # another host takes over a worker's jobs after this silence

    [defaults]                   # any job field of taskq.job.DEFAULTABLE, and log_max
    max_attempts = 3
    backoff = "30s"
    log_max = "16MiB"            # cap on each attempt's output in its log; 0 = none

    [hooks]                      # run by workers after a job's events (README, "Hooks")
    on_failure = "./alert"       # also on_success, on_retry: one /bin/sh -c string each
    hook_timeout = "60s"

    [tasks.nightly-report]       # a task type: `taskq add --name nightly-report`
    command = ["/usr/local/bin/report", "--nightly"]   # or a string, run by /bin/sh -c
    timeout = "1h"
    on_failure = "./page-oncall" # replaces [hooks] on_failure for this type; "" = none
    log_max = "1GiB"

``log_max`` is a setting of the worker, not a field of the job: it is not copied
into jobs, and a worker reads it (by the job's name) when it starts an attempt.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError
from .fields import DEFAULTABLE, TASK_FIELDS, seconds, shell_command, validate_fields

#: The key of ``[defaults]`` and ``[tasks.NAME]`` that is a setting, not a job field.
LOG_MAX = "log_max"

DEFAULT_MIN_FREE = 16 * 1024 * 1024
DEFAULT_KILL_GRACE = 5.0
#: Each attempt's output kept in the job's log (README, "taskq logs").
DEFAULT_LOG_MAX = 16 * 1024 * 1024
DEFAULT_EVENTS_MAX = 64 * 1024 * 1024
DEFAULT_EVENTS_KEEP = 4
#: More old event files than this is surely a typo (and each is renamed at rotation).
MAX_EVENTS_KEEP = 1000
DEFAULT_HOOK_TIMEOUT = 60.0
#: How often a worker re-lists pending/ whatever inotify says: inotify sees no change
#: made by another host of a shared filesystem (README, "Several hosts").
DEFAULT_POLL_INTERVAL = 1.0
#: How long a worker's lease lasts without renewal before another host may take over
#: its jobs; the smallest accepted (for tests: a real network blip lasts longer).
DEFAULT_LEASE_TIMEOUT = 60.0
MIN_LEASE_TIMEOUT = 5.0
#: The hooks a ``[hooks]`` or ``[tasks.NAME]`` table may set (README, "Hooks").
HOOK_KINDS = ("on_success", "on_retry", "on_failure")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_spool() -> str:
    """``$TASKQ_SPOOL``, else ``${XDG_DATA_HOME:-$HOME/.local/share}/taskq/spool``."""
    env = os.environ.get("TASKQ_SPOOL")
    if env:
        return os.path.abspath(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.abspath(os.path.join(data, "taskq", "spool"))


def resolve_spool(path: str | os.PathLike[str] | None) -> str:
    """The absolute spool path for an explicit ``--spool`` (or None for the default)."""
    if path is None or os.fspath(path) == "":
        return default_spool()
    return os.path.abspath(os.fspath(path))


def spool_origin(path: str | os.PathLike[str] | None) -> str:
    """Where :func:`resolve_spool` takes the spool from: ``--spool``, ``$TASKQ_SPOOL``
    or ``default``."""
    if path is not None and os.fspath(path) != "":
        return "--spool"
    return "$TASKQ_SPOOL" if os.environ.get("TASKQ_SPOOL") else "default"


@dataclass
class Config:
    """Spool-wide settings from ``taskq.toml``, validated once."""

    fsync: bool = True
    min_free: int = DEFAULT_MIN_FREE
    kill_grace: float = DEFAULT_KILL_GRACE
    events_max: int = DEFAULT_EVENTS_MAX
    events_keep: int = DEFAULT_EVENTS_KEEP
    defaults: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Spool-wide hooks (``[hooks]``): kind (``on_failure``...) → shell command.
    hooks: dict[str, str] = field(default_factory=dict)
    #: A task type's hooks (hook keys of ``[tasks.NAME]``), kept apart from its job
    #: fields: they are never copied into job records.
    task_hooks: dict[str, dict[str, str]] = field(default_factory=dict)
    hook_timeout: float = DEFAULT_HOOK_TIMEOUT
    poll_interval: float = DEFAULT_POLL_INTERVAL
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT

    def hook(self, job_name: str | None, kind: str) -> str | None:
        """The command of hook *kind* for a job named *job_name*: its task type's if
        that sets one (an empty string: none), else the spool-wide one."""
        task = self.task_hooks.get(job_name) if job_name is not None else None
        command = task[kind] if task is not None and kind in task else self.hooks.get(kind)
        return command or None

    #: Cap on each attempt's output in a job's log (bytes, 0 = none): ``[defaults]``,
    #: and per task type (``[tasks.NAME]``).
    log_max: int = DEFAULT_LOG_MAX
    task_log_max: dict[str, int] = field(default_factory=dict)

    def log_max_for(self, name: str | None) -> int:
        """The ``log_max`` of a job named *name*: its task type's, else ``[defaults]``'s."""
        if name is not None and name in self.task_log_max:
            return self.task_log_max[name]
        return self.log_max


def parse_config(raw: bytes | None, where: str = "taskq.toml") -> Config:
    """Parse and validate ``taskq.toml`` bytes (None = no file). ValidationError names the key."""
    if raw is None:
        return Config()
    data = load_toml(raw, where)
    cfg = Config()
    known = {"fsync", "min_free", "kill_grace", "events_max", "events_keep", "defaults", "tasks",
             "permanent_exit_codes", "hooks", "poll_interval", "lease_timeout"}
    for key in data:
        if key not in known:
            raise ValidationError(f"{where}: unknown setting {key!r}")
    if "fsync" in data:
        if not isinstance(data["fsync"], bool):
            raise ValidationError(f"{where}: fsync must be true or false")
        cfg.fsync = data["fsync"]
    if "min_free" in data:
        cfg.min_free = parse_size(data["min_free"], f"{where}: min_free")
    if "events_max" in data:
        cfg.events_max = parse_size(data["events_max"], f"{where}: events_max")
    if "events_keep" in data:
        keep = data["events_keep"]
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= MAX_EVENTS_KEEP:
            raise ValidationError(f"{where}: events_keep must be a whole number from 0 to {MAX_EVENTS_KEEP}, "
                                  f"not {keep!r}")
        cfg.events_keep = keep
    if "kill_grace" in data:
        cfg.kill_grace = validate_fields({"backoff": data["kill_grace"]})["backoff"]
    if "poll_interval" in data:
        cfg.poll_interval = _seconds(data["poll_interval"], f"{where}: poll_interval", 0.05, 3600.0)
    if "lease_timeout" in data:
        cfg.lease_timeout = _seconds(data["lease_timeout"], f"{where}: lease_timeout", MIN_LEASE_TIMEOUT, 86400.0)
    _hooks(data.get("hooks", {}), cfg, where)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ValidationError(f"{where}: [defaults] must be a table")
    if "permanent_exit_codes" in data:  # also accepted at top level (README, "taskq.toml")
        defaults = {"permanent_exit_codes": data["permanent_exit_codes"], **defaults}
    defaults = dict(defaults)
    if LOG_MAX in defaults:
        cfg.log_max = parse_size(defaults.pop(LOG_MAX), f"{where}: [defaults]: {LOG_MAX}")
    cfg.defaults = _fields(defaults, DEFAULTABLE, f"{where}: [defaults]", (LOG_MAX,))
    tasks = data.get("tasks", {})
    if not isinstance(tasks, dict):
        raise ValidationError(f"{where}: [tasks] must be a table of tables")
    for name, table in tasks.items():
        if not isinstance(table, dict):
            raise ValidationError(f"{where}: [tasks.{name}] must be a table")
        table = dict(table)
        hooks = {kind: table.pop(kind) for kind in HOOK_KINDS if kind in table}
        if hooks:
            cfg.task_hooks[name] = {kind: _hook_command(value, f"{where}: [tasks.{name}] {kind}")
                                    for kind, value in hooks.items()}
        if isinstance(table.get("command"), str):
            table["command"] = shell_command(table["command"])
        if "cwd" in table and isinstance(table["cwd"], str):
            table["cwd"] = os.path.expanduser(table["cwd"])
        if LOG_MAX in table:
            cfg.task_log_max[name] = parse_size(table.pop(LOG_MAX), f"{where}: [tasks.{name}]: {LOG_MAX}")
        cfg.tasks[name] = _fields(table, TASK_FIELDS, f"{where}: [tasks.{name}]", (LOG_MAX, *HOOK_KINDS))
    return cfg


def _seconds(value: object, where: str, low: float, high: float) -> float:
    """A duration setting (a number of seconds or a string like "5s"), from *low* to *high*."""
    number = seconds(value, where)
    if not low <= number <= high:
        raise ValidationError(f"{where}: must be from {low:g} to {high:g} seconds, not {value!r}")
    return number


def load_toml(raw: bytes, where: str = "taskq.toml") -> dict[str, Any]:
    """The TOML document in *raw*, not validated (ValidationError if it is not TOML)."""
    # Imported here: only spools with a taskq.toml pay for it.
    if sys.version_info >= (3, 11):
        import tomllib  # noqa: PLC0415
    else:
        import tomli as tomllib  # noqa: PLC0415
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"{where}: invalid TOML: {exc}") from None


def _hooks(table: object, cfg: Config, where: str) -> None:
    """``[hooks]``: the spool-wide hook commands and ``hook_timeout``."""
    if not isinstance(table, dict):
        raise ValidationError(f"{where}: [hooks] must be a table")
    allowed = (*HOOK_KINDS, "hook_timeout")
    for key, value in table.items():
        if key not in allowed:
            raise ValidationError(f"{where}: [hooks]: unknown key {key!r} (allowed: {', '.join(allowed)})")
        if key == "hook_timeout":
            try:
                cfg.hook_timeout = validate_fields({"timeout": value})["timeout"] or DEFAULT_HOOK_TIMEOUT
            except ValidationError as exc:
                raise ValidationError(f"{where}: [hooks] hook_timeout {str(exc).split(': ', 1)[-1]}") from None
        else:
            cfg.hooks[key] = _hook_command(value, f"{where}: [hooks] {key}")


def _hook_command(value: object, where: str) -> str:
    if not isinstance(value, str) or "\x00" in value:
        raise ValidationError(f"{where} must be a string (a command run by /bin/sh -c)")
    return value


def _fields(table: dict[str, Any], allowed: tuple[str, ...], where: str,
            settings: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate the job fields of a table. *settings*: the other keys the table may
    hold (taken out by the caller, never job fields), named in the error too."""
    for key in table:
        if key not in allowed:
            raise ValidationError(f"{where}: unknown key {key!r} (allowed: {', '.join((*allowed, *settings))})")
    try:
        return validate_fields(table)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc}") from None


def parse_size(value: object, where: str) -> int:
    """``0``, ``1048576``, ``16MiB``, ``1G``... into bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _SIZE_RE.match(str(value)) if isinstance(value, str) else None
    if not m:
        raise ValidationError(f"{where}: invalid size {value!r} (use e.g. 0, 16MiB, 1G)")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I") or ""
    return int(m.group(1)) * _SIZE_UNIT[unit or "B"]
