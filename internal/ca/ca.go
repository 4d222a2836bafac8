// Package ca is Moatless's certificate authority. It issues X509-SVIDs and
// JWT-SVIDs for one SPIFFE trust domain, keeps its signing keys sealed at rest
// with a key-encryption key (KEK), publishes a SPIFFE trust bundle, and
// rotates its X.509 and JWT authorities without downtime.
//
// # Authorities and rotation
//
// An authority is one signing key: an X.509 CA certificate (a self-signed
// P-256 root, or an intermediate signed by an Upstream CA) or a JWT signing
// key (P-256, ES256). Each goes through three states:
//
//   - prepared: published in the bundle, signs nothing yet;
//   - active: the one key of its kind that signs;
//   - retired: signs nothing, stays in the bundle until its NotAfter, by
//     which time every SVID it signed has expired (SVIDs are capped at their
//     signer's NotAfter), then is dropped.
//
// For an active authority A with lifetime L = A.NotAfter − A.NotBefore, the
// next authority is prepared at A.NotBefore + L/2 and activated at
// A.NotBefore + 5L/6, or earlier at A.NotAfter − (the default SVID TTL of its
// kind) when that comes first, so that A never has to shorten a default-TTL
// SVID; and in every case no sooner than Options.ActivationDelay after it was
// prepared, so that agents and federated peers have the new key before any
// SVID signed with it reaches them. Rotate (admin-triggered) prepares a new
// authority of each kind at once and activates it after ActivationDelay.
// Tick applies the schedule by the injected clock.
//
// For a compromised key an operator has four more steps (taint.go): Prepare
// a successor, Activate it at once, Taint the now retired authority (still
// in the bundle, marked, so every holder of what it signed replaces it),
// and Revoke it (removed from the bundle; a stored state that holds it
// again is refused). Every change of state is
// sealed and saved through the StateStore before it takes effect: a failed
// save leaves the CA exactly as it was.
//
// # Replicas
//
// Several server replicas may share one StateStore (and KEK). Tick and
// Rotate first adopt a state another replica saved, so each step is taken
// once and all replicas sign with the same active authorities; a store that
// implements StateSwapper makes every save a compare-and-swap.
//
// # Concurrency
//
// All methods are safe for concurrent use. Signing reads the active
// authorities from an immutable snapshot behind an atomic pointer and takes
// no lock; Tick and Rotate serialize among themselves only.
package ca

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for the zero values of Options.
const (
	DefaultCATTL           = 24 * time.Hour
	DefaultX509SVIDTTL     = time.Hour
	DefaultJWTSVIDTTL      = 5 * time.Minute
	DefaultActivationDelay = 10 * time.Minute
	DefaultRefreshHint     = 5 * time.Minute
)

// KEKSize is the length in bytes of the key-encryption key (AES-256).
const KEKSize = 32

// maxAuthorities bounds the authorities of one kind kept in the bundle
// (prepared + active + retired). Rotate refuses beyond it, so repeated
// admin rotations cannot grow the bundle (and the sealed state) without end.
const maxAuthorities = 16

// maxUpstreamRootsSize bounds the upstream roots (DER bytes): the
// sealed state stores them once per distinct upstream bundle (encodeState,
// base64 in JSON: 4/3), and must fit the old bundle's and the new one's
// after an upstream change, with the authorities, in maxSealedSize.
const maxUpstreamRootsSize = 320 << 10

// maxRevoked bounds the revoked authorities the state remembers (each
// until its NotAfter), so the state a replica reads back stays bounded.
const maxRevoked = 4 * maxAuthorities

