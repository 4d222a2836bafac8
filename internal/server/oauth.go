package server

// The OAuth 2.0 / OIDC token service (internal/token) wired into the
// control plane: constructed from the server's config, store, KEK and
// audit log, its public endpoints mounted on the server's listener, its
// admin API behind the server's admin authentication, its revocations
// pushed on the watch stream, its keys rotated by the maintenance loop.

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/json"
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
		// Tokens issued on the strength of a CA key (a JWT-SVID it
		// signed, a client X509-SVID it issued) end with its revocation.
		RevokedAuthorities: func() []string { return s.ca.RevokedIDs() },
		RevokedID:          func(id string) bool { return id != "" && s.revs.Load().revoked(id, "") },
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

// oauthRevoked is the token service's OnRevoke. The store moved the
// revocations version in the transaction that listed the token
// (store.OAuth.RevokeTokenID), so every replica hears of it; this pushes
// the new section to this server's watch streams at once.
func (s *Server) oauthRevoked(ctx context.Context, _ string, _ time.Time) {
	s.changed(ctx)
}

// oauthAudit appends a token service event to the audit log. A change's
// record is written inside the change's store transaction (the token
// service calls it with the context of store.OAuth.Atomically), so the
// two commit together or not at all; other records (refusals, and
// client_credentials grants, which change nothing) go through the group
// commit. The token service withholds a grant, and rolls back a change,
// whose record cannot be written.
func (s *Server) oauthAudit(ctx context.Context, e token.AuditEvent) error {
	outcome := audit.Success
	if e.Outcome != "success" {
		outcome = audit.Failure
	}
	call, _ := ctx.Value(oauthAdminCallKey{}).(*oauthAdminCall)
	var actor string
	if call != nil {
		actor = call.actor
	}
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
	var err error
	if tx, ok := store.TxFrom(ctx); ok {
		err = s.audit.AppendTx(ctx, tx, ev)
	} else {
		err = s.audit.Append(context.WithoutCancel(ctx), ev)
	}
	if call != nil {
		call.note(err)
	}
	if err != nil {
		return fmt.Errorf("server: audit log: %w", err)
	}
	return nil
}

// oauthPeer gives the token service the caller's SPIFFE ID for
// tls_client_auth. The listener verified the certificate as an
// X509-SVID of our trust domain at the handshake; peer checks expiry and
// revocation again.
//
// A certificate on a request a web page made does not count (madeByAPage):
// a browser holding a workload's or an admin's certificate presents it
// to any page's request, so a page of another site could otherwise post
// grant_type=client_credentials (a form needs no preflight) and have a
// token minted, or a bound token revoked, as that client.
func (s *Server) oauthPeer(r *http.Request) (spiffeid.ID, bool) {
	if madeByAPage(r) {
		return spiffeid.ID{}, false
	}
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

// oauthAdminCall is one call of the token service's admin API being
// served. oauthAudit counts the token service's own records of the call
// here; they decide whether the call needs an admin.call record and
// whether its answer may leave.
type oauthAdminCall struct {
	actor string

	mu       sync.Mutex
	recorded int   // records of the call written
	failed   error // the first record of the call that could not be written
}

// oauthAdminCallKey carries the *oauthAdminCall into the token service's
// admin handlers, so their audit records name who acted and report back.
type oauthAdminCallKey struct{}

func (c *oauthAdminCall) note(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if c.failed == nil {
			c.failed = err
		}
		return
	}
	c.recorded++
}

func (c *oauthAdminCall) outcome() (recorded int, failed error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recorded, c.failed
}

// heldResponse holds an admin answer until the call is audited.
type heldResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newHeldResponse() *heldResponse { return &heldResponse{header: http.Header{}} }

func (h *heldResponse) Header() http.Header { return h.header }

func (h *heldResponse) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}

func (h *heldResponse) Write(b []byte) (int, error) {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	return h.body.Write(b)
}

