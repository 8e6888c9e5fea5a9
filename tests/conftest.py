"""Shared fixtures: a fresh spool path and a runner for the installed ``taskq`` command.

``taskq`` runs the console script that the package installs (never ``python -m`` and
never the source tree directly), in a subprocess, so CLI tests see exactly what a
user's shell sees: exit status, stdout and stderr.

Every run gets an environment whose ``HOME`` and ``XDG_DATA_HOME`` point into the
test's own temporary directory, so a test can never reach a real user's spool, and
in which ``TASKQ_SPOOL``, ``TASKQ_DEBUG``, ``NO_COLOR`` and ``FORCE_COLOR`` are unset
unless the test sets them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import pytest

# Helpers shared by the test modules: their asserts report like the tests' own.
pytest.register_assert_rewrite("workerutil")

from workerutil import LAYOUT  # noqa: E402 - after the rewrite is registered
from workerutil import files as state_files  # noqa: E402

# A test run started in the background by a non-interactive shell (`.ci/run &`) has
# SIGINT ignored, and an ignored signal stays ignored in every process it starts: the
# taskq commands that the tests stop with SIGINT (`events --follow`, `status --watch`,
# a worker's Ctrl-C) would never see it. A handler here makes the children's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Variables that change taskq's behaviour; removed from the inherited environment.
_SCRUBBED = ("TASKQ_SPOOL", "TASKQ_DEBUG", "NO_COLOR", "FORCE_COLOR", "XDG_DATA_HOME")

DEFAULT_TIMEOUT = 30.0


class _Default:
    def __repr__(self) -> str:
        return "<the test's spool>"


#: Sentinel: "use the spool fixture" (the default of ``spool=`` in the runner).
SPOOL_DEFAULT: Any = _Default()


def find_taskq() -> str:
    """The installed ``taskq`` console script: next to this interpreter, else on PATH."""
    bindir = os.path.dirname(sys.executable)  # a venv's bin/, without resolving symlinks
    exe = shutil.which("taskq", path=bindir) or shutil.which("taskq")
    if exe is None:
        pytest.fail("the taskq console script is not installed (pip install -e .)")
    return exe


@pytest.fixture(scope="session")
def taskq_exe() -> str:
    """Absolute path of the installed ``taskq`` command."""
    return find_taskq()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A fresh spool path under the test's tmp dir; the directory is not created."""
    return tmp_path / "spool"


#: The spool's directories (README, "The spool on disk").
SPOOL_DIRS = LAYOUT