// Sentinel errors callers branch on (errors.Is).
var (
	// ErrNoState is returned by StateStore.LoadCAState when nothing was
	// saved yet; Open then creates a new CA.
	ErrNoState = errors.New("ca: no saved state")
	// ErrUnseal means the sealed state failed authentication: the KEK is
	// not the one it was sealed with, or the stored bytes were altered.
	ErrUnseal = errors.New("ca: cannot unseal CA state: wrong key-encryption key?")
	// ErrInvalidCSR means a certificate signing request was refused:
	// malformed, too large, a bad self-signature, or an unsupported key.
	ErrInvalidCSR = errors.New("ca: invalid certificate signing request")
	// ErrInvalidID means a SPIFFE ID cannot be issued by this CA: outside
	// its trust domain, the bare trust-domain ID, or empty.
	ErrInvalidID = errors.New("ca: SPIFFE ID not allowed")
	// ErrInvalidRequest means another argument was refused: a negative
	// TTL, a bad audience, DNS name or public key.
	ErrInvalidRequest = errors.New("ca: invalid request")
	// ErrNoAuthority means there is no authority able to sign right now
	// (its certificate expired and Tick has not run to replace it).
	ErrNoAuthority = errors.New("ca: no usable signing authority")
	// ErrStateConflict is wrapped by StateSwapper.SwapCAState when another
	// replica saved first; Tick and Rotate return it and the next Tick
	// adopts the other replica's state.
	ErrStateConflict = errors.New("ca: CA state was changed by another server")
	// ErrTooManyAuthorities is returned by Rotate and Prepare when the
	// bundle already holds the maximum number of authorities of a kind,
	// and by Revoke when the state remembers the maximum number of
	// revoked ones.
	ErrTooManyAuthorities = errors.New("ca: too many authorities in the bundle")
	// ErrUnknownAuthority is returned by Activate, Taint and Revoke for an
	// ID that names no authority of the CA.
	ErrUnknownAuthority = errors.New("ca: no such authority")
	// ErrAuthorityState is returned by Prepare, Activate, Taint and Revoke
	// when the authority is not in a state that allows the step (tainting
	// the active authority, revoking one that is not tainted, ...).
	ErrAuthorityState = errors.New("ca: not allowed")
	// ErrRevokedAuthority is returned when a stored CA state holds an
	// authority this server knows was revoked: a restored or replayed
	// state, refused whatever its sequence.
	ErrRevokedAuthority = errors.New("ca: the stored CA state holds a revoked authority")
)

// StateStore persists the CA's sealed state (keys encrypted with the KEK).
// The server implements it on its SQL store. SaveCAState must be atomic and
// durable when it returns nil: the CA acts on a new state only after that.
type StateStore interface {
	// LoadCAState returns the last saved blob, or an error wrapping
	// ErrNoState when nothing was saved yet.
	LoadCAState(ctx context.Context) ([]byte, error)
	// SaveCAState replaces the saved blob.
	SaveCAState(ctx context.Context, sealed []byte) error
}

// StateSwapper is an optional StateStore capability (found by type
// assertion) for several server replicas sharing one store. With it, a save
// is a compare-and-swap, so two replicas ticking at once cannot overwrite
// each other's rotation step; without it the last writer wins within the
// short window between a Tick's load and its save.
type StateSwapper interface {
	// SwapCAState saves sealed only if the stored blob is still old (nil
	// old: nothing is stored yet); otherwise it returns an error wrapping
	// ErrStateConflict and changes nothing.
	SwapCAState(ctx context.Context, old, sealed []byte) error
}

// Options configures a CA. Zero values take the documented defaults.
type Options struct {
	// TrustDomain is the trust domain the CA issues for. Required.
	TrustDomain spiffeid.TrustDomain
	// State persists the sealed state. Required.
	State StateStore
	// KEK is the 32-byte key-encryption key that seals the state at rest
	// (AES-256-GCM, with the format header as associated data). Required.
	// The CA keeps its own copy.
	KEK []byte
	// Upstream, when set, signs the CA's intermediate certificates (its key
	// is generated here); the bundle's X.509 authorities are then the
	// upstream roots. Nil: self-signed P-256 roots.
	Upstream *Upstream
	// CATTL is the lifetime of each CA certificate and JWT key
	// (NotAfter − NotBefore); default 24h. With an Upstream it is further
	// capped by the upstream chain's NotAfter. It must be at least 6 times
	// the larger default SVID TTL and 6 times ActivationDelay, so that the
	// rotation schedule (see the package doc) has room.
	CATTL time.Duration
	// X509SVIDTTL is the X509-SVID lifetime when a caller passes ttl 0;
	// default 1h.
	X509SVIDTTL time.Duration
	// JWTSVIDTTL is the JWT-SVID lifetime when a caller passes ttl 0;
	// default 5m.
	JWTSVIDTTL time.Duration
	// ActivationDelay is the least time a prepared authority is published
	// in the bundle before it signs; default 10m. It must be at least
	// RefreshHint, so federated peers polling at the hint see the key first.
	ActivationDelay time.Duration
	// RefreshHint is the bundle's refresh hint for consumers that poll;
	// default 5m.
	RefreshHint time.Duration
	// Now is the clock; default time.Now. Tick follows it.
	Now func() time.Time
	// Rand is the randomness for serial numbers and signatures; default
	// crypto/rand.Reader. (Key generation and the nonces that seal the
	// state always use crypto/rand: a repeated GCM nonce would be fatal.)
	Rand io.Reader
	// Logger receives rotation events (authority IDs, never key material);
	// default discards.
	Logger *slog.Logger
	// RevokedAuthorities are IDs of authorities this server knows were
	// revoked (RevokedIDs of an earlier run, kept outside the store): Open
	// refuses a stored state that holds one of them (ErrRevokedAuthority),
	// so a store restored from before a revocation cannot bring the
	// revoked key back.
	RevokedAuthorities []string
}

