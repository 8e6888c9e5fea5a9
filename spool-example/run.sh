#!/usr/bin/env bash
# Try the example spool on a copy: status and list; then, if this taskq has a
# `work` command, run every ready job once and show where each one ended.
# The checked-in files are never modified.
#
#   spool-example/run.sh                      # the taskq on PATH
#   TASKQ=.venv/bin/taskq spool-example/run.sh
set -euo pipefail

TASKQ=${TASKQ:-taskq}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! command -v "$TASKQ" >/dev/null 2>&1; then
    echo "run.sh: $TASKQ not found; install taskq or set TASKQ=/path/to/taskq" >&2
    exit 1
fi

spool=$(mktemp -d "${TMPDIR:-/tmp}/taskq-example.XXXXXX")
cp -R "$here/taskq.toml" "$here/tmp" "$here/pending" "$here/running" \
      "$here/done" "$here/failed" "$here/logs" "$spool/"
# git keeps no modes: give the copy those of a real spool.
find "$spool" -type d -exec chmod 0700 {} +
find "$spool" -type f -exec chmod 0600 {} +
echo "example spool copied to $spool"

show() {
    echo
    echo "\$ taskq $*"
    "$TASKQ" "$@"
}

show status --spool "$spool"
show list --spool "$spool"

if ! "$TASKQ" work --help >/dev/null 2>&1; then
    echo
    echo "This taskq has no 'work' command: stopping before running the jobs."
    echo "The copy is at $spool (rm -rf it when done)."
    exit 0
fi

show work --burst --spool "$spool" || echo "(taskq work exited with status $?)"
show status --spool "$spool"
show list --spool "$spool"

echo
echo "\$ ls $spool/logs"
ls "$spool/logs"
for state in done failed; do
    for job in "$spool/$state"/*.json; do
        [ -e "$job" ] || continue
        id=$(basename "$job" .json)
        log="$spool/logs/$id.log"
        echo
        echo "--- $state: $log"
        if [ -f "$log" ]; then cat "$log"; else echo "(no log)"; fi
    done
done

echo
echo "The copy is at $spool (rm -rf it when done)."
