"""Run one attempt of a job (or a hook, :func:`run_hook`) as its own process group and
report how it ended.

The command runs without a shell, in a new session (so it is the leader of its own
process group and a terminal's Ctrl-C reaches only the worker), with:

* the worker's environment + the job's ``env`` + ``TASKQ_*`` variables;
* stdin = the payload as JSON through a pipe, or /dev/null;
* stdout and stderr appended to the job's log (the caller writes the header line):
  with a ``log_max``, both are one pipe that the thread running the attempt reads
  while it waits, handing the output to :class:`~taskq.spool.joblog.JobLog`, which
  caps it; without, the log file itself;
* the job's run-lock descriptor inherited, so the lock stays held while any process
  of the attempt lives (crash recovery relies on it).

The thread waits on the pipe and on a pidfd of the main process at once (poll(2)), so
it wakes the moment the process ends or writes. When the main process has ended and
its group is stopped, the pipe is read to its end, but for :data:`DRAIN_WAIT` seconds
at most: a process that left the group may hold it open for ever. If the worker dies,
nothing reads the pipe any more, and a job's next write gets SIGPIPE (or EPIPE): the
job ends, and is recovered as "worker lost" like any job of a dead worker.

Stopping (timeout, shutdown, cancel): SIGTERM to the group, SIGKILL ``kill_grace``
seconds later. When the main process exits, whatever it left in its group is stopped
the same way, so nothing of an attempt outlives it (processes that leave the group on
purpose, with setsid or by daemonising, are out of reach).
"""

from __future__ import annotations

import json
import math
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
from .spool.joblog import JobLog

POLL = 0.1
TIMEOUT = "timeout"
#: Longest wait for the end of the output once the attempt's process group is gone.
DRAIN_WAIT = 1.0
#: Bytes read from the output pipe at a time, and the pipe's size asked for (Linux):
#: a larger pipe lets a job write on while the log is being cut.
CHUNK = 1 << 20
PIPE_SIZE = 1 << 20


@dataclass
class Control:
    """Requests from the worker to a running attempt (set from other threads)."""

    interrupt: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    #: Skip the grace period: SIGKILL at once (a second Ctrl-C).
    hard: threading.Event = field(default_factory=threading.Event)
    #: Called with the process group id once the command has started.
    on_spawn: Callable[[int], None] | None = None
    #: Called by the thread supervising the attempt every :data:`POLL` seconds while it
    #: runs (the worker looks for a cancel request there: no other thread is woken).
    tick: Callable[[], None] | None = None

    def stop_now(self) -> None:
        """Stop the attempt at once: SIGKILL, no grace period."""
        self.hard.set()
        self.interrupt.set()


class Runner(Protocol):
    """Runs one attempt of a job and says how it ended: what a worker calls for each
    attempt (tests give a worker a fake one that starts no process)."""

    def __call__(self, job: Job, attempt: int, log: JobLog, lock_fd: int, control: Control) -> Outcome: ...


@dataclass
class ProcessRunner:
    """The real :class:`Runner`: :func:`run_attempt` in the spool at *spool_path*."""

    spool_path: str
    kill_grace: float
    #: The worker's environment, copied once: os.environ decodes every variable at
    #: each copy, a cost paid per job otherwise. The worker never changes its own.
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(self, job: Job, attempt: int, log: JobLog, lock_fd: int, control: Control) -> Outcome:
        return run_attempt(job, attempt, self.spool_path, log, lock_fd, self.kill_grace, control, self.environ)


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
    log: JobLog,
    lock_fd: int,
    kill_grace: float,
    control: Control,
    base: dict[str, str] | None = None,
) -> Outcome:
    """Run the job's command once, its output into *log*; block until it and its
    process group are gone and its output is in the log. *base*: the environment
    the job's is made from (by default the current one)."""
    if not os.path.isdir(job.cwd):
        return Outcome(error=f"cannot start: working directory {job.cwd} not found")
    has_payload = job.payload is not None
    env = job_environment(job, attempt, spool_path, base)
    log.begin_output()
    try:
        return _run(job, env, log, lock_fd, kill_grace, control, has_payload)
    finally:
        log.end_output()


