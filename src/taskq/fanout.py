"""``taskq add --each``: one job per line of input, from one command template. Pure.

The options are turned into a template once; each line then costs a dict copy and a
``str.join`` per word that holds ``{}``, so a fan-out enqueues at ``--batch`` speed
(everything else is done by :meth:`taskq.Spool.add_batch`, like a ``--batch`` line).

``{}`` in a word of the command (also inside a word: ``out/{}.jpg``), in the name and
in the unique key is replaced by the line; with no ``{}`` in the command, the line is
appended as its last argument. In a shell command (``--shell``, or a task type's
command given as a string) the line is quoted with :func:`shlex.quote` where it goes,
so that it is always one word of the script and never shell syntax.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ValidationError
from .fields import shell_command, validate_fields

PLACEHOLDER = "{}"

#: Fields in which ``{}`` is replaced by the line (besides the command).
TEMPLATED = ("name", "unique_key")


def split_lines(raw: bytes, nul: bool = False) -> tuple[list[int], list[str]]:
    """The non-empty records of *raw* and their 1-based line numbers.

    Records are separated by newlines (one trailing ``\\r`` is dropped, for CRLF files)
    or, with *nul*, by NUL bytes (kept exactly). Empty records are skipped but counted,
    so a number names the real line of the input; a trailing separator makes none.
    Raises ValidationError naming the first line that is not UTF-8.
    """
    sep = "\0" if nul else "\n"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Decoding the whole input at once is much faster than line by line; only a
        # failure needs the line, which the separators before the bad byte give.
        number = raw.count(sep.encode(), 0, exc.start) + 1
        raise ValidationError(f"--each line {number}: not UTF-8 text") from None
    numbers: list[int] = []
    lines: list[str] = []
    for number, line in enumerate(text.split(sep), 1):
        if not nul and line.endswith("\r"):
            line = line[:-1]
        if line:
            numbers.append(number)
            lines.append(line)
    return numbers, lines


def substituter(template: str) -> Callable[[str], str] | None:
    """A function putting a line in place of every ``{}`` of *template*; None if it has none."""
    if PLACEHOLDER not in template:
        return None
    parts = template.split(PLACEHOLDER)
    return lambda line: line.join(parts)


def command_expander(words: Sequence[str], shell: bool = False) -> Callable[[str], list[str]]:
    """A function from a line to the job's command (see the module's docstring).

    With *shell*, *words* are joined by spaces into one script for ``/bin/sh -c``.
    """
    if shell:
        script = " ".join(words)
        put = substituter(script)
        if put is None:
            return lambda line: shell_command(f"{script} {shlex.quote(line)}")
        return lambda line: shell_command(put(shlex.quote(line)))
    base = list(words)
    slots = [(i, word.split(PLACEHOLDER)) for i, word in enumerate(base) if PLACEHOLDER in word]
    if not slots:
        return lambda line: [*base, line]

    def expand(line: str) -> list[str]:
        argv = base.copy()
        for i, parts in slots:
            argv[i] = line.join(parts)
        return argv

    return expand


class Fanout:
    """The jobs of ``add --each``: *fields* (job fields shared by every job, as in a
    ``--batch`` line; ``name`` and ``unique_key`` may hold ``{}``) and a command template.
    """

    def __init__(self, fields: dict[str, Any], command: Sequence[str], shell: bool = False) -> None:
        self.fields = dict(fields)
        self.command = list(command)
        self.shell = shell

    def check(self) -> None:
        """Validate the shared fields once, before any line is read, so that a bad option
        is reported as such rather than as an error of line 1. Raises ValidationError."""
        shared = {k: v for k, v in self.fields.items()
                  if k != "delay" and not (k in TEMPLATED and PLACEHOLDER in str(v))}
        validate_fields(shared)

    def records(self, lines: Sequence[str]) -> list[dict[str, Any]]:
        """One job record per line, in order (validated later, by ``add_batch``).

        The records share the values of the common fields (payload, env, after...):
        building a job copies what it keeps, and nothing changes them in between.
        """
        command = command_expander(self.command, self.shell)
        per_line = [(key, put) for key in TEMPLATED
                    if isinstance(self.fields.get(key), str) and (put := substituter(self.fields[key])) is not None]
        base = self.fields
        records = []
        for line in lines:
            record = base.copy()
            record["command"] = command(line)
            for key, put in per_line:
                record[key] = put(line)
            records.append(record)
        return records
