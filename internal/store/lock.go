package store

import (
	"errors"
	"fmt"

	"github.com/moatless/moatless/internal/filelock"
)

// lockFile takes the exclusive lock on an SQLite database's lock file
// (filelock.Lock) without waiting. With hold, the pid is written into it
// for the message others get. It fails with an error wrapping ErrInUse
// when another process holds it. release unlocks and closes.
func lockFile(path string, hold bool) (release func(), err error) {
	release, err = filelock.Lock(path, hold)
	var held *filelock.HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("%w: %s holds %s", ErrInUse, held.Holder, path)
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return release, nil
}