def _run(job: Job, env: dict[str, str], log: JobLog, lock_fd: int, kill_grace: float, control: Control,
         has_payload: bool) -> Outcome:
    pipe = _output_pipe() if log.capped else None
    try:
        proc = _spawn(job, env, log.fd if pipe is None else pipe[1], lock_fd, has_payload)
    except OSError as exc:
        if pipe is not None:
            os.close(pipe[0])
        return Outcome(error=_cannot_start(job, exc))
    finally:
        if pipe is not None:
            os.close(pipe[1])  # the command has its copy: the pipe ends when it (and its group) close theirs
    watch = _Watch(proc, None if pipe is None else _Pump(pipe[0], log))
    try:
        if control.on_spawn is not None:
            control.on_spawn(proc.pid)
        if has_payload:
            _feed(proc, job.payload)
        stop_reason = _supervise(proc, watch, job.timeout, kill_grace, control)
        code = proc.wait()
        # The main process is gone; stop what it left behind in its group.
        _stop_group(proc, watch, kill_grace, control)
        watch.finish(DRAIN_WAIT)
    finally:
        watch.close()
    return _outcome(code, stop_reason)


def _outcome(code: int, stop_reason: str | None) -> Outcome:
    """How a process (an attempt's or a hook's) ended: its wait status *code* (negative:
    killed by that signal) and why it was stopped, if it was (:func:`_supervise`)."""
    sig = -code if code < 0 else None
    exit_code = code if code >= 0 else None
    if stop_reason == TIMEOUT:
        return Outcome(signal=sig or signal.SIGKILL, timed_out=True)
    if stop_reason is not None:  # cancelled or interrupted
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
    watch = _Watch(proc, None)
    try:
        stop_reason = _supervise(proc, watch, timeout, kill_grace, control)
        code = proc.wait()
        _stop_group(proc, watch, kill_grace, control)
    finally:
        watch.close()
    return _outcome(code, stop_reason)


