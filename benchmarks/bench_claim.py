"""Claim cost against queue depth: a worker must not slow down with a deep pending/.

Fills one spool with a shallow queue and one with a deep queue (default 50,000 jobs),
then times `taskq work --burst --max-jobs N` on each, and prints the per-job time of
each and their ratio (the floor is the shallow queue, measured in the same run). A
ratio near 1 means claiming stays O(log n); a full re-listing per claim would make the
deep queue several times slower.

    python benchmarks/bench_claim.py [--deep 50000] [--jobs 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def taskq_exe() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "taskq")
    return here if os.path.exists(here) else (shutil.which("taskq") or "taskq")


def fill(path: str, count: int) -> float:
    import taskq

    spool = taskq.Spool(path)
    # Speed of filling is not what is measured here.
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "taskq.toml"), "w") as fh:
        fh.write("fsync = false\n")
    start = time.perf_counter()
    left = count
    while left:
        n = min(left, 2000)
        spool.add_batch([{"command": ["true"]} for _ in range(n)])
        left -= n
    return time.perf_counter() - start


def drain(path: str, jobs: int) -> float:
    start = time.perf_counter()
    subprocess.run([taskq_exe(), "work", "--spool", path, "--burst", "--max-jobs", str(jobs)],
                   check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deep", type=int, default=50_000)
    ap.add_argument("--shallow", type=int, default=None, help="default: --jobs")
    ap.add_argument("--jobs", type=int, default=300, help="jobs run on each spool")
    args = ap.parse_args()
    shallow = args.shallow or args.jobs
    with tempfile.TemporaryDirectory(prefix="taskq-bench-") as tmp:
        small, big = os.path.join(tmp, "shallow"), os.path.join(tmp, "deep")
        fill(small, shallow)
        t_fill = fill(big, args.deep)
        print(f"filled {args.deep} jobs in {t_fill:.1f}s (fsync off)")
        t_small = drain(small, args.jobs)
        t_big = drain(big, args.jobs)
    per_small = t_small / args.jobs * 1000
    per_big = t_big / args.jobs * 1000
    print(f"{'queue depth':>12} {'jobs run':>9} {'ms/job':>8}")
    print(f"{shallow:>12} {args.jobs:>9} {per_small:>8.2f}   (floor)")
    print(f"{args.deep:>12} {args.jobs:>9} {per_big:>8.2f}   ratio {per_big / per_small:.2f}")


if __name__ == "__main__":
    main()
