"""The multi-host harness itself: hosts have their own identity, die, stop and resume
as a whole, can have a wrong clock; the NFS lab's two clients share one spool.

These check the simulation, not taskq's multi-host behaviour.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from .support import TASKQ, HostFactory, NfsLab, SharedSpool, pid_alive, wait_for

pytestmark = pytest.mark.hosts


def machine_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_hosts_have_their_own_hostname_boot_id_pids_and_shm(hosts: HostFactory) -> None:
    a, b = hosts(2)
    assert (a.name, b.name) == ("host-a", "host-b")
    for host in (a, b):
        assert host.run(["hostname"], check=True).stdout.strip() == host.name
        assert host.run(["cat", "/proc/sys/kernel/random/boot_id"], check=True).stdout.strip() == host.boot_id
        # Its own PID namespace: PID 1 is the host's init, and a command sees only the
        # host's few processes (init, the sh and its ls).
        assert "waitpid" in host.run(["cat", "/proc/1/cmdline"], check=True).stdout
        assert len(host.run(["sh", "-c", "ls /proc | grep '^[0-9]'"], check=True).stdout.split()) <= 4
        # taskq inside the host is this installation's.
        assert host.run(["sh", "-c", "command -v taskq"], check=True).stdout.strip() == TASKQ
    assert a.boot_id != b.boot_id
    assert machine_boot_id() not in (a.boot_id, b.boot_id)

    a.run(["sh", "-c", "echo x >/dev/shm/taskq-harness"], check=True)
    assert a.run(["cat", "/dev/shm/taskq-harness"], check=True).stdout == "x\n"
    assert b.run(["test", "-e", "/dev/shm/taskq-harness"]).returncode == 1
    assert not Path("/dev/shm/taskq-harness").exists()


def test_a_spawned_process_dies_with_its_host(hosts: HostFactory) -> None:
    (host,) = hosts(1)
    proc = host.spawn(["sleep", "600"])
    assert pid_alive(proc.pid) and proc.running
    assert proc.ns_pid is not None and proc.ns_pid > 1
    assert host.outer_pid(proc.ns_pid) == proc.pid
    # A process orphaned inside the host (here by `&` and exit) goes on running there.
    orphan_ns = int(host.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"], check=True).stdout)
    orphan = wait_for(lambda: host.outer_pid(orphan_ns), message="the orphan's outer PID")

    host.kill()

    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert not pid_alive(proc.pid) and not pid_alive(orphan)
    assert not host.alive and host.processes() == []
    with pytest.raises(RuntimeError, match="dead"):
        host.run(["true"])


def test_the_hosts_init_reaps_orphans(hosts: HostFactory) -> None:
    # An orphan that ends must not stay a zombie: its PID would look alive.
    (host,) = hosts(1)
    orphan_ns = int(host.run(["sh", "-c", "sleep 0.2 >/dev/null 2>&1 & echo $!"], check=True).stdout)
    wait_for(lambda: host.run(["test", "-e", f"/proc/{orphan_ns}"]).returncode == 1,
             timeout=15, message="the orphan to be reaped")


def test_a_rebooted_host_has_a_new_boot_id_and_no_processes(hosts: HostFactory) -> None:
    (host,) = hosts(1)
    proc = host.spawn(["sleep", "600"])
    old_boot_id = host.boot_id
    host.reboot()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert host.alive and host.boot_id != old_boot_id
    assert host.run(["cat", "/proc/sys/kernel/random/boot_id"], check=True).stdout.strip() == host.boot_id
    assert host.run(["hostname"], check=True).stdout.strip() == host.name
    # Nothing but unshare and the new init.
    assert len(host.processes()) == 2


def test_freeze_stops_every_process_of_a_host_and_thaw_resumes_them(hosts: HostFactory, tmp_path: Path) -> None:
    (host,) = hosts(1)
    ticks = tmp_path / "ticks"
    ticks.touch()
    # One byte per tick, appended by a process on the host to a file outside it.
    proc = host.spawn(["sh", "-c", f"while :; do printf . >>{ticks}; sleep 0.01; done"])

    def size() -> int:
        return ticks.stat().st_size

    wait_for(lambda: size() >= 3, message="the loop to tick")
    host.freeze()
    assert host.frozen
    frozen_at = size()
    # A negative: nothing may happen for a while (0.5 s = dozens of ticks when running).
    time.sleep(0.5)
    assert size() == frozen_at
    assert pid_alive(proc.pid) and proc.running
    with pytest.raises(RuntimeError, match="frozen"):
        host.run(["true"])

    host.thaw()
    assert not host.frozen
    wait_for(lambda: size() >= frozen_at + 3, message="the loop to tick again")


def test_a_frozen_host_can_be_killed(hosts: HostFactory) -> None:
    (host,) = hosts(1)
    proc = host.spawn(["sleep", "600"])
    host.freeze()
    host.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert not host.alive and not host.frozen


def test_a_host_with_a_skewed_clock(hosts: HostFactory, tmp_path: Path) -> None:
    right = hosts.add()
    ahead = hosts.add(clock_offset="+10m", spool=tmp_path / "spool")
    behind = hosts.add(clock_offset=-3600)
    assert ahead.clock_offset_seconds == 600

    for host, expected in ((right, 0), (ahead, 600), (behind, -3600)):
        before = time.time()
        date = int(host.run(["date", "+%s"], check=True).stdout)
        after = time.time()
        # `date` rounds down to the second.
        assert before + expected - 1 <= date <= after + expected, (host.name, date, before, after)
    now = float(ahead.run([sys.executable, "-c", "import time; print(time.time())"], check=True).stdout)
    assert abs(now - time.time() - 600) < 5

    # taskq works under libfaketime (a worker runs threads): a job added and run there.
    job = ahead.run(["taskq", "add", "--", "true"], check=True).stdout.strip()
    ahead.run(["taskq", "work", "--burst"], check=True)
    assert (tmp_path / "spool" / "done" / f"{job}.json").exists()


def test_nfs_lab_a_file_written_through_a_is_read_through_b(nfs_lab: NfsLab, shared_spool: SharedSpool) -> None:
    a, b, server = shared_spool
    a.mkdir()
    (a / "x").write_text("hello\n")
    assert (b / "x").read_text() == "hello\n"
    assert (server / "x").read_text() == "hello\n"
    assert os.path.ismount(nfs_lab[0]) and os.path.ismount(nfs_lab[1])


def test_nfs_lab_a_job_added_on_host_a_runs_on_host_b(shared_spool: SharedSpool, hosts: HostFactory) -> None:
    host_a, host_b = hosts(2, spool_paths=shared_spool.clients)
    job = host_a.run(["taskq", "add", "--spool", shared_spool.a, "--", "hostname"], check=True).stdout.strip()
    host_b.run(["taskq", "work", "--burst", "--spool", shared_spool.b], check=True)

    assert (shared_spool.server / "done" / f"{job}.json").exists()
    assert "done:      1" in host_a.run(["taskq", "status"], check=True).stdout
    assert "host-b" in host_a.run(["taskq", "logs", job], check=True).stdout


def test_nfs_lab_a_cut_off_host_blocks_until_reconnected(nfs_lab: NfsLab, shared_spool: SharedSpool,
                                                          hosts: HostFactory) -> None:
    (host_a,) = hosts(1)
    shared_spool.a.mkdir()
    nfs_lab.cut_off("A")
    proc = host_a.spawn(["sh", "-c", f"echo x >{shared_spool.a / 'f'}"])
    # A negative: the write must not get through while A is cut off.
    time.sleep(0.5)
    assert proc.running and not (shared_spool.server / "f").exists()
    nfs_lab.reconnect("A")
    assert proc.wait(timeout=20) == 0
    assert (shared_spool.server / "f").read_text() == "x\n"
