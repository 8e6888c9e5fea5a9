"""Unit tests of the pure parts: durations, date-times, timestamps, ids, the job
record, field validation, pending file names, taskq.toml and ``job.build``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from taskq import times
from taskq.config import DEFAULT_MIN_FREE, parse_config, parse_size
from taskq.errors import InvalidIdError, ValidationError
from taskq.fields import DEFAULTS, MAX_PAYLOAD_BYTES, validate_fields
from taskq.ids import check_id, id_time, new_id
from taskq.job import Job, build
from taskq.spool.layout import parse_pending_name, pending_name

ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3,}Z$")
ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
NOW = 1_900_000_000.25  # 2030-03-17T17:46:40.250Z


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def fresh_generator():
    """A separate instance of taskq.ids with its own id generator state, as in a
    process of its own (tests give explicit, possibly past, creation times)."""
    spec = importlib.util.find_spec("taskq.ids")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def local_tz(monkeypatch):
    """Switch this process's local time zone to a POSIX TZ string for the test."""

    def set_tz(spec: str) -> None:
        monkeypatch.setenv("TZ", spec)
        time.tzset()

    yield set_tz
    monkeypatch.undo()
    time.tzset()


def make(**given):
    """build() with fixed inputs and no config."""
    given.setdefault("command", ["true"])
    return build(given, now=NOW, default_cwd="/srv/work", defaults={}, tasks={})


# -- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30", 30.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5m", 90.0),
        ("0.25h", 900.0),
    ],
)
def test_duration_valid(text, seconds):
    assert times.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", " ", "abc", "-5", "-1s", "10x", "1h30m", "m", "s10", "1e3", "inf", "nan", "10 minutes", "1,5"]
)
def test_duration_invalid_names_the_option(text):
    with pytest.raises(ValidationError) as info:
        times.parse_duration(text, "--delay")
    assert info.value.field == "--delay"
    assert str(info.value).startswith("--delay:")
    assert repr(text) in str(info.value)


def test_duration_fields_accept_numbers_and_strings():
    out = validate_fields({"backoff": "10m", "backoff_max": 90, "timeout": "1.5"})
    assert out == {"backoff": 600.0, "backoff_max": 90.0, "timeout": 1.5}


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), True, "x", [1]])
def test_duration_fields_reject_bad_numbers(value):
    with pytest.raises(ValidationError) as info:
        validate_fields({"backoff": value})
    assert info.value.field == "backoff"


# -- --at date-times ---------------------------------------------------------------------


def test_at_with_z_is_utc():
    assert times.parse_datetime("2030-01-02T03:04:05Z") == utc(2030, 1, 2, 3, 4, 5)


def test_at_with_offsets():
    assert times.parse_datetime("2030-01-02T03:04:05+05:30") == utc(2030, 1, 1, 21, 34, 5)
    assert times.parse_datetime("2030-01-02T03:04:05-08:00") == utc(2030, 1, 2, 11, 4, 5)
    assert times.parse_datetime("2030-01-02T03:04:05+00:00") == utc(2030, 1, 2, 3, 4, 5)


def test_at_fraction_and_short_forms():
    assert times.parse_datetime("2030-01-02T03:04:05.123Z") == pytest.approx(utc(2030, 1, 2, 3, 4, 5) + 0.123)
    assert times.parse_datetime("2030-01-02T03:04Z") == utc(2030, 1, 2, 3, 4)


def test_at_without_offset_is_local_time(local_tz):
    local_tz("XXX-3")  # POSIX: UTC+3, no daylight saving
    assert times.parse_datetime("2030-01-02T03:04:05") == utc(2030, 1, 2, 0, 4, 5)
    local_tz("YYY+5")  # UTC-5
    assert times.parse_datetime("2030-01-02T03:04:05") == utc(2030, 1, 2, 8, 4, 5)