@pytest.fixture
def empty_spool(spool: Path) -> Path:
    """The test's spool, created empty with the layout of the README's "The spool on disk" (mode 0700)."""
    spool.mkdir(mode=0o700, parents=True)
    os.chmod(spool, 0o700)
    for name in SPOOL_DIRS:
        (spool / name).mkdir(mode=0o700)
        os.chmod(spool / name, 0o700)
    return spool


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private HOME for subprocesses (created)."""
    path = tmp_path / "home"
    path.mkdir(exist_ok=True)
    return path


class TaskqRunner:
    """Run the installed ``taskq`` as a subprocess.

    ``runner(*args, spool=..., input=None, env=None, cwd=None, check=None, timeout=30)``

    * ``spool``: by default the test's ``spool`` fixture, passed as ``TASKQ_SPOOL``
      (so it works with every command and any argument order). ``None`` passes no
      spool at all (the test gives ``--spool`` itself or relies on the default).
      With ``spool_via="option"`` it is passed as ``--spool DIR`` right after the
      command name instead.
    * ``env``: extra variables; a value of ``None`` removes the variable.
    * ``check``: ``None`` = no check; ``True`` = exit 0 expected; an int = that exit
      status expected. A mismatch fails the test showing stdout and stderr.
    * ``input``: text for stdin (stdin is /dev/null otherwise).

    Returns the ``subprocess.CompletedProcess`` with text ``stdout``/``stderr``.
    """

    def __init__(self, exe: str, spool: Path, home: Path) -> None:
        self.exe = exe
        self.spool = spool
        self.home = home

    def env(self, spool: Any = SPOOL_DEFAULT, env: Optional[Mapping[str, Optional[str]]] = None) -> dict[str, str]:
        """The environment a run gets (also useful for ``subprocess.Popen``)."""
        out = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        out["HOME"] = str(self.home)
        out["XDG_DATA_HOME"] = str(self.home / "xdg-data")
        if spool is SPOOL_DEFAULT:
            spool = self.spool
        if spool is not None:
            out["TASKQ_SPOOL"] = os.fspath(spool)
        for key, value in (env or {}).items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def argv(self, args: Sequence[Union[str, os.PathLike[str]]]) -> list[str]:
        return [self.exe, *(os.fspath(a) for a in args)]

    def __call__(
        self,
        *args: Union[str, os.PathLike[str]],
        spool: Any = SPOOL_DEFAULT,
        spool_via: str = "env",
        input: Optional[str] = None,
        env: Optional[Mapping[str, Optional[str]]] = None,
        cwd: Optional[Union[str, os.PathLike[str]]] = None,
        check: Union[None, bool, int] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        argv_args = [os.fspath(a) for a in args]
        if spool_via == "option":
            path = self.spool if spool is SPOOL_DEFAULT else spool
            if path is not None:
                argv_args[1:1] = ["--spool", os.fspath(path)]
            spool = None
        elif spool_via != "env":
            raise ValueError("spool_via must be 'env' or 'option'")
        proc = subprocess.run(
            self.argv(argv_args),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env(spool, env),
            cwd=os.fspath(cwd) if cwd is not None else None,
            timeout=timeout,
        )
        if check is not None and check is not False:
            expected = 0 if check is True else int(check)
            if proc.returncode != expected:
                pytest.fail(
                    f"taskq {' '.join(argv_args)}: exit {proc.returncode}, expected {expected}\n"
                    f"--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}",
                    pytrace=False,
                )
        return proc

    def popen(
        self,
        *args: Union[str, os.PathLike[str]],
        spool: Any = SPOOL_DEFAULT,
        env: Optional[Mapping[str, Optional[str]]] = None,
        cwd: Optional[Union[str, os.PathLike[str]]] = None,
        **kwargs: Any,
    ) -> subprocess.Popen[str]:
        """Start ``taskq`` in the background (the caller waits for it or kills it)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return subprocess.Popen(
            self.argv(args),
            env=self.env(spool, env),
            cwd=os.fspath(cwd) if cwd is not None else None,
            **kwargs,
        )

    def json(self, *args: Union[str, os.PathLike[str]], **kwargs: Any) -> Any:
        """Run a command that must succeed and parse its stdout as one JSON document."""
        kwargs.setdefault("check", True)
        proc = self(*args, **kwargs)
        return json.loads(proc.stdout)

    def add(self, *command: str, options: Sequence[str] = (), **kwargs: Any) -> str:
        """``taskq add [OPTIONS] -- COMMAND...``; return the printed id."""
        kwargs.setdefault("check", True)
        proc = self("add", *options, "--", *command, **kwargs)
        return proc.stdout.strip()


@pytest.fixture
def taskq(taskq_exe: str, spool: Path, home: Path) -> TaskqRunner:
    """A runner for the installed ``taskq`` bound to this test's spool (see TaskqRunner)."""
    return TaskqRunner(taskq_exe, spool, home)


@pytest.fixture
def run_taskq(taskq: TaskqRunner) -> TaskqRunner:
    """Alias of ``taskq``."""
    return taskq


# -- small helpers shared through fixtures ----------------------------------------------


@pytest.fixture
def spool_files():
    """``spool_files(spool, "pending")``: sorted names in one spool directory ([] if missing)."""

    def files(spool_path: Union[str, os.PathLike[str]], state: str) -> list[str]:
        return state_files(Path(spool_path), state)

    return files
