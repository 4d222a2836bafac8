package workload

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/wire"
)

// Source is what the Workload API serves from: the agent's cache.
// Implementations must be safe for concurrent use.
type Source interface {
	// State returns the current snapshot and a channel that is closed as
	// soon as a newer snapshot exists. Snapshots are immutable.
	State() (*State, <-chan struct{})
	// JWTSVID returns a JWT-SVID for the identity and audience, from a
	// cache or freshly signed. Errors are reported to the workload as
	// Unavailable, except ErrJWTSVIDShare (and a server's 429), which are
	// ResourceExhausted.
	JWTSVID(ctx context.Context, id *Identity, audience []string) (string, error)
}

// ErrJWTSVIDShare is what a Source's JWTSVID wraps when the identity has
// asked for more new JWT-SVIDs than its share of the node's budget.
var ErrJWTSVIDShare = errors.New("more new JWT-SVIDs than this identity's share of the node's budget")

// Identity is one registration entry the agent may serve, with its
// current X509-SVID when it has one.
type Identity struct {
	EntryID   string
	SPIFFEID  spiffeid.ID
	Selectors []wire.Selector
	// X509 is nil until the entry's first SVID was signed; an expired one
	// is never served.
	X509 *X509SVID
}

// X509SVID is a signed SVID with the key the agent generated for it.
type X509SVID struct {
	Chain []*x509.Certificate
	// ChainDER is Chain concatenated, leaf first, as the Workload API
	// sends it.
	ChainDER []byte
	// KeyDER is the private key, PKCS#8 DER, unencrypted (what the
	// Workload API sends; it never leaves the node otherwise).
	KeyDER    []byte
	Serial    string
	ExpiresAt time.Time
}

// State is one immutable snapshot of everything the agent serves. Build it
// with NewState; never modify one after it was published.
type State struct {
	TrustDomain spiffeid.TrustDomain
	// Identities are the entries whose SPIFFE IDs are not revoked. Revoked
	// serials never appear as X509.
	Identities []*Identity
	// X509Authorities and JWTBundle are the trust domain's bundle.
	X509Authorities []*x509.Certificate
	JWTBundle       *jwtbundle.Bundle
	// RevokedIDs are SPIFFE IDs that must not validate any more.
	RevokedIDs map[string]struct{}
	// BundleSequence is the bundle's sequence number (changes trigger
	// bundle streams).
	BundleSequence uint64
	// Revoked are the entries left out of Identities because their SPIFFE
	// ID is revoked, with Revocations saying when and why: a caller they
	// match is told its identity was revoked, not that it has none. Set
	// before the state is published.
	Revoked     []*Identity
	Revocations *wire.Revocations

	x509BundleDER []byte
	jwtBundleJSON []byte
}

// NewState builds a snapshot and precomputes the encodings every stream
// sends, so serving a caller costs no allocation per certificate.
func NewState(td spiffeid.TrustDomain, seq uint64, x509Authorities []*x509.Certificate, jwt *jwtbundle.Bundle, ids []*Identity, revokedIDs map[string]struct{}) (*State, error) {
	s := &State{TrustDomain: td, Identities: ids, X509Authorities: x509Authorities, JWTBundle: jwt, RevokedIDs: revokedIDs, BundleSequence: seq}
	for _, c := range x509Authorities {
		s.x509BundleDER = append(s.x509BundleDER, c.Raw...)
	}
	if jwt == nil {
		s.JWTBundle = jwtbundle.New(td)
	}
	b, err := s.JWTBundle.Marshal()
	if err != nil {
		return nil, fmt.Errorf("workload: encode JWT bundle: %w", err)
	}
	s.jwtBundleJSON = b
	return s, nil
}

// revoked reports whether id may no longer be served or accepted.
func (s *State) revoked(id spiffeid.ID) bool {
	_, ok := s.RevokedIDs[id.String()]
	return ok
}

// Publisher holds the current State and wakes watchers when it changes.
// The zero value holds no state; State then returns an empty snapshot for
// the zero trust domain (which matches no caller). Safe for concurrent use.
type Publisher struct {
	mu      sync.Mutex
	cur     *State
	changed chan struct{}
}

// Publish makes st current and wakes every watcher.
func (p *Publisher) Publish(st *State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur = st
	if p.changed != nil {
		close(p.changed)
	}
	p.changed = make(chan struct{})
}

// State returns the current snapshot and a channel closed on the next
// Publish.
func (p *Publisher) State() (*State, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	if p.cur == nil {
		p.cur = &State{JWTBundle: jwtbundle.New(spiffeid.TrustDomain{})}
		p.cur.jwtBundleJSON, _ = p.cur.JWTBundle.Marshal()
	}
	return p.cur, p.changed
}
