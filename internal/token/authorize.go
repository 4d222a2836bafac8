package token

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// authzRequest is a validated authorization request (RFC 6749 §4.1.1,
// RFC 7636 §4.3, OIDC Core §3.1.2.1).
type authzRequest struct {
	ClientID    string   `json:"c"`
	RedirectURI string   `json:"r"`
	Scope       []string `json:"s,omitempty"`
	State       string   `json:"st,omitempty"`
	Nonce       string   `json:"n,omitempty"`
	Challenge   string   `json:"ch"`
	Audiences   []string `json:"a,omitempty"`
}

// loginTx is the login flow's state between pages. It travels sealed
// (AES-256-GCM under a KEK-derived key) in a hidden form field, so any
// replica can continue it and nobody can read or alter it. CSRF is the
// value of the login cookie it must arrive with.
type loginTx struct {
	// ID makes the transaction single use: finishing it records the ID,
	// so a replayed form cannot mint a second code.
	ID       string       `json:"i"`
	Req      authzRequest `json:"q"`
	Stage    string       `json:"st"` // password, totp, enroll, finish
	UserID   string       `json:"u,omitempty"`
	CSRF     string       `json:"x"`
	Exp      int64        `json:"e"`
	AMR      []string     `json:"m,omitempty"`
	AuthTime int64        `json:"t,omitempty"`
	// Epoch is the user's SessionsEpoch when the password was checked: a
	// password or MFA reset (or a deletion) since then moved it, and the
	// login cannot finish.
	Epoch int64 `json:"ep,omitempty"`
	// EnrollKey is the TOTP key being enrolled (sealed for the user).
	EnrollKey []byte `json:"k,omitempty"`
}

const csrfCookie = "__Host-moatless-login"

// loginTxNamespace keeps finished login transaction IDs in the store's
// single-use table apart from client assertion jtis (client IDs cannot
// contain a colon).
const loginTxNamespace = "moatless:login"

// authzError is a failure that must not redirect: the client or
// redirect URI cannot be trusted (RFC 6749 §4.1.2.1).
type authzError struct{ msg string }

// parseAuthorize checks an authorization request's shape and its client.
// It returns either a page error (no redirect), or an OAuth error to send
// to the verified redirect URI, or the request.
func (s *Service) parseAuthorize(ctx context.Context, p params) (*authzRequest, *authzError, *oauthError) {
	req := &authzRequest{ClientID: p.get("client_id"), RedirectURI: p.get("redirect_uri"), State: p.get("state"), Nonce: p.get("nonce")}
	if req.ClientID == "" || len(req.ClientID) > maxClientIDLen {
		return nil, &authzError{"the request names no client (client_id)"}, nil
	}
	c, err := s.cfg.Store.Client(ctx, req.ClientID)
	if errors.Is(err, ErrNotFound) {
		return nil, &authzError{"unknown client"}, nil
	} else if err != nil {
		return nil, &authzError{"the server could not look up the client; try again"}, nil
	}
	// Exact string match (OAuth 2.0 Security BCP §4.1.3): no prefixes,
	// no wildcards, and the parameter is required even with one URI. The
	// one leeway is the port of a loopback IP redirect (redirectAllowed).
	if req.RedirectURI == "" || !redirectAllowed(c.RedirectURIs, req.RedirectURI) {
		return nil, &authzError{"redirect_uri is missing or not registered for this client"}, nil
	}
	if len(req.State) > 1024 || len(req.Nonce) > 512 {
		return req, nil, oerr(errInvalidRequest, "state or nonce too long")
	}
	if p.get("request") != "" || p.get("request_uri") != "" {
		return req, nil, oerr("request_not_supported", "request objects are not supported")
	}
	if rt := p.get("response_type"); rt != "code" {
		return req, nil, oerr(errUnsupportedResponse, "response_type must be code")
	}
	if rm := p.get("response_mode"); rm != "" && rm != "query" {
		return req, nil, oerr(errInvalidRequest, "response_mode must be query")
	}
	if !c.AllowsGrant(GrantAuthorizationCode) {
		return req, nil, oerr(errUnauthorizedClient, "this client may not use the authorization code flow")
	}
	// PKCE is required for every client, and only S256: plain would let
	// anyone who sees the request redeem the code.
	req.Challenge = p.get("code_challenge")
	switch m := p.get("code_challenge_method"); {
	case req.Challenge == "":
		return req, nil, oerr(errInvalidRequest, "code_challenge is required (PKCE with S256)")
	case m != "S256":
		return req, nil, oerr(errInvalidRequest, "code_challenge_method must be S256; plain is not accepted")
	}
	if b, err := base64.RawURLEncoding.DecodeString(req.Challenge); err != nil || len(b) != sha256.Size {
		return req, nil, oerr(errInvalidRequest, "code_challenge must be the base64url SHA-256 of the verifier (43 characters)")
	}
	if prompt := p.get("prompt"); strings.Contains(prompt, "none") {
		return req, nil, oerr("login_required", "this server keeps no login sessions: prompt=none cannot succeed")
	}
	scope, oe := resolveScope(p.get("scope"), c.Scopes)
	if oe != nil {
		return req, nil, oe
	}
	req.Scope = scope
	if len(p.all("audience")) > 0 || len(p.all("resource")) > 0 {
		aud, oe := resolveAudience(p, c)
		if oe != nil {
			return req, nil, oe
		}
		req.Audiences = aud
	}
	return req, nil, nil
}

