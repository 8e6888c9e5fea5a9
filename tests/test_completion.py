"""``taskq completion bash|zsh|fish`` (README, "taskq completion"): the scripts complete
commands, options and job ids, in the real shells.

bash: the script is sourced in a ``bash`` subprocess and its function called with
COMP_WORDS/COMP_CWORD set, as bash does on TAB. zsh: ``zsh -n``, then the function run
with zsh's completion builtins replaced by stubs that print their candidates. fish:
``fish --no-execute``, then ``complete -C``, which is fish's own completion of a line.
zsh and fish tests are skipped where the shell is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main

from taskq import Spool
from taskq import completion as comp
from taskq.cli import app
from taskq.spool.store import Store
from workerutil import assert_one_line_error

ID_COMMANDS = ("show", "logs", "retry", "cancel", "wait", "explain")


def run_shell(taskq, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a shell with the test's environment, the installed taskq first on PATH: with
    *env* None, $TASKQ_SPOOL is the test's spool; else only *env* may set it."""
    full = taskq.env(env=env) if env is None else taskq.env(spool=None, env=env)
    full["PATH"] = os.path.dirname(taskq.exe) + os.pathsep + full.get("PATH", "/usr/bin:/bin")
    return subprocess.run(argv, capture_output=True, text=True, env=full, cwd=cwd, timeout=60)


@pytest.fixture
def scripts(taskq, tmp_path: Path) -> dict[str, Path]:
    """The three scripts, as printed by the installed taskq."""
    out = {}
    for shell in comp.SHELLS:
        proc = taskq("completion", shell, spool=None, check=True)
        assert proc.stderr == ""
        path = tmp_path / f"taskq.{shell}"
        path.write_text(proc.stdout)
        out[shell] = path
    return out


@pytest.fixture
def jobs(taskq, spool: Path) -> list[str]:
    """A spool with jobs in every state directory, and a drop-in file without an id."""
    ready = taskq.add("true")
    later = taskq.add("true", options=["--delay", "1h"])
    waiting = taskq.add("true", options=["--after", ready])  # a pending/….after.json name
    # Done, failed and running jobs as their files (never opened: their content is junk).
    (spool / "done" / "done-job_1.json").write_text("not json")
    (spool / "failed" / "failed-job.json").write_text("{")
    (spool / "running" / "running-job.json").write_text("")
    (spool / "running" / "running-job.lock").write_text("")
    (spool / "pending" / "dropped-by-php.json").write_text('{"command": ["true"]}')
    return sorted([ready, later, waiting, "done-job_1", "failed-job", "running-job"])


