"""``taskq add --each FILE [-0] [job options] -- COMMAND...`` as a black box: the installed
command in a subprocess (README, "taskq add", "--each"). Job records are read back from
the spool's files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workerutil import assert_one_line_error, burst, iso_ts, record, state_of
from workerutil import files as ls

ID_LINE = re.compile(r"^[A-Za-z0-9_-]+$")
MISSING_ID = "01AAAAAAAAAAAAAAAAAAAAAAAA"


def each(taskq, lines: str, *args: str, **kwargs) -> list[str]:
    """``taskq add --each - ARGS`` with *lines* on stdin; return the printed ids."""
    kwargs.setdefault("check", True)
    proc = taskq("add", "--each", "-", *args, input=lines, **kwargs)
    ids = proc.stdout.splitlines()
    assert all(ID_LINE.match(i) for i in ids), proc.stdout
    assert proc.stderr == ""
    return ids


def commands(spool: Path, ids: list[str]) -> list[list[str]]:
    return [record(spool, i)["command"] for i in ids]


def assert_nothing_enqueued(spool: Path) -> None:
    assert ls(spool, "pending") == []
    assert ls(spool, "tmp") == []


# -- substitution -------------------------------------------------------------------------------


def test_placeholder_in_several_words_and_inside_words(taskq, spool):
    ids = each(taskq, "a.png\nb c.png\n", "--", "convert", "{}", "-resize", "50%", "out/{}.jpg", "{}{}")
    assert commands(spool, ids) == [
        ["convert", "a.png", "-resize", "50%", "out/a.png.jpg", "a.pnga.png"],
        ["convert", "b c.png", "-resize", "50%", "out/b c.png.jpg", "b c.pngb c.png"],
    ]


def test_line_appended_when_no_placeholder(taskq, spool):
    ids = each(taskq, "one\ntwo\n", "--", "gzip", "-k")
    assert commands(spool, ids) == [["gzip", "-k", "one"], ["gzip", "-k", "two"]]


def test_placeholder_may_be_the_program(taskq, spool):
    ids = each(taskq, "/bin/true\n", "--", "{}", "--flag")
    assert commands(spool, ids) == [["/bin/true", "--flag"]]


def test_lines_are_kept_exactly_but_crlf(taskq, spool):
    """Spaces are kept (file names may have them); one CR before the newline is dropped."""
    ids = each(taskq, "  lead\ntrail  \r\ncr\r\nmid\rdle\n", "--", "echo")
    assert [c[1] for c in commands(spool, ids)] == ["  lead", "trail  ", "cr", "mid\rdle"]


def test_ids_in_line_order(taskq, spool):
    lines = "".join(f"{i}\n" for i in range(20))
    ids = each(taskq, lines, "--", "echo")
    assert [c[1] for c in commands(spool, ids)] == [str(i) for i in range(20)]
    assert ids == sorted(ids)
    assert len(ls(spool, "pending")) == 20


# -- input: stdin, a file, -0, empty lines ------------------------------------------------------


def test_file_and_stdin_give_the_same_jobs(taskq, spool, tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("x\ny\n")
    from_file = taskq("add", "--each", str(path), "--", "echo", check=True).stdout.splitlines()
    from_stdin = each(taskq, "x\ny\n", "--", "echo")
    assert commands(spool, from_file) == commands(spool, from_stdin) == [["echo", "x"], ["echo", "y"]]


def test_relative_file_is_read_from_the_current_directory(taskq, spool, tmp_path):
    (tmp_path / "list.txt").write_text("z\n")
    ids = taskq("add", "--each", "list.txt", "--", "echo", cwd=tmp_path, check=True).stdout.splitlines()
    assert commands(spool, ids) == [["echo", "z"]]


def test_nul_separated_names_with_newlines_and_spaces(taskq, spool):
    ids = each(taskq, "a b\0line\nbreak\0\0 cr\r\0", "-0", "--", "mv", "{}", "done/{}")
    assert commands(spool, ids) == [
        ["mv", "a b", "done/a b"],
        ["mv", "line\nbreak", "done/line\nbreak"],
        ["mv", " cr\r", "done/ cr\r"],  # -0 keeps records exactly
    ]


def test_nul_long_option(taskq, spool):
    ids = each(taskq, "p\0q", "--null", "--", "echo")
    assert commands(spool, ids) == [["echo", "p"], ["echo", "q"]]


def test_empty_lines_are_skipped(taskq, spool):
    ids = each(taskq, "\na\n\n\r\nb", "--", "echo")  # no final newline: the last line still counts
    assert commands(spool, ids) == [["echo", "a"], ["echo", "b"]]


def test_no_lines(taskq, spool):
    for lines in ("", "\n\n", "\r\n"):
        assert_one_line_error(taskq("add", "--each", "-", "--", "echo", input=lines), 2, "--each: no lines given")
    assert_one_line_error(taskq("add", "--each", "-", "-0", "--", "echo", input="\0\0"), 2, "no lines given")
    assert_nothing_enqueued(spool)


def test_missing_file(taskq, spool, tmp_path):
    assert_one_line_error(taskq("add", "--each", str(tmp_path / "none.txt"), "--", "echo"), 2, "none.txt")
    assert_nothing_enqueued(spool)


# -- a bad line: its number, nothing enqueued ---------------------------------------------------


def test_nul_in_a_line_names_the_real_line_number(taskq, empty_spool):
    proc = taskq("add", "--each", "-", "--", "echo", input="a\n\nb\nc\0d\ne\n")
    message = assert_one_line_error(proc, 2, "NUL")
    assert re.search(r"\bline 4\b", message), message
    assert_nothing_enqueued(empty_spool)


def test_invalid_name_after_substitution_names_the_line(taskq, empty_spool):
    proc = taskq("add", "--each", "-", "--name", "x" * 195 + "{}", "--", "echo", input="ok\n\n" + "long-line\n")
    message = assert_one_line_error(proc, 2, "name")
    assert re.search(r"\bline 3\b", message), message
    assert_nothing_enqueued(empty_spool)


def test_line_that_is_not_utf8(taskq, empty_spool, tmp_path):
    path = tmp_path / "list.bin"
    path.write_bytes(b"a\n\nb\n\xff\xfe\nc\n")
    message = assert_one_line_error(taskq("add", "--each", str(path), "--", "echo"), 2, "not UTF-8")
    assert re.search(r"\bline 4\b", message), message
    path.write_bytes(b"a\0b\0\xc3\0")
    message = assert_one_line_error(taskq("add", "--each", str(path), "-0", "--", "echo"), 2, "not UTF-8")
    assert re.search(r"\bline 3\b", message), message
    assert_nothing_enqueued(empty_spool)


def test_missing_dependency_enqueues_nothing(taskq, spool):
    proc = taskq("add", "--each", "-", "--after", MISSING_ID, "--", "echo", input="a\nb\n")
    assert_one_line_error(proc, 1, MISSING_ID)
    assert_nothing_enqueued(spool)


def test_bad_option_is_reported_as_an_option(taskq, empty_spool):
    """A value that is wrong for every job is the option's fault, not line 1's."""
    for args, fragment in [
        (["--priority", "9999999999"], "priority"),
        (["--max-attempts", "0"], "max_attempts"),
        (["--name", "x" * 201], "name"),
        (["--delay", "10m", "--at", "2030-01-01"], "--delay"),
        (["--cwd", "/no/such/dir"], "/no/such/dir"),
        (["--payload", "{bad"], "--payload"),
    ]:
        message = assert_one_line_error(taskq("add", "--each", "-", *args, "--", "echo", input="a\n"), 2, fragment)
        assert not re.match(r"taskq: (--each )?line \d", message), message
    assert_nothing_enqueued(empty_spool)


# -- job options apply to every job -------------------------------------------------------------


def test_job_options_apply_to_every_job(taskq, spool, tmp_path):
    dep = taskq.add("true")
    payload = tmp_path / "payload.json"
    payload.write_text('{"size": 50}')
    ids = each(
        taskq, "a\nb\n",
        "--payload-file", str(payload), "--env", "K=v", "--cwd", str(tmp_path), "--priority", "7",
        "--delay", "1m", "--max-attempts", "2", "--backoff", "3s", "--backoff-max", "9s", "--timeout", "5",
        "--permanent-exit", "9", "--after", dep, "--", "echo",
    )
    for job_id in ids:
        rec = record(spool, job_id)
        assert (rec["payload"], rec["env"], rec["cwd"]) == ({"size": 50}, {"K": "v"}, str(tmp_path))
        assert (rec["priority"], rec["max_attempts"], rec["timeout"]) == (7, 2, 5)
        assert (rec["backoff"], rec["backoff_max"], rec["permanent_exit_codes"]) == (3, 9, [9])
        assert rec["after"] == [dep]
        assert iso_ts(rec["run_at"]) - iso_ts(rec["created_at"]) == pytest.approx(60, abs=0.0015)


@pytest.mark.parametrize("payload", ["{}", "[]", "0", '""', "false"])
def test_empty_payloads_are_kept(taskq, spool, payload):
    ids = each(taskq, "a\n", "--payload", payload, "--", "echo")
    assert record(spool, ids[0])["payload"] == json.loads(payload)


def test_at_applies_to_every_job(taskq, spool):
    ids = each(taskq, "a\nb\n", "--at", "2030-01-02T03:04:05Z", "--", "echo")
    assert [record(spool, i)["run_at"] for i in ids] == ["2030-01-02T03:04:05.000Z"] * 2


def test_name_with_placeholder(taskq, spool):
    ids = each(taskq, "a\nb\n", "--name", "resize {}", "--", "echo")
    assert [record(spool, i)["name"] for i in ids] == ["resize a", "resize b"]
    ids = each(taskq, "c\n", "--name", "plain", "--", "echo")
    assert record(spool, ids[0])["name"] == "plain"


def test_unique_key_with_placeholder_and_duplicates(taskq, spool):
    earlier = taskq.add("echo", "b", options=["--unique-key", "img-b"])
    proc = taskq("add", "--each", "-", "--json", "--unique-key", "img-{}", "--", "echo",
                 input="a\nb\na\nc\n", check=True)
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["duplicate"] for o in out] == [False, True, True, False]
    assert out[1]["id"] == earlier
    assert out[2]["id"] == out[0]["id"]
    assert [o["unique_key"] for o in out] == ["img-a", "img-b", "img-a", "img-c"]
    assert len(ls(spool, "pending")) == 3  # earlier, a, c
    # the same again: every line is a duplicate, nothing new
    again = each(taskq, "a\nb\nc\n", "--unique-key", "img-{}", "--", "echo")
    assert again == [out[0]["id"], earlier, out[3]["id"]]
    assert len(ls(spool, "pending")) == 3


def test_json_output_one_record_per_line(taskq, spool):
    proc = taskq("add", "--each", "-", "--json", "--", "echo", "{}", input="a\nb\n", check=True)
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["command"] for o in out] == [["echo", "a"], ["echo", "b"]]
    assert all(o["state"] == "pending" and o["duplicate"] is False for o in out)
    assert [record(spool, o["id"])["command"] for o in out] == [o["command"] for o in out]


def test_task_type_command_is_the_template(taskq, empty_spool):
    (empty_spool / "taskq.toml").write_text(
        '[tasks.thumb]\ncommand = ["convert", "-thumbnail", "64"]\npriority = 4\n'
        '[tasks.script]\ncommand = "gzip -k"\n'
    )
    ids = each(taskq, "a b\n", "--name", "thumb")
    rec = record(empty_spool, ids[0])
    assert (rec["command"], rec["priority"], rec["name"]) == (["convert", "-thumbnail", "64", "a b"], 4, "thumb")
    ids = each(taskq, "a b\n", "--name", "script")
    assert commands(empty_spool, ids) == [["/bin/sh", "-c", "gzip -k 'a b'"]]


# -- --shell ------------------------------------------------------------------------------------


def test_shell_quotes_the_line(taskq, spool):
    ids = each(taskq, "a b\n", "--shell", "gzip -c {} > {}.gz")
    assert commands(spool, ids) == [["/bin/sh", "-c", "gzip -c 'a b' > 'a b'.gz"]]
    ids = each(taskq, "c d\n", "--shell", "wc", "-l")
    assert commands(spool, ids) == [["/bin/sh", "-c", "wc -l 'c d'"]]


def test_shell_line_is_never_shell_syntax(taskq, spool, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    hostile = ["it's", "$(touch pwned)", "a;b", "`id`", "*", "x > y"]
    ids = each(taskq, "\n".join(hostile) + "\n", "--cwd", str(out), "--shell", "printf %s {} >> log")
    burst(taskq)
    assert all(state_of(spool, i) == "done" for i in ids)
    assert (out / "log").read_text() == "".join(hostile)
    assert sorted(p.name for p in out.iterdir()) == ["log"]


# -- conflicts and missing parts ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args, input, fragment",
    [
        (["--each", "-", "--batch", "-", "--", "echo"], "a\n", "--batch"),
        (["--batch", "-", "--each", "-"], '{"command": ["a"]}\n', "--batch"),
        (["--each", "-", "--payload-file", "-", "--", "echo"], "a\n", "stdin"),
        (["-0", "--", "echo"], None, "--each"),
        (["--each", "-"], "a\n", "COMMAND"),
        (["--each", "-", "--name", "no-such-task"], "a\n", "COMMAND"),
        (["--each", "-", "--shell"], "a\n", "--shell"),
        (["--each", "-", "--payload", "1", "--payload-file", "p.json", "--", "echo"], "a\n", "--payload"),
    ],
)
def test_conflicts_exit_2_and_enqueue_nothing(taskq, spool, args, input, fragment):
    assert_one_line_error(taskq("add", *args, input=input), 2, fragment)
    assert_nothing_enqueued(spool)


def test_payload_file_with_each_from_a_file(taskq, spool, tmp_path):
    """Only one of them may read stdin: the payload may, when the lines come from a file."""
    path = tmp_path / "list.txt"
    path.write_text("a\n")
    ids = taskq("add", "--each", str(path), "--payload-file", "-", "--", "echo",
                input='{"k": 1}', check=True).stdout.splitlines()
    assert record(spool, ids[0])["payload"] == {"k": 1}


# -- the jobs run -------------------------------------------------------------------------------


def test_jobs_run(taskq, spool, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    names = ["a", "b c", "d\ne", "-f"]
    ids = taskq("add", "--each", "-", "-0", "--cwd", str(out), "--", "sh", "-c", 'printf %s "$1" > "$1.out"', "sh",
                input="\0".join(names) + "\0", check=True).stdout.splitlines()
    assert len(ids) == len(names)
    burst(taskq)
    assert [state_of(spool, i) for i in ids] == ["done"] * len(names)
    assert {p.name: p.read_text() for p in out.iterdir()} == {f"{n}.out": n for n in names}
