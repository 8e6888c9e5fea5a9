"""``taskq metrics`` and ``taskq work --metrics-file`` (README: "taskq metrics",
"taskq work"): spool-contract tests of ``Spool.metrics`` and the worker's metrics
file on real temporary directories, and black-box tests of the installed command,
every output read with a real Prometheus text parser."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import taskq as taskq_api
from taskq.ids import id_time
from taskq.job import INTERRUPTED, Attempt, Job
from taskq.metrics import HELP, exposition
from taskq.policy import Decision
from taskq.transitions import Change
from taskq.worker.metrics import MetricsFile
from workerutil import WorkerFactory, assert_one_line_error, sh, wait_for, wait_state
from workerutil import files as ls

SPOOL_FAMILIES = {"taskq_jobs", "taskq_jobs_ready", "taskq_jobs_scheduled", "taskq_jobs_waiting",
                  "taskq_oldest_ready_age_seconds", "taskq_paused"}
WORKER_FAMILIES = {"taskq_worker_jobs", "taskq_worker_running", "taskq_worker_concurrency",
                   "taskq_worker_start_time_seconds"}


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def workers(taskq, tmp_path):
    """Background ``taskq work`` processes, killed at teardown (see workerutil)."""
    factory = WorkerFactory(taskq, tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


def parse(text: str) -> dict:
    """name → family, through prometheus_client's parser (which strips a counter's
    ``_total``). Each family must carry HELP and TYPE."""
    fams = {fam.name: fam for fam in text_string_to_metric_families(text)}
    for name, fam in fams.items():
        assert name.startswith("taskq_"), name
        assert fam.documentation, f"{name} has no HELP"
        assert fam.type in ("gauge", "counter"), (name, fam.type)
        assert f"# TYPE {fam.samples[0].name if fam.type == 'counter' else name} {fam.type}\n" in text
    return fams


def value(fams: dict, name: str, **labels: str) -> float:
    matches = [s.value for s in fams[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, fams[name].samples)
    return matches[0]


def outcomes(fams: dict) -> dict:
    return {s.labels["outcome"]: s.value for s in fams["taskq_worker_jobs"].samples}


def read_metrics(path: Path) -> dict | None:
    """The parsed metrics file, or None if it is not there yet."""
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        return None


def move(spool: Path, job_id: str, state: str) -> None:
    """Do what a worker would: rename pending/NAME to STATE/ID.json."""
    (name,) = [n for n in ls(spool, "pending") if f".{job_id}." in n]
    os.rename(spool / "pending" / name, spool / state / f"{job_id}.json")


@pytest.fixture
def planted(spool: Path) -> dict:
    """A spool with jobs in every state: 2 ready, 1 scheduled, 1 waiting (on the
    running one), 1 running, 2 done, 1 failed."""
    api = taskq_api.Spool(spool)
    ids = {
        "ready1": api.add(["echo", "one"]).id,
        "ready2": api.add(["echo", "two"], priority=5).id,
        "later": api.add(["echo", "later"], delay=3600).id,
        "running": api.add(["sleep", "100"]).id,
        "done1": api.add(["true"]).id,
        "done2": api.add(["true"]).id,
        "failed": api.add(["false"]).id,
    }
    ids["waiting"] = api.add(["echo", "w"], after=[ids["running"]]).id
    move(spool, ids["running"], "running")
    move(spool, ids["done1"], "done")
    move(spool, ids["done2"], "done")
    move(spool, ids["failed"], "failed")
    return ids


def check_planted(fams: dict, paused: int = 0) -> None:
    assert {s.labels["state"]: s.value for s in fams["taskq_jobs"].samples} == {
        "pending": 4, "running": 1, "done": 2, "failed": 1}
    assert value(fams, "taskq_jobs_ready") == 2
    assert value(fams, "taskq_jobs_scheduled") == 1
    assert value(fams, "taskq_jobs_waiting") == 1
    assert value(fams, "taskq_paused") == paused


# -- Spool.metrics: the numbers of Spool.status ------------------------------------------------


def test_spool_metrics_are_the_status_numbers(spool, planted):
    api = taskq_api.Spool(spool)
    now = time.time() + 30
    status = api.status(now)
    fams = parse(exposition(api.metrics(now)))
    assert set(fams) == SPOOL_FAMILIES
    check_planted(fams)
    assert {s.labels["state"]: s.value for s in fams["taskq_jobs"].samples} == status["counts"]
    assert value(fams, "taskq_oldest_ready_age_seconds") == status["oldest_ready_age"]
    # Counted from the oldest ready job's id (other tests in this process may have
    # moved the id generator ahead of the clock: no bound on the clock here).
    assert status["oldest_ready_age"] == round(now - id_time(min(planted["ready1"], planted["ready2"])), 3)


def test_spool_metrics_of_an_empty_spool(empty_spool):
    fams = parse(exposition(taskq_api.Spool(empty_spool).metrics()))
    assert all(s.value == 0 for f in fams.values() for s in f.samples)


def test_spool_metrics_without_a_spool(spool):
    with pytest.raises(taskq_api.NoSpoolError):
        taskq_api.Spool(spool).metrics()


# -- the worker's metrics file: counting and writing -------------------------------------------


def settle_change(job_id: str, state: str, error: str | None = "exit status 1") -> Change:
    job = Job(id=job_id, command=["x"], cwd="/", created_at="2026-01-01T00:00:00.000Z",
              run_at="2026-01-01T00:00:00.000Z")
    job.attempts.append(Attempt(number=1, started_at="2026-01-01T00:00:00.000Z", worker="h:1",
                                error=None if state == "done" else error))
    return Change("settle", job_id, "running", state, job, Decision(state))


def metrics_file(spool: Path, path: Path, events: list[str], running: int = 0) -> MetricsFile:
    return MetricsFile(taskq_api.Spool(spool), str(path), 60.0, 3, lambda: running, events.append)


def test_metrics_file_counts_settled_attempts_by_outcome(empty_spool, tmp_path):
    events: list[str] = []
    mf = metrics_file(empty_spool, tmp_path / "m.prom", events, running=2)
    for change in [settle_change("a", "done"), settle_change("b", "done"), settle_change("c", "pending"),
                   settle_change("d", "failed"), settle_change("e", "pending", error=INTERRUPTED),
                   Change("recover", "f", "running", "failed", None, Decision("failed")),
                   Change("claim", "g", "pending", "running")]:
        mf.observe(change)
    assert mf.write() is True
    fams = parse((tmp_path / "m.prom").read_text())
    assert set(fams) == SPOOL_FAMILIES | WORKER_FAMILIES
    assert outcomes(fams) == {"done": 2, "retry": 1, "failed": 1}
    me = f"{os.uname().nodename}:{os.getpid()}"
    assert value(fams, "taskq_worker_running", worker=me) == 2
    assert value(fams, "taskq_worker_concurrency", worker=me) == 3
    assert abs(value(fams, "taskq_worker_start_time_seconds", worker=me) - time.time()) < 60
    assert events == []
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")], "the temporary file is left behind"


def test_attach_keeps_the_observer_already_there(empty_spool, tmp_path):
    seen: list[str] = []
    transitions = taskq_api.Spool(empty_spool).transitions
    transitions.subscribe(observe=lambda change: seen.append(change.job_id))
    mf = metrics_file(empty_spool, tmp_path / "m.prom", [])
    mf.attach(transitions)
    transitions._changed(settle_change("a", "done"))
    assert seen == ["a"]
    assert mf.counts().outcomes["done"] == 1


def test_metrics_file_is_replaced_whole_and_readable(empty_spool, tmp_path):
    target = tmp_path / "m.prom"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    mf = metrics_file(empty_spool, target, [])
    assert mf.write()
    assert parse(target.read_text())["taskq_jobs"]
    # node_exporter often runs as another user: the file is readable by others (umask aside).
    assert os.stat(target).st_mode & 0o777 == 0o644 & ~_umask()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_failure_is_reported_once_then_recovery_once(empty_spool, tmp_path):
    events: list[str] = []
    target = tmp_path / "missing-dir" / "m.prom"
    mf = metrics_file(empty_spool, target, events)
    assert mf.write() is False
    assert mf.write() is False
    assert len(events) == 1
    assert "cannot write metrics file" in events[0] and str(target) in events[0]
    assert "No such file or directory" in events[0]
    target.parent.mkdir()
    assert mf.write() is True
    assert len(events) == 2 and "written again" in events[1]
    assert parse(target.read_text())


def test_a_missing_spool_is_a_failed_write_not_a_crash(spool, tmp_path):
    events: list[str] = []
    mf = metrics_file(spool, tmp_path / "m.prom", events)
    assert mf.write() is False
    assert len(events) == 1 and "no spool at" in events[0]
    assert not (tmp_path / "m.prom").exists()


def test_the_worker_refuses_a_metrics_interval_that_is_not_positive(empty_spool):
    from taskq.worker import Worker

    for bad in (0, -1.0, float("nan")):
        with pytest.raises(taskq_api.ValidationError, match="--metrics-interval"):
            Worker(taskq_api.Spool(empty_spool), metrics_file="m.prom", metrics_interval=bad)


# -- taskq metrics, black box ----------------------------------------------------------------


def test_metrics_command_on_a_planted_spool(taskq, spool, planted):
    created = id_time(min(planted["ready1"], planted["ready2"]))  # the oldest ready job, as status reads it
    before = time.time()
    proc = taskq("metrics", check=True)
    after = time.time()
    assert proc.stderr == ""
    fams = parse(proc.stdout)
    assert set(fams) == SPOOL_FAMILIES
    check_planted(fams)
    for name, fam in fams.items():
        assert fam.documentation == HELP[name]
    assert before - created - 0.01 <= value(fams, "taskq_oldest_ready_age_seconds") <= after - created + 0.01
    status = taskq.json("status", "--json")
    assert {s.labels["state"]: s.value for s in fams["taskq_jobs"].samples} == status["counts"]
    assert (value(fams, "taskq_jobs_ready"), value(fams, "taskq_jobs_scheduled"),
            value(fams, "taskq_jobs_waiting")) == (status["ready"], status["scheduled"], status["waiting"])


def test_metrics_command_shows_the_paused_spool(taskq, spool, planted):
    taskq("pause", check=True)
    check_planted(parse(taskq("metrics", check=True).stdout), paused=1)
    taskq("resume", check=True)
    check_planted(parse(taskq("metrics", check=True).stdout), paused=0)


def test_metrics_command_spool_option_both_positions(taskq, spool, planted):
    after = taskq("metrics", "--spool", str(spool), spool=None, check=True).stdout
    before = taskq("--spool", str(spool), "metrics", spool=None, check=True).stdout
    check_planted(parse(after))
    check_planted(parse(before))


def test_metrics_command_without_a_spool_fails_like_status(taskq, spool):
    status = taskq("status")
    proc = taskq("metrics")
    assert_one_line_error(proc, 1, "no spool at", str(spool))
    assert proc.stderr == status.stderr
    assert not spool.exists()


def test_metrics_command_on_an_empty_spool(taskq, empty_spool):
    fams = parse(taskq("metrics", check=True).stdout)
    assert value(fams, "taskq_oldest_ready_age_seconds") == 0
    assert all(s.value == 0 for f in fams.values() for s in f.samples)


# -- taskq work --metrics-file, black box ----------------------------------------------------------


def wait_metrics(path: Path, cond, message: str, timeout: float = 20.0) -> dict:
    def check():
        fams = read_metrics(path)
        return fams if fams is not None and cond(fams) else None

    return wait_for(check, timeout, interval=0.05, message=message)


def test_worker_keeps_the_metrics_file_current(taskq, spool, tmp_path, workers):
    path = tmp_path / "textfile" / "taskq.prom"
    path.parent.mkdir()
    w = workers.start("--metrics-file", str(path), "--metrics-interval", "0.2", "--concurrency", "2", "--grace", "0")
    first = wait_metrics(path, lambda f: True, "the metrics file to appear")
    assert set(first) == SPOOL_FAMILIES | WORKER_FAMILIES
    assert outcomes(first) == {"done": 0, "retry": 0, "failed": 0}
    worker = f"{os.uname().nodename}:{w.pid}"
    assert value(first, "taskq_worker_concurrency", worker=worker) == 2
    assert abs(value(first, "taskq_worker_start_time_seconds", worker=worker) - time.time()) < 120

    for _ in range(3):
        taskq.add("true")
    taskq.add("false", options=["--max-attempts", "1"])
    taskq.add("false", options=["--max-attempts", "2", "--backoff", "1h"])
    fams = wait_metrics(path, lambda f: outcomes(f) == {"done": 3, "retry": 1, "failed": 1},
                        "the counters to count 3 done, 1 retry, 1 failed")
    assert value(fams, "taskq_jobs", state="done") == 3
    assert value(fams, "taskq_jobs", state="failed") == 1
    assert value(fams, "taskq_jobs_scheduled") == 1

    job = taskq.add(*sh("sleep 30"))
    wait_state(spool, job, "running")
    fams = wait_metrics(path, lambda f: value(f, "taskq_worker_running", worker=worker) == 1,
                        "the running gauge to show the job")
    assert value(fams, "taskq_jobs", state="running") == 1
    w.send(signal.SIGTERM)
    assert w.wait() == 0
    assert "metrics file" not in w.stderr()


def test_metrics_file_is_never_seen_half_written(taskq, spool, tmp_path, workers):
    path = tmp_path / "taskq.prom"
    w = workers.start("--metrics-file", str(path), "--metrics-interval", "0.02", "--concurrency", "2")
    wait_metrics(path, lambda f: True, "the metrics file to appear")
    seen = set()
    added = 0
    deadline = time.monotonic() + 60
    reads = 0
    while reads < 1500 or len(seen) < 3:
        assert time.monotonic() < deadline, f"only {len(seen)} versions in {reads} reads"
        if reads % 100 == 0 and added < 20:
            taskq.add("true")
            added += 1
        text = path.read_text()  # never missing: it is replaced, never removed
        reads += 1
        assert text.endswith("\n"), text[-200:]
        fams = parse(text)
        assert set(fams) == SPOOL_FAMILIES | WORKER_FAMILIES, text
        seen.add(text)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".taskq.prom")] in ([], [f".taskq.prom.{w.pid}.tmp"])
    w.send(signal.SIGTERM)
    assert w.wait() == 0
    assert os.listdir(tmp_path).count("taskq.prom") == 1
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")], "the temporary file is left behind"


def test_last_write_at_sigterm(taskq, spool, tmp_path, workers):
    """An interval longer than the test: only the writes at start and at exit happen."""
    path = tmp_path / "taskq.prom"
    w = workers.start("--metrics-file", str(path), "--metrics-interval", "1h", "--grace", "0")
    first = wait_metrics(path, lambda f: True, "the metrics file to appear")
    assert outcomes(first) == {"done": 0, "retry": 0, "failed": 0}
    done = taskq.add("true")
    wait_state(spool, done, "done")
    sleeper = taskq.add(*sh("sleep 30"))
    wait_state(spool, sleeper, "running")
    time.sleep(0.3)
    assert outcomes(parse(path.read_text())) == {"done": 0, "retry": 0, "failed": 0}
    w.send(signal.SIGTERM)
    assert w.wait() == 0
    fams = parse(path.read_text())
    # The running job was interrupted by the stop: back to pending, not an outcome.
    assert outcomes(fams) == {"done": 1, "retry": 0, "failed": 0}
    assert value(fams, "taskq_worker_running", worker=f"{os.uname().nodename}:{w.pid}") == 0
    assert value(fams, "taskq_jobs", state="done") == 1
    assert value(fams, "taskq_jobs", state="pending") == 1
    assert value(fams, "taskq_jobs", state="running") == 0


def test_burst_worker_writes_at_start_and_exit(taskq, spool, tmp_path):
    path = tmp_path / "taskq.prom"
    taskq.add("true")
    taskq.add("true")
    proc = taskq("work", "--burst", "--metrics-file", str(path), check=True)
    assert "metrics file" not in proc.stderr
    fams = parse(path.read_text())
    assert outcomes(fams) == {"done": 2, "retry": 0, "failed": 0}
    assert value(fams, "taskq_jobs", state="done") == 2


def test_a_failing_write_is_one_line_and_the_worker_goes_on(taskq, spool, tmp_path, workers):
    path = tmp_path / "not-yet" / "taskq.prom"
    w = workers.start("--metrics-file", str(path), "--metrics-interval", "0.1")
    wait_for(lambda: "cannot write metrics file" in w.stderr(), 20, message="the write failure line")
    job = taskq.add("true")
    wait_state(spool, job, "done")
    time.sleep(0.5)  # several more failed writes
    lines = [ln for ln in w.stderr().splitlines() if "metrics file" in ln]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and "No such file or directory" in lines[0]
    path.parent.mkdir()
    fams = wait_metrics(path, lambda f: outcomes(f)["done"] == 1, "the file once its directory exists")
    assert value(fams, "taskq_jobs", state="done") == 1
    assert w.proc.poll() is None
    w.send(signal.SIGTERM)
    assert w.wait() == 0


@pytest.mark.parametrize("args, fragment", [
    (["--metrics-file", "m.prom", "--metrics-interval", "0"], "--metrics-interval"),
    (["--metrics-file", "m.prom", "--metrics-interval", "0s"], "--metrics-interval"),
    (["--metrics-file", "m.prom", "--metrics-interval", "-5"], "--metrics-interval"),
    (["--metrics-file", "m.prom", "--metrics-interval", "soon"], "--metrics-interval"),
    (["--metrics-file", "m.prom", "--metrics-interval", ""], "--metrics-interval"),
    (["--metrics-file", "m.prom", "--metrics-interval", "5x"], "--metrics-interval"),
    (["--metrics-interval", "5s"], "--metrics-file"),
    (["--metrics-file", ""], "--metrics-file"),
])
def test_bad_metrics_options_exit_2(taskq, spool, tmp_path, args, fragment):
    proc = taskq("work", "--burst", *args, cwd=tmp_path)
    assert_one_line_error(proc, 2, fragment)
    assert not spool.exists(), "a refused worker creates no spool"
    assert not (tmp_path / "m.prom").exists()


def test_metrics_help_texts_are_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, text in HELP.items():
        assert f"`{name}" in readme, name
        assert text in readme, (name, text)
    assert "### `taskq metrics`" in readme
    assert readme.index("### `taskq explain") < readme.index("### `taskq metrics`") < readme.index("### `taskq pause")


def test_status_json_and_metrics_agree_on_a_drained_spool(taskq, spool):
    """After a burst, one source of truth: the numbers agree with status."""
    for cmd in (["true"], ["false"]):
        taskq.add(*cmd, options=["--max-attempts", "1"])
    taskq("work", "--burst", check=True)
    fams = parse(taskq("metrics", check=True).stdout)
    status = json.loads(taskq("status", "--json", check=True).stdout)
    assert {s.labels["state"]: s.value for s in fams["taskq_jobs"].samples} == status["counts"] == {
        "pending": 0, "running": 0, "done": 1, "failed": 1}
