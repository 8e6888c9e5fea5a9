"""Run one attempt of a job (or a hook, :func:`run_hook`) as its own process group and
report how it ended.

The command runs without a shell, in a new session (so it is the leader of its own
process group and a terminal's Ctrl-C reaches only the worker), with:

* the worker's environment + the job's ``env`` + ``TASKQ_*`` variables;
* stdin = the payload as JSON through a pipe, or /dev/null;
* stdout and stderr appended to the job's log (the caller writes the header line);
* the job's run-lock descriptor inherited, so the lock stays held while any process
  of the attempt lives (crash recovery relies on it).

Stopping (timeout, shutdown, cancel): SIGTERM to the group, SIGKILL ``kill_grace``
seconds later. When the main process exits, whatever it left in its group is stopped
the same way, so nothing of an attempt outlives it (processes that leave the group on
purpose, with setsid or by daemonising, are out of reach).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .job import CANCELLED, INTERRUPTED, Job, Outcome

POLL = 0.1
TIMEOUT = "timeout"


@dataclass
class Control:
    """Requests from the worker to a running attempt (set from other threads)."""

    interrupt: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    #: Skip the grace period: SIGKILL at once (a second Ctrl-C).
    hard: threading.Event = field(default_factory=threading.Event)
    #: Called with the process group id once the command has started.
    on_spawn: Callable[[int], None] | None = None


class Runner(Protocol):
    """Runs one attempt of a job and says how it ended: what a worker calls for each
    attempt (tests give a worker a fake one that starts no process)."""

    def __call__(self, job: Job, attempt: int, log_fd: int, lock_fd: int, control: Control) -> Outcome: ...


@dataclass
class ProcessRunner:
    """The real :class:`Runner`: :func:`run_attempt` in the spool at *spool_path*."""

    spool_path: str
    kill_grace: float

    def __call__(self, job: Job, attempt: int, log_fd: int, lock_fd: int, control: Control) -> Outcome:
        return run_attempt(job, attempt, self.spool_path, log_fd, lock_fd, self.kill_grace, control)


def job_environment(job: Job, attempt: int, spool_path: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The command's environment: *base* (the worker's), the job's env, TASKQ_*."""
    env = dict(os.environ if base is None else base)
    env.update(job.env)
    env.update(
        TASKQ_JOB_ID=job.id,
        TASKQ_JOB_NAME=job.name or "",
        TASKQ_ATTEMPT=str(attempt),
        TASKQ_MAX_ATTEMPTS=str(job.max_attempts),
        TASKQ_SPOOL=spool_path,
    )
    return env


def run_attempt(
    job: Job,
    attempt: int,
    spool_path: str,
    log_fd: int,
    lock_fd: int,
    kill_grace: float,
    control: Control,
) -> Outcome:
    """Run the job's command once; block until it and its process group are gone."""
    if not os.path.isdir(job.cwd):
        return Outcome(error=f"cannot start: working directory {job.cwd} not found")
    has_payload = job.payload is not None
    env = job_environment(job, attempt, spool_path)
    try:
        proc = _spawn(job, env, log_fd, lock_fd, has_payload)
    except FileNotFoundError:
        return Outcome(error=f"cannot start: command not found: {job.command[0]}")
    except PermissionError:
        return Outcome(error=f"cannot start: permission denied: {job.command[0]}")
    except OSError as exc:
        return Outcome(error=f"cannot start {job.command[0]}: {exc.strerror or exc}")
    if control.on_spawn is not None:
        control.on_spawn(proc.pid)
    if has_payload:
        _feed(proc, job.payload)
    stop_reason = _supervise(proc, job.timeout, kill_grace, control)
    code = proc.wait()
    # The main process is gone; stop what it left behind in its group.
    _stop_group(proc, kill_grace, control)
    sig = -code if code < 0 else None
    exit_code = code if code >= 0 else None
    if stop_reason == TIMEOUT:
        return Outcome(exit_code=None, signal=sig or signal.SIGKILL, timed_out=True)
    if stop_reason in (CANCELLED, INTERRUPTED):
        return Outcome(exit_code=exit_code, signal=sig, error=stop_reason)
    return Outcome(exit_code=exit_code, signal=sig)


def run_hook(
    command: str,
    cwd: str,
    env: dict[str, str],
    record: Any,
    log_fd: int,
    lock_fd: int,
    timeout: float,
    kill_grace: float,
    control: Control,
) -> Outcome:
    """Run a hook: *command* by ``/bin/sh -c`` in its own session and process group,
    *record* as JSON on its stdin, its output appended to *log_fd*, the marker's lock
    descriptor *lock_fd* inherited; stopped like an attempt (timeout, or
    ``control.interrupt`` when its worker stops). Blocks until its group is gone."""
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=log_fd, stderr=log_fd, start_new_session=True, pass_fds=(lock_fd,), close_fds=True,
        )
    except OSError as exc:
        return Outcome(error=f"cannot start: {exc.strerror or exc}")
    _feed(proc, record)
    stop_reason = _supervise(proc, timeout, kill_grace, control)
    code = proc.wait()
    _stop_group(proc, kill_grace, control)
    sig = -code if code < 0 else None
    if stop_reason == TIMEOUT:
        return Outcome(signal=sig or signal.SIGKILL, timed_out=True)
    if stop_reason is not None:
        return Outcome(exit_code=code if code >= 0 else None, signal=sig, error=stop_reason)
    return Outcome(exit_code=code if code >= 0 else None, signal=sig)


