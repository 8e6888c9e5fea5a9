"""The worker's lease, renewed by a thread of its own (README, "Several hosts").

The thread renews the lease every ``lease_timeout``/3 (every second while renewals
fail). When it finds the lease has run out (it could not renew in time: the host was
frozen, cut off from the server, or another host removed the lease as expired), the
worker fences itself: it claims nothing, stops its attempts at once and settles none
of them (other hosts may be running them again by now), gives up the old lease, and
goes on under a new worker id with a new lease. Its old jobs are then recovered like
those of any dead worker: on this host at once (their run locks are free), on the
others once the old lease is seen gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import SpoolError
from ..spool.leases import Lease, margin
from ..transitions import Transitions

#: Between renewals that fail.
RETRY = 1.0


class LeaseKeeper:
    def __init__(self, transitions: Transitions, timeout: float, event: Callable[[str], None],
                 fence: Callable[[], None]) -> None:
        self.transitions = transitions
        self.timeout = timeout
        self.event = event
        #: Stops every attempt of the worker and returns once they have all ended.
        self.fence = fence
        self.lease = Lease(transitions.store, timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lapsed = False
        #: Whether the lease file exists (it cannot be created on a full disk).
        self.held = False

    def start(self) -> None:
        self._take()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="taskq-lease")
        self._thread.start()

    def _take(self) -> bool:
        try:
            self.lease.register()
        except SpoolError as exc:
            self.event(f"cannot take a lease: {exc}; claiming nothing until it can")
            return False
        self.transitions.hold_lease(self.lease)
        self.held = True
        return True

    def valid(self) -> bool:
        """Whether the worker may claim, start and settle jobs now."""
        return self.held and not self.lapsed and self.lease.valid()

    def stop(self, remove: bool) -> None:
        """Stop renewing; with *remove*, give the lease up (nothing of ours runs)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if remove and self.held and not self.lapsed:
            self.lease.remove()

    def _loop(self) -> None:
        period = max(0.5, min(self.timeout / 3, self.timeout - 2 * margin(self.timeout)))
        wait = period
        while not self._stop.wait(wait):
            if not self.held:
                wait = period if self._take() else RETRY
                continue
            lease = self.lease
            if lease.valid() and lease.renew():
                wait = period
                continue
            if lease.valid():
                self.event(f"cannot renew the lease {lease.path}: trying again in {RETRY:g}s")
                wait = RETRY
                continue
            self._lapse(lease)
            wait = period

    def _lapse(self, lease: Lease) -> None:
        self.lapsed = True
        self.event(f"lease of {lease.uid} lost (not renewed for {lease.since_renewal():.1f}s): "
                   "stopping its jobs without settling them; other workers recover them")
        self.fence()
        lease.remove()
        self.held = False
        self.lease = Lease(self.transitions.store, self.timeout)
        self.lapsed = False
        if self._take():
            self.event(f"working again as worker {self.lease.uid}")
