"""Unit tests of the retry policy (taskq.policy) and of the worker's pending index
(taskq.worker.PendingIndex). Time and jitter are parameters: no clock, no chance."""

from __future__ import annotations

import random

import pytest

from taskq import times
from taskq.job import Attempt, build
from taskq.policy import (
    CANCELLED,
    INTERRUPTED,
    WORKER_LOST,
    Outcome,
    backoff_delay,
    decide,
)
from taskq.spool.layout import pending_name
from taskq.worker import PendingIndex

NOW = 1_900_000_000.0  # a fixed "now" (2030)


def make_job(**given):
    given.setdefault("command", ["true"])
    return build(given, now=NOW - 100, default_cwd="/srv", defaults={}, tasks={})


def attempt(number: int, *, exit_code=None, signal=None, timed_out=False, error=None,
            finished=True, at: float = NOW) -> Attempt:
    return Attempt(
        number=number,
        started_at=times.iso(at - 1),
        worker="host:1",
        finished_at=times.iso(at) if finished else None,
        exit_code=exit_code,
        signal=signal,
        timed_out=timed_out,
        error=error,
    )


def with_attempts(job, *outcomes: Outcome):
    """Record one finished attempt per outcome (the last is the one being decided)."""
    for i, out in enumerate(outcomes, len(job.attempts) + 1):
        job.attempts.append(attempt(i, exit_code=out.exit_code, signal=out.signal,
                                    timed_out=out.timed_out, error=out.error))
    return job


FAIL = Outcome(exit_code=1)


# -- backoff_delay -------------------------------------------------------------------------


@pytest.mark.parametrize("k, base, cap, nominal", [
    (1, 10.0, 3600.0, 10.0),
    (2, 10.0, 3600.0, 20.0),
    (3, 10.0, 3600.0, 40.0),
    (5, 10.0, 3600.0, 160.0),
    (9, 10.0, 3600.0, 2560.0),
    (10, 10.0, 3600.0, 3600.0),   # 5120 capped
    (30, 10.0, 3600.0, 3600.0),
    (4, 0.5, 2.0, 2.0),
    (1, 0.0, 3600.0, 0.0),
])
def test_backoff_nominal_and_jitter_bounds(k, base, cap, nominal):
    # jitter 0 -> 50 %, jitter -> 1 -> 100 %
    assert backoff_delay(k, base, cap, 0.0) == pytest.approx(0.5 * nominal)
    assert backoff_delay(k, base, cap, 0.5) == pytest.approx(0.75 * nominal)
    assert backoff_delay(k, base, cap, 0.999999) == pytest.approx(nominal, rel=1e-5)
    rng = random.Random(k)
    for _ in range(200):
        delay = backoff_delay(k, base, cap, rng.random())
        assert 0.5 * nominal - 1e-9 <= delay <= nominal + 1e-9


def test_backoff_formula_matches_contract_over_a_grid():
    for base in (0.1, 1.0, 7.0, 10.0):
        for cap in (1.0, 30.0, 3600.0):
            for k in range(1, 25):
                nominal = min(cap, base * 2 ** (k - 1))
                assert backoff_delay(k, base, cap, 0.0) == pytest.approx(nominal / 2)
                assert backoff_delay(k, base, cap, 1.0 - 1e-12) == pytest.approx(nominal)


def test_backoff_huge_attempt_numbers_stay_at_the_cap():
    assert backoff_delay(10_000, 10.0, 3600.0, 0.999999) == pytest.approx(3600.0, rel=1e-5)
    assert backoff_delay(10_000, 10.0, 3600.0, 0.0) == pytest.approx(1800.0)


def test_backoff_before_any_failure_is_zero():
    assert backoff_delay(0, 10.0, 3600.0, 0.7) == 0.0


def test_backoff_is_monotonic_in_k_for_fixed_jitter():
    delays = [backoff_delay(k, 1.0, 1000.0, 0.3) for k in range(1, 15)]
    assert delays == sorted(delays)


