package policy

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

// Protocol is what the destination port speaks, as the sidecar sees it.
type Protocol uint8

const (
	// HTTP covers HTTP/1.1, HTTP/2 and gRPC: every field can match.
	HTTP Protocol = iota
	// TCP is raw TCP: HTTP-only fields never match an ALLOW rule and make
	// a DENY rule apply (Istio's rule for HTTP fields on TCP traffic).
	TCP
)

// Request is everything a decision may look at. The sidecar, the gateway
// and "moatless policy check" fill it in the same way. Header names are
// matched case-insensitively; Headers uses http.Header's canonical keys.
type Request struct {
	Protocol Protocol

	// Source is the peer of the mTLS connection. Principal is its SPIFFE
	// ID without the "spiffe://" scheme, as Istio writes principals
	// ("td/ns/prod/sa/orders"), or "" for a plaintext peer.
	Source Source
	// RemoteIP is the original client IP (from X-Forwarded-For at the
	// gateway); equal to Source.IP inside the mesh.
	RemoteIP netip.Addr
	// External marks a request that arrived on the gateway's public
	// listener, where clients from the internet speak TLS without a mesh
	// identity: PeerAuthentication governs mesh traffic and is not
	// applied to it (as Istio does not apply it to an ingress gateway's
	// external port). Everything else is decided as for a sidecar.
	External bool

	Destination Destination
	// SNI is the server name the client asked for in its TLS handshake.
	SNI string

	// HTTP only. Path is the request target as received, query included;
	// the engine normalizes it as Istio does before matching.
	Method  string
	Host    string
	Path    string
	Headers http.Header
	// NormalizedPath, optional, is Path as NormalizeRequestPath returned
	// it: a proxy that forwards the normalized path hands it over so that
	// the path is normalized once per request. The engine matches it when
	// its mode is the Set's PathNormalization and normalizes Path itself
	// otherwise (the zero value included), so a stale mode never weakens
	// matching.
	NormalizedPath RequestPath

	// Time is when the request arrived: Rego providers see it as
	// input.time and as time.now_ns(). The zero value leaves input.time
	// out (a policy that reads it is undefined and denies). Callers set
	// it; Decide never reads a clock.
	Time time.Time

	// Auth is the verified end-user identity from RequestAuthentication,
	// nil when the request carries no token. Evaluate fills it in from its
	// JWTVerifier; callers of Decide set it themselves.
	Auth *Auth
}

// Source is the calling workload.
type Source struct {
	Principal string
	IP        netip.Addr
	// CertSHA256 is the base64url (no padding) SHA-256 of the DER of the
	// peer's leaf certificate (CertThumbprint), "" for plaintext. The
	// request authenticator compares it with a token's cnf "x5t#S256"
	// (RFC 8705 §3): a certificate-bound token is accepted only from the
	// connection that presented that certificate. Compute it once per
	// connection.
	CertSHA256 string
}

