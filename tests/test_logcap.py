"""Capped logs (``log_max``): each attempt's output in the job's log is cut to its last
``log_max`` bytes, after one marker line with the exact number of bytes dropped.

Three layers: the pure arithmetic (taskq.logcap), the log writer and reader on real
files (taskq.spool.joblog: holes, cuts, readers that follow across them, faults), and
the installed ``taskq`` (taskq.toml, a job that prints far more than the cap, ``yes``
stopped by its timeout, ``logs --follow`` while the log is cut, children that hold the
output pipe, a worker killed while its job writes).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from taskq import logcap
from taskq.config import Config, parse_config
from taskq.errors import ValidationError
from taskq.logcap import Cut, CutMap, LogMap
from taskq.spool.fileio import FileIO
from taskq.spool.joblog import JobLog, LogReader
from taskq.spool.store import Store
from workerutil import alive, assert_one_line_error, files, record, sh, strays, wait_for, wait_state, workers

__all__ = ["strays", "workers"]  # fixtures

MiB = 1024 * 1024
HEADER = "=== taskq: attempt 1 started 2026-01-01T00:00:00.000Z on host:1 ==="
MARKER_RE = re.compile(rb"^=== taskq: (\d+) bytes of output dropped \(log_max (\S+)\) ===$", re.M)


def numbered(start: int, count: int) -> bytes:
    """Lines ``%09d\\n`` numbered from *start*: output whose every byte says where it is."""
    return b"".join(b"%09d\n" % i for i in range(start, start + count))


# -- pure: taskq.logcap ------------------------------------------------------------------


@pytest.mark.parametrize("size, text", [
    (16 * MiB, "16MiB"), (MiB, "1MiB"), (1536 * 1024, "1536KiB"), (1024, "1KiB"), (1000, "1000B"),
    (1, "1B"), (3 << 30, "3GiB"), (1 << 40, "1TiB"),
])
def test_format_size_reads_back_as_the_same_size(size, text):
    from taskq.config import parse_size

    assert logcap.format_size(size) == text
    assert parse_size(text, "x") == size


def test_marker_names_the_exact_count_and_the_cap():
    assert logcap.marker(12345, MiB) == "=== taskq: 12345 bytes of output dropped (log_max 1MiB) ==="
    assert MARKER_RE.match(logcap.marker(7, 1000).encode()).groups() == (b"7", b"1000B")


def test_trims_wait_for_their_slack():
    # Punching holes is cheap: a quarter of the cap, at least 1 MiB.
    assert logcap.punch_slack(16 * MiB) == 4 * MiB
    assert logcap.punch_slack(10) == logcap.MIN_SLACK
    # A cut copies before + log_max bytes: it waits for at least as much new output.
    assert logcap.copy_slack(16 * MiB, 100) == 16 * MiB
    assert logcap.copy_slack(MiB, 40 * MiB) == 40 * MiB
    assert logcap.copy_slack(10, 0) == logcap.MIN_SLACK
    assert logcap.hole_span(16 * MiB, 0) == logcap.HOLE_SPAN
    assert logcap.hole_span(1 << 30, 0) == 16 << 30


def test_a_file_never_cut_maps_every_offset_to_itself():
    assert CutMap().to_file(1234) == 1234 and CutMap().to_virtual(1234) == 1234


def test_cut_map_between_the_uncut_log_and_the_file():
    # Uncut log: 100 bytes of headers, then 1000 bytes of output of which the last 300
    # are kept after a 40-byte marker, then 20 more bytes of taskq lines.
    cuts = CutMap((Cut(at=100, mark=40, start=100, kept=800),))
    assert cuts.to_file(50) == 50  # before the output: unchanged
    assert cuts.to_file(100) == 100  # at the output's start: the marker comes next
    assert cuts.to_file(799) == 100  # inside what was dropped: the marker
    assert cuts.to_file(800) == 140  # the first kept byte is right after the marker
    assert cuts.to_file(1100) == 440
    assert cuts.to_virtual(140) == 800 and cuts.to_virtual(440) == 1100
    assert cuts.to_virtual(100) == 800  # the marker reads as the first kept byte
    for virtual in (0, 99, 800, 950, 1100, 1120):
        assert cuts.to_virtual(cuts.to_file(virtual)) == virtual


def test_cut_map_with_two_attempts_cut():
    first = Cut(at=70, mark=60, start=70, kept=5000)
    cuts = CutMap((first,)).with_cut(Cut(at=5000, mark=61, start=8000, kept=20000))
    assert cuts.to_file(5000) == 130  # first kept byte of attempt 1
    assert cuts.to_file(7999) == 130 + 2999  # end of attempt 1 (+ the header of attempt 2)
    assert cuts.to_file(8000) == 5000  # attempt 2's output: its marker
    assert cuts.to_file(20001) == 5062
    # Cutting attempt 2 again replaces its cut, and keeps attempt 1's.
    again = cuts.with_cut(Cut(at=5000, mark=61, start=8000, kept=30000))
    assert again.cuts == (first, Cut(5000, 61, 8000, 30000))


def test_log_map_round_trip_and_which_file_it_is_about():
    old, new = CutMap(), CutMap((Cut(10, 50, 10, 999),))
    data = LogMap(7, new, 6, old).encode()
    back = LogMap.decode(data)
    assert back == LogMap(7, new, 6, old)
    assert back.for_inode(7) == new and back.for_inode(6) == old and back.for_inode(5) is None
    for junk in (b"", b"{", b"[]", b'{"ino": "x", "cuts": []}', b'{"cuts": []}', b'{"ino": 1, "cuts": [[1]]}'):
        assert LogMap.decode(junk) is None


# -- config --------------------------------------------------------------------------------


def test_log_max_defaults_to_16_mib():
    assert parse_config(None).log_max == 16 * MiB
    assert Config().log_max_for("anything") == 16 * MiB


def test_log_max_in_defaults_and_per_task_type():
    cfg = parse_config(b'[defaults]\nlog_max = "1MiB"\nmax_attempts = 2\n'
                       b'[tasks.big]\ncommand = "true"\nlog_max = 0\n'
                       b'[tasks.small]\ncommand = ["true"]\nlog_max = 4096\n')
    assert cfg.log_max == MiB
    assert cfg.log_max_for(None) == MiB and cfg.log_max_for("other") == MiB
    assert cfg.log_max_for("big") == 0 and cfg.log_max_for("small") == 4096
    # A setting, not a job field: never copied into jobs.
    assert "log_max" not in cfg.defaults and cfg.defaults == {"max_attempts": 2}
    assert all("log_max" not in table for table in cfg.tasks.values())


@pytest.mark.parametrize("table, value", [
    ("[defaults]", '"lots"'), ("[defaults]", "-1"), ("[defaults]", "1.5"), ("[defaults]", "true"),
    ("[tasks.big]", '"16 parsecs"'), ("[tasks.big]", "[1]"),
])
def test_a_bad_log_max_is_an_error_naming_the_key(table, value):
    with pytest.raises(ValidationError) as info:
        parse_config(f'{table}\nlog_max = {value}\n'.encode())
    message = str(info.value)
    assert f"{table}: log_max: invalid size" in message and "\n" not in message


def test_an_unknown_key_lists_log_max_as_allowed():
    with pytest.raises(ValidationError, match=r"allowed: .*log_max"):
        parse_config(b"[defaults]\nlog_maximum = 3\n")


def test_add_refuses_a_spool_whose_log_max_is_bad(taskq, empty_spool):
    (empty_spool / "taskq.toml").write_text('[defaults]\nlog_max = "huge"\n')
    proc = taskq("add", "--", "true")
    assert_one_line_error(proc, 2, "log_max", "huge")
    assert files(empty_spool, "pending") == [] and files(empty_spool, "tmp") == []


# -- the writer and the reader on real files -----------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "spool", fsync=False)
    s.create()
    return s


@pytest.fixture(params=["holes", "cuts", "holes-and-cuts"])
def trim(request, monkeypatch) -> str:
    """Run with holes punched (where the filesystem can), with cuts only (as on a
    filesystem that cannot punch holes), and with holes and a cut every 256 KiB of
    output (as every 1 GiB, to keep a sparse log's size in bounds)."""
    if request.param == "cuts":
        monkeypatch.setattr(FileIO, "punch_hole", _cannot_punch)
    if request.param == "holes-and-cuts":
        monkeypatch.setattr(logcap, "HOLE_SPAN", 256 * 1024)
        monkeypatch.setattr(logcap, "MIN_SLACK", 64 * 1024)
    return request.param


def _cannot_punch(self: FileIO, fd: int, offset: int, length: int) -> None:
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


def run_output(log: JobLog, chunks: list[bytes], header: str = HEADER) -> None:
    log.line(header)
    log.begin_output()
    for chunk in chunks:
        log.write(chunk)
    log.end_output()


def split(data: bytes, sizes: tuple[int, ...] = (1, 4096, 65536, 1000003, 777)) -> list[bytes]:
    """*data* in chunks of varied sizes (as a pipe hands them over)."""
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i:i + n])
        i, k = i + n, k + 1
    return out


