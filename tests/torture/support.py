"""Helpers of the crash-torture and load tests: fleets of real ``taskq work`` processes,
the job script that logs its runs, reading a drained spool, and process figures from
/proc.

Plain module; the fixtures built on it are in this package's ``conftest.py``. What the
other black-box tests use too (waiting, /proc, listings, background workers) comes
from ``workerutil`` and is imported here, so the torture tests find it all in one place.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from workerutil import (  # noqa: F401 - STATES, iso_ts, rss_kib, started: re-exported to the tests
    STATES,
    BackgroundWorker,
    alive,
    cmdline,
    iso_ts,
    rss_kib,
    sigterm_caught,
    started,
    wait_until,
)
from workerutil import files as listing

#: TASKQ_LONG=1 selects the long versions of the reliability tests.
LONG = os.environ.get("TASKQ_LONG", "") not in ("", "0")

#: The job of the crash torture: logs its start and its end, one O_APPEND write per
#: line (``>>`` opens with O_APPEND; dash's ``echo`` writes a line in one write(2)),
#: with a pause in between. ``$$`` is the job's process (leader of its own session and
#: process group), ``$PPID`` the worker that started it, the last field the wall clock
#: in nanoseconds. Arguments: the log, the pause in seconds.
JOB_SH = """\
echo "start $TASKQ_JOB_ID $TASKQ_ATTEMPT $$ $PPID $(date +%s%N)" >> "$1"
sleep "$2"
echo "end $TASKQ_JOB_ID $TASKQ_ATTEMPT $$ $PPID $(date +%s%N)" >> "$1"
"""


# -- processes ----------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def kill_job_groups(pids: set[int], marker: str) -> int:
    """SIGKILL the process groups of the job processes in *pids* that still live and
    whose command line holds *marker* (a job is the leader of its own group). Returns
    how many were alive."""
    n = 0
    for pid in pids:
        if pid > 1 and alive(pid) and marker in cmdline(pid):
            n += 1
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return n


class Worker(BackgroundWorker):
    """A worker of a :class:`Fleet`: stdout discarded, stderr in the file *err*;
    ``killed`` once the fleet has SIGKILLed it."""

    def __init__(self, proc: subprocess.Popen, err: Path, args: tuple[str, ...]) -> None:
        super().__init__(proc, Path(os.devnull), err)
        self.args = args
        self.killed = False


@dataclass
class Fleet:
    """``taskq work`` processes on one spool, each with its stderr in a file under
    *outdir*. :meth:`close` SIGKILLs whatever still runs (teardown)."""

    taskq: Any  # the conftest ``taskq`` runner
    spool: Path
    outdir: Path
    workers: list[Worker] = field(default_factory=list)

    def start(self, *args: str) -> Worker:
        self.outdir.mkdir(parents=True, exist_ok=True)
        err = self.outdir / f"w{len(self.workers)}.err"
        with open(err, "wb") as fe:
            proc = self.taskq.popen("work", *args, spool=self.spool, stdout=subprocess.DEVNULL,
                                    stderr=fe, text=False)
        worker = Worker(proc, err, args)
        self.workers.append(worker)
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def sigkill(self, worker: Worker) -> None:
        worker.killed = True
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.proc.wait(10)

    def terminate_all(self, timeout: float = 60.0) -> dict[int, Optional[int]]:
        """SIGTERM every live worker and wait: pid -> exit status (None if it hung).

        A signal that arrives before the interpreter has run a line of taskq kills the
        process whatever taskq does, so each worker is first given the time to install
        its handler."""
        live = self.live()
        for w in live:
            wait_until(lambda w=w: sigterm_caught(w.pid) or w.proc.poll() is not None, 15, interval=0.005)
        for w in live:
            try:
                os.kill(w.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        out: dict[int, Optional[int]] = {}
        deadline = time.monotonic() + timeout
        for w in live:
            try:
                out[w.pid] = w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                out[w.pid] = None
        return out

    def killed_pids(self) -> set[int]:
        return {w.pid for w in self.workers if w.killed}

    def stderr_all(self) -> str:
        return "".join(w.stderr() for w in self.workers)

    def close(self) -> None:
        for w in self.workers:
            w.stop()


BAD_EVENTS = ("Traceback", "internal error", "cannot ")


def bad_event_lines(text: str) -> list[str]:
    """Worker stderr lines that show a bug or an unexpected failure."""
    return [ln for ln in text.splitlines() if any(b in ln for b in BAD_EVENTS)]


# -- the spool ----------------------------------------------------------------------------


def jsons(spool: Path, state: str) -> list[str]:
    return [n for n in listing(spool, state) if n.endswith(".json")]


def drained(spool: Path) -> bool:
    """No job left in pending/ or running/."""
    return not jsons(spool, "pending") and not jsons(spool, "running")


def id_of(state: str, name: str) -> str:
    """The job id in a state directory's file name."""
    if state == "pending":
        parts = name.split(".")
        return parts[2] if len(parts) >= 4 else name
    return name[:-5]


