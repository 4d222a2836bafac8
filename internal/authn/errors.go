package authn

import (
	"errors"
	"strconv"
)

// ErrInvalidToken is what every token rejection wraps: a request that
// carries a token which cannot be accepted. The policy engine maps it to
// Unauthenticated (HTTP 401). Test with errors.Is; the more specific
// sentinels below say why.
var ErrInvalidToken = errors.New("invalid token")

// Reasons a token is refused. Each wraps ErrInvalidToken as well
// (errors.Is(err, ErrExpired) and errors.Is(err, ErrInvalidToken) both
// hold), and Reason(err) names it with a short label fit for a metric.
var (
	// ErrMalformed: not a JWS compact serialization of two JSON objects
	// and a signature, or a claim of the wrong JSON type.
	ErrMalformed = errors.New("malformed token")
	// ErrTooLarge: the token exceeds Options.MaxTokenSize (or its header
	// the fixed header limit).
	ErrTooLarge = errors.New("token too large")
	// ErrEncrypted: a JWE (five segments, or JWE header parameters) or a
	// nested JWT (cty "JWT"). Only signed tokens are accepted.
	ErrEncrypted = errors.New("encrypted or nested token not accepted")
	// ErrAlgorithm: alg is not one of the asymmetric algorithms accepted
	// (none and every HMAC algorithm are refused; see Algorithms).
	ErrAlgorithm = errors.New("signature algorithm not accepted")
	// ErrHeader: a header parameter that would let the token choose its
	// own key or change how it is processed (jku, jwk, x5u, x5c, crit, b64,
	// zip, JWE parameters), or a duplicate header key.
	ErrHeader = errors.New("header parameter not accepted")
	// ErrDuplicateKey: a JSON object in the header or claims repeats a
	// member name. Parsers disagree about which copy wins, so neither may.
	ErrDuplicateKey = errors.New("duplicate JSON member")
	// ErrUnknownIssuer: iss matches no rule that looks at the location
	// where the token was found.
	ErrUnknownIssuer = errors.New("issuer not accepted")
	// ErrKeysUnavailable: the rule's key set has not been fetched yet (or
	// every fetch so far failed). A background fetch has been requested.
	ErrKeysUnavailable = errors.New("signing keys not available yet")
	// ErrUnknownKey: no key in the issuer's key set has the token's kid. A
	// background refresh of the key set has been requested (rate limited).
	ErrUnknownKey = errors.New("no key with the token's key ID")
	// ErrKeyMismatch: the key named by kid cannot verify the token's alg
	// (wrong key type or curve, or the key's own alg/use forbids it).
	ErrKeyMismatch = errors.New("key does not fit the token's algorithm")
	// ErrSignature: the signature does not verify.
	ErrSignature = errors.New("signature invalid")
	// ErrExpired: exp is in the past (beyond the leeway).
	ErrExpired = errors.New("token expired")
	// ErrMissingExpiry: the token has no exp claim. Moatless requires one:
	// a token without it would be valid forever.
	ErrMissingExpiry = errors.New("token has no expiry")
	// ErrNotYetValid: nbf is in the future (beyond the leeway).
	ErrNotYetValid = errors.New("token not valid yet")
	// ErrIssuedInFuture: iat is in the future (beyond the leeway).
	ErrIssuedInFuture = errors.New("token issued in the future")
	// ErrAudience: the rule lists audiences and the token has none of them.
	ErrAudience = errors.New("audience not accepted")
	// ErrRevoked: the token's jti has been revoked.
	ErrRevoked = errors.New("token revoked")
	// ErrMultipleTokens: the request carries more than one distinct token
	// (or one location carries several). Istio leaves the principal of such
	// a request undefined; Moatless refuses it rather than guess.
	ErrMultipleTokens = errors.New("more than one token in request")
	// ErrRuleInvalid: the token's issuer has a rule that failed to compile
	// (see ValidateRule), so the token cannot be verified.
	ErrRuleInvalid = errors.New("rule for issuer is invalid")
	// ErrCertBinding: the token is bound to a client certificate (cnf
	// "x5t#S256", RFC 8705 §3) and the request did not come over a
	// connection that presented that certificate (Source.CertSHA256
	// differs, or is "" for plaintext). A stolen bound token is useless
	// without the certificate's private key.
	ErrCertBinding = errors.New("token bound to another client certificate")
	// ErrTokenRequired: a rule that applies says presence: REQUIRED and
	// the request carries no token that rule accepts (none at all, none
	// where the rule looks, or one of another issuer). As in Istio, the
	// request is refused even when another rule accepted its token.
	ErrTokenRequired = errors.New("token required")
)

// ErrInvalidRule is wrapped by ValidateRule and Prepare errors: a JWTRule
// that cannot be enforced as written. It is a configuration error, not a
// token error.
var ErrInvalidRule = errors.New("invalid JWT rule")

