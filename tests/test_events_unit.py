"""Pure parts of the event log: file names and rotation steps, which changes become
events and what their records say, encoding and decoding lines (torn ones too),
filters, ``--since``, the status --watch summary, the human line, and the two
taskq.toml settings."""

from __future__ import annotations

import json
import time

import pytest

from taskq import events, render, times
from taskq.config import DEFAULT_EVENTS_KEEP, DEFAULT_EVENTS_MAX, parse_config
from taskq.errors import ValidationError
from taskq.job import Attempt, Outcome, build
from taskq.policy import Decision
from taskq.spool import layout
from taskq.transitions import Change

NOW = 1_750_000_000.0


def job(**fields):
    data = {"command": ["true"], "name": "report", **fields}
    return build(data, now=NOW - 100, default_cwd="/", defaults={}, tasks={})


def with_attempt(j, number: int, outcome: Outcome | None):
    attempt = Attempt(number=number, started_at=times.iso(NOW - 10), worker="h:1")
    if outcome is not None:
        attempt.close(outcome, NOW - 1)
    j.attempts.append(attempt)
    return j


# -- names and rotation ----------------------------------------------------------------------


def test_event_file_names() -> None:
    assert layout.event_file(0) == "events.jsonl"
    assert layout.event_file(3) == "events.jsonl.3"
    assert [layout.event_generation(n) for n in ("events.jsonl", "events.jsonl.1", "events.jsonl.12")] == [0, 1, 12]
    for other in ("events.jsonl.", "events.jsonl.0", "events.jsonl.01", "events.jsonl.x", "events.json",
                  "events.jsonl.1.tmp", "events.lock", "events.jsonl.١"):
        assert layout.event_generation(other) is None, other


def test_rotation_moves_each_file_up_oldest_first() -> None:
    assert layout.event_rotation(4, [0, 1, 2]) == [
        ("events.jsonl.2", "events.jsonl.3"), ("events.jsonl.1", "events.jsonl.2"), ("events.jsonl", "events.jsonl.1")]


def test_rotation_deletes_what_goes_past_keep() -> None:
    # .4 would become .5 (past keep 4); .7 is left from a larger keep: both deleted
    assert layout.event_rotation(4, [0, 1, 2, 3, 4, 7]) == [
        ("events.jsonl.7", None), ("events.jsonl.4", None), ("events.jsonl.3", "events.jsonl.4"),
        ("events.jsonl.2", "events.jsonl.3"), ("events.jsonl.1", "events.jsonl.2"), ("events.jsonl", "events.jsonl.1")]


def test_rotation_with_keep_0_deletes_the_live_file() -> None:
    assert layout.event_rotation(0, [0]) == [("events.jsonl", None)]
    assert layout.event_rotation(0, [0, 1]) == [("events.jsonl.1", None), ("events.jsonl", None)]


def test_rotation_with_a_gap() -> None:
    assert layout.event_rotation(2, [0, 2]) == [("events.jsonl.2", None), ("events.jsonl", "events.jsonl.1")]


# -- which changes are events -------------------------------------------------------------------


def rec(change: Change, worker: str | None = None) -> dict | None:
    return events.record_of(change, NOW, worker)


def test_enqueue_record_has_every_field_in_order() -> None:
    j = job()
    r = rec(Change("enqueue", j.id, None, "pending", j))
    assert r is not None
    assert list(r) == list(events.FIELDS)
    assert r == {"time": times.iso(NOW), "id": j.id, "name": "report", "from": None, "to": "pending",
                 "attempt": None, "exit_code": None, "signal": None, "error": None, "worker": None}
    assert r["time"].endswith("Z")


def test_claim_carries_the_number_of_the_attempt_to_come() -> None:
    j = with_attempt(job(), 1, Outcome(exit_code=3))
    r = rec(Change("claim", j.id, "pending", "running", j), "host:7")
    assert r is not None
    assert (r["from"], r["to"], r["attempt"], r["exit_code"], r["error"], r["worker"]) == (
        "pending", "running", 2, None, None, "host:7")


def test_start_is_not_an_event() -> None:
    j = with_attempt(job(), 1, None)
    assert rec(Change("start", j.id, "running", "running", j)) is None


@pytest.mark.parametrize("outcome, dst, code, sig, error", [
    (Outcome(exit_code=0), "done", 0, None, None),
    (Outcome(exit_code=3), "pending", 3, None, "exit status 3"),
    (Outcome(signal=9), "failed", None, 9, "killed by signal 9"),
    (Outcome(signal=15, timed_out=True), "pending", None, 15, "timed out after 5s (signal 15)"),
    (Outcome(error="worker lost"), "pending", None, None, "worker lost"),
    (Outcome(error="interrupted"), "pending", None, None, "interrupted"),
])
def test_settle_reports_the_attempts_outcome(outcome, dst, code, sig, error) -> None:
    j = with_attempt(job(timeout=5), 1, outcome)
    r = rec(Change("settle", j.id, "running", dst, j, Decision(dst)))
    assert r is not None
    assert (r["attempt"], r["exit_code"], r["signal"], r["error"]) == (1, code, sig, error)