def batch_lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# -- the run log of the crash torture -------------------------------------------------------


@dataclass
class Run:
    """One execution of a job, from its start and end lines in the run log."""

    job: str
    attempt: int
    pid: int
    ppid: int
    start_ns: int
    start_pos: int
    end_ns: Optional[int] = None
    end_pos: Optional[int] = None


@dataclass
class RunLog:
    runs: dict[str, list[Run]]          # job id -> runs in the order they started
    bad_lines: list[str]
    problems: list[str]                 # duplicate starts, ends without start, ...
    overlaps_by_order: list[str]        # a run started while another of the job was open
    pids: set[int]


def parse_run_log(path: Path) -> RunLog:
    """Read the torture's run log. The file order of the lines is the order of the
    writes (O_APPEND), which needs no clock: a job has overlapping runs iff one of its
    runs starts while another has started and not ended."""
    runs: dict[str, list[Run]] = {}
    open_runs: dict[str, Run] = {}
    bad, problems, overlaps = [], [], []
    pids: set[int] = set()
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    for pos, line in enumerate(text.splitlines()):
        parts = line.split()
        if len(parts) != 6 or parts[0] not in ("start", "end") or not all(p.isdigit() for p in parts[2:]):
            bad.append(line)
            continue
        kind, job = parts[0], parts[1]
        attempt, pid, ppid, ns = (int(p) for p in parts[2:])
        pids.add(pid)
        if kind == "start":
            if job in open_runs:
                overlaps.append(f"{job}: attempt {attempt} (pid {pid}) started while attempt "
                                f"{open_runs[job].attempt} (pid {open_runs[job].pid}) was running")
            if any(r.attempt == attempt for r in runs.get(job, [])):
                problems.append(f"{job}: attempt {attempt} started twice")
            run = Run(job, attempt, pid, ppid, ns, pos)
            runs.setdefault(job, []).append(run)
            open_runs[job] = run
        else:
            match = [r for r in runs.get(job, []) if r.pid == pid and r.attempt == attempt and r.end_pos is None]
            if not match:
                problems.append(f"{job}: end of attempt {attempt} (pid {pid}) without its start")
                continue
            match[0].end_ns, match[0].end_pos = ns, pos
            if open_runs.get(job) is match[0]:
                del open_runs[job]
    for job, run in open_runs.items():
        problems.append(f"{job}: attempt {run.attempt} (pid {run.pid}) started and never ended")
    return RunLog(runs, bad, problems, overlaps, pids)


def time_overlaps(runs: list[Run]) -> list[str]:
    """Runs of one job whose [start, end] intervals (wall clock) intersect."""
    out = []
    done = sorted((r for r in runs if r.end_ns is not None), key=lambda r: r.start_ns)
    for prev, cur in itertools.pairwise(done):
        if cur.start_ns < prev.end_ns:  # type: ignore[operator]
            out.append(f"{cur.job}: attempt {cur.attempt} started {(prev.end_ns - cur.start_ns) / 1e6:.3f} ms "
                       f"before attempt {prev.attempt} ended")
    return out


# -- reports ------------------------------------------------------------------------------


def report(section: str, figures: dict, details: Optional[dict] = None) -> None:
    """Print one summary line (shown by ``pytest -s``) and, when TASKQ_TORTURE_REPORT
    names a file, merge the figures (and *details*, not printed) into that JSON object
    under *section*."""
    print(f"\n[{section}] " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    path = os.environ.get("TASKQ_TORTURE_REPORT")
    if not path:
        return
    try:
        with open(path) as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[section] = dict(figures, **(details or {}))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