def test_output_far_over_the_cap_keeps_exactly_its_end(store, trim):
    output = numbered(0, 2 * MiB)  # 20 MiB
    log = JobLog(store, "j1", MiB)
    run_output(log, split(output))
    log.close()
    data = Path(store.log_path("j1")).read_bytes()
    dropped = len(output) - MiB
    assert data == (HEADER + "\n" + logcap.marker(dropped, MiB) + "\n").encode() + output[-MiB:]
    assert log.dropped == dropped and log.lost == 0
    assert files(Path(store.root), "tmp") == []


def test_output_under_the_cap_is_left_as_it_is(store, trim):
    output = numbered(0, 1000)
    log = JobLog(store, "j1", MiB)
    run_output(log, split(output))
    log.close()
    assert Path(store.log_path("j1")).read_bytes() == (HEADER + "\n").encode() + output
    assert not os.path.exists(Path(store.root) / "logs" / "j1.cuts")


def test_output_just_over_the_cap_drops_the_excess(store, trim):
    output = numbered(0, 1000)
    log = JobLog(store, "j1", len(output) - 3)
    run_output(log, [output])
    log.close()
    assert Path(store.log_path("j1")).read_bytes() == (
        (HEADER + "\n" + logcap.marker(3, len(output) - 3) + "\n").encode() + output[3:])


