package ui

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/moatless/moatless/internal/audit"
)

// loginData is the login page's data.
type loginData struct {
	Error string
	CSRF  string
	OIDC  bool
}

// loginPage shows the login form. It sets a fresh login CSRF cookie
// (double submit: the form posts the same value back), so no other site
// can log a browser in (login CSRF).
func (u *UI) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, err := u.session(r); err == nil {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
		return
	}
	u.renderLogin(w, r, http.StatusOK, loginErrors[r.URL.Query().Get("error")])
}

// loginErrors are the messages the OIDC callback may send back to the
// login page by code; nothing else from the query is shown.
var loginErrors = map[string]string{
	"oidc_denied":  "The token service did not sign you in.",
	"oidc_role":    "Your account does not hold the dashboard's admin role.",
	"oidc_failed":  "Signing in through the token service failed; try again.",
	"oidc_expired": "The sign-in took too long; try again.",
}

// renderLogin shows the login form with msg, a message of ours (never
// text from the request).
func (u *UI) renderLogin(w http.ResponseWriter, r *http.Request, status int, msg string) {
	now := u.now()
	tok := randomToken(32)
	v, err := u.seal.seal(loginCSRFCookie, &session{Purpose: "login", ID: tok, Expires: now.Add(oidcLoginTTL).Unix()})
	if err != nil {
		u.errorPage(w, r, http.StatusInternalServerError, "The server could not render the login page.")
		return
	}
	setCookie(w, loginCSRFCookie, v, now.Add(oidcLoginTTL), now, http.SameSiteStrictMode)
	u.render(w, r, status, "login", &page{Title: "Log in", Data: loginData{Error: msg, CSRF: tok, OIDC: u.cfg.OIDC != nil}})
}