# -- decide ----------------------------------------------------------------------------------


def test_exit_zero_is_done():
    job = with_attempts(make_job(), Outcome(exit_code=0))
    d = decide(job, Outcome(exit_code=0), NOW, 0.5)
    assert d.state == "done"


def test_exit_zero_is_done_even_on_the_last_attempt():
    job = with_attempts(make_job(max_attempts=2), FAIL, Outcome(exit_code=0))
    assert decide(job, Outcome(exit_code=0), NOW, 0.5).state == "done"


def test_outcome_succeeded_only_for_a_clean_exit_zero():
    assert Outcome(exit_code=0).succeeded
    assert not Outcome(exit_code=0, timed_out=True).succeeded
    assert not Outcome(exit_code=0, error=INTERRUPTED).succeeded
    assert not Outcome(exit_code=1).succeeded
    assert not Outcome(signal=9).succeeded


@pytest.mark.parametrize("code", [100])
def test_default_permanent_exit_fails_at_once(code):
    job = with_attempts(make_job(max_attempts=5), Outcome(exit_code=code))
    assert job.permanent_exit_codes == [100]
    d = decide(job, Outcome(exit_code=code), NOW, 0.5)
    assert d.state == "failed"
    assert "100" in d.last_error


def test_custom_permanent_exit_codes_replace_the_default():
    job = with_attempts(make_job(max_attempts=5, permanent_exit_codes=[7, 42]), Outcome(exit_code=7))
    d = decide(job, Outcome(exit_code=7), NOW, 0.5)
    assert d.state == "failed" and "7" in d.last_error

    job = with_attempts(make_job(max_attempts=5, permanent_exit_codes=[7, 42]), Outcome(exit_code=42))
    assert decide(job, Outcome(exit_code=42), NOW, 0.5).state == "failed"

    # 100 is no longer permanent for this job: retried like any other status
    job = with_attempts(make_job(max_attempts=5, permanent_exit_codes=[7]), Outcome(exit_code=100))
    d = decide(job, Outcome(exit_code=100), NOW, 0.0)
    assert d.state == "pending"


def test_a_signal_is_not_a_permanent_exit_status():
    job = with_attempts(make_job(max_attempts=3), Outcome(signal=9))
    d = decide(job, Outcome(signal=9), NOW, 0.0)
    assert d.state == "pending"
    assert "9" in d.last_error


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999999])
def test_retry_runs_at_finished_at_plus_backoff(jitter):
    job = with_attempts(make_job(max_attempts=3, backoff=10, backoff_max=3600), Outcome(exit_code=3))
    d = decide(job, Outcome(exit_code=3), NOW, jitter)
    assert d.state == "pending"
    assert d.run_at == pytest.approx(NOW + 10 * (0.5 + 0.5 * jitter))
    assert NOW + 5 - 1e-6 <= d.run_at <= NOW + 10 + 1e-6
    assert d.last_error == "exit status 3"


def test_retry_backoff_doubles_with_each_counted_failure():
    job = with_attempts(make_job(max_attempts=10, backoff=2, backoff_max=100), FAIL, FAIL, FAIL)
    d = decide(job, FAIL, NOW, 0.0)
    assert d.state == "pending"
    assert d.run_at == pytest.approx(NOW + 0.5 * 8)  # k = 3: 2 * 2**2


def test_retry_backoff_is_capped_by_backoff_max():
    job = with_attempts(make_job(max_attempts=20, backoff=10, backoff_max=25), *[FAIL] * 6)
    d = decide(job, FAIL, NOW, 0.999999)
    assert d.run_at == pytest.approx(NOW + 25, abs=1e-3)


def test_backoff_is_measured_from_finished_at_not_from_now():
    job = with_attempts(make_job(max_attempts=3, backoff=10), FAIL)
    earlier = NOW - 1000
    d = decide(job, FAIL, earlier, 0.0)
    assert d.run_at == pytest.approx(earlier + 5)