// CA is a certificate authority for one trust domain. Create it with Open.
type CA struct {
	o      Options
	parent string // "" for self-signed, else the upstream signing cert's fingerprint

	mu  sync.Mutex // serializes state transitions (Tick, Rotate)
	cur atomic.Pointer[snapshot]
	// revokedIDs are the IDs of every revoked authority this CA has seen
	// (Options.RevokedAuthorities and every state it loaded or saved);
	// guarded by mu.
	revokedIDs map[string]bool
	// diverged is why the state in the store could not be adopted at the
	// last sync (see Diverged); nil when it was.
	diverged atomic.Pointer[divergence]
}

type divergence struct{ err error }

// Open loads and unseals the CA's state from o.State, or, when nothing was
// saved yet, creates the first X.509 and JWT authorities and saves them
// before returning. It then applies any rotation steps that came due while
// the CA was stopped (as Tick would), including a rotation to a new parent
// when the configured Upstream differs from the one the active authority
// was signed by, so the returned CA can sign at once.
//
// Errors: ErrUnseal for a wrong KEK or altered state (nothing is changed);
// a clear error for bad Options, a state for another trust domain, or a
// store failure.
func Open(ctx context.Context, o Options) (*CA, error) {
	if err := o.normalize(); err != nil {
		return nil, err
	}
	c := &CA{o: o, revokedIDs: map[string]bool{}}
	for _, id := range o.RevokedAuthorities {
		c.revokedIDs[id] = true
	}
	if o.Upstream != nil {
		if err := o.Upstream.validate(o.Now()); err != nil {
			return nil, err
		}
		c.parent = o.Upstream.fingerprint()
	}

	// Replicas starting together race to create or advance the state; the
	// loser of a compare-and-swap starts over from what the winner saved.
	for attempt := 0; ; attempt++ {
		snap, err := c.load(ctx)
		if errors.Is(err, ErrStateConflict) && attempt < 3 {
			continue
		}
		if err != nil {
			return nil, err
		}
		c.cur.Store(snap)
		return c, nil
	}
}

