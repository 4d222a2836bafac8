package authn

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	securityv1beta1 "istio.io/api/security/v1beta1"
)

// Istio's defaults for where a token is looked for when a rule names no
// location: the Authorization header with the Bearer scheme, and the
// access_token query parameter (RFC 6750 sections 2.1 and 2.3).
const (
	defaultHeader = "Authorization"
	defaultParam  = "access_token"
)

// Limits on rule fields, checked by ValidateRule.
const (
	maxIssuerLen  = 1024
	maxURILen     = 2048 // Istio's CRD limit for jwksUri
	maxNameLen    = 256  // header, parameter and cookie names
	maxPrefixLen  = 64
	maxClaimPath  = 16 // segments in an outputClaimToHeaders claim path
	maxRuleTimout = 5 * time.Minute
)

// Limits on spaceDelimitedClaims: Istio's CRD allows 64 names; a name is
// bounded like an issuer, so a rule's memory stays bounded.
const (
	maxSpaceDelimited    = 64
	maxSpaceDelimitedLen = 1024
)

// reservedOutputHeaders may not be written by outputPayloadToHeader or
// outputClaimToHeaders: hop-by-hop and framing headers would corrupt the
// forwarded request, x-forwarded-client-cert carries the peer identity
// the sidecar vouches for, which a token must never be able to forge, and a
// method override would make the app act on a method policy did not see.
var reservedOutputHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Trailer": true, "Upgrade": true,
	"X-Forwarded-Client-Cert": true,
	// Method overrides: the proxy drops them (policy decides on the
	// method); a token must not write one either.
	"X-Http-Method-Override": true, "X-Http-Method": true, "X-Method-Override": true,
}

type locKind uint8

const (
	locHeader locKind = iota
	locParam
	locCookie
)

// locKey identifies a token location; rules sharing a location share one
// extraction.
type locKey struct {
	kind   locKind
	name   string // canonical header name, query parameter or cookie name
	prefix string
	// bearer: Istio's default Authorization location, where the scheme is
	// matched case-insensitively and followed by one or more spaces (RFC
	// 6750 section 2.1, RFC 9110 section 11.1).
	bearer bool
}

// location is a compiled token location with the request edits that drop
// a token found there (forwardOriginalToken: false). Cookies are left in
// place, as in Envoy: removing one cookie means rewriting a header the
// application also uses.
type location struct {
	locKey
	removeHeaders []string
	removeParams  []string
}

func newLocation(k locKey) *location {
	l := &location{locKey: k}
	switch k.kind {
	case locHeader:
		l.removeHeaders = []string{k.name}
	case locParam:
		l.removeParams = []string{k.name}
	}
	return l
}

// claimHeader is one outputClaimToHeaders entry.
type claimHeader struct {
	header string // canonical
	path   []string
}

// compiledRule is a JWTRule ready for the request path. It is immutable.
type compiledRule struct {
	src       *securityv1beta1.JWTRule
	issuer    string
	audiences []string
	locs      []*location
	forward   bool
	// required is presence: REQUIRED: a request without a token this
	// rule accepts is refused.
	required bool

	payloadHeader string
	claimHeaders  []claimHeader
	// spaceDelimited are the top-level claims whose string values are
	// presented as word lists (spaceDelimitedClaims), without duplicates.
	spaceDelimited []string

	inline *keySet
	remote *remoteKeys // nil for inline rules
	// shared is the issuer's shared secret: the rule then has no key set.
	shared *sharedIssuer
	// source describes where keys come from, for errors and Stats.
	source  string
	timeout time.Duration

	// err is set when the rule is invalid; every token for its issuer is
	// then refused with ErrRuleInvalid.
	err error
}

// keys returns the key set to verify with now, nil when not fetched yet.
func (c *compiledRule) keys() *keySet {
	if c.remote != nil {
		return c.remote.current()
	}
	return c.inline
}

func (c *compiledRule) hasLocation(l *location) bool {
	for _, x := range c.locs {
		if x.locKey == l.locKey {
			return true
		}
	}
	return false
}

// ValidateRule checks a JWTRule without any network access and returns an
// error wrapping ErrInvalidRule that names the field at fault. The policy
// loader calls it so that a rule the verifier cannot enforce is refused
// when it is applied, not discovered on the first request. It checks:
// issuer present; jwks and jwksUri not both set (Istio's rule); inline
// jwks a valid key set with a usable key; jwksUri an absolute https URL
// (http only to a loopback IP literal, for tests) without credentials;
// with neither, an issuer that is such a URL (keys found by OpenID
// Connect discovery); a timeout in (0, 5m]; header, parameter and cookie
// names well formed; output header names matching Istio's pattern,
// unique, and not reserved (hop-by-hop headers, Host, Content-Length,
// x-forwarded-client-cert); at most 64 spaceDelimitedClaims, each a
// non-empty name of at most 1024 bytes (duplicates are allowed and count
// once).
func ValidateRule(r *securityv1beta1.JWTRule) error {
	return compileRule(r, DefaultMaxJWKSSize, DefaultJWKSTimeout, nil).err
}

