"""Several hosts on one spool, on real temp spools in this process (README, "Several
hosts"): settings, the index merged with a fresh listing, leases judged by the
server's clock, fence files consumed by every change of a running job, and the
takeover rules of recovery and cancel.

Another host is simulated by what it leaves in the spool: a lease file with the mtime
its server stamped, a fence file and a run lock note naming its worker, and a run lock
that nobody here holds (flock does not reach across hosts). Real hosts (namespaces,
the NFS lab) are in tests/hosts/.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import taskq
from taskq import times
from taskq.config import parse_config
from taskq.errors import FencedError, StateConflictError, ValidationError
from taskq.ids import host_id, is_worker_uid, new_worker_uid
from taskq.job import Outcome
from taskq.spool import layout, locks
from taskq.spool.layout import parse_pending_name
from taskq.spool.leases import Judge, Lease
from taskq.worker.index import PendingIndex
from workerutil import files as ls

OTHER = "otherhost~0badf00d~4242~0123abcd"  # a worker of another host


@pytest.fixture
def api(tmp_path: Path) -> taskq.Spool:
    spool = taskq.Spool(tmp_path / "spool")
    spool.init()
    return spool


def claim_one(api: taskq.Spool):
    entry = next(e for e in map(parse_pending_name, ls(Path(api.path), "pending")) if e)
    claimed = api.transitions.claim(entry)
    assert claimed is not None
    return claimed


def other_lease(api: taskq.Spool, uid: str = OTHER, age: float = 0.0) -> Path:
    """The lease file of another host's worker, last renewed *age* seconds ago."""
    directory = Path(api.path) / layout.LEASES
    directory.mkdir(exist_ok=True)
    path = directory / layout.lease_file(uid)
    path.touch()
    stamp = path.stat().st_mtime - age
    os.utime(path, (stamp, stamp))
    return path


def leased(api: taskq.Spool) -> Lease:
    """Make *api*'s changes those of a worker holding a lease (5 s)."""
    lease = Lease(api.store, 5.0)
    lease.register()
    api.transitions.hold_lease(lease)
    return lease


def held_by_other_host(api: taskq.Spool, lease_age: float | None):
    """A job started by another host's worker: in running/, its attempt noted, its
    fence file there, its run lock free (as seen from this host). *lease_age*: how
    old that worker's lease is (None: it has none)."""
    job = api.add(["true"], max_attempts=3, backoff=0)
    claimed = claim_one(api)
    attempt = api.transitions.start(claimed, times.now())
    attempt.worker_id = OTHER
    api.jobs.note_attempt(claimed.lock, attempt)
    claimed.lock.release(remove=False)
    fence = Path(api.path) / "running" / layout.fence_file(job.id, 1, OTHER)
    fence.touch()
    if lease_age is not None:
        other_lease(api, age=lease_age)
    return job, fence


# -- settings and identity ------------------------------------------------------------------


def test_poll_interval_and_lease_timeout_are_settings_of_taskq_toml():
    cfg = parse_config(b'poll_interval = 0.25\nlease_timeout = "5s"\n')
    assert (cfg.poll_interval, cfg.lease_timeout) == (0.25, 5.0)
    assert (parse_config(None).poll_interval, parse_config(None).lease_timeout) == (1.0, 60.0)
    for bad, word in [(b"lease_timeout = 4", "lease_timeout"), (b"poll_interval = 0", "poll_interval"),
                      (b'lease_timeout = "soon"', "lease_timeout"), (b"poll_interval = true", "poll_interval")]:
        with pytest.raises(ValidationError, match=word):
            parse_config(bad)


def test_a_worker_id_names_its_host_and_boot_and_is_new_each_time():
    first, second = new_worker_uid(), new_worker_uid()
    assert first != second and is_worker_uid(first) and is_worker_uid(second)
    assert first.startswith(host_id() + "~") and first.split("~")[2] == str(os.getpid())
    assert layout.parse_fence_file(layout.fence_file("J1", 3, first)) == ("J1", 3, first, f"J1.3.{first}.fence",
                                                                          False)
    settle = layout.fence_file("J1", 3, first, settling=True)
    assert layout.parse_fence_file(settle) == ("J1", 3, first, f"J1.3.{first}.settle.fence", True)


# -- the index merged with a listing ----------------------------------------------------------


def test_merging_a_listing_adds_new_names_drops_gone_ones_and_keeps_what_is_known():
    now = "99999999T999999999Z"
    names = [layout.pending_name(f"J{n}", 0, "20260101T000000000Z", n == 2) for n in range(4)]
    index = PendingIndex()
    index.reset(names[:3], now)
    blocked = index.entries[names[2]]
    index.block(blocked)
    index.merge([names[0], names[2], names[3], "dropped.json"], now)
    assert set(index.present) == {names[0], names[2], names[3]}
    assert names[2] in index.blocked  # still waiting on its dependency: not re-judged here
    assert index.foreign == {"dropped.json"}
    popped = [index.pop() for _ in range(3)]
    assert [e.id for e in popped if e is not None] == ["J0", "J3"]


