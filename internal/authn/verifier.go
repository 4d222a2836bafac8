// Package authn validates the JWTs a request carries against Istio
// RequestAuthentication rules (security.istio.io JWTRule): it implements
// policy.JWTVerifier for the sidecar, the gateway and the offline checker.
//
// A Verifier holds the key sets (inline jwks, fetched jwksUri, or keys
// found through the issuer's OpenID Connect discovery), a bounded cache
// of verified tokens and the set of revoked token IDs. Verify never does
// network I/O: key sets are fetched by Prepare and refreshed by the
// background refresher (Start), so a decision stays a pure function of
// prepared inputs.
//
// Security posture (RFC 8725, the jwt_tool attack catalogue): only the
// asymmetric algorithms in Algorithms are accepted, each only with a key
// of the matching type and curve; keys come only from the configured key
// set (jku, x5u, jwk and x5c headers are refused); JWE, nested tokens,
// crit, duplicate JSON members and oversized tokens are refused; exp is
// required; iss must equal the rule's issuer exactly. Errors and logs
// never contain a token or key material.
package authn

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/policy"
)

// Defaults for Options fields left zero.
const (
	// DefaultJWKSRefresh is how often a fetched key set is refreshed,
	// Istio's default (PILOT_JWT_PUB_KEY_REFRESH_INTERVAL).
	DefaultJWKSRefresh = 20 * time.Minute
	// DefaultJWKSTimeout bounds one fetch, Istio's JWTRule.timeout default.
	DefaultJWKSTimeout = 5 * time.Second
	// DefaultMaxJWKSSize bounds a fetched key set or discovery document.
	DefaultMaxJWKSSize = 256 << 10
	// DefaultLeeway is the clock skew allowed on exp, nbf and iat, as
	// Envoy's clock_skew_seconds default.
	DefaultLeeway = 60 * time.Second
	// DefaultMinRefreshInterval rate-limits refreshes requested by tokens
	// whose kid is not in the key set.
	DefaultMinRefreshInterval = 30 * time.Second
)

// maxAdhocRules bounds rules compiled on the fly because Verify saw them
// before Prepare did; the table is cleared when full and by Prepare.
const maxAdhocRules = 1024

// Options configure a Verifier. The zero value works: every field's
// default is stated with it.
type Options struct {
	// HTTPClient fetches key sets and discovery documents. Default: a
	// client with its own transport (proxy settings from the environment).
	// Whatever the client, redirects are limited to 3, each to an https
	// URL (or http to a loopback IP), unless the client sets its own
	// CheckRedirect. TLS trust is the client's: give it the roots your
	// issuers' certificates chain to.
	HTTPClient *http.Client
	// Now returns the current time. Default time.Now. Tests inject it.
	Now func() time.Time
	// Logger receives fetch failures, skipped keys and key rotations.
	// Default slog.Default(). Tokens and key material are never logged.
	Logger *slog.Logger
	// JWKSRefresh is how often fetched key sets are re-fetched. Default
	// 20 minutes (Istio's default).
	JWKSRefresh time.Duration
	// JWKSTimeout bounds each fetch when the rule sets no timeout.
	// Default 5 s.
	JWKSTimeout time.Duration
	// MaxJWKSSize bounds a fetched document and an inline jwks, in bytes.
	// Default 256 KiB.
	MaxJWKSSize int64
	// MaxTokenSize bounds a token, in bytes. Default 16 KiB.
	MaxTokenSize int
	// Leeway is the clock skew allowed on exp, nbf and iat. Default 60 s;
	// a negative value means none.
	Leeway time.Duration
	// MinRefreshInterval is the least time between two refreshes of one
	// key set triggered by unknown kids. Default 30 s.
	MinRefreshInterval time.Duration
	// CacheSize is how many verified tokens are remembered (keyed by the
	// token's SHA-256, each until the token's exp). Default 10,000; a
	// negative value disables the cache.
	CacheSize int
	// Revoked, if set, is asked about every token's jti on every use, in
	// addition to the set given to SetRevokedTokens. It must be fast and
	// safe for concurrent use; it is called on the request path.
	Revoked func(jti string) bool
	// SharedSecrets are the issuers whose tokens are HMAC-signed (HS256 and
	// kin) with a shared secret; see SharedSecret. Default none: every
	// HMAC token is refused.
	SharedSecrets []SharedSecret
	// OnJWKSFetch, if set, is called after every fetch attempt with the
	// source (URL without query) and the error, nil on success. It runs
	// on the fetching goroutine and must not block. For metrics and tests.
	OnJWKSFetch func(source string, err error)
}

