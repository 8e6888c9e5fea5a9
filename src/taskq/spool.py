"""The spool on disk: the only module that knows directory names, writes, renames and locks.

Layout (CONTRACT §3)::

    SPOOL/tmp/      staging: written and fsynced here, then renamed into place
    SPOOL/pending/  PRIO.RUNAT.ID[.after].json   (see below)
    SPOOL/running/  ID.json, and ID.lock held by the attempt's processes
    SPOOL/done/     ID.json
    SPOOL/failed/   ID.json, and ID.reason beside a file that was not a valid job
    SPOOL/logs/     ID.log
    SPOOL/keys/     one small file per unique key, naming the job that holds it
    SPOOL/paused    present while the spool is paused
    SPOOL/taskq.toml

A pending file's name carries all that ordering and readiness need, so a listing
answers "what is ready, in which order" without opening a file:

* ``PRIO`` is ``999999999 - priority``, ten digits: lexical order = highest first;
* ``RUNAT`` is ``run_at`` as ``YYYYMMDDTHHMMSSmmmZ`` (UTC): ready when <= now's key;
* ``ID`` is the job id, which sorts by creation time (ties among ready jobs);
* ``.after`` marks a job with dependencies: only those files are opened, to check
  that every job they wait for is in done/.

Publishing is always: write into tmp/, fsync the file, rename into place, fsync the
directory (the rename is then durable). A state change is one rename; when the record
changes too, the new content is first written over the file in its current directory
(same protocol), then the file is renamed — so a crash leaves the job in exactly one
directory, with either its old or its new content.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from .errors import NoSpoolError, SpoolError

STATE_DIRS = ("pending", "running", "done", "failed")
LAYOUT = ("tmp", "pending", "running", "done", "failed", "logs")
KEYS_DIR = "keys"
PAUSED_FILE = "paused"
CONFIG_FILE = "taskq.toml"
PRIO_MAX = 999_999_999
#: Job files larger than this are not read (a hostile or broken file must not exhaust
#: memory); the largest valid job is far smaller (payload limit + command).
MAX_FILE_BYTES = 16 * 1024 * 1024
DIR_MODE = 0o700
FILE_MODE = 0o600


class FileIO:
    """The system calls that change the spool, gathered in one seam.

    Tests replace methods here to inject faults (ENOSPC, EIO, EACCES) at each step.
    """

    def write_new(self, path: str, data: bytes, mode: int, sync: bool) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
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


@dataclass(frozen=True)
class PendingName:
    """What a pending/ file name says about its job."""

    name: str
    prio_key: str
    run_key: str
    id: str
    has_deps: bool

    @property
    def priority(self) -> int:
        return PRIO_MAX - int(self.prio_key)


def pending_name(job_id: str, priority: int, run_key: str, has_deps: bool) -> str:
    """The pending/ file name of a job (see the module docstring)."""
    deps = ".after" if has_deps else ""
    return f"{PRIO_MAX - priority:010d}.{run_key}.{job_id}{deps}.json"


def parse_pending_name(name: str) -> PendingName | None:
    """Decode a pending/ name made by :func:`pending_name`; None for any other name."""
    parts = name.split(".")
    if len(parts) not in (4, 5) or parts[-1] != "json":
        return None
    prio, run_key, job_id = parts[0], parts[1], parts[2]
    has_deps = len(parts) == 5
    if has_deps and parts[3] != "after":
        return None
    if len(prio) != 10 or not prio.isascii() or not prio.isdigit() or not _valid_run_key(run_key):
        return None
    if not job_id or not all(c.isalnum() or c in "_-" for c in job_id) or not job_id.isascii():
        return None
    return PendingName(name, prio, run_key, job_id, has_deps)


_BOOT_ID: list[str] = []


def boot_id() -> str:
    """This boot's identity (Linux), so that a process group id recorded before a
    reboot is never mistaken for a live one."""
    if not _BOOT_ID:
        try:
            with open("/proc/sys/kernel/random/boot_id") as fh:
                _BOOT_ID.append(fh.read().strip())
        except OSError:
            _BOOT_ID.append("unknown")
    return _BOOT_ID[0]


def _make_parents(path: str) -> None:
    """Create the missing parents of *path* with mode 0755 whatever the umask
    (os.makedirs gives them 0777 & ~umask: with umask 000, others could swap the spool)."""
    missing = []
    parent = os.path.dirname(path)
    while parent and parent != os.path.dirname(parent) and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass


def _valid_run_key(key: str) -> bool:
    """Whether *key* is ``YYYYMMDDTHHMMSSmmmZ`` with a real date and time, as
    :func:`taskq.times.name_key` makes it (a worker turns it back into a time)."""
    if len(key) != 19 or key[8] != "T" or key[18] != "Z" or not key.isascii():
        return False
    digits = key[:8] + key[9:18]
    if not digits.isdigit():
        return False
    try:
        datetime(int(key[:4]), int(key[4:6]), int(key[6:8]), int(key[9:11]), int(key[11:13]), int(key[13:15]))
    except ValueError:
        return False
    return True


class Lock:
    """An flock(2) held on a file; the descriptor can be handed to child processes."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self, remove: bool) -> None:
        """Drop the lock; with *remove*, unlink the file first (safe while we hold it:
        whoever opened the old file finds, after locking it, that it is not the file
        at the path any more, and tries again)."""
        if self.fd < 0:
            return
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = -1


