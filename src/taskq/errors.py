"""The error hierarchy.

Every error taskq raises on purpose is a :class:`TaskqError`. Each carries the exit
status the CLI turns it into (README, "Exit codes": 1 = the operation failed, 2 = usage or
validation error) and a message that names the thing that is wrong: the job, the
field, the path.
"""

from __future__ import annotations


class TaskqError(Exception):
    """Raised when an operation fails; the base of every taskq error."""

    exit_code: int = 1


class ValidationError(TaskqError):
    """Raised when user input (an option, a record field, a config value) is invalid."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidIdError(ValidationError):
    """Raised when a job id is not of the form [A-Za-z0-9_-]+."""


class SpoolError(TaskqError):
    """Raised when the spool cannot be used: missing, unwritable, disk full, I/O error."""


class NoSpoolError(SpoolError):
    """Raised when a read command is pointed at a spool that does not exist."""

    def __init__(self, path: object) -> None:
        super().__init__(f"no spool at {path}")
        self.path = path


class DiskFullError(SpoolError):
    """Raised when free space on the spool's filesystem is below the guard."""


class JobNotFoundError(TaskqError):
    """Raised when no job with the given id exists in any state directory."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class FencedError(TaskqError):
    """Raised when a worker must not change a job it held any more: its lease was lost,
    or another host took the job over (its fence file is gone; README, "Several hosts")."""


class StateConflictError(TaskqError):
    """Raised when a job is not in a state that allows the operation (retry of a done job...)."""


class DependencyError(TaskqError):
    """Raised when `add --after` names a job that does not exist or has failed."""
