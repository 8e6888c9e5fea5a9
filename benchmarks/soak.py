#!/usr/bin/env python3
"""Soak: a steady producer beside ``taskq work`` for as long as you like, watching the
worker for growth of memory, open file descriptors and staging files.

A producer enqueues ``/bin/sh -c 'echo $TASKQ_JOB_ID >> LOG'`` through the Python API
at a fixed rate into a fresh spool while one ``taskq work --concurrency N`` (the
installed command) runs them. Every ``--every`` seconds it samples the worker's VmRSS
(/proc/PID/status), its open descriptors (/proc/PID/fd), the files in tmp/ and the
backlog in pending/. At the end it checks that every job ran exactly once, that the
last RSS is within ``--rss-margin`` MiB of the first sample after the warm-up, that
the idle worker holds no more descriptors than when it started, and that tmp/ is
empty; exit status 1 if not.

    python benchmarks/soak.py                      # 10 minutes at 50 jobs/s
    python benchmarks/soak.py --duration 3600 --rate 100 --json soak.json

Run it with the interpreter taskq is installed in (the test line's venv). The
bounded version of this check runs in the test suite
(``tests/torture/test_load.py``; ``TASKQ_LONG=1`` for 3 minutes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def count(path: str) -> int:
    try:
        return len(os.listdir(path))
    except FileNotFoundError:
        return 0


def jobs_left(spool: str) -> int:
    return count(os.path.join(spool, "pending")) + sum(
        1 for n in os.listdir(os.path.join(spool, "running")) if n.endswith(".json"))


def find_taskq() -> str:
    exe = shutil.which("taskq", path=os.path.dirname(sys.executable)) or shutil.which("taskq")
    if exe is None:
        sys.exit("soak: the taskq command is not installed next to this interpreter nor on PATH")
    return exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of production (600)")
    ap.add_argument("--rate", type=float, default=50.0, help="jobs per second (50)")
    ap.add_argument("--concurrency", type=int, default=2, help="the worker's --concurrency (2)")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between samples (1)")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before the reference sample (10)")
    ap.add_argument("--rss-margin", type=float, default=20.0, help="allowed RSS growth in MiB (20)")
    ap.add_argument("--dir", default=None, help="where to make the spool (a temporary directory)")
    ap.add_argument("--json", default=None, help="write the figures and the samples to this file")
    ap.add_argument("--quiet", action="store_true", help="no line per sample")
    args = ap.parse_args()

    import taskq  # the package installed with this interpreter

    base = tempfile.mkdtemp(prefix="taskq-soak-", dir=args.dir)
    spool, log = os.path.join(base, "spool"), os.path.join(base, "ran")
    cmd = ["/bin/sh", "-c", f'echo "$TASKQ_JOB_ID" >> "{log}"']
    producer = taskq.Spool(spool)
    produced = [producer.add(cmd).id]  # creates the spool
    env = dict(os.environ, TASKQ_SPOOL=spool)
    err_path = os.path.join(base, "worker.err")
    with open(err_path, "wb") as err:
        worker = subprocess.Popen([find_taskq(), "work", "--concurrency", str(args.concurrency)],
                                  env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while jobs_left(spool) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        idle_start = {"rss_kib": rss_kib(worker.pid), "fds": count(f"/proc/{worker.pid}/fd")}

        stop = threading.Event()
        failures: list[BaseException] = []

        def produce() -> None:
            nxt = time.monotonic()
            try:
                while not stop.is_set():
                    produced.append(producer.add(cmd).id)
                    nxt += 1.0 / args.rate
                    stop.wait(max(0.0, nxt - time.monotonic()))
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        thread = threading.Thread(target=produce, daemon=True)
        t0 = time.monotonic()
        thread.start()
        samples = []
        while time.monotonic() - t0 < args.duration:
            time.sleep(args.every)
            if worker.poll() is not None:
                print(f"soak: the worker exited with {worker.returncode}", file=sys.stderr)
                return 1
            s = {"t": round(time.monotonic() - t0, 1), "rss_kib": rss_kib(worker.pid),
                 "fds": count(f"/proc/{worker.pid}/fd"), "tmp": count(os.path.join(spool, "tmp")),
                 "pending": count(os.path.join(spool, "pending")), "jobs": len(produced)}
            samples.append(s)
            if not args.quiet:
                print(f"t={s['t']:8.1f}s rss={s['rss_kib'] / 1024:6.1f}MiB fds={s['fds']:3d} "
                      f"tmp={s['tmp']:2d} pending={s['pending']:5d} jobs={s['jobs']}", flush=True)
        stop.set()
        thread.join(10)
        if failures:
            print(f"soak: the producer failed: {failures[0]!r}", file=sys.stderr)
            return 1
        deadline = time.monotonic() + 120
        while jobs_left(spool) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
        idle_end = {"rss_kib": rss_kib(worker.pid), "fds": count(f"/proc/{worker.pid}/fd"),
                    "tmp": count(os.path.join(spool, "tmp"))}
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        status = worker.wait(60)

    with open(log) as fh:
        ran = collections.Counter(fh.read().split())
    steady = [s for s in samples if s["t"] >= args.warmup] or samples
    figures = {
        "seconds": args.duration, "rate_per_s": args.rate, "jobs": len(produced),
        "rss_idle_start_mib": round(idle_start["rss_kib"] / 1024, 1),
        "rss_first_steady_mib": round(steady[0]["rss_kib"] / 1024, 1),
        "rss_max_mib": round(max(s["rss_kib"] for s in samples) / 1024, 1),
        "rss_last_mib": round(idle_end["rss_kib"] / 1024, 1),
        "fds_idle_start": idle_start["fds"], "fds_max": max(s["fds"] for s in samples),
        "fds_idle_end": idle_end["fds"],
        "tmp_max": max(s["tmp"] for s in samples), "tmp_end": idle_end["tmp"],
        "pending_max": max(s["pending"] for s in samples),
        "ran_exactly_once": set(ran) == set(produced) and set(ran.values()) == {1},
        "worker_exit": status,
    }
    problems = []
    if not figures["ran_exactly_once"]:
        problems.append("not every job ran exactly once")
    if idle_end["rss_kib"] > steady[0]["rss_kib"] + args.rss_margin * 1024:
        problems.append(f"RSS grew by more than {args.rss_margin:g} MiB")
    if idle_end["fds"] > idle_start["fds"]:
        problems.append("the idle worker holds more descriptors than at the start")
    if idle_end["tmp"]:
        problems.append("files left in tmp/")
    if status != 0:
        problems.append(f"the worker exited with {status} on SIGTERM")
    figures["problems"] = problems
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(figures, samples=samples), fh, indent=2)
    if not problems:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"soak: {'; '.join(problems)} (spool and worker log kept in {base})", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
