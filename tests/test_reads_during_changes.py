"""No read fails or misses a job because a state change is in progress, and every
reader judges a job the same way (status, list, show, explain, wait, the Python API).

Black-box where a user would see it (the installed ``taskq``, real workers); the
intermediate states are also built exactly, on real temp spools.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import taskq as taskq_api
from taskq import times
from taskq.errors import JobNotFoundError
from taskq.job import Outcome
from taskq.spool.layout import parse_pending_name
from taskq.spool.store import Store


def drop(spool: Path, name: str, record: dict, mtime: float | None = None) -> Path:
    """The drop-in protocol: write in tmp/, rename into pending/."""
    tmp = spool / "tmp" / f"{name}.part"
    tmp.write_text(json.dumps(record))
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    dest = spool / "pending" / f"{name}.json"
    os.rename(tmp, dest)
    return dest


def test_a_drop_in_half_taken_in_reads_as_the_pending_job_it_will_be(taskq, spool):
    """What a worker's intake leaves for an instant: the raw file as running/ID.json."""
    taskq("add", "--", "true", check=True)
    dropped = time.time() - 120
    raw = spool / "running" / "invoice-7.json"
    raw.write_text(json.dumps({"id": "invoice-7", "command": ["echo", "hi"], "priority": 2}))
    os.utime(raw, (dropped, dropped))
    status = taskq.json("status", "--json")
    assert status["counts"]["running"] == 0 and status["counts"]["pending"] == 2
    assert status["running"] == [] and status["ready"] == 2
    shown = taskq.json("show", "invoice-7", "--json")
    assert (shown["state"], shown["priority"], shown["command"]) == ("pending", 2, ["echo", "hi"])
    assert abs(times.parse_iso(shown["created_at"]) - dropped) < 0.01
    listed = taskq.json("list", "--json")
    assert "invoice-7" in [job["id"] for job in listed]
    assert taskq("explain", "invoice-7", check=True).stdout.startswith("invoice-7 is pending")
    proc = taskq("wait", "invoice-7", "--timeout", "0.2")
    assert proc.returncode == 124, proc.stderr  # not settled: a timeout, not "no job"


def test_a_job_file_that_is_not_valid_is_listed_not_fatal(taskq, spool):
    taskq("add", "--", "true", check=True)
    bad = "0999999999.20200101T000000000Z.BROKEN.json"
    (spool / "pending" / bad).write_text('{"command": ["x"], "cwd": 17, "created_at": "x", "run_at": "x"}')
    listed = taskq.json("list", "--json")
    (broken,) = [job for job in listed if job["id"] == "BROKEN"]
    assert broken["state"] == "pending" and "not a valid job" in broken["last_error"]
    assert taskq("status", check=True).returncode == 0
    taskq("work", "--burst", check=True)
    assert taskq.json("show", "BROKEN", "--json")["state"] == "failed"


def test_a_drop_in_without_an_id_is_listed_by_its_file(taskq, spool):
    taskq("add", "--", "true", check=True)
    drop(spool, "anonymous", {"command": ["echo", "no id yet"]})
    listed = taskq.json("list", "--json")
    (anon,) = [job for job in listed if job["id"] is None]
    assert anon["file"] == "pending/anonymous.json"
    assert (anon["state"], anon["command"]) == ("pending", ["echo", "no id yet"])
    human = taskq("list", check=True).stdout
    assert "pending/anonymous.json" in human
    taskq("work", "--burst", check=True)
    assert all(job["id"] for job in taskq.json("list", "--json"))


def test_a_drop_in_keeps_its_created_at_when_taken_in(taskq, spool):
    taskq("add", "--", "true", check=True)
    dropped = time.time() - 3600
    drop(spool, "report", {"id": "report-1", "command": ["true"]}, mtime=dropped)
    before = taskq.json("show", "report-1", "--json")["created_at"]
    taskq("work", "--burst", check=True)
    after = taskq.json("show", "report-1", "--json")
    assert after["state"] == "done"
    assert after["created_at"] == before
    assert abs(times.parse_iso(before) - dropped) < 0.01