def test_at_local_time_follows_daylight_saving(local_tz):
    local_tz("CET-1CEST,M3.5.0,M10.5.0/3")
    assert times.parse_datetime("2030-01-15T12:00") == utc(2030, 1, 15, 11, 0)
    assert times.parse_datetime("2030-07-15T12:00") == utc(2030, 7, 15, 10, 0)


def test_at_offset_ignores_local_zone(local_tz):
    local_tz("XXX-3")
    assert times.parse_datetime("2030-01-02T03:04:05Z") == utc(2030, 1, 2, 3, 4, 5)
    assert times.parse_datetime("2030-01-02T03:04:05+01:00") == utc(2030, 1, 2, 2, 4, 5)


def test_at_date_alone_is_local_midnight(local_tz):
    local_tz("XXX-3")
    assert times.parse_datetime("2030-01-02") == utc(2030, 1, 1, 21, 0)
    local_tz("UTC0")
    assert times.parse_datetime("2030-01-02") == utc(2030, 1, 2)


def test_at_space_may_replace_t(local_tz):
    local_tz("XXX-3")
    assert times.parse_datetime("2030-01-02 03:04") == times.parse_datetime("2030-01-02T03:04")
    assert times.parse_datetime("2030-01-02 03:04:05Z") == utc(2030, 1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tomorrow",
        "2030-1-2",
        "2030/01/02",
        "20300102",
        "2030-01-02T03",
        "2030-01-02T3:04",
        "2030-13-01",
        "2030-02-30",
        "2030-01-02T24:00",
        "2030-01-02T03:60",
        "2030-01-02T03:04:05+5",
        "2030-01-02T03:04:05 UTC",
        "2030-01-02TT03:04",
        "now",
    ],
)
def test_at_invalid_names_the_option(text):
    with pytest.raises(ValidationError) as info:
        times.parse_datetime(text)
    assert info.value.field == "--at"
    assert str(info.value).startswith("--at:")


# -- ISO timestamps ----------------------------------------------------------------------


def test_iso_format_utc_z_milliseconds():
    assert times.iso(0) == "1970-01-01T00:00:00.000Z"
    assert times.iso(utc(2030, 1, 2, 3, 4, 5) + 0.123) == "2030-01-02T03:04:05.123Z"
    assert times.iso(utc(2030, 1, 2, 3, 4, 5) + 0.9996) == "2030-01-02T03:04:06.000Z"
    for ts in (NOW, time.time(), 1.5, 86399.999):
        assert ISO_RE.match(times.iso(ts)), times.iso(ts)


def test_iso_round_trip_to_the_millisecond():
    for ts in (0.0, NOW, 1_234_567_890.987, time.time()):
        assert times.parse_iso(times.iso(ts)) == pytest.approx(ts, abs=0.0005)


def test_parse_iso_accepts_offsets_and_z():
    z = times.parse_iso("2030-01-02T03:04:05.000Z")
    assert times.parse_iso("2030-01-02T04:04:05+01:00") == z
    assert times.parse_iso("2030-01-02T03:04:05") == z  # no offset in a record = UTC


def test_record_timestamps_are_normalised_to_z():
    out = validate_fields({"run_at": "2030-01-02T04:04:05+01:00"})
    assert out["run_at"] == "2030-01-02T03:04:05.000Z"
    with pytest.raises(ValidationError) as info:
        validate_fields({"run_at": "yesterday"})
    assert info.value.field == "run_at"


# -- ids ---------------------------------------------------------------------------------


def test_id_pattern():
    for _ in range(100):
        job_id = new_id()
        assert ID_RE.match(job_id), job_id
        check_id(job_id)


def test_ids_unique_over_many():
    ids = [new_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)


def test_ids_monotonic_within_a_process():
    ids = [new_id() for _ in range(5000)]  # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_sorted_by_creation_time():
    gen = fresh_generator()
    stamps = [NOW + i * 0.5 for i in range(50)] + [NOW + 86400 * 365 * 5]
    ids = [gen.new_id(ts) for ts in stamps]
    assert ids == sorted(ids)


