"""Fault injection at every step of every state change.

The spool's system calls that change it go through one seam,
``taskq.spool.fileio.FileIO`` (write_new, fsync, fsync_dir, rename, link, unlink, mkdir,
open_lock, overwrite, append, open_append). For each operation a dry run on an
identical spool counts how often each method is called; then, on a fresh spool each
time, the n-th call of method m raises ``OSError(e)`` for every m, every n and every
e in ENOSPC, EIO, EACCES. After each fault:

* the error is a ``SpoolError``, one line, naming a path inside the spool ("disk full"
  for ENOSPC), or the operation completed;
* every job is in exactly one state directory, in its old state or its new one
  (an add that failed enqueued nothing);
* tmp/ holds nothing the operation staged;
* the spool still works: redoing the operation succeeds, a later recovery brings back a
  job stranded in running/, and an in-process burst ``Worker`` drains every job.

The same sweep runs through the CLI (exit 1, one line on stderr), through a running
``Worker`` (it never crashes and exits its burst), through the real console script in
a subprocess, and on a real, tiny tmpfs that fills up.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

import taskq
from taskq import cli, times
from taskq.errors import SpoolError
from taskq.policy import Outcome
from taskq.spool import layout
from taskq.spool.fileio import FileIO
from taskq.spool.jobs import JobStore
from taskq.spool.layout import parse_pending_name
from taskq.stopping import StopState
from taskq.worker import Worker
from workerutil import STATES
from workerutil import files as ls

METHODS = ("write_new", "fsync", "fsync_dir", "rename", "link", "unlink", "mkdir", "open_lock", "create_empty",
           "overwrite", "append", "open_append")
#: Writes to a job's log: a worker that cannot make them fails the attempt.
LOG_METHODS = ("open_append", "append")
ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO, "EACCES": errno.EACCES}
_ORIG = {m: getattr(FileIO, m) for m in METHODS}

#: Every fault that fired, by (suite, operation, method, errno name): summarised at the end.
FIRED: Counter = Counter()


# -- the injector ------------------------------------------------------------------------


@dataclass
class Plan:
    method: str
    nth: int
    err: int
    sticky: bool = False  # also fail every later call of the method (a dead disk)
    count: int = 1  # how many calls fail, from the nth on


class Injector:
    """Counts FileIO calls while armed, and raises the planned fault."""

    def __init__(self) -> None:
        self.armed = False
        self.plan: Optional[Plan] = None
        self.calls: Counter = Counter()
        self.fired = 0
        self.label: tuple = ()
        self.lock = threading.Lock()

    def arm(self, plan: Optional[Plan], label: tuple = ()) -> None:
        with self.lock:
            self.plan, self.label = plan, label
            self.calls = Counter()
            self.fired = 0
            self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def check(self, method: str) -> Optional[int]:
        """Count a call; return the errno to raise, if this call is to fail."""
        if not self.armed:
            return None
        with self.lock:
            self.calls[method] += 1
            plan = self.plan
            if plan is None or plan.method != method:
                return None
            n = self.calls[method]
            if plan.nth <= n < plan.nth + plan.count or (plan.sticky and n > plan.nth):
                self.fired += 1
                FIRED[self.label + (method, errno.errorcode[plan.err])] += 1
                return plan.err
        return None


def _wrap(method: str, inj: Injector) -> Callable:
    orig = _ORIG[method]

    def wrapper(self, *args):
        err = inj.check(method)
        if err is not None:
            if method == "write_new":
                # As a full disk does: the file exists, half written, then the error.
                path, data, mode, _sync = args
                orig(self, path, data[: len(data) // 2], mode, False)
            raise OSError(err, os.strerror(err))
        return orig(self, *args)

    wrapper.__name__ = method
    return wrapper


@pytest.fixture
def inj(monkeypatch) -> Injector:
    """FileIO patched at class level: every Store (API, CLI, Worker) goes through it."""
    injector = Injector()
    for method in METHODS:
        monkeypatch.setattr(FileIO, method, _wrap(method, injector))
    return injector


def summary_lines() -> list[str]:
    by_suite: Counter = Counter()
    by_method: Counter = Counter()
    by_errno: Counter = Counter()
    by_op: Counter = Counter()
    for key, n in FIRED.items():
        by_suite[key[0]] += n
        by_op[f"{key[0]}:{key[1]}"] += n
        by_method[key[-2]] += n
        by_errno[key[-1]] += n
    return [
        f"faults injected: {sum(FIRED.values())}",
        "  by suite:     " + ", ".join(f"{k} {v}" for k, v in sorted(by_suite.items())),
        "  by method:    " + ", ".join(f"{k} {v}" for k, v in sorted(by_method.items())),
        "  by errno:     " + ", ".join(f"{k} {v}" for k, v in sorted(by_errno.items())),
        "  by operation: " + ", ".join(f"{k} {v}" for k, v in sorted(by_op.items())),
    ]


class _Summary:
    """Prints the count of injected faults in pytest's terminal summary."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if FIRED:
            terminalreporter.write_sep("-", "fault injection")
            for line in summary_lines():
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def fault_summary(request):
    manager = request.config.pluginmanager
    if manager.get_plugin("taskq-fault-summary") is None:
        manager.register(_Summary(), "taskq-fault-summary")
    yield


def plans(counts: Counter, sticky: bool = False) -> list[Plan]:
    """Every (method, n, errno) for the calls counted in a dry run."""
    out = []
    for method in METHODS:
        for nth in range(1, counts.get(method, 0) + 1):
            for err in ERRNOS.values():
                out.append(Plan(method, nth, err, sticky))
    return out


