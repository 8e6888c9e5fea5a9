"""Purge also forgets the unique keys of the jobs it deletes, so keys/ does not grow
with every distinct key ever used, while keys of live jobs keep working."""

from __future__ import annotations

import os

import taskq


def _done(spool: taskq.Spool, job_id: str) -> None:
    """Move a pending job to done/ as a worker would (the test needs no process)."""
    state, name = spool.jobs.locate(job_id)
    assert state == "pending"
    spool.store.move("pending", name, "done", f"{job_id}.json")


def test_purge_removes_the_key_files_of_purged_jobs_only(tmp_path):
    spool = taskq.Spool(tmp_path / "spool")
    old = spool.add(["true"], unique_key="report-2026-11-27")
    live = spool.add(["true"], unique_key="report-2026-11-28")
    _done(spool, old.id)
    keys = tmp_path / "spool" / "keys"
    assert len(os.listdir(keys)) == 2

    assert spool.purge("done") == [old.id]

    assert len(os.listdir(keys)) == 1
    # the live job still holds its key; the purged one's key is free again
    assert spool.add(["true"], unique_key="report-2026-11-28").id == live.id
    again = spool.add(["true"], unique_key="report-2026-11-27")
    assert not again.duplicate and again.id != old.id