def test_ids_of_independent_generators_sort_by_time():
    """Ids made in different processes (independent state) still sort by time."""
    later = fresh_generator().new_id(NOW + 0.002)
    earlier = fresh_generator().new_id(NOW)
    assert earlier < later
    assert id_time(earlier) < id_time(later)


def test_ids_unique_in_forked_children():
    """A forked producer must not repeat its parent's or a sibling's ids, even when
    all of them create an id for the same millisecond."""
    gen = fresh_generator()
    parent = gen.new_id(NOW)
    read_end, write_end = os.pipe()
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.write(write_end, (gen.new_id(NOW) + "\n").encode())
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(write_end)
    for pid in pids:
        os.waitpid(pid, 0)
    with os.fdopen(read_end) as fh:
        children = fh.read().split()
    assert len(children) == 4
    assert len(set(children + [parent])) == 5


def test_id_time_round_trip():
    gen = fresh_generator()
    for ts in (NOW, NOW + 0.001, NOW + 12.345, NOW + 10**6):
        assert id_time(gen.new_id(ts)) == pytest.approx(int(ts * 1000) / 1000, abs=1e-6)


def test_id_time_of_foreign_ids_is_none():
    assert id_time("my-job") is None
    assert id_time("x" * 26) is None
    assert id_time("") is None


@pytest.mark.parametrize("good", ["a", "A-b_9", "01HZZZZZZZZZZZZZZZZZZZZZZZ", "my-drop-in_job"])
def test_check_id_accepts(good):
    assert check_id(good) == good


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "../x", "a.b", "é", "a\nb", "a\x00b", None, 5, "*"])
def test_check_id_rejects(bad):
    with pytest.raises(InvalidIdError):
        check_id(bad)
    assert issubclass(InvalidIdError, ValidationError)


# -- the record ----------------------------------------------------------------------------


def full_record() -> dict:
    return {
        "version": 1,
        "id": "01HABCDEFGHJKMNPQRSTVWXYZ0",
        "name": "report",
        "command": ["/usr/bin/report", "--all", "ünï"],
        "payload": {"user": 7, "tags": ["a", None, 1.5]},
        "env": {"A": "1", "EMPTY": ""},
        "cwd": "/srv",
        "priority": -4,
        "max_attempts": 3,
        "timeout": 12.5,
        "unique_key": "k1",
        "created_at": "2030-01-02T03:04:05.006Z",
        "run_at": "2030-01-02T03:05:05.006Z",
        "attempts": [
            {
                "number": 1,
                "started_at": "2030-01-02T03:05:06.000Z",
                "finished_at": "2030-01-02T03:05:07.500Z",
                "exit_code": 3,
                "signal": None,
                "timed_out": False,
                "error": None,
                "worker": "host:123",
            }
        ],
        "last_error": "exit 3",
        "backoff": 5.0,
        "backoff_max": 60.0,
        "permanent_exit_codes": [3, 100],
        "after": ["dep-1"],
        "settled_at": None,
        "budget_start": 0,
        "retried_at": None,
    }


def test_record_round_trip():
    rec = full_record()
    job = Job.from_record(rec)
    assert job.to_record() == rec
    again = Job.from_bytes(job.to_bytes())
    assert again.to_record() == rec
    assert again.attempts[0].exit_code == 3 and again.attempts[0].worker == "host:123"


def test_record_carries_version_and_no_state():
    job = make()
    rec = job.to_record()
    assert rec["version"] == 1
    assert "state" not in rec
    job.state = "pending"
    public = job.to_dict()
    assert public["state"] == "pending"
    assert {k: v for k, v in public.items() if k != "state"} == rec


def test_record_has_every_contract_field():
    rec = make().to_dict()
    for key in (
        "id", "state", "name", "command", "payload", "env", "cwd", "priority", "max_attempts",
        "timeout", "unique_key", "created_at", "run_at", "attempts", "last_error", "backoff",
        "backoff_max", "permanent_exit_codes", "after",
    ):
        assert key in rec, key


