"""A drop-in file that gives its own id is visible (list, show, wait) before a worker
has taken it in, as the job it will become."""

from __future__ import annotations

import json
import os


def drop(spool, name: str, record: dict) -> None:
    tmp = spool / "tmp" / f"{name}.part"
    tmp.write_text(json.dumps(record))
    os.rename(tmp, spool / "pending" / f"{name}.json")


def test_dropin_with_id_is_listed_shown_and_waited_for(taskq, spool):
    taskq("add", "--", "true", check=True)  # creates the spool
    drop(spool, "from-php", {"id": "invoice-42", "command": ["echo", "hi"], "priority": 3})
    drop(spool, "anonymous", {"command": ["echo", "no id yet"]})

    listed = json.loads(taskq("list", "--json", check=True).stdout)
    assert [j["id"] for j in listed if j["id"] == "invoice-42"] == ["invoice-42"]
    shown = json.loads(taskq("show", "invoice-42", "--json", check=True).stdout)
    assert (shown["state"], shown["priority"], shown["command"]) == ("pending", 3, ["echo", "hi"])
    assert shown["max_attempts"] == 5 and shown["attempts"] == []

    waiter = taskq.popen("wait", "invoice-42", "--timeout", "20")
    try:
        taskq("work", "--burst", check=True)
        assert waiter.wait(timeout=20) == 0, waiter.stderr.read()
    finally:
        if waiter.poll() is None:
            waiter.kill()
    done = json.loads(taskq("show", "invoice-42", "--json", check=True).stdout)
    assert done["state"] == "done"
    assert json.loads(taskq("status", "--json", check=True).stdout)["counts"]["done"] == 3
