"""Several hosts on one spool: pick-up of another host's jobs, claim races, takeover
of a dead host's jobs by lease, fencing of a host that comes back after its lease ran
out, clock skew, unique keys and cancel across hosts.

Every test runs with ``lease_timeout = 5`` and ``poll_interval = 0.5`` (taskq.toml),
on simulated hosts (namespaces: own hostname, boot id, PIDs) over

* ``local``: a spool on a local disk (tmp_path). One kernel: flock(2) *is* shared by
  the hosts here (a frozen host keeps its run locks; its lease decides all the same);
* ``nfs``: the NFS lab, host A through client A, host B through client B. flock is not
  shared between the clients and inotify does not see the other client's changes.

Files that jobs write to show what ran where (``marks/``) are on the local disk, never
on the NFS mount (O_APPEND is not atomic across NFS clients). Final assertions read the
spool from the server's side (no client cache in between).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import pytest

from .support import TASKQ, Host, HostFactory, HostProcess, NfsLab, pid_alive, wait_for

LEASE_TIMEOUT = 5.0
POLL_INTERVAL = 0.5
#: How often a worker looks for other workers' jobs to recover (taskq.worker.loop).
RECOVERY_PERIOD = 5.0
#: How long the NFS lab's clients may show old attributes.
CACHE = 1.0
#: The latest a takeover may come after the holder's last lease renewal.
TAKEOVER_BOUND = LEASE_TIMEOUT + RECOVERY_PERIOD + CACHE
#: Allowance for a noisy 2-core machine on top of any bound that is measured.
NOISE = 4.0
#: Times compared: ISO times in records have milliseconds; a server stamp and a
#: worker's clock are the same clock here (the NFS server runs on this machine).
TIME_TOLERANCE = 0.05

TOML = f"poll_interval = {POLL_INTERVAL}\nlease_timeout = {LEASE_TIMEOUT:g}\n"


def ts(iso: str) -> float:
    """Seconds since the epoch of a record's ISO time (``2026-11-28T05:18:30.123Z``)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass
