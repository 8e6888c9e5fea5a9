"""The cap on a job's log (``log_max``): when to trim it, what the marker says, and
how a reader keeps its place. Pure: no I/O (the writing is :mod:`taskq.spool.joblog`).

Each attempt's output is capped on its own. The log keeps everything before the
attempt's output (the header lines and earlier attempts) and, of the output, the last
``log_max`` bytes. When the attempt ends, its output in the log is exactly that: one
marker line saying how many bytes were dropped, then the last ``log_max`` bytes.

While the attempt runs, output is appended to the log as it comes, and trimmed in two
ways:

* **holes**: the blocks of output older than the last ``log_max`` bytes are freed
  (``fallocate(PUNCH_HOLE)``) each time :func:`punch_slack` more bytes have come. The
  file keeps its offsets (the dropped part reads as a hole), so nothing is copied and
  the disk holds at most ``log_max`` + :func:`punch_slack` of output;
* **cuts**: the log is rebuilt as before-the-output + marker + last ``log_max`` bytes
  in a new file, renamed over it. That copies ``log_max`` bytes and more, so it is done
  when the attempt ends, when :func:`hole_span` bytes of output have passed (the file's
  apparent size must not grow for ever), and, where the filesystem cannot punch holes,
  every :func:`copy_slack` bytes (then the disk holds up to ``log_max`` + that).

A cut replaces the file, so a byte offset in the old file means nothing in the new
one. A reader keeps its place in the *uncut* log instead, the log as it would be
without any cap ("virtual" offsets), and a :class:`CutMap` (kept beside the log, see
:mod:`taskq.spool.joblog`) turns one into the other for the file it has open.
"""

from __future__ import annotations

import json
from typing import NamedTuple

#: Least output between two trims: each costs system calls (a cut also a copy and
#: two renames), which a tiny ``log_max`` must not pay every few bytes.
MIN_SLACK = 1024 * 1024
#: Least output between two cuts where holes do the trimming.
HOLE_SPAN = 1024 * 1024 * 1024

_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def format_size(size: int) -> str:
    """``16777216`` → ``16MiB``; a size that is no whole number of KiB → ``1000B``.
    The result reads back with :func:`taskq.config.parse_size`."""
    for unit, name in _UNITS:
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size}B"


def marker(dropped: int, log_max: int) -> str:
    """The line that stands for the output a cut dropped (without its newline)."""
    return f"=== taskq: {dropped} bytes of output dropped (log_max {format_size(log_max)}) ==="


def skipped(count: int) -> str:
    """The line a reader shows where it skips output dropped while the attempt runs
    (a hole in the log), without its newline."""
    return f"=== taskq: {count} bytes of output dropped ==="


def punch_slack(log_max: int) -> int:
    """How much output beyond ``log_max`` the log may hold before holes are punched."""
    return max(MIN_SLACK, log_max // 4)


def copy_slack(log_max: int, before: int) -> int:
    """How much output beyond ``log_max`` the log may hold before it is cut, where
    holes cannot be punched, for an attempt whose output starts at byte *before*: a
    cut copies ``before + log_max`` bytes, so waiting that long (and at least
    :data:`MIN_SLACK`) keeps the copying at most about two bytes per byte of output."""
    return max(log_max, before, MIN_SLACK)


def hole_span(log_max: int, before: int) -> int:
    """How much output beyond ``log_max`` may pass (in holes) before the log is cut:
    the copy then costs at most a few percent of writing that output."""
    return max(HOLE_SPAN, 16 * (log_max + before))


class Cut(NamedTuple):
    """One attempt's cut output, as it sits in a log file: the marker line at file
    offset *at* (*mark* bytes long, newline included), then the kept output, whose
    first byte is byte *kept* of the uncut log. The attempt's output started at byte
    *start* of the uncut log: bytes *start* to *kept* were dropped."""

    at: int
    mark: int
    start: int
    kept: int


class CutMap(NamedTuple):
    """The cuts of one log file, oldest first (one per attempt that was cut): turns
    offsets in the uncut log into offsets in the file and back. A file with no cut
    maps every offset to itself."""

    cuts: tuple[Cut, ...] = ()

    def to_file(self, virtual: int) -> int:
        """Where a reader that has read the uncut log up to *virtual* goes on in the
        file. Inside dropped output: at that cut's marker line."""
        for cut in reversed(self.cuts):
            if virtual >= cut.start:
                if virtual < cut.kept:
                    return cut.at
                return cut.at + cut.mark + (virtual - cut.kept)
        return virtual

    def to_virtual(self, offset: int) -> int:
        """The uncut log's offset of byte *offset* of the file (a marker line reads
        as the first kept byte after it)."""
        for cut in reversed(self.cuts):
            if offset >= cut.at:
                return cut.kept + max(0, offset - cut.at - cut.mark)
        return offset

    def with_cut(self, cut: Cut) -> CutMap:
        """This map with *cut* added, or put in place of the same attempt's earlier
        cut (the one at the same offset)."""
        kept = tuple(c for c in self.cuts if c.at < cut.at)
        return CutMap((*kept, cut))


class LogMap(NamedTuple):
    """What ``logs/ID.cuts`` holds: the cuts of the log file whose inode is *ino*,
    and of the file it replaced (*prev_ino*, *prev*), since a reader may have opened
    that one just before the replacement."""

    ino: int
    cuts: CutMap
    prev_ino: int | None = None
    prev: CutMap = CutMap()

    def for_inode(self, ino: int) -> CutMap | None:
        """The cuts of the file with inode *ino*, or None if this map is not about it."""
        if ino == self.ino:
            return self.cuts
        if ino == self.prev_ino:
            return self.prev
        return None

    def encode(self) -> bytes:
        return json.dumps({"ino": self.ino, "cuts": [list(c) for c in self.cuts.cuts],
                           "prev_ino": self.prev_ino, "prev": [list(c) for c in self.prev.cuts]}).encode()

    @staticmethod
    def decode(data: bytes) -> LogMap | None:
        """The map in *data*, or None if it is not one (a torn or foreign file)."""
        try:
            raw = json.loads(data)
            cuts = CutMap(tuple(Cut(*map(int, c)) for c in raw["cuts"]))
            prev = CutMap(tuple(Cut(*map(int, c)) for c in raw.get("prev") or []))
            prev_ino = raw.get("prev_ino")
            return LogMap(int(raw["ino"]), cuts, None if prev_ino is None else int(prev_ino), prev)
        except (ValueError, TypeError, KeyError):
            return None