// loginToken exchanges the admin token for a session. Checks, in order:
// Origin, rate limit, the login CSRF cookie, the token (constant time).
// Every attempt that gets that far is audited. The Origin comes first: a
// form another site posts from the admin's browser must not use up the
// admin's address's attempts (refusing it costs nothing and is not
// audited).
func (u *UI) loginToken(w http.ResponseWriter, r *http.Request) {
	if msg := checkOrigin(r); msg != "" {
		u.renderLogin(w, r, http.StatusForbidden, "Refused: "+msg+".")
		return
	}
	ip := clientIP(r)
	if ok, retry := u.limit.allow(ip, u.now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
		u.renderLogin(w, r, http.StatusTooManyRequests, "Too many login attempts; wait a little and try again.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		u.renderLogin(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	c, err := r.Cookie(loginCSRFCookie)
	var ls *session
	if err == nil {
		ls, err = u.seal.open(loginCSRFCookie, "login", c.Value, u.now())
	}
	if err != nil || !equalSecret(r.PostForm.Get("csrf_token"), ls.ID) {
		u.renderLogin(w, r, http.StatusForbidden, "The login form expired; try again.")
		return
	}
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	ev := audit.Event{Kind: KindLogin, Actor: "anonymous", Subject: "dashboard", Details: map[string]string{"method": MethodAdminToken, "remote": ip}}
	if tok == "" || len(tok) > 512 || !u.cfg.Admin.CheckAdminToken(tok) {
		ev.Outcome, ev.Details["reason"] = audit.Denied, "wrong admin token"
		u.auditDenied(r.Context(), ev)
		u.renderLogin(w, r, http.StatusUnauthorized, "That is not the admin token.")
		return
	}
	s := &session{Actor: MethodAdminToken, Method: MethodAdminToken, Binding: u.cfg.Admin.AdminTokenBinding()}
	if err := u.startSession(w, r, s, ev); err != nil {
		return
	}
	http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
}

// startSession audits a successful login and sets the session cookie. A
// login that cannot be audited is refused.
func (u *UI) startSession(w http.ResponseWriter, r *http.Request, s *session, ev audit.Event) error {
	if err := u.newSession(w, s); err != nil {
		u.errorPage(w, r, http.StatusInternalServerError, "The server could not start a session.")
		return err
	}
	ev.Actor, ev.Outcome, ev.Details["session"] = s.Actor, audit.Success, s.ID
	if err := u.audit(r.Context(), ev); err != nil {
		w.Header().Del("Set-Cookie")
		clearCookie(w, sessionCookie)
		u.errorPage(w, r, http.StatusInternalServerError, "The audit log is unavailable, so no one can log in now.")
		return err
	}
	clearCookie(w, loginCSRFCookie)
	return nil
}

// auditDenied audits a refused login within deniedBudget: logins are
// limited per address only, so refusals from many addresses are bounded
// here. A record written after some were not says how many
// (not_audited_before); the server log says when a run of them begins.
func (u *UI) auditDenied(ctx context.Context, ev audit.Event) {
	ok, n := u.deniedBudget.take(u.now())
	if !ok {
		if n == 1 {
			u.log.Warn("ui: refused logins over the audit bound: the next ui.login refusal recorded counts them (not_audited_before)",
				"remote", ev.Details["remote"], "reason", ev.Details["reason"])
		}
		return
	}
	if n > 0 {
		ev.Details["not_audited_before"] = strconv.Itoa(n)
	}
	u.audit(ctx, ev)
}

// logout ends the session: on every replica at once (the session ID is
// stored, Config.Sessions, and remembered until it would have expired)
// and in the browser. When it cannot be stored the session stays as it
// was, cookie included, and the user is told to try again: a logout that
// seemed to work on one replica and not on the others would be worse.
func (u *UI) logout(q *request) {
	if st := u.cfg.Sessions; st != nil {
		if err := st.EndSession(q.ctx, q.sess.ID, time.Unix(q.sess.Expires, 0)); err != nil {
			u.log.Error("end dashboard session", "session", q.sess.ID, "err", err)
			u.errorPage(q.w, q.r, http.StatusServiceUnavailable, "The server could not end the session; try again.")
			return
		}
	}
	u.ended.add(q.sess.ID, q.sess.Expires, u.now())
	clearCookie(q.w, sessionCookie)
	u.audit(q.ctx, audit.Event{Kind: KindLogout, Actor: q.sess.Actor, Subject: "dashboard", Outcome: audit.Success,
		Details: map[string]string{"session": q.sess.ID, "remote": clientIP(q.r)}})
	if q.htmx() {
		q.w.Header().Set("HX-Redirect", Prefix+"/login")
		q.w.WriteHeader(http.StatusNoContent)
		return
	}
	http.Redirect(q.w, q.r, Prefix+"/login", http.StatusSeeOther)
}

// redirectURI is where the token service sends the browser back: the
// issuer's origin (the listener the dashboard is served on), /ui/oidc/callback.
func (u *UI) redirectURI() string {
	iu, err := url.Parse(u.cfg.OIDC.Provider.Issuer())
	if err != nil {
		return ""
	}
	return iu.Scheme + "://" + iu.Host + Prefix + "/oidc/callback"
}

// RedirectURI is the redirect URI to register for the dashboard's OIDC
// client ("" without OIDC).
func (u *UI) RedirectURI() string {
	if u.cfg.OIDC == nil {
		return ""
	}
	return u.redirectURI()
}

// oidcStart begins an authorization code flow with PKCE (S256): state,
// nonce and verifier go into a sealed short-lived cookie, the browser to
// the token service's authorization endpoint.
func (u *UI) oidcStart(w http.ResponseWriter, r *http.Request) {
	o := u.cfg.OIDC
	if o == nil {
		u.errorPage(w, r, http.StatusNotFound, "Login through the token service is not configured (dashboard.oidc_client_id).")
		return
	}
	if ok, retry := u.limit.allow(clientIP(r), u.now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
		u.renderLogin(w, r, http.StatusTooManyRequests, "Too many login attempts; wait a little and try again.")
		return
	}
	now := u.now()
	st := &session{Purpose: "oidc", ID: randomToken(12), State: randomToken(32), Nonce: randomToken(32), Verifier: randomToken(48),
		Expires: now.Add(oidcLoginTTL).Unix()}
	v, err := u.seal.seal(oidcStateCookie, st)
	if err != nil {
		u.errorPage(w, r, http.StatusInternalServerError, "The server could not start the login.")
		return
	}
	// Lax: the browser comes back from the token service by a top-level
	// redirect, which may count as cross-site when the issuer is named
	// differently from the dashboard.
	setCookie(w, oidcStateCookie, v, now.Add(oidcLoginTTL), now, http.SameSiteLaxMode)
	sum := sha256.Sum256([]byte(st.Verifier))
	q := url.Values{
		"response_type": {"code"}, "client_id": {o.ClientID}, "redirect_uri": {u.redirectURI()}, "scope": {"openid"},
		"state": {st.State}, "nonce": {st.Nonce}, "code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])},
		"code_challenge_method": {"S256"},
	}
	http.Redirect(w, r, strings.TrimSuffix(o.Provider.Issuer(), "/")+"/oauth2/authorize?"+q.Encode(), http.StatusSeeOther)
}

// idClaims are the ID token claims the dashboard checks.
type idClaims struct {
	jwt.Claims
	Nonce             string   `json:"nonce"`
	AZP               string   `json:"azp"`
	PreferredUsername string   `json:"preferred_username"`
	Roles             []string `json:"roles"`
}

// oidcCallback finishes the flow: the state must match the cookie's, the
// code is redeemed with the verifier at the token endpoint (in process),
// and the ID token must be signed by the token service for this client
// with our nonce and carry the admin role.
func (u *UI) oidcCallback(w http.ResponseWriter, r *http.Request) {
	o := u.cfg.OIDC
	if o == nil {
		u.errorPage(w, r, http.StatusNotFound, "Login through the token service is not configured.")
		return
	}
	// A login attempt like the admin token's form: whoever started one
	// flow knows its state and may replay its cookie until it expires,
	// each forged code costing a redemption and an audit record.
	if ok, retry := u.limit.allow(clientIP(r), u.now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
		u.renderLogin(w, r, http.StatusTooManyRequests, "Too many login attempts; wait a little and try again.")
		return
	}
	fail := func(code, reason string) {
		clearCookie(w, oidcStateCookie)
		if reason != "" {
			u.auditDenied(r.Context(), audit.Event{Kind: KindLogin, Actor: "anonymous", Subject: "dashboard", Outcome: audit.Denied,
				Details: map[string]string{"method": MethodOIDC, "remote": clientIP(r), "reason": reason}})
		}
		http.Redirect(w, r, Prefix+"/login?error="+code, http.StatusSeeOther)
	}
	c, err := r.Cookie(oidcStateCookie)
	var st *session
	if err == nil {
		st, err = u.seal.open(oidcStateCookie, "oidc", c.Value, u.now())
	}
	if err != nil {
		fail("oidc_expired", "")
		return
	}
	q := r.URL.Query()
	if !equalSecret(q.Get("state"), st.State) {
		fail("oidc_failed", "state mismatch")
		return
	}
	if iss := q.Get("iss"); iss != "" && iss != o.Provider.Issuer() { // RFC 9207
		fail("oidc_failed", "issuer mismatch")
		return
	}
	if e := q.Get("error"); e != "" {
		fail("oidc_denied", "token service: "+clip(e, 64))
		return
	}
	code := q.Get("code")
	if code == "" || len(code) > 512 {
		fail("oidc_failed", "no code")
		return
	}
	idt, err := u.redeem(r, code, st.Verifier)
	if err != nil {
		u.log.Warn("ui: OIDC code redemption failed", "err", err)
		fail("oidc_failed", "code redemption failed")
		return
	}
	claims, err := u.verifyIDToken(r.Context(), idt, st.Nonce)
	if err != nil {
		u.log.Warn("ui: ID token refused", "err", err)
		fail("oidc_failed", "ID token refused")
		return
	}
	if !slices.Contains(claims.Roles, o.AdminRole) {
		fail("oidc_role", "user "+clip(claims.PreferredUsername, 128)+" lacks role "+o.AdminRole)
		return
	}
	clearCookie(w, oidcStateCookie)
	s := &session{Actor: "user:" + claims.PreferredUsername, Method: MethodOIDC, UserID: claims.Subject}
	ev := audit.Event{Kind: KindLogin, Subject: "dashboard", Details: map[string]string{"method": MethodOIDC, "remote": clientIP(r), "user_id": claims.Subject}}
	if err := u.startSession(w, r, s, ev); err != nil {
		return
	}
	http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
}

// redeem posts the code to the token service's token endpoint, in process
// (the request never leaves the server), as the public client it is.
func (u *UI) redeem(r *http.Request, code, verifier string) (string, error) {
	o := u.cfg.OIDC
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {u.redirectURI()},
		"code_verifier": {verifier}, "client_id": {o.ClientID}}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, strings.TrimSuffix(o.Provider.Issuer(), "/")+"/oauth2/token",
		strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = r.RemoteAddr
	rec := &recorder{header: http.Header{}}
	o.Provider.Handler().ServeHTTP(rec, req)
	var resp struct {
		IDToken string `json:"id_token"`
		Error   string `json:"error"`
		Desc    string `json:"error_description"`
	}
	if err := json.Unmarshal(rec.body.Bytes(), &resp); err != nil {
		return "", fmt.Errorf("token endpoint answered %d with no JSON", rec.status)
	}
	if rec.status != http.StatusOK {
		return "", fmt.Errorf("token endpoint: %s: %s", resp.Error, resp.Desc)
	}
	if resp.IDToken == "" {
		return "", errors.New("token endpoint returned no ID token (is openid among the client's scopes?)")
	}
	return resp.IDToken, nil
}

// idTokenAlgs are the algorithms the token service signs with.
var idTokenAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA}

