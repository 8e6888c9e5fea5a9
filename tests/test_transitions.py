"""The transition engine and one worker iteration, on real temp spools.

Every state change goes through ``taskq.transitions`` and is reported there once, with
where the job came from and where it went; a worker iteration is ``run_once(now)``,
testable with a fake runner (no process is started) and a given time.
"""

from __future__ import annotations

import json
import os
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


# -- one worker iteration ----------------------------------------------------------------------


def test_run_once_claims_runs_and_settles_with_a_fake_runner(api, tmp_path):
    ok = api.add(["never-run"], priority=5)
    failing = api.add(["never-run"], max_attempts=1)
    later = api.add(["never-run"], delay=3600)
    runner = FakeRunner(by_id={ok.id: Outcome(exit_code=0), failing.id: Outcome(exit_code=3)})
    worker = Worker(api, concurrency=2, runner=runner, stop=StopState(), log=open(os.devnull, "w"))
    worker.begin()
    try:
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
