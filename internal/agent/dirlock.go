package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moatless/moatless/internal/filelock"
)

// lockDataDir takes an exclusive lock on DIR/lock without waiting
// (filelock.Lock), so two agents or sidecars on one host never share a
// data directory (each would overwrite the other's node SVID and key).
// The holder's pid is written into the file for the message the next one
// gets. release unlocks.
func lockDataDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: data directory: %w", err)
	}
	release, err = filelock.Lock(filepath.Join(dir, "lock"), true)
	var held *filelock.HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("%w: %s uses %s; give each agent its own --data-dir (a sidecar its own identity.join.state_dir)", ErrDataDirInUse, held.Holder, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: data directory lock: %w", err)
	}
	return release, nil
}
