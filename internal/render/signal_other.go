//go:build !unix

package render

import (
	"errors"
	"runtime"
	"syscall"
)

// signals is empty where processes take no signals (Windows): a template
// naming one is refused when the configuration is read; use command.
var signals = map[string]syscall.Signal{}

func signalPID(int, string) error {
	return errors.New("render: signals are not supported on " + runtime.GOOS)
}
