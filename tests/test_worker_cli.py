"""Black-box tests of ``taskq work``: the installed command in subprocesses, real
spools under the test's tmp dir, real job processes."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import stat
import time
from pathlib import Path

from workerutil import (  # noqa: F401 - workers and strays are fixtures
    alive,
    burst,
    cpu_seconds,
    files,
    iso_ts,
    read_pids,
    record,
    script,
    sh,
    state_of,
    strays,
    wait_for,
    wait_state,
    workers,
)

ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")


# -- attempts, retries, backoff -------------------------------------------------------------


def test_retries_until_failed_with_exact_attempt_count(taskq, spool, workers):
    job = taskq.add(*sh("exit 3"), options=["--max-attempts", "3", "--backoff", "0.1"])
    w = workers.start()
    wait_state(spool, job, "failed", timeout=20)
    w.send(signal.SIGTERM)
    assert w.wait() == 0
    rec = taskq.json("show", job, "--json")
    assert rec["state"] == "failed"
    assert [a["number"] for a in rec["attempts"]] == [1, 2, 3]
    assert [a["exit_code"] for a in rec["attempts"]] == [3, 3, 3]
    assert all(a["finished_at"] and a["signal"] is None and not a["timed_out"] for a in rec["attempts"])
    assert rec["last_error"] and "3" in rec["last_error"]
    assert files(spool, "pending") == [] and files(spool, "running") == []
    # one event line per job event, each with the full id
    err = w.stderr()
    assert err.count(job) >= 4


def test_flaky_job_succeeds_on_second_attempt(taskq, spool, tmp_path, workers):
    marker = tmp_path / "marker"
    seen = tmp_path / "attempts"
    argv = script(tmp_path, "flaky", f"""
        import os, sys
        with open({str(seen)!r}, "a") as fh:
            fh.write(os.environ["TASKQ_ATTEMPT"] + "\\n")
        if os.path.exists({str(marker)!r}):
            sys.exit(0)
        open({str(marker)!r}, "w").close()
        sys.exit(1)
    """)
    job = taskq.add(*argv, options=["--max-attempts", "5", "--backoff", "0.1"])
    w = workers.start()
    wait_state(spool, job, ("done", "failed"), timeout=20)
    w.send(signal.SIGTERM)
    assert w.wait() == 0
    rec = taskq.json("show", job, "--json")
    assert rec["state"] == "done"
    assert [a["exit_code"] for a in rec["attempts"]] == [1, 0]
    assert seen.read_text().split() == ["1", "2"]


def test_backoff_timing(taskq, spool, workers):
    # attempt 1 fails; run_at of the retry = finished_at + [50 %, 100 %] of 0.4 s
    job = taskq.add(*sh("exit 1"), options=["--max-attempts", "3", "--backoff", "0.4", "--backoff-max", "60"])
    burst(taskq)  # runs attempt 1; the retry is not ready yet, so --burst exits
    rec = record(spool, job)
    assert rec["state"] == "pending"
    assert len(rec["attempts"]) == 1
    gap = iso_ts(rec["run_at"]) - iso_ts(rec["attempts"][0]["finished_at"])
    assert 0.2 - 0.002 <= gap <= 0.4 + 0.002

    w = workers.start()
    wait_state(spool, job, "failed", timeout=20)
    w.send(signal.SIGTERM)
    w.wait()
    rec = record(spool, job)
    a = rec["attempts"]
    assert len(a) == 3
    # attempt k+1 starts no sooner than 50 % of backoff * 2**(k-1) after attempt k
    # ended (and, loosely, not much later than 100 % of it)
    for k, nominal in ((1, 0.4), (2, 0.8)):
        wait = iso_ts(a[k]["started_at"]) - iso_ts(a[k - 1]["finished_at"])
        assert wait >= 0.5 * nominal - 0.01, (k, wait)
        assert wait <= nominal + 1.5, (k, wait)


def test_permanent_exit_100_fails_after_one_attempt(taskq, spool):
    job = taskq.add(*sh("exit 100"), options=["--max-attempts", "5", "--backoff", "0.1"])
    burst(taskq)
    rec = taskq.json("show", job, "--json")
    assert rec["state"] == "failed"
    assert len(rec["attempts"]) == 1
    assert rec["attempts"][0]["exit_code"] == 100
    assert "100" in rec["last_error"]


def test_custom_permanent_exit_code(taskq, spool, workers):
    seven = taskq.add(*sh("exit 7"), options=["--max-attempts", "5", "--backoff", "0.1", "--permanent-exit", "7"])
    # --permanent-exit replaces the default set: 100 is retried for this job
    hundred = taskq.add(*sh("exit 100"), options=["--max-attempts", "2", "--backoff", "0.1", "--permanent-exit", "7"])
    w = workers.start()
    wait_state(spool, seven, "failed", timeout=20)
    wait_state(spool, hundred, "failed", timeout=20)
    w.send(signal.SIGTERM)
    w.wait()
    rec = record(spool, seven)
    assert [a["exit_code"] for a in rec["attempts"]] == [7]
    assert "7" in rec["last_error"]
    assert [a["exit_code"] for a in record(spool, hundred)["attempts"]] == [100, 100]


# -- timeouts --------------------------------------------------------------------------------


def test_timeout_kills_the_whole_process_tree(taskq, spool, tmp_path, strays):
    (spool).mkdir(parents=True, exist_ok=True)
    (spool / "taskq.toml").write_text("kill_grace = 0.5\n")
    pids = tmp_path / "pids"
    strays.watch_file(pids)
    argv = script(tmp_path, "tree", f"""
        import os, signal, time
        def note():
            with open({str(pids)!r}, "a") as fh:
                fh.write(f"{{os.getpid()}}\\n")
        for stubborn in (False, True):
            if os.fork() == 0:
                if os.fork() == 0:              # a grandchild
                    if stubborn:
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    note()
                    time.sleep(60)
                    os._exit(0)
                note()
                time.sleep(60)
                os._exit(0)
        note()
        time.sleep(60)
    """)
    job = taskq.add(*argv, options=["--timeout", "1.5", "--max-attempts", "1"])
    t0 = time.monotonic()
    burst(taskq, timeout=30)
    elapsed = time.monotonic() - t0
    assert elapsed < 15
    noted = read_pids(pids)
    assert len(noted) == 5, noted
    assert [p for p in noted if alive(p)] == []
    rec = taskq.json("show", job, "--json")
    assert rec["state"] == "failed"
    (a,) = rec["attempts"]
    assert a["timed_out"] is True
    assert a["exit_code"] is None
    assert a["signal"] in (signal.SIGTERM, signal.SIGKILL)
    assert "timed out" in rec["last_error"] or "timeout" in rec["last_error"]


def test_nothing_of_a_finished_attempt_outlives_it(taskq, spool, tmp_path, strays):
    pids = tmp_path / "pids"
    strays.watch_file(pids)
    job = taskq.add(*sh(f'sleep 30 & echo $! >> "{pids}"; exit 0'))
    t0 = time.monotonic()
    burst(taskq, timeout=40)
    assert time.monotonic() - t0 < 15
    assert state_of(spool, job) == "done"
    (pid,) = read_pids(pids)
    assert not alive(pid)


# -- order and scheduling -------------------------------------------------------------------


def test_priority_then_fifo(taskq, spool, tmp_path):
    out = tmp_path / "order"
    jobs = [("a", 0), ("b", 5), ("c", 0), ("d", 10), ("e", 5), ("f", -1), ("g", 0)]
    for label, prio in jobs:
        taskq.add(*sh(f"echo {label} >> '{out}'"), options=["--priority", str(prio)])
    burst(taskq, "--concurrency", "1")
    assert out.read_text().split() == ["d", "b", "e", "a", "c", "g", "f"]


def test_delayed_job_stays_pending_in_burst(taskq, spool, tmp_path):
    flag = tmp_path / "ran"
    job = taskq.add(*sh(f"touch '{flag}'"), options=["--delay", "1h"])
    t0 = time.monotonic()
    burst(taskq)
    assert time.monotonic() - t0 < 10
    assert state_of(spool, job) == "pending"
    assert not flag.exists()
    assert record(spool, job)["attempts"] == []
    st = taskq.json("status", "--json")
    assert st["scheduled"] == 1
    assert st["ready"] == 0
    assert st["counts"]["pending"] == 1


def test_at_in_the_past_runs(taskq, spool, tmp_path):
    flag = tmp_path / "ran"
    job = taskq.add(*sh(f"touch '{flag}'"), options=["--at", "2001-02-03T04:05:06Z"])
    burst(taskq)
    assert state_of(spool, job) == "done"
    assert flag.exists()


# -- the job's environment, stdin, log --------------------------------------------------------


ENV_DUMP = """
    import json, os, sys
    keys = ["TASKQ_JOB_ID", "TASKQ_JOB_NAME", "TASKQ_ATTEMPT", "TASKQ_MAX_ATTEMPTS",
            "TASKQ_SPOOL", "EMPTY", "EQ", "PLAIN", "TEST_INHERITED"]
    data = {k: os.environ.get(k) for k in keys}
    data["cwd"] = os.getcwd()
    with open(sys.argv[1], "w") as fh:
        json.dump(data, fh)
