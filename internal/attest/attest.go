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
// for exactly that process (SO_PEERPIDFD, Linux ≥ 6.5), or -1 when the
// kernel cannot give one; it lets an attestor prove the PID was not reused
// by another process while it read /proc.
type Peer struct {
	PID   int32
	UID   uint32
	GID   uint32
	PIDFD int
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
