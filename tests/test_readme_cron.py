"""The README's crontab lines work under cron as written, and its examples of
``last_error`` are what taskq writes.

The lines are read from the README's ```crontab blocks, so README and tests cannot
drift. Cron runs a line with ``/bin/sh -c``, ``PATH=/usr/bin:/bin`` and little else
in the environment, turning ``\\%`` into ``%``: a bare ``taskq`` is "not found" there,
and a redirect into a missing directory stops the command from starting. The one
thing a test changes is the install path the README shows (``/usr/local/bin/taskq``),
replaced by the taskq under test, and (for the real daemon) the schedule, so that the
line fires within a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from taskq import humanize
from taskq.job import CANCELLED, INTERRUPTED, WORKER_LOST, build
from taskq.policy import Outcome, decide, describe

README = Path(__file__).resolve().parents[1] / "README.md"
#: Where the README's crontab lines say taskq is installed.
INSTALLED_AS = "/usr/local/bin/taskq"
CRON_PATH = "/usr/bin:/bin"


class CronLine(NamedTuple):
    schedule: str
    command: str


def crontab_lines() -> list[CronLine]:
    """The job lines of every ```crontab block of the README (comments left out)."""
    lines = []
    for block in re.findall(r"^```crontab\n(.*?)^```", README.read_text(), re.S | re.M):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            assert not re.match(r"^\s*[A-Za-z_]+\s*=", line), f"environment lines are not handled here: {line}"
            fields = line.split(None, 5)
            assert len(fields) == 6, f"not a crontab job line: {line!r}"
            lines.append(CronLine(" ".join(fields[:5]), fields[5]))
    return lines


def as_cron_runs_it(command: str) -> tuple[str, str]:
    """The shell command and stdin cron makes of a line's command: ``\\%`` is ``%``, an
    unescaped ``%`` ends the command and the rest, ``%`` read as newline, is stdin."""
    out, i = [], 0
    while i < len(command):
        if command.startswith("\\%", i):
            out.append("%")
            i += 2
        elif command[i] == "%":
            return "".join(out), command[i + 1:].replace("%", "\n")
        else:
            out.append(command[i])
            i += 1
    return "".join(out), ""


def task_names(lines: list[CronLine]) -> set[str]:
    return {m.group(1) for line in lines for m in re.finditer(r"--name\s+([\w-]+)", line.command)}


def log_targets(command: str, home: Path) -> list[Path]:
    return [Path(m.group(1).replace("$HOME", str(home)))
            for m in re.finditer(r"\d?>>?\s*(\S+)", command) if m.group(1) != "/dev/null"]


def prepare_home(taskq, home: Path, lines: list[CronLine]) -> tuple[Path, str]:
    """The default spool of a user whose home is *home*: the task types the lines name
    (each writes a marker file), and one job waiting for a worker. Returns the spool
    and the waiting job's id."""
    spool = home / ".local" / "share" / "taskq" / "spool"
    taskq("init", "--spool", spool, spool=None, check=True)
    toml = "".join(f'[tasks.{name}]\ncommand = "touch {home}/ran-{name}"\n' for name in sorted(task_names(lines)))
    (spool / "taskq.toml").write_text(toml)
    job = taskq("add", "--spool", spool, "--", "touch", str(home / "ran-queued-job"),
                spool=None, check=True).stdout.strip()
    return spool, job


def check_effects(taskq, home: Path, spool: Path, job: str, lines: list[CronLine]) -> None:
    """What the lines did: the worker ran the waiting job, each `add --name` made its
    job (with the unique key of the day, `\\%` read as `%`), each log file is there."""
    shown = json.loads(taskq("show", "--spool", spool, job, "--json", spool=None, check=True).stdout)
    assert shown["state"] == "done", shown
    assert (home / "ran-queued-job").exists()
    listed = json.loads(taskq("list", "--spool", spool, "--json", spool=None, check=True).stdout)
    today = time.strftime("%Y-%m-%d")
    for name in task_names(lines):
        made = [j for j in listed if j["name"] == name]
        assert len(made) == 1, (name, listed)
        assert made[0]["unique_key"] in (None, f"{name}-{today}"), made[0]
    for line in lines:
        for target in log_targets(line.command, home):
            assert target.is_file(), f"{line.command}: no {target}"


# -- the lines as written --------------------------------------------------------------------


def test_the_readme_has_crontab_lines_for_add_and_work():
    lines = crontab_lines()
    assert len(lines) >= 3
    assert any(" add " in line.command for line in lines)
    assert any(" work " in line.command for line in lines)


@pytest.mark.parametrize("line", crontab_lines(), ids=lambda line: line.command[:40])
def test_each_line_names_a_program_that_crons_path_finds(line):
    program = line.command.split()[0]
    assert program.startswith("/") or shutil.which(program, path=CRON_PATH), (
        f"{program!r} is not found with PATH={CRON_PATH}: give its full path")
    if program.endswith("/taskq"):
        assert program == INSTALLED_AS  # the one path the tests replace


@pytest.mark.parametrize("line", crontab_lines(), ids=lambda line: line.command[:40])
def test_each_line_logs_into_a_directory_that_exists(line, tmp_path):
    for target in log_targets(line.command, tmp_path):
        assert target.parent == tmp_path, f"{target}: its directory may not exist; log into $HOME itself"


def test_the_lines_run_as_cron_runs_them(taskq, tmp_path):
    """Each line through /bin/sh with cron's environment (no PATH but /usr/bin:/bin, no
    TASKQ_SPOOL, no XDG_DATA_HOME): exit 0, and the work is done."""
    lines = crontab_lines()
    home = tmp_path / "cronhome"
    home.mkdir()
    spool, job = prepare_home(taskq, home, lines)
    env = {"HOME": str(home), "LOGNAME": "root", "SHELL": "/bin/sh", "PATH": CRON_PATH}
    for line in sorted(lines, key=lambda line: " work " in line.command):  # adds first
        command, stdin = as_cron_runs_it(line.command.replace(INSTALLED_AS, taskq.exe))
        proc = subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True, text=True,
                              env=env, cwd=home, timeout=120)
        assert proc.returncode == 0, (line.command, proc.stdout, proc.stderr)
        assert proc.stdout == "", line.command  # cron would mail it
    check_effects(taskq, home, spool, job, lines)


# -- under a real cron daemon ----------------------------------------------------------------


def _cron_running() -> bool:
    try:
        pid = int(Path("/var/run/crond.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}/comm").read_text().strip() == "cron"


@pytest.mark.skipif(shutil.which("cron") is None, reason="cron is not installed (Debian: apt-get install cron)")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the test installs a file in /etc/cron.d")
def test_the_lines_under_a_real_cron_daemon(taskq, tmp_path):
    """The README's lines, every minute, in /etc/cron.d for root with HOME set to a
    test directory; a cron daemon is started unless one runs. Waits for the next minute."""
    lines = crontab_lines()
    home = tmp_path / "cronhome"
    home.mkdir()
    spool, job = prepare_home(taskq, home, lines)
    table = Path(f"/etc/cron.d/taskq-readme-test-{os.getpid()}")  # cron.d names take no dots
    text = f"HOME={home}\n" + "".join(
        f"* * * * * root {line.command.replace(INSTALLED_AS, taskq.exe)}\n" for line in lines)
    table.write_text(text)
    os.chmod(table, 0o644)  # cron ignores a file that others can write
    daemon = None
    try:
        if not _cron_running():
            daemon = subprocess.Popen([shutil.which("cron") or "cron", "-f"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90  # the next minute, and a margin for the jobs
        names = task_names(lines)
        while time.monotonic() < deadline:
            if (home / "ran-queued-job").exists() and all(
                    any(j["name"] == name for j in json.loads(
                        taskq("list", "--spool", spool, "--json", spool=None, check=True).stdout))
                    for name in names):
                break
            if daemon is not None and daemon.poll() is not None:
                pytest.fail(f"cron exited {daemon.returncode}: {daemon.stderr.read() if daemon.stderr else ''}")
            time.sleep(1)
        time.sleep(2)  # let the burst workers of this minute finish their log lines
        check_effects(taskq, home, spool, job, lines)
    finally:
        table.unlink()
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


# -- last_error examples -------------------------------------------------------------------

#: How the error texts of taskq begin (policy.describe, runner, transitions).
ERROR_STARTS = ("exit status", "exited with status", "killed by", "timed out after", "cannot start",
                "dependency ", "worker lost", "cancelled", "interrupted")


def error_examples() -> list[str]:
    """Every error text the README quotes, in `code` or in "double quotes"."""
    text = README.read_text()
    quoted = re.findall(r"`([^`\n]+)`", text) + re.findall(r'"([^"\n]+)"', text)
    # "cannot start: …" stands for any of them: the ones with a real reason are checked.
    return sorted({q for q in quoted if q.startswith(ERROR_STARTS) and not q.endswith("…")})


def make_job(**given):
    return build({"command": ["true"], **given}, now=1_900_000_000.0, default_cwd="/", defaults={}, tasks={})


def written_by_policy(example: str) -> str | None:
    """What taskq writes in the situation *example* describes, by the code that writes it
    (policy.decide and policy.describe); None if the policy does not write such text."""
    if m := re.fullmatch(r"exit status (\d+) \(permanent\)", example):
        code = int(m.group(1))
        job = make_job(permanent_exit_codes=[code])
        return decide(job, Outcome(exit_code=code), 1_900_000_001.0, 0.5).last_error
    if m := re.fullmatch(r"exit status (\d+)", example):
        code = int(m.group(1))
        last = decide(make_job(permanent_exit_codes=[100 if code != 100 else 101]), Outcome(exit_code=code),
                      1_900_000_001.0, 0.5).last_error
        assert last == describe(Outcome(exit_code=code))
        return last
    if m := re.fullmatch(r"killed by signal (\d+)", example):
        return describe(Outcome(signal=int(m.group(1))))
    if m := re.fullmatch(r"timed out after ([\d.]+)s \(signal (\d+)\)", example):
        return describe(Outcome(timed_out=True, signal=int(m.group(2))), timeout=float(m.group(1)))
    # The human outputs' wording of the same texts (README, "Human output and --json").
    if m := re.fullmatch(r"exited with status (\d+)( \(permanent\))?", example):
        code = int(m.group(1))
        job = make_job(permanent_exit_codes=[code] if m.group(2) else [code + 1])
        return humanize.error(decide(job, Outcome(exit_code=code), 1_900_000_001.0, 0.5).last_error)
    if m := re.fullmatch(r"killed by (SIG[A-Z]+)", example):
        return humanize.outcome(Outcome(signal=signal.Signals[m.group(1)].value))
    if m := re.fullmatch(r"timed out after ([\d.]+) s \((SIG[A-Z]+)\)", example):
        return humanize.outcome(Outcome(timed_out=True, signal=signal.Signals[m.group(2)].value),
                                timeout=float(m.group(1)))
    if example == CANCELLED:
        return decide(make_job(), Outcome(error=CANCELLED), 1_900_000_001.0, 0.5).last_error
    if example in (WORKER_LOST, INTERRUPTED):
        return describe(Outcome(error=example))
    return None


#: Texts written outside policy, checked end to end below.
BY_A_WORKER = (r"cannot start: command not found: (\S+)", r"dependency (\S+) failed")


def test_the_readme_quotes_errors_including_a_permanent_failure():
    examples = error_examples()
    assert len(examples) >= 8, examples
    assert "exit status 100 (permanent)" in examples


@pytest.mark.parametrize("example", error_examples())
def test_each_error_the_readme_quotes_is_what_taskq_writes(example):
    if any(re.fullmatch(pattern, example) for pattern in BY_A_WORKER):
        return  # checked by a worker below
    assert written_by_policy(example) == example


def test_errors_written_by_a_worker_read_as_the_readme_says(taskq, tmp_path):
    """A command that is not found, and a job whose dependency failed for good."""
    examples = error_examples()
    not_found = [e for e in examples if re.fullmatch(BY_A_WORKER[0], e)]
    dependency = [e for e in examples if re.fullmatch(BY_A_WORKER[1], e)]
    assert not_found and dependency
    empty = tmp_path / "empty-path"
    empty.mkdir()
    missing = {e: taskq.add(re.fullmatch(BY_A_WORKER[0], e).group(1),
                            options=["--max-attempts", "1", "--env", f"PATH={empty}"]) for e in not_found}
    first = taskq.add("sh", "-c", "exit 100")
    dependent = taskq.add("true", options=["--after", first])
    taskq("work", "--burst", check=True)
    for example, job in missing.items():
        assert taskq.json("show", job, "--json")["last_error"] == example
    assert taskq.json("show", first, "--json")["last_error"] == "exit status 100 (permanent)"
    written = taskq.json("show", dependent, "--json")["last_error"]
    for example in dependency:
        assert written == example.replace(re.fullmatch(BY_A_WORKER[1], example).group(1), first)