# -- the spool as seen from outside ------------------------------------------------------


def where(root: Path) -> dict[str, list[str]]:
    """id -> the state directories holding a job file with that id. Drop-in files
    without a taskq name are listed as ``dropin:NAME``."""
    out: dict[str, list[str]] = {}
    for state in STATES:
        try:
            names = os.listdir(root / state)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            if state == "pending":
                parsed = parse_pending_name(name)
                key = parsed.id if parsed else f"dropin:{name}"
            else:
                key = name[:-5]
            out.setdefault(key, []).append(state)
    return out


def state_of(root: Path, job_id: str) -> Optional[str]:
    found = where(root).get(job_id)
    return found[0] if found else None


def read_record(root: Path, job_id: str) -> dict:
    state = state_of(root, job_id)
    assert state is not None, f"job {job_id} is lost"
    if state == "pending":
        (name,) = [n for n in ls(root, "pending") if (p := parse_pending_name(n)) and p.id == job_id]
    else:
        name = f"{job_id}.json"
    return json.loads((root / state / name).read_bytes())


def check_error(exc: BaseException, root: Path, plan: Plan) -> None:
    assert isinstance(exc, SpoolError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert "\n" not in message and message.strip() == message and message
    assert str(root) in message, f"the message names no path in the spool: {message!r}"
    if plan.err == errno.ENOSPC:
        assert "disk full" in message, message
    else:
        assert os.strerror(plan.err) in message, message


def check_spool(root: Path, expected: dict[str, set[str]]) -> None:
    """Each job of *expected* (id -> allowed states) is in exactly one of them; no job
    anywhere is in two directories; tmp/ is empty."""
    found = where(root)
    for job_id, states in found.items():
        assert len(states) == 1, f"job {job_id} is in {states}"
    for job_id, allowed in expected.items():
        got = found.get(job_id, [None])[0]
        assert got in allowed, f"job {job_id} is {got}, expected one of {sorted(map(str, allowed))}"
    assert ls(root, "tmp") == [], f"stray files in tmp/: {ls(root, 'tmp')}"


def drain(root: Path) -> str:
    """A fresh burst Worker, in this process, with no fault: recovers and runs all."""
    log = io.StringIO()
    worker = Worker(taskq.Spool(root), burst=True, log=log, stop=StopState())
    assert worker.run() == 0
    return log.getvalue()


# -- the operations ------------------------------------------------------------------------


class Ctx:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.api = taskq.Spool(root)
        self.sd = self.api.store
        self.tr = self.api.transitions
        self.target: Optional[str] = None
        self.bystander: Optional[str] = None
        self.claimed: Any = None
        self.result: Any = None
        self.before: set[str] = set()
        self.data: dict[str, Any] = {}


def add_job(ctx: Ctx, **kw: Any) -> str:
    kw.setdefault("backoff", 0)
    kw.setdefault("max_attempts", 3)
    command = kw.pop("command", ["true"])
    return ctx.api.add(command, **kw).id


def entry_of(ctx: Ctx, job_id: str):
    for name in ctx.sd.names("pending"):
        parsed = parse_pending_name(name)
        if parsed and parsed.id == job_id:
            return parsed
    raise AssertionError(f"{job_id} not pending")


def claim_job(ctx: Ctx, job_id: str):
    claimed = ctx.tr.claim(entry_of(ctx, job_id))
    assert claimed is not None
    return claimed


def claim_start(ctx: Ctx, job_id: str):
    claimed = claim_job(ctx, job_id)
    ctx.tr.start(claimed, times.now())
    return claimed


def to_failed(ctx: Ctx, **kw: Any) -> str:
    kw["max_attempts"] = 1
    job_id = add_job(ctx, **kw)
    claimed = claim_start(ctx, job_id)
    ctx.tr.settle(claimed, Outcome(exit_code=1), times.now(), 0.5)
    assert state_of(ctx.root, job_id) == "failed"
    return job_id


def to_done(ctx: Ctx, log: bool = True) -> str:
    job_id = add_job(ctx)
    claimed = claim_start(ctx, job_id)
    if log:
        fd = ctx.sd.open_log(job_id)
        os.write(fd, b"output\n")
        os.close(fd)
    ctx.tr.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    return job_id


def release(ctx: Ctx) -> None:
    """The owner dies: its lock is dropped, nothing else happens."""
    if ctx.claimed is not None:
        ctx.claimed.lock.release(remove=False)
        ctx.claimed = None


@dataclass
class Op:
    name: str
    setup: Callable[[Ctx], None]
    act: Callable[[Ctx], Any]
    #: states allowed for the target after a fault, and after success
    old: tuple
    new: tuple
    #: what to do (with no fault) after the check, before the drain
    redo: Callable[[Ctx, bool], None] = lambda ctx, failed: None
    #: final state of the target once drained
    final: tuple = ("done",)
    #: the target is the new job(s) (adds)
    adds: bool = False


# add ---------------------------------------------------------------------------------------


def _setup_plain(ctx: Ctx) -> None:
    ctx.bystander = add_job(ctx)


def _redo_add(kw: dict) -> Callable[[Ctx, bool], None]:
    def redo(ctx: Ctx, failed: bool) -> None:
        job = ctx.api.add(["true"], backoff=0, **kw)
        if kw.get("unique_key"):
            # After a failed add the key is free; after a successful one it is held.
            assert job.duplicate is (not failed), (job.duplicate, failed)
    return redo


def _act_batch(ctx: Ctx) -> Any:
    return ctx.api.add_batch([
        {"command": ["true"], "backoff": 0},
        {"command": ["true"], "backoff": 0, "unique_key": "batch-key", "priority": 3},
        {"command": ["true"], "backoff": 0, "delay": 0},
    ])


def _redo_batch(ctx: Ctx, failed: bool) -> None:
    jobs = _act_batch(ctx)
    assert jobs[1].duplicate is (not failed)


# claim -------------------------------------------------------------------------------------


def _setup_target(ctx: Ctx, **kw: Any) -> None:
    ctx.bystander = add_job(ctx)
    ctx.target = add_job(ctx, **kw)


def _act_claim(ctx: Ctx) -> Any:
    ctx.claimed = ctx.tr.claim(entry_of(ctx, ctx.target))
    return ctx.claimed


def _setup_invalid(ctx: Ctx) -> None:
    ctx.bystander = add_job(ctx)
    name = "0999999999.20000101T000000000Z.BADFILE.json"
    raw = b'{"command": ["true"], "cwd": 17'
    (ctx.root / "pending" / name).write_bytes(raw)
    os.chmod(ctx.root / "pending" / name, 0o600)
    ctx.target = "BADFILE"
    ctx.data["raw"] = raw


def _act_claim_invalid(ctx: Ctx) -> Any:
    return ctx.tr.claim(entry_of(ctx, ctx.target))


# start, settle -----------------------------------------------------------------------------


def _setup_claimed(ctx: Ctx, **kw: Any) -> None:
    _setup_target(ctx, **kw)
    ctx.claimed = claim_job(ctx, ctx.target)


def _act_start(ctx: Ctx) -> Any:
    try:
        return ctx.tr.start(ctx.claimed, times.now())
    except SpoolError:
        # What the worker does: give up the job; recovery returns it.
        assert ctx.claimed.job.attempts == [], "a failed start is not kept in memory"
        release(ctx)
        raise


def _setup_started(ctx: Ctx, **kw: Any) -> None:
    _setup_target(ctx, **kw)
    ctx.claimed = claim_start(ctx, ctx.target)


def _act_settle(outcome: Outcome) -> Callable[[Ctx], Any]:
    def act(ctx: Ctx) -> Any:
        claimed, ctx.claimed = ctx.claimed, None  # settle releases the lock either way
        return ctx.tr.settle(claimed, outcome, times.now(), 0.5)
    return act


# recover -----------------------------------------------------------------------------------


def _setup_lost(ctx: Ctx) -> None:
    _setup_started(ctx)
    release(ctx)


def _setup_settled(ctx: Ctx) -> None:
    """The worker died while settling: the outcome is recorded, the move is not."""
    _setup_started(ctx)
    job = ctx.claimed.job
    job.attempts[-1].finished_at = times.iso(times.now())
    job.attempts[-1].exit_code = 0
    ctx.sd.write("running", f"{job.id}.json", job.to_bytes())
    release(ctx)


def _setup_returned(ctx: Ctx) -> None:
    """The worker died between claim and start."""
    _setup_claimed(ctx)
    release(ctx)


def _act_recover(ctx: Ctx) -> Any:
    return ctx.tr.recover(ctx.target, times.now(), 0.5)


# normalise ---------------------------------------------------------------------------------


def _setup_dropin(ctx: Ctx) -> None:
    ctx.bystander = add_job(ctx)
    name = "hello.json"
    (ctx.root / "pending" / name).write_text(json.dumps({"command": ["true"], "backoff": 0, "max_attempts": 3}))
    ctx.target = f"dropin:{name}"


def _act_normalise(ctx: Ctx) -> Any:
    return ctx.tr.normalise("hello.json", times.now(), os.getcwd(), {}, {})


# retry, cancel, purge, dependencies, pause --------------------------------------------------------


def _setup_failed(ctx: Ctx, **kw: Any) -> None:
    ctx.bystander = add_job(ctx)
    ctx.target = to_failed(ctx, **kw)


def _act_retry(ctx: Ctx) -> Any:
    return ctx.api.retry([ctx.target])


def _redo_retry(ctx: Ctx, failed: bool) -> None:
    if state_of(ctx.root, ctx.target) == "failed":
        ctx.api.retry([ctx.target])


def _act_cancel(ctx: Ctx) -> Any:
    return ctx.api.cancel([ctx.target], wait=0.05)


def _redo_cancel(ctx: Ctx, failed: bool) -> None:
    if failed and state_of(ctx.root, ctx.target) != "failed":
        ctx.api.cancel([ctx.target], wait=0.05)
    assert state_of(ctx.root, ctx.target) == "failed"
    assert read_record(ctx.root, ctx.target)["last_error"] == "cancelled"


def _redo_cancel_running(ctx: Ctx, failed: bool) -> None:
    # The owner (this test) sees the request, or not, and settles accordingly.
    asked = ctx.sd.has("running", layout.cancel_file(ctx.target))
    if not failed:
        assert asked, "a cancel that returned left no request for the worker"
    outcome = Outcome(error="cancelled") if asked else Outcome(exit_code=0)
    claimed, ctx.claimed = ctx.claimed, None
    ctx.tr.settle(claimed, outcome, times.now(), 0.5)
    assert not os.path.lexists(ctx.root / "running" / layout.cancel_file(ctx.target))


def _setup_done_pair(ctx: Ctx) -> None:
    ctx.bystander = add_job(ctx)
    ctx.target = to_done(ctx)
    ctx.data["other"] = to_done(ctx)


def _act_purge_done(ctx: Ctx) -> Any:
    return ctx.api.purge("done")


def _setup_failed_pair(ctx: Ctx) -> None:
    ctx.bystander = add_job(ctx)
    ctx.target = to_failed(ctx)
    # and a file that is not a job, quarantined with its .reason
    name = "0999999999.20000101T000000000Z.JUNK.json"
    (ctx.root / "pending" / name).write_bytes(b"not json")
    assert ctx.tr.claim(entry_of(ctx, "JUNK")) is None
    assert (ctx.root / "failed" / "JUNK.reason").exists()
    ctx.data["other"] = "JUNK"


def _act_purge_failed(ctx: Ctx) -> Any:
    return ctx.api.purge("failed")


def _redo_purge(state: str) -> Callable[[Ctx, bool], None]:
    def redo(ctx: Ctx, failed: bool) -> None:
        # Whatever the fault left, a second purge finishes the job: no job file, no
        # reason and no log is left behind for the purged ids.
        ctx.api.purge(state)
        for job_id in (ctx.target, ctx.data["other"]):
            for path in (ctx.root / state / f"{job_id}.json", ctx.root / state / f"{job_id}.reason",
                         ctx.root / "logs" / f"{job_id}.log"):
                assert not os.path.lexists(path), f"{path} left behind"
    return redo


def _check_purge_pairs(ctx: Ctx, state: str) -> None:
    """After a failed purge, a job that is still listed keeps its log and reason: a
    second purge can find them. A log or reason without its job is an orphan no purge
    will ever remove."""
    for job_id in (ctx.target, ctx.data["other"]):
        has_job = os.path.lexists(ctx.root / state / f"{job_id}.json")
        for extra in (ctx.root / "logs" / f"{job_id}.log", ctx.root / state / f"{job_id}.reason"):
            if os.path.lexists(extra):
                assert has_job, f"{extra.name} is left without its job file"


def _setup_dependent(ctx: Ctx) -> None:
    ctx.bystander = add_job(ctx)
    dep = add_job(ctx)
    ctx.target = add_job(ctx, after=[dep])
    claimed = claim_start(ctx, dep)
    claimed.job.max_attempts = 1
    ctx.tr.settle(claimed, Outcome(exit_code=100), times.now(), 0.5)
    ctx.data["dep"] = dep


def _act_fail_dependent(ctx: Ctx) -> Any:
    return ctx.tr.fail_dependent(entry_of(ctx, ctx.target), ctx.data["dep"], times.now())


OPS = [
    Op("add", _setup_plain, lambda ctx: ctx.api.add(["true"], backoff=0), (None,), ("pending",),
       redo=_redo_add({}), adds=True),
    Op("add_unique_key", _setup_plain, lambda ctx: ctx.api.add(["true"], backoff=0, unique_key="k"),
       (None,), ("pending",), redo=_redo_add({"unique_key": "k"}), adds=True),
    Op("add_batch", _setup_plain, _act_batch, (None,), ("pending",), redo=_redo_batch, adds=True),
    Op("claim", _setup_target, _act_claim, ("pending", "running"), ("running",)),
    Op("claim_invalid_file", _setup_invalid, _act_claim_invalid, ("pending", "running", "failed"),
       ("failed",), final=("failed",)),
    Op("start_attempt", _setup_claimed, _act_start, ("running",), ("running",)),
    Op("settle_done", _setup_started, _act_settle(Outcome(exit_code=0)), ("running", "done"), ("done",)),
    Op("settle_retry", _setup_started, _act_settle(Outcome(exit_code=1)), ("running", "pending"), ("pending",)),
    Op("settle_failed", lambda ctx: _setup_started(ctx, max_attempts=1), _act_settle(Outcome(exit_code=1)),
       ("running", "failed"), ("failed",), final=("failed",)),
    Op("recover_worker_lost", _setup_lost, _act_recover, ("running", "pending"), ("pending",)),
    Op("recover_settling", _setup_settled, _act_recover, ("running", "done"), ("done",)),
    Op("recover_never_started", _setup_returned, _act_recover, ("running", "pending"), ("pending",)),
    Op("normalise_drop_in", _setup_dropin, _act_normalise, ("pending", "running"), ("pending",), adds=True),
    Op("retry", _setup_failed, _act_retry, ("failed", "pending"), ("pending",), redo=_redo_retry),
    Op("retry_unique_key", lambda ctx: _setup_failed(ctx, unique_key="rk"), _act_retry,
       ("failed", "pending"), ("pending",), redo=_redo_retry),
    Op("cancel_pending", _setup_target, _act_cancel, ("pending", "running", "failed"), ("failed",),
       redo=_redo_cancel, final=("failed",)),
    Op("cancel_running", _setup_started, _act_cancel, ("running",), ("running",),
       redo=_redo_cancel_running, final=("done", "failed")),
    Op("purge_done", _setup_done_pair, _act_purge_done, ("done", None), (None,),
       redo=_redo_purge("done"), final=(None,)),
    Op("purge_failed", _setup_failed_pair, _act_purge_failed, ("failed", None), (None,),
       redo=_redo_purge("failed"), final=(None,)),
    Op("fail_dependent", _setup_dependent, _act_fail_dependent, ("pending", "running", "failed"),
       ("failed",), final=("failed",)),
    Op("pause", _setup_plain, lambda ctx: ctx.api.pause(), (), (), redo=lambda ctx, failed: (
        ctx.api.pause(), ctx.api.resume())),
]


def _fresh(tmp_path: Path, op: Op, label: str) -> Ctx:
    root = tmp_path / label
    ctx = Ctx(root)
    op.setup(ctx)
    ctx.before = set(where(root))
    return ctx


def _expected(ctx: Ctx, op: Op, failed: bool) -> dict[str, set]:
    exp: dict[str, set] = {}
    if ctx.bystander:
        exp[ctx.bystander] = {"pending"}
    if ctx.target and not op.adds:
        exp[ctx.target] = set(op.old) if failed else set(op.new)
    if "dep" in ctx.data:
        exp[ctx.data["dep"]] = {"failed"}
    return exp


def _check_adds(ctx: Ctx, op: Op, failed: bool) -> None:
    new = set(where(ctx.root)) - ctx.before
    if op.name == "normalise_drop_in":
        gone = ctx.before - set(where(ctx.root))
        if failed:
            # the drop-in is where it was, or stranded in running/ under its new id
            assert gone in (set(), {ctx.target}), (gone, new)
            if gone:
                assert len(new) == 1 and where(ctx.root)[next(iter(new))][0] in ("running", "pending")
        else:
            assert gone == {ctx.target} and len(new) == 1
            assert where(ctx.root)[next(iter(new))] == ["pending"]
        return
    if failed:
        assert new == set(), f"a failed add left {new} in the spool"
    else:
        assert new and all(where(ctx.root)[j] == ["pending"] for j in new)


def run_scenario(tmp_path: Path, inj: Injector, op: Op, plan: Plan, label: str) -> None:
    ctx = _fresh(tmp_path, op, label)
    inj.arm(plan, ("api", op.name))
    error: Optional[BaseException] = None
    try:
        ctx.result = op.act(ctx)
    except Exception as exc:  # noqa: BLE001 - checked below
        error = exc
    finally:
        inj.disarm()
    assert inj.fired, f"{op.name}: {plan} did not fire (calls {dict(inj.calls)})"
    failed = error is not None
    if failed:
        check_error(error, ctx.root, plan)
    if op.adds:
        _check_adds(ctx, op, failed)
        check_spool(ctx.root, _expected(ctx, op, failed))
    else:
        check_spool(ctx.root, _expected(ctx, op, failed))
    if op.name == "claim_invalid_file":
        # never lost, never rewritten: the bytes are the ones that were dropped
        state = state_of(ctx.root, "BADFILE")
        path = (ctx.root / state / (entry_of(ctx, "BADFILE").name if state == "pending" else "BADFILE.json"))
        assert path.read_bytes() == ctx.data["raw"]
    if op.name.startswith("purge_"):
        _check_purge_pairs(ctx, op.name.split("_")[1])
    if op.name == "start_attempt" and failed:
        attempts = read_record(ctx.root, ctx.target)["attempts"]
        assert len(attempts) <= 1 and all(a["finished_at"] is None for a in attempts)
    # The spool still works: redo, recover, drain.
    op.redo(ctx, failed)
    release(ctx)
    log = drain(ctx.root)
    assert "internal error" not in log, log
    final = where(ctx.root)
    for states in final.values():
        assert len(states) == 1
    if ctx.bystander:
        assert final.get(ctx.bystander) == ["done"], log
    if ctx.target and not op.adds:
        got = final.get(ctx.target, [None])[0]
        if op.name == "cancel_pending" and failed:
            assert got in ("failed", "done")
        else:
            assert got in op.final, f"{op.name}: target ended {got}\n{log}"
    if op.adds:
        for job_id in set(final) - ctx.before:
            assert final[job_id] == ["done"], (job_id, final[job_id], log)
    assert ls(ctx.root, "tmp") == []
    leftovers = [n for n in ls(ctx.root, "running")]
    assert leftovers == [], f"running/ not empty after the drain: {leftovers}"


def dry_run(tmp_path: Path, inj: Injector, op: Op) -> Counter:
    ctx = _fresh(tmp_path, op, "dry")
    inj.arm(None)
    try:
        ctx.result = op.act(ctx)
    finally:
        inj.disarm()
    release(ctx)
    return inj.calls


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_every_fault_of_every_step(tmp_path, inj, op):
    counts = dry_run(tmp_path, inj, op)
    assert sum(counts.values()) > 0, f"{op.name} made no FileIO call"
    todo = plans(counts)
    for plan in todo:
        label = f"{plan.method}-{plan.nth}-{errno.errorcode[plan.err]}"
        try:
            run_scenario(tmp_path, inj, op, plan, label)
        except AssertionError as exc:
            raise AssertionError(f"{op.name} with call {plan.nth} of {plan.method} failing "
                                 f"({errno.errorcode[plan.err]}): {exc}") from None


def test_every_operation_reaches_the_disk_through_the_seam(tmp_path, inj):
    """The sweep is only as good as the seam: each kind of step is exercised."""
    seen: Counter = Counter()
    for op in OPS:
        seen.update(dry_run(tmp_path / op.name, inj, op))
    ctx = _worker_setup(tmp_path / "worker")  # what only a worker does: open logs
    inj.arm(None)
    _run_worker(ctx.root)
    inj.disarm()
    seen.update(inj.calls)
    for method in METHODS:
        assert seen[method] > 0, f"no operation calls FileIO.{method}"


# -- through the CLI (in-process console entry) ------------------------------------------------


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["taskq", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def _cli_setup(root: Path, what: str) -> tuple[list[str], Optional[str]]:
    ctx = Ctx(root)
    bystander = add_job(ctx)
    batch = root.parent / f"{root.name}.jsonl"
    batch.write_text('{"command": ["true"]}\n{"command": ["true"], "unique_key": "b"}\n')
    target = None
    if what in ("retry",):
        target = to_failed(ctx)
    elif what == "cancel":
        target = add_job(ctx)
    elif what == "purge":
        target = to_done(ctx)
    args = {
        "add": ["add", "--spool", str(root), "--", "true"],
        "add-key": ["add", "--spool", str(root), "--unique-key", "k", "--", "true"],
        "add-batch": ["add", "--spool", str(root), "--batch", str(batch)],
        "retry": ["retry", "--spool", str(root), str(target)],
        "cancel": ["cancel", "--spool", str(root), str(target)],
        "purge": ["purge", "--spool", str(root), "--state", "done"],
        "pause": ["pause", "--spool", str(root)],
    }[what]
    return args, bystander


CLI_OPS = ("add", "add-key", "add-batch", "retry", "cancel", "purge", "pause")


@pytest.mark.parametrize("what", CLI_OPS)
def test_cli_exits_1_with_one_line_naming_the_path(tmp_path, inj, capsys, monkeypatch, what):
    root = tmp_path / "dry"
    args, _ = _cli_setup(root, what)
    inj.arm(None)
    code, out, err = run_cli(args, capsys, monkeypatch)
    inj.disarm()
    assert code == 0, err
    counts = inj.calls
    for plan in plans(counts):
        label = f"{what}-{plan.method}-{plan.nth}-{errno.errorcode[plan.err]}"
        root = tmp_path / label
        args, bystander = _cli_setup(root, what)
        before = where(root)
        inj.arm(plan, ("cli", what))
        code, out, err = run_cli(args, capsys, monkeypatch)
        inj.disarm()
        assert inj.fired, label
        if code == 0:
            continue  # the fault hit a step after the change was made, and was harmless
        assert code == 1, f"{label}: exit {code}\n{err}"
        lines = err.splitlines()
        assert len(lines) == 1, f"{label}: {err!r}"
        assert lines[0].startswith("taskq: ") and str(root) in lines[0], f"{label}: {err!r}"
        assert "Traceback" not in err
        if plan.err == errno.ENOSPC:
            assert "disk full" in lines[0], f"{label}: {err!r}"
        if what.startswith("add"):
            assert out == "", f"{label}: a failed add printed {out!r}"
            assert where(root) == before, f"{label}: a failed add changed the spool"
        assert ls(root, "tmp") == []
        found = where(root)
        assert all(len(s) == 1 for s in found.values())
        assert found[bystander] == ["pending"]


# -- a running worker meets the faults ----------------------------------------------------------


def _worker_setup(root: Path) -> Ctx:
    ctx = Ctx(root)
    add_job(ctx)
    add_job(ctx, priority=5)
    add_job(ctx, command=["false"], max_attempts=1)
    (root / "pending" / "dropped.json").write_text(json.dumps({"command": ["true"], "backoff": 0}))
    # and a job whose worker died, for the start-up recovery
    lost = add_job(ctx, priority=-5)
    claimed = claim_start(ctx, lost)
    claimed.lock.release(remove=False)
    ctx.before = set(where(root))
    return ctx


def _run_worker(root: Path, timeout: float = 20.0, **kw: Any) -> tuple[int, str]:
    log = io.StringIO()
    stop = StopState()
    worker = Worker(taskq.Spool(root), burst=True, log=log, stop=stop, **kw)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["code"] = worker.run()
        except BaseException as exc:  # noqa: BLE001
            result["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        stop.request(hard=True)
        thread.join(10)
        pytest.fail(f"burst worker still running after {timeout}s:\n{log.getvalue()}")
    if "exc" in result:
        raise AssertionError(f"the worker crashed: {result['exc']!r}\n{log.getvalue()}")
    return result["code"], log.getvalue()


def _run_worker_for_a_while(root: Path, inj: Injector, monkeypatch, seconds: float = 10.0,
                            max_jobs: int = 2) -> io.StringIO:
    """A worker that is not in burst mode (*max_jobs* jobs at most, periodic recovery every
    0.3 s), in a thread of this process, on *root* for *seconds*; then the injector is
    disarmed and the worker stopped if it still runs. Returns its log."""
    import taskq.worker.loop as worker_mod

    monkeypatch.setattr(worker_mod, "RECOVERY_PERIOD", 0.3)
    log = io.StringIO()
    stop = StopState()
    worker = Worker(taskq.Spool(root), max_jobs=max_jobs, log=log, stop=stop)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(seconds)
    inj.disarm()
    if thread.is_alive():
        stop.request(hard=True)
        thread.join(10)
    return log


def _worker_final_check(ctx: Ctx, log: str) -> None:
    found = where(ctx.root)
    assert all(len(s) == 1 for s in found.values()), found
    states = Counter(s[0] for s in found.values())
    # 4 jobs run to done (bystanders, drop-in, the recovered one), one fails for good
    assert states == Counter({"done": 4, "failed": 1}), (found, log)
    for job_id, (state,) in found.items():
        if state == "failed":
            assert read_record(ctx.root, job_id)["command"] == ["false"], log
    assert ls(ctx.root, "tmp") == [] and ls(ctx.root, "running") == []


@pytest.mark.parametrize("sticky", [False, True], ids=["once", "from-then-on"])
def test_burst_worker_survives_every_fault_and_the_next_one_drains(tmp_path, inj, sticky):
    ctx = _worker_setup(tmp_path / "dry")
    inj.arm(None)
    code, log = _run_worker(ctx.root)
    inj.disarm()
    assert code == 0
    _worker_final_check(ctx, log)
    counts = inj.calls
    todo = plans(counts, sticky)
    # one errno per step (they rotate): the API sweep above covers every errno
    todo = [p for i, p in enumerate(todo) if i % len(ERRNOS) == (p.nth % len(ERRNOS))]
    if sticky:
        todo = [p for p in todo if p.nth <= 2]
    for plan in todo:
        label = f"{'s' if sticky else 'o'}-{plan.method}-{plan.nth}-{errno.errorcode[plan.err]}"
        ctx = _worker_setup(tmp_path / label)
        inj.arm(plan, ("worker", "burst-sticky" if sticky else "burst"))
        code, log = _run_worker(ctx.root)
        inj.disarm()
        assert code == 0, f"{label}:\n{log}"
        assert "internal error" not in log, f"{label}:\n{log}"
        found = where(ctx.root)
        assert all(len(s) == 1 for s in found.values()), f"{label}: {found}"
        assert len(found) == len(ctx.before), f"{label}: jobs lost or duplicated: {found}\n{log}"
        assert ls(ctx.root, "tmp") == [], f"{label}: {ls(ctx.root, 'tmp')}"
        if inj.fired:
            assert "cannot" in log, f"{label}: the fault left no event line\n{log}"
        if sticky and plan.method in LOG_METHODS:
            # A log that can never be written fails each attempt (it counts, with its
            # backoff, as Postfix defers on a local error): the jobs end in failed/
            # saying so, and `retry` brings them back once the disk is mended.
            failed = [job.id for job in ctx.api.list(state="failed", limit=None)
                      if (job.last_error or "").startswith("cannot ")]
            ctx.api.retry(failed)
        log2 = drain(ctx.root)
        try:
            _worker_final_check(ctx, log + log2)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from None


def test_worker_retries_a_claim_that_failed_without_a_restart(tmp_path, inj, monkeypatch):
    """A transient error on the claim's rename leaves the job in pending/: the same
    worker claims it again later (it is not forgotten until the worker restarts)."""
    ctx = Ctx(tmp_path / "spool")
    first = add_job(ctx, priority=9)
    second = add_job(ctx)
    inj.arm(Plan("rename", 1, errno.EIO), ("worker", "claim-again"))
    log = _run_worker_for_a_while(ctx.root, inj, monkeypatch)
    assert inj.fired == 1
    assert f"cannot claim {first}" in log.getvalue()
    assert state_of(ctx.root, second) == "done", log.getvalue()
    assert state_of(ctx.root, first) == "done", (
        "the job whose claim failed was never claimed again by the running worker\n" + log.getvalue())


def test_worker_takes_in_a_drop_in_again_after_a_failed_attempt(tmp_path, inj, monkeypatch):
    """A drop-in file the worker could not take in (its rename failed) is taken in
    later by the same worker, not only after a restart."""
    ctx = Ctx(tmp_path / "spool")
    add_job(ctx)  # creates the spool
    ctx.sd.names("pending")
    (ctx.root / "pending" / "late.json").write_text(json.dumps({"command": ["true"]}))
    inj.arm(Plan("rename", 1, errno.EIO), ("worker", "drop-in-again"))
    log = _run_worker_for_a_while(ctx.root, inj, monkeypatch)
    assert inj.fired == 1
    text = log.getvalue()
    assert "cannot take in pending/late.json" in text, text
    states = sorted(s[0] for s in where(ctx.root).values())
    assert states == ["done", "done"], f"{where(ctx.root)}\n{text}"


def test_stranded_job_recovered_by_the_running_worker(tmp_path, inj, monkeypatch):
    """A claimed job whose attempt cannot be recorded, and which then cannot be put
    back to pending either, is left in running/ with no owner; the same worker's
    periodic recovery brings it back and runs it. The attempt's note in the lock's
    file fails first (README, "Durability and speed"), then renames 2 and 3: the
    record the start falls back to, and the unclaim's."""
    ctx = Ctx(tmp_path / "spool")
    first = add_job(ctx, priority=9)
    second = add_job(ctx)
    note = JobStore.note_attempt
    notes = [0]

    def note_fails_once(self: JobStore, lock: Any, attempt: Any, pgid: Optional[int] = None) -> None:
        notes[0] += 1
        if notes[0] == 1:
            raise SpoolError("cannot write the lock's file: Input/output error")
        note(self, lock, attempt, pgid)

    monkeypatch.setattr(JobStore, "note_attempt", note_fails_once)
    inj.arm(Plan("rename", 2, errno.EIO, count=2), ("worker", "stranded"))
    log = _run_worker_for_a_while(ctx.root, inj, monkeypatch, max_jobs=3)  # the failed start counts
    assert inj.fired == 2
    text = log.getvalue()
    assert f"cannot start {first}" in text
    assert f"recovered {first}" in text, text
    assert state_of(ctx.root, first) == "done" and state_of(ctx.root, second) == "done", text


# -- the real console script, FileIO patched in a subprocess -------------------------------------


DRIVER = textwrap.dedent("""
    import errno, os, sys
    from taskq.spool.fileio import FileIO
    method, nth, err = sys.argv[1], int(sys.argv[2]), getattr(errno, sys.argv[3])
    orig = getattr(FileIO, method)
    calls = [0]
    def faulty(self, *args):
        calls[0] += 1
        if calls[0] == nth:
            raise OSError(err, os.strerror(err))
        return orig(self, *args)
    setattr(FileIO, method, faulty)
    sys.argv = ["taskq"] + sys.argv[4:]
    from taskq._entry import main
    main()
""")


@pytest.mark.parametrize("method, nth, err", [
    ("write_new", 1, "ENOSPC"), ("fsync", 1, "EIO"), ("link", 1, "EACCES"), ("fsync_dir", 1, "ENOSPC"),
])
def test_console_script_with_a_fault(taskq, spool, method, nth, err):
    taskq.add("true")
    before = where(spool)
    proc = subprocess.run([sys.executable, "-c", DRIVER, method, str(nth), err, "add", "--", "echo", "hi"],
                          capture_output=True, text=True, env=taskq.env(), timeout=30)
    FIRED[("subprocess", "add", method, err)] += 1
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("taskq: cannot ") and str(spool) in line
    assert ("disk full" in line) == (err == "ENOSPC")
    assert where(spool) == before and ls(spool, "tmp") == []


def test_console_script_worker_with_faults_exits_0_and_loses_nothing(taskq, spool):
    ids = [taskq.add("true", options=["--backoff", "0"]) for _ in range(3)]
    proc = subprocess.run([sys.executable, "-c", DRIVER, "rename", "2", "EIO", "work", "--burst"],
                          capture_output=True, text=True, env=taskq.env(), timeout=60)
    FIRED[("subprocess", "work", "rename", "EIO")] += 1
    assert proc.returncode == 0, proc.stderr
    assert "cannot" in proc.stderr and "Traceback" not in proc.stderr
    taskq("work", "--burst", check=True, timeout=60)
    assert all(state_of(spool, i) == "done" for i in ids)
    assert ls(spool, "tmp") == [] and ls(spool, "running") == []


# -- a real, tiny filesystem -------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def fill(path: Path) -> Path:
    """Fill the filesystem of *path*; return the filler file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    # and the last scraps: small files until not even one byte fits
    n = 0
    while True:
        scrap = path / f"scrap{n}"
        try:
            fd = os.open(scrap, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
        try:
            os.write(fd, b"x")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            os.close(fd)
            os.unlink(scrap)
            break
        os.close(fd)
        n += 1
    return filler


def free_up(path: Path) -> None:
    for name in os.listdir(path):
        if name == "filler" or name.startswith("scrap"):
            os.unlink(path / name)


def test_full_disk_for_real(taskq, tiny_fs):
    spool = tiny_fs / "spool"
    spool.mkdir(mode=0o700)
    (spool / "taskq.toml").write_text("min_free = 0\n")
    first = taskq.add("true", spool=spool)
    fill(tiny_fs)
    proc = taskq("add", "--", "echo", "hello", spool=spool)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "disk full" in line and str(spool) in line, line
    assert list(where(spool)) == [first]
    assert ls(spool, "tmp") == []
    batch = taskq("add", "--batch", "-", input='{"command": ["true"]}\n' * 5, spool=spool)
    assert batch.returncode == 1 and "disk full" in batch.stderr
    assert len(ls(spool, "pending")) == 1 and ls(spool, "tmp") == []
    # a worker on a full disk loses nothing and does not crash
    work = taskq("work", "--burst", spool=spool, timeout=60)
    assert work.returncode == 0, work.stderr
    assert "Traceback" not in work.stderr
    found = where(spool)
    assert list(found) == [first] and len(found[first]) == 1
    assert ls(spool, "tmp") == []
    free_up(tiny_fs)
    second = taskq.add("true", spool=spool)
    taskq("work", "--burst", spool=spool, check=True, timeout=60)
    assert state_of(spool, first) == "done" and state_of(spool, second) == "done"
    assert ls(spool, "tmp") == [] and ls(spool, "running") == []


def test_min_free_guard_on_a_small_filesystem(taskq, tiny_fs):
    spool = tiny_fs / "spool"
    spool.mkdir(mode=0o700)
    (spool / "taskq.toml").write_text("min_free = 0\n")
    job = taskq.add("true", spool=spool)
    (spool / "taskq.toml").write_text('min_free = "1MiB"\n')  # more than the filesystem holds
    refused = taskq("add", "--", "true", spool=spool)
    assert refused.returncode == 1, refused.stderr
    (line,) = refused.stderr.splitlines()
    assert "free" in line and str(spool) in line
    assert len(ls(spool, "pending")) == 1 and ls(spool, "tmp") == []
    try:
        work = taskq("work", "--burst", spool=spool, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("work --burst below min_free did not exit (it waits for space it never claims)")
    assert work.returncode == 0, work.stderr
    assert "min_free" in work.stderr
    assert state_of(spool, job) == "pending", "a worker claimed below min_free"
    explain = taskq("explain", job, spool=spool, check=True)
    assert "min_free" in explain.stdout, explain.stdout
    (spool / "taskq.toml").write_text("min_free = 0\n")
    taskq.add("true", spool=spool)
    taskq("work", "--burst", spool=spool, check=True, timeout=60)
    assert [s[0] for s in where(spool).values()] == ["done", "done"]


def test_failed_start_puts_the_job_back_uncounted(tmp_path, monkeypatch):
    """When recording the attempt fails, nothing ran: the worker puts the job back to
    pending/ with no attempt recorded (not a "worker lost" that would use up its budget),
    and runs it on its next try."""
    from taskq.errors import SpoolError
    from taskq.transitions import Transitions

    ctx = Ctx(tmp_path / "spool")
    job_id = add_job(ctx, max_attempts=1)
    real = Transitions.start
    calls = []

    def failing_once(self, claimed, now, warn=None):
        calls.append(claimed.job.id)
        if len(calls) == 1:
            raise SpoolError("cannot write: disk full")
        return real(self, claimed, now, warn)

    monkeypatch.setattr(Transitions, "start", failing_once)
    code, log = _run_worker(ctx.root)
    assert code == 0
    assert calls == [job_id, job_id], log
    assert f"cannot start {job_id}" in log
    record = read_record(ctx.root, job_id)
    assert state_of(ctx.root, job_id) == "done", log
    assert [a["error"] for a in record["attempts"]] == [None], record["attempts"]
