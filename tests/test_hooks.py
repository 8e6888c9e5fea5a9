"""Hooks (README, "Hooks"): ``on_success``, ``on_retry``, ``on_failure`` commands that
workers run after a job's events, from markers in ``SPOOL/hooks/``, at least once.

Three layers: pure unit tests (which change is which event, when a marker's change has
landed, ``taskq.toml``), spool-contract tests in process (the marker is written before
the job's rename; a crash between the two), and black-box tests of the installed
``taskq`` (each event's environment and stdin, a worker SIGKILLed mid-job or mid-hook,
failing and hanging hooks, SIGTERM, ``--burst``, task types, config errors).
Hooks in these tests are a small recorder script that writes its environment and stdin
into a directory, one file per run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import taskq
from taskq import times
from taskq.config import parse_config
from taskq.errors import SpoolError, ValidationError
from taskq.hooks import due, landed
from taskq.job import CANCELLED, INTERRUPTED, WORKER_LOST, Outcome
from taskq.policy import Decision
from taskq.spool import layout
from taskq.spool.layout import HookMarker, parse_pending_name
from taskq.transitions import Change
from taskq.worker.hooks import Hooks
from workerutil import (
    alive,
    assert_one_line_error,
    burst,
    record,
    script,
    state_of,
    strays,  # noqa: F401 - fixture
    wait_for,
    wait_state,
    workers,  # noqa: F401 - fixture
)
from workerutil import files as ls

RECORDER = """
import json, os, sys, time
out, label = sys.argv[1], sys.argv[2]
env = {k: v for k, v in os.environ.items() if k.startswith("TASKQ_")}
stdin = sys.stdin.read()
name = f"{time.time_ns()}.{label}.{env.get('TASKQ_EVENT')}.{env.get('TASKQ_JOB_ID')}.json"
with open(os.path.join(out, "." + name), "w") as fh:
    json.dump({"label": label, "env": env, "stdin": stdin, "cwd": os.getcwd()}, fh)
os.rename(os.path.join(out, "." + name), os.path.join(out, name))
print(f"hook output: {label} {env.get('TASKQ_EVENT')}")
"""


class Recorder:
    """A hook command that records each run (environment, stdin, cwd) in a directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "hook-runs"
        self.dir.mkdir()
        self.argv = script(tmp_path, "recorder", RECORDER)

    def command(self, label: str = "global") -> str:
        return " ".join([*self.argv, str(self.dir), label])

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(os.listdir(self.dir)):
            if not name.startswith("."):
                data = json.loads((self.dir / name).read_text())
                data["stdin_record"] = json.loads(data["stdin"]) if data["stdin"] else None
                out.append(data)
        return out

    def events(self, job_id: str) -> list[str]:
        return [r["env"]["TASKQ_EVENT"] for r in self.runs() if r["env"]["TASKQ_JOB_ID"] == job_id]


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path)


def toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string


