// Package attest turns the kernel's word about a process into selectors:
// the facts a registration entry can require before its identity is handed
// out. Workload attestation never believes anything the workload says about
// itself; every selector comes from the kernel (SO_PEERCRED, SO_PEERPIDFD)
// or from /proc read while the process is pinned.
package attest

import (
	"context"
	"errors"
	"slices"

	"github.com/moatless/moatless/internal/wire"
)

// Peer is the kernel's account of the process at the other end of a unix
// socket, captured when the connection was accepted. UID and GID are the
// effective credentials at connect(2) time (SO_PEERCRED). PIDFD is a pidfd
// for exactly that process (SO_PEERPIDFD, Linux ≥ 6.5; pidfd_open of the
// PID before that), or -1 when the kernel cannot give one; it lets an
// attestor prove the process has not exited, so its PID was not reused by
// another, while it read /proc.
//
// Image, when set, is the program the process ran when the connection was
// accepted (see Binder): attestation then refuses a process that has
// executed another program since, rather than describing the new one. When
// nil, attestation binds the image itself at its start, which only guards
// the attestation's own reads.
type Peer struct {
	PID   int32
	UID   uint32
	GID   uint32
	PIDFD int
	Image *Image
}

// Image identifies one program image of one process: the process, by its
// start time (/proc/PID/stat field 22, clock ticks after boot; a reused
// PID has another), and the executable it runs, by the device and inode of
// the file behind /proc/PID/exe. execve(2) keeps the PID and the start
// time but replaces the executable, so a changed Dev/Ino means the process
// now runs another program. ExeKnown is false when the agent could not
// read /proc/PID/exe (an agent without root attesting another user's
// process, or a process that made itself non-dumpable); the image then
// changes if it later becomes readable.
//
// ExeTrusted is whether the executable's path and content are the word of
// the agent's own privilege rather than the caller's: the file lies on a
// mount of the process's own mount namespace, that namespace was made in
// the agent's user namespace (not in one a user created with unshare(2),
// where any user may bind-mount or overlay what they like over any path),
// it is not FUSE (whose server, possibly the caller, can answer the
// agent's reads with other bytes than the kernel executed), and the
// process is in the agent's user namespace (the owner of another may
// trace the process whatever Yama says). unix:path and unix:sha256 are
// given only for a trusted executable.
type Image struct {
	StartTime  uint64
	Dev, Ino   uint64
	ExeKnown   bool
	ExeTrusted bool
}

// Binder is implemented by attestors that can bind a connection to the
// program image that opened it. Bind is called when the connection is
// accepted; the Image it returns goes into every later Peer of that
// connection, and Attest then fails with ErrExecuted or ErrProcessGone
// once the process runs another program or has exited. Safe for
// concurrent use.
type Binder interface {
	Bind(ctx context.Context, peer Peer) (Image, error)
}

// Attestor maps a peer to the selectors it has. Implementations must be
// safe for concurrent use. An error means "attestation failed": the caller
// must then serve the peer nothing.
type Attestor interface {
	Attest(ctx context.Context, peer Peer) ([]wire.Selector, error)
}

// AttestorFunc adapts a function to Attestor.
type AttestorFunc func(ctx context.Context, peer Peer) ([]wire.Selector, error)

// Attest calls f.
func (f AttestorFunc) Attest(ctx context.Context, peer Peer) ([]wire.Selector, error) {
	return f(ctx, peer)
}

// Sentinel errors callers branch on.
var (
	// ErrProcessGone means the peer exited, or its PID now names another
	// process, before attestation finished. Nothing read about it counts.
	ErrProcessGone = errors.New("attest: peer process exited or its PID was reused during attestation")
	// ErrExecuted means the peer process no longer runs the program it ran
	// when its connection was bound (it called execve), or that this can
	// no longer be verified: the identity of the new program must not be
	// given to a connection the old one opened.
	ErrExecuted = errors.New("attest: peer process executed another program since its connection was bound")
	// ErrInvalidPeer means the peer credentials are unusable (PID ≤ 0:
	// the peer is in another PID namespace or the socket is not AF_UNIX).
	ErrInvalidPeer = errors.New("attest: no usable peer credentials")
)

// Matches reports whether an entry with the selectors want applies to a
// caller that has the selectors have: every wanted selector must be among
// the caller's (SPIRE's semantics). An entry with no selectors matches
// nothing: an empty requirement would hand the identity to everyone.
func Matches(want, have []wire.Selector) bool {
	if len(want) == 0 {
		return false
	}
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}
