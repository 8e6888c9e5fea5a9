"""``taskq status``, ``list`` and ``show`` as a black box (README: "Commands", "The job record"),
plus the drop-in protocol seen through ``status``."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

import taskq as taskq_api
from taskq import times
from workerutil import assert_one_line_error
from workerutil import files as ls

ISO_Z_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3,}Z$")
ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
ANSI = re.compile(r"\x1b\[")
#: SGR sequences that set a colour (foreground/background, 8/16/256/truecolour).
COLOUR_SGR = re.compile(rb"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")
MISSING_ID = "01AAAAAAAAAAAAAAAAAAAAAAAA"

RECORD_FIELDS = {
    "id": str, "state": str, "name": (str, type(None)), "command": list, "env": dict, "cwd": str,
    "priority": int, "max_attempts": int, "timeout": (int, float, type(None)),
    "unique_key": (str, type(None)), "created_at": str, "run_at": str, "attempts": list,
    "last_error": (str, type(None)), "backoff": (int, float), "backoff_max": (int, float),
    "permanent_exit_codes": list, "after": list,
}
ATTEMPT_FIELDS = ("number", "started_at", "finished_at", "exit_code", "signal", "timed_out", "error", "worker")


# -- helpers -------------------------------------------------------------------------------


def pending_path(spool: Path, job_id: str) -> Path:
    (name,) = [n for n in ls(spool, "pending") if f".{job_id}." in n]
    return spool / "pending" / name


def move(spool: Path, job_id: str, state: str, **changes) -> Path:
    """Do what a worker would: optionally rewrite the record, then rename it to STATE/ID.json."""
    src = pending_path(spool, job_id)
    if changes:
        data = json.loads(src.read_text())
        data.update(changes)
        src.write_text(json.dumps(data))
    dest = spool / state / f"{job_id}.json"
    os.rename(src, dest)
    return dest


def assert_record(rec: dict) -> None:
    for key, kind in RECORD_FIELDS.items():
        assert key in rec, key
        assert isinstance(rec[key], kind), (key, rec[key])
    assert "payload" in rec
    assert ID_RE.match(rec["id"])
    assert rec["state"] in ("pending", "running", "done", "failed")
    assert all(isinstance(a, str) for a in rec["command"])
    assert rec["max_attempts"] >= 1
    assert all(isinstance(c, int) for c in rec["permanent_exit_codes"])
    assert all(isinstance(a, str) for a in rec["after"])
    for key in ("created_at", "run_at"):
        assert ISO_Z_MS.match(rec[key]), (key, rec[key])
    for attempt in rec["attempts"]:
        for key in ATTEMPT_FIELDS:
            assert key in attempt, key


def run_in_pty(argv: list[str], env: dict, timeout: float = 20.0) -> bytes:
    """Run a command with stdout and stderr on a pseudo-terminal; return what it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.wait(timeout=timeout)
    assert proc.returncode == 0, out
    return out


@pytest.fixture
def populated(spool):
    """A spool with jobs in every state: 2 ready, 1 scheduled, 1 waiting, 1 each running/done/failed.

    Set up through the Python API (quicker than one subprocess per job); what is
    under test here is how the CLI reads them.
    """
    api = taskq_api.Spool(spool)
    ids = {}
    ids["ready1"] = api.add(["echo", "one"]).id
    ids["ready2"] = api.add(["echo", "two"], priority=5).id
    ids["later"] = api.add(["echo", "later"], delay=3600).id
    ids["running"] = api.add(["sleep", "100"]).id
    ids["done"] = api.add(["true"]).id
    ids["failed"] = api.add(["false"]).id
    ids["waiting"] = api.add(["echo", "w"], after=[ids["running"]]).id
    move(spool, ids["running"], "running")
    move(spool, ids["done"], "done")
    move(spool, ids["failed"], "failed", last_error="exit 1")
    return ids


# -- status ------------------------------------------------------------------------------------


def test_status_json(taskq, spool, populated):
    data = taskq.json("status", "--json")
    assert data["spool"] == str(spool)
    assert data["counts"] == {"pending": 4, "running": 1, "done": 1, "failed": 1}
    assert data["ready"] == 2
    assert data["scheduled"] == 1
    assert data["paused"] is False
    assert ID_RE.match(populated["ready1"])


