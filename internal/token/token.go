// Package token is Moatless's OAuth 2.0 / OpenID Connect provider: the
// token service inside "moatless server".
//
// It serves discovery and JWKS; client_credentials for clients that
// authenticate with a secret (client_secret_basic/_post), a signed
// assertion (private_key_jwt, RFC 7523) or their SPIFFE X509-SVID over
// mutual TLS (tls_client_auth, RFC 8705, giving certificate-bound tokens);
// authorization_code with PKCE (S256 only) behind a login page with
// argon2id passwords and TOTP MFA; refresh tokens rotated on every use
// with reuse detection; token exchange (RFC 8693) for delegation across
// services; revocation (RFC 7009) and introspection (RFC 7662). Access
// tokens are JWTs (RFC 9068) signed with keys that rotate with overlap.
//
// Lifecycle: New(Config) checks the configuration and starts nothing.
// Handler and AdminHandler return the HTTP handlers the server mounts (it
// owns the listener and its TLS). Tick(ctx) loads, rotates and prunes
// signing keys and expired state; the server calls it on a schedule (once
// a minute is plenty) and the first request calls it if nobody has.
// Close is idempotent. A Service is safe for concurrent use.
//
// Security notes: no token, code, secret, password or key is ever logged
// or put in an audit record (token IDs are, as they are not credentials).
// Secrets, codes and refresh tokens are stored as SHA-256 hashes; signing
// and TOTP keys are sealed with the KEK (AES-256-GCM).
package token