def bash(taskq, scripts, *words: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> list[str]:
    """The candidates bash gets for a line whose last word is the one being completed."""
    code = ('source "$0"; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
            '_taskq_completion taskq "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; '
            'printf "%s\\n" "${COMPREPLY[@]}"')
    proc = run_shell(taskq, ["bash", "--norc", "--noprofile", "-c", code, str(scripts["bash"]), *words], env, cwd)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return sorted(line for line in proc.stdout.splitlines() if line)


def all_commands() -> list[str]:
    return sorted(spec.name for spec in comp.specs(typer.main.get_command(app)) if spec.name)


# -- bash --------------------------------------------------------------------------------


def test_bash_completes_commands(taskq, scripts):
    assert bash(taskq, scripts, "taskq", "sh") == ["show"]
    assert bash(taskq, scripts, "taskq", "re") == ["resume", "retry"]
    assert bash(taskq, scripts, "taskq", "") == all_commands()
    assert {"add", "work", "init", "config", "completion"} <= set(all_commands())
    assert bash(taskq, scripts, "taskq", "--spool", "/tmp", "sh") == ["show"]


def test_bash_completes_options(taskq, scripts):
    assert bash(taskq, scripts, "taskq", "work", "--bu") == ["--burst"]
    assert bash(taskq, scripts, "taskq", "show", "--j") == ["--json"]
    assert bash(taskq, scripts, "taskq", "--sp") == ["--spool"]
    assert bash(taskq, scripts, "taskq", "add", "--max") == ["--max-attempts"]
    assert bash(taskq, scripts, "taskq", "config", "-") == ["--help", "--json", "--spool", "-h"]
    # The hidden option the scripts use is not offered.
    assert bash(taskq, scripts, "taskq", "completion", "--") == ["--help", "--spool"]


def test_bash_completes_ids_from_the_spool_on_the_line(taskq, scripts, spool, jobs):
    for command in ID_COMMANDS:
        assert bash(taskq, scripts, "taskq", command, "--spool", str(spool), "") == jobs, command
    assert bash(taskq, scripts, "taskq", "--spool", str(spool), "show", "") == jobs
    # bash splits --spool=DIR at the "=" (COMP_WORDBREAKS)
    assert bash(taskq, scripts, "taskq", "--spool", "=", str(spool), "cancel", "") == jobs
    assert bash(taskq, scripts, "taskq", "wait", "--spool", str(spool), jobs[0], "") == jobs  # several ids
    assert bash(taskq, scripts, "taskq", "show", "--spool", str(spool), "fail") == ["failed-job"]
    assert bash(taskq, scripts, "taskq", "add", "--spool", str(spool), "--after", "") == jobs
    # The drop-in file has no id in its name: it is not offered (its file is not read).
    assert not any("dropped" in job_id for job_id in jobs)


def test_bash_ids_from_taskq_spool_and_from_the_default_spool(taskq, scripts, spool, jobs, home):
    assert bash(taskq, scripts, "taskq", "retry", "", env={"TASKQ_SPOOL": str(spool)}) == jobs
    default = home / "xdg-data" / "taskq" / "spool"
    default.parent.mkdir(parents=True)
    os.rename(spool, default)
    assert bash(taskq, scripts, "taskq", "explain", "", env={}) == jobs
    assert bash(taskq, scripts, "taskq", "explain", "", env={"XDG_DATA_HOME": None}) == []  # ~/.local/share


def test_bash_ids_with_a_spool_given_with_a_tilde(taskq, scripts, spool, jobs, home):
    os.rename(spool, home / "myspool")
    assert bash(taskq, scripts, "taskq", "logs", "--spool", "~/myspool", "", env={}) == jobs


def test_bash_offers_no_ids_where_none_are_taken_and_none_from_no_spool(taskq, scripts, spool, jobs, tmp_path):
    assert bash(taskq, scripts, "taskq", "status", "--spool", str(spool), "") == []
    assert bash(taskq, scripts, "taskq", "show", "--spool", str(tmp_path / "missing"), "") == []


def test_bash_completes_option_values(taskq, scripts, tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    assert bash(taskq, scripts, "taskq", "list", "--state", "d") == ["done"]
    assert bash(taskq, scripts, "taskq", "purge", "--state", "") == ["done", "failed", "pending", "running"]
    assert bash(taskq, scripts, "taskq", "completion", "") == ["bash", "fish", "zsh"]
    assert bash(taskq, scripts, "taskq", "--spool", "a", cwd=tmp_path) == ["adir"]
    assert bash(taskq, scripts, "taskq", "add", "--payload-file", "a", cwd=tmp_path) == ["adir", "afile"]
    assert bash(taskq, scripts, "taskq", "list", "--state=d") == ["--state=done"]  # "=" kept in the word
    assert bash(taskq, scripts, "taskq", "add", "--name", "") == []  # free text


def test_bash_leaves_the_jobs_own_command_line_alone(taskq, scripts):
    assert bash(taskq, scripts, "taskq", "add", "--name", "x", "grep", "--co") == []
    assert bash(taskq, scripts, "taskq", "add", "--", "-") == []


# -- the script and the ids, in process ---------------------------------------------------


def test_the_commands_that_take_ids_are_read_from_the_cli():
    found = {spec.name: spec for spec in comp.specs(typer.main.get_command(app))}
    assert sorted(name for name, spec in found.items() if spec.argument == "id") == sorted(ID_COMMANDS)
    assert found["add"].argument == "command"
    assert found["completion"].argument == "shell"
    assert ("--after", "id") in found["add"].values
    assert ("--spool", "dir") in found[""].values
    assert "--ids" not in found["completion"].options


def test_job_ids_come_from_names_alone(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    spool.init()
    job = spool.add(["true"])
    (tmp_path / "done" / "x.json").write_text("junk")

    def no_reading(*args, **kwargs):
        raise AssertionError("a job file was read")

    monkeypatch.setattr(Store, "read", no_reading)
    assert comp.job_ids(spool) == sorted([job.id, "x"])
    assert comp.job_ids(Spool(tmp_path / "missing")) == []


def test_ids_option_prints_one_id_a_line_and_never_fails(taskq, spool, jobs, tmp_path):
    proc = taskq("completion", "--ids", check=True)
    assert sorted(proc.stdout.splitlines()) == jobs and proc.stderr == ""
    assert taskq("completion", "--ids", "--spool", tmp_path / "none", spool=None, check=True).stdout == ""


@pytest.mark.parametrize("args", [["completion", "tcsh"], ["completion", "BASH"], ["completion"]])
def test_an_unknown_or_missing_shell_is_a_usage_error(taskq, args):
    assert_one_line_error(taskq(*args), 2, "bash, zsh or fish")


def test_scripts_name_every_command(scripts):
    for shell, path in scripts.items():
        text = path.read_text()
        for command in all_commands():
            assert command in text, (shell, command)


# -- zsh ---------------------------------------------------------------------------------

needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)")

#: Stubs of zsh's completion builtins: each prints its candidates that match the word
#: being completed, as compadd would offer them.
ZSH_STUBS = r"""
_taskq_match() { local w; for w in "$@"; do [[ $w == ${PREFIX}* ]] && print -r -- "$w"; done; return 0; }
compadd() { local i; for ((i = 1; i <= $#; i++)); do
    [[ ${@[i]} == -- ]] && { _taskq_match "${@[i+1,-1]}"; return 0; }; done; }
_describe() { local -a list; list=("${(@P)4}"); _taskq_match "${list[@]%%:*}"; }
_files() { print -r -- "<files $*>"; }
compset() { return 1; }
compdef() { :; }
"""


def zsh(taskq, scripts, *words: str, env: dict[str, str] | None = None) -> list[str]:
    code = ZSH_STUBS + 'source "$0"; words=("$@"); CURRENT=$#; PREFIX=${words[CURRENT]}; _taskq'
    proc = run_shell(taskq, ["zsh", "-f", "-c", code, str(scripts["zsh"]), *words], env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return sorted(line for line in proc.stdout.splitlines() if line)


@needs_zsh
def test_zsh_accepts_the_script(scripts):
    proc = subprocess.run(["zsh", "-n", str(scripts["zsh"])], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@needs_zsh
def test_zsh_completes_commands_options_and_ids(taskq, scripts, spool, jobs):
    assert zsh(taskq, scripts, "taskq", "sh") == ["show"]
    assert zsh(taskq, scripts, "taskq", "") == all_commands()
    assert zsh(taskq, scripts, "taskq", "work", "--bu") == ["--burst"]
    for command in ID_COMMANDS:
        assert zsh(taskq, scripts, "taskq", command, "--spool", str(spool), "") == jobs, command
    assert zsh(taskq, scripts, "taskq", f"--spool={spool}", "show", "") == jobs
    assert zsh(taskq, scripts, "taskq", "show", "") == jobs  # $TASKQ_SPOOL
    assert zsh(taskq, scripts, "taskq", "status", "") == []
    assert zsh(taskq, scripts, "taskq", "list", "--state", "f") == ["failed"]
    assert zsh(taskq, scripts, "taskq", "--spool", "") == ["<files -/>"]


# -- fish --------------------------------------------------------------------------------

needs_fish = pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed (apt-get install fish)")


def fish(taskq, scripts, line: str, env: dict[str, str] | None = None) -> list[str]:
    """fish's own completion of *line* (``complete -C``), candidates without descriptions."""
    code = 'source $argv[1]; complete -C"$argv[2]"'
    proc = run_shell(taskq, ["fish", "--no-config", "-c", code, str(scripts["fish"]), line], env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return sorted(line.split("\t")[0] for line in proc.stdout.splitlines() if line)


@needs_fish
def test_fish_accepts_the_script(scripts):
    proc = subprocess.run(["fish", "--no-execute", str(scripts["fish"])], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@needs_fish
def test_fish_completes_commands_options_and_ids(taskq, scripts, spool, jobs):
    assert fish(taskq, scripts, "taskq sh") == ["show"]
    assert fish(taskq, scripts, "taskq ") == all_commands()
    assert fish(taskq, scripts, "taskq work --bu") == ["--burst"]
    for command in ID_COMMANDS:
        assert fish(taskq, scripts, f"taskq {command} --spool {spool} ") == jobs, command
    assert fish(taskq, scripts, f"taskq --spool={spool} show ") == jobs
    assert fish(taskq, scripts, "taskq cancel ") == jobs  # $TASKQ_SPOOL
    assert fish(taskq, scripts, f"taskq add --spool {spool} --after ") == jobs
    assert fish(taskq, scripts, "taskq status ") == []
    assert fish(taskq, scripts, "taskq list --state f") == ["failed"]
    assert fish(taskq, scripts, "taskq completion ") == ["bash", "fish", "zsh"]