def test_output_written_without_begin_output_is_capped_after_the_header(store):
    """A runner that only writes (as a test's fake one does) gets the same log."""
    output = numbered(0, 300_000)
    log = JobLog(store, "j1", MiB)
    log.line(HEADER)
    for chunk in split(output):
        log.write(chunk)
    log.end_output()
    log.end_output()  # a second end changes nothing
    log.close()
    assert Path(store.log_path("j1")).read_bytes() == (
        (HEADER + "\n" + logcap.marker(len(output) - MiB, MiB) + "\n").encode() + output[-MiB:])


def test_log_reader_of_an_unknown_job(tmp_path):
    import taskq
    from taskq.errors import JobNotFoundError

    spool = taskq.Spool(tmp_path / "spool")
    spool.add(["true"])
    with pytest.raises(JobNotFoundError):
        spool.log_reader("nosuchjob")


def test_log_max_0_keeps_everything(store):
    output = numbered(0, 300_000)
    log = JobLog(store, "j1", 0)
    assert not log.capped
    run_output(log, split(output))
    log.close()
    assert Path(store.log_path("j1")).read_bytes() == (HEADER + "\n").encode() + output


def test_each_attempt_is_capped_on_its_own(store, trim):
    cap = 100_000
    first, second = numbered(0, 300_000), numbered(500_000, 200_000)
    for n, output in ((1, first), (2, second)):
        log = JobLog(store, "j1", cap)
        run_output(log, split(output), header=f"=== taskq: attempt {n} ===")
        log.line("=== taskq: exit status 1 ===")
        log.close()
    expected = b"".join(
        f"=== taskq: attempt {n} ===\n{logcap.marker(len(out) - cap, cap)}\n".encode() + out[-cap:]
        + b"=== taskq: exit status 1 ===\n"
        for n, out in ((1, first), (2, second)))
    assert Path(store.log_path("j1")).read_bytes() == expected


