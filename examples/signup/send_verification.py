"""The job: send one verification e-mail through SMTP.

Run by a taskq worker with the payload on stdin: {"email": ..., "verify_url": ...}.
The mail server is ``$SMTP_HOST:$SMTP_PORT`` (default 127.0.0.1:8025), inherited from
the worker's environment.

Exit status, as taskq reads it (README, "taskq work"): 0 sent; 75 the server could not
be reached or answered "try later" (taskq retries with backoff); 100 the server refused
the address for good (listed in ``permanent_exit_codes``: failed at once, no retry).
"""

from __future__ import annotations

import json
import os
import smtplib
import sys
from email.message import EmailMessage

TEMPORARY = 75  # EX_TEMPFAIL
PERMANENT = 100


def main() -> int:
    payload = json.load(sys.stdin)
    host = os.environ.get("SMTP_HOST", "127.0.0.1")
    port = int(os.environ.get("SMTP_PORT", "8025"))
    msg = EmailMessage()
    msg["From"] = os.environ.get("MAIL_FROM", "no-reply@signup.example")
    msg["To"] = payload["email"]
    msg["Subject"] = "Confirm your e-mail address"
    # The job id is the same at every attempt: a reader (or a mail filter) can tell a
    # mail sent twice (a job runs at least once) by its Message-ID.
    msg["Message-ID"] = f"<{os.environ['TASKQ_JOB_ID']}@signup.example>"
    msg.set_content(f"Welcome! Please confirm your address by opening:\n\n    {payload['verify_url']}\n")
    try:
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        print(f"address refused: {exc.recipients}", file=sys.stderr)
        return PERMANENT
    except (OSError, smtplib.SMTPException) as exc:
        print(f"cannot send through {host}:{port}: {exc}", file=sys.stderr)
        return TEMPORARY
    print(f"sent verification mail to {payload['email']} through {host}:{port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