// CertThumbprint is the RFC 8705 §3.1 certificate thumbprint of leaf:
// base64url without padding of the SHA-256 of its DER, the form of
// Source.CertSHA256 and of a token's cnf "x5t#S256".
func CertThumbprint(leaf *x509.Certificate) string {
	sum := sha256.Sum256(leaf.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// Destination is the workload the request is for.
type Destination struct {
	Namespace string
	Labels    map[string]string
	IP        netip.Addr
	Port      int
	// Principal is the workload's own SPIFFE ID without the scheme, ""
	// when unknown. Only Rego providers read it (input.destination).
	Principal string
}

// Auth is a validated request JWT, in the shape Istio's request.auth.*
// attributes expose it.
type Auth struct {
	// Principal is "<iss>/<sub>".
	Principal string
	Audiences []string
	// Presenter is the azp claim.
	Presenter string
	// Claims are all claims of the token, decoded from JSON.
	Claims map[string]any

	// Header changes RequestAuthentication asks for (outputPayloadToHeader,
	// outputClaimToHeaders, forwardOriginalToken=false). The proxy applies
	// them after an allow, before forwarding; policies already see
	// SetHeaders as the request's (request.headers conditions, Rego's
	// input.request.headers and route headers), as Istio's do.
	SetHeaders    map[string]string
	RemoveHeaders []string
	// RemoveQueryParams are fromParams token parameters to drop when the
	// token is not forwarded.
	RemoveQueryParams []string
}

// Token is the issuer and subject of the token (its iss and sub claims,
// "" for one missing or not a string), "" for a nil a.
func (a *Auth) Token() (issuer, subject string) {
	if a == nil {
		return "", ""
	}
	issuer, _ = a.Claims["iss"].(string)
	subject, _ = a.Claims["sub"].(string)
	return issuer, subject
}

// header is the values of header k (canonical) as policies see them: a
// header RequestAuthentication writes (Auth.SetHeaders) replaces what the
// request carries, as Envoy's JWT filter writes it before the
// authorization filters run.
func (r *Request) header(k string) []string {
	if r.Auth != nil {
		if v, ok := r.Auth.SetHeaders[k]; ok {
			return []string{v}
		}
	}
	return r.Headers[k]
}

// JWTVerifier validates the JWTs a request carries against the
// RequestAuthentication rules that apply to its destination. The authn
// package implements it; policy only declares what it needs.
type JWTVerifier interface {
	// Verify returns (nil, nil) when the request carries no token that any
	// rule looks at, and a non-nil error when a token is present but
	// invalid (the decision is then Unauthenticated: HTTP 401). It does no
	// network I/O: key sets are fetched ahead of time. The Auth returned
	// may be shared with other requests carrying the same token: callers
	// read it and never modify it.
	Verify(rules []*securityv1beta1.JWTRule, req *Request) (*Auth, error)
}

// Outcome is what a decision says. The zero value is Deny: deny by default.
type Outcome uint8

const (
	Deny Outcome = iota
	Allow
	// Unauthenticated: the request carried an invalid token (HTTP 401).
	Unauthenticated
)

func (o Outcome) String() string {
	switch o {
	case Allow:
		return "allow"
	case Unauthenticated:
		return "unauthenticated"
	default:
		return "deny"
	}
}

// Decision is the result of evaluating one request. It always names what
// decided it, so a deny can be explained and logged.
type Decision struct {
	Outcome Outcome
	// Policy is "namespace/name" of the deciding policy, "" when no policy
	// decided (no ALLOW policy applies: allow; ALLOW policies apply but
	// none matched: deny).
	Policy string
	// Action of the deciding policy: "ALLOW", "DENY", "CUSTOM", or "".
	Action string
	// Rule is the index of the deciding rule in spec.rules, -1 for none.
	Rule int
	// Reason is a short human explanation ("no ALLOW rule matched",
	// "matched DENY rule 0 of prod/deny-delete", "invalid token: …").
	Reason string
	// TokenIssuer and TokenSubject name the request's token whose
	// signature verified (Evaluate sets them; Decide leaves them empty):
	// the token that authenticated the request (req.Auth's iss and sub),
	// or the token of an Unauthenticated decision refused after its
	// signature verified (revoked, another audience, bound to another
	// certificate, refused by a REQUIRED rule: the verifier's error has
	// VerifiedToken or RevokedToken). Whose credential was presented, the
	// caller perhaps relaying it, for audit and detection. Empty for no
	// token and for a token that did not verify, whose claims are the
	// sender's word. Never the token itself.
	TokenIssuer, TokenSubject string
	// Audit reports that an AUDIT policy matched: the caller writes an
	// audit record. AuditPolicy names it.
	Audit       bool
	AuditPolicy string
	// DryRun reports what the decision would have been had the policies
	// annotated istio.io/dry-run been enforced. It is never enforced: log
	// it next to the real decision.
	DryRun DryRun

	// Headers are request headers the CUSTOM providers that allowed the
	// request asked for (a Rego result's "headers"): set them on the
	// request before forwarding it. Nil when there are none.
	Headers map[string]string
	// Status is the HTTP status a denying CUSTOM provider asked for
	// (400-599); 0 means the default, 403.
	Status int
	// Custom lists every CUSTOM provider asked, in order, with its result
	// and a digest of its input, for decision logs and metrics. Nil when
	// no CUSTOM policy matched.
	Custom []CustomEval
}

// DryRun is the what-if of istio.io/dry-run policies: the whole decision
// recomputed with them enforced alongside the others.
type DryRun struct {
	// Applies reports that at least one dry-run policy applies to the
	// destination; the other fields are meaningful only then.
	Applies bool
	Outcome Outcome
	Policy  string
	Action  string
	Rule    int
	Reason  string
}

// MTLSMode is the PeerAuthentication mode in force for a workload port.
type MTLSMode uint8

const (
	// ModeUnset inherits; at the top of the hierarchy it means PERMISSIVE,
	// as in Istio.
	ModeUnset MTLSMode = iota
	ModeStrict
	ModePermissive
	ModeDisable
)

func (m MTLSMode) String() string {
	switch m {
	case ModeStrict:
		return "STRICT"
	case ModePermissive:
		return "PERMISSIVE"
	case ModeDisable:
		return "DISABLE"
	default:
		return "UNSET"
	}
}

// ErrInvalidMethod is a request method holding a lower-case letter,
// refused outright with HTTP 400 rather than decided on (CheckMethod).
var ErrInvalidMethod = errors.New("invalid request method")

// CheckMethod refuses a method holding an ASCII lower-case letter: a
// method is case-sensitive (RFC 9110 section 9.1) and policy matches it
// exactly, but Django, Rack and others upper-case the method they
// receive, so "delete" would pass a DENY on DELETE and be served as one.
// Every standard method is upper case. Errors wrap ErrInvalidMethod:
// answer 400. Decide denies such a request as a bad request.
func CheckMethod(m string) error {
	for i := 0; i < len(m); i++ {
		if 'a' <= m[i] && m[i] <= 'z' {
			return fmt.Errorf("%w: %q holds a lower-case letter (methods are upper case)", ErrInvalidMethod, m)
		}
	}
	return nil
}
