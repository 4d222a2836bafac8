//go:build unix

package store

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// lockFile takes an exclusive flock on path (created 0600 if missing)
// without waiting. With hold, the pid is written into it for the message
// others get. It fails with an error wrapping ErrInUse when another
// process holds it. release unlocks and closes.
func lockFile(path string, hold bool) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another process"
			if p := strings.TrimSpace(string(pid)); p != "" && len(p) < 12 {
				who = "process " + p
			}
			return nil, fmt.Errorf("%w: %s holds %s", ErrInUse, who, path)
		}
		return nil, fmt.Errorf("store: lock %s: %w", path, err)
	}
	if hold {
		if err := f.Truncate(0); err == nil {
			f.WriteAt(lockPID(), 0)
		}
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
