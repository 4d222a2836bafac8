// Package userns tells what user namespaces do to the ids a process sees
// of others: the kernel reports every uid and gid — a unix peer's
// credentials (SO_PEERCRED), a socket's owner (sock_diag, /proc/net/tcp),
// /proc/PID/status — as the reader's user namespace maps them, and one it
// does not map as the overflow id (65534: nobody, nogroup). So outside the
// initial user namespace, 65534 may stand for any user the namespace does
// not map. The agent's attestor, its Workload API bounds and the sidecar's
// local caller check ask it who they are really talking to. Linux only.
package userns
