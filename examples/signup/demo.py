"""The sign-up example from end to end, on this machine, in one command:

    python3 examples/signup/demo.py [--keep]

It makes a spool in a temporary directory with this directory's taskq.toml, starts
the web app (app.py), a taskq worker and, later, a real SMTP server on loopback
(mailserver.py, aiosmtpd), then:

1. signs up ada@example.org with a real HTTP request: the app answers 202 at once;
   the mail server is down, so the job's first attempt fails and is retried;
2. starts the mail server: the retry delivers the mail, which is shown; opens the
   verification link from it;
3. stops the mail server and signs up bob@example.org: every attempt fails, the job
   ends in failed/, and the task type's on_failure hook (alert.py) raises the alert.

Exits 0 when all of that happened as described, 1 otherwise. ``--keep`` keeps the spool
to look at (``TASKQ_SPOOL=... taskq list``, ``taskq logs ID``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import taskq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mailserver import MailServer  # noqa: E402 - beside this file

WAIT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def forward(stream: IO[str], prefix: str) -> None:
    """Print a child's output lines, each under *prefix*, from a thread."""
    def copy() -> None:
        for line in stream:
            print(f"{prefix}{line.rstrip()}", flush=True)

    threading.Thread(target=copy, daemon=True).start()


class Example:
    """The example's processes: the web app and a worker on one spool."""

    def __init__(self, spool: Path, smtp_port: int, alerts: Path) -> None:
        self.spool = spool
        self.smtp_port = smtp_port
        self.alerts = alerts
        self.api = taskq.Spool(spool)
        self.procs: list[subprocess.Popen[str]] = []
        self.url = ""

    def env(self) -> dict[str, str]:
        return {**os.environ, "TASKQ_SPOOL": str(self.spool), "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(self.smtp_port), "SIGNUP_ALERTS": str(self.alerts), "PYTHONUNBUFFERED": "1"}

    def setup(self) -> None:
        """The spool with the example's taskq.toml."""
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy(HERE / "taskq.toml", self.spool / "taskq.toml")

    def start_app(self) -> str:
        proc = subprocess.Popen([sys.executable, str(HERE / "app.py"), "--port", "0"], cwd=HERE, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "app | listening on http://127.0.0.1:PORT"
        if "listening on " not in first:
            raise RuntimeError(f"the web app did not start: {first!r}")
        print(first.rstrip(), flush=True)
        forward(proc.stdout, "")
        self.url = first.split("listening on ", 1)[1].strip()
        return self.url

    def start_worker(self) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "taskq", "work"], env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stderr is not None
        forward(proc.stderr, "worker | ")

    def post_signup(self, email: str) -> tuple[int, dict[str, Any], float]:
        """POST /signup; returns (status, JSON body, seconds it took)."""
        request = urllib.request.Request(f"{self.url}/signup", data=json.dumps({"email": email}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), time.monotonic() - started

    def get(self, url: str) -> tuple[int, dict[str, Any]]:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())

    def wait_failed_attempt(self, job_id: str, timeout: float = WAIT) -> taskq.Job:
        """Wait until the job's first attempt has failed and it is back in pending/."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api.get(job_id)
            if job.state == "pending" and job.attempts and job.attempts[0].finished_at:
                return job
            if job.state in ("done", "failed"):
                raise RuntimeError(f"job {job_id} is {job.state} already")
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id}: no failed attempt after {timeout:g}s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # the worker: a clean stop; the app: KeyboardInterrupt
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"demo: FAILED: {what}")


def run(example: Example) -> None:
    api = example.api
    print(f"\n== the web app, a worker, and no mail server yet (127.0.0.1:{example.smtp_port} is closed)")
    example.setup()
    example.start_app()
    example.start_worker()

    print("\n== 1. sign up ada@example.org while the mail server is down")
    status, body, took = example.post_signup("ada@example.org")
    print(f"POST /signup -> {status} {body} in {took * 1000:.0f} ms (the mail is not sent yet)")
    check(status == 202, "the sign-up was not accepted")
    ada = body["job"]
    job = example.wait_failed_attempt(ada)
    print(f"attempt 1 failed ({job.last_error}); retry at {job.run_at}")

    print("\n== 2. the mail server comes up: the retry delivers the mail")
    server = MailServer(example.smtp_port).start()
    try:
        states = api.wait([ada], timeout=WAIT)
        job = api.get(ada)
        print(f"job {ada}: {states[ada]} after {len(job.attempts)} attempts")
        check(states[ada] == "done" and len(job.attempts) >= 2, "the mail was not sent on a retry")
        messages = server.inbox.wait(1, WAIT)
        check(len(messages) == 1, "the mail server did not receive the mail")
        mail = messages[0]
        print(f"received: To: {mail['To']} | Subject: {mail['Subject']} | Message-ID: {mail['Message-ID']}")
        print("  " + mail.get_content().strip().replace("\n", "\n  "))
        link = next(word for word in mail.get_content().split() if word.startswith("http"))
        status, verified = example.get(link)
        print(f"GET {link} -> {status} {verified}")
        check(verified == {"verified": "ada@example.org"}, "the verification link did not work")
    finally:
        server.stop()

    print("\n== 3. the mail server is down for good: sign up bob@example.org")
    status, body, took = example.post_signup("bob@example.org")
    print(f"POST /signup -> {status} {body} in {took * 1000:.0f} ms")
    bob = body["job"]
    states = api.wait([bob], timeout=WAIT)
    job = api.get(bob)
    print(f"job {bob}: {states[bob]} after {len(job.attempts)} attempts ({job.last_error})")
    check(states[bob] == "failed", "the job did not fail")
    deadline = time.monotonic() + WAIT
    while not (example.alerts.exists() and example.alerts.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    alert = example.alerts.read_text().strip() if example.alerts.exists() else ""
    print(f"the on_failure hook alerted: {alert}")
    check("bob@example.org" in alert and bob in alert, "no alert from the on_failure hook")
    print("\n== all as expected")


def main() -> None:
    parser = argparse.ArgumentParser(description="the taskq sign-up example, end to end")
    parser.add_argument("--keep", action="store_true", help="keep the spool (its path is printed)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="taskq-signup-"))
    example = Example(tmp / "spool", free_port(), tmp / "alerts.log")
    print(f"spool: {example.spool}")
    try:
        run(example)
    finally:
        example.stop()
        if args.keep:
            print(f"kept: TASKQ_SPOOL={example.spool} taskq list")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
