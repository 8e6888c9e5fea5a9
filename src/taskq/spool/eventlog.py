"""The event log's files: append a line, rotate by size, read, follow like ``tail -F``.

Lines are bytes here; what they say is :mod:`taskq.events`.

* **Appending**: each line is one ``write(2)`` on a descriptor opened with
  ``O_APPEND``, so lines of concurrent processes never interleave. A command opens
  the file for each line (open, write, close). A worker, which writes several lines
  per job, keeps the descriptor (:attr:`EventLog.keep_open`), and before each line an
  ``lstat(2)`` of the path checks that it still names the file held open: once it does
  not (rotated, or removed), the path is opened again. Either way, a process never
  keeps writing into a file that was rotated away. Events are not fsynced: a power cut
  may lose the last lines, never a job (the job files are durable on their own).
* **Rotating**: a writer whose line would take ``events.jsonl`` past ``events_max``
  bytes first renames it to ``events.jsonl.1`` (``.1`` to ``.2``...; files beyond
  ``events_keep`` old ones are deleted), holding ``events.lock``, then writes its line
  to a new ``events.jsonl``. Whoever holds the lock checks that the file at the path
  is still the full one it opened (same inode, still too full), so two processes never
  rotate twice; one that finds the lock taken leaves the rotation to its holder and
  never waits. A writer that opened the file just before it was renamed appends its
  line to ``events.jsonl.1``: kept, not lost.
* **Reading**: a line is complete once it ends with a newline; a last line without
  one is a writer's append in progress (or the torn remains of one cut short) and is
  held back until it is complete. :class:`EventFollower` reads what is there and,
  polled, what is added: it waits for a file that does not exist yet, notices
  rotation (the inode at the path changed) and truncation, and drains a rotated file
  for a few seconds more, for writers that opened it just before it was renamed.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator

from ..errors import SpoolError
from . import layout, locks
from .store import Store, io_error, open_to_read

#: Bytes read at a time.
CHUNK = 1 << 20
#: A "line" longer than this without a newline is not one of ours: dropped, so a
#: broken file cannot exhaust memory (an event line is well under a kilobyte).
MAX_LINE = 1 << 20
#: How long a follower keeps reading a rotated file after it noticed the rotation.
ROTATED_GRACE = 5.0
#: At most this many rotated files are kept open for late lines (a tiny events_max
#: can rotate many times a second); the oldest are let go first.
MAX_ROTATED_OPEN = 16


class EventLog:
    """The spool's ``events.jsonl`` and its rotated predecessors."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: The descriptor kept open for appending, and the inode it is open on.
        self._fd = -1
        self._ino = -1
        self._lock = threading.Lock()  # the slot threads of a worker append at once
        #: Keep the descriptor between lines (a worker; it calls :meth:`close` at its end).
        self.keep_open = False

    @property
    def path(self) -> str:
        return self.store.top(layout.EVENTS)

    def tail(self, nbytes: int) -> list[bytes]:
        """The complete lines among the last *nbytes* of the live log, oldest first
        (none if there is no log yet)."""
        reader = _open(self.path)
        if reader is None:
            return []
        try:
            reader.skip_to_tail(nbytes)
            return list(reader.lines())
        finally:
            reader.close()

    def append(self, line: bytes, max_bytes: int, keep: int) -> None:
        """Append one line (ending with a newline) in one write. If the line would
        take the file past *max_bytes* (0: no limit), the file is rotated first,
        keeping *keep* old files.

        Raises SpoolError naming the path ("disk full" for ENOSPC)."""
        with self._lock:
            size = self._current()
            full = bool(max_bytes) and size > 0 and size + len(line) > max_bytes
            if full and self._rotate(self._fd, len(line), max_bytes, keep):
                self._let_go()
                self._current()
            try:
                self.store.io.append(self._fd, line)
            except OSError as exc:
                raise io_error("write", self.path, exc) from None
            finally:
                if not self.keep_open:
                    self._let_go()

    def close(self) -> None:
        """Let go of the descriptor kept for appending (if any)."""
        with self._lock:
            self._let_go()

    def _current(self) -> int:
        """Make ``_fd`` the file the path names now (opening it, created if missing,
        when it is not the one held); return its size."""
        if self._fd >= 0:
            try:
                st = os.lstat(self.path)
            except OSError:
                st = None
            if st is not None and st.st_ino == self._ino:
                return st.st_size
            self._let_go()
        self._fd = self._open()
        st = os.fstat(self._fd)
        self._ino = st.st_ino
        return st.st_size

    def _let_go(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._ino = -1

    def _open(self) -> int:
        try:
            return self.store.io.open_append(self.path, layout.FILE_MODE)
        except OSError as exc:
            raise io_error("open", self.path, exc) from None

    def _rotate(self, fd: int, adding: int, max_bytes: int, keep: int) -> bool:
        """Rotate the log if the file at its path is still the one open as *fd* and
        still too full for *adding* more bytes. Returns whether the path now names
        another file (rotated, here or by another process): the line goes there."""
        mine = os.fstat(fd).st_ino
        lock = locks.take(self.store, self.store.top(layout.EVENTS_LOCK), blocking=False)
        if lock is None:
            return False  # another process is rotating it right now: the line joins the old file
        try:
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                return True
            if st.st_ino != mine:
                return True  # rotated already, by whoever held the lock before us
            if st.st_size + adding <= max_bytes:
                return False
            for src, dst in layout.event_rotation(keep, self.generations()):
                source = self.store.top(src)
                try:
                    if dst is None:
                        self.store.io.unlink(source)
                    else:
                        self.store.io.rename(source, self.store.top(dst))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise io_error("rotate", source, exc) from None
            return True
        finally:
            lock.release(remove=False)

    def generations(self) -> list[int]:
        """The generations of the event log on disk (0 = ``events.jsonl``)."""
        try:
            names = os.listdir(self.store.root)
        except OSError:
            return []
        found = (layout.event_generation(name) for name in names)
        return sorted(g for g in found if g is not None)


class _Reader:
    """An open generation of the event log, read in order, complete lines only."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        st = os.fstat(fd)
        self.inode = st.st_ino
        self.mtime = st.st_mtime
        self.partial = b""
        self.skip_first = False  # reading starts inside a line: drop its rest

    def lines(self) -> Iterator[bytes]:
        """The complete lines added since the last call (without their newline)."""
        while True:
            try:
                chunk = os.read(self.fd, CHUNK)
            except OSError as exc:
                raise SpoolError(f"cannot read {self.path}: {exc.strerror}") from None
            if not chunk:
                return
            *complete, rest = (self.partial + chunk).split(b"\n")
            self.partial = rest if len(rest) <= MAX_LINE else b""
            if complete and self.skip_first:
                self.skip_first = False
                complete = complete[1:]
            yield from (line for line in complete if line)

    @property
    def offset(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def rewind(self) -> None:
        """Start again from the top (the file was truncated)."""
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.partial = b""
        self.skip_first = False

    def skip_to_tail(self, nbytes: int) -> None:
        """Start reading at the first line that begins in the last *nbytes*."""
        size = os.fstat(self.fd).st_size
        if size <= nbytes:
            return
        os.lseek(self.fd, size - nbytes - 1, os.SEEK_SET)
        # The byte before the window tells whether the window starts on a line.
        self.partial = b""
        self.skip_first = os.read(self.fd, 1) != b"\n"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open(path: str) -> _Reader | None:
    """Open a generation for reading, never through a symlink; None if it is missing."""
    fd = open_to_read(path)
    if fd is None:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpoolError(f"{path} is not a regular file")
    return _Reader(fd, path)


class EventFollower:
    """Reads the event log, all of it or its tail, then what is added (``tail -F``).

    Use: :meth:`start`, then :meth:`history` (the rotated files, oldest first), then
    :meth:`poll` as often as wanted (the live file, and what is added to it), then
    :meth:`close`. Each line is given once, in the order written per file.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.top(layout.EVENTS)
        self._current: _Reader | None = None
        #: rotated files still drained, with the time to stop
        self._rotated: list[tuple[_Reader, float]] = []
        #: inodes of the files read (or passed over as too old): what is older than
        #: the newest of them has been dealt with
        self._seen: set[int] = set()

    def start(self, tail_bytes: int | None = None) -> None:
        """Open the live file (if there is one yet), before the rotated ones are
        looked at: a rotation in between then shows as the same file twice, which
        :meth:`history` skips, never as a file missed. With *tail_bytes*, only the
        lines in the file's last *tail_bytes* are read."""
        self._current = self._open_current()
        if self._current is not None and tail_bytes is not None:
            self._current.skip_to_tail(tail_bytes)

    def _open_current(self) -> _Reader | None:
        reader = _open(self.path)
        if reader is not None:
            self._seen.add(reader.inode)
        return reader

    def history(self, newer_than: float | None = None, tail_bytes: int | None = None) -> Iterator[bytes]:
        """The lines of the rotated files, oldest first. A file last written before
        *newer_than* (epoch seconds) holds no line after it and is skipped. With
        *tail_bytes*, only the most recent lines, that many bytes of them together
        with what the live file holds."""
        budget = None
        if tail_bytes is not None:
            size = os.fstat(self._current.fd).st_size if self._current is not None else 0
            budget = max(0, tail_bytes - size)
        readers: list[_Reader] = []
        try:
            for reader in self._rotated_files():
                if budget is not None and budget <= 0:
                    reader.close()
                    break
                if newer_than is not None and reader.mtime < newer_than:
                    reader.close()
                    continue
                readers.append(reader)
                if budget is not None:
                    reader.skip_to_tail(budget)
                    budget -= os.fstat(reader.fd).st_size
            for reader in reversed(readers):
                yield from reader.lines()
        finally:
            for reader in readers:
                reader.close()

    def _rotated_files(self) -> Iterator[_Reader]:
        """The rotated files not dealt with yet, newest first (``.1``, ``.2``...),
        opened: up to the first file read before (older ones were read then too),
        never the live file being followed, never one file twice. Opening newest
        first makes a rotation meanwhile show a file twice (skipped) rather than
        hide one."""
        live = self._current.inode if self._current is not None else None
        before = set(self._seen)
        generation = 1
        while True:
            reader = _open(self.store.top(layout.event_file(generation)))
            if reader is None:
                # A gap: the end, or a rotation under way (it moves the oldest file
                # first). Go on if an older generation is there.
                if not any(g > generation for g in EventLog(self.store).generations()):
                    return
            elif reader.inode in before and reader.inode != live:
                reader.close()
                return
            elif reader.inode in self._seen:
                reader.close()  # the live file, or one this scan met already
            else:
                self._seen.add(reader.inode)
                yield reader
            generation += 1

    def poll(self, now: float) -> Iterator[bytes]:
        """The complete lines added since the last call: first the rest of files
        rotated away, then the live file (opened once it exists)."""
        for reader, until in list(self._rotated):
            yield from reader.lines()
            if now >= until:
                reader.close()
                self._rotated.remove((reader, until))
        current = self._current
        if current is not None:
            yield from current.lines()
            try:
                st: os.stat_result | None = os.lstat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino == current.inode:
                if st.st_size < current.offset:
                    current.rewind()  # truncated in place (by hand): read it again from the top
                return
            # Rotated (or deleted): it is read for a few seconds more, for lines of
            # writers that opened it just before it was renamed.
            self._rotated.append((current, now + ROTATED_GRACE))
        # A new live file: open it first, then the files rotated since the last one
        # read (several, if rotations came faster than the polls, or while waiting
        # for the log to appear), and read them oldest first.
        self._current = self._open_current()
        if self._current is None and current is None:
            return  # no log yet: wait for it
        for reader in reversed(list(self._rotated_files())):
            yield from reader.lines()
            self._rotated.append((reader, now + ROTATED_GRACE))
        for reader, _ in self._rotated[:-MAX_ROTATED_OPEN]:
            reader.close()
        del self._rotated[:-MAX_ROTATED_OPEN]
        if self._current is not None:
            yield from self._current.lines()

    def close(self) -> None:
        for reader, _ in self._rotated:
            reader.close()
        self._rotated = []
        if self._current is not None:
            self._current.close()
            self._current = None