import (
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits and defaults. MaxAccessTokenTTL is a hard cap: longer-lived
// bearer tokens make revocation matter too much.
const (
	MaxAccessTokenTTL       = 15 * time.Minute
	DefaultAccessTokenTTL   = 10 * time.Minute
	DefaultIDTokenTTL       = 10 * time.Minute
	DefaultExchangeTTL      = 5 * time.Minute
	DefaultCodeTTL          = time.Minute
	DefaultRefreshTokenTTL  = 24 * time.Hour
	DefaultRefreshFamilyTTL = 30 * 24 * time.Hour
	DefaultKeyRotation      = 7 * 24 * time.Hour
	DefaultKeyPublishAhead  = 24 * time.Hour
	// MaxFormSize bounds every form body the service reads.
	MaxFormSize = 64 << 10
	// loginTxTTL bounds how long a login page may sit before its form
	// is refused.
	loginTxTTL = 10 * time.Minute
)

// Config configures a Service. Issuer, Store and KEK are required; every
// other zero value has a documented default.
type Config struct {
	// Issuer is the https URL tokens name in iss and discovery is served
	// under, e.g. "https://127.0.0.1:8443". No query, no fragment, no
	// trailing slash.
	Issuer string
	// Store persists clients, users, keys and token state.
	Store Store
	// KEK (32 bytes) seals signing keys and TOTP keys at rest with
	// AES-256-GCM, and keys the login page's sealed form state.
	KEK []byte
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Rand is the source of keys, secrets, codes and IDs; crypto/rand when
	// nil.
	Rand io.Reader
	// Logger receives operational logs (never a credential); discarded
	// when nil.
	Logger *slog.Logger
	// Audit records an event durably: every grant, failure, exchange,
	// revocation, login and MFA event; ignored when nil. It runs on the
	// request path. A change to the service's state (a client, user or
	// MFA change, a login, a token issued from a grant, a revocation, a
	// signing key) is recorded inside the change's store transaction:
	// Audit is then called with a context Store.Atomically gave, and
	// must write in that transaction (the server appends with
	// audit.StoreSink.AppendTx on store.TxFrom(ctx)). When it fails, the
	// change is rolled back and the caller gets an error (server_error,
	// 500): no change without its record, and no credential leaves
	// unaudited. A failure to record a refusal, which changes nothing,
	// is logged.
	Audit func(ctx context.Context, e AuditEvent) error
	// OnRevoke is called with every access token ID that becomes revoked
	// (directly, or through its refresh family or a reused code), so the
	// server can push it to every sidecar. Ignored when nil.
	OnRevoke func(ctx context.Context, jti string, exp time.Time)
	// SVIDPeer returns the verified SPIFFE ID of the request's TLS client
	// certificate. When nil, the leaf of r.TLS.VerifiedChains[0] is used,
	// which requires the listener to verify client certificates against
	// the trust bundle (tls.VerifyClientCertIfGiven).
	SVIDPeer func(r *http.Request) (spiffeid.ID, bool)
	// RevokedAuthorities lists the IDs of the CA authorities that were
	// revoked (`moatless ca revoke`: X.509 authorities by the hex of their
	// subject key ID, JWT keys by key ID). A token issued on the strength
	// of one (exchanged from a JWT-SVID it signed, or to a tls_client_auth
	// client whose X509-SVID it issued) is revoked with it: at Tick, at
	// RevokeAuthorityTokens, and at once if the revocation raced its
	// issuance. nil: none is ever revoked.
	RevokedAuthorities func() []string
	// RevokedID reports whether a SPIFFE ID is revoked (`moatless revoke`).
	// A token issued to or for one — its sub, client_id or an act actor,
	// or the SPIFFE ID of the tls_client_auth client a certificate-bound
	// token was issued to — is inactive at introspection and refused as
	// an exchange's subject or actor, and a JWT-SVID of one is not
	// exchanged, as sidecars refuse them. A check, not a sweep: lifting
	// the revocation makes them valid again. nil: none is revoked.
	RevokedID func(id string) bool
	// JWTBundles validates JWT-SVIDs presented as token exchange subject
	// or actor tokens. nil: JWT-SVIDs are refused.
	JWTBundles jwtbundle.Source
	// SigningAlg is ES256 (default), RS256 or EdDSA.
	SigningAlg string
	// KeyRotation is how long a signing key signs (default 7 days);
	// KeyPublishAhead is how long the next key is in the JWKS before it
	// signs (default 1 day), so relying parties have fetched it first.
	KeyRotation     time.Duration
	KeyPublishAhead time.Duration
	// AccessTokenTTL (default 10 min, at most 15 min), IDTokenTTL
	// (default 10 min), ExchangeTTL (default 5 min), CodeTTL (default 1
	// min), RefreshTokenTTL (default 24 h: a refresh token unused for
	// this long expires) and RefreshFamilyTTL (default 30 days: the
	// absolute end of a login's refresh family).
	AccessTokenTTL   time.Duration
	IDTokenTTL       time.Duration
	ExchangeTTL      time.Duration
	CodeTTL          time.Duration
	RefreshTokenTTL  time.Duration
	RefreshFamilyTTL time.Duration
	// Argon2 sets the password hashing cost for new hashes; nil means the
	// OWASP recommendation (m=19 MiB, t=2, p=1).
	Argon2 *Argon2Params
}

// AuditEvent is one audit record. It never carries a credential.
type AuditEvent struct {
	// Type is "oauth.<what>", e.g. "oauth.token.issued",
	// "oauth.token.failed", "oauth.exchange", "oauth.revoke",
	// "oauth.login.failed", "oauth.mfa.enrolled".
	Type string
	// Outcome is "success" or "failure".
	Outcome string
	// ClientID is the OAuth client that made the request, "" for admin
	// API calls (the server knows the admin) and for the service's own
	// actions (key rotation).
	ClientID string
	// Subject is what the event is about: a user ID, a token subject, or
	// the client an admin call changed.
	Subject string
	// Reason is an OAuth error code or a short cause on failure.
	Reason string
	Remote string
	// Details carries non-secret facts: grant type, scope, audience,
	// jti, key ID, actor.
	Details map[string]string
}

// Service is the token service. Create it with New.
type Service struct {
	cfg     Config
	log     *slog.Logger
	keys    atomic.Pointer[keySet]
	keysMu  sync.Mutex // serializes Tick's rotation
	txKey   []byte     // AES-256 key for login form state (HKDF of the KEK)
	hashKey []byte     // HMAC key for non-secret lookups
	metrics *metrics
	tpl     *templates
	closed  atomic.Bool
	handler http.Handler
	admin   http.Handler
	// dummyHash is verified against for unknown users so the failure
	// path costs the same as a wrong password (no user enumeration by
	// timing).
	dummyHash string
	// hashSem bounds concurrent argon2id computations (password.go).
	hashSem chan struct{}
}

// New checks cfg, fills in defaults and returns a Service. It does no I/O.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("token: config: Store is required")
	}
	if len(cfg.KEK) != 32 {
		return nil, fmt.Errorf("token: config: KEK must be 32 bytes, got %d", len(cfg.KEK))
	}
	if err := checkIssuer(cfg.Issuer); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch cfg.SigningAlg {
	case "":
		cfg.SigningAlg = "ES256"
	case "ES256", "RS256", "EdDSA":
	default:
		return nil, fmt.Errorf("token: config: SigningAlg %q: want ES256, RS256 or EdDSA", cfg.SigningAlg)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.KeyRotation, DefaultKeyRotation)
	def(&cfg.KeyPublishAhead, DefaultKeyPublishAhead)
	def(&cfg.AccessTokenTTL, DefaultAccessTokenTTL)
	def(&cfg.IDTokenTTL, DefaultIDTokenTTL)
	def(&cfg.ExchangeTTL, DefaultExchangeTTL)
	def(&cfg.CodeTTL, DefaultCodeTTL)
	def(&cfg.RefreshTokenTTL, DefaultRefreshTokenTTL)
	def(&cfg.RefreshFamilyTTL, DefaultRefreshFamilyTTL)
	for name, d := range map[string]time.Duration{
		"AccessTokenTTL": cfg.AccessTokenTTL, "ExchangeTTL": cfg.ExchangeTTL,
	} {
		if d < 0 || d > MaxAccessTokenTTL {
			return nil, fmt.Errorf("token: config: %s %v: must be positive and at most %v", name, d, MaxAccessTokenTTL)
		}
	}
	if cfg.KeyRotation < time.Minute || cfg.KeyPublishAhead < 0 || cfg.KeyPublishAhead >= cfg.KeyRotation {
		return nil, errors.New("token: config: KeyRotation must be at least 1m and KeyPublishAhead shorter than it")
	}
	if cfg.CodeTTL <= 0 || cfg.CodeTTL > 10*time.Minute {
		return nil, errors.New("token: config: CodeTTL must be positive and at most 10m (RFC 6749 §4.1.2)")
	}
	if cfg.IDTokenTTL <= 0 || cfg.RefreshTokenTTL <= 0 || cfg.RefreshFamilyTTL < cfg.RefreshTokenTTL {
		return nil, errors.New("token: config: IDTokenTTL and RefreshTokenTTL must be positive and RefreshFamilyTTL at least RefreshTokenTTL")
	}
	params := OWASPArgon2
	if cfg.Argon2 != nil {
		params = *cfg.Argon2
	}
	cfg.Argon2 = &params
	s := &Service{cfg: cfg, log: cfg.Logger, metrics: newMetrics(), hashSem: make(chan struct{}, maxHashers)}
	var err error
	if s.txKey, err = hkdf.Key(sha256.New, cfg.KEK, nil, "moatless token login form v1", 32); err != nil {
		return nil, fmt.Errorf("token: derive keys: %w", err)
	}
	if s.hashKey, err = hkdf.Key(sha256.New, cfg.KEK, nil, "moatless token lookup v1", 32); err != nil {
		return nil, fmt.Errorf("token: derive keys: %w", err)
	}
	if s.tpl, err = parseTemplates(); err != nil {
		return nil, err
	}
	if s.dummyHash, err = hashPassword(cfg.Rand, "moatless-dummy-password", params); err != nil {
		return nil, err
	}
	s.handler = s.routes()
	s.admin = s.adminRoutes()
	return s, nil
}