// redirectAllowed reports whether requested is one of a client's
// registered redirect URIs: the same string (OAuth 2.0 Security BCP
// §4.1.3: no prefixes, no wildcards, no normalisation), or, for a
// registered http URI on a loopback IP literal (127.0.0.1 or [::1]), the
// same string with another port or none, as RFC 8252 §7.3 requires: a
// native app listens on whatever port the OS gives it at the time of the
// request. "localhost" gets no such leeway (RFC 8252 §8.3: a name may
// resolve elsewhere, and a browser may not send it to loopback), nor does
// any other part of the URI. The comparison is on the strings, so no URI
// parser can read the request differently from the browser that follows
// the redirect.
func redirectAllowed(registered []string, requested string) bool {
	if contains(registered, requested) {
		return true
	}
	want, ok := loopbackWithoutPort(requested)
	if !ok {
		return false
	}
	for _, r := range registered {
		if got, ok := loopbackWithoutPort(r); ok && got == want {
			return true
		}
	}
	return false
}

// loopbackWithoutPort returns raw without its port when raw is
// http://127.0.0.1 or http://[::1], with a port of 1 to 65535 in canonical
// decimal or none, followed by nothing or a path or query; ok is false for
// anything else (another host, userinfo, a malformed port).
func loopbackWithoutPort(raw string) (string, bool) {
	for _, host := range []string{"http://127.0.0.1", "http://[::1]"} {
		rest, ok := strings.CutPrefix(raw, host)
		if !ok {
			continue
		}
		if port, ok := strings.CutPrefix(rest, ":"); ok {
			end := strings.IndexAny(port, "/?#")
			if end < 0 {
				end = len(port)
			}
			n, err := strconv.Atoi(port[:end])
			if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port[:end] {
				return "", false
			}
			rest = port[end:]
		}
		if rest != "" && rest[0] != '/' && rest[0] != '?' {
			return "", false
		}
		return host + rest, true
	}
	return "", false
}

// handleAuthorize is the authorization endpoint. It validates the request
// and shows the login page.
func (s *Service) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	var (
		p   params
		err error
	)
	switch r.Method {
	case http.MethodGet:
		if len(r.URL.RawQuery) > MaxFormSize {
			s.errorPage(w, http.StatusRequestURITooLong, "request too long")
			return
		}
		p, err = parseParams(r.URL.RawQuery)
	case http.MethodPost:
		var oe *oauthError
		if p, oe = readFormAllowQuery(w, r); oe != nil {
			s.errorPage(w, http.StatusBadRequest, oe.Description)
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		s.errorPage(w, http.StatusMethodNotAllowed, "use GET or POST")
		return
	}
	if err != nil {
		s.errorPage(w, http.StatusBadRequest, "malformed authorization request: "+err.Error())
		return
	}
	req, pageErr, oe := s.parseAuthorize(r.Context(), p)
	if pageErr != nil {
		s.audit(r.Context(), AuditEvent{Type: "oauth.authorize.failed", Outcome: "failure", ClientID: p.get("client_id"), Reason: "bad_client_or_redirect_uri", Remote: r.RemoteAddr})
		s.errorPage(w, http.StatusBadRequest, pageErr.msg)
		return
	}
	if oe != nil {
		s.audit(r.Context(), AuditEvent{Type: "oauth.authorize.failed", Outcome: "failure", ClientID: req.ClientID, Reason: oe.Code, Remote: r.RemoteAddr})
		s.redirectError(w, r, req, oe)
		return
	}
	csrf := base64.RawURLEncoding.EncodeToString(s.random(32))
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: csrf, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode, MaxAge: int(loginTxTTL / time.Second)})
	tx := &loginTx{ID: s.newID(), Req: *req, Stage: "password", CSRF: csrf}
	s.renderLogin(w, http.StatusOK, tx, "", nil)
}

