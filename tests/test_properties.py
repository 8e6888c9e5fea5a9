"""Property-based tests (hypothesis): the job record's round trip, the pending/ file
names and their order, the retry policy, and a state machine of the spool driven
through the Python API and the transition engine, checked against a simple model
after every step."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import taskq
from taskq import times
from taskq.errors import StateConflictError
from taskq.fields import PRIORITY_MAX, PRIORITY_MIN
from taskq.ids import new_id
from taskq.job import FORMAT_VERSION, Attempt, Job
from taskq.policy import CANCELLED, INTERRUPTED, WORKER_LOST, Outcome, backoff_delay, decide
from taskq.spool.layout import parse_pending_name, parse_pending_names, pending_name, scan_pending_names

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------

ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
ids = st.text(ID_CHARS, min_size=1, max_size=40)
# Text as JSON and UTF-8 can carry it: no NUL (rejected in fields), no lone surrogates.
safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
# Millisecond timestamps from 1970 to 9999 (the record's range).
MS_MAX = 253402300799999
ms_stamps = st.integers(min_value=0, max_value=MS_MAX)
stamps = ms_stamps.map(lambda ms: times.iso(ms / 1000))
seconds = st.one_of(st.integers(0, 10**6).map(float),
                    st.floats(0, 1e6, allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | safe_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(safe_text, children, max_size=4),
    max_leaves=12,
)
KNOWN = set(Job.__dataclass_fields__) | {"version", "state"}


@st.composite
def attempts_lists(draw) -> list[dict]:
    n = draw(st.integers(0, 4))
    out = []
    for i in range(1, n + 1):
        finished = draw(st.booleans()) or i < n
        out.append({
            "number": i,
            "started_at": draw(stamps),
            "finished_at": draw(stamps) if finished else None,
            "exit_code": draw(st.none() | st.integers(0, 255)),
            "signal": draw(st.none() | st.integers(1, 64)),
            "timed_out": draw(st.booleans()),
            "error": draw(st.none() | safe_text),
            "worker": draw(safe_text),
        })
    return out


@st.composite
def records(draw) -> dict:
    attempts = draw(attempts_lists())
    rec = {
        "version": FORMAT_VERSION,
        "id": draw(ids),
        "name": draw(st.none() | safe_text.filter(bool)),
        "command": draw(st.lists(safe_text, max_size=4).map(lambda rest: ["prog"] + rest)),
        "payload": draw(json_values),
        "env": draw(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
                                    safe_text, max_size=3)),
        "cwd": "/" + draw(safe_text),
        "priority": draw(st.integers(PRIORITY_MIN, PRIORITY_MAX)),
        "max_attempts": draw(st.integers(1, 1000)),
        "timeout": draw(st.none() | st.floats(0.001, 1e6)),
        "unique_key": draw(st.none() | safe_text.filter(bool)),
        "created_at": draw(stamps),
        "run_at": draw(stamps),
        "attempts": attempts,
        "last_error": draw(st.none() | safe_text),
        "backoff": draw(seconds),
        "backoff_max": draw(seconds),
        "permanent_exit_codes": sorted(draw(st.sets(st.integers(1, 255), max_size=4))),
        "after": draw(st.lists(ids, max_size=3)),
        "settled_at": draw(st.none() | stamps),
        "budget_start": draw(st.integers(0, len(attempts))),
    }
    if "retried_at" in Job.__dataclass_fields__:
        rec["retried_at"] = draw(st.none() | stamps)
    extra = draw(st.dictionaries(safe_text.filter(lambda k: k not in KNOWN), json_values, max_size=3))
    rec.update(extra)
    return rec


# -- the record --------------------------------------------------------------------------------


@SETTINGS
@given(records())
def test_record_round_trip(rec):
    job = Job.from_record(rec)
    raw = job.to_bytes()
    again = Job.from_bytes(raw)
    assert again == job
    assert again.to_record() == job.to_record()
    # The file is the record: every key given, with its value, extra keys included.
    stored = json.loads(raw)
    for key, value in rec.items():
        assert stored[key] == value, key
    assert set(stored) - set(rec) <= KNOWN - {"state"}, "only known fields are added"
    assert "state" not in stored
    assert raw.endswith(b"\n") and raw.decode("utf-8")


@SETTINGS
@given(records(), st.sampled_from(["pending", "running", "done", "failed"]))
def test_public_form_adds_only_the_state(rec, state):
    job = Job.from_record(rec)
    job.state = state
    public = job.to_dict()
    assert public.pop("state") == state
    assert public == job.to_record()


@SETTINGS
@given(records(), st.sampled_from(["id", "command", "cwd", "created_at", "run_at"]))
def test_record_missing_a_required_field_is_refused(rec, key):
    from taskq.errors import ValidationError

    del rec[key]
    with pytest.raises(ValidationError) as info:
        Job.from_record(rec)
    assert key in str(info.value)


# -- pending/ names ----------------------------------------------------------------------------


@SETTINGS
@given(ids, st.integers(PRIORITY_MIN, PRIORITY_MAX), ms_stamps, st.booleans())
def test_pending_name_round_trip(job_id, priority, ms, deps):
    key = times.name_key(ms / 1000)
    name = pending_name(job_id, priority, key, deps)
    parsed = parse_pending_name(name)
    assert parsed is not None
    assert (parsed.id, parsed.priority, parsed.run_key, parsed.has_deps, parsed.name) == (
        job_id, priority, key, deps, name)
    assert name.endswith(".json") and not name.startswith(".")
    assert "/" not in name


# Names as a listing can hold them: taskq's own, near misses of them (a character
# more or less anywhere, an impossible date), drop-ins and hidden files.
NAME_CHARS = ID_CHARS + ".~ \n\t/\\TZ"
made_names = st.builds(
    lambda job_id, priority, ms, deps: pending_name(job_id, priority, times.name_key(ms / 1000), deps),
    ids, st.integers(PRIORITY_MIN, PRIORITY_MAX), ms_stamps, st.booleans())
near_misses = st.tuples(made_names, st.integers(0, 60), st.text(NAME_CHARS, max_size=2)).map(
    lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + (1 if t[2] == "" else 0):])
impossible_dates = st.builds(lambda job_id, day: f"0000000000.202602{day:02d}T000000000Z.{job_id}.json",
                             ids, st.integers(0, 40))
listing_names = st.lists(st.one_of(made_names, near_misses, impossible_dates, st.text(NAME_CHARS, max_size=30)),
                         max_size=12)


@settings(SETTINGS, max_examples=300)
@given(listing_names)
@example(["x0000000000.20260101T000000000Z.A.json"])  # one character before a name
@example(["0000000000.20260101T000000000Z.A.json~"])  # and after one
@example(["0000000000.20260101T000000000Z.A.json", "00000000000.20260101T000000000Z.B.after.json"])
def test_scanning_a_listing_at_once_decodes_what_each_name_would(names):
    """status reads pending/ in one pass over the joined listing: the same jobs, in the
    same order, as decoding each name, and every other name left out."""
    names = [name for name in names if "\0" not in name]
    one_by_one = [(p.prio_key, p.run_key, p.id, ".after" if p.has_deps else "")
                  for p in parse_pending_names(names) if p is not None]
    assert scan_pending_names(names) == one_by_one


@SETTINGS
@given(st.lists(st.tuples(st.integers(PRIORITY_MIN, PRIORITY_MAX), ms_stamps, st.booleans()),
                min_size=2, max_size=12))
def test_lexical_order_of_names_is_claim_order(entries):
    """``ls pending/`` order = highest priority first, then earliest run_at, then
    oldest id (generated ids sort by creation time)."""
    jobs = []
    for i, (priority, ms, deps) in enumerate(entries):
        job_id = new_id(1_700_000_000 + i)
        jobs.append((priority, ms, job_id, pending_name(job_id, priority, times.name_key(ms / 1000), deps)))
    by_name = [j[3] for j in sorted(jobs, key=lambda j: j[3])]
    by_rule = [j[3] for j in sorted(jobs, key=lambda j: (-j[0], j[1], j[2]))]
    assert by_name == by_rule


@SETTINGS
@given(ms_stamps, ms_stamps)
def test_name_key_and_iso_keep_time_order(a, b):
    ka, kb = times.name_key(a / 1000), times.name_key(b / 1000)
    assert (ka < kb) == (a < b) and (ka == kb) == (a == b)
    assert len(ka) == 19
    assert round(times.parse_iso(times.iso(a / 1000)) * 1000) == a


@SETTINGS
@given(st.text(max_size=60))
def test_parse_pending_name_never_raises_and_never_accepts_a_bad_id(name):
    parsed = parse_pending_name(name)
    if parsed is not None:
        assert parsed.id and all(c in ID_CHARS for c in parsed.id)
        assert pending_name(parsed.id, parsed.priority, parsed.run_key, parsed.has_deps) == name


# Mostly ASCII digits, sometimes other Unicode digits or a stray character.
name_digits = st.sampled_from("01234567890123456789012345678901" "\u0660\u06f9\u0966\uff10\u00b2x-")
name_prios = st.text(name_digits, min_size=10, max_size=10)
name_keys = st.builds(lambda d, t, h, z: d + t + h + z, st.text(name_digits, min_size=8, max_size=8),
                      st.sampled_from("TTTt"), st.text(name_digits, min_size=9, max_size=9), st.sampled_from("ZZZz"))


@SETTINGS
@given(name_prios | st.just("0999999999"), name_keys | ms_stamps.map(lambda ms: times.name_key(ms / 1000)),
       st.booleans())
def test_only_names_taskq_could_have_made_are_taken_for_its_own(prio, run_key, deps):
    """A name that merely looks like taskq's (non-ASCII digits, a run time that is no
    date) is not parsed as a pending job name: it is treated as a drop-in file. Every
    name accepted turns back into a time, as the worker does with the next due one."""
    from taskq.worker.index import key_to_ts as _key_to_ts

    name = f"{prio}.{run_key}.SOMEID{'.after' if deps else ''}.json"
    parsed = parse_pending_name(name)
    if parsed is None:
        return
    assert pending_name(parsed.id, parsed.priority, parsed.run_key, parsed.has_deps) == name
    assert times.name_key(_key_to_ts(parsed.run_key)) == parsed.run_key


@SETTINGS
@given(ms_stamps)
def test_every_name_key_is_accepted(ms):
    key = times.name_key(ms / 1000)
    assert parse_pending_name(pending_name("ID", 0, key, False)) is not None


# -- the retry policy -------------------------------------------------------------------------------


bases = st.floats(0, 1e5, allow_nan=False)
caps = st.floats(0, 1e7, allow_nan=False)
jitters = st.floats(0, 1, exclude_max=True)


@SETTINGS
@given(st.integers(-5, 2000), bases, caps, jitters)
def test_backoff_within_half_and_full_of_nominal(k, base, cap, jitter):
    delay = backoff_delay(k, base, cap, jitter)
    if k < 1:
        assert delay == 0
        return
    nominal = min(cap, base * 2.0 ** min(k - 1, 64))
    assert math.isfinite(delay)
    assert 0.5 * nominal - 1e-9 <= delay <= nominal + 1e-9
    assert delay <= cap + 1e-9


@SETTINGS
@given(st.integers(1, 200), bases, caps, jitters)
def test_backoff_never_shrinks_as_failures_grow(k, base, cap, jitter):
    assert backoff_delay(k + 1, base, cap, jitter) >= backoff_delay(k, base, cap, jitter)


@SETTINGS
@given(st.integers(1, 200), bases, caps, jitters, jitters)
def test_backoff_grows_with_jitter(k, base, cap, j1, j2):
    lo, hi = sorted((j1, j2))
    assert backoff_delay(k, base, cap, lo) <= backoff_delay(k, base, cap, hi)


@SETTINGS
@given(st.integers(1, 8), st.lists(st.sampled_from(["fail", "signal", "timeout", "lost", "interrupted"]),
                                   max_size=12),
       bases, caps, jitters)
def test_decide_counts_exactly_max_attempts(max_attempts, outcomes, base, cap, jitter):
    """However failures and uncounted interruptions interleave, a job fails for good
    exactly at its max_attempts-th counted failure, and each retry waits the backoff."""
    now = 1_900_000_000.0
    job = Job.from_record({"id": "J", "command": ["x"], "cwd": "/", "created_at": times.iso(now),
                           "run_at": times.iso(now), "max_attempts": max_attempts,
                           "backoff": base, "backoff_max": cap, "permanent_exit_codes": [100]})
    counted = 0
    for i, kind in enumerate(outcomes, 1):
        outcome = {
            "fail": Outcome(exit_code=1),
            "signal": Outcome(signal=9),
            "timeout": Outcome(signal=15, timed_out=True),
            "lost": Outcome(error=WORKER_LOST),
            "interrupted": Outcome(error=INTERRUPTED),
        }[kind]
        finished = now + i
        job.attempts.append(Attempt(number=i, started_at=times.iso(finished - 1), worker="h:1",
                                    finished_at=times.iso(finished), exit_code=outcome.exit_code,
                                    signal=outcome.signal, timed_out=outcome.timed_out, error=outcome.error))
        decision = decide(job, outcome, finished, jitter)
        if kind == "interrupted":
            assert decision.state == "pending" and decision.run_at <= finished
            continue
        counted += 1
        assert job.failures == counted
        if counted >= max_attempts:
            assert decision.state == "failed" and decision.last_error
            return
        assert decision.state == "pending"
        delay = decision.run_at - finished
        nominal = min(cap, base * 2.0 ** (counted - 1))
        assert 0.5 * nominal - 1e-6 <= delay <= nominal + 1e-6


@SETTINGS
@given(st.integers(1, 255), st.sets(st.integers(1, 255), max_size=5), st.integers(1, 5))
def test_decide_permanent_and_success(code, permanent, max_attempts):
    now = 1_900_000_000.0
    job = Job.from_record({"id": "J", "command": ["x"], "cwd": "/", "created_at": times.iso(now),
                           "run_at": times.iso(now), "max_attempts": max_attempts,
                           "permanent_exit_codes": sorted(permanent)})
    job.attempts.append(Attempt(number=1, started_at=times.iso(now), worker="h:1",
                                finished_at=times.iso(now), exit_code=code))
    decision = decide(job, Outcome(exit_code=code), now, 0.5)
    if code in permanent or max_attempts == 1:
        assert decision.state == "failed"
    else:
        assert decision.state == "pending"
    job.attempts[-1].exit_code = 0
    assert decide(job, Outcome(exit_code=0), now, 0.5).state == "done"
    assert decide(job, Outcome(error=CANCELLED), now, 0.5).state == "failed"


# -- the spool as a state machine -----------------------------------------------------------------


STATE_DIRS = ("pending", "running", "done", "failed")
LIVE = ("pending", "running", "done")


def on_disk(root: Path) -> dict[str, list[tuple[str, str]]]:
    """id -> [(state, file name)] for every job file."""
    out: dict[str, list[tuple[str, str]]] = {}
    for state in STATE_DIRS:
        for name in os.listdir(root / state):
            if not name.endswith(".json"):
                continue
            if state == "pending":
                parsed = parse_pending_name(name)
                assert parsed is not None, f"unexpected file pending/{name}"
                job_id = parsed.id
            else:
                job_id = name[:-5]
            out.setdefault(job_id, []).append((state, name))
    return out


class ModelJob:
    def __init__(self, job_id: str, key: Optional[str], max_attempts: int) -> None:
        self.id = job_id
        self.key = key
        self.max_attempts = max_attempts
        self.state = "pending"
        self.attempts = 0          # attempts recorded
        self.failures = 0          # counted failures in the current budget
        self.open_attempt = False  # the last attempt has not finished


class SpoolMachine(RuleBasedStateMachine):
    """Jobs go through add, claim+start, settle, crash (the owner's lock dropped)
    and recovery, retry, cancel and purge; the model says where each one must be."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="taskq-sm-")
        self.root = Path(self.tmp) / "spool"
        self.api = taskq.Spool(self.root)
        self.sd = self.api.store
        self.tr = self.api.transitions
        self.model: dict[str, ModelJob] = {}
        self.owned: dict[str, Any] = {}  # id -> Claimed (we are its live worker)
        self.now = times.now()

    def teardown(self) -> None:
        for claimed in self.owned.values():
            claimed.lock.release(remove=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers

    def ids_in(self, *states: str) -> list[str]:
        return sorted(j.id for j in self.model.values() if j.state in states)

    def stranded(self) -> list[str]:
        return sorted(j.id for j in self.model.values() if j.state == "running" and j.id not in self.owned)

    def live_holder(self, key: str) -> Optional[ModelJob]:
        holders = [j for j in self.model.values() if j.key == key and j.state in LIVE]
        assert len(holders) <= 1
        return holders[0] if holders else None

    def entry(self, job_id: str):
        for name in self.sd.names("pending"):
            parsed = parse_pending_name(name)
            if parsed and parsed.id == job_id:
                return parsed
        raise AssertionError(f"{job_id} is not in pending/")

    def fail_or_retry(self, job: ModelJob) -> None:
        job.failures += 1
        job.state = "failed" if job.failures >= job.max_attempts else "pending"

    # -- rules

    @rule(key=st.none() | st.sampled_from(["k1", "k2"]), max_attempts=st.integers(1, 3),
          priority=st.integers(-2, 2))
    def add(self, key, max_attempts, priority):
        holder = self.live_holder(key) if key else None
        job = self.api.add(["true"], unique_key=key, max_attempts=max_attempts, backoff=0,
                           priority=priority)
        if holder is not None:
            assert job.duplicate and job.id == holder.id
            return
        assert not job.duplicate and job.id not in self.model and job.state == "pending"
        self.model[job.id] = ModelJob(job.id, key, max_attempts)

    @rule(records=st.lists(st.tuples(st.none() | st.sampled_from(["k1", "k3"]), st.integers(1, 3)),
                           min_size=1, max_size=3))
    def add_batch(self, records):
        jobs = self.api.add_batch([{"command": ["true"], "unique_key": key, "max_attempts": m, "backoff": 0}
                                   for key, m in records])
        first_of_key: dict[str, str] = {}
        for (key, m), job in zip(records, jobs, strict=True):
            holder = self.live_holder(key) if key else None
            if holder is not None:
                assert job.duplicate and job.id == holder.id
            elif key in first_of_key:
                assert job.duplicate and job.id == first_of_key[key]
            else:
                assert not job.duplicate
                self.model[job.id] = ModelJob(job.id, key, m)
                if key:
                    first_of_key[key] = job.id

    @precondition(lambda self: self.ids_in("pending"))
    @rule(data=st.data())
    def claim_and_start(self, data):
        job_id = data.draw(st.sampled_from(self.ids_in("pending")))
        claimed = self.tr.claim(self.entry(job_id))
        assert claimed is not None and claimed.job.id == job_id
        attempt = self.tr.start(claimed, times.now())
        job = self.model[job_id]
        job.attempts += 1
        assert attempt.number == job.attempts
        job.state = "running"
        job.open_attempt = True
        self.owned[job_id] = claimed

    @precondition(lambda self: self.owned)
    @rule(data=st.data(), how=st.sampled_from(["done", "exit 1", "exit 100", "signal", "interrupted"]))
    def settle(self, data, how):
        job_id = data.draw(st.sampled_from(sorted(self.owned)))
        outcome = {"done": Outcome(exit_code=0), "exit 1": Outcome(exit_code=1),
                   "exit 100": Outcome(exit_code=100), "signal": Outcome(signal=9),
                   "interrupted": Outcome(error=INTERRUPTED)}[how]
        decision = self.tr.settle(self.owned.pop(job_id), outcome, times.now(), 0.3)
        job = self.model[job_id]
        job.open_attempt = False
        if how == "done":
            job.state = "done"
            job.failures += 1  # a finished attempt of the budget (Job.failures counts it)
        elif how == "exit 100":
            job.failures += 1
            job.state = "failed"
        elif how == "interrupted":
            job.state = "pending"
        else:
            self.fail_or_retry(job)
        assert decision.state == job.state

    @precondition(lambda self: self.owned)
    @rule(data=st.data())
    def crash(self, data):
        """The worker dies mid-run: its lock goes, the job stays in running/."""
        job_id = data.draw(st.sampled_from(sorted(self.owned)))
        self.owned.pop(job_id).lock.release(remove=False)

    @precondition(lambda self: self.stranded())
    @rule()
    def recover(self):
        for job_id in self.stranded():
            result = self.tr.recover(job_id, times.now(), 0.3)
            assert result is not None
            what, decision = result
            job = self.model[job_id]
            assert what == "worker lost"
            job.open_attempt = False
            self.fail_or_retry(job)
            assert decision.state == job.state

    @precondition(lambda self: self.ids_in("failed"))
    @rule(data=st.data())
    def retry(self, data):
        job_id = data.draw(st.sampled_from(self.ids_in("failed")))
        job = self.model[job_id]
        holder = self.live_holder(job.key) if job.key else None
        if holder is not None:
            with pytest.raises(StateConflictError) as info:
                self.api.retry([job_id])
            assert holder.id in str(info.value)
            return
        (record,) = self.api.retry([job_id])
        assert record.state == "pending" and record.failures == 0
        job.state = "pending"
        job.failures = 0

    @precondition(lambda self: self.ids_in("pending") or self.stranded())
    @rule(data=st.data())
    def cancel(self, data):
        job_id = data.draw(st.sampled_from(self.ids_in("pending") + self.stranded()))
        (record,) = self.api.cancel([job_id], wait=0)
        job = self.model[job_id]
        assert record.state == "failed" and record.last_error == "cancelled"
        job.state = "failed"
        job.open_attempt = False

    @precondition(lambda self: self.ids_in("done", "failed"))
    @rule(state=st.sampled_from(["done", "failed"]))
    def purge(self, state):
        purged = self.api.purge(state)
        assert sorted(purged) == self.ids_in(state)
        for job_id in purged:
            del self.model[job_id]

    @precondition(lambda self: self.ids_in("done", "failed"))
    @rule(data=st.data())
    def cancel_settled_is_refused(self, data):
        job_id = data.draw(st.sampled_from(self.ids_in("done", "failed")))
        with pytest.raises(StateConflictError):
            self.api.cancel([job_id], wait=0)

    # -- invariants

    @invariant()
    def spool_matches_model(self):
        if not self.root.exists():
            return
        found = on_disk(self.root)
        for job_id, places in found.items():
            assert len(places) == 1, f"job {job_id} is in {places}"
        assert set(found) == set(self.model), (set(found) ^ set(self.model))
        for job_id, job in self.model.items():
            (state, name), = found[job_id]
            assert state == job.state, f"{job_id}: disk says {state}, model {job.state}"
            record = json.loads((self.root / state / name).read_bytes())
            attempts = record["attempts"]
            if state == "running":
                # The attempt in progress is noted in the run lock's file, not the record.
                noted = self.api.jobs.noted_attempt(job_id, len(attempts))
                attempts = attempts + ([noted.to_dict()] if noted is not None else [])
            assert record["id"] == job_id
            assert len(attempts) == job.attempts
            assert [a["number"] for a in attempts] == list(range(1, job.attempts + 1))
            unfinished = [a for a in attempts if a["finished_at"] is None]
            if job.open_attempt:
                assert unfinished == [attempts[-1]]
            else:
                assert unfinished == []
            loaded = Job.from_record(record)
            assert loaded.failures == job.failures <= job.max_attempts
            if state == "done":
                assert attempts[-1]["exit_code"] == 0
            if state in ("done", "failed"):
                assert record["settled_at"] is not None
            else:
                assert record["settled_at"] is None

    @invariant()
    def one_live_job_per_key(self):
        if not self.root.exists():
            return
        live: dict[str, list[str]] = {}
        for job_id, places in on_disk(self.root).items():
            state, name = places[0]
            if state in LIVE:
                key = json.loads((self.root / state / name).read_bytes()).get("unique_key")
                if key:
                    live.setdefault(key, []).append(job_id)
        for key, holders in live.items():
            assert len(holders) == 1, f"key {key!r} held by {holders}"

    @invariant()
    def nothing_left_in_tmp(self):
        if self.root.exists():
            assert os.listdir(self.root / "tmp") == []

    @invariant()
    def locks_only_for_running_jobs(self):
        if not self.root.exists():
            return
        for name in os.listdir(self.root / "running"):
            if name.endswith(".lock"):
                job_id = name[:-5]
                assert job_id in self.model and self.model[job_id].state == "running", name
            else:
                assert name.endswith(".json"), name


SpoolMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_spool_state_machine = SpoolMachine.TestCase