"""


def test_job_environment(taskq, tmp_path):
    env_py = script(tmp_path, "envdump", ENV_DUMP)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    named_out, anon_out = tmp_path / "named.json", tmp_path / "anon.json"
    # a relative --spool, given to add and to work from tmp_path
    rel = ["--spool", "rel/spool"]
    named = taskq("add", *rel, "--name", "reporter", "--max-attempts", "4",
                  "--env", "EMPTY=", "--env", "EQ=a=b=c", "--env", "PLAIN=x y",
                  "--cwd", str(workdir), "--", *env_py, str(named_out),
                  spool=None, cwd=tmp_path, check=True).stdout.strip()
    anon = taskq("add", *rel, "--", *env_py, str(anon_out),
                 spool=None, cwd=tmp_path, check=True).stdout.strip()
    taskq("work", *rel, "--burst", spool=None, cwd=tmp_path, check=True,
          env={"TEST_INHERITED": "from-worker"})
    spool_abs = os.path.realpath(tmp_path / "rel" / "spool")

    n = json.loads(named_out.read_text())
    assert n["TASKQ_JOB_ID"] == named
    assert n["TASKQ_JOB_NAME"] == "reporter"
    assert n["TASKQ_ATTEMPT"] == "1"
    assert n["TASKQ_MAX_ATTEMPTS"] == "4"
    assert os.path.isabs(n["TASKQ_SPOOL"])
    assert os.path.realpath(n["TASKQ_SPOOL"]) == spool_abs
    assert n["EMPTY"] == ""
    assert n["EQ"] == "a=b=c"
    assert n["PLAIN"] == "x y"
    assert n["TEST_INHERITED"] == "from-worker"  # the worker's environment is passed on
    assert os.path.realpath(n["cwd"]) == os.path.realpath(workdir)

    a = json.loads(anon_out.read_text())
    assert a["TASKQ_JOB_ID"] == anon
    assert a["TASKQ_JOB_NAME"] == ""
    assert a["TASKQ_MAX_ATTEMPTS"] == "5"
    assert os.path.realpath(a["TASKQ_SPOOL"]) == spool_abs
    assert a["EMPTY"] is None
    # default cwd: where add ran
    assert os.path.realpath(a["cwd"]) == os.path.realpath(tmp_path)


def test_job_env_overrides_worker_env(taskq, tmp_path):
    out = tmp_path / "out.json"
    env_py = script(tmp_path, "envdump", ENV_DUMP)
    taskq.add(*env_py, str(out), options=["--env", "TEST_INHERITED=from-job"])
    burst(taskq, env={"TEST_INHERITED": "from-worker"})
    assert json.loads(out.read_text())["TEST_INHERITED"] == "from-job"


STDIN_DUMP = """
    import json, os, sys
    target = os.readlink("/proc/self/fd/0")
    data = sys.stdin.buffer.read()
    with open(sys.argv[1], "w") as fh:
        json.dump({"target": target, "data": data.decode("utf-8")}, fh)