# -- leases ------------------------------------------------------------------------------------


def test_a_lease_is_judged_by_the_servers_clock_not_the_local_one(api):
    lease = Lease(api.store, 5.0)
    lease.register()
    judge = Judge(api.store, 5.0, lease)
    other_lease(api, age=1.0)
    assert judge.alive(OTHER)
    assert 0.5 < (judge.age(OTHER) or 0) < 3.0
    other_lease(api, age=6.0)
    assert not judge.alive(OTHER)
    assert not judge.alive("otherhost~0badf00d~1~ffffffff")  # no lease at all
    # The judge's "now" is the server's (its own lease's mtime), whatever time.time()
    # says: a lease stamped 1 s ago stays alive when the local clock jumps an hour on.
    other_lease(api, age=1.0)
    real = time.time
    try:
        time.time = lambda: real() + 3600  # type: ignore[assignment]
        assert judge.alive(OTHER)
    finally:
        time.time = real  # type: ignore[assignment]
    lease.remove()
    assert not Path(lease.path).exists()


def test_a_lease_not_renewed_in_time_is_no_longer_valid(api, monkeypatch):
    lease = Lease(api.store, 5.0)
    lease.register()
    assert lease.valid()
    import taskq.spool.leases as leases

    later = leases.clock() + 4.1  # past lease_timeout minus its margin (1 s at 5 s)
    monkeypatch.setattr(leases, "clock", lambda: later)
    assert not lease.valid()


def test_reap_removes_the_leases_of_workers_gone_for_good(api):
    lease = Lease(api.store, 5.0)
    lease.register()
    judge = Judge(api.store, 5.0, lease)
    other_lease(api, "gonehost~0badf00d~7~00000001", age=11.0)  # > 2 x lease_timeout
    other_lease(api, "livehost~0badf00d~7~00000002", age=1.0)
    dead_here = f"{host_id()}~999999~00000003"  # this host, no such process
    other_lease(api, dead_here)
    assert sorted(judge.reap()) == sorted(["gonehost~0badf00d~7~00000001", dead_here])
    assert sorted(os.listdir(Path(api.path) / layout.LEASES)) == sorted(
        [layout.lease_file("livehost~0badf00d~7~00000002"), layout.lease_file(lease.uid)])


# -- fences --------------------------------------------------------------------------------------


def test_a_workers_fence_is_made_at_the_claim_traded_at_the_start_and_consumed_at_the_settle(api):
    lease = leased(api)
    job = api.add(["true"])
    claimed = claim_one(api)
    running = Path(api.path) / "running"
    assert (running / layout.fence_file(job.id, 0, lease.uid)).exists()
    api.transitions.start(claimed, times.now())
    assert sorted(p.name for p in running.glob("*.fence")) == [layout.fence_file(job.id, 1, lease.uid)]
    assert f"wid={lease.uid}" in (running / layout.lock_file(job.id)).read_text()
    api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    assert ls(Path(api.path), "running") == []
    assert api.get(job.id).attempts[0].worker_id == lease.uid


def test_a_settle_whose_fence_is_gone_writes_nothing(api):
    """Another host took the job over (it consumed the fence) while this worker was
    away: the settle is refused before anything is written."""
    lease = leased(api)
    job = api.add(["true"])
    claimed = claim_one(api)
    api.transitions.start(claimed, times.now())
    (Path(api.path) / "running" / layout.fence_file(job.id, 1, lease.uid)).unlink()
    before = (Path(api.path) / "running" / layout.job_file(job.id)).read_bytes()
    with pytest.raises(FencedError, match="taken over"):
        api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    assert (Path(api.path) / "running" / layout.job_file(job.id)).read_bytes() == before
    assert ls(Path(api.path), "done") == [] and ls(Path(api.path), "tmp") == []


def test_a_worker_whose_lease_ran_out_neither_starts_nor_settles(api, monkeypatch):
    lease = leased(api)
    api.add(["true"])
    api.add(["true"])
    first = claim_one(api)
    api.transitions.start(first, times.now())
    second = claim_one(api)
    monkeypatch.setattr(lease, "valid", lambda: False)
    with pytest.raises(FencedError, match="lease"):
        api.transitions.settle(first, Outcome(exit_code=0), times.now(), 0.5)
    with pytest.raises(FencedError, match="lease"):
        api.transitions.start(second, times.now())
    # Both stay in running/, untouched, for whoever takes them over.
    assert ls(Path(api.path), "pending") == [] and ls(Path(api.path), "done") == []
    assert {api.get(first.job.id).state, api.get(second.job.id).state} == {"running"}


