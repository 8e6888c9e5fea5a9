"""The progress bar of ``retry --all``, ``purge`` and ``add --batch``/``--each``: drawn on
stderr when it is a terminal and the operation has many jobs (README, "taskq retry":
50 or more), never when stderr is piped, and never changing what goes to stdout.

The installed ``taskq`` runs with stderr on a real pseudo-terminal (as in
tests/test_render_markup.py) and stdout on a pipe, so both streams are seen apart.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import taskq
from taskq import times
from taskq.job import Outcome
from taskq.spool.layout import parse_pending_name
from workerutil import files as ls

MANY = 60  # above the threshold of 50
FEW = 10
TIMEOUT = 60.0
BAR = "━"  # what rich draws a bar with
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def on_terminal(argv: list[str], env: dict[str, str], stdin: bytes | None = None,
                stdout_too: bool = False) -> tuple[int, str, str]:
    """Run *argv* with stderr on a pseudo-terminal (stdout too if *stdout_too*, else a
    pipe). Returns (status, stdout, what the terminal showed)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=slave if stdout_too else subprocess.PIPE, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"{argv} did not finish in {TIMEOUT}s")
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    out = proc.stdout.read().decode() if proc.stdout is not None else ""
    status = proc.wait(timeout=TIMEOUT)
    return status, out, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def env(taskq) -> dict[str, str]:
    return taskq.env(env={"TERM": "xterm", "COLUMNS": "120", "LINES": "50"})


@pytest.fixture
def api(spool: Path) -> taskq.Spool:
    return taskq.Spool(spool)


def batch(n: int) -> str:
    return "".join(json.dumps({"command": ["echo", str(i)]}) + "\n" for i in range(n))


def settled(api: taskq.Spool, n: int, outcome: Outcome) -> list[str]:
    """*n* jobs of one attempt, settled with *outcome* as a worker would; their ids."""
    ids = [job.id for job in api.add_batch([{"command": ["true"], "max_attempts": 1}] * n)]
    for name in ls(Path(api.path), "pending"):
        entry = parse_pending_name(name)
        assert entry is not None
        claimed = api.transitions.claim(entry)
        assert claimed is not None
        api.transitions.start(claimed, times.now())
        api.transitions.settle(claimed, outcome, times.now(), 0.5)
    return sorted(ids)


def assert_bar(shown: str, description: str, total: int) -> None:
    assert BAR in shown, shown
    assert description in shown, shown
    assert f"{total}/{total}" in shown, shown  # the last frame: every job handled


# -- add --batch / --each -----------------------------------------------------------------------


def test_add_batch_draws_a_bar_on_a_terminal(taskq, env, api, spool):
    status, out, shown = on_terminal(taskq.argv(["add", "--batch", "-"]), env, batch(MANY).encode())
    assert status == 0, shown
    assert_bar(shown, "enqueueing", MANY)
    ids = out.splitlines()
    assert len(ids) == MANY and sorted(ids) == sorted(j.id for j in api.list(limit=None))


def test_add_each_draws_a_bar_on_a_terminal(taskq, env, api):
    lines = "".join(f"file{i}\n" for i in range(MANY)).encode()
    status, out, shown = on_terminal(taskq.argv(["add", "--each", "-", "--", "echo"]), env, lines)
    assert status == 0, shown
    assert_bar(shown, "enqueueing", MANY)
    ids = out.splitlines()
    assert [api.get(i).command for i in ids] == [["echo", f"file{i}"] for i in range(MANY)]


def test_add_batch_piped_shows_nothing(taskq, api):
    proc = taskq("add", "--batch", "-", input=batch(MANY), check=True)
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == MANY


def test_few_jobs_draw_no_bar(taskq, env, api):
    status, out, shown = on_terminal(taskq.argv(["add", "--batch", "-"]), env, batch(FEW).encode())
    assert status == 0
    assert shown == ""
    assert len(out.splitlines()) == FEW


# -- retry --all --------------------------------------------------------------------------------


def test_retry_all_draws_a_bar_and_prints_the_same_ids(taskq, env, api):
    failed = settled(api, MANY, Outcome(exit_code=1))
    status, out, shown = on_terminal(taskq.argv(["retry", "--all"]), env)
    assert status == 0, shown
    assert_bar(shown, "retrying", MANY)
    assert out.splitlines() == failed  # exactly what a piped run prints
    assert all(api.get(i).state == "pending" for i in failed)


def test_retry_all_piped_shows_nothing(taskq, api):
    failed = settled(api, MANY, Outcome(exit_code=1))
    proc = taskq("retry", "--all", check=True)
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == failed


def test_retry_all_with_stdout_on_the_terminal_too(taskq, env, api):
    """Interactive use: the ids are printed once the bar is gone, never torn by it."""
    failed = settled(api, MANY, Outcome(exit_code=1))
    status, _, shown = on_terminal(taskq.argv(["retry", "--all"]), env, stdout_too=True)
    assert status == 0, shown
    assert_bar(shown, "retrying", MANY)
    # After its last frame the bar erases itself; then come the ids, each a whole line.
    tail = ANSI.sub("", shown[shown.rindex(f"{MANY}/{MANY}"):])
    assert [line for line in tail.replace("\r", "\n").split("\n") if line in failed] == failed


# -- purge --------------------------------------------------------------------------------------


def test_purge_draws_a_bar_on_a_terminal(taskq, env, api, spool):
    settled(api, MANY, Outcome(exit_code=0))
    status, out, shown = on_terminal(taskq.argv(["purge", "--state", "done"]), env)
    assert status == 0, shown
    assert_bar(shown, "purging", MANY)
    assert f"purged {MANY} done jobs" in shown
    assert out == ""
    assert ls(spool, "done") == []


def test_purge_piped_prints_only_its_summary(taskq, api, spool):
    settled(api, MANY, Outcome(exit_code=0))
    proc = taskq("purge", "--state", "done", check=True)
    assert proc.stderr == f"purged {MANY} done jobs\n"
    assert proc.stdout == ""


# -- start-up: piped runs do not load rich ------------------------------------------------------


@pytest.mark.parametrize("args", [["add", "--batch"], ["retry", "--all"], ["purge", "--state", "failed"]])
def test_piped_runs_import_no_rich(taskq, api, tmp_path, args):
    settled(api, MANY, Outcome(exit_code=1))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(batch(MANY))
    argv = ["taskq", *args, *([str(jobs)] if args[0] == "add" else [])]
    code = ("import sys\n"
            f"sys.argv = {argv!r}\n"
            "from taskq.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('rich loaded:', sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=taskq.env(), capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "rich loaded: []"
