"""examples/signup end to end: a real HTTP request to the example's web app (loopback),
the verification mail sent by a real ``taskq work`` through a real SMTP server
(aiosmtpd, loopback) that starts only after the first attempt failed, so the mail
arrives on a retry; then a sign-up while the mail server stays down, whose job fails
and whose ``on_failure`` hook raises the alert. Also the README's one command.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "signup"
sys.path.insert(0, str(EXAMPLE))

from demo import Example, free_port  # noqa: E402 - from the example's directory
from mailserver import MailServer  # noqa: E402

WAIT = 60.0


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Example]:
    ex = Example(tmp_path / "spool", free_port(), tmp_path / "alerts.log")
    ex.setup()
    try:
        yield ex
    finally:
        ex.stop()


def test_signup_mail_is_sent_on_a_retry_once_the_mail_server_is_up(example: Example):
    example.start_app()
    example.start_worker()
    status, body, _ = example.post_signup("ada@example.org")
    assert status == 202 and body["status"] == "check your mailbox"
    job_id = body["job"]
    job = example.api.get(job_id)
    assert job.name == "send-verification"
    assert job.payload["email"] == "ada@example.org"
    assert job.cwd == str(EXAMPLE)  # where the app runs: the task type's command is found there

    job = example.wait_failed_attempt(job_id)  # the mail server is down
    assert job.attempts[0].exit_code == 75 and job.last_error == "exit status 75"

    server = MailServer(example.smtp_port).start()
    try:
        assert example.api.wait([job_id], timeout=WAIT) == {job_id: "done"}
        messages = server.inbox.wait(1, WAIT)
    finally:
        server.stop()
    job = example.api.get(job_id)
    assert len(job.attempts) >= 2 and job.attempts[-1].exit_code == 0
    assert len(messages) == 1
    mail = messages[0]
    assert mail["To"] == "ada@example.org"
    assert mail["Subject"] == "Confirm your e-mail address"
    assert mail["Message-ID"] == f"<{job_id}@signup.example>"
    link = next(word for word in mail.get_content().split() if word.startswith("http://127.0.0.1:"))
    assert example.get(link) == (200, {"verified": "ada@example.org"})
    assert not example.alerts.exists()  # no failure, no alert


def test_mail_server_down_for_good_the_on_failure_hook_alerts(example: Example):
    example.start_app()
    example.start_worker()
    status, body, _ = example.post_signup("bob@example.org")
    assert status == 202
    job_id = body["job"]
    assert example.api.wait([job_id], timeout=WAIT) == {job_id: "failed"}
    job = example.api.get(job_id)
    assert len(job.attempts) == 3 and job.last_error == "exit status 75"
    alert = _wait_text(example.alerts)
    assert alert == (f"ALERT: verification mail to bob@example.org not sent after 3 attempt(s): "
                     f"exit status 75 (job {job_id})\n")
    log = example.api.read_log(job_id).decode()
    assert "=== taskq: hook on_failure for attempt 3 started " in log
    assert "ALERT: verification mail to bob@example.org" in log
    assert "cannot send through 127.0.0.1:" in log  # the job's own output, each attempt


def test_the_readme_command_runs_the_whole_scenario():
    proc = subprocess.run([sys.executable, str(EXAMPLE / "demo.py")], capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== all as expected" in proc.stdout
    assert "the on_failure hook alerted: ALERT: verification mail to bob@example.org" in proc.stdout


def _wait_text(path: Path) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    return path.read_text() if path.exists() else ""
