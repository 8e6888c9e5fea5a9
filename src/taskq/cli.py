"""The ``taskq`` command: typer commands that parse, call the API, and render.

Data goes to stdout, messages for people to stderr. ``--json`` output is one
``json.dumps`` per record and never imports rich. Errors are one line on stderr and
the exit status of the README's "Exit codes": 1 = the operation failed, 2 = usage/validation.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import typer

from .errors import TaskqError, ValidationError

if TYPE_CHECKING:
    from .api import Progress, Spool
    from .job import Job

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    help="A command-line task queue with a durable file-based spool.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

SpoolOpt = typer.Option(
    None, "--spool", metavar="DIR",
    help="The spool directory [default: $TASKQ_SPOOL, else $XDG_DATA_HOME/taskq/spool].",
)
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


@app.callback()
def _root(ctx: typer.Context, spool: Optional[str] = SpoolOpt) -> None:
    """A command-line task queue with a durable file-based spool."""
    ctx.obj = {"spool": spool}


def _spool(ctx: typer.Context, spool: Optional[str]) -> Spool:
    from .api import Spool  # imported here: `taskq --help` need not load it

    parent = (ctx.obj or {}).get("spool") if ctx.obj else None
    return Spool(spool if spool is not None else parent)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"taskq: {message}\n")
    raise typer.Exit(code)


#: From this many jobs on, ``retry --all``, ``purge`` and ``add --batch``/``--each``
#: draw a progress bar when stderr is a terminal (README, "taskq retry").
PROGRESS_MIN = 50


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Progress | None]:
    """A progress report for an operation over many jobs: a bar on stderr when it is
    a terminal (drawn from PROGRESS_MIN jobs on, gone when the operation ends), else
    None, so that piped runs neither import rich nor pay for the callbacks."""
    if not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        yield None
        return
    from .render import ProgressBar

    bar = ProgressBar(what, PROGRESS_MIN)
    try:
        yield bar
    finally:
        bar.close()


# -- add ---------------------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False})
def add(
    ctx: typer.Context,
    command: Optional[list[str]] = typer.Argument(None, metavar="[--] COMMAND [ARG]...", show_default=False),
    spool: Optional[str] = SpoolOpt,
    name: Optional[str] = typer.Option(None, "--name", metavar="TEXT", help="Label, or a task type of taskq.toml."),
    payload: Optional[str] = typer.Option(
        None, "--payload", metavar="JSON",
        help="JSON handed to the command on stdin.",
    ),
    payload_file: Optional[str] = typer.Option(
        None, "--payload-file", metavar="PATH",
        help="Read the payload JSON from PATH (- = stdin).",
    ),
    env: Optional[list[str]] = typer.Option(
        None, "--env", metavar="KEY=VALUE",
        help="Extra environment variable (repeatable).",
    ),
    cwd: Optional[str] = typer.Option(None, "--cwd", metavar="DIR", help="Working directory [default: here]."),
    shell: bool = typer.Option(False, "--shell", help="Run COMMAND as one string with /bin/sh -c."),
    priority: Optional[int] = typer.Option(None, "--priority", metavar="INT", help="Higher runs first [default: 0]."),
    delay: Optional[str] = typer.Option(None, "--delay", metavar="DURATION", help="Run no sooner than this from now."),
    at: Optional[str] = typer.Option(
        None, "--at", metavar="DATETIME",
        help="Run no sooner than this (ISO 8601, local time unless an offset is given).",
    ),
    max_attempts: Optional[int] = typer.Option(
        None, "--max-attempts", metavar="INT",
        help="Attempts before the job fails [default: 5].",
    ),
    backoff: Optional[str] = typer.Option(
        None, "--backoff", metavar="DURATION",
        help="First retry delay, doubled each time [default: 10s].",
    ),
    backoff_max: Optional[str] = typer.Option(
        None, "--backoff-max", metavar="DURATION",
        help="Longest retry delay [default: 1h].",
    ),
    timeout: Optional[str] = typer.Option(
        None, "--timeout", metavar="DURATION",
        help="Time limit of one attempt [default: none].",
    ),
    unique_key: Optional[str] = typer.Option(
        None, "--unique-key", metavar="TEXT",
        help="Create nothing if a live job has this key; print its id.",
    ),
    permanent_exit: Optional[list[int]] = typer.Option(
        None, "--permanent-exit", metavar="CODE",
        help="Exit status that fails the job at once (repeatable) [default: 100].",
    ),
    after: Optional[list[str]] = typer.Option(
        None, "--after", metavar="ID",
        help="Run only once this job is done (repeatable).",
    ),
    batch: Optional[str] = typer.Option(
        None, "--batch", metavar="FILE",
        help="Enqueue JSON Lines from FILE (- = stdin), all or nothing.",
    ),
    each: Optional[str] = typer.Option(
        None, "--each", metavar="FILE",
        help="One job per line of FILE (- = stdin), {} in COMMAND replaced by the line; all or nothing.",
    ),
    nul: bool = typer.Option(False, "-0", "--null", help="--each: lines are separated by NUL, not newline."),
    as_json: bool = JsonOpt,
) -> None:
    """Enqueue a job; print its id."""
    from . import times

    api = _spool(ctx, spool)
    if nul and each is None:
        raise ValidationError("-0 goes with --each")
    if each is not None and batch is not None:
        raise ValidationError("give either --each or --batch, not both")
    if batch is not None:
        given = [name, payload, payload_file, env, cwd, priority, delay, at, max_attempts, backoff,
                 backoff_max, timeout, unique_key, permanent_exit, after]
        if command:
            raise ValidationError("--batch takes no COMMAND")
        if shell or any(value is not None for value in given):
            raise ValidationError("--batch takes no other job options: give the fields in each line")
        numbered = _read_batch(batch)
        with _progress("enqueueing") as progress:
            jobs = api.add_batch([r for _, r in numbered], line_numbers=[n for n, _ in numbered], progress=progress)
        _print_added(jobs, as_json)
        return
    if payload is not None and payload_file is not None:
        raise ValidationError("give either --payload or --payload-file, not both")
    if each == "-" and payload_file == "-":
        raise ValidationError("--each - and --payload-file - cannot both read stdin")

    def duration(text: Optional[str], option: str) -> Optional[float]:
        return times.parse_duration(text, option) if text is not None else None

    # The keyword arguments of Spool.add, which are also the names of the job fields.
    options: dict[str, Any] = dict(
        name=name,
        payload=_parse_payload(payload, payload_file),
        env=_parse_env(env or []),
        cwd=cwd,
        priority=priority,
        delay=duration(delay, "--delay"),
        run_at=times.parse_datetime(at) if at is not None else None,
        max_attempts=max_attempts,
        backoff=duration(backoff, "--backoff"),
        backoff_max=duration(backoff_max, "--backoff-max"),
        timeout=duration(timeout, "--timeout"),
        unique_key=unique_key,
        permanent_exit_codes=permanent_exit or None,
        after=after or None,
    )
    if each is not None:
        _add_each(api, each, nul, command, shell, options, as_json)
        return
    job = api.add(_argv(command, shell, name), **options)
    _print_added([job], as_json)


def _add_each(api: Spool, path: str, nul: bool, command: Optional[list[str]], shell: bool,
              options: dict[str, Any], as_json: bool) -> None:
    """``add --each``: one job per line of *path*, all enqueued by one ``add_batch``.

    Everything that does not depend on the line (options, cwd, the command template) is
    worked out once here; per line, :class:`taskq.fanout.Fanout` only fills in ``{}``.
    """
    from .api.enqueue import record_of
    from .fanout import Fanout, split_lines
    from .fields import shell_text

    fields = record_of(options)  # what Spool.add makes of the same options
    words = list(command or [])
    if shell and not words:
        raise ValidationError("--shell needs a COMMAND string", "COMMAND")
    if not words:
        # A task type's command is the template: the line has to go somewhere.
        task = api.config.tasks.get(fields["name"]) if "name" in fields else None
        words = list(task.get("command") or []) if task else []
        if not words:
            raise ValidationError("--each: missing COMMAND (or --name of a task type with a command in taskq.toml)")
        script = shell_text(words)
        if script is not None:  # a command given as a string: the line is quoted like --shell's
            words, shell = [script], True
    elif not shell and words[0] == "":
        raise ValidationError("empty command", "COMMAND")
    fanout = Fanout(fields, words, shell)
    fanout.check()
    numbers, lines = split_lines(_read_input(path, "--each"), nul)
    if not lines:
        raise ValidationError("--each: no lines given")
    with _progress("enqueueing") as progress:
        jobs = api.add_batch(fanout.records(lines), line_numbers=numbers, progress=progress)
    _print_added(jobs, as_json)


def _argv(command: Optional[list[str]], shell: bool, name: Optional[str]) -> Optional[list[str]]:
    """The job's argv from COMMAND (one shell string with --shell); None to take the
    task type's command."""
    argv = list(command or [])
    if shell:
        if not argv:
            raise ValidationError("--shell needs a COMMAND string", "COMMAND")
        from .fields import shell_command

        argv = shell_command(" ".join(argv))
    if not argv and name is None:
        raise ValidationError("missing COMMAND (or --name of a task type in taskq.toml)", "COMMAND")
    if argv and argv[0] == "":
        raise ValidationError("empty command", "COMMAND")
    return argv or None


