"""Metrics in the Prometheus text exposition format (version 0.0.4). Pure: data in,
text out.

:func:`spool_families` turns what ``taskq status`` computes (``Spool.status()``) into
metric families, :func:`worker_families` does the same for one worker's own counts,
and :func:`exposition` prints families as text: ``# HELP`` and ``# TYPE`` before each
family, label values and help texts escaped as the format requires. No sample carries
a timestamp: node_exporter's textfile collector refuses them.

Every name starts with ``taskq_``; the README ("taskq metrics") lists them all with
their help texts, which are the constants below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

#: The states of ``taskq_jobs``, in the order they are printed.
STATES = ("pending", "running", "done", "failed")
#: The outcomes of ``taskq_worker_jobs_total``: the job went to done/, back to
#: pending/ for another attempt, or to failed/.
OUTCOMES = ("done", "retry", "failed")

#: Help texts, one per family (the README quotes them).
HELP = {
    "taskq_jobs": "Jobs in the spool, by state (the directory their file is in).",
    "taskq_jobs_ready": "Pending jobs a worker can claim now (run_at reached, dependencies done).",
    "taskq_jobs_scheduled": "Pending jobs whose run_at is still ahead (scheduled for later, or backing off).",
    "taskq_jobs_waiting": "Pending jobs waiting for the jobs they depend on.",
    "taskq_oldest_ready_age_seconds": "Age of the oldest ready job since it was created; 0 when no job is ready.",
    "taskq_paused": "1 while the spool is paused (workers claim nothing), else 0.",
    "taskq_worker_jobs_total": ("Attempts this worker has settled since it started, by outcome: done, "
                                "retry (back to pending for another attempt), failed."),
    "taskq_worker_running": "Jobs this worker is running now.",
    "taskq_worker_concurrency": "Jobs this worker may run at once (--concurrency).",
    "taskq_worker_start_time_seconds": "When this worker started, in seconds since the epoch.",
}

_NAME_RE = re.compile(r"^taskq_[a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")
_KINDS = ("gauge", "counter")


class Sample(NamedTuple):
    """One value of a family, with its labels (name, value) in the order printed."""

    labels: tuple[tuple[str, str], ...]
    value: float


class Family(NamedTuple):
    """A metric family: its full name (a counter's ends in ``_total``), its type
    (``gauge`` or ``counter``), its help text and its samples."""

    name: str
    kind: str
    help: str
    samples: tuple[Sample, ...]


def family(name: str, kind: str, samples: Iterable[Sample]) -> Family:
    """The family *name* with its help text from :data:`HELP`."""
    return Family(name, kind, HELP[name], tuple(samples))


def one(value: float, **labels: str) -> Sample:
    """A sample with *labels* in the order given."""
    return Sample(tuple(labels.items()), value)


# -- data in ---------------------------------------------------------------------------


def spool_families(status: Mapping[str, Any]) -> list[Family]:
    """The spool-wide families from a ``Spool.status()`` result: the same numbers as
    ``taskq status``, counted once, by the same code."""
    counts = status["counts"]
    oldest = status.get("oldest_ready_age")
    return [
        family("taskq_jobs", "gauge", (one(counts.get(st, 0), state=st) for st in STATES)),
        family("taskq_jobs_ready", "gauge", [one(status["ready"])]),
        family("taskq_jobs_scheduled", "gauge", [one(status["scheduled"])]),
        family("taskq_jobs_waiting", "gauge", [one(status.get("waiting", 0))]),
        family("taskq_oldest_ready_age_seconds", "gauge", [one(oldest if oldest is not None else 0)]),
        family("taskq_paused", "gauge", [one(1 if status.get("paused") else 0)]),
    ]


class WorkerCounts(NamedTuple):
    """What one worker knows of itself: *worker* (``host:pid``, as in the attempts it
    records), when it started, its concurrency, how many jobs it runs now, and how
    many attempts it has settled by outcome (:data:`OUTCOMES`)."""

    worker: str
    started_at: float
    concurrency: int
    running: int
    outcomes: Mapping[str, int]


def worker_families(counts: WorkerCounts) -> list[Family]:
    """The per-worker families, each sample labelled ``worker``. Every outcome is
    printed, 0 included, so that ``rate()`` sees a counter from its start."""
    w = counts.worker
    return [
        family("taskq_worker_jobs_total", "counter",
               (one(counts.outcomes.get(o, 0), worker=w, outcome=o) for o in OUTCOMES)),
        family("taskq_worker_running", "gauge", [one(counts.running, worker=w)]),
        family("taskq_worker_concurrency", "gauge", [one(counts.concurrency, worker=w)]),
        family("taskq_worker_start_time_seconds", "gauge", [one(counts.started_at, worker=w)]),
    ]


# -- text out --------------------------------------------------------------------------


def exposition(families: Iterable[Family]) -> str:
    """The text exposition format of *families*, ending in a newline.

    Raises ValueError for a name outside ``taskq_*``, a bad label name, an unknown
    type, a counter not named ``*_total`` or a family given twice: those are bugs, and
    a half-valid file would make node_exporter drop all of it."""
    lines: list[str] = []
    seen: set[str] = set()
    for fam in families:
        _check(fam, seen)
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for sample in fam.samples:
            lines.append(fam.name + _labels(sample.labels) + " " + format_value(sample.value))
    return "".join(line + "\n" for line in lines)


def _check(fam: Family, seen: set[str]) -> None:
    if not _NAME_RE.match(fam.name):
        raise ValueError(f"invalid metric name {fam.name!r} (must be taskq_[a-zA-Z0-9_:]*)")
    if fam.kind not in _KINDS:
        raise ValueError(f"{fam.name}: unknown type {fam.kind!r}")
    if fam.kind == "counter" and not fam.name.endswith("_total"):
        raise ValueError(f"{fam.name}: a counter's name ends in _total")
    if fam.name in seen:
        raise ValueError(f"{fam.name}: family given twice")
    seen.add(fam.name)
    for sample in fam.samples:
        for label, _ in sample.labels:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise ValueError(f"{fam.name}: invalid label name {label!r}")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels) + "}"


def escape_label_value(value: str) -> str:
    """A label value as the format writes it: backslash, double quote and line feed
    escaped (``\\\\``, ``\\"``, ``\\n``)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A help text as the format writes it: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, other numbers as Python's shortest
    repr (which the format's float syntax accepts), ``NaN``, ``+Inf``, ``-Inf``."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