// Verifier validates request JWTs. Create it with NewVerifier, call
// Prepare with the rules in force (and again whenever they change), Start
// the refresher, and Close it when done. Verify, Prepare, Refresh,
// SetRevokedTokens and Stats are safe for concurrent use.
type Verifier struct {
	opts       Options
	now        func() time.Time
	log        *slog.Logger
	client     *http.Client
	refresh    time.Duration
	timeout    time.Duration
	maxJWKS    int64
	maxToken   int
	leeway     time.Duration
	minRefresh time.Duration

	// shared are the SharedSecrets by issuer, nil without any.
	shared map[string]*sharedIssuer

	rules     atomic.Pointer[ruleTable]
	prepareMu sync.Mutex
	adhocMu   sync.Mutex
	adhoc     map[*securityv1beta1.JWTRule]*compiledRule

	remotesMu sync.Mutex
	remotes   map[string]*remoteKeys

	cache   *tokenCache
	revoked atomic.Pointer[revocationSet]

	kick      chan struct{}
	startOnce sync.Once
	closeOnce sync.Once
	closed    atomic.Bool
	cancel    context.CancelFunc
	done      chan struct{}

	accepted, hits, misses atomic.Uint64
	rejected               [len(reasonLabels) + 1]atomic.Uint64 // by reason; last: other
}

// ruleTable maps each prepared rule to its compiled form. Immutable;
// replaced whole by Prepare.
type ruleTable struct {
	m map[*securityv1beta1.JWTRule]*compiledRule
}

// NewVerifier returns a Verifier with opts applied. It starts nothing and
// fetches nothing: see Prepare and Start.
func NewVerifier(opts Options) *Verifier {
	v := &Verifier{
		opts:       opts,
		now:        opts.Now,
		log:        opts.Logger,
		refresh:    opts.JWKSRefresh,
		timeout:    opts.JWKSTimeout,
		maxJWKS:    opts.MaxJWKSSize,
		maxToken:   opts.MaxTokenSize,
		leeway:     opts.Leeway,
		minRefresh: opts.MinRefreshInterval,
		adhoc:      map[*securityv1beta1.JWTRule]*compiledRule{},
		remotes:    map[string]*remoteKeys{},
		shared:     newSharedIssuers(opts.SharedSecrets),
		kick:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = slog.Default()
	}
	if v.refresh <= 0 {
		v.refresh = DefaultJWKSRefresh
	}
	if v.timeout <= 0 {
		v.timeout = DefaultJWKSTimeout
	}
	if v.maxJWKS <= 0 {
		v.maxJWKS = DefaultMaxJWKSSize
	}
	if v.maxToken <= 0 {
		v.maxToken = DefaultMaxTokenSize
	}
	switch {
	case v.leeway == 0:
		v.leeway = DefaultLeeway
	case v.leeway < 0:
		v.leeway = 0
	}
	if v.minRefresh <= 0 {
		v.minRefresh = DefaultMinRefreshInterval
	}
	switch {
	case opts.CacheSize == 0:
		v.cache = newTokenCache(DefaultCacheSize)
	case opts.CacheSize > 0:
		v.cache = newTokenCache(opts.CacheSize)
	}
	if opts.HTTPClient != nil {
		c := *opts.HTTPClient
		if c.CheckRedirect == nil {
			c.CheckRedirect = checkRedirect
		}
		v.client = &c
	} else {
		v.client = &http.Client{
			Transport:     http.DefaultTransport.(*http.Transport).Clone(),
			CheckRedirect: checkRedirect,
		}
	}
	v.rules.Store(&ruleTable{m: map[*securityv1beta1.JWTRule]*compiledRule{}})
	v.revoked.Store(&revocationSet{})
	return v
}

