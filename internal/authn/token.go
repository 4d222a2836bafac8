package authn

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// DefaultMaxTokenSize is the default bound on a token's length (16 KiB).
// Real access tokens are well under 4 KiB; Envoy and most web servers cap
// a whole header around 8-16 KiB.
const DefaultMaxTokenSize = 16 << 10

// maxHeaderSegment bounds the encoded JOSE header: a real one (alg, kid,
// typ, x5t) is under 300 bytes.
const maxHeaderSegment = 4 << 10

// maxUnixSeconds is the latest time a NumericDate may name (year 9999):
// anything later is a malformed claim, not a long-lived token.
const maxUnixSeconds = 253402300799

// strictB64 decodes unpadded base64url and refuses non-zero trailing bits,
// so no token has two encodings of the same bytes.
var strictB64 = base64.RawURLEncoding.Strict()

// forbiddenHeaders are JOSE header parameters a token may not carry.
// jku, x5u, jwk and x5c would let the token name or embed its own key
// (RFC 8725 section 3.10 and the jwt_tool key-injection attacks): keys come
// only from the configured key set. crit asks the verifier to understand
// extensions it does not implement. b64 (RFC 7797) changes what is signed.
// zip and the JWE parameters belong to encrypted tokens.
var forbiddenHeaders = []string{
	"jku", "jwk", "x5u", "x5c", "crit", "b64", "zip",
	"enc", "epk", "apu", "apv", "iv", "tag", "p2s", "p2c",
}

// parsedToken is a token whose structure and claim types have been
// checked but whose signature has not (yet).
type parsedToken struct {
	raw        string
	payloadB64 string // the encoded payload, as outputPayloadToHeader forwards it
	alg        jose.SignatureAlgorithm
	kid        string
	hasKID     bool

	payload []byte
	claims  map[string]any

	iss, sub, azp, jti string
	// x5t is the cnf "x5t#S256" claim (RFC 8705 §3.1): the thumbprint of
	// the client certificate the token is bound to, "" when unbound.
	x5t            string
	aud            []string
	exp            float64
	nbf, iat       float64
	hasNBF, hasIAT bool
}

// isTokenChar reports whether c may appear in a JWS compact serialization:
// the base64url alphabet and the dot.
func isTokenChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
}

