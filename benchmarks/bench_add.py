"""Start-up latency of ``taskq add``, against floors measured in the same run.

A cron line or a shell loop pays taskq's start-up on every job, so ``taskq add`` must
start about as fast as the smallest CLI that does the same durable write. Absolute
times depend on the machine and the filesystem; the ratios to the floors do not (much).

Measured, each as a fresh process, N times (interleaved, after warm-up runs):

  python -S -c pass     the interpreter alone
  argparse floor        one argparse command doing one durable write
                        (write into tmp/, fsync, rename into pending/, fsync the dir)
  typer floor           the same command and write as a minimal typer app
  taskq add             ``taskq add --spool S -- true`` on an empty spool
  taskq add --unique-key  a fresh key per run, on a spool of 1000 pending jobs
  taskq status --json   on a spool of 1000 pending jobs

Then the ten imports of ``taskq add`` with the largest cumulative time
(``python -X importtime``), and a check that neither rich nor filelock is imported
by ``taskq add`` (exit status 1 if one is).

Run with the interpreter taskq is installed in::

    python benchmarks/bench_add.py [--runs 30] [--dir DIR]

Uses only the standard library, taskq and typer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

PREFILL = 1000
WARMUP = 3

# The floors do the same durable write as `taskq add`, so what they add over
# `python -S -c pass` is the cost of the argument parser and a minimal job.
_WRITE = '''
import json, os

def durable_write(spool, command):
    tmp, pending = os.path.join(spool, "tmp"), os.path.join(spool, "pending")
    for d in (spool, tmp, pending):
        os.makedirs(d, mode=0o700, exist_ok=True)
    name = os.urandom(8).hex()
    staged = os.path.join(tmp, name + ".tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, json.dumps({"command": command}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(staged, os.path.join(pending, name + ".json"))
    dfd = os.open(pending, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    print(name)
'''

ARGPARSE_APP = _WRITE + '''
import argparse

parser = argparse.ArgumentParser(prog="floor")
sub = parser.add_subparsers(dest="cmd", required=True)
add = sub.add_parser("add")
add.add_argument("--spool", required=True)
add.add_argument("command", nargs=argparse.REMAINDER)
args = parser.parse_args()
durable_write(args.spool, [a for a in args.command if a != "--"] or ["true"])
'''

TYPER_APP = _WRITE + '''
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def root() -> None:
    """Floor."""


@app.command(context_settings={"allow_interspersed_args": False})
def add(command: Optional[List[str]] = typer.Argument(None),
        spool: str = typer.Option(..., "--spool")) -> None:
    durable_write(spool, list(command or ["true"]))


app()
'''


@dataclass
class Case:
    name: str
    argv: Callable[[int], list[str]]  # run number -> argv
    samples: list[float]


def find_taskq() -> str:
    """The console script installed beside this interpreter, else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "taskq")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("taskq")
    if not found:
        sys.exit("bench_add: no taskq console script beside sys.executable or on PATH")
    return found


def run_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_add: {' '.join(argv)} exited {proc.returncode}:\n"
                 f"{proc.stderr.decode(errors='replace')}")
    return elapsed


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10, method="inclusive")[8]


def prefill(path: str) -> None:
    """A spool of PREFILL pending jobs: three in four ready, one in four scheduled."""
    import taskq

    records = [{"command": ["true"], "name": f"prefill-{i}", **({"delay": 3600} if i % 4 == 3 else {})}
               for i in range(PREFILL)]
    taskq.Spool(path).add_batch(records)


