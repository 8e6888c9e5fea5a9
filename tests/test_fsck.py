"""``taskq fsck [--repair] [--json]``: each inconsistency is planted with plain file
operations, as a crash or a buggy producer would leave it; then fsck reports it (kind,
id, path), ``--repair`` mends it without deleting a job, a second fsck finds nothing,
and the spool drains. Three layers: the pure rules, the ``Spool.fsck`` contract on
real temporary spools, and the installed ``taskq`` in subprocesses (with a live
worker for "safe while workers run")."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import taskq
from taskq import times
from taskq.api.fsck import KINDS, STATE_RANK, Copy, Problem, Report, disagreement, keeper
from taskq.job import Job, Outcome
from taskq.spool import locks
from taskq.spool.fileio import FileIO
from taskq.spool.jobs import pending_file
from taskq.spool.layout import parse_pending_name
from taskq.spool.store import STALE_TMP_AGE
from taskq.stopping import StopState
from taskq.transitions import Change
from taskq.worker import Worker
from workerutil import files, record, script, state_of, wait_for, workers  # noqa: F401 - fixture

STATES = ("pending", "running", "done", "failed")


# -- helpers -----------------------------------------------------------------------------


def job_of(job_id: str = "J1", **fields: Any) -> Job:
    base: dict[str, Any] = dict(id=job_id, command=["true"], cwd="/", created_at="2026-01-01T00:00:00.000Z",
                                run_at="2026-01-01T00:00:00.000Z")
    base.update(fields)
    return Job(**base)


def copy_of(state: str, job: Job | None, mtime: float = 0.0, name: str | None = None) -> Copy:
    if name is None:
        name = pending_file(job) if state == "pending" and job else "J1.json"
    return Copy(state, name, b"x", job, None if job else "empty file", mtime)


def pending_of(spool: Path, job_id: str) -> str:
    """The pending/ file name of a job."""
    return next(n for n in files(spool, "pending") if f".{job_id}." in n)


def all_job_files(spool: Path) -> dict[str, list[str]]:
    return {state: [n for n in files(spool, state) if n.endswith(".json")] for state in STATES}


def ids_everywhere(api: taskq.Spool) -> set[str]:
    """Every job the spool lists, in any state (by its id, or its file for a drop-in
    file without one): what "no job is deleted" compares."""
    return {job.id or job.file or "" for job in api.list(limit=None)}


def kinds_of(report: Report) -> list[str]:
    return [p.kind for p in report.problems]


def drain(api: taskq.Spool) -> None:
    """Run every ready job with a fake runner (exit 0), as ``taskq work --burst`` would."""
    worker = Worker(api, burst=True, runner=lambda *a: Outcome(exit_code=0), stop=StopState(),
                    log=open(os.devnull, "w"))
    assert worker.run() == 0


def make_old(path: Path, age: float) -> None:
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


# -- pure rules --------------------------------------------------------------------------


def test_kinds_are_short_snake_case_words():
    assert set(KINDS) == {"duplicate", "stale_tmp", "orphan_running", "unreadable", "orphan_key", "orphan_log",
                          "misnamed_pending"}
    assert all(k.replace("_", "").isalpha() and k.islower() for k in KINDS)


@pytest.mark.parametrize("states, kept", [
    (("pending", "done"), "done"),
    (("failed", "done"), "done"),
    (("running", "failed"), "failed"),
    (("pending", "running"), "running"),
    (("pending", "running", "failed", "done"), "done"),
])
def test_the_most_advanced_state_is_kept(states, kept):
    copies = [copy_of(s, job_of()) for s in states]
    assert keeper(copies).state == kept
    assert keeper(list(reversed(copies))).state == kept


def test_a_valid_record_is_kept_over_an_invalid_one_in_a_later_state():
    valid = copy_of("pending", job_of())
    assert keeper([copy_of("done", None), valid]) is valid
    assert STATE_RANK["done"] > STATE_RANK["failed"] > STATE_RANK["running"] > STATE_RANK["pending"]


def test_of_two_pending_copies_the_one_whose_name_fits_then_the_newer_is_kept():
    job = job_of()
    fits = copy_of("pending", job, mtime=1.0)
    misnamed = copy_of("pending", job, mtime=2.0, name="0000000000." + pending_file(job).split(".", 1)[1])
    assert keeper([misnamed, fits]) is fits
    newer = copy_of("pending", job, mtime=3.0, name=pending_file(job) + "x")  # neither fits
    older = copy_of("pending", job, mtime=1.0, name=pending_file(job) + "y")
    assert keeper([older, newer]) is newer


def test_a_pending_name_made_from_the_record_agrees_with_it():
    job = job_of(priority=7, after=["D1"])
    entry = parse_pending_name(pending_file(job))
    assert entry is not None and disagreement(entry, job) is None


@pytest.mark.parametrize("change, words", [
    ({"priority": 3}, ["priority 0", "says 3"]),
    ({"run_at": "2027-05-01T10:00:00.000Z"}, ["run at 20260101T000000000Z", "20270501T100000000Z"]),
    ({"id": "J2"}, ["id J1", "job J2"]),
    ({"after": ["D1"]}, ["no dependencies", "has some"]),
])
def test_a_pending_name_that_disagrees_says_how(change, words):
    entry = parse_pending_name(pending_file(job_of()))
    assert entry is not None
    text = disagreement(entry, job_of(**change))
    assert text is not None and text.startswith("the name says")
    for word in words:
        assert word in text


def test_problem_forms_and_report_status():
    problem = Problem("orphan_log", "logs/X.log: a log of job X, which does not exist", "X", "/s/logs/X.log")
    assert problem.to_dict() == {"kind": "orphan_log", "message": problem.message, "id": "X",
                                 "path": "/s/logs/X.log"}
    assert problem.line() == "orphan_log: logs/X.log: a log of job X, which does not exist"
    assert Report([]).ok and not Report([problem]).ok
    problem.repaired, problem.action = True, "removed"
    assert problem.to_dict()["repaired"] is True and problem.line().endswith("[repaired: removed]")
    assert Report([problem], repair=True).ok
    problem.repaired = False
    assert not Report([problem], repair=True).ok
    assert Report([], repair=True).to_dict() == {"ok": True, "problems": []}


# -- the Spool contract ------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> taskq.Spool:
    return taskq.Spool(tmp_path / "spool")


@pytest.fixture
def root(api: taskq.Spool) -> Path:
    return Path(api.path)


def settled_spool(api: taskq.Spool) -> dict[str, str]:
    """A consistent spool with a job in every state and unique keys in use."""
    ok = api.add(["true"], unique_key="done-key")
    bad = api.add(["false"], max_attempts=1, unique_key="failed-key")
    worker = Worker(api, burst=True, stop=StopState(), log=open(os.devnull, "w"),
                    runner=lambda job, *a: Outcome(exit_code=0 if job.id == ok.id else 1))
    assert worker.run() == 0
    waiting = api.add(["true"], delay=3600, unique_key="pending-key")
    child = api.add(["true"], after=[waiting.id])
    (Path(api.path) / "pending" / "dropped.json").write_text(json.dumps({"command": ["true"], "id": "dropped-1"}))
    (Path(api.path) / "tmp" / "being-written").write_text("{")
    return {"done": ok.id, "failed": bad.id, "pending": waiting.id, "child": child.id}


def test_a_consistent_spool_has_no_problem(api):
    ids = settled_spool(api)
    assert api.get(ids["failed"]).state == "failed"  # its key names a failed job: still free, not a problem
    report = api.fsck()
    assert report.ok and report.problems == []
    before = all_job_files(Path(api.path))
    assert api.fsck(repair=True).ok
    assert all_job_files(Path(api.path)) == before


def test_no_spool_is_an_error(tmp_path):
    with pytest.raises(taskq.NoSpoolError):
        taskq.Spool(tmp_path / "nowhere").fsck()
    assert not (tmp_path / "nowhere").exists()


def check_repair_drain(api: taskq.Spool, kind: str, job_id: str | None, path: Path) -> Report:
    """One problem of *kind* at *path*; --repair mends it and deletes no job; a second
    check finds nothing; the spool drains."""
    root = Path(api.path)
    report = api.fsck()
    assert not report.ok
    assert [(p.kind, p.id, p.path) for p in report.problems] == [(kind, job_id, str(path))]
    assert report.problems[0].message.startswith(str(path.relative_to(root)) + ": ")
    ids_before = ids_everywhere(api) - {"pending/" + path.name}  # a junk drop-in file gets an id
    repaired = api.fsck(repair=True)
    assert repaired.ok, repaired.problems
    assert repaired.problems[0].repaired is True
    assert ids_before <= ids_everywhere(api), "a job was deleted"
    assert api.fsck().problems == []
    drain(api)
    assert files(root, "running") == [] and api.status()["ready"] == 0
    assert api.fsck().problems == []
    return repaired


def test_orphan_running_is_recovered_by_the_workers_rule(api, root):
    job = api.add(["true"])
    os.rename(root / "pending" / pending_of(root, job.id), root / "running" / f"{job.id}.json")
    check_repair_drain(api, "orphan_running", job.id, root / "running" / f"{job.id}.json")
    assert api.get(job.id).state == "done"


def test_orphan_running_with_an_attempt_in_progress_counts_it_as_worker_lost(api, root):
    job = api.add(["true"])
    path = root / "running" / f"{job.id}.json"
    os.rename(root / "pending" / pending_of(root, job.id), path)
    data = json.loads(path.read_text())
    data["attempts"] = [{"number": 1, "started_at": times.iso(times.now() - 60), "worker": "gone:1"}]
    path.write_text(json.dumps(data))
    assert kinds_of(api.fsck()) == ["orphan_running"]
    assert "worker lost" in api.fsck(repair=True).problems[0].action
    got = api.get(job.id)
    assert got.state == "pending" and got.attempts[0].error == "worker lost" and got.run_at_ts > times.now()


def test_a_running_job_whose_lock_is_held_is_not_a_problem(api, root):
    job = api.add(["true"])
    os.rename(root / "pending" / pending_of(root, job.id), root / "running" / f"{job.id}.json")
    lock = locks.run_lock(api.store, job.id)  # as a live attempt holds it
    assert lock is not None
    try:
        assert api.fsck().problems == []
        assert api.fsck(repair=True).problems == []
        assert (root / "running" / f"{job.id}.json").exists()
    finally:
        lock.release(remove=True)
    assert kinds_of(api.fsck()) == ["orphan_running"]


def test_an_empty_running_file_is_unreadable_and_filed_in_failed(api, root):
    job = api.add(["true"])
    os.remove(root / "pending" / pending_of(root, job.id))
    (root / "running" / f"{job.id}.json").write_bytes(b"")
    check_repair_drain(api, "unreadable", job.id, root / "running" / f"{job.id}.json")
    got = api.get(job.id)
    assert got.state == "failed" and "invalid job file" in (got.last_error or "")


@pytest.mark.parametrize("content", [b"", b"{\"command\": [\"tr", b"[1, 2]", b"\xff\xfe"])
def test_an_unreadable_pending_file_goes_to_failed_bytes_untouched(api, root, content):
    job = api.add(["true"])
    other = api.add(["true"])
    name = pending_of(root, job.id)
    (root / "pending" / name).write_bytes(content)
    check_repair_drain(api, "unreadable", job.id, root / "pending" / name)
    assert (root / "failed" / f"{job.id}.json").read_bytes() == content
    reason = json.loads((root / "failed" / f"{job.id}.reason").read_text())
    assert reason["original_name"] == name
    assert api.get(job.id).state == "failed" and api.get(other.id).state == "done"


def test_an_unreadable_drop_in_file_goes_to_failed_but_a_valid_one_is_not_a_problem(api, root):
    api.add(["true"])
    (root / "pending" / "good.json").write_text(json.dumps({"command": ["true"]}))
    assert api.fsck().problems == []
    (root / "pending" / "bad.json").write_bytes(b"")
    report = check_repair_drain(api, "unreadable", None, root / "pending" / "bad.json")
    assert "moved to failed/" in (report.problems[0].action or "")
    assert len([n for n in files(root, "failed") if n.endswith(".reason")]) == 1
    assert len(files(root, "done")) == 2  # the first job and the good drop-in


def test_unreadable_done_and_failed_files(api, root):
    done = api.add(["true"])
    drain(api)
    (root / "done" / f"{done.id}.json").write_text("garbage")
    check_repair_drain(api, "unreadable", done.id, root / "done" / f"{done.id}.json")
    assert (root / "failed" / f"{done.id}.json").read_text() == "garbage"
    # in failed/ with its reason beside it is where such a file belongs: no problem
    assert api.fsck().problems == []
    (root / "failed" / f"{done.id}.reason").unlink()
    report = check_repair_drain(api, "unreadable", done.id, root / "failed" / f"{done.id}.json")
    assert "reason" in (report.problems[0].action or "")
    assert (root / "failed" / f"{done.id}.reason").exists()


def test_a_misnamed_pending_file_is_renamed_as_its_record_says(api, root):
    job = api.add(["true"], priority=5)
    name = pending_of(root, job.id)
    wrong = "0999999999." + name.split(".", 1)[1]  # priority 0 in the name
    os.rename(root / "pending" / name, root / "pending" / wrong)
    report = check_repair_drain(api, "misnamed_pending", job.id, root / "pending" / wrong)
    assert f"renamed to pending/{name}" in (report.problems[0].action or "")
    assert api.get(job.id).state == "done"


def test_a_pending_file_whose_record_is_another_existing_job_is_set_aside(api, root):
    a = api.add(["true"])
    name_a = pending_of(root, a.id)
    name_b = name_a.replace(a.id, "someone-else")
    shutil.copy(root / "pending" / name_a, root / "pending" / name_b)  # another job's name, a's record
    report = check_repair_drain(api, "misnamed_pending", a.id, root / "pending" / name_b)
    new = report.problems[0].action.split("failed job ")[1].split()[0]
    got = api.get(new)
    assert got.state == "failed" and got.extra["set_aside"]["id"] == a.id
    assert api.get(a.id).state == "done"


def test_duplicates_identical_copies_are_removed(api, root):
    job = api.add(["true"])
    drain(api)
    shutil.copy(root / "done" / f"{job.id}.json", root / "failed" / f"{job.id}.json")
    report = check_repair_drain(api, "duplicate", job.id, root / "failed" / f"{job.id}.json")
    assert "identical" in (report.problems[0].action or "")
    assert files(root, "failed") == [] and api.get(job.id).state == "done"


def test_duplicates_a_different_copy_is_set_aside_keeping_what_it_said(api, root):
    job = api.add(["true"])
    name = pending_of(root, job.id)
    pending_bytes = (root / "pending" / name).read_bytes()
    drain(api)
    (root / "pending" / name).write_bytes(pending_bytes)  # back, as a stale copy
    report = check_repair_drain(api, "duplicate", job.id, root / "pending" / name)
    new = report.problems[0].action.split("failed job ")[1].split()[0]
    aside = api.get(new)
    assert aside.state == "failed" and aside.id != job.id
    assert aside.extra["set_aside"]["id"] == job.id
    assert aside.extra["set_aside"]["file"] == f"pending/{name}"
    assert "duplicate of job" in (aside.last_error or "")
    assert aside.command == ["true"] and aside.attempts == []
    assert api.get(job.id).state == "done" and len(api.get(job.id).attempts) == 1


def test_duplicates_an_invalid_copy_goes_to_failed_under_a_fresh_id(api, root):
    job = api.add(["true"])
    drain(api)
    (root / "running" / f"{job.id}.json").write_bytes(b"")
    check_repair_drain(api, "duplicate", job.id, root / "running" / f"{job.id}.json")
    reasons = [n for n in files(root, "failed") if n.endswith(".reason")]
    assert len(reasons) == 1 and reasons[0] != f"{job.id}.reason"
    assert (root / "failed" / reasons[0].replace(".reason", ".json")).read_bytes() == b""
    assert api.get(job.id).state == "done"


def test_duplicates_a_running_copy_in_use_is_left_alone(api, root):
    job = api.add(["true"])
    name = pending_of(root, job.id)
    shutil.copy(root / "pending" / name, root / "running" / f"{job.id}.json")
    lock = locks.run_lock(api.store, job.id)
    assert lock is not None
    try:
        assert api.fsck().problems == []
    finally:
        lock.release(remove=True)
    report = api.fsck()
    assert sorted(kinds_of(report)) == ["duplicate", "orphan_running"]
    dup = next(p for p in report.problems if p.kind == "duplicate")
    assert dup.path == str(root / "pending" / name)  # the running copy is kept
    assert api.fsck(repair=True).ok
    assert api.fsck().problems == []
    drain(api)
    assert api.get(job.id).state == "done"


def test_a_repair_racing_a_worker_defers_to_it(api, root):
    """A repair judges again when it acts: a file a worker has taken meanwhile is the
    worker's (resolved); a job whose lock a worker holds is left alone (not repaired)."""
    job = api.add(["true"], priority=4)
    name = pending_of(root, job.id)
    wrong = root / "pending" / ("0999999999." + name.split(".", 1)[1])
    os.rename(root / "pending" / name, wrong)
    [problem] = api.fsck().problems
    assert problem.kind == "misnamed_pending" and problem.fix is not None
    lock = locks.run_lock(api.store, job.id)  # a worker between its lock and its rename
    assert lock is not None
    try:
        with pytest.raises(taskq.TaskqError, match="in use"):
            problem.fix()
        assert wrong.exists()
    finally:
        lock.release(remove=True)
    os.rename(wrong, root / "running" / f"{job.id}.json")  # ... which then claims it
    assert problem.fix().startswith("already resolved")
    assert (root / "running" / f"{job.id}.json").exists()


