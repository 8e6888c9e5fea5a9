"""Unit tests of taskq.humanize: relative ages, durations and outcomes in words. Pure:
``now`` is a parameter, so every boundary is checked exactly, without a clock."""

from __future__ import annotations

import signal
from datetime import datetime

import pytest

from taskq import humanize
from taskq.job import CANCELLED, INTERRUPTED, WORKER_LOST, Outcome
from taskq.policy import PERMANENT, describe

NOW = 1_900_000_000.0  # a fixed "now" (2030)
MIN, HOUR, DAY = 60, 3600, 86400


# -- relative ages ------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds_ago", "words"), [
    (0, "just now"),
    (0.999, "just now"),
    (1, "1 s ago"),
    (59, "59 s ago"),
    (59.999, "59 s ago"),  # rounded down: not yet a minute
    (MIN, "1 min ago"),
    (MIN + 59, "1 min ago"),
    (3 * MIN, "3 min ago"),
    (HOUR - 1, "59 min ago"),
    (HOUR, "1 h ago"),
    (5 * HOUR + 59 * MIN, "5 h ago"),
    (DAY - 1, "23 h ago"),
    (DAY, "1 day ago"),
    (2 * DAY, "2 days ago"),
    (400 * DAY, "400 days ago"),
])
def test_relative_past(seconds_ago: float, words: str) -> None:
    assert humanize.relative(NOW - seconds_ago, NOW) == words


@pytest.mark.parametrize(("seconds_ahead", "words"), [
    (0.5, "just now"),
    (1, "in 1 s"),
    (40, "in 40 s"),
    (59, "in 59 s"),
    (MIN, "in 1 min"),
    (10 * MIN, "in 10 min"),
    (HOUR, "in 1 h"),
    (DAY, "in 1 day"),
    (3 * DAY + HOUR, "in 3 days"),
])
def test_relative_future(seconds_ahead: float, words: str) -> None:
    assert humanize.relative(NOW + seconds_ahead, NOW) == words


def test_relative_depends_only_on_the_difference() -> None:
    for now in (0.0, NOW, NOW + 12345.678):
        assert humanize.relative(now - 180, now) == "3 min ago"
        assert humanize.relative(now + 180, now) == "in 3 min"


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "0 s"),
    (-5, "0 s"),  # a clock step backwards never reads as a negative duration
    (0.25, "0.25 s"),
    (0.04, "0.04 s"),
    (1, "1 s"),
    (1.5, "1.5 s"),
    (2.04, "2 s"),
    (9.96, "10 s"),
    (30, "30 s"),
    (59, "59 s"),
    (59.6, "1 min"),  # rounds to a whole minute, never "60 s"
    (MIN, "1 min"),
    (MIN + 1, "1 min 1 s"),
    (3 * MIN + 5, "3 min 5 s"),
    (HOUR - 1, "59 min 59 s"),
    (HOUR, "1 h"),
    (2 * HOUR + 5 * MIN, "2 h 5 min"),
    (2 * HOUR + 5 * MIN + 30, "2 h 5 min"),  # seconds do not matter after hours
    (DAY, "1 day"),
    (DAY + 4 * HOUR, "1 day 4 h"),
    (3 * DAY + 4 * HOUR, "3 days 4 h"),
])
def test_duration(seconds: float, words: str) -> None:
    assert humanize.duration(seconds) == words


# -- outcomes -----------------------------------------------------------------------------------


def test_outcome_names_exit_statuses_and_signals() -> None:
    assert humanize.outcome(Outcome(exit_code=3)) == "exited with status 3"
    assert humanize.outcome(Outcome(signal=9)) == "killed by SIGKILL"
    assert humanize.outcome(Outcome(signal=15, timed_out=True), timeout=30) == "timed out after 30 s (SIGTERM)"
    assert humanize.outcome(Outcome(signal=9, timed_out=True), timeout=90) == "timed out after 1 min 30 s (SIGKILL)"
    assert humanize.outcome(Outcome(signal=15, timed_out=True)) == "timed out (SIGTERM)"


def test_outcome_errors_read_as_recorded() -> None:
    for error in (WORKER_LOST, INTERRUPTED, CANCELLED, "cannot start: command not found: foo"):
        assert humanize.outcome(Outcome(error=error)) == error == describe(Outcome(error=error))


def test_signal_names() -> None:
    assert humanize.signal_name(int(signal.SIGKILL)) == "SIGKILL"
    assert humanize.signal_name(int(signal.SIGINT)) == "SIGINT"
    assert humanize.signal_name(77) == "signal 77"  # not a signal this system names
    assert humanize.signal_name(None) == "an unknown signal"


# Every outcome shape describe() knows, with the time limit of its job.
OUTCOMES = [
    (Outcome(exit_code=1), None), (Outcome(exit_code=100), None), (Outcome(exit_code=255), 5.0),
    (Outcome(signal=9), None), (Outcome(signal=15), 2.0), (Outcome(signal=77), None),
    (Outcome(signal=15, timed_out=True), 5.0), (Outcome(signal=9, timed_out=True), 1.5),
    (Outcome(signal=15, timed_out=True), 3600.0), (Outcome(signal=15, timed_out=True), None),
    (Outcome(error=WORKER_LOST), None), (Outcome(error=CANCELLED), None),
]


@pytest.mark.parametrize(("ended", "timeout"), OUTCOMES)
def test_error_words_agree_with_describe(ended: Outcome, timeout: float | None) -> None:
    """The words for a recorded ``last_error`` are those of the outcome it came from:
    humanize.error(describe(o)) == humanize.outcome(o), also with "(permanent)"."""
    recorded = describe(ended, timeout)
    assert humanize.error(recorded) == humanize.outcome(ended, timeout)
    assert humanize.error(recorded + PERMANENT) == humanize.outcome(ended, timeout) + PERMANENT


def test_error_words_examples() -> None:
    assert humanize.error("killed by signal 9") == "killed by SIGKILL"
    assert humanize.error("timed out after 30s (signal 15)") == "timed out after 30 s (SIGTERM)"
    assert humanize.error("exit status 100 (permanent)") == "exited with status 100 (permanent)"


@pytest.mark.parametrize("text", [
    None, "", "cancelled", "worker lost", "dependency 01ABC failed", "exit 1",
    "not a valid job: command: must be a list", "exit status 3 and more", "killed by signal nine",
    "timed out after 05s (signal 15)",  # not what describe() writes for 5 s: left alone
    "cannot start: command not found: exit status 3",
])
def test_error_words_leave_other_texts_alone(text: str | None) -> None:
    assert humanize.error(text) == text


# -- dates for people ---------------------------------------------------------------------------


def test_moment_keeps_the_date_and_adds_the_age() -> None:
    then = NOW - 180
    local = datetime.fromtimestamp(then).strftime("%Y-%m-%d %H:%M:%S")
    assert humanize.moment(then, NOW) == f"{local} (3 min ago)"
    assert humanize.moment(NOW + 40, NOW).endswith(" (in 40 s)")