def test_record_extra_keys_preserved():
    rec = full_record()
    rec["x_origin"] = {"system": "billing", "n": [1, 2]}
    rec["another"] = None
    out = Job.from_record(rec).to_record()
    assert out["x_origin"] == {"system": "billing", "n": [1, 2]}
    assert "another" in out and out["another"] is None
    assert json.loads(Job.from_record(rec).to_bytes())["x_origin"] == rec["x_origin"]


def test_record_ignores_a_stored_state_key():
    rec = full_record()
    rec["state"] = "done"
    out = Job.from_record(rec).to_record()
    assert "state" not in out


def test_record_unknown_version_rejected():
    rec = full_record()
    rec["version"] = 2
    with pytest.raises(ValidationError) as info:
        Job.from_record(rec)
    assert info.value.field == "version"


@pytest.mark.parametrize(
    "key",
    [
        "id",
        "cwd",
        "created_at",
        "run_at",
        "command",
    ],
)
def test_record_missing_required_field(key):
    rec = full_record()
    del rec[key]
    with pytest.raises(ValidationError) as info:
        Job.from_record(rec)
    assert key in str(info.value)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[1, 2]", b"null", b"\xff\xfe{}", b'{"command": ["x"]'],
)
def test_from_bytes_rejects_garbage(raw):
    with pytest.raises(ValidationError):
        Job.from_bytes(raw)


def test_bad_attempt_named():
    rec = full_record()
    rec["attempts"][0]["number"] = 0
    with pytest.raises(ValidationError) as info:
        Job.from_record(rec)
    assert info.value.field == "attempts[0].number"


# -- field validation names the bad field ----------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("command", []),
        ("command", "echo hi"),
        ("command", [1, 2]),
        ("command", [""]),
        ("command", None),
        ("command", ["a\x00b"]),
        ("env", {"1A": "x"}),
        ("env", {"A-B": "x"}),
        ("env", {"": "x"}),
        ("env", {"A": 1}),
        ("env", ["A=1"]),
        ("priority", 1_000_000_000),
        ("priority", -1_000_000_000),
        ("priority", 1.5),
        ("priority", "5"),
        ("priority", True),
        ("max_attempts", 0),
        ("max_attempts", -1),
        ("max_attempts", 2.0),
        ("permanent_exit_codes", [0]),
        ("permanent_exit_codes", [256]),
        ("permanent_exit_codes", [-1]),
        ("permanent_exit_codes", 100),
        ("permanent_exit_codes", ["100"]),
        ("timeout", 0),
        ("timeout", -3),
        ("timeout", "soon"),
        ("cwd", "relative/dir"),
        ("cwd", ""),
        ("after", ["bad id"]),
        ("after", "01HABCDEFGHJKMNPQRSTVWXYZ0"),
        ("unique_key", ""),
        ("name", ""),
        ("name", 5),
    ],
)
def test_validation_names_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        make(**{field: value})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    "field, value, stored",
    [
        ("priority", 999_999_999, 999_999_999),
        ("priority", -999_999_999, -999_999_999),
        ("max_attempts", 1, 1),
        ("permanent_exit_codes", [255, 1], [1, 255]),
        ("permanent_exit_codes", [], []),
        ("env", {"_A1": "", "B": "x=y"}, {"_A1": "", "B": "x=y"}),
        ("timeout", "10m", 600.0),
        ("timeout", None, None),
        ("payload", None, None),
        ("payload", [1, "two", {"3": None}], [1, "two", {"3": None}]),
    ],
)
def test_validation_boundaries_accepted(field, value, stored):
    assert getattr(make(**{field: value}), field) == stored


def test_payload_size_limit():
    # JSON-encoded size counts: a string of n characters encodes to n + 2 bytes.
    at_limit = "x" * (MAX_PAYLOAD_BYTES - 2)
    assert make(payload=at_limit).payload == at_limit
    with pytest.raises(ValidationError) as info:
        make(payload="x" * (MAX_PAYLOAD_BYTES - 1))
    assert info.value.field == "payload"
    assert str(MAX_PAYLOAD_BYTES) in str(info.value)
    assert MAX_PAYLOAD_BYTES == 1024 * 1024