func checkIssuer(iss string) error {
	u, err := url.Parse(iss)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil || strings.HasSuffix(iss, "/") {
		return fmt.Errorf("token: config: Issuer %q must be an https URL with no query, fragment or trailing slash (OIDC Discovery §3)", iss)
	}
	return nil
}

// Issuer returns the issuer URL.
func (s *Service) Issuer() string { return s.cfg.Issuer }

// Handler serves the public OAuth 2.0 / OIDC endpoints under the issuer's
// path: discovery, JWKS, token, authorize, login, revoke, introspect and
// userinfo.
func (s *Service) Handler() http.Handler { return s.handler }

// Close stops the service; handlers answer 503 afterwards. It is safe to
// call more than once.
func (s *Service) Close() error {
	s.closed.Store(true)
	return nil
}

// Tick loads the signing keys from the store, creates the next key when
// the current one nears retirement (published KeyPublishAhead before it
// signs), deletes keys whose last token has expired and prunes expired
// codes, refresh tokens and revoked IDs. Call it on a schedule; it is safe
// to call concurrently and from several replicas.
func (s *Service) Tick(ctx context.Context) error {
	if err := s.rotateKeys(ctx); err != nil {
		return err
	}
	if err := s.cfg.Store.Prune(ctx, s.now()); err != nil {
		return fmt.Errorf("token: prune: %w", err)
	}
	return s.RevokeAuthorityTokens(ctx)
}