// compileRule validates r and builds its compiled form. It always returns
// a rule: an invalid one carries err and still has token locations (its
// own if they compiled, else Istio's defaults), so a token for its issuer
// is refused with ErrRuleInvalid (fail closed) instead of passing as
// "issuer unknown". The remote key source is described, not attached;
// the verifier attaches it.
func compileRule(r *securityv1beta1.JWTRule, maxJWKS int64, defTimeout time.Duration, shared *sharedIssuer) *compiledRule {
	c := &compiledRule{src: r, issuer: r.GetIssuer(), forward: r.GetForwardOriginalToken(), timeout: defTimeout, shared: shared,
		required: r.GetPresence() == securityv1beta1.JWTRule_REQUIRED}
	if r == nil {
		c.err = ruleErr("", "rule is nil")
		c.defaultLocations()
		return c
	}
	if err := c.compileLocations(r); err != nil {
		c.err = err
		c.locs = nil
		c.defaultLocations()
		return c
	}
	if err := c.compile(r, maxJWKS); err != nil {
		c.err = err
	}
	return c
}

func (c *compiledRule) compile(r *securityv1beta1.JWTRule, maxJWKS int64) error {
	iss := c.issuer
	if iss == "" && r.GetJwksUri() == "" && r.GetJwks() == "" {
		return ruleErr(iss, "issuer is required unless jwksUri or jwks is set (the keys are found by OpenID Connect discovery from the issuer)")
	}
	if len(iss) > maxIssuerLen {
		return ruleErr(iss, "issuer longer than 1024 bytes")
	}
	for i, a := range r.GetAudiences() {
		if a == "" {
			return ruleErr(iss, fmt.Sprintf("audiences[%d] is empty", i))
		}
	}
	c.audiences = r.GetAudiences()

	if d := r.GetTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return ruleErr(iss, "timeout: "+err.Error())
		}
		t := d.AsDuration()
		if t <= 0 || t > maxRuleTimout {
			return ruleErr(iss, "timeout must be more than 0 and at most 5m")
		}
		c.timeout = t
	}

	switch {
	case c.shared != nil && c.shared.err != nil:
		return ruleErr(iss, strings.TrimPrefix(c.shared.err.Error(), "authn: "))
	case c.shared != nil && (r.GetJwks() != "" || r.GetJwksUri() != ""):
		// A key set would make the issuer's keys ambiguous, and jwks
		// here is a sign of a configuration mix-up.
		return ruleErr(iss, "the issuer has a shared secret: its rule may not name jwks or jwksUri")
	case c.shared != nil:
		c.source = "shared secret (" + string(c.shared.alg) + ")"
	case r.GetJwks() != "" && r.GetJwksUri() != "":
		return ruleErr(iss, "only one of jwks and jwksUri may be set")
	case r.GetJwks() != "":
		if int64(len(r.GetJwks())) > maxJWKS {
			return ruleErr(iss, fmt.Sprintf("jwks larger than %d bytes", maxJWKS))
		}
		ks, _, err := parseJWKS([]byte(r.GetJwks()))
		if err != nil {
			return ruleErr(iss, "jwks: "+err.Error())
		}
		c.inline = ks
		c.source = "inline jwks"
	case r.GetJwksUri() != "":
		if err := checkFetchURL(r.GetJwksUri()); err != nil {
			return ruleErr(iss, "jwksUri: "+err.Error())
		}
		c.source = r.GetJwksUri()
	default:
		if err := checkFetchURL(iss); err != nil {
			return ruleErr(iss, "neither jwks nor jwksUri is set, and the issuer cannot be used for OpenID Connect discovery: "+err.Error())
		}
		c.source = "discovery"
	}
	if err := c.compileSpaceDelimited(r); err != nil {
		return err
	}
	return c.compileOutputs(r)
}

