#!/bin/sh
# moatless postinst: the system user the server runs as, and its data
# directory. Idempotent: upgrades and reinstalls run it again.
set -e
if [ "$1" = configure ]; then
	if ! getent group moatless >/dev/null; then
		groupadd --system moatless
	fi
	if ! getent passwd moatless >/dev/null; then
		useradd --system --gid moatless --home-dir /var/lib/moatless --no-create-home \
			--shell /usr/sbin/nologin --comment "Moatless control plane" moatless
	fi
	# 0700: the KEK, the CA keys (sealed) and the admin token live here.
	install -d -o moatless -g moatless -m 0700 /var/lib/moatless
	install -d -o root -g root -m 0755 /etc/moatless
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null || true
		# Like most daemons with a security boundary: not started until
		# configured. "systemctl enable --now moatless-server" starts it.
		if systemctl is-active --quiet moatless-server; then
			systemctl restart moatless-server || true
		fi
		# Running sidecars move to the new binary; each drains its open
		# requests on SIGTERM. Instances not running stay so.
		systemctl try-restart 'moatless-sidecar@*.service' >/dev/null 2>&1 || true
	fi
fi
exit 0