def test_stale_tmp_uses_the_workers_rule(api, root):
    api.add(["true"])
    young, old = root / "tmp" / "young", root / "tmp" / "old"
    young.write_text("x")
    old.write_text("x")
    make_old(young, STALE_TMP_AGE - 120)
    make_old(old, STALE_TMP_AGE + 120)
    # what fsck reports is exactly what a worker's cleaning would remove
    assert [name for name, _ in api.store.stale_tmp(times.now() - STALE_TMP_AGE)] == ["old"]
    check_repair_drain(api, "stale_tmp", None, old)
    assert young.exists() and not old.exists()


def test_a_worker_removes_exactly_what_fsck_reports_as_stale(api, root):
    api.add(["true"])
    for name, age in (("young", STALE_TMP_AGE - 120), ("old", STALE_TMP_AGE + 120), ("older", 9 * STALE_TMP_AGE)):
        (root / "tmp" / name).write_text("x")
        make_old(root / "tmp" / name, age)
    reported = sorted(Path(p.path).name for p in api.fsck().problems if p.kind == "stale_tmp")
    assert reported == ["old", "older"]
    drain(api)  # a worker cleans tmp/ when it starts
    assert files(root, "tmp") == ["young"]
    assert api.fsck().problems == []


def test_orphan_key_and_its_repair_free_the_key(api, root):
    api.add(["true"], unique_key="other")
    key = hashlib.sha256(b"nightly").hexdigest()
    (root / "keys" / key).write_text("01ZZZZZZZZZZZZZZZZZZZZZZZZ\n")  # an add that died before publishing
    check_repair_drain(api, "orphan_key", "01ZZZZZZZZZZZZZZZZZZZZZZZZ", root / "keys" / key)
    assert not (root / "keys" / key).exists()
    assert not api.add(["true"], unique_key="nightly").duplicate
    assert api.add(["true"], unique_key="other").duplicate  # live keys untouched