// verifyIDToken checks an ID token: one of the token service's published
// keys signed it, with an allowed algorithm; iss is the issuer, aud and
// azp our client, the nonce ours, and it has not expired.
func (u *UI) verifyIDToken(ctx context.Context, raw, nonce string) (*idClaims, error) {
	o := u.cfg.OIDC
	if len(raw) > 16<<10 {
		return nil, errors.New("ID token too large")
	}
	tok, err := jwt.ParseSigned(raw, idTokenAlgs)
	if err != nil || len(tok.Headers) != 1 {
		return nil, fmt.Errorf("parse ID token: %v", err)
	}
	set, err := o.Provider.JWKS(ctx)
	if err != nil {
		return nil, err
	}
	keys := set.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		return nil, fmt.Errorf("ID token signed with unknown key %q", tok.Headers[0].KeyID)
	}
	var c idClaims
	if err := tok.Claims(keys[0].Public(), &c); err != nil {
		return nil, fmt.Errorf("ID token signature: %w", err)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: o.Provider.Issuer(), AnyAudience: jwt.Audience{o.ClientID}, Time: u.now()}, time.Minute); err != nil {
		return nil, fmt.Errorf("ID token claims: %w", err)
	}
	if c.AZP != "" && c.AZP != o.ClientID {
		return nil, errors.New("ID token azp names another client")
	}
	if !equalSecret(c.Nonce, nonce) {
		return nil, errors.New("ID token nonce mismatch")
	}
	if c.Subject == "" || c.PreferredUsername == "" {
		return nil, errors.New("ID token names no user")
	}
	return &c, nil
}

// recorder holds an in-process handler's answer.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (h *recorder) Header() http.Header { return h.header }

func (h *recorder) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}

func (h *recorder) Write(b []byte) (int, error) {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	if h.body.Len() > 64<<10 {
		return 0, errors.New("answer too large")
	}
	return h.body.Write(b)
}

// clip bounds a string that came from outside before it is logged.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