def test_the_disk_holds_little_more_than_the_cap_while_output_runs(store):
    """With holes, the blocks of a running attempt's log stay near log_max + slack,
    however much it prints (where the filesystem can punch holes)."""
    log = JobLog(store, "j1", MiB)
    log.line(HEADER)
    log.begin_output()
    chunk = b"y\n" * 32768
    most = 0
    for _ in range(40 * 16):  # 40 MiB
        log.write(chunk)
        most = max(most, os.fstat(log.fd).st_blocks * 512)
    if os.fstat(log.fd).st_size < 40 * MiB:
        pytest.skip("this filesystem cannot punch holes: cuts only (tested beside)")
    assert most <= MiB + logcap.punch_slack(MiB) + 2 * len(chunk) + 64 * 1024
    log.end_output()
    log.close()
    assert os.path.getsize(store.log_path("j1")) < MiB + 200


def test_cuts_only_bound_the_log_to_the_cap_and_its_slack(store, monkeypatch):
    monkeypatch.setattr(FileIO, "punch_hole", _cannot_punch)
    log = JobLog(store, "j1", MiB)
    log.line(HEADER)
    log.begin_output()
    most = 0
    for _ in range(40 * 16):
        log.write(b"y\n" * 32768)
        most = max(most, os.fstat(log.fd).st_size)
    assert most <= MiB + logcap.copy_slack(MiB, 100) + 65536 + 200
    log.end_output()
    log.close()


def test_taskq_lines_survive_every_trim(store, trim):
    log = JobLog(store, "j1", 50_000)
    log.line("=== taskq: attempt 1 ===")
    log.begin_output()
    for chunk in split(numbered(0, 600_000)):
        log.write(chunk)
    log.end_output()
    log.line("=== taskq: timed out ===")
    log.close()
    lines = Path(store.log_path("j1")).read_bytes().split(b"\n")
    assert lines[0] == b"=== taskq: attempt 1 ==="
    assert MARKER_RE.match(lines[1])
    assert lines[-2:] == [b"=== taskq: timed out ===", b""]


def read_all(reader: LogReader) -> bytes:
    return reader.read()


def check_followed(text: bytes, final: bytes) -> None:
    """What a reader printed while the log was trimmed: never a NUL byte, every numbered
    line in order, a jump only at a marker line (the lines either side of it may be
    cut short: bytes are dropped, not lines), and it ends as the log ends."""
    assert b"\0" not in text
    assert text.endswith(final[-30_000:])
    lines = text.split(b"\n")[:-1]
    previous = None
    for n, line in enumerate(lines):
        if line.startswith(b"=== taskq: "):
            if not line.startswith(b"=== taskq: attempt"):
                previous = None  # dropped output: numbering goes on further
            continue
        near_marker = any(lines[k].startswith(b"=== taskq: ") and b"dropped" in lines[k]
                          for k in (n - 1, n + 1) if 0 <= k < len(lines))
        if near_marker and len(line) != 9:
            continue
        assert re.fullmatch(rb"\d{9}", line), (n, line)
        number = int(line)
        assert previous is None or number == previous + 1, (previous, number)
        previous = number


