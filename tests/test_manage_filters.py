"""``retry --all --name``, ``purge --name`` and ``purge --dry-run``: the filters of the
Python API (``Spool.failed_ids(name=)``, ``Spool.purge(name=, dry_run=)``) on real temp
spools, then the installed ``taskq`` as a user's shell runs it.

Jobs are settled through the transition engine (claim, start, settle with a given
outcome), as a worker would, without starting processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import taskq
from taskq import times
from taskq.errors import ValidationError
from taskq.job import Outcome
from taskq.spool.layout import parse_pending_name
from workerutil import assert_one_line_error
from workerutil import files as ls


def settle_all(api: taskq.Spool, outcome: Outcome) -> None:
    """Claim every pending job and end its attempt with *outcome* (what a worker does)."""
    for name in ls(Path(api.path), "pending"):
        entry = parse_pending_name(name)
        assert entry is not None
        claimed = api.transitions.claim(entry)
        assert claimed is not None
        api.transitions.start(claimed, times.now())
        api.transitions.settle(claimed, outcome, times.now(), 0.5)


def make(api: taskq.Spool, names: list[str | None], outcome: Outcome) -> dict[str, str | None]:
    """Jobs with these names (one attempt each), settled with *outcome*: id -> name."""
    made = {api.add(["true"], name=name, max_attempts=1).id: name for name in names}
    settle_all(api, outcome)
    for job_id in made:  # the output log a run leaves (purge deletes it with the job)
        (Path(api.path) / "logs" / f"{job_id}.log").write_text("output\n")
    return made


FAIL = Outcome(exit_code=3)
OK = Outcome(exit_code=0)


@pytest.fixture
def api(spool: Path) -> taskq.Spool:
    return taskq.Spool(spool)


def snapshot(spool: Path) -> dict[str, list[str]]:
    return {state: ls(spool, state) for state in ("pending", "running", "done", "failed", "logs")}


# -- the API ------------------------------------------------------------------------------------


def test_failed_ids_by_name(api):
    made = make(api, ["mail", "mail", "report", None, "mailer"], FAIL)
    mail = sorted(i for i, n in made.items() if n == "mail")
    assert api.failed_ids(name="mail") == mail
    assert api.failed_ids(name="report") == [i for i, n in made.items() if n == "report"]
    assert api.failed_ids(name="nobody") == []
    assert api.failed_ids() == sorted(made)  # no name: every failed job


def test_failed_ids_by_name_skips_unreadable_files(api, spool):
    made = make(api, ["mail"], FAIL)
    (spool / "failed" / "BROKEN.json").write_text("{not json")
    assert api.failed_ids(name="mail") == list(made)
    assert "BROKEN" in api.failed_ids()


@pytest.mark.parametrize("bad", ["", 7])
def test_empty_name_is_a_validation_error(api, bad):
    make(api, ["mail"], OK)
    before = snapshot(Path(api.path))
    with pytest.raises(ValidationError, match="--name"):
        api.failed_ids(name=bad)
    with pytest.raises(ValidationError, match="--name"):
        api.purge("done", name=bad)
    assert snapshot(Path(api.path)) == before


def test_purge_by_name(api, spool):
    made = make(api, ["mail", "report", "mail", None], OK)
    mail = sorted(i for i, n in made.items() if n == "mail")
    assert api.purge("done", name="mail") == mail
    left = {i for i, n in made.items() if n != "mail"}
    assert {f.removesuffix(".json") for f in ls(spool, "done")} == left
    assert {f.removesuffix(".log") for f in ls(spool, "logs")} == left


def test_purge_by_name_frees_only_the_purged_keys(api):
    mail = api.add(["true"], name="mail", unique_key="k-mail", max_attempts=1)
    other = api.add(["true"], name="report", unique_key="k-report", max_attempts=1)
    settle_all(api, OK)
    assert api.purge("done", name="mail") == [mail.id]
    assert not api.add(["true"], unique_key="k-mail").duplicate  # free again
    again = api.add(["true"], unique_key="k-report")
    assert again.duplicate and again.id == other.id  # still held by the done job


def test_dry_run_lists_what_purge_deletes_and_deletes_nothing(api, spool):
    made = make(api, ["mail", "report", "mail"], FAIL)
    before = snapshot(spool)
    would = api.purge("failed", dry_run=True)
    assert would == sorted(made)
    would_mail = api.purge("failed", name="mail", dry_run=True)
    assert would_mail == sorted(i for i, n in made.items() if n == "mail")
    assert snapshot(spool) == before
    assert api.purge("failed", name="mail") == would_mail
    assert api.purge("failed") == sorted(set(made) - set(would_mail))


def test_dry_run_with_older_than(api, spool):
    made = make(api, ["mail", "mail"], OK)
    old, new = sorted(made)
    # settled two hours ago: the file's mtime is its settle time
    os.utime(spool / "done" / f"{old}.json", (times.now() - 7200,) * 2)
    assert api.purge("done", older_than=3600, name="mail", dry_run=True) == [old]
    assert api.purge("done", older_than=3600, dry_run=True) == [old]
    assert api.purge("done", older_than=3 * 3600, dry_run=True) == []
    assert sorted(ls(spool, "done")) == sorted([f"{old}.json", f"{new}.json"])


def test_purge_reports_progress(api):
    make(api, [f"job{i % 3}" for i in range(7)], OK)
    seen: list[tuple[int, int]] = []
    purged = api.purge("done", name="job1", progress=lambda done, total: seen.append((done, total)))
    assert len(purged) == 2
    assert seen == [(i, 7) for i in range(1, 8)]  # every candidate, named or not


def test_add_batch_reports_progress_of_new_jobs(api):
    api.add(["true"], unique_key="held")
    seen: list[tuple[int, int]] = []
    records = [{"command": ["echo", str(i)]} for i in range(5)] + [{"command": ["true"], "unique_key": "held"}]
    jobs = api.add_batch(records, progress=lambda done, total: seen.append((done, total)))
    assert [j.duplicate for j in jobs] == [False] * 5 + [True]
    assert seen == [(i, 5) for i in range(1, 6)]  # the duplicate writes nothing


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_retry_all_by_name(taskq, api, spool):
    made = make(api, ["mail", "report", "mail", None], FAIL)
    proc = taskq("retry", "--all", "--name", "mail", check=True)
    mail = sorted(i for i, n in made.items() if n == "mail")
    assert proc.stdout.splitlines() == mail
    assert proc.stderr == ""
    for job_id, name in made.items():
        assert api.get(job_id).state == ("pending" if name == "mail" else "failed")


def test_cli_retry_all_by_name_nothing_matches(taskq, api, spool):
    make(api, ["report"], FAIL)
    before = snapshot(spool)
    proc = taskq("retry", "--all", "--name", "mail", check=True)
    assert proc.stdout == ""
    assert snapshot(spool) == before


@pytest.mark.parametrize("args", [
    ["--name", "mail"],  # --name without --all
    ["SOMEID", "--name", "mail"],
    ["--all", "--name", ""],
])
def test_cli_retry_name_misuse(taskq, api, spool, args):
    make(api, ["mail"], FAIL)
    before = snapshot(spool)
    proc = taskq("retry", *args)
    assert_one_line_error(proc, 2, "--name")
    assert snapshot(spool) == before


def test_cli_purge_by_name(taskq, api, spool):
    made = make(api, ["mail", "report", "mail"], OK)
    proc = taskq("purge", "--state", "done", "--name", "mail", check=True)
    assert proc.stdout == ""  # as without --name: ids only with --dry-run
    assert proc.stderr == "purged 2 done jobs\n"
    assert ls(spool, "done") == [f"{i}.json" for i, n in made.items() if n == "report"]


def test_cli_purge_dry_run(taskq, api, spool):
    made = make(api, ["mail", "report", "mail"], OK)
    before = snapshot(spool)
    proc = taskq("purge", "--state", "done", "--name", "mail", "--dry-run", check=True)
    assert proc.stdout.splitlines() == sorted(i for i, n in made.items() if n == "mail")
    assert "would purge 2 done jobs" in proc.stderr
    assert snapshot(spool) == before
    everything = taskq("purge", "--state", "done", "--dry-run", check=True)
    assert everything.stdout.splitlines() == sorted(made)
    recent = taskq("purge", "--state", "done", "--dry-run", "--older-than", "1h", check=True)
    assert recent.stdout == ""
    assert snapshot(spool) == before
    # and the real purge deletes exactly what the dry run listed
    real = taskq("purge", "--state", "done", "--name", "mail", check=True)
    assert real.stderr == "purged 2 done jobs\n"
    assert ls(spool, "done") == [f"{i}.json" for i, n in made.items() if n == "report"]


@pytest.mark.parametrize("args", [
    ["--state", "done", "--name", ""],
    ["--state", "pending", "--name", "mail", "--dry-run"],
    ["--state", "done", "--older-than", "soon", "--dry-run"],
])
def test_cli_purge_bad_input(taskq, api, spool, args):
    make(api, ["mail"], OK)
    before = snapshot(spool)
    proc = taskq("purge", *args)
    assert_one_line_error(proc, 2)
    assert proc.stdout == ""
    assert snapshot(spool) == before


def test_cli_purge_dry_run_on_a_missing_spool(taskq, tmp_path):
    proc = taskq("purge", "--state", "done", "--dry-run", spool=tmp_path / "nowhere")
    assert_one_line_error(proc, 1, "no spool")
