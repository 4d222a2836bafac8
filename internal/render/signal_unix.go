//go:build unix

package render

import "syscall"

// signals are the signals a template may send to the process in its
// pid_file.
var signals = map[string]syscall.Signal{"HUP": syscall.SIGHUP, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "INT": syscall.SIGINT}

// signalPID sends the signal named sig (a key of signals) to pid.
func signalPID(pid int, sig string) error { return syscall.Kill(pid, signals[sig]) }