def test_a_key_file_in_use_by_an_add_is_not_judged(api, root):
    api.add(["true"])
    lock = locks.key_lock(api.store, "busy")  # an add deciding, before it writes the holder
    try:
        assert api.fsck().problems == []
    finally:
        lock.release(remove=False)
    assert kinds_of(api.fsck()) == ["orphan_key"]  # names no job


def test_orphan_log_is_removed_but_logs_of_jobs_are_kept(api, root):
    job = api.add(["true"])
    drain(api)
    (root / "logs" / "01YYYYYYYYYYYYYYYYYYYYYYYY.log").write_text("output of a job removed by hand\n")
    check_repair_drain(api, "orphan_log", "01YYYYYYYYYYYYYYYYYYYYYYYY",
                       root / "logs" / "01YYYYYYYYYYYYYYYYYYYYYYYY.log")
    assert files(root, "logs") == [f"{job.id}.log"]


def test_a_log_of_a_drop_in_file_not_taken_in_yet_is_not_an_orphan(api, root):
    api.add(["true"])
    (root / "pending" / "mine.json").write_text(json.dumps({"command": ["true"], "id": "mine-1"}))
    (root / "logs" / "mine-1.log").write_text("")
    assert api.fsck().problems == []


def test_every_problem_at_once_then_nothing(api, root):
    a, b, c, d = (api.add(["true"], unique_key=f"k{i}") for i in range(4))
    drain(api)
    e, f, g = api.add(["true"]), api.add(["true"]), api.add(["true"], priority=2)
    shutil.copy(root / "done" / f"{a.id}.json", root / "failed" / f"{a.id}.json")
    os.rename(root / "pending" / pending_of(root, e.id), root / "running" / f"{e.id}.json")
    (root / "pending" / pending_of(root, f.id)).write_bytes(b"")
    name = pending_of(root, g.id)
    os.rename(root / "pending" / name, root / "pending" / ("0999999999." + name.split(".", 1)[1]))
    (root / "tmp" / "left").write_text("x")
    make_old(root / "tmp" / "left", 2 * STALE_TMP_AGE)
    os.remove(root / "done" / f"{b.id}.json")  # its key and its log are left naming nothing
    report = api.fsck()
    assert sorted(kinds_of(report)) == sorted(KINDS)
    assert len(report.problems) == 7
    assert [p.kind for p in report.problems] == list(KINDS)  # reported (and repaired) in this order
    repaired = api.fsck(repair=True)
    assert repaired.ok and all(p.repaired for p in repaired.problems)
    assert api.fsck().problems == []
    drain(api)
    assert {api.get(i).state for i in (a.id, c.id, d.id, e.id, g.id)} == {"done"}
    assert api.get(f.id).state == "failed"


