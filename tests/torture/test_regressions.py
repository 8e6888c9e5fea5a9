"""Regression tests for faults the crash torture and load runs found.

1. A ready job whose run lock was busy at the moment a worker tried to claim it was
   dropped from that worker's index for good, though it was still in pending/. The
   lock of a job back in pending/ is busy for a moment after every retry: the worker
   that settled it moves it to pending/ and only then lets go of the lock, and its own
   main thread and every other worker see the new file at once (inotify). With a
   retry ready at once (``--backoff 0``, or a job interrupted by a worker's shutdown)
   every worker could drop it, and the job stayed pending until a worker restarted.
2. A worker killed after settling a job but before letting go of its lock left
   ``running/ID.lock`` behind for ever (nothing removed lock files with no job).
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import time

from .support import drained, jsons, listing, started, wait_until


def test_ready_job_is_claimed_once_its_busy_lock_is_free(taskq, spool, tmp_path, fleets):
    """Deterministic: the test holds the job's run lock while it puts the job back in
    pending/, as a settling worker does, and lets go of it a second later."""
    out = tmp_path / "ran"
    job = taskq.add("/bin/sh", "-c", f'echo "$TASKQ_JOB_ID" >> "{out}"', options=["--delay", "1h"])
    fleet = fleets(spool, "workers")
    w = fleet.start("--concurrency", "2")
    assert wait_until(lambda: started(w), 15), w.stderr()
    (delayed,) = jsons(spool, "pending")

    lock_fd = os.open(spool / "running" / f"{job}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        # claim it, as a worker does: pending -> running
        os.rename(spool / "pending" / delayed, spool / "running" / f"{job}.json")
        rec = json.loads((spool / "running" / f"{job}.json").read_bytes())
        rec["run_at"] = "2000-01-01T00:00:00.000Z"
        staged = spool / "tmp" / "regression.tmp"
        staged.write_text(json.dumps(rec))
        os.rename(staged, spool / "running" / f"{job}.json")
        # settle it back to pending/, ready now, still holding the lock
        prio, _, _, ext = delayed.split(".")
        os.rename(spool / "running" / f"{job}.json",
                  spool / "pending" / f"{prio}.20000101T000000000Z.{job}.{ext}")
        time.sleep(1.0)  # the worker sees it at once and finds the lock busy
        assert not out.exists()
    finally:
        os.unlink(spool / "running" / f"{job}.lock")
        os.close(lock_fd)
    assert wait_until(lambda: (spool / "done" / f"{job}.json").exists(), 5.0), (
        f"the job stayed in {listing(spool, 'pending')} with an idle worker\n{w.stderr()}")
    assert out.read_text().split() == [job]


def test_retries_ready_at_once_are_never_stranded_between_workers(taskq, spool, tmp_path, fleets):
    """The real-world form: two workers, jobs that fail their first attempt and are
    retried at once (``--backoff 0``); the live workers must run every retry without
    a restart."""
    out = tmp_path / "ran"
    n = 150
    cmd = ["/bin/sh", "-c", f'echo "$TASKQ_JOB_ID $TASKQ_ATTEMPT" >> "{out}"; [ "$TASKQ_ATTEMPT" -ge 2 ]']
    batch = "".join(json.dumps({"command": cmd, "backoff": 0, "max_attempts": 5}) + "\n" for _ in range(n))
    ids = taskq("add", "--batch", "-", input=batch, check=True).stdout.split()
    fleet = fleets(spool, "workers")
    ws = [fleet.start("--concurrency", "2") for _ in range(2)]
    ok = wait_until(lambda: drained(spool), 40.0, interval=0.1)
    assert ok, (f"still pending with two live workers: {jsons(spool, 'pending')[:5]}\n"
                + "".join(w.stderr()[-2000:] for w in ws))
    assert all(w.proc.poll() is None for w in ws)
    assert sorted(listing(spool, "done")) == sorted(f"{i}.json" for i in ids)
    counts = collections.Counter(tuple(line.split()) for line in out.read_text().splitlines())
    assert set(counts) == {(i, a) for i in ids for a in ("1", "2")}
    assert set(counts.values()) == {1}


def test_lone_burst_worker_runs_its_own_retries_ready_at_once(taskq, spool, tmp_path):
    """``--burst`` must not exit while a job it has just put back in pending/ is ready."""
    out = tmp_path / "ran"
    cmd = ["/bin/sh", "-c", f'echo "$TASKQ_JOB_ID $TASKQ_ATTEMPT" >> "{out}"; [ "$TASKQ_ATTEMPT" -ge 3 ]']
    batch = "".join(json.dumps({"command": cmd, "backoff": 0, "max_attempts": 5}) + "\n" for _ in range(40))
    ids = taskq("add", "--batch", "-", input=batch, check=True).stdout.split()
    taskq("work", "--burst", "--concurrency", "2", check=True, timeout=60)
    assert jsons(spool, "pending") == []
    assert sorted(listing(spool, "done")) == sorted(f"{i}.json" for i in ids)
    assert len(out.read_text().splitlines()) == 3 * len(ids)


def test_lock_files_without_a_job_are_removed_unless_held(taskq, spool, tmp_path):
    job = taskq.add("true")
    taskq("work", "--burst", check=True)
    assert listing(spool, "running") == []
    # as left by a worker SIGKILLed between settling the job and letting go of its lock
    (spool / "running" / f"{job}.lock").write_text("pgid=12345 boot=x\n")
    (spool / "running" / "01ORPHAN0000000000000000AA.lock").write_text("")
    held = spool / "running" / "01HELD00000000000000000000.lock"
    fd = os.open(held, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        taskq("work", "--burst", check=True)
        assert listing(spool, "running") == [held.name]  # held: someone owns it
    finally:
        os.close(fd)
    taskq("work", "--burst", check=True)
    assert listing(spool, "running") == []
    assert listing(spool, "done") == [f"{job}.json"]