def test_reads_while_a_worker_takes_in_many_drop_ins(taskq, spool):
    """Readers polled during intake never fail, and wait sees every drop-in job."""
    taskq("add", "--", "true", check=True)
    count = 600
    for i in range(count):
        drop(spool, f"d{i:04d}", {"id": f"drop-{i}", "command": ["true"]})
    ids = [f"drop-{i}" for i in range(count)]
    waiter = taskq.popen("wait", *ids[:200], "--timeout", "120")
    # its event lines go to a file: a full pipe would block it
    worker = taskq.popen("work", "--burst", "--concurrency", "2", stderr=open(spool.parent / "worker.log", "w"))
    failures: list[str] = []
    polls = 0
    try:
        while worker.poll() is None and polls < 400:
            for args in (("status", "--json"), ("list", "--json", "--limit", "3"),
                         ("show", ids[polls * 7 % count], "--json")):
                proc = taskq(*args)
                polls += 1
                if proc.returncode != 0:
                    failures.append(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
        worker.wait(timeout=120)
        assert waiter.wait(timeout=120) == 0, waiter.stderr.read()
    finally:
        for proc in (worker, waiter):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert polls > 3 and failures == [], failures[:5]
    assert taskq.json("status", "--json")["counts"]["done"] == count + 1


def test_wait_reads_each_drop_in_once_not_once_per_id(spool, monkeypatch):
    api = taskq_api.Spool(spool)
    api.add(["true"])
    ids = [f"w{i}" for i in range(300)]
    for job_id in ids:
        drop(spool, job_id, {"id": job_id, "command": ["true"]})
    reads = []
    real = Store.read

    def counting(self, state, name):
        reads.append(name)
        return real(self, state, name)

    monkeypatch.setattr(Store, "read", counting)
    with pytest.raises(TimeoutError):
        api.wait(ids, timeout=0.05)
    assert len(reads) <= len(ids) + 10, len(reads)
    with pytest.raises(JobNotFoundError):
        api.wait(["w1", "nobody"], timeout=0.05)


# -- one dependency verdict for every reader ---------------------------------------------------


def fail_for_good(api: taskq_api.Spool, job_id: str) -> None:
    """Run one attempt of *job_id* by hand and settle it as a permanent failure."""
    name = next(n for n in os.listdir(Path(api.path) / "pending") if f".{job_id}." in n)
    claimed = api.transitions.claim(parse_pending_name(name))
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=100), times.now(), 0.5)


def test_status_and_explain_agree_on_a_dependent_of_a_failed_job(taskq, spool):
    api = taskq_api.Spool(spool)
    dep = api.add(["false"])
    blocked = api.add(["true"], after=[dep.id])
    status = taskq.json("status", "--json")
    assert (status["ready"], status["waiting"]) == (1, 1)
    assert "blocked by dependency" in taskq.json("explain", blocked.id, "--json")["reason"]
    fail_for_good(api, dep.id)
    status = taskq.json("status", "--json")
    assert (status["ready"], status["waiting"]) == (1, 0)  # a worker acts on it now
    reason = taskq.json("explain", blocked.id, "--json")["reason"]
    assert "a worker will move this job to failed/" in reason
    taskq("work", "--burst", check=True)
    assert api.get(blocked.id).state == "failed"
    assert api.get(blocked.id).last_error == f"dependency {dep.id} failed"


def test_a_retried_dependent_waits_for_a_dependency_that_failed_before(taskq, spool):
    api = taskq_api.Spool(spool)
    dep = api.add(["false"])
    child = api.add(["true"], after=[dep.id])
    fail_for_good(api, dep.id)
    taskq("work", "--burst", check=True)  # fails the child
    api.retry([child.id])
    status = taskq.json("status", "--json")
    assert (status["ready"], status["waiting"]) == (0, 1)
    assert f"retry {dep.id} too" in taskq.json("explain", child.id, "--json")["reason"]
    taskq("work", "--burst", check=True)
    assert api.get(child.id).state == "pending"  # still waiting, not failed again
