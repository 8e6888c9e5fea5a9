"""Security: private modes whatever the umask, symlinks never followed, a worker that
refuses a spool other users could plant jobs in, argv never through a shell, and
payloads kept out of process titles, argv, environments and event lines."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from workerutil import LAYOUT, STATES, alive, sh, wait_for, workers  # noqa: F401 - fixture


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def run_umask0(taskq, *args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run ``taskq ARGS`` with umask 000."""
    return subprocess.run(taskq.argv(list(args)), input=input, capture_output=True, text=True,
                          env=taskq.env(env=env or None), timeout=60, preexec_fn=lambda: os.umask(0),
                          stdin=None if input is not None else subprocess.DEVNULL)


def find_pending(spool: Path, job_id: str) -> Path:
    (name,) = [n for n in os.listdir(spool / "pending") if f".{job_id}." in n]
    return spool / "pending" / name


# -- modes --------------------------------------------------------------------------------------


def test_private_modes_with_umask_000(taskq, tmp_path):
    spool = tmp_path / "deep" / "er" / "spool"
    env = {"TASKQ_SPOOL": str(spool)}
    job = run_umask0(taskq, "add", "--unique-key", "k", "--payload", '{"pii": 1}', "--", "echo", "hi", **env)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip()
    bad = run_umask0(taskq, "add", "--batch", "-", input="{not json\n", **env)
    assert bad.returncode == 2
    # a file that is not a job, for the quarantine's .reason
    staged = spool / "tmp" / "x"
    staged.write_text("{broken")
    os.chmod(staged, 0o600)
    os.rename(staged, spool / "pending" / "broken.json")
    assert run_umask0(taskq, "pause", **env).returncode == 0
    assert mode(spool / "paused") & 0o077 == 0
    assert run_umask0(taskq, "resume", **env).returncode == 0
    work = run_umask0(taskq, "work", "--burst", **env)
    assert work.returncode == 0, work.stderr
    assert mode(spool) == 0o700
    for name in LAYOUT + ("keys",):
        assert mode(spool / name) == 0o700, name
    # parents taskq created are not writable by others either
    for parent in (tmp_path / "deep", tmp_path / "deep" / "er"):
        assert mode(parent) & 0o022 == 0, f"{parent} is {mode(parent):04o}"
    files = [p for p in spool.rglob("*") if p.is_file()]
    assert any(p.parent.name == "done" for p in files) and any(p.suffix == ".reason" for p in files)
    assert any(p.parent.name == "logs" for p in files) and any(p.parent.name == "keys" for p in files)
    for path in files:
        assert mode(path) == 0o600, f"{path.relative_to(spool)} is {mode(path):04o}"
    assert (spool / "done" / f"{job_id}.json").exists()


def test_private_modes_while_a_job_runs_with_umask_000(taskq, spool, tmp_path):
    release = tmp_path / "release"
    job = taskq.add(*sh(f'while [ ! -e "{release}" ]; do sleep 0.05; done'))
    proc = subprocess.Popen(taskq.argv(["work", "--burst"]), env=taskq.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0))
    try:
        wait_for(lambda: (spool / "running" / f"{job}.json").exists() and (spool / "logs" / f"{job}.log").exists(),
                 timeout=15, message="the job to run")
        for name in (f"{job}.json", f"{job}.lock"):
            assert mode(spool / "running" / name) == 0o600, name
        assert mode(spool / "logs" / f"{job}.log") == 0o600
    finally:
        release.touch()
        proc.wait(30)
    assert proc.returncode == 0


# -- symlinks --------------------------------------------------------------------------------------