def write_config(spool: Path, hooks: dict[str, Any] | None = None, tasks: dict[str, dict[str, Any]] | None = None,
                 extra: str = "") -> None:
    lines = [extra]
    if hooks:
        lines.append("[hooks]")
        lines += [f"{k} = {toml_str(v) if isinstance(v, str) else v}" for k, v in hooks.items()]
    for name, table in (tasks or {}).items():
        lines.append(f"[tasks.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "taskq.toml").write_text("\n".join(lines) + "\n")


def log_of(spool: Path, job_id: str) -> str:
    try:
        return (spool / "logs" / f"{job_id}.log").read_text()
    except FileNotFoundError:
        return ""


# == pure: which change is which event, and when a marker runs ===========================


def _job(attempts: list[Outcome | None]) -> taskq.Job:
    from taskq.job import Attempt, build

    job = build({"command": ["x"], "name": "mail"}, now=1e9, default_cwd="/", defaults={}, tasks={})
    for n, outcome in enumerate(attempts, 1):
        attempt = Attempt(number=n, started_at=times.iso(1e9), worker="h:1")
        if outcome is not None:
            attempt.close(outcome, 1e9 + n)
        job.attempts.append(attempt)
    return job


@pytest.mark.parametrize("kind, outcome, dst, expected", [
    ("settle", Outcome(exit_code=0), "done", ("success", 1)),
    ("settle", Outcome(exit_code=3), "pending", ("retry", 1)),
    ("settle", Outcome(exit_code=3), "failed", ("failure", 1)),
    ("recover", Outcome(error=WORKER_LOST), "pending", ("retry", 1)),
    ("recover", Outcome(error=WORKER_LOST), "failed", ("failure", 1)),
    ("fail_dependent", None, "failed", ("failure", None)),
    # no event: a cancel, a worker's shutdown, a recovery by a recorded outcome (its
    # marker was written by the worker that died), the user's commands, claims
    ("settle", Outcome(error=CANCELLED), "failed", None),
    ("settle", Outcome(error=INTERRUPTED), "pending", None),
    ("recover", None, "pending", None),
    ("recover", None, "done", None),
    ("cancel", None, "failed", None),
    ("retry", None, "pending", None),
    ("unclaim", None, "pending", None),
])
def test_which_change_is_which_event(kind, outcome, dst, expected):
    job = _job([outcome or Outcome(exit_code=1)])
    change = Change(kind, job.id, "running", dst, job, Decision(dst, last_error="x"), outcome)
    found = due(change)
    if expected is None:
        assert found is None
        return
    event, attempt = expected
    name, marker = found
    assert name == layout.hook_file(job.id, attempt)
    assert (marker.event, marker.state, marker.attempt) == (event, dst, 1)
    assert marker.job["state"] == dst and marker.job["id"] == job.id


def test_marker_names_and_format_round_trip():
    assert layout.hook_file("abc", 3) == "abc.attempt-3.json"
    assert layout.hook_file("abc", None) == "abc.dependency.json"
    for name, parsed in [("abc.attempt-3.json", ("abc", 3)), ("a_b-c.dependency.json", ("a_b-c", None)),
                         ("abc.attempt-0.json", None), ("abc.json", None), (".abc.attempt-1.json", None),
                         ("abc.attempt-1.json.tmp", None)]:
        assert layout.parse_hook_file(name) == parsed
    marker = HookMarker("retry", "pending", 2, {"id": "abc", "attempts": []})
    assert layout.parse_hook_marker(layout.hook_marker(marker)) == marker
    for raw in [b"", b"[]", b'{"version": 1, "event": "retry", "state": "done", "attempt": 1, "job": {}}',
                b'{"version": 2, "event": "retry", "state": "pending", "attempt": 1, "job": {}}',
                b'{"version": 1, "event": "retry", "state": "pending", "attempt": -1, "job": {}}', b"\xff"]:
        with pytest.raises(ValueError):
            layout.parse_hook_marker(raw)


def test_when_a_markers_change_has_landed():
    job = _job([Outcome(exit_code=0)])
    marker = due(Change("settle", job.id, "running", "done", job, Decision("done"), Outcome(exit_code=0)))[1]
    mine = [a.to_dict() for a in job.attempts]
    # still in running/ with that attempt its last: under way (or claimed again, not started)
    assert landed(marker, False, "running", mine) == "wait"
    # moved on: run
    assert landed(marker, False, "done", mine) == "run"
    assert landed(marker, False, "running", mine + [{"number": 2}]) == "run"
    # gone (purged) or unreadable: run (at least once)
    assert landed(marker, False, None, None) == "run"
    assert landed(marker, False, "failed", None) == "run"
    # the record says the attempt ended otherwise: the marker's change never landed
    lost = _job([Outcome(error=WORKER_LOST)])
    assert landed(marker, False, "pending", [a.to_dict() for a in lost.attempts]) == "stale"
    assert landed(marker, False, "pending", []) == "stale"
    # a dependency failure: runs once the job has left running/
    dep = HookMarker("failure", "failed", 0, {"id": job.id})
    assert landed(dep, True, "running", []) == "wait"
    assert landed(dep, True, "failed", []) == "run"


def test_subscribe_keeps_every_observer_in_order(tmp_path):
    seen: list[str] = []
    api = taskq.Spool(tmp_path / "spool")  # the event log's recorder is subscribed already
    api.transitions.subscribe(observe=lambda c: seen.append("first"))
    api.transitions.subscribe(observe=lambda c: seen.append(f"second {c.kind}"),
                              prepare=lambda c: seen.append(f"prepare {c.kind}"))
    api.transitions.subscribe(observe=lambda c: seen.append("third"))
    api.add(["true"])
    assert seen == ["first", "second enqueue", "third"]  # enqueue is not a commit: no prepare
    seen.clear()
    entry = parse_pending_name(ls(Path(api.path), "pending")[0])
    claimed = api.transitions.claim(entry)
    seen.clear()
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    assert seen[-4:] == ["prepare settle", "first", "second settle", "third"]


# == taskq.toml ===========================================================================


def test_config_hooks_and_task_type_hooks():
    cfg = parse_config(b"""
[hooks]
on_success = "echo ok"
on_failure = "./alert"
hook_timeout = "2m"
[tasks.mail]
command = "send"
on_failure = "./page"
on_success = ""
""")
    assert cfg.hooks == {"on_success": "echo ok", "on_failure": "./alert"}
    assert cfg.hook_timeout == 120.0
    assert cfg.hook("mail", "on_failure") == "./page"  # the task type's replaces [hooks]'
    assert cfg.hook("mail", "on_success") is None  # "" turns the spool-wide one off
    assert cfg.hook("mail", "on_retry") is None
    assert cfg.hook("other", "on_failure") == "./alert"
    assert cfg.hook(None, "on_success") == "echo ok"
    assert "on_failure" not in cfg.tasks["mail"] and "on_success" not in cfg.tasks["mail"]
    assert parse_config(b"").hook_timeout == 60.0


@pytest.mark.parametrize("text, fragment", [
    ("[hooks]\non_start = 'x'\n", "[hooks]: unknown key 'on_start' (allowed: on_success, on_retry, on_failure"),
    ("[hooks]\non_success = 3\n", "[hooks] on_success must be a string"),
    ("[hooks]\nhook_timeout = 'soon'\n", "[hooks] hook_timeout"),
    ("[hooks]\nhook_timeout = 0\n", "[hooks] hook_timeout must be greater than 0"),
    ("hooks = 'x'\n", "[hooks] must be a table"),
    ("[tasks.mail]\ncommand = 'x'\non_failure = ['a']\n", "[tasks.mail] on_failure must be a string"),
    ("[tasks.mail]\ncommand = 'x'\nhook_timeout = 3\n", "unknown key 'hook_timeout'"),
    ("[tasks.mail]\ncommand = 'x'\non_finish = 'y'\n", "on_success, on_retry, on_failure)"),
    ("[defaults]\non_failure = 'x'\n", "[defaults]: unknown key 'on_failure'"),
])
def test_config_errors_name_the_key(text, fragment):
    with pytest.raises(ValidationError) as info:
        parse_config(text.encode())
    assert fragment in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    ("[hooks]\non_sucess = 'x'\n", "unknown key 'on_sucess'"),
    ("[hooks]\nhook_timeout = -1\n", "hook_timeout"),
    ("[tasks.mail]\ncommand = 'x'\non_retry = 1\n", "[tasks.mail] on_retry must be a string"),
])
def test_config_errors_exit_2_with_one_line_and_change_nothing(taskq, empty_spool, text, fragment):
    (empty_spool / "taskq.toml").write_text(text)
    assert_one_line_error(taskq("add", "--", "true"), 2, fragment)
    assert_one_line_error(taskq("work", "--burst"), 2, fragment)
    assert ls(empty_spool, "pending") == [] and not (empty_spool / "hooks").exists()


