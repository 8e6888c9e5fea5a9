"""Load and soak: many jobs through several real workers, each run exactly once; a
steady producer beside one worker for a while, with the worker's memory, open file
descriptors and the staging directory watched for growth.

* ``test_load_exactly_once``: 4 ``taskq work --burst --concurrency 2`` processes
  drain jobs enqueued with one ``taskq add --batch``; each job appends its
  ``TASKQ_JOB_ID`` to a shared log. Every id must be in the log exactly once, every
  job in done/ with exactly one attempt, nothing left elsewhere. Bounded: 1,000 jobs;
  ``TASKQ_LONG=1``: 5,000 (``TASKQ_LOAD_JOBS`` overrides).
* ``test_soak_flat_memory_fds_tmp``: a producer thread enqueues through the Python API
  at a steady rate (``TASKQ_SOAK_RATE`` jobs/s, default 50) while one
  ``taskq work --concurrency 2`` runs; every 0.5 s the worker's VmRSS, its number of
  open descriptors and the number of files in tmp/ are sampled. Bounded: 15 s;
  ``TASKQ_LONG=1``: 3 minutes (``TASKQ_SOAK_SECONDS`` overrides). Asserts: the last
  RSS is at most the first steady sample (after a warm-up) + 20 MiB; once drained and
  idle again the worker holds no more descriptors than when it started idle; tmp/
  never holds more than a few files in flight and is empty at the end; the backlog
  does not grow; every job ran exactly once.

Both print their figures (``pytest -s``) and merge them into the JSON file named by
``TASKQ_TORTURE_REPORT`` (sections ``load`` and ``soak``). ``benchmarks/soak.py`` runs
the soak outside pytest, for as long as wanted.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import threading
import time

from .support import (
    LONG,
    bad_event_lines,
    batch_lines,
    drained,
    listing,
    open_fds,
    report,
    rss_kib,
    started,
    wait_until,
)


def _env_num(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def idle_figures(pid: int) -> dict:
    """RSS and descriptors of an idle worker: the least of a few samples, so that a
    directory it happens to be scanning at one instant is not counted."""
    samples = []
    for _ in range(5):
        samples.append((rss_kib(pid), open_fds(pid)))
        time.sleep(0.2)
    return {"rss_kib": min(s[0] for s in samples), "fds": min(s[1] for s in samples)}


def test_load_exactly_once(taskq, fleets, tmp_path):
    n = int(_env_num("TASKQ_LOAD_JOBS", 5000 if LONG else 1000))
    spool, out = tmp_path / "spool", tmp_path / "ran"
    cmd = ["/bin/sh", "-c", f'echo "$TASKQ_JOB_ID" >> "{out}"']

    t0 = time.monotonic()
    ids = taskq("add", "--batch", "-", input=batch_lines([{"command": cmd}] * n), spool=spool,
                check=True, timeout=600).stdout.split()
    t_add = time.monotonic() - t0
    assert len(ids) == n and len(set(ids)) == n

    fleet = fleets(spool, "load-workers")
    t1 = time.monotonic()
    ws = [fleet.start("--burst", "--concurrency", "2") for _ in range(4)]
    for w in ws:
        rc = w.proc.wait(timeout=900)
        assert rc == 0, w.stderr()[-3000:]
    t_drain = time.monotonic() - t1

    bad = bad_event_lines(fleet.stderr_all())
    assert not bad, "\n".join(bad[:20])
    counts = collections.Counter(out.read_text().split())
    assert set(counts) == set(ids), (len(set(ids) - set(counts)), "jobs never ran")
    twice = [i for i, c in counts.items() if c != 1]
    assert twice == [], f"{len(twice)} jobs ran more than once"
    assert sorted(listing(spool, "done")) == sorted(f"{i}.json" for i in ids)
    assert listing(spool, "pending") == [] and listing(spool, "failed") == []
    assert listing(spool, "running") == [] and listing(spool, "tmp") == []
    per_worker = collections.Counter()
    for i in ids:
        rec = json.loads((spool / "done" / f"{i}.json").read_bytes())
        (a,) = rec["attempts"]
        assert a["exit_code"] == 0 and a["error"] is None
        per_worker[a["worker"]] += 1
    assert len(per_worker) >= 2, per_worker
    report("load", {
        "jobs": n,
        "workers": 4,
        "concurrency": 2,
        "enqueue_s": round(t_add, 2),
        "enqueue_jobs_per_s": round(n / t_add),
        "drain_s": round(t_drain, 2),
        "jobs_per_s": round(n / t_drain, 1),
        "per_worker": sorted(per_worker.values(), reverse=True),
        "ran_twice": len(twice),
    })


def test_soak_flat_memory_fds_tmp(taskq, fleets, tmp_path):
    import taskq as taskq_api

    duration = _env_num("TASKQ_SOAK_SECONDS", 180.0 if LONG else 15.0)
    rate = _env_num("TASKQ_SOAK_RATE", 50.0)
    warmup = min(10.0, max(3.0, duration / 10))
    spool, out = tmp_path / "spool", tmp_path / "ran"
    cmd = ["/bin/sh", "-c", f'echo "$TASKQ_JOB_ID" >> "{out}"']
    producer_spool = taskq_api.Spool(spool)
    produced = [producer_spool.add(cmd).id]  # creates the spool

    fleet = fleets(spool, "soak-worker")
    w = fleet.start("--concurrency", "2")
    assert wait_until(lambda: started(w), 15), w.stderr()
    assert wait_until(lambda: drained(spool), 15)
    time.sleep(0.5)
    pid = w.pid
    idle_start = idle_figures(pid)

    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        period = 1.0 / rate
        nxt = time.monotonic()
        try:
            while not stop.is_set():
                produced.append(producer_spool.add(cmd).id)
                nxt += period
                delay = nxt - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    samples: list[dict] = []
    thread = threading.Thread(target=produce, name="soak-producer", daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        while time.monotonic() - t0 < duration:
            time.sleep(0.5)
            assert w.proc.poll() is None, w.stderr()[-3000:]
            samples.append({
                "t": round(time.monotonic() - t0, 2),
                "rss_kib": rss_kib(pid),
                "fds": open_fds(pid),
                "tmp": len(listing(spool, "tmp")),
                "pending": len(listing(spool, "pending")),
            })
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
    assert wait_until(lambda: drained(spool), 60, interval=0.1), "the worker did not catch up"
    time.sleep(1.5)  # idle again: its periodic work done, nothing in flight
    idle_end = dict(idle_figures(pid), tmp=len(listing(spool, "tmp")))
    statuses = fleet.terminate_all()
    assert statuses == {pid: 0}, (statuses, w.stderr()[-3000:])
    bad = bad_event_lines(w.stderr())
    assert not bad, "\n".join(bad[:20])

    steady = [s for s in samples if s["t"] >= warmup]
    assert len(steady) >= 4, samples
    quarter = max(1, len(steady) // 4)
    first_q, last_q = steady[:quarter], steady[-quarter:]
    rss_first, rss_last = steady[0]["rss_kib"], idle_end["rss_kib"]
    pend = [s["pending"] for s in steady]
    figures = {
        "seconds": duration,
        "rate_per_s": rate,
        "jobs": len(produced),
        "rss_idle_start_mib": round(idle_start["rss_kib"] / 1024, 1),
        "rss_first_steady_mib": round(rss_first / 1024, 1),
        "rss_max_mib": round(max(s["rss_kib"] for s in samples) / 1024, 1),
        "rss_last_mib": round(rss_last / 1024, 1),
        "fds_idle_start": idle_start["fds"],
        "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)],
        "fds_idle_end": idle_end["fds"],
        "tmp_max": max(s["tmp"] for s in samples),
        "tmp_end": idle_end["tmp"],
        "pending_median_first_last_quarter": [statistics.median(s["pending"] for s in first_q),
                                              statistics.median(s["pending"] for s in last_q)],
        "pending_max": max(pend),
        "samples": len(samples),
    }
    report("soak", figures, {"series": samples})

    counts = collections.Counter(out.read_text().split())
    assert set(counts) == set(produced) and set(counts.values()) == {1}, "a job did not run exactly once"
    assert len(listing(spool, "done")) == len(produced)
    assert rss_last <= rss_first + 20 * 1024, figures
    assert idle_end["fds"] <= idle_start["fds"], figures
    # A leak raises the floor of open descriptors as jobs go by; a sample taken while a
    # slot holds one job's files and settles the one before (run locks, log, pipe,
    # pidfd, staged record: about 7 at once) is a peak of the moment, whichever quarter
    # it falls in. So the floors of the first and last quarters are compared, and every
    # peak is bounded by that working set per slot (concurrency 2).
    assert min(s["fds"] for s in last_q) <= min(s["fds"] for s in first_q) + 4, figures
    assert max(s["fds"] for s in samples) <= idle_start["fds"] + 2 * 8, figures
    assert figures["tmp_max"] <= 8 and idle_end["tmp"] == 0, figures
    # the worker keeps up: no backlog growing over the run
    first_pending, last_pending = figures["pending_median_first_last_quarter"]
    assert last_pending <= max(10, 2 * first_pending), figures
