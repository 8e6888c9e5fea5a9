"""A small web back end whose sign-up handler enqueues the verification e-mail and
returns at once (standard library only, plus taskq).

    POST /signup   {"email": "ada@example.org"}  (or a form field email=...)
                   → 202 {"job": ID, "status": "check your mailbox"}
    GET  /verify?token=...                        → 200 once the link is opened

The mail itself is sent later by a taskq worker (``send_verification.py``, task type
``send-verification`` in ``taskq.toml``): a slow or unreachable mail server never
slows down or fails a sign-up. The spool is ``$TASKQ_SPOOL`` (or taskq's default).

    python3 app.py --port 8000
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import taskq

MAX_BODY = 10_000


class SignupApp:
    """The application's state: its spool and the sign-ups waiting for verification."""

    def __init__(self, spool: taskq.Spool, base_url: str) -> None:
        self.spool = spool
        self.base_url = base_url
        self.lock = threading.Lock()
        self.pending: dict[str, str] = {}  # token → e-mail (a real app: a database table)
        self.verified: set[str] = set()

    def sign_up(self, email: str) -> taskq.Job:
        token = secrets.token_urlsafe(16)
        with self.lock:
            self.pending[token] = email
        # One durable write into the spool, then the request is answered: the worker
        # sends the mail, retrying while the mail server is down.
        return self.spool.add(name="send-verification",
                              payload={"email": email, "verify_url": f"{self.base_url}/verify?token={token}"})

    def verify(self, token: str) -> str | None:
        with self.lock:
            email = self.pending.pop(token, None)
            if email is not None:
                self.verified.add(email)
        return email


def handler_for(app: SignupApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            if urlsplit(self.path).path != "/signup":
                return self.reply(HTTPStatus.NOT_FOUND, {"error": "not found"})
            email = self.email()
            if not email:
                return self.reply(HTTPStatus.BAD_REQUEST, {"error": "give a valid e-mail address"})
            try:
                job = app.sign_up(email)
            except taskq.TaskqError as exc:  # the spool is unusable (disk full...): say so
                return self.reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            self.reply(HTTPStatus.ACCEPTED, {"job": job.id, "status": "check your mailbox"})

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            if url.path != "/verify":
                return self.reply(HTTPStatus.NOT_FOUND, {"error": "not found"})
            token = parse_qs(url.query).get("token", [""])[0]
            email = app.verify(token)
            if email is None:
                return self.reply(HTTPStatus.NOT_FOUND, {"error": "unknown or used link"})
            self.reply(HTTPStatus.OK, {"verified": email})

        def email(self) -> str | None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return None
            body = self.rfile.read(length).decode("utf-8", "replace")
            if self.headers.get("Content-Type", "").startswith("application/json"):
                try:
                    data = json.loads(body)
                except ValueError:
                    return None
                email = data.get("email") if isinstance(data, dict) else None
            else:
                email = (parse_qs(body).get("email") or [None])[0]
            if not isinstance(email, str):
                return None
            email = email.strip()
            local, at, domain = email.partition("@")
            return email if at and local and "." in domain and len(email) <= 254 and " " not in email else None

        def reply(self, status: HTTPStatus, body: dict[str, object]) -> None:
            data = json.dumps(body).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the API's name
            print(f"app | {self.address_string()} {format % args}", flush=True)

    return Handler


def make_server(host: str, port: int, spool: taskq.Spool) -> ThreadingHTTPServer:
    """The HTTP server (not yet serving); port 0 picks a free one."""
    server = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
    base_url = f"http://{host}:{server.server_address[1]}"
    server.RequestHandlerClass = handler_for(SignupApp(spool, base_url))
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = make_server(args.host, args.port, taskq.Spool())
    print(f"app | listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