def test_task_type_hooks_are_not_job_fields(taskq, empty_spool, recorder):
    write_config(empty_spool, tasks={"mail": {"command": "true", "on_success": recorder.command("mail")}})
    job_id = taskq("add", "--name", "mail", check=True).stdout.strip()
    shown = taskq.json("show", job_id, "--json")
    assert not any(key.startswith("on_") for key in shown)
    (pending,) = (empty_spool / "pending").iterdir()
    assert not any(key.startswith("on_") for key in json.loads(pending.read_text()))


# == the spool contract: the marker and the commit ========================================


@pytest.fixture
def api(empty_spool: Path) -> taskq.Spool:
    return taskq.Spool(empty_spool)


def _claim_and_start(api: taskq.Spool):
    entry = next(e for e in map(parse_pending_name, ls(Path(api.path), "pending")) if e)
    claimed = api.transitions.claim(entry)
    assert claimed is not None
    api.transitions.start(claimed, times.now())
    return claimed


def test_marker_is_written_before_the_rename_and_a_crash_between_still_runs_the_hook(api, taskq, recorder):
    """The rename into done/ fails (as if the worker died there): the marker is in
    hooks/ and the job in running/ with its outcome; the next worker's recovery
    settles it by that outcome and runs the hook once."""
    write_config(Path(api.path), {"on_success": recorder.command()})
    job = api.add(["true"])
    hooks = Hooks(api, lambda line: None)
    api.transitions.subscribe(prepare=hooks.prepare)  # markers only: nothing run here
    claimed = _claim_and_start(api)
    rename = api.store.io.rename

    def failing_rename(src: str, dst: str) -> None:
        if dst.endswith(os.path.join("done", f"{job.id}.json")):
            raise OSError(5, "Input/output error")
        rename(src, dst)

    api.store.io.rename = failing_rename  # type: ignore[method-assign]
    with pytest.raises(SpoolError):
        api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    spool = Path(api.path)
    assert state_of(spool, job.id) == "running"
    assert ls(spool, "hooks") == [f"{job.id}.attempt-1.json"]
    marker = layout.parse_hook_marker((spool / "hooks" / f"{job.id}.attempt-1.json").read_bytes())
    assert (marker.event, marker.state, marker.job["state"]) == ("success", "done", "done")

    proc = burst(taskq)
    assert state_of(spool, job.id) == "done"
    assert recorder.events(job.id) == ["success"], proc.stderr
    assert ls(spool, "hooks") == []


