"""The event log (README, "taskq events"): what each command and the worker write to
``SPOOL/events.jsonl``, rotation by size with several writers, ``taskq events`` and
its filters, ``--follow`` (new events, rotation, a log that does not exist yet,
SIGINT), write failures that never fail a state change, and what ``status --watch``
shows from the log. Spool contract tests through the API on real temporary spools,
and black-box tests of the installed ``taskq``.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest

import taskq
from taskq import Spool, times
from taskq.job import Outcome
from taskq.spool.eventlog import EventFollower, EventLog
from taskq.spool.fileio import FileIO
from taskq.spool.layout import parse_pending_name
from taskq.stopping import StopState
from taskq.worker import Worker
from workerutil import WorkerFactory, burst, record, sh, wait_for

FIELDS = ["time", "id", "name", "from", "to", "attempt", "exit_code", "signal", "error", "worker"]
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
WORKER_RE = re.compile(r"^[^:\s]+:\d+$")


# -- helpers ---------------------------------------------------------------------------------------


def log_files(spool: Path) -> list[Path]:
    """The event log's files, oldest first."""
    rotated = sorted((p for p in spool.glob("events.jsonl.*")), key=lambda p: -int(p.name.rsplit(".", 1)[1]))
    live = spool / "events.jsonl"
    return rotated + ([live] if live.exists() else [])


def raw_lines(spool: Path) -> list[bytes]:
    out: list[bytes] = []
    for path in log_files(spool):
        out += path.read_bytes().splitlines()
    return out


def read_events(spool: Path) -> list[dict[str, Any]]:
    """Every event, oldest file first; each line must be one whole JSON object."""
    events = []
    for line in raw_lines(spool):
        record_ = json.loads(line)
        assert list(record_) == FIELDS, record_
        assert TIME_RE.match(record_["time"]), record_["time"]
        events.append(record_)
    return events


def of(events: list[dict[str, Any]], job_id: str) -> list[tuple]:
    return [(e["from"], e["to"], e["attempt"], e["exit_code"]) for e in events if e["id"] == job_id]


def pending_entry(api: taskq.Spool, job_id: str):
    for name in os.listdir(Path(api.path) / "pending"):
        parsed = parse_pending_name(name)
        if parsed and parsed.id == job_id:
            return parsed
    raise AssertionError(f"{job_id} is not pending")


class Follower:
    """``taskq events --follow ARGS`` in the background, its stdout in a file."""

    def __init__(self, taskq_: Any, tmp_path: Path, *args: str, name: str = "follow") -> None:
        self.out_path = tmp_path / f"{name}.out"
        self.err_path = tmp_path / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = taskq_.popen("events", "--follow", *args, stdout=out, stderr=err, text=False)

    def lines(self) -> list[str]:
        text = self.out_path.read_text()
        return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]

    def wait_lines(self, n: int, timeout: float = 30.0) -> list[str]:
        wait_for(lambda: len(self.lines()) >= n, timeout, message=f"{n} lines from events --follow "
                 f"(have {len(self.lines())}; stderr {self.err_path.read_text()!r})")
        return self.lines()

    def interrupt(self) -> int:
        assert self.proc.poll() is None, f"the follower exited: {self.err_path.read_text()}"
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("events --follow did not stop on SIGINT")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def followers():
    started: list[Follower] = []
    yield started
    for f in started:
        f.kill()


def follow(taskq_: Any, tmp_path: Path, followers: list, *args: str, name: str = "follow") -> Follower:
    f = Follower(taskq_, tmp_path, *args, name=name)
    followers.append(f)
    return f


@pytest.fixture
def workers(taskq, tmp_path):
    """Background ``taskq work`` processes, killed at teardown if still running."""
    factory = WorkerFactory(taskq, tmp_path)
    yield factory
    factory.stop_all()


def config(spool: Path, text: str) -> None:
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    (spool / "taskq.toml").write_text(text)


# -- what is written ----------------------------------------------------------------------------------


