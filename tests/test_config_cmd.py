"""``taskq config [--json]`` (README, "taskq config"): the effective settings and where
each comes from, for every field of Config, the job defaults and the task types."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from taskq import Spool, config_report
from taskq.config import Config, parse_config
from taskq.fields import DEFAULTS
from workerutil import assert_one_line_error

TOML = """\
min_free = "1MiB"
permanent_exit_codes = [100, 101]

[defaults]
max_attempts = 3
backoff = "30s"

[tasks.nightly-report]
command = ["/bin/echo", "report"]
timeout = "1h"
priority = 5
env = { REPORT_DIR = "/srv/reports" }

[tasks.shell-one]
command = "echo hi | cat"
max_attempts = 1
"""


def entry(value: Any, source: str) -> dict[str, Any]:
    return {"value": value, "source": source}


@pytest.fixture
def configured(taskq, spool: Path) -> Path:
    taskq("init", check=True)
    (spool / "taskq.toml").write_text(TOML)
    return spool


# -- black box ---------------------------------------------------------------------------


def test_without_taskq_toml_every_setting_is_the_built_in_one(taskq, spool):
    taskq("init", check=True)
    data = taskq.json("config", "--json")
    assert (data["spool"], data["spool_source"]) == (str(spool), "$TASKQ_SPOOL")
    assert (data["exists"], data["file"]) == (True, None)
    fields = [f for f in dataclasses.fields(Config) if f.name not in ("defaults", "tasks")]
    assert list(data["settings"]) == [f.name for f in fields]
    for f in fields:
        assert data["settings"][f.name] == entry(config_report._plain(getattr(Config(), f.name)), "default")
    assert data["defaults"] == {key: entry(value, "default") for key, value in DEFAULTS.items()}
    assert data["tasks"] == {}


def test_each_value_says_where_it_comes_from(taskq, configured):
    data = taskq.json("config", "--json")
    assert data["file"] == str(configured / "taskq.toml")
    settings = data["settings"]
    assert settings["min_free"] == entry(1024 * 1024, "taskq.toml")
    assert settings["fsync"] == entry(True, "default")
    assert settings["kill_grace"] == entry(5.0, "default")
    defaults = data["defaults"]
    assert defaults["max_attempts"] == entry(3, "[defaults]")
    assert defaults["backoff"] == entry(30.0, "[defaults]")
    assert defaults["backoff_max"] == entry(3600.0, "default")
    assert defaults["permanent_exit_codes"] == entry([100, 101], "taskq.toml")  # a top-level key
    report = data["tasks"]["nightly-report"]
    assert report["command"] == entry(["/bin/echo", "report"], "[tasks.nightly-report]")
    assert report["timeout"] == entry(3600.0, "[tasks.nightly-report]")
    assert report["env"] == entry({"REPORT_DIR": "/srv/reports"}, "[tasks.nightly-report]")
    assert report["max_attempts"] == entry(3, "[defaults]")  # inherited
    assert report["backoff_max"] == entry(3600.0, "default")
    assert data["tasks"]["shell-one"]["command"]["value"] == ["/bin/sh", "-c", "echo hi | cat"]
    assert data["tasks"]["shell-one"]["max_attempts"] == entry(1, "[tasks.shell-one]")


def test_what_config_shows_is_what_a_job_of_the_type_gets(taskq, configured):
    data = taskq.json("config", "--json")
    job = json.loads(taskq("add", "--name", "nightly-report", "--json", check=True).stdout)
    for field, shown in data["tasks"]["nightly-report"].items():
        assert job[field] == shown["value"], field
    plain = json.loads(taskq("add", "--json", "--", "true", check=True).stdout)
    for field, shown in data["defaults"].items():
        assert plain[field] == shown["value"], field


def test_human_output_is_one_setting_a_line(taskq, configured):
    proc = taskq("config", check=True)
    assert proc.stderr == ""
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in proc.stdout.splitlines()}
    assert rows["SETTING"] == ["SOURCE", "VALUE"]
    assert rows["spool"] == ["$TASKQ_SPOOL", str(configured)]
    assert rows["min_free"] == ["taskq.toml", "1048576"]
    assert rows["fsync"] == ["default", "true"]
    assert rows["defaults.max_attempts"] == ["[defaults]", "3"]
    assert rows["tasks.nightly-report.command"] == ["[tasks.nightly-report]", '["/bin/echo", "report"]']
    assert rows["tasks.nightly-report.backoff"] == ["[defaults]", "30.0"]
    assert "\x1b" not in proc.stdout


@pytest.mark.parametrize("how", ["before", "after"])
def test_the_spool_source_is_the_option_when_given(taskq, configured, how):
    args = ["--spool", str(configured), "config", "--json"] if how == "before" else ["config", "--spool",
                                                                                      str(configured), "--json"]
    data = json.loads(taskq(*args, spool=None, check=True).stdout)
    assert (data["spool"], data["spool_source"]) == (str(configured), "--spool")
    assert data["settings"]["min_free"]["source"] == "taskq.toml"


def test_the_default_spool_says_default(taskq, home):
    data = json.loads(taskq("config", "--json", spool=None, check=True).stdout)
    assert data["spool"] == str(home / "xdg-data" / "taskq" / "spool")
    assert (data["spool_source"], data["exists"]) == ("default", False)


def test_a_spool_that_does_not_exist_shows_the_built_in_settings_and_creates_nothing(taskq, spool):
    data = taskq.json("config", "--json")
    assert data["exists"] is False and data["file"] is None
    assert data["settings"]["min_free"] == entry(16 * 1024 * 1024, "default")
    assert "(no spool there yet)" in taskq("config", check=True).stdout
    assert not spool.exists()


@pytest.mark.parametrize("text", [
    "min_free = ",                          # not TOML
    "colour = true",                        # unknown setting
    "fsync = 3",                            # bad value
    "[defaults]\nmax_attempts = 0",         # bad job default
    "[tasks.x]\nbogus = 1",                 # unknown key of a task type
])
def test_a_broken_taskq_toml_fails_as_for_every_other_command(taskq, spool, text):
    taskq("init", check=True)
    (spool / "taskq.toml").write_text(text)
    other = taskq("add", "--", "true")
    assert other.returncode == 2
    for args in (["config"], ["config", "--json"]):
        proc = taskq(*args)
        line = assert_one_line_error(proc, 2, "taskq.toml")
        assert proc.stderr == other.stderr, line


# -- the report, in process ----------------------------------------------------------------


def test_a_setting_added_to_config_is_shown_with_no_change_to_the_report(tmp_path, monkeypatch):
    """Other settings join Config (log_max, hooks, ...): the report is driven by its
    fields, so they appear, with their source."""

    @dataclasses.dataclass
    class Grown(Config):
        log_max: int = 1000
        hooks: dict = dataclasses.field(default_factory=dict)

    def parse(raw: bytes | None, where: str = "taskq.toml") -> Config:
        data = config_report.load_toml(raw, where) if raw is not None else {}
        return Grown(**{k: v for k, v in data.items() if k in ("log_max", "hooks")})

    monkeypatch.setattr(config_report, "Config", Grown)
    monkeypatch.setattr(config_report, "parse_config", parse)
    spool = Spool(tmp_path)
    (tmp_path / "taskq.toml").write_text('[hooks]\non_failed = "notify-send"\n')
    data = config_report.report(spool, "--spool")
    assert data["settings"]["log_max"] == entry(1000, "default")
    assert data["settings"]["hooks"] == entry({"on_failed": "notify-send"}, "taskq.toml")
    base = {f.name for f in dataclasses.fields(Config)} - set(config_report.TABLES)
    assert set(data["settings"]) == base | {"log_max", "hooks"}
    json.dumps(data)  # stays JSON


def test_values_of_any_type_become_json():
    @dataclasses.dataclass
    class Odd:
        path: Path
        codes: frozenset

    value = config_report._plain({"a": (1, 2), "b": Odd(Path("/x"), frozenset({3})), "c": Path("/y")})
    assert value == {"a": [1, 2], "b": {"path": "/x", "codes": [3]}, "c": "/y"}


def test_report_uses_the_same_validation_as_the_spool(tmp_path):
    (tmp_path / "taskq.toml").write_text(TOML)
    spool = Spool(tmp_path)
    data = config_report.report(spool, "default")
    config = parse_config(TOML.encode(), str(tmp_path / "taskq.toml"))
    assert {k: v["value"] for k, v in data["tasks"]["nightly-report"].items()
            if v["source"] == "[tasks.nightly-report]"} == config.tasks["nightly-report"]