// readFormAllowQuery reads a POSTed authorization request (OIDC Core
// §3.1.2.1 allows POST) with the same strictness as readForm.
func readFormAllowQuery(w http.ResponseWriter, r *http.Request) (params, *oauthError) {
	if r.URL.RawQuery != "" {
		return nil, oerr(errInvalidRequest, "send the parameters in the body or the query, not both")
	}
	return readForm(w, r)
}

func (s *Service) redirectError(w http.ResponseWriter, r *http.Request, req *authzRequest, oe *oauthError) {
	q := url.Values{"error": {oe.Code}, "error_description": {oe.Description}, "iss": {s.cfg.Issuer}}
	if req.State != "" {
		q.Set("state", req.State)
	}
	http.Redirect(w, r, withQuery(req.RedirectURI, q), http.StatusSeeOther)
}

func withQuery(u string, q url.Values) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + q.Encode()
}

// sealTx and openTx protect the login state.
func (s *Service) sealTx(tx *loginTx) (string, error) {
	tx.Exp = s.now().Add(loginTxTTL).Unix()
	b, err := json.Marshal(tx)
	if err != nil {
		return "", err
	}
	out, err := seal(s.txKey, b, []byte("moatless login tx v1"), s.cfg.Rand)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(out), nil
}

var errTxInvalid = errors.New("the login form expired or was altered; start again from the application")

func (s *Service) openTx(r *http.Request, sealed string) (*loginTx, error) {
	if len(sealed) > 8<<10 {
		return nil, errTxInvalid
	}
	b, err := base64.RawURLEncoding.DecodeString(sealed)
	if err != nil {
		return nil, errTxInvalid
	}
	pt, err := unseal(s.txKey, b, []byte("moatless login tx v1"))
	if err != nil {
		return nil, errTxInvalid
	}
	var tx loginTx
	if err := json.Unmarshal(pt, &tx); err != nil {
		return nil, errTxInvalid
	}
	if s.now().Unix() > tx.Exp {
		return nil, errTxInvalid
	}
	// CSRF: the form must come with the cookie set when the page was
	// served; another site can make a browser post the form but cannot
	// read or set the cookie.
	ck, err := r.Cookie(csrfCookie)
	if err != nil || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(tx.CSRF)) != 1 {
		return nil, errors.New("the login cookie is missing or does not match this form; enable cookies and start again")
	}
	return &tx, nil
}

// clientIP is the throttling key for the caller's address (the server
// faces clients directly; X-Forwarded-For is not trusted).
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// throttleKey and ipKey hash a user name or client address, so the
// throttle table holds no raw input.
func (s *Service) throttleKey(name string) string {
	return s.lookupKey("user:" + strings.ToLower(name))
}

func (s *Service) ipKey(ip string) string { return s.lookupKey("ip:" + ip) }

func (s *Service) lookupKey(v string) string {
	m := hmac.New(sha256.New, s.hashKey)
	m.Write([]byte(v))
	return hex.EncodeToString(m.Sum(nil))
}

// countFailure records a failed attempt; a store failure is logged (the
// attempt has failed anyway).
func (s *Service) countFailure(ctx context.Context, userKey, ipKey string) {
	if err := s.loginFailed(ctx, userKey, ipKey); err != nil {
		s.log.Error("token: login throttle: record failure", "err", err)
	}
}

