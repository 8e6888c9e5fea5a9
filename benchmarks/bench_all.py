#!/usr/bin/env python3
"""Every performance target of taskq in one run, each beside its floor or peer.

Each row times taskq and what it is compared with (a floor written here, or a peer
queue: task-spooler, nq) in the same run, on the same machine and filesystem, taking
turns within every repetition (the order rotates from one repetition to the next), so
that a drift in machine load hits every side alike. It prints a Markdown table of
medians and ratios, with the machine it ran on.

  P1  ``taskq add -- true`` latency vs a minimal typer app that only prints, an
      argparse script doing one durable write, ``tsp true`` and ``nq true``
  P2  ``taskq.Spool(path).add(["true"])`` in a loop vs a raw durable-write loop
  P3  ``taskq work --burst -c 1|2`` draining ``true`` jobs vs ``tsp -S 1|2``, a plain
      subprocess loop, and that loop plus the file moves of a durable queue
  P4  per-job drain cost with a deep vs a shallow pending/
  P5  ``taskq status --json`` marginal cost of a full spool vs os.scandir of it
  P6  pick-up latency of an idle ``taskq work`` and its idle CPU
  P7  worker RSS after 10x more jobs at constant queue depth
  E   ``taskq add --each`` vs ``taskq add --batch`` (skipped while --each is missing)

Run it with the interpreter taskq is installed in (the ``taskq`` console script is
taken from beside ``sys.executable``)::

    python benchmarks/bench_all.py                    # everything, < 10 minutes on 2 cores
    python benchmarks/bench_all.py --quick            # smoke run, about a minute
    python benchmarks/bench_all.py --rows P1,P3 --json out.json --dir /var/tmp
    python benchmarks/bench_all.py --install-peers    # apt-get install task-spooler nq first

Standard library only (plus taskq and typer). The peers come from Debian packages and
are used only where installed; they are never dependencies of taskq.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, TypeVar

ROWS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "E")
# Most task-spooler jobs that wait at once (see Bench.p3_tsp): below its ~990.
TSP_MAX_WAITING = 900
T = TypeVar("T")


class BenchError(Exception):
    """A measurement could not be made (a command failed, a check did not hold)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each row does: the defaults aim at < 10 minutes on 2 cores,
    --quick at about a minute (enough to see that every row runs). Short sides get
    more repetitions (E: 7): one burst of load elsewhere moves a 0.5 s run a lot."""

    p1_runs: int
    p1_warmup: int
    p2_jobs: int
    p2_reps: int
    p3_jobs: int
    p3_reps: int
    p4_deep: int
    p4_shallow: int
    p4_run: int
    p4_reps: int
    p5_jobs: int
    p5_reps: int
    p6_samples: int
    p6_idle: float
    p7_small: int
    p7_big: int
    p7_depth: int
    e_jobs: int
    e_reps: int


FULL = Sizes(p1_runs=40, p1_warmup=3, p2_jobs=2000, p2_reps=5, p3_jobs=1000, p3_reps=3,
             p4_deep=20_000, p4_shallow=1000, p4_run=500, p4_reps=3, p5_jobs=25_000, p5_reps=15,
             p6_samples=20, p6_idle=5.0, p7_small=1000, p7_big=10_000, p7_depth=200, e_jobs=1000, e_reps=7)
QUICK = Sizes(p1_runs=10, p1_warmup=2, p2_jobs=500, p2_reps=3, p3_jobs=200, p3_reps=1,
              p4_deep=5000, p4_shallow=500, p4_run=200, p4_reps=1, p5_jobs=5000, p5_reps=5,
              p6_samples=8, p6_idle=2.0, p7_small=200, p7_big=2000, p7_depth=100, e_jobs=200, e_reps=1)

# How P5's full spool is split between the states: a long-lived queue is mostly
# finished jobs. taskq reads names only, except failed/ (stat for the latest five).
P5_SPLIT = {"pending": 0.20, "done": 0.76, "failed": 0.04}


@dataclass
class Row:
    """One line of the result table (one comparison)."""

    id: str
    measure: str
    taskq: str
    other: str = "—"
    ratio: float | None = None
    target: str = "—"
    verdict: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


# -- small helpers ------------------------------------------------------------------------


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of a[i] / b[i]: sample i of each side comes from the same repetition,
    run back to back, so a burst of load elsewhere moves both and cancels out (a ratio
    of the two medians can pair a calm sample with a loaded one)."""
    if len(a) != len(b) or not a:
        raise BenchError(f"unpaired samples ({len(a)} vs {len(b)})")
    return med([x / y for x, y in zip(a, b, strict=True)])