@pytest.mark.parametrize("max_attempts", [1, 2, 5])
def test_exhaustion_at_max_attempts(max_attempts):
    job = make_job(max_attempts=max_attempts, backoff=1)
    for k in range(1, max_attempts + 1):
        with_attempts(job, Outcome(exit_code=2))
        d = decide(job, Outcome(exit_code=2), NOW, 0.5)
        if k < max_attempts:
            assert d.state == "pending", k
        else:
            assert d.state == "failed", k
            assert d.last_error == "exit status 2"


def test_timeout_counts_and_says_so():
    job = with_attempts(make_job(max_attempts=1, timeout=5), Outcome(signal=15, timed_out=True))
    d = decide(job, Outcome(signal=15, timed_out=True), NOW, 0.5)
    assert d.state == "failed"
    assert "timed out" in d.last_error


def test_cannot_start_counts_as_a_failed_attempt():
    out = Outcome(error="cannot start: command not found: nope")
    job = with_attempts(make_job(max_attempts=2, backoff=1), out)
    d = decide(job, out, NOW, 0.0)
    assert d.state == "pending" and "not found" in d.last_error
    with_attempts(job, out)
    assert decide(job, out, NOW, 0.0).state == "failed"


def test_interrupted_is_not_counted_and_ready_at_once():
    out = Outcome(signal=15, error=INTERRUPTED)
    job = make_job(max_attempts=1, backoff=10)
    for _ in range(4):  # however often the worker is stopped, no attempt is used up
        with_attempts(job, out)
        d = decide(job, out, NOW, 0.999)
        assert d.state == "pending"
        assert d.run_at is not None and d.run_at <= NOW  # no backoff
    assert job.failures == 0
    assert all(not a.counted for a in job.attempts)


def test_interrupted_keeps_the_previous_last_error():
    job = with_attempts(make_job(max_attempts=3), FAIL)
    job.last_error = "exit status 1"
    out = Outcome(error=INTERRUPTED)
    with_attempts(job, out)
    d = decide(job, out, NOW, 0.5)
    assert d.state == "pending"
    assert d.last_error == "exit status 1"


def test_interrupted_attempts_do_not_advance_the_backoff_sequence():
    job = with_attempts(make_job(max_attempts=5, backoff=4, backoff_max=1000),
                        Outcome(error=INTERRUPTED), Outcome(error=INTERRUPTED), FAIL)
    d = decide(job, FAIL, NOW, 0.0)
    assert d.state == "pending"
    assert d.run_at == pytest.approx(NOW + 2.0)  # k = 1, not 3


def test_a_job_with_one_attempt_left_still_fails_after_interruptions():
    job = with_attempts(make_job(max_attempts=1), Outcome(error=INTERRUPTED), FAIL)
    assert decide(job, FAIL, NOW, 0.5).state == "failed"


def test_cancelled_goes_to_failed_and_is_not_counted():
    out = Outcome(signal=15, error=CANCELLED)
    job = with_attempts(make_job(max_attempts=5), out)
    d = decide(job, out, NOW, 0.5)
    assert d.state == "failed"
    assert d.last_error == "cancelled"
    assert job.failures == 0


def test_worker_lost_is_counted():
    out = Outcome(error=WORKER_LOST)
    job = with_attempts(make_job(max_attempts=2, backoff=6, backoff_max=100), out)
    d = decide(job, out, NOW, 0.0)
    assert d.state == "pending"
    assert d.run_at == pytest.approx(NOW + 3.0)  # followed by the normal backoff
    assert job.failures == 1
    with_attempts(job, out)
    d = decide(job, out, NOW, 0.0)
    assert d.state == "failed"
    assert d.last_error == WORKER_LOST


def test_unfinished_attempt_is_not_counted():
    job = make_job(max_attempts=2)
    job.attempts.append(attempt(1, finished=False))
    assert job.failures == 0
    assert job.current_attempt is job.attempts[0]


