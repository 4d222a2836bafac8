package ca

import (
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits on JWT-SVID audiences.
const (
	maxAudiences     = 16
	maxAudienceBytes = 2048
)

// SignJWTSVID signs a JWT-SVID for id: JWS compact serialization, ES256,
// protected header {alg, kid, typ: JWT} and nothing else (JWT-SVID allows no
// other header), claims sub = id, aud = audience, exp and iat. ttl 0 =
// Options.JWTSVIDTTL; exp is capped at the JWT authority's NotAfter, so the
// key stays in the bundle as long as any token it signed is valid.
//
// audience must hold 1 to 16 distinct non-empty values (JWT-SVID: aud MUST
// be present; a single audience is strongly recommended).
//
// Errors: ErrInvalidID, ErrInvalidRequest (audience, negative ttl),
// ErrNoAuthority.
func (c *CA) SignJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (token string, expiresAt time.Time, err error) {
	if err := c.checkWorkloadID(id); err != nil {
		return "", time.Time{}, err
	}
	if ttl < 0 {
		return "", time.Time{}, fmt.Errorf("%w: negative TTL %v", ErrInvalidRequest, ttl)
	}
	if err := checkAudience(audience); err != nil {
		return "", time.Time{}, err
	}
	s := c.cur.Load().jwt
	now := c.o.Now()
	if ttl == 0 {
		ttl = c.o.JWTSVIDTTL
	}
	// NumericDate has whole seconds; truncate so the exp we report is the
	// one in the token.
	exp := now.Add(ttl)
	if s != nil && exp.After(s.notAfter) {
		exp = s.notAfter
	}
	exp = exp.Truncate(time.Second)
	if s == nil || !exp.After(now) {
		return "", time.Time{}, fmt.Errorf("%w: the JWT authority has expired (is the server's CA tick running?)", ErrNoAuthority)
	}
	claims := jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(slices.Clone(audience)),
		Expiry:   jwt.NewNumericDate(exp),
		IssuedAt: jwt.NewNumericDate(now),
	}
	tok, err := jwt.Signed(s.signer).Claims(claims).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ca: sign JWT-SVID: %w", err)
	}
	return tok, exp, nil
}

func checkAudience(aud []string) error {
	if len(aud) == 0 {
		return fmt.Errorf("%w: a JWT-SVID needs at least one audience", ErrInvalidRequest)
	}
	if len(aud) > maxAudiences {
		return fmt.Errorf("%w: %d audiences, at most %d", ErrInvalidRequest, len(aud), maxAudiences)
	}
	for i, a := range aud {
		switch {
		case a == "":
			return fmt.Errorf("%w: empty audience", ErrInvalidRequest)
		case len(a) > maxAudienceBytes:
			return fmt.Errorf("%w: audience of %d bytes, at most %d", ErrInvalidRequest, len(a), maxAudienceBytes)
		case !utf8.ValidString(a):
			return fmt.Errorf("%w: audience is not valid UTF-8", ErrInvalidRequest)
		case slices.Contains(aud[:i], a):
			return fmt.Errorf("%w: duplicate audience %q", ErrInvalidRequest, a)
		}
	}
	return nil
}
