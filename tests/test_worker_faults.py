"""Signals and crashes: ``taskq work`` processes stopped, interrupted and killed
while real jobs run; recovery of what a dead worker left in running/."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from workerutil import (  # noqa: F401 - workers and strays are fixtures
    alive,
    burst,
    files,
    iso_ts,
    read_pids,
    record,
    script,
    sh,
    sigterm_caught,
    state_of,
    strays,
    wait_for,
    wait_state,
    workers,
)


def lines(path: Path) -> list[list[str]]:
    try:
        return [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []


# -- graceful stop -------------------------------------------------------------------------


def test_sigterm_short_grace_returns_the_job_uncounted(taskq, spool, tmp_path, workers, strays):
    runs, pids = tmp_path / "runs", tmp_path / "pids"
    strays.watch_file(pids)
    job = taskq.add(*sh(
        f'echo "$TASKQ_ATTEMPT $TASKQ_MAX_ATTEMPTS" >> "{runs}"; '
        f'if [ "$TASKQ_ATTEMPT" = 1 ]; then echo $$ >> "{pids}"; sleep 30 & echo $! >> "{pids}"; wait $!; fi; '
        'exit 3'), options=["--max-attempts", "2", "--backoff", "0.1"])
    w = workers.start("--grace", "0.5")
    wait_for(lambda: len(read_pids(pids)) == 2, timeout=15, message="the job to start")
    t0 = time.monotonic()
    w.send(signal.SIGTERM)
    rc = w.wait(timeout=15)
    elapsed = time.monotonic() - t0
    assert rc == 0, w.stderr()
    assert elapsed < 5, elapsed
    assert "Traceback" not in w.stderr()
    assert [p for p in read_pids(pids) if alive(p)] == []  # the job was stopped

    rec = taskq.json("show", job, "--json")
    assert rec["state"] == "pending"
    (a,) = rec["attempts"]
    assert a["error"] == "interrupted"
    assert a["finished_at"] is not None
    assert rec["max_attempts"] == 2
    assert iso_ts(rec["run_at"]) <= time.time()  # ready again at once
    assert files(spool, "running") == [] or all(not f.endswith(".json") for f in files(spool, "running"))
    assert job in w.stderr()

    # A later run is attempt 2, and the interrupted run used up nothing of the budget
    # of 2: the job fails twice more (attempts 2 and 3) before it is failed for good.
    w2 = workers.start()
    wait_state(spool, job, "failed", timeout=20)
    w2.send(signal.SIGTERM)
    assert w2.wait() == 0
    rec = taskq.json("show", job, "--json")
    assert [a["number"] for a in rec["attempts"]] == [1, 2, 3]
    assert [a["error"] for a in rec["attempts"]] == ["interrupted", None, None]
    assert [a["exit_code"] for a in rec["attempts"]][1:] == [3, 3]
    assert rec["max_attempts"] == 2
    assert runs.read_text().split("\n")[:3] == ["1 2", "2 2", "3 2"]


def test_sigterm_long_grace_lets_the_running_job_finish(taskq, spool, tmp_path, workers):
    started = tmp_path / "started"
    first = taskq.add(*sh(f'touch "{started}"; sleep 1'))
    second = taskq.add("true")
    w = workers.start("--grace", "30")
    wait_for(started.exists, timeout=15, message="the first job to start")
    t0 = time.monotonic()
    w.send(signal.SIGTERM)
    assert w.wait(timeout=20) == 0, w.stderr()
    assert time.monotonic() - t0 < 10
    rec = record(spool, first)
    assert rec["state"] == "done"
    assert [a["exit_code"] for a in rec["attempts"]] == [0]
    # a stopping worker claims nothing more
    rec2 = record(spool, second)
    assert rec2["state"] == "pending" and rec2["attempts"] == []


def test_first_sigint_is_a_graceful_stop(taskq, spool, tmp_path, workers):
    started = tmp_path / "started"
    job = taskq.add(*sh(f'touch "{started}"; sleep 0.5'))
    w = workers.start()
    wait_for(started.exists, timeout=15, message="the job to start")
    w.send(signal.SIGINT)
    assert w.wait(timeout=20) == 0, w.stderr()
    assert state_of(spool, job) == "done"


def test_second_sigint_stops_at_once_with_130(taskq, spool, tmp_path, workers, strays):
    pids = tmp_path / "pids"
    strays.watch_file(pids)
    # the job ignores SIGTERM: only a hard stop ends it before the 30 s grace
    job = taskq.add(*sh(f'trap "" TERM; echo $$ >> "{pids}"; sleep 30 & echo $! >> "{pids}"; wait $!'),
                    options=["--max-attempts", "2"])
    w = workers.start("--grace", "30")
    wait_for(lambda: len(read_pids(pids)) == 2, timeout=15, message="the job to start")
    w.send(signal.SIGINT)
    time.sleep(0.5)
    assert w.proc.poll() is None  # still waiting for the job
    t0 = time.monotonic()
    w.send(signal.SIGINT)
    rc = w.wait(timeout=10)
    assert rc == 130, w.stderr()
    assert time.monotonic() - t0 < 3
    assert "Traceback" not in w.stderr()
    rec = record(spool, job)
    assert rec["state"] == "pending"
    assert [a["error"] for a in rec["attempts"]] == ["interrupted"]
    wait_for(lambda: not any(alive(p) for p in read_pids(pids)), timeout=5,
             message="the job's processes to be gone")


def test_sigterm_right_after_start_up_is_a_clean_stop(taskq, spool, tmp_path, workers):
    taskq.add("true", options=["--delay", "1h"])  # something in the spool
    outcomes = []
    for delay in (0.05, 0.05, 0.05, 0.1, 0.2, 0.4):
        for _ in range(5):
            w = workers.start()
            time.sleep(delay)
            handler = sigterm_caught(w.pid)
            w.send(signal.SIGTERM)
            rc = w.wait(timeout=15)
            if rc == -signal.SIGTERM and not handler:
                # the signal came while the interpreter itself was starting, before
                # any of taskq's code could run: try again
                continue
            outcomes.append((delay, rc, "Traceback" in w.stderr()))
            break
    assert len(outcomes) >= 4, outcomes
    assert all(rc == 0 and not tb for _, rc, tb in outcomes), outcomes
    assert len(files(spool, "pending")) == 1


def test_sigterm_as_soon_as_the_handler_is_installed(taskq, spool, workers):
    for _ in range(3):
        w = workers.start()
        wait_for(lambda w=w: sigterm_caught(w.pid) or w.proc.poll() is not None, timeout=10, interval=0.001,
                 message="the SIGTERM handler")
        w.send(signal.SIGTERM)
        assert w.wait(timeout=15) == 0, w.stderr()
        assert "Traceback" not in w.stderr()


# -- crashes and recovery ------------------------------------------------------------------


def start_and_kill(taskq, spool, tmp_path, workers, strays, sleep: float, options: list[str]):
    """Add a job that sleeps *sleep* s recording start/end, start a worker, SIGKILL it
    while the job runs. Returns (job id, runs file, pid of the orphaned attempt)."""
    runs, pids = tmp_path / "runs", tmp_path / "pids"
    strays.watch_file(pids)
    job = taskq.add(*sh(
        f'echo "start $TASKQ_ATTEMPT $(date +%s.%N)" >> "{runs}"; echo $$ >> "{pids}"; '
        f'sleep {sleep}; echo "end $TASKQ_ATTEMPT $(date +%s.%N)" >> "{runs}"'), options=options)
    w = workers.start()
    wait_for(lambda: read_pids(pids), timeout=15, message="the job to start")
    w.send(signal.SIGKILL)
    assert w.wait(timeout=10) == -signal.SIGKILL
    orphan = read_pids(pids)[0]
    return job, runs, orphan


def test_kill_9_mid_job_is_recovered_only_after_the_orphan_ends(taskq, spool, tmp_path, workers, strays):
    job, runs, orphan = start_and_kill(taskq, spool, tmp_path, workers, strays, 2,
                                       ["--max-attempts", "3", "--backoff", "0.1"])
    assert alive(orphan)  # the attempt lives on in its own session
    # a new worker right away: the attempt's process is alive, so the job is not touched
    proc = burst(taskq, timeout=30)
    if alive(orphan):
        assert state_of(spool, job) == "running", proc.stderr
        assert [e[:2] for e in lines(runs) if e[0] == "start"] == [["start", "1"]]
    # keep starting workers until the job is done
    deadline = time.monotonic() + 25
    while state_of(spool, job) != "done" and time.monotonic() < deadline:
        burst(taskq, timeout=30)
        time.sleep(0.2)
    assert state_of(spool, job) == "done"
    events = lines(runs)
    starts = [(int(n), float(t)) for kind, n, t in events if kind == "start"]
    ends = [(int(n), float(t)) for kind, n, t in events if kind == "end"]
    assert [n for n, _ in starts] == [1, 2], events
    assert [n for n, _ in ends] == [1, 2], events
    assert starts[1][1] >= ends[0][1], "the second run started while the first was still running"
    rec = taskq.json("show", job, "--json")
    a1, a2 = rec["attempts"]
    assert a1["error"] == "worker lost"
    assert a1["finished_at"] is not None
    assert a2["exit_code"] == 0 and a2["number"] == 2


def test_recovery_waits_for_processes_of_the_attempt_that_closed_their_fds(taskq, spool, tmp_path,
                                                                            workers, strays):
    runs, pids = tmp_path / "runs", tmp_path / "pids"
    strays.watch_file(pids)
    child = (f'echo $$ >> "{pids}"; echo "child-start $TASKQ_ATTEMPT $(date +%s.%N)" >> "{runs}"; '
             f'sleep 2.5; echo "child-end $TASKQ_ATTEMPT $(date +%s.%N)" >> "{runs}"')
    # a child in the attempt's process group that does not keep the inherited
    # descriptors (subprocess closes them by default)
    argv = script(tmp_path, "job", f"""
        import os, subprocess, time
        with open({str(pids)!r}, "a") as fh:
            fh.write(f"{{os.getpid()}}\\n")
        attempt = os.environ["TASKQ_ATTEMPT"]
        with open({str(runs)!r}, "a") as fh:
            fh.write(f"main-start {{attempt}} {{time.time()}}\\n")
        if attempt == "1":
            subprocess.Popen(["/bin/sh", "-c", {child!r}])
            time.sleep(1)
    """)
    job = taskq.add(*argv, options=["--max-attempts", "3", "--backoff", "0"])
    w = workers.start()
    wait_for(lambda: any(e[0] == "child-start" for e in lines(runs)), timeout=15,
             message="the job's child to start")
    w.send(signal.SIGKILL)
    w.wait(timeout=10)
    main_pid = read_pids(pids)[0]
    wait_for(lambda: not alive(main_pid), timeout=10, message="the attempt's main process to end")
    deadline = time.monotonic() + 20
    while state_of(spool, job) != "done" and time.monotonic() < deadline:
        burst(taskq, timeout=30)
        time.sleep(0.1)
    assert state_of(spool, job) == "done"
    wait_for(lambda: any(e[0] == "child-end" for e in lines(runs)), timeout=10,
             message="the first attempt's child to end")
    events = {(e[0], e[1]): float(e[2]) for e in lines(runs)}
    assert events[("main-start", "2")] >= events[("child-end", "1")], \
        "attempt 2 ran while a process of attempt 1 was alive"


def test_worker_lost_counts_against_max_attempts(taskq, spool, tmp_path, workers, strays):
    job, runs, orphan = start_and_kill(taskq, spool, tmp_path, workers, strays, 1,
                                       ["--max-attempts", "1", "--backoff", "0.1"])
    wait_for(lambda: not alive(orphan), timeout=15, message="the orphaned attempt to end")
    proc = burst(taskq)
    rec = taskq.json("show", job, "--json")
    assert rec["state"] == "failed"
    assert rec["last_error"] == "worker lost"
    assert [a["error"] for a in rec["attempts"]] == ["worker lost"]
    assert [e[0] for e in lines(runs)] == ["start", "end"]  # never run again
    assert job in proc.stderr


def move_to_running(spool: Path, job_id: str, mutate) -> None:
    """Simulate a worker that died: the job's record, changed by *mutate*, in
    running/ID.json, with no lock held and no process."""
    (name,) = [n for n in files(spool, "pending") if job_id in n]
    data = json.loads((spool / "pending" / name).read_bytes())
    mutate(data)
    (spool / "running" / f"{job_id}.json").write_text(json.dumps(data))
    os.unlink(spool / "pending" / name)


def stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def test_job_left_in_running_without_lock_or_process_is_recovered(taskq, spool, tmp_path):
    out = tmp_path / "out"
    job = taskq.add(*sh(f'echo "$TASKQ_ATTEMPT" > "{out}"'), options=["--max-attempts", "3", "--backoff", "0"])

    def unfinished(data):
        data["attempts"] = [{"number": 1, "started_at": stamp(time.time() - 60), "finished_at": None,
                             "exit_code": None, "signal": None, "timed_out": False, "error": None,
                             "worker": "elsewhere:999999"}]

    move_to_running(spool, job, unfinished)
    proc = burst(taskq)
    rec = taskq.json("show", job, "--json")
    assert rec["state"] == "done", proc.stderr
    assert [a["error"] for a in rec["attempts"]] == ["worker lost", None]
    assert rec["attempts"][0]["finished_at"] is not None
    assert rec["attempts"][1]["exit_code"] == 0
    assert out.read_text().strip() == "2"
    assert job in proc.stderr
    assert [f for f in files(spool, "running") if f.endswith(".json")] == []


def test_claimed_but_never_started_job_goes_back_and_runs(taskq, spool, tmp_path):
    out = tmp_path / "out"
    job = taskq.add(*sh(f'echo "$TASKQ_ATTEMPT" > "{out}"'))
    move_to_running(spool, job, lambda data: None)
    burst(taskq)
    rec = taskq.json("show", job, "--json")
    assert rec["state"] == "done"
    assert len(rec["attempts"]) == 1
    assert out.read_text().strip() == "1"


def test_finished_but_unsettled_attempt_is_settled_not_rerun(taskq, spool, tmp_path):
    flag = tmp_path / "ran"
    ok = taskq.add(*sh(f'touch "{flag}"'))
    bad = taskq.add(*sh(f'touch "{flag}"'), options=["--max-attempts", "1"])

    def finished(code):
        def mutate(data):
            now = time.time()
            data["attempts"] = [{"number": 1, "started_at": stamp(now - 5), "finished_at": stamp(now - 4),
                                 "exit_code": code, "signal": None, "timed_out": False, "error": None,
                                 "worker": "elsewhere:999999"}]
        return mutate

    move_to_running(spool, ok, finished(0))
    move_to_running(spool, bad, finished(4))
    burst(taskq)
    assert not flag.exists()
    r_ok, r_bad = taskq.json("show", ok, "--json"), taskq.json("show", bad, "--json")
    assert r_ok["state"] == "done" and len(r_ok["attempts"]) == 1
    assert r_bad["state"] == "failed" and len(r_bad["attempts"]) == 1
    assert "4" in r_bad["last_error"]