// Start runs the background refresher until ctx ends or Close is called:
// it fetches key sets not fetched yet, refreshes each every JWKSRefresh
// (retrying failures with backoff from 1 s), and serves the refreshes
// Verify requests. Calling Start again has no effect. Without Start, keys
// are fetched only by Prepare and Refresh.
func (v *Verifier) Start(ctx context.Context) {
	v.startOnce.Do(func() {
		if v.closed.Load() {
			close(v.done)
			return
		}
		ctx, cancel := context.WithCancel(ctx)
		v.cancel = cancel
		go v.run(ctx)
	})
}

// Close stops the refresher and waits for running fetches to end. It is
// idempotent. After Close, Verify still works with the keys it has;
// Prepare and Refresh return ErrClosed.
func (v *Verifier) Close() error {
	v.closeOnce.Do(func() {
		v.closed.Store(true)
		started := true
		v.startOnce.Do(func() { started = false })
		if started && v.cancel != nil {
			v.cancel()
			<-v.done
		}
	})
	return nil
}

// Prepare installs rules as the set in force and fetches, before it
// returns, every remote key set among them that has none yet (all at
// once, each bounded by its timeout and by ctx). Call it with every rule
// Verify will be given (for a sidecar: every JWTRule of every
// RequestAuthentication that applies), initially and after each policy
// change; rules must not be modified afterwards. Sources no longer
// referenced are dropped. Rules are matched by pointer: an unchanged rule
// keeps its compiled form and its cached tokens.
//
// The error joins what went wrong: invalid rules (ErrInvalidRule; tokens
// for their issuers are refused) and failed fetches (ErrJWKSFetch; the
// refresher retries them). Everything valid is installed either way.
func (v *Verifier) Prepare(ctx context.Context, rules []*securityv1beta1.JWTRule) error {
	if v.closed.Load() {
		return ErrClosed
	}
	v.prepareMu.Lock()
	defer v.prepareMu.Unlock()

	old := v.rules.Load()
	table := &ruleTable{m: make(map[*securityv1beta1.JWTRule]*compiledRule, len(rules))}
	var errs []error
	for _, r := range rules {
		if _, dup := table.m[r]; dup {
			continue
		}
		c := old.m[r]
		if c == nil {
			c = v.compile(r)
		}
		if c.err != nil {
			errs = append(errs, c.err)
		}
		table.m[r] = c
	}

	// Keep exactly the remote sources the new table uses.
	used := map[*remoteKeys]bool{}
	for _, c := range table.m {
		if c.remote != nil {
			used[c.remote] = true
		}
	}
	v.remotesMu.Lock()
	for id, r := range v.remotes {
		if !used[r] {
			delete(v.remotes, id)
		}
	}
	v.remotesMu.Unlock()

	v.rules.Store(table)
	v.adhocMu.Lock()
	clear(v.adhoc)
	v.adhocMu.Unlock()

	var missing []*remoteKeys
	for r := range used {
		if r.current() == nil {
			missing = append(missing, r)
		}
	}
	errs = append(errs, fetchAll(ctx, missing)...)
	v.wake()
	return errors.Join(errs...)
}

// Refresh fetches every key set in use now, regardless of schedule, and
// returns the joined fetch errors. Failed fetches keep the old keys.
func (v *Verifier) Refresh(ctx context.Context) error {
	if v.closed.Load() {
		return ErrClosed
	}
	return errors.Join(fetchAll(ctx, v.remoteList())...)
}

func fetchAll(ctx context.Context, rs []*remoteKeys) []error {
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() { errs[i] = r.fetch(ctx) })
	}
	wg.Wait()
	return errs
}

// compile builds a rule and attaches its shared remote source.
func (v *Verifier) compile(r *securityv1beta1.JWTRule) *compiledRule {
	c := compileRule(r, v.maxJWKS, v.timeout, v.shared[r.GetIssuer()])
	if c.err != nil || c.inline != nil || c.shared != nil {
		return c
	}
	id, jwksURI, issuer := r.GetJwksUri(), r.GetJwksUri(), ""
	if id == "" {
		id, issuer = "discovery:"+r.GetIssuer(), r.GetIssuer()
	}
	// Register a new source at once, so rules compiled together share it
	// (Prepare drops sources no rule uses any more).
	v.remotesMu.Lock()
	rk := v.remotes[id]
	if rk == nil {
		rk = &remoteKeys{v: v, id: id, jwksURI: jwksURI, issuer: issuer, timeout: c.timeout}
		v.remotes[id] = rk
	}
	v.remotesMu.Unlock()
	c.remote = rk
	return c
}