def import_report(taskq_spool: str, env: dict[str, str]) -> tuple[list[tuple[int, int, str]], set[str]]:
    """(cumulative us, self us, module) of each import of `taskq add`, and top-level names."""
    code = (f"import sys; sys.argv=['taskq','add','--spool',{taskq_spool!r},'--','true']; "
            "from taskq.cli import main; main()")
    argv = [sys.executable, "-X", "importtime", "-c", code]
    for _ in range(2):  # the first run may write bytecode caches
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_add: -X importtime run exited {proc.returncode}:\n{proc.stderr}")
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = (part.strip() for part in line[len("import time:"):].split("|", 2))
        rows.append((int(cum_us), int(self_us), name))
    tops = {name.split(".")[0] for _, _, name in rows}
    return rows, tops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="measured runs per case (default 30)")
    parser.add_argument("--dir", default=None,
                        help="where the temporary spools go (default: the system temp dir; "
                             "fsync costs depend on its filesystem)")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    try:
        import typer

        import taskq
    except ImportError as exc:
        sys.exit(f"bench_add: {exc}: run with the interpreter taskq and typer are installed in")

    taskq_bin = find_taskq()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    env["NO_COLOR"] = "1"

    with tempfile.TemporaryDirectory(prefix="taskq-bench.", dir=args.dir) as top:
        floor_argparse = os.path.join(top, "floor_argparse.py")
        floor_typer = os.path.join(top, "floor_typer.py")
        with open(floor_argparse, "w") as fh:
            fh.write(ARGPARSE_APP)
        with open(floor_typer, "w") as fh:
            fh.write(TYPER_APP)
        spool = lambda name: os.path.join(top, name)  # noqa: E731
        prefill(spool("filled-status"))
        prefill(spool("filled-unique"))

        py = sys.executable
        cases = [
            Case("python -S -c pass", lambda i: [py, "-S", "-c", "pass"], []),
            Case("argparse floor (1 durable write)",
                 lambda i: [py, floor_argparse, "add", "--spool", spool("argparse"), "--", "true"], []),
            Case("typer floor (1 durable write)",
                 lambda i: [py, floor_typer, "add", "--spool", spool("typer"), "--", "true"], []),
            Case("taskq add",
                 lambda i: [taskq_bin, "add", "--spool", spool("add"), "--", "true"], []),
            Case(f"taskq add --unique-key ({PREFILL} pending)",
                 lambda i: [taskq_bin, "add", "--spool", spool("filled-unique"), "--unique-key", f"K{i}",
                            "--", "true"], []),
            Case(f"taskq status --json ({PREFILL} pending)",
                 lambda i: [taskq_bin, "status", "--json", "--spool", spool("filled-status")], []),
        ]
        # Interleave the cases so that drift in machine load hits them all alike.
        for i in range(WARMUP + args.runs):
            for case in cases:
                elapsed = run_once(case.argv(i), env)
                if i >= WARMUP:
                    case.samples.append(elapsed)

        rows, tops = import_report(spool("importtime"), env)

    print(f"python   {sys.version.split()[0]} ({sys.executable})")
    print(f"taskq    {taskq.__version__} ({taskq_bin})")
    print(f"typer    {typer.__version__}")
    print(f"spools   {args.dir or tempfile.gettempdir()}")
    print(f"runs     {args.runs} per case, after {WARMUP} warm-up runs, interleaved")
    print()
    floor_a = statistics.median(cases[1].samples)
    floor_t = statistics.median(cases[2].samples)
    width = max(len(c.name) for c in cases)
    print(f"{'case':<{width}}  {'median ms':>9}  {'p90 ms':>7}  {'x argparse':>10}  {'x typer':>7}")
    for case in cases:
        med = statistics.median(case.samples)
        print(f"{case.name:<{width}}  {med * 1000:9.1f}  {p90(case.samples) * 1000:7.1f}"
              f"  {med / floor_a:10.2f}  {med / floor_t:7.2f}")

    print()
    print(f"taskq add: {len(rows)} modules imported; top 10 by cumulative time (python -X importtime):")
    print(f"  {'cumulative us':>13}  {'self us':>8}  module")
    for cum, self_us, name in sorted(rows, reverse=True)[:10]:
        print(f"  {cum:>13}  {self_us:>8}  {name}")

    print()
    heavy = [m for m in ("rich", "filelock") if m in tops]
    for module in ("rich", "filelock"):
        print(f"{module} imported by taskq add: {'YES (it must not be)' if module in tops else 'no'}")
    return 1 if heavy else 0


if __name__ == "__main__":
    sys.exit(main())