@pytest.mark.parametrize("every", [1, 7, 1000])
def test_a_reader_follows_the_log_across_trims(store, trim, every):
    """A reader reading after every write, now and then, or only at the end: nothing
    garbled, nothing repeated, and what it printed ends as the log ends."""
    log = JobLog(store, "j1", 200_000)
    reader = LogReader(store, "j1")
    got = []
    log.line(HEADER)
    log.begin_output()
    for n, chunk in enumerate(split(numbered(0, 500_000), (65536, 4096, 300_001, 10))):
        log.write(chunk)
        if n % every == 0:
            got.append(reader.read())
    log.end_output()
    got.append(reader.read())
    got.append(reader.read())
    assert got[-1] == b""
    log.close()
    final = Path(store.log_path("j1")).read_bytes()
    text = b"".join(got)
    check_followed(text, final)
    if every == 1000:  # read once at the start, once at the end: the final log, from its marker
        assert text.startswith((HEADER + "\n").encode())


def test_a_reader_that_keeps_up_prints_everything(store):
    log = JobLog(store, "j1", MiB)
    reader = LogReader(store, "j1")
    output = numbered(0, 100_000)
    got = []
    log.line(HEADER)
    log.begin_output()
    for chunk in split(output, (4096,)):
        log.write(chunk)
        got.append(reader.read())
    log.end_output()
    got.append(reader.read())
    log.close()
    assert b"".join(got) == (HEADER + "\n").encode() + output


def test_a_reader_during_a_run_skips_holes_with_a_marker(store):
    log = JobLog(store, "j1", MiB)
    log.line(HEADER)
    log.begin_output()
    for chunk in split(numbered(0, 1_000_000), (65536,)):
        log.write(chunk)
    text = LogReader(store, "j1").read()
    if os.fstat(log.fd).st_size < 9 * MiB:
        pytest.skip("this filesystem cannot punch holes")
    assert b"\0" not in text
    assert re.search(rb"\n=== taskq: \d+ bytes of output dropped ===\n", text)
    assert text.endswith(numbered(999_000, 1000))
    log.end_output()
    log.close()


def test_a_cut_that_cannot_be_made_leaves_the_log_whole(store, monkeypatch):
    """No room in tmp/ for the cut: the output goes on into the log, nothing is lost,
    the job is not held up; the cut is tried again later and at the end."""
    calls = {"n": 0}
    orig = FileIO.open_new

    def full(self, path, mode):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return orig(self, path, mode)

    monkeypatch.setattr(FileIO, "open_new", full)
    monkeypatch.setattr(FileIO, "punch_hole", _cannot_punch)
    output = numbered(0, 800_000)
    log = JobLog(store, "j1", MiB)
    run_output(log, split(output))
    log.close()
    assert calls["n"] >= 2
    data = Path(store.log_path("j1")).read_bytes()
    assert data == (HEADER + "\n" + logcap.marker(len(output) - MiB, MiB) + "\n").encode() + output[-MiB:]
    assert files(Path(store.root), "tmp") == []


def test_output_that_cannot_be_written_is_counted_not_raised(store, monkeypatch):
    orig = FileIO.append
    state = {"full": False}

    def append(self, fd, data):
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return orig(self, fd, data)

    monkeypatch.setattr(FileIO, "append", append)
    log = JobLog(store, "j1", MiB)
    log.line(HEADER)
    log.begin_output()
    log.write(b"before\n")
    state["full"] = True
    log.write(b"x" * 1000)
    state["full"] = False  # space again: the rest of the attempt's output is lost all the same
    log.write(b"y" * 24)
    log.end_output()
    log.close()
    assert log.lost == 1024 and "disk full" in str(log.error)
    assert Path(store.log_path("j1")).read_bytes() == (
        f"{HEADER}\nbefore\n=== taskq: 1024 bytes of output lost: {log.error} ===\n".encode())


def test_purging_a_log_removes_its_cuts(store):
    log = JobLog(store, "j1", 1000)
    run_output(log, [numbered(0, 1000)])
    log.close()
    logs = Path(store.root) / "logs"
    assert sorted(os.listdir(logs)) == ["j1.cuts", "j1.log"]
    store.remove_log("j1")
    assert os.listdir(logs) == []


# -- the installed taskq --------------------------------------------------------------------


