package cli

import "syscall"

// childProcAttr makes a demo child die with the demo (SIGKILL when its
// parent dies), so a killed demo leaves no server or sidecar behind.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