// RevokeAuthorityTokens revokes every unexpired token issued on the
// strength of a CA authority that is now revoked
// (Config.RevokedAuthorities), with what was exchanged from those, and
// announces them to OnRevoke. Tick does it; the server also calls it
// when its trust bundle changes, so that a `moatless ca revoke` (on this
// replica or adopted from another) reaches the tokens at once. A token
// revoked already is left alone, so repeating it costs one query per
// revoked authority.
func (s *Service) RevokeAuthorityTokens(ctx context.Context) error {
	if s.cfg.RevokedAuthorities == nil {
		return nil
	}
	ids := s.cfg.RevokedAuthorities()
	if len(ids) == 0 {
		return nil
	}
	toks, err := s.cfg.Store.RevokeAuthorityTokens(ctx, ids, s.now())
	s.announce(ctx, toks)
	if err != nil {
		return fmt.Errorf("token: revoke the tokens of revoked CA authorities: %w", err)
	}
	if len(toks) > 0 {
		s.log.Info("token: revoked the access tokens issued on the strength of a revoked CA authority", "tokens", len(toks))
	}
	return nil
}

// authorityRevoked reports whether any of ids is a revoked CA authority.
func (s *Service) authorityRevoked(ids []string) bool {
	if s.cfg.RevokedAuthorities == nil || len(ids) == 0 {
		return false
	}
	for _, r := range s.cfg.RevokedAuthorities() {
		if contains(ids, r) {
			return true
		}
	}
	return false
}

// RevokedTokenIDs lists the revoked access token IDs that have not
// expired, for the server to seed the watch stream after a restart.
func (s *Service) RevokedTokenIDs(ctx context.Context) ([]RevokedToken, error) {
	return s.cfg.Store.RevokedTokenIDs(ctx, s.now())
}

func (s *Service) now() time.Time { return s.cfg.Now() }

func (s *Service) random(n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
		// A failing CSPRNG leaves nothing safe to do.
		panic("token: random source failed: " + err.Error())
	}
	return b
}

// audit records e, logging a failure.
func (s *Service) audit(ctx context.Context, e AuditEvent) {
	if err := s.auditGrant(ctx, e); err != nil {
		s.log.Error("token: audit record failed", "type", e.Type, "err", err)
	}
}

// auditGrant records e and returns the failure, for the callers that must
// withhold a credential, or roll back a change, when it cannot be
// audited.
func (s *Service) auditGrant(ctx context.Context, e AuditEvent) error {
	if s.cfg.Audit == nil {
		return nil
	}
	return s.cfg.Audit(ctx, e)
}

// auditAll records evs in order, stopping at the first failure.
func (s *Service) auditAll(ctx context.Context, evs ...AuditEvent) error {
	for _, e := range evs {
		if err := s.auditGrant(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// pendingKey carries the *pending of an atomically block.
type pendingKey struct{}

// pending collects what an atomically block announces once it commits.
type pending struct {
	revoked []RevokedToken
}

// atomically runs fn as one store transaction together with the audit
// records it writes (auditGrant with the context fn is given): a change
// and its record commit together or neither does. Token IDs fn revokes
// (s.revoked) go to OnRevoke only after the commit, so sidecars never
// hear of a revocation that was rolled back. Nested calls join the
// outer block. Within fn the audit record is written last, after every
// row lock the change takes, so transactions lock in one order.
func (s *Service) atomically(ctx context.Context, fn func(ctx context.Context) error) error {
	if _, ok := ctx.Value(pendingKey{}).(*pending); ok {
		return fn(ctx)
	}
	p := &pending{}
	if err := s.cfg.Store.Atomically(context.WithValue(ctx, pendingKey{}, p), fn); err != nil {
		return err
	}
	s.announce(ctx, p.revoked)
	return nil
}

// revoked announces newly revoked token IDs to OnRevoke: at once, or
// inside an atomically block when it commits.
func (s *Service) revoked(ctx context.Context, toks []RevokedToken) {
	if p, ok := ctx.Value(pendingKey{}).(*pending); ok {
		p.revoked = append(p.revoked, toks...)
		return
	}
	s.announce(ctx, toks)
}

func (s *Service) announce(ctx context.Context, toks []RevokedToken) {
	for _, t := range toks {
		s.metrics.revoked.Inc()
		if s.cfg.OnRevoke != nil {
			s.cfg.OnRevoke(ctx, t.JTI, t.ExpiresAt)
		}
	}
}
