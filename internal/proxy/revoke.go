package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/wire"
)

// revocationSet is an immutable snapshot of wire.Revocations, indexed for
// the per-handshake and per-request checks. The zero value (and nil) revokes
// nothing.
type revocationSet struct {
	ids     map[string]struct{} // full "spiffe://" IDs
	serials map[string]struct{} // lower-case hex, no leading zeros
	jtis    map[string]time.Time
	// src is what the set was built from: when and why an ID was revoked.
	src *wire.Revocations
	// blocked holds the blocked (source, destination) pairs with their
	// expiry (zero: until lifted).
	blocked map[[2]string]time.Time
}

// newRevocationSet indexes r. Serials are normalized to lower case without
// leading zeros, the form big.Int.Text(16) produces, so "0A1b" matches a
// certificate with serial 0xa1b.
func newRevocationSet(r *wire.Revocations) *revocationSet {
	rs := &revocationSet{src: r}
	if r == nil {
		return rs
	}
	if len(r.SPIFFEIDs) > 0 {
		rs.ids = make(map[string]struct{}, len(r.SPIFFEIDs))
		for _, id := range r.SPIFFEIDs {
			rs.ids[id] = struct{}{}
		}
	}
	if len(r.Serials) > 0 {
		rs.serials = make(map[string]struct{}, len(r.Serials))
		for _, s := range r.Serials {
			rs.serials[normalizeSerial(s.Serial)] = struct{}{}
		}
	}
	if len(r.TokenIDs) > 0 {
		rs.jtis = make(map[string]time.Time, len(r.TokenIDs))
		for _, t := range r.TokenIDs {
			rs.jtis[t.JTI] = t.ExpiresAt
		}
	}
	if len(r.BlockedEdges) > 0 {
		rs.blocked = make(map[[2]string]time.Time, len(r.BlockedEdges))
		for _, b := range r.BlockedEdges {
			rs.blocked[[2]string{b.Source, b.Destination}] = b.ExpiresAt
		}
	}
	return rs
}

// blockedPair reports whether calls from src to dst (full SPIFFE IDs) are
// blocked at now.
func (rs *revocationSet) blockedPair(src, dst string, now time.Time) bool {
	if rs == nil || len(rs.blocked) == 0 {
		return false
	}
	exp, ok := rs.blocked[[2]string{src, dst}]
	return ok && (exp.IsZero() || now.Before(exp))
}

// revokedIdentityToken reports whether a verified token names a revoked
// workload as its subject, authorized party, client or actor: the tokens
// of an isolated identity are refused wherever they are presented, not
// only on its own connections.
func (rs *revocationSet) revokedIdentityToken(claims map[string]any) bool {
	if rs == nil || len(rs.ids) == 0 {
		return false
	}
	for _, k := range []string{"sub", "azp", "client_id"} {
		if v, _ := claims[k].(string); v != "" {
			if _, ok := rs.ids[v]; ok {
				return true
			}
		}
	}
	for act, _ := claims["act"].(map[string]any); act != nil; act, _ = act["act"].(map[string]any) {
		if v, _ := act["sub"].(string); v != "" {
			if _, ok := rs.ids[v]; ok {
				return true
			}
		}
	}
	return false
}

func normalizeSerial(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.TrimLeft(s, "0")
	if s == "" {
		return "0"
	}
	return s
}

// has reports whether a peer with this SPIFFE ID or leaf serial is revoked.
func (rs *revocationSet) has(id, serial string) bool {
	if rs == nil {
		return false
	}
	if _, ok := rs.ids[id]; ok {
		return true
	}
	if serial == "" {
		return false
	}
	_, ok := rs.serials[serial]
	return ok
}

// hasJTI reports whether a token ID is revoked.
func (rs *revocationSet) hasJTI(jti string) bool {
	if rs == nil || jti == "" {
		return false
	}
	_, ok := rs.jtis[jti]
	return ok
}

// liveKey is what a live connection or request was authenticated with,
// under which it is tracked: a SPIFFE ID, a certificate serial or a
// token ID. A struct, not a prefixed string, so that registering a
// request costs no string building.
type liveKey struct {
	kind liveKind
	v    string
}

type liveKind uint8

