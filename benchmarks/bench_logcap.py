#!/usr/bin/env python3
"""How much ``log_max`` slows a job that writes as fast as it can.

The job ``yes | head -c SIZE`` times itself (``date`` before and after) and runs under
``taskq work --burst``, its output going straight into the log file (``log_max = 0``)
or through the worker's pipe with the cap (``log_max = CAP``), the two alternating in
every repetition. Prints both medians and the median of the per-repetition ratios
(capped / direct)::

    python benchmarks/bench_logcap.py                      # 200M, cap 16MiB, 10 repetitions
    python benchmarks/bench_logcap.py --size 1G --cap 1MiB --reps 5 --dir /var/tmp

Standard library only; takes the ``taskq`` console script from beside sys.executable.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile


def run_once(taskq: str, root: str, name: str, size: str, log_max: str) -> int:
    """Milliseconds the job took, as it measured itself."""
    spool = os.path.join(root, name)
    os.makedirs(spool)
    with open(os.path.join(spool, "taskq.toml"), "w") as fh:
        fh.write(f'fsync = false\n[defaults]\nlog_max = "{log_max}"\n')
    env = dict(os.environ, TASKQ_SPOOL=spool)
    job = ("s=$(date +%s%N); yes | head -c " + size
           + '; e=$(date +%s%N); echo "ELAPSED $(( (e - s) / 1000000 ))"')
    job_id = subprocess.run([taskq, "add", "--", "sh", "-c", job], env=env, check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run([taskq, "work", "--burst"], env=env, check=True, capture_output=True)
    log = subprocess.run([taskq, "logs", job_id], env=env, check=True, capture_output=True).stdout
    shutil.rmtree(spool)
    return int(re.findall(rb"ELAPSED (\d+)", log)[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="200M", help="output of the job (head -c)")
    ap.add_argument("--cap", default="16MiB", help="log_max of the capped side")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--dir", default=None, help="where the spools go (default: the temp dir)")
    args = ap.parse_args()
    taskq = os.path.join(os.path.dirname(sys.executable), "taskq")
    root = tempfile.mkdtemp(prefix="bench-logcap-", dir=args.dir)
    times: dict[str, list[int]] = {"0": [], args.cap: []}
    try:
        for rep in range(args.reps):
            for log_max in ("0", args.cap) if rep % 2 == 0 else (args.cap, "0"):
                times[log_max].append(run_once(taskq, root, f"{rep}-{log_max}", args.size, log_max))
            print(f"repetition {rep + 1}/{args.reps}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    direct, capped = times["0"], times[args.cap]
    print(f"yes | head -c {args.size}: direct to the log (log_max 0) median {statistics.median(direct)} ms; "
          f"through the pipe (log_max {args.cap}) median {statistics.median(capped)} ms; "
          f"ratio {statistics.median(c / d for d, c in zip(direct, capped, strict=True)):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
