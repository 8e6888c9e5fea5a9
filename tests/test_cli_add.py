"""``taskq add`` as a black box: the installed command in a subprocess (README: "Where the spool is",
"taskq add", "The job record", "The spool on disk"). Job records are read back from the spool's files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

import taskq as taskq_api
from workerutil import assert_one_line_error
from workerutil import files as ls

ID_LINE = re.compile(r"^[A-Za-z0-9_-]+\n$")
ISO_Z_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3,}Z$")
MISSING_ID = "01AAAAAAAAAAAAAAAAAAAAAAAA"


# -- helpers -----------------------------------------------------------------------------


def pending_records(spool: Path) -> list[dict]:
    return [json.loads((spool / "pending" / n).read_text()) for n in ls(spool, "pending")]


def record(spool: Path, job_id: str) -> dict:
    """The stored record of a pending job, found by the id inside the file."""
    matches = [r for r in pending_records(spool) if r.get("id") == job_id]
    assert len(matches) == 1, f"expected one pending file for {job_id}, found {len(matches)}"
    return matches[0]


def pending_name_of(spool: Path, job_id: str) -> str:
    (name,) = [n for n in ls(spool, "pending") if f".{job_id}." in n]
    return name


def ts(stamp: str) -> float:
    assert ISO_Z_MS.match(stamp), stamp
    return datetime.fromisoformat(stamp[:-1]).replace(tzinfo=timezone.utc).timestamp()


def utc_iso(*args: int) -> str:
    return datetime(*args, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def assert_nothing_enqueued(spool: Path) -> None:
    assert ls(spool, "pending") == []
    assert ls(spool, "tmp") == []


def add_json(taskq, *args: str, **kwargs) -> dict:
    return taskq.json("add", "--json", *args, **kwargs)


# -- the basics ------------------------------------------------------------------------------


def test_add_prints_the_id_alone(taskq, spool):
    proc = taskq("add", "--", "echo", "hello", check=True)
    assert ID_LINE.match(proc.stdout), proc.stdout
    assert proc.stderr == ""
    job_id = proc.stdout.strip()
    assert record(spool, job_id)["command"] == ["echo", "hello"]
    assert ls(spool, "tmp") == []


def test_add_creates_the_spool_with_private_modes(taskq, tmp_path):
    spool = tmp_path / "deep" / "er" / "spool"
    proc = subprocess.run(
        ["/bin/sh", "-c", 'umask 000 && exec "$0" add --spool "$1" -- true', taskq.exe, str(spool)],
        capture_output=True, text=True, env=taskq.env(None), timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("", "tmp", "pending", "running", "done", "failed", "logs"):
        assert oct((spool / name).stat().st_mode & 0o777) == oct(0o700), name
    (name,) = ls(spool, "pending")
    assert oct((spool / "pending" / name).stat().st_mode & 0o777) == oct(0o600)


def test_add_defaults(taskq, spool, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    job_id = taskq.add("prog", "arg one", cwd=work)
    rec = record(spool, job_id)
    assert rec["version"] == 1
    assert "state" not in rec
    assert rec["id"] == job_id
    assert rec["command"] == ["prog", "arg one"]
    assert rec["cwd"] == str(work)
    assert rec["name"] is None and rec["payload"] is None and rec["unique_key"] is None
    assert rec["env"] == {} and rec["after"] == [] and rec["attempts"] == []
    assert rec["priority"] == 0 and rec["max_attempts"] == 5 and rec["timeout"] is None
    assert rec["backoff"] == 10 and rec["backoff_max"] == 3600
    assert rec["permanent_exit_codes"] == [100]
    assert rec["last_error"] is None
    assert rec["run_at"] == rec["created_at"]
    assert ISO_Z_MS.match(rec["created_at"])


def test_command_without_double_dash(taskq, spool):
    proc = taskq("add", "echo", "hi", "there", check=True)
    assert record(spool, proc.stdout.strip())["command"] == ["echo", "hi", "there"]


def test_options_after_the_command_belong_to_it(taskq, spool):
    proc = taskq("add", "--", "grep", "--json", "--name", "x", check=True)
    assert ID_LINE.match(proc.stdout)
    rec = record(spool, proc.stdout.strip())
    assert rec["command"] == ["grep", "--json", "--name", "x"]
    assert rec["name"] is None


def test_name(taskq, spool):
    job_id = taskq.add("true", options=["--name", "thumbnail"])
    assert record(spool, job_id)["name"] == "thumbnail"


# -- payload -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [('{"user": 7, "tags": ["a", null]}', {"user": 7, "tags": ["a", None]}), ('"ünïcödé ✓"', "ünïcödé ✓"),
     ("42", 42), ("null", None)],
)
def test_payload(taskq, spool, text, value):
    job_id = taskq.add("true", options=["--payload", text])
    assert record(spool, job_id)["payload"] == value


def test_payload_file(taskq, spool, tmp_path):
    path = tmp_path / "payload.json"
    path.write_text('{"rows": [1, 2, 3]}\n')
    job_id = taskq.add("true", options=["--payload-file", str(path)])
    assert record(spool, job_id)["payload"] == {"rows": [1, 2, 3]}


def test_payload_file_relative_to_cwd(taskq, spool, tmp_path):
    (tmp_path / "p.json").write_text("[5]")
    job_id = taskq.add("true", options=["--payload-file", "p.json"], cwd=tmp_path)
    assert record(spool, job_id)["payload"] == [5]


def test_payload_from_stdin(taskq, spool):
    proc = taskq("add", "--payload-file", "-", "--", "true", input='{"from": "stdin"}', check=True)
    assert record(spool, proc.stdout.strip())["payload"] == {"from": "stdin"}


def test_payload_file_missing(taskq, spool, tmp_path):
    missing = tmp_path / "nope.json"
    proc = taskq("add", "--payload-file", str(missing), "--", "true")
    assert_one_line_error(proc, 2, str(missing))
    assert_nothing_enqueued(spool)


def test_payload_file_invalid_json(taskq, spool, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{oops")
    assert_one_line_error(taskq("add", "--payload-file", str(path), "--", "true"), 2, "payload")
    assert_one_line_error(taskq("add", "--payload-file", "-", "--", "true", input="{oops"), 2, "payload")
    assert_nothing_enqueued(spool)


def test_payload_over_the_size_limit(taskq, spool, tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps("x" * (1024 * 1024)))
    assert_one_line_error(taskq("add", "--payload-file", str(path), "--", "true"), 2, "payload")
    assert_nothing_enqueued(spool)


# -- env, cwd, shell -------------------------------------------------------------------------------


def test_env_repeatable(taskq, spool):
    job_id = taskq.add("true", options=["--env", "A=1", "--env", "EMPTY=", "--env", "URL=a=b=c", "--env", "_x9=v w"])
    assert record(spool, job_id)["env"] == {"A": "1", "EMPTY": "", "URL": "a=b=c", "_x9": "v w"}


@pytest.mark.parametrize("pair", ["NOEQUALS", "1A=x", "=x"])
def test_env_bad(taskq, spool, pair):
    assert_one_line_error(taskq("add", "--env", pair, "--", "true"), 2, "--env")
    assert_nothing_enqueued(spool)


def test_cwd_default_is_where_add_ran(taskq, spool, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    assert record(spool, taskq.add("true", cwd=here))["cwd"] == str(here)
    assert record(spool, taskq.add("true", cwd=tmp_path))["cwd"] == str(tmp_path)


def test_cwd_given(taskq, spool, tmp_path):
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    assert record(spool, taskq.add("true", options=["--cwd", str(target)]))["cwd"] == str(target)
    rel = record(spool, taskq.add("true", options=["--cwd", "sub"], cwd=target))["cwd"]
    assert rel == str(target / "sub")


def test_shell(taskq, spool):
    job_id = taskq.add("echo", "a  b", "$HOME", "|", "wc", options=["--shell"])
    assert record(spool, job_id)["command"] == ["/bin/sh", "-c", "echo a  b $HOME | wc"]
    job_id = taskq.add("ls -l | head -n 3", options=["--shell"])
    assert record(spool, job_id)["command"] == ["/bin/sh", "-c", "ls -l | head -n 3"]


# -- scheduling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prio", ["7", "-5", "-999999999"])
def test_priority(taskq, spool, prio):
    job_id = taskq.add("true", options=["--priority", prio])
    assert record(spool, job_id)["priority"] == int(prio)


def test_priority_orders_pending_names(taskq, spool):
    low = taskq.add("true", options=["--priority", "-1"])
    high = taskq.add("true", options=["--priority", "10"])
    mid = taskq.add("true")
    names = ls(spool, "pending")
    assert [next(i for i in (low, high, mid) if f".{i}." in n) for n in names] == [high, mid, low]


@pytest.mark.parametrize(
    "duration, seconds",
    [("30", 30), ("1.5", 1.5), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400)],
)
def test_delay(taskq, spool, duration, seconds):
    rec = record(spool, taskq.add("true", options=["--delay", duration]))
    assert ts(rec["run_at"]) - ts(rec["created_at"]) == pytest.approx(seconds, abs=0.0015)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("2030-01-02T03:04:05Z", utc_iso(2030, 1, 2, 3, 4, 5)),
        ("2030-01-02T03:04:05+05:30", utc_iso(2030, 1, 1, 21, 34, 5)),
        ("2030-01-02T03:04:05-08:00", utc_iso(2030, 1, 2, 11, 4, 5)),
        ("2030-01-02T03:04:05", utc_iso(2030, 1, 2, 0, 4, 5)),  # local, UTC+3
        ("2030-01-02T03:04", utc_iso(2030, 1, 2, 0, 4)),
        ("2030-01-02 03:04", utc_iso(2030, 1, 2, 0, 4)),
        ("2030-01-02", utc_iso(2030, 1, 1, 21, 0)),  # local midnight
        ("2030-01-02T03:04:05.250Z", "2030-01-02T03:04:05.250Z"),
    ],
)
def test_at(taskq, spool, given, expected):
    rec = record(spool, taskq.add("true", options=["--at", given], env={"TZ": "XXX-3"}))
    assert rec["run_at"] == expected


def test_at_in_the_past_is_ready(taskq, spool):
    rec = record(spool, taskq.add("true", options=["--at", "2001-02-03T04:05:06Z"]))
    assert rec["run_at"] == "2001-02-03T04:05:06.000Z"
    status = taskq.json("status", "--json")
    assert (status["ready"], status["scheduled"]) == (1, 0)


@pytest.mark.parametrize("given", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_at_out_of_range_is_a_validation_error(taskq, spool, given):
    assert_one_line_error(taskq("add", "--at", given, "--", "true"), 2, "--at")
    assert_nothing_enqueued(spool)


def test_delay_out_of_range_is_a_validation_error(taskq, spool):
    assert_one_line_error(taskq("add", "--delay", "999999999999d", "--", "true"), 2, "--delay")
    assert_nothing_enqueued(spool)


# -- retries and limits ---------------------------------------------------------------------------


def test_max_attempts_backoff_timeout(taskq, spool):
    rec = record(spool, taskq.add("true", options=[
        "--max-attempts", "3", "--backoff", "30s", "--backoff-max", "2h", "--timeout", "1.5",
    ]))
    assert (rec["max_attempts"], rec["backoff"], rec["backoff_max"], rec["timeout"]) == (3, 30, 7200, 1.5)
    rec = record(spool, taskq.add("true", options=["--backoff", "1.5", "--backoff-max", "1d", "--timeout", "10m"]))
    assert (rec["backoff"], rec["backoff_max"], rec["timeout"]) == (1.5, 86400, 600)
    rec = record(spool, taskq.add("true", options=["--max-attempts", "1"]))
    assert rec["max_attempts"] == 1


def test_permanent_exit_replaces_the_default(taskq, spool):
    rec = record(spool, taskq.add("true", options=["--permanent-exit", "3"]))
    assert rec["permanent_exit_codes"] == [3]
    rec = record(spool, taskq.add("true", options=["--permanent-exit", "75", "--permanent-exit", "1",
                                                    "--permanent-exit", "255"]))
    assert sorted(rec["permanent_exit_codes"]) == [1, 75, 255]


@pytest.mark.parametrize("code", ["0", "256"])
def test_permanent_exit_out_of_range(taskq, spool, code):
    proc = taskq("add", "--permanent-exit", code, "--", "true")
    assert_one_line_error(proc, 2, "permanent")
    assert_nothing_enqueued(spool)


# -- unique keys ---------------------------------------------------------------------------------


def test_unique_key_duplicate(taskq, spool):
    first = taskq.add("true", options=["--unique-key", "nightly-2030-01-02"])
    proc = taskq("add", "--unique-key", "nightly-2030-01-02", "--", "other", "command", check=True)
    assert proc.stdout == first + "\n"
    assert len(ls(spool, "pending")) == 1
    assert record(spool, first)["unique_key"] == "nightly-2030-01-02"
    other = taskq.add("true", options=["--unique-key", "nightly-2030-01-03"])
    assert other != first
    assert len(ls(spool, "pending")) == 2


def test_unique_key_json_says_duplicate(taskq, spool):
    first = add_json(taskq, "--unique-key", "k", "--", "true")
    assert first["duplicate"] is False
    second = add_json(taskq, "--unique-key", "k", "--", "true")
    assert second["duplicate"] is True
    assert second["id"] == first["id"]
    plain = add_json(taskq, "--", "true")
    assert plain["duplicate"] is False


def test_unique_key_released_when_holder_failed(taskq, spool):
    first = taskq.add("true", options=["--unique-key", "k"])
    os.rename(spool / "pending" / pending_name_of(spool, first), spool / "failed" / f"{first}.json")
    second = taskq.add("true", options=["--unique-key", "k"])
    assert second != first
    assert record(spool, second)["unique_key"] == "k"


def test_unique_key_concurrent_adds(taskq, empty_spool):
    spool = empty_spool
    procs = [taskq.popen("add", "--unique-key", "cron-line", "--", "true") for _ in range(8)]
    outs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outs
    ids = {out for out, _ in outs}
    assert len(ids) == 1
    assert ID_LINE.match(ids.pop())
    assert len(ls(spool, "pending")) == 1
    assert ls(spool, "tmp") == []


# -- dependencies ----------------------------------------------------------------------------------


def test_after(taskq, spool):
    a = taskq_api.Spool(spool).add(["true"]).id
    b = taskq_api.Spool(spool).add(["true"]).id
    c = taskq.add("true", options=["--after", a, "--after", b])
    assert record(spool, c)["after"] == [a, b]
    status = taskq.json("status", "--json")
    assert status["counts"]["pending"] == 3 and status["ready"] == 2


def test_after_missing_job(taskq, empty_spool):
    proc = taskq("add", "--after", MISSING_ID, "--", "true")
    assert_one_line_error(proc, 1, MISSING_ID)
    assert_nothing_enqueued(empty_spool)


def test_after_failed_job(taskq, spool):
    dep = taskq_api.Spool(spool).add(["true"]).id
    os.rename(spool / "pending" / pending_name_of(spool, dep), spool / "failed" / f"{dep}.json")
    proc = taskq("add", "--after", dep, "--", "true")
    assert_one_line_error(proc, 1, dep)
    assert ls(spool, "pending") == []


def test_after_done_job(taskq, spool):
    dep = taskq_api.Spool(spool).add(["true"]).id
    os.rename(spool / "pending" / pending_name_of(spool, dep), spool / "done" / f"{dep}.json")
    job = taskq.add("true", options=["--after", dep])
    assert record(spool, job)["after"] == [dep]
    assert taskq.json("status", "--json")["ready"] == 1


@pytest.mark.parametrize("bad", ["bad!id", "../x"])
def test_after_invalid_id(taskq, spool, bad):
    assert_one_line_error(taskq("add", "--after", bad, "--", "true"), 2)
    assert_nothing_enqueued(spool)


# -- --json ---------------------------------------------------------------------------------------


def test_json_is_the_whole_record(taskq, spool, tmp_path):
    out = add_json(taskq, "--name", "n", "--payload", "[1]", "--env", "K=v", "--priority", "2",
                   "--delay", "1m", "--max-attempts", "4", "--timeout", "5", "--unique-key", "u",
                   "--permanent-exit", "9", "--", "prog", "x", cwd=tmp_path)
    assert out["state"] == "pending"
    assert out["duplicate"] is False
    stored = record(spool, out["id"])
    assert {k: v for k, v in out.items() if k not in ("state", "duplicate")} == stored
    assert (out["name"], out["payload"], out["env"]) == ("n", [1], {"K": "v"})
    assert (out["priority"], out["max_attempts"], out["timeout"]) == (2, 4, 5)
    assert (out["unique_key"], out["permanent_exit_codes"], out["cwd"]) == ("u", [9], str(tmp_path))
    assert ts(out["run_at"]) - ts(out["created_at"]) == pytest.approx(60, abs=0.0015)


# -- --batch ----------------------------------------------------------------------------------------


def test_batch_file(taskq, spool, tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        '{"command": ["a"]}\n'
        "\n"
        '{"command": ["b"], "priority": 3, "payload": {"x": 1}}\n'
        '{"command": ["c"], "delay": "10m", "name": "later"}\n'
    )
    proc = taskq("add", "--batch", str(path), check=True)
    ids = proc.stdout.splitlines()
    assert len(ids) == 3
    assert [record(spool, i)["command"] for i in ids] == [["a"], ["b"], ["c"]]
    assert record(spool, ids[1])["payload"] == {"x": 1}
    assert record(spool, ids[1])["priority"] == 3
    rec = record(spool, ids[2])
    assert rec["name"] == "later"
    assert ts(rec["run_at"]) - ts(rec["created_at"]) == pytest.approx(600, abs=0.0015)
    assert ids == sorted(ids), "ids sort by creation, in line order"


def test_batch_stdin(taskq, spool, tmp_path):
    lines = "".join(json.dumps({"command": ["n", str(i)]}) + "\n" for i in range(5))
    proc = taskq("add", "--batch", "-", input=lines, check=True, cwd=tmp_path)
    ids = proc.stdout.splitlines()
    assert [record(spool, i)["command"] for i in ids] == [["n", str(i)] for i in range(5)]
    assert all(record(spool, i)["cwd"] == str(tmp_path) for i in ids)


def test_batch_json(taskq, spool):
    lines = '{"command": ["a"], "unique_key": "k"}\n{"command": ["b"]}\n{"command": ["c"], "unique_key": "k"}\n'
    proc = taskq("add", "--batch", "-", "--json", input=lines, check=True)
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == 3
    assert [o["duplicate"] for o in out] == [False, False, True]
    assert out[2]["id"] == out[0]["id"]
    assert [o["command"] for o in out] == [["a"], ["b"], ["a"]]
    assert all(o["state"] == "pending" for o in out)
    assert len(ls(spool, "pending")) == 2


@pytest.mark.parametrize(
    "lines, bad_line",
    [
        ('{"command": ["a"]}\n{"command": []}\n{"command": ["c"]}\n', 2),
        ('{"command": ["a"]}\n\n{"command": ["b"]}\nnot json\n', 4),
        ('[1, 2]\n{"command": ["b"]}\n', 1),
        ('{"command": ["a"]}\n{"command": ["b"], "max_attempts": 0}\n', 2),
        ('{"command": ["a"]}\n\n\n{"command": ["b"], "payload": "' + "x" * (1024 * 1024) + '"}\n', 4),
    ],
)
def test_batch_bad_line_enqueues_nothing(taskq, empty_spool, lines, bad_line):
    proc = taskq("add", "--batch", "-", input=lines)
    message = assert_one_line_error(proc, 2)
    assert re.search(rf"\bline {bad_line}\b", message), message
    assert_nothing_enqueued(empty_spool)


def test_batch_missing_dependency_names_the_line(taskq, spool):
    lines = f'{{"command": ["a"]}}\n{{"command": ["b"], "after": ["{MISSING_ID}"]}}\n'
    proc = taskq("add", "--batch", "-", input=lines)
    message = assert_one_line_error(proc, 1, MISSING_ID)
    assert_nothing_enqueued(spool)
    assert re.search(r"\bline 2\b", message), message


def test_batch_missing_dependency_enqueues_nothing(taskq, spool):
    lines = f'{{"command": ["a"]}}\n{{"command": ["b"], "after": ["{MISSING_ID}"]}}\n'
    proc = taskq("add", "--batch", "-", input=lines)
    assert_one_line_error(proc, 1, MISSING_ID)
    assert_nothing_enqueued(spool)


def test_batch_missing_file(taskq, spool, tmp_path):
    assert_one_line_error(taskq("add", "--batch", str(tmp_path / "none.jsonl")), 2, "none.jsonl")
    assert_nothing_enqueued(spool)


# -- where the spool is -----------------------------------------------------------------------------


def test_spool_option_after_the_command(taskq, tmp_path):
    spool = tmp_path / "after"
    job_id = taskq("add", "--spool", str(spool), "--", "true", spool=None, check=True).stdout.strip()
    assert record(spool, job_id)["command"] == ["true"]


def test_spool_option_before_the_command(taskq, tmp_path):
    spool = tmp_path / "before"
    job_id = taskq("--spool", str(spool), "add", "--", "true", spool=None, check=True).stdout.strip()
    assert record(spool, job_id)["command"] == ["true"]


def test_spool_option_wins_over_environment(taskq, tmp_path):
    env_spool, opt_spool = tmp_path / "env", tmp_path / "opt"
    taskq("add", "--spool", str(opt_spool), "--", "true", spool=env_spool, check=True)
    assert len(ls(opt_spool, "pending")) == 1
    assert not env_spool.exists()


def test_taskq_spool_environment(taskq, tmp_path):
    spool = tmp_path / "from-env"
    job_id = taskq.add("true", spool=spool)
    assert record(spool, job_id)["command"] == ["true"]


def test_default_spool_under_xdg_data_home(taskq, tmp_path):
    xdg = tmp_path / "xdg"
    job_id = taskq.add("true", spool=None, env={"XDG_DATA_HOME": str(xdg)})
    assert record(xdg / "taskq" / "spool", job_id)["command"] == ["true"]
    status = taskq.json("status", "--json", spool=None, env={"XDG_DATA_HOME": str(xdg)})
    assert status["spool"] == str(xdg / "taskq" / "spool")
    assert status["counts"]["pending"] == 1


def test_default_spool_under_home(taskq, tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    job_id = taskq.add("true", spool=None, env={"XDG_DATA_HOME": None, "HOME": str(home)})
    assert record(home / ".local" / "share" / "taskq" / "spool", job_id)["command"] == ["true"]


def test_relative_spool_resolved_against_cwd(taskq, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    taskq("add", "--spool", "rel/sp", "--", "true", spool=None, cwd=work, check=True)
    assert len(ls(work / "rel" / "sp", "pending")) == 1
    status = taskq.json("status", "--json", "--spool", "rel/sp", spool=None, cwd=work)
    assert status["spool"] == str(work / "rel" / "sp")
    taskq("add", "--", "true", spool="rel/sp", cwd=work, check=True)  # TASKQ_SPOOL
    assert len(ls(work / "rel" / "sp", "pending")) == 2


# -- errors ---------------------------------------------------------------------------------------


VALIDATION_ERRORS = [
    (["--max-attempts", "0", "--", "true"], "max"),
    (["--env", "FOO", "--", "true"], "FOO"),
    (["--payload", "{bad", "--", "true"], "payload"),
    (["--delay", "5x", "--", "true"], "5x"),
    (["--delay", "-5", "--", "true"], "delay"),
    (["--backoff", "soon", "--", "true"], "backoff"),
    (["--timeout", "0", "--", "true"], "timeout"),
    (["--at", "2030-13-01", "--", "true"], "--at"),
    (["--at", "tomorrow", "--", "true"], "--at"),
    (["--delay", "1m", "--at", "2030-01-02", "--", "true"], ""),
    (["--priority", "1000000000", "--", "true"], "priority"),
    (["--unique-key", "", "--", "true"], "unique"),
    (["--", ""], ""),
    ([], "COMMAND"),
    (["--shell"], ""),
    (["--name", "no-such-type"], "no-such-type"),
    (["--after", "has space", "--", "true"], "has space"),
]


@pytest.mark.parametrize("args, fragment", VALIDATION_ERRORS,
                         ids=[" ".join(a) or "nothing" for a, _ in VALIDATION_ERRORS])
def test_validation_error_is_one_line_exit_2_and_leaves_nothing(taskq, spool, args, fragment):
    proc = taskq("add", *args)
    assert_one_line_error(proc, 2, fragment)
    assert_nothing_enqueued(spool)


@pytest.mark.parametrize("args", [["--bogus", "--", "true"], ["--priority", "high", "--", "true"]])
def test_usage_error_exit_2_and_leaves_nothing(taskq, spool, args):
    proc = taskq("add", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert_nothing_enqueued(spool)


def test_validation_error_on_an_existing_spool_leaves_it_unchanged(taskq, spool):
    taskq_api.Spool(spool).add(["true"])
    before = ls(spool, "pending")
    for args in (["--max-attempts", "0", "--", "x"], ["--env", "1=x", "--", "x"], ["--", ""]):
        assert taskq("add", *args).returncode == 2
    assert ls(spool, "pending") == before
    assert ls(spool, "tmp") == []


def test_disk_full_guard(taskq, spool):
    spool.mkdir()
    (spool / "taskq.toml").write_text('min_free = "1000T"\n')
    proc = taskq("add", "--", "true")
    assert_one_line_error(proc, 1, str(spool))
    assert_nothing_enqueued(spool)
    proc = taskq("add", "--batch", "-", input='{"command": ["a"]}\n')
    assert_one_line_error(proc, 1)
    assert_nothing_enqueued(spool)


def test_invalid_taskq_toml(taskq, spool):
    spool.mkdir()
    (spool / "taskq.toml").write_text("[tasks.x]\nbogus_key = 1\n")
    assert_one_line_error(taskq("add", "--", "true"), 2, "bogus_key")
    assert_nothing_enqueued(spool)


@pytest.mark.parametrize("layout", ["spool-is-a-file", "parent-is-a-file"])
def test_unusable_spool_path(taskq, tmp_path, layout):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    path = blocker if layout == "spool-is-a-file" else blocker / "spool"
    proc = taskq("add", "--", "true", spool=path)
    assert_one_line_error(proc, 1, str(path))
    assert blocker.read_text() == "not a directory\n"


def test_broken_spool_directory(taskq, empty_spool):
    spool = empty_spool
    (spool / "pending").rmdir()
    (spool / "pending").write_text("")  # pending/ is not a directory any more
    proc = taskq("add", "--", "true")
    assert_one_line_error(proc, 1, str(spool / "pending"))
    assert ls(spool, "tmp") == []


# -- task types from taskq.toml ---------------------------------------------------------------------


TOML = """
    [defaults]
    max_attempts = 3
    backoff = "1m"
    timeout = "30s"

    [tasks.nightly-report]
    command = ["/usr/local/bin/report", "--nightly"]
    timeout = "1h"
    priority = 5
    env = { REPORT = "full" }

    [tasks.cleanup]
    command = "find /tmp -mtime +7 -delete"
    max_attempts = 1