// lookup returns the compiled form of r: from the prepared table, or
// compiled now (no I/O) for a rule Prepare has not seen, whose remote
// keys the refresher is then asked to fetch.
func (v *Verifier) lookup(r *securityv1beta1.JWTRule) *compiledRule {
	if c := v.rules.Load().m[r]; c != nil {
		return c
	}
	v.adhocMu.Lock()
	defer v.adhocMu.Unlock()
	if c := v.adhoc[r]; c != nil {
		return c
	}
	c := v.compile(r)
	if len(v.adhoc) >= maxAdhocRules {
		clear(v.adhoc)
	}
	v.adhoc[r] = c
	if c.remote != nil && c.remote.current() == nil {
		v.wake()
	}
	return c
}

// Verify implements policy.JWTVerifier. It looks for tokens where the
// rules say (Istio's defaults when a rule names no location) and returns:
//   - (nil, nil) when the request carries no token at any of them: no
//     token is not an error, the policy decides;
//   - an error wrapping ErrInvalidToken (HTTP 401) when a token is present
//     but refused, or when the request carries several distinct tokens,
//     or when the token is bound to a client certificate (cnf x5t#S256,
//     RFC 8705 §3) other than req.Source.CertSHA256 (ErrCertBinding);
//   - the verified identity otherwise, with the header edits the matching
//     rule asks for (payload and claim headers; removal of the token
//     header or query parameter unless forwardOriginalToken).
//
// The rule used is the one whose issuer equals the token's iss among the
// rules that look where the token was found; a rule without issuer is
// used only for an iss that no rule there names; none is
// ErrUnknownIssuer.
// Verify does no network I/O. A token already verified (cache hit) costs a
// hash and a map lookup; its expiry, its rule, the rule's current key set
// and the revocation set are checked again on every use, and a hit
// returns exactly what the full check would (same rule, same claims).
//
// Auth.Claims holds the token's claims decoded from JSON, except that each
// claim the rule names in spaceDelimitedClaims whose value is a string
// with at least one word is a []any of its words (strings.Fields: the
// split the policy engine applies to "scope" and "permission"), so
// request.auth.claims[roles] can match one word of "roles": "admin
// editor", as in Istio. Only top-level claims are split, as in Envoy.
//
// The returned Auth's slices and maps, Claims included, are shared by
// every request presenting the same token and are never modified after
// verification: treat them as read-only.
func (v *Verifier) Verify(rules []*securityv1beta1.JWTRule, req *policy.Request) (*policy.Auth, error) {
	return v.verify(rules, req, nil)
}

// verify is Verify, looking first in m (nil for none) and remembering
// there the entry of a token it accepts.
func (v *Verifier) verify(rules []*securityv1beta1.JWTRule, req *policy.Request, m *Memo) (*policy.Auth, error) {
	if len(rules) == 0 || req == nil {
		return nil, nil
	}
	var crBuf [8]*compiledRule
	crs := crBuf[:0]
	var locBuf [8]*location
	locs := locBuf[:0]
	for _, r := range rules {
		c := v.lookup(r)
		crs = append(crs, c)
		for _, l := range c.locs {
			if !hasLocKey(locs, l) {
				locs = append(locs, l)
			}
		}
	}
	var fBuf [maxFound]found
	fs, err := extract(locs, req, fBuf[:0])
	if err != nil {
		return nil, v.reject(err)
	}
	if len(fs) == 0 {
		for _, c := range crs {
			if c.required {
				return nil, v.reject(tokenErr(ErrTokenRequired, "no token; the rule for "+c.describeIssuer()+" requires one"))
			}
		}
		return nil, nil
	}
	tok := fs[0].token
	for _, f := range fs[1:] {
		if f.token != tok {
			return nil, v.reject(tokenErr(ErrMultipleTokens, "different tokens at "+fs[0].loc.describe()+" and "+f.loc.describe()))
		}
	}
	var candBuf [8]*compiledRule
	cands := candBuf[:0]
	for _, c := range crs {
		for _, f := range fs {
			if c.hasLocation(f.loc) {
				cands = append(cands, c)
				break
			}
		}
	}

	now := v.now()
	if m != nil && v.cache != nil {
		if e := m.lookup(tok, now.UnixNano()); e != nil && e.answersFor(cands, crs) && e.keys == e.rule.keys() {
			return v.hit(e, tok, fs, crs, cands, req, now, m)
		}
	}
	var key tokenKey
	if v.cache != nil {
		key = keyOf(tok)
		if e := v.cache.get(&key, now.UnixNano()); e != nil && e.answersFor(cands, crs) && e.keys == e.rule.keys() {
			return v.hit(e, tok, fs, crs, cands, req, now, m)
		}
		v.misses.Add(1)
	}
	e, err := v.verifySlow(tok, cands, crs, now)
	if err != nil {
		return nil, v.reject(err)
	}
	if v.cache != nil && e.expires > now.UnixNano() {
		e.key = key
		v.cache.put(e, now.UnixNano())
	}
	return v.accept(e, tok, fs, crs, cands, req, now, m)
}

