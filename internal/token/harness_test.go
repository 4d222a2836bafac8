package token_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/token"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// clock is the injected clock: tests move it, never sleep for it.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is a token service on a real store behind a real TLS listener
// on 127.0.0.1, with client certificates verified against a test CA.
type harness struct {
	t      *testing.T
	svc    *token.Service
	srv    *httptest.Server
	ca     *testpki.CA
	clock  *clock
	db     *store.DB
	issuer string
	http   *http.Client // trusts the CA, no client certificate

	mu        sync.Mutex
	revoked   map[string]time.Time
	audits    []token.AuditEvent
	auditDown bool // Audit fails while set
}

type harnessOpt func(*token.Config)

// testArgon2 keeps password hashing cheap in tests (the cost parameters
// are read back from each hash, so nothing else changes).
var testArgon2 = &token.Argon2Params{Memory: 1024, Time: 1, Threads: 1}

func newHarness(t *testing.T, db *store.DB, opts ...harnessOpt) *harness {
	t.Helper()
	ca := testpki.NewCA(t, "example.org")
	// Start on a TOTP step boundary (+1 s) so code steps are exact.
	now := time.Now().Unix()
	clk := &clock{t: time.Unix(now-now%30+1, 0)}
	h := &harness{t: t, ca: ca, clock: clk, db: db, revoked: map[string]time.Time{}}
	srv := httptest.NewUnstartedServer(nil)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.ServerCert(t, "", "127.0.0.1")},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
	}
	h.issuer = "https://" + srv.Listener.Addr().String()
	cfg := token.Config{
		Issuer: h.issuer, Store: db.OAuth(), KEK: bytes.Repeat([]byte{7}, 32), Now: clk.Now, Argon2: testArgon2,
		Audit: func(_ context.Context, e token.AuditEvent) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.auditDown {
				return errors.New("audit log down")
			}
			h.audits = append(h.audits, e)
			return nil
		},
		OnRevoke: func(_ context.Context, jti string, exp time.Time) {
			h.mu.Lock()
			h.revoked[jti] = exp
			h.mu.Unlock()
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	svc, err := token.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", svc.Handler())
	mux.Handle(token.AdminPathPrefix, svc.AdminHandler())
	srv.Config.Handler = mux
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { svc.Close() })
	h.svc, h.srv = svc, srv
	h.http = h.tlsClient(nil)
	return h
}

// tlsClient returns a client that trusts the CA, presents cert if given,
// and does not follow redirects.
func (h *harness) tlsClient(cert *tls.Certificate) *http.Client {
	conf := &tls.Config{RootCAs: h.ca.Pool()}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Transport:     &http.Transport{TLSClientConfig: conf},
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
}

func (h *harness) wasRevoked(jti string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.revoked[jti]
	return ok
}

func (h *harness) auditTypes() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.audits {
		out = append(out, e.Type)
	}
	return out
}

