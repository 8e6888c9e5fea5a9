"""The worker's durability window (README, "Durability and speed").

The worker does not fsync directories for its own steps (claim, start, settle):
a power cut may undo the latest of them, and the job then runs again. A SIGKILL is
not a power cut: everything the worker wrote is in the page cache, so a job that a
worker had settled (its file in done/) must never run again after the worker is
killed. Power cuts themselves are tested on LazyFS (test_powercut.py); fsync
failures by fault injection (tests/test_faults_injected.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from workerutil import wait_for


def test_a_sigkilled_burst_never_runs_a_settled_job_again(taskq, spool, tmp_path):
    runlog = tmp_path / "runs.log"
    script = tmp_path / "job.sh"
    # One O_APPEND write per run: the line says which job ran.
    script.write_text('printf "%s\\n" "$TASKQ_JOB_ID" >> "$1"\n')
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"command": ["sh", "{script}", "{runlog}"]}}\n' for _ in range(400)))
    spool.mkdir()
    (spool / "taskq.toml").write_text("[defaults]\nbackoff = 0\nmax_attempts = 50\n")
    ids = set(taskq("add", "--batch", str(jobs), check=True).stdout.split())
    assert len(ids) == 400
    rng = random.Random()
    snapshots: list[tuple[set[str], int]] = []  # (ids in done/, run-log lines) at each kill
    for _ in range(8):
        worker = taskq.popen("work", "--burst", "-c", "2", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 1.5))  # start-up takes a few tenths
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        # The killed worker's last job may still be writing its line: let it end, so
        # that every line written before this point is counted.
        time.sleep(0.1)
        done = {name[:-5] for name in os.listdir(spool / "done") if name.endswith(".json")}
        lines = len(_lines(runlog))
        snapshots.append((done, lines))
    # Drain what is left (recovery returns what the killed workers held).
    wait_for(lambda: _drained(taskq, spool), timeout=120, interval=0.5,
             message="the spool to drain")
    runs = _lines(runlog)
    assert set(runs) == ids, "a job never ran"
    for done, seen in snapshots:
        again = done & set(runs[seen:])
        assert not again, f"settled jobs ran again after a SIGKILL: {sorted(again)[:5]}"
    assert {name[:-5] for name in os.listdir(spool / "done") if name.endswith(".json")} == ids
    assert snapshots[-1][0], "no job was settled before the last kill: the test proved nothing"


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _drained(taskq: Any, spool: Path) -> bool:
    taskq("work", "--burst", "-c", "2", timeout=120)
    return not any(name.endswith(".json") for state in ("pending", "running")
                   for name in os.listdir(spool / state))
