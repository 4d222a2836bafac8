package authn

import (
	"encoding/binary"
	"unsafe"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/policy"
)

// Memo is a Verifier for the requests of one connection, served one at a
// time: it remembers the last token it accepted on that connection and
// the verifier's cache entry for it, so that the next request carrying
// byte-identical token text skips the SHA-256 that keys the cache and the
// cache's lookup. A client sends the same token with every request on a
// connection; hashing it anew each time was most of a cache hit's cost.
//
// A hit on the memo is checked as a hit on the cache is, on every
// request: the token equal byte for byte (a constant-time comparison,
// stricter than the cache's digest equality), not expired by the
// verifier's clock, the entry's rule still among the request's candidate
// rules and still the one the full check would pick, that rule's key set
// the one the signature was checked against (a rotation or a refetch
// invalidates), its jti not revoked, the certificate binding (cnf
// x5t#S256) that of this request's connection, and REQUIRED rules
// satisfied. Anything else falls through to Verify, whose result the
// memo then remembers.
//
// The memo holds its own copy of the token, the one bearer credential
// the connection is already carrying, and overwrites it with zeros when
// the token changes and on Forget; a Memo is not safe for concurrent use
// (an HTTP/2 connection, whose streams run at once, should use the
// Verifier itself). The zero Memo is not usable: get one from
// Verifier.Memo. With the Verifier's cache off (a negative CacheSize)
// the memo remembers nothing: every token is verified in full.
type Memo struct {
	v   *Verifier
	tok []byte
	e   *cacheEntry
}

// Memo returns a new, empty memo of v for one connection.
func (v *Verifier) Memo() *Memo { return &Memo{v: v} }

// Verify implements policy.JWTVerifier as Verifier.Verify does, with the
// same results for every request (see Memo).
func (m *Memo) Verify(rules []*securityv1beta1.JWTRule, req *policy.Request) (*policy.Auth, error) {
	return m.v.verify(rules, req, m)
}

// Forget drops the remembered token, its copy zeroed. The memo may be used
// again after.
func (m *Memo) Forget() {
	clear(m.tok)
	m.tok, m.e = m.tok[:0], nil
}

// lookup returns the remembered entry when tok is the remembered token
// and the entry is still live at now (Unix nanoseconds), nil otherwise.
func (m *Memo) lookup(tok string, now int64) *cacheEntry {
	if m.e == nil || m.e.expires <= now || !equalToken(m.tok, tok) {
		return nil
	}
	return m.e
}

// remember makes e, accepted for tok, the memo's entry.
func (m *Memo) remember(tok string, e *cacheEntry) {
	if m.e == e {
		return
	}
	clear(m.tok)
	m.tok = append(m.tok[:0], tok...)
	m.e = e
}

// equalToken reports whether a and b are the same bytes, in time that
// depends on their lengths only (as subtle.ConstantTimeCompare, eight
// bytes at a time: the comparison runs on every request of a
// connection, and the bytes compared may have been sent by another
// caller sharing it through an outbound sidecar).
func equalToken(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	bb := unsafe.Slice(unsafe.StringData(b), len(b))
	var v uint64
	// Resliced rather than indexed: one bounds check per 32 bytes.
	for len(a) >= 32 && len(bb) >= 32 {
		v |= binary.LittleEndian.Uint64(a) ^ binary.LittleEndian.Uint64(bb)
		v |= binary.LittleEndian.Uint64(a[8:]) ^ binary.LittleEndian.Uint64(bb[8:])
		v |= binary.LittleEndian.Uint64(a[16:]) ^ binary.LittleEndian.Uint64(bb[16:])
		v |= binary.LittleEndian.Uint64(a[24:]) ^ binary.LittleEndian.Uint64(bb[24:])
		a, bb = a[32:], bb[32:]
	}
	for len(a) >= 8 && len(bb) >= 8 {
		v |= binary.LittleEndian.Uint64(a) ^ binary.LittleEndian.Uint64(bb)
		a, bb = a[8:], bb[8:]
	}
	for i := range a {
		v |= uint64(a[i] ^ bb[i])
	}
	return v == 0
}