def test_marker_of_a_change_that_never_landed_is_dropped(api, taskq, recorder):
    """The marker is written, then the record cannot be (the worker dies there): the
    attempt is still open, recovery closes it as "worker lost" and retries; the
    success marker is recognised as stale and dropped, and the later success runs."""
    write_config(Path(api.path), {"on_success": recorder.command()})
    job = api.add(["true"], max_attempts=2, backoff=0)
    hooks = Hooks(api, lambda line: None)
    api.transitions.subscribe(prepare=hooks.prepare)
    claimed = _claim_and_start(api)

    def failing_save(owned: Any, record: Any, sync_dir: bool = True) -> None:
        raise SpoolError("cannot write: Input/output error")

    api.jobs.save = failing_save  # type: ignore[method-assign]
    with pytest.raises(SpoolError):
        api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    spool = Path(api.path)
    assert ls(spool, "hooks") == [f"{job.id}.attempt-1.json"]

    proc = burst(taskq)
    assert state_of(spool, job.id) == "done"
    done = record(spool, job.id)
    assert [a["error"] for a in done["attempts"]] == [WORKER_LOST, None]
    runs = [r for r in recorder.runs() if r["env"]["TASKQ_JOB_ID"] == job.id]
    assert [(r["env"]["TASKQ_EVENT"], r["env"]["TASKQ_ATTEMPT"]) for r in runs] == [("success", "2")]
    assert f"dropped hook on_success of {job.id}: attempt 1 was settled otherwise" in proc.stderr
    assert ls(spool, "hooks") == []


