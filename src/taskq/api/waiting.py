"""``taskq wait``: block until jobs are settled, woken by inotify on done/ and failed/
(a one-second poll bounds a missed event; a tenth of a second without inotify)."""

from __future__ import annotations

import select
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import times
from ..ids import check_id
from ..spool import layout
from ..watch import Watcher
from .inspect import dropins, get

if TYPE_CHECKING:
    from . import Spool


def wait(spool: Spool, job_ids: Sequence[str], timeout: float | None) -> dict[str, str]:
    for job_id in job_ids:
        check_id(job_id)
    spool.require()
    known = _known_ids(spool)
    for job_id in set(job_ids) - known:
        get(spool, job_id)  # JobNotFoundError, after looking again (it may be moving)
    watcher = Watcher()
    for state in layout.SETTLED:
        watcher.add(spool.store.dir(state), state, added_only=True)
    deadline = None if timeout is None else times.now() + timeout
    settled: dict[str, str] = {}
    wanted = set(job_ids)
    try:
        while True:
            for job_id in wanted - settled.keys():
                for state in layout.SETTLED:
                    if spool.store.has(state, layout.job_file(job_id)):
                        settled[job_id] = state
            if len(settled) == len(wanted):
                return settled
            left = None if deadline is None else deadline - times.now()
            if left is not None and left <= 0:
                raise TimeoutError(f"{len(wanted) - len(settled)} job(s) not settled")
            step = 1.0 if watcher.available else 0.1
            if left is not None:
                step = min(step, left)
            if not watcher.available:
                time.sleep(step)
            elif select.select([watcher.fd], [], [], step)[0]:  # done/ or failed/ changed
                watcher.read()
    finally:
        watcher.close()


def _known_ids(spool: Spool) -> set[str]:
    """The ids of every job, from one listing of each directory and one reading of
    each drop-in file (drop-ins first: they move on into running/, then pending/)."""
    known = {job.id for job in dropins(spool) if job.id}
    for state in layout.STATES:
        known.update(spool.jobs.ids(state))
    return known