def paired_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of a[i] - b[i], for the same reason as :func:`paired_ratio`."""
    if len(a) != len(b) or not a:
        raise BenchError(f"unpaired samples ({len(a)} vs {len(b)})")
    return med([x - y for x, y in zip(a, b, strict=True)])


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """*items* starting at a different one each repetition, so that no side always
    runs first (right after a slow side, or on a cold cache)."""
    k = rep % len(items)
    return list(items[k:]) + list(items[:k])


def verdict(ratio: float | None, bound: float, higher_is_better: bool) -> str:
    if ratio is None:
        return ""
    ok = ratio >= bound if higher_is_better else ratio <= bound
    return "met" if ok else "MISS"


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}×"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def iso_ts(stamp: str) -> float:
    """A record's ``2026-12-01T21:52:23.734Z`` as epoch seconds (3.10 has no ``Z``)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_like(ms: int) -> str:
    """An id in the layout taskq generates (48-bit ms + 80 random bits, Crockford
    base32), for the cloned records of P5: status decodes the age of such ids."""
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def count_entries(path: str) -> int:
    try:
        with os.scandir(path) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: str, data: bytes) -> None:
    """Create *path* with *data* and fsync it (the file, not its directory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def proc_stat_ticks(pid: int) -> int:
    """utime + stime of *pid* in clock ticks (/proc/PID/stat fields 14 and 15). The
    command name in parentheses may hold spaces: split after its closing one."""
    with open(f"/proc/{pid}/stat") as fh:
        data = fh.read()
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def command_output(argv: list[str], env: dict[str, str] | None = None) -> str:
    """stdout of a short informational command, or "" if it cannot be run."""
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip()


# -- floors run as separate processes (P1) ------------------------------------------------

# The argparse + one durable write floor is bench_add.py's (same directory, so it
# is importable when this script runs): both benchmarks measure the same floor.
from bench_add import ARGPARSE_APP as ARGPARSE_DURABLE_APP  # noqa: E402

# The P1 target: the same command line as `taskq add`, parsed by the installed typer,
# doing nothing but print. What taskq adds over it is its own work.
TYPER_PRINT_APP = '''
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def root() -> None:
    """Floor."""


@app.command(context_settings={"allow_interspersed_args": False})
def add(command: Optional[List[str]] = typer.Argument(None),
        spool: Optional[str] = typer.Option(None, "--spool")) -> None:
    print("01J00000000000000000000000")


app()
'''


# -- the benchmark ------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.py = sys.executable
        self.taskq_bin = self._find_taskq()
        self.top = tempfile.mkdtemp(prefix="taskq-bench-all.", dir=args.dir)
        self.work = os.path.join(self.top, "cwd")  # jobs' cwd: never the user's directory
        self.home = os.path.join(self.top, "home")
        os.makedirs(self.work)
        os.makedirs(self.home)
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []  # started here: stopped at the end
        self.tsp_envs: list[dict[str, str]] = []  # private tsp servers to kill at the end
        self.nq_dirs: list[str] = []
        self._seq = 0
        # Nothing of the user's environment may point the runs at a real queue: no
        # TASKQ_*, no task-spooler or nq settings, HOME and XDG dirs in the temp dir.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TASKQ_", "TS_", "XDG_")) and k not in ("NQDIR", "NQFAIL", "TMPDIR")}
        env.update(HOME=self.home, NO_COLOR="1", XDG_DATA_HOME=os.path.join(self.home, "data"),
                   XDG_CONFIG_HOME=os.path.join(self.home, "config"), TMPDIR=self.top)
        self.clean_env = env
        # Even a version query gets a socket of its own, never the user's.
        self.probe_env = {**env, "TS_SOCKET": os.path.join(self.top, "probe.socket")}
        self.tsp = self._find_tsp()
        self.nq = shutil.which("nq")
        self._compile_taskq()

    # -- set-up and tear-down ---------------------------------------------------------

    def _find_taskq(self) -> str:
        here = os.path.join(os.path.dirname(self.py), "taskq")
        if os.access(here, os.X_OK):
            return here
        found = shutil.which("taskq")
        if not found:
            sys.exit("bench_all: no taskq console script beside sys.executable or on PATH")
        return found

    def _compile_taskq(self) -> None:
        """An installed taskq has its bytecode (`pip install` compiles it), but an
        editable install run with PYTHONDONTWRITEBYTECODE set has none, and every
        command would then compile its modules again: P1 would time the compiler.
        Compile them once, as an install does, and say so."""
        import importlib.util

        import taskq

        package = os.path.dirname(taskq.__file__)
        cached = importlib.util.cache_from_source(os.path.join(package, "__init__.py"))
        if not os.path.exists(cached):
            subprocess.run([self.py, "-m", "compileall", "-q", package], check=True, stdout=subprocess.DEVNULL)
            self.notes.append(f"taskq's modules in {package} had no bytecode: compiled before timing, "
                              "as `pip install` does")

    def _find_tsp(self) -> str | None:
        """task-spooler is `tsp` on Debian (`ts` is moreutils' timestamp filter there),
        `ts` elsewhere: accept whichever says it is Task Spooler."""
        for name in ("tsp", "ts"):
            path = shutil.which(name)
            if path and "task spooler" in command_output([path, "-V"], self.probe_env).lower():
                return path
        return None

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for env in self.tsp_envs:
            self.tsp_kill(env)
        for nqdir in self.nq_dirs:
            # nq's background runners finish on their own (`true`); wait for them so the
            # directory can go.
            if self.nq:
                subprocess.run([self.nq, "-w"], env={**self.clean_env, "NQDIR": nqdir},
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
        # A process that was just stopped may still be finishing a write in the tree:
        # one more try, then say what is left rather than leave it silently.
        for attempt in range(2):
            shutil.rmtree(self.top, ignore_errors=True)
            if not os.path.exists(self.top):
                return
            time.sleep(0.5 * (attempt + 1))
        print(f"bench_all: could not remove {self.top}", file=sys.stderr)

    def path(self, name: str) -> str:
        """A fresh path under the bench's temp dir."""
        self._seq += 1
        return os.path.join(self.top, f"{name}-{self._seq}")

    def taskq_env(self, spool: str) -> dict[str, str]:
        return {**self.clean_env, "TASKQ_SPOOL": spool}

    def log_path(self, what: str) -> str:
        return os.path.join(self.top, f"{what}.stderr")

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # -- running commands ------------------------------------------------------------

    def run(self, argv: list[str], env: dict[str, str], stderr_file: str | None = None,
            timeout: float = 900) -> tuple[float, str]:
        """Run *argv* to completion; (seconds, stdout). A failure is a BenchError.
        A long stderr (a worker's event lines) goes to a file, not through a pipe
        this process would have to drain while it is being timed."""
        err: IO[bytes] | int = subprocess.PIPE
        fh = open(stderr_file, "ab") if stderr_file else None  # closed below
        if fh is not None:
            err = fh
        try:
            start = time.perf_counter()
            proc = subprocess.run(argv, env=env, cwd=self.work, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=err, timeout=timeout)
            elapsed = time.perf_counter() - start
        finally:
            if fh is not None:
                fh.close()
        if proc.returncode != 0:
            why = proc.stderr.decode(errors="replace") if proc.stderr else f"(see {stderr_file})"
            raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {why.strip()[-500:]}")
        return elapsed, proc.stdout.decode(errors="replace")

    def fill(self, spool: str, count: int, durable: bool, command: list[str] | None = None) -> None:
        """Add *count* jobs through the API. Filling is not what is measured: with
        *durable* False a taskq.toml turns fsync off for the fill, then is removed so
        that the spool is measured with the default settings (fsync on)."""
        import taskq

        os.makedirs(spool, mode=0o700, exist_ok=True)
        toml = os.path.join(spool, "taskq.toml")
        if not durable:
            with open(toml, "w") as fh:
                fh.write("fsync = false\n")
        try:
            api = taskq.Spool(spool)
            left = count
            while left:
                n = min(left, 2000)
                api.add_batch([{"command": command or ["true"]} for _ in range(n)])
                left -= n
        finally:
            if not durable:
                os.unlink(toml)

    # -- peers -------------------------------------------------------------------------

    def tsp_env(self, where: str, slots: int, keep: int = 1000) -> dict[str, str]:
        """A private task-spooler: its own socket, save list and output dir, so the
        user's queue is never touched. TS_MAXFINISHED keeps every finished job listed."""
        os.makedirs(where, exist_ok=True)
        env = {**self.clean_env, "TS_SOCKET": os.path.join(where, "socket"),
               "TS_SAVELIST": os.path.join(where, "savelist"), "TMPDIR": where,
               "TS_SLOTS": str(slots), "TS_MAXFINISHED": str(keep)}
        self.tsp_envs.append(env)
        return env

    def tsp_kill(self, env: dict[str, str]) -> None:
        if self.tsp and os.path.exists(env["TS_SOCKET"]):
            subprocess.run([self.tsp, "-K"], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=30, check=False)

    def tsp_out(self, env: dict[str, str], *argv: str) -> str:
        assert self.tsp
        proc = subprocess.run([self.tsp, *argv], env=env, cwd=self.work, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 2 and argv[0] == "-B":
            raise BenchError(f"the private tsp queue is full (its server's connection limit): tsp {' '.join(argv)}")
        if proc.returncode != 0 and argv[0] not in ("-w", "-s"):
            raise BenchError(f"tsp {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    # ====================================================================================
    # P1: taskq add latency
    # ====================================================================================

    def p1(self) -> None:
        s = self.sizes
        typer_app = os.path.join(self.top, "floor_typer_print.py")
        argparse_app = os.path.join(self.top, "floor_argparse_durable.py")
        with open(typer_app, "w") as fh:
            fh.write(TYPER_PRINT_APP)
        with open(argparse_app, "w") as fh:
            fh.write(ARGPARSE_DURABLE_APP)
        spool = self.path("p1-spool")
        floor_spool = self.path("p1-floor")
        cases: list[tuple[str, list[str], dict[str, str]]] = [
            ("taskq", [self.taskq_bin, "add", "--spool", spool, "--", "true"], self.taskq_env(spool)),
            ("typer", [self.py, typer_app, "add", "--spool", spool, "--", "true"], self.clean_env),
            ("argparse", [self.py, argparse_app, "add", "--spool", floor_spool, "--", "true"], self.clean_env),
            ("python", [self.py, "-S", "-c", "pass"], self.clean_env),
        ]
        if self.tsp:
            env = self.tsp_env(self.path("p1-tsp"), slots=1)
            cases.append(("tsp", [self.tsp, "true"], env))
        else:
            self.notes.append("task-spooler not installed: P1 peer skipped (apt-get install task-spooler)")
        if self.nq:
            nqdir = self.path("p1-nq")
            os.makedirs(nqdir)
            self.nq_dirs.append(nqdir)
            cases.append(("nq", [self.nq, "true"], {**self.clean_env, "NQDIR": nqdir}))
        else:
            self.notes.append("nq not installed: P1 peer skipped (apt-get install nq)")
        samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        self.say(f"P1: {s.p1_runs} runs of {len(cases)} cases, after {s.p1_warmup} warm-up runs")
        for rep in range(s.p1_warmup + s.p1_runs):
            for name, argv, env in rotated(cases, rep):
                elapsed, _ = self.run(argv, env)
                if rep >= s.p1_warmup:
                    samples[name].append(elapsed * 1000)
        m = {name: med(xs) for name, xs in samples.items()}
        taskq_ms = m["taskq"]
        what = f"`taskq add -- true` latency (ms, median of {s.p1_runs})"
        labels = {
            "typer": "minimal typer app, prints only (same typer)",
            "argparse": "argparse + 1 durable write",
            "python": "`python -S -c pass` (interpreter alone)",
            "tsp": "`tsp true` (task-spooler enqueue)",
            "nq": "`nq true`",
        }
        for name in ("typer", "argparse", "python", "tsp", "nq"):
            if name not in m:
                continue
            ratio = paired_ratio(samples["taskq"], samples[name])
            target = "≤ 1.1×" if name == "typer" else "—"
            self.rows.append(Row("P1", what, fmt_ms(taskq_ms), f"{labels[name]}: {fmt_ms(m[name])}", ratio,
                                 target, verdict(ratio, 1.1, False) if name == "typer" else "",
                                 {"taskq_ms": taskq_ms, f"{name}_ms": m[name], "samples": samples}))
            what = "〃"

    # ====================================================================================
    # P2: API add loop vs raw durable write loop, in this process
    # ====================================================================================

    def p2(self) -> None:
        import taskq

        s = self.sizes
        n = s.p2_jobs
        self.say(f"P2: {s.p2_reps} repetitions of {n} jobs, API vs raw durable floor")
        rates: dict[str, list[float]] = {"taskq": [], "floor": []}

        def api_side() -> None:
            spool = taskq.Spool(self.path("p2-spool"))
            spool.add(["true"])  # creates the spool: not part of the per-job cost
            start = time.perf_counter()
            for _ in range(n):
                spool.add(["true"])
            rates["taskq"].append(n / (time.perf_counter() - start))
            shutil.rmtree(spool.path)

        def floor_side() -> None:
            root = self.path("p2-floor")
            tmp, pending = os.path.join(root, "tmp"), os.path.join(root, "pending")
            os.makedirs(tmp, mode=0o700)
            os.makedirs(pending, mode=0o700)
            cwd = os.getcwd()
            start = time.perf_counter()
            for _ in range(n):
                # Per job: a small JSON record, written in tmp/, fsynced, renamed into
                # pending/, the directory fsynced: the least a durable enqueue does.
                name = os.urandom(13).hex()
                staged = os.path.join(tmp, name + ".tmp")
                write_durable(staged, json.dumps({"id": name, "command": ["true"], "cwd": cwd,
                                                  "created_at": time.time()}).encode())
                os.rename(staged, os.path.join(pending, name + ".json"))
                fsync_dir(pending)
            rates["floor"].append(n / (time.perf_counter() - start))
            shutil.rmtree(root)

        for rep in range(s.p2_reps):
            for side in rotated([api_side, floor_side], rep):
                side()
        t, f = med(rates["taskq"]), med(rates["floor"])
        ratio = paired_ratio(rates["taskq"], rates["floor"])
        self.rows.append(Row("P2", f"`Spool(path).add([\"true\"])` loop, {n:,} jobs (jobs/s, median of {s.p2_reps})",
                             fmt_rate(t), f"raw durable floor (tmp/ + fsync + rename + dir fsync): {fmt_rate(f)}",
                             ratio, "≥ 1.0×", verdict(ratio, 1.0, True), {"rates": rates}))

    # ====================================================================================
    # P3: drain throughput
    # ====================================================================================

    def p3_taskq(self, n: int, c: int) -> tuple[float, float]:
        """(jobs/s from the first job's start to the last one's end, jobs/s over the
        worker's whole run including its start-up and exit)."""
        spool = self.path(f"p3-taskq-c{c}")
        self.fill(spool, n, durable=True)
        wall, _ = self.run([self.taskq_bin, "work", "--spool", spool, "--burst", "-c", str(c)],
                           self.taskq_env(spool), stderr_file=self.log_path("p3-work"))
        done = os.path.join(spool, "done")
        starts, ends = [], []
        for name in os.listdir(done):
            with open(os.path.join(done, name)) as fh:
                rec = json.load(fh)
            starts.append(iso_ts(rec["attempts"][0]["started_at"]))
            ends.append(iso_ts(rec["attempts"][-1]["finished_at"]))
        if len(starts) != n:
            raise BenchError(f"taskq work -c {c}: {len(starts)} of {n} jobs in done/")
        shutil.rmtree(spool)
        span = max(ends) - min(starts)
        return n / span, n / wall

    def p3_tsp(self, n: int, slots: int) -> float:
        """jobs/s of task-spooler with *slots* slots, from the first start to the last
        end. Every slot is first taken by a gate job blocked on a lock this process
        holds, then the jobs are enqueued behind them; the clock starts when the lock is
        released and stops when `tsp -w` on the last job returns.

        A queued tsp job is a client process connected to the server, and the server of
        task-spooler 1.0 serves at most 1000 connections (TS_MAXCONN cannot raise that):
        about 990 jobs can wait at once. So the jobs run in equal rounds of at most
        TSP_MAX_WAITING, each gated and timed the same way, and the spans add up."""
        assert self.tsp
        where = self.path(f"p3-tsp-s{slots}")
        env = self.tsp_env(where, slots, keep=n + 4 * slots + 10)
        gate = os.path.join(where, "gate")
        rounds = -(-n // TSP_MAX_WAITING)
        span = 0.0
        ran = 0
        for r in range(rounds):
            size = n // rounds + (1 if r < n % rounds else 0)
            span += self.p3_tsp_round(env, gate, size, slots)
            ran += size + slots
        listing = self.tsp_out(env, "-l").splitlines()[1:]
        finished = sum(1 for line in listing if " finished " in line and line.split()[3] == "0")
        if finished != ran:
            raise BenchError(f"tsp -S {slots}: {finished} of {ran} jobs finished with exit 0")
        self.tsp_kill(env)
        self.tsp_envs.remove(env)
        # The server removes its socket as it exits, maybe while this walks the directory.
        shutil.rmtree(where, ignore_errors=True)
        return n / span

    def p3_tsp_round(self, env: dict[str, str], gate: str, size: int, slots: int) -> float:
        """One gated round of *size* `true` jobs; its span in seconds."""
        assert self.tsp
        lock = os.open(gate, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.tsp_out(env, "-S", str(slots))  # starts the server (with TS_SLOTS) on first use
            gates = [self.tsp_out(env, "-B", "flock", "-s", gate, "true") for _ in range(slots)]
            ids = [self.tsp_out(env, "-B", "true") for _ in range(size)]
            states = [self.tsp_out(env, "-s", g) for g in gates]
            first = self.tsp_out(env, "-s", ids[0])
            if any(st != "running" for st in states) or first != "queued":
                raise BenchError(f"tsp gate did not hold: gates {states}, first job {first}")
            waiter = subprocess.Popen([self.tsp, "-w", ids[-1]], env=env, cwd=self.work,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            self.procs.append(waiter)
            time.sleep(0.3)  # let the waiter connect before the clock starts
            start = time.perf_counter()
            fcntl.flock(lock, fcntl.LOCK_UN)
            waiter.wait(timeout=900)
            span = time.perf_counter() - start
            self.procs.remove(waiter)
        finally:
            os.close(lock)
        return span

    def p3_raw(self, n: int, c: int) -> float:
        """Spawning `true` n times with subprocess, c at a time: no queue at all."""
        running: collections.deque[subprocess.Popen[bytes]] = collections.deque()
        start = time.perf_counter()
        for _ in range(n):
            if len(running) == c:
                running.popleft().wait()  # all jobs are alike: the oldest ends first
            running.append(subprocess.Popen(["true"], cwd=self.work, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL))
        while running:
            running.popleft().wait()
        return n / (time.perf_counter() - start)

    def p3_durable(self, n: int, c: int) -> float:
        """The subprocess loop plus, per job, the file moves a durable queue needs:
        rename pending/ → running/ and fsync running/; when it ends, write its record
        in tmp/ + fsync, rename it over running/ID, rename that into done/, fsync
        done/ and running/. One thread, as a simple worker would do it."""
        root = self.path(f"p3-durable-c{c}")
        dirs = {d: os.path.join(root, d) for d in ("tmp", "pending", "running", "done")}
        for d in dirs.values():
            os.makedirs(d, mode=0o700)
        names = [f"{i:08d}.json" for i in range(n)]
        for name in names:  # the queue's content: written before the clock starts
            with open(os.path.join(dirs["pending"], name), "w") as fh:
                json.dump({"command": ["true"]}, fh)

        def settle(name: str, proc: subprocess.Popen[bytes]) -> None:
            code = proc.wait()
            staged = os.path.join(dirs["tmp"], name)
            write_durable(staged, json.dumps({"command": ["true"], "exit_code": code,
                                              "finished_at": time.time()}).encode())
            os.rename(staged, os.path.join(dirs["running"], name))
            os.rename(os.path.join(dirs["running"], name), os.path.join(dirs["done"], name))
            fsync_dir(dirs["done"])
            fsync_dir(dirs["running"])

        running: collections.deque[tuple[str, subprocess.Popen[bytes]]] = collections.deque()
        start = time.perf_counter()
        for name in names:
            if len(running) == c:
                settle(*running.popleft())
            os.rename(os.path.join(dirs["pending"], name), os.path.join(dirs["running"], name))
            fsync_dir(dirs["running"])
            running.append((name, subprocess.Popen(["true"], cwd=self.work, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL)))
        while running:
            settle(*running.popleft())
        rate = n / (time.perf_counter() - start)
        if count_entries(dirs["done"]) != n:
            raise BenchError("durable floor: not every job reached done/")
        shutil.rmtree(root)
        return rate

    def p3(self) -> None:
        if not self.tsp:
            self.notes.append("task-spooler not installed: P3 peer skipped (apt-get install task-spooler)")
        for c in (1, 2):
            self.p3_at(c)

    def p3_at(self, c: int) -> None:
        s = self.sizes
        n = s.p3_jobs
        self.say(f"P3: {s.p3_reps} repetitions of {n} jobs at concurrency {c}")
        res: dict[str, list[float]] = collections.defaultdict(list)

        def taskq_side() -> None:
            span_rate, wall_rate = self.p3_taskq(n, c)
            res["taskq"].append(span_rate)
            res["taskq_wall"].append(wall_rate)

        def tsp_side() -> None:
            res["tsp"].append(self.p3_tsp(n, c))

        def raw_side() -> None:
            res["raw"].append(self.p3_raw(n, c))

        def durable_side() -> None:
            res["durable"].append(self.p3_durable(n, c))

        sides = [taskq_side, tsp_side, raw_side, durable_side] if self.tsp else [taskq_side, raw_side, durable_side]
        for rep in range(s.p3_reps):
            for side in rotated(sides, rep):
                side()
        t = med(res["taskq"])
        numbers = dict(res)
        what = (f"drain {n:,} `true`, `taskq work --burst -c {c}` (jobs/s, first start → last end, "
                f"median of {s.p3_reps})")
        if self.tsp:
            peer = med(res["tsp"])
            r = paired_ratio(res["taskq"], res["tsp"])
            self.rows.append(Row("P3", what, fmt_rate(t), f"task-spooler `tsp -S {c}`: {fmt_rate(peer)}",
                                 r, "> 1.0× (ahead of tsp)", "met" if r > 1.0 else "MISS", numbers))
        else:  # the target row stays in the table, so that a missing peer is seen
            self.rows.append(Row("P3", what, fmt_rate(t), "task-spooler not installed", None,
                                 "> 1.0× (ahead of tsp)", "not measured", numbers))
        what = "〃"
        raw, durable = med(res["raw"]), med(res["durable"])
        self.rows.append(Row("P3", what, fmt_rate(t), f"subprocess loop, {c} at a time: {fmt_rate(raw)}",
                             paired_ratio(res["taskq"], res["raw"]), numbers=numbers))
        self.rows.append(Row("P3", "〃", fmt_rate(t), f"durable floor (loop + renames + record fsync), {c} at a time: "
                             f"{fmt_rate(durable)}", paired_ratio(res["taskq"], res["durable"]), numbers=numbers))
        self.rows.append(Row("P3", f"〃 whole `taskq work -c {c}` process, incl. start-up and exit (jobs/s)",
                             fmt_rate(med(res["taskq_wall"])), numbers=numbers))

    # ====================================================================================
    # P4: per-job drain cost vs queue depth
    # ====================================================================================

    def p4(self) -> None:
        s = self.sizes
        self.say(f"P4: filling {s.p4_deep:,} and {s.p4_shallow:,} pending jobs (fsync off for the fill only)")
        spools = {"deep": (self.path("p4-deep"), s.p4_deep), "shallow": (self.path("p4-shallow"), s.p4_shallow)}
        for spool, depth in spools.values():
            self.fill(spool, depth, durable=False)
        per_job: dict[str, list[float]] = {"deep": [], "shallow": []}
        self.say(f"P4: {s.p4_reps} repetitions of {s.p4_run} jobs from each")

        def side(which: str) -> None:
            spool, depth = spools[which]
            missing = depth - count_entries(os.path.join(spool, "pending"))
            if missing > 0:  # back to the same depth at every repetition (not timed)
                self.fill(spool, missing, durable=False)
            before = count_entries(os.path.join(spool, "done"))
            wall, _ = self.run([self.taskq_bin, "work", "--spool", spool, "--burst", "--max-jobs", str(s.p4_run)],
                               self.taskq_env(spool), stderr_file=self.log_path("p4-work"))
            ran = count_entries(os.path.join(spool, "done")) - before
            if ran != s.p4_run:
                raise BenchError(f"P4 {which}: {ran} jobs done, expected {s.p4_run}")
            per_job[which].append(wall / s.p4_run * 1000)

        for rep in range(s.p4_reps):
            for which in rotated(["shallow", "deep"], rep):
                side(which)
        deep, shallow = med(per_job["deep"]), med(per_job["shallow"])
        ratio = paired_ratio(per_job["deep"], per_job["shallow"])
        self.rows.append(Row("P4", f"per-job drain cost, {s.p4_run} jobs (`--max-jobs`) from {s.p4_deep:,} vs "
                                   f"{s.p4_shallow:,} pending (ms/job, median of {s.p4_reps})",
                             f"{deep:.2f} vs {shallow:.2f}", "—", ratio, "≤ 1.3×", verdict(ratio, 1.3, False),
                             {"per_job_ms": per_job}))

    # ====================================================================================
    # P5: status cost of a full spool
    # ====================================================================================

    def p5_templates(self) -> dict[str, dict[str, Any]]:
        """A real done record and a real failed record, made by the installed taskq,
        to clone: the full spool then holds records as taskq writes them."""
        spool = self.path("p5-template")
        import taskq

        api = taskq.Spool(spool)
        api.add(["true"])
        api.add(["false"], max_attempts=1)
        self.run([self.taskq_bin, "work", "--spool", spool, "--burst"], self.taskq_env(spool),
                 stderr_file=self.log_path("p5-work"))
        out = {}
        for state in ("done", "failed"):
            names = [n for n in os.listdir(os.path.join(spool, state)) if n.endswith(".json")]
            if len(names) != 1:
                raise BenchError(f"P5 template: {len(names)} files in {state}/")
            with open(os.path.join(spool, state, names[0])) as fh:
                out[state] = json.load(fh)
        shutil.rmtree(spool)
        return out

    def p5(self) -> None:
        s = self.sizes
        n = s.p5_jobs
        counts = {st: int(n * share) for st, share in P5_SPLIT.items()}
        counts["done"] += n - sum(counts.values())
        self.say(f"P5: a spool of {n:,} jobs ({', '.join(f'{v:,} {k}' for k, v in counts.items())})")
        templates = self.p5_templates()
        full = self.path("p5-full")
        self.fill(full, counts["pending"], durable=False)
        now_ms = int(time.time() * 1000)
        for state in ("done", "failed"):
            for i in range(counts[state]):
                job_id = ulid_like(now_ms - (counts[state] - i) * 10)
                rec = {**templates[state], "id": job_id}
                with open(os.path.join(full, state, job_id + ".json"), "w") as fh:
                    json.dump(rec, fh)
        # An empty spool, made by taskq itself (`work` creates a missing spool).
        empty = self.path("p5-empty")
        self.run([self.taskq_bin, "work", "--spool", empty, "--burst"], self.taskq_env(empty),
                 stderr_file=self.log_path("p5-work"))

        def status(spool: str) -> float:
            elapsed, out = self.run([self.taskq_bin, "status", "--json", "--spool", spool], self.taskq_env(spool))
            got = json.loads(out)["counts"]
            want = counts if spool == full else dict.fromkeys(P5_SPLIT, 0)
            if any(got.get(k) != v for k, v in want.items()):
                raise BenchError(f"P5: status counted {got}, expected {want}")
            return elapsed * 1000

        def scandir(spool: str) -> float:
            start = time.perf_counter()
            for st in ("pending", "running", "done", "failed"):
                with os.scandir(os.path.join(spool, st)) as it:
                    names = [e.name for e in it]
                del names
            return (time.perf_counter() - start) * 1000

        t: dict[str, list[float]] = collections.defaultdict(list)
        cases: list[tuple[str, Callable[[], float]]] = [
            ("status_full", lambda: status(full)), ("status_empty", lambda: status(empty)),
            ("scandir_full", lambda: scandir(full)), ("scandir_empty", lambda: scandir(empty)),
        ]
        for rep in range(1 + s.p5_reps):  # one warm-up round: caches and bytecode
            for name, fn in rotated(cases, rep):
                ms = fn()
                if rep:
                    t[name].append(ms)
        # Each repetition runs the full and the empty spool back to back: the median of
        # those differences is far steadier than a difference of medians, whose two
        # terms each carry the interpreter's start-up jitter (tens of ms under load).
        tq = paired_diff(t["status_full"], t["status_empty"])
        fl = paired_diff(t["scandir_full"], t["scandir_empty"])
        ratio = tq / fl if fl > 0 else None
        self.rows.append(Row(
            "P5", f"`taskq status --json` marginal cost of {n:,} jobs (ms, full − empty: median of {s.p5_reps} "
                   "paired differences; each side's median in parentheses)",
            f"{tq:.1f} ({med(t['status_full']):.1f} − {med(t['status_empty']):.1f})",
            f"os.scandir of the 4 state dirs: {fl:.1f} ({med(t['scandir_full']):.1f} − {med(t['scandir_empty']):.2f})",
            ratio, "≤ 1.5×", verdict(ratio, 1.5, False), {"ms": dict(t), "split": counts}))

    # ====================================================================================
    # P6: pick-up latency and idle CPU
    # ====================================================================================

    def start_worker(self, spool: str, *extra: str) -> subprocess.Popen[bytes]:
        err = open(self.log_path("worker"), "ab")  # the child has its own copy
        try:
            proc = subprocess.Popen([self.taskq_bin, "work", "--spool", spool, *extra], env=self.taskq_env(spool),
                                    cwd=self.work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        finally:
            err.close()
        self.procs.append(proc)
        return proc

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.procs.remove(proc)

    def wait_for(self, path: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if proc.poll() is not None:
                raise BenchError(f"the worker exited {proc.returncode} (see {self.log_path('worker')})")
            if time.monotonic() > deadline:
                raise BenchError(f"{path} did not appear within {timeout:.0f} s")
            time.sleep(0.002)

    def p6(self) -> None:
        import taskq

        s = self.sizes
        spool = self.path("p6-spool")
        api = taskq.Spool(spool)
        warm = api.add(["true"])
        worker = self.start_worker(spool)
        self.wait_for(os.path.join(spool, "done", warm.id + ".json"), 30, worker)
        self.say(f"P6: {s.p6_samples} adds to an idle worker, then {s.p6_idle:.0f} s of idle CPU")
        after_return, after_start = [], []
        env = self.taskq_env(spool)
        # The job is `date +%s.%N` run without a shell: the first thing it does is read
        # the clock, and its output lands in the job's log. Its own start (exec, dynamic
        # linking, ~1 ms) is counted in the latency.
        for _ in range(s.p6_samples):
            time.sleep(0.2)  # the worker is back asleep in select() before each add
            t_start = time.time()
            _, out = self.run([self.taskq_bin, "add", "--spool", spool, "--", "date", "+%s.%N"], env)
            t_return = time.time()
            job_id = out.strip()
            self.wait_for(os.path.join(spool, "done", job_id + ".json"), 30, worker)
            with open(os.path.join(spool, "logs", job_id + ".log")) as fh:
                lines = [ln for ln in fh.read().splitlines() if ln and not ln.startswith("===")]
            t_job = float(lines[-1])
            after_return.append((t_job - t_return) * 1000)
            after_start.append((t_job - t_start) * 1000)
        time.sleep(1.0)
        tck = os.sysconf("SC_CLK_TCK")
        before = proc_stat_ticks(worker.pid)
        time.sleep(s.p6_idle)
        ticks = proc_stat_ticks(worker.pid) - before
        alive = worker.poll() is None
        self.stop_worker(worker)
        if not alive:
            raise BenchError("P6: the worker exited while idle")
        lat = med(after_return)
        early = sum(1 for x in after_return if x < 0)
        self.rows.append(Row("P6", f"pick-up latency: `taskq add` returning → job process started (ms, median of "
                                   f"{s.p6_samples}; < 0 = before add returned)",
                             f"{lat:+.1f} ({early}/{len(after_return)} before; from add start {med(after_start):.1f})",
                             "—", None, "job starts before add returns (< 0)", "met" if lat < 0 else "MISS",
                             {"after_return_ms": after_return, "after_start_ms": after_start}))
        cpu = ticks / tck / s.p6_idle * 100
        # One clock tick over the window is the resolution of /proc: call that ≈ 0.
        self.rows.append(Row("P6", f"idle CPU of a waiting `taskq work` over {s.p6_idle:.0f} s (/proc utime+stime)",
                             f"{cpu:.2f} % ({ticks} ticks of 1/{tck} s)", "—", None, "≈ 0 %",
                             "met" if ticks <= 1 else "MISS", {"ticks": ticks, "clk_tck": tck}))

    # ====================================================================================
    # P7: worker memory after many jobs
    # ====================================================================================

    def p7(self) -> None:
        import taskq

        s = self.sizes
        spool = self.path("p7-spool")
        api = taskq.Spool(spool)
        pending_dir, done_dir = os.path.join(spool, "pending"), os.path.join(spool, "done")
        api.add_batch([{"command": ["true"]} for _ in range(s.p7_depth)])
        fed = s.p7_depth
        self.say(f"P7: one `taskq work -c 2` fed at depth ~{s.p7_depth} until {s.p7_big:,} jobs are done")
        worker = self.start_worker(spool, "-c", "2")
        rss: dict[int, int] = {}
        peak = 0
        last_done, last_change = 0, time.monotonic()
        while True:
            pending = count_entries(pending_dir)
            # Keep the queue about as deep as at the start, until enough is fed.
            if pending < s.p7_depth // 2 and fed < s.p7_big + s.p7_depth:
                n = s.p7_depth - pending
                api.add_batch([{"command": ["true"]} for _ in range(n)])
                fed += n
            done = count_entries(done_dir)
            kib = vm_rss_kib(worker.pid)
            peak = max(peak, kib)
            for mark in (s.p7_small, s.p7_big):
                if done >= mark and mark not in rss:
                    rss[mark] = kib
            if s.p7_big in rss:
                break
            if worker.poll() is not None:
                raise BenchError(f"P7: the worker exited {worker.returncode}")
            if done != last_done:
                last_done, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > 60:
                raise BenchError(f"P7: no job done for 60 s (at {done})")
            time.sleep(0.02)
        self.stop_worker(worker)
        small, big = rss[s.p7_small] / 1024, rss[s.p7_big] / 1024
        ratio = big / small
        self.rows.append(Row("P7", f"worker VmRSS after {s.p7_big:,} vs after {s.p7_small:,} jobs, queue depth "
                                   f"~{s.p7_depth} (MiB; `work -c 2`)",
                             f"{big:.1f} vs {small:.1f} (peak {peak / 1024:.1f})", "—", ratio, "≤ 1.2×",
                             verdict(ratio, 1.2, False), {"rss_kib": rss, "peak_kib": peak}))

    # ====================================================================================
    # E: add --each vs add --batch
    # ====================================================================================

    def e(self) -> None:
        s = self.sizes
        _, helptext = self.run([self.taskq_bin, "add", "--help"], self.clean_env)
        if "--each" not in helptext:
            self.notes.append("`taskq add --each` not available (not in `taskq add --help`): row E skipped")
            self.rows.append(Row("E", "`taskq add --each FILE -- true {}` vs `--batch FILE`",
                                 "skipped: no `--each` yet", "—", None, "≥ 0.8×", ""))
            return
        n = s.e_jobs
        lines = os.path.join(self.top, "e-lines.txt")
        batch = os.path.join(self.top, "e-batch.jsonl")
        with open(lines, "w") as fh:
            fh.writelines(f"item-{i}\n" for i in range(n))
        with open(batch, "w") as fh:
            fh.writelines(json.dumps({"command": ["true", f"item-{i}"]}) + "\n" for i in range(n))
        self.say(f"E: {s.e_reps} repetitions of {n} jobs, --each vs --batch")
        rates: dict[str, list[float]] = {"each": [], "batch": []}

        def side(kind: str) -> None:
            spool = self.path(f"e-{kind}")
            opts = ["--each", lines, "--", "true", "{}"] if kind == "each" else ["--batch", batch]
            wall, _ = self.run([self.taskq_bin, "add", "--spool", spool, *opts], self.taskq_env(spool))
            got = count_entries(os.path.join(spool, "pending"))
            if got != n:
                raise BenchError(f"E: `add {opts[0]}` left {got} jobs in pending/, expected {n}")
            rates[kind].append(n / wall)
            shutil.rmtree(spool)

        for rep in range(s.e_reps):
            for kind in rotated(["each", "batch"], rep):
                side(kind)
        each, bat = med(rates["each"]), med(rates["batch"])
        ratio = paired_ratio(rates["each"], rates["batch"])
        self.rows.append(Row("E", f"`taskq add --each FILE -- true {{}}`, {n:,} jobs (jobs/s, median of {s.e_reps})",
                             fmt_rate(each), f"`taskq add --batch FILE`: {fmt_rate(bat)}", ratio, "≥ 0.8×",
                             verdict(ratio, 0.8, True), {"rates": rates}))


# -- the machine ----------------------------------------------------------------------------


def fsync_cost_ms(where: str, n: int = 50) -> float:
    """Median of write + fsync + rename + directory fsync on *where*: tells a disk that
    honours fsync from one that does not (tmpfs, a write-back cache)."""
    root = tempfile.mkdtemp(prefix="taskq-bench-fsync.", dir=where)
    try:
        xs = []
        for i in range(n):
            start = time.perf_counter()
            staged = os.path.join(root, f"{i}.tmp")
            write_durable(staged, b"x" * 400)
            os.rename(staged, os.path.join(root, f"{i}.json"))
            fsync_dir(root)
            xs.append((time.perf_counter() - start) * 1000)
        return med(xs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def machine(bench: Bench) -> dict[str, Any]:
    import typer

    import taskq

    where = bench.args.dir or tempfile.gettempdir()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kib = int(next(ln for ln in fh if ln.startswith("MemTotal")).split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    mount = command_output(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", where]) if shutil.which(
        "findmnt") else ""
    # "Task Spooler v1.0.1 - a task queue system for the unix user." -> its first part
    tsp_version = command_output([bench.tsp, "-V"], bench.probe_env).split(" - ")[0] if bench.tsp else "not installed"
    nq_version = (command_output(["dpkg-query", "-W", "-f", "${Version}", "nq"]) or "installed") if bench.nq \
        else "not installed"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu}",
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "bench_dir": where,
        "fs_type": command_output(["stat", "-f", "-c", "%T", where]),
        "mount": mount,
        "fsync_ms": round(fsync_cost_ms(where), 3),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "taskq": f"{taskq.__version__} ({os.path.dirname(taskq.__file__ or '')}; {bench.taskq_bin})",
        "typer": typer.__version__,
        "task_spooler": f"{tsp_version} ({bench.tsp})" if bench.tsp else tsp_version,
        "nq": f"{nq_version} ({bench.nq})" if bench.nq else nq_version,
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def markdown(rows: list[Row]) -> Iterator[str]:
    yield "| id | measure | taskq | floor / peer (same run) | ratio | target | verdict |"
    yield "|---|---|---|---|---|---|---|"
    for r in rows:
        yield f"| {r.id} | {r.measure} | {r.taskq} | {r.other} | {fmt_ratio(r.ratio)} | {r.target} | {r.verdict} |"


def install_peers() -> None:
    argv = ["apt-get", "install", "-y", "task-spooler", "nq"]
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            sys.exit("bench_all: --install-peers needs root or sudo for apt-get")
        argv = ["sudo", *argv]
    print(f"bench_all: {' '.join(argv)}", file=sys.stderr)
    subprocess.run(argv, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer jobs and repetitions: a smoke run of about a minute")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"rows to run, comma-separated (default {','.join(ROWS)})")
    ap.add_argument("--dir", default=None, help="where the temporary spools go (default: tempfile's default dir); "
                                                "its filesystem decides what an fsync costs")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the numbers to FILE")
    ap.add_argument("--install-peers", action="store_true", help="apt-get install task-spooler nq first")
    args = ap.parse_args()
    wanted = [r.strip().upper() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROWS]
    if unknown or not wanted:
        ap.error(f"unknown row(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(ROWS)}")
    try:
        import typer  # noqa: F401 - the P1 floor needs it, in this interpreter

        import taskq  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench_all: {exc}: run with the interpreter taskq and typer are installed in")
    if args.install_peers:
        install_peers()

    # A SIGTERM (a CI timeout, `kill`) must still stop the private tsp servers and
    # workers and remove the temp dir: make it unwind through the finally below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    bench = Bench(args, QUICK if args.quick else FULL)
    started = time.monotonic()
    old_cwd = os.getcwd()
    os.chdir(bench.work)  # API calls default the job's cwd to here: keep it in the temp dir
    try:
        info = machine(bench)
        for row_id in ROWS:
            if row_id not in wanted:
                continue
            t0 = time.monotonic()
            try:
                getattr(bench, row_id.lower())()
            except (BenchError, subprocess.SubprocessError, OSError) as exc:
                bench.errors.append(f"{row_id}: not measured: {exc}")
                bench.say(f"{row_id}: FAILED: {exc}")
            bench.say(f"{row_id}: {time.monotonic() - t0:.0f} s")
        info["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        os.chdir(old_cwd)
        bench.cleanup()
    info["duration_s"] = round(time.monotonic() - started)
    info["mode"] = "quick" if args.quick else "full"

    print(f"# taskq bench_all ({info['mode']}), {info['date']}")
    print()
    for key in ("cpu", "memory", "kernel", "bench_dir", "fs_type", "mount", "fsync_ms", "python", "taskq", "typer",
                "task_spooler", "nq", "loadavg_start", "loadavg_end", "duration_s"):
        value = info.get(key, "")
        if key == "fs_type" and value == "tmpfs":
            value += " (fsync costs nothing here: durable writes look free)"
        if key == "fsync_ms":
            key, value = "fsync", f"{value} ms median for write + fsync + rename + dir fsync"
        print(f"- {key}: {value}")
    print()
    for line in markdown(bench.rows):
        print(line)
    print()
    print("The taskq and floor / peer columns are each side's median; the ratio is the median of the "
          "per-repetition ratios (P5: of the differences), each between sides run back to back.")
    if bench.notes or bench.errors:
        print()
        for line in bench.notes + bench.errors:
            print(f"- {line}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "rows": [asdict(r) for r in bench.rows], "notes": bench.notes,
                       "errors": bench.errors}, fh, indent=1, default=str)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