def test_a_marker_that_cannot_be_written_stops_the_change_and_recovery_takes_over(api, recorder):
    """Disk full while writing the marker: the settle fails as any settle that cannot
    write (SpoolError, the job still in running/ only, its lock released); recovery
    then closes the attempt as "worker lost", and that event's marker is written."""
    write_config(Path(api.path), {"on_success": recorder.command(), "on_retry": recorder.command()})
    job = api.add(["true"], max_attempts=2, backoff=0)
    hooks = Hooks(api, lambda line: None)
    api.transitions.subscribe(prepare=hooks.prepare)
    claimed = _claim_and_start(api)
    write_new = api.store.io.write_new

    def full(path: str, data: bytes, mode: int, sync: bool) -> None:
        if os.path.basename(path).startswith("hook."):
            raise OSError(errno.ENOSPC, "No space left on device")
        write_new(path, data, mode, sync)

    api.store.io.write_new = full  # type: ignore[method-assign]
    with pytest.raises(SpoolError, match="disk full"):
        api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    spool = Path(api.path)
    assert state_of(spool, job.id) == "running" and ls(spool, "hooks") == [] and ls(spool, "tmp") == []
    api.store.io.write_new = write_new  # type: ignore[method-assign]
    what, decision = api.transitions.recover(job.id, times.now(), 0.5)
    assert (what, decision.state) == ("worker lost", "pending")
    assert ls(spool, "hooks") == [f"{job.id}.attempt-1.json"]
    marker = layout.parse_hook_marker((spool / "hooks" / f"{job.id}.attempt-1.json").read_bytes())
    assert (marker.event, marker.job["last_error"]) == ("retry", WORKER_LOST)


def test_markers_are_claimed_by_one_holder_and_a_replaced_one_is_not_removed(api):
    from taskq.spool.hooks import HookMarkers

    api.add(["true"])  # creates the spool
    markers = HookMarkers(api.store)
    assert markers.names() == []  # no hooks/ yet
    markers.write("abc.attempt-1.json", b"first")
    (Path(api.path) / "hooks" / ".hidden").write_text("x")
    assert markers.names() == ["abc.attempt-1.json"]
    held = markers.claim("abc.attempt-1.json")
    assert held is not None and held.data == b"first"
    assert markers.claim("abc.attempt-1.json") is None  # held: nobody else gets it
    markers.write("abc.attempt-1.json", b"second")  # recovery's own event, under the same name
    markers.remove(held)
    held.release()
    again = markers.claim("abc.attempt-1.json")
    assert again is not None and again.data == b"second"  # not removed with the old one
    markers.remove(again)
    again.release()
    assert markers.names() == [] and markers.claim("abc.attempt-1.json") is None


def test_no_marker_without_a_hook_for_the_event(api, taskq, recorder):
    write_config(Path(api.path), {"on_failure": recorder.command()})
    job = api.add(["true"])
    burst(taskq)
    assert state_of(Path(api.path), job.id) == "done"
    assert not (Path(api.path) / "hooks").exists()  # nothing written for a success


# == black box: the installed taskq =======================================================