def test_a_job_that_fails_once_then_succeeds(taskq, spool):
    job_id = taskq.add(*sh('test "$TASKQ_ATTEMPT" -ge 2 || exit 3'),
                       options=["--name", "flaky", "--backoff", "0", "--max-attempts", "3"])
    proc = burst(taskq)
    events = read_events(spool)
    assert of(events, job_id) == [
        (None, "pending", None, None),
        ("pending", "running", 1, None),
        ("running", "pending", 1, 3),
        ("pending", "running", 2, None),
        ("running", "done", 2, 0),
    ]
    mine = [e for e in events if e["id"] == job_id]
    assert all(e["name"] == "flaky" for e in mine)
    assert [e["error"] for e in mine] == [None, None, "exit status 3", None, None]
    assert all(e["signal"] is None for e in mine)
    # add is not a worker; every change the worker made names it (host:pid of that process)
    assert mine[0]["worker"] is None
    workers_seen = {e["worker"] for e in mine[1:]}
    assert len(workers_seen) == 1 and WORKER_RE.match(workers_seen.pop() or "")
    attempts = record(spool, job_id)["attempts"]
    assert mine[1]["worker"] == attempts[0]["worker"] == attempts[1]["worker"]
    assert mine[1]["worker"].rsplit(":", 1)[0] == os.uname().nodename
    times_ = [times.parse_iso(e["time"]) for e in mine]
    assert times_ == sorted(times_)
    assert "Traceback" not in proc.stderr


def test_timeout_and_permanent_failure_outcomes(taskq, spool):
    slow = taskq.add("sleep", "30", options=["--timeout", "0.3", "--max-attempts", "1"])
    permanent = taskq.add(*sh("exit 100"))
    burst(taskq, timeout=60)
    events = read_events(spool)
    (settled,) = [e for e in events if e["id"] == slow and e["from"] == "running"]
    assert (settled["to"], settled["exit_code"], settled["signal"]) == ("failed", None, signal.SIGTERM)
    assert settled["error"] == "timed out after 0.3s (signal 15)"
    (settled,) = [e for e in events if e["id"] == permanent and e["from"] == "running"]
    assert (settled["to"], settled["exit_code"], settled["error"]) == ("failed", 100, "exit status 100")


def test_every_command_writes_its_events_with_worker_null(taskq, spool):
    job_id = taskq.add("true")
    taskq("cancel", job_id, check=True)
    taskq("retry", job_id, check=True)
    taskq("cancel", job_id, check=True)
    taskq("purge", "--state", "failed", check=True)
    events = read_events(spool)
    assert [(e["from"], e["to"], e["error"]) for e in events] == [
        (None, "pending", None),
        ("pending", "failed", "cancelled"),
        ("failed", "pending", None),
        ("pending", "failed", "cancelled"),
        ("failed", None, None),  # purged: "to" is null
    ]
    assert all(e["id"] == job_id and e["worker"] is None and e["attempt"] is None for e in events)


def test_dependents_drop_ins_and_invalid_files(taskq, spool):
    dep = taskq.add(*sh("exit 100"))
    child = taskq.add("true", options=["--after", dep])
    (spool / "pending" / "hello.json").write_text(json.dumps({"command": ["true"], "name": "dropped"}))
    (spool / "pending" / "junk.json").write_text("not json")
    burst(taskq)
    events = read_events(spool)
    assert of(events, child)[-1] == ("pending", "failed", None, None)
    assert [e["error"] for e in events if e["id"] == child][-1] == f"dependency {dep} failed"
    (dropped,) = {e["id"] for e in events if e["name"] == "dropped"}
    assert of(events, dropped) == [(None, "pending", None, None), ("pending", "running", 1, None),
                                   ("running", "done", 1, 0)]
    junk = [e for e in events if e["to"] == "failed" and e["from"] == "pending" and e["id"] not in (child, dep)]
    assert len(junk) == 1 and "JSON" in junk[0]["error"] and WORKER_RE.match(junk[0]["worker"])


def test_recovery_is_written_by_the_recovering_worker(taskq, spool):
    api = taskq_api(spool)
    job_id = api.add(["true"], backoff=0).id
    claimed = api.transitions.claim(pending_entry(api, job_id))
    assert claimed is not None
    api.transitions.start(claimed, times.now())
    claimed.lock.release(remove=False)  # the worker died
    proc = burst(taskq)
    events = read_events(spool)
    assert of(events, job_id) == [
        (None, "pending", None, None),
        ("pending", "running", 1, None),
        ("running", "pending", 1, None),
        ("pending", "running", 2, None),
        ("running", "done", 2, 0),
    ]
    recovered = [e for e in events if e["id"] == job_id][2]
    assert recovered["error"] == "worker lost"
    assert recovered["worker"] is not None and recovered["worker"].endswith(":" + worker_pid(proc.stderr))


