package cli

import (
	"runtime"
)

// goos is the system the binary runs on; tests set it to see what other
// systems get.
var goos = runtime.GOOS

// linuxOnly is the answer of the long-running commands (server, agent,
// sidecar, authz, demo) on a system other than Linux: they are built and
// tested for Linux only. The agent and the sidecar identify local callers
// by the kernel's word (SO_PEERCRED, /proc, sock_diag), which other
// systems do not give in that form, and serving identities without it
// would hand them to anyone. The admin commands (entry, policy, oauth,
// audit, revoke, secrets, ca, jointoken, svid) work everywhere. ok is
// false, with the exit code, outside Linux.
func (e *Env) linuxOnly(name string) (int, bool) {
	if goos == "linux" {
		return ExitOK, true
	}
	return e.errorf(ExitFailure, "%s runs on Linux only (this is %s/%s); the admin commands work here: point them at a server on Linux with --addr or MOATLESS_ADDR",
		name, goos, runtime.GOARCH), false
}
