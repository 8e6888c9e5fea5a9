"""A job's log: the one place that writes to it (:class:`JobLog`) and a reader that
follows it across cuts (:class:`LogReader`).

``logs/ID.log`` holds taskq's own lines (each attempt's header, how it ended) and the
attempts' output. With a ``log_max`` (see :mod:`taskq.logcap`), the output of each
attempt is capped: when it has grown far enough past ``log_max``, the log is rebuilt
in tmp/ as everything before the attempt's output + one marker line + the last
``log_max`` bytes of output, and renamed over ``logs/ID.log``. Beside it,
``logs/ID.cuts`` says where the cuts are in that file (and in the one it replaced), so
that a reader can keep its place. Nothing here is fsynced: a log is a record of
output, not a job's state.
"""

from __future__ import annotations

import errno
import os
import time

from ..errors import SpoolError
from ..logcap import Cut, CutMap, LogMap, copy_slack, hole_span, marker, punch_slack, skipped
from .store import Store


class JobLog:
    """A job's log, open to write an attempt into it.

    :meth:`line` appends a line of taskq's own. Between :meth:`begin_output` and
    :meth:`end_output`, :meth:`write` appends the attempt's output and trims the log
    as it goes (holes, cuts: see :mod:`taskq.logcap`); :meth:`end_output` leaves
    exactly the last ``log_max`` bytes of output after a marker line. With
    ``log_max`` 0 there is no cap, and the runner may hand :attr:`fd` to the command
    directly. Output that cannot be written (a full disk) is counted in :attr:`lost`,
    with the rest of the attempt's output: :meth:`write` never raises, so that the job
    is never held up by its log.
    """

    def __init__(self, store: Store, job_id: str, log_max: int = 0) -> None:
        self.store = store
        self.job_id = job_id
        self.log_max = log_max
        #: The log file, open for appending (and reading: a cut copies from it).
        self.fd = store.open_log(job_id)
        #: Output of the current attempt dropped so far by cuts, and lost to errors.
        self.dropped = 0
        self.lost = 0
        #: Why output was lost, or why the log could not be cut.
        self.error: SpoolError | None = None
        self.cut_error: SpoolError | None = None
        self._holes = True  # until the filesystem says it cannot punch them
        self._at = 0  # where the attempt's output (or its marker line) starts in the file
        self._mark = 0  # length of the marker line (0: not cut)
        self._output = 0  # output bytes in the file after the marker (holes included)
        self._kept = 0  # where the output that is not in a hole starts
        self._next = 0  # output at which to trim next
        self._cuts: CutMap | None = None  # the file's cuts (read when first needed)
        self._start = 0  # the uncut log's offset of the attempt's output
        self._open = False  # between begin_output and end_output

    @property
    def capped(self) -> bool:
        """Whether the output must come through :meth:`write` (a ``log_max`` is set)."""
        return self.log_max > 0

    def line(self, text: str) -> None:
        """Append one line of taskq's own (a header, an outcome). Raises SpoolError.
        Written between :meth:`begin_output` and :meth:`end_output`, it is output."""
        self.store.log_line(self.fd, self.job_id, text)

    def begin_output(self) -> None:
        """An attempt's output starts here (after its header line)."""
        self._at = self._kept = os.fstat(self.fd).st_size
        self._mark = self._output = self.dropped = self.lost = 0
        self.error = self.cut_error = None
        self._cuts = None
        self._open = True
        self._schedule()

    def write(self, data: bytes | memoryview) -> None:
        """Append output of the attempt; trim the log when it is due."""
        if not self._open:
            self.begin_output()
        if self.error is not None:
            self.lost += len(data)
            return
        try:
            self.store.append_log(self.fd, self.job_id, data)
        except SpoolError as exc:
            self.error = exc
            self.lost += len(data)
            return
        self._output += len(data)
        if self._output > self._next and self.capped:
            if self._holes and self._output <= self.log_max + hole_span(self.log_max, self._at):
                self._punch()
            else:
                self._cut()

    def end_output(self) -> None:
        """The attempt's output has ended: cut it to exactly ``log_max`` bytes (after
        the marker line) if it is longer, and note output that was lost."""
        if not self._open:
            return
        self._open = False
        if self.capped and self.error is None and self._output > self.log_max:
            self._cut()
            if self.cut_error is not None:
                self._note(f"=== taskq: cannot cut the log to log_max: {self.cut_error} ===")
        if self.lost:
            self._note(f"=== taskq: {self.lost} bytes of output lost: {self.error} ===")

    def close(self) -> None:
        os.close(self.fd)

    def _note(self, text: str) -> None:
        try:
            self.line(text)
        except SpoolError:
            pass  # the same disk trouble: the worker's event line tells it

    def _schedule(self) -> None:
        """Set the output count at which the next trim is due."""
        held = self._kept - self._at - self._mark  # output before _kept: in holes
        room = punch_slack(self.log_max) if self._holes else copy_slack(self.log_max, self._at)
        self._next = held + self.log_max + room

    def _punch(self) -> None:
        """Free the blocks of output before the last ``log_max`` bytes: whole blocks
        only (a partial one is zeroed, not freed, and would show zeros)."""
        block = os.fstat(self.fd).st_blksize or 4096
        end = self._at + self._mark + self._output
        start = -(-self._kept // block) * block
        stop = (end - self.log_max) // block * block
        if stop > start:
            try:
                self.store.punch_log(self.fd, self.job_id, start, stop - start)
            except OSError:  # not on this filesystem: cut instead
                self._holes = False
            except SpoolError as exc:
                self._holes = False
                self.cut_error = exc
            else:
                self._kept = stop
        self._schedule()

    def _cut(self) -> None:
        """Rebuild the log as: before the output + marker + the last ``log_max`` bytes,
        and put it in place. On failure the log stays as it was, and the next try
        waits for another slack's worth of output."""
        store = self.store
        end = os.fstat(self.fd).st_size
        self._output = end - self._at - self._mark  # also counts writes made around this object
        if self._output <= self.log_max:
            return
        dropped = self.dropped + self._output - self.log_max
        mark = (marker(dropped, self.log_max) + "\n").encode()
        old_ino = os.fstat(self.fd).st_ino
        if self._cuts is None:
            self._cuts = _cuts_of(store, self.job_id, old_ino) or CutMap()
            self._start = self._cuts.to_virtual(self._at)
        cuts = self._cuts.with_cut(Cut(self._at, len(mark), self._start, self._start + dropped))
        try:
            staged, fd = store.stage_log()
        except SpoolError as exc:
            self._cut_failed(exc)
            return
        try:
            store.copy_log(self.fd, 0, self._at, fd, staged)
            store.append_log(fd, self.job_id, mark)
            store.copy_log(self.fd, end - self.log_max, self.log_max, fd, staged)
            log_map = LogMap(os.fstat(fd).st_ino, cuts, old_ino, self._cuts)
            store.replace_log(self.job_id, staged, fd, log_map.encode())
        except (SpoolError, OSError) as exc:
            os.close(fd)
            store.discard(staged)
            self._cut_failed(exc if isinstance(exc, SpoolError) else SpoolError(str(exc)))
            return
        os.close(self.fd)
        self.fd = fd
        self._cuts, self._mark, self._output, self.dropped = cuts, len(mark), self.log_max, dropped
        self._kept = self._at + self._mark
        self.cut_error = None
        self._schedule()

    def _cut_failed(self, exc: SpoolError) -> None:
        self.cut_error = exc
        self._next = self._output + copy_slack(self.log_max, self._at)


def _cuts_of(store: Store, job_id: str, ino: int) -> CutMap | None:
    """The cuts of the log file with inode *ino*: none if the log was never cut; None
    if ``logs/ID.cuts`` is about other files (the log was cut again meanwhile)."""
    raw = store.read_log_map(job_id)
    if raw is None:
        return CutMap()
    log_map = LogMap.decode(raw)
    if log_map is None:
        return CutMap()
    return log_map.for_inode(ino)


#: How often a reader opens the log again when it was cut between its open and its
#: reading of the cuts, and how long it waits in between.
_TRIES = 5
_TRY_PAUSE = 0.01
_CHUNK = 1 << 20


class LogReader:
    """Reads a job's log in pieces: each :meth:`read` returns what was added since the
    last one, the first one the whole log. It keeps its place in the uncut log, so that
    a cut (the file replaced by a shorter one) neither repeats nor garbles anything.
    Where it meets output that was dropped (a hole while the attempt runs, or a cut
    it had not read up to), it goes on after one marker line, on a line of its own."""

    def __init__(self, store: Store, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        #: How far the reader has read, as an offset in the uncut log.
        self.position = 0
        self._ends_line = True

    def read(self) -> bytes:
        for attempt in range(_TRIES):
            if attempt:
                time.sleep(_TRY_PAUSE)
            fd = self.store.open_log_read(self.job_id)
            if fd is None:
                return b""
            try:
                cuts = _cuts_of(self.store, self.job_id, os.fstat(fd).st_ino)
                if cuts is None and attempt < _TRIES - 1:
                    continue  # cut twice since it was opened: open the new file
                return self._read(fd, cuts or CutMap())
            finally:
                os.close(fd)
        return b""  # not reached: the last try reads whatever it finds

    def _read(self, fd: int, cuts: CutMap) -> bytes:
        offset = cuts.to_file(self.position)
        out: list[bytes] = []
        if cuts.to_virtual(offset) != self.position:  # behind a cut: its marker comes next
            self._break_line(out)
        end = os.fstat(fd).st_size
        while offset < end:
            data_at = _seek(fd, offset, os.SEEK_DATA, end)
            if data_at > offset:  # a hole: output dropped while the attempt runs
                self._break_line(out)
                out.append(skipped(data_at - offset).encode() + b"\n")
                self._ends_line = True
                offset = data_at
                continue
            chunk = os.pread(fd, min(_seek(fd, offset, os.SEEK_HOLE, end) - offset, _CHUNK), offset)
            if not chunk:
                break
            # Holes only ever grow: what is still not a hole now was not one while read.
            good = min(_seek(fd, offset, os.SEEK_HOLE, end), offset + len(chunk)) - offset
            if good <= 0:
                continue
            out.append(chunk[:good])
            self._ends_line = chunk[good - 1:good] == b"\n"
            offset += good
        self.position = cuts.to_virtual(offset)
        return b"".join(out)

    def _break_line(self, out: list[bytes]) -> None:
        if not self._ends_line:
            out.append(b"\n")
            self._ends_line = True


def _seek(fd: int, offset: int, whence: int, end: int) -> int:
    """lseek(SEEK_DATA or SEEK_HOLE) from *offset*: where the next data or hole starts,
    *end* at most. Where the system cannot tell, the whole file is data."""
    try:
        return min(os.lseek(fd, offset, whence), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data (a hole up to the end of the file)
            return end
        return offset if whence == os.SEEK_DATA else end