def test_each_event_gives_its_environment_and_the_record_on_stdin(taskq, empty_spool, recorder):
    write_config(empty_spool, {"on_success": recorder.command("s"), "on_retry": recorder.command("r"),
                               "on_failure": recorder.command("f")})
    ok = taskq.add("true", options=["--name", "ok-job"])
    bad = taskq.add("sh", "-c", "echo job output; exit 7", options=["--max-attempts", "2", "--backoff", "0"])
    proc = burst(taskq)
    runs = recorder.runs()
    assert len(runs) == 3, proc.stderr
    by_event = {r["env"]["TASKQ_EVENT"]: r for r in runs}
    spool = str(empty_spool)

    success = by_event["success"]
    assert success["env"] == {
        "TASKQ_SPOOL": spool, "TASKQ_JOB_ID": ok, "TASKQ_JOB_NAME": "ok-job", "TASKQ_EVENT": "success",
        "TASKQ_JOB_STATE": "done", "TASKQ_ATTEMPT": "1", "TASKQ_EXIT_CODE": "0", "TASKQ_ERROR": "",
    }
    assert success["label"] == "s"
    assert success["stdin_record"]["id"] == ok and success["stdin_record"]["state"] == "done"
    assert [a["exit_code"] for a in success["stdin_record"]["attempts"]] == [0]

    retry = by_event["retry"]
    assert retry["env"] == {
        "TASKQ_SPOOL": spool, "TASKQ_JOB_ID": bad, "TASKQ_JOB_NAME": "", "TASKQ_EVENT": "retry",
        "TASKQ_JOB_STATE": "pending", "TASKQ_ATTEMPT": "1", "TASKQ_EXIT_CODE": "7", "TASKQ_ERROR": "exit status 7",
    }
    assert retry["stdin_record"]["state"] == "pending" and len(retry["stdin_record"]["attempts"]) == 1

    failure = by_event["failure"]
    assert failure["env"] == {
        "TASKQ_SPOOL": spool, "TASKQ_JOB_ID": bad, "TASKQ_JOB_NAME": "", "TASKQ_EVENT": "failure",
        "TASKQ_JOB_STATE": "failed", "TASKQ_ATTEMPT": "2", "TASKQ_EXIT_CODE": "7", "TASKQ_ERROR": "exit status 7",
    }
    assert failure["stdin_record"]["state"] == "failed"
    assert [a["exit_code"] for a in failure["stdin_record"]["attempts"]] == [7, 7]
    assert recorder.events(bad) == ["retry", "failure"]  # a job's hooks run in order

    # the hook's output is in the job's log, under a header line; the marker is gone
    log = log_of(empty_spool, bad)
    assert "=== taskq: hook on_retry for attempt 1 started " in log
    assert "=== taskq: hook on_failure for attempt 2 started " in log
    assert "hook output: r retry" in log and "hook output: f failure" in log
    assert "hook output: s success" in log_of(empty_spool, ok)
    assert f"ran hook on_success of {ok}" in proc.stderr
    assert ls(empty_spool, "hooks") == []
    assert success["cwd"] == os.getcwd()  # the job's cwd (where add ran)


def test_task_type_hook_replaces_the_spool_wide_one(taskq, empty_spool, recorder):
    write_config(empty_spool, {"on_success": recorder.command("global")},
                 tasks={"special": {"command": "true", "on_success": recorder.command("special")},
                        "quiet": {"command": "true", "on_success": ""}})
    plain = taskq.add("true")
    special = taskq("add", "--name", "special", check=True).stdout.strip()
    quiet = taskq("add", "--name", "quiet", check=True).stdout.strip()
    burst(taskq)
    labels = {r["env"]["TASKQ_JOB_ID"]: r["label"] for r in recorder.runs()}
    assert labels == {plain: "global", special: "special"}
    assert state_of(empty_spool, quiet) == "done"


def test_dependency_failure_is_a_failure_event(taskq, empty_spool, recorder):
    write_config(empty_spool, {"on_failure": recorder.command()})
    first = taskq.add("sh", "-c", "exit 100")  # permanent: failed at once
    second = taskq.add("true", options=["--after", first])
    burst(taskq)
    runs = {r["env"]["TASKQ_JOB_ID"]: r["env"] for r in recorder.runs()}
    assert runs[first]["TASKQ_ERROR"] == "exit status 100 (permanent)"
    assert runs[second]["TASKQ_EVENT"] == "failure" and runs[second]["TASKQ_ATTEMPT"] == "0"
    assert runs[second]["TASKQ_ERROR"] == f"dependency {first} failed"
    assert runs[second]["TASKQ_EXIT_CODE"] == ""


