package server

// The OAuth 2.0 / OIDC token service (internal/token) wired into the
// control plane: constructed from the server's config, store, KEK and
// audit log, its public endpoints mounted on the server's listener, its
// admin API behind the server's admin authentication, its revocations
// pushed on the watch stream, its keys rotated by the maintenance loop.

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/token"
	"github.com/moatless/moatless/internal/wire"
)

// oauthTickInterval is how often the maintenance loop lets the token
// service rotate keys and prune; far shorter than any key schedule.
const oauthTickInterval = 30 * time.Second

// oauthState is the server's token service.
type oauthState struct {
	svc      *token.Service
	mu       sync.Mutex
	lastTick time.Time
}

// OAuth returns the token service (nil before New finished).
func (s *Server) OAuth() *token.Service {
	if s.oauth == nil {
		return nil
	}
	return s.oauth.svc
}

// defaultIssuer is https://<listen address>. A listener on every
// interface is named by the loopback name its certificate carries; set
// issuer in the config (or --issuer) to the name clients use.
func defaultIssuer(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "https://" + addr.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return "https://" + net.JoinHostPort(host, port)
}

// initOAuth builds the token service and mounts it. The service's KEK is
// derived from the server's (HKDF-SHA256 with its own label), so the CA
// keys and the token keys are sealed under different keys.
func (s *Server) initOAuth(ctx context.Context, issuer string) error {
	alg := s.cfg.TokenSigningAlg
	if issuer == "" {
		issuer = defaultIssuer(s.ln.Addr())
	}
	kek, err := s.loadKEK(ctx)
	if err != nil {
		return err
	}
	okek, err := hkdf.Key(sha256.New, kek, nil, "moatless oauth kek v1", 32)
	clear(kek)
	if err != nil {
		return fmt.Errorf("server: derive token service key: %w", err)
	}
	svc, err := token.New(token.Config{
		Issuer: issuer, Store: s.db.OAuth(), KEK: okek, Now: s.now, SigningAlg: alg,
		Logger:     s.log.With("component", "token"),
		Audit:      s.oauthAudit,
		OnRevoke:   s.oauthRevoked,
		SVIDPeer:   s.oauthPeer,
		JWTBundles: caJWTBundles{s},
	})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if err := svc.Tick(ctx); err != nil {
		return fmt.Errorf("server: token signing keys: %w", err)
	}
	for _, c := range svc.Collectors() {
		s.metrics.reg.MustRegister(c)
	}
	s.oauth = &oauthState{svc: svc, lastTick: s.now()}
	u, _ := url.Parse(issuer)
	h := svc.Handler()
	for _, p := range []string{token.PathDiscovery, token.PathASMetadata, token.PathJWKS} {
		s.mux.Handle("GET "+u.Path+p, h)
	}
	s.mux.Handle(u.Path+"/oauth2/", h)
	s.mux.Handle(token.AdminPathPrefix, s.oauthAdmin(svc.AdminHandler()))
	s.log.Info("token service ready", "issuer", issuer)
	return nil
}

// tickOAuth runs the token service's rotation and pruning at most every
// oauthTickInterval; the maintenance loop calls it on each pass.
func (s *Server) tickOAuth(ctx context.Context) {
	o := s.oauth
	if o == nil {
		return
	}
	o.mu.Lock()
	due := s.now().Sub(o.lastTick) >= oauthTickInterval
	if due {
		o.lastTick = s.now()
	}
	o.mu.Unlock()
	if due {
		if err := o.svc.Tick(ctx); err != nil {
			s.log.Error("token service key rotation or pruning failed; will retry", "err", err)
		}
	}
}

// oauthRevokedTokens lists the revoked access token IDs for the watch
// stream's revocations section.
func (s *Server) oauthRevokedTokens(ctx context.Context) ([]wire.RevokedTokenID, error) {
	list, err := s.db.OAuth().RevokedTokenIDs(ctx, s.now())
	if err != nil {
		return nil, err
	}
	out := make([]wire.RevokedTokenID, len(list))
	for i, t := range list {
		out[i] = wire.RevokedTokenID{JTI: t.JTI, ExpiresAt: t.ExpiresAt}
	}
	return out, nil
}

