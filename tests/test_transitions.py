"""The transition engine and one worker iteration, on real temp spools.

Every state change goes through ``taskq.transitions`` and is reported there once, with
where the job came from and where it went; a worker iteration is ``run_once(now)``,
testable with a fake runner (no process is started) and a given time.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import taskq
from taskq import times
from taskq.errors import ValidationError
from taskq.job import Job, Outcome
from taskq.runner import Control
from taskq.spool.joblog import JobLog
from taskq.spool.layout import parse_pending_name
from taskq.spool.store import LOCAL_FILESYSTEMS, Store
from taskq.stopping import StopState
from taskq.transitions import Change
from taskq.worker import Worker
from workerutil import files as ls


@pytest.fixture
def api(tmp_path: Path) -> taskq.Spool:
    return taskq.Spool(tmp_path / "spool")


@pytest.fixture
def changes(api: taskq.Spool) -> list[Change]:
    seen: list[Change] = []
    api.transitions.subscribe(observe=seen.append)
    return seen


def kinds(changes: list[Change]) -> list[tuple[str, str | None, str | None]]:
    return [(c.kind, c.src, c.dst) for c in changes]


class FakeRunner:
    """Runs no process: answers each attempt with the next outcome, and records it."""

    def __init__(self, *outcomes: Outcome, by_id: dict[str, Outcome] | None = None) -> None:
        self.outcomes = list(outcomes)
        self.by_id = by_id or {}  # slot threads run attempts in any order: outcome per job
        self.ran: list[tuple[str, int]] = []

    def __call__(self, job: Job, attempt: int, log: JobLog, lock_fd: int, control: Control) -> Outcome:
        self.ran.append((job.id, attempt))
        log.write(b"fake output\n")
        if job.id in self.by_id:
            return self.by_id[job.id]
        return self.outcomes.pop(0) if self.outcomes else Outcome(exit_code=0)


def settle_threads(worker: Worker) -> None:
    """Wait until every attempt the worker started has ended."""
    deadline = time.monotonic() + 10
    while not all(run.finished for run in worker.running.values()):
        assert time.monotonic() < deadline, "attempts still running"
        time.sleep(0.01)


# -- one report per change ---------------------------------------------------------------------


def test_each_change_is_reported_once_with_its_states(api, changes):
    job = api.add(["true"], max_attempts=2, backoff=0)
    entry = next(e for e in map(parse_pending_name, ls(Path(api.path), "pending")) if e)
    claimed = api.transitions.claim(entry)
    assert claimed is not None
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=1), times.now(), 0.5)  # retry
    entry = next(e for e in map(parse_pending_name, ls(Path(api.path), "pending")) if e)
    claimed = api.transitions.claim(entry)
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=1), times.now(), 0.5)  # failed for good
    api.retry([job.id])
    api.cancel([job.id])
    api.purge("failed")
    assert kinds(changes) == [
        ("enqueue", None, "pending"),
        ("claim", "pending", "running"),
        ("start", "running", "running"),
        ("settle", "running", "pending"),
        ("claim", "pending", "running"),
        ("start", "running", "running"),
        ("settle", "running", "failed"),
        ("retry", "failed", "pending"),
        ("cancel", "pending", "failed"),
        ("purge", "failed", None),
    ]
    assert all(c.job_id == job.id for c in changes)
    assert changes[3].decision is not None and changes[3].decision.state == "pending"


def test_recovery_quarantine_and_drop_in_intake_are_reported(api, changes):
    api.add(["true"])  # creates the spool
    changes.clear()
    (Path(api.path) / "pending" / "dropped.json").write_text(json.dumps({"command": ["true"]}))
    (Path(api.path) / "pending" / "junk.json").write_text("{not json")
    job = api.transitions.normalise("dropped.json", times.now(), "/", {}, {})
    assert job is not None
    assert api.transitions.normalise("junk.json", times.now(), "/", {}, {}) is None
    assert kinds(changes) == [("normalise", "pending", "pending"), ("quarantine", "pending", "failed")]
    # a worker died holding the job: recovery closes the attempt and reports it
    entry = parse_pending_name(
        next(n for n in ls(Path(api.path), "pending") if job.id in n))
    claimed = api.transitions.claim(entry)
    api.transitions.start(claimed, times.now())
    claimed.lock.release(remove=False)
    changes.clear()
    what, decision = api.transitions.recover(job.id, times.now(), 0.5)
    assert what == "worker lost" and decision.state == "pending"
    assert kinds(changes) == [("recover", "running", "pending")]


# -- the attempt in progress, noted beside the record (README, "Durability and speed") ----------


def claim_one(api: taskq.Spool):
    entry = next(e for e in map(parse_pending_name, ls(Path(api.path), "pending")) if e)
    claimed = api.transitions.claim(entry)
    assert claimed is not None
    return claimed


def test_a_started_attempt_is_noted_in_the_lock_file_and_read_back_by_readers(api):
    job = api.add(["true"])
    claimed = claim_one(api)
    attempt = api.transitions.start(claimed, times.now())
    running = Path(api.path) / "running"
    # The record is the one the claim moved, untouched; the attempt is in the lock's file.
    assert json.loads((running / f"{job.id}.json").read_bytes())["attempts"] == []
    note = (running / f"{job.id}.lock").read_text()
    assert f"attempt=1 started={attempt.started_at} worker={attempt.worker}" in note
    api.transitions.record_group(claimed, 4242)
    note = (running / f"{job.id}.lock").read_text()
    assert "attempt=1 " in note and "pgid=4242 " in note
    # Every reader sees the attempt in progress, as if it were in the record.
    shown = api.get(job.id)
    assert [(a.number, a.started_at, a.finished_at) for a in shown.attempts] == [(1, attempt.started_at, None)]
    (row,) = api.status()["running"]
    assert (row["id"], row["attempt"], row["started_at"]) == (job.id, 1, attempt.started_at)
    # The settle writes it into the record, closed, and removes the lock's file.
    api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    record = json.loads((Path(api.path) / "done" / f"{job.id}.json").read_bytes())
    assert [(a["number"], a["started_at"], a["exit_code"]) for a in record["attempts"]] == [
        (1, attempt.started_at, 0)]
    assert ls(Path(api.path), "running") == []


def test_recovery_counts_a_noted_attempt_as_worker_lost(api):
    job = api.add(["true"], max_attempts=3, backoff=0)
    claimed = claim_one(api)
    api.transitions.start(claimed, times.now())
    claimed.lock.release(remove=False)  # the worker died: its lock is free, its note is there
    what, decision = api.transitions.recover(job.id, times.now(), 0.5)
    assert what == "worker lost" and decision.state == "pending"
    record = api.get(job.id)
    assert [(a.number, a.error) for a in record.attempts] == [(1, "worker lost")]


def test_a_stale_note_is_not_read_as_an_attempt(api):
    """A lock's file left by a worker that died after settling attempt 1 still says
    attempt=1: for a record that holds attempt 1 already, that is no attempt in progress."""
    job = api.add(["true"], max_attempts=3, backoff=0)
    claimed = claim_one(api)
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=1), times.now(), 0.5)  # back to pending
    claimed = claim_one(api)  # attempt 1 is in the record now
    lock = Path(api.path) / "running" / f"{job.id}.lock"
    lock.write_text("attempt=1 started=2026-01-01T00:00:00.000Z worker=gone:1\n")
    assert [a.number for a in api.get(job.id).attempts] == [1]
    claimed.lock.release(remove=False)
    what, decision = api.transitions.recover(job.id, times.now(), 0.5)
    # Claimed, never started again: settled by attempt 1's recorded outcome, which is
    # what sent it back to pending; no attempt is added or counted.
    assert (what, decision.state) == ("settled", "pending")
    assert [a.number for a in api.get(job.id).attempts] == [1]


def test_a_note_rewritten_in_place_is_whole_at_every_instant(api):
    """The note is rewritten when the process group is known. A worker SIGKILLed in the
    middle of that must not leave an empty file (the attempt would then look never
    started, and run again uncounted): the new line is written over the old one first
    and the file cut after, and readers take the first line."""
    job = api.add(["true"])
    claimed = claim_one(api)
    attempt = api.transitions.start(claimed, times.now())
    lock = Path(api.path) / "running" / f"{job.id}.lock"
    longer = f"attempt=1 started={attempt.started_at} worker={attempt.worker} pgid=99 boot=b\n".encode()
    os.pwrite(claimed.lock.fd, longer, 0)  # the write, killed before the cut
    assert [a.number for a in api.get(job.id).attempts] == [1]
    # A shorter line over a longer one, cut short the same way: the old tail is ignored.
    shorter = f"attempt=1 started={attempt.started_at} worker=w:1\n".encode()
    os.pwrite(claimed.lock.fd, shorter, 0)
    assert lock.read_bytes().startswith(shorter) and len(lock.read_bytes()) > len(shorter)
    (noted,) = api.get(job.id).attempts
    assert (noted.number, noted.worker) == (1, "w:1")
    assert claimed.lock.read() == shorter.decode().strip()
    # The real rewrite leaves exactly the new line.
    api.transitions.record_group(claimed, 4242)
    assert lock.read_text().count("\n") == 1 and "pgid=4242 " in lock.read_text()


# -- one worker iteration ----------------------------------------------------------------------


@pytest.mark.parametrize("settle_in_slot", [True, False], ids=["slot-settles", "settler-threads"])
def test_run_once_claims_runs_and_settles_with_a_fake_runner(api, tmp_path, settle_in_slot):
    ok = api.add(["never-run"], priority=5)
    failing = api.add(["never-run"], max_attempts=1)
    later = api.add(["never-run"], delay=3600)
    runner = FakeRunner(by_id={ok.id: Outcome(exit_code=0), failing.id: Outcome(exit_code=3)})
    worker = Worker(api, concurrency=2, runner=runner, stop=StopState(), log=open(os.devnull, "w"),
                    settle_in_slot=settle_in_slot)
    worker.begin()
    try:
        settlers = [t for t in worker._threads if t.name.startswith("taskq-settle-")]
        assert len(settlers) == (0 if settle_in_slot else 2)
        now = times.now()
        assert worker.run_once(now)
        settle_threads(worker)
        assert sorted(runner.ran) == sorted([(ok.id, 1), (failing.id, 1)])
        assert worker.run_once(now)  # reaps the finished attempts
        assert not worker.running
        assert api.get(ok.id).state == "done"
        assert api.get(failing.id).state == "failed"
        assert api.get(failing.id).last_error == "exit status 3"
        assert api.read_log(ok.id).endswith(b"fake output\n")
        # the scheduled job runs when its time is given, not before
        assert worker.run_once(now) and not worker.running
        assert worker.run_once(now + 3601)
        settle_threads(worker)
        assert runner.ran[-1] == (later.id, 1)
    finally:
        worker.close()


class GatedRunner:
    """Starts no process but says it did (``on_spawn``), as the real runner does once
    the child exists; a job with a gate then waits for it to be set."""

    def __init__(self, gates: dict[str, threading.Event]) -> None:
        self.gates = gates

    def __call__(self, job: Job, attempt: int, log: JobLog, lock_fd: int, control: Control) -> Outcome:
        if control.on_spawn is not None:
            control.on_spawn(os.getpgid(0))
        gate = self.gates.get(job.id)
        if gate is not None:
            assert gate.wait(10)
        return Outcome(exit_code=0)


def test_a_free_slot_gets_work_while_an_earlier_attempt_still_awaits_its_settle(api):
    """A slot whose attempt ended claims the next job and hands the ended one to a
    settler. If the slot then goes idle while the settler is still at it, the main
    thread must still see a free slot (the job awaiting its settle holds none), and
    the settler must wake it when that job is settled: otherwise news of pending/
    waits for the main thread's next periodic wake-up, a second later."""
    long = api.add(["never-run"], priority=9)
    first = api.add(["never-run"], priority=5)
    second = api.add(["never-run"], priority=1)
    gates = {long.id: threading.Event()}
    settle_gate = threading.Event()
    worker = Worker(api, concurrency=2, runner=GatedRunner(gates), stop=StopState(), log=open(os.devnull, "w"),
                    settle_in_slot=False)  # the settle handed to a settler thread, as on NFS
    worker.begin()
    assert worker._attempts is not None
    settle = worker._attempts.settle

    def slow_settle(ended):  # the disk is slow for the first job's settle only
        if ended.claimed.job.id == first.id:
            assert settle_gate.wait(10)
        settle(ended)

    worker._attempts.settle = slow_settle  # type: ignore[method-assign]
    try:
        assert worker.run_once(times.now())  # long and first start; first's slot goes on to second
        deadline = time.monotonic() + 10
        while not (second.id in worker.running and worker.running[second.id].finished):
            assert time.monotonic() < deadline, "the second job was not run and settled"
            time.sleep(0.01)
        assert not worker.running[first.id].finished  # its settle is held up
        third = api.add(["never-run"])
        assert worker.run_once(times.now())
        assert third.id in worker.running, "the idle slot was given nothing"
        while not worker.running[third.id].finished:
            assert time.monotonic() < deadline, "the third job was not run and settled"
            time.sleep(0.01)
        worker._wait(0)  # the wake-ups so far are consumed
        settle_gate.set()
        ready, _, _ = select.select([worker._wake_r], [], [], 10)
        assert ready, "the settler did not wake the main thread"
        assert api.get(first.id).state == "done"
    finally:
        settle_gate.set()
        gates[long.id].set()
        settle_threads(worker)
        worker.close()