def test_repairs_are_reported_to_the_transitions_observer(api, root):
    b = api.add(["true"])
    drain(api)
    a = api.add(["true"], priority=1)
    name = pending_of(root, a.id)
    os.rename(root / "pending" / name, root / "pending" / ("0999999999." + name.split(".", 1)[1]))
    (root / "pending" / "x.0.json").write_text("")  # a junk drop-in file
    seen: list[Change] = []
    api.transitions.subscribe(observe=seen.append)
    shutil.copy(root / "done" / f"{b.id}.json", root / "running" / f"{b.id}.json")
    data = json.loads((root / "running" / f"{b.id}.json").read_text())
    data["last_error"] = "a different copy"
    (root / "running" / f"{b.id}.json").write_text(json.dumps(data))
    assert api.fsck(repair=True).ok
    assert sorted((c.kind, c.src, c.dst) for c in seen) == [
        ("quarantine", "pending", "failed"), ("rename", "pending", "pending"), ("set_aside", "running", "failed")]


# -- the command -------------------------------------------------------------------------


def cli_ids(taskq) -> set[str]:
    return {job["id"] for job in taskq.json("list", "--json", "--limit", "0")}


def fsck_json(taskq, *args: str, code: int) -> dict:
    proc = taskq("fsck", "--json", *args, check=code)
    data = json.loads(proc.stdout)
    assert data["ok"] is (code == 0)
    return data


