"""Power cuts: every acknowledged job survives whole.

The spool lives on LazyFS, a FUSE filesystem that keeps file data in its own cache
until fsync and drops every unsynced byte on demand. Producers add jobs (each `add`
that exited 0 is recorded) while workers claim, run and settle others; then everything
is frozen (SIGSTOP), the power is cut (the cache is dropped), the processes killed and
the filesystem unmounted. On what is left, every acknowledged job must be in exactly
one state directory with a complete, valid record, and a worker must then drain them
all. Needs root, /dev/fuse and a LazyFS binary named by ``TASKQ_LAZYFS``; skipped
otherwise (README, "How it is tested").

Known, not yet explained: in about one round in ten, the job a worker was starting
at the cut is left as an empty ``running/ID.json`` (seen with this code and with the
code before the transition engine; LazyFS itself also aborts now and then under this
load). Every other acknowledged job has survived every cut so far.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from workerutil import STATES

LAZYFS = os.environ.get("TASKQ_LAZYFS", "")
#: Seconds a round may take up to the cut (it takes a few): beyond, LazyFS has hung.
WATCHDOG = 90.0

pytestmark = pytest.mark.skipif(
    not (LAZYFS and os.access(LAZYFS, os.X_OK) and os.geteuid() == 0 and os.path.exists("/dev/fuse")),
    reason="power cuts need root, /dev/fuse and TASKQ_LAZYFS=path of a LazyFS binary",
)

CONFIG = """[faults]
fifo_path="{ctl}/faults.fifo"
fifo_path_completed="{ctl}/done.fifo"
[cache]
apply_eviction=false
[cache.simple]
custom_size="1gb"
blocks_per_page=1
[filesystem]
log_all_operations=false
logfile="{ctl}/lazyfs.log"
"""


class LazyFS:
    """A LazyFS mount of *root* at *mnt*, with its fault FIFOs in *ctl*."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root, self.mnt, self.ctl = base / "root", base / "mnt", base / "ctl"
        for d in (self.root, self.mnt, self.ctl):
            d.mkdir(parents=True)
        os.mkfifo(self.ctl / "faults.fifo")
        os.mkfifo(self.ctl / "done.fifo")
        (self.ctl / "lazyfs.toml").write_text(CONFIG.format(ctl=self.ctl))
        # LazyFS opens the completion FIFO when it starts: keep a reader open.
        self.done = os.open(self.ctl / "done.fifo", os.O_RDWR | os.O_NONBLOCK)
        self.hung = False
        self.output = open(self.ctl / "lazyfs.out", "wb")
        self.proc = subprocess.Popen(
            [LAZYFS, str(self.mnt), "--config-path", str(self.ctl / "lazyfs.toml"),
             "-o", "allow_other", "-o", "modules=subdir", "-o", f"subdir={self.root}", "-f"],
            stdout=self.output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mnt):
            assert self.proc.poll() is None, f"LazyFS exited: {self.tail()}"
            assert time.monotonic() < deadline, "LazyFS did not mount"
            time.sleep(0.05)

    def cut(self) -> None:
        """The power cut: drop every byte not fsynced; wait for LazyFS to confirm."""
        assert self.proc.poll() is None, f"LazyFS died before the cut: {self.tail()}"
        fd = os.open(self.ctl / "faults.fifo", os.O_WRONLY | os.O_NONBLOCK)  # ENXIO, not a hang
        try:
            os.write(fd, b"lazyfs::clear-cache\n")
        finally:
            os.close(fd)
        deadline, seen = time.monotonic() + 30, b""
        while b"finished::clear-cache" not in seen:
            assert time.monotonic() < deadline, "no confirmation of the cut"
            try:
                seen += os.read(self.done, 4096)
            except BlockingIOError:
                time.sleep(0.05)

    def abort(self) -> None:
        """The watchdog's way out when LazyFS itself hangs (it has deadlocked with every
        thread in a futex wait): kill it and detach the mount, so that processes stuck
        in its requests get an error instead of waiting for ever."""
        self.hung = True
        self.proc.kill()
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def tail(self) -> str:
        return (self.ctl / "lazyfs.out").read_text(errors="replace")[-800:]

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.done)
        self.output.close()


