"""Directory change notification: inotify on Linux (through ctypes, no dependency),
nothing elsewhere (the worker then polls its directories' mtimes).

The worker waits on :attr:`Watcher.fd` with select(); :meth:`Watcher.read` returns the
(directory, name, added, created) changes since the last call, or None after an overflow (the
caller must then re-list).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class Watcher:
    """inotify watches on some directories; :attr:`available` is False where there is
    no inotify (the caller falls back to polling)."""

    def __init__(self) -> None:
        self.fd = -1
        self._wds: dict[int, str] = {}
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return
        if fd >= 0:
            self.fd = fd

    @property
    def available(self) -> bool:
        return self.fd >= 0

    def add(self, path: str, label: str, added_only: bool = False) -> bool:
        """Watch *path*; events carry *label*. With *added_only*, only arrivals."""
        if not self.available:
            return False
        mask = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE
        if not added_only:
            mask |= IN_MOVED_FROM | IN_DELETE
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            return False
        self._wds[wd] = label
        return True

    def read(self) -> list[tuple[str, str, bool, bool]] | None:
        """Drain pending events: ``(label, name, added, created)`` tuples; None on
        overflow. ``created`` marks a name that was just created (by link(2) or open(2)):
        its content may still be being written, unless its writer links complete files."""
        out: list[tuple[str, str, bool, bool]] = []
        overflow = False
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not buf:
                break
            pos = 0
            while pos + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
                pos += _EVENT.size
                raw = buf[pos:pos + length].rstrip(b"\0")
                pos += length
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                    continue
                label = self._wds.get(wd)
                if label is None or not raw:
                    continue
                added = bool(mask & (IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE))
                out.append((label, os.fsdecode(raw), added, bool(mask & IN_CREATE)))
        return None if overflow else out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