def worker_pid(stderr: str) -> str:
    m = re.search(r"taskq\[(\d+)\]", stderr)
    assert m, stderr
    return m.group(1)


def taskq_api(spool: Path) -> taskq.Spool:
    return taskq.Spool(spool)


def test_interrupted_attempt_and_cancel_of_a_running_job(taskq, spool, workers):
    long = taskq.add("sleep", "30")
    w = workers.start("--grace", "0.2")
    w.wait_started()
    wait_for(lambda: any(e["id"] == long and e["to"] == "running" for e in read_events(spool)), 20,
             message="the claim")
    w.send(signal.SIGTERM)
    assert w.wait() == 0
    w2 = workers.start()
    w2.wait_started()
    wait_for(lambda: sum(e["to"] == "running" for e in read_events(spool)) == 2, 20, message="a second claim")
    taskq("cancel", long, check=True)
    w2.send(signal.SIGTERM)
    assert w2.wait() == 0
    events = [e for e in read_events(spool) if e["id"] == long]
    assert [(e["from"], e["to"], e["attempt"], e["error"]) for e in events] == [
        (None, "pending", None, None),
        ("pending", "running", 1, None),
        ("running", "pending", 1, "interrupted"),
        ("pending", "running", 2, None),
        ("running", "failed", 2, "cancelled"),
    ]
    # the cancelled attempt was settled by its worker
    assert events[4]["worker"] == events[3]["worker"] != events[1]["worker"]


def test_add_costs_one_open_and_one_write_of_the_log(tmp_path, monkeypatch):
    calls: Counter = Counter()
    for method in ("open_append", "append", "fsync", "rename"):
        original = getattr(FileIO, method)

        def counting(self, *args, _m=method, _o=original):
            if _m == "open_append" and str(args[0]).endswith("events.jsonl"):
                calls["open"] += 1
            if _m == "append":
                calls["write"] += 1
            if _m in ("fsync", "rename") and "events" in str(args[0]):
                calls["other"] += 1
            return _o(self, *args)

        monkeypatch.setattr(FileIO, method, counting)
    api = taskq.Spool(tmp_path / "spool")
    api.add(["true"])
    assert calls == Counter({"open": 1, "write": 1})


# -- several writers, rotation -----------------------------------------------------------------------


def test_concurrent_workers_write_whole_consistent_lines(taskq, spool, workers):
    n = 120
    lines = [json.dumps({"command": sh('test "$TASKQ_ATTEMPT" -ge 2 || test "$FAIL" != 1 || exit 3'),
                         "env": {"FAIL": "1" if i % 3 == 0 else "0"}, "backoff": 0, "name": f"j{i}"})
             for i in range(n)]
    ids = taskq("add", "--batch", "-", input="\n".join(lines) + "\n", check=True).stdout.split()
    started = [workers.start("--burst", "--concurrency", "2") for _ in range(3)]
    for w in started:
        assert w.wait(120) == 0, w.stderr()
    burst(taskq)  # anything the burst workers left for later
    events = read_events(spool)  # every line whole and parseable
    by_id: dict[str, list[dict]] = {}
    for e in events:
        by_id.setdefault(e["id"], []).append(e)
    assert set(by_id) == set(ids)
    for i, job_id in enumerate(ids):
        seq = by_id[job_id]
        rec = record(spool, job_id)
        assert rec["state"] == "done"
        fails = i % 3 == 0
        expected = [(None, "pending", None, None), ("pending", "running", 1, None)]
        expected += ([("running", "pending", 1, 3), ("pending", "running", 2, None), ("running", "done", 2, 0)]
                     if fails else [("running", "done", 1, 0)])
        assert [(e["from"], e["to"], e["attempt"], e["exit_code"]) for e in seq] == expected, (job_id, seq)
        # each settle names the worker of its claim, which the record's attempt names too
        for claim, settle in zip(seq[1::2], seq[2::2], strict=True):
            assert claim["worker"] == settle["worker"] == rec["attempts"][claim["attempt"] - 1]["worker"]
    assert len({e["worker"] for e in events} - {None}) >= 2, "the jobs ran in one worker only"