"""


@pytest.fixture
def typed_spool(spool):
    spool.mkdir()
    (spool / "taskq.toml").write_text(textwrap.dedent(TOML))
    return spool


def test_task_type_without_command(taskq, typed_spool):
    proc = taskq("add", "--name", "nightly-report", check=True)
    rec = record(typed_spool, proc.stdout.strip())
    assert rec["name"] == "nightly-report"
    assert rec["command"] == ["/usr/local/bin/report", "--nightly"]
    assert (rec["timeout"], rec["priority"], rec["env"]) == (3600, 5, {"REPORT": "full"})
    assert (rec["max_attempts"], rec["backoff"]) == (3, 60)  # from [defaults]
    assert rec["backoff_max"] == 3600  # built-in


def test_task_type_with_shell_string(taskq, typed_spool):
    rec = record(typed_spool, taskq("add", "--name", "cleanup", check=True).stdout.strip())
    assert rec["command"] == ["/bin/sh", "-c", "find /tmp -mtime +7 -delete"]
    assert (rec["max_attempts"], rec["timeout"]) == (1, 30)


def test_options_override_task_type(taskq, typed_spool):
    proc = taskq("add", "--name", "nightly-report", "--timeout", "5m", "--priority", "-1",
                 "--max-attempts", "7", "--env", "EXTRA=1", check=True)
    rec = record(typed_spool, proc.stdout.strip())
    assert (rec["timeout"], rec["priority"], rec["max_attempts"]) == (300, -1, 7)
    assert rec["command"] == ["/usr/local/bin/report", "--nightly"]
    rec = record(typed_spool, taskq.add("/bin/other", options=["--name", "nightly-report"]))
    assert rec["command"] == ["/bin/other"]
    assert rec["timeout"] == 3600


def test_defaults_apply_to_plain_jobs(taskq, typed_spool):
    rec = record(typed_spool, taskq.add("true"))
    assert (rec["max_attempts"], rec["backoff"], rec["timeout"], rec["priority"]) == (3, 60, 30, 0)
    rec = record(typed_spool, taskq.add("true", options=["--name", "label-only"]))
    assert rec["name"] == "label-only" and rec["max_attempts"] == 3


def test_unknown_task_type_without_command(taskq, typed_spool):
    assert_one_line_error(taskq("add", "--name", "nightly"), 2, "nightly")
    assert_nothing_enqueued(typed_spool)


def test_permanent_exit_codes_from_toml(taskq, spool):
    spool.mkdir()
    (spool / "taskq.toml").write_text("permanent_exit_codes = [64, 65]\n")
    assert record(spool, taskq.add("true"))["permanent_exit_codes"] == [64, 65]
    assert record(spool, taskq.add("true", options=["--permanent-exit", "3"]))["permanent_exit_codes"] == [3]


def test_batch_refuses_other_job_options(taskq, spool):
    proc = taskq("add", "--batch", "-", "--priority", "3", input='{"command": ["true"]}\n')
    assert proc.returncode == 2
    assert "--batch" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (spool / "pending").exists() or not any((spool / "pending").iterdir())
