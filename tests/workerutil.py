"""Helpers shared by the black-box tests: background ``taskq work`` processes with
their output captured to files, waiting for conditions with a deadline, process
figures from /proc, reading job records and directory listings straight from the
spool, checking a command's one-line error, and cleaning up processes a test leaves
behind.

Plain module (not a conftest): test modules import what they use. The fixtures
``workers`` and ``strays`` are imported into the test modules that need them. The
torture tests' ``torture/support.py`` builds on this module, and
``benchmarks/soak.py`` takes its /proc helper from it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional, Union

import pytest

STATES = ("pending", "running", "done", "failed")
#: The spool's directories (README, "The spool on disk").
LAYOUT = ("tmp", "pending", "running", "done", "failed", "logs")
PY = sys.executable


# -- waiting ---------------------------------------------------------------------------


def wait_until(cond: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll *cond* until it returns something truthy; return that, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll *cond* until it returns something truthy; fail the test after *timeout* s."""
    value = wait_until(cond, timeout, interval)
    if not value:
        pytest.fail(f"timed out after {timeout:g}s waiting for {message}", pytrace=False)
    return value


# -- processes -------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether *pid* is a live process (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:].split()[0]
    return state not in (b"Z", b"X")


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* in seconds (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    fields = stat[stat.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of *pid* in KiB (from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def sigterm_caught(pid: int) -> bool:
    """Whether *pid* has a SIGTERM handler installed (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def started(worker: Any) -> bool:
    """Whether a background worker has logged its start, or has already exited."""
    return "worker started" in worker.stderr() or worker.proc.poll() is not None


class BackgroundWorker:
    """A ``taskq work`` process started in the background; stdout and stderr go to
    files under the test's tmp dir."""

    def __init__(self, proc: subprocess.Popen, stdout: Path, stderr: Path) -> None:
        self.proc = proc
        self.stdout_path = stdout
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_started(self, timeout: float = 15.0, settle: float = 0.3) -> None:
        """Wait until the worker has logged its start, then *settle* seconds more so
        that it has finished its start-up scans and sits idle."""
        wait_for(lambda: started(self), timeout, message=f"worker {self.pid} to start")
        if self.proc.poll() is not None:
            pytest.fail(f"worker exited early with {self.proc.returncode}:\n{self.stderr()}", pytrace=False)
        time.sleep(settle)

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {self.pid} still running after {timeout:g}s\n"
                        f"--- stderr ---\n{self.stderr()}", pytrace=False)

    def stop(self) -> None:
        """Kill the worker if it still runs (teardown)."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


class WorkerFactory:
    """``workers.start(*args, env=..., cwd=..., spool=...)`` starts ``taskq work ARGS``;
    every worker started is killed at teardown."""

    def __init__(self, taskq: Any, tmp_path: Path) -> None:
        self.taskq = taskq
        self.dir = tmp_path / "workers"
        self.dir.mkdir(exist_ok=True)
        self.started: list[BackgroundWorker] = []

    def start(self, *args: str, **kwargs: Any) -> BackgroundWorker:
        """Keyword arguments (``spool``, ``env``, ``cwd``) go to ``taskq.popen``."""
        n = len(self.started)
        out, err = self.dir / f"w{n}.out", self.dir / f"w{n}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = self.taskq.popen("work", *args, stdout=fo, stderr=fe, text=False, **kwargs)
        worker = BackgroundWorker(proc, out, err)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(taskq: Any, tmp_path: Path):
    factory = WorkerFactory(taskq, tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


class Strays:
    """Processes of jobs that may outlive a test (orphans of a killed worker, or
    survivors of a bug): ``strays.watch_file(path)`` registers the pids written one
    per line in *path*; all still alive are SIGKILLed at teardown."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.pids: set[int] = set()

    def watch_file(self, path: Path) -> None:
        self.files.append(path)

    def add(self, pid: int) -> None:
        self.pids.add(pid)

    def collect(self) -> set[int]:
        pids = set(self.pids)
        for path in self.files:
            pids.update(read_pids(path))
        return pids

    def kill_all(self) -> None:
        for pid in self.collect():
            if pid > 1 and pid not in (os.getpid(), os.getppid()) and alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture
def strays():
    tracker = Strays()
    try:
        yield tracker
    finally:
        tracker.kill_all()


def read_pids(path: Path) -> list[int]:
    """The pids in *path*: one per line, a line holding nothing but the number."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in (ln.strip() for ln in text.splitlines()) if line.isdigit()]


# -- job scripts -----------------------------------------------------------------------


def script(tmp_path: Path, name: str, code: str) -> list[str]:
    """Write a Python script into tmp_path; return the argv that runs it."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return [PY, str(path)]


def sh(code: str) -> list[str]:
    return ["/bin/sh", "-c", code]


# -- reading the spool -----------------------------------------------------------------


def job_path(spool: Path, job_id: str) -> Optional[Path]:
    """Where the job's file is, or None."""
    for state in ("running", "done", "failed"):
        path = spool / state / f"{job_id}.json"
        if path.is_file():
            return path
    try:
        names = os.listdir(spool / "pending")
    except FileNotFoundError:
        names = []
    for name in names:
        if name.endswith((f".{job_id}.json", f".{job_id}.after.json")):
            return spool / "pending" / name
    return None


def state_of(spool: Path, job_id: str) -> Optional[str]:
    path = job_path(spool, job_id)
    return path.parent.name if path is not None else None


def record(spool: Path, job_id: str) -> dict:
    """The job's record, read from its file (plus ``state``)."""
    for _ in range(50):
        path = job_path(spool, job_id)
        if path is not None:
            try:
                data = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue  # moved while we looked
            data["state"] = path.parent.name
            return data
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not found in {spool}")


def wait_state(spool: Path, job_id: str, states: Union[str, Iterable[str]], timeout: float = 15.0) -> str:
    wanted = {states} if isinstance(states, str) else set(states)
    return wait_for(lambda: (state_of(spool, job_id) in wanted) and state_of(spool, job_id),
                    timeout, message=f"job {job_id} to reach {sorted(wanted)}")


def files(spool: Path, state: str) -> list[str]:
    try:
        return sorted(os.listdir(spool / state))
    except FileNotFoundError:
        return []


def iso_ts(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp ending in Z."""
    from datetime import datetime, timezone

    s = text[:-1] + "+00:00" if text.endswith("Z") else text
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def burst(taskq: Any, *args: str, timeout: float = 30.0, **kwargs: Any) -> subprocess.CompletedProcess:
    """``taskq work --burst ARGS`` to completion; exit 0 expected."""
    kwargs.setdefault("check", True)
    return taskq("work", "--burst", *args, timeout=timeout, **kwargs)


# -- commands --------------------------------------------------------------------------


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
