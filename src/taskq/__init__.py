"""taskq: a command-line task queue with a durable file-based spool.

The Python API is :class:`Spool`; the CLI (``taskq``) is a thin layer over it.
Names are imported on first use, so that ``taskq`` commands start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "Attempt",
    "DependencyError",
    "DiskFullError",
    "Job",
    "JobNotFoundError",
    "NoSpoolError",
    "Spool",
    "SpoolError",
    "StateConflictError",
    "TaskqError",
    "ValidationError",
]

_WHERE = {"Spool": "api", "Attempt": "job", "Job": "job"}

if TYPE_CHECKING:
    from .api import Spool
    from .errors import (
        DependencyError,
        DiskFullError,
        JobNotFoundError,
        NoSpoolError,
        SpoolError,
        StateConflictError,
        TaskqError,
        ValidationError,
    )
    from .job import Attempt, Job


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'taskq' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_WHERE.get(name, 'errors')}", __name__), name)
