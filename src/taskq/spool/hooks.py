"""Markers of hooks due, in ``SPOOL/hooks/`` (names and format: :mod:`.layout`).

A marker is written (stage in tmp/, fsync, rename, fsync) in the commit of the change
that makes a hook due, before the job's own rename, so that a crash between the two
leaves the marker: the hook is delivered at least once. A worker that runs a marker's
hook holds an ``flock(2)`` on the marker file for the whole run (its hook process
inherits the descriptor), so no two processes run one marker at once, and a marker
whose worker died is free again once no process of its hook is alive. The marker is
removed, while locked, once the hook has run.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import NoSpoolError, SpoolError
from . import layout
from .store import Store, io_error, open_to_read


class HeldMarker:
    """A marker this process holds the lock of, and its content."""

    __slots__ = ("name", "fd", "data")

    def __init__(self, name: str, fd: int, data: bytes) -> None:
        self.name = name
        self.fd = fd
        self.data = data

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class HookMarkers:
    """The markers of one spool."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def path(self, name: str) -> str:
        return self.store.path(layout.HOOKS, name)

    def write(self, name: str, data: bytes) -> None:
        """Create or replace the marker *name*, durably (creating hooks/ if need be)."""
        directory = self.store.top(layout.HOOKS)
        if not os.path.isdir(directory):
            try:
                self.store.mkdir(directory)
            except OSError as exc:
                raise io_error("create", directory, exc) from None
            self.store.sync_dir(".")  # hooks/ itself must survive a power cut
        self.store.write(layout.HOOKS, name, data, tag="hook")

    def names(self) -> list[str]:
        """Names of the markers (sorted: a job's markers in order of its attempts, up
        to attempt 9)."""
        try:
            return sorted(n for n in self.store.names(layout.HOOKS) if layout.parse_hook_file(n))
        except NoSpoolError:
            return []  # no hooks/ yet: no marker ever written

    def claim(self, name: str) -> HeldMarker | None:
        """Lock the marker and read it; None if another process holds it, or it has
        gone. The lock is on the file itself: one that was removed (or replaced) while
        we waited is not the marker any more."""
        path = self.path(name)
        fd = open_to_read(path)
        if fd is None:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                return None
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                if sum(map(len, chunks)) > layout.MAX_FILE_BYTES:
                    raise SpoolError(f"{path} is larger than {layout.MAX_FILE_BYTES} bytes")
            return HeldMarker(name, fd, b"".join(chunks))
        except OSError as exc:
            os.close(fd)
            raise io_error("read", path, exc) from None
        except SpoolError:
            os.close(fd)
            raise

    def remove(self, held: HeldMarker) -> None:
        """Remove a marker whose hook has run (while holding its lock), unless another
        marker has replaced it under its name meanwhile (recovery writes the event of
        an attempt it closes over a marker whose change never landed). Not fsynced: a
        removal lost in a power cut runs the hook again, which at least once allows."""
        try:
            if os.stat(self.path(held.name), follow_symlinks=False).st_ino != os.fstat(held.fd).st_ino:
                return
        except FileNotFoundError:
            return
        self.store.remove(layout.HOOKS, held.name)