// hit is Verify's answer for a token found verified (in the memo or the
// cache) whose entry e answers for the candidate rules and key sets: the
// checks that are per request still run.
func (v *Verifier) hit(e *cacheEntry, tok string, fs []found, crs, cands []*compiledRule, req *policy.Request, now time.Time, m *Memo) (*policy.Auth, error) {
	if v.isRevoked(e.jti) {
		return nil, v.reject(&tokenError{kind: ErrRevoked, issuer: e.iss, subject: e.sub})
	}
	v.hits.Add(1)
	return v.accept(e, tok, fs, crs, cands, req, now, m)
}

// accept runs the per-request checks of a verified token (certificate
// binding, REQUIRED rules) and returns its Auth, remembering e in m (when
// not nil) once they pass.
func (v *Verifier) accept(e *cacheEntry, tok string, fs []found, crs, cands []*compiledRule, req *policy.Request, now time.Time, m *Memo) (*policy.Auth, error) {
	// e's signature verified: a refusal here names its token.
	if err := e.checkBinding(req); err != nil {
		return nil, v.reject(verifiedRefusal(err, e.iss, e.sub))
	}
	if err := v.checkRequired(tok, e, crs, cands, now); err != nil {
		return nil, v.reject(verifiedRefusal(err, e.iss, e.sub))
	}
	// Only an entry the cache can hold (the cache on, the token
	// unexpired) is remembered: the memo's hit is the cache's hit, not a
	// way around its checks.
	if m != nil && v.cache != nil && e.expires > now.UnixNano() {
		m.remember(tok, e)
	}
	v.accepted.Add(1)
	return e.auth(fs), nil
}

// checkRequired enforces presence: REQUIRED: every such rule among crs
// must accept tok too, not only e.rule, the rule that did. A required
// rule that does not look where the token is (not in cands), or whose
// issuer is not the token's, makes the token missing for it. A request
// carries one token (ErrMultipleTokens), so two required rules of two
// issuers refuse every request, failing closed where Istio would need
// two tokens. The common case, no required rule, costs a loop.
func (v *Verifier) checkRequired(tok string, e *cacheEntry, crs, cands []*compiledRule, now time.Time) error {
	for _, r := range crs {
		if !r.required || r == e.rule {
			continue
		}
		if !slices.Contains(cands, r) || !r.acceptsIssuer(e.iss) {
			return tokenErr(ErrTokenRequired, "the rule for "+r.describeIssuer()+" requires its own token")
		}
		if _, err := v.verifySlow(tok, []*compiledRule{r}, crs, now); err != nil {
			return err
		}
	}
	return nil
}

// checkBinding enforces RFC 8705 §3: a token whose cnf carries x5t#S256
// is a proof-of-possession token, good only on a connection whose client
// certificate has that thumbprint. Without the check a stolen bound token
// would work from any caller, as a bearer token. It runs on every
// request, cache hits included, because the cache is keyed by token and
// the same token may arrive over another connection. Unbound tokens pass.
func (e *cacheEntry) checkBinding(req *policy.Request) error {
	switch {
	case e.x5t == "" || e.x5t == req.Source.CertSHA256:
		return nil
	case req.Source.CertSHA256 == "":
		return tokenErr(ErrCertBinding, "the connection presented no client certificate")
	default:
		return tokenErr(ErrCertBinding, "the connection's client certificate is not the one in cnf x5t#S256")
	}
}

