"""Crash torture: ``taskq work`` processes SIGKILLed at random moments while they drain
a spool, then every invariant of the spool checked.

Each round:

1. a fresh spool with a few hundred jobs (``taskq add --batch``), each
   ``/bin/sh job.sh LOG PAUSE``: it appends ``start ID ATTEMPT PID PPID NS`` to a shared
   run log, sleeps PAUSE, appends ``end ...`` (one O_APPEND write per line). PAUSE is
   random per job: 2-40 ms, or 0.1-0.5 s for one job in ten (longer than a
   replacement worker takes to start, so recovery meets attempts of killed workers
   that are still running). The jobs have ``backoff 0.05`` and ``max_attempts 50``, so
   a job whose worker died is retried at once and never runs out of attempts;
2. a staging file planted in tmp/ with an mtime two hours ago (a writer that died
   long before the run): a worker must remove it;
3. several ``taskq work --concurrency 2`` (the installed command, in subprocesses)
   drain the spool; a random live worker is SIGKILLed at random moments and a
   replacement started at once. A killed worker's jobs keep running in their own
   sessions and keep the job's run lock, so nobody can recover them before they end;
4. after the last kill, in even rounds the remaining workers drain the spool by
   themselves (live workers recover what dead ones left, within their 5 s recovery
   period, and lose no ready job), are stopped with SIGTERM, and a final
   ``taskq work --burst`` finds nothing to do; in odd rounds they are stopped with
   SIGTERM at once and ``taskq work --burst --concurrency 4`` runs until the spool is
   drained (it exits while retries back off, so it runs again);
5. the checks: every job is in done/ and nowhere else (no copy in pending/, running/,
   failed/, nothing else left in running/); no two runs of a job overlapped, both in
   the order of the log's lines (which needs no clock) and in wall-clock time; every
   run that started also ended (a killed worker's job is not killed); the attempts
   of each done record are numbered 1..n, each but the last finished with "worker
   lost" (or "interrupted"), the last with exit status 0; each logged run is an
   attempt of the record (``TASKQ_ATTEMPT`` = its number), started by the worker the
   attempt names, inside the attempt's recorded times; no two runs of one attempt;
   tmp/ holds nothing older than the round, and only staging files of killed
   workers; no worker logged a traceback or an internal error; SIGTERMed workers exit 0.

Sizes. Bounded (the default, part of the normal ``pytest`` run, about 30-40 s on two
cores): 4 rounds x 400 jobs, 3 workers, 10 kills per round. Long, with ``TASKQ_LONG=1``:
30 rounds x 1,000 jobs (30,000 jobs), 4 workers, 25 kills per round, about 10 minutes
on two cores::

    TASKQ_LONG=1 TASKQ_TORTURE_REPORT=torture.json pytest tests/torture/test_crash_torture.py -s

``TASKQ_TORTURE_ROUNDS``, ``TASKQ_TORTURE_JOBS``, ``TASKQ_TORTURE_KILLS`` and
``TASKQ_TORTURE_WORKERS`` override the sizes; ``TASKQ_TORTURE_SEED`` fixes the random
choices (pauses, kill moments, victims) to replay a schedule. The summary line
(rounds, jobs, kills, recoveries, overlaps) is printed (``pytest -s`` shows it) and,
with ``TASKQ_TORTURE_REPORT=PATH``, merged into the JSON object in PATH under
``crash_torture``.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .support import (
    JOB_SH,
    LONG,
    STATES,
    bad_event_lines,
    batch_lines,
    drained,
    id_of,
    iso_ts,
    jsons,
    listing,
    parse_run_log,
    report,
    time_overlaps,
    wait_until,
)

WORKER_ARGS = ("--concurrency", "2")
#: Slack when comparing the wall clock of the job (``date +%s%N``) with the worker's
#: millisecond timestamps in the record (rounded to the millisecond).
SLACK = 0.002
#: The same for the end of a "worker lost" attempt: recovery stamps the time at which
#: it starts to look at the job, just before it tries the job's lock, so a process
#: that ends in between (the recovering thread preempted) ends after that stamp.
LOST_SLACK = 0.05
RECOVERED_RE = re.compile(r"recovered (\S+) \(([^)]*)\)")


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Sizes:
    rounds: int
    jobs: int
    workers: int
    kills: int
    drain_timeout: float


def sizes() -> Sizes:
    if LONG:
        base = Sizes(rounds=30, jobs=1000, workers=4, kills=25, drain_timeout=120.0)
    else:
        base = Sizes(rounds=4, jobs=400, workers=3, kills=10, drain_timeout=60.0)
    return Sizes(
        rounds=_int_env("TASKQ_TORTURE_ROUNDS", base.rounds),
        jobs=_int_env("TASKQ_TORTURE_JOBS", base.jobs),
        workers=_int_env("TASKQ_TORTURE_WORKERS", base.workers),
        kills=_int_env("TASKQ_TORTURE_KILLS", base.kills),
        drain_timeout=base.drain_timeout,
    )


def pause(rng: random.Random) -> float:
    """A job's pause between its start and end lines: mostly a few to tens of ms; one
    job in ten runs longer than a replacement worker takes to start, so recovery
    often finds the attempt of a killed worker still running."""
    return rng.uniform(0.1, 0.5) if rng.random() < 0.1 else rng.uniform(0.002, 0.040)


def check_round(spool: Path, log: Path, ids: list[str], killed: set[int], t_round: float,
                stale: Path) -> tuple[list[str], dict]:
    """Check a drained spool against the run log; return (violations, figures)."""
    v: list[str] = []
    idset = set(ids)

    # -- every job in done/, exactly once; nothing anywhere else ---------------------------
    where: dict[str, list[str]] = collections.defaultdict(list)
    for state in STATES:
        for name in listing(spool, state):
            where[id_of(state, name)].append(f"{state}/{name}")
    for job in ids:
        if where.get(job) != [f"done/{job}.json"]:
            v.append(f"{job}: found at {where.get(job, [])}, expected only done/{job}.json")
    for key in sorted(set(where) - idset):
        v.append(f"unexpected files: {where[key]}")

    # -- tmp/ ------------------------------------------------------------------------------
    tmp_left = listing(spool, "tmp")
    if stale.name in tmp_left:
        v.append(f"stale staging file tmp/{stale.name} (2 h old) was not removed")
    for name in tmp_left:
        if name == stale.name:
            continue
        try:
            mtime = os.lstat(spool / "tmp" / name).st_mtime
        except FileNotFoundError:
            continue
        if mtime < t_round - 1.0:
            v.append(f"tmp/{name} is older than the round")
        parts = name.split(".")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if pid not in killed:
            v.append(f"tmp/{name} was left by a process that was not killed")

    # -- the run log -------------------------------------------------------------------------
    rl = parse_run_log(log)
    v += [f"torn or foreign line in the run log: {line!r}" for line in rl.bad_lines]
    v += rl.problems
    v += [f"overlap (log order): {o}" for o in rl.overlaps_by_order]
    time_ovl = []
    for runs in rl.runs.values():
        time_ovl += time_overlaps(runs)
    v += [f"overlap (wall clock): {o}" for o in time_ovl]
    for job in sorted(set(rl.runs) - idset):
        v.append(f"run log names an unknown job {job}")

    # -- the records ---------------------------------------------------------------------------
    errors = collections.Counter()
    max_attempts_seen = 0
    reruns = 0
    for job in ids:
        try:
            rec = json.loads((spool / "done" / f"{job}.json").read_bytes())
        except (FileNotFoundError, ValueError) as exc:
            v.append(f"{job}: no readable record in done/: {exc}")
            continue
        atts = rec.get("attempts") or []
        max_attempts_seen = max(max_attempts_seen, len(atts))
        if rec.get("id") != job:
            v.append(f"{job}: record id {rec.get('id')!r}")
        if not atts:
            v.append(f"{job}: done without attempts")
            continue
        if [a.get("number") for a in atts] != list(range(1, len(atts) + 1)):
            v.append(f"{job}: attempt numbers {[a.get('number') for a in atts]}")
        for a in atts[:-1]:
            errors[a.get("error")] += 1
            if not a.get("finished_at"):
                v.append(f"{job}: attempt {a.get('number')} (not the last) has no finished_at")
            if a.get("error") not in ("worker lost", "interrupted"):
                v.append(f"{job}: attempt {a.get('number')} ended {a}, expected 'worker lost'")
        last = atts[-1]
        if (last.get("exit_code") != 0 or last.get("error") is not None or last.get("signal") is not None
                or last.get("timed_out") or not last.get("finished_at")):
            v.append(f"{job}: last attempt {last}, expected exit_code 0")
        if not rec.get("settled_at"):
            v.append(f"{job}: done without settled_at")
        if rec.get("budget_start", 0) != 0:
            v.append(f"{job}: budget_start {rec.get('budget_start')}")
        for prev, cur in itertools.pairwise(atts):
            if prev.get("finished_at") and iso_ts(cur["started_at"]) < iso_ts(prev["finished_at"]) - SLACK:
                v.append(f"{job}: attempt {cur['number']} started before attempt {prev['number']} finished")
        runs = rl.runs.get(job, [])
        reruns += max(0, len(runs) - 1)
        if not any(r.attempt == len(atts) for r in runs):
            v.append(f"{job}: the successful attempt {len(atts)} never ran (no start in the run log)")
        for r in runs:
            if not 1 <= r.attempt <= len(atts):
                v.append(f"{job}: logged TASKQ_ATTEMPT={r.attempt} is not an attempt of the record ({len(atts)})")
                continue
            a = atts[r.attempt - 1]
            wpid = int(str(a.get("worker", ":0")).rsplit(":", 1)[1])
            # A worker killed between fork and exec leaves a job whose parent is already
            # the reaper: only then may the logged parent differ.
            if r.ppid != wpid and wpid not in killed:
                v.append(f"{job}: attempt {r.attempt} ran under pid {r.ppid}, record says worker {a.get('worker')}")
            if r.start_ns / 1e9 < iso_ts(a["started_at"]) - SLACK:
                v.append(f"{job}: attempt {r.attempt} ran {iso_ts(a['started_at']) - r.start_ns / 1e9:.4f}s "
                         f"before its recorded start")
            slack = LOST_SLACK if a.get("error") == "worker lost" else SLACK
            if a.get("finished_at") and r.end_ns is not None and r.end_ns / 1e9 > iso_ts(a["finished_at"]) + slack:
                v.append(f"{job}: attempt {r.attempt} ({a.get('error') or 'exit'}) recorded as finished "
                         f"{r.end_ns / 1e9 - iso_ts(a['finished_at']):.4f}s before its process ended")

    figures = {
        "runs": sum(len(r) for r in rl.runs.values()),
        "reruns": reruns,
        "worker_lost": errors["worker lost"],
        "interrupted": errors["interrupted"],
        "max_attempts": max_attempts_seen,
        "overlaps": len(rl.overlaps_by_order) + len(time_ovl),
        "tmp_left": len(tmp_left) - (stale.name in tmp_left),
    }
    return v, figures


def run_round(taskq, fleets, orphans, tmp_path: Path, rnd: int, rng: random.Random, sz: Sizes) -> dict:
    base = tmp_path / f"round{rnd}"
    base.mkdir()
    spool, log, job_sh = base / "spool", base / "runs.log", base / "job.sh"
    job_sh.write_text(JOB_SH)
    orphans.watch(log, str(job_sh))
    t_round = time.time()
    t0 = time.monotonic()

    records = [{"command": ["/bin/sh", str(job_sh), str(log), f"{pause(rng):.3f}"],
                "backoff": 0.05, "max_attempts": 50} for _ in range(sz.jobs)]
    added = taskq("add", "--batch", "-", input=batch_lines(records), spool=spool, check=True, timeout=120)
    ids = added.stdout.split()
    assert len(ids) == sz.jobs and len(set(ids)) == sz.jobs
    stale = spool / "tmp" / "job.1.0123456789ab.tmp"
    stale.write_bytes(b'{"command": ["false"]}')
    os.utime(stale, (t_round - 7200, t_round - 7200))

    fleet = fleets(spool, f"round{rnd}-workers")
    for _ in range(sz.workers):
        fleet.start(*WORKER_ARGS)
    kills = 0
    while kills < sz.kills:
        time.sleep(rng.uniform(0.05, 0.6))
        if drained(spool):
            break
        live = fleet.live()
        assert len(live) == sz.workers, "a worker exited by itself:\n" + "".join(
            w.stderr()[-3000:] for w in fleet.workers if w.proc.poll() is not None and not w.killed)
        fleet.sigkill(rng.choice(live))
        kills += 1
        fleet.start(*WORKER_ARGS)

    mode = "drain" if rnd % 2 == 0 else "burst"
    bursts = 0
    burst_err = ""
    if mode == "drain":
        ok = wait_until(lambda: drained(spool), sz.drain_timeout, interval=0.1)
        assert ok, (f"round {rnd}: live workers did not drain the spool within {sz.drain_timeout:g}s; left: "
                    f"pending={jsons(spool, 'pending')[:10]} running={jsons(spool, 'running')[:10]}")
    statuses = fleet.terminate_all()
    assert all(rc == 0 for rc in statuses.values()), f"SIGTERMed workers exited with {statuses}"
    deadline = time.monotonic() + sz.drain_timeout
    while True:
        r = taskq("work", "--burst", "--concurrency", "4", spool=spool, timeout=sz.drain_timeout)
        bursts += 1
        burst_err += r.stderr
        assert r.returncode == 0, r.stderr[-3000:]
        if mode == "drain":
            assert " claimed " not in r.stderr, f"the final burst found work:\n{r.stderr[-3000:]}"
            break
        if drained(spool):
            break
        assert time.monotonic() < deadline, (
            f"round {rnd}: bursts did not drain the spool within {sz.drain_timeout:g}s; left: "
            f"pending={jsons(spool, 'pending')[:10]} running={jsons(spool, 'running')[:10]}")
        time.sleep(0.05)

    stderr = fleet.stderr_all() + burst_err
    bad = bad_event_lines(stderr)
    assert not bad, "worker errors:\n" + "\n".join(bad[:20])
    violations, figures = check_round(spool, log, ids, fleet.killed_pids(), t_round, stale)
    assert not violations, f"round {rnd}: {len(violations)} violation(s):\n" + "\n".join(violations[:30])
    recovered = collections.Counter(m.group(2) for m in RECOVERED_RE.finditer(stderr))
    figures.update(
        round=rnd, mode=mode, jobs=len(ids), kills=kills, bursts=bursts,
        recovered_events=sum(recovered.values()), recovered_kinds=dict(recovered),
        seconds=round(time.monotonic() - t0, 1),
    )
    return figures


def test_crash_torture(taskq, fleets, orphans, tmp_path):
    sz = sizes()
    seed = _int_env("TASKQ_TORTURE_SEED", random.randrange(1 << 30))
    rng = random.Random(seed)
    t0 = time.monotonic()
    rounds = []
    for rnd in range(sz.rounds):
        figures = run_round(taskq, fleets, orphans, tmp_path, rnd, rng, sz)
        rounds.append(figures)
        print(f"\n  round {rnd}: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    total = {
        "mode": "long" if LONG else "bounded",
        "seed": seed,
        "rounds": len(rounds),
        "jobs": sum(r["jobs"] for r in rounds),
        "kills": sum(r["kills"] for r in rounds),
        "recoveries": sum(r["worker_lost"] for r in rounds),
        "recovered_events": sum(r["recovered_events"] for r in rounds),
        "runs": sum(r["runs"] for r in rounds),
        "reruns": sum(r["reruns"] for r in rounds),
        "interrupted": sum(r["interrupted"] for r in rounds),
        "max_attempts": max(r["max_attempts"] for r in rounds),
        "overlaps": sum(r["overlaps"] for r in rounds),
        "tmp_left_by_killed": sum(r["tmp_left"] for r in rounds),
        "bursts": sum(r["bursts"] for r in rounds),
        "seconds": round(time.monotonic() - t0, 1),
    }
    report("crash_torture", total, {"per_round": rounds})
    assert total["overlaps"] == 0
    assert total["kills"] > 0, "no worker was killed: the jobs drained too fast"
