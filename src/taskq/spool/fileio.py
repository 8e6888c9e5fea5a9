"""Every system call that changes the spool, in one seam.

Nothing else in taskq creates, writes, renames, links, removes or fsyncs a file of the
spool: the job store, the locks, the key files, the log files, pausing and the
cleaning of tmp/ all come through :class:`FileIO`. Tests replace its methods to inject
faults (ENOSPC, EIO, EACCES) at each step and check that no state change can leave a
job lost, doubled or half written.
"""

from __future__ import annotations

import os

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class FileIO:
    """The changing system calls, one method each. Methods raise OSError as the
    system call does; callers turn it into a SpoolError naming the path."""

    def write_new(self, path: str, data: bytes, mode: int, sync: bool) -> None:
        """Create *path* (never through a symlink, never over a file) with *data*."""
        fd = os.open(path, _NEW, mode)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if sync:
                self.fsync(fd)
        finally:
            os.close(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def discard(self, path: str) -> None:
        """Remove a file of our own after a failure, ignoring errors: what it leaves
        is a staging file in tmp/ (removed by the worker's tmp/ cleaning) or a lock
        file (removed by its next owner). Kept apart from :meth:`unlink` so that a
        fault injected into a removal does not also hide the cleanup of the fault
        before it."""
        try:
            os.unlink(path)
        except OSError:
            pass

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(path, mode)

    def open_lock(self, path: str, mode: int) -> int:
        """Open (creating it if need be) a lock file; the descriptor is returned."""
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)

    def overwrite(self, fd: int, data: bytes) -> None:
        """Replace the whole content of an open (lock) file with *data*."""
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def append(self, fd: int, data: bytes) -> None:
        """Append *data* to an open log (one write: O_APPEND keeps lines whole)."""
        os.write(fd, data)

    def open_append(self, path: str, mode: int) -> int:
        """Open a log file for appending (created if missing)."""
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
