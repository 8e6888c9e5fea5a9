"""Output for people. The only module that imports rich, and only on a terminal.

Piped output is plain text (stable enough for grep, but ``--json`` is the interface
for programs). On a terminal, rich draws tables; it honours ``NO_COLOR`` itself.

Nothing a user or a job supplied (ids, names, commands, errors, worker names, paths)
is ever handed to rich as a ``str``: rich parses strings as console markup, so a name
like ``[/bold] x`` crashed with ``MarkupError`` and ``[red]`` restyled the table. Such
values go in as :class:`rich.text.Text` (via :func:`_text`), which rich renders
verbatim, without markup, emoji codes or highlighting; our own styling is given as
``style=`` arguments, never as markup.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import humanize, times
from .fields import shell_text
from .job import Attempt, Job

if TYPE_CHECKING:  # rich is imported at run time only on a terminal (start-up time)
    from rich.console import Console
    from rich.text import Text


def _tty() -> bool:
    return sys.stdout.isatty()


def _text(value: object, style: str = "") -> Text:
    """*value* as literal rich text: never parsed as markup, never highlighted."""
    from rich.text import Text

    return Text("" if value is None else str(value), style=style)


def _console(stderr: bool = False) -> Console:
    """A console that, as a second line of defence, reads no markup, emoji codes or
    highlighting in any plain ``str`` that still reaches it."""
    from rich.console import Console

    return Console(stderr=stderr, markup=False, emoji=False, highlight=False)


def _moment(stamp: str | None, now: float) -> str:
    """A record's timestamp for people: local time and how long ago (or from now)."""
    return humanize.moment(times.parse_iso(stamp), now) if stamp else "-"


def _ago(stamp: str | None, now: float) -> str:
    return humanize.relative(times.parse_iso(stamp), now) if stamp else "-"


def _for(seconds: float | None) -> str:
    return humanize.duration(seconds) if seconds is not None else "?"


def _command(job: Job) -> str:
    import shlex

    text = shell_text(job.command)
    return text if text is not None else shlex.join(job.command)


# -- status ------------------------------------------------------------------------------


def status_lines(data: dict[str, Any], now: float | None = None) -> list[str]:
    """The status report as plain lines (ages and errors in words, seen from *now*)."""
    now = times.now() if now is None else now
    c = data["counts"]
    lines = [
        f"spool:     {data['spool']}" + ("  (paused)" if data.get("paused") else ""),
        f"pending:   {c['pending']}  (ready {data['ready']}, scheduled {data['scheduled']}"
        + (f", waiting on dependencies {data['waiting']}" if data.get("waiting") else "")
        + ")",
        f"running:   {c['running']}",
        f"done:      {c['done']}",
        f"failed:    {c['failed']}",
    ]
    if data.get("oldest_ready_age") is not None:
        lines.append(f"oldest ready job: waiting for {_for(data['oldest_ready_age'])}")
    for r in data.get("running", []):
        lines.append(f"  running {r['id']} {r.get('name') or ''} attempt {r.get('attempt')}"
                     f" for {_for(r.get('runtime'))} on {r.get('worker')}")
    if data.get("recent_failures"):
        lines.append("latest failures:")
        for f in data["recent_failures"]:
            lines.append(f"  {f['id']} {f.get('name') or ''} failed {_ago(f.get('settled_at'), now)}:"
                         f" {humanize.error(f.get('last_error')) or '?'}")
    if "throughput" in data:  # status --watch: from the event log
        lines.append(throughput_text(data["throughput"]))
    if data.get("latest_failures"):
        lines.append("latest failures in the event log:")
        for f in data["latest_failures"]:
            lines.append(f"  {_event_time(f.get('time'))} {failure_text(f)}")
    return lines


def throughput_text(t: dict[str, Any]) -> str:
    """``status --watch``'s throughput line."""
    window = t.get("window") or 0
    span = "minute" if window == 60 else times.format_duration(window)
    return (f"last {span}: {t.get('done', 0)} done, {t.get('failed', 0)} failed, "
            f"{t.get('retries', 0)} attempts to retry, {t.get('claims', 0)} claimed")


