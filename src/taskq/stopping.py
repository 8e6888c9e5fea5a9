"""Stop requests from signals, installed before anything else is imported.

A worker must treat a SIGTERM that arrives while it is still starting as a clean stop
(README, "Running workers"), so the console script installs these handlers for ``taskq work`` before
it imports the CLI framework. The first SIGTERM or SIGINT asks for a graceful stop; a
second SIGINT for an immediate one.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


class StopState:
    """What the signals asked for; the worker polls it and registers :attr:`wake`."""

    def __init__(self) -> None:
        self.requested = False
        self.hard = False
        self.wake: Callable[[], None] = lambda: None

    def request(self, hard: bool = False) -> None:
        self.hard = self.hard or hard
        self.requested = True
        self.wake()


STOP = StopState()


def _on_term(signum: int, frame: Any) -> None:
    STOP.request()


def _on_int(signum: int, frame: Any) -> None:
    STOP.request(hard=STOP.requested)


def install() -> None:
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_int)