def test_cli_consistent_spool_exit_0_and_no_problem_line(taskq, spool):
    taskq.add("true")
    taskq.add("false", options=["--max-attempts", "1", "--unique-key", "k"])
    taskq("work", "--burst", check=True)
    proc = taskq("fsck", check=0)
    assert proc.stdout == "" and "consistent" in proc.stderr
    assert fsck_json(taskq, code=0) == {"ok": True, "problems": []}
    assert taskq("fsck", "--repair", check=0).stdout == ""
    assert taskq("fsck", spool_via="option", check=0).stdout == ""  # taskq fsck --spool DIR
    assert taskq("--spool", spool, "fsck", spool=None, check=0).stdout == ""


def test_cli_no_spool_and_bad_option(taskq, spool):
    proc = taskq("fsck", check=1)
    assert proc.stdout == "" and proc.stderr.strip() == f"taskq: no spool at {spool}"
    assert not spool.exists()
    taskq("fsck", "--bogus", check=2)


def plant(kind: str, taskq, spool: Path) -> tuple[str | None, Path]:
    """Plant one inconsistency of *kind* with plain file operations; return the id
    and path fsck should report."""
    job_id = taskq.add("true")
    pending = spool / "pending" / pending_of(spool, job_id)
    if kind == "duplicate":
        taskq("work", "--burst", check=True)
        shutil.copy(spool / "done" / f"{job_id}.json", pending)  # a copy left behind in pending/
        return job_id, pending
    if kind == "stale_tmp":
        path = spool / "tmp" / "job.1234.abcdef.tmp"
        path.write_text('{"command": ["tr')
        make_old(path, 2 * 3600)
        return None, path
    if kind == "orphan_running":
        path = spool / "running" / f"{job_id}.json"
        os.rename(pending, path)
        return job_id, path
    if kind == "unreadable":
        pending.write_bytes(b"")
        return job_id, pending
    if kind == "orphan_key":
        path = spool / "keys" / hashlib.sha256(b"report-2026").hexdigest()
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_text("01XXXXXXXXXXXXXXXXXXXXXXXX\n")
        return "01XXXXXXXXXXXXXXXXXXXXXXXX", path
    if kind == "orphan_log":
        path = spool / "logs" / "01WWWWWWWWWWWWWWWWWWWWWWWW.log"
        path.write_text("=== taskq: attempt 1 ===\n")
        return "01WWWWWWWWWWWWWWWWWWWWWWWW", path
    assert kind == "misnamed_pending"
    path = spool / "pending" / ("0999999990." + pending.name.split(".", 1)[1])  # priority 9 in the name
    os.rename(pending, path)
    return job_id, path