# -- takeover ------------------------------------------------------------------------------------


def test_recovery_leaves_a_job_of_another_hosts_live_worker_alone(api):
    job, fence = held_by_other_host(api, lease_age=1.0)
    assert api.transitions.recover(job.id, times.now(), 0.5) is None
    assert fence.exists() and api.get(job.id).state == "running"
    assert (Path(api.path) / "running" / layout.lock_file(job.id)).exists()  # its note stays


def test_recovery_takes_over_once_the_lease_has_expired_and_says_so(api):
    job, fence = held_by_other_host(api, lease_age=61.0)  # lease_timeout is 60 s here
    what, decision = api.transitions.recover(job.id, times.now(), 0.5)
    assert (what, decision.state) == ("worker lost", "pending")
    assert not fence.exists()
    (attempt,) = api.get(job.id).attempts
    assert attempt.error == "worker lost" and attempt.worker_id == OTHER
    assert attempt.detail is not None and f"lease of worker {OTHER} expired" in attempt.detail
    assert "server's clock" in attempt.detail


def test_a_worker_with_no_lease_left_is_gone(api):
    job, fence = held_by_other_host(api, lease_age=None)
    what, _ = api.transitions.recover(job.id, times.now(), 0.5)
    assert what == "worker lost" and not fence.exists()
    assert "gone" in (api.get(job.id).attempts[0].detail or "")


def test_a_stray_fence_of_a_dead_claim_is_removed_and_a_live_ones_kept(api):
    running = Path(api.path) / "running"
    other_lease(api, age=1.0)
    live = running / layout.fence_file("J1", 0, OTHER)
    live.touch()
    dead = running / layout.fence_file("J2", 0, "gonehost~0badf00d~9~00000009")
    dead.touch()
    assert sorted(api.jobs.strays()) == ["J1", "J2"]
    assert api.transitions.recover("J1", times.now(), 0.5) is None
    assert api.transitions.recover("J2", times.now(), 0.5) is None
    assert live.exists() and not dead.exists()


def test_cancel_asks_another_hosts_live_worker_instead_of_moving_its_job(api):
    job, fence = held_by_other_host(api, lease_age=1.0)
    done = threading.Event()
    result: list[object] = []

    def cancel() -> None:
        try:
            result.append(api.cancel([job.id], wait=0.3))
        except StateConflictError as exc:
            result.append(exc)
        done.set()

    threading.Thread(target=cancel, daemon=True).start()
    assert done.wait(10)
    assert (Path(api.path) / "running" / layout.cancel_file(job.id)).exists()
    assert api.get(job.id).state == "running" and fence.exists()


def test_cancel_of_a_job_whose_worker_is_gone_consumes_its_fence(api):
    job, fence = held_by_other_host(api, lease_age=120.0)
    (cancelled,) = api.cancel([job.id], wait=0)
    assert cancelled.state == "failed" and cancelled.last_error == "cancelled"
    assert not fence.exists()


# -- unique keys ---------------------------------------------------------------------------------


def test_a_unique_key_waits_for_another_hosts_exclusive_file_and_breaks_a_stale_one(api):
    keys = Path(api.path) / layout.KEYS
    keys.mkdir(exist_ok=True)
    excl = keys / (layout.key_file("k") + locks.EXCL)
    excl.touch()  # another host is deciding about key "k" right now
    got = threading.Event()

    def take() -> None:
        lock = locks.key_lock(api.store, "k")
        got.set()
        lock.release(remove=False)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    assert not got.wait(0.3)
    excl.unlink()  # it is done
    assert got.wait(5)
    thread.join(5)
    assert not excl.exists()  # ours, removed at release
    excl.touch()
    stale = time.time() - locks.KEY_MUTEX_STALE - 5
    os.utime(excl, (stale, stale))  # left by a process that died
    lock = locks.key_lock(api.store, "k")
    lock.release(remove=False)
    assert not excl.exists()
    assert locks.key_names(api.store) == [layout.key_file("k")]


