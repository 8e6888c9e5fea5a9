"""Several hosts sharing one taskq spool, played on one machine.

A :class:`Host` is a PID + UTS + mount namespace with its own hostname, its own boot id
(a random uuid bind-mounted over ``/proc/sys/kernel/random/boot_id``), its own
``/dev/shm`` and its own cgroup-v1 freezer group, so that a test can make it stop
(:meth:`Host.freeze`), resume (:meth:`Host.thaw`), die at once (:meth:`Host.kill`) or
come back with a new boot id (:meth:`Host.reboot`); optionally with a clock that is off
by a fixed offset (libfaketime). Commands run "on the host" through ``nsenter``.

:class:`NfsLab` drives the NFS lab, a folder of two scripts (``setup`` installs what
it needs; ``lab start N`` / ``lab stop`` / ``lab status``): a userspace NFS server on
loopback and N FUSE NFS clients of it, each its own mount with its own caches, so that
the mounts are N hosts' views of one spool (README, "Development").

The fixtures that build these (``hosts``, ``nfs_lab``, ``shared_spool``) are in this
directory's conftest.py.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, Optional, TypeVar, Union

import pytest

from workerutil import wait_until

StrPath = Union[str, os.PathLike[str]]
EnvOverrides = Optional[Mapping[str, Optional[str]]]
T = TypeVar("T")

#: The cgroup-v1 freezer hierarchy; every host gets a group below it.
FREEZER = Path("/sys/fs/cgroup/freezer")
#: Prefix of the hosts' freezer groups, followed by the pid of the test process (so that
#: groups left behind by a test process that was killed can be told apart and removed).
CGROUP_PREFIX = "taskq-test-"

SH = "/bin/sh"


def _find_taskq() -> Optional[str]:
    # The same lookup as tests/conftest.py: the console script beside this interpreter
    # (the venv's bin/, not resolved through symlinks), else whatever PATH has.
    return shutil.which("taskq", path=os.path.dirname(sys.executable)) or shutil.which("taskq")


#: The installed ``taskq``; its directory goes first on every host command's PATH, so
#: that ``taskq`` inside a host is this installation whatever the caller's PATH is.
TASKQ = _find_taskq()
TASKQ_BIN = os.path.dirname(TASKQ) if TASKQ else None

#: Inherited variables that would change taskq's behaviour or a host's clock; a host's
#: commands never see the caller's values (they may set their own through ``env=``).
_SCRUBBED = ("TASKQ_SPOOL", "TASKQ_DEBUG", "NO_COLOR", "FORCE_COLOR", "XDG_DATA_HOME", "LD_PRELOAD")

#: The init of every host: PID 1 of its namespace. It must reap: a process whose parent
#: dies (a job of a killed worker, anything started with ``&``) is re-parented to it, and
#: an init that never waits (``sleep infinity``) would keep it as a zombie, whose PID
#: still "exists" for kill(pid, 0) and /proc, i.e. looks alive to a liveness check.
_REAPER = """\
import os, time
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.1)
"""

#: Runs as PID 1 of the new namespaces, before anything else can enter them: the host's
#: identity and private mounts, then a marker file that says the host is ready.
#: $0 hostname, $1 boot id file, $2 ready marker, then ($3...) the reaper's argv.
_INIT_SCRIPT = """\
hostname "$0" &&
mount --bind "$1" /proc/sys/kernel/random/boot_id &&
mount -t tmpfs -o mode=1777,size=64m shm /dev/shm &&
: >"$2" &&
shift 2 &&
exec "$@"
"""

#: Joins the freezer group ($0 is its cgroup.procs) and then becomes the command, so that the
#: command and everything it starts are in the group from their first instruction.
_JOIN_SCRIPT = 'echo $$ >"$0" && exec "$@"'

#: Waits for a line on the FIFO $0, then becomes the command. It lets spawn() learn the
#: command's PID before the command runs at all, however short-lived it is.
_GATE_SCRIPT = 'read -r _ <"$0" && exec "$@"'


# -- small helpers --------------------------------------------------------------------


def wait_for(cond: Callable[[], Optional[T]], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll *cond* until it returns something truthy and return that; fail the test after *timeout* s."""
    value = wait_until(cond, timeout, interval)
    if not value:
        pytest.fail(f"timed out after {timeout:g}s waiting for {message}", pytrace=False)
    return value