def _append_many(root: str, tag: str, count: int, max_bytes: int) -> None:
    from taskq.spool.store import Store

    log = EventLog(Store(root))
    for i in range(count):
        line = json.dumps({"time": times.iso(time.time()), "id": f"{tag}-{i}", "pad": "x" * (i % 50)})
        log.append(line.encode() + b"\n", max_bytes, 10_000)


def test_rotation_by_several_processes_loses_nothing_and_never_rotates_twice(tmp_path):
    root = tmp_path / "spool"
    root.mkdir()
    max_bytes, per_process = 4096, 400
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_events as t; "
            "t._append_many(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), f"p{k}", str(per_process), str(max_bytes)])
             for k in range(4)]
    for p in procs:
        assert p.wait(120) == 0
    files = log_files(root)
    assert len(files) > 10
    got = Counter(json.loads(line)["id"] for line in raw_lines(root))
    assert got == Counter(f"p{k}-{i}" for k in range(4) for i in range(per_process))
    longest = max(len(line) + 1 for line in raw_lines(root))
    for path in files[:-1]:
        # a file is rotated when the next line would not fit: a second rotation of
        # the same file would have rotated a small new one
        assert path.stat().st_size > max_bytes - longest, (path.name, path.stat().st_size)
    assert not (root / "events.lock").read_bytes()


def test_keep_count_is_honoured(taskq, spool):
    config(spool, 'events_max = "1KiB"\nevents_keep = 2\n')
    lines = "".join(json.dumps({"command": ["true"]}) + "\n" for _ in range(60))
    taskq("add", "--batch", "-", input=lines, check=True)
    for _ in range(5):
        taskq.add("true")
    names = sorted(p.name for p in spool.glob("events.jsonl*"))
    assert names == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size <= 1024 for p in spool.glob("events.jsonl*"))
    assert (spool / "events.jsonl.1").stat().st_size > 1024 - 300
    # the newest events are kept, whole
    assert read_events(spool)[-1]["to"] == "pending"
    assert oct((spool / "events.jsonl").stat().st_mode & 0o777) == oct(0o600)


def test_events_max_0_never_rotates_and_keep_0_deletes(taskq, spool):
    config(spool, "events_max = 0\n")
    for _ in range(3):
        taskq.add("true")
    assert [p.name for p in spool.glob("events.jsonl*")] == ["events.jsonl"]
    assert len(read_events(spool)) == 3
    (spool / "taskq.toml").write_text("events_max = 300\nevents_keep = 0\n")
    last = taskq.add("true")  # the file is full: deleted, no old file kept, the line starts a new one
    assert [p.name for p in spool.glob("events.jsonl*")] == ["events.jsonl"]
    assert [e["id"] for e in read_events(spool)] == [last]


def test_invalid_settings_exit_2_naming_the_key(taskq, spool):
    config(spool, "events_keep = -1\n")
    proc = taskq("add", "--", "true")
    assert proc.returncode == 2 and "events_keep" in proc.stderr and proc.stdout == ""
    (spool / "taskq.toml").write_text('events_max = "huge"\n')
    proc = taskq("add", "--", "true")
    assert proc.returncode == 2 and "events_max" in proc.stderr
    assert list(spool.glob("events.jsonl*")) == [] and os.listdir(spool / "pending") == []


# -- taskq events --------------------------------------------------------------------------------------


def write_log(spool: Path, records: list[dict], tail: bytes = b"") -> None:
    spool.mkdir(parents=True, exist_ok=True)
    for name in ("tmp", "pending", "running", "done", "failed", "logs"):
        (spool / name).mkdir(mode=0o700, exist_ok=True)
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records) + tail
    (spool / "events.jsonl").write_bytes(data)


def ev(ts: float, job_id: str, src: Optional[str], dst: Optional[str], **extra: Any) -> dict:
    base = {"time": times.iso(ts), "id": job_id, "name": None, "from": src, "to": dst, "attempt": None,
            "exit_code": None, "signal": None, "error": None, "worker": None}
    base.update(extra)
    return base