def test_status_json_fresh_spool(taskq, empty_spool):
    data = taskq.json("status", "--json")
    assert data["counts"] == {"pending": 0, "running": 0, "done": 0, "failed": 0}
    assert (data["ready"], data["scheduled"], data["paused"]) == (0, 0, False)


def test_status_spool_option_both_positions(taskq, spool, populated):
    after = taskq.json("status", "--spool", str(spool), "--json", spool=None)
    before = taskq.json("--spool", str(spool), "status", "--json", spool=None)
    assert after["counts"] == before["counts"] == {"pending": 4, "running": 1, "done": 1, "failed": 1}


def test_status_human_piped_is_plain_text(taskq, spool, populated):
    proc = taskq("status", check=True)
    assert not ANSI.search(proc.stdout), proc.stdout
    assert proc.stderr == ""
    text = proc.stdout
    assert str(spool) in text
    assert re.search(r"pending\D*4", text), text
    assert re.search(r"running\D*1", text), text
    assert re.search(r"failed\D*1", text), text
    assert re.search(r"ready\D*2", text), text
    assert re.search(r"scheduled\D*1", text), text
    nocolor = taskq("status", env={"NO_COLOR": "1"}, check=True)
    assert not ANSI.search(nocolor.stdout)


def test_no_color_on_a_terminal(taskq, spool, populated):
    env = taskq.env(spool, {"TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"})
    for command in (["status"], ["list"], ["show", populated["done"]]):
        plain_env = dict(env)
        plain_env["NO_COLOR"] = "1"
        out = run_in_pty(taskq.argv(command), plain_env)
        assert populated["done"][:8].encode() in out or command == ["status"], out
        assert not COLOUR_SGR.search(out), (command, out)
    coloured = run_in_pty(taskq.argv(["status"]), env)
    assert b"\x1b[" in coloured, "on a terminal, human output is rich"


# -- list -------------------------------------------------------------------------------------------


def test_list_newest_first(taskq, spool):
    ids = [taskq.add("echo", str(i)) for i in range(2)]
    ids += [taskq_api.Spool(spool).add(["echo", str(i)]).id for i in range(2, 4)]
    data = taskq.json("list", "--json")
    assert isinstance(data, list)
    assert [r["id"] for r in data] == ids[::-1]
    for rec in data:
        assert_record(rec)
        assert rec["state"] == "pending"


def test_list_states_and_limit(taskq, spool, populated):
    every = taskq.json("list", "--json")
    assert len(every) == 7
    assert {r["id"]: r["state"] for r in every} == {
        populated["ready1"]: "pending", populated["ready2"]: "pending", populated["later"]: "pending",
        populated["waiting"]: "pending", populated["running"]: "running", populated["done"]: "done",
        populated["failed"]: "failed",
    }
    assert [r["id"] for r in every] == sorted((r["id"] for r in every), reverse=True)
    for state in ("running", "done", "failed"):
        data = taskq.json("list", "--state", state, "--json")
        assert [(r["id"], r["state"]) for r in data] == [(populated[state], state)]
    pending = taskq.json("list", "--state", "pending", "--json")
    assert {r["id"] for r in pending} == {populated[k] for k in ("ready1", "ready2", "later", "waiting")}
    limited = taskq.json("list", "--limit", "2", "--json")
    assert [r["id"] for r in limited] == [r["id"] for r in every[:2]]
    failed = taskq.json("list", "--state", "failed", "--json")
    assert failed[0]["last_error"] == "exit 1"


def test_list_default_is_50_newest(taskq, spool):
    lines = "".join(json.dumps({"command": ["n", str(i)]}) + "\n" for i in range(55))
    ids = taskq("add", "--batch", "-", input=lines, check=True).stdout.split()
    data = taskq.json("list", "--json")
    assert len(data) == 50
    assert [r["id"] for r in data] == ids[::-1][:50]
    assert [r["command"][1] for r in data[:2]] == ["54", "53"]
    assert len(taskq.json("list", "--limit", "0", "--json")) == 55
    assert len(taskq.json("list", "--limit", "55", "--json")) == 55


def test_list_empty_spool(taskq, empty_spool):
    proc = taskq("list", "--json", check=True)
    assert json.loads(proc.stdout) == []
    assert taskq.json("list", "--state", "done", "--json") == []


def test_list_human_piped(taskq, spool, populated):
    proc = taskq("list", check=True)
    assert not ANSI.search(proc.stdout)
    lines = proc.stdout.splitlines()
    for key, job_id in populated.items():
        assert sum(job_id in line for line in lines) == 1, key
    done_line = next(line for line in lines if populated["done"] in line)
    assert "done" in done_line