def _proc_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat from field 3 (state) on, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat[stat.rfind(b")") + 2:].decode().split()


def pid_alive(pid: int) -> bool:
    """Whether *pid* is a live process, as seen from outside every host (zombies are dead)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _start_time(pid: int) -> Optional[str]:
    """Start time of *pid* (field 22 of /proc/PID/stat): tells a process from a later one with its PID."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None else None


def _children(pid: int) -> list[int]:
    """The PIDs of *pid*'s children (its main thread's), as seen from outside every host."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:
        return []
    except OSError:
        # A kernel without CONFIG_PROC_CHILDREN: scan every process's parent instead.
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _proc_stat(int(entry))
                if fields is not None and fields[1] == str(pid):
                    found.append(int(entry))
        return found


def ns_pid(pid: int) -> Optional[int]:
    """The PID of the process *pid* (seen from outside) inside its innermost PID namespace."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        return None
    return None


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _env(overrides: EnvOverrides, base: dict[str, str]) -> dict[str, str]:
    """*base* updated with *overrides*, where a value of None removes the variable."""
    out = dict(base)
    for key, value in (overrides or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# -- clock skew -----------------------------------------------------------------------

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_clock_offset(offset: Union[str, float]) -> float:
    """Seconds of a clock offset: a number of seconds, or ``"+10m"``, ``"-90s"``, ``"+1.5h"``, ``"-2d"``."""
    if isinstance(offset, (int, float)):
        return float(offset)
    match = re.fullmatch(r"\s*([+-])\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", offset)
    if match is None:
        raise ValueError(f"clock offset {offset!r}: expected a sign, a number and s, m, h or d, e.g. '+10m'")
    seconds = float(match.group(2)) * _UNITS[match.group(3)]
    return -seconds if match.group(1) == "-" else seconds


@functools.cache
def faketime_library() -> Optional[str]:
    """The multithreaded libfaketime (``libfaketimeMT.so.1``), or None if it is not installed.

    The multithreaded one, because taskq's worker runs threads. Set TASKQ_LIBFAKETIME to
    use another copy.
    """
    explicit = os.environ.get("TASKQ_LIBFAKETIME")
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1",
                    "/usr/lib64/faketime/libfaketimeMT.so.1", "/usr/local/lib/faketime/libfaketimeMT.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


@functools.cache
def faketime_utime_env(library: str) -> tuple[tuple[str, str], ...]:
    """The variables that make *library* (libfaketime) leave ``utime(path, NULL)``
    ("set to now") to the filesystem, as found by trying them.

    By default libfaketime turns that call into an explicit ``utime`` with the faked
    time (its FAKE_UTIME feature), so a host with a wrong clock would stamp a file
    with its own clock, where a real NFS client asks the server to stamp it
    (SET_TO_SERVER_TIME) and a local filesystem uses the kernel's clock, as it does
    for every other write of the host. Whether ``FAKE_UTIME=1`` or ``=0`` turns the
    feature off differs between libfaketime versions, hence the probe. Empty if no
    setting works (or none is needed).
    """
    fd, probe = tempfile.mkstemp(prefix="taskq-faketime-utime-")
    os.close(fd)
    try:
        for candidate in ((), (("FAKE_UTIME", "1"),), (("FAKE_UTIME", "0"),), (("FAKE_UTIME", "n"),)):
            env = {"PATH": os.environ.get("PATH", os.defpath), "LD_PRELOAD": library, "FAKETIME": "-1d",
                   "FAKETIME_DONT_FAKE_MONOTONIC": "1", **dict(candidate)}
            os.utime(probe, (0, 0))
            proc = subprocess.run([sys.executable, "-I", "-S", "-c", "import os, sys; os.utime(sys.argv[1], None)",
                                   probe], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            if proc.returncode == 0 and abs(os.stat(probe).st_mtime - time.time()) < 3600:
                return candidate
        return ()
    finally:
        os.unlink(probe)


# -- can hosts be played here? ---------------------------------------------------------


@functools.cache
def host_support_problem() -> Optional[str]:
    """Why hosts cannot be played on this machine (one line), or None if they can."""
    if os.geteuid() != 0:
        return "hosts: needs root (namespaces, mounts and the cgroup freezer)"
    for tool in ("unshare", "nsenter", "hostname", "mount"):
        if shutil.which(tool) is None:
            return f"hosts: {tool} not found (util-linux)"
    if not (FREEZER / "cgroup.procs").is_file():
        return f"hosts: no cgroup-v1 freezer at {FREEZER}"
    _remove_stale_cgroups()
    probe = FREEZER / f"{CGROUP_PREFIX}{os.getpid()}-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"hosts: the cgroup freezer at {FREEZER} is not writable ({exc.strerror})"
    try:
        proc = subprocess.run(["unshare", "--pid", "--uts", "--fork", "--mount-proc", "--kill-child", "true"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "hosts: unshare --pid --uts --mount did not finish in 30 s"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        return f"hosts: cannot create PID/UTS/mount namespaces here: {lines[-1]}"
    return None


def _remove_stale_cgroups() -> None:
    """Remove the empty freezer groups of test processes that no longer exist (killed
    before their teardown), so that they do not pile up under the freezer hierarchy."""
    for group in FREEZER.glob(f"{CGROUP_PREFIX}*"):
        owner = group.name[len(CGROUP_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not pid_alive(int(owner)):
            with contextlib.suppress(OSError):
                (group / "freezer.state").write_text("THAWED")
                group.rmdir()


# -- hosts ----------------------------------------------------------------------------


class HostProcess:
    """A command started on a host by :meth:`Host.spawn`, its output going to files.

    ``pid`` is the command's PID seen from outside the host (signal it, read its /proc
    entry); ``ns_pid`` is its PID inside the host (what the command itself, and e.g.
    taskq's ``host:pid`` records, see). ``popen`` is the ``nsenter`` process that started
    it outside the host's PID namespace: it waits for the command and exits as the
    command did (same status, or killed by the same signal), so :meth:`poll`,
    :meth:`wait` and :attr:`returncode` report the command's end the way
    ``subprocess.Popen`` does (a negative number: killed by that signal).
    """

    def __init__(self, host: Host, args: list[str], popen: subprocess.Popen[bytes], pid: int,
                 stdout_path: Optional[Path], stderr_path: Optional[Path]) -> None:
        self.host = host
        self.args = args
        self.popen = popen
        self.pid = pid
        self.ns_pid: Optional[int] = ns_pid(pid)
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path

    def __repr__(self) -> str:
        return f"<HostProcess {self.args!r} on {self.host.name} pid {self.pid} (ns {self.ns_pid})>"

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.returncode

    def poll(self) -> Optional[int]:
        return self.popen.poll()

    def wait(self, timeout: Optional[float] = 30.0) -> int:
        """The exit status (negative: killed by that signal); TimeoutExpired after *timeout* s."""
        return self.popen.wait(timeout)

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig: int) -> None:
        """Signal the command itself (not the nsenter process), if it has not ended."""
        # While nsenter runs, the command's PID is still the command's (nsenter reaps it
        # only right before exiting), so this never reaches a process that reused it.
        if self.popen.poll() is None:
            _signal(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def stdout(self) -> str:
        """What the command wrote to stdout so far ("" without a file)."""
        return _read(self.stdout_path) if self.stdout_path else ""

    def stderr(self) -> str:
        return _read(self.stderr_path) if self.stderr_path else ""


class Host:
    """One simulated machine. Started by the constructor; :meth:`close` ends it.

    ``Host(name, *, workdir=None, spool=None, clock_offset=None, env=None)``

    * ``name``: the hostname inside the host (``hostname``, ``socket.gethostname()``).
    * ``workdir``: a directory for the host's files (HOME, spawned commands' output);
      created if missing and kept at close (under a test's tmp_path, pytest keeps it
      for a look after a failure). By default a temporary directory, removed at close.
    * ``spool``: if given, passed to every command as ``TASKQ_SPOOL`` (a command's own
      ``--spool`` wins); also available as ``host.spool``.
    * ``clock_offset``: the host's wall clock is off by this much: ``"+10m"``,
      ``"-90s"``, ``"+1.5h"``, ``"-2d"`` or a number of seconds. Every command runs
      with libfaketimeMT in LD_PRELOAD; the monotonic clock is left alone (a real
      host's monotonic clock has nothing to do with its wall clock), and so is a
      file's "set to now" (``utime(path, NULL)``: the filesystem stamps it, as a real
      NFS server does; see :func:`faketime_utime_env`). Skips the test if libfaketime
      is not installed.
    * ``env``: variables for every command (a value of None removes one).

    Commands see: the machine's file systems (mounts that exist when the host starts,
    e.g. the NFS lab's; not later ones), its own ``/proc`` (PIDs start at 1), hostname,
    boot id and empty ``/dev/shm``; HOME and XDG_DATA_HOME inside ``workdir`` (so a
    command without a spool uses a per-host default one); PATH with taskq's bin
    directory first; the caller's other variables except TASKQ_SPOOL, TASKQ_DEBUG,
    NO_COLOR, FORCE_COLOR, LD_PRELOAD and FAKETIME*. The network is the machine's.
    """

    def __init__(self, name: str, *, workdir: Optional[StrPath] = None, spool: Optional[StrPath] = None,
                 clock_offset: Union[None, str, float] = None, env: EnvOverrides = None) -> None:
        problem = host_support_problem()
        if problem:
            pytest.skip(problem)
        self.name = name
        self.spool: Optional[Path] = Path(spool) if spool is not None else None
        self.clock_offset = clock_offset
        self.clock_offset_seconds = parse_clock_offset(clock_offset) if clock_offset is not None else 0.0
        self._faketime: Optional[str] = None
        if clock_offset is not None:
            self._faketime = faketime_library()
            if self._faketime is None:
                pytest.skip("hosts: a clock offset needs libfaketime (apt-get install faketime)")
        self._extra_env = dict(env or {})
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"taskq-host-{name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.home = self.dir / "home"
        self.home.mkdir(exist_ok=True)
        # Control files (boot id, FIFOs) live apart from workdir: they go at close.
        self._control = Path(tempfile.mkdtemp(prefix=f"taskq-host-{name}-", suffix=".ctl"))
        safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.cgroup = FREEZER / f"{CGROUP_PREFIX}{os.getpid()}-{safe_name}-{uuid.uuid4().hex[:8]}"
        self.boot_id = ""
        self.init_pid = 0
        self._unshare: Optional[subprocess.Popen[bytes]] = None
        self._popens: list[subprocess.Popen[Any]] = []
        self._counter = itertools.count()
        self._closed = False
        try:
            # The group exists before the host's first process, which joins it before
            # it runs anything: no process of the host is ever outside it.
            self.cgroup.mkdir()
            self._start()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "alive" if self.alive else "dead"
        return f"<Host {self.name} init {self.init_pid} {state}>"

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- life cycle ---------------------------------------------------------------------

    def _start(self) -> None:
        """Boot: new namespaces with a new boot id, in the (thawed, empty) freezer group."""
        self.boot_id = str(uuid.uuid4())
        boot_file = self._control / "boot_id"
        boot_file.write_text(self.boot_id + "\n")
        ready = self._control / "ready"
        ready.unlink(missing_ok=True)
        log_path = self._control / "init.log"
        # setpriv --pdeathsig: if the test process dies without its teardown, unshare
        # dies too and --kill-child takes the host's init, hence the whole host, with it.
        pdeathsig = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        argv = [SH, "-c", _JOIN_SCRIPT, str(self.cgroup / "cgroup.procs"),
                *pdeathsig, "unshare", "--pid", "--uts", "--fork", "--mount-proc", "--kill-child",
                SH, "-c", _INIT_SCRIPT, self.name, str(boot_file), str(ready),
                sys.executable, "-I", "-S", "-c", _REAPER]
        with open(log_path, "wb") as log:
            # A minimal environment: the init runs nothing of the caller's.
            self._unshare = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env={"PATH": os.environ.get("PATH", os.defpath)})
        unshare = self._unshare
        if not wait_until(lambda: ready.exists() or unshare.poll() is not None, 30.0, 0.005) or not ready.exists():
            raise RuntimeError(f"host {self.name} did not start: {_read(log_path).strip() or 'no output'}")
        children = wait_until(lambda: _children(unshare.pid), 10.0, 0.005)
        if not children:
            raise RuntimeError(f"host {self.name}: no init (the child of unshare {unshare.pid}): "
                               f"{_read(log_path).strip() or 'no output'}")
        self.init_pid = children[0]

    @property
    def alive(self) -> bool:
        """Whether the host runs (its init lives)."""
        return self._unshare is not None and self._unshare.poll() is None and pid_alive(self.init_pid)

    def _require_alive(self) -> None:
        if self._closed:
            raise RuntimeError(f"host {self.name} is closed")
        if not self.alive:
            raise RuntimeError(f"host {self.name} is dead (killed); reboot() starts it again")
        if self.frozen:
            # A command started now would join the frozen group and stop before it starts.
            raise RuntimeError(f"host {self.name} is frozen; thaw() it first")

    def kill(self) -> None:
        """The host dies at once, as in a power cut: every process on it is SIGKILLed
        and none runs another instruction. The host's files stay (HOME, output files);
        so does everything it wrote to shared file systems. Returns once every process
        of the host is gone. A dead host can :meth:`reboot`; no-op if already dead.
        """
        if self._unshare is None or (self._unshare.poll() is not None and not self.processes()):
            return
        if self._set_state("FROZEN", timeout=2.0, check=False):
            # Everything is stopped, so no PID in the group can exit and be reused:
            # SIGKILL them all; they die when thawed, without running user code.
            for pid in self.processes():
                _signal(pid, signal.SIGKILL)
        # Not frozen in time (e.g. a process stuck in a request to a stopped NFS client):
        # killing init alone is enough, the kernel then kills the rest of the namespace.
        # (unshare has not reaped init while unshare runs, so its PID is still init's.)
        if self._unshare.poll() is None and self.init_pid in _children(self._unshare.pid):
            _signal(self.init_pid, signal.SIGKILL)
        # A frozen process dies of SIGKILL only once thawed.
        self._set_state("THAWED", timeout=30.0, check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._unshare.wait(30)

        def gone() -> bool:
            # Our own children (unshare, nsenter) stay in the group as zombies until reaped.
            self._reap()
            return not self.processes()

        if not wait_until(gone, 30.0):
            raise RuntimeError(f"host {self.name}: processes survived the kill: {self.processes()}")

    def reboot(self) -> None:
        """Kill the host if it runs, then start it again: same name, spool, clock and
        files, a new boot id, an empty /dev/shm and no processes."""
        self.kill()
        self._start()

    def close(self) -> None:
        """Kill the host and remove its freezer group and control files (and its workdir
        if it made one). Idempotent; the fixtures call it at teardown."""
        if self._closed:
            return
        self._closed = True
        try:
            self.kill()
        finally:
            for popen in self._popens:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(5)
            with contextlib.suppress(OSError):
                self._set_state("THAWED", timeout=5.0, check=False)
            # rmdir fails with EBUSY while a (dying) process is still in the group.
            wait_until(lambda: self._rmdir_cgroup(), 10.0)
            shutil.rmtree(self._control, ignore_errors=True)
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _rmdir_cgroup(self) -> bool:
        try:
            self.cgroup.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise
        return True

    def _reap(self) -> None:
        """Collect our own children of the host that have ended (they are zombies until then)."""
        self._popens = [p for p in self._popens if p.poll() is None]

    # -- freezer ------------------------------------------------------------------------

    def _set_state(self, state: str, timeout: float, check: bool = True) -> bool:
        try:
            (self.cgroup / "freezer.state").write_text(state)
        except OSError:
            if check:
                raise
            return False
        # FREEZING until every task has stopped; a task in an uninterruptible wait stops later.
        done = wait_until(lambda: (self.cgroup / "freezer.state").read_text().strip() == state, timeout, 0.005)
        if not done and check:
            raise RuntimeError(f"host {self.name}: freezer state {self.freezer_state()!r}, "
                               f"not {state} after {timeout:g}s")
        return bool(done)

    def freezer_state(self) -> str:
        """THAWED, FREEZING or FROZEN."""
        return (self.cgroup / "freezer.state").read_text().strip()

    @property
    def frozen(self) -> bool:
        """Whether the host is frozen (or freezing)."""
        return self.freezer_state() != "THAWED"

    def freeze(self, timeout: float = 30.0) -> None:
        """The host stops (a VM paused, a long stall): every process on it stops at once
        and stays stopped until :meth:`thaw`, unaware of the gap. Returns once all have
        stopped. Commands cannot be started on a frozen host."""
        self._set_state("FROZEN", timeout)

    def thaw(self, timeout: float = 30.0) -> None:
        """The host resumes where it stopped."""
        self._set_state("THAWED", timeout)

    # -- processes ----------------------------------------------------------------------

    def processes(self) -> list[int]:
        """PIDs (seen from outside) of every process of the host, including its init and
        the unshare/nsenter processes that started things on it."""
        try:
            text = (self.cgroup / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]

    def outer_pid(self, pid_in_host: int) -> Optional[int]:
        """The PID seen from outside of the host's process *pid_in_host* (e.g. the PID
        in a taskq ``host:pid``), or None if the host has no such process."""
        for pid in self.processes():
            if ns_pid(pid) == pid_in_host and self._in_host_pidns(pid):
                return pid
        return None

    def _in_host_pidns(self, pid: int) -> bool:
        # unshare and nsenter are in the group but not in the host's PID namespace.
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except OSError:
            return False

    def env(self, env: EnvOverrides = None) -> dict[str, str]:
        """The environment of a command on this host, with *env* applied (None removes)."""
        base = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("FAKETIME")}
        path = base.get("PATH", os.defpath)
        base["PATH"] = f"{TASKQ_BIN}{os.pathsep}{path}" if TASKQ_BIN else path
        base["HOME"] = str(self.home)
        base["XDG_DATA_HOME"] = str(self.home / ".local" / "share")
        if self.spool is not None:
            base["TASKQ_SPOOL"] = os.fspath(self.spool)
        if self._faketime is not None:
            base["LD_PRELOAD"] = self._faketime
            base["FAKETIME"] = f"{self.clock_offset_seconds:+.6f}"
            # Only the wall clock is off; timeouts and sleeps measured on the monotonic
            # clock behave as on a real host (and libfaketime's timed waits stay out of it).
            base["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            # utime(path, NULL) stamps the filesystem's time, not the faked one.
            base.update(faketime_utime_env(self._faketime))
        return _env(env, _env(self._extra_env, base))

    def _argv(self, args: Sequence[StrPath], cwd: Optional[StrPath]) -> list[str]:
        """Join the freezer group, then nsenter the host's namespaces (nsenter forks: its
        child is in the host's PID namespace) and run *args* in *cwd*."""
        wd = os.fspath(cwd) if cwd is not None else str(self.dir)
        return [SH, "-c", _JOIN_SCRIPT, str(self.cgroup / "cgroup.procs"),
                "nsenter", "-t", str(self.init_pid), "-m", "-u", "-p", f"--wd={wd}", "--",
                *(os.fspath(a) for a in args)]

    def run(self, args: Sequence[StrPath], *, timeout: float = 60.0, env: EnvOverrides = None,
            cwd: Optional[StrPath] = None, input: Optional[str] = None,
            check: Union[bool, int] = False) -> subprocess.CompletedProcess[str]:
        """Run *args* on the host and wait for it: a CompletedProcess with text stdout and
        stderr (``args`` is *args*; ``returncode`` negative if killed by a signal).

        ``cwd`` defaults to the host's workdir; stdin is *input*, else /dev/null.
        ``check``: True = exit 0 expected, an int = that status expected; a mismatch
        fails the test with the output. After *timeout* s the command is SIGKILLed and
        TimeoutExpired raised (a process it left in the background runs on).
        """
        self._require_alive()
        argv = [os.fspath(a) for a in args]
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        proc = subprocess.Popen(self._argv(argv, cwd), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", env=self.env(env))
        self._popens.append(proc)
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            # Killing nsenter alone would leave the command running inside the host.
            for child in _children(proc.pid):
                _signal(child, signal.SIGKILL)
            proc.kill()
            try:
                stdout, stderr = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # a background process holds the pipes
                stdout, stderr = "", ""
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr) from None
        finally:
            self._reap()
        result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
        if check is not False:
            expected = 0 if check is True else int(check)
            if result.returncode != expected:
                pytest.fail(f"on {self.name}: {' '.join(argv)}: exit {result.returncode}, expected {expected}\n"
                            f"--- stdout ---\n{stdout}--- stderr ---\n{stderr}", pytrace=False)
        return result

    def spawn(self, args: Sequence[StrPath], *, stdout: Union[None, StrPath, int] = None,
              stderr: Union[None, StrPath, int] = None, env: EnvOverrides = None,
              cwd: Optional[StrPath] = None) -> HostProcess:
        """Start *args* on the host in the background; return once it runs.

        ``stdout``/``stderr``: a file path, or ``subprocess.DEVNULL``; by default files
        ``spawn-N.out``/``spawn-N.err`` in the host's workdir (``handle.stdout()`` reads
        it). stdin is /dev/null. The process dies with the host; still-running ones are
        killed when the host is closed.
        """
        self._require_alive()
        n = next(self._counter)
        argv = [os.fspath(a) for a in args]
        gate = self._control / f"gate-{n}"
        os.mkfifo(gate, 0o600)
        paths: list[Optional[Path]] = []
        files: list[Union[int, IO[bytes]]] = []
        try:
            for target, suffix in ((stdout, "out"), (stderr, "err")):
                if isinstance(target, int):
                    paths.append(None)
                    files.append(target)
                else:
                    path = Path(target) if target is not None else self.dir / f"spawn-{n}.{suffix}"
                    paths.append(path)
                    files.append(open(path, "wb"))  # closed below, once Popen has its copy
            popen = subprocess.Popen(self._argv([SH, "-c", _GATE_SCRIPT, str(gate), *argv], cwd),
                                     stdin=subprocess.DEVNULL, stdout=files[0], stderr=files[1], env=self.env(env))
        finally:
            for f in files:
                if not isinstance(f, int):
                    f.close()
        self._popens.append(popen)
        try:
            pid = self._open_gate(popen, gate)
        finally:
            gate.unlink(missing_ok=True)
        return HostProcess(self, argv, popen, pid, paths[0], paths[1])

    def _open_gate(self, popen: subprocess.Popen[bytes], gate: Path) -> int:
        """The PID of nsenter's child (the gate script, soon the command), then let it go on."""
        children = wait_until(lambda: _children(popen.pid) or popen.poll() is not None, 30.0, 0.002)
        if not isinstance(children, list):
            raise RuntimeError(f"host {self.name}: nsenter exited with {popen.returncode} before starting the command")
        deadline = time.monotonic() + 30.0
        while True:
            try:
                # O_NONBLOCK: fails with ENXIO, instead of blocking, until the gate opens its end.
                fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"host {self.name}: the command did not start ({exc.strerror})") from exc
            time.sleep(0.002)
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)
        return children[0]


class HostFactory:
    """The ``hosts`` fixture: ``hosts(n, spool_paths=None, *, clock_offsets=None, env=None)``
    makes *n* new hosts named host-a, host-b, ... (names go on across calls: a second
    call's first host is the next letter); ``hosts.add(name=None, *, spool=None,
    clock_offset=None, env=None)`` makes one. Every host is closed at teardown.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.made: list[Host] = []

    def _next_name(self) -> str:
        n = len(self.made)
        letters = ""
        while True:
            letters = chr(ord("a") + n % 26) + letters
            n = n // 26 - 1
            if n < 0:
                return f"host-{letters}"

    def add(self, name: Optional[str] = None, *, spool: Optional[StrPath] = None,
            clock_offset: Union[None, str, float] = None, env: EnvOverrides = None) -> Host:
        name = name or self._next_name()
        if any(h.name == name for h in self.made):
            raise ValueError(f"a host named {name!r} exists already in this test")
        host = Host(name, workdir=self.workdir / name, spool=spool, clock_offset=clock_offset, env=env)
        self.made.append(host)
        return host

    def __call__(self, n: int, spool_paths: Optional[Sequence[StrPath]] = None, *,
                 clock_offsets: Optional[Sequence[Union[None, str, float]]] = None,
                 env: EnvOverrides = None) -> list[Host]:
        """*n* hosts; host i gets ``spool_paths[i]`` as its spool (TASKQ_SPOOL) and
        ``clock_offsets[i]`` as its clock offset (None: the right time)."""
        for label, seq in (("spool_paths", spool_paths), ("clock_offsets", clock_offsets)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{label}: {len(seq)} given for {n} hosts")
        return [self.add(spool=spool_paths[i] if spool_paths is not None else None,
                         clock_offset=clock_offsets[i] if clock_offsets is not None else None, env=env)
                for i in range(n)]

    def close_all(self) -> None:
        errors: list[BaseException] = []
        for host in reversed(self.made):
            try:
                host.close()
            except Exception as exc:  # noqa: BLE001 - close every host, then report
                errors.append(exc)
        if errors:
            raise errors[0]


# -- the NFS lab ----------------------------------------------------------------------


class SharedSpool(NamedTuple):
    """One spool directory on the NFS lab (not created): its path through host A's
    mount, through host B's, and on the server's side (what the server holds, with no
    client cache in between: the place for final assertions)."""

    a: Path
    b: Path
    server: Path

    @property
    def clients(self) -> tuple[Path, Path]:
        """(a, b): e.g. ``hosts(2, spool_paths=shared_spool.clients)``."""
        return (self.a, self.b)


class NfsLab(list[Path]):
    """The running lab: a list of its client mounts, host A's first, plus the server's
    side (``export``) and a way to cut a client off from the server and back."""

    def __init__(self, mounts: Iterable[Path], lab_dir: Path, lab: Path, env: Mapping[str, str]) -> None:
        super().__init__(mounts)
        self.dir = lab_dir
        self.run_dir = lab_dir / "run"
        self.export = self.run_dir / "export"
        self.lab = lab
        self.env = dict(env)

    def command(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``lab ARGS`` on this lab (e.g. ``status``)."""
        return subprocess.run([str(self.lab), *args], env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def _letter(self, client: Union[int, str]) -> str:
        return chr(ord("A") + client) if isinstance(client, int) else client.upper()

    def client_pid(self, client: Union[int, str]) -> int:
        """The PID of the fuse-nfs process of client *client* (0 or "A", 1 or "B", ...)."""
        role = f"client-{self._letter(client)}"
        for line in (self.run_dir / "pids").read_text().splitlines():
            fields = line.split()
            # The lab records each PID with its start time: check it is still that process.
            if len(fields) == 3 and fields[0] == role and _start_time(int(fields[1])) == fields[2]:
                return int(fields[1])
        raise LookupError(f"NFS lab: no running {role}")

    def cut_off(self, client: Union[int, str]) -> None:
        """The client's host loses the server: every file operation through that mount
        blocks (a fatal signal still ends a blocked process) until :meth:`reconnect`."""
        os.kill(self.client_pid(client), signal.SIGSTOP)

    def reconnect(self, client: Union[int, str]) -> None:
        os.kill(self.client_pid(client), signal.SIGCONT)

    def reconnect_all(self) -> None:
        for i in range(len(self)):
            with contextlib.suppress(LookupError, ProcessLookupError):
                self.reconnect(i)

    def broken(self) -> Optional[str]:
        """What is wrong with the lab (a process of it gone, a mount lost), or None.
        A fuse-nfs client can die on its own: libnfs has been seen to segfault under
        many concurrent requests (dmesg: ``fuse-nfs[PID]: segfault ... in libnfs``),
        leaving its mount "Transport endpoint is not connected"."""
        status = self.command("status")
        bad = [line.strip() for line in status.stdout.splitlines() if line.rstrip().endswith(("gone", "NOT mounted"))]
        if status.returncode != 0 or bad:
            return "; ".join(bad) or status.stdout.strip().splitlines()[0]
        return None

    def restart(self) -> None:
        """Stop the lab and start it again: a new, empty export, the same mount paths."""
        self.command("stop")
        start = self.command("start", str(len(self)))
        if start.returncode != 0:
            lines = (start.stderr.strip() or start.stdout.strip()).splitlines()
            raise RuntimeError(f"NFS lab: cannot restart: {lines[-1] if lines else start.returncode}")
        self[:] = [Path(line) for line in start.stdout.split()]


def spool_name(node_name: str) -> str:
    """A directory name for one test's spool: its name made safe, and unique."""
    return f"spool-{re.sub(r'[^A-Za-z0-9_.-]', '_', node_name)[:80]}-{uuid.uuid4().hex[:8]}"
