package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moatless/moatless/internal/filelock"
	"github.com/moatless/moatless/internal/privdir"
)

// ErrDataDirUnsafe: the data directory is a symbolic link, or another
// local user owns it or may write it (privdir.Check). Not retried.
var ErrDataDirUnsafe = errors.New("agent: unsafe data directory")

// dataDirUse describes the data directory in privdir's refusals.
var dataDirUse = privdir.Use{What: "data directory", Setting: "--data-dir (a sidecar: identity.join.state_dir)",
	Risk: "replace the node SVID, its key and the trust bundle that authenticates the server, or plant a link where the agent writes"}

// lockDataDir makes sure dir is private to this user, then takes an
// exclusive lock on DIR/lock without waiting (filelock.Lock), so two
// agents or sidecars on one host never share a data directory (each would
// overwrite the other's node SVID and key). The holder's pid is written
// into the file for the message the next one gets. release unlocks.
//
// The directory holds the node's key and the trust bundle the next start
// authenticates the server with, and the agent (often root) creates and
// renames files in it: one another local user can write or owns is
// refused (privdir.Check) before anything in it is opened, as the
// Workload API socket's directory is.
func lockDataDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: data directory: %w", err)
	}
	if err := privdir.Check(dir, dataDirUse); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDataDirUnsafe, err)
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