def test_budget_start_gives_a_fresh_budget_and_restarts_backoff():
    job = with_attempts(make_job(max_attempts=3, backoff=4, backoff_max=1000), FAIL, FAIL, FAIL)
    assert decide(job, FAIL, NOW, 0.0).state == "failed"
    job.budget_start = len(job.attempts)  # what `retry` does
    assert job.failures == 0
    with_attempts(job, FAIL)
    d = decide(job, FAIL, NOW, 0.0)
    assert d.state == "pending"
    assert d.run_at == pytest.approx(NOW + 2.0)  # k = 1 again
    with_attempts(job, FAIL)
    d = decide(job, FAIL, NOW, 0.0)
    assert d.run_at == pytest.approx(NOW + 4.0)  # k = 2
    with_attempts(job, FAIL)
    assert decide(job, FAIL, NOW, 0.0).state == "failed"
    assert len(job.attempts) == 6  # history kept


def test_permanent_exit_after_a_fresh_budget_still_fails_at_once():
    job = with_attempts(make_job(max_attempts=3), Outcome(exit_code=100))
    job.budget_start = 1
    with_attempts(job, Outcome(exit_code=100))
    assert decide(job, Outcome(exit_code=100), NOW, 0.0).state == "failed"


# -- PendingIndex --------------------------------------------------------------------------


def key(ts: float) -> str:
    return times.name_key(ts)


def pname(job_id: str, priority: int = 0, run_at: float = NOW - 10, deps: bool = False) -> str:
    return pending_name(job_id, priority, key(run_at), deps)


def drain(index: PendingIndex) -> list[str]:
    out = []
    while True:
        entry = index.pop()
        if entry is None:
            return out
        out.append(entry.id)


def test_index_orders_by_priority_desc_then_id():
    idx = PendingIndex()
    names = [
        pname("A0003", 0), pname("A0001", 0), pname("A0002", 5),
        pname("A0004", -3), pname("A0005", 5), pname("A0000", 10),
        pname("A0006", 999_999_999), pname("A0007", -999_999_999),
    ]
    random.Random(1).shuffle(names)
    for n in names:
        idx.add(n, key(NOW))
    assert drain(idx) == ["A0006", "A0000", "A0002", "A0005", "A0001", "A0003", "A0004", "A0007"]


def test_index_reset_rebuilds_from_a_listing():
    idx = PendingIndex()
    idx.add(pname("OLD", 0), key(NOW))
    idx.reset([pname("B", 1), pname("A", 1), pname("C", 2)], key(NOW))
    assert drain(idx) == ["C", "A", "B"]


def test_index_ignores_duplicates():
    idx = PendingIndex()
    n = pname("A")
    idx.add(n, key(NOW))
    idx.add(n, key(NOW))
    assert drain(idx) == ["A"]


def test_index_scheduled_entries_are_promoted_at_run_at():
    idx = PendingIndex()
    idx.add(pname("LATE", 100, run_at=NOW + 60), key(NOW))
    idx.add(pname("NOW", 0, run_at=NOW), key(NOW))
    assert idx.next_due() == key(NOW + 60)
    idx.promote(key(NOW + 59.999))
    assert drain(idx) == ["NOW"]
    assert idx.pop() is None
    idx.promote(key(NOW + 60))
    assert drain(idx) == ["LATE"]


def test_index_scheduled_order_of_promotion_respects_priority():
    idx = PendingIndex()
    idx.add(pname("S1", 0, run_at=NOW + 1), key(NOW))
    idx.add(pname("S2", 9, run_at=NOW + 2), key(NOW))
    idx.add(pname("S3", 0, run_at=NOW + 3), key(NOW))
    idx.promote(key(NOW + 2.5))
    assert drain(idx) == ["S2", "S1"]
    assert idx.next_due() == key(NOW + 3)