def test_permanent_failure_error_is_describe_of_the_outcome() -> None:
    j = with_attempt(job(), 1, Outcome(exit_code=100))
    decision = Decision("failed", last_error="exit status 100 (permanent)")
    r = rec(Change("settle", j.id, "running", "failed", j, decision))
    assert r is not None and r["error"] == "exit status 100"


def test_recover_of_a_job_never_started_has_no_attempt() -> None:
    j = job()
    r = rec(Change("recover", j.id, "running", "pending", j, Decision("pending")))
    assert r is not None and (r["attempt"], r["error"]) == (None, None)


def test_unclaim_does_not_report_an_older_attempt() -> None:
    j = with_attempt(job(), 1, Outcome(exit_code=3))
    r = rec(Change("unclaim", j.id, "running", "pending", j, Decision("pending")))
    assert r is not None and (r["attempt"], r["exit_code"], r["error"]) == (None, None, None)


def test_cancel_of_a_pending_job_after_a_failed_attempt() -> None:
    j = with_attempt(job(), 1, Outcome(exit_code=3))
    j.last_error = "cancelled"
    r = rec(Change("cancel", j.id, "pending", "failed", j, Decision("failed", last_error="cancelled")))
    assert r is not None and (r["attempt"], r["exit_code"], r["error"]) == (None, None, "cancelled")


def test_cancel_of_a_running_job_closes_its_attempt() -> None:
    j = with_attempt(job(), 2, Outcome(error="cancelled"))
    r = rec(Change("cancel", j.id, "running", "failed", j, Decision("failed", last_error="cancelled")))
    assert r is not None and (r["attempt"], r["error"]) == (2, "cancelled")


def test_attempts_before_a_retry_are_not_reported() -> None:
    j = with_attempt(job(), 1, Outcome(exit_code=3))
    j.budget_start = 1  # retried: a fresh budget, claimed, worker died before the start
    r = rec(Change("recover", j.id, "running", "pending", j, Decision("pending")))
    assert r is not None and r["attempt"] is None


def test_drop_in_intake_starts_from_null() -> None:
    j = job()
    r = rec(Change("normalise", j.id, "pending", "pending", j), "host:1")
    assert r is not None and (r["from"], r["to"], r["worker"]) == (None, "pending", "host:1")


def test_a_drop_in_put_back_is_not_an_event() -> None:
    assert rec(Change("recover", "X", "running", "pending")) is None


def test_quarantine_and_purge() -> None:
    q = rec(Change("quarantine", "BAD", "pending", "failed", None, Decision("failed", last_error="invalid JSON")))
    assert q is not None and (q["name"], q["from"], q["to"], q["error"]) == (None, "pending", "failed", "invalid JSON")
    p = rec(Change("purge", "OLD", "done", None))
    assert p is not None and (p["from"], p["to"]) == ("done", None)


def test_dependency_failure_says_why() -> None:
    j = job()
    d = Decision("failed", last_error="dependency A failed")
    r = rec(Change("fail_dependent", j.id, "pending", "failed", j, d))
    assert r is not None and r["error"] == "dependency A failed"


# -- lines -----------------------------------------------------------------------------------------


def test_encode_is_one_line_and_decodes_back() -> None:
    r = rec(Change("enqueue", "A", None, "pending", job(name="two\nlines \u2028 é")))
    assert r is not None
    line = events.encode(r)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = events.decode(line[:-1])
    assert back is not None and back.record == r and back.ts == pytest.approx(NOW, abs=0.001)
    assert json.loads(line) == r


def test_encode_survives_a_lone_surrogate() -> None:
    line = events.encode({"time": times.iso(NOW), "id": "A", "error": "bad \udc80"})
    assert line.isascii() and json.loads(line)["error"] == "bad \udc80"


@pytest.mark.parametrize("line", [b"", b"{", b'{"time": "2025-01-01T00:00:00.000Z", "id"', b"[1]", b"null",
                                  b'{"time": "yesterday", "id": "A"}', b'{"time": "2025-01-01T00:00:00Z"}',
                                  b'{"time": 5, "id": "A"}', b"\xff\xfe"])
def test_decode_rejects_what_is_not_an_event(line: bytes) -> None:
    assert events.decode(line) is None


def test_decode_finds_a_whole_record_after_torn_remains() -> None:
    whole = events.encode({"time": times.iso(NOW), "id": "B", "to": "done"})[:-1]
    torn = b'{"time": "2025-01-01T00:00:00.000Z", "id": "A", "na'
    got = events.decode(torn + whole)
    assert got is not None and got.record["id"] == "B"


def test_selected_by_id_and_time() -> None:
    e = events.Event(NOW, {"id": "A"})
    assert events.selected(e, None, None)
    assert events.selected(e, "A", NOW) and not events.selected(e, "B", None)
    assert not events.selected(e, None, NOW + 0.001)


