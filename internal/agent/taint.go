package agent

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/wire"
)

// authorities is what one trust bundle says about the CA keys an SVID can
// chain to (`moatless ca taint` / `ca revoke`, SPIRE's localauthority
// taint and revoke): which are present, which of those are tainted
// (compromised, still trusted, to be replaced at once), and the roots to
// re-verify a chain against when its authority left the bundle.
type authorities struct {
	present map[string]bool // subject key IDs, lower-case hex
	tainted map[string]bool
	roots   *x509.CertPool
	// jwtKeys holds the JWT key IDs of the bundle, true when tainted.
	jwtKeys map[string]bool
}

// authoritiesOf indexes b; nil gives an empty view (nothing present,
// nothing tainted).
func authoritiesOf(b *wire.Bundle) *authorities {
	a := &authorities{present: map[string]bool{}, tainted: map[string]bool{}, roots: x509.NewCertPool(), jwtKeys: map[string]bool{}}
	if b == nil {
		return a
	}
	for _, der := range b.X509Authorities {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			continue
		}
		a.roots.AddCert(c)
		if len(c.SubjectKeyId) > 0 {
			a.present[hex.EncodeToString(c.SubjectKeyId)] = true
		}
	}
	for _, ski := range b.TaintedX509Authorities {
		a.tainted[strings.ToLower(ski)] = true
	}
	for _, k := range b.JWTAuthorities {
		a.jwtKeys[k.KeyID] = k.Tainted
	}
	return a
}

// chainAuthorities returns the subject key IDs (lower-case hex) of the
// authorities a certificate chain depends on: the AuthorityKeyId of every
// certificate, and the SubjectKeyId of every certificate after the leaf.
func chainAuthorities(chain []*x509.Certificate) []string {
	var out []string
	add := func(b []byte) {
		if len(b) == 0 {
			return
		}
		s := hex.EncodeToString(b)
		for _, o := range out {
			if o == s {
				return
			}
		}
		out = append(out, s)
	}
	for i, c := range chain {
		add(c.AuthorityKeyId)
		if i > 0 {
			add(c.SubjectKeyId)
		}
	}
	return out
}

// taintedIn returns the first of keys (see chainAuthorities) the bundle
// marks tainted, "" for none.
func (a *authorities) taintedIn(keys []string) string {
	for _, k := range keys {
		if a.tainted[k] {
			return k
		}
	}
	return ""
}

// untrusted reports whether chain (leaf first) no longer verifies against
// the bundle: the authority it was signed under left it (`ca revoke`). A
// chain whose top certificate names an authority still present is not
// verified again (nothing it depends on changed); any other is.
func (a *authorities) untrusted(chain []*x509.Certificate, now time.Time) bool {
	if len(chain) == 0 {
		return true
	}
	if top := chain[len(chain)-1]; len(top.AuthorityKeyId) > 0 && a.present[hex.EncodeToString(top.AuthorityKeyId)] {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: a.roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err != nil
}

// jwtKeyGone reports whether a JWT-SVID signed with kid must not be
// handed out again: its key is tainted or no longer in the bundle.
func (a *authorities) jwtKeyGone(kid string) bool {
	tainted, ok := a.jwtKeys[kid]
	return !ok || tainted
}

// tokenKID is the kid of a compact JWS's protected header ("" when it
// has none). The token was validated before; a header that does not
// decode gives "", which no bundle key has.
func tokenKID(token string) string {
	head, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return ""
	}
	var h struct {
		KID string `json:"kid"`
	}
	if json.Unmarshal(raw, &h) != nil {
		return ""
	}
	return h.KID
}