// validTokenSyntax reports whether s consists only of token characters.
func validTokenSyntax(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// parseToken checks a compact JWS strictly and decodes its header and
// claims. It never verifies the signature; verify does. hmac lets the
// HMAC algorithms through (the verifier has shared-secret issuers; which
// issuer may use them is checked against the rule). Every error is a
// *tokenError whose text holds no part of the token.
func parseToken(raw string, maxSize int, hmac bool) (*parsedToken, error) {
	if len(raw) > maxSize {
		return nil, tokenErr(ErrTooLarge, "")
	}
	if !validTokenSyntax(raw) {
		return nil, tokenErr(ErrMalformed, "characters outside base64url")
	}
	switch strings.Count(raw, ".") {
	case 2:
	case 4:
		return nil, tokenErr(ErrEncrypted, "JWE compact serialization")
	default:
		return nil, tokenErr(ErrMalformed, "not three dot-separated segments")
	}
	h, rest, _ := strings.Cut(raw, ".")
	p, s, _ := strings.Cut(rest, ".")
	if h == "" || p == "" {
		return nil, tokenErr(ErrMalformed, "empty segment")
	}
	if s == "" {
		return nil, tokenErr(ErrMalformed, "missing signature")
	}
	if len(h) > maxHeaderSegment {
		return nil, tokenErr(ErrTooLarge, "header")
	}
	header, err := strictB64.DecodeString(h)
	if err != nil {
		return nil, tokenErr(ErrMalformed, "header is not base64url")
	}
	if _, err := strictB64.DecodeString(s); err != nil {
		return nil, tokenErr(ErrMalformed, "signature is not base64url")
	}
	t := &parsedToken{raw: raw, payloadB64: p}
	if err := t.parseHeader(header, hmac); err != nil {
		return nil, err
	}
	payload, err := strictB64.DecodeString(p)
	if err != nil {
		return nil, tokenErr(ErrMalformed, "payload is not base64url")
	}
	t.payload = payload
	if err := t.parseClaims(payload); err != nil {
		return nil, err
	}
	return t, nil
}

func jsonError(where string, err error) error {
	var dup *duplicateKeyError
	if errors.As(err, &dup) {
		return tokenErr(ErrDuplicateKey, where+": "+dup.Error())
	}
	switch {
	case errors.Is(err, errJSONDepth):
		return tokenErr(ErrMalformed, where+": nested too deeply")
	case errors.Is(err, errJSONUTF8):
		return tokenErr(ErrMalformed, where+": not valid UTF-8")
	}
	return tokenErr(ErrMalformed, where+": not a JSON object")
}

func (t *parsedToken) parseHeader(header []byte, hmac bool) error {
	if err := checkStrictJSON(header); err != nil {
		return jsonError("header", err)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(header, &hdr); err != nil {
		return tokenErr(ErrMalformed, "header: not a JSON object")
	}
	for _, name := range forbiddenHeaders {
		if _, ok := hdr[name]; ok {
			if name == "enc" {
				return tokenErr(ErrEncrypted, "JWE header")
			}
			return tokenErr(ErrHeader, quote(name))
		}
	}
	var alg string
	if err := json.Unmarshal(hdr["alg"], &alg); err != nil || hdr["alg"] == nil {
		return tokenErr(ErrAlgorithm, "alg missing or not a string")
	}
	t.alg = jose.SignatureAlgorithm(alg)
	if !slices.Contains(Algorithms, t.alg) && !(hmac && isHMAC(t.alg)) {
		return tokenErr(ErrAlgorithm, "alg "+quote(alg))
	}
	if raw, ok := hdr["kid"]; ok {
		if err := json.Unmarshal(raw, &t.kid); err != nil {
			return tokenErr(ErrHeader, "kid is not a string")
		}
		if len(t.kid) > maxKIDLen {
			return tokenErr(ErrHeader, "kid longer than 256 bytes")
		}
		t.hasKID = true
	}
	for _, name := range []string{"typ", "cty"} {
		raw, ok := hdr[name]
		if !ok {
			continue
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			return tokenErr(ErrHeader, name+" is not a string")
		}
		// cty "JWT" announces a nested token (RFC 7519 section 5.2): the
		// outer signature then vouches for a token, not for claims.
		if name == "cty" && (strings.EqualFold(v, "JWT") || strings.EqualFold(v, "application/jwt")) {
			return tokenErr(ErrEncrypted, "nested JWT (cty JWT)")
		}
	}
	return nil
}

// parseClaims decodes the claims and checks the types of the registered
// ones: iss, sub, azp and jti strings; aud a string or an array of strings;
// exp, nbf and iat numbers within [0, year 9999].
func (t *parsedToken) parseClaims(payload []byte) error {
	if err := checkStrictJSON(payload); err != nil {
		return jsonError("claims", err)
	}
	if err := json.Unmarshal(payload, &t.claims); err != nil {
		return tokenErr(ErrMalformed, "claims: not a JSON object")
	}
	var ok bool
	if t.iss, ok = stringClaim(t.claims, "iss"); !ok || t.iss == "" {
		return tokenErr(ErrMalformed, "iss missing or not a string")
	}
	for _, c := range []struct {
		name string
		dst  *string
	}{{"sub", &t.sub}, {"azp", &t.azp}, {"jti", &t.jti}} {
		if *c.dst, ok = stringClaim(t.claims, c.name); !ok {
			return tokenErr(ErrMalformed, c.name+" is not a string")
		}
	}
	if cnf, present := t.claims["cnf"]; present {
		m, ok := cnf.(map[string]any)
		if !ok {
			return tokenErr(ErrMalformed, "cnf is not a JSON object")
		}
		if x, present := m["x5t#S256"]; present {
			// RFC 8705 §3.1: base64url of a SHA-256, so 43 characters.
			s, ok := x.(string)
			if !ok || !validThumbprint(s) {
				return tokenErr(ErrMalformed, "cnf x5t#S256 is not a base64url SHA-256 thumbprint")
			}
			t.x5t = s
		}
	}
	switch aud := t.claims["aud"].(type) {
	case nil:
		if _, present := t.claims["aud"]; present {
			return tokenErr(ErrMalformed, "aud is null")
		}
	case string:
		t.aud = []string{aud}
	case []any:
		t.aud = make([]string, 0, len(aud))
		for _, a := range aud {
			s, ok := a.(string)
			if !ok {
				return tokenErr(ErrMalformed, "aud holds a non-string")
			}
			t.aud = append(t.aud, s)
		}
	default:
		return tokenErr(ErrMalformed, "aud is neither a string nor an array")
	}
	var present bool
	if t.exp, present, ok = timeClaim(t.claims, "exp"); !ok {
		return tokenErr(ErrMalformed, "exp is not a valid NumericDate")
	} else if !present {
		return tokenErr(ErrMissingExpiry, "")
	}
	if t.nbf, t.hasNBF, ok = timeClaim(t.claims, "nbf"); !ok {
		return tokenErr(ErrMalformed, "nbf is not a valid NumericDate")
	}
	if t.iat, t.hasIAT, ok = timeClaim(t.claims, "iat"); !ok {
		return tokenErr(ErrMalformed, "iat is not a valid NumericDate")
	}
	return nil
}

// validThumbprint reports whether s is a SHA-256 digest in base64url
// without padding, strictly (no stray bits in the last character).
func validThumbprint(s string) bool {
	if len(s) != 43 {
		return false
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	return err == nil && len(b) == sha256.Size
}

// stringClaim returns claim name as a string; ok is false when it is
// present with another type.
func stringClaim(claims map[string]any, name string) (string, bool) {
	v, present := claims[name]
	if !present {
		return "", true
	}
	s, ok := v.(string)
	return s, ok
}

// timeClaim returns a NumericDate claim (seconds since the epoch, possibly
// fractional, RFC 7519 section 2).
func timeClaim(claims map[string]any, name string) (v float64, present, ok bool) {
	raw, present := claims[name]
	if !present {
		return 0, false, true
	}
	f, isNum := raw.(float64)
	if !isNum || math.IsNaN(f) || f < 0 || f > maxUnixSeconds {
		return 0, true, false
	}
	return f, true, true
}

// checkTimes enforces exp, nbf and iat against now with leeway for clock
// skew between issuer and verifier.
func (t *parsedToken) checkTimes(now time.Time, leeway time.Duration) error {
	n := float64(now.UnixNano()) / 1e9
	l := leeway.Seconds()
	if n >= t.exp+l {
		return tokenErr(ErrExpired, "")
	}
	if t.hasNBF && n+l < t.nbf {
		return tokenErr(ErrNotYetValid, "")
	}
	if t.hasIAT && n+l < t.iat {
		return tokenErr(ErrIssuedInFuture, "")
	}
	return nil
}

// expiry returns exp as a time, for the verified-token cache.
func (t *parsedToken) expiry() time.Time {
	sec, frac := math.Modf(t.exp)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// checkAudience passes when want is empty (as Istio: no audiences means
// any) or the token names at least one of want, compared exactly.
func (t *parsedToken) checkAudience(want []string) error {
	if len(want) == 0 {
		return nil
	}
	for _, a := range t.aud {
		if slices.Contains(want, a) {
			return nil
		}
	}
	return tokenErr(ErrAudience, "")
}

// verifySignature checks the signature with each candidate key until one
// verifies. go-jose does the cryptography with the token's alg as the
// only algorithm it may accept; the payload it returns must be the bytes
// already parsed, so the claims acted on are exactly the signed ones.
func (t *parsedToken) verifySignature(keys []*jwk) error {
	sig, err := jose.ParseSignedCompact(t.raw, []jose.SignatureAlgorithm{t.alg})
	if err != nil {
		return tokenErr(ErrMalformed, "JWS structure")
	}
	if len(sig.Signatures) != 1 {
		return tokenErr(ErrMalformed, "not exactly one signature")
	}
	for _, k := range keys {
		payload, err := sig.Verify(k.pub)
		if err != nil {
			continue
		}
		if !bytes.Equal(payload, t.payload) {
			return tokenErr(ErrSignature, "payload mismatch")
		}
		return nil
	}
	return tokenErr(ErrSignature, "")
}