def test_parse_since() -> None:
    assert events.parse_since("10m", NOW) == NOW - 600
    assert events.parse_since("30", NOW) == NOW - 30
    assert events.parse_since("2025-01-01T00:00:00Z", NOW) == 1735689600.0
    local = events.parse_since("2025-01-01", NOW)
    assert local == time.mktime((2025, 1, 1, 0, 0, 0, 0, 0, -1))
    for bad in ("", "ten minutes", "-5m", "2025-13-01", "5x"):
        with pytest.raises(ValidationError) as exc:
            events.parse_since(bad, NOW)
        assert "--since" in str(exc.value)


# -- status --watch ------------------------------------------------------------------------------


def r_(src, dst, error=None):
    return {"from": src, "to": dst, "error": error}


def test_failures_and_throughput() -> None:
    records = [r_(None, "pending"), r_("pending", "running"), r_("running", "pending", "exit status 1"),
               r_("pending", "running"), r_("running", "done"), r_("running", "pending", "interrupted"),
               r_("pending", "failed", "cancelled"), r_("running", "failed", "exit status 2"),
               r_("failed", "pending"), r_("done", None)]
    assert [events.is_failure(r) for r in records] == [
        False, False, True, False, False, False, True, True, False, False]
    assert events.throughput(records, 60.0) == {"window": 60.0, "done": 1, "failed": 2, "retries": 1, "claims": 2}


def test_throughput_text() -> None:
    t = {"window": 60.0, "done": 4, "failed": 1, "retries": 2, "claims": 7}
    assert render.throughput_text(t) == "last minute: 4 done, 1 failed, 2 attempts to retry, 7 claimed"


# -- the human line ------------------------------------------------------------------------------


def line_of(**fields) -> str:
    base = {"time": times.iso(NOW), "id": "ID1", "name": "mail", "from": "running", "to": "pending",
            "attempt": 2, "exit_code": 3, "signal": None, "error": "exit status 3", "worker": "h:9"}
    return render.event_line({**base, **fields})


def test_human_lines() -> None:
    local = render._event_time(times.iso(NOW))
    assert line_of() == f"{local}  ID1  mail  running -> pending  attempt 2 failed: exit status 3; will retry [h:9]"
    assert line_of(**{"from": None, "to": "pending", "attempt": None, "error": None, "worker": None}).endswith(
        "(new) -> pending  enqueued")
    assert line_of(**{"from": "pending", "to": "running", "error": None}).endswith("claimed for attempt 2 [h:9]")
    assert line_of(to="done", error=None).endswith("attempt 2 succeeded [h:9]")
    assert line_of(**{"from": "done", "to": None, "name": None, "worker": None}).endswith(
        "  -  done -> (deleted)  purged")
    assert line_of(to="failed", error="cancelled").endswith("cancelled during attempt 2 [h:9]")
    assert line_of(**{"from": "failed", "to": "pending", "error": None, "attempt": None}).endswith("retried [h:9]")
    assert line_of(**{"from": "pending", "to": "failed", "error": "dependency X failed", "attempt": None,
                      "worker": None}).endswith("failed: dependency X failed")
    assert "interrupted" in line_of(error="interrupted")
    assert line_of(error=None, attempt=None).endswith("put back: its attempt never started [h:9]")


def test_human_line_is_one_line_whatever_the_name() -> None:
    line = line_of(name="a\nb\x1b[31m", error="x\r\ny")
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    assert "a\\nb\\x1b[31m" in line
    assert "[/bold]" in line_of(name="[/bold]")  # printed literally, never markup


def test_human_time_is_local_with_milliseconds() -> None:
    assert render._event_time("2025-01-01T00:00:00.250Z").endswith(".250")
    assert render._event_time("garbage") == "garbage"


# -- taskq.toml ----------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    cfg = parse_config(None)
    assert (cfg.events_max, cfg.events_keep) == (DEFAULT_EVENTS_MAX, DEFAULT_EVENTS_KEEP) == (64 << 20, 4)
    cfg = parse_config(b"fsync = true\n")
    assert (cfg.events_max, cfg.events_keep) == (64 << 20, 4)


@pytest.mark.parametrize("text, size, keep", [
    ('events_max = "1MiB"\nevents_keep = 0', 1 << 20, 0),
    ("events_max = 0\nevents_keep = 10", 0, 10),
    ('events_max = "512"', 512, 4),
    ('events_max = "2G"', 2 << 30, 4),
])
def test_settings(text: str, size: int, keep: int) -> None:
    cfg = parse_config(text.encode())
    assert (cfg.events_max, cfg.events_keep) == (size, keep)


@pytest.mark.parametrize("text, key", [
    ("events_max = -1", "events_max"),
    ('events_max = "lots"', "events_max"),
    ("events_max = true", "events_max"),
    ("events_max = 1.5", "events_max"),
    ("events_keep = -1", "events_keep"),
    ("events_keep = 1.0", "events_keep"),
    ('events_keep = "4"', "events_keep"),
    ("events_keep = true", "events_keep"),
    ("events_keep = 100000", "events_keep"),
])
def test_bad_settings_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_config(text.encode())
    assert key in str(exc.value) and "\n" not in str(exc.value)
