"""Fixtures of the multi-host tests: simulated hosts (``hosts``) and an NFS server with
two clients (``nfs_lab``, ``shared_spool``). The classes behind them are in support.py.

Both need root, and skip the test with the reason when this machine cannot play hosts
(no namespaces, no cgroup-v1 freezer) or run the NFS lab (no FUSE, no lab scripts).
Tests that use them are marked ``hosts``: ``pytest -m 'not hosts'`` leaves them out.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import HostFactory, NfsLab, SharedSpool, host_support_problem, spool_name

#: The nfs-lab folder (its setup and lab scripts); by default the one beside the repository.
NFS_LAB = Path(os.environ.get("TASKQ_NFS_LAB") or Path(__file__).resolve().parents[2] / ".." / "shared" / "nfs-lab")
#: The tests' own lab directory and ports, apart from the README's defaults
#: (/var/tmp/taskq-nfs-lab, 12049), so that a lab started by hand keeps running beside them.
NFS_LAB_DIR = Path(os.environ.get("TASKQ_NFS_LAB_DIR", "/var/tmp/taskq-nfs-lab-tests"))
NFS_LAB_PORT = int(os.environ.get("TASKQ_NFS_LAB_PORT", "12149"))
#: How long a test session waits for another one to finish with the lab directory.
NFS_LAB_LOCK_WAIT = 120.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hosts: simulates several hosts (namespaces, cgroup freezer) or NFS clients; needs root")


#: Fixtures that need root and play hosts or run the NFS lab: a test using one is marked ``hosts``.
_HOST_FIXTURES = {"hosts", "nfs_lab", "shared_spool"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HOST_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.hosts)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[HostFactory]:
    """``hosts(n, spool_paths=None, *, clock_offsets=None, env=None) -> list[Host]``: *n*
    new hosts (host-a, host-b, ...), each with its files in ``tmp_path/hosts/NAME``;
    ``hosts.add(name=None, *, spool=None, clock_offset=None, env=None) -> Host`` makes
    one. Every host is killed and cleaned up at teardown. See support.Host."""
    problem = host_support_problem()
    if problem:
        pytest.skip(problem)
    factory = HostFactory(tmp_path / "hosts")
    try:
        yield factory
    finally:
        factory.close_all()


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


@pytest.fixture(scope="session")
def nfs_lab() -> Iterator[NfsLab]:
    """The NFS lab for the whole session: a list [mount A, mount B] of two NFS clients
    of one server (two hosts' views of one share), with ``.export`` (the server's side),
    ``.cut_off(i)``/``.reconnect(i)`` and ``.client_pid(i)``. See support.NfsLab."""
    if os.geteuid() != 0:
        pytest.skip("NFS lab: needs root")
    lab = NFS_LAB.resolve()
    if not (lab / "lab").is_file() or not (lab / "setup").is_file():
        pytest.skip(f"NFS lab: no nfs-lab scripts in {lab} (set TASKQ_NFS_LAB to the folder)")
    # Only the settings chosen here: NFS_LAB_* of a lab started by hand must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NFS_LAB_")}
    env.update(NFS_LAB_DIR=str(NFS_LAB_DIR), NFS_LAB_PORT=str(NFS_LAB_PORT))
    NFS_LAB_DIR.mkdir(parents=True, exist_ok=True)

    def run(*argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    with open(NFS_LAB_DIR / "tests.lock", "w") as lock:
        # One test session at a time uses this lab directory and its ports; the lock
        # goes with the process, so a session killed midway does not keep it.
        deadline = time.monotonic() + NFS_LAB_LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"NFS lab: {NFS_LAB_DIR} is in use by another test session")
                time.sleep(0.5)
        # Installs packages and builds fuse-nfs the first time (about half a minute).
        setup = run(str(lab / "setup"), timeout=1800)
        if setup.returncode != 0:
            pytest.skip(f"NFS lab: {_last_line(setup)}")
        # Holding the lock, a lab still running in our directory was left by a session
        # that was killed before its teardown: stop it (`start` refuses a running lab).
        if run(str(lab / "lab"), "status").returncode == 0:
            run(str(lab / "lab"), "stop")
        start = run(str(lab / "lab"), "start", "2")
        if start.returncode != 0:
            pytest.skip(f"NFS lab: {_last_line(start)}")
        nfs = NfsLab([Path(line) for line in start.stdout.split()], NFS_LAB_DIR, lab / "lab", env)
        try:
            yield nfs
        finally:
            nfs.reconnect_all()
            stop = run(str(lab / "lab"), "stop")
            if stop.returncode != 0:
                # Not a test failure, but leaves state behind: say so in the output.
                print(f"NFS lab: stop failed: {_last_line(stop)}")


@pytest.fixture
def shared_spool(nfs_lab: NfsLab, request: pytest.FixtureRequest) -> Iterator[SharedSpool]:
    """One spool directory for this test on the NFS lab (not created): ``(a, b,
    server)`` = its path through host A's mount, through host B's, and on the server's
    side; ``.clients`` is ``(a, b)``. A client the test cut off is reconnected after."""
    request.node.taskq_nfs_lab = nfs_lab  # for pytest_runtest_makereport below
    problem = nfs_lab.broken()
    if problem:
        # An earlier test's client died (see NfsLab.broken): a new lab, not a cascade of failures.
        print(f"NFS lab: restarting it ({problem})")
        nfs_lab.restart()
    name = spool_name(request.node.name)
    try:
        yield SharedSpool(nfs_lab[0] / name, nfs_lab[1] / name, nfs_lab.export / name)
    finally:
        nfs_lab.reconnect_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test on the NFS lab that failed while a lab client died is skipped, saying so:
    the fuse-nfs client has been seen to segfault under many concurrent requests
    (dmesg: ``fuse-nfs[PID]: segfault ... in libnfs``), and what the test saw through
    a dead client ("Transport endpoint is not connected") says nothing of taskq."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    lab = getattr(item, "taskq_nfs_lab", None)
    if report.when == "call" and report.failed and lab is not None:
        problem = lab.broken()
        if problem:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0,
                               f"Skipped: the NFS lab broke during this test ({problem}; a fuse-nfs client "
                               "crashed? see dmesg): not a result about taskq")
