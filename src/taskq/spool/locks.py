"""Locks: a job's run lock and the unique-key locks, as flock(2) on small files.

* ``running/ID.lock`` is held by the worker from before the claim until the job is
  settled, and by every process of the attempt (they inherit the descriptor): a job
  whose lock can be taken has no live worker and no live process. Its content notes
  the attempt's process group (:func:`taskq.spool.jobs.JobStore.attempt_group`).
* ``keys/<sha256 of the key>`` is held while an ``add`` or ``retry`` decides whether a
  key is free; its content names the job that holds the key. flock does not reach
  across the hosts of a shared filesystem, so whoever holds it also makes
  ``keys/<sha256>.excl`` (a link(2), exclusive on NFS too) for that moment, and
  removes it after; one left by a process that died is broken once it is
  :data:`KEY_MUTEX_STALE` seconds old by the server's clock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ..errors import SpoolError
from . import layout
from .fileio import VANISHED
from .store import Store, io_error

#: A key's ``.excl`` file older than this (by the server's clock) was left by a
#: process that died while deciding about the key: an ``add`` holds it for
#: milliseconds.
KEY_MUTEX_STALE = 30.0
#: Opens of a lock file retried after ENOENT/ESTALE (see :func:`take`).
STALE_RETRIES = 5
EXCL = ".excl"

class Lock:
    """An flock(2) held on a file; the descriptor can be handed to child processes."""

    def __init__(self, store: Store, path: str, fd: int) -> None:
        self.store = store
        self.path = path
        self.fd = fd
        #: The file that makes the lock exclusive across hosts too (unique keys).
        self.mutex: str | None = None

    def read(self) -> str:
        """What the lock's file says: its first line (see ``FileIO.overwrite``). Under
        a cross-host mutex, read from a new descriptor: an NFS client refreshes a
        file's content when it is opened, and this one was opened before another
        host's write was known to be done."""
        if self.mutex is not None:
            fresh = self._read_fresh()
            if fresh is not None:
                return fresh
        os.lseek(self.fd, 0, os.SEEK_SET)
        return os.read(self.fd, 4096).decode("utf-8", "replace").split("\n", 1)[0].strip()

    def _read_fresh(self) -> str | None:
        """The file's first line as the server has it now, or None if that cannot be
        had. A client may answer a file's size from its attribute cache even on a
        new open (an NFS mount without close-to-open, a FUSE client), and read no
        further than that size; a new name linked to the file is looked up at the
        server, whose answer refreshes the cached attributes."""
        probe = self.store.path(layout.TMP, layout.staging_name("key"))
        for attempt in range(3):
            try:
                self.store.io.link(self.path, probe)
            except OSError:
                time.sleep(0.01 * (attempt + 1))
                continue
            try:
                fd = os.open(probe, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    return os.read(fd, 4096).decode("utf-8", "replace").split("\n", 1)[0].strip()
                finally:
                    os.close(fd)
            except OSError:
                return None
            finally:
                self.store.discard(probe)
        return None

    def write(self, text: str, durable: bool = True) -> None:
        """Record *text* in the lock's file (a key's holder, durably; an attempt's
        process group, which need not survive a reboot)."""
        try:
            self.store.io.overwrite(self.fd, text.encode() + b"\n")
            if self.store.sync and durable:
                self.store.io.fsync(self.fd)
        except OSError as exc:
            raise io_error("write", self.path, exc) from None

    def release(self, remove: bool) -> None:
        """Drop the lock; with *remove*, unlink the file first (safe while we hold it:
        whoever opened the old file finds, after locking it, that it is not the file
        at the path any more, and tries again). A file that cannot be removed stays:
        the next owner or recovery removes it."""
        if self.fd < 0:
            return
        if remove:
            self.store.discard(self.path)
        if self.mutex is not None:
            self.store.discard(self.mutex)
            self.mutex = None
        os.close(self.fd)
        self.fd = -1


def take(store: Store, path: str, blocking: bool) -> Lock | None:
    """Lock *path* (created if missing); None if *blocking* is False and it is held."""
    stale = 0
    while True:
        try:
            fd = store.io.open_lock(path, layout.FILE_MODE)
        except OSError as exc:
            # On NFS, a name another host has just removed can still be in this
            # client's cache: the open fails (ENOENT, ESTALE, ...) although O_CREAT
            # would make it. Looked up again, it is gone, and the next open creates it.
            if exc.errno in VANISHED:
                # Without waiting, a few quick tries; then the lock is as good as busy
                # (its holder has just let go of it). Waiting, as long as such a cache
                # may last.
                if stale < (STALE_RETRIES if not blocking else 100):
                    stale += 1
                    time.sleep(min(0.002 * stale, 0.02))
                    continue
                if not blocking:
                    return None
            raise io_error("open lock", path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        # The holder we waited for may have removed the file: lock the current one.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return Lock(store, path, fd)
        except OSError as exc:
            if exc.errno not in VANISHED:
                os.close(fd)
                raise io_error("stat", path, exc) from None
        os.close(fd)


def run_lock(store: Store, job_id: str) -> Lock | None:
    """Take the job's run lock without waiting; None if it is held."""
    return take(store, store.path("running", layout.lock_file(job_id)), blocking=False)


def key_lock(store: Store, key: str) -> Lock:
    """Take (waiting for it) the lock of a unique key; its file names the holder."""
    keys = store.top(layout.KEYS)
    try:
        store.mkdir(keys)
    except OSError as exc:
        raise io_error("create", keys, exc) from None
    lock = take(store, os.path.join(keys, layout.key_file(key)), blocking=True)
    assert lock is not None  # a blocking take always returns a lock
    try:
        lock.mutex = _exclusive(store, lock.path + EXCL)
    except BaseException:
        lock.release(remove=False)
        raise
    return lock


def _exclusive(store: Store, path: str) -> str:
    """Make *path* exist, as a link to a new file of ours, waiting while another
    host's process has it; break it if it is stale (see the module's docstring).
    Returns *path*. link(2) rather than O_EXCL: some NFS clients make an exclusive
    create out of a lookup and a create, two requests that two clients can both win;
    a link is one request, which the server refuses if the name exists."""
    mine = store.path(layout.TMP, layout.staging_name("excl"))
    try:
        store.io.create_empty(mine, layout.FILE_MODE)
    except OSError as exc:
        raise io_error("create", mine, exc) from None
    try:
        return _link_when_free(store, mine, path)
    finally:
        store.discard(mine)


def _link_when_free(store: Store, mine: str, path: str) -> str:
    delay = 0.002
    while True:
        try:
            store.io.link(mine, path)
            return path
        except FileExistsError:
            pass
        except OSError as exc:
            # ESTALE: this client still had the name of a file another host has just
            # removed. Looked up again, the name is free or taken: try again.
            if exc.errno != errno.ESTALE:
                raise io_error("link", path, exc) from None
        try:
            age = _server_age(store, path)
        except FileNotFoundError:
            continue  # let go of just now: try again at once
        if age > KEY_MUTEX_STALE:
            store.discard(path)
            continue
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _server_age(store: Store, path: str) -> float:
    from .leases import probe_server_time  # noqa: PLC0415 - only when a key is contended

    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(path) from None
        raise io_error("stat", path, exc) from None
    return probe_server_time(store) - mtime


def drop_keys(store: Store, holders: set[str]) -> int:
    """Remove the unique-key files held by *holders* (purged jobs) or by nobody, so
    keys/ does not grow with every distinct key ever used. A key file in use by an
    ``add`` at this moment is left alone. Returns how many were removed."""
    removed = 0
    for name in key_names(store):
        try:
            lock = try_key(store, name)
        except SpoolError:
            continue
        if lock is None:
            continue
        holder = lock.read()
        stale = not holder or holder in holders
        removed += stale
        lock.release(remove=stale)
    return removed


def key_names(store: Store) -> list[str]:
    """The names of the unique-key files (none when keys/ does not exist)."""
    try:
        return [name for name in os.listdir(store.top(layout.KEYS))
                if not name.startswith(".") and not name.endswith(EXCL)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise io_error("list", store.top(layout.KEYS), exc) from None


def try_key(store: Store, name: str) -> Lock | None:
    """Take the lock of the key file *name* without waiting; None while an ``add`` or
    ``retry`` holds it (it is deciding about that key at this moment)."""
    return take(store, os.path.join(store.top(layout.KEYS), name), blocking=False)