def test_burst_run_once_says_stop_when_nothing_is_left(api):
    api.add(["never-run"])
    worker = Worker(api, burst=True, runner=FakeRunner(), stop=StopState(), log=open(os.devnull, "w"))
    worker.begin()
    try:
        now = times.now()
        assert worker.run_once(now)  # claims and starts it
        settle_threads(worker)
        assert worker.run_once(now) is False  # reaped; nothing ready, nothing running
    finally:
        worker.close()


@pytest.mark.parametrize("options, field", [
    ({"concurrency": 0}, "--concurrency"),
    ({"concurrency": -1}, "--concurrency"),
    ({"max_jobs": 0}, "--max-jobs"),
    ({"grace": -1.0}, "--grace"),
])
def test_worker_refuses_what_the_cli_refuses(api, options, field):
    with pytest.raises(ValidationError, match=field):
        Worker(api, burst=True, stop=StopState(), **options)


def test_a_worker_settles_in_its_slots_on_a_local_filesystem_only(api, tmp_path):
    """The spool's filesystem decides who settles an ended attempt: the slot itself
    on a local one, settler threads on any other (a network filesystem may make a
    settle wait for a server; the slot must stay free to supervise its attempt)."""
    worker = Worker(api, stop=StopState(), log=open(os.devnull, "w"))
    try:
        worker.begin()
        kind = worker.store.filesystem_type()
        assert kind is not None
        assert worker.settle_in_slot == (kind in LOCAL_FILESYSTEMS)
    finally:
        worker.close()
    found = shutil.which("findmnt")
    if found is not None:  # util-linux's answer for the same path
        out = subprocess.run([found, "-n", "-o", "FSTYPE", "--target", api.path], capture_output=True, text=True)
        assert out.stdout.strip() == kind


def test_mount_points_with_escapes_are_read_as_paths(tmp_path, monkeypatch):
    """/proc/self/mountinfo writes a space in a mount point as \\040: the longest
    mount point holding the spool is found all the same, and its type taken."""
    spool = tmp_path / "a b" / "spool"
    spool.mkdir(parents=True)
    inside = str(tmp_path / "a b").replace(" ", "\\040")
    table = (f"22 1 8:1 / / rw - ext4 /dev/vda rw\n"
             f"40 22 0:50 / {inside} rw,nosuid - nfs4 server:/x rw\n"
             f"41 22 0:51 / {inside}x rw - tmpfs tmpfs rw\n")
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/self/mountinfo":
            return io.StringIO(table)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert Store(str(spool)).filesystem_type() == "nfs4"
    assert Store(str(tmp_path)).filesystem_type() == "ext4"
