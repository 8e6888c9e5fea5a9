"""Regression: nothing a user typed (or a job produced) is ever read as rich markup.

A job named ``[/bold] x`` made ``taskq list`` and ``taskq status`` crash on a terminal
with rich's ``MarkupError``, and ``[red]`` in a name restyled the table. The CLI tests
run the installed ``taskq`` under a pseudo-terminal, because rich is only used when
stdout is a terminal (piped output is plain text and never had the bug). The unit
tests render to a recording rich console to check that no style came from user text.

Also covers ``python -m taskq`` (src/taskq/__main__.py).

Self-contained on purpose (only pytest's own fixtures), so it does not depend on
the shared helpers in conftest.py.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from taskq import render, times
from taskq.job import Job

#: User text that rich would read as markup: an unmatched closing tag (the crash),
#: a colour, a hyperlink, and an emoji code.
NAMES = ["[/bold] x", "[red]boom[/red]", "[link=http://x]y[/link]"]
#: A command argument with markup in it: ``taskq list`` shows it as ``echo '[bold]loud'``.
COMMAND_ARG = "[bold]loud"
#: A command that cannot start: its last error names the path, brackets included.
MISSING_COMMAND = "/nonexistent/[bold]cmd"
#: A spool directory whose path contains markup (it is in the status title).
SPOOL_NAME = "[bold]spool"

TIMEOUT = 30.0

#: ANSI control sequences (CSI, OSC such as hyperlinks, and two-byte escapes).
_ANSI = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_OSC8_HYPERLINK = "\x1b]8;"


# -- helpers -----------------------------------------------------------------------------


def _taskq() -> str:
    """The installed console script: next to this interpreter (the venv), else on PATH."""
    exe = shutil.which("taskq", path=os.path.dirname(sys.executable)) or shutil.which("taskq")
    if exe is None:
        pytest.fail("the taskq console script is not installed (pip install -e .)")
    return exe


def _env(home: Path) -> dict[str, str]:
    """A clean environment: no inherited spool, colour or debug settings, a private
    HOME, and a wide xterm so table cells are not wrapped."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TASKQ_SPOOL", "TASKQ_DEBUG", "NO_COLOR", "FORCE_COLOR", "XDG_DATA_HOME")}
    env.update(HOME=str(home), COLUMNS="200", LINES="50", TERM="xterm")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _run(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run with stdout piped (so not on a terminal)."""
    return subprocess.run(list(args), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _run_on_tty(args: Sequence[str], env: dict[str, str], stderr_file: Path) -> tuple[int, str, str]:
    """Run with stdout on a pseudo-terminal (``isatty()`` is true, so rich draws);
    stderr goes to a file so a traceback is kept apart. Returns (status, raw terminal
    output with ``\\r\\n`` made ``\\n``, stderr)."""
    master, slave = os.openpty()
    # The size rich sees if it asks the terminal rather than $COLUMNS.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    with open(stderr_file, "wb") as err:
        proc = subprocess.Popen(list(args), env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=err,
                                start_new_session=True)
    os.close(slave)  # else reading the master never sees the end of output
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"{args} did not finish in {TIMEOUT}s; output so far: {b''.join(chunks)!r}")
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO on Linux: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    status = proc.wait(timeout=TIMEOUT)
    out = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return status, out, stderr_file.read_text(errors="replace")


def _plain(terminal_output: str) -> str:
    return _ANSI.sub("", terminal_output)


def _assert_clean(status: int, out: str, err: str) -> None:
    for text in (out, err):
        assert "Traceback" not in text, text
        assert "MarkupError" not in text, text
    assert status == 0, f"exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    # A [link=...] read as markup becomes an OSC 8 hyperlink.
    assert _OSC8_HYPERLINK not in out, out


def _assert_literal(literal: str, out: str) -> None:
    """*literal* is in the raw terminal output in one piece: brackets kept, and no
    escape sequence inside it (a style taken from the text would split it)."""
    assert literal in out, f"{literal!r} not shown literally in:\n{_plain(out)}"


# -- the CLI on a terminal ---------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return _env(home)


def test_list_and_status_right_after_add(tmp_path: Path, env: dict[str, str]) -> None:
    """The reported case: add a job with a markup name, then list and status."""
    taskq = _taskq()
    spool = str(tmp_path / "spool")
    added = _run([taskq, "add", "--spool", spool, "--name", "[/bold] x", "--", "true"], env)
    assert added.returncode == 0, added.stderr
    for command in ("list", "status"):
        status, out, err = _run_on_tty([taskq, command, "--spool", spool], env, tmp_path / "stderr")
        _assert_clean(status, out, err)
    # status shows no job names when nothing failed or runs; list does.
    status, out, err = _run_on_tty([taskq, "list", "--spool", spool], env, tmp_path / "stderr")
    _assert_literal("[/bold] x", out)


@pytest.fixture
def worked_spool(tmp_path: Path, env: dict[str, str]) -> Path:
    """A spool (with markup in its own path) where jobs with markup names have failed
    (one with markup in its last error) and one with markup in its command is done."""
    taskq = _taskq()
    spool = tmp_path / SPOOL_NAME
    jobs = [
        (NAMES[0], ["false"]),
        (NAMES[1], [MISSING_COMMAND]),
        (NAMES[2], ["echo", COMMAND_ARG]),
    ]
    for name, command in jobs:
        added = _run([taskq, "add", "--spool", str(spool), "--name", name, "--max-attempts", "1", "--", *command],
                     env)
        assert added.returncode == 0, added.stderr
    # Piped, so the worker logs plain lines (its live view is tested below).
    worked = _run([taskq, "work", "--spool", str(spool), "--burst"], env)
    assert worked.returncode == 0, worked.stderr
    return spool


def test_list_shows_markup_literally(tmp_path: Path, env: dict[str, str], worked_spool: Path) -> None:
    status, out, err = _run_on_tty([_taskq(), "list", "--spool", str(worked_spool)], env, tmp_path / "stderr")
    _assert_clean(status, out, err)
    for name in NAMES:
        _assert_literal(name, out)
    _assert_literal(f"echo '{COMMAND_ARG}'", out)
    _assert_literal(f"'{MISSING_COMMAND}'", out)


def test_status_shows_markup_literally(tmp_path: Path, env: dict[str, str], worked_spool: Path) -> None:
    status, out, err = _run_on_tty([_taskq(), "status", "--spool", str(worked_spool)], env, tmp_path / "stderr")
    _assert_clean(status, out, err)
    # The failed jobs' names and the missing command's error, in "latest failures".
    _assert_literal(NAMES[0], out)
    _assert_literal(NAMES[1], out)
    _assert_literal(MISSING_COMMAND, out)
    # The title holds the spool path; rich may wrap it to the table's width.
    assert str(worked_spool).replace(" ", "") in re.sub(r"\s", "", _plain(out)), _plain(out)


# -- rendering, unit level ---------------------------------------------------------------


def _recording_console() -> Any:
    from rich.console import Console

    return Console(record=True, force_terminal=True, color_system="truecolor", width=200,
                   file=io.StringIO(), markup=False, emoji=False, highlight=False)


def _user_segments(console: Any, renderable: Any, literals: Sequence[str]) -> Iterator[Any]:
    """The rendered segments that contain any of *literals* (each must be in one)."""
    segments = list(console.render(renderable))
    text = "".join(s.text for s in segments)
    for literal in literals:
        assert literal in text, f"{literal!r} not rendered literally in:\n{text}"
        found = [s for s in segments if literal in s.text]
        assert found, f"{literal!r} split across segments (styled from its own text?)"
        yield from found
    assert not any(s.style is not None and s.style.link for s in segments), "a hyperlink from user text"


def _assert_unstyled(segment: Any) -> None:
    style = segment.style
    assert style is None or not (style.color or style.bgcolor or style.bold or style.italic or style.link), \
        f"{segment.text!r} styled {style}"


def test_status_renderable_literal() -> None:
    data: dict[str, Any] = {
        "spool": "/tmp/[bold]spool",
        "paused": True,
        "counts": {"pending": 1, "running": 1, "done": 2, "failed": 1},
        "ready": 1, "scheduled": 0, "waiting": 0, "oldest_ready_age": 5.0,
        "running": [{"id": "[red]id1", "name": NAMES[0], "attempt": 1, "runtime": 3.0,
                     "worker": "[link=http://x]host[/link] :smile:"}],
        "recent_failures": [{"id": "id2", "name": NAMES[1], "last_error": f"{MISSING_COMMAND} [/]"}],
    }
    console = _recording_console()
    renderable = render._status_renderable(data)
    literals = ["[red]id1", NAMES[0], "[link=http://x]host[/link] :smile:", NAMES[1], f"{MISSING_COMMAND} [/]"]
    for segment in _user_segments(console, renderable, literals):
        _assert_unstyled(segment)
    console.print(renderable)
    exported = console.export_text()
    for literal in literals:
        assert literal in exported
    assert "/tmp/[bold]spool" in exported
    # Our own styling is still there, given as styles.
    segments = list(console.render(renderable))
    paused = [s for s in segments if "(paused)" in s.text]
    assert paused and paused[0].style is not None and paused[0].style.bold
    assert str(paused[0].style.color) == "Color('red', ColorType.STANDARD, number=1)"


def _job(name: str, command: list[str], state: str, last_error: str | None = None) -> Job:
    now = times.iso(times.now())
    return Job(id="01TESTJOB" + state.upper(), command=command, cwd="/tmp", created_at=now, run_at=now,
               name=name, state=state, last_error=last_error)


def test_list_table_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    console = _recording_console()
    monkeypatch.setattr(render, "_tty", lambda: True)
    monkeypatch.setattr(render, "_console", lambda stderr=False: console)
    render.print_list([
        _job(NAMES[1], ["echo", COMMAND_ARG], "pending"),
        _job(NAMES[0], [], "pending", last_error="[link=http://x]gone[/link]"),  # unreadable job file
    ])
    exported = console.export_text(clear=False)
    for literal in (NAMES[1], NAMES[0], f"echo '{COMMAND_ARG}'", "([link=http://x]gone[/link])"):
        assert literal in exported, exported
    # Pending rows get no style of ours, so any colour or bold on "[red]boom[/red]"
    # would have come from the name itself.
    styled = console.export_text(styles=True)
    assert NAMES[1] in styled and _OSC8_HYPERLINK not in styled
    assert "\x1b[31m" not in styled and "\x1b[1m[red]" not in styled


def test_live_view_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    console = _recording_console()
    monkeypatch.setattr(render, "_console", lambda stderr=False: console)
    view = render.LiveView("/tmp/[bold]spool", 2)
    try:
        view.event("claimed job ([/bold] x) :smile:")
        view.update("working", {"pending": 1}, [("[red]id", NAMES[0], "[bold]1", 2.0), ("id2", NAMES[2], "1", 1.0)])
        table = view.live.renderable
    finally:
        view.stop()
    for segment in _user_segments(_recording_console(), table, ["[red]id", NAMES[0], "[bold]1", NAMES[2]]):
        _assert_unstyled(segment)
    exported = console.export_text()
    assert "claimed job ([/bold] x) :smile:" in exported
    assert "/tmp/[bold]spool: pending 1" in exported


def test_watch_status_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    """``status --watch`` on a terminal: a live status until interrupted."""
    console = _recording_console()
    monkeypatch.setattr(render, "_tty", lambda: True)
    monkeypatch.setattr(render, "_console", lambda stderr=False: console)
    calls = 0

    def fetch() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise KeyboardInterrupt
        return {"spool": "/s", "paused": False, "counts": {"pending": 0, "running": 0, "done": 0, "failed": 1},
                "ready": 0, "scheduled": 0, "recent_failures": [{"id": "i", "name": NAMES[0], "last_error": "[/]"}]}

    render.watch_status(fetch, 0.01, as_json=False)
    assert NAMES[0] in console.export_text()


def test_render_does_not_import_rich() -> None:
    """Start-up time: importing the renderer (and so ``taskq add``) loads no rich."""
    code = "import sys, taskq.render; print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- python -m taskq ---------------------------------------------------------------------


def test_python_m_help(env: dict[str, str]) -> None:
    done = _run([sys.executable, "-m", "taskq", "--help"], env)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "add" in done.stdout
    # The same commands as the console script.
    script = _run([_taskq(), "--help"], env)
    assert script.returncode == 0
    assert done.stdout.split("\n", 1)[1] == script.stdout.split("\n", 1)[1]


def test_python_m_add(tmp_path: Path, env: dict[str, str]) -> None:
    spool = str(tmp_path / "spool")
    done = _run([sys.executable, "-m", "taskq", "add", "--spool", spool, "--", "true"], env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert job_id
    listed = _run([_taskq(), "list", "--spool", spool], env)
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout
