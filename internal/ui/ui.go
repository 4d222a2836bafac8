// Package ui is the Moatless dashboard: server-rendered pages
// (html/template) made live with htmx, every asset embedded with go:embed,
// served by the control plane under /ui on its TLS listener.
//
// Who may use it: an admin who logs in with the admin token (exchanged
// once for a session cookie; the token is never stored or shown), or a
// user of the server's own token service who holds the dashboard's admin
// role, through OIDC (authorization code with PKCE against the server's
// /oauth2/authorize, with a registered public client).
//
// Security: the session cookie is sealed (AES-256-GCM under a key derived
// from the server's KEK, so replicas share it), HttpOnly, Secure,
// SameSite=Strict, __Host- prefixed and short-lived. Every state-changing
// request needs the session's CSRF token (a synchronizer token, compared
// in constant time) and an Origin (or Sec-Fetch-Site) naming this server;
// another site's page or asset requests are refused unless they are
// top-level navigations (foreignFetch).
// Pages carry a Content-Security-Policy without 'unsafe-inline' or
// 'unsafe-eval' (htmx is configured not to inject styles or evaluate
// code), X-Frame-Options DENY and no-store caching. Logins are rate
// limited per address, and audited (refusals within an overall bound,
// the excess counted), as are logouts and every
// action (the action through the same server code as the admin API).
// Pages show no secret: no token, key or secret value is ever rendered.
//
// Lifecycle: New(Config) checks the configuration and parses the
// templates; the returned *UI is an http.Handler, safe for concurrent use.
package ui

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/moatless/moatless/internal/audit"
)

// Prefix is where the dashboard is mounted.
const Prefix = "/ui"

// Session lifetimes.
const (
	DefaultSessionTTL = 30 * time.Minute
	MaxSessionTTL     = 12 * time.Hour
	// oidcLoginTTL bounds a login in progress at the token service.
	oidcLoginTTL = 10 * time.Minute
	// maxFormBytes bounds every form the dashboard reads.
	maxFormBytes = 16 << 10
)

// DefaultAdminRole is the token service role that may use the dashboard.
const DefaultAdminRole = "moatless-admin"

// Audit event kinds of the dashboard.
const (
	KindLogin   = "ui.login"
	KindLogout  = "ui.logout"
	KindRefused = "ui.refused" // a forged or stale state-changing request
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// OIDCProvider is the token service as the dashboard's OIDC login needs
// it: the issuer, the endpoints (the token endpoint is called in process,
// never over the network) and the keys that sign ID tokens.
type OIDCProvider interface {
	Issuer() string
	Handler() http.Handler
	JWKS(ctx context.Context) (jose.JSONWebKeySet, error)
}

// OIDC configures login through the server's token service.
type OIDC struct {
	// ClientID is the dashboard's client at the token service: a public
	// client (auth method none) with the authorization_code grant, the
	// openid scope and the redirect URI ORIGIN/ui/oidc/callback, ORIGIN
	// being the issuer's scheme and host.
	ClientID string
	// AdminRole is the role a user needs; DefaultAdminRole when empty.
	AdminRole string
	Provider  OIDCProvider
	// Users re-checks the user on every request.
	Users Users
}

// Config configures the dashboard. SessionKey, Admin and the sources are
// required; OIDC is optional (without it, only the admin token logs in).
type Config struct {
	// TrustDomain is shown in the header.
	TrustDomain string
	// SessionKey (32 bytes) seals cookies. Replicas must share it.
	SessionKey []byte
	// SessionTTL is how long a session lasts from login; DefaultSessionTTL
	// when 0, at most MaxSessionTTL.
	SessionTTL time.Duration
	// HSTSMaxAge, when positive, adds Strict-Transport-Security with this
	// max-age (whole seconds) to every response. Zero sends none: HSTS
	// holds for the host name on every port, so the operator opts in
	// knowing what else the host serves over plain HTTP.
	HSTSMaxAge time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger gets errors; slog.Default() when nil. Never given a token.
	Logger *slog.Logger
	// Audit records logins, logouts and refusals.
	Audit audit.Sink

	Admin       AdminAuth
	OIDC        *OIDC
	Nodes       NodeSource
	Certs       CertSource
	Policies    PolicySource
	Revocations RevocationSource
	// Records is the audit log; the service graph and the decision log
	// are read from its decision records.
	Records   AuditSource
	Findings  FindingSource
	Incidents IncidentSource
	// Sessions keeps the sessions that logged out where every replica
	// sees them. Nil: this process alone remembers them, which is enough
	// for one server only (behind several, a copy of a logged-out cookie
	// would still open on the others until it expired).
	Sessions SessionStore
}

// SessionStore records ended (logged-out) sessions for every replica of
// the server. Both methods are called on the request's goroutine; an error
// from SessionEnded refuses the request (fail closed).
type SessionStore interface {
	// EndSession records that session id ended; it is refused until
	// expires (after which its cookie no longer opens anyway).
	EndSession(ctx context.Context, id string, expires time.Time) error
	// SessionEnded reports whether session id was ended, on any replica.
	SessionEnded(ctx context.Context, id string) (bool, error)
}

// UI is the dashboard handler.
type UI struct {
	cfg    Config
	now    func() time.Time
	log    *slog.Logger
	seal   *sealer
	ttl    time.Duration
	limit  *loginLimiter
	ended  ended
	pages  map[string]*template.Template
	static http.Handler
	mux    *http.ServeMux
	// refusals bounds audited CSRF/Origin refusals.
	refusals *loginLimiter
	// deniedBudget bounds the audit records of refused logins.
	deniedBudget *budget
}

// New checks cfg and prepares the dashboard. It starts nothing.
func New(cfg Config) (*UI, error) {
	switch {
	case cfg.Admin == nil:
		return nil, errors.New("ui: Admin is required")
	case cfg.Audit == nil:
		return nil, errors.New("ui: Audit is required")
	case cfg.Nodes == nil || cfg.Certs == nil || cfg.Policies == nil || cfg.Revocations == nil || cfg.Records == nil || cfg.Findings == nil || cfg.Incidents == nil:
		return nil, errors.New("ui: every data source is required")
	case cfg.SessionTTL < 0 || cfg.SessionTTL > MaxSessionTTL:
		return nil, fmt.Errorf("ui: session TTL %s: want at most %s", cfg.SessionTTL, MaxSessionTTL)
	case cfg.HSTSMaxAge < 0 || cfg.HSTSMaxAge%time.Second != 0:
		return nil, fmt.Errorf("ui: HSTS max-age %s: want whole seconds", cfg.HSTSMaxAge)
	}
	if o := cfg.OIDC; o != nil {
		if o.ClientID == "" || o.Provider == nil || o.Users == nil {
			return nil, errors.New("ui: OIDC needs ClientID, Provider and Users")
		}
		if o.AdminRole == "" {
			o.AdminRole = DefaultAdminRole
		}
	}
	s, err := newSealer(cfg.SessionKey)
	if err != nil {
		return nil, err
	}
	u := &UI{cfg: cfg, now: cfg.Now, log: cfg.Logger, seal: s, ttl: cfg.SessionTTL, limit: newLoginLimiter(), refusals: newLoginLimiter(),
		deniedBudget: newBudget(deniedAuditRate, deniedAuditBurst)}
	if u.now == nil {
		u.now = time.Now
	}
	if u.log == nil {
		u.log = slog.Default()
	}
	if u.ttl == 0 {
		u.ttl = DefaultSessionTTL
	}
	if u.pages, err = parsePages(); err != nil {
		return nil, err
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	u.static = http.StripPrefix(Prefix+"/static/", http.FileServerFS(sub))
	u.routes()
	return u, nil
}

func (u *UI) routes() {
	m := http.NewServeMux()
	m.Handle("GET "+Prefix+"/static/", u.staticFiles())
	m.HandleFunc("GET "+Prefix+"/login", u.loginPage)
	m.HandleFunc("POST "+Prefix+"/login", u.loginToken)
	m.HandleFunc("GET "+Prefix+"/oidc/start", u.oidcStart)
	m.HandleFunc("GET "+Prefix+"/oidc/callback", u.oidcCallback)
	m.Handle("POST "+Prefix+"/logout", u.authed(u.logout))

	m.Handle("GET "+Prefix+"/{$}", u.authed(u.overview))
	m.Handle("GET "+Prefix+"/nodes", u.authed(u.nodes))
	m.Handle("GET "+Prefix+"/certificates", u.authed(u.certificates))
	m.Handle("GET "+Prefix+"/policies", u.authed(u.policies))
	m.Handle("GET "+Prefix+"/policies/{version}", u.authed(u.policyVersion))
	m.Handle("POST "+Prefix+"/policies/rollback", u.authed(u.rollback))
	m.Handle("GET "+Prefix+"/revocations", u.authed(u.revocations))
	m.Handle("POST "+Prefix+"/revocations/revoke", u.authed(u.revoke))
	m.Handle("POST "+Prefix+"/revocations/unrevoke", u.authed(u.unrevoke))
	m.Handle("GET "+Prefix+"/activity", u.authed(u.activity))
	m.Handle("GET "+Prefix+"/audit", u.authed(u.auditLog))
	m.Handle("GET "+Prefix+"/graph", u.authed(u.graphPage))
	m.Handle("GET "+Prefix+"/decisions", u.authed(u.decisions))
	m.Handle("GET "+Prefix+"/findings", u.authed(u.findings))
	m.Handle("GET "+Prefix+"/findings/{id}", u.authed(u.finding))
	m.Handle("GET "+Prefix+"/incidents", u.authed(u.incidents))
	m.Handle("GET "+Prefix+"/incidents/{id}", u.authed(u.incident))
	m.Handle("GET "+Prefix+"/incidents/{id}/export", u.authed(u.exportIncident))
	m.Handle("POST "+Prefix+"/incidents/isolate", u.authed(u.isolate))
	m.Handle("POST "+Prefix+"/incidents/{id}/release", u.authed(u.release))
	m.Handle("POST "+Prefix+"/incidents/{id}/confirm", u.authed(u.confirmBlocks))
	m.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) {
		u.errorPage(w, r, http.StatusNotFound, "There is no such dashboard page.")
	})
	u.mux = m
}

// ServeHTTP serves every dashboard path with the security headers.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w.Header())
	if u.cfg.HSTSMaxAge > 0 {
		w.Header().Set("Strict-Transport-Security", "max-age="+strconv.FormatInt(int64(u.cfg.HSTSMaxAge/time.Second), 10))
	}
	if why := foreignFetch(r); why != "" {
		u.errorPage(w, r, http.StatusForbidden, "Refused: "+why+".")
		return
	}
	if r.URL.Path == Prefix {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
		return
	}
	u.mux.ServeHTTP(w, r)
}

// foreignFetch returns why a page or asset request another site made the
// browser send must be refused, or "" (a resource isolation policy on the
// browser's Fetch Metadata, which no page can forge). Another site,
// same-site siblings included (SameSite=Strict sends them the session
// cookie), may only link to the dashboard: a top-level navigation. As a
// subresource, in a frame or by script, its request would still run its
// handler (the forensics bundle export is audited and costly) or use up
// the address's login attempts (/ui/oidc/start). Requests that change
// something are checked by Origin and CSRF token (checkStateChange);
// browsers without Fetch Metadata send none of these headers.
func foreignFetch(r *http.Request) string {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return ""
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "none", "same-origin":
		return ""
	}
	if r.Header.Get("Sec-Fetch-Mode") == "navigate" {
		switch r.Header.Get("Sec-Fetch-Dest") {
		case "", "document":
			return ""
		}
	}
	return "another site made this request (only links to the dashboard are followed)"
}

// csp is the Content-Security-Policy of every dashboard response: only
// our own scripts, styles and images (no inline code, no eval), requests
// only to us, forms only to us, never framed.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: under no-referrer browsers send
	// "Origin: null" on form posts, which the Origin check must refuse.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
	h.Set("Cache-Control", "no-store")
}

// staticFiles serves the embedded assets; they may be cached briefly
// (they change only with the binary). A directory is no page: no
// listing of what is embedded.
func (u *UI) staticFiles() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			u.errorPage(w, r, http.StatusNotFound, "There is no such dashboard page.")
			return
		}
		w.Header().Set("Cache-Control", "private, max-age=300")
		u.static.ServeHTTP(w, r)
	})
}

// request is one authenticated dashboard request.
type request struct {
	w    http.ResponseWriter
	r    *http.Request
	ctx  context.Context
	sess *session
}

func (q *request) actor() Actor {
	return Actor{Name: q.sess.Actor, Remote: clientIP(q.r), Session: q.sess.ID}
}

// htmx reports whether htmx sent the request (it then wants a fragment).
func (q *request) htmx() bool { return q.r.Header.Get("HX-Request") == "true" }

// authed admits requests with a valid session; a state-changing one must
// also pass the Origin and CSRF checks. Without a session, pages redirect
// to the login page (htmx requests get HX-Redirect) and actions get 401.
func (u *UI) authed(h func(*request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, err := u.session(r)
		if err != nil {
			if r.Method != http.MethodGet {
				u.errorPage(w, r, http.StatusUnauthorized, "Your session has ended; log in again.")
				return
			}
			login := Prefix + "/login"
			if r.Header.Get("HX-Request") == "true" {
				w.Header().Set("HX-Redirect", login)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, login, http.StatusSeeOther)
			return
		}
		q := &request{w: w, r: r, ctx: r.Context(), sess: sess}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
			// Read the whole form now: a body over the bound or not a form
			// is refused here, not read later as empty fields.
			if err := r.ParseForm(); err != nil {
				var tooBig *http.MaxBytesError
				if errors.As(err, &tooBig) {
					u.errorPage(w, r, http.StatusRequestEntityTooLarge, "The form is too large.")
					return
				}
				u.errorPage(w, r, http.StatusBadRequest, "The form could not be read.")
				return
			}
			if msg := u.checkStateChange(r, sess.CSRF); msg != "" {
				u.refuse(q, msg)
				return
			}
		}
		h(q)
	})
}

