"""A job's program is looked up on its PATH once per name, and looked up again when it
moves: real processes, real PATH directories (runner layer)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from taskq import runner, times
from taskq.job import build
from taskq.runner import Control, run_attempt
from taskq.spool.joblog import JobLog
from taskq.spool.store import Store


def script(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho {text}\n")
    path.chmod(0o755)
    return path


def run(tmp_path: Path, command: list[str], path_env: str) -> tuple[runner.Outcome, str]:
    job = build({"command": command, "env": {"PATH": path_env}}, now=times.now(), default_cwd=str(tmp_path),
                defaults={}, tasks={})
    store = Store(tmp_path / "spool")
    store.create()
    store.remove_log(job.id)
    log = JobLog(store, job.id)
    lock = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        outcome = run_attempt(job, 1, str(tmp_path), log, lock, 1.0, Control())
    finally:
        log.close()
        os.close(lock)
    return outcome, Path(store.log_path(job.id)).read_text()


def test_a_program_found_once_is_found_again_after_it_moves(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    path_env = f"{first}:{second}:/usr/bin:/bin"
    moved = script(first, "taskq-demo-tool", "from-a")
    assert run(tmp_path, ["taskq-demo-tool"], path_env) == (runner.Outcome(exit_code=0), "from-a\n")
    assert runner._PATHS[("taskq-demo-tool", path_env)] == str(moved)
    moved.unlink()
    script(second, "taskq-demo-tool", "from-b")
    assert run(tmp_path, ["taskq-demo-tool"], path_env) == (runner.Outcome(exit_code=0), "from-b\n")


def test_a_missing_program_is_not_remembered(tmp_path):
    path_env = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    outcome, _ = run(tmp_path, ["taskq-no-such-program"], path_env)
    assert outcome.error == "cannot start: command not found: taskq-no-such-program"
    assert ("taskq-no-such-program", path_env) not in runner._PATHS
    script(tmp_path / "bin", "taskq-no-such-program", "installed-later")
    assert run(tmp_path, ["taskq-no-such-program"], path_env) == (runner.Outcome(exit_code=0), "installed-later\n")


def test_the_program_sees_the_name_it_was_given(tmp_path):
    python = Path(sys.executable)
    outcome, out = run(tmp_path, [python.name, "-c", "import sys; print(sys.orig_argv[0])"],
                       f"{python.parent}:/usr/bin:/bin")
    assert (outcome.exit_code, out) == (0, f"{python.name}\n")


def test_a_relative_path_entry_is_searched_from_the_jobs_cwd(tmp_path):
    script(tmp_path / "rel", "taskq-rel-tool", "relative")
    outcome, out = run(tmp_path, ["taskq-rel-tool"], "rel:/usr/bin:/bin")
    assert (outcome.exit_code, out) == (0, "relative\n")
    assert not any(key[0] == "taskq-rel-tool" for key in runner._PATHS)
