"""The metrics formatter (``taskq.metrics``): pure unit tests, each output checked
with a real Prometheus text parser (README: "taskq metrics")."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskq.metrics import (
    HELP,
    Family,
    Sample,
    WorkerCounts,
    escape_help,
    escape_label_value,
    exposition,
    format_value,
    one,
    spool_families,
    worker_families,
)

STATUS = {
    "spool": "/srv/spool", "paused": True,
    "counts": {"pending": 7, "running": 2, "done": 30, "failed": 4},
    "ready": 3, "scheduled": 2, "waiting": 2, "oldest_ready_age": 12.5,
    "running": [], "recent_failures": [],
}


def parse(text: str) -> dict:
    """name → parsed family (prometheus_client strips ``_total`` from counters)."""
    return {fam.name: fam for fam in text_string_to_metric_families(text)}


def values(fam) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples}


# -- the format ----------------------------------------------------------------------------


def test_help_and_type_precede_each_family_in_order():
    text = exposition([
        Family("taskq_a", "gauge", "First.", (one(1),)),
        Family("taskq_b_total", "counter", "Second.", (one(2, x="y"),)),
    ])
    assert text.splitlines() == [
        "# HELP taskq_a First.",
        "# TYPE taskq_a gauge",
        "taskq_a 1",
        "# HELP taskq_b_total Second.",
        "# TYPE taskq_b_total counter",
        'taskq_b_total{x="y"} 2',
    ]
    assert text.endswith("\n")
    fams = parse(text)
    assert (fams["taskq_a"].type, fams["taskq_a"].documentation) == ("gauge", "First.")
    assert (fams["taskq_b"].type, fams["taskq_b"].documentation) == ("counter", "Second.")


@pytest.mark.parametrize("value", [
    'plain', 'quote " inside', "back\\slash", "new\nline", "all \\\" \n\\n of them", "", "ünïcødé ✓",
    "trailing backslash \\",
])
def test_label_values_are_escaped_and_read_back_exactly(value):
    text = exposition([Family("taskq_x", "gauge", "X.", (one(1, who=value, other="o"),))])
    assert "\n" not in text.rstrip("\n").split("\n", 2)[2]  # the sample stays on one line
    (sample,) = parse(text)["taskq_x"].samples
    assert sample.labels == {"who": value, "other": "o"}


def test_escape_label_value():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_help_text_is_escaped_and_read_back_exactly():
    helptext = 'Back\\slash, "quotes" stay, new\nline.'
    assert escape_help(helptext) == 'Back\\\\slash, "quotes" stay, new\\nline.'
    text = exposition([Family("taskq_x", "gauge", helptext, (one(0),))])
    assert len(text.splitlines()) == 3
    assert parse(text)["taskq_x"].documentation == helptext


@pytest.mark.parametrize("value, shown", [
    (0, "0"), (7, "7"), (True, "1"), (False, "0"), (3.0, "3"), (0.25, "0.25"),
    (1796168457.7023973, "1796168457.7023973"), (-2.5, "-2.5"), (1e300, "1e+300"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"),
])
def test_format_value(value, shown):
    assert format_value(value) == shown
    fam = parse(exposition([Family("taskq_v", "gauge", "V.", (one(value),))]))["taskq_v"]
    got = fam.samples[0].value
    assert (math.isnan(got) and math.isnan(value)) or got == float(value)


@pytest.mark.parametrize("fam, fragment", [
    (Family("other_x", "gauge", "X.", ()), "invalid metric name"),
    (Family("taskq x", "gauge", "X.", ()), "invalid metric name"),
    (Family("taskq_x", "summary", "X.", ()), "unknown type"),
    (Family("taskq_x", "counter", "X.", ()), "_total"),
    (Family("taskq_x", "gauge", "X.", (Sample((("1abc", "v"),), 1),)), "invalid label name"),
    (Family("taskq_x", "gauge", "X.", (Sample((("__name", "v"),), 1),)), "invalid label name"),
])
def test_invalid_families_are_refused(fam, fragment):
    with pytest.raises(ValueError, match=fragment):
        exposition([fam])


def test_a_family_given_twice_is_refused():
    fam = Family("taskq_x", "gauge", "X.", (one(1),))
    with pytest.raises(ValueError, match="twice"):
        exposition([fam, fam])


def test_empty_exposition_is_empty():
    assert exposition([]) == ""


# -- the families --------------------------------------------------------------------------


def test_spool_families_carry_the_status_numbers():
    fams = parse(exposition(spool_families(STATUS)))
    assert values(fams["taskq_jobs"]) == {
        (("state", "pending"),): 7, (("state", "running"),): 2,
        (("state", "done"),): 30, (("state", "failed"),): 4,
    }
    assert fams["taskq_jobs_ready"].samples[0].value == 3
    assert fams["taskq_jobs_scheduled"].samples[0].value == 2
    assert fams["taskq_jobs_waiting"].samples[0].value == 2
    assert fams["taskq_oldest_ready_age_seconds"].samples[0].value == 12.5
    assert fams["taskq_paused"].samples[0].value == 1
    for name, fam in fams.items():
        assert name.startswith("taskq_")
        assert fam.type == "gauge"
        assert fam.documentation == HELP[name]


def test_no_ready_job_is_age_zero_and_not_paused_is_zero():
    status = {**STATUS, "paused": False, "ready": 0, "oldest_ready_age": None}
    fams = parse(exposition(spool_families(status)))
    assert fams["taskq_oldest_ready_age_seconds"].samples[0].value == 0
    assert fams["taskq_paused"].samples[0].value == 0


def test_worker_families_label_every_sample_with_the_worker():
    counts = WorkerCounts('host"\\\n:42', 1700000000.5, 4, 3, {"done": 5, "failed": 1})
    fams = parse(exposition(worker_families(counts)))
    jobs = fams["taskq_worker_jobs"]
    assert jobs.type == "counter"
    assert {s.name for s in jobs.samples} == {"taskq_worker_jobs_total"}
    assert {s.labels["outcome"]: s.value for s in jobs.samples} == {"done": 5, "retry": 0, "failed": 1}
    assert fams["taskq_worker_running"].samples[0].value == 3
    assert fams["taskq_worker_concurrency"].samples[0].value == 4
    assert fams["taskq_worker_start_time_seconds"].samples[0].value == 1700000000.5
    for fam in fams.values():
        for sample in fam.samples:
            assert sample.labels["worker"] == 'host"\\\n:42'


def test_spool_and_worker_families_together_are_one_valid_exposition():
    counts = WorkerCounts("h:1", 1.0, 1, 0, {})
    fams = parse(exposition(spool_families(STATUS) + worker_families(counts)))
    assert set(fams) == {
        "taskq_jobs", "taskq_jobs_ready", "taskq_jobs_scheduled", "taskq_jobs_waiting",
        "taskq_oldest_ready_age_seconds", "taskq_paused", "taskq_worker_jobs",
        "taskq_worker_running", "taskq_worker_concurrency", "taskq_worker_start_time_seconds",
    }
    assert set(HELP) == {f.name for f in spool_families(STATUS) + worker_families(counts)}
