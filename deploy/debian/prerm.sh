#!/bin/sh
# moatless prerm: stop the units before their binary goes.
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	systemctl stop moatless-server moatless-agent 'moatless-sidecar@*.service' >/dev/null 2>&1 || true
fi
exit 0
