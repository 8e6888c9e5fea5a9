"""``taskq config``: the settings a spool runs with, and where each one comes from.

Generic by construction, so that a new setting shows with no change here: every field
of :class:`taskq.config.Config` is a spool-wide setting, named as its key in
``taskq.toml``; ``[defaults]`` lists the job fields that have built-in defaults
(:data:`taskq.fields.DEFAULTS`) and any others the file sets; each ``[tasks.NAME]``
lists what a job of that type gets (its own keys, then the defaults it inherits).

A source is ``default`` (built in), ``taskq.toml`` (a top-level key of the file),
``[defaults]`` or ``[tasks.NAME]`` (a table of the file). The spool itself comes from
``--spool``, ``$TASKQ_SPOOL`` or ``default``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from .config import Config, load_toml, parse_config
from .fields import DEFAULTS

if TYPE_CHECKING:
    from .api import Spool

#: Fields of Config that are tables of job fields, shown in their own sections.
TABLES = ("defaults", "tasks")
BUILT_IN = "default"
FILE = "taskq.toml"
DEFAULTS_TABLE = "[defaults]"


def report(spool: Spool, origin: str) -> dict[str, Any]:
    """The effective settings of *spool* (whose path came from *origin*), each as
    ``{"value", "source"}``. An invalid taskq.toml raises the ValidationError every
    command raises for it. A spool that does not exist yet has the built-in settings."""
    raw = spool.store.read_config()
    where = spool.store.config_path()
    config = parse_config(raw, where)  # validates: the same error as any other command
    data = load_toml(raw, where) if raw is not None else {}
    settings = {
        f.name: _entry(getattr(config, f.name), FILE if f.name in data else BUILT_IN)
        for f in dataclasses.fields(Config) if f.name not in TABLES
    }
    defaults = _defaults(config, data)
    tasks = {}
    for name, table in config.tasks.items():
        own = {key: _entry(value, f"[tasks.{name}]") for key, value in table.items()}
        tasks[name] = {**own, **{key: entry for key, entry in defaults.items() if key not in own}}
    return {
        "spool": spool.path,
        "spool_source": origin,
        "exists": spool.store.exists(),
        "file": where if raw is not None else None,
        "settings": settings,
        "defaults": defaults,
        "tasks": tasks,
    }


def _defaults(config: Config, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Built-in job defaults overridden by the file's ``[defaults]`` (and by its
    top-level ``permanent_exit_codes``, which is a default too)."""
    table = data.get("defaults")
    in_table = table if isinstance(table, dict) else {}
    out = {}
    for key in [*DEFAULTS, *(k for k in config.defaults if k not in DEFAULTS)]:
        if key not in config.defaults:
            out[key] = _entry(DEFAULTS[key], BUILT_IN)
        else:
            out[key] = _entry(config.defaults[key], DEFAULTS_TABLE if key in in_table else FILE)
    return out


def _entry(value: Any, source: str) -> dict[str, Any]:
    return {"value": _plain(value), "source": source}


def _plain(value: Any) -> Any:
    """*value* as JSON data: whatever type a setting has, the report stays one json.dumps."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def lines(data: dict[str, Any]) -> list[str]:
    """The report for people: one setting a line, ``NAME SOURCE VALUE`` (the value
    last and as JSON, so that long commands do not break the columns and a string
    cannot pass for a number). Sections are prefixes: ``defaults.``, ``tasks.NAME.``."""
    rows = [("spool", data["spool_source"],
             data["spool"] + ("" if data["exists"] else "  (no spool there yet)"))]
    rows += [(name, e["source"], _show(e["value"])) for name, e in data["settings"].items()]
    rows += [(f"defaults.{name}", e["source"], _show(e["value"])) for name, e in data["defaults"].items()]
    for task, fields in data["tasks"].items():
        rows += [(f"tasks.{task}.{name}", e["source"], _show(e["value"])) for name, e in fields.items()]
    width = [max(len(row[i]) for row in rows + [("SETTING", "SOURCE", "")]) for i in (0, 1)]
    out = [f"{'SETTING':<{width[0]}}  {'SOURCE':<{width[1]}}  VALUE"]
    out += [f"{name:<{width[0]}}  {source:<{width[1]}}  {value}" for name, source, value in rows]
    return out


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