@pytest.mark.parametrize("kind", KINDS)
def test_cli_each_planted_problem_is_found_repaired_and_the_spool_drains(taskq, spool, kind):
    taskq.add("true")  # a job that is fine all along
    job_id, path = plant(kind, taskq, spool)
    before = cli_ids(taskq)

    proc = taskq("fsck", check=1)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{kind}: {path.relative_to(spool)}: "), lines
    data = fsck_json(taskq, code=1)
    assert [(p["kind"], p["id"], p["path"]) for p in data["problems"]] == [(kind, job_id, str(path))]
    assert set(data["problems"][0]) == {"kind", "message", "id", "path"}

    repaired = taskq("fsck", "--repair", check=0)
    assert repaired.stdout.count("\n") == 1 and "[repaired: " in repaired.stdout
    assert before <= cli_ids(taskq), "a job was deleted"
    assert taskq("fsck", check=0).stdout == ""

    taskq("work", "--burst", check=True)
    assert files(spool, "running") == [] and files(spool, "pending") == []
    assert taskq("fsck", check=0).stdout == ""
    if job_id and kind not in ("orphan_key", "orphan_log"):
        assert state_of(spool, job_id) == ("failed" if kind == "unreadable" else "done")


def test_cli_repair_json_says_what_was_done(taskq, spool):
    job_id, path = plant("orphan_running", taskq, spool)
    data = fsck_json(taskq, "--repair", code=0)
    [problem] = data["problems"]
    assert problem["repaired"] is True and "back to pending" in problem["action"]
    assert problem["id"] == job_id and problem["path"] == str(path)