// session returns the request's live session: the cookie opens, has not
// expired or logged out, and its credential still stands (the admin token
// was not replaced; the OIDC user still exists with the admin role).
func (u *UI) session(r *http.Request) (*session, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, err
	}
	now := u.now()
	s, err := u.seal.open(sessionCookie, "session", c.Value, now)
	if err != nil {
		return nil, err
	}
	if u.ended.has(s.ID) {
		return nil, errSessionExpired
	}
	if st := u.cfg.Sessions; st != nil {
		ended, err := st.SessionEnded(r.Context(), s.ID)
		if err != nil {
			return nil, err
		}
		if ended {
			u.ended.add(s.ID, s.Expires, now)
			return nil, errSessionExpired
		}
	}
	switch s.Method {
	case MethodAdminToken:
		if !equalSecret(string(s.Binding), string(u.cfg.Admin.AdminTokenBinding())) {
			return nil, errSessionExpired
		}
	case MethodOIDC:
		o := u.cfg.OIDC
		if o == nil {
			return nil, errSessionExpired
		}
		name, ok, err := o.Users.DashboardUser(r.Context(), s.UserID, o.AdminRole)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, errSessionExpired
		}
		s.Actor = "user:" + name
	default:
		return nil, errBadCookie
	}
	return s, nil
}

// checkStateChange returns why a state-changing request must be refused,
// or "". The Origin header (or, from browsers that omit it, Sec-Fetch-Site)
// must name this server, and the request must carry the CSRF token, in
// the X-CSRF-Token header (htmx) or the csrf_token form field.
func (u *UI) checkStateChange(r *http.Request, want string) string {
	if msg := checkOrigin(r); msg != "" {
		return msg
	}
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf_token")
	}
	if !equalSecret(got, want) {
		return "the request carried no valid CSRF token"
	}
	return ""
}

// checkOrigin refuses cross-site requests: a browser names the page that
// made the request in Origin; it must be this server as the browser
// addressed it.
func checkOrigin(r *http.Request) string {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Scheme != "https" || !strings.EqualFold(u.Host, r.Host) || u.Path != "" {
			return "the request came from another site (Origin " + clip(o, 96) + ")"
		}
		return ""
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin":
		return ""
	case "":
		return "the request named no Origin"
	default:
		return "the request came from another site"
	}
}

// refuse answers a forged or stale state-changing request with 403 and
// audits it (bounded, so a flood is not a disk-write flood).
func (u *UI) refuse(q *request, why string) {
	if ok, _ := u.refusals.allow("", u.now()); ok {
		ev := audit.Event{Kind: KindRefused, Actor: q.sess.Actor, Subject: q.r.Method + " " + q.r.URL.Path, Outcome: audit.Denied,
			Details: map[string]string{"reason": why, "remote": clientIP(q.r), "session": q.sess.ID}}
		if err := u.cfg.Audit.Append(q.ctx, ev); err != nil {
			u.log.Error("ui: audit log unavailable", "err", err)
		}
	}
	u.errorPage(q.w, q.r, http.StatusForbidden, "Refused: "+why+". Reload the page and try again.")
}

// newSession issues a session cookie for actor.
func (u *UI) newSession(w http.ResponseWriter, s *session) error {
	now := u.now()
	s.Purpose, s.ID, s.CSRF = "session", randomToken(12), randomToken(32)
	s.IssuedAt, s.Expires = now.Unix(), now.Add(u.ttl).Unix()
	v, err := u.seal.seal(sessionCookie, s)
	if err != nil {
		return err
	}
	setCookie(w, sessionCookie, v, time.Unix(s.Expires, 0), now, http.SameSiteStrictMode)
	return nil
}

func (u *UI) audit(ctx context.Context, ev audit.Event) error {
	if err := u.cfg.Audit.Append(context.WithoutCancel(ctx), ev); err != nil {
		u.log.Error("ui: audit log unavailable", "kind", ev.Kind, "err", err)
		return err
	}
	return nil
}