@pytest.mark.parametrize("max_attempts, events", [(2, ["retry", "success"]), (1, ["failure"])])
def test_worker_killed_mid_job_the_next_workers_recovery_runs_the_hook(
        taskq, empty_spool, recorder, workers, strays, tmp_path, max_attempts, events):
    write_config(empty_spool, {"on_success": recorder.command(), "on_retry": recorder.command(),
                               "on_failure": recorder.command()})
    pidfile = tmp_path / "job.pid"
    job = taskq.add("sh", "-c", f'if [ "$TASKQ_ATTEMPT" = 1 ]; then echo $$ > {pidfile}; exec sleep 60; fi',
                    options=["--max-attempts", str(max_attempts), "--backoff", "0"])
    worker = workers.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, message="the job to start")
    pid = int(pidfile.read_text())
    strays.add(pid)
    worker.send(signal.SIGKILL)
    worker.wait()
    os.killpg(pid, signal.SIGKILL)  # the job died with its worker (an OOM kill, a power cut)
    wait_for(lambda: not alive(pid), 10, message="the job's process to die")
    assert recorder.runs() == []

    proc = burst(taskq)
    assert recorder.events(job) == events, proc.stderr
    first = recorder.runs()[0]["env"]
    assert first["TASKQ_ERROR"] == WORKER_LOST and first["TASKQ_EXIT_CODE"] == "" and first["TASKQ_ATTEMPT"] == "1"
    assert ls(empty_spool, "hooks") == []


def test_worker_killed_before_its_hook_finished_runs_it_again_later(
        taskq, empty_spool, workers, strays, tmp_path):
    """The hook outlives its worker and holds its marker: a burst meanwhile leaves it
    alone (never twice at once); once it has ended, the next worker runs it again."""
    runs, release, hookpid = tmp_path / "runs", tmp_path / "release", tmp_path / "hook.pid"
    write_config(empty_spool, {"on_success": (
        f"echo start >> {runs}; echo $$ > {hookpid}; "
        f"while [ ! -e {release} ]; do sleep 0.05; done; echo end >> {runs}")})
    strays.watch_file(hookpid)
    job = taskq.add("true")
    worker = workers.start()
    wait_for(lambda: runs.exists() and "start" in runs.read_text(), 20, message="the hook to start")
    worker.send(signal.SIGKILL)
    worker.wait()
    assert state_of(empty_spool, job) == "done"
    assert ls(empty_spool, "hooks") == [f"{job}.attempt-1.json"]

    burst(taskq)  # the marker is locked by the hook still running: not run twice at once
    assert runs.read_text().split() == ["start"]
    assert ls(empty_spool, "hooks") == [f"{job}.attempt-1.json"]

    release.touch()
    wait_for(lambda: runs.read_text().split() == ["start", "end"], 20, message="the first run to end")
    wait_for(lambda: not alive(int(hookpid.read_text())), 10, message="the first hook to exit")
    burst(taskq)
    assert runs.read_text().split() == ["start", "end", "start", "end"]
    assert ls(empty_spool, "hooks") == []


def test_failing_and_hanging_hooks_never_block_or_change_the_job(taskq, empty_spool, tmp_path, strays):
    hookpid = tmp_path / "hook.pid"
    strays.watch_file(hookpid)
    write_config(empty_spool, {
        "on_success": f"echo hanging; echo $$ >> {hookpid}; exec sleep 60",
        "on_failure": "echo failing hook >&2; exit 3",
        "hook_timeout": "1s",
    })
    ok = [taskq.add("true") for _ in range(3)]
    bad = taskq.add("sh", "-c", "exit 5", options=["--max-attempts", "1"])
    proc = burst(taskq, timeout=60)
    assert [state_of(empty_spool, j) for j in ok] == ["done"] * 3
    assert state_of(empty_spool, bad) == "failed"
    for job in ok:
        log = log_of(empty_spool, job)
        assert "hanging" in log and "=== taskq: hook on_success timed out after 1 s ===" in log
        assert f"hook on_success of {job} timed out after 1 s" in proc.stderr
    assert "failing hook" in log_of(empty_spool, bad)
    assert "=== taskq: hook on_failure failed: exit status 3 ===" in log_of(empty_spool, bad)
    assert f"hook on_failure of {bad} failed: exit status 3" in proc.stderr
    assert not any(alive(int(p)) for p in hookpid.read_text().split())  # the group was killed
    assert ls(empty_spool, "hooks") == []  # run (whatever the status): removed
    assert record(empty_spool, bad)["last_error"] == "exit status 5"


