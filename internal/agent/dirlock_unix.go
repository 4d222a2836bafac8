//go:build unix

package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDataDir takes an exclusive flock on DIR/lock without waiting, so two
// agents or sidecars on one host never share a data directory (each would
// overwrite the other's node SVID and key). The holder's pid is written
// into the file for the message the next one gets. release unlocks.
func lockDataDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: data directory: %w", err)
	}
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent: data directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another process"
			if p := strings.TrimSpace(string(pid)); p != "" && len(p) < 12 {
				who = "process " + p
			}
			return nil, fmt.Errorf("%w: %s uses %s; give each agent its own --data-dir (a sidecar its own identity.join.state_dir)", ErrDataDirInUse, who, dir)
		}
		return nil, fmt.Errorf("agent: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