const (
	liveID liveKind = iota + 1
	liveSerial
	liveJTI
	// liveAuthority: the trust domain and subject key ID of the CA
	// authority a peer's chain was signed under (authorityKey).
	liveAuthority
	// liveTokenOwner: a workload's SPIFFE ID that the token of a request
	// in flight names as its subject, authorized party, client or actor
	// (tokenOwnerKeys): revoking that identity cuts the request off, as
	// revokedIdentityToken refuses the next one.
	liveTokenOwner
	// liveOwnSerial: the serial of this workload's own certificate an
	// outbound connection was opened with (trackedConn): revoking it
	// closes the connection, whatever the upstream knows.
	liveOwnSerial
)

// maxTokenOwnerKeys bounds the keys tokenOwnerKeys adds for one token:
// sub, azp, client_id and the first actors of its "act" chain.
const maxTokenOwnerKeys = 8

// tokenOwnerKeys appends to keys a liveTokenOwner key for each SPIFFE ID
// ("spiffe://…") that verified token claims name as subject, authorized
// party, client or actor (revokedIdentityToken's claims), at most
// maxTokenOwnerKeys. A token naming no workload adds none.
func tokenOwnerKeys(keys []liveKey, claims map[string]any) []liveKey {
	n := 0
	add := func(v any) {
		if id, _ := v.(string); n < maxTokenOwnerKeys && strings.HasPrefix(id, "spiffe://") {
			keys = append(keys, liveKey{liveTokenOwner, id})
			n++
		}
	}
	add(claims["sub"])
	add(claims["azp"])
	add(claims["client_id"])
	for act, _ := claims["act"].(map[string]any); act != nil && n < maxTokenOwnerKeys; act, _ = act["act"].(map[string]any) {
		add(act["sub"])
	}
	return keys
}

func idKey(id string) liveKey         { return liveKey{liveID, id} }
func serialKey(serial string) liveKey { return liveKey{liveSerial, serial} }
func jtiKey(jti string) liveKey       { return liveKey{liveJTI, jti} }

// tracker knows every live inbound connection (and every in-flight request
// authenticated by a token ID) by the identities it was authenticated with,
// so that a revocation can close what is already open, not only refuse
// what comes next.
type tracker struct {
	mu    sync.Mutex
	byKey map[liveKey]trackedSet
	n     int
}

// trackedSet is the entries under one key. Most keys have one (a token's
// jti, a peer with one connection open), held without a map of its own:
// registering a request under its token ID allocates only the entry.
type trackedSet struct {
	one  *tracked
	more map[*tracked]struct{}
}

func (s *trackedSet) add(e *tracked) {
	if s.one == nil && len(s.more) == 0 {
		s.one = e
		return
	}
	if s.more == nil {
		s.more = make(map[*tracked]struct{}, 2)
	}
	s.more[e] = struct{}{}
}

// remove reports whether e was in s.
func (s *trackedSet) remove(e *tracked) bool {
	if s.one == e {
		s.one = nil
		return true
	}
	if _, ok := s.more[e]; ok {
		delete(s.more, e)
		return true
	}
	return false
}

func (s *trackedSet) len() int {
	n := len(s.more)
	if s.one != nil {
		n++
	}
	return n
}

func (s *trackedSet) appendTo(out []*tracked) []*tracked {
	if s.one != nil {
		out = append(out, s.one)
	}
	for e := range s.more {
		out = append(out, e)
	}
	return out
}

// tracked is one live connection or request. close is called at most once.
type tracked struct {
	keys   []liveKey // in keyBuf for up to four keys: one allocation per entry
	keyBuf [4]liveKey
	// chain is the peer's verified certificate chain of a connection
	// (addPeer), verified again when its authority leaves the bundle.
	chain []*x509.Certificate
	close func()
	once  sync.Once
}

func newTracker() *tracker { return &tracker{byKey: make(map[liveKey]trackedSet)} }

// add registers close under keys and returns the handle to remove it with.
func (t *tracker) add(close func(), keys ...liveKey) *tracked {
	e := &tracked{close: close}
	e.keys = append(e.keyBuf[:0], keys...)
	t.insert(e)
	return e
}

// insert registers e under each of its keys.
func (t *tracker) insert(e *tracked) {
	t.mu.Lock()
	for _, k := range e.keys {
		set := t.byKey[k]
		set.add(e)
		t.byKey[k] = set
	}
	t.n++
	t.mu.Unlock()
}

