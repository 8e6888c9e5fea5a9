"""The fields a producer may set, their defaults and their validation, shared by
``add``, ``add --batch``, drop-in files and ``taskq.toml``. Pure."""

from __future__ import annotations

import json
import re
from typing import Any, TypeGuard

from . import times
from .errors import ValidationError
from .ids import check_id

#: Built-in defaults (README, "taskq add"); ``taskq.toml`` and task types override them.
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

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z: "$" would let a final newline through


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


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_encodable(data: dict[str, Any]) -> None:
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
    if not is_int(value) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValidationError(f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}", key)
    return value


def _check_max_attempts(value: object, key: str) -> int:
    if not is_int(value) or value < 1:
        raise ValidationError("must be an integer >= 1", key)
    return value


def seconds(value: object, key: str) -> float:
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
    limit = seconds(value, key)
    if limit <= 0:
        raise ValidationError("must be greater than 0", key)
    return limit


def _check_unique_key(value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1000:
        raise ValidationError("must be a non-empty string of at most 1000 characters", key)
    return _no_nul(value, key)


def timestamp(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ValidationError("must be an ISO 8601 timestamp", key)
    try:
        return times.iso(times.parse_iso(value))
    except (ValueError, OverflowError, OSError):
        raise ValidationError(f"invalid timestamp {value!r}", key) from None


def _check_exit_codes(value: object, key: str) -> list[int]:
    if not isinstance(value, list) or not all(is_int(c) and 1 <= c <= 255 for c in value):
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
    "created_at": timestamp,
    "run_at": timestamp,
    "backoff": seconds,
    "backoff_max": seconds,
    "permanent_exit_codes": _check_exit_codes,
    "after": _check_after,
}

#: Fields a task type in ``taskq.toml`` (or ``[defaults]``) may set.
TASK_FIELDS = (
    "command", "env", "cwd", "priority", "max_attempts", "timeout",
    "backoff", "backoff_max", "permanent_exit_codes",
)
DEFAULTABLE = ("priority", "max_attempts", "timeout", "backoff", "backoff_max", "permanent_exit_codes")



def check_one_start_time(given: dict[str, Any]) -> None:
    """A job gets ``delay`` (from now) or ``run_at``, not both."""
    if given.get("delay") is not None and given.get("run_at") is not None:
        raise ValidationError("give either a delay (--delay) or a run_at time (--at), not both")


def shell_command(text: str) -> list[str]:
    """The argv that runs *text* with the shell (``add --shell``, a task type's
    ``command`` given as a string)."""
    return ["/bin/sh", "-c", text]


def shell_text(command: list[str]) -> str | None:
    """The shell text of a command made by :func:`shell_command`, else None."""
    if len(command) == 3 and command[:2] == ["/bin/sh", "-c"]:
        return command[2]
    return None