def _print_added(jobs: list[Job], as_json: bool) -> None:
    """One line per job: its id, or its record with ``duplicate`` (``--json``)."""
    for job in jobs:
        if as_json:
            _print_json({**job.to_dict(), "duplicate": job.duplicate})
        else:
            sys.stdout.write(job.id + "\n")


def _parse_payload(text: Optional[str], path: Optional[str]) -> Any:
    option = "--payload"
    if path is not None:
        option = "--payload-file"
        raw = _read_input(path, option)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError(f"{path} is not UTF-8 text", option) from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", option) from None
    except RecursionError:
        raise ValidationError("invalid JSON (nested too deeply)", option) from None


def _parse_env(pairs: list[str]) -> dict[str, str]:
    from .fields import ENV_KEY_RE

    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError(f"{pair!r} is not KEY=VALUE", "--env")
        if not ENV_KEY_RE.match(key):
            raise ValidationError(f"invalid variable name {key!r}", "--env")
        env[key] = value
    return env


def _read_input(path: str, option: str) -> bytes:
    """The bytes of the file named by *option* (``-`` = stdin); exit 2 if unreadable."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", option) from None


def _read_batch(path: str) -> list[tuple[int, dict[str, Any]]]:
    raw = _read_input(path, "--batch")
    records = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 JSON"
            raise ValidationError(f"--batch line {number}: invalid JSON ({reason})") from None
        if not isinstance(record, dict):
            raise ValidationError(f"--batch line {number}: a job must be a JSON object")
        records.append((number, record))
    if not records:
        raise ValidationError("--batch: no jobs given")
    return records


# -- work --------------------------------------------------------------------------------


@app.command()
def work(
    ctx: typer.Context,
    spool: Optional[str] = SpoolOpt,
    concurrency: int = typer.Option(1, "--concurrency", "-c", metavar="N", help="Jobs run at once."),
    burst: bool = typer.Option(False, "--burst", help="Exit once no job is ready and none is running."),
    max_jobs: Optional[int] = typer.Option(None, "--max-jobs", metavar="N", help="Exit after this many jobs."),
    grace: str = typer.Option("30s", "--grace", metavar="DURATION", help="How long a stop waits for running jobs."),
    metrics_file: Optional[str] = typer.Option(
        None, "--metrics-file", metavar="PATH",
        help="Keep PATH current with `taskq metrics` and this worker's counters (node_exporter textfile).",
    ),
    metrics_interval: Optional[str] = typer.Option(
        None, "--metrics-interval", metavar="DURATION",
        help="How often --metrics-file is rewritten [default: 15s].",
    ),
) -> None:
    """Run jobs until stopped (SIGTERM/SIGINT: finish or return running jobs, exit 0)."""
    from . import times
    from .worker import Worker

    api = _spool(ctx, spool)
    grace_s = times.parse_duration(grace, "--grace")
    metrics_opts: dict[str, Any] = {}
    if metrics_interval is not None:
        if metrics_file is None:
            raise ValidationError("--metrics-interval goes with --metrics-file")
        metrics_opts["metrics_interval"] = times.parse_duration(metrics_interval, "--metrics-interval")
    if metrics_file is not None:
        if not metrics_file:
            raise ValidationError("must not be empty", "--metrics-file")
        metrics_opts["metrics_file"] = metrics_file
    worker = Worker(api, concurrency=concurrency, burst=burst, max_jobs=max_jobs, grace=grace_s, **metrics_opts)
    view = None
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        from .render import LiveView  # a live panel for people; plain lines when piped

        view = worker.view = LiveView(api.path, concurrency)
    try:
        code = worker.run()
    finally:
        if view is not None:
            view.stop()
    raise typer.Exit(code)


# -- inspect -----------------------------------------------------------------------------


@app.command()
def status(
    ctx: typer.Context,
    spool: Optional[str] = SpoolOpt,
    as_json: bool = JsonOpt,
    watch: bool = typer.Option(False, "--watch", help="Refresh until interrupted."),
    interval: float = typer.Option(1.0, "--interval", metavar="SECONDS", help="Refresh period of --watch."),
) -> None:
    """Counts per state, ready and scheduled jobs, running jobs, latest failures."""
    api = _spool(ctx, spool)
    if not watch:
        data = api.status()
        if as_json:
            _print_json(data)
        else:
            from .render import print_status

            print_status(data)
        return
    if interval <= 0:
        raise ValidationError("must be > 0", "--interval")
    api.require()
    from . import times
    from .api.events import RecentEvents
    from .render import watch_status

    recent = RecentEvents(api)  # the last minute and latest failures, from the event log

    def fetch() -> dict[str, Any]:
        data = api.status()
        try:
            data.update(recent.update(times.now()))
        except TaskqError:
            pass  # an unreadable event log costs its figures, not the status
        return data

    try:
        watch_status(fetch, interval, as_json)
    finally:
        recent.close()


@app.command("list")
def list_(
    ctx: typer.Context,
    spool: Optional[str] = SpoolOpt,
    state: Optional[str] = typer.Option(None, "--state", metavar="STATE", help="pending, running, done or failed."),
    limit: int = typer.Option(50, "--limit", metavar="N", help="At most this many jobs (0 = all)."),
    as_json: bool = JsonOpt,
) -> None:
    """Jobs, newest first."""
    if limit < 0:
        raise ValidationError("must be >= 0", "--limit")
    jobs = _spool(ctx, spool).list(state=state, limit=limit or None)
    if as_json:
        _print_json([job.to_dict() for job in jobs])
        return
    from .render import print_list

    print_list(jobs)


@app.command()
def show(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="ID"),
    spool: Optional[str] = SpoolOpt,
    as_json: bool = JsonOpt,
) -> None:
    """One job, with its attempts."""
    job = _spool(ctx, spool).get(job_id)
    if as_json:
        _print_json(job.to_dict())
        return
    from .render import print_job

    print_job(job)


@app.command()
def logs(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="ID"),
    spool: Optional[str] = SpoolOpt,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing output until the job is settled."),
) -> None:
    """The job's output (every attempt, each under a header line)."""
    import time

    from .spool.layout import SETTLED

    api = _spool(ctx, spool)
    reader = api.log_reader(job_id)  # keeps its place when log_max cuts the log
    while True:
        chunk = reader.read()
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        if not follow:
            return
        if api.get(job_id).state in SETTLED:
            follow = False  # one last read: output written just before settling
            continue
        time.sleep(0.2)