def test_index_removal():
    idx = PendingIndex()
    a, b, c = pname("A"), pname("B"), pname("C", run_at=NOW + 5)
    for n in (a, b, c):
        idx.add(n, key(NOW))
    idx.remove(a)
    idx.remove(c)
    assert idx.next_due() is None  # a removed scheduled entry is not due
    idx.promote(key(NOW + 10))
    assert drain(idx) == ["B"]
    # a name removed and added again is indexed again
    idx.add(a, key(NOW))
    assert drain(idx) == ["A"]


def test_index_blocked_entries_are_held_back_until_unblocked():
    idx = PendingIndex()
    dep = pname("D", 50, deps=True)
    idx.add(dep, key(NOW))
    idx.add(pname("E", 0), key(NOW))
    first = idx.pop()
    assert first.id == "D" and first.has_deps
    idx.block(first)
    assert drain(idx) == ["E"]
    idx.unblock()
    assert drain(idx) == ["D"]


def test_index_blocked_then_removed_is_not_returned():
    idx = PendingIndex()
    dep = pname("D", 0, deps=True)
    idx.add(dep, key(NOW))
    idx.block(idx.pop())
    idx.remove(dep)
    idx.unblock()
    assert idx.pop() is None


def test_index_skips_hidden_and_non_json_and_keeps_drop_ins_apart():
    idx = PendingIndex()
    for n in (".hidden.json", "notes.txt", "x.json.tmp", "." + pname("H")):
        idx.add(n, key(NOW))
    assert idx.pop() is None and not idx.foreign
    idx.add("anything.json", key(NOW))
    assert idx.foreign == {"anything.json"}
    assert idx.pop() is None  # never claimed as a job by name
    assert idx.has_ready()  # but it makes the worker look (to normalise it)
    idx.remove("anything.json")
    assert not idx.foreign


def test_index_has_ready():
    idx = PendingIndex()
    assert not idx.has_ready()
    idx.add(pname("S", run_at=NOW + 5), key(NOW))
    assert not idx.has_ready()
    idx.add(pname("R"), key(NOW))
    assert idx.has_ready()


# -- the dependency verdict (one rule for workers, status and explain) ----------------------


def verdict_of(after, states, settled=None, retried_at=None):
    from taskq.policy import dependency_verdict

    return dependency_verdict(after, retried_at, states.get, (settled or {}).get)


def test_verdict_ready_when_every_dependency_is_done():
    assert verdict_of(["a", "b"], {"a": "done", "b": "done"}).kind == "ready"
    assert verdict_of([], {}).kind == "ready"


def test_verdict_waits_for_the_first_unsettled_dependency():
    v = verdict_of(["a", "b"], {"a": "done", "b": "running"})
    assert (v.kind, v.dep, v.dep_state) == ("waiting", "b", "running")


def test_verdict_fails_on_a_failed_or_missing_dependency():
    assert (verdict_of(["a"], {"a": "failed"}).kind, verdict_of(["a"], {}).kind) == ("failed", "failed")
    assert verdict_of(["a"], {}).dep_state is None


def test_verdict_of_a_retried_job_waits_for_a_dependency_that_failed_before_the_retry():
    states = {"a": "failed"}
    assert verdict_of(["a"], states, settled={"a": NOW - 10}, retried_at=NOW).kind == "waiting"
    # failed again after the retry: the job fails too
    assert verdict_of(["a"], states, settled={"a": NOW + 10}, retried_at=NOW).kind == "failed"
    # settle time unknown: it cannot be shown to predate the retry
    assert verdict_of(["a"], states, retried_at=NOW).kind == "failed"


def test_describe_says_how_an_attempt_ended():
    from taskq.policy import describe

    assert describe(Outcome(exit_code=3)) == "exit status 3"
    assert describe(Outcome(signal=9)) == "killed by signal 9"
    assert describe(Outcome(signal=15, timed_out=True), timeout=5) == "timed out after 5s (signal 15)"
    assert describe(Outcome(error=CANCELLED)) == CANCELLED