def write_config(spool: Path, text: str) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "taskq.toml").write_text(text)


def printer(count: int, start: int = 0) -> list[str]:
    """A command printing ``numbered(start, count)`` on stdout."""
    return ["python3", "-c", f"import sys; sys.stdout.buffer.write(b''.join(b'%09d\\n' % i "
                             f"for i in range({start}, {start + count})))"]


def log_bytes(taskq, job_id: str) -> bytes:
    proc = subprocess.run(taskq.argv(["logs", job_id]), capture_output=True, env=taskq.env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_job_printing_20_mib_keeps_its_last_mib(taskq, spool):
    write_config(spool, '[defaults]\nlog_max = "1MiB"\n')
    job_id = taskq.add(*printer(2 * MiB))
    taskq("work", "--burst", check=True, timeout=120)
    assert record(spool, job_id)["state"] == "done"
    output = numbered(0, 2 * MiB)
    data = log_bytes(taskq, job_id)
    header, marker, rest = data.split(b"\n", 2)
    assert header.startswith(b"=== taskq: attempt 1 started ")
    assert MARKER_RE.match(marker).groups() == (str(len(output) - MiB).encode(), b"1MiB")
    assert rest == output[-MiB:]
    assert (spool / "logs" / f"{job_id}.log").read_bytes() == data
    assert os.path.getsize(spool / "logs" / f"{job_id}.log") <= len(header) + len(marker) + 2 + MiB


def test_a_job_under_the_cap_logs_as_before(taskq, spool):
    job_id = taskq.add("/bin/sh", "-c", "echo out; echo err >&2; printf 'no newline'")
    taskq("work", "--burst", check=True)
    data = log_bytes(taskq, job_id)
    header, rest = data.split(b"\n", 1)
    assert re.fullmatch(rb"=== taskq: attempt 1 started \S+Z on \S+:\d+ ===", header)
    assert rest == b"out\nerr\nno newline"  # stdout and stderr in the order written
    assert not (spool / "logs" / f"{job_id}.cuts").exists()


def test_log_max_0_and_a_task_type_of_its_own(taskq, spool):
    write_config(spool, '[defaults]\nlog_max = 0\n[tasks.chatty]\nlog_max = "64KiB"\n')
    whole = taskq.add(*printer(300_000))  # 3 MB, more than 64 KiB: kept whole
    capped = taskq.add(*printer(300_000), options=["--name", "chatty"])
    taskq("work", "--burst", check=True, timeout=120)
    output = numbered(0, 300_000)
    assert log_bytes(taskq, whole).split(b"\n", 1)[1] == output
    _, marker, rest = log_bytes(taskq, capped).split(b"\n", 2)
    assert MARKER_RE.match(marker).groups() == (str(len(output) - 65536).encode(), b"64KiB")
    assert rest == output[-65536:]


def test_yes_is_stopped_by_its_timeout_not_by_the_cap(taskq, spool):
    write_config(spool, '[defaults]\nlog_max = "1MiB"\n')
    job_id = taskq.add("yes", options=["--timeout", "3", "--max-attempts", "1"])
    taskq("work", "--burst", check=True, timeout=120)
    rec = record(spool, job_id)
    assert rec["state"] == "failed"
    (attempt,) = rec["attempts"]
    assert attempt["timed_out"] is True and attempt["signal"] == signal.SIGTERM
    path = spool / "logs" / f"{job_id}.log"
    header, marker, rest = path.read_bytes().split(b"\n", 2)
    assert header.startswith(b"=== taskq: attempt 1 started")
    assert int(MARKER_RE.match(marker).group(1)) > 0  # yes wrote on until its timeout
    assert len(rest) == MiB and re.fullmatch(rb"\n?(y\n)*", rest)
    assert path.stat().st_size <= MiB + 200 and path.stat().st_blocks * 512 <= MiB + 64 * 1024


def test_logs_follow_while_the_log_is_cut(taskq, spool, workers):
    """``logs --follow`` of a job whose log is trimmed again and again while it is
    followed: no garbage, lines in order, and it ends with the job's last line."""
    write_config(spool, '[defaults]\nlog_max = "64KiB"\n')
    code = ("import sys, time\n"
            "for i in range(40):\n"
            "    sys.stdout.buffer.write(b''.join(b'%09d\\n' % n for n in range(i * 20000, (i + 1) * 20000)))\n"
            "    sys.stdout.flush()\n"
            "    time.sleep(0.05)\n")
    job_id = taskq.add("python3", "-c", code)
    follower = subprocess.Popen(taskq.argv(["logs", "--follow", job_id]), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=taskq.env())
    worker = workers.start("--burst")
    chunks = []
    try:
        assert follower.stdout is not None
        deadline = time.monotonic() + 120
        # Read slowly while the job runs, so that the follower falls behind the trims.
        while (chunk := follower.stdout.read1(65536)) and time.monotonic() < deadline:
            chunks.append(chunk)
            if worker.proc.poll() is None:
                time.sleep(0.1)
        follower.wait(30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert worker.wait(60) == 0
    assert follower.returncode == 0
    out = b"".join(chunks)
    final = (spool / "logs" / f"{job_id}.log").read_bytes()
    assert final.split(b"\n")[-2] == b"%09d" % 799_999
    assert MARKER_RE.search(final)
    check_followed(out, final)
    assert b" bytes of output dropped" in out  # it did fall behind, and went on after a marker


def test_a_child_holding_the_output_open_does_not_hold_up_the_job(taskq, spool, tmp_path, strays):
    """The main process exits; a child in its group holds the pipe: it is stopped with
    the group. One that left the group (setsid) is out of reach: the output is read
    for a bounded time, then the job is settled all the same."""
    pids = tmp_path / "pids"
    strays.watch_file(pids)
    in_group = taskq.add(*sh(f"sleep 300 & echo $! >> {pids}; echo started"))
    left = taskq.add(*sh(f"setsid sh -c 'echo $$ >> {pids}; exec sleep 300' & echo detached"))
    taskq("work", "--burst", check=True, timeout=60)
    for job_id, word in ((in_group, b"started"), (left, b"detached")):
        assert record(spool, job_id)["state"] == "done"
        assert log_bytes(taskq, job_id).endswith(word + b"\n")


def test_a_job_writing_when_its_worker_is_killed_is_recovered(taskq, spool, tmp_path, workers, strays):
    """kill -9 of the worker: nothing reads the job's output any more, its next write
    gets SIGPIPE, and the next worker recovers it ("worker lost") and runs it again."""
    pids = tmp_path / "pids"
    strays.watch_file(pids)
    flag = tmp_path / "second"
    job_id = taskq.add(*sh(f"if [ -e {flag} ]; then echo second run; exit 0; fi; touch {flag}; "
                           f"echo $$ >> {pids}; while :; do echo tick; sleep 0.05; done"),
                       options=["--backoff", "0"])
    worker = workers.start()
    wait_state(spool, job_id, "running")
    wait_for(lambda: pids.exists() and pids.read_text().strip(), message="the job to start")
    (pid,) = [int(p) for p in pids.read_text().split()]
    worker.send(signal.SIGKILL)
    worker.wait()
    wait_for(lambda: not alive(pid), timeout=15, message="the job to end by SIGPIPE")
    taskq("work", "--burst", check=True, timeout=60)
    rec = record(spool, job_id)
    assert rec["state"] == "done"
    assert [a["error"] for a in rec["attempts"]] == ["worker lost", None]
    assert log_bytes(taskq, job_id).endswith(b"second run\n")


def test_show_json_has_no_log_max(taskq, spool):
    write_config(spool, '[defaults]\nlog_max = "1MiB"\n')
    job_id = taskq.add("true")
    assert "log_max" not in json.loads(taskq("show", job_id, "--json", check=True).stdout)
    assert "log_max" not in json.loads((spool / "pending" / files(spool, "pending")[0]).read_text())
    assert job_id