def test_cli_fsck_with_a_live_worker_leaves_its_attempts_alone(taskq, spool, tmp_path, workers):  # noqa: F811
    marks, go = tmp_path / "marks", tmp_path / "go"
    cmd = script(tmp_path, "slow", f"""
        import os, time
        with open({str(marks)!r}, "a") as f:
            f.write(os.environ["TASKQ_JOB_ID"] + " " + os.environ["TASKQ_ATTEMPT"] + "\\n")
        deadline = time.monotonic() + 60
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
    """)
    ids = [taskq.add(*cmd) for _ in range(2)]
    worker = workers.start("--concurrency", "2")
    wait_for(lambda: len(files(spool, "running")) >= 2 and marks.exists()
             and len(marks.read_text().splitlines()) == 2, timeout=20, message="both jobs running")
    # a problem fsck must repair while the worker runs
    stale = spool / "tmp" / "left-over"
    stale.write_text("x")
    make_old(stale, 2 * 3600)

    check = fsck_json(taskq, code=1)
    assert [p["kind"] for p in check["problems"]] == ["stale_tmp"]  # running jobs are not problems
    repaired = fsck_json(taskq, "--repair", code=0)
    assert [p["kind"] for p in repaired["problems"]] == ["stale_tmp"]
    assert fsck_json(taskq, code=0) == {"ok": True, "problems": []}
    for job_id in ids:
        assert record(spool, job_id)["state"] == "running"

    go.write_text("")
    for job_id in ids:
        wait_for(lambda j=job_id: record(spool, j)["state"] == "done", timeout=30, message=f"{job_id} done")
    # each ran once, in the attempt it had when fsck ran
    assert sorted(marks.read_text().splitlines()) == sorted(f"{j} 1" for j in ids)
    for job_id in ids:
        assert len(record(spool, job_id)["attempts"]) == 1
    assert "recovered" not in worker.stderr()
    assert fsck_json(taskq, code=0)["ok"]