def _cannot_start(job: Job, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"cannot start: command not found: {job.command[0]}"
    if isinstance(exc, PermissionError):
        return f"cannot start: permission denied: {job.command[0]}"
    return f"cannot start {job.command[0]}: {exc.strerror or exc}"


def _output_pipe() -> tuple[int, int]:
    """A pipe for the command's stdout and stderr (both ends close-on-exec: the
    command gets its end as 1 and 2 only), as large as the system lets us make it."""
    r, w = os.pipe()
    try:
        import fcntl  # noqa: PLC0415 - only capped logs need it

        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except OSError:
        pass  # the default size works, with more wake-ups
    return r, w


_BUFFERS = threading.local()


class _Pump:
    """Copies the attempt's output from the read end of its pipe into the log, in the
    thread that waits for the attempt (no thread of its own)."""

    def __init__(self, fd: int, log: JobLog) -> None:
        self.fd = fd
        self.log = log
        self.open = True
        os.set_blocking(fd, False)
        # One buffer per slot thread, kept: allocating it for every attempt would
        # cost more than a `true` job's whole output handling.
        buf = getattr(_BUFFERS, "buf", None)
        if buf is None:
            buf = _BUFFERS.buf = bytearray(CHUNK)
        self._buf: bytearray = buf
        self._view = memoryview(buf)

    def drain(self, deadline: float) -> bool:
        """Copy what the pipe holds, until it is empty (True) or *deadline* passes
        with more to come (False). Closes the pipe at its end."""
        while self.open:
            try:
                n = os.readv(self.fd, [self._buf])
            except BlockingIOError:
                return True
            if n == 0:
                self.close()
                return True
            self.log.write(self._view[:n])
            if time.monotonic() >= deadline:
                return False
        return True

    def close(self) -> None:
        if self.open:
            self.open = False
            os.close(self.fd)


class _Watch:
    """Waits for an attempt: for its main process to end (on a pidfd, where the system
    has them) and, meanwhile, copies its output (the :class:`_Pump`, if any)."""

    def __init__(self, proc: subprocess.Popen[Any], pump: _Pump | None) -> None:
        self.proc = proc
        self.pump = pump
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pass  # no pidfd: Popen.wait's polling
        self._any = select.poll()  # the process's end or output
        self._out = select.poll()  # output only (a pidfd stays readable once it has ended)
        if self.pidfd is not None:
            self._any.register(self.pidfd, select.POLLIN)
        if pump is not None:
            self._any.register(pump.fd, select.POLLIN)
            self._out.register(pump.fd, select.POLLIN)

    def wait(self, seconds: float) -> bool:
        """Wait up to *seconds* for the main process to end (True once it has)."""
        deadline = time.monotonic() + seconds
        while True:
            if self._piped() and not self._drain(deadline):
                return self.proc.poll() is not None
            if self.proc.poll() is not None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.pidfd is not None:
                _poll(self._any, left)
            elif self._piped():
                # Without a pidfd only output wakes us: the end of a main process whose
                # pipe a child holds open is then seen within POLL.
                _poll(self._any, min(left, POLL))
            else:
                try:
                    self.proc.wait(timeout=left)
                    return True
                except subprocess.TimeoutExpired:
                    return False

    def idle(self, seconds: float) -> None:
        """Let *seconds* pass, copying output meanwhile."""
        deadline = time.monotonic() + seconds
        self.finish(seconds)
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(left)

    def finish(self, seconds: float) -> None:
        """Copy output until the pipe's end, for *seconds* at most."""
        deadline = time.monotonic() + seconds
        while self._piped() and self._drain(deadline) and self._piped():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            _poll(self._out, left)

    def close(self) -> None:
        if self.pump is not None:
            self.pump.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _piped(self) -> bool:
        return self.pump is not None and self.pump.open

    def _drain(self, deadline: float) -> bool:
        assert self.pump is not None
        fd = self.pump.fd
        emptied = self.pump.drain(deadline)
        if not self.pump.open:  # at its end: stop polling the closed descriptor
            self._any.unregister(fd)
            self._out.unregister(fd)
        return emptied


def _poll(poller: select.poll, seconds: float) -> None:
    poller.poll(math.ceil(seconds * 1000))


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


def _supervise(proc: subprocess.Popen[Any], watch: _Watch, timeout: float | None, kill_grace: float,
               control: Control) -> str | None:
    """Wait for the main process; stop the group on a cancel, an interrupt or the time
    limit. Returns why it was stopped (None: it ended by itself)."""
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        if watch.wait(POLL):
            return None
        if control.tick is not None:
            control.tick()
        reason = None
        if control.cancel.is_set():
            reason = CANCELLED
        elif control.interrupt.is_set():
            reason = INTERRUPTED
        elif deadline is not None and time.monotonic() >= deadline:
            reason = TIMEOUT
        if reason is not None:
            _stop_group(proc, watch, kill_grace, control)
            return reason


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


def _stop_group(proc: subprocess.Popen[Any], watch: _Watch, kill_grace: float, control: Control) -> None:
    """SIGTERM the attempt's process group, then SIGKILL it after *kill_grace* seconds
    (at once when a hard stop was asked for); return when the group is empty. The
    output goes on being copied meanwhile."""
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
            watch.wait(POLL)
        else:
            _reap_group(pgid)
            watch.idle(0.02)
        if time.monotonic() >= end or control.hard.is_set():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            end = float("inf")
            # Members of the group that are zombies (not our children) stay visible to
            # killpg until their parent reaps them; give up after a short wait.
            for _ in range(50):
                if proc.returncode is None and not watch.wait(POLL):
                    continue
                _reap_group(pgid)
                if not group_alive(pgid):
                    break
                watch.idle(0.02)
            break