// load reads the stored state (or starts a new one), applies what is due,
// and saves the result if it changed.
func (c *CA) load(ctx context.Context) (*snapshot, error) {
	o := &c.o
	sealed, err := o.State.LoadCAState(ctx)
	var st *state
	switch {
	case errors.Is(err, ErrNoState):
		st = &state{Version: stateVersion, TrustDomain: o.TrustDomain.Name()}
		sealed = nil
	case err != nil:
		return nil, fmt.Errorf("ca: load CA state: %w", err)
	default:
		plain, err := unseal(o.KEK, sealed)
		if err != nil {
			return nil, err
		}
		st, err = decodeState(plain, o.TrustDomain)
		clear(plain)
		if err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkRevoked(st); err != nil {
		return nil, err
	}
	next, _, err := c.advance(st, o.Now(), false)
	if err != nil {
		return nil, err
	}
	snap, err := c.buildSnapshot(next)
	if err != nil {
		return nil, err
	}
	snap.blob = sealed
	c.noteRevoked(next)
	if next != st || sealed == nil {
		if snap.blob, err = c.save(ctx, next, sealed); err != nil {
			return nil, err
		}
	}
	return snap, nil
}

func (o *Options) normalize() error {
	if o.TrustDomain.IsZero() {
		return errors.New("ca: Options.TrustDomain is required")
	}
	if n := len(o.TrustDomain.Name()); n > 255 {
		// SPIFFE-ID §2.3: a trust domain name is at most 255 bytes.
		return fmt.Errorf("ca: Options.TrustDomain is %d bytes, at most 255", n)
	}
	if o.State == nil {
		return errors.New("ca: Options.State is required")
	}
	if len(o.KEK) != KEKSize {
		return fmt.Errorf("ca: Options.KEK must be %d bytes, got %d", KEKSize, len(o.KEK))
	}
	zero := true
	for _, b := range o.KEK {
		zero = zero && b == 0
	}
	if zero {
		return errors.New("ca: Options.KEK is all zeros; generate a random key")
	}
	o.KEK = append([]byte(nil), o.KEK...)
	o.RevokedAuthorities = slices.Clone(o.RevokedAuthorities)
	if u := o.Upstream; u != nil {
		n := 0
		for _, c := range u.Roots {
			n += len(c.Raw)
		}
		if n > maxUpstreamRootsSize {
			return fmt.Errorf("ca: the upstream bundle's %d roots are %d bytes (DER), over the %d the sealed CA state has room for "+
				"(it holds them with every authority the upstream signs, alongside the previous bundle's after a change): "+
				"give only the roots your upstream CA chains to, not a whole public root store", len(u.Roots), n, maxUpstreamRootsSize)
		}
	}
	def := func(d *time.Duration, v time.Duration, name string) error {
		if *d < 0 {
			return fmt.Errorf("ca: Options.%s must not be negative", name)
		}
		if *d == 0 {
			*d = v
		}
		return nil
	}
	for _, f := range []struct {
		d    *time.Duration
		v    time.Duration
		name string
	}{
		{&o.CATTL, DefaultCATTL, "CATTL"},
		{&o.X509SVIDTTL, DefaultX509SVIDTTL, "X509SVIDTTL"},
		{&o.JWTSVIDTTL, DefaultJWTSVIDTTL, "JWTSVIDTTL"},
		{&o.ActivationDelay, DefaultActivationDelay, "ActivationDelay"},
		{&o.RefreshHint, DefaultRefreshHint, "RefreshHint"},
	} {
		if err := def(f.d, f.v, f.name); err != nil {
			return err
		}
	}
	maxTTL := max(o.X509SVIDTTL, o.JWTSVIDTTL)
	if o.CATTL < 6*maxTTL {
		return fmt.Errorf("ca: Options.CATTL (%v) must be at least 6 times the longest default SVID TTL (%v): raise CATTL or lower the SVID TTL", o.CATTL, maxTTL)
	}
	if o.CATTL < 6*o.ActivationDelay {
		return fmt.Errorf("ca: Options.CATTL (%v) must be at least 6 times ActivationDelay (%v)", o.CATTL, o.ActivationDelay)
	}
	if o.ActivationDelay < o.RefreshHint {
		return fmt.Errorf("ca: Options.ActivationDelay (%v) must be at least RefreshHint (%v)", o.ActivationDelay, o.RefreshHint)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// TrustDomain returns the trust domain the CA issues for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.o.TrustDomain }

// Bundle returns the current trust bundle: the X.509 authorities (every
// prepared, active and retired self-signed root, or the upstream roots), the
// JWT authorities by key ID, a sequence number that grows with each change,
// and the refresh hint. The result is the caller's own copy.
func (c *CA) Bundle() *spiffebundle.Bundle {
	return c.cur.Load().bundle.Clone()
}

// Signed reports whether one of this CA's own X.509 authorities (prepared,
// active or retired, as long as it is in the state) signed leaf: the
// leaf is not a CA, names it as issuer, and its signature verifies under
// that authority's key.
//
// Verifying a chain against Bundle() does not say this: under an upstream
// CA the bundle's authorities are the organisation's roots, and every
// other CA below them can sign a certificate that verifies as an
// X509-SVID of the trust domain. Whoever must know that this server
// issued a certificate (a node SVID, an admin certificate) asks Signed.
func (c *CA) Signed(leaf *x509.Certificate) bool {
	if leaf == nil || leaf.IsCA {
		return false
	}
	for _, a := range c.cur.Load().status {
		if a.Certificate != nil && bytes.Equal(leaf.RawIssuer, a.Certificate.RawSubject) && leaf.CheckSignatureFrom(a.Certificate) == nil {
			return true
		}
	}
	return false
}

// Status lists the authorities, X.509 first, each kind ordered by
// NotBefore, for `moatless ca show`: those of the state (prepared, active,
// retired, tainted) and the revoked ones until their NotAfter.
func (c *CA) Status() []Authority {
	return slices.Clone(c.cur.Load().all)
}

// View returns Bundle and Status as of one state: the bundle's sequence
// number, authorities and refresh hint and the authorities' states are
// read together. Two calls, Bundle then Status, can straddle a step of
// the CA and describe two states (a bundle holding an authority that
// Status lists as revoked since, or a taint shown under the sequence
// number of the bundle before it). The results are the caller's own.
func (c *CA) View() (*spiffebundle.Bundle, []Authority) {
	snap := c.cur.Load()
	return snap.bundle.Clone(), slices.Clone(snap.all)
}

// IssuerState reports which of this CA's X.509 authorities issued leaf,
// by the issuer name (each authority's subject is distinct), and its
// state: StateRevoked for a revoked one. ok is false when none did. It
// does not check the signature: use it on a chain already verified (at
// the TLS handshake) to learn whether its issuer has been tainted or
// revoked since.
func (c *CA) IssuerState(leaf *x509.Certificate) (id string, st AuthorityState, ok bool) {
	if leaf == nil {
		return "", "", false
	}
	i, ok := c.cur.Load().bySubject[string(leaf.RawIssuer)]
	return i.id, i.state, ok
}

// RevokedIDs lists the IDs of every authority this CA has seen revoked.
// The server keeps them outside the store and passes them back as
// Options.RevokedAuthorities.
func (c *CA) RevokedIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.revokedIDs))
	for id := range c.revokedIDs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// checkRevoked refuses a state that holds an authority c knows was
// revoked. Callers hold c.mu.
func (c *CA) checkRevoked(st *state) error {
	for _, l := range [][]record{st.X509, st.JWT} {
		for i := range l {
			if c.revokedIDs[l[i].ID] {
				return fmt.Errorf("%w: %s authority %s (sequence %d): the store was restored from before the revocation, or an old state was written back; refusing it", ErrRevokedAuthority, l[i].State, l[i].ID, st.Sequence)
			}
		}
	}
	return nil
}

// noteRevoked remembers st's revoked authorities. Callers hold c.mu.
func (c *CA) noteRevoked(st *state) {
	for i := range st.Revoked {
		c.revokedIDs[st.Revoked[i].ID] = true
	}
}

// Tick applies the rotation schedule at the injected clock's now: prepares,
// activates, retires and drops authorities as they come due (see the package
// doc). It first adopts any newer state another server replica saved in
// the shared store. Its own new state is sealed and saved before it takes
// effect; when the save fails nothing of Tick's own changes, and the next
// Tick retries.
//
// changed reports whether the trust bundle changed (the server then pushes
// Bundle() to every agent); an activation alone does not change the bundle.
// changed can be true together with an error, when the CA adopted another
// replica's state and then failed its own step: push the bundle anyway.
func (c *CA) Tick(ctx context.Context) (changed bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transition(ctx, false)
}

// Sync adopts the state another server replica saved in the shared store,
// if it is not the one this CA last loaded or saved, without taking a
// rotation step of its own. It reports whether the trust bundle changed.
// A replica that hears of another's rotation calls it so its agents get
// the new bundle at once rather than at its next Tick.
func (c *CA) Sync(ctx context.Context) (changed bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sync(ctx)
}

// Rotate prepares a new X.509 and a new JWT authority at once
// (admin-triggered rotation). They are published in the bundle now and
// activated by Tick after ActivationDelay; the old ones retire then and stay
// in the bundle until their NotAfter. If an authority of a kind is already
// prepared, Rotate brings its activation forward to the earliest the delay
// allows instead of preparing another. ErrTooManyAuthorities if the bundle
// is full. The caller should push Bundle() to agents after a nil return.
func (c *CA) Rotate(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.transition(ctx, true)
	return err
}

// transition adopts the stored state if another replica changed it, then
// computes the next state, saves it and swaps the snapshot. Callers hold
// c.mu.
func (c *CA) transition(ctx context.Context, rotate bool) (bool, error) {
	adopted, err := c.sync(ctx)
	if err != nil {
		return false, err
	}
	cur := c.cur.Load()
	next, bundleChanged, err := c.advance(cur.st, c.o.Now(), rotate)
	if err != nil {
		return adopted, err
	}
	if next == cur.st {
		return adopted, nil
	}
	snap, err := c.buildSnapshot(next)
	if err != nil {
		return adopted, err
	}
	if snap.blob, err = c.save(ctx, next, cur.blob); err != nil {
		return adopted, err
	}
	c.cur.Store(snap)
	return adopted || bundleChanged, nil
}

// Diverged reports why the CA state in the store, saved by another
// replica, could not be adopted at the last sync: this build cannot read
// it (a newer version's, or sealed with another KEK), it holds an
// authority this CA knows was revoked, or it is older than the one held.
// The CA then keeps signing with the state it holds, which may be one
// the other replicas have left (an authority tainted or revoked since):
// the server reports itself not ready. nil once a sync adopts the stored
// state, or finds it is the one held; a store that cannot be reached is
// not a divergence.
func (c *CA) Diverged() error {
	if d := c.diverged.Load(); d != nil {
		return d.err
	}
	return nil
}

// sync loads the stored state and, when it is not the one this CA last
// loaded or saved, adopts it: another replica saved a rotation step. It
// reports whether the bundle changed.
func (c *CA) sync(ctx context.Context) (bool, error) {
	blob, err := c.o.State.LoadCAState(ctx)
	if err != nil {
		return false, fmt.Errorf("ca: load CA state: %w", err)
	}
	changed, err := c.adopt(blob)
	if err != nil {
		c.diverged.Store(&divergence{err})
	} else {
		c.diverged.Store(nil)
	}
	return changed, err
}

// adopt adopts blob, the stored state, unless it is the one held.
// Callers hold c.mu.
func (c *CA) adopt(blob []byte) (bool, error) {
	cur := c.cur.Load()
	if bytes.Equal(blob, cur.blob) {
		return false, nil
	}
	plain, err := unseal(c.o.KEK, blob)
	if err != nil {
		return false, err
	}
	st, err := decodeState(plain, c.o.TrustDomain)
	clear(plain)
	if err != nil {
		return false, err
	}
	if err := c.checkRevoked(st); err != nil {
		return false, err
	}
	if _, cas := c.o.State.(StateSwapper); cas && (st.Sequence < cur.st.Sequence || st.Generation <= cur.st.Generation && cur.st.Generation > 0) {
		// Saves are compare-and-swaps, each from the state before it, so
		// the sequence and the generation never go down, and a state
		// different from ours has a higher generation: anything else is
		// an older state put back (a restored backup, or a sealed blob
		// replayed by someone who can write the store but has no KEK, to
		// undo a rotation or an activation).
		return false, fmt.Errorf("ca: the stored CA state (bundle sequence %d, generation %d) is older than the one this server holds (%d, generation %d); refusing to go back to it: if the store was restored from a backup on purpose, restart the servers", st.Sequence, st.Generation, cur.st.Sequence, cur.st.Generation)
	}
	snap, err := c.buildSnapshot(st)
	if err != nil {
		return false, err
	}
	snap.blob = blob
	c.cur.Store(snap)
	c.noteRevoked(st)
	c.o.Logger.Info("ca: adopted the CA state saved by another server", "sequence", st.Sequence)
	return st.Sequence != cur.st.Sequence || bundleKey(st) != bundleKey(cur.st), nil
}

// save seals st and stores it, as a compare-and-swap against old when the
// store supports it. It returns the stored blob.
func (c *CA) save(ctx context.Context, st *state, old []byte) ([]byte, error) {
	plain, err := encodeState(st)
	if err != nil {
		return nil, err
	}
	sealed, err := seal(c.o.KEK, plain)
	clear(plain)
	if err != nil {
		return nil, err
	}
	if sw, ok := c.o.State.(StateSwapper); ok {
		err = sw.SwapCAState(ctx, old, sealed)
	} else {
		err = c.o.State.SaveCAState(ctx, sealed)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: save CA state: %w", err)
	}
	return sealed, nil
}