def test_cli_json_is_plain_json_without_markup(taskq, spool):
    taskq.add("true")
    (spool / "pending" / "[red]x[bold].json").write_text("[1]")
    data = fsck_json(taskq, code=1)
    assert data["problems"][0]["path"].endswith("pending/[red]x[bold].json")
    proc = taskq("fsck", check=1, env={"FORCE_COLOR": "1"})
    assert "[red]x[bold]" in proc.stdout and "\x1b" not in proc.stdout


# -- faults during a repair --------------------------------------------------------------


FAULT_METHODS = ("write_new", "fsync", "fsync_dir", "rename", "link", "unlink", "open_lock", "overwrite")


class FaultyIO(FileIO):
    """Fails the *nth* call of *method* with EIO (0: never); counts every call."""

    def __init__(self, method: str = "", nth: int = 0) -> None:
        self.method, self.nth = method, nth
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name not in FAULT_METHODS:
            return attr

        def call(*args: Any) -> Any:
            self.calls[name] += 1
            if name == self.method and self.calls[name] == self.nth:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return attr(*args)
        return call


@pytest.fixture(scope="module")
def broken_template(tmp_path_factory) -> Path:
    """A spool with one problem of every kind, made once and copied for each fault."""
    base = tmp_path_factory.mktemp("fsck-faults")
    api = taskq.Spool(base / "spool")
    root = Path(api.path)
    a, b = api.add(["true"], unique_key="ka"), api.add(["true"], unique_key="kb")
    drain(api)
    e, f, g = api.add(["true"]), api.add(["true"]), api.add(["true"], priority=2)
    data = json.loads((root / "done" / f"{a.id}.json").read_text())
    data["last_error"] = "a different copy"
    (root / "failed" / f"{a.id}.json").write_text(json.dumps(data))
    os.rename(root / "pending" / pending_of(root, e.id), root / "running" / f"{e.id}.json")
    (root / "pending" / pending_of(root, f.id)).write_bytes(b"")
    (root / "pending" / "junk.json").write_bytes(b"\x00")
    name = pending_of(root, g.id)
    os.rename(root / "pending" / name, root / "pending" / ("0999999999." + name.split(".", 1)[1]))
    (root / "tmp" / "left").write_text("x")
    make_old(root / "tmp" / "left", 2 * STALE_TMP_AGE)
    os.remove(root / "done" / f"{b.id}.json")
    assert len(api.fsck().problems) == 8
    return root


def test_a_fault_in_any_repair_step_loses_no_job_and_a_second_repair_finishes(broken_template, tmp_path):
    dry = FaultyIO()
    root = tmp_path / "dry"
    shutil.copytree(broken_template, root)
    api = taskq.Spool(root)
    api.store.io = dry
    assert api.fsck(repair=True).ok
    plans = [(m, n) for m in FAULT_METHODS for n in range(1, dry.calls[m] + 1)]
    assert len(plans) > 30
    for i, (method, nth) in enumerate(plans):
        root = tmp_path / f"s{i}"
        shutil.copytree(broken_template, root)
        api = taskq.Spool(root)
        before = ids_everywhere(api) - {"pending/junk.json"}
        api.store.io = FaultyIO(method, nth)
        try:
            report = api.fsck(repair=True)
        except taskq.SpoolError as exc:  # a fault while checking: the command fails, one line
            assert "\n" not in str(exc) and str(root) in str(exc)
        else:
            for problem in report.problems:
                assert problem.repaired or "input/output error" in (problem.action or "").lower() \
                    or "run fsck again" in (problem.action or ""), (method, nth, problem)
        assert before <= ids_everywhere(api), f"a job was lost after a fault in {method} #{nth}"
        api.store.io = FileIO()
        second = api.fsck(repair=True)
        assert second.ok, (method, nth, second.problems)
        assert api.fsck().problems == [], (method, nth)
        assert before <= ids_everywhere(api)
        assert files(root, "tmp") == [], (method, nth)  # nothing staged is left behind
