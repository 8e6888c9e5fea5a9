"""Workers' leases: how a worker on one host tells a live worker of another host from
a dead one, when the spool is on a filesystem several hosts share (README, "Several
hosts").

On one host a job's run lock (flock) and its process group say whether its worker
is alive. Across hosts neither does: an NFS client's flock is not seen by another
client, and a process id means nothing on another machine. So each worker holds a
*lease*, ``leases/WORKER.lease``, whose mtime it renews every ``lease_timeout``/3 by
setting it to "now" (``utime`` with no time: on NFS the server stamps it with its own
clock). A lease is *expired* when it is older than ``lease_timeout`` **by the server's
clock**: the judge's own latest renewal gives the server's time (its lease's new
mtime), advanced by the judge's monotonic clock since then. No wall clock of any host
is compared with another's, so a host whose clock is minutes off never takes over a
live worker's jobs early.

A worker that could not renew for ``lease_timeout`` minus a margin fences itself
(:meth:`Lease.valid` turns False before any other host may take over): it stops
claiming, stops its jobs and settles none of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from ..errors import SpoolError
from ..ids import host_id, host_of, is_worker_uid, new_worker_uid, pid_of
from . import layout
from .store import Store, io_error


def clock() -> float:
    """Seconds on a clock that never jumps and keeps counting while this host is
    frozen or suspended (a paused VM, a stopped process group): a lease's age as its
    holder sees it must include such a pause."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


def margin(timeout: float) -> float:
    """How much sooner than other hosts a worker considers its own lease lost: their
    view of its mtime may be up to an attribute cache's time older (1 s on the NFS
    setups of the README), and renewals take time."""
    return max(1.0, timeout / 5)


class Lease:
    """This worker's lease (one per ``taskq work`` process)."""

    def __init__(self, store: Store, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self.uid = new_worker_uid()
        self.host = host_id()
        #: The server's time at the last successful renewal, and our clock() then
        #: (taken before the renewal began: the lease looks no younger than it is).
        self._server = 0.0
        self._at = -float("inf")

    @property
    def path(self) -> str:
        return os.path.join(self.store.top(layout.LEASES), layout.lease_file(self.uid))

    def register(self) -> None:
        """Create the lease file (empty: its name says whose it is) and renew it."""
        directory = self.store.top(layout.LEASES)
        try:
            self.store.mkdir(directory)
            self.store.io.create_empty(self.path, layout.FILE_MODE)
        except OSError as exc:
            raise io_error("create lease", self.path, exc) from None
        if not self.renew():
            self.store.discard(self.path)
            raise SpoolError(f"cannot renew the lease {self.path}")

    def renew(self) -> bool:
        """Stamp the lease with the server's time; False if that failed (the file is
        gone: another host found it expired and removed it; or an I/O error)."""
        began = clock()
        try:
            os.utime(self.path, None)
            stamp = os.stat(self.path).st_mtime
        except OSError:
            return False
        self._server, self._at = stamp, began
        return True

    def valid(self) -> bool:
        """Whether no other host may have taken this worker's jobs over yet."""
        return clock() - self._at < self.timeout - margin(self.timeout)

    def since_renewal(self) -> float:
        return clock() - self._at

    def server_now(self) -> float:
        """The server's time now, from the last renewal (see the module's docstring)."""
        return self._server + (clock() - self._at)

    def remove(self) -> None:
        """At a clean exit: nothing of ours is running any more."""
        self.store.discard(self.path)


class Judge:
    """Judges other workers' leases by the server's time: a worker's :class:`Lease`,
    or for a command that has none (``taskq cancel``) a probe file written in tmp/."""

    def __init__(self, store: Store, timeout: float, lease: Lease | None = None) -> None:
        self.store = store
        self.timeout = timeout
        self.lease = lease
        self.host = host_id()
        self._probe: tuple[float, float] | None = None

    def server_now(self) -> float:
        if self.lease is not None:
            return self.lease.server_now()
        if self._probe is None:
            self._probe = (probe_server_time(self.store), clock())
        stamp, at = self._probe
        return stamp + (clock() - at)

    def is_local(self, uid: str) -> bool:
        return host_of(uid) == self.host

    def age(self, uid: str) -> float | None:
        """How old *uid*'s lease is by the server's clock; None if it has none.
        SpoolError if that cannot be known (an I/O error): never taken for "none",
        which would let a live worker's jobs be taken over."""
        path = os.path.join(self.store.top(layout.LEASES), layout.lease_file(uid))
        try:
            # open + fstat, not stat: an NFS client revalidates a file's attributes
            # when it is opened (close-to-open), where stat may answer from its cache.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise io_error("open", path, exc) from None
        try:
            mtime = os.fstat(fd).st_mtime
        except OSError as exc:
            raise io_error("stat", path, exc) from None
        finally:
            os.close(fd)
        return max(0.0, self.server_now() - mtime)

    def alive(self, uid: str) -> bool:
        """Whether worker *uid* may still be at work on jobs it holds: its lease is
        live, and on this host its process too. A worker with no lease is not alive.
        The judging worker itself is not: a job of its own that it is not running
        (its settle failed) is its to recover."""
        if self.lease is not None and uid == self.lease.uid:
            return False
        if not is_worker_uid(uid):
            return False
        if self.is_local(uid) and not _pid_alive(pid_of(uid)):
            return False
        age = self.age(uid)
        return age is not None and age < self.timeout

    def reap(self) -> list[str]:
        """Remove the lease files of workers gone for good: another host's expired
        for twice ``lease_timeout`` (well past any takeover), this host's whose process
        is gone. Returns their ids."""
        gone = []
        for uid in lease_holders(self.store):
            if self.lease is not None and uid == self.lease.uid:
                continue
            if self.is_local(uid):
                dead = not _pid_alive(pid_of(uid))
            else:
                try:
                    age = self.age(uid)
                except SpoolError:
                    continue  # unknown: left for a later pass
                dead = age is not None and age > 2 * self.timeout
            if dead:
                self.store.discard(os.path.join(self.store.top(layout.LEASES), layout.lease_file(uid)))
                gone.append(uid)
        return gone


def lease_holders(store: Store) -> Iterator[str]:
    """The worker ids that have a lease file."""
    try:
        names = os.listdir(store.top(layout.LEASES))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise io_error("list", store.top(layout.LEASES), exc) from None
    for name in names:
        uid = layout.stem(name, layout.LEASE)
        if uid is not None and is_worker_uid(uid):
            yield uid


def probe_server_time(store: Store) -> float:
    """The server's time now: the mtime of a new file in tmp/ (then removed)."""
    path = store.path(layout.TMP, layout.staging_name("probe"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, layout.FILE_MODE)
    except OSError as exc:
        raise io_error("create", path, exc) from None
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        store.discard(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