def failure_text(f: dict[str, Any]) -> str:
    """One of ``status --watch``'s latest failures: id, name, attempt, error, fate."""
    attempt = f" attempt {f['attempt']}" if f.get("attempt") is not None else ""
    fate = "retry" if f.get("to") == "pending" else "failed"
    return _oneline(f"{f.get('id')} {f.get('name') or '-'}{attempt}: {f.get('error') or '?'} -> {fate}")


def _status_renderable(data: dict[str, Any], now: float | None = None) -> Any:
    from rich.console import Group
    from rich.table import Table

    now = times.now() if now is None else now
    c = data["counts"]
    # The spool path is the user's: literal Text, with our "(paused)" styled by style=.
    # A Text title does not get rich's default title style, hence "table.title".
    title = _text(f"taskq spool {data['spool']}", "table.title")
    if data.get("paused"):
        title.append(" (paused)", style="bold red")  # append() takes a str literally
    counts = Table(title=title, title_justify="left")
    for col in ("pending", "ready", "scheduled", "running", "done", "failed"):
        counts.add_column(col, justify="right")
    counts.add_row(_text(c["pending"]), _text(data["ready"]), _text(data["scheduled"]), _text(c["running"]),
                   _text(c["done"], "green"), _text(c["failed"], "red" if c["failed"] else ""))
    parts: list[Any] = [counts]
    if data.get("oldest_ready_age") is not None:
        parts.append(_text(f"oldest ready job waiting for {_for(data['oldest_ready_age'])}"))
    if data.get("running"):
        t = Table(title="running", title_justify="left")
        for col in ("id", "name", "attempt", "runtime", "worker"):
            t.add_column(col)
        for r in data["running"]:
            t.add_row(_text(r["id"]), _text(r.get("name")), _text(r.get("attempt")), _text(_for(r.get("runtime"))),
                      _text(r.get("worker")))
        parts.append(t)
    if data.get("recent_failures"):
        t = Table(title="latest failures", title_justify="left")
        for col in ("id", "name", "last error", "failed"):
            t.add_column(col)
        for f in data["recent_failures"]:
            t.add_row(_text(f["id"]), _text(f.get("name")), _text(humanize.error(f.get("last_error"))),
                      _text(_ago(f.get("settled_at"), now)))
        parts.append(t)
    if "throughput" in data:  # status --watch: from the event log
        parts.append(_text(throughput_text(data["throughput"])))
    if data.get("latest_failures"):
        t = Table(title="latest failures in the event log", title_justify="left")
        for col in ("time", "id", "name", "attempt", "error", "then"):
            t.add_column(col)
        for f in data["latest_failures"]:
            t.add_row(_text(_event_time(f.get("time"))), _text(f.get("id")), _text(f.get("name")),
                      _text(f.get("attempt")), _text(f.get("error")),
                      _text("retry" if f.get("to") == "pending" else "failed"))
        parts.append(t)
    return Group(*parts)


def print_status(data: dict[str, Any]) -> None:
    if not _tty():
        sys.stdout.write("\n".join(status_lines(data)) + "\n")
        return
    _console().print(_status_renderable(data))