"""


def test_payload_on_stdin_and_dev_null_without(taskq, spool, tmp_path):
    dump = script(tmp_path, "stdindump", STDIN_DUMP)
    payload = {"user": 7, "items": [1, 2.5, None, True], "text": "héllo \"quoted\"\nline"}
    with_payload = taskq.add(*dump, str(tmp_path / "p.json"), options=["--payload", json.dumps(payload)])
    without = taskq.add(*dump, str(tmp_path / "n.json"))
    null = taskq.add(*dump, str(tmp_path / "z.json"), options=["--payload", "null"])
    burst(taskq)
    for job in (with_payload, without, null):
        assert state_of(spool, job) == "done"

    p = json.loads((tmp_path / "p.json").read_text())
    assert json.loads(p["data"]) == payload
    assert p["target"] != "/dev/null"

    for name, job in (("n.json", without), ("z.json", null)):
        d = json.loads((tmp_path / name).read_text())
        assert d["target"] == "/dev/null"
        assert d["data"] == ""
        assert taskq.json("show", job, "--json")["payload"] is None


def test_large_payload_not_read_by_the_job_does_not_block(taskq, spool, tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"blob": "x" * 500_000}))  # far more than a pipe buffer
    job = taskq.add(*sh("exit 0"), options=["--payload-file", str(big), "--timeout", "20"])
    t0 = time.monotonic()
    burst(taskq)
    assert time.monotonic() - t0 < 15
    assert state_of(spool, job) == "done"


def test_log_has_one_header_per_attempt_with_stdout_and_stderr(taskq, spool):
    job = taskq.add(*sh('echo "out-$TASKQ_ATTEMPT"; echo "err-$TASKQ_ATTEMPT" >&2; [ "$TASKQ_ATTEMPT" -ge 3 ]'),
                    options=["--max-attempts", "5", "--backoff", "0"])
    burst(taskq)
    rec = record(spool, job)
    assert rec["state"] == "done"
    assert len(rec["attempts"]) == 3
    log = spool / "logs" / f"{job}.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    lines = log.read_text().splitlines()
    output = [ln for ln in lines if re.fullmatch(r"(out|err)-\d", ln)]
    headers = [i for i, ln in enumerate(lines) if ln not in output]
    assert len(headers) == 3, lines
    assert sorted(output) == sorted(f"{s}-{n}" for s in ("out", "err") for n in (1, 2, 3))
    for n, (start, attempt) in enumerate(zip(headers, rec["attempts"], strict=True), 1):
        header = lines[start]
        assert re.search(rf"\b{n}\b", header), header
        assert attempt["started_at"][11:19] in header or time.strftime(
            "%H:%M:%S", time.localtime(iso_ts(attempt["started_at"]))) in header, header
        end = headers[n] if n < 3 else len(lines)
        assert sorted(lines[start + 1:end]) == [f"err-{n}", f"out-{n}"]


def test_cannot_start_is_a_failed_attempt_and_the_worker_goes_on(taskq, spool, tmp_path):
    noexec = tmp_path / "noexec.sh"
    noexec.write_text("#!/bin/sh\nexit 0\n")
    noexec.chmod(0o644)
    gone = tmp_path / "gone"
    gone.mkdir()
    ok_flag = tmp_path / "ok"
    missing = taskq.add("/nonexistent/taskq-no-such-prog", "x", options=["--max-attempts", "1"])
    notexe = taskq.add(str(noexec), options=["--max-attempts", "1"])
    nocwd = taskq.add("true", options=["--max-attempts", "1", "--cwd", str(gone)])
    gone.rmdir()
    good = taskq.add(*sh(f"touch '{ok_flag}'"), options=["--priority", "-1"])
    burst(taskq)
    assert state_of(spool, good) == "done" and ok_flag.exists()
    expect = {
        missing: ("/nonexistent/taskq-no-such-prog", ("not found", "no such file")),
        notexe: (str(noexec), ("permission", "not executable")),
        nocwd: (str(gone), ("not found", "no such", "does not exist", "missing")),
    }
    for job, (what, words) in expect.items():
        rec = taskq.json("show", job, "--json")
        assert rec["state"] == "failed", rec
        assert len(rec["attempts"]) == 1
        err = rec["last_error"]
        assert what in err, err
        assert any(w in err.lower() for w in words), err


def test_cannot_start_is_retried_while_attempts_remain(taskq, spool):
    job = taskq.add("/nonexistent/taskq-no-such-prog", options=["--max-attempts", "2", "--backoff", "0"])
    burst(taskq)
    rec = record(spool, job)
    assert rec["state"] == "failed"
    assert len(rec["attempts"]) == 2


# -- concurrency -------------------------------------------------------------------------------


def test_exactly_once_under_three_concurrent_workers(taskq, spool, tmp_path, workers):
    out = tmp_path / "ran"
    n = 210
    cmd = sh(f'echo "$TASKQ_JOB_ID" >> "{out}"')
    batch = "".join(json.dumps({"command": cmd}) + "\n" for _ in range(n))
    ids = taskq("add", "--batch", "-", input=batch, check=True).stdout.split()
    assert len(set(ids)) == n
    ws = [workers.start("--burst", "--concurrency", "2") for _ in range(3)]
    for w in ws:
        assert w.wait(timeout=80) == 0, w.stderr()
    lines = out.read_text().split()
    counts = collections.Counter(lines)
    assert set(counts) == set(ids)
    assert [i for i, c in counts.items() if c != 1] == []
    assert len(lines) == n
    done = files(spool, "done")
    assert sorted(done) == sorted(f"{i}.json" for i in ids)
    assert files(spool, "pending") == []
    assert [f for f in files(spool, "running") if f.endswith(".json")] == []
    assert files(spool, "failed") == []
    for i in ids:
        rec = json.loads((spool / "done" / f"{i}.json").read_bytes())
        assert len(rec["attempts"]) == 1 and rec["attempts"][0]["exit_code"] == 0
    # all three took part (each claims some of the 210)
    workers_seen = collections.Counter(
        json.loads((spool / "done" / f"{i}.json").read_bytes())["attempts"][0]["worker"] for i in ids)
    assert len(workers_seen) >= 2


def test_concurrency_runs_jobs_at_once(taskq, spool, tmp_path):
    out = tmp_path / "times"
    for _ in range(3):
        taskq.add(*sh(f'echo "start $(date +%s.%N)" >> "{out}"; sleep 1; echo "end $(date +%s.%N)" >> "{out}"'))
    t0 = time.monotonic()
    burst(taskq, "--concurrency", "3")
    elapsed = time.monotonic() - t0
    events = [line.split() for line in out.read_text().splitlines()]
    starts = [float(t) for kind, t in events if kind == "start"]
    ends = [float(t) for kind, t in events if kind == "end"]
    assert len(starts) == len(ends) == 3
    assert max(starts) < min(ends)  # all three were running at one moment
    assert elapsed < 2.8  # not 3 s one after another


def test_max_jobs_without_burst_exits_after_n_jobs(taskq, spool):
    ids = [taskq.add("true") for _ in range(3)]
    proc = taskq("work", "--max-jobs", "2", timeout=30)
    assert proc.returncode == 0, proc.stderr
    states = [state_of(spool, i) for i in ids]
    assert states.count("done") == 2
    assert states.count("pending") == 1
    assert state_of(spool, ids[2]) == "pending"  # oldest first


def test_burst_on_empty_spool_exits_promptly(taskq, spool):
    t0 = time.monotonic()
    proc = taskq("work", "--burst", timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 5
    for d in ("tmp", "pending", "running", "done", "failed", "logs"):
        assert (spool / d).is_dir()


def test_burst_does_not_wait_for_jobs_of_other_workers(taskq, spool, tmp_path, workers, strays):
    started, pids = tmp_path / "started", tmp_path / "pids"
    strays.watch_file(pids)
    job = taskq.add(*sh(f'echo $$ >> "{pids}"; touch "{started}"; sleep 2'))
    w = workers.start()
    wait_for(started.exists, timeout=15, message="the job to start")
    t0 = time.monotonic()
    burst(taskq, timeout=20)
    assert time.monotonic() - t0 < 2.5
    assert state_of(spool, job) == "running"
    w.send(signal.SIGTERM)
    assert w.wait(timeout=20) == 0
    assert state_of(spool, job) == "done"


def test_event_lines_carry_the_full_job_id(taskq, spool):
    ok = taskq.add("true")
    bad = taskq.add(*sh("exit 100"))
    retried = taskq.add(*sh("exit 1"), options=["--max-attempts", "2", "--backoff", "30"])
    err = burst(taskq).stderr
    for job in (ok, bad, retried):
        mine = [ln for ln in err.splitlines() if job in ln]
        assert len(mine) >= 2, (job, err)  # claimed, then how it ended
    assert state_of(spool, retried) == "pending"


# -- dependencies ------------------------------------------------------------------------------


def test_after_runs_dependent_once_the_dependency_is_done(taskq, spool, tmp_path):
    out = tmp_path / "order"
    a = taskq.add(*sh(f'echo A-start >> "{out}"; sleep 0.5; echo A-end >> "{out}"'))
    b = taskq.add(*sh(f'echo B >> "{out}"'), options=["--after", a, "--priority", "10"])
    burst(taskq, "--concurrency", "2")
    assert out.read_text().split() == ["A-start", "A-end", "B"]
    ra, rb = record(spool, a), record(spool, b)
    assert ra["state"] == rb["state"] == "done"
    assert iso_ts(rb["attempts"][0]["started_at"]) >= iso_ts(ra["attempts"][0]["finished_at"])


def test_after_a_failed_dependency_fails_the_dependent(taskq, spool, tmp_path):
    flag = tmp_path / "b-ran"
    a = taskq.add(*sh("exit 100"))
    b = taskq.add(*sh(f'touch "{flag}"'), options=["--after", a])
    burst(taskq)
    assert state_of(spool, a) == "failed"
    rec = taskq.json("show", b, "--json")
    assert rec["state"] == "failed"
    assert rec["last_error"] == f"dependency {a} failed"
    assert rec["attempts"] == []
    assert not flag.exists()


def test_dependency_chain_runs_in_order_in_one_burst(taskq, spool, tmp_path):
    out = tmp_path / "order"
    a = taskq.add(*sh(f'echo A >> "{out}"'), options=["--priority", "-5"])
    b = taskq.add(*sh(f'echo B >> "{out}"'), options=["--after", a, "--priority", "5"])
    c = taskq.add(*sh(f'echo C >> "{out}"'), options=["--after", b, "--priority", "9"])
    burst(taskq, "--concurrency", "3")
    assert out.read_text().split() == ["A", "B", "C"]
    assert {state_of(spool, j) for j in (a, b, c)} == {"done"}


def test_failure_propagates_down_a_dependency_chain(taskq, spool):
    a = taskq.add(*sh("exit 100"))
    b = taskq.add("true", options=["--after", a])
    c = taskq.add("true", options=["--after", b])
    burst(taskq)
    assert record(spool, b)["last_error"] == f"dependency {a} failed"
    assert record(spool, c)["last_error"] == f"dependency {b} failed"
    assert state_of(spool, b) == state_of(spool, c) == "failed"


# -- drop-in files and unreadable files ------------------------------------------------------------


def drop_in(spool: Path, name: str, data: bytes) -> None:
    """The drop-in protocol: write into tmp/, rename into pending/."""
    for d in ("tmp", "pending"):
        (spool / d).mkdir(parents=True, exist_ok=True)
    staged = spool / "tmp" / f"{name}.staging"
    staged.write_bytes(data)
    os.rename(staged, spool / "pending" / name)


def test_drop_in_file_is_normalised_and_run(taskq, spool, tmp_path):
    flag = tmp_path / "dropped"
    taskq("work", "--burst", check=True)  # create the spool
    cmd = sh(f'echo "$TASKQ_JOB_ID" > "{flag}"')
    drop_in(spool, "anything.json", json.dumps({"command": cmd, "x_origin": {"lang": "go"}}).encode())
    os.chmod(spool / "pending" / "anything.json", 0o644)
    burst(taskq)
    assert not (spool / "pending" / "anything.json").exists()
    done = files(spool, "done")
    assert len(done) == 1
    job_id = done[0][:-5]
    assert ID_RE.match(job_id)
    assert flag.read_text().strip() == job_id
    rec = taskq.json("show", job_id, "--json")
    assert rec["id"] == job_id
    assert rec["command"] == cmd
    assert rec["state"] == "done"
    assert rec["max_attempts"] == 5 and rec["priority"] == 0
    assert [a["exit_code"] for a in rec["attempts"]] == [0]
    assert [j["id"] for j in taskq.json("list", "--state", "done", "--json")] == [job_id]
    on_disk = json.loads((spool / "done" / done[0]).read_bytes())
    assert on_disk["x_origin"] == {"lang": "go"}  # extra keys are preserved
    assert on_disk["id"] == job_id and on_disk["version"] == 1
    assert stat.S_IMODE((spool / "done" / done[0]).stat().st_mode) == 0o600


def test_drop_in_picked_up_by_an_idle_worker(taskq, spool, tmp_path, workers):
    flag = tmp_path / "dropped"
    w = workers.start()
    w.wait_started()
    drop_in(spool, "from-another-language.json", json.dumps({"command": sh(f'touch "{flag}"')}).encode())
    wait_for(lambda: len(files(spool, "done")) == 1, timeout=10, message="the drop-in job to be done")
    assert flag.exists()
    assert files(spool, "pending") == []


CORRUPT = {
    "badjson.json": (b'{"command": ["true"', ("json",)),
    "nocommand.json": (b'{"name": "x"}', ("command",)),
    "cmdstring.json": (b'{"command": "echo hi"}', ("command",)),
    "cmdint.json": (b'{"command": ["echo", 3]}', ("command",)),
    "badprio.json": (b'{"command": ["true"], "priority": "high"}', ("priority",)),
    "latin1.json": (b'{"command": ["echo", "caf\xe9"]}', ("utf-8", "utf8")),
    "array.json": (b'[1, 2, 3]', ("object",)),
    "empty.json": (b"", ("json", "empty")),
}


def test_corrupt_files_in_pending_are_moved_to_failed(taskq, spool, tmp_path):
    flag = tmp_path / "good"
    good = taskq.add(*sh(f'touch "{flag}"'))
    for name, (data, _) in CORRUPT.items():
        drop_in(spool, name, data)
    # a file with a proper pending name but broken content
    named = "0999999999.20010101T000000000Z.BROKENJOB1.json"
    drop_in(spool, named, b"{not json")
    proc = burst(taskq)
    assert state_of(spool, good) == "done" and flag.exists()
    assert files(spool, "pending") == []

    failed = {name: (spool / "failed" / name).read_bytes()
              for name in files(spool, "failed") if name.endswith(".json")}
    by_bytes = {data: name[:-5] for name, data in failed.items()}
    for name, (data, _) in CORRUPT.items():
        assert data in by_bytes, f"{name}: bytes not found untouched in failed/"
    assert b"{not json" in by_bytes
    assert len(failed) == len(CORRUPT) + 1

    listed = {j["id"]: j for j in taskq.json("list", "--state", "failed", "--json")}
    assert set(listed) == set(by_bytes.values())
    for name, (data, words) in CORRUPT.items():
        job_id = by_bytes[data]
        rec = taskq.json("show", job_id, "--json")
        assert rec["state"] == "failed"
        err = rec["last_error"]
        assert err, name
        assert any(w in err.lower() for w in words), (name, err)
        assert listed[job_id]["last_error"] == err
    assert "json" in taskq.json("show", by_bytes[b"{not json"], "--json")["last_error"].lower()
    assert proc.stderr.count("\n") >= 1


def test_worker_goes_on_after_corrupt_files_while_running(taskq, spool, tmp_path, workers):
    flag = tmp_path / "good"
    w = workers.start()
    w.wait_started()
    drop_in(spool, "bad.json", b"\xff\xfe garbage")
    job = taskq.add(*sh(f'touch "{flag}"'))
    wait_state(spool, job, "done", timeout=10)
    wait_for(lambda: b"\xff\xfe garbage" in [(spool / "failed" / f).read_bytes()
                                             for f in files(spool, "failed") if f.endswith(".json")],
             timeout=10, message="the corrupt file in failed/")
    assert w.proc.poll() is None


def make_ignored_entries(spool: Path, tmp_path: Path, via_rename: bool,
                         kinds: tuple = ("hidden", "txt", "part", "dir", "link")) -> dict:
    """Entries of pending/ that must never be parsed or run; each would touch a flag
    file if it were run. Returns {name: (kind, flag, bytes)}."""
    out = {}
    (spool / "pending").mkdir(parents=True, exist_ok=True)
    (spool / "tmp").mkdir(parents=True, exist_ok=True)

    def content(tag: str):
        flag = tmp_path / f"ran-{tag}"
        return json.dumps({"command": sh(f'touch "{flag}"')}).encode(), flag

    def place(name: str, make) -> None:
        if via_rename:
            staged = spool / "tmp" / f"staged-{name}"
            make(staged)
            os.rename(staged, spool / "pending" / name)
        else:
            make(spool / "pending" / name)

    for kind, name in (("hidden", ".hidden.json"), ("txt", "job.txt"), ("part", "job.json.part")):
        if kind in kinds:
            data, flag = content(kind)
            place(name, lambda p, data=data: p.write_bytes(data))
            out[name] = ("file", flag, data)
    if "dir" in kinds:
        place("adir.json", lambda p: p.mkdir())
        out["adir.json"] = ("dir", None, None)
    if "link" in kinds:
        data, flag = content("link")
        target = tmp_path / "outside.json"
        target.write_bytes(data)
        place("link.json", lambda p: p.symlink_to(target))
        out["link.json"] = ("link", flag, data)
    return out


def check_ignored_entries(spool: Path, tmp_path: Path, entries: dict, allow: tuple = ()) -> None:
    for name, (kind, flag, data) in entries.items():
        path = spool / "pending" / name
        if kind == "file":
            assert path.is_file() and not path.is_symlink(), name
            assert path.read_bytes() == data, name
        elif kind == "dir":
            assert path.is_dir() and not path.is_symlink(), name
        else:
            assert path.is_symlink(), name
            assert os.readlink(path) == str(tmp_path / "outside.json")
            assert (tmp_path / "outside.json").read_bytes() == data
        if flag is not None:
            assert not flag.exists(), f"{name} was run"
    for state in ("running", "done", "failed"):
        assert [f for f in files(spool, state) if not f.endswith(".lock") and f not in allow] == [], state


def test_hidden_foreign_and_non_regular_entries_are_left_alone(taskq, spool, tmp_path):
    taskq("work", "--burst", check=True)
    entries = make_ignored_entries(spool, tmp_path, via_rename=False)
    burst(taskq, timeout=20)
    check_ignored_entries(spool, tmp_path, entries)


def run_idle_worker_over_ignored_entries(taskq, spool, tmp_path, workers, kinds) -> None:
    taskq("work", "--burst", check=True)
    w = workers.start()
    w.wait_started()
    entries = make_ignored_entries(spool, tmp_path, via_rename=True, kinds=kinds)
    # a real job after them: once it is done, the worker has seen the entries
    flag = tmp_path / "good"
    job = taskq.add(*sh(f'touch "{flag}"'))
    wait_state(spool, job, "done", timeout=10)
    time.sleep(0.5)
    assert flag.exists()
    check_ignored_entries(spool, tmp_path, entries, allow=(f"{job}.json",))


def test_hidden_and_foreign_names_renamed_in_while_worker_idles_are_left_alone(taskq, spool, tmp_path, workers):
    run_idle_worker_over_ignored_entries(taskq, spool, tmp_path, workers, ("hidden", "txt", "part"))


def test_directory_renamed_in_while_worker_idles_is_left_alone(taskq, spool, tmp_path, workers):
    run_idle_worker_over_ignored_entries(taskq, spool, tmp_path, workers, ("dir",))


def test_symlink_renamed_in_while_worker_idles_is_left_alone(taskq, spool, tmp_path, workers):
    run_idle_worker_over_ignored_entries(taskq, spool, tmp_path, workers, ("link",))


# -- idle worker: latency, CPU, start-up housekeeping ---------------------------------------------


def test_idle_worker_picks_up_a_new_job_promptly(taskq, spool, tmp_path, workers):
    out = tmp_path / "started"
    w = workers.start()
    w.wait_started(settle=1.2)  # past at least one idle wake-up
    lat = []
    for i in range(3):
        t_add = time.time()
        job = taskq.add(*sh(f'date +%s.%N > "{out}.{i}"'))
        wait_state(spool, job, "done", timeout=10)
        started = float((Path(f"{out}.{i}")).read_text())
        created = iso_ts(record(spool, job)["created_at"])
        lat.append(started - max(created, t_add))
        time.sleep(0.3)
    assert min(lat) < 1.0, lat
    assert sorted(lat)[1] < 1.0, lat


def test_idle_worker_uses_little_cpu(taskq, spool, workers):
    w = workers.start()
    w.wait_started(settle=0.5)
    before = cpu_seconds(w.pid)
    time.sleep(2.0)
    used = cpu_seconds(w.pid) - before
    assert used < 0.2, used
    assert w.proc.poll() is None


def test_stale_staging_files_are_removed_at_start(taskq, spool):
    taskq("work", "--burst", check=True)
    tmp = spool / "tmp"
    now = time.time()
    old, older, fresh, recent = tmp / "job.1.old.tmp", tmp / "x", tmp / "job.2.fresh.tmp", tmp / "job.3.recent.tmp"
    for p in (old, older, fresh, recent):
        p.write_bytes(b"{}")
    os.utime(old, (now - 3700, now - 3700))
    os.utime(older, (now - 86400 * 3, now - 86400 * 3))
    os.utime(recent, (now - 3000, now - 3000))
    burst(taskq)
    assert not old.exists()
    assert not older.exists()
    assert fresh.exists()
    assert recent.exists()