def test_payload_size_counts_utf8_bytes():
    with pytest.raises(ValidationError) as info:
        make(payload="é" * (MAX_PAYLOAD_BYTES // 2))  # 2 bytes each in UTF-8
    assert info.value.field == "payload"


# -- pending file names ------------------------------------------------------------------------


RUN_KEY = "20300102T030405006Z"


def test_pending_name_round_trip():
    name = pending_name("01HABCDEFGHJKMNPQRSTVWXYZ0", 7, RUN_KEY, False)
    assert name.endswith(".json")
    parsed = parse_pending_name(name)
    assert parsed is not None
    assert (parsed.id, parsed.priority, parsed.run_key, parsed.has_deps) == (
        "01HABCDEFGHJKMNPQRSTVWXYZ0", 7, RUN_KEY, False,
    )
    deps = parse_pending_name(pending_name("my_job-1", -3, RUN_KEY, True))
    assert deps is not None
    assert (deps.id, deps.priority, deps.has_deps) == ("my_job-1", -3, True)


@pytest.mark.parametrize("priority", [0, 1, -1, 999_999_999, -999_999_999, 12345])
def test_pending_name_priority_round_trip(priority):
    parsed = parse_pending_name(pending_name("a", priority, RUN_KEY, False))
    assert parsed is not None and parsed.priority == priority


def test_pending_name_lexical_order_is_priority_desc_then_run_at_then_id():
    prios = [5, -3, 0, 100, -999_999_999, 999_999_999, 1, -1]
    names = [pending_name(f"id{i}", p, RUN_KEY, i % 2 == 0) for i, p in enumerate(prios)]
    by_name = [parse_pending_name(n).priority for n in sorted(names)]
    assert by_name == sorted(prios, reverse=True)
    later = pending_name("a", 0, "20300102T030405007Z", False)
    sooner = pending_name("b", 0, RUN_KEY, False)
    assert sorted([later, sooner]) == [sooner, later]
    first = pending_name("01A", 0, RUN_KEY, False)
    second = pending_name("01B", 0, RUN_KEY, False)
    assert sorted([second, first]) == [first, second]


def test_pending_name_uses_name_key_of_run_at():
    job = make(run_at="2030-01-02T03:04:05.006Z")
    assert times.name_key(job.run_at_ts) == RUN_KEY
    assert sorted([times.name_key(NOW + 1), times.name_key(NOW)]) == [times.name_key(NOW), times.name_key(NOW + 1)]


@pytest.mark.parametrize(
    "name",
    [
        "job.json",
        "foo.json",
        "01HABCDEFGHJKMNPQRSTVWXYZ0.json",
        f".0999999999.{RUN_KEY}.abc.json",
        f"0999999999.{RUN_KEY}.abc.json.tmp",
        f"0999999999.{RUN_KEY}.abc.txt",
        f"0999999999.{RUN_KEY}.abc",
        f"099999999.{RUN_KEY}.abc.json",
        f"09999999990.{RUN_KEY}.abc.json",
        f"099999999x.{RUN_KEY}.abc.json",
        "0999999999.2030010T030405006Z.abc.json",
        "0999999999.20300102X030405006Z.abc.json",
        f"0999999999.{RUN_KEY}..json",
        f"0999999999.{RUN_KEY}.a b.json",
        f"0999999999.{RUN_KEY}.éé.json",
        f"0999999999.{RUN_KEY}.abc.before.json",
        f"0999999999.{RUN_KEY}.abc.after.x.json",
        "",
    ],
)
def test_foreign_pending_names_rejected(name):
    assert parse_pending_name(name) is None


# -- taskq.toml ------------------------------------------------------------------------------


def test_config_defaults_without_file():
    cfg = parse_config(None)
    assert cfg.fsync is True
    assert cfg.min_free == DEFAULT_MIN_FREE == 16 * 1024 * 1024
    assert cfg.kill_grace == 5.0
    assert cfg.defaults == {} and cfg.tasks == {}


def test_config_empty_file():
    cfg = parse_config(b"")
    assert cfg.min_free == DEFAULT_MIN_FREE and cfg.tasks == {}


def test_config_full():
    cfg = parse_config(
        b"""
fsync = false
min_free = "1GiB"
kill_grace = "10s"

[defaults]
max_attempts = 3
backoff = "30s"
permanent_exit_codes = [75, 100]

[tasks.nightly-report]
command = ["/usr/local/bin/report", "--nightly"]
timeout = "1h"
priority = 5

[tasks.shell]
command = "echo hi | wc -c"
env = { MODE = "x" }
"""
    )
    assert cfg.fsync is False
    assert cfg.min_free == 1 << 30
    assert cfg.kill_grace == 10.0
    assert cfg.defaults == {"max_attempts": 3, "backoff": 30.0, "permanent_exit_codes": [75, 100]}
    assert cfg.tasks["nightly-report"] == {
        "command": ["/usr/local/bin/report", "--nightly"], "timeout": 3600.0, "priority": 5,
    }
    assert cfg.tasks["shell"]["command"] == ["/bin/sh", "-c", "echo hi | wc -c"]
    assert cfg.tasks["shell"]["env"] == {"MODE": "x"}


def test_config_top_level_permanent_exit_codes():
    cfg = parse_config(b"permanent_exit_codes = [3, 4]\n")
    assert cfg.defaults["permanent_exit_codes"] == [3, 4]


@pytest.mark.parametrize(
    "text, fragment",
    [
        (b"bogus = 1\n", "bogus"),
        (b"[defaults]\ncommand = ['x']\n", "command"),
        (b"[defaults]\nmax_atempts = 3\n", "max_atempts"),
        (b"[defaults]\nmax_attempts = 0\n", "max_attempts"),
        (b"[tasks.t]\ncommand = ['x']\nbogus = 1\n", "bogus"),
        (b"[tasks.t]\ncommand = []\n", "command"),
        (b"[tasks.t]\ncommand = ['x']\ntimeout = 'soon'\n", "timeout"),
        (b"[tasks.t]\ncommand = ['x']\nenv = { '1BAD' = 'x' }\n", "env"),
        (b"[tasks.t]\ncommand = ['x']\npermanent_exit_codes = [300]\n", "permanent_exit_codes"),
        (b"tasks = 5\n", "tasks"),
        (b"defaults = 5\n", "defaults"),
        (b"fsync = 'yes'\n", "fsync"),
        (b"min_free = 'lots'\n", "min_free"),
        (b"min_free = -1\n", "min_free"),
        (b"this is not toml\n", "TOML"),
        (b"\xff\xfe", "TOML"),
    ],
)
def test_config_errors_name_the_key(text, fragment):
    with pytest.raises(ValidationError) as info:
        parse_config(text, "/s/taskq.toml")
    assert fragment in str(info.value)
    assert "/s/taskq.toml" in str(info.value)


@pytest.mark.parametrize(
    "value, size",
    [(0, 0), ("0", 0), (1048576, 1 << 20), ("16MiB", 16 << 20), ("16M", 16 << 20),
     ("1G", 1 << 30), ("2KiB", 2048), ("1000T", 1000 << 40), ("512B", 512)],
)
def test_parse_size(value, size):
    assert parse_size(value, "min_free") == size


# -- build: precedence ----------------------------------------------------------------------


def test_build_builtin_defaults():
    job = make()
    assert job.max_attempts == DEFAULTS["max_attempts"] == 5
    assert job.backoff == 10.0 and job.backoff_max == 3600.0
    assert job.timeout is None and job.priority == 0
    assert job.permanent_exit_codes == [100]
    assert job.cwd == "/srv/work"
    assert job.env == {} and job.after == [] and job.attempts == []
    assert job.name is None and job.payload is None and job.unique_key is None
    assert job.created_at == times.iso(NOW) == job.run_at
    assert ID_RE.match(job.id)


def test_build_precedence():
    defaults = {"max_attempts": 3, "backoff": 30.0, "timeout": 100.0, "permanent_exit_codes": [7]}
    tasks = {"nightly": {"command": ["report"], "max_attempts": 7, "priority": 2, "timeout": 50.0}}
    # [defaults] over built-ins
    job = build({"command": ["x"]}, now=NOW, default_cwd="/", defaults=defaults, tasks=tasks)
    assert (job.max_attempts, job.backoff, job.timeout) == (3, 30.0, 100.0)
    assert (job.permanent_exit_codes, job.priority, job.backoff_max) == ([7], 0, 3600.0)
    # task type over [defaults]
    job = build({"name": "nightly"}, now=NOW, default_cwd="/", defaults=defaults, tasks=tasks)
    assert job.command == ["report"] and job.name == "nightly"
    assert (job.max_attempts, job.priority, job.timeout, job.backoff) == (7, 2, 50.0, 30.0)
    # options over task type
    job = build(
        {"name": "nightly", "max_attempts": 9, "command": ["other"], "timeout": 5.0, "backoff": 1.0},
        now=NOW, default_cwd="/", defaults=defaults, tasks=tasks,
    )
    assert (job.command, job.max_attempts, job.timeout, job.backoff, job.priority) == (["other"], 9, 5.0, 1.0, 2)


def test_build_none_means_not_given():
    tasks = {"t": {"command": ["report"], "priority": 4}}
    job = build({"name": "t", "priority": None, "command": None}, now=NOW, default_cwd="/", defaults={}, tasks=tasks)
    assert job.priority == 4 and job.command == ["report"]


def test_build_name_without_task_type_is_a_label():
    job = make(name="just-a-label")
    assert job.name == "just-a-label" and job.command == ["true"]


def test_build_unknown_task_type_without_command():
    with pytest.raises(ValidationError) as info:
        build({"name": "nope"}, now=NOW, default_cwd="/", defaults={}, tasks={})
    assert info.value.field == "command"
    assert "nope" in str(info.value)


def test_build_no_command_at_all():
    with pytest.raises(ValidationError) as info:
        build({}, now=NOW, default_cwd="/", defaults={}, tasks={})
    assert info.value.field == "command"


def test_build_delay():
    assert make(delay=60).run_at == times.iso(NOW + 60)
    assert make(delay="10m").run_at == times.iso(NOW + 600)
    assert make(delay=0).run_at == times.iso(NOW)
    with pytest.raises(ValidationError):
        make(delay="soon")
    with pytest.raises(ValidationError):
        make(delay=5, run_at="2030-01-01T00:00:00Z")


def test_build_rejects_attempts_on_a_new_job():
    with pytest.raises(ValidationError) as info:
        make(attempts=[{"number": 1, "started_at": "2030-01-01T00:00:00Z", "worker": "h:1"}])
    assert info.value.field == "attempts"


def test_build_keeps_given_id_and_extra_keys():
    job = make(id="my-own-id", x_trace="abc")
    assert job.id == "my-own-id"
    assert job.to_record()["x_trace"] == "abc"


def test_build_drop_in_minimal_record():
    """A drop-in file holds only a command; every other field takes its default."""
    job = build({"command": ["prog", "arg"]}, now=NOW, default_cwd="/", defaults={"max_attempts": 2}, tasks={})
    assert job.command == ["prog", "arg"] and job.max_attempts == 2
    assert job.created_at.endswith("Z") and job.run_at == job.created_at


def test_build_created_at_and_run_at_are_iso_z():
    job = make(delay=1.5)
    assert ISO_RE.match(job.created_at) and ISO_RE.match(job.run_at)
    run_at, created_at = datetime.fromisoformat(job.run_at[:-1]), datetime.fromisoformat(job.created_at[:-1])
    assert run_at - created_at == timedelta(seconds=1.5)