func hasLocKey(locs []*location, l *location) bool {
	for _, x := range locs {
		if x.locKey == l.locKey {
			return true
		}
	}
	return false
}

// answersFor reports whether the entry is what the full check would
// return for a request with these candidate rules: its rule must be among
// them, and every candidate before it with the same issuer must be one
// that refused this token with the key set that rule holds now. Else the
// full check could pick an earlier rule, with other claims
// (spaceDelimitedClaims), headers or token forwarding.
func (e *cacheEntry) answersFor(cands, all []*compiledRule) bool {
	// A rule without issuer never answers for an issuer whose own rule
	// applies (verifySlow skips it); the common case, an entry of the
	// issuer's own rule listed first, never looks.
	if e.rule.issuer == "" && hasOwnRule(all, e.iss) {
		return false
	}
	for _, c := range cands {
		if c == e.rule {
			return true
		}
		if c.acceptsIssuer(e.iss) && !e.refusedBy(c) && !(c.issuer == "" && hasOwnRule(all, e.iss)) {
			return false
		}
	}
	return false
}

func (e *cacheEntry) refusedBy(c *compiledRule) bool {
	for _, r := range e.refused {
		if r.rule == c {
			return r.keys == c.keys()
		}
	}
	return false
}

// hasOwnRule reports whether a rule among all (every rule that applies
// to the request, wherever it looks for tokens) names iss as its issuer.
// A token of such an issuer is verified by its own rules only: a rule
// without issuer accepts whatever iss its keys sign, and must not let
// the holder of those keys sign for an issuer whose rule applies here
// (the principal is <iss>/<sub>).
func hasOwnRule(all []*compiledRule, iss string) bool {
	for _, c := range all {
		if c.issuer != "" && c.issuer == iss {
			return true
		}
	}
	return false
}

// verifySlow parses and fully verifies tok against the candidate rules
// for its issuer, in order; the first that accepts wins (and remembers
// the rules that refused before it, for answersFor), otherwise the first
// rule's error is returned.
func (v *Verifier) verifySlow(tok string, cands, all []*compiledRule, now time.Time) (*cacheEntry, error) {
	pt, err := parseToken(tok, v.maxToken, v.shared != nil)
	if err != nil {
		return nil, err
	}
	var firstErr error
	var refused []refusal
	own := hasOwnRule(all, pt.iss)
	for _, c := range cands {
		if !c.acceptsIssuer(pt.iss) || (own && c.issuer == "") {
			continue
		}
		// The key set is read once, before the check: a refusal is then
		// recorded against the keys it was made with, or older ones
		// (which only costs a later miss), never newer ones.
		ks := c.keys()
		e, err := v.verifyWith(pt, c, ks, now)
		if err == nil {
			e.refused = refused
			return e, nil
		}
		refused = append(refused, refusal{rule: c, keys: ks})
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		return nil, tokenErr(ErrUnknownIssuer, "iss "+quote(pt.iss))
	}
	return nil, firstErr
}

