"""A corpus of hostile input: files dropped into pending/ and run by a real
``taskq work --burst``, and hostile arguments to the CLI.

Each input has one clear, tested outcome. Throughout, the worker never crashes (exit
0, no traceback), goes on with the other jobs, and never deletes a file it could not
understand: such a file is in failed/ with its bytes untouched and the reason beside
it, and ``show``/``list`` present it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import taskq as taskq_pkg
from taskq.errors import ValidationError
from taskq.fields import MAX_PAYLOAD_BYTES
from taskq.spool.layout import MAX_FILE_BYTES, parse_pending_name
from workerutil import STATES
from workerutil import files as ls

# -- helpers ---------------------------------------------------------------------------------


def drop(spool: Path, name: str, raw: bytes) -> Path:
    """The drop-in protocol: write into tmp/, rename into pending/NAME."""
    staged = spool / "tmp" / f"stage-{uuid.uuid4().hex}"
    staged.write_bytes(raw)
    os.chmod(staged, 0o600)
    final = spool / "pending" / name
    os.rename(staged, final)
    return final


def record_bytes(record: Any) -> bytes:
    return json.dumps(record).encode()


def burst(taskq, **kwargs: Any):
    proc = taskq("work", "--burst", timeout=kwargs.pop("timeout", 90), **kwargs)
    assert proc.returncode == 0, f"worker exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]
    return proc


def where(spool: Path) -> dict[str, str]:
    out = {}
    for state in STATES:
        for name in ls(spool, state):
            if not name.endswith(".json"):
                continue
            if state == "pending":
                parsed = parse_pending_name(name)
                out[parsed.id if parsed else name] = state
            else:
                out[name[:-5]] = state
    return out


def failed_by_digest(spool: Path) -> dict[str, str]:
    """sha256 of each failed/ job file -> its id."""
    out = {}
    for name in ls(spool, "failed"):
        if name.endswith(".json"):
            out[hashlib.sha256((spool / "failed" / name).read_bytes()).hexdigest()] = name[:-5]
    return out


def reason(spool: Path, job_id: str) -> dict:
    return json.loads((spool / "failed" / f"{job_id}.reason").read_bytes())


@pytest.fixture
def ready(taskq, spool):
    """A spool with one good job in it (the worker must go on with it)."""
    good = taskq.add("true")
    return good


def check_quarantined(taskq, spool: Path, cases: dict[str, tuple[bytes, str]], good: str) -> None:
    """Every case is in failed/, bytes identical, with a reason naming the problem,
    shown by show and list; the good job ran; nothing is left in pending/."""
    assert where(spool)[good] == "done"
    assert ls(spool, "pending") == [], ls(spool, "pending")
    assert ls(spool, "tmp") == []
    digests = failed_by_digest(spool)
    listed = {j["id"]: j for j in taskq.json("list", "--state", "failed", "--limit", "0", "--json")}
    problems = []
    for name, (raw, fragment) in cases.items():
        job_id = digests.get(hashlib.sha256(raw).hexdigest())
        if job_id is None:
            problems.append(f"{name}: its bytes are not in failed/")
            continue
        why = reason(spool, job_id)
        if why.get("original_name") != f"{name}.json":
            problems.append(f"{name}: original_name {why.get('original_name')!r}")
        error = why.get("last_error") or ""
        if fragment.lower() not in error.lower():
            problems.append(f"{name}: last_error {error!r} does not mention {fragment!r}")
        if job_id not in listed or (listed[job_id]["last_error"] or "") != error:
            problems.append(f"{name}: list --state failed does not present it")
    assert not problems, "\n".join(problems)


# -- files that are not jobs ------------------------------------------------------------------


NOT_JOBS: dict[str, tuple[bytes, str]] = {
    "truncated": (b'{"command": ["echo", "hi"', "invalid json"),
    "empty": (b"", "invalid json"),
    "garbage": (b"\x00\x01\x02 not json at all", "invalid json"),
    "deep-array": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "deep-payload": (b'{"command": ["true"], "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                     "nested too deeply"),
    "deep-object": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    "top-null": (b"null", "object"),
    "top-array": (b'["echo", "hi"]', "object"),
    "top-string": (b'"echo hi"', "object"),
    "top-number": (b"42", "object"),
    "nul-raw-in-string": (b'{"command": ["echo", "a\x00b"]}', "invalid json"),
    "nul-in-arg": (record_bytes({"command": ["echo", "a\x00b"]}), "nul"),
    "nul-in-program": (record_bytes({"command": ["tr\x00ue"]}), "nul"),
    "nul-in-env-value": (record_bytes({"command": ["true"], "env": {"A": "x\x00y"}}), "nul"),
    "nul-in-env-key": (record_bytes({"command": ["true"], "env": {"A\x00B": "x"}}), "env"),
    "eq-in-env-key": (record_bytes({"command": ["true"], "env": {"A=B": "x"}}), "env"),
    "nul-in-cwd": (record_bytes({"command": ["true"], "cwd": "/tmp\x00/x"}), "nul"),
    "nul-in-name": (record_bytes({"command": ["true"], "name": "a\x00b"}), "nul"),
    "nul-in-unique-key": (record_bytes({"command": ["true"], "unique_key": "k\x00"}), "nul"),
    "latin1": (b'{"command": ["echo", "caf\xe9"]}', "utf-8"),
    "bad-utf8-key": (b'{"command": ["true"], "\xc3\x28": 1}', "utf-8"),
    "utf16": ('{"command": ["true"]}'.encode("utf-16"), "utf-8"),
    "lone-surrogate-arg": (b'{"command": ["echo", "\\ud800"]}', "surrogate"),
    "lone-surrogate-extra": (b'{"command": ["true"], "note": {"x": "\\udfff"}}', "surrogate"),
    "lone-surrogate-payload": (b'{"command": ["true"], "payload": "\\udc80"}', "payload"),
    "infinite-backoff": (b'{"command": ["true"], "backoff": 1e400}', "backoff"),
    "carries-attempts": (record_bytes({"command": ["true"], "attempts": [{"number": 1}]}), "attempts"),
}


def test_files_that_are_not_jobs_go_to_failed_untouched(taskq, spool, ready):
    for name, (raw, _) in NOT_JOBS.items():
        drop(spool, f"{name}.json", raw)
    proc = burst(taskq)
    check_quarantined(taskq, spool, NOT_JOBS, ready)
    assert proc.stderr.count("is not a valid job") == len(NOT_JOBS)


# -- wrong types, field by field ---------------------------------------------------------------


WRONG = {
    "command": ["echo hi", [1, 2], [], [""], {"argv": ["true"]}, None, True],
    "name": [5, "", "x" * 201, ["a"]],
    "env": [[], {"A": 1}, "A=1", {"1A": "x"}, {"": "x"}],
    "cwd": ["relative/dir", 5, "", ["/"]],
    "priority": ["high", 1.5, True, 10**12, -(10**12)],
    "max_attempts": [0, -1, "3", 2.5, True],
    "timeout": [-1, 0, "forever", [], True],
    "unique_key": [5, "", "k" * 1001],
    "run_at": ["yesterday", 5, "2026-13-01T00:00:00Z", "99999-01-01T00:00:00Z"],
    "created_at": ["nope", 0],
    "delay": [-5, "soon", "1000000d"],
    "backoff": [-1, "x", True],
    "backoff_max": [-1, "1 hour", False],
    "permanent_exit_codes": [[0], [256], "100", [True], 100],
    "after": ["01ABC", ["../x"], [5], [""]],
    "settled_at": [5],
    "budget_start": [-1, "0"],
}


def wrong_cases() -> dict[str, tuple[bytes, str]]:
    cases = {}
    for field, values in WRONG.items():
        for i, value in enumerate(values):
            record = {"command": ["true"], field: value}
            cases[f"wrong-{field}-{i}"] = (record_bytes(record), field)
    return cases


def test_wrong_types_for_each_field_go_to_failed_naming_the_field(taskq, spool, ready):
    cases = wrong_cases()
    for name, (raw, _) in cases.items():
        drop(spool, f"{name}.json", raw)
    burst(taskq)
    check_quarantined(taskq, spool, cases, ready)


def test_an_invalid_id_in_a_drop_in_is_replaced_not_trusted(taskq, spool, ready, tmp_path):
    flag = tmp_path / "ran"
    for i, bad in enumerate(["../escape", "a/b", "", "x" * 300, 5, None, "with space"]):
        drop(spool, f"id{i}.json", record_bytes({"id": bad, "command": ["sh", "-c", f'echo {i} >> "{flag}"']}))
    burst(taskq)
    assert sorted(flag.read_text().split()) == [str(i) for i in range(7)]
    for job_id, state in where(spool).items():
        assert state == "done"
        assert len(job_id) == 26 and job_id.isalnum()
    assert not (spool.parent / "escape").exists()


# -- sizes ---------------------------------------------------------------------------------------


def test_huge_file_over_16_mib_goes_to_failed_untouched(taskq, spool, ready):
    raw = b'{"command": ["true"], "pad": "' + b"x" * (MAX_FILE_BYTES + 1024) + b'"}'
    drop(spool, "huge.json", raw)
    burst(taskq)
    assert where(spool)[ready] == "done"
    (job_id,) = failed_by_digest(spool).values()
    assert (spool / "failed" / f"{job_id}.json").stat().st_size == len(raw)
    assert hashlib.sha256((spool / "failed" / f"{job_id}.json").read_bytes()).digest() == hashlib.sha256(raw).digest()
    assert "larger than" in reason(spool, job_id)["last_error"]
    # and every read command still works with it there
    shown = taskq.json("show", job_id, "--json")
    assert shown["state"] == "failed" and "larger than" in shown["last_error"]
    listed = taskq.json("list", "--state", "failed", "--json")
    assert [j["id"] for j in listed] == [job_id]
    status = taskq.json("status", "--json")
    assert status["counts"]["failed"] == 1


def test_payload_at_the_limit_is_accepted_and_reaches_stdin(taskq, spool, tmp_path):
    at = tmp_path / "at.json"
    at.write_text('"' + "x" * (MAX_PAYLOAD_BYTES - 2) + '"')
    out = tmp_path / "count"
    job = taskq.add("sh", "-c", f'wc -c > "{out}"', options=["--payload-file", str(at)])
    burst(taskq)
    assert where(spool)[job] == "done"
    assert int(out.read_text().split()[0]) == MAX_PAYLOAD_BYTES


def test_payload_just_over_the_limit_is_refused_by_add(taskq, spool, tmp_path):
    taskq.add("true")
    before = where(spool)
    over = tmp_path / "over.json"
    over.write_text('"' + "x" * (MAX_PAYLOAD_BYTES - 1) + '"')
    proc = taskq("add", "--payload-file", str(over), "--", "cat")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "payload" in line and str(MAX_PAYLOAD_BYTES) in line
    assert where(spool) == before and ls(spool, "tmp") == []
    with pytest.raises(ValidationError):
        taskq_pkg.Spool(spool).add(["cat"], payload="x" * (MAX_PAYLOAD_BYTES - 1))


def test_drop_in_payload_over_the_limit_goes_to_failed_with_the_reason(taskq, spool, ready):
    at = record_bytes({"command": ["true"], "payload": "x" * (MAX_PAYLOAD_BYTES - 2)})
    over = record_bytes({"command": ["true"], "payload": "x" * (MAX_PAYLOAD_BYTES - 1)})
    drop(spool, "at.json", at)
    drop(spool, "over.json", over)
    burst(taskq)
    check_quarantined(taskq, spool, {"over": (over, "payload")}, ready)
    assert "over the limit" in reason(spool, next(iter(failed_by_digest(spool).values())))["last_error"]
    assert sorted(where(spool).values()) == ["done", "done", "failed"]


# -- commands that cannot run -------------------------------------------------------------------


def test_enormous_argv_fails_the_attempt_clearly_and_the_worker_survives(taskq, spool, ready):
    many = {"command": ["echo"] + ["x" * 15] * 200_000, "max_attempts": 1}
    one_huge = {"command": ["echo", "y" * (256 * 1024)], "max_attempts": 1}
    drop(spool, "many.json", record_bytes(many))
    drop(spool, "onehuge.json", record_bytes(one_huge))
    proc = burst(taskq)
    states = where(spool)
    assert states[ready] == "done"
    failed = [j for j in taskq.json("list", "--state", "failed", "--json")]
    assert len(failed) == 2
    for job in failed:
        assert "argument list too long" in job["last_error"].lower(), job["last_error"]
        (attempt,) = job["attempts"]
        assert attempt["exit_code"] is None and attempt["error"] == job["last_error"]
        # the huge argv is kept, not truncated
        assert len(job["command"]) in (200_001, 2)
    # and no event line carries the argv
    assert "xxxxxxxxxxxxxxx" not in proc.stderr and "yyyy" not in proc.stderr
    assert len(proc.stderr) < 10_000


def test_missing_cwd_and_missing_binary(taskq, spool, ready, tmp_path):
    drop(spool, "nocwd.json", record_bytes({"command": ["true"], "cwd": str(tmp_path / "gone"), "max_attempts": 1}))
    drop(spool, "nobin.json", record_bytes({"command": [str(tmp_path / "no-such-binary")], "max_attempts": 1}))
    drop(spool, "nopath.json", record_bytes({"command": ["taskq-no-such-command-anywhere"], "max_attempts": 2,
                                             "backoff": 0}))
    noexec = tmp_path / "noexec.sh"
    noexec.write_text("#!/bin/sh\ntrue\n")
    os.chmod(noexec, 0o644)
    drop(spool, "noexec.json", record_bytes({"command": [str(noexec)], "max_attempts": 1}))
    burst(taskq)
    jobs = {j["command"][0]: j for j in taskq.json("list", "--state", "failed", "--json")}
    assert where(spool)[ready] == "done"
    assert "working directory" in jobs["true"]["last_error"] and "not found" in jobs["true"]["last_error"]
    assert "command not found" in jobs[str(tmp_path / "no-such-binary")]["last_error"]
    retried = jobs["taskq-no-such-command-anywhere"]
    assert len(retried["attempts"]) == 2 and "command not found" in retried["last_error"]
    assert "permission denied" in jobs[str(noexec)]["last_error"].lower()
    assert ls(spool, "running") == [] and ls(spool, "pending") == []


# -- unicode, odd entries ----------------------------------------------------------------------------


def test_unicode_names_and_args_run_intact(taskq, spool, tmp_path):
    text = "héllo wörld ✓ 日本語 🎉 \u200f\u202e ﷽"
    out = tmp_path / "ünï-out"
    job = taskq.add("sh", "-c", 'printf "%s|%s" "$1" "$TASKQ_JOB_NAME" > "$2"', "sh", text, str(out),
                    options=["--name", "名前-✓"])
    drop(spool, "日本語 ✓.json", json.dumps({"command": ["sh", "-c", f'printf "%s" "$0" > "{out}2"', text]},
                                            ensure_ascii=False).encode())
    burst(taskq)
    assert out.read_text() == f"{text}|名前-✓"
    assert (tmp_path / "ünï-out2").read_text() == text
    assert sorted(where(spool).values()) == ["done", "done"]
    shown = taskq.json("show", job, "--json")
    assert shown["command"][4] == text and shown["name"] == "名前-✓"


def test_odd_pending_names_are_taken_in_as_drop_ins(taskq, spool, ready, tmp_path):
    """Names that look like taskq's own but could not have been made by it (a run
    time that is no date, non-ASCII digits) are drop-in files, not claimable jobs."""
    odd = ["0000000000.99999999T999999999Z.BADKEY.json",
           "0000000000.20261332T000000000Z.BADDAY.json",
           "٠٠٠٠٠٠٠٠٠٠.20260101T000000000Z.ARABIC.json",
           "0000000000.2026-01-01T00:00:00Z.DASHES.json"]
    flag = tmp_path / "ran"
    for i, name in enumerate(odd):
        drop(spool, name, record_bytes({"command": ["sh", "-c", f'echo {i} >> "{flag}"']}))
    burst(taskq, timeout=30)
    assert sorted(flag.read_text().split()) == ["0", "1", "2", "3"]
    assert set(where(spool).values()) == {"done"}


def test_directory_named_like_a_job_is_left_alone(taskq, spool, ready):
    (spool / "pending" / "x.json").mkdir()
    (spool / "pending" / "0999999999.20000101T000000000Z.DIRJOB.json").mkdir()
    burst(taskq)
    assert (spool / "pending" / "x.json").is_dir()
    assert (spool / "pending" / "0999999999.20000101T000000000Z.DIRJOB.json").is_dir()
    assert where(spool)[ready] == "done"
    assert [n for n in ls(spool, "failed")] == []
    status = taskq.json("status", "--json")
    assert status["counts"]["failed"] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_file_goes_to_failed_untouched(taskq, spool, ready):  # pragma: no cover - non-root
    path = drop(spool, "secret.json", record_bytes({"command": ["true"]}))
    os.chmod(path, 0)
    burst(taskq)
    (job_id,) = [n[:-5] for n in ls(spool, "failed") if n.endswith(".json")]
    assert "cannot read" in reason(spool, job_id)["last_error"]


def test_all_the_corpus_at_once(taskq, spool, ready, tmp_path):
    """Every hostile file in one pending/ directory, with good jobs among them."""
    corpus = dict(NOT_JOBS)
    corpus.update(wrong_cases())
    for name, (raw, _) in corpus.items():
        drop(spool, f"{name}.json", raw)
    (spool / "pending" / "adir.json").mkdir()
    goods = [taskq.add("true", options=["--priority", str(p)]) for p in (-5, 0, 5)]
    burst(taskq)
    states = where(spool)
    assert all(states[g] == "done" for g in goods + [ready])
    assert len(failed_by_digest(spool)) == len(corpus)
    assert (spool / "pending" / "adir.json").is_dir()


# -- hostile CLI arguments -----------------------------------------------------------------------


BAD_IDS = ["../x", "..", ".", "a/b", "/etc/passwd", "x y", "", "a.json", "é", "a\n"]


@pytest.mark.parametrize("command, bad_ids", [
    ("show", BAD_IDS), ("wait", ["../x", "..", "a/b", "", "a.json"]), ("cancel", ["../x", ".", "a/b", "é"]),
    ("retry", ["../x", "a/b"]), ("logs", ["../x", "a/b"]), ("explain", ["..", "a/b"]),
])
def test_ids_with_slashes_or_dots_are_validation_errors(taskq, spool, command, bad_ids):
    taskq.add("true")
    before = where(spool)
    for bad in bad_ids:
        args = [command, bad]
        if command == "wait":
            args += ["--timeout", "1"]
        proc = taskq(*args)
        assert proc.returncode == 2, f"{command} {bad!r}: exit {proc.returncode}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert where(spool) == before


@pytest.mark.parametrize("bad", ["a\x00b", "../x", "a/b", "..", "a\n"])
def test_ids_with_nul_or_slashes_through_the_api(spool, bad):
    api = taskq_pkg.Spool(spool)
    api.add(["true"])
    for call in (lambda: api.get(bad), lambda: api.wait([bad], timeout=0.1), lambda: api.cancel([bad]),
                 lambda: api.retry([bad]), lambda: api.explain(bad)):
        with pytest.raises(ValidationError):
            call()


@pytest.mark.parametrize("line, fragment", [
    ({"command": ["true"], "env": {"A=B": "x"}}, "env"),
    ({"command": ["true"], "env": {"A\n": "x"}}, "env"),
    ({"command": ["true"], "id": "a\n"}, "id"),
    ({"command": ["true"], "env": {"A\x00": "x"}}, "env"),
    ({"command": ["true"], "env": {"A": "x\x00y"}}, "nul"),
    ({"command": ["echo", "a\x00b"]}, "nul"),
    ({"command": ["true"], "cwd": "/tmp\x00"}, "nul"),
    ({"command": ["echo", "\ud800"]}, "surrogate"),
])
def test_env_keys_with_eq_or_nul_and_nul_strings_are_refused_by_add(taskq, spool, line, fragment):
    taskq.add("true")
    before = where(spool)
    text = json.dumps(line) + "\n"
    proc = taskq("add", "--batch", "-", input=text)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr.lower() and "line 1" in proc.stderr
    assert where(spool) == before and ls(spool, "tmp") == []
    with pytest.raises(ValidationError):
        taskq_pkg.Spool(spool).add_batch([line])


@pytest.mark.parametrize("pair", ["=x", "A\u00e9=x", "1A=x", "A-B=x", " A=x", "A =x", "noequals", "A\n=x"])
def test_bad_env_option_is_refused(taskq, spool, pair):
    proc = taskq("add", "--env", pair, "--", "true")
    assert proc.returncode == 2, proc.stderr
    assert "env" in proc.stderr.lower()
    assert not (spool / "pending").exists() or ls(spool, "pending") == []


def test_env_value_may_hold_eq_signs(taskq, spool, tmp_path):
    out = tmp_path / "env"
    taskq.add("sh", "-c", f'printf "%s" "$A" > "{out}"', options=["--env", "A=b=c==d"])
    burst(taskq)
    assert out.read_text() == "b=c==d"


def test_non_utf8_argv_is_refused_cleanly(taskq, spool):
    """A command argument that is not UTF-8 cannot be stored in a JSON record: add
    refuses it (exit 2, one line) instead of failing with a traceback."""
    import subprocess

    env = taskq.env()
    proc = subprocess.run([taskq.exe, "add", "--", "echo", b"caf\xe9"], capture_output=True, env=env, timeout=30)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and err.count("\n") == 1 and "command" in err
    assert not (spool / "pending").exists() or ls(spool, "pending") == []


def test_nul_in_a_cli_id_cannot_even_be_passed():
    """execve(2) cannot carry a NUL in an argument: such ids are refused before taskq
    runs; the API refuses them itself (see test_ids_with_nul_or_slashes_through_the_api)."""
    import subprocess

    with pytest.raises(ValueError):
        subprocess.run([sys.executable, "-c", "pass", "a\x00b"], timeout=10)