def test_a_lapsed_hosts_job_is_taken_over_even_while_its_run_lock_is_held(api):
    """On a filesystem whose locks reach across hosts (NFSv4), a frozen host keeps its
    locks until the server gives up on it: its lease decides, not its lock."""
    job, fence = held_by_other_host(api, lease_age=1.0)
    held = locks.run_lock(api.store, job.id)  # the frozen host's lock, still held
    assert held is not None
    try:
        assert api.transitions.recover(job.id, times.now(), 0.5) is None  # its lease is live
        other_lease(api, age=61.0)
        what, decision = api.transitions.recover(job.id, times.now(), 0.5)
        assert (what, decision.state) == ("worker lost", "pending") and not fence.exists()
    finally:
        held.release(remove=False)
    # A job of this host whose lock is held is never taken: its worker is alive.
    api.add(["true"])
    claimed = claim_one(api)
    api.transitions.start(claimed, times.now())
    assert api.transitions.recover(claimed.job.id, times.now(), 0.5) is None
    claimed.lock.release(remove=False)


def test_a_job_being_settled_still_names_its_worker(api, monkeypatch):
    """A settle trades the fence for a ``.settle`` one, not removing it: until the job
    has moved, another host sees who holds it (the run lock's note alone could have
    been removed by another host's lost claim) and leaves it alone."""
    lease = leased(api)
    job = api.add(["true"])
    claimed = claim_one(api)
    api.transitions.start(claimed, times.now())
    running = Path(api.path) / "running"
    seen: list[list[str]] = []
    move = api.jobs.move

    def watching_move(*args, **kwargs):  # the moment between the fence's trade and the move
        seen.append(sorted(p.name for p in running.glob("*.fence")))
        return move(*args, **kwargs)

    monkeypatch.setattr(api.jobs, "move", watching_move)
    api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    assert seen == [[layout.fence_file(job.id, 1, lease.uid, settling=True)]]
    assert list(running.iterdir()) == []


def test_a_claim_lost_to_another_host_keeps_that_hosts_run_lock_file(api):
    """Two hosts' claims share running/ID.lock (flock does not reach across hosts): the
    loser must not remove the winner's file, which holds the winner's note."""
    job = api.add(["true"])
    entry = next(e for e in map(parse_pending_name, ls(Path(api.path), "pending")) if e)
    winner = api.transitions.claim(entry)
    assert winner is not None
    lock = Path(api.path) / "running" / layout.lock_file(job.id)
    winner.lock.release(remove=False)  # as seen from the other host: not locked
    assert api.transitions.claim(entry) is None  # the loser: its rename finds nothing
    assert lock.exists()
    assert api.jobs.own(job.id, ("pending", entry.name)) is None
    assert lock.exists()


def test_a_claim_is_decided_by_a_link_before_the_rename(api):
    """Two hosts' clients may both see their rename of one pending file succeed (a
    client that makes a rename of several requests): the claim is decided first by
    linking running/ID.claim, which the server gives to one of them only."""
    lease = leased(api)
    job = api.add(["true"])
    running = Path(api.path) / "running"
    other = running / layout.fence_file(job.id, 0, OTHER)
    other.touch()
    os.link(other, running / layout.claim_file(job.id))  # another host's claim, under way
    entry = next(e for e in map(parse_pending_name, ls(Path(api.path), "pending")) if e)
    assert api.transitions.claim(entry) is None
    assert ls(Path(api.path), "pending") == [entry.name]  # nothing moved
    assert not (running / layout.fence_file(job.id, 0, lease.uid)).exists()
    (running / layout.claim_file(job.id)).unlink()
    other.unlink()
    claimed = api.transitions.claim(entry)
    assert claimed is not None and (running / layout.claim_file(job.id)).exists()
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    assert list(running.iterdir()) == []


def test_a_fence_is_a_second_name_of_the_run_lock_file_or_a_file_of_its_own(api, monkeypatch):
    """Only a fence's name counts: it is made as a link to the run lock's file the
    claimer has just made (no new inode), and as an empty file of its own where that
    file is gone (another host's lost claim removed it)."""
    lease = leased(api)
    running = Path(api.path) / "running"
    first = api.add(["true"])
    claimed = claim_one(api)
    fence = running / layout.fence_file(first.id, 0, lease.uid)
    lock = running / layout.lock_file(first.id)
    assert fence.stat().st_ino == lock.stat().st_ino
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    assert ls(Path(api.path), "running") == []

    second = api.add(["true"])
    real_link = api.store.io.link

    def link_after_the_lock_went(src, dst):
        if src.endswith(layout.lock_file(second.id)):
            os.unlink(src)  # another host's lost claim, just now
        real_link(src, dst)

    monkeypatch.setattr(api.store.io, "link", link_after_the_lock_went)
    claimed = claim_one(api)
    fence = running / layout.fence_file(second.id, 0, lease.uid)
    assert fence.exists() and fence.stat().st_size == 0
    assert os.fstat(claimed.lock.fd).st_ino != fence.stat().st_ino
    api.transitions.start(claimed, times.now())
    api.transitions.settle(claimed, Outcome(exit_code=0), times.now(), 0.5)
    assert api.get(second.id).state == "done"