// verifyWith checks pt against one rule, whose key set is ks (c.keys()
// read by the caller). Cheap checks (times, audience) come before the
// signature so that stale tokens cost no public-key operation and
// neither stale nor misdirected ones can trigger key refreshes; a
// misdirected token's signature is checked (once, no refresh) only to
// name its holder in the refusal.
func (v *Verifier) verifyWith(pt *parsedToken, c *compiledRule, ks *keySet, now time.Time) (*cacheEntry, error) {
	if c.err != nil {
		return nil, tokenErr(ErrRuleInvalid, strings.TrimPrefix(c.err.Error(), "authn: "))
	}
	if err := pt.checkTimes(now, v.leeway); err != nil {
		return nil, err
	}
	if err := pt.checkAudience(c.audiences); err != nil {
		// A token of the issuer's, signed for another audience, is
		// refused before its signature is checked; it is checked then
		// only to say whose token it was (VerifiedToken). That costs
		// no more than any token of the right audience with a bad
		// signature, and never asks for a key refresh.
		if v.signatureVerifies(pt, c, ks) {
			return nil, verifiedRefusal(err, pt.iss, pt.sub)
		}
		return nil, err
	}
	// The algorithm is pinned by the issuer: its shared secret verifies
	// only its own algorithm, and no other issuer's token may be HMAC.
	switch {
	case c.shared != nil && pt.alg != c.shared.alg:
		return nil, tokenErr(ErrAlgorithm, "alg "+quote(string(pt.alg))+": the issuer signs with "+string(c.shared.alg))
	case c.shared != nil:
		if err := pt.verifyHMAC(c.shared); err != nil {
			return nil, err
		}
		return v.entry(pt, c, ks)
	case isHMAC(pt.alg):
		return nil, tokenErr(ErrAlgorithm, "alg "+quote(string(pt.alg))+": HMAC is accepted only from an issuer with a shared secret")
	}
	if ks == nil {
		c.remote.requestRefresh(false)
		return nil, tokenErr(ErrKeysUnavailable, "from "+c.remote.describe())
	}
	keys, err := ks.candidates(pt.alg, pt.kid, pt.hasKID)
	if err != nil {
		if errors.Is(err, ErrUnknownKey) && c.remote != nil {
			c.remote.requestRefresh(true)
		}
		return nil, err
	}
	if err := pt.verifySignature(keys); err != nil {
		return nil, err
	}
	return v.entry(pt, c, ks)
}

// signatureVerifies reports whether pt's signature verifies with rule c's
// keys ks (or shared secret), without asking for a refresh of any key.
func (v *Verifier) signatureVerifies(pt *parsedToken, c *compiledRule, ks *keySet) bool {
	switch {
	case c.shared != nil:
		return pt.alg == c.shared.alg && pt.verifyHMAC(c.shared) == nil
	case isHMAC(pt.alg) || ks == nil:
		return false
	}
	keys, err := ks.candidates(pt.alg, pt.kid, pt.hasKID)
	return err == nil && pt.verifySignature(keys) == nil
}

// entry is the cache entry of a token whose signature verified.
func (v *Verifier) entry(pt *parsedToken, c *compiledRule, ks *keySet) (*cacheEntry, error) {
	if v.isRevoked(pt.jti) {
		return nil, &tokenError{kind: ErrRevoked, issuer: pt.iss, subject: pt.sub}
	}
	e := &cacheEntry{
		rule:      c,
		keys:      ks,
		iss:       pt.iss,
		sub:       pt.sub,
		expires:   pt.expiry().UnixNano(),
		jti:       pt.jti,
		x5t:       pt.x5t,
		audiences: pt.aud,
		presenter: pt.azp,
		claims:    splitClaims(pt.claims, c.spaceDelimited),
	}
	if pt.sub != "" {
		e.principal = pt.iss + "/" + pt.sub
	}
	e.setHeaders = outputHeaders(c, pt)
	return e, nil
}

// outputHeaders computes outputPayloadToHeader (the payload segment as
// sent: base64url without padding, as Envoy forwards it) and
// outputClaimToHeaders (string, number and boolean claims, nested by dots;
// a claim that is absent, of another type, or not a valid header value
// yields no header). Claims are read as the token has them: a
// space-delimited claim is copied as its original string, as Envoy's
// claim_to_headers does.
func outputHeaders(c *compiledRule, pt *parsedToken) map[string]string {
	if c.payloadHeader == "" && len(c.claimHeaders) == 0 {
		return nil
	}
	out := make(map[string]string, 1+len(c.claimHeaders))
	if c.payloadHeader != "" {
		out[c.payloadHeader] = pt.payloadB64
	}
	for _, ch := range c.claimHeaders {
		val, ok := claimString(pt.claims, ch.path)
		if ok && len(val) <= maxHeaderValue && httpguts.ValidHeaderFieldValue(val) {
			out[ch.header] = val
		}
	}
	return out
}

// maxHeaderValue bounds a claim copied into a header.
const maxHeaderValue = 8 << 10

func claimString(claims map[string]any, path []string) (string, bool) {
	var cur any = claims
	for _, seg := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false
		}
		if cur, ok = m[seg]; !ok {
			return "", false
		}
	}
	switch x := cur.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	}
	return "", false
}