def test_filters_json_and_human_lines(taskq, spool):
    now = time.time()
    records = [
        ev(now - 7200, "A", None, "pending", name="old"),
        ev(now - 1200, "B", None, "pending", name="[bold]b"),
        ev(now - 1100, "A", "pending", "running", attempt=1, worker="h:1"),
        ev(now - 60, "A", "running", "failed", attempt=1, exit_code=4, error="exit status 4", worker="h:1"),
        ev(now - 30, "B", "pending", "running", attempt=1, worker="h:2"),
    ]
    write_log(spool, records, tail=b'{"time": "2030-01-01T00:00:00.000Z", "id": "TORN"')  # an append in progress
    raw = (spool / "events.jsonl").read_text().splitlines()[:5]
    out = taskq("events", "--json", check=True).stdout.splitlines()
    assert out == raw  # the raw lines; the torn one is held back
    assert taskq("events", "--json", "--id", "A", check=True).stdout.splitlines() == [raw[0], raw[2], raw[3]]
    assert taskq("events", "--json", "--since", "30m", check=True).stdout.splitlines() == raw[1:]
    assert taskq("events", "--json", "--since", "10m", "--id", "B", check=True).stdout.splitlines() == [raw[4]]
    since = times.iso(now - 90)
    assert taskq("events", "--json", "--since", since, check=True).stdout.splitlines() == raw[3:]
    assert taskq("events", "--since", "2099-01-01", check=True).stdout == ""
    human = taskq("events", check=True).stdout.splitlines()
    assert len(human) == 5
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  A  old  \(new\) -> pending  enqueued$", human[0])
    assert "B  [bold]b  (new) -> pending" in human[1]
    assert human[3].endswith("A  -  running -> failed  attempt 1 failed: exit status 4 [h:1]")


def test_events_errors(taskq, spool, tmp_path):
    missing = taskq("events", spool=tmp_path / "nowhere")
    assert missing.returncode == 1 and "no spool at" in missing.stderr
    taskq.add("true")
    bad_id = taskq("events", "--id", "no/such")
    assert bad_id.returncode == 2 and bad_id.stdout == ""
    bad_since = taskq("events", "--since", "yesterday-ish")
    assert bad_since.returncode == 2 and "--since" in bad_since.stderr and len(bad_since.stderr.splitlines()) == 1
    assert taskq("events", "--id", "UNKNOWN", check=True).stdout == ""


def test_no_log_yet_prints_nothing(taskq, empty_spool):
    proc = taskq("events", check=True)
    assert proc.stdout == "" and proc.stderr == ""


def test_reading_follows_rotated_files_oldest_first(taskq, spool):
    config(spool, 'events_max = "2KiB"\nevents_keep = 50\n')
    ids = [taskq.add("true", options=["--name", f"n{i}"]) for i in range(3)]
    lines = "".join(json.dumps({"command": ["true"]}) + "\n" for _ in range(40))
    ids += taskq("add", "--batch", "-", input=lines, check=True).stdout.split()
    assert len(log_files(spool)) > 2
    out = [json.loads(line)["id"] for line in taskq("events", "--json", check=True).stdout.splitlines()]
    assert out == ids


# -- --follow -------------------------------------------------------------------------------------------


def test_follow_waits_for_the_log_then_streams_until_sigint(taskq, empty_spool, tmp_path, followers):
    f = follow(taskq, tmp_path, followers)
    time.sleep(1.0)
    assert f.proc.poll() is None and f.lines() == []
    job_id = taskq.add("true", options=["--name", "first"])
    (line,) = f.wait_lines(1)
    assert job_id in line and "(new) -> pending  enqueued" in line
    burst(taskq)
    lines = f.wait_lines(3)
    assert "claimed for attempt 1" in lines[1] and "attempt 1 succeeded" in lines[2]
    assert f.interrupt() == 0
    assert "Traceback" not in f.err_path.read_text()


def test_follow_with_id_and_since(taskq, spool, tmp_path, followers):
    a = taskq.add("true")
    b = taskq.add("true")
    f = follow(taskq, tmp_path, followers, "--id", a, "--json", "--since", "1h", name="a")
    g = follow(taskq, tmp_path, followers, "--since", "2099-01-01", "--json", name="future")
    assert json.loads(f.wait_lines(1)[0])["id"] == a  # the past first
    burst(taskq)
    lines = f.wait_lines(3)
    time.sleep(1.0)  # nothing of b comes later either
    lines = f.lines()
    assert [json.loads(x)["id"] for x in lines] == [a, a, a]
    assert [json.loads(x)["to"] for x in lines] == ["pending", "running", "done"]
    assert b not in "".join(lines)
    assert f.interrupt() == 0
    assert g.lines() == [] and g.interrupt() == 0


