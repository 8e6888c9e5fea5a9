"""The on_failure hook: a verification mail could not be sent, tell someone.

taskq runs it with the job's record as JSON on stdin and TASKQ_* variables (README,
"Hooks"). It prints one line (into the job's log) and appends it to the file
``$SIGNUP_ALERTS`` if that is set; a real deployment would page someone or post to a
chat instead.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    job = json.load(sys.stdin)
    email = (job.get("payload") or {}).get("email", "?")
    line = (f"ALERT: verification mail to {email} not sent after {os.environ['TASKQ_ATTEMPT']} attempt(s): "
            f"{os.environ['TASKQ_ERROR']} (job {os.environ['TASKQ_JOB_ID']})")
    print(line)
    path = os.environ.get("SIGNUP_ALERTS")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