def test_symlink_in_pending_is_never_followed_nor_run(taskq, spool, tmp_path):
    taskq("work", "--burst", check=True)  # the spool exists, empty
    flag = tmp_path / "ran"
    outside = tmp_path / "outside"
    outside.mkdir()
    record = {"id": "LINKED", "command": sh(f'touch "{flag}"'), "cwd": "/", "created_at": "2020-01-01T00:00:00.000Z",
              "run_at": "2020-01-01T00:00:00.000Z", "version": 1}
    target = outside / "job.json"
    target.write_text(json.dumps(record))
    before = target.read_bytes()
    links = ["0999999999.20000101T000000000Z.LINKED.json", "linked.json",
             "0999999999.20000101T000000000Z.L2.after.json"]
    for name in links:
        os.symlink(target, spool / "pending" / name)
    os.symlink(outside, spool / "pending" / "dirlink.json")
    good = taskq.add("true")
    taskq("work", "--burst", check=True, timeout=30)
    assert not flag.exists(), "a symlinked job was run"
    for name in links + ["dirlink.json"]:
        assert (spool / "pending" / name).is_symlink(), name
    assert target.read_bytes() == before and sorted(os.listdir(outside)) == ["job.json"]
    assert (spool / "done" / f"{good}.json").exists()
    assert [n for n in os.listdir(spool / "failed")] == []
    assert [n for n in os.listdir(spool / "running")] == []
    # read commands do not follow it either
    assert taskq("show", "LINKED").returncode == 1
    status = taskq.json("status", "--json")
    assert status["counts"]["pending"] == 0


