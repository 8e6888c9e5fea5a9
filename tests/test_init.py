"""``taskq init`` (README, "taskq init"), and a spool made by a producer in another
language with only tmp/ and pending/ (README, "Where the spool is"): every command
reads it, none says "no spool at"."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskq as api
from taskq.errors import NoSpoolError, SpoolError
from taskq.spool.store import Store
from workerutil import LAYOUT, assert_one_line_error


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under *root* with its mode and mtime: to show nothing changed."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns)
    return out


def drop(spool: Path, name: str, record: dict) -> None:
    """The drop-in protocol of the README: write in tmp/, rename into pending/."""
    staged = spool / "tmp" / f"{name}.part"
    staged.write_text(json.dumps(record))
    os.rename(staged, spool / "pending" / f"{name}.json")


@pytest.fixture
def umask() -> Iterator[None]:
    """A permissive umask for the test (and the taskq it starts); restored after."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- init: black box ---------------------------------------------------------------------


def test_init_creates_every_directory_0700_even_with_umask_0(taskq, spool, umask):
    proc = taskq("init", check=True)
    assert proc.stdout == ""
    assert proc.stderr == f"created spool {spool}\n"
    assert sorted(p.name for p in spool.iterdir()) == sorted(LAYOUT)
    assert mode(spool) == 0o700
    for name in LAYOUT:
        assert (spool / name).is_dir() and mode(spool / name) == 0o700, name


def test_init_creates_missing_parents(taskq, tmp_path):
    deep = tmp_path / "a" / "b" / "spool"
    taskq("init", "--spool", deep, spool=None, check=True)
    assert all((deep / name).is_dir() for name in LAYOUT)


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_init_takes_the_spool_as_every_command_does(taskq, spool, where):
    if where == "before":
        taskq("--spool", spool, "init", spool=None, check=True)
    elif where == "after":
        taskq("init", "--spool", spool, spool=None, check=True)
    else:
        taskq("init", check=True)  # TASKQ_SPOOL
    assert (spool / "pending").is_dir()


def test_init_without_spool_makes_the_default_one(taskq, home):
    taskq("init", spool=None, check=True)
    assert (home / "xdg-data" / "taskq" / "spool" / "pending").is_dir()


def test_init_is_idempotent_and_changes_nothing(taskq, spool):
    taskq("init", check=True)
    job = taskq.add("true")
    os.chmod(spool / "done", 0o750)  # a user's own choice of mode is kept
    before = tree(spool)
    proc = taskq("init", check=True)
    assert proc.stderr == f"spool {spool} exists already\n"
    assert tree(spool) == before
    assert mode(spool / "done") == 0o750
    assert taskq.json("show", job, "--json")["state"] == "pending"


def test_init_completes_a_spool_with_only_tmp_and_pending(taskq, spool):
    (spool / "tmp").mkdir(parents=True)
    (spool / "pending").mkdir()
    drop(spool, "a", {"command": ["true"]})
    proc = taskq("init", check=True)
    assert proc.stderr == f"spool {spool} exists already; created running/, done/, failed/, logs/\n"
    assert sorted(p.name for p in spool.iterdir()) == sorted(LAYOUT)
    assert [p.name for p in (spool / "pending").iterdir()] == ["a.json"]  # untouched


def test_init_refuses_a_file(taskq, tmp_path):
    path = tmp_path / "not-a-dir"
    path.write_text("mine")
    proc = taskq("init", "--spool", path, spool=None)
    assert_one_line_error(proc, 1, f"cannot create spool at {path}", "is not a directory")
    assert path.read_text() == "mine"


def test_init_refuses_a_spool_directory_that_is_a_file_and_creates_nothing(taskq, spool):
    spool.mkdir()
    (spool / "logs").write_text("oops")  # the last directory made: the others come first
    proc = taskq("init")
    assert_one_line_error(proc, 1, f"{spool / 'logs'} is not a directory")
    assert [p.name for p in spool.iterdir()] == ["logs"]
    assert (spool / "logs").read_text() == "oops"


def test_init_refuses_a_path_below_a_file(taskq, tmp_path):
    (tmp_path / "file").write_text("")
    proc = taskq("init", "--spool", tmp_path / "file" / "spool", spool=None)
    assert_one_line_error(proc, 1, "cannot create spool at")