@app.command()
def events(
    ctx: typer.Context,
    spool: Optional[str] = SpoolOpt,
    job_id: Optional[str] = typer.Option(None, "--id", metavar="ID", help="Only this job's events."),
    since: Optional[str] = typer.Option(
        None, "--since", metavar="DURATION|DATETIME",
        help="Only events since then (10m = the last ten minutes).",
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Then print new events as they come, until interrupted."),
    as_json: bool = JsonOpt,
) -> None:
    """The event log: one line per change of a job's state."""
    from . import times
    from .events import encode, parse_since
    from .render import event_line

    api = _spool(ctx, spool)
    start = parse_since(since, times.now()) if since is not None else None
    out = sys.stdout.buffer
    try:
        for record in api.events(job_id, start, follow):
            # --json: the line as the log holds it (one json.dumps, the writer's own)
            out.write(encode(record) if as_json else event_line(record).encode("utf-8", "backslashreplace") + b"\n")
            if follow:
                out.flush()
    except KeyboardInterrupt:
        pass  # --follow runs until interrupted: that is its normal end (exit 0)
    out.flush()


@app.command()
def retry(
    ctx: typer.Context,
    job_ids: Optional[list[str]] = typer.Argument(None, metavar="ID..."),
    spool: Optional[str] = SpoolOpt,
    all_: bool = typer.Option(False, "--all", help="Every job in failed/."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="With --all: only jobs named NAME."),
) -> None:
    """Put failed jobs back to pending with a fresh attempt budget."""
    api = _spool(ctx, spool)
    if name is not None and not all_:
        raise ValidationError("--name goes with --all")
    if all_ and job_ids:
        raise ValidationError("give IDs or --all, not both")
    if not all_ and not job_ids:
        raise ValidationError("give the IDs of failed jobs, or --all")
    if not all_:
        _each(list(job_ids or []), lambda job_id: api.retry([job_id]))
        return
    ids = api.failed_ids(name=name)
    with _progress("retrying") as progress:
        _each(ids, lambda job_id: api.retry([job_id]), progress)


@app.command()
def cancel(
    ctx: typer.Context,
    job_ids: list[str] = typer.Argument(..., metavar="ID..."),
    spool: Optional[str] = SpoolOpt,
) -> None:
    """Cancel jobs: pending ones go to failed/, running ones are stopped first."""
    api = _spool(ctx, spool)
    _each(job_ids, lambda job_id: api.cancel([job_id]))


def _each(ids: list[str], action: Any, progress: Progress | None = None) -> None:
    """Apply *action* to each id; print the ids done, one error line per failure,
    exit with the worst status. While a progress bar may be drawn (on stderr), the
    lines wait until the end, so that the bar never tears them; stdout gets the same
    ids either way."""
    from .ids import check_id

    for job_id in ids:
        check_id(job_id)  # all ids are checked before anything is changed
    held: list[tuple[Any, str]] | None = [] if progress is not None and len(ids) >= PROGRESS_MIN else None

    def say(stream: Any, line: str) -> None:
        if held is None:
            stream.write(line)
        else:
            held.append((stream, line))

    worst = 0
    try:
        for done, job_id in enumerate(ids, 1):
            try:
                action(job_id)
                say(sys.stdout, job_id + "\n")
            except TaskqError as exc:
                say(sys.stderr, f"taskq: {exc}\n")
                worst = max(worst, exc.exit_code)
            if progress is not None:
                progress(done, len(ids))
    finally:
        if held:
            close = getattr(progress, "close", None)
            if close is not None:
                close()  # the bar goes before the lines it held back are printed
            for stream, line in held:
                stream.write(line)
    if worst:
        raise typer.Exit(worst)


@app.command()
def purge(
    ctx: typer.Context,
    state: str = typer.Option(..., "--state", metavar="STATE", help="done or failed."),
    spool: Optional[str] = SpoolOpt,
    older_than: Optional[str] = typer.Option(
        None, "--older-than", metavar="DURATION",
        help="Only jobs settled longer ago than this.",
    ),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="Only jobs named NAME."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Delete nothing; print the ids that would go."),
) -> None:
    """Delete finished jobs and their logs."""
    from . import times

    age = times.parse_duration(older_than, "--older-than") if older_than is not None else None
    api = _spool(ctx, spool)
    with _progress("purging" if not dry_run else "looking") as progress:
        purged = api.purge(state, older_than=age, name=name, dry_run=dry_run, progress=progress)
    jobs = f"{len(purged)} {state} job{'s' if len(purged) != 1 else ''}"
    if dry_run:
        sys.stdout.write("".join(job_id + "\n" for job_id in purged))
        sys.stderr.write(f"would purge {jobs} (dry run: nothing deleted)\n")
    else:
        sys.stderr.write(f"purged {jobs}\n")


@app.command("wait")
def wait_(
    ctx: typer.Context,
    job_ids: list[str] = typer.Argument(..., metavar="ID..."),
    spool: Optional[str] = SpoolOpt,
    timeout: Optional[str] = typer.Option(
        None, "--timeout", metavar="DURATION",
        help="Give up after this long (exit 124).",
    ),
) -> None:
    """Block until the jobs are settled: exit 0 all done, 1 any failed, 124 on timeout."""
    from . import times
    from .errors import JobNotFoundError

    limit = times.parse_duration(timeout, "--timeout") if timeout is not None else None
    try:
        states = _spool(ctx, spool).wait(job_ids, timeout=limit)
    except JobNotFoundError as exc:
        _fail(str(exc), 2)  # 1 only ever means "a job failed"
    except TimeoutError as exc:
        _fail(f"timed out: {exc}", 124)
    failed = [job_id for job_id, state in states.items() if state == "failed"]
    for job_id in failed:
        sys.stderr.write(f"taskq: job {job_id} failed\n")
    raise typer.Exit(1 if failed else 0)


@app.command()
def explain(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., metavar="ID"),
    spool: Optional[str] = SpoolOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Why a job is where it is."""
    data = _spool(ctx, spool).explain(job_id, words=not as_json)
    if as_json:
        _print_json(data)
    else:
        sys.stdout.write(f"{data['id']} is {data['state']}: {data['reason']}\n")


@app.command()
def metrics(ctx: typer.Context, spool: Optional[str] = SpoolOpt) -> None:
    """The spool's numbers in the Prometheus text format (as `status` counts them)."""
    from .metrics import exposition

    sys.stdout.write(exposition(_spool(ctx, spool).metrics()))


@app.command()
def pause(ctx: typer.Context, spool: Optional[str] = SpoolOpt) -> None:
    """Stop workers from claiming jobs (running jobs go on)."""
    api = _spool(ctx, spool)
    was = api.pause()
    sys.stderr.write(f"spool {api.path} {'was already' if was else 'is now'} paused\n")


@app.command()
def resume(ctx: typer.Context, spool: Optional[str] = SpoolOpt) -> None:
    """Let workers claim jobs again."""
    api = _spool(ctx, spool)
    was = api.resume()
    sys.stderr.write(f"spool {api.path} {'is resumed' if was else 'was not paused'}\n")


@app.command()
def fsck(
    ctx: typer.Context,
    spool: Optional[str] = SpoolOpt,
    repair: bool = typer.Option(False, "--repair", help="Fix what is found (no job is ever deleted)."),
    as_json: bool = JsonOpt,
) -> None:
    """Check the spool's invariants, one line per problem: exit 0 if consistent, 1 if not."""
    api = _spool(ctx, spool)
    report = api.fsck(repair=repair)
    if as_json:
        _print_json(report.to_dict())
    else:
        for problem in report.problems:
            sys.stdout.write(problem.line() + "\n")
        left = sum(1 for p in report.problems if not p.repaired) if repair else len(report.problems)
        found = len(report.problems)
        if not found:
            sys.stderr.write(f"spool {api.path} is consistent\n")
        elif repair:
            sys.stderr.write(f"{found} problem{'s' if found != 1 else ''} found, {found - left} repaired"
                             + (f", {left} remain\n" if left else "\n"))
        else:
            sys.stderr.write(f"{found} problem{'s' if found != 1 else ''} found (taskq fsck --repair fixes them)\n")
    raise typer.Exit(0 if report.ok else 1)


# -- set-up ------------------------------------------------------------------------------


@app.command()
def init(ctx: typer.Context, spool: Optional[str] = SpoolOpt) -> None:
    """Create an empty spool (every directory, mode 0700); an existing one is fine."""
    api = _spool(ctx, spool)
    existed = api.store.exists()
    created = api.init()
    if not existed:
        sys.stderr.write(f"created spool {api.path}\n")
    elif created:
        names = ", ".join(os.path.basename(path) + "/" for path in created)
        sys.stderr.write(f"spool {api.path} exists already; created {names}\n")
    else:
        sys.stderr.write(f"spool {api.path} exists already\n")


@app.command()
def config(ctx: typer.Context, spool: Optional[str] = SpoolOpt, as_json: bool = JsonOpt) -> None:
    """The effective settings (built-in, taskq.toml, task types) and where each comes from."""
    from .config import spool_origin
    from .config_report import lines, report

    given = spool if spool is not None else (ctx.obj or {}).get("spool")
    data = report(_spool(ctx, spool), spool_origin(given))
    if as_json:
        _print_json(data)
    else:
        sys.stdout.write("\n".join(lines(data)) + "\n")


@app.command()
def completion(
    ctx: typer.Context,
    shell: Optional[str] = typer.Argument(None, metavar="SHELL", show_default=False),
    spool: Optional[str] = SpoolOpt,
    ids: bool = typer.Option(False, "--ids", hidden=True, help="List job ids (used by the scripts)."),
) -> None:
    """Print a completion script for bash, zsh or fish."""
    from . import completion as comp

    if ids:  # what the scripts run to complete a job id: never an error, never slow
        if spool is not None:
            spool = os.path.expanduser(spool)  # as typed on the line being completed
        found = comp.job_ids(_spool(ctx, spool))
        sys.stdout.write("".join(job_id + "\n" for job_id in found))
        return
    if shell is None:
        raise ValidationError("missing SHELL (bash, zsh or fish)")
    from typer.main import get_command

    sys.stdout.write(comp.script(shell, comp.specs(get_command(app))))


# -- entry point -------------------------------------------------------------------------


def _only(command: str | None) -> None:
    """Register only the command being run: typer builds every registered command's
    parser at each start, which costs ~2 ms per command on the ``add`` path. Help of
    the whole program and unknown commands keep the full set."""
    if command == "completion":
        return  # its scripts describe every command
    keep = [c for c in app.registered_commands
            if (c.name or (c.callback.__name__ if c.callback else None)) == command]
    if keep:
        app.registered_commands[:] = keep


def main() -> None:
    """Console-script entry point: run the app, map errors to exit codes."""
    from ._entry import subcommand

    everything = list(app.registered_commands)
    _only(subcommand(sys.argv[1:]))
    try:
        app()
    except TaskqError as exc:
        if os.environ.get("TASKQ_DEBUG") == "1":
            raise
        sys.stderr.write(f"taskq: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # `taskq list | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        if os.environ.get("TASKQ_DEBUG") == "1":
            raise
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"taskq: {exc.strerror or exc}{where}\n")
        sys.exit(1)
    finally:
        app.registered_commands[:] = everything  # main() may run again in one process
