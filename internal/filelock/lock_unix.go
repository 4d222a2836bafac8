//go:build unix

package filelock

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// Lock takes an exclusive flock on path (created 0600 if missing)
// without waiting. With writePID the caller's pid is written into the
// file, for the HeldError the next process gets. It fails with a
// *HeldError (errors.Is ErrHeld) when another process holds it. release
// unlocks and closes; the lock also ends with the process.
//
// A symbolic link at path is refused (O_NOFOLLOW, ELOOP), not followed:
// the file is truncated and written, so a link planted in a directory
// another user can write would let them aim a root process's write at
// any file.
func Lock(path string, writePID bool) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("filelock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		content, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &HeldError{Path: path, Holder: holder(content)}
		}
		return nil, fmt.Errorf("filelock: lock %s: %w", path, err)
	}
	if writePID {
		if err := f.Truncate(0); err == nil {
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
