"""The spool on disk (README: "The spool on disk", "Drop-in protocol", "Reliability"),
through the Python API on real temp dirs:
layout and modes, publication through tmp/, reads, status counts, atomicity under
concurrent readers, unique keys under real concurrency, batches, dependencies, the
free-space guard and the drop-in protocol."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import taskq
from taskq import times
from taskq.errors import (
    DependencyError,
    DiskFullError,
    InvalidIdError,
    JobNotFoundError,
    NoSpoolError,
    SpoolError,
    ValidationError,
)
from taskq.job import Job
from taskq.spool.layout import parse_pending_name
from workerutil import LAYOUT
from workerutil import files as ls


def pending_file(spool: Path, job_id: str) -> Path:
    (name,) = [n for n in ls(spool, "pending") if (p := parse_pending_name(n)) and p.id == job_id]
    return spool / "pending" / name


def move(spool: Path, job_id: str, state: str) -> Path:
    """Simulate a state change by a worker: one rename from pending/ to STATE/ID.json."""
    dest = spool / state / f"{job_id}.json"
    os.rename(pending_file(spool, job_id), dest)
    return dest


def write_toml(spool: Path, text: str) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "taskq.toml").write_text(textwrap.dedent(text))


def drop_in(spool: Path, name: str, record: object) -> Path:
    """The drop-in protocol: write into tmp/, then rename into pending/."""
    staged = spool / "tmp" / f".{name}.partial"
    staged.write_text(json.dumps(record))
    final = spool / "pending" / name
    os.rename(staged, final)
    return final


@pytest.fixture
def api(spool) -> taskq.Spool:
    return taskq.Spool(spool)


# -- the spool's location --------------------------------------------------------------------


def test_constructor_does_not_touch_the_disk(spool):
    taskq.Spool(spool)
    assert not spool.exists()


def test_default_spool_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKQ_SPOOL", str(tmp_path / "from-env"))
    assert taskq.Spool().path == str(tmp_path / "from-env")
    monkeypatch.delenv("TASKQ_SPOOL")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert taskq.Spool().path == str(tmp_path / "xdg" / "taskq" / "spool")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert taskq.Spool().path == str(tmp_path / "home" / ".local" / "share" / "taskq" / "spool")


def test_relative_path_resolved_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKQ_SPOOL", raising=False)
    assert taskq.Spool("rel/sp").path == str(tmp_path / "rel" / "sp")
    monkeypatch.setenv("TASKQ_SPOOL", "env-rel")
    assert taskq.Spool().path == str(tmp_path / "env-rel")


# -- layout and modes ----------------------------------------------------------------------------


def test_add_creates_layout_with_private_modes(tmp_path):
    spool = tmp_path / "a" / "b" / "spool"  # missing parents too
    old = os.umask(0)  # the modes must not come from a restrictive umask
    try:
        job = taskq.Spool(spool).add(["true"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    for name in LAYOUT:
        path = spool / name
        assert path.is_dir(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, name
    path = pending_file(spool, job.id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.getuid()


def test_add_with_unique_key_keeps_private_modes(spool):
    old = os.umask(0)
    try:
        job = taskq.Spool(spool).add(["true"], unique_key="k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(pending_file(spool, job.id).stat().st_mode) == 0o600
    for root, dirs, files in os.walk(spool):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode) == 0o700, d
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) & 0o077 == 0, f


def test_add_on_existing_spool_keeps_jobs(api, spool):
    first = api.add(["a"])
    second = taskq.Spool(spool).add(["b"])
    assert {parse_pending_name(n).id for n in ls(spool, "pending")} == {first.id, second.id}


def test_add_where_spool_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for path in (blocker, blocker / "spool"):
        with pytest.raises(SpoolError) as info:
            taskq.Spool(path).add(["true"])
        assert str(path) in str(info.value)
    assert blocker.read_text() == ""


# -- publication -----------------------------------------------------------------------------------


def test_add_file_is_the_record(api, spool):
    job = api.add(["echo", "hi"], payload={"n": 1}, env={"A": "b"}, name="greet", priority=3)
    assert job.state == "pending" and not job.duplicate
    path = pending_file(spool, job.id)
    data = json.loads(path.read_bytes())
    assert data["version"] == 1
    assert "state" not in data
    assert data["id"] == job.id
    assert data["command"] == ["echo", "hi"]
    assert data["payload"] == {"n": 1} and data["env"] == {"A": "b"}
    assert data["name"] == "greet" and data["priority"] == 3
    assert data == job.to_record()
    parsed = parse_pending_name(path.name)
    assert parsed.priority == 3 and not parsed.has_deps
    assert parsed.run_key == times.name_key(job.run_at_ts)


def test_add_default_cwd_is_the_callers(api, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert api.add(["true"]).cwd == str(work)
    assert api.add(["true"], cwd="sub").cwd == str(work / "sub")
    assert api.add(["true"], cwd="/").cwd == "/"


def test_add_refuses_a_cwd_that_does_not_exist(api, spool, tmp_path):
    with pytest.raises(ValidationError, match="cwd: no such directory"):
        api.add(["true"], cwd=str(tmp_path / "nowhere"))
    assert not (spool / "pending").exists() or ls(spool, "pending") == []


PUBLISH_OPS = ("rename", "link")  # rename(2), or link(2) + unlink of the staged name


def test_add_writes_via_tmp_fsyncs_then_publishes(api, spool, monkeypatch):
    api.add(["warm-up"])  # spool exists; config read
    io = api.store.io
    calls: list[tuple] = []
    names = [n for n in ("write_new", "fsync", "fsync_dir", *PUBLISH_OPS) if hasattr(io, n)]
    orig = {n: getattr(io, n) for n in names}

    def rec(name):
        def wrapper(*args):
            calls.append((name, *[a for a in args if isinstance(a, str)]))
            return orig[name](*args)

        return wrapper

    for name in names:
        monkeypatch.setattr(io, name, rec(name))
    job = api.add(["x"])
    kinds = [c[0] for c in calls]
    write = kinds.index("write_new")
    publish = next(i for i, k in enumerate(kinds) if k in PUBLISH_OPS)
    assert write < publish
    staged = calls[write][1]
    assert os.path.dirname(staged) == str(spool / "tmp")
    assert "fsync" in kinds[write:publish], "the file is fsynced before it is published"
    assert calls[publish][1:] == (staged, str(pending_file(spool, job.id)))
    assert ("fsync_dir", str(spool / "pending")) in calls[publish:], "pending/ is fsynced after publication"
    assert ls(spool, "tmp") == []


def test_add_leaves_tmp_empty(api, spool):
    for i in range(20):
        api.add(["n", str(i)], unique_key=f"k{i % 5}")
    api.add_batch([{"command": ["b"]}] * 5)
    assert ls(spool, "tmp") == []
    assert len(ls(spool, "pending")) == 10


@pytest.mark.parametrize("fail_at, nth", [("write_new", 3), ("publish", 3), ("fsync_dir", 1)])
def test_failed_write_is_all_or_nothing(api, spool, monkeypatch, fail_at, nth):
    api.add(["warm-up"])
    before = ls(spool, "pending")
    io = api.store.io
    targets = [n for n in PUBLISH_OPS if hasattr(io, n)] if fail_at == "publish" else [fail_at]
    count = {"n": 0}

    def failing(orig):
        def wrapper(*args):
            count["n"] += 1
            if count["n"] >= nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return orig(*args)

        return wrapper

    for name in targets:
        monkeypatch.setattr(io, name, failing(getattr(io, name)))
    with pytest.raises(SpoolError) as info:
        api.add_batch([{"command": ["b", str(i)]} for i in range(4)])
    assert "disk full" in str(info.value)
    assert count["n"] >= nth
    assert ls(spool, "pending") == before
    assert ls(spool, "tmp") == []


def test_failed_publish_releases_the_unique_key(api, spool, monkeypatch):
    api.add(["warm-up"])
    io = api.store.io

    def boom(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    for name in PUBLISH_OPS:
        if hasattr(io, name):
            monkeypatch.setattr(io, name, boom)
    with pytest.raises(SpoolError):
        api.add(["x"], unique_key="once")
    monkeypatch.undo()
    job = api.add(["x"], unique_key="once")
    assert not job.duplicate
    assert pending_file(spool, job.id).exists()


# -- reads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["status", "list", "get"])
def test_read_methods_on_missing_spool(spool, method):
    api = taskq.Spool(spool)
    call = {"status": api.status, "list": api.list, "get": lambda: api.get("01ABC")}[method]
    with pytest.raises(NoSpoolError) as info:
        call()
    assert str(info.value) == f"no spool at {spool}"
    assert not spool.exists()


def test_get(api, spool):
    job = api.add(["x"], payload=[1, 2])
    got = taskq.Spool(spool).get(job.id)
    assert got.to_dict() == job.to_dict()
    assert got.state == "pending"
    move(spool, job.id, "done")
    assert api.get(job.id).state == "done"
    with pytest.raises(JobNotFoundError) as info:
        api.get("01AAAAAAAAAAAAAAAAAAAAAAAA")
    assert "01AAAAAAAAAAAAAAAAAAAAAAAA" in str(info.value)
    with pytest.raises(InvalidIdError):
        api.get("../etc/passwd")


def test_list_newest_first_and_filters(api, spool):
    ids = [api.add(["n", str(i)]).id for i in range(6)]
    assert [j.id for j in api.list()] == ids[::-1]
    assert [j.id for j in api.list(limit=2)] == ids[:-3:-1]
    move(spool, ids[1], "done")
    move(spool, ids[2], "failed")
    move(spool, ids[3], "running")
    assert [(j.id, j.state) for j in api.list(state="done")] == [(ids[1], "done")]
    assert [j.id for j in api.list(state="failed")] == [ids[2]]
    assert [j.id for j in api.list(state="running")] == [ids[3]]
    assert [j.id for j in api.list(state="pending")] == [ids[5], ids[4], ids[0]]
    assert [j.id for j in api.list()] == ids[::-1]
    assert {j.id: j.state for j in api.list()}[ids[2]] == "failed"
    with pytest.raises(ValidationError):
        api.list(state="bogus")


def test_list_default_limit_is_50_newest(api):
    jobs = api.add_batch([{"command": ["n", str(i)]} for i in range(55)])
    listed = api.list()
    assert len(listed) == 50
    assert [j.id for j in listed] == sorted((j.id for j in jobs), reverse=True)[:50]
    assert len(api.list(limit=None)) == 55


def test_list_orders_by_created_at_not_by_priority_or_run_at(api):
    a = api.add(["a"], priority=100)
    b = api.add(["b"], delay=3600)
    c = api.add(["c"], priority=-5)
    assert [j.id for j in api.list()] == [c.id, b.id, a.id]


# -- status ----------------------------------------------------------------------------------------


def test_status_empty(api, spool):
    api.add(["x"])
    os.unlink(pending_file(spool, api.list()[0].id))
    st = api.status()
    assert st["spool"] == str(spool)
    assert st["counts"] == {"pending": 0, "running": 0, "done": 0, "failed": 0}
    assert st["ready"] == 0 and st["scheduled"] == 0
    assert st["paused"] is False


def test_status_ready_scheduled_waiting(api, spool):
    dep = api.add(["dep"])
    api.add(["later"], delay=3600)
    api.add(["at"], run_at=time.time() + 86400)
    waiting = api.add(["w"], after=[dep.id])
    api.add(["past"], run_at=time.time() - 3600)
    api.add(["hi"], priority=9)
    st = api.status()
    assert st["counts"]["pending"] == 6
    assert (st["ready"], st["scheduled"], st["waiting"]) == (3, 2, 1)
    assert st["ready"] + st["scheduled"] + st["waiting"] == st["counts"]["pending"]
    move(spool, dep.id, "done")
    st = api.status()
    assert st["counts"] == {"pending": 5, "running": 0, "done": 1, "failed": 0}
    assert (st["ready"], st["scheduled"], st["waiting"]) == (3, 2, 0)
    assert api.get(waiting.id).after == [dep.id]


def test_status_counts_every_state(api, spool):
    ids = [api.add(["n"]).id for _ in range(7)]
    move(spool, ids[0], "running")
    move(spool, ids[1], "done")
    move(spool, ids[2], "done")
    move(spool, ids[3], "failed")
    st = api.status()
    assert st["counts"] == {"pending": 3, "running": 1, "done": 2, "failed": 1}


def test_status_counts_a_scheduled_job_as_ready_once_due(api, spool):
    job = api.add(["x"], delay=2)
    assert api.status()["scheduled"] == 1
    later = times.parse_iso(job.run_at) + 0.5
    st = api.status(now=later)
    assert (st["ready"], st["scheduled"]) == (1, 0)


def test_status_does_not_choke_on_a_corrupt_file(api, spool):
    job = api.add(["x"], delay=3600)
    pending_file(spool, job.id).write_bytes(b"{not json")
    st = api.status()
    assert st["counts"]["pending"] == 1 and st["scheduled"] == 1


# -- drop-in protocol --------------------------------------------------------------------------------


def test_drop_in_files_counted_by_status(api, spool):
    api.add(["x"])
    drop_in(spool, "from-shell.json", {"command": ["echo", "dropped"]})
    drop_in(spool, "another-one.json", {"command": ["true"], "priority": 5})
    st = api.status()
    assert st["counts"]["pending"] == 3
    assert st["ready"] == 3


def test_only_regular_visible_json_files_count(api, spool):
    api.add(["x"])
    (spool / "pending" / ".hidden.json").write_text('{"command": ["x"]}')
    (spool / "pending" / "notes.txt").write_text('{"command": ["x"]}')
    (spool / "pending" / "dir.json").mkdir()
    target = spool / "elsewhere.json"
    target.write_text('{"command": ["x"]}')
    os.symlink(target, spool / "pending" / "link.json")
    (spool / "tmp" / "in-progress.json").write_text('{"command": ["x"]}')
    st = api.status()
    assert st["counts"]["pending"] == 1
    assert st["ready"] == 1
    assert len(api.list()) == 1


# -- atomicity under concurrent readers ----------------------------------------------------------------

WRITER = """
import sys, taskq
sp = taskq.Spool(sys.argv[1])
blob = "x" * 65536
for i in range(int(sys.argv[2])):
    sp.add(["job", str(i)], payload={"i": i, "blob": blob}, priority=i % 7 - 3)
