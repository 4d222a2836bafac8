#!/bin/sh
# moatless postrm: on purge only, the data (CA keys, store, admin token,
# the agent's and sidecars' SVIDs) goes too; "remove" keeps it, so a
# reinstall finds the same CA. The system
# user is kept (Debian's practice: its uid may own files elsewhere).
set -e
if [ "$1" = purge ]; then
	rm -rf /var/lib/moatless /var/lib/moatless-agent /var/lib/moatless-sidecar
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