def test_after_init_producers_and_readers_agree(taskq, spool):
    """A drop-in file written into a fresh spool is seen by status, list and show, and
    a worker runs it."""
    taskq("init", check=True)
    assert taskq.json("status", "--json")["counts"] == {"pending": 0, "running": 0, "done": 0, "failed": 0}
    assert taskq.json("list", "--json") == []
    drop(spool, "from-php", {"id": "invoice-7", "command": ["true"]})
    assert taskq.json("status", "--json")["counts"]["pending"] == 1
    assert [j["id"] for j in taskq.json("list", "--json")] == ["invoice-7"]
    assert taskq.json("show", "invoice-7", "--json")["state"] == "pending"
    taskq("work", "--burst", check=True)
    assert taskq.json("show", "invoice-7", "--json")["state"] == "done"


# -- a spool with only tmp/ and pending/ ---------------------------------------------------


@pytest.fixture
def foreign_spool(spool: Path) -> Path:
    """What a producer in another language makes: tmp/ and pending/, two drop-in files."""
    (spool / "tmp").mkdir(parents=True, mode=0o700)
    (spool / "pending").mkdir(mode=0o700)
    drop(spool, "with-id", {"id": "order-1", "command": ["echo", "1"], "priority": 2})
    drop(spool, "without-id", {"command": ["echo", "2"]})
    return spool


def test_status_reads_a_spool_with_only_tmp_and_pending(taskq, foreign_spool):
    data = taskq.json("status", "--json")
    assert data["counts"] == {"pending": 2, "running": 0, "done": 0, "failed": 0}
    assert (data["ready"], data["scheduled"], data["running"], data["recent_failures"]) == (2, 0, [], [])
    human = taskq("status", check=True)
    assert "pending:   2" in human.stdout


def test_list_reads_a_spool_with_only_tmp_and_pending(taskq, foreign_spool):
    jobs = taskq.json("list", "--json")
    assert sorted((j["id"] or j["file"], j["state"]) for j in jobs) == [
        ("order-1", "pending"), ("pending/without-id.json", "pending")]
    for state in ("pending", "running", "done", "failed"):
        proc = taskq("list", "--state", state, "--json", check=True)
        assert len(json.loads(proc.stdout)) == (2 if state == "pending" else 0)


def test_show_and_the_other_readers_on_a_spool_with_only_tmp_and_pending(taskq, foreign_spool):
    shown = taskq.json("show", "order-1", "--json")
    assert (shown["state"], shown["priority"], shown["command"]) == ("pending", 2, ["echo", "1"])
    assert "pending" in taskq("explain", "order-1", check=True).stdout
    assert taskq("logs", "order-1", check=True).stdout == ""
    assert taskq("wait", "order-1", "--timeout", "0.2").returncode == 124
    taskq("retry", "--all", check=True)  # nothing failed: nothing to do, no error
    assert "purged 0" in taskq("purge", "--state", "done", check=True).stderr
    assert_one_line_error(taskq("show", "nope"), 1, "no job nope")
    # Reading created nothing: readers never write.
    assert sorted(p.name for p in foreign_spool.iterdir()) == ["pending", "tmp"]


def test_a_worker_runs_the_jobs_of_such_a_spool(taskq, foreign_spool):
    taskq("work", "--burst", check=True)
    assert taskq.json("status", "--json")["counts"]["done"] == 2
    assert taskq.json("show", "order-1", "--json")["state"] == "done"


def test_without_pending_there_is_still_no_spool(taskq, spool):
    (spool / "tmp").mkdir(parents=True)
    for command in (["status"], ["list"], ["show", "abc"]):
        assert_one_line_error(taskq(*command), 1, f"no spool at {spool}")


# -- the API and the spool layer ---------------------------------------------------------


def test_api_init_returns_what_it_created(tmp_path):
    spool = api.Spool(tmp_path / "s")
    created = spool.init()
    assert created == [str(tmp_path / "s")] + [str(tmp_path / "s" / name) for name in LAYOUT]
    assert spool.init() == []
    assert spool.status()["counts"]["pending"] == 0


def test_api_init_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(SpoolError, match="is not a directory"):
        api.Spool(tmp_path / "f").init()


def test_a_missing_state_directory_lists_as_empty_in_a_spool(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "pending").mkdir()
    assert store.names("done") == []
    assert list(store.entries("failed")) == []


def test_without_pending_a_listing_is_no_spool(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "done").mkdir()
    with pytest.raises(NoSpoolError):
        store.names("running")
    with pytest.raises(NoSpoolError):
        list(store.entries("failed"))
