//go:build !linux

package cli

import "syscall"

// childProcAttr: the demo runs on Linux only (see linuxOnly).
func childProcAttr() *syscall.SysProcAttr { return nil }