// firstError is the first message of a {"errors": [...]} answer.
func (h *heldResponse) firstError() string {
	var eb struct {
		Errors []string `json:"errors"`
	}
	if h.status < 400 || json.Unmarshal(h.body.Bytes(), &eb) != nil || len(eb.Errors) == 0 {
		return ""
	}
	return eb.Errors[0]
}

// oauthAdmin puts the token service's admin API behind the server's admin
// authentication (admin token or admin client certificate), and audits,
// counts and answers each call as the built-in admin API does (admin.go):
//
//   - The answer is held until the call is audited. If any audit record
//     of the call cannot be written, the answer never leaves (a client
//     secret or recovery codes are shown once, a listing is data) and the
//     caller gets 500 "audit log unavailable".
//   - A call is audited once. The token service records what it did
//     (oauth.client.created, oauth.revoke, oauth.mfa.failed, ...) with the
//     admin as actor; a call it recorded nothing for (reads, refusals,
//     unknown endpoints) gets one admin.call record, as the built-in API
//     gives calls with no change record.
//   - A token service change commits in one transaction with its record
//     (oauthAudit), so a call whose record failed changed nothing. A call
//     that answers 5xx after recording gets an admin.call record too: its
//     transaction may have rolled back after the record was written.
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
		call := &oauthAdminCall{actor: actor}
		res := newHeldResponse()
		if status != 0 {
			if status == http.StatusUnauthorized {
				res.header.Set("WWW-Authenticate", `Bearer realm="moatless"`)
			}
			writeErrors(res, status, msg)
		} else {
			r.Body = http.MaxBytesReader(w, r.Body, MaxAdminBody)
			h.ServeHTTP(res, r.WithContext(context.WithValue(r.Context(), oauthAdminCallKey{}, call)))
		}
		if res.status == 0 {
			res.status = http.StatusOK // what net/http sends for a handler that wrote nothing
		}
		recorded, failed := call.outcome()
		if failed == nil && (recorded == 0 || res.status >= 500) {
			outcome := audit.Success
			switch {
			case res.status == http.StatusUnauthorized || res.status == http.StatusForbidden:
				outcome = audit.Denied
			case res.status >= 500:
				outcome = audit.Error
			case res.status >= 400:
				outcome = audit.Failure
			}
			details := map[string]string{"method": r.Method, "path": r.URL.Path, "status": strconv.Itoa(res.status), "remote": remoteHost(r)}
			if r.URL.RawQuery != "" {
				details["query"] = r.URL.RawQuery
			}
			if m := res.firstError(); m != "" {
				details["error"] = m
			}
			ev := audit.Event{Kind: audit.KindAdminCall, Actor: actor, Subject: r.Method + " " + r.URL.Path, Outcome: outcome, Details: details}
			if err := s.audit.Append(context.WithoutCancel(r.Context()), ev); err != nil {
				s.log.Error("audit log unavailable: refusing the admin call", "err", err)
				res = newHeldResponse()
				writeErrors(res, http.StatusInternalServerError, "audit log unavailable; the call was not served")
			}
		} else if failed != nil {
			s.log.Error("audit log unavailable: withholding the token service's admin answer", "method", r.Method, "path", r.URL.Path, "err", failed)
			res = newHeldResponse()
			writeErrors(res, http.StatusInternalServerError,
				"audit log unavailable; the call changed nothing and its answer was withheld: try again once the audit log works")
		}
		switch {
		case res.status == http.StatusUnauthorized || res.status == http.StatusForbidden:
			s.metrics.adminRequests.WithLabelValues("denied").Inc()
		case res.status >= 500:
			s.metrics.adminRequests.WithLabelValues("server_error").Inc()
		case res.status >= 400:
			s.metrics.adminRequests.WithLabelValues("client_error").Inc()
		default:
			s.metrics.adminRequests.WithLabelValues("success").Inc()
		}
		for k, v := range res.header {
			w.Header()[k] = v
		}
		w.WriteHeader(res.status)
		w.Write(res.body.Bytes())
	})
}
