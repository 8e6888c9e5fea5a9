"""The spool's files: atomic publication, moves, reads and listings.

Publishing is always: write into tmp/, fsync the file, rename (or link) into place,
fsync the directory, so that the rename is durable. A state change is one rename; when
the record changes too, the new content is first written over the file in its current
directory (same protocol), then the file is renamed, so a crash leaves the job in
exactly one directory, with either its old or its new content.

Every change goes through :class:`~taskq.spool.fileio.FileIO`; every name comes from
:mod:`taskq.spool.layout`. Nothing here knows what a job is.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Callable, Iterator

from ..errors import NoSpoolError, SpoolError
from . import layout
from .fileio import FileIO

#: Staging files older than this (seconds) are left-overs of crashed writers, removed
#: by workers and reported by ``fsck`` (Maildir's rule for its tmp/).
STALE_TMP_AGE = 3600.0


def io_error(action: str, path: str, exc: OSError) -> SpoolError:
    """A one-line SpoolError naming the path ("disk full" for ENOSPC and EDQUOT)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolError(f"cannot {action} {path}: disk full")
    return SpoolError(f"cannot {action} {path}: {exc.strerror or exc}")


def open_to_read(path: str) -> int | None:
    """Open *path* read-only, never through a symlink and never blocking (a FIFO planted
    there); None if it is missing. A symlink or another error: SpoolError naming it."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolError(f"{path} is a symlink") from None
        raise io_error("open", path, exc) from None


def read_from(fd: int, offset: int) -> bytes:
    """Everything in the open file *fd* from byte *offset* on."""
    chunks = []
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


#: Filesystems of one machine's own disks or memory (the type /proc/self/mountinfo
#: names). On another type (NFS, CephFS, FUSE, Lustre...) a call may wait for a server
#: for as long as the server is away, and a worker keeps a thread free of such waits for
#: each running attempt (see ``taskq.worker.loop.SETTLERS``).
LOCAL_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "bcachefs", "jfs", "reiserfs", "nilfs2",
    "tmpfs", "ramfs", "overlay",
})

#: How long a :class:`Store` trusts its last look at the spool's directories and at
#: its free space, for producers (see :meth:`Store.ensure`).
LOOK_AGAIN = 1.0


class Store:
    """A spool directory's files. *fsync* False trades durability for speed."""

    def __init__(self, root: str | os.PathLike[str], fsync: bool = True, io: FileIO | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.sync = fsync
        self.io = io or FileIO()
        # When :meth:`ensure` and :meth:`recent_free_bytes` last looked (monotonic).
        self._whole_at = -LOOK_AGAIN
        self._free: tuple[float, int] = (-LOOK_AGAIN, 0)

    def dir(self, state: str) -> str:
        return os.path.join(self.root, state)

    def path(self, state: str, name: str) -> str:
        return os.path.join(self.root, state, name)

    def top(self, name: str) -> str:
        """A file at the top of the spool (taskq.toml, paused, keys/)."""
        return os.path.join(self.root, name)

    # -- the spool itself --------------------------------------------------------------

    def exists(self) -> bool:
        """Whether there is a spool here: the one test of it for every command. A spool
        is a directory with pending/ in it, where producers publish; its other
        directories may be missing (listed as empty) until ``add`` or ``work`` makes them."""
        return os.path.isdir(self.dir("pending"))

    def require(self) -> None:
        """Raise NoSpoolError unless the spool exists (read commands never create it)."""
        if not self.exists():
            raise NoSpoolError(self.root)

    def create(self) -> list[str]:
        """Create the spool and its six directories (mode 0700) where missing; return
        the paths created (empty for a complete spool). A spool path, or one of its
        directories, that exists but is not a directory is refused (SpoolError)."""
        missing = [path for path in [self.root] + [self.dir(name) for name in layout.DIRS]
                   if not os.path.isdir(path)]
        for path in missing:  # all checked before any is made: a refusal creates nothing
            # A file or a dangling symlink; not a directory that another process (an
            # `add` racing this one) made since the first look.
            if os.path.lexists(path) and not os.path.isdir(path):
                raise SpoolError(f"cannot create spool at {self.root}: {path} is not a directory")
        created = []
        try:
            if missing:
                self._make_parents(self.root)
            for path in missing:
                self.mkdir(path)
                created.append(path)
        except OSError as exc:
            raise SpoolError(f"cannot create spool at {self.root}: {exc.strerror}") from None
        if not os.access(self.dir(layout.TMP), os.W_OK):
            raise SpoolError(f"spool at {self.root} is not writable")
        return created

    def ensure(self) -> None:
        """:meth:`create`, unless it found the spool whole less than
        :data:`LOOK_AGAIN` seconds ago: a producer adding jobs one by one in a loop (a
        web back end) looks at the directories once a second, not at every add. A spool
        removed meanwhile fails that add ("No such file or directory") and is made
        again by the next one after the second."""
        now = time.monotonic()
        if now - self._whole_at >= LOOK_AGAIN:
            self.create()
            self._whole_at = now

    def mkdir(self, path: str, mode: int = layout.DIR_MODE) -> None:
        """Create a directory; one that exists already is fine."""
        try:
            self.io.mkdir(path, mode)
        except FileExistsError:
            pass

    def _make_parents(self, path: str) -> None:
        """Create the missing parents of *path* with mode 0755 whatever the umask
        (os.makedirs gives them 0777 & ~umask: with umask 000, others could swap the spool)."""
        missing = []
        parent = os.path.dirname(path)
        while parent and parent != os.path.dirname(parent) and not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            self.mkdir(directory, 0o755)

    def check_safe(self) -> None:
        """Refuse a spool that another local user could plant jobs in: one owned by
        another user, writable by group or others, or whose state directories are
        symlinks. A worker runs what it finds here, as its own user."""
        uid = os.geteuid()
        # hooks/ is made when a hook is first due; its markers feed hooks' input.
        extra = [self.dir(layout.HOOKS)] if os.path.lexists(self.dir(layout.HOOKS)) else []
        for path in [self.root] + [self.dir(name) for name in layout.DIRS] + extra:
            try:
                st = os.stat(path) if path == self.root else os.lstat(path)
            except OSError as exc:
                raise SpoolError(f"cannot check {path}: {exc.strerror}") from None
            refuse = f"refusing to work on {self.root}: {path}"
            if not stat.S_ISDIR(st.st_mode):
                raise SpoolError(f"{refuse} is not a directory")
            if st.st_uid != uid:
                raise SpoolError(f"{refuse} is owned by uid {st.st_uid}, not {uid}")
            if st.st_mode & 0o022:
                who = "others" if st.st_mode & 0o002 else "its group"
                raise SpoolError(f"{refuse} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); chmod go-w it")

    # -- publication -------------------------------------------------------------------

    def stage(self, data: bytes, tag: str = "job") -> str:
        """Write *data* to a fresh file in tmp/ and fsync it; return its path."""
        path = self.path(layout.TMP, layout.staging_name(tag))
        try:
            self.io.write_new(path, data, layout.FILE_MODE, self.sync)
        except OSError as exc:
            self.discard(path)
            raise io_error("write", path, exc) from None
        return path

    def publish(self, staged: str, state: str, name: str, sync_dir: bool = True) -> None:
        """Rename a staged file into *state*/*name* and make the rename durable (unless
        *sync_dir* is false: see :meth:`move`)."""
        dest = self.path(state, name)
        try:
            self.io.rename(staged, dest)
        except OSError as exc:
            self.discard(staged)
            raise io_error("rename into", dest, exc) from None
        if sync_dir:
            self.sync_dir(state)

    def publish_new(self, files: list[tuple[bytes, str]], state: str,
                    progress: Callable[[int, int], None] | None = None) -> None:
        """Publish new files (content, name) into *state*, all or nothing: all are
        staged and fsynced first, then linked into place (link(2) never replaces a
        file, where rename(2) would), then the directory is fsynced once. On any
        failure, what was linked is taken back. *progress* is called with (files
        staged, files in all) after each staging, the slow part (one fsync each)."""
        staged: list[tuple[str, str]] = []
        try:
            for data, name in files:
                staged.append((self.stage(data), name))
                if progress is not None:
                    progress(len(staged), len(files))
            published: list[str] = []
            try:
                for path, name in staged:
                    self._link(path, state, name)
                    published.append(name)
                self.sync_dir(state)
            except SpoolError:
                for name in published:
                    try:
                        self.remove(state, name)
                    except SpoolError:
                        pass
                raise
        finally:
            for path, _ in staged:
                self.discard(path)

    def _link(self, staged: str, state: str, name: str) -> None:
        dest = self.path(state, name)
        try:
            self.io.link(staged, dest)
        except FileExistsError:
            raise SpoolError(f"cannot publish {dest}: a file of that name exists") from None
        except OSError as exc:
            raise io_error("link into", dest, exc) from None

    def write(self, state: str, name: str, data: bytes, tag: str = "job", sync_dir: bool = True) -> None:
        """Atomically create or replace *state*/*name* with *data*: stage (written and
        fsynced, so the name never holds less than a whole file), rename, fsync the
        directory (unless *sync_dir* is false: see :meth:`move`)."""
        self.publish(self.stage(data, tag), state, name, sync_dir)

    def move(self, src_state: str, src_name: str, dst_state: str, dst_name: str, sync_dir: bool = True) -> None:
        """One atomic rename between (or within) state directories, made durable.

        With *sync_dir* false the directories are not fsynced: the rename reaches the
        disk with the file system's next commit, and a power cut before that finds the
        file, whole, under its old name. The worker's own steps do this (README,
        "Durability and speed"): each of them may be lost that way, never a job.

        Raises FileNotFoundError if the source is gone (another process moved it
        first: the caller lost a race and must not touch the job).
        """
        src, dst = self.path(src_state, src_name), self.path(dst_state, dst_name)
        try:
            self.io.rename(src, dst)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise io_error("rename to", dst, exc) from None
        if sync_dir:
            self.sync_dir(dst_state)
            if src_state != dst_state:
                self.sync_dir(src_state)

    def sync_dir(self, state: str) -> None:
        if not self.sync:
            return
        path = self.dir(state)
        try:
            self.io.fsync_dir(path)
        except OSError as exc:
            raise io_error("fsync", path, exc) from None

    def remove(self, state: str, name: str) -> None:
        """Delete a file; a file already gone is fine."""
        self.unlink(self.path(state, name))

    def unlink(self, path: str) -> None:
        try:
            self.io.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise io_error("delete", path, exc) from None

    def discard(self, path: str) -> None:
        """Remove a file of our own after a failure, ignoring errors."""
        self.io.discard(path)

    # -- reading -----------------------------------------------------------------------

    def read(self, state: str, name: str) -> bytes:
        """Read a regular file without following a symlink.

        Raises FileNotFoundError if it is gone, SpoolError if it is not a regular file,
        unreadable or too large.
        """
        path = self.path(state, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SpoolError(f"{path} is a symlink") from None
            raise SpoolError(f"cannot read {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SpoolError(f"{path} is not a regular file")
            limit = layout.MAX_FILE_BYTES
            if st.st_size > limit:
                raise SpoolError(f"{path} is larger than {limit} bytes")
            # One read of the size fstat gave (and one byte more, to see the end):
            # asking for a megabyte would allocate, and give back, a megabyte per record.
            chunks, size, want = [], 0, st.st_size + 1
            while chunk := os.read(fd, want):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise SpoolError(f"{path} is larger than {limit} bytes")
                want = 1 << 16  # it grew meanwhile: read on
            return b"".join(chunks)
        except OSError as exc:
            raise SpoolError(f"cannot read {path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def entries(self, state: str, suffix: str = layout.JSON) -> Iterator[os.DirEntry[str]]:
        """Regular, non-hidden files of *state* ending with *suffix*, with their cached
        stat. Symlinks, directories and other entries are never listed, so they are
        never parsed or run."""
        try:
            with os.scandir(self.dir(state)) as it:
                for entry in it:
                    if not layout.is_listed(entry.name, suffix):
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False):
                            yield entry
                    except OSError:
                        continue
        except FileNotFoundError:
            self._missing(state)
        except OSError as exc:
            raise SpoolError(f"cannot list {self.dir(state)}: {exc.strerror}") from None

    def names(self, state: str, suffix: str = layout.JSON) -> list[str]:
        """Names of :meth:`entries` (unsorted). One comprehension, not the generator:
        status lists tens of thousands of names at a time."""
        try:
            with os.scandir(self.dir(state)) as it:
                return [entry.name for entry in it
                        if entry.name.endswith(suffix) and not entry.name.startswith(".")
                        and entry.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            self._missing(state)
            return []
        except OSError:  # an entry that cannot be stat'ed: list them one by one
            return [entry.name for entry in self.entries(state, suffix)]

    def count(self, state: str, suffix: str = layout.JSON) -> int:
        """How many job files *state* holds, for counts (status, metrics): the names
        :meth:`names` would give, except that an entry that is not a regular file (only
        a hand-made one can be) is counted too. os.listdir makes no DirEntry per name:
        on a queue of tens of thousands of settled jobs this is half the cost."""
        try:
            names = os.listdir(self.dir(state))
        except FileNotFoundError:
            self._missing(state)
            return 0
        # Counted in the listing joined by NULs (no name holds one): one C-level pass;
        # hidden names, rare, are looked at one by one only where there are any.
        joined = "\0" + "\0".join(names) + "\0"
        count = joined.count(suffix + "\0")
        if "\0." in joined:
            count -= sum(1 for name in names if name.startswith(".") and name.endswith(suffix))
        return count

    def _missing(self, state: str) -> None:
        """A listed directory is missing: an empty listing if the spool :meth:`exists`
        (a producer in another language may have made only tmp/ and pending/), else
        NoSpoolError."""
        if not self.exists():
            raise NoSpoolError(self.root) from None

    def dir_mtime(self, state: str) -> int:
        """The directory's change stamp (ns), to tell whether a cached listing is stale."""
        return os.stat(self.dir(state)).st_mtime_ns

    def has(self, state: str, name: str) -> bool:
        """Whether *state*/*name* is a regular file (not a symlink)."""
        try:
            return stat.S_ISREG(os.lstat(self.path(state, name)).st_mode)
        except OSError:
            return False

    def mtime(self, state: str, name: str) -> float | None:
        """The mtime of *state*/*name* if it is a regular file (not a symlink), else None."""
        try:
            st = os.lstat(self.path(state, name))
        except OSError:
            return None
        return st.st_mtime if stat.S_ISREG(st.st_mode) else None

    # -- spool-wide files --------------------------------------------------------------

    def filesystem_type(self) -> str | None:
        """The type of the filesystem that holds the spool, as /proc/self/mountinfo
        names it (the mount whose point is the longest prefix of the spool's real path;
        the last of several on one point), or None where that cannot be read."""
        path = os.path.realpath(self.root)
        best, kind = "", None
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    left, _, right = line.partition(" - ")
                    fields, after = left.split(), right.split()
                    if len(fields) < 5 or not after:
                        continue
                    point = _unescape_mount(fields[4])
                    inside = path == point or path.startswith(point.rstrip("/") + "/")
                    if inside and len(point) >= len(best):
                        best, kind = point, after[0]
        except OSError:
            return None
        return kind

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def recent_free_bytes(self) -> int:
        """:meth:`free_bytes` as measured at most :data:`LOOK_AGAIN` seconds ago (the
        ``min_free`` guard of ``add``: a second's adds are far below any guard)."""
        now = time.monotonic()
        if now - self._free[0] >= LOOK_AGAIN:
            self._free = (now, self.free_bytes())
        return self._free[1]

    def is_paused(self) -> bool:
        return os.path.lexists(self.top(layout.PAUSED))

    def set_paused(self, paused: bool) -> None:
        path = self.top(layout.PAUSED)
        try:
            if paused and not os.path.lexists(path):
                self.io.write_new(path, b"", layout.FILE_MODE, self.sync)
            elif not paused and os.path.lexists(path):
                self.io.unlink(path)
            else:
                return
            if self.sync:
                self.io.fsync_dir(self.root)
        except FileExistsError:
            pass
        except OSError as exc:
            raise io_error("update", path, exc) from None

    def config_path(self) -> str:
        return self.top(layout.CONFIG)

    def read_config(self) -> bytes | None:
        path = self.config_path()
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SpoolError(f"cannot read {path}: {exc.strerror}") from None

    # -- logs --------------------------------------------------------------------------

    def log_path(self, job_id: str) -> str:
        return self.path(layout.LOGS, layout.log_file(job_id))

    def read_log(self, job_id: str, offset: int) -> bytes:
        """The job's log from byte *offset* on (empty if it has no log yet)."""
        fd = self.open_log_read(job_id)
        if fd is None:
            return b""
        try:
            return read_from(fd, offset)
        finally:
            os.close(fd)

    def open_log(self, job_id: str) -> int:
        """Open the job's log for appending (created 0600; never through a symlink)."""
        path = self.log_path(job_id)
        try:
            return self.io.open_append(path, layout.FILE_MODE)
        except OSError as exc:
            raise io_error("open log", path, exc) from None

    def log_line(self, fd: int, job_id: str, text: str) -> None:
        """Append one line of taskq's own to an open log (a header, an outcome)."""
        self.append_log(fd, job_id, text.encode() + b"\n")

    def append_log(self, fd: int, job_id: str, data: bytes | memoryview) -> None:
        """Append bytes to an open log."""
        try:
            self.io.append(fd, data)
        except OSError as exc:
            raise io_error("write", self.log_path(job_id), exc) from None

    def punch_log(self, fd: int, job_id: str, offset: int, length: int) -> None:
        """Free bytes *offset* to *offset* + *length* of the open log (a hole: offsets
        are kept). OSError(EOPNOTSUPP) where the filesystem cannot; SpoolError else."""
        try:
            self.io.punch_hole(fd, offset, length)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            raise io_error("trim", self.log_path(job_id), exc) from None

    def stage_log(self) -> tuple[str, int]:
        """A new, empty file in tmp/ (0600) to build a cut log in: its path and a
        descriptor open for reading and writing."""
        path = self.path(layout.TMP, layout.staging_name("log"))
        try:
            return path, self.io.open_new(path, layout.FILE_MODE)
        except OSError as exc:
            raise io_error("create", path, exc) from None

    def copy_log(self, src: int, offset: int, count: int, dst: int, path: str) -> None:
        """Append *count* bytes of the log open as *src*, from *offset* on, to the
        file open as *dst* (at *path*)."""
        try:
            self.io.copy(src, offset, count, dst)
        except OSError as exc:
            raise io_error("write", path, exc) from None

    def replace_log(self, job_id: str, staged: str, fd: int, log_map: bytes) -> None:
        """Put the log built in *staged* (open as *fd*) in place of the job's log, and
        its cuts (*log_map*) beside it: the cuts first, so that a reader never sees
        a cut log without them (it can tell which file they are about). Not fsynced:
        logs never are. On failure *staged* is removed and the old log stays."""
        cuts = self.path(layout.LOGS, layout.cuts_file(job_id))
        try:
            self.io.set_append(fd)
            tmp = self.path(layout.TMP, layout.staging_name("cuts"))
            try:
                self.io.write_new(tmp, log_map, layout.FILE_MODE, False)
                self.io.rename(tmp, cuts)
            except OSError:
                self.discard(tmp)
                raise
            self.io.rename(staged, self.log_path(job_id))
        except OSError as exc:
            self.discard(staged)
            raise io_error("replace", self.log_path(job_id), exc) from None

    def open_log_read(self, job_id: str) -> int | None:
        """The job's log open for reading (never through a symlink), or None if it has
        none yet."""
        path = self.log_path(job_id)
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise io_error("read", path, exc) from None

    def read_log_map(self, job_id: str) -> bytes | None:
        """The content of ``logs/ID.cuts`` (None if the log was never cut)."""
        try:
            return self.read(layout.LOGS, layout.cuts_file(job_id))
        except (FileNotFoundError, SpoolError):
            return None

    def remove_log(self, job_id: str) -> None:
        """Remove the job's log, and its cuts first (looked for: most logs have none)."""
        cuts = self.path(layout.LOGS, layout.cuts_file(job_id))
        if os.path.lexists(cuts):
            self.unlink(cuts)
        self.remove(layout.LOGS, layout.log_file(job_id))

    def stale_tmp(self, cutoff: float) -> list[tuple[str, float]]:
        """Staging files of tmp/ last modified before *cutoff*, with their mtime: the
        left-overs of writers that died between writing and renaming (no live writer
        takes that long). The one rule of what is stale, shared by the workers'
        cleaning (:meth:`clean_tmp`) and ``fsck``."""
        stale = []
        try:
            with os.scandir(self.dir(layout.TMP)) as it:
                for entry in it:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            mtime = entry.stat(follow_symlinks=False).st_mtime
                            if mtime < cutoff:
                                stale.append((entry.name, mtime))
                    except OSError:
                        continue
        except OSError:
            pass
        return stale

    def clean_tmp(self, cutoff: float) -> list[str]:
        """Remove the staging files :meth:`stale_tmp` finds; return their names."""
        removed = []
        for name, _ in self.stale_tmp(cutoff):
            try:
                self.io.unlink(self.path(layout.TMP, name))
            except OSError:
                continue
            removed.append(name)
        return removed


def _unescape_mount(field: str) -> str:
    """A mount point as /proc/self/mountinfo writes it: space, tab, newline and
    backslash as octal escapes (``\\040``)."""
    if "\\" not in field:
        return field
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
