"""Fixtures of the reliability tests: fleets of background workers, killed at teardown,
and job processes that a killed worker left behind, killed at teardown too."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import Fleet, kill_job_groups, parse_run_log


@pytest.fixture
def fleets(taskq, tmp_path: Path):
    """``fleets(spool, name)``: a new :class:`Fleet` on *spool*, its workers' stderr in
    ``tmp_path/name``; every worker still running at teardown is SIGKILLed."""
    made: list[Fleet] = []

    def make(spool: Path, name: str) -> Fleet:
        fleet = Fleet(taskq, spool, tmp_path / name)
        made.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in made:
            fleet.close()


@pytest.fixture
def orphans():
    """``orphans.watch(run_log, marker)``: at teardown, SIGKILL the process group of every
    job process named in the run log that still lives and runs *marker* (the job
    script), e.g. the jobs of a worker killed by a failing test."""
    watched: list[tuple[Path, str]] = []

    class Orphans:
        def watch(self, log: Path, marker: str) -> None:
            watched.append((log, marker))

    try:
        yield Orphans()
    finally:
        for log, marker in watched:
            kill_job_groups(parse_run_log(log).pids, marker)