// admin calls the admin API and decodes the answer into out (if non-nil).
func (h *harness) admin(method, path string, in, out any) int {
	h.t.Helper()
	var body io.Reader
	switch v := in.(type) {
	case nil:
	case string:
		body = strings.NewReader(v)
	default:
		b, _ := json.Marshal(v)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, h.srv.URL+"/v1/admin/oauth/"+path, body)
	resp, err := h.http.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			h.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

func (h *harness) createClient(req token.ClientRequest) *token.ClientAnswer {
	h.t.Helper()
	var ans token.ClientAnswer
	if code := h.admin("POST", "clients", req, &ans); code != http.StatusCreated {
		h.t.Fatalf("create client %s: status %d", req.Name, code)
	}
	return &ans
}

func (h *harness) createUser(name, pw string, spec token.UserSpec) *token.User {
	h.t.Helper()
	var u token.User
	if code := h.admin("POST", "users", token.UserRequest{Name: name, Password: pw, UserSpec: spec}, &u); code != http.StatusCreated {
		h.t.Fatalf("create user %s: status %d", name, code)
	}
	return &u
}

// enrollTOTP enrols the user through the admin API and returns the key
// and recovery codes.
func (h *harness) enrollTOTP(name string) (string, []string) {
	h.t.Helper()
	var enr token.Enrollment
	if code := h.admin("POST", "users/"+name+"/mfa", nil, &enr); code != http.StatusOK {
		h.t.Fatalf("start mfa: %d", code)
	}
	if !strings.HasPrefix(enr.URI, "otpauth://totp/") || len(enr.QRPNG) == 0 {
		h.t.Fatalf("enrolment: %+v", enr)
	}
	var done token.Enrollment
	if code := h.admin("POST", "users/"+name+"/mfa/confirm", map[string]string{"code": h.totpCode(enr.Secret, 0)}, &done); code != http.StatusOK {
		h.t.Fatalf("confirm mfa: %d", code)
	}
	if len(done.RecoveryCodes) != token.RecoveryCodes {
		h.t.Fatalf("recovery codes: %v", done.RecoveryCodes)
	}
	// The confirming code's step is used; move two steps on so that
	// codes one step behind are fresh too.
	h.clock.Advance(60 * time.Second)
	return enr.Secret, done.RecoveryCodes
}

// totpCode is the code for the clock's time plus steps*30 s.
func (h *harness) totpCode(secret string, steps int) string {
	h.t.Helper()
	c, err := totp.GenerateCodeCustom(secret, h.clock.Now().Add(time.Duration(steps)*30*time.Second),
		totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// tokenReq posts a form to the token endpoint (or another path) with
// optional Basic credentials and returns status and decoded JSON.
func (h *harness) post(c *http.Client, path string, form url.Values, user, pass string) (int, map[string]any) {
	h.t.Helper()
	req, _ := http.NewRequest("POST", h.issuer+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
	}
	if c == nil {
		c = h.http
	}
	resp, err := c.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			h.t.Fatalf("POST %s: %d: not JSON: %s", path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, out
}

// postBody posts a raw form body.
func (h *harness) postBody(path, body, user, pass string) (int, map[string]any) {
	h.t.Helper()
	req, _ := http.NewRequest("POST", h.issuer+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := h.http.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// claims decodes a JWT's payload without verifying (tests verify
// separately through JWKS or introspection).
func claims(t *testing.T, raw string) map[string]any {
	t.Helper()
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	var m map[string]any
	if err := tok.UnsafeClaimsWithoutVerification(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// verifyWithJWKS verifies raw against the served JWKS like a relying
// party and returns its claims and typ header.
func (h *harness) verifyWithJWKS(raw string) (map[string]any, string, error) {
	resp, err := h.http.Get(h.issuer + "/.well-known/jwks.json")
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return nil, "", err
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil {
		return nil, "", err
	}
	keys := set.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		return nil, "", fmt.Errorf("kid %q not in JWKS (%d keys)", tok.Headers[0].KeyID, len(set.Keys))
	}
	var m map[string]any
	if err := tok.Claims(keys[0].Key, &m); err != nil {
		return nil, "", err
	}
	typ, _ := tok.Headers[0].ExtraHeaders[jose.HeaderType].(string)
	return m, typ, nil
}

var txRE = regexp.MustCompile(`name="tx" value="([^"]+)"`)

// page is an HTML answer of the login flow.
type page struct {
	status   int
	body     string
	location string
	header   http.Header
}

func (h *harness) get(c *http.Client, u string) page {
	h.t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(b), resp.Header.Get("Location"), resp.Header}
}

// submit posts the login form of p with the extra fields.
func (h *harness) submit(c *http.Client, p page, fields url.Values) page {
	h.t.Helper()
	m := txRE.FindStringSubmatch(p.body)
	if m == nil {
		h.t.Fatalf("no login form in page (%d): %s", p.status, p.body)
	}
	fields.Set("tx", m[1])
	resp, err := c.PostForm(h.issuer+"/oauth2/login", fields)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(b), resp.Header.Get("Location"), resp.Header}
}

// pkce returns a verifier and its S256 challenge.
func pkce(seed string) (string, string) {
	v := strings.Repeat(seed, 64)[:64]
	sum := sha256Sum(v)
	return v, base64.RawURLEncoding.EncodeToString(sum)
}

// authorizeURL builds an authorization request.
func (h *harness) authorizeURL(clientID, redirect, scope, state, nonce, challenge string) string {
	q := url.Values{"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {redirect}, "state": {state},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	if scope != "" {
		q.Set("scope", scope)
	}
	if nonce != "" {
		q.Set("nonce", nonce)
	}
	return h.issuer + "/oauth2/authorize?" + q.Encode()
}

// loginForCode runs the browser part of the code flow for a user without
// MFA and returns the code.
func (h *harness) loginForCode(clientID, redirect, scope, user, pw, challenge string) string {
	h.t.Helper()
	c := h.tlsClient(nil)
	p := h.get(c, h.authorizeURL(clientID, redirect, scope, "st", "n", challenge))
	if p.status != http.StatusOK {
		h.t.Fatalf("authorize: %d %s", p.status, p.body)
	}
	p = h.submit(c, p, url.Values{"username": {user}, "password": {pw}})
	return codeFrom(h.t, p)
}

func codeFrom(t *testing.T, p page) string {
	t.Helper()
	if p.status != http.StatusSeeOther {
		t.Fatalf("want redirect, got %d: %s", p.status, p.body)
	}
	u, err := url.Parse(p.location)
	if err != nil {
		t.Fatal(err)
	}
	code := u.Query().Get("code")
	if code == "" {
		t.Fatalf("no code in %s", p.location)
	}
	return code
}

// jwtBundleSource is a go-spiffe JWT bundle source for tests.
type jwtBundleSource struct{ b *jwtbundle.Bundle }

func (s jwtBundleSource) GetJWTBundleForTrustDomain(td spiffeTD) (*jwtbundle.Bundle, error) {
	if td != s.b.TrustDomain() {
		return nil, fmt.Errorf("no bundle for %s", td)
	}
	return s.b, nil
}
