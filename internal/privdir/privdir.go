// Package privdir checks that a directory is private to this process's
// user before the process keeps credentials in it or serves from it: the
// agent's (and a join-mode sidecar's) data directory, the Workload API
// socket's directory.
//
// Whoever can write a directory can rename, remove and replace every file
// in it, whatever the files' own modes say, and can plant a symbolic link
// under a name the process is about to open. Whoever owns it can make it
// writable again at any time. So a directory that holds a node key and
// the trust bundle that authenticates the server, or a socket that hands
// out identities, must be a real directory (not a symbolic link), owned
// by the effective user, and writable by neither group nor others; and
// the directories above it must not let another user rename it away.
package privdir

import (
	"errors"
	"fmt"
)

// ErrNotPrivate is what every refusal of Check wraps.
var ErrNotPrivate = errors.New("directory not private to this user")

// Use says, for Check's messages, what the directory is for: What names
// it ("socket directory"), Setting is the flag or key that chooses
// another ("--socket"), Risk what another user in control of it could do
// ("put a socket of their own there and serve identities").
type Use struct {
	What, Setting, Risk string
}

// notPrivate is a refusal: its message alone, errors.Is ErrNotPrivate.
type notPrivate struct{ msg string }

func (e *notPrivate) Error() string        { return e.msg }
func (e *notPrivate) Is(target error) bool { return target == ErrNotPrivate }

func refusal(format string, args ...any) error {
	return &notPrivate{fmt.Sprintf(format, args...)}
}