def watch_status(fetch: Callable[[], dict[str, Any]], interval: float, as_json: bool) -> None:
    """Print the status every *interval* seconds until interrupted (exit 0)."""
    try:
        if _tty() and not as_json:
            from rich.live import Live

            with Live(_status_renderable(fetch()), console=_console(), auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(_status_renderable(fetch()), refresh=True)
        while True:
            data = fetch()
            if as_json:
                sys.stdout.write(json.dumps(data) + "\n")
            else:
                sys.stdout.write("\n".join(status_lines(data)) + "\n\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return


# -- events ------------------------------------------------------------------------------


def _oneline(text: str) -> str:
    """*text* with control characters escaped (``\\n``, ``\\x1b``): a name or an
    error can hold them, and an event line stays one line that cannot drive the
    terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _event_time(stamp: object) -> str:
    """An event's time in local time with milliseconds (as written if unreadable)."""
    try:
        ts = times.parse_iso(stamp)  # type: ignore[arg-type]
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") + f".{int(ts * 1000) % 1000:03d}"
    except (ValueError, TypeError, OverflowError, OSError):
        return str(stamp)


def event_words(r: dict[str, Any]) -> str:
    """What an event means, in a few words."""
    src, dst, error = r.get("from"), r.get("to"), r.get("error")
    attempt = f"attempt {r['attempt']}" if r.get("attempt") is not None else ""
    if dst is None:
        words = "purged"
    elif src is None:
        words = "enqueued"
    elif src == "pending" and dst == "running":
        words = f"claimed for {attempt}" if attempt else "claimed"
    elif src == "failed" and dst == "pending":
        words = "retried"
    elif dst == "done":
        words = f"{attempt} succeeded" if attempt else "done"
    elif error == "cancelled":
        words = f"cancelled during {attempt}" if attempt else "cancelled"
    elif error == "interrupted":
        words = f"{attempt or 'attempt'} interrupted by the worker's shutdown, not counted"
    elif error is not None:
        words = f"{attempt} failed: {error}" if attempt else f"failed: {error}"
        if dst == "pending":
            words += "; will retry"
    elif dst == "pending":
        words = "put back: its attempt never started"
    else:
        words = ""
    worker = r.get("worker")
    return words + (f" [{worker}]" if worker else "")


def event_line(r: dict[str, Any]) -> str:
    """``taskq events``' line for people: local time, id, name, from -> to, and what
    happened. Plain text, one line."""
    src = r.get("from") or "(new)"
    dst = r.get("to") or "(deleted)"
    return _oneline(f"{_event_time(r.get('time'))}  {r.get('id')}  {r.get('name') or '-'}  "
                    f"{src} -> {dst}  {event_words(r)}")


# -- list, show --------------------------------------------------------------------------


def print_list(jobs: list[Job], now: float | None = None) -> None:
    """A table of jobs; CREATED says how long ago (``show`` has the date)."""
    now = times.now() if now is None else now
    header = ("ID", "STATE", "PRIO", "TRIES", "CREATED", "NAME", "COMMAND")
    rows = [
        (j.id or j.file or "", j.state or "", str(j.priority), str(len(j.attempts)), _ago(j.created_at, now),
         j.name or "", _command(j) if j.command else f"({j.last_error})")
        for j in jobs
    ]
    if not _tty():
        sys.stdout.write("\t".join(header) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(row) + "\n")
        return
    from rich.table import Table

    table = Table()
    for col in header:
        table.add_column(col, overflow="fold" if col == "COMMAND" else "ellipsis")  # ellipsis: rich's default
    style = {"done": "green", "failed": "red", "running": "yellow"}
    for row in rows:
        # Every cell is job data (the name and command are whatever the user typed).
        table.add_row(*(_text(cell) for cell in row), style=style.get(row[1]))
    _console().print(table)


def job_lines(job: Job, now: float | None = None) -> list[str]:
    """``show``: every field, dates with how long ago, durations and outcomes in words."""
    now = times.now() if now is None else now
    lines = [
        f"id:           {job.id}",
        f"state:        {job.state}",
        f"name:         {job.name or '-'}",
        f"command:      {_command(job) if job.command else '-'}",
        f"cwd:          {job.cwd}",
        f"priority:     {job.priority}",
        f"created:      {_moment(job.created_at, now)}",
        f"run at:       {_moment(job.run_at, now)}",
        f"attempts:     {job.failures} of {job.max_attempts} used ({len(job.attempts)} runs in all)",
        f"timeout:      {humanize.duration(job.timeout) if job.timeout else 'none'}",
        f"backoff:      {humanize.duration(job.backoff)} doubling to {humanize.duration(job.backoff_max)}",
    ]
    if job.payload is not None:
        text = json.dumps(job.payload, ensure_ascii=False)
        lines.append(f"payload:      {text if len(text) <= 200 else text[:200] + '...'}")
    if job.env:
        lines.append("env:          " + " ".join(f"{k}={v}" for k, v in job.env.items()))
    if job.unique_key:
        lines.append(f"unique key:   {job.unique_key}")
    if job.after:
        lines.append(f"after:        {' '.join(job.after)}")
    if job.permanent_exit_codes != [100]:
        lines.append(f"permanent exit codes: {job.permanent_exit_codes}")
    if job.settled_at:
        lines.append(f"settled:      {_moment(job.settled_at, now)}")
    if job.last_error:
        lines.append(f"last error:   {humanize.error(job.last_error)}")
    for a in job.attempts:
        lines.append(f"  attempt {a.number}: {_attempt_words(a, job.timeout, now)} [{a.worker}]")
    return lines


def _attempt_words(attempt: Attempt, timeout: float | None, now: float) -> str:
    """``started 2026-12-01 10:00:03 (3 min ago), ran 2.5 s: killed by SIGKILL``."""
    started = _moment(attempt.started_at, now)
    try:
        began = times.parse_iso(attempt.started_at)
    except ValueError:
        began = None
    ended = attempt.outcome
    if ended is None or attempt.finished_at is None:
        running = f", running for {humanize.duration(now - began)}" if began is not None else ""
        return f"started {started}{running}"
    ran = f", ran {humanize.duration(times.parse_iso(attempt.finished_at) - began)}" if began is not None else ""
    return f"started {started}{ran}: {humanize.outcome(ended, timeout)}"


def print_job(job: Job) -> None:
    sys.stdout.write("\n".join(job_lines(job)) + "\n")


# -- the worker's live view ----------------------------------------------------------------


class LiveView:
    """``taskq work`` on a terminal: event lines scroll above a panel showing the
    spool's counts and this worker's running jobs."""

    def __init__(self, spool: str, concurrency: int) -> None:
        from rich.live import Live

        self.console = _console(stderr=True)
        self.spool = spool
        self.concurrency = concurrency
        self.live = Live(console=self.console, auto_refresh=False, transient=True)
        self.live.start()

    def event(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def update(self, state: str, counts: dict[str, int], rows: list[tuple[str, str, str, float]]) -> None:
        from rich.table import Table

        # The caption starts with the spool path and the rows hold job ids and names.
        # Text annotations do not get rich's default title/caption styles: named here.
        table = Table(title=_text(f"taskq work: {state}, {len(rows)}/{self.concurrency} running", "table.title"),
                      caption=_text(f"{self.spool}: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
                                    "table.caption"),
                      title_justify="left", caption_justify="left", expand=False)
        for col in ("running job", "name", "attempt", "for"):
            table.add_column(col)
        for job_id, name, attempt, runtime in rows:
            table.add_row(_text(job_id), _text(name), _text(attempt), _text(times.format_duration(runtime)))
        self.live.update(table, refresh=True)

    def stop(self) -> None:
        self.live.stop()


# -- progress of an operation over many jobs -------------------------------------------------


class ProgressBar:
    """A progress bar on stderr for ``retry --all``, ``purge`` and ``add --batch``/
    ``--each``: called with (jobs handled, jobs in all) like a :data:`taskq.api.Progress`.

    Drawn (and rich imported) only once an operation reaches *minimum* jobs; transient,
    so it leaves the terminal as it found it. The caller creates it only when stderr
    is a terminal. *description* is ours, never user text, and is not read as markup.
    """

    def __init__(self, description: str, minimum: int) -> None:
        self.description = description
        self.minimum = minimum
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._progress is None:
            if total < self.minimum:
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn(self.description, markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=_console(stderr=True), transient=True, redirect_stdout=False, redirect_stderr=False,
            )
            self._task = self._progress.add_task(self.description, total=total)
            self._progress.start()
        self._progress.update(self._task, completed=done, total=total)

    def close(self) -> None:
        """Take the bar away (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