// oauthRevoked is the token service's OnRevoke: it bumps the revocations
// version (so every server replica and every watch stream notices) and
// pushes the new section at once.
func (s *Server) oauthRevoked(ctx context.Context, jti string, exp time.Time) {
	ctx = context.WithoutCancel(ctx)
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		_, err := s.db.BumpVersion(ctx, tx, store.SectionRevocations)
		return err
	})
	if err != nil {
		s.log.Error("publish token revocation; sidecars learn of it at the next change", "jti", jti, "err", err)
		return
	}
	s.changed(ctx)
}

// oauthAudit appends a token service event to the audit log; the token
// service withholds a grant whose record cannot be written.
func (s *Server) oauthAudit(ctx context.Context, e token.AuditEvent) error {
	outcome := audit.Success
	if e.Outcome != "success" {
		outcome = audit.Failure
	}
	actor, _ := ctx.Value(adminActorKey{}).(string)
	switch {
	case actor != "":
	case e.ClientID != "":
		actor = e.ClientID
	case strings.HasPrefix(e.Type, "oauth.key."):
		actor = s.id.String()
	default:
		actor = "anonymous"
	}
	details := map[string]string{}
	for k, v := range e.Details {
		details[k] = v
	}
	if e.Reason != "" {
		details["reason"] = e.Reason
	}
	if e.Remote != "" {
		if h, _, err := net.SplitHostPort(e.Remote); err == nil {
			details["remote"] = h
		}
	}
	ev := audit.Event{Kind: e.Type, Actor: actor, Subject: e.Subject, Outcome: outcome, Details: details}
	if err := s.audit.Append(context.WithoutCancel(ctx), ev); err != nil {
		return fmt.Errorf("server: audit log: %w", err)
	}
	return nil
}

// adminActorKey carries the authenticated admin into the token service's
// admin handlers, so their audit records name who acted.
type adminActorKey struct{}

// oauthPeer gives the token service the caller's SPIFFE ID for
// tls_client_auth. The listener verified the certificate as an
// X509-SVID of our trust domain at the handshake; peer checks expiry and
// revocation again.
func (s *Server) oauthPeer(r *http.Request) (spiffeid.ID, bool) {
	c, err := s.peer(r)
	if err != nil {
		return spiffeid.ID{}, false
	}
	return c.id, true
}

// caJWTBundles serves the CA's current JWT authorities, so a JWT-SVID
// presented for token exchange is checked against the live bundle.
type caJWTBundles struct{ s *Server }

func (b caJWTBundles) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	return b.s.ca.Bundle().GetJWTBundleForTrustDomain(td)
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// oauthAdmin puts the token service's admin API behind the server's admin
// authentication (admin token or admin client certificate), and audits
// and counts each call like the built-in admin endpoints.
func (s *Server) oauthAdmin(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		actor, status, msg := s.authenticateAdmin(r)
		if status != 0 && actor == "anonymous" && !s.refusals.allow(s.now()) {
			// An unauthenticated flood: answer without an audit record
			// each, exactly as the built-in admin API does (admin.go).
			s.metrics.adminRequests.WithLabelValues("rate_limited").Inc()
			writeErrors(w, http.StatusTooManyRequests, "too many refused requests; retry later")
			return
		}
		rec := &statusRecorder{ResponseWriter: w}
		if status != 0 {
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="moatless"`)
			}
			writeErrors(rec, status, msg)
		} else {
			r.Body = http.MaxBytesReader(w, r.Body, MaxAdminBody)
			h.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), adminActorKey{}, actor)))
		}
		code := rec.status
		outcome, label := audit.Success, "success"
		switch {
		case code == http.StatusUnauthorized || code == http.StatusForbidden:
			outcome, label = audit.Denied, "denied"
		case code >= 500:
			outcome, label = audit.Error, "server_error"
		case code >= 400:
			outcome, label = audit.Failure, "client_error"
		}
		s.metrics.adminRequests.WithLabelValues(label).Inc()
		ev := audit.Event{Kind: audit.KindAdminCall, Actor: actor, Subject: r.Method + " " + r.URL.Path, Outcome: outcome,
			Details: map[string]string{"method": r.Method, "path": r.URL.Path, "status": strconv.Itoa(code), "remote": remoteHost(r)}}
		if err := s.audit.Append(context.WithoutCancel(r.Context()), ev); err != nil {
			s.log.Error("audit log unavailable for an admin call", "err", err)
		}
	})
}