// remove forgets e; removing twice is harmless.
func (t *tracker) remove(e *tracked) {
	if e == nil {
		return
	}
	t.mu.Lock()
	t.removeLocked(e)
	t.mu.Unlock()
}

// removeLocked forgets e under every key and reports whether it was still
// registered.
func (t *tracker) removeLocked(e *tracked) bool {
	removed := false
	for _, k := range e.keys {
		set, ok := t.byKey[k]
		if !ok || !set.remove(e) {
			continue
		}
		removed = true
		if set.len() == 0 {
			delete(t.byKey, k)
		} else {
			t.byKey[k] = set
		}
	}
	if removed {
		t.n--
	}
	return removed
}

// len is the number of live tracked entries.
func (t *tracker) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// sweep closes and forgets every entry of an inbound tracker registered
// under a key that rs revokes, or of a peer blocked from calling own
// (this sidecar's ID), and returns how many it closed. before, when
// non-nil, is told the count before anything is closed, so whoever sees
// a connection end already finds it counted. Closing happens outside the
// lock: a close function may block on I/O.
func (t *tracker) sweep(rs *revocationSet, own string, now time.Time, before func(n int)) int {
	return t.sweepDir(rs, own, false, now, before)
}

// sweepOut is sweep for a tracker of outbound connections, whose keys are
// their upstream's: it closes the connections to a revoked upstream
// identity or serial, those opened with a certificate of this workload
// whose serial rs revokes, and those own (this workload's ID, "" for
// none) is blocked from calling (the pair read the other way round). When own
// itself is revoked (the workload isolated), it closes every one: its
// egress is cut here, not left to its upstreams' sidecars, since an
// upstream may be a SPIFFE peer that never hears of moatless's
// revocations (or a sidecar that hears later).
func (t *tracker) sweepOut(rs *revocationSet, own string, now time.Time, before func(n int)) int {
	return t.sweepDir(rs, own, true, now, before)
}

func (t *tracker) sweepDir(rs *revocationSet, own string, outbound bool, now time.Time, before func(n int)) int {
	blocked := func(peer string) bool {
		if outbound {
			return own != "" && rs.blockedPair(own, peer, now)
		}
		return rs.blockedPair(peer, own, now)
	}
	isolated := outbound && own != "" && rs.has(own, "")
	var victims []*tracked
	t.mu.Lock()
	for k, set := range t.byKey {
		if !isolated && !keyRevoked(rs, k) && !(k.kind == liveID && blocked(k.v)) {
			continue
		}
		victims = set.appendTo(victims)
	}
	// An entry under two revoked keys (its SPIFFE ID and its serial, say)
	// was collected twice; removeLocked forgets it from every key at once,
	// so the second time it is no longer counted.
	n := 0
	for _, e := range victims {
		if t.removeLocked(e) {
			victims[n] = e
			n++
		}
	}
	victims = victims[:n]
	t.mu.Unlock()
	if before != nil && len(victims) > 0 {
		before(len(victims))
	}
	for _, e := range victims {
		e.once.Do(e.close)
	}
	return len(victims)
}

func keyRevoked(rs *revocationSet, k liveKey) bool {
	switch k.kind {
	case liveID:
		_, ok := rs.ids[k.v]
		return ok
	case liveSerial:
		_, ok := rs.serials[k.v]
		return ok
	case liveJTI:
		return rs.hasJTI(k.v)
	case liveTokenOwner:
		_, ok := rs.ids[k.v]
		return ok
	case liveOwnSerial:
		_, ok := rs.serials[k.v]
		return ok
	}
	return false
}

// ownRevocation is an error saying when and why the sidecar's own SVID
// in force (cert) was revoked, by SPIFFE ID or serial; nil when it is not.
func (s *Sidecar) ownRevocation(cert *tls.Certificate) error {
	rs := s.revoked.Load()
	if rs == nil || cert.Leaf == nil {
		return nil
	}
	id, err := x509svid.IDFromCert(cert.Leaf)
	if err != nil {
		return nil
	}
	if !rs.has(id.String(), cert.Leaf.SerialNumber.Text(16)) {
		return nil
	}
	d, ok := rs.src.Detail(id.String())
	if !ok {
		return fmt.Errorf("proxy: this sidecar's certificate (serial %s) of %s is revoked", cert.Leaf.SerialNumber.Text(16), id)
	}
	return fmt.Errorf("proxy: this sidecar's identity %s", d)
}