@pytest.mark.parametrize("args", [["--state", "bogus"], ["--limit", "-1"]])
def test_list_bad_options(taskq, spool, args):
    taskq_api.Spool(spool).add(["true"])
    assert_one_line_error(taskq("list", *args), 2)


# -- show ----------------------------------------------------------------------------------------


def test_show_json_all_fields(taskq, spool, tmp_path):
    added = taskq.json(
        "add", "--json", "--name", "n", "--payload", '{"k": [1, 2]}', "--env", "A=1", "--priority", "3",
        "--delay", "10m", "--max-attempts", "2", "--backoff", "5s", "--backoff-max", "1m", "--timeout", "9",
        "--unique-key", "u", "--permanent-exit", "42", "--", "echo", "hi", cwd=tmp_path,
    )
    shown = taskq.json("show", added["id"], "--json")
    assert_record(shown)
    assert shown == {k: v for k, v in added.items() if k != "duplicate"}
    assert shown["state"] == "pending"
    assert (shown["name"], shown["payload"]) == ("n", {"k": [1, 2]})
    assert (shown["env"], shown["cwd"]) == ({"A": "1"}, str(tmp_path))
    assert (shown["priority"], shown["max_attempts"], shown["timeout"]) == (3, 2, 9)
    assert (shown["backoff"], shown["backoff_max"], shown["unique_key"]) == (5, 60, "u")
    assert (shown["permanent_exit_codes"], shown["after"], shown["attempts"]) == ([42], [], [])
    assert shown["last_error"] is None


def test_show_json_spool_option_positions(taskq, spool):
    job_id = taskq_api.Spool(spool).add(["true"]).id
    assert taskq.json("show", job_id, "--spool", str(spool), "--json", spool=None)["id"] == job_id
    assert taskq.json("--spool", str(spool), "show", "--json", job_id, spool=None)["id"] == job_id


def test_show_with_attempts(taskq, spool):
    api = taskq_api.Spool(spool)
    job_id = api.add(["false"], after=[api.add(["true"]).id]).id
    attempt = {
        "number": 1, "started_at": "2030-01-02T03:04:05.006Z", "finished_at": "2030-01-02T03:04:06.5Z",
        "exit_code": 1, "signal": None, "timed_out": False, "error": None, "worker": "host:42",
    }
    move(spool, job_id, "failed", attempts=[attempt], last_error="exit 1",
         settled_at="2030-01-02T03:04:06.500Z")
    shown = taskq.json("show", job_id, "--json")
    assert_record(shown)
    assert shown["state"] == "failed"
    (got,) = shown["attempts"]
    assert {k: got[k] for k in ATTEMPT_FIELDS} == {**attempt, "finished_at": "2030-01-02T03:04:06.500Z"}
    assert ISO_Z_MS.match(got["started_at"]) and ISO_Z_MS.match(got["finished_at"])
    human = taskq("show", job_id, check=True).stdout
    assert job_id in human and "failed" in human and "exit 1" in human
    assert not ANSI.search(human)


def test_show_state_is_the_directory(taskq, spool):
    api = taskq_api.Spool(spool)
    for state in ("pending", "running", "done", "failed"):
        job_id = api.add(["true"]).id
        if state != "pending":
            move(spool, job_id, state)
        assert taskq.json("show", job_id, "--json")["state"] == state


def test_show_human(taskq, spool):
    job_id = taskq_api.Spool(spool).add(["echo", "hello world"], name="greeting").id
    proc = taskq("show", job_id, check=True)
    assert not ANSI.search(proc.stdout)
    assert job_id in proc.stdout
    assert "pending" in proc.stdout
    assert "greeting" in proc.stdout
    assert "hello world" in proc.stdout


# -- human output in words (README: "taskq status", "taskq show") ------------------------------


def _ago(seconds: float) -> str:
    return times.iso(time.time() - seconds)