class Worker:
    host: Host
    proc: HostProcess
    log: Path

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and the exit status (the worker lets its jobs finish for --grace)."""
        self.proc.terminate()
        return self.proc.wait(timeout)


@dataclass
class Cluster:
    """One spool seen by two hosts' paths, plus what tests need around it."""

    kind: str
    #: The spool through host A's path and through host B's (one path for ``local``).
    paths: tuple[Path, Path]
    #: The spool as stored (for ``nfs``, the server's side): for assertions.
    server: Path
    #: Local-disk directory for the files that jobs write.
    marks: Path
    factory: HostFactory
    workers: list[Worker] = field(default_factory=list)

    # -- hosts and workers ---------------------------------------------------------------

    def make_hosts(self, clock_offsets: Optional[tuple[Optional[str], Optional[str]]] = None) -> list[Host]:
        """Host A (host-a) on the first path, host B (host-b) on the second."""
        return self.factory(2, spool_paths=self.paths, clock_offsets=clock_offsets)

    def start_worker(self, host: Host, *args: str, ready: bool = True) -> Worker:
        log = host.dir / f"worker-{len(self.workers)}.err"
        proc = host.spawn(["taskq", "work", *args], stdout=host.dir / f"worker-{len(self.workers)}.out", stderr=log)
        worker = Worker(host, proc, log)
        self.workers.append(worker)
        if ready:
            wait_for(lambda: "worker started" in worker.text() or not proc.running, timeout=30,
                     message=f"the worker on {host.name} to start")
            assert proc.running, f"worker on {host.name} exited: {worker.text()}"
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.host.name} worker {w.proc.ns_pid} (log {w.log.name}) ---\n{w.text()}"
                         for w in self.workers)

    # -- jobs ----------------------------------------------------------------------------

    def add(self, host: Host, script: str, *options: str) -> str:
        return host.run(["taskq", "add", *options, "--shell", "--", script], check=True).stdout.strip()

    def script(self, first: str, later: Optional[str] = None) -> str:
        """A job that writes ``marks/ID.ATTEMPT.HOST.start`` (its PID inside its host, and
        the time), runs *first* (its first attempt) or *later* (the others), then writes
        ``marks/ID.ATTEMPT.HOST.end`` (the time)."""
        body = first if later is None else f'if [ "$TASKQ_ATTEMPT" = 1 ]; then {first}; else {later}; fi'
        mark = shlex.quote(str(self.marks)) + '/"$TASKQ_JOB_ID.$TASKQ_ATTEMPT.$(hostname)"'
        return f'm={mark}; echo "$$ $(date +%s.%N)" >"$m.start"; {body}; date +%s.%N >"$m.end"'

    def started(self, job: str, attempt: int, host: Host) -> Optional[tuple[int, float]]:
        """(PID inside the host, time) from the start mark of that attempt on *host*."""
        try:
            pid, when = (self.marks / f"{job}.{attempt}.{host.name}.start").read_text().split()
        except (FileNotFoundError, ValueError):
            return None  # not yet (or being written)
        return int(pid), float(when)

    def ended(self, job: str, attempt: int, host: Host) -> Optional[float]:
        try:
            return float((self.marks / f"{job}.{attempt}.{host.name}.end").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def marks_of(self, job: str) -> list[str]:
        return sorted(p.name for p in self.marks.glob(f"{job}.*"))

    # -- the spool, from the server's side ------------------------------------------------

    def states_of(self, job: str) -> list[str]:
        """Every state directory that holds a file of *job* (exactly one for a sane spool)."""
        found = [state for state in ("running", "done", "failed") if (self.server / state / f"{job}.json").exists()]
        found += ["pending" for name in os.listdir(self.server / "pending") if job in name]
        return found

    def record(self, job: str) -> Optional[dict[str, Any]]:
        """The settled record of *job* (done/ or failed/), or None."""
        for state in ("done", "failed"):
            try:
                data = json.loads((self.server / state / f"{job}.json").read_text())
            except FileNotFoundError:
                continue
            data["state"] = state
            return data
        return None

    def wait_settled(self, job: str, timeout: float) -> dict[str, Any]:
        return wait_for(lambda: self.record(job), timeout=timeout, interval=0.05,
                        message=f"job {job} to settle\n{self.logs()}")

    def running_files(self) -> list[str]:
        return sorted(os.listdir(self.server / "running"))

    def running_files_settled(self, timeout: float = 5.0) -> list[str]:
        """running/ once a settle has finished: a worker moves the record first and
        removes the job's run lock and fences just after, so a test that has seen the
        record in done/ gives the worker a moment before it looks for leftovers."""
        deadline = time.monotonic() + timeout
        while (left := self.running_files()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def lease_files(self, host: Host) -> list[Path]:
        return sorted((self.server / "leases").glob(f"{host.name}~*.lease"))

    def diag(self, job: Optional[str] = None) -> str:
        out = [f"running/: {self.running_files()}"]
        if job is not None:
            out += [f"states of {job}: {self.states_of(job)}", f"record: {json.dumps(self.record(job), indent=1)}",
                    f"marks: {self.marks_of(job)}"]
        return "\n".join(out) + "\n" + self.logs()


def commands_of(host: Host) -> list[str]:
    """The command lines of the host's processes."""
    out = []
    for pid in host.processes():
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass  # ended meanwhile
    return out


def _taskq(*args: str) -> subprocess.CompletedProcess[str]:
    assert TASKQ is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKQ_", "FAKETIME")) and k != "LD_PRELOAD"}
    return subprocess.run([TASKQ, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=True)


@pytest.fixture(params=["local", "nfs"])
def cluster(request: pytest.FixtureRequest, hosts: HostFactory, tmp_path: Path) -> Iterator[Cluster]:
    """A new spool with this file's taskq.toml, on a local disk or on the NFS lab."""
    lab: Optional[NfsLab] = None
    if request.param == "nfs":
        shared = request.getfixturevalue("shared_spool")
        lab = request.getfixturevalue("nfs_lab")
        paths, server = shared.clients, shared.server
    else:
        spool = tmp_path / "spool"
        paths, server = (spool, spool), spool
    _taskq("init", "--spool", str(paths[0]))
    (paths[0] / "taskq.toml").write_text(TOML)
    marks = tmp_path / "marks"
    marks.mkdir()
    c = Cluster(request.param, paths, server, marks, hosts)
    try:
        yield c
    finally:
        for worker in c.workers:
            if worker.host.alive and not worker.host.frozen and worker.proc.running:
                worker.proc.terminate()
        for worker in c.workers:
            try:
                worker.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass  # the hosts fixture kills it with its host
        # A lab that broke during the test (a fuse-nfs client crashed) turns its
        # failure into a skip: see pytest_runtest_makereport in conftest.py.
        if lab is not None and not any(w.proc.running for w in c.workers):
            shutil.rmtree(paths[0], ignore_errors=True)


nfs_only = pytest.mark.parametrize("cluster", ["nfs"], indirect=True)


# -- 1. pick-up ----------------------------------------------------------------------------


def test_a_job_added_on_one_host_is_run_by_an_idle_worker_on_another(cluster: Cluster) -> None:
    a, b = cluster.make_hosts()
    cluster.start_worker(b)
    pickups, after_add = [], []
    for i in range(5):
        # Not in step with the worker's re-listing: each add lands at another point of it.
        time.sleep(0.3 + 0.11 * i)
        job = cluster.add(a, cluster.script("true"))
        added = time.time()
        start = wait_for(lambda job=job: cluster.started(job, 1, b), timeout=30, interval=0.01,
                         message=f"host B to start {job}\n{cluster.diag(job)}")
        record = cluster.wait_settled(job, timeout=30)
        assert record["state"] == "done", cluster.diag(job)
        assert [att["worker"].split(":")[0] for att in record["attempts"]] == ["host-b"]
        # From the job's creation (its record's created_at, written by add on A) to
        # the first line of its command on B; and from add's exit, as A's user sees it.
        pickups.append(start[1] - ts(record["created_at"]))
        after_add.append(start[1] - added)
    print(f"[pickup] {cluster.kind}: created -> started on B: " + ", ".join(f"{p:.3f}s" for p in pickups)
          + f" (max {max(pickups):.3f}s); after add returned: " + ", ".join(f"{p:.3f}s" for p in after_add)
          + f"; poll_interval {POLL_INTERVAL:g}s")
    assert max(pickups) <= POLL_INTERVAL + 1.5, (pickups, cluster.logs())


# -- 2. claim race -------------------------------------------------------------------------


def test_racing_workers_on_two_hosts_run_every_job_exactly_once(cluster: Cluster) -> None:
    # Two workers on each host, two slots each, all started at once: 8 slots racing
    # for 200 claims.
    race(cluster, jobs=200, starts=[(0, 0.0), (1, 0.0), (0, 0.0), (1, 0.0)])


def test_workers_starting_during_a_race_run_every_job_exactly_once(cluster: Cluster) -> None:
    # Eight burst workers, on alternate hosts, starting 0.2 s apart while the others
    # claim and settle: each one's recovery pass at start judges jobs that other
    # workers are claiming, running and settling at that moment.
    race(cluster, jobs=300, starts=[(i % 2, 0.2) for i in range(8)])


def race(cluster: Cluster, jobs: int, starts: list[tuple[int, float]]) -> None:
    """Run *jobs* quick jobs with burst workers (``-c 2``) started on host *i* after
    *pause* s each (``starts``); every job must run exactly once and end done."""
    hosts = cluster.make_hosts()
    runs = cluster.marks / "runs"
    runs.mkdir()
    # One file per run (never an append): ID.PID, holding the host and the attempt.
    command = f'echo "$(hostname) $TASKQ_ATTEMPT" >{shlex.quote(str(runs))}/"$TASKQ_JOB_ID.$$"'
    batch = "".join(json.dumps({"command": ["sh", "-c", command]}) + "\n" for _ in range(jobs))
    ids = hosts[0].run(["taskq", "add", "--batch", "-"], input=batch, check=True).stdout.split()
    assert len(set(ids)) == jobs

    began = time.monotonic()
    workers = []
    for i, pause in starts:
        time.sleep(pause)
        workers.append(cluster.start_worker(hosts[i], "--burst", "-c", "2", ready=False))
    statuses = []
    for worker in workers:
        try:
            statuses.append(worker.proc.wait(timeout=180))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a burst worker did not finish\n{cluster.diag()}")
    took = time.monotonic() - began
    # Whatever the racers left (a worker that died leaves its jobs): one more worker.
    leftover = [name for name in os.listdir(cluster.server / "pending")] + cluster.running_files()
    if leftover:
        cluster.start_worker(hosts[0], "--burst", ready=False).proc.wait(timeout=120)

    ran = collections.Counter(name.split(".")[0] for name in os.listdir(runs))
    by_host = collections.Counter((runs / name).read_text().split()[0] for name in os.listdir(runs))
    print(f"[race] {cluster.kind}: {jobs} jobs, {len(workers)} workers in {took:.1f}s, runs by host: {dict(by_host)}; "
          f"exit statuses {statuses}")
    # Every problem found, not only the first: they may have different causes.
    problems = []
    crashed = [(w.host.name, status, w.text().strip().splitlines()[-1:])
               for w, status in zip(workers, statuses, strict=True) if status != 0]
    if crashed:
        problems.append(f"{len(crashed)} workers exited non-zero: {crashed}")
    twice = {job: count for job, count in ran.items() if count != 1}
    for job in twice:
        problems.append(f"{job} ran {twice[job]} times: "
                        + "; ".join(f"{name}: {(runs / name).read_text().strip()}"
                                    for name in sorted(os.listdir(runs)) if name.startswith(job))
                        + "".join(f"\n    {w.host.name}: {line}" for w in workers for line in w.text().splitlines()
                                  if job in line)
                        + f"\n    record: {cluster.record(job)}")
    if set(ran) != set(ids):
        problems.append(f"jobs never run: {sorted(set(ids) - set(ran))}")
    states = {job: cluster.states_of(job) for job in ids}
    wrong = {job: s for job, s in states.items() if s != ["done"]}
    if wrong:
        problems.append(f"jobs not in exactly one state, done: {wrong}")
    for job in ids:
        record = cluster.record(job)
        if record is None or len(record["attempts"]) != 1:
            problems.append(f"{job}: not one attempt: {record}")
    complaints = [line for w in workers for line in w.text().splitlines()
                  if any(word in line for word in ("cannot", "internal error", "fenced", "recovered"))]
    if complaints:
        problems.append(f"{len(complaints)} complaints in the workers' logs, e.g.:\n  " + "\n  ".join(complaints[:8]))
    if leftover:
        problems.append(f"left in pending/ and running/ after the racers exited: {leftover}")
    if cluster.running_files():
        problems.append(f"left in running/ at the end: {cluster.running_files()}")
    assert not problems, "\n".join(problems)


# -- 3. a host dies ------------------------------------------------------------------------


def test_a_dead_hosts_job_is_taken_over_once_its_lease_expires(cluster: Cluster) -> None:
    a, b = cluster.make_hosts()
    cluster.start_worker(a)
    job = cluster.add(a, cluster.script("sleep 30", "true"), "--backoff", "0")
    wait_for(lambda: cluster.started(job, 1, a), timeout=30, message=f"host A to start {job}\n{cluster.diag(job)}")
    cluster.start_worker(b)
    b_started = time.monotonic()
    (lease,) = cluster.lease_files(a)
    fence = cluster.server / "running" / f"{job}.1.{lease.name[:-len('.lease')]}.fence"
    assert fence.exists(), cluster.diag(job)

    # B recovers at its start, then every 5 s: dying 2.5 s after B's start, A leaves a
    # lease that B's next pass finds at most 1.67 + 3 s old (live: not yet), and the
    # one after, expired.
    time.sleep(max(0.0, b_started + RECOVERY_PERIOD / 2 - time.monotonic()))
    killed = time.time()
    a.kill()
    renewed = lease.stat().st_mtime  # A's last renewal, stamped by the server
    print(f"[takeover] {cluster.kind}: A's lease last renewed {killed - renewed:.2f}s before the kill")

    # Until A's lease is lease_timeout old, the job stays A's: in running/, fenced by A.
    while time.time() < renewed + LEASE_TIMEOUT - 0.2:
        assert cluster.states_of(job) == ["running"] and fence.exists(), \
            f"taken over {time.time() - renewed:.2f}s after A's last renewal\n{cluster.diag(job)}"
        assert cluster.started(job, 2, b) is None, cluster.diag(job)
        time.sleep(0.05)

    restart = wait_for(lambda: cluster.started(job, 2, b), timeout=TAKEOVER_BOUND + 30,
                       message=f"host B to run {job} again\n{cluster.diag(job)}")
    record = cluster.wait_settled(job, timeout=30)
    assert record["state"] == "done", cluster.diag(job)
    first, second = record["attempts"]
    assert first["worker"].split(":")[0] == "host-a" and first["error"] == "worker lost", record
    assert "lease" in (first.get("detail") or ""), record
    assert first["exit_code"] is None
    assert second["worker"].split(":")[0] == "host-b" and second["exit_code"] == 0 and second["error"] is None
    assert second["worker_id"].startswith("host-b~")
    recovered = ts(first["finished_at"])
    print(f"[takeover] {cluster.kind}: recovered {recovered - killed:.2f}s after the kill "
          f"({recovered - renewed:.2f}s after A's last renewal), run again on B {restart[1] - killed:.2f}s "
          f"after the kill; detail: {first['detail']!r}")
    assert recovered >= renewed + LEASE_TIMEOUT - TIME_TOLERANCE, "taken over before the lease expired"
    assert recovered <= renewed + TAKEOVER_BOUND + NOISE, "taken over too late"
    judged = re.search(r"expired \(([0-9.]+)s old by the server's clock\)", first["detail"])
    assert judged is not None and float(judged.group(1)) >= LEASE_TIMEOUT, first["detail"]
    assert cluster.running_files_settled() == [], cluster.diag(job)


# -- 4. a host stops past its lease, then resumes --------------------------------------------


def test_a_host_frozen_past_its_lease_is_fenced_when_it_resumes(cluster: Cluster) -> None:
    """B takes the job over once A's lease has expired, also on a local spool where the
    frozen A still holds the job's run lock (README, "Several hosts"); A, thawed, stops
    its stale attempt at once, settles nothing and goes on under a new worker id."""
    a, b = cluster.make_hosts()
    worker_a = cluster.start_worker(a)
    # Attempt 1 (on A) would run 20 s, longer than A stays frozen, so that the end of
    # its sleep does not race with the fencing at the thaw; attempt 2 (on B) runs 3 s,
    # so that it still runs when A comes back.
    job = cluster.add(a, cluster.script("sleep 20", "sleep 3"), "--backoff", "0")
    pid_in_a, _ = wait_for(lambda: cluster.started(job, 1, a), timeout=30,
                           message=f"host A to start {job}\n{cluster.diag(job)}")
    job_proc = a.outer_pid(pid_in_a)
    assert job_proc is not None
    cluster.start_worker(b)
    (lease,) = cluster.lease_files(a)
    old_uid = lease.name[:-len(".lease")]

    a.freeze()
    frozen = time.time()
    renewed = lease.stat().st_mtime
    restart = wait_for(lambda: cluster.started(job, 2, b), timeout=TAKEOVER_BOUND + 30,
                       message=f"host B to take over {job}\n{cluster.diag(job)}")
    print(f"[takeover] {cluster.kind} freeze: B started attempt 2 {restart[1] - frozen:.2f}s after A froze "
          f"({restart[1] - renewed:.2f}s after A's last renewal)")
    assert cluster.record(job) is None and cluster.states_of(job) == ["running"], cluster.diag(job)

    a.thaw()
    thawed = time.time()
    # A finds its lease lost and stops the stale attempt at once.
    wait_for(lambda: not pid_alive(job_proc), timeout=5, interval=0.01,
             message=f"A's stale attempt to be stopped after the thaw\n{cluster.diag(job)}")
    stopped = time.time() - thawed
    new_uid = wait_for(lambda: next((line.split("working again as worker ", 1)[1].split()[0]
                                     for line in worker_a.text().splitlines() if "working again as worker" in line),
                                    None),
                       timeout=10, message=f"A's worker to go on under a new id\n{cluster.logs()}")
    record = cluster.wait_settled(job, timeout=30)
    print(f"[fence] {cluster.kind}: A's job process gone {stopped:.3f}s after the thaw; "
          f"A's end mark: {cluster.ended(job, 1, a)}; A's worker log:\n"
          + "\n".join(line for line in worker_a.text().splitlines() if job in line or "lease" in line
                      or "worker" in line))

    assert record["state"] == "done" and record["last_error"] is None, cluster.diag(job)
    assert len(record["attempts"]) == 2, cluster.diag(job)
    first, second = record["attempts"]
    assert first["worker"].split(":")[0] == "host-a" and first["worker_id"] == old_uid, record
    assert first["error"] == "worker lost" and "lease" in (first.get("detail") or ""), record
    assert second["worker"].split(":")[0] == "host-b" and second["exit_code"] == 0 and second["error"] is None
    assert ts(first["finished_at"]) >= renewed + LEASE_TIMEOUT - TIME_TOLERANCE, "taken over before the lease expired"
    # B's attempt ran to its end, untouched: A neither settled nor stopped it.
    assert cluster.ended(job, 2, b) is not None
    assert cluster.ended(job, 1, a) is None, "A's stale attempt ran to its end"
    assert stopped < 1.0, "README: a thawed host's stale attempts run for at most 0.1 s"
    assert [cmd for cmd in commands_of(a) if os.path.basename(cmd.split(" ", 1)[0]) == "sleep"] == [], \
        commands_of(a)
    log_a = worker_a.text()
    assert f"lease of {old_uid} lost" in log_a, log_a
    assert new_uid != old_uid
    assert f"succeeded {job}" not in log_a and f"failed {job}" not in log_a, log_a
    assert (cluster.server / "leases" / f"{old_uid}.lease").exists() is False

    # A's worker goes on working, under its new id: with B's worker gone, A runs a new job.
    assert cluster.workers[1].stop() == 0, cluster.logs()
    later = cluster.add(a, cluster.script("true"))
    record = cluster.wait_settled(later, timeout=30)
    assert record["state"] == "done", cluster.diag(later)
    assert [att["worker_id"] for att in record["attempts"]] == [new_uid]
    assert cluster.running_files_settled() == [], cluster.diag(job)


# -- 5. clock skew -------------------------------------------------------------------------


@nfs_only
@pytest.mark.parametrize("offset", ["+10m", "-10m"])
def test_a_host_with_a_skewed_clock_keeps_its_jobs(cluster: Cluster, offset: str) -> None:
    a, b = cluster.make_hosts(clock_offsets=(offset, None))
    worker_a = cluster.start_worker(a)
    # Longer than 2 lease_timeouts plus a recovery period: every judgement of the
    # other host's lease has been made a few times while both jobs run.
    duration = 2 * LEASE_TIMEOUT + RECOVERY_PERIOD + 1
    job_a = cluster.add(a, cluster.script(f"sleep {duration:g}"))
    wait_for(lambda: cluster.started(job_a, 1, a), timeout=30, message=f"host A to start {job_a}\n{cluster.diag()}")
    worker_b = cluster.start_worker(b)
    # And the other way round: B's job, judged by the skewed host A.
    job_b = cluster.add(b, cluster.script(f"sleep {duration:g}"))
    wait_for(lambda: cluster.started(job_b, 1, b), timeout=30, message=f"host B to start {job_b}\n{cluster.diag()}")

    # The leases are stamped by the server, whatever A's clock says.
    (lease,) = cluster.lease_files(a)
    assert abs(lease.stat().st_mtime - time.time()) < LEASE_TIMEOUT, "A's lease is stamped with A's clock"

    for job, host in ((job_a, a), (job_b, b)):
        record = cluster.wait_settled(job, timeout=duration + 30)
        assert record["state"] == "done", cluster.diag(job)
        assert [att["worker"].split(":")[0] for att in record["attempts"]] == [host.name], cluster.diag(job)
        assert record["attempts"][0]["exit_code"] == 0
        assert cluster.marks_of(job) == [f"{job}.1.{host.name}.end", f"{job}.1.{host.name}.start"]
    for worker in (worker_a, worker_b):
        assert "recovered" not in worker.text() and "fenced" not in worker.text() and "lost" not in worker.text(), \
            cluster.logs()
    assert cluster.running_files_settled() == [], cluster.diag()


# -- 6. unique keys ------------------------------------------------------------------------


def test_the_same_unique_key_added_on_two_hosts_at_once_makes_one_job(cluster: Cluster) -> None:
    a, b = cluster.make_hosts()
    rounds = 20
    gate = cluster.marks / "go"
    failures = []
    for n in range(rounds):
        key = f"key-{n}-{uuid.uuid4().hex[:8]}"
        gate.unlink(missing_ok=True)
        # Two adds on each host, each waiting for the gate, then all at once.
        script = (f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.005; done; "
                  f"exec taskq add --json --unique-key {key} -- true")
        procs = [host.spawn(["sh", "-c", script]) for host in (a, b, a, b)]
        gate.touch()
        results = []
        for proc in procs:
            assert proc.wait(60) == 0, proc.stderr()
            out = json.loads(proc.stdout())
            results.append((proc.host.name, out["id"], out["duplicate"]))
        holders = sorted(name.split(".")[2] for name in os.listdir(cluster.server / "pending")
                         if json.loads((cluster.server / "pending" / name).read_text())["unique_key"] == key)
        if len({job for _, job, _ in results}) != 1 or len(holders) != 1:
            failures.append(f"round {n}: jobs in pending/ with the key: {holders}; (host, id, duplicate) "
                            f"of each add: {results}")
        else:
            assert sorted(dup for _, _, dup in results) == [False, True, True, True], results
    print(f"[unique] {cluster.kind}: {len(failures)} of {rounds} rounds made more than one job")
    assert not failures, "\n".join(failures)
    assert len(os.listdir(cluster.server / "pending")) == rounds
    assert not [name for name in os.listdir(cluster.server / "keys") if name.endswith(".excl")]


# -- 7. cancel -----------------------------------------------------------------------------


def test_cancel_on_one_host_stops_a_job_running_on_another(cluster: Cluster) -> None:
    a, b = cluster.make_hosts()
    cluster.start_worker(a)
    job = cluster.add(a, cluster.script("sleep 30"))
    pid_in_a, _ = wait_for(lambda: cluster.started(job, 1, a), timeout=30,
                           message=f"host A to start {job}\n{cluster.diag(job)}")
    job_proc = a.outer_pid(pid_in_a)
    assert job_proc is not None

    began = time.monotonic()
    cancel = b.run(["taskq", "cancel", job], timeout=60)
    took = time.monotonic() - began
    print(f"[cancel] {cluster.kind}: cancel on B returned after {took:.2f}s (exit {cancel.returncode})")
    record = wait_for(lambda: cluster.record(job), timeout=15, message=f"{job} to settle\n{cluster.diag(job)}")
    assert record["state"] == "failed" and record["last_error"] == "cancelled", cluster.diag(job)
    (attempt,) = record["attempts"]
    assert attempt["error"] == "cancelled" and attempt["worker"].split(":")[0] == "host-a", record
    wait_for(lambda: not pid_alive(job_proc), timeout=5, message="A's job process to end")
    assert cluster.ended(job, 1, a) is None
    assert cluster.states_of(job) == ["failed"]
    assert cluster.running_files_settled() == [], cluster.diag(job)
    assert f"cancelled {job}" in cluster.workers[0].text(), cluster.logs()
    # Last, so that a failure here says that the job itself was cancelled as it should.
    assert (cancel.returncode, cancel.stderr) == (0, ""), "the job was cancelled, but the command failed"