// compileSpaceDelimited checks spaceDelimitedClaims as Istio's CRD does
// (at most 64, none empty) plus a length bound, and drops duplicates (as
// Istio does when it builds Envoy's normalize_payload_in_metadata).
func (c *compiledRule) compileSpaceDelimited(r *securityv1beta1.JWTRule) error {
	names := r.GetSpaceDelimitedClaims()
	if len(names) > maxSpaceDelimited {
		return ruleErr(c.issuer, fmt.Sprintf("spaceDelimitedClaims: at most %d claims", maxSpaceDelimited))
	}
	for i, n := range names {
		if n == "" {
			return ruleErr(c.issuer, fmt.Sprintf("spaceDelimitedClaims[%d] is empty", i))
		}
		if len(n) > maxSpaceDelimitedLen {
			return ruleErr(c.issuer, fmt.Sprintf("spaceDelimitedClaims[%d] is longer than %d bytes", i, maxSpaceDelimitedLen))
		}
		if !slices.Contains(c.spaceDelimited, n) {
			c.spaceDelimited = append(c.spaceDelimited, n)
		}
	}
	return nil
}

func ruleErr(iss, msg string) error {
	if iss == "" {
		return fmt.Errorf("authn: %w: %s", ErrInvalidRule, msg)
	}
	return fmt.Errorf("authn: %w for issuer %s: %s", ErrInvalidRule, quote(iss), msg)
}

func (c *compiledRule) compileLocations(r *securityv1beta1.JWTRule) error {
	seen := map[locKey]bool{}
	add := func(k locKey) {
		if !seen[k] {
			seen[k] = true
			c.locs = append(c.locs, newLocation(k))
		}
	}
	for i, h := range r.GetFromHeaders() {
		name := h.GetName()
		if name == "" || len(name) > maxNameLen || !httpguts.ValidHeaderFieldName(name) {
			return ruleErr(c.issuer, fmt.Sprintf("fromHeaders[%d].name is not a valid header name", i))
		}
		p := h.GetPrefix()
		if len(p) > maxPrefixLen || !printableASCII(p) {
			return ruleErr(c.issuer, fmt.Sprintf("fromHeaders[%d].prefix must be at most 64 printable ASCII characters", i))
		}
		add(locKey{kind: locHeader, name: http.CanonicalHeaderKey(name), prefix: p})
	}
	for i, p := range r.GetFromParams() {
		if p == "" || len(p) > maxNameLen || strings.ContainsAny(p, "&=#?;+% ") || !printableASCII(p) {
			return ruleErr(c.issuer, fmt.Sprintf("fromParams[%d] is not a valid query parameter name", i))
		}
		add(locKey{kind: locParam, name: p})
	}
	for i, ck := range r.GetFromCookies() {
		if ck == "" || len(ck) > maxNameLen || !httpguts.ValidHeaderFieldName(ck) {
			return ruleErr(c.issuer, fmt.Sprintf("fromCookies[%d] is not a valid cookie name", i))
		}
		add(locKey{kind: locCookie, name: ck})
	}
	c.defaultLocations()
	return nil
}

// defaultLocations gives a rule without any location Istio's defaults.
func (c *compiledRule) defaultLocations() {
	if len(c.locs) == 0 {
		c.locs = []*location{
			newLocation(locKey{kind: locHeader, name: defaultHeader, bearer: true}),
			newLocation(locKey{kind: locParam, name: defaultParam}),
		}
	}
}

func (c *compiledRule) compileOutputs(r *securityv1beta1.JWTRule) error {
	if h := r.GetOutputPayloadToHeader(); h != "" {
		if err := checkOutputHeader(h); err != nil {
			return ruleErr(c.issuer, "outputPayloadToHeader: "+err.Error())
		}
		c.payloadHeader = http.CanonicalHeaderKey(h)
	}
	// Names are compared as an app that folds "_" into "-" reads them.
	seen := map[string]bool{foldedHeader(c.payloadHeader): c.payloadHeader != ""}
	for i, o := range r.GetOutputClaimToHeaders() {
		if err := checkOutputHeader(o.GetHeader()); err != nil {
			return ruleErr(c.issuer, fmt.Sprintf("outputClaimToHeaders[%d].header: %v", i, err))
		}
		h := http.CanonicalHeaderKey(o.GetHeader())
		if seen[foldedHeader(h)] {
			return ruleErr(c.issuer, fmt.Sprintf("outputClaimToHeaders[%d].header %s is used twice", i, quote(o.GetHeader())))
		}
		seen[foldedHeader(h)] = true
		claim := o.GetClaim()
		if claim == "" {
			return ruleErr(c.issuer, fmt.Sprintf("outputClaimToHeaders[%d].claim is required", i))
		}
		path := strings.Split(claim, ".")
		if len(path) > maxClaimPath || len(claim) > maxNameLen {
			return ruleErr(c.issuer, fmt.Sprintf("outputClaimToHeaders[%d].claim is too long", i))
		}
		for _, seg := range path {
			if seg == "" {
				return ruleErr(c.issuer, fmt.Sprintf("outputClaimToHeaders[%d].claim %s has an empty path segment", i, quote(claim)))
			}
		}
		c.claimHeaders = append(c.claimHeaders, claimHeader{header: h, path: path})
	}
	return nil
}