def test_symlinked_state_directory_is_refused(taskq, spool, tmp_path):
    taskq.add("true")
    elsewhere = tmp_path / "elsewhere"
    os.rename(spool / "done", elsewhere)
    os.symlink(elsewhere, spool / "done")
    proc = taskq("work", "--burst")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert "refusing" in line and "done" in line
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("where", ["lock", "log"])
@pytest.mark.parametrize("dangling", [False, True], ids=["existing-target", "dangling"])
def test_planted_symlink_at_lock_or_log_is_not_followed(taskq, spool, tmp_path, where, dangling):
    flag = tmp_path / "ran"
    job = taskq.add(*sh(f'echo output; touch "{flag}"'), options=["--max-attempts", "1"])
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_bytes(b"precious\n")
        os.chmod(victim, 0o644)
    link = spool / ("running" if where == "lock" else "logs") / (f"{job}.lock" if where == "lock" else f"{job}.log")
    os.symlink(victim, link)
    proc = taskq("work", "--burst", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    if dangling:
        assert not victim.exists(), "the symlink's target was created"
    else:
        assert victim.read_bytes() == b"precious\n" and mode(victim) == 0o644
    assert link.is_symlink()
    state = [s for s in STATES if any(job in n for n in os.listdir(spool / s) if n.endswith(".json"))]
    assert len(state) == 1
    if where == "lock":
        # no run lock, no run: the job waits in pending/, and the worker says why
        assert state == ["pending"] and not flag.exists()
        assert f"cannot claim {job}" in proc.stderr and "lock" in proc.stderr
    else:
        # no log, no run: a failed attempt saying why
        assert state == ["failed"] and not flag.exists()
        rec = taskq.json("show", job, "--json")
        assert "cannot open log" in rec["last_error"]
        logs = taskq("logs", job)
        assert b"precious" not in logs.stdout.encode() and logs.returncode in (0, 1)


def test_planted_symlink_at_a_reason_file_is_replaced_not_followed(taskq, spool, tmp_path):
    taskq("work", "--burst", check=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.symlink(victim, spool / "failed" / "BADJOB.reason")
    (spool / "tmp" / "x").write_bytes(b"{broken")
    os.rename(spool / "tmp" / "x", spool / "pending" / "0999999999.20000101T000000000Z.BADJOB.json")
    taskq("work", "--burst", check=True)
    assert victim.read_bytes() == b"precious\n"
    assert (spool / "failed" / "BADJOB.json").read_bytes() == b"{broken"
    reason = spool / "failed" / "BADJOB.reason"
    assert not reason.is_symlink() and "invalid" in json.loads(reason.read_bytes())["last_error"]


def test_planted_symlink_at_a_unique_key_file_is_not_followed(taskq, spool, tmp_path):
    taskq.add("true")
    (spool / "keys").mkdir(mode=0o700, exist_ok=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.symlink(victim, spool / "keys" / hashlib.sha256(b"the-key").hexdigest())
    proc = taskq("add", "--unique-key", "the-key", "--", "true")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert "keys" in line
    assert victim.read_bytes() == b"precious\n"
    assert len(os.listdir(spool / "pending")) == 1


# -- spools other users could plant jobs in -----------------------------------------------------------


@pytest.mark.parametrize("what, chmod", [
    ("spool", 0o702), ("spool", 0o720), ("spool", 0o777),
    ("pending", 0o702), ("pending", 0o720), ("tmp", 0o777), ("running", 0o722),
])
def test_work_refuses_a_spool_writable_by_others(taskq, spool, tmp_path, what, chmod):
    flag = tmp_path / "ran"
    job = taskq.add(*sh(f'touch "{flag}"'))
    path = spool if what == "spool" else spool / what
    os.chmod(path, chmod)
    proc = taskq("work", "--burst", timeout=30)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("taskq: refusing") and str(path) in line
    assert ("others" in line) if chmod & 0o002 else ("group" in line)
    assert not flag.exists()
    assert find_pending(spool, job).exists()
    assert "Traceback" not in proc.stderr


def test_work_refuses_a_spool_owned_by_another_user(taskq, spool, tmp_path):
    flag = tmp_path / "ran"
    job = taskq.add(*sh(f'touch "{flag}"'))
    try:
        nobody = pwd.getpwnam("nobody")
        os.chown(spool / "pending", nobody.pw_uid, nobody.pw_gid)
    except (KeyError, PermissionError, OSError) as exc:
        pytest.skip(f"cannot chown to nobody: {exc}")
    proc = taskq("work", "--burst", timeout=30)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "refusing" in line and "owned by uid" in line and str(nobody.pw_uid) in line
    assert not flag.exists() and find_pending(spool, job).exists()
    os.chown(spool / "pending", os.getuid(), os.getgid())
    os.chown(spool, nobody.pw_uid, nobody.pw_gid)
    proc = taskq("work", "--burst", timeout=30)
    assert proc.returncode == 1 and "owned by uid" in proc.stderr
    assert not flag.exists()


def test_work_runs_again_once_the_modes_are_fixed(taskq, spool, tmp_path):
    flag = tmp_path / "ran"
    taskq.add(*sh(f'touch "{flag}"'))
    os.chmod(spool / "pending", 0o777)
    assert taskq("work", "--burst").returncode == 1
    os.chmod(spool / "pending", 0o700)
    taskq("work", "--burst", check=True)
    assert flag.exists()


# -- no shell ------------------------------------------------------------------------------------


HOSTILE_ARGS = ["$(touch {d}/dollar)", "; touch {d}/semicolon", "`touch {d}/backtick`", "| touch {d}/pipe",
                "&& touch {d}/and", "> {d}/redirect", "$HOME", "*", "'", '"', "\\", "\n touch {d}/newline"]


def test_commands_run_as_argv_never_through_a_shell(taskq, spool, tmp_path):
    d = tmp_path / "trap"
    d.mkdir()
    args = [a.format(d=d) for a in HOSTILE_ARGS]
    out = tmp_path / "argv.json"
    printer = [sys.executable, "-c", f"import json, sys; json.dump(sys.argv[1:], open({str(out)!r}, 'w'))"]
    job = taskq.add(*printer, *args, options=["--name", "$(touch " + str(d) + "/name)",
                                              "--env", f"V=$(touch {d}/env)"])
    value = f"`touch {d}/env2`; $(id)"
    printer_job = taskq.add("printenv", "V", options=["--env", f"V={value}"], cwd=tmp_path)
    taskq("work", "--burst", check=True, cwd=d)
    assert json.loads(out.read_text()) == args
    assert os.listdir(d) == [], f"a shell ran: {os.listdir(d)}"
    assert taskq.json("show", job, "--json")["state"] == "done"
    assert value + "\n" in (spool / "logs" / f"{printer_job}.log").read_text()


def test_shell_only_with_the_shell_option(taskq, spool, tmp_path):
    flag = tmp_path / "via-shell"
    job = taskq.add(f'touch "{flag}" && echo ok', options=["--shell"])
    assert taskq.json("show", job, "--json")["command"] == ["/bin/sh", "-c", f'touch "{flag}" && echo ok']
    taskq("work", "--burst", check=True)
    assert flag.exists()


# -- payloads stay private ---------------------------------------------------------------------------


def all_cmdlines() -> dict[int, bytes]:
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    out[int(pid)] = fh.read()
            except OSError:
                continue
    return out


def test_payload_never_in_argv_process_titles_environment_or_events(taskq, spool, tmp_path, workers):
    secret = f"TOPSECRET-{uuid.uuid4().hex}"
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(json.dumps({"card": secret, "note": "x" * 100}))
    got = tmp_path / "got"
    pidfile = tmp_path / "pid"
    release = tmp_path / "release"
    code = (f'echo $$ > "{pidfile}"; cat > "{got}"; '
            f'while [ ! -e "{release}" ]; do sleep 0.05; done; echo done-with-it')
    job = taskq.add(*sh(code), options=["--payload-file", str(payload_file), "--name", "private"])
    w = workers.start()
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() and got.exists()
                 and secret in got.read_text(), timeout=15, message="the job to read its payload")
        job_pid = int(pidfile.read_text())
        assert alive(job_pid)
        cmdlines = all_cmdlines()
        assert w.pid in cmdlines and job_pid in cmdlines
        leaks = [pid for pid, line in cmdlines.items() if secret.encode() in line]
        assert leaks == [], f"the payload is in the argv of {leaks}"
        for pid in (job_pid, w.pid):
            with open(f"/proc/{pid}/environ", "rb") as fh:
                assert secret.encode() not in fh.read(), f"the payload is in the environment of {pid}"
            try:
                with open(f"/proc/{pid}/comm", "rb") as fh:
                    assert secret.encode() not in fh.read()
            except FileNotFoundError:
                pass
        # the job's record is private, and the payload reached only its stdin
        running = spool / "running" / f"{job}.json"
        assert mode(running) == 0o600
    finally:
        release.touch()
    wait_for(lambda: (spool / "done" / f"{job}.json").exists(), timeout=15, message="the job to finish")
    w.send(15)
    assert w.wait(20) == 0
    assert secret not in w.stderr() and secret not in w.stdout()
    assert f"succeeded {job}" in w.stderr()
    log = (spool / "logs" / f"{job}.log").read_text()
    assert secret not in log and "done-with-it" in log
    assert json.loads(got.read_text())["card"] == secret


def test_payload_not_in_failure_events_or_reason(taskq, spool, tmp_path):
    secret = f"TOPSECRET-{uuid.uuid4().hex}"
    taskq.add("sh", "-c", "cat >/dev/null; exit 3", options=["--payload", json.dumps({"s": secret}),
                                                           "--max-attempts", "1"])
    # and a drop-in that is not a valid job, with the payload in it
    (spool / "tmp" / "x").write_text(json.dumps({"command": 5, "payload": {"s": secret}}))
    os.rename(spool / "tmp" / "x", spool / "pending" / "bad.json")
    proc = taskq("work", "--burst", check=True)
    assert secret not in proc.stderr
    for path in (spool / "failed").glob("*.reason"):
        assert secret not in path.read_text()
    for job in taskq.json("list", "--state", "failed", "--json"):
        assert secret not in (job["last_error"] or "")
    status = taskq("status")
    assert secret not in status.stdout