PRODUCER = """
import json, os, sys, taskq
spool, out = sys.argv[1], sys.argv[2]
api = taskq.Spool(spool)
with open(out, "a") as log:
    for i in range(int(sys.argv[3])):
        if i % 10 == 9:
            ids = [j.id for j in api.add_batch([{"command": ["true"]}, {"command": ["sh", "-c", "exit 0"]}])]
        else:
            ids = [api.add(["sh", "-c", "sleep 0.005"], payload={"n": i, "pad": "x" * 300}).id]
        log.write("".join(i + "\\n" for i in ids))  # acknowledged: add returned
        log.flush()
"""


def records(root: Path) -> dict[str, list[str]]:
    """job id -> the state directories holding it; every job file must parse whole."""
    found: dict[str, list[str]] = {}
    for state in STATES:
        for name in os.listdir(root / state):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            data = json.loads((root / state / name).read_bytes())  # raises if torn or empty
            assert isinstance(data, dict) and data.get("command"), (state, name, data)
            found.setdefault(data["id"], []).append(state)
    return found


@pytest.mark.parametrize("round_", range(3))
def test_every_acknowledged_job_survives_a_power_cut(tmp_path, taskq_exe, round_):
    # A short path of its own: LazyFS ignores a --config-path as long as pytest's.
    base = Path(tempfile.mkdtemp(prefix="tqpc."))
    fs = LazyFS(base)
    spool = fs.mnt / "spool"
    # Retries without backoff: a job whose attempt the cut interrupted runs again in
    # the drain below instead of waiting for its retry time. Written on the backing
    # directory, so the cut cannot take it.
    (fs.root / "spool").mkdir(mode=0o700)
    (fs.root / "spool" / "taskq.toml").write_text("[defaults]\nbackoff = 0\n")
    acked = tmp_path / "acked.txt"
    env = {**os.environ, "TASKQ_SPOOL": str(spool)}
    procs: list[subprocess.Popen[bytes]] = []
    # LazyFS, not taskq, has been seen to deadlock: fail then, rather than hang.
    watchdog = threading.Timer(WATCHDOG, fs.abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        subprocess.run([taskq_exe, "add", "--", "true"], env=env, check=True, stdout=subprocess.DEVNULL)
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-c", PRODUCER, str(spool), str(acked), "1500"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([taskq_exe, "work", "-c", "2"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(2.0 + round_)
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)  # nothing runs between the cut and the kill
        fs.cut()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        watchdog.cancel()
        fs.unmount()
    assert not fs.hung, f"LazyFS hung (killed after {WATCHDOG:g}s): {fs.tail()}"
    root = fs.root / "spool"
    acknowledged = set(acked.read_text().split())
    assert len(acknowledged) > 50, "too few jobs were added to test anything"
    found = records(root)
    missing = acknowledged - found.keys()
    assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {sorted(missing)[:3]}"
    doubled = {job_id: states for job_id, states in found.items() if len(states) > 1}
    assert not doubled, f"jobs in two state directories: {list(doubled.items())[:3]}"
    at_cut = Counter(states[0] for job_id, states in found.items() if job_id in acknowledged)
    print(f"[powercut] round={round_} acknowledged={len(acknowledged)} at_cut={dict(at_cut)}")
    # What the cut left is a working spool: a worker recovers and drains it.
    drained = subprocess.run([taskq_exe, "work", "--burst", "-c", "2", "--spool", str(root)],
                             capture_output=True, text=True, timeout=600)
    assert drained.returncode == 0, drained.stderr[-2000:]
    after = records(root)
    assert all(states == ["done"] for job_id, states in after.items() if job_id in acknowledged), \
        {job_id: s for job_id, s in after.items() if s != ["done"]}
    shutil.rmtree(base, ignore_errors=True)