def test_burst_runs_the_hooks_due_before_it_exits(taskq, empty_spool, recorder):
    write_config(empty_spool, {"on_success": "sleep 1; " + recorder.command()})
    jobs = [taskq.add("true") for _ in range(3)]
    burst(taskq)
    assert sorted(r["env"]["TASKQ_JOB_ID"] for r in recorder.runs()) == sorted(jobs)
    assert ls(empty_spool, "hooks") == []


def test_sigterm_gives_running_hooks_the_grace_then_stops_them_and_keeps_the_marker(
        taskq, empty_spool, workers, strays, tmp_path):
    runs, release, hookpid = tmp_path / "runs", tmp_path / "release", tmp_path / "hook.pid"
    write_config(empty_spool, {"on_success": (
        f"echo start >> {runs}; echo $$ > {hookpid}; "
        f"while [ ! -e {release} ]; do sleep 0.05; done; echo end >> {runs}")})
    strays.watch_file(hookpid)
    job = taskq.add("true")
    worker = workers.start("--grace", "1s")
    wait_for(lambda: runs.exists() and "start" in runs.read_text(), 20, message="the hook to start")
    worker.send(signal.SIGTERM)
    assert worker.wait(30) == 0
    wait_for(lambda: not alive(int(hookpid.read_text())), 10, message="the hook to be stopped")
    assert "stopped with the worker; it runs again later" in log_of(empty_spool, job)
    assert ls(empty_spool, "hooks") == [f"{job}.attempt-1.json"]

    release.touch()
    burst(taskq)
    assert runs.read_text().split() == ["start", "start", "end"]
    assert ls(empty_spool, "hooks") == []


def test_a_cancelled_job_runs_no_hook(taskq, empty_spool, recorder, workers, tmp_path):
    write_config(empty_spool, {"on_failure": recorder.command(), "on_success": recorder.command()})
    job = taskq.add("sleep", "60")
    worker = workers.start()
    wait_state(empty_spool, job, "running", 20)
    taskq("cancel", job, check=True)
    after = taskq.add("true")
    wait_for(lambda: recorder.events(after) == ["success"], 20, message="the later job's hook")
    worker.send(signal.SIGTERM)
    assert worker.wait(30) == 0
    burst(taskq)
    assert state_of(empty_spool, job) == "failed"
    assert recorder.events(job) == []


def test_hooks_run_in_the_jobs_cwd_with_the_workers_environment(taskq, empty_spool, recorder, tmp_path):
    write_config(empty_spool, {"on_success": recorder.command()})
    where = tmp_path / "somewhere"
    where.mkdir()
    job = taskq.add("true", cwd=where)
    burst(taskq, env={"TASKQ_TEST_MARK": "from the worker"})
    (run,) = recorder.runs()
    assert run["cwd"] == str(where)
    assert run["env"]["TASKQ_JOB_ID"] == job
    assert run["env"]["TASKQ_TEST_MARK"] == "from the worker"


def test_a_hooks_directory_others_can_write_is_refused(taskq, empty_spool):
    """Markers feed hooks' stdin and environment: hooks/ gets the checks of the other
    directories: a worker refuses a spool that others could plant files in."""
    taskq.add("true")
    (empty_spool / "hooks").mkdir(mode=0o700)
    os.chmod(empty_spool / "hooks", 0o777)
    proc = taskq("work", "--burst")
    assert proc.returncode == 1
    assert "hooks is writable by others" in proc.stderr
    os.chmod(empty_spool / "hooks", 0o700)
    burst(taskq)