"""


def test_readers_never_see_partial_files(spool):
    n = 300
    taskq.Spool(spool).add(["first"])  # the spool exists before readers start
    problems: list[str] = []
    stop = threading.Event()
    api_reads = {"n": 0}

    def api_reader():
        api = taskq.Spool(spool)
        while not stop.is_set():
            try:
                api.status()
                for job in api.list(limit=None):
                    assert job.command[0] in ("first", "job")
                api_reads["n"] += 1
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                problems.append(f"api: {exc!r}")

    thread = threading.Thread(target=api_reader)
    thread.start()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(spool), str(n)])
    seen_counts = set()
    files_read = 0
    try:
        while True:
            done = writer.poll() is not None
            names = os.listdir(spool / "pending")
            seen_counts.add(len(names))
            for name in names:
                if parse_pending_name(name) is None:
                    problems.append(f"foreign name in pending/: {name}")
                    continue
                try:
                    raw = (spool / "pending" / name).read_bytes()
                except FileNotFoundError:
                    continue
                files_read += 1
                try:
                    job = Job.from_bytes(raw)
                except ValidationError as exc:
                    problems.append(f"{name}: {exc} ({len(raw)} bytes)")
                    continue
                if job.command[0] == "job" and len(job.payload["blob"]) != 65536:
                    problems.append(f"{name}: truncated payload")
            if done:
                break
    finally:
        stop.set()
        thread.join()
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert problems == []
    assert len(os.listdir(spool / "pending")) == n + 1
    assert ls(spool, "tmp") == []
    assert any(1 < c < n + 1 for c in seen_counts), "the reader never overlapped the writer"
    assert files_read > n and api_reads["n"] > 0


# -- unique keys -------------------------------------------------------------------------------


def _add_with_key(path, key, barrier, results):
    barrier.wait()
    job = taskq.Spool(path).add(["cron-job"], unique_key=key)
    results.put((job.id, job.duplicate))


@pytest.mark.parametrize("round_", range(3))
def test_unique_key_under_concurrency(spool, round_):
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    other = taskq.Spool(spool).add(["other"])  # the spool exists: processes race on the key only
    procs = [ctx.Process(target=_add_with_key, args=(str(spool), "nightly", barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    ids = {job_id for job_id, _ in got}
    assert len(ids) == 1
    assert sorted(dup for _, dup in got) == [False] + [True] * (n - 1)
    (job_id,) = ids
    assert sorted(parse_pending_name(f).id for f in ls(spool, "pending")) == sorted([other.id, job_id])


def _add_many(path, barrier, results, count):
    barrier.wait()
    sp = taskq.Spool(path)
    results.put([sp.add(["n"]).id for _ in range(count)])


def test_concurrent_adds_create_distinct_jobs(spool):
    ctx = multiprocessing.get_context("fork")
    n, per = 8, 15
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_add_many, args=(str(spool), barrier, results, per)) for _ in range(n)]
    for p in procs:
        p.start()
    ids = [i for _ in range(n) for i in results.get(timeout=30)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(set(ids)) == n * per
    assert sorted(parse_pending_name(f).id for f in ls(spool, "pending")) == sorted(ids)
    assert ls(spool, "tmp") == []


def test_unique_key_duplicate_returns_existing(api, spool):
    first = api.add(["a"], unique_key="k", payload=1)
    again = api.add(["b"], unique_key="k", payload=2)
    assert again.duplicate and not first.duplicate
    assert again.id == first.id and again.command == ["a"] and again.payload == 1
    other = api.add(["c"], unique_key="other")
    assert other.id != first.id and not other.duplicate
    assert len(ls(spool, "pending")) == 2


@pytest.mark.parametrize("state", ["running", "done"])
def test_unique_key_held_while_running_or_done(api, spool, state):
    first = api.add(["a"], unique_key="k")
    move(spool, first.id, state)
    again = api.add(["a"], unique_key="k")
    assert again.duplicate and again.id == first.id and again.state == state
    assert ls(spool, "pending") == []


def test_unique_key_released_when_holder_failed(api, spool):
    first = api.add(["a"], unique_key="k")
    move(spool, first.id, "failed")
    second = api.add(["a"], unique_key="k")
    assert not second.duplicate and second.id != first.id
    assert pending_file(spool, second.id).exists()
    third = api.add(["a"], unique_key="k")
    assert third.duplicate and third.id == second.id


def test_unique_key_released_when_purged(api, spool):
    first = api.add(["a"], unique_key="k")
    done = move(spool, first.id, "done")
    assert api.add(["a"], unique_key="k").duplicate
    done.unlink()
    second = api.add(["a"], unique_key="k")
    assert not second.duplicate and second.id != first.id


def test_drop_in_files_are_not_deduplicated(api, spool):
    api.add(["warm-up"])
    drop_in(spool, "x.json", {"command": ["a"], "unique_key": "k"})
    job = api.add(["a"], unique_key="k")
    assert not job.duplicate


# -- batches ---------------------------------------------------------------------------------------


def test_batch_ids_in_order(api, spool):
    jobs = api.add_batch([{"command": ["n", str(i)], "priority": i % 3} for i in range(10)])
    assert [j.command[1] for j in jobs] == [str(i) for i in range(10)]
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    assert len({j.id for j in jobs}) == 10
    assert {parse_pending_name(n).id for n in ls(spool, "pending")} == {j.id for j in jobs}
    assert [j.id for j in api.list()] == [j.id for j in reversed(jobs)]


def test_batch_fields_and_durations(api):
    (job,) = api.add_batch([{
        "command": ["x"], "name": "n", "payload": {"a": [1]}, "env": {"K": "v"},
        "delay": "10m", "max_attempts": 2, "backoff": "1m", "backoff_max": "2h", "timeout": 30,
        "permanent_exit_codes": [9], "unique_key": "u", "x_extra": "kept",
    }])
    assert job.run_at_ts - job.created_ts == pytest.approx(600, abs=0.002)
    assert (job.backoff, job.backoff_max, job.timeout, job.max_attempts) == (60.0, 7200.0, 30.0, 2)
    assert job.permanent_exit_codes == [9] and job.env == {"K": "v"}
    assert api.get(job.id).to_record()["x_extra"] == "kept"


@pytest.mark.parametrize(
    "bad",
    [{"command": []}, {"command": "x"}, {"priority": "high", "command": ["x"]}, {"name": "x"},
     {"command": ["x"], "env": {"1": "x"}}, {"command": ["x"], "max_attempts": 0}, "not an object"],
)
def test_batch_all_or_nothing(api, spool, bad):
    api.add(["warm-up"])
    before = ls(spool, "pending")
    with pytest.raises(ValidationError) as info:
        api.add_batch([{"command": ["ok"]}, bad, {"command": ["ok2"]}])
    assert "line 2" in str(info.value)
    assert ls(spool, "pending") == before
    assert ls(spool, "tmp") == []


def test_batch_error_uses_given_line_numbers(api, spool):
    with pytest.raises(ValidationError) as info:
        api.add_batch([{"command": ["ok"]}, {"command": []}], line_numbers=[3, 7])
    assert "line 7" in str(info.value) and "command" in str(info.value)
    assert ls(spool, "pending") == []


def test_batch_duplicate_keys_within_a_batch(api, spool):
    jobs = api.add_batch([
        {"command": ["a"], "unique_key": "k"},
        {"command": ["b"]},
        {"command": ["c"], "unique_key": "k"},
    ])
    assert jobs[0].id == jobs[2].id
    assert [j.duplicate for j in jobs] == [False, False, True]
    assert jobs[2].command == ["a"]
    assert len(ls(spool, "pending")) == 2


def test_batch_key_held_by_an_existing_job(api, spool):
    held = api.add(["a"], unique_key="k")
    jobs = api.add_batch([{"command": ["b"], "unique_key": "k"}, {"command": ["c"]}])
    assert jobs[0].duplicate and jobs[0].id == held.id
    assert not jobs[1].duplicate
    assert len(ls(spool, "pending")) == 2


def test_batch_same_id_twice_rejected(api, spool):
    with pytest.raises(ValidationError):
        api.add_batch([{"command": ["a"], "id": "same"}, {"command": ["b"], "id": "same"}])
    assert ls(spool, "pending") == []


def test_batch_dependencies_within_a_batch(api, spool):
    jobs = api.add_batch([
        {"command": ["a"], "id": "step-1"},
        {"command": ["b"], "after": ["step-1"]},
    ])
    assert jobs[1].after == ["step-1"]
    assert parse_pending_name(pending_file(spool, jobs[1].id).name).has_deps
    assert api.status()["waiting"] == 1


def test_batch_missing_dependency_enqueues_nothing(api, spool):
    with pytest.raises(DependencyError) as info:
        api.add_batch([{"command": ["a"]}, {"command": ["b"], "after": ["01AAAAAAAAAAAAAAAAAAAAAAAA"]}])
    assert "01AAAAAAAAAAAAAAAAAAAAAAAA" in str(info.value)
    assert ls(spool, "pending") == []


# -- dependencies --------------------------------------------------------------------------------


def test_after_missing_job(api, spool):
    api.add(["warm-up"])
    with pytest.raises(DependencyError) as info:
        api.add(["x"], after=["01AAAAAAAAAAAAAAAAAAAAAAAA"])
    assert "01AAAAAAAAAAAAAAAAAAAAAAAA" in str(info.value)
    assert len(ls(spool, "pending")) == 1


def test_after_failed_job(api, spool):
    dep = api.add(["dep"])
    move(spool, dep.id, "failed")
    with pytest.raises(DependencyError) as info:
        api.add(["x"], after=[dep.id])
    assert dep.id in str(info.value)
    assert ls(spool, "pending") == []


@pytest.mark.parametrize("state", ["pending", "running", "done"])
def test_after_live_job(api, spool, state):
    dep = api.add(["dep"])
    if state != "pending":
        move(spool, dep.id, state)
    job = api.add(["x"], after=[dep.id])
    assert job.after == [dep.id]
    assert parse_pending_name(pending_file(spool, job.id).name).has_deps


def test_after_invalid_id(api):
    with pytest.raises(ValidationError):
        api.add(["x"], after=["not valid!"])


# -- configuration, free space --------------------------------------------------------------------


def test_disk_full_guard(spool):
    write_toml(spool, 'min_free = "1000T"\n')
    api = taskq.Spool(spool)
    with pytest.raises(DiskFullError) as info:
        api.add(["x"])
    assert isinstance(info.value, SpoolError)
    assert str(spool) in str(info.value)
    with pytest.raises(DiskFullError):
        api.add_batch([{"command": ["x"]}])
    assert ls(spool, "pending") == []
    assert ls(spool, "tmp") == []


def test_disk_full_guard_disabled_with_zero(spool):
    write_toml(spool, "min_free = 0\n")
    assert taskq.Spool(spool).add(["x"]).state == "pending"


def test_invalid_config_refuses_add(spool):
    write_toml(spool, "[defaults]\nmax_attempts = 0\n")
    with pytest.raises(ValidationError) as info:
        taskq.Spool(spool).add(["x"])
    assert "max_attempts" in str(info.value)
    assert ls(spool, "pending") == []


def test_task_types_and_defaults_through_the_api(spool):
    write_toml(spool, """
        [defaults]
        max_attempts = 3
        backoff = "1m"

        [tasks.nightly]
        command = "make report"
        timeout = "1h"
        max_attempts = 4
    """)
    api = taskq.Spool(spool)
    job = api.add(name="nightly")
    assert job.command == ["/bin/sh", "-c", "make report"]
    assert (job.timeout, job.max_attempts, job.backoff) == (3600.0, 4, 60.0)
    job = api.add(name="nightly", max_attempts=9, timeout=5)
    assert (job.timeout, job.max_attempts) == (5.0, 9)
    job = api.add(["other"])
    assert (job.max_attempts, job.backoff, job.timeout) == (3, 60.0, None)


def test_api_validation_leaves_nothing(api, spool):
    api.add(["warm-up"])
    for kwargs in ({"max_attempts": 0}, {"priority": 10**10}, {"env": {"B-AD": "x"}},
                   {"permanent_exit_codes": [0]}, {"payload": "x" * (1 << 20)}, {"delay": 5, "run_at": 1e9}):
        with pytest.raises(ValidationError):
            api.add(["x"], **kwargs)
    with pytest.raises(ValidationError):
        api.add([])
    assert len(ls(spool, "pending")) == 1
    assert ls(spool, "tmp") == []


def test_counts_of_settled_jobs_take_only_job_files(tmp_path):
    """status counts done/ and failed/ without a stat per file: every non-hidden name
    ending with .json counts (one made by hand that is not a regular file too, as the
    count documents), nothing else does."""
    api = taskq.Spool(str(tmp_path / "spool"))
    api.add(["true"])  # makes the spool
    done = tmp_path / "spool" / "done"
    for name in ("A.json", "B.json", ".hidden.json", ".json", "C.json.tmp", "json", "D.jsonx", "E.JSON"):
        (done / name).write_text("{}")
    (done / "F.json").mkdir()
    assert api.store.count("done") == 3  # A, B and the directory F.json
    assert api.store.count("done", ".tmp") == 1
    assert api.store.count("failed") == 0


def test_a_producer_looks_at_the_spool_and_its_free_space_once_a_second(tmp_path, monkeypatch):
    """Adds in a loop check the spool's directories and free space once a second, not
    at every add; a spool removed meanwhile fails the add (nothing written) and is
    made again by an add after that second."""
    import shutil

    from taskq.spool import store as store_module

    root = tmp_path / "spool"
    api = taskq.Spool(str(root))
    looks = []
    real_free = store_module.Store.free_bytes
    monkeypatch.setattr(store_module.Store, "free_bytes", lambda self: looks.append(1) or real_free(self))
    for _ in range(3):
        api.add(["true"])
    assert len(looks) == 1
    assert len(ls(root, "pending")) == 3

    shutil.rmtree(root)
    with pytest.raises(SpoolError, match="No such file or directory"):
        api.add(["true"])
    assert not root.exists()

    monkeypatch.setattr(store_module, "LOOK_AGAIN", 0.0)  # the second has passed
    job = api.add(["true"])
    assert [name.split(".")[2] for name in ls(root, "pending")] == [job.id]
    assert len(looks) == 2