// handleLogin processes the login page's forms: password, then TOTP or
// recovery code (or TOTP enrolment when the user must have MFA and has
// none), then issues the code and redirects to the client.
func (s *Service) handleLogin(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, oe := readForm(w, r)
	if oe != nil {
		s.errorPage(w, http.StatusBadRequest, oe.Description)
		return
	}
	tx, err := s.openTx(r, p.get("tx"))
	if err != nil {
		s.errorPage(w, http.StatusBadRequest, err.Error())
		return
	}
	ip := s.ipKey(clientIP(r))
	switch tx.Stage {
	case "password":
		s.loginPassword(ctx, w, r, tx, p, ip)
	case "totp":
		s.loginTOTP(ctx, w, r, tx, p, ip)
	case "enroll":
		s.loginEnroll(ctx, w, r, tx, p, ip)
	case "finish":
		s.finishLogin(ctx, w, r, tx)
	default:
		s.errorPage(w, http.StatusBadRequest, errTxInvalid.Error())
	}
}

// throttled answers for a user or address that must wait (429) or when
// the throttle cannot be read (500: without it, refuse rather than allow
// unlimited guessing), and reports whether it did.
func (s *Service) throttled(ctx context.Context, w http.ResponseWriter, tx *loginTx, userKey, ip string) bool {
	d, err := s.loginWait(ctx, userKey, ip)
	if err != nil {
		s.log.Error("token: login throttle unavailable; refusing the attempt", "err", err)
		s.renderLogin(w, http.StatusInternalServerError, tx, "The server could not check your login. Try again.", nil)
		return true
	}
	if d > 0 {
		s.metrics.logins.WithLabelValues("throttled").Inc()
		secs := int(d.Round(time.Second) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
		s.renderLogin(w, http.StatusTooManyRequests, tx, fmt.Sprintf("Too many failed attempts. Try again in %d seconds.", max(secs, 1)), nil)
		return true
	}
	return false
}

func (s *Service) loginPassword(ctx context.Context, w http.ResponseWriter, r *http.Request, tx *loginTx, p params, ip string) {
	name, pw := p.get("username"), p.get("password")
	if len(name) > 256 || len(pw) > MaxPasswordLen {
		s.renderLogin(w, http.StatusBadRequest, tx, "User name or password too long.", nil)
		return
	}
	key := s.throttleKey(name)
	if s.throttled(ctx, w, tx, key, ip) {
		s.audit(ctx, AuditEvent{Type: "oauth.login.failed", Outcome: "failure", ClientID: tx.Req.ClientID, Reason: "throttled", Remote: r.RemoteAddr, Details: map[string]string{"username": name}})
		return
	}
	u, err := s.cfg.Store.User(ctx, name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		s.log.Error("token: login: user lookup", "err", err)
		s.renderLogin(w, http.StatusInternalServerError, tx, "The server could not check your login. Try again.", nil)
		return
	}
	// The same work whether or not the user exists.
	hash := s.dummyHash
	if u != nil {
		hash = u.PasswordHash
	}
	if err := s.acquireHash(ctx); err != nil {
		w.Header().Set("Retry-After", "1")
		s.renderLogin(w, http.StatusServiceUnavailable, tx, "The server is busy. Try again in a moment.", nil)
		return
	}
	ok, herr := checkPassword(hash, pw)
	s.releaseHash()
	if u == nil || !ok || herr != nil || name == "" {
		s.countFailure(ctx, key, ip)
		s.metrics.logins.WithLabelValues("bad_credentials").Inc()
		s.audit(ctx, AuditEvent{Type: "oauth.login.failed", Outcome: "failure", ClientID: tx.Req.ClientID, Reason: "bad_credentials", Remote: r.RemoteAddr, Details: map[string]string{"username": name}})
		s.renderLogin(w, http.StatusUnauthorized, tx, "Wrong user name or password.", nil)
		return
	}
	next := *tx
	next.UserID, next.AMR, next.AuthTime, next.Epoch = u.ID, []string{"pwd"}, s.now().Unix(), u.SessionsEpoch
	switch {
	case u.TOTPEnabled:
		next.Stage = "totp"
		s.renderLogin(w, http.StatusOK, &next, "", nil)
	case u.RequireMFA:
		key, sealed, err := s.newTOTPKey(u)
		if err != nil {
			s.log.Error("token: login: totp enrolment", "err", err)
			s.renderLogin(w, http.StatusInternalServerError, tx, "The server could not start MFA enrolment. Try again.", nil)
			return
		}
		next.Stage, next.EnrollKey = "enroll", sealed
		s.renderLogin(w, http.StatusOK, &next, "", &Enrollment{Secret: key.Secret(), URI: key.URL(), QRPNG: qrPNG(key)})
	default:
		s.finishLogin(ctx, w, r, &next)
	}
}

func (s *Service) loginTOTP(ctx context.Context, w http.ResponseWriter, r *http.Request, tx *loginTx, p params, ip string) {
	u, err := s.cfg.Store.UserByID(ctx, tx.UserID)
	if err != nil {
		s.errorPage(w, http.StatusBadRequest, errTxInvalid.Error())
		return
	}
	key := s.throttleKey(u.Name)
	if s.throttled(ctx, w, tx, key, ip) {
		return
	}
	ev := AuditEvent{Type: "oauth.mfa.verified", Outcome: "success", ClientID: tx.Req.ClientID, Subject: u.ID, Remote: r.RemoteAddr, Details: map[string]string{"method": "totp"}}
	// The code (its time step, or the recovery code) is used up in one
	// transaction with the record of its use.
	rc := p.get("recovery_code")
	err = s.atomically(ctx, func(ctx context.Context) error {
		if rc == "" {
			if err := s.checkTOTP(ctx, u, p.get("code")); err != nil {
				return err
			}
			return s.auditGrant(ctx, ev)
		}
		ev.Details["method"] = "recovery_code"
		err := s.cfg.Store.UseRecoveryCode(ctx, u.ID, s.recoveryHash(rc))
		if errors.Is(err, ErrNotFound) {
			return errTOTPInvalid
		} else if err != nil {
			return err
		}
		left, err := s.cfg.Store.RecoveryCodesLeft(ctx, u.ID)
		if err != nil {
			return err
		}
		ev.Details["recovery_codes_left"] = itoa(left)
		return s.auditGrant(ctx, ev)
	})
	if err == nil && rc != "" {
		s.metrics.mfa.WithLabelValues("recovery_used").Inc()
	}
	if err != nil {
		msg := "Wrong code."
		switch {
		case errors.Is(err, errTOTPReplay):
			msg, ev.Reason = "That code was used already. Wait for the next one.", "replay"
		case errors.Is(err, errTOTPInvalid):
			ev.Reason = "wrong_code"
		default:
			s.log.Error("token: login: mfa check", "err", err)
			s.renderLogin(w, http.StatusInternalServerError, tx, "The server could not check the code. Try again.", nil)
			return
		}
		s.countFailure(ctx, key, ip)
		s.metrics.logins.WithLabelValues("mfa_failed").Inc()
		ev.Type, ev.Outcome = "oauth.mfa.failed", "failure"
		delete(ev.Details, "recovery_codes_left")
		s.audit(ctx, ev)
		s.renderLogin(w, http.StatusUnauthorized, tx, msg, nil)
		return
	}
	tx.AMR = []string{"pwd", "otp", "mfa"}
	s.finishLogin(ctx, w, r, tx)
}

func (s *Service) loginEnroll(ctx context.Context, w http.ResponseWriter, r *http.Request, tx *loginTx, p params, ip string) {
	u, err := s.cfg.Store.UserByID(ctx, tx.UserID)
	if err != nil || tx.EnrollKey == nil {
		s.errorPage(w, http.StatusBadRequest, errTxInvalid.Error())
		return
	}
	if u.TOTPEnabled {
		// The form was served before the user enrolled (at another login
		// or by an admin). Enrolling now would replace the user's second
		// factor with a key chosen by whoever holds this form, on the
		// strength of the password alone.
		s.refuseEnrolled(ctx, w, r, tx, u)
		return
	}
	key := s.throttleKey(u.Name)
	if s.throttled(ctx, w, tx, key, ip) {
		return
	}
	secret, err := unseal(s.cfg.KEK, tx.EnrollKey, totpAAD(u.ID))
	if err != nil {
		s.errorPage(w, http.StatusBadRequest, errTxInvalid.Error())
		return
	}
	step, ok := matchTOTP(string(secret), strings.TrimSpace(p.get("code")), s.now())
	if !ok {
		s.countFailure(ctx, key, ip)
		s.metrics.mfa.WithLabelValues("failed").Inc()
		s.renderLogin(w, http.StatusUnauthorized, tx, "Wrong code. Check the time on your device and enter the current code.", &Enrollment{Secret: string(secret)})
		return
	}
	var codes []string
	err = s.atomically(ctx, func(ctx context.Context) error {
		if err := s.checkLoginCurrent(ctx, tx); err != nil {
			return err
		}
		var err error
		if codes, err = s.enableTOTP(ctx, u, tx.EnrollKey, step); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.mfa.enrolled", Outcome: "success", ClientID: tx.Req.ClientID, Subject: u.ID, Remote: r.RemoteAddr, Details: map[string]string{"via": "login"}})
	})
	if errors.Is(err, ErrTOTPEnabled) {
		// Another enrolment (a second form submitted at the same
		// instant, or an admin's) passed the check above too and won:
		// the store enables TOTP only if it is not enabled, so this one
		// changed nothing and is refused like a stale form.
		s.refuseEnrolled(ctx, w, r, tx, u)
		return
	}
	if errors.Is(err, errLoginStale) {
		s.refuseStale(ctx, w, r, tx)
		return
	}
	if err != nil {
		s.log.Error("token: login: enable totp", "err", err)
		s.renderLogin(w, http.StatusInternalServerError, tx, "The server could not save your MFA enrolment. Try again.", nil)
		return
	}
	s.metrics.mfa.WithLabelValues("enrolled").Inc()
	next := *tx
	next.Stage, next.EnrollKey, next.AMR = "finish", nil, []string{"pwd", "otp", "mfa"}
	s.renderLogin(w, http.StatusOK, &next, "", &Enrollment{RecoveryCodes: codes})
}

// refuseEnrolled answers an enrolment form for a user whose TOTP is
// enabled: 400, audited as oauth.mfa.failed/already_enrolled, nothing
// changed.
func (s *Service) refuseEnrolled(ctx context.Context, w http.ResponseWriter, r *http.Request, tx *loginTx, u *User) {
	s.audit(ctx, AuditEvent{Type: "oauth.mfa.failed", Outcome: "failure", ClientID: tx.Req.ClientID, Subject: u.ID, Remote: r.RemoteAddr, Reason: "already_enrolled",
		Details: map[string]string{"method": "enroll"}})
	s.errorPage(w, http.StatusBadRequest, "two-factor authentication is already set up for this account; start again from the application")
}

// enableTOTP stores a confirmed TOTP key (its confirming step counts as
// used) and fresh recovery codes, which it returns for showing once. The
// store does it only if the user's TOTP is not enabled yet, atomically:
// ErrTOTPEnabled when another enrolment got there first (a check of
// u.TOTPEnabled before calling is a read that a concurrent enrolment can
// overtake, so it is never what prevents replacing a factor).
func (s *Service) enableTOTP(ctx context.Context, u *User, sealed []byte, step int64) ([]string, error) {
	codes, hashes := s.newRecoveryCodes()
	now := s.now()
	if err := s.cfg.Store.EnableTOTP(ctx, u.ID, sealed, step, hashes, now); err != nil {
		return nil, err
	}
	u.TOTPSecret, u.TOTPEnabled, u.TOTPLastStep, u.UpdatedAt = sealed, true, step, now
	return codes, nil
}

// errLoginStale refuses a login whose user's sessions were ended since
// the password was checked.
var errLoginStale = errors.New("your account was changed while you were signing in (a password or second factor reset); start again from the application")

// checkLoginCurrent, inside an atomically block, holds the user
// (Store.LockUser) and refuses the login if their sessions were ended
// since its password check: a password or MFA reset ends the logins in
// progress too, not only the sessions they already opened. Holding the
// user makes a reset either come first (and be seen here) or wait and end
// what this login opens.
func (s *Service) checkLoginCurrent(ctx context.Context, tx *loginTx) error {
	u, err := s.cfg.Store.LockUser(ctx, tx.UserID)
	if errors.Is(err, ErrNotFound) {
		return errLoginStale
	} else if err != nil {
		return err
	}
	if u.SessionsEpoch != tx.Epoch {
		return errLoginStale
	}
	return nil
}

// refuseStale answers a login that checkLoginCurrent refused: 400,
// audited as oauth.login.failed/sessions_ended, nothing changed.
func (s *Service) refuseStale(ctx context.Context, w http.ResponseWriter, r *http.Request, tx *loginTx) {
	s.metrics.logins.WithLabelValues("stale").Inc()
	s.audit(ctx, AuditEvent{Type: "oauth.login.failed", Outcome: "failure", ClientID: tx.Req.ClientID, Subject: tx.UserID, Reason: "sessions_ended", Remote: r.RemoteAddr})
	s.errorPage(w, http.StatusBadRequest, errLoginStale.Error())
}

// finishLogin issues the authorization code and sends the browser back
// to the client (RFC 6749 §4.1.2, with iss per RFC 9207).
func (s *Service) finishLogin(ctx context.Context, w http.ResponseWriter, r *http.Request, tx *loginTx) {
	u, err := s.cfg.Store.UserByID(ctx, tx.UserID)
	if err != nil {
		s.errorPage(w, http.StatusBadRequest, errTxInvalid.Error())
		return
	}
	if (u.RequireMFA || u.TOTPEnabled) && !contains(tx.AMR, "otp") {
		// A user who needs MFA never reaches here without it.
		s.errorPage(w, http.StatusBadRequest, errTxInvalid.Error())
		return
	}
	now := s.now()
	g := &Grant{ID: s.newID(), ClientID: tx.Req.ClientID, UserID: u.ID, Scope: tx.Req.Scope, AuthTime: time.Unix(tx.AuthTime, 0),
		AMR: tx.AMR, Audiences: tx.Req.Audiences, CreatedAt: now, ExpiresAt: now.Add(s.cfg.RefreshFamilyTTL)}
	code := "mlc_" + base64.RawURLEncoding.EncodeToString(s.random(32))
	ac := &AuthCode{Hash: hashSecret(code), GrantID: g.ID, ClientID: g.ClientID, UserID: u.ID, RedirectURI: tx.Req.RedirectURI,
		Scope: tx.Req.Scope, Nonce: tx.Req.Nonce, Challenge: tx.Req.Challenge, AuthTime: g.AuthTime, AMR: g.AMR,
		CreatedAt: now, ExpiresAt: now.Add(s.cfg.CodeTTL), RequestedAuds: tx.Req.Audiences}
	// The login's single use, its grant and code, and its record commit
	// together: a code whose record could not be written does not exist.
	err = s.atomically(ctx, func(ctx context.Context) error {
		if err := s.checkLoginCurrent(ctx, tx); err != nil {
			return err
		}
		// Every sealed copy of this transaction expires within
		// loginTxTTL of now, so remembering its ID that long makes it
		// single use.
		if err := s.cfg.Store.UseAssertionJTI(ctx, loginTxNamespace, tx.ID, now.Add(loginTxTTL+time.Minute)); err != nil {
			return err
		}
		if err := s.cfg.Store.AddGrant(ctx, g); err != nil {
			return err
		}
		if err := s.cfg.Store.AddCode(ctx, ac); err != nil {
			return err
		}
		if err := s.cfg.Store.ClearLoginFailures(ctx, s.throttleKey(u.Name)); err != nil {
			return err
		}
		return s.auditGrant(ctx, AuditEvent{Type: "oauth.login.success", Outcome: "success", ClientID: g.ClientID, Subject: u.ID, Remote: r.RemoteAddr,
			Details: map[string]string{"amr": strings.Join(g.AMR, " "), "grant": g.ID, "scope": strings.Join(g.Scope, " ")}})
	})
	if errors.Is(err, ErrConflict) {
		s.errorPage(w, http.StatusBadRequest, "this sign-in was completed already; start again from the application")
		return
	}
	if errors.Is(err, errLoginStale) {
		s.refuseStale(ctx, w, r, tx)
		return
	}
	if err != nil {
		s.log.Error("token: login: issue the authorization code", "err", err)
		s.errorPage(w, http.StatusInternalServerError, "the server could not complete the login; try again")
		return
	}
	s.metrics.logins.WithLabelValues("success").Inc()
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: "", Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode, MaxAge: -1})
	q := url.Values{"code": {code}, "iss": {s.cfg.Issuer}}
	if tx.Req.State != "" {
		q.Set("state", tx.Req.State)
	}
	http.Redirect(w, r, withQuery(tx.Req.RedirectURI, q), http.StatusSeeOther)
}