def _failed_job(spool: Path, **changes) -> str:
    """A failed job whose record says it was killed by SIGKILL, then timed out (30 s)."""
    job_id = taskq_api.Spool(spool).add(["sleep", "100"], name="slow", timeout=30, max_attempts=2).id
    attempts = [
        {"number": 1, "started_at": _ago(400), "finished_at": _ago(390), "exit_code": None, "signal": 9,
         "timed_out": False, "error": None, "worker": "host:41"},
        {"number": 2, "started_at": _ago(190), "finished_at": _ago(160), "exit_code": None, "signal": 15,
         "timed_out": True, "error": None, "worker": "host:42"},
    ]
    fields = dict(attempts=attempts, last_error="timed out after 30s (signal 15)", settled_at=_ago(150),
                  created_at=_ago(7300))
    move(spool, job_id, "failed", **{**fields, **changes})
    return job_id


def test_show_human_in_words(taskq, spool):
    job_id = _failed_job(spool)
    text = taskq("show", job_id, check=True).stdout
    assert re.search(r"created: +\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \(2 h ago\)", text), text
    assert re.search(r"settled: +\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \(2 min ago\)", text), text
    assert "timeout:      30 s" in text
    assert "backoff:      10 s doubling to 1 h" in text
    assert "last error:   timed out after 30 s (SIGTERM)" in text
    assert re.search(r"attempt 1: started .* \(6 min ago\), ran 10 s: killed by SIGKILL \[host:41\]", text), text
    assert re.search(r"attempt 2: started .*, ran 30 s: timed out after 30 s \(SIGTERM\) \[host:42\]", text), text
    # --json keeps the record exactly
    record = taskq.json("show", job_id, "--json")
    assert record["last_error"] == "timed out after 30s (signal 15)"
    assert [a["signal"] for a in record["attempts"]] == [9, 15]


def test_show_running_attempt_in_words(taskq, spool):
    job_id = taskq_api.Spool(spool).add(["sleep", "100"]).id
    attempt = {"number": 1, "started_at": _ago(130), "finished_at": None, "exit_code": None, "signal": None,
               "timed_out": False, "error": None, "worker": "host:7"}
    move(spool, job_id, "running", attempts=[attempt])
    text = taskq("show", job_id, check=True).stdout
    assert re.search(r"attempt 1: started .* \(2 min ago\), running for 2 min 1\d s \[host:7\]", text), text


def test_status_human_in_words(taskq, spool):
    job_id = _failed_job(spool, last_error="killed by signal 9", settled_at=_ago(200))
    text = taskq("status", check=True).stdout
    (line,) = [line for line in text.splitlines() if job_id in line]
    assert line.endswith("slow failed 3 min ago: killed by SIGKILL"), line
    (failure,) = taskq.json("status", "--json")["recent_failures"]
    assert failure["last_error"] == "killed by signal 9"  # --json: as recorded


def test_status_running_job_for_a_duration_in_words(taskq, spool):
    job_id = taskq_api.Spool(spool).add(["sleep", "100"]).id
    attempt = {"number": 1, "started_at": _ago(3 * 3600 + 300), "finished_at": None, "exit_code": None,
               "signal": None, "timed_out": False, "error": None, "worker": "host:7"}
    move(spool, job_id, "running", attempts=[attempt])
    text = taskq("status", check=True).stdout
    assert f"running {job_id}  attempt 1 for 3 h 5 min on host:7" in text, text


def test_list_created_is_relative(taskq, spool):
    job_id = _failed_job(spool)
    fresh = taskq_api.Spool(spool).add(["true"]).id
    lines = taskq("list", check=True).stdout.splitlines()
    assert lines[0].split("\t")[4] == "CREATED"
    created = {line.split("\t")[0]: line.split("\t")[4] for line in lines[1:]}
    assert created[job_id] == "2 h ago"
    assert created[fresh] in ("just now", "1 s ago", "2 s ago")
    assert taskq.json("list", "--json")[1]["created_at"].endswith("Z")  # --json: exact timestamps


def test_explain_in_words_and_json_as_recorded(taskq, spool):
    api = taskq_api.Spool(spool)
    job_id = _failed_job(spool, last_error="killed by signal 9 (permanent)")
    human = taskq("explain", job_id, check=True).stdout
    assert "(2 min ago) after 2 counted attempts of 2: killed by SIGKILL (permanent)." in human, human
    reason = taskq.json("explain", job_id, "--json")["reason"]
    assert reason.endswith(" after 2 counted attempts of 2: killed by signal 9 (permanent).")
    assert "ago" not in reason
    later = api.add(["true"], delay=7200 + 30).id
    assert "(in 2 h)." in taskq("explain", later, check=True).stdout
    data = taskq.json("explain", later, "--json")
    assert "(in " not in data["reason"] and data["until"].endswith("Z")
    assert api.explain(later, words=True)["reason"].endswith("(in 2 h).")
    assert api.explain(later)["reason"] == data["reason"]


