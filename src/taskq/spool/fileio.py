"""Every system call that changes the spool, in one seam.

Nothing else in taskq creates, writes, renames, links, removes or fsyncs a file of the
spool: the job store, the locks, the key files, the log files, pausing and the
cleaning of tmp/ all come through :class:`FileIO`. Tests replace its methods to inject
faults (ENOSPC, EIO, EACCES) at each step and check that no state change can leave a
job lost, doubled or half written.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Errors of copy_file_range(2) that mean "not here": copy through user space instead.
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.ETXTBSY)
#: What a call on a name that another client of a shared filesystem has just removed
#: can fail with: ENOENT, ESTALE (a stale file handle) or, from some FUSE NFS clients,
#: EFAULT. Looked up again, the name is gone (or new): such a caller looks again.
VANISHED = frozenset({errno.ENOENT, errno.ESTALE, errno.EFAULT})


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

    def create_empty(self, path: str, mode: int) -> None:
        """Create an empty file that must not exist yet (O_EXCL: one server-side
        operation on NFS, exclusive across its clients)."""
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode))

    def overwrite(self, fd: int, data: bytes) -> None:
        """Replace the whole content of an open (lock) file with *data* (one line).
        Written first, cut to its length after: a process killed in between leaves
        *data* whole, as the file's first line, never an empty file (truncating first
        would lose, for that instant, the attempt noted there). The cut is made only
        where the old content was longer: a note rewritten with its process group
        grows, and needs none."""
        os.pwrite(fd, data, 0)
        if os.fstat(fd).st_size > len(data):
            os.ftruncate(fd, len(data))

    def append(self, fd: int, data: bytes | memoryview) -> None:
        """Append *data* to an open log (one write: O_APPEND keeps lines whole; a
        short write, which only a filling disk makes, is continued)."""
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def open_append(self, path: str, mode: int) -> int:
        """Open a log file for appending (created if missing). Readable too: cutting
        a capped log copies from it."""
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)

    def open_new(self, path: str, mode: int) -> int:
        """Create *path* (never through a symlink, never over a file), open for
        reading and writing, and return its descriptor."""
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)

    def copy(self, src: int, offset: int, count: int, dst: int) -> None:
        """Append *count* bytes of *src* from *offset* on at *dst*'s position: in the
        kernel (copy_file_range) where it can, else through a buffer."""
        end = offset + count
        kernel = hasattr(os, "copy_file_range")
        while offset < end:
            if kernel:
                try:
                    n = os.copy_file_range(src, dst, end - offset, offset)
                except OSError as exc:
                    if exc.errno not in _NO_KERNEL_COPY:
                        raise
                    kernel = False
                    continue
            else:
                chunk = os.pread(src, min(end - offset, 1 << 20), offset)
                n = len(chunk)
                if n:
                    self.append(dst, chunk)
            if n == 0:  # the source is shorter than it was said to be
                raise OSError(errno.EIO, f"copy stopped short of {count} bytes")
            offset += n

    def punch_hole(self, fd: int, offset: int, length: int) -> None:
        """Free the blocks of bytes *offset* to *offset* + *length* of an open file
        (``fallocate(PUNCH_HOLE | KEEP_SIZE)``): they read as zeros, the file keeps its
        size. OSError(EOPNOTSUPP) where the system or filesystem cannot."""
        fallocate = _fallocate()
        if fallocate is None:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        if fallocate(fd, _PUNCH_HOLE | _KEEP_SIZE, offset, length) != 0:
            import ctypes  # noqa: PLC0415 - loaded by _fallocate already

            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def set_append(self, fd: int) -> None:
        """Make later writes to *fd* append (O_APPEND), as on a log opened for it."""
        import fcntl  # noqa: PLC0415 - only workers cutting a log need it

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


_PUNCH_HOLE = 0x02  # FALLOC_FL_PUNCH_HOLE (linux/falloc.h)
_KEEP_SIZE = 0x01  # FALLOC_FL_KEEP_SIZE
_FALLOCATE: list[Callable[..., int] | None] = []


def _fallocate() -> Callable[..., int] | None:
    """libc's fallocate(2), looked up once (None where there is none)."""
    if not _FALLOCATE:
        try:
            import ctypes  # noqa: PLC0415 - only workers trimming a capped log need it

            func = ctypes.CDLL(None, use_errno=True).fallocate
            func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            func.restype = ctypes.c_int
            _FALLOCATE.append(func)
        except (OSError, AttributeError):
            _FALLOCATE.append(None)
    return _FALLOCATE[0]
