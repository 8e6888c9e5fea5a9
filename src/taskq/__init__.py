"""taskq: a command-line task queue with a durable file-based spool.

The Python API is :class:`Spool`; the CLI (``taskq``) is a thin layer over it.
"""

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
__version__ = "0.1.0"