def test_show_unknown_id(taskq, empty_spool):
    assert_one_line_error(taskq("show", MISSING_ID), 1, MISSING_ID)
    assert_one_line_error(taskq("show", MISSING_ID, "--json"), 1, MISSING_ID)


def test_show_invalid_id(taskq, empty_spool):
    for bad in ("not/valid", "a b", "x.json"):
        assert_one_line_error(taskq("show", bad), 2)


def test_show_unreadable_failed_file(taskq, empty_spool):
    spool = empty_spool
    (spool / "failed" / "mangled.json").write_bytes(b'{"command": ["x"], "trunc')
    shown = taskq.json("show", "mangled", "--json")
    assert shown["id"] == "mangled" and shown["state"] == "failed"
    assert shown["last_error"]
    failed = taskq.json("list", "--state", "failed", "--json")
    assert [r["id"] for r in failed] == ["mangled"]
    assert failed[0]["last_error"]
    assert taskq.json("status", "--json")["counts"]["failed"] == 1


@pytest.mark.parametrize("command", [["show", "nocmd", "--json"], ["list", "--state", "failed", "--json"],
                                     ["status", "--json"]])
def test_unreadable_failed_file_without_command(taskq, empty_spool, command):
    spool = empty_spool
    (spool / "failed" / "nocmd.json").write_text(json.dumps({
        "id": "nocmd", "cwd": "/", "created_at": "2030-01-01T00:00:00Z", "run_at": "2030-01-01T00:00:00Z",
    }))
    proc = taskq(*command)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


# -- a missing or unusable spool --------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["status"], ["status", "--json"], ["list"], ["list", "--json", "--state", "done"], ["show", MISSING_ID]],
)
def test_read_commands_on_missing_spool(taskq, spool, command):
    assert_one_line_error(taskq(*command), 1, f"no spool at {spool}")
    assert not spool.exists()


def test_read_commands_on_missing_spool_by_option(taskq, tmp_path):
    missing = tmp_path / "nowhere"
    assert_one_line_error(taskq("list", "--spool", str(missing), spool=None), 1, f"no spool at {missing}")
    assert_one_line_error(taskq("--spool", str(missing), "status", spool=None), 1, f"no spool at {missing}")
    assert not missing.exists()


def test_read_commands_on_missing_default_spool(taskq, tmp_path):
    xdg = tmp_path / "xdg"
    proc = taskq("status", spool=None, env={"XDG_DATA_HOME": str(xdg)})
    assert_one_line_error(proc, 1, f"no spool at {xdg / 'taskq' / 'spool'}")


@pytest.mark.parametrize("command", [["status"], ["list"], ["show", MISSING_ID]])
def test_read_commands_on_a_file_instead_of_a_spool(taskq, tmp_path, command):
    path = tmp_path / "plain-file"
    path.write_text("x")
    assert_one_line_error(taskq(*command, spool=path), 1, str(path))


# -- the drop-in protocol --------------------------------------------------------------------------


def test_drop_in_file_counts_as_pending(taskq, spool):
    taskq_api.Spool(spool).add(["true"])  # a spool with one job
    staged = spool / "tmp" / "from-a-shell-script"
    staged.write_text('{"command": ["echo", "dropped in"]}')
    assert taskq.json("status", "--json")["counts"]["pending"] == 1, "a file in tmp/ is not a job yet"
    os.rename(staged, spool / "pending" / "from-a-shell-script.json")
    data = taskq.json("status", "--json")
    assert data["counts"] == {"pending": 2, "running": 0, "done": 0, "failed": 0}
    assert data["ready"] == 2 and data["scheduled"] == 0
    human = taskq("status", check=True).stdout
    assert re.search(r"pending\D*2", human), human


def test_drop_in_ignores_hidden_and_foreign_names(taskq, spool):
    taskq_api.Spool(spool).add(["true"])
    (spool / "pending" / ".half-written.json").write_text('{"command": ["x"]}')
    (spool / "pending" / "readme.txt").write_text("hello")
    (spool / "pending" / "subdir.json").mkdir()
    os.symlink(spool / "pending" / "readme.txt", spool / "pending" / "link.json")
    data = taskq.json("status", "--json")
    assert data["counts"]["pending"] == 1 and data["ready"] == 1