// auth builds the per-request Auth: identity from the entry and, unless
// the rule forwards the original token, its removal from every location
// this request carried it in (also those another rule looks at: the
// token is the same bearer credential wherever it sits).
//
// The Auth of a request with the token in one location is the entry's
// shared one (the caller must not modify it): a cache hit allocates
// nothing for it.
func (e *cacheEntry) auth(fs []found) *policy.Auth {
	var loc *location
	if !e.rule.forward {
		loc = fs[0].loc
	}
	one := e.rule.forward || len(fs) == 1
	if one {
		if sa := e.shared.Load(); sa != nil && sa.loc == loc {
			return sa.auth
		}
	}
	a := e.newAuth(fs)
	if one {
		e.shared.Store(&sharedAuth{loc: loc, auth: a})
	}
	return a
}

func (e *cacheEntry) newAuth(fs []found) *policy.Auth {
	a := &policy.Auth{
		Principal:  e.principal,
		Audiences:  e.audiences,
		Presenter:  e.presenter,
		Claims:     e.claims,
		SetHeaders: e.setHeaders,
	}
	if e.rule.forward {
		return a
	}
	for _, f := range fs {
		if a.RemoveHeaders == nil && a.RemoveQueryParams == nil {
			// The common case, one location: share its precomputed slices.
			a.RemoveHeaders, a.RemoveQueryParams = f.loc.removeHeaders, f.loc.removeParams
			continue
		}
		a.RemoveHeaders = appendNew(a.RemoveHeaders, f.loc.removeHeaders)
		a.RemoveQueryParams = appendNew(a.RemoveQueryParams, f.loc.removeParams)
	}
	return a
}

// appendNew returns dst plus the elements of add it lacks, never
// modifying a shared dst in place.
func appendNew(dst, add []string) []string {
	for _, s := range add {
		found := false
		for _, d := range dst {
			if d == s {
				found = true
				break
			}
		}
		if !found {
			dst = append(dst[:len(dst):len(dst)], s)
		}
	}
	return dst
}

// reject counts a refusal by reason and returns err.
func (v *Verifier) reject(err error) error {
	label := Reason(err)
	for i, r := range reasonLabels {
		if r.label == label {
			v.rejected[i].Add(1)
			return err
		}
	}
	v.rejected[len(reasonLabels)].Add(1)
	return err
}

// Stats is a snapshot of the verifier's counters, for metrics.
type Stats struct {
	// Accepted counts tokens accepted; CacheHits and CacheMisses split the
	// lookups of tokens that reached the cache.
	Accepted, CacheHits, CacheMisses uint64
	// CacheEntries is the number of tokens in the cache now.
	CacheEntries int
	// Rejected counts refusals by Reason label.
	Rejected map[string]uint64
	// KeySets describes every remote key set in use.
	KeySets []KeySetStatus
}

// KeySetStatus describes one remote key set.
type KeySetStatus struct {
	// Source is the jwksUri (or "discovery <issuer>") without query.
	Source string
	// Keys is the number of usable keys held now (0: none fetched yet).
	Keys                                int
	LastSuccess, LastAttempt, NextFetch time.Time
	// LastError is the last fetch error, "" after a success.
	LastError         string
	Fetches, Failures uint64
}

// Stats returns a snapshot of the counters.
func (v *Verifier) Stats() Stats {
	s := Stats{
		Accepted:     v.accepted.Load(),
		CacheHits:    v.hits.Load(),
		CacheMisses:  v.misses.Load(),
		CacheEntries: v.cache.len(),
		Rejected:     map[string]uint64{},
	}
	for i, r := range reasonLabels {
		if n := v.rejected[i].Load(); n > 0 {
			s.Rejected[r.label] = n
		}
	}
	if n := v.rejected[len(reasonLabels)].Load(); n > 0 {
		s.Rejected["other"] = n
	}
	for _, r := range v.remoteList() {
		s.KeySets = append(s.KeySets, r.status())
	}
	return s
}

var (
	_ policy.JWTVerifier = (*Verifier)(nil)
	_ io.Closer          = (*Verifier)(nil)
)
