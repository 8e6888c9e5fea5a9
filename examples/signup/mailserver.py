"""A real SMTP server on loopback for the example (aiosmtpd), keeping what it receives.

Used by demo.py and the example's test; on its own it prints each mail it receives:

    python3 mailserver.py --port 8025

aiosmtpd comes with taskq's ``test`` extra (``pip install 'taskq-spool[test]'``); it is
not a dependency of taskq itself.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import threading
import time
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


class Inbox:
    """aiosmtpd handler: every message received, parsed."""

    def __init__(self, echo: bool = False) -> None:
        self.messages: list[EmailMessage] = []
        self.echo = echo
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's API
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.messages.append(msg)
        if self.echo:
            print(f"mail | to {msg['To']}: {msg['Subject']}\n{msg.get_content()}", flush=True)
        return "250 OK"

    def wait(self, count: int, timeout: float) -> list[EmailMessage]:
        """The messages once there are at least *count* (or when *timeout* s have passed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    break
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)


class MailServer:
    """An SMTP server on 127.0.0.1:*port* in a thread of this process."""

    def __init__(self, port: int, echo: bool = False) -> None:
        self.inbox = Inbox(echo)
        self.port = port
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=port)

    def start(self) -> MailServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="a local SMTP server that prints what it receives")
    parser.add_argument("--port", type=int, default=8025)
    args = parser.parse_args()
    server = MailServer(args.port, echo=True).start()
    print(f"mail | listening on 127.0.0.1:{args.port} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