def test_follow_across_rotation_loses_nothing(taskq, empty_spool, tmp_path, followers, workers):
    spool = empty_spool
    config(spool, 'events_max = "3KiB"\nevents_keep = 1000\n')
    f = follow(taskq, tmp_path, followers, "--json")
    time.sleep(0.5)
    lines = "".join(json.dumps({"command": ["true"]}) + "\n" for _ in range(80))
    ids = taskq("add", "--batch", "-", input=lines, check=True).stdout.split()
    started = [workers.start("--burst", "--concurrency", "2") for _ in range(2)]
    for w in started:
        assert w.wait(120) == 0, w.stderr()
    burst(taskq)
    written = [line.decode() for line in raw_lines(spool)]
    assert len(written) == 3 * len(ids)
    assert len(log_files(spool)) > 5, "the log was not rotated"
    f.wait_lines(len(written), timeout=60)
    time.sleep(0.5)
    assert Counter(f.lines()) == Counter(written)  # nothing lost, nothing twice
    assert f.interrupt() == 0


def test_follow_holds_a_torn_line_until_it_is_complete(taskq, spool, tmp_path, followers):
    first = ev(time.time(), "ONE", None, "pending")
    second = json.dumps(ev(time.time(), "TWO", None, "pending")).encode() + b"\n"
    write_log(spool, [first], tail=second[:20])
    f = follow(taskq, tmp_path, followers, "--json")
    assert [json.loads(x)["id"] for x in f.wait_lines(1)] == ["ONE"]
    time.sleep(0.8)
    assert len(f.lines()) == 1
    fd = os.open(spool / "events.jsonl", os.O_WRONLY | os.O_APPEND)
    os.write(fd, second[20:])
    os.close(fd)
    assert [json.loads(x)["id"] for x in f.wait_lines(2)] == ["ONE", "TWO"]
    assert f.interrupt() == 0


def test_follower_in_process_sees_a_rotation_done_by_hand(tmp_path):
    """EventFollower on its own: truncation and rotation by rename, each line once."""
    from taskq.spool.store import Store

    root = tmp_path / "spool"
    root.mkdir()
    log = root / "events.jsonl"
    follower = EventFollower(Store(root))
    follower.start()
    assert list(follower.history()) == [] and list(follower.poll(0.0)) == []
    log.write_bytes(b"a\nb")
    assert list(follower.poll(1.0)) == [b"a"]
    with open(log, "ab") as fh:
        fh.write(b"\n")
    assert list(follower.poll(2.0)) == [b"b"]
    os.rename(log, root / "events.jsonl.1")
    with open(root / "events.jsonl.1", "ab") as fh:
        fh.write(b"late\n")  # a writer that opened the old file before the rename
    log.write_bytes(b"c\n")
    assert list(follower.poll(3.0)) == [b"late", b"c"]
    log.write_bytes(b"")  # truncated by hand
    assert list(follower.poll(4.0)) == []
    log.write_bytes(b"d\n")
    assert list(follower.poll(5.0)) == [b"d"]
    follower.close()


# -- write failures -------------------------------------------------------------------------------------


def test_a_log_that_cannot_be_written_fails_no_command(taskq, spool):
    taskq.add("true")
    (spool / "events.jsonl").unlink()
    (spool / "events.jsonl").mkdir()  # EISDIR for every open: fails for root too
    proc = taskq("add", "--", "true", check=True)
    job_id = proc.stdout.strip()
    (warning,) = proc.stderr.splitlines()
    assert warning.startswith("taskq: cannot record an event") and str(spool) in warning
    batch = taskq("add", "--batch", "-", input='{"command": ["true"]}\n' * 3, check=True)
    assert len(batch.stdout.split()) == 3
    assert len(batch.stderr.splitlines()) == 1, batch.stderr  # once per process
    work = burst(taskq)
    assert sum("cannot record an event" in line for line in work.stderr.splitlines()) == 1, work.stderr
    assert record(spool, job_id)["state"] == "done"
    assert len(os.listdir(spool / "done")) == 5
    cancel_target = taskq.add("true")
    cancelled = taskq("cancel", cancel_target, check=True)
    assert "cannot record an event" in cancelled.stderr