// foldedHeader is h as WSGI, CGI and many frameworks read it: "_" and "-"
// the same, case-insensitive (canonical form).
func foldedHeader(h string) string { return http.CanonicalHeaderKey(strings.ReplaceAll(h, "_", "-")) }

// checkOutputHeader applies Istio's pattern ^[-_A-Za-z0-9]+$ and refuses
// reserved names, under any spelling an app could fold into one
// (x_forwarded_client_cert), and the x-moatless-* namespace the proxy
// keeps for itself.
func checkOutputHeader(h string) error {
	if h == "" || len(h) > maxNameLen {
		return errors.New("header name is empty or too long")
	}
	for i := 0; i < len(h); i++ {
		b := h[i]
		if !(b == '-' || b == '_' || b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9') {
			return fmt.Errorf("header name %s must match ^[-_A-Za-z0-9]+$", quote(h))
		}
	}
	if f := foldedHeader(h); reservedOutputHeaders[f] || strings.HasPrefix(f, "X-Moatless-") {
		return fmt.Errorf("header %s is reserved", quote(h))
	}
	return nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// checkFetchURL accepts the URLs keys may be fetched from: absolute https
// with a host, or http to a loopback IP literal (127.0.0.0/8, ::1) so tests
// and a same-host issuer work. Plain http anywhere else would let anyone on
// the path substitute the keys. Userinfo is refused: credentials do not
// belong in policy, which is stored, logged and shown.
func checkFetchURL(s string) error {
	if len(s) > maxURILen {
		return errors.New("longer than 2048 bytes")
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a valid URL")
	}
	if u.User != nil {
		return errors.New("credentials in the URL are not allowed")
	}
	if u.Host == "" || u.Opaque != "" {
		return errors.New("not an absolute URL with a host")
	}
	if u.Fragment != "" {
		return errors.New("a fragment is not allowed")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
			return nil
		}
		return errors.New("http is accepted only for a loopback IP address (127.0.0.1, ::1); use https")
	default:
		return errors.New("scheme must be https")
	}
}

// redactURL renders a fetch URL for logs and Stats without its query
// string, which some providers use for API keys.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<invalid URL>"
	}
	out := u.Scheme + "://" + u.Host + u.EscapedPath()
	if u.RawQuery != "" {
		out += "?…"
	}
	return out
}

// TokenHeaders returns the canonical names of the headers the rules read
// tokens from (fromHeaders, or Authorization for a rule that names no
// location), each once. The proxy refuses look-alike spellings of them
// (x_auth_token for x-auth-token) that an application could read as the
// header the proxy verified.
func TokenHeaders(rules []*securityv1beta1.JWTRule) []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range rules {
		hs := r.GetFromHeaders()
		if len(hs) == 0 && len(r.GetFromParams()) == 0 && len(r.GetFromCookies()) == 0 {
			hs = []*securityv1beta1.JWTHeader{{Name: defaultHeader}}
		}
		for _, h := range hs {
			n := h.GetName()
			if n == "" || len(n) > maxNameLen || !httpguts.ValidHeaderFieldName(n) {
				continue
			}
			if n = http.CanonicalHeaderKey(n); !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// OutputHeaders returns the canonical names of every header the rules
// write from a verified token (outputPayloadToHeader and
// outputClaimToHeaders). The application trusts these headers because the
// proxy sets them; a copy sent by the client must therefore be removed
// from every request, including requests without a token (when Verify
// returns a nil Auth there is nothing else to carry that edit). Names are
// taken from every rule, valid or not, as long as they are well-formed
// header names.
func OutputHeaders(rules []*securityv1beta1.JWTRule) []string {
	var out []string
	seen := map[string]bool{}
	add := func(h string) {
		if h == "" || len(h) > maxNameLen || !httpguts.ValidHeaderFieldName(h) {
			return
		}
		h = http.CanonicalHeaderKey(h)
		if !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	for _, r := range rules {
		add(r.GetOutputPayloadToHeader())
		for _, o := range r.GetOutputClaimToHeaders() {
			add(o.GetHeader())
		}
	}
	return out
}

// acceptsIssuer reports whether the rule verifies tokens with this iss:
// its issuer's only, or, for a rule without an issuer (allowed with
// jwksUri or jwks, as in Istio and Envoy's jwt_authn), a token of any iss
// that its keys sign.
func (c *compiledRule) acceptsIssuer(iss string) bool {
	return c.issuer == "" || c.issuer == iss
}

// describeIssuer names the rule's issuer for an error: quoted, or "any
// issuer" for a rule without one.
func (c *compiledRule) describeIssuer() string {
	if c.issuer == "" {
		return "any issuer"
	}
	return quote(c.issuer)
}
