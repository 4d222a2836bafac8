package authn

import (
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// SharedSecret makes an issuer's tokens HMAC-signed with a secret both
// sides hold (HS256 and kin), for the few issuers that cannot sign with a
// key pair. The secret verifies the tokens of this issuer only, with this
// one algorithm only: a token of any other issuer that names an HMAC
// algorithm is still refused, so an RS256 issuer cannot be downgraded to
// HS256 with its public key as the secret (RFC 8725 section 2.1), and a
// token of this issuer naming any other algorithm is refused too. The
// issuer's RequestAuthentication rules must name no jwks or jwksUri.
type SharedSecret struct {
	// Issuer is the exact iss the tokens carry.
	Issuer string
	// Algorithm is HS256 (the default when empty), HS384 or HS512.
	Algorithm jose.SignatureAlgorithm
	// Secret is the key: at least MinSharedSecret bytes, and at least the
	// algorithm's hash size (RFC 7518 section 3.2).
	Secret []byte
}

// MinSharedSecret is the shortest secret accepted: 256 bits.
const MinSharedSecret = 32

// hmacAlgorithms are the algorithms a SharedSecret may pin, with the
// shortest key each allows.
var hmacAlgorithms = map[jose.SignatureAlgorithm]int{jose.HS256: 32, jose.HS384: 48, jose.HS512: 64}

func isHMAC(alg jose.SignatureAlgorithm) bool {
	_, ok := hmacAlgorithms[alg]
	return ok
}

// sharedIssuer is a checked SharedSecret; err refuses every token of the
// issuer when the configuration was not acceptable.
type sharedIssuer struct {
	alg    jose.SignatureAlgorithm
	secret []byte
	err    error
}

// Check reports whether s is acceptable; NewVerifier refuses every token
// of an issuer whose SharedSecret is not.
func (s SharedSecret) Check() error {
	if s.Issuer == "" {
		return fmt.Errorf("authn: shared secret: issuer is required")
	}
	alg := s.Algorithm
	if alg == "" {
		alg = jose.HS256
	}
	min, ok := hmacAlgorithms[alg]
	if !ok {
		return fmt.Errorf("authn: shared secret for %q: algorithm %q is not HS256, HS384 or HS512", s.Issuer, s.Algorithm)
	}
	if len(s.Secret) < min {
		return fmt.Errorf("authn: shared secret for %q: %d bytes, %s needs at least %d", s.Issuer, len(s.Secret), alg, min)
	}
	return nil
}

func newSharedIssuers(list []SharedSecret) map[string]*sharedIssuer {
	if len(list) == 0 {
		return nil
	}
	m := make(map[string]*sharedIssuer, len(list))
	for _, s := range list {
		si := &sharedIssuer{alg: s.Algorithm, secret: append([]byte(nil), s.Secret...)}
		if si.alg == "" {
			si.alg = jose.HS256
		}
		if err := s.Check(); err != nil {
			si.err = err
		}
		if m[s.Issuer] != nil {
			si.err = fmt.Errorf("authn: shared secret for %q given twice", s.Issuer)
		}
		m[s.Issuer] = si
	}
	return m
}

// verifyHMAC checks pt's signature with the issuer's secret. The
// algorithm was pinned by the caller; go-jose compares MACs in constant
// time (hmac.Equal).
func (t *parsedToken) verifyHMAC(si *sharedIssuer) error {
	sig, err := jose.ParseSignedCompact(t.raw, []jose.SignatureAlgorithm{si.alg})
	if err != nil {
		return tokenErr(ErrMalformed, "JWS structure")
	}
	if len(sig.Signatures) != 1 {
		return tokenErr(ErrMalformed, "not exactly one signature")
	}
	payload, err := sig.Verify(si.secret)
	if err != nil {
		return tokenErr(ErrSignature, "")
	}
	if string(payload) != string(t.payload) {
		return tokenErr(ErrSignature, "payload mismatch")
	}
	return nil
}
