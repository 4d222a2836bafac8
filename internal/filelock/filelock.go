// Package filelock takes the advisory, exclusive, non-waiting file locks
// that keep two Moatless processes from sharing state on one host: an
// agent's or a sidecar's data directory, the server's SQLite database.
// Without them the second process would overwrite the first's node SVID
// and key, or corrupt its database, instead of saying so at start.
package filelock

import (
	"errors"
	"strings"
)

// ErrHeld is what a lock held by another process fails with (wrapped in
// a *HeldError).
var ErrHeld = errors.New("filelock: held by another process")

// HeldError says who holds the lock: "process 1234" when the holder wrote
// its pid into the file, else "another process".
type HeldError struct {
	Path   string
	Holder string
}

func (e *HeldError) Error() string { return e.Holder + " holds " + e.Path }

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// holder names the process whose pid the lock file holds.
func holder(content []byte) string {
	if p := strings.TrimSpace(string(content)); p != "" && len(p) < 12 {
		return "process " + p
	}
	return "another process"
}