def _spawn(job: Job, env: dict[str, str], log_fd: int, lock_fd: int, has_payload: bool) -> subprocess.Popen[Any]:
    """Start the command in a new session, its output in the log, the run lock's
    descriptor inherited. The program's path is looked up once per name and PATH
    (:func:`_resolve`), not at every start: exec'ing each directory of PATH in turn
    until one works costs a failed execve per directory, for every job."""
    executable = _resolve(job.command[0], env.get("PATH", os.defpath))
    for cached in (True, False):
        try:
            return subprocess.Popen(
                job.command,
                executable=executable if cached else None,
                cwd=job.cwd,
                env=env,
                stdin=subprocess.PIPE if has_payload else subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                pass_fds=(lock_fd,),
                close_fds=True,
            )
        except (FileNotFoundError, PermissionError):
            if executable is None or not cached:
                raise
            _PATHS.pop((job.command[0], env.get("PATH", os.defpath)), None)  # moved: look again
    raise AssertionError("unreachable")


#: Where each program name was found, by (name, PATH).
_PATHS: dict[tuple[str, str], str] = {}


def _resolve(name: str, path: str) -> str | None:
    """The absolute path of *name* on *path*, remembered; None where the system's own
    search must be used (a name with a slash, a PATH with relative entries, which
    depend on the job's cwd, or a name not found: it may be installed later)."""
    if "/" in name or any(not entry.startswith("/") for entry in path.split(os.pathsep)):
        return None
    found = _PATHS.get((name, path))
    if found is None:
        found = shutil.which(name, path=path)
        if found is None:
            return None
        _PATHS[(name, path)] = found
    return found


def _supervise(proc: subprocess.Popen[Any], timeout: float | None, kill_grace: float, control: Control) -> str | None:
    """Wait for the main process; stop the group on a cancel, an interrupt or the time
    limit. Returns why it was stopped (None: it ended by itself)."""
    deadline = time.monotonic() + timeout if timeout else None
    pidfd = _pidfd(proc)
    try:
        return _watch(proc, pidfd, deadline, kill_grace, control)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _watch(proc: subprocess.Popen[Any], pidfd: int | None, deadline: float | None, kill_grace: float,
           control: Control) -> str | None:
    while True:
        if _wait_exit(proc, pidfd, POLL):
            return None
        reason = None
        if control.cancel.is_set():
            reason = CANCELLED
        elif control.interrupt.is_set():
            reason = INTERRUPTED
        elif deadline is not None and time.monotonic() >= deadline:
            reason = TIMEOUT
        if reason is not None:
            _stop_group(proc, kill_grace, control)
            return reason


def _pidfd(proc: subprocess.Popen[Any]) -> int | None:
    """A pidfd of *proc* (Linux 5.3+), None where there is none."""
    try:
        return os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return None


def _wait_exit(proc: subprocess.Popen[Any], pidfd: int | None, seconds: float) -> bool:
    """Wait up to *seconds* for *proc* to exit; whether it did (it is then reaped).
    Popen.wait(timeout) polls with sleeps that double from 1 ms, so a job that takes
    1 ms is noticed up to 2 ms late, at every job; a pidfd turns readable the moment
    the process exits."""
    if pidfd is None:
        try:
            proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False
    if proc.returncode is None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(seconds * 1000):
            return False
    proc.wait()
    return True


def _feed(proc: subprocess.Popen[Any], payload: Any) -> None:
    """Write the payload to the command's stdin from a thread: a command that never
    reads it must not block the worker."""
    data = json.dumps(payload, ensure_ascii=False).encode()

    def write() -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    threading.Thread(target=write, daemon=True, name="taskq-stdin").start()


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the process group *pgid*."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its uid: it still exists
        return True
    # killpg also reaches zombies, which hold nothing and die with their reaper; on
    # Linux, look for a member that is not one.
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _reap_group(pgid: int) -> None:
    """Reap zombie members of the group that were re-parented to this worker (it is a
    child subreaper). Only called once the group's leader has been reaped by Popen,
    so no Popen loses its child's status."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become_subreaper() -> None:
    """Have orphaned processes of jobs re-parented to this process (Linux), so that the
    worker can reap them: some PID 1s (containers) never do."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _stop_group(proc: subprocess.Popen[Any], kill_grace: float, control: Control) -> None:
    """SIGTERM the attempt's process group, then SIGKILL it after *kill_grace* seconds
    (at once when a hard stop was asked for); return when the group is empty."""
    pgid = proc.pid
    if proc.returncode is not None:
        _reap_group(pgid)
    if not group_alive(pgid):
        return
    try:
        os.killpg(pgid, signal.SIGKILL if control.hard.is_set() else signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + kill_grace
    while group_alive(pgid):
        if proc.returncode is None:
            try:
                proc.wait(timeout=POLL)
            except subprocess.TimeoutExpired:
                pass
        else:
            _reap_group(pgid)
            time.sleep(0.02)
        if time.monotonic() >= end or control.hard.is_set():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            end = float("inf")
            # Members of the group that are zombies (not our children) stay visible to
            # killpg until their parent reaps them; give up after a short wait.
            for _ in range(50):
                if proc.returncode is None:
                    try:
                        proc.wait(timeout=POLL)
                    except subprocess.TimeoutExpired:
                        continue
                _reap_group(pgid)
                if not group_alive(pgid):
                    break
                time.sleep(0.02)
            break