class SpoolDir:
    """A spool directory: layout, atomic publication, listings, locks."""

    def __init__(self, root: str | os.PathLike[str], fsync: bool = True, io: FileIO | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.sync = fsync
        self.io = io or FileIO()

    # -- layout ----------------------------------------------------------------------

    def dir(self, state: str) -> str:
        return os.path.join(self.root, state)

    def path(self, state: str, name: str) -> str:
        return os.path.join(self.root, state, name)

    def exists(self) -> bool:
        return os.path.isdir(os.path.join(self.root, "pending"))

    def require(self) -> None:
        """Raise NoSpoolError unless the spool exists (read commands never create it)."""
        if not self.exists():
            raise NoSpoolError(self.root)

    def create(self) -> None:
        """Create the spool and its six directories (mode 0700) where missing."""
        try:
            _make_parents(self.root)
            os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
            for name in LAYOUT:
                path = self.dir(name)
                if not os.path.isdir(path):
                    try:
                        os.mkdir(path, DIR_MODE)
                    except FileExistsError:
                        pass
        except OSError as exc:
            raise SpoolError(f"cannot create spool at {self.root}: {exc.strerror}") from None
        if not os.access(self.dir("tmp"), os.W_OK):
            raise SpoolError(f"spool at {self.root} is not writable")

    def check_safe(self) -> None:
        """Refuse a spool that another local user could plant jobs in: one owned by
        another user, writable by group or others, or whose state directories are
        symlinks. A worker runs what it finds here, as its own user."""
        uid = os.geteuid()
        for path in [self.root] + [self.dir(name) for name in LAYOUT]:
            try:
                st = os.stat(path) if path == self.root else os.lstat(path)
            except OSError as exc:
                raise SpoolError(f"cannot check {path}: {exc.strerror}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise SpoolError(f"refusing to work on {self.root}: {path} is not a directory")
            if st.st_uid != uid:
                raise SpoolError(f"refusing to work on {self.root}: {path} is owned by uid {st.st_uid}, not {uid}")
            if st.st_mode & 0o022:
                raise SpoolError(
                    f"refusing to work on {self.root}: {path} is writable by "
                    f"{'others' if st.st_mode & 0o002 else 'its group'} (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"chmod go-w it")

    # -- publication -------------------------------------------------------------------

    def stage(self, data: bytes, tag: str = "job") -> str:
        """Write *data* to a fresh file in tmp/ and fsync it; return its path."""
        name = f"{tag}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
        path = self.path("tmp", name)
        try:
            self.io.write_new(path, data, FILE_MODE, self.sync)
        except OSError as exc:
            self._discard(path)
            raise self._error("write", path, exc) from None
        return path

    def publish(self, staged: str, state: str, name: str) -> None:
        """Rename a staged file into *state*/*name* and make the rename durable."""
        dest = self.path(state, name)
        try:
            self.io.rename(staged, dest)
        except OSError as exc:
            self._discard(staged)
            raise self._error("rename into", dest, exc) from None
        self.sync_dir(state)

    def link_new(self, staged: str, state: str, name: str) -> None:
        """Publish a staged file as a new *state*/*name*, never replacing an existing
        file (link(2) fails with EEXIST where rename(2) would overwrite). The caller
        removes the staged name afterwards and fsyncs the directory."""
        dest = self.path(state, name)
        try:
            self.io.link(staged, dest)
        except FileExistsError:
            raise SpoolError(f"cannot publish {dest}: a file of that name exists") from None
        except OSError as exc:
            raise self._error("link into", dest, exc) from None

    def publish_new(self, files: list[tuple[bytes, str]], state: str) -> None:
        """Publish new files (content, name) into *state*, all or nothing: all are
        staged and fsynced first, then linked into place, then the directory is
        fsynced once. On any failure, what was linked is taken back."""
        staged: list[tuple[str, str]] = []
        try:
            for data, name in files:
                staged.append((self.stage(data), name))
        except SpoolError:
            for path, _ in staged:
                self._discard(path)
            raise
        published: list[str] = []
        try:
            for path, name in staged:
                self.link_new(path, state, name)
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
                self._discard(path)

    def write(self, state: str, name: str, data: bytes, tag: str = "job") -> None:
        """Atomically create or replace *state*/*name* with *data* (stage, rename, fsync)."""
        self.publish(self.stage(data, tag), state, name)

    def move(self, src_state: str, src_name: str, dst_state: str, dst_name: str) -> None:
        """One atomic rename between (or within) state directories, made durable.

        Raises FileNotFoundError if the source is gone (another process moved it
        first: the caller lost a race and must not touch the job).
        """
        src, dst = self.path(src_state, src_name), self.path(dst_state, dst_name)
        try:
            self.io.rename(src, dst)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._error("rename to", dst, exc) from None
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
            raise self._error("fsync", path, exc) from None

    def remove(self, state: str, name: str) -> None:
        """Delete a file; a file already gone is fine."""
        path = self.path(state, name)
        try:
            self.io.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._error("delete", path, exc) from None

    def _discard(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    def _error(self, action: str, path: str, exc: OSError) -> SpoolError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return SpoolError(f"cannot {action} {path}: disk full")
        return SpoolError(f"cannot {action} {path}: {exc.strerror or exc}")

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
            if st.st_size > MAX_FILE_BYTES:
                raise SpoolError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                if sum(len(c) for c in chunks) > MAX_FILE_BYTES:
                    raise SpoolError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
            return b"".join(chunks)
        except OSError as exc:
            raise SpoolError(f"cannot read {path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def names(self, state: str, suffix: str = ".json") -> list[str]:
        """Names of the regular, non-hidden ``*.json`` files in *state* (unsorted).

        Symlinks, directories and other non-regular entries are never listed, so
        they are never parsed or run.
        """
        out = []
        try:
            with os.scandir(self.dir(state)) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(".") or not name.endswith(suffix):
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False):
                            out.append(name)
                    except OSError:
                        continue
        except FileNotFoundError:
            raise NoSpoolError(self.root) from None
        except OSError as exc:
            raise SpoolError(f"cannot list {self.dir(state)}: {exc.strerror}") from None
        return out

    def entries(self, state: str) -> Iterator[os.DirEntry[str]]:
        """Regular, non-hidden ``*.json`` entries with their cached stat (for mtimes)."""
        try:
            with os.scandir(self.dir(state)) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.name.endswith(".json"):
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False):
                            yield entry
                    except OSError:
                        continue
        except FileNotFoundError:
            raise NoSpoolError(self.root) from None

    def dir_mtime(self, state: str) -> int:
        """The directory's change stamp (ns), to tell whether a cached listing is stale."""
        return os.stat(self.dir(state)).st_mtime_ns

    def has(self, state: str, name: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path(state, name)).st_mode)
        except OSError:
            return False

    def locate(self, job_id: str) -> tuple[str, str] | None:
        """Find the job *job_id*: its (state, file name), or None.

        A job moves between directories while we look (and may move from one not yet
        looked at into one already looked at), so a miss is believed only after three
        full passes.
        """
        target = f".{job_id}.json"
        target_deps = f".{job_id}.after.json"
        for _ in range(3):
            for state in ("running", "done", "failed"):
                if self.has(state, f"{job_id}.json"):
                    return state, f"{job_id}.json"
            for name in self.names("pending"):
                if name.endswith(target) or name.endswith(target_deps):
                    if parse_pending_name(name):
                        return "pending", name
        return None

    # -- locks -------------------------------------------------------------------------

    def lock_job(self, job_id: str) -> Lock | None:
        """Take the job's run lock (running/ID.lock) without waiting; None if held.

        The lock is held by the worker from before the claim until the job is settled,
        and by every process of the attempt (they inherit the descriptor): a job whose
        lock can be taken has no live worker and no live process.
        """
        return self._flock(self.path("running", f"{job_id}.lock"), blocking=False)

    def lock_key(self, key: str) -> Lock:
        """Take (waiting for it) the lock of a unique key; its file names the holder."""
        keys = os.path.join(self.root, KEYS_DIR)
        try:
            os.mkdir(keys, DIR_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise self._error("create", keys, exc) from None
        import hashlib  # noqa: PLC0415 - only adds with a unique key need it

        digest = hashlib.sha256(key.encode()).hexdigest()
        lock = self._flock(os.path.join(keys, digest), blocking=True)
        assert lock is not None
        return lock

    def drop_keys(self, holders: set[str]) -> int:
        """Remove the unique-key files held by *holders* (purged jobs) or by nobody,
        so keys/ does not grow with every distinct key ever used. A key file in use
        by an ``add`` at this moment is left alone. Returns how many were removed."""
        keys = os.path.join(self.root, KEYS_DIR)
        try:
            names = os.listdir(keys)
        except FileNotFoundError:
            return 0
        removed = 0
        for name in names:
            if name.startswith("."):
                continue
            lock = self._flock(os.path.join(keys, name), blocking=False)
            if lock is None:
                continue
            holder = self.read_lock_file(lock)
            stale = not holder or holder in holders
            removed += stale
            lock.release(remove=stale)
        return removed

    def _flock(self, path: str, blocking: bool) -> Lock | None:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
            except OSError as exc:
                raise self._error("open lock", path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            # The holder we waited for may have removed the file: lock the current one.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return Lock(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    def read_lock_file(self, lock: Lock) -> str:
        os.lseek(lock.fd, 0, os.SEEK_SET)
        return os.read(lock.fd, 4096).decode("utf-8", "replace").strip()

    def write_lock_file(self, lock: Lock, text: str, durable: bool = True) -> None:
        """Record *text* in a held lock's file (a key's holder, durably; an attempt's
        process group, which need not survive a reboot)."""
        try:
            os.ftruncate(lock.fd, 0)
            os.pwrite(lock.fd, text.encode() + b"\n", 0)
            if self.sync and durable:
                self.io.fsync(lock.fd)
        except OSError as exc:
            raise self._error("write", lock.path, exc) from None

    # -- misc --------------------------------------------------------------------------

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def is_paused(self) -> bool:
        return os.path.lexists(os.path.join(self.root, PAUSED_FILE))

    def set_paused(self, paused: bool) -> None:
        path = os.path.join(self.root, PAUSED_FILE)
        try:
            if paused and not os.path.lexists(path):
                self.io.write_new(path, b"", FILE_MODE, self.sync)
            elif not paused and os.path.lexists(path):
                self.io.unlink(path)
            else:
                return
            if self.sync:
                self.io.fsync_dir(self.root)
        except FileExistsError:
            pass
        except OSError as exc:
            raise self._error("update", path, exc) from None

    def read_config(self) -> bytes | None:
        path = os.path.join(self.root, CONFIG_FILE)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SpoolError(f"cannot read {path}: {exc.strerror}") from None

    def log_path(self, job_id: str) -> str:
        return self.path("logs", f"{job_id}.log")

    def read_log(self, job_id: str, offset: int) -> bytes:
        """The job's log from byte *offset* on (empty if it has no log yet)."""
        try:
            fd = os.open(self.log_path(job_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise self._error("read", self.log_path(job_id), exc) from None
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def open_log(self, job_id: str) -> int:
        """Open the job's log for appending (created 0600; never through a symlink)."""
        path = self.log_path(job_id)
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise self._error("open log", path, exc) from None

    def clean_tmp(self, cutoff: float) -> list[str]:
        """Remove staging files last modified before *cutoff*: left-overs of writers
        that died between writing and renaming (no live writer takes that long)."""
        removed = []
        try:
            with os.scandir(self.dir("tmp")) as it:
                for entry in it:
                    try:
                        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed.append(entry.name)
                    except OSError:
                        continue
        except OSError:
            pass
        return removed

    def config_path(self) -> str:
        return os.path.join(self.root, CONFIG_FILE)