class _FailingEvents:
    """FileIO.append failing with *err* for the event log only."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
        self.fired = 0
        original_open, original_append = FileIO.open_append, FileIO.append
        events_fds: set[int] = set()
        outer = self

        def open_append(self_, path: str, mode: int) -> int:
            fd = original_open(self_, path, mode)
            if path.endswith("events.jsonl"):
                events_fds.add(fd)
            else:
                events_fds.discard(fd)
            return fd

        def append(self_, fd: int, data: bytes) -> None:
            if fd in events_fds:
                outer.fired += 1
                raise OSError(err, os.strerror(err))
            return original_append(self_, fd, data)

        monkeypatch.setattr(FileIO, "open_append", open_append)
        monkeypatch.setattr(FileIO, "append", append)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EIO])
def test_fault_in_the_event_write_warns_once_and_changes_state(tmp_path, monkeypatch, capsys, err):
    faults = _FailingEvents(monkeypatch, err)
    api = taskq.Spool(tmp_path / "spool")
    jobs = [api.add(["true"], backoff=0) for _ in range(3)]
    assert all(api.get(j.id).state == "pending" for j in jobs)
    api.cancel([jobs[2].id])
    captured = capsys.readouterr()
    assert faults.fired == 4
    (line,) = captured.err.splitlines()
    assert line.startswith("taskq: cannot record an event (cannot write ") and "events.jsonl" in line
    assert ("disk full" in line) == (err == errno.ENOSPC)
    # a worker says it once, in its own log, and runs the jobs
    log = io.StringIO()
    worker = Worker(taskq.Spool(tmp_path / "spool"), burst=True, log=log, stop=StopState())
    assert worker.run() == 0
    assert log.getvalue().count("cannot record an event") == 1, log.getvalue()
    assert [api.get(j.id).state for j in jobs] == ["done", "done", "failed"]
    assert not (tmp_path / "spool" / "events.jsonl").exists() or raw_lines(tmp_path / "spool") == []


def test_an_observer_is_told_after_the_event_recorder(tmp_path):
    """Observers compose: the event log and any other observer both see each change."""
    api = taskq.Spool(tmp_path / "spool")
    seen: list[tuple] = []
    api.transitions.subscribe(observe=lambda c: seen.append((c.kind, c.src, c.dst)))
    job = api.add(["true"])
    claimed = api.transitions.claim(pending_entry(api, job.id))
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    assert seen == [("enqueue", None, "pending"), ("claim", "pending", "running"), ("start", "running", "running"),
                    ("settle", "running", "done")]
    assert [(e["from"], e["to"]) for e in read_events(tmp_path / "spool")] == [
        (None, "pending"), ("pending", "running"), ("running", "done")]


# -- API ---------------------------------------------------------------------------------------------------


def test_api_events_and_follow(tmp_path):
    api = taskq.Spool(tmp_path / "spool")
    a = api.add(["true"]).id
    b = api.add(["true"]).id
    assert [e["id"] for e in api.events()] == [a, b]
    assert [e["id"] for e in api.events(job_id=b)] == [b]
    assert list(api.events(since=time.time() + 60)) == []
    stream = api.events(follow=True)
    assert next(stream)["id"] == a and next(stream)["id"] == b
    got: list[dict] = []
    thread = threading.Thread(target=lambda: got.append(next(stream)), daemon=True)
    thread.start()
    time.sleep(0.3)
    assert got == []
    c = api.add(["true"]).id
    thread.join(10)
    assert got and got[0]["id"] == c
    stream.close()


# -- status --watch -------------------------------------------------------------------------------------


def _failed_and_done(taskq) -> tuple[str, str]:
    bad = taskq.add(*sh("exit 4"), options=["--max-attempts", "1", "--name", "bad-job"])
    good = taskq.add("true")
    burst(taskq)
    return bad, good


def test_status_watch_shows_throughput_and_failures_from_the_log(taskq, spool):
    bad, _ = _failed_and_done(taskq)
    proc = taskq.popen("status", "--watch", "--interval", "0.3")
    try:
        text = ""
        deadline = time.monotonic() + 30
        while "attempts to retry" not in text or bad not in text.split("latest failures in the event log:")[-1]:
            assert time.monotonic() < deadline, text
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                text += os.read(proc.stdout.fileno(), 65536).decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "last minute: 1 done, 1 failed, 0 attempts to retry, 2 claimed" in text
    section = text.split("latest failures in the event log:")[1]
    assert re.search(rf"  \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}} {bad} bad-job attempt 1: exit status 4 -> failed",
                     section), section


def _first_watch_json(taskq: Any) -> dict[str, Any]:
    """The first object `status --watch --json` prints; then SIGINT, which exits 0."""
    proc = taskq.popen("status", "--watch", "--json", "--interval", "0.2")
    try:
        first = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return first


def test_status_watch_json_carries_the_log_figures(taskq, spool):
    bad, _ = _failed_and_done(taskq)
    first = _first_watch_json(taskq)
    assert first["throughput"] == {"window": 60.0, "done": 1, "failed": 1, "retries": 0, "claims": 2}
    (failure,) = first["latest_failures"]
    assert (failure["id"], failure["to"], failure["attempt"], failure["error"]) == (bad, "failed", 1, "exit status 4")
    # status --json without --watch is unchanged
    assert "throughput" not in taskq.json("status", "--json")


def test_status_watch_on_a_terminal(taskq, spool):
    bad, _ = _failed_and_done(taskq)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = taskq.env(env={"COLUMNS": "200", "LINES": "50", "TERM": "xterm"})
    proc = subprocess.Popen([taskq.exe, "status", "--watch", "--interval", "0.3"], env=env,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 30
        # Everything asserted below, not just the start of the table: the screen may
        # arrive in several reads.
        wanted = [b"latest failures in the event log", bad.encode(), b"last minute", b"exit status 4", b"bad-job"]
        while not all(w in out for w in wanted):
            assert time.monotonic() < deadline, out
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.decode("utf-8", "replace")
    assert "last minute: 1 done, 1 failed" in text
    assert "exit status 4" in text and "bad-job" in text


def test_status_watch_without_a_readable_log_still_shows_the_status(taskq, spool):
    taskq.add("true")
    (spool / "events.jsonl").unlink()
    (spool / "events.jsonl").mkdir()
    first = _first_watch_json(taskq)
    assert first["counts"]["pending"] == 1 and "throughput" not in first


def test_a_symlinked_log_is_never_followed(taskq, spool, tmp_path):
    taskq.add("true")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps(ev(time.time(), "PLANTED", None, "pending")) + "\n")
    (spool / "events.jsonl").unlink()
    (spool / "events.jsonl").symlink_to(elsewhere)
    read = taskq("events")
    assert read.returncode == 1 and "symlink" in read.stderr and "PLANTED" not in read.stdout
    added = taskq("add", "--", "true", check=True)
    assert "cannot record an event" in added.stderr
    assert elsewhere.read_text().count("\n") == 1  # nothing written through the link


def test_status_takes_its_latest_failures_from_the_end_of_the_event_log(taskq, spool):
    """status names the jobs that failed last from the event log (no stat of every file
    in failed/); without a log, from failed/ sorted by mtime: the same jobs."""
    ids = [taskq.add("sh", "-c", "exit 3", options=["--max-attempts", "1", "--priority", str(10 - i)])
           for i in range(7)]
    taskq("work", "--burst", check=True)  # one slot: they fail in priority order
    assert {j["id"] for j in taskq.json("list", "--state", "failed", "--json")} == set(ids)
    from_log = [f["id"] for f in taskq.json("status", "--json")["recent_failures"]]
    assert from_log == ids[::-1][:5]
    assert all(f["last_error"] == "exit status 3" for f in taskq.json("status", "--json")["recent_failures"])
    # A job retried meanwhile is no longer among them, though the log names its failure.
    taskq("retry", ids[-1], check=True)
    after = [f["id"] for f in taskq.json("status", "--json")["recent_failures"]]
    assert after == ids[::-1][1:6]
    os.unlink(spool / "events.jsonl")
    from_files = [f["id"] for f in taskq.json("status", "--json")["recent_failures"]]
    assert set(from_files) == set(after)


def test_status_with_an_event_log_does_not_sort_failed(taskq, spool, monkeypatch):
    for _ in range(6):
        taskq.add("false", options=["--max-attempts", "1"])
    taskq("work", "--burst", check=True)
    api = Spool(spool)
    listed: list[str] = []
    original = api.store.entries
    monkeypatch.setattr(api.store, "entries", lambda state, *a: listed.append(state) or original(state, *a))
    assert len(api.status()["recent_failures"]) == 5
    assert "failed" not in listed
    os.unlink(spool / "events.jsonl")
    assert len(api.status()["recent_failures"]) == 5
    assert "failed" in listed  # no log: failed/ sorted by mtime
