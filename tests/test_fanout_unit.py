"""Unit and property tests of :mod:`taskq.fanout`, the pure part of ``add --each``:
splitting the input into lines, and expanding the command, name and unique key."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskq.errors import ValidationError
from taskq.fanout import Fanout, command_expander, split_lines, substituter

SETTINGS = settings(max_examples=200, deadline=None)

# Lines as they can be given: no separator inside, no lone surrogate (not UTF-8).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
lines_nl = st.lists(text.filter(lambda s: "\n" not in s and not s.endswith("\r")), max_size=8)
lines_nul = st.lists(text.filter(lambda s: "\0" not in s), max_size=8)
words = st.lists(st.text(alphabet="ab{} ", max_size=6), min_size=1, max_size=5)


# -- split_lines ----------------------------------------------------------------------------------


@SETTINGS
@given(lines=lines_nl, trailing=st.booleans(), crlf=st.booleans())
def test_split_newlines(lines, trailing, crlf):
    end = "\r\n" if crlf else "\n"
    raw = (end.join(lines) + (end if trailing and lines else "")).encode()
    numbers, got = split_lines(raw)
    assert got == [line for line in lines if line]
    assert numbers == [i for i, line in enumerate(lines, 1) if line]


@SETTINGS
@given(lines=lines_nul, trailing=st.booleans())
def test_split_nul(lines, trailing):
    raw = ("\0".join(lines) + ("\0" if trailing and lines else "")).encode()
    numbers, got = split_lines(raw, nul=True)
    assert got == [line for line in lines if line]
    assert numbers == [i for i, line in enumerate(lines, 1) if line]


def test_split_keeps_spaces_and_inner_cr():
    assert split_lines(b" a \n\r\nb\rc\r\r\n") == ([1, 3], [" a ", "b\rc\r"])
    assert split_lines(b"a\r\0\0b", nul=True) == ([1, 3], ["a\r", "b"])


@pytest.mark.parametrize("raw, nul, line", [
    (b"\xff", False, 1), (b"a\n\nb\xc3\nc", False, 3), (b"a\nb\0\xe2\x82", True, 2),
])
def test_split_names_the_line_that_is_not_utf8(raw, nul, line):
    with pytest.raises(ValidationError, match=rf"^--each line {line}: not UTF-8 text$"):
        split_lines(raw, nul)


# -- expansion ------------------------------------------------------------------------------------


@SETTINGS
@given(template=st.text(alphabet="ab{}", max_size=10), line=text.filter(bool))
def test_substituter_replaces_every_placeholder(template, line):
    put = substituter(template)
    if "{}" in template:
        assert put is not None and put(line) == template.replace("{}", line)
    else:
        assert put is None


@SETTINGS
@given(argv=words, line=text.filter(bool))
def test_command_expander(argv, line):
    got = command_expander(argv)(line)
    if any("{}" in w for w in argv):
        assert got == [w.replace("{}", line) for w in argv]
    else:
        assert got == [*argv, line]


@SETTINGS
@given(line=text.filter(lambda s: bool(s) and "\0" not in s))
def test_shell_line_is_one_quoted_word(line):
    """Whatever the line holds, the shell sees it as one word, literally."""
    sh, c, script = command_expander(["cp", "{}", "dir/{}.bak"], shell=True)(line)
    assert (sh, c) == ("/bin/sh", "-c")
    assert shlex.split(script) == ["cp", line, f"dir/{line}.bak"]
    sh, c, script = command_expander(["gzip", "-k"], shell=True)(line)
    assert shlex.split(script) == ["gzip", "-k", line]


def test_expander_does_not_share_lists():
    expand = command_expander(["echo", "{}"])
    first = expand("a")
    first.append("changed")
    assert expand("b") == ["echo", "b"]


def test_records():
    fanout = Fanout({"name": "n-{}", "unique_key": "k", "priority": 3, "env": {"A": "1"}}, ["echo", "x{}"])
    fanout.check()
    assert fanout.records(["a", "b"]) == [
        {"name": "n-a", "unique_key": "k", "priority": 3, "env": {"A": "1"}, "command": ["echo", "xa"]},
        {"name": "n-b", "unique_key": "k", "priority": 3, "env": {"A": "1"}, "command": ["echo", "xb"]},
    ]


def test_check_validates_shared_fields_but_not_templates():
    Fanout({"name": "x" * 199 + "{}", "unique_key": "{}"}, ["echo"]).check()
    with pytest.raises(ValidationError, match="priority"):
        Fanout({"priority": "high"}, ["echo"]).check()
    with pytest.raises(ValidationError, match="name"):
        Fanout({"name": "x" * 201}, ["echo"]).check()