// ErrJWKSFetch is wrapped by errors from fetching a remote key set.
var ErrJWKSFetch = errors.New("JWKS fetch failed")

// ErrClosed is returned by Prepare and Refresh after Close.
var ErrClosed = errors.New("authn: verifier closed")

// reasonLabels maps each sentinel to its metric label.
var reasonLabels = [...]struct {
	err   error
	label string
}{
	{ErrMalformed, "malformed"},
	{ErrTooLarge, "too_large"},
	{ErrEncrypted, "encrypted"},
	{ErrAlgorithm, "algorithm"},
	{ErrHeader, "header"},
	{ErrDuplicateKey, "duplicate_key"},
	{ErrUnknownIssuer, "unknown_issuer"},
	{ErrKeysUnavailable, "keys_unavailable"},
	{ErrUnknownKey, "unknown_key"},
	{ErrKeyMismatch, "key_mismatch"},
	{ErrSignature, "signature"},
	{ErrExpired, "expired"},
	{ErrMissingExpiry, "missing_expiry"},
	{ErrNotYetValid, "not_yet_valid"},
	{ErrIssuedInFuture, "issued_in_future"},
	{ErrAudience, "audience"},
	{ErrTokenRequired, "token_required"},
	{ErrRevoked, "revoked"},
	{ErrMultipleTokens, "multiple_tokens"},
	{ErrRuleInvalid, "rule_invalid"},
	{ErrCertBinding, "cert_binding"},
}

// Reason returns a short, fixed label for why err refused a token
// ("expired", "signature", …), "" for nil and "other" for anything else.
// The set of labels is closed, so it is safe as a metric label.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	var te *tokenError
	if errors.As(err, &te) {
		return te.label()
	}
	return "other"
}

// tokenError is a token rejection: a kind (one of the sentinels) and a
// detail that never contains the token or any part of it. Short values
// taken from the token (iss, kid) appear quoted and truncated, because an
// operator needs them to fix a rule and they are not secrets.
type tokenError struct {
	kind   error
	detail string
	// issuer and subject of a token refused although its signature
	// verified (VerifiedToken, and RevokedToken for ErrRevoked); empty
	// for a token whose signature did not verify or was not checked.
	issuer, subject string
}

// VerifiedToken returns the issuer and subject of a token refused after
// its signature verified: revoked (ErrRevoked), sent over a connection
// without the certificate it is bound to (ErrCertBinding), refused by a
// REQUIRED rule of the request although another rule accepted it
// (ErrTokenRequired and the other rule's refusals), or of an audience the
// rule does not accept (ErrAudience) — the issuer's word about whose
// token was presented, for an audit record. Empty for every other
// refusal: the claims of a token that did not verify are the sender's
// word, and must not be recorded as an identity.
func (e *tokenError) VerifiedToken() (issuer, subject string) {
	return e.issuer, e.subject
}

// verifiedRefusal is err (a refusal of a token whose signature verified,
// with issuer iss and subject sub) carrying them for VerifiedToken. A
// refusal that already names a token is left as it is.
func verifiedRefusal(err error, iss, sub string) error {
	te, ok := err.(*tokenError)
	if !ok || te.issuer != "" {
		return err
	}
	c := *te
	c.issuer, c.subject = iss, sub
	return &c
}

// RevokedToken returns the issuer and subject of a token refused because
// it was revoked (ErrRevoked): its signature verified, so they are the
// issuer's word about whose token it is. Empty for every other refusal.
// Detection names the token's owner with them: a workload's stolen token
// replayed through a relay is about the workload, not the relay.
func (e *tokenError) RevokedToken() (issuer, subject string) {
	if e.kind != ErrRevoked {
		return "", ""
	}
	return e.issuer, e.subject
}

func (e *tokenError) Error() string {
	if e.detail == "" {
		return "authn: " + ErrInvalidToken.Error() + ": " + e.kind.Error()
	}
	return "authn: " + ErrInvalidToken.Error() + ": " + e.kind.Error() + ": " + e.detail
}

// Is makes both the kind and ErrInvalidToken match.
func (e *tokenError) Is(target error) bool {
	return target == ErrInvalidToken || target == e.kind
}

func (e *tokenError) Unwrap() error { return e.kind }

func (e *tokenError) label() string {
	for _, r := range reasonLabels {
		if r.err == e.kind {
			return r.label
		}
	}
	return "other"
}

func tokenErr(kind error, detail string) error {
	return &tokenError{kind: kind, detail: detail}
}

// maxQuoted bounds how much of a token-supplied value an error repeats.
const maxQuoted = 64

// quote renders a short token-supplied string (iss, kid, alg) for an error
// message: Go-quoted, so control characters cannot forge log lines, and
// truncated, so an error never carries much attacker-chosen text.
func quote(s string) string {
	if len(s) > maxQuoted {
		return strconv.Quote(s[:maxQuoted]) + "…"
	}
	return strconv.Quote(s)
}
