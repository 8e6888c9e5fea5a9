"""The worker: :mod:`.loop` (the main loop, :class:`Worker`), :mod:`.claims` (which
job next, and its claim), :mod:`.index` (pending/ in claim order), :mod:`.attempt`
(one attempt, start to settle)."""

from .index import PendingIndex
from .loop import Worker

__all__ = ["PendingIndex", "Worker"]