// pageHeaders are set on every HTML page: never cached, never framed, no
// scripts, forms only to us (and the redirect to the client: Chrome and
// Safari apply form-action to the redirect that answers a form post).
func pageHeaders(w http.ResponseWriter, redirect string) {
	h := w.Header()
	formAction := "'self'"
	if u, err := url.Parse(redirect); err == nil && u.Scheme != "" {
		switch {
		case u.Host != "":
			formAction += " " + u.Scheme + "://" + u.Host
		case u.Scheme != "http" && u.Scheme != "https":
			// A native app's private-use scheme (RFC 8252 §7.1) has no
			// host: allow the scheme (a CSP scheme source).
			formAction += " " + u.Scheme + ":"
		}
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action "+formAction+"; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

type pageData struct {
	Title, Error, Tx, Client, Stage string
	Enroll                          *Enrollment
	QR                              template.URL
}

func (s *Service) renderLogin(w http.ResponseWriter, status int, tx *loginTx, msg string, enr *Enrollment) {
	sealed, err := s.sealTx(tx)
	if err != nil {
		s.errorPage(w, http.StatusInternalServerError, "the server could not render the login page")
		return
	}
	d := pageData{Title: "Sign in", Error: msg, Tx: sealed, Client: tx.Req.ClientID, Stage: tx.Stage, Enroll: enr}
	if enr != nil && enr.QRPNG != nil {
		// A data: URI of a PNG we just encoded; safe for img src.
		d.QR = template.URL(qrDataURI(enr.QRPNG))
	}
	pageHeaders(w, tx.Req.RedirectURI)
	w.WriteHeader(status)
	if err := s.tpl.login.Execute(w, d); err != nil {
		s.log.Error("token: render login page", "err", err)
	}
}

func (s *Service) errorPage(w http.ResponseWriter, status int, msg string) {
	pageHeaders(w, "")
	w.WriteHeader(status)
	s.tpl.errorPage.Execute(w, pageData{Title: "Sign-in error", Error: msg})
}

type templates struct{ login, errorPage *template.Template }

const pageCSS = `body{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.5rem;box-sizing:border-box}
button{margin-top:1rem;padding:.6rem 1.2rem}.err{color:#a00;margin:.8rem 0}code,.codes{font-family:monospace}
.codes li{margin:.2rem 0}small{color:#666}`

const loginHTML = `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="referrer" content="no-referrer"><title>{{.Title}} · Moatless</title><style>` + pageCSS + `</style></head><body>
<h1>{{.Title}}</h1><p><small>to continue to <b>{{.Client}}</b></small></p>
{{if .Error}}<p class="err" role="alert">{{.Error}}</p>{{end}}
<form method="post" action="login" autocomplete="off">
<input type="hidden" name="tx" value="{{.Tx}}">
{{if eq .Stage "password"}}
<label for="username">User name</label><input id="username" name="username" autocomplete="username" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
{{else if eq .Stage "totp"}}
<label for="code">Code from your authenticator app</label>
<input id="code" name="code" inputmode="numeric" pattern="[0-9]{6}" autocomplete="one-time-code" autofocus>
<label for="recovery_code">or a recovery code</label><input id="recovery_code" name="recovery_code">
<button type="submit">Verify</button>
{{else if eq .Stage "enroll"}}
<p>Your account requires two-factor authentication. Scan this code with an authenticator app, or enter the key by hand, then type the code it shows.</p>
{{if .QR}}<p><img src="{{.QR}}" width="200" height="200" alt="QR code of the TOTP key"></p>{{end}}
{{with .Enroll}}<p>Key: <code>{{.Secret}}</code></p>{{end}}
<label for="code">Code</label><input id="code" name="code" inputmode="numeric" pattern="[0-9]{6}" autocomplete="one-time-code" required autofocus>
<button type="submit">Turn on two-factor authentication</button>
{{else if eq .Stage "finish"}}
<p>Two-factor authentication is on. Keep these recovery codes somewhere safe; each works once if you lose your device. They are not shown again.</p>
{{with .Enroll}}<ul class="codes">{{range .RecoveryCodes}}<li>{{.}}</li>{{end}}</ul>{{end}}
<button type="submit">Continue</button>
{{end}}
</form></body></html>`

const errorHTML = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{.Title}} · Moatless</title><style>` + pageCSS + `</style></head>
<body><h1>{{.Title}}</h1><p class="err" role="alert">{{.Error}}</p></body></html>`

func parseTemplates() (*templates, error) {
	login, err := template.New("login").Parse(loginHTML)
	if err != nil {
		return nil, fmt.Errorf("token: login template: %w", err)
	}
	errp, err := template.New("error").Parse(errorHTML)
	if err != nil {
		return nil, fmt.Errorf("token: error template: %w", err)
	}
	return &templates{login: login, errorPage: errp}, nil
}
