package token_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// loginTOTP logs in with password and then the given second factor
// fields and returns the final page.
func (h *harness) loginTOTP(user, pw string, second url.Values) page {
	h.t.Helper()
	_, ch := pkce("t")
	c := h.tlsClient(nil)
	p := h.get(c, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
	p = h.submit(c, p, url.Values{"username": {user}, "password": {pw}})
	if p.status != 200 || !strings.Contains(p.body, `name="code"`) {
		h.t.Fatalf("want TOTP page: %d %s", p.status, p.body)
	}
	return h.submit(c, p, second)
}

// TOTP accepts ±1 step of clock skew, refuses ±2, and refuses a code (or
// an older one) once used (RFC 6238 §5.2). Recovery codes work once.
func TestTOTPSkewReplayAndRecovery(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.webClient()
		h.createUser("ivy", "ivy's password!", token.UserSpec{})
		secret, recovery := h.enrollTOTP("ivy")
		try := func(f url.Values) int { return h.loginTOTP("ivy", "ivy's password!", f).status }
		code := func(steps int) url.Values { return url.Values{"code": {h.totpCode(secret, steps)}} }

		steps := []struct {
			name   string
			form   url.Values
			status int
		}{
			{"two_steps_behind", code(-2), 401},
			{"two_steps_ahead", code(2), 401},
			{"one_step_behind", code(-1), 303},
			{"replay_of_same_code", code(-1), 401},
			{"current_step", code(0), 303},
			{"older_step_after_newer", code(-1), 401},
			{"one_step_ahead", code(1), 303},
			{"current_after_ahead", code(0), 401},
			{"not_digits", url.Values{"code": {"abcdef"}}, 401},
			{"empty", url.Values{"code": {""}}, 401},
			{"recovery_code", url.Values{"recovery_code": {strings.ToUpper(recovery[0])}}, 303},
			{"recovery_code_reused", url.Values{"recovery_code": {recovery[0]}}, 401},
			{"recovery_code_without_dashes", url.Values{"recovery_code": {strings.ReplaceAll(recovery[1], "-", "")}}, 303},
		}
		for _, tc := range steps {
			// Each step is its own login; the failures stay below the
			// throttle's free attempts.
			if got := try(tc.form); got != tc.status {
				t.Fatalf("%s: status %d, want %d", tc.name, got, tc.status)
			}
		}
		var u struct {
			RecoveryCodesLeft int `json:"recovery_codes_left"`
		}
		h.admin("GET", "users/ivy", nil, &u)
		if u.RecoveryCodesLeft != token.RecoveryCodes-2 {
			t.Fatalf("recovery codes left %d", u.RecoveryCodesLeft)
		}
		// A replayed code says so.
		h.clock.Advance(time.Minute)
		c := code(0)
		if try(c) != 303 {
			t.Fatal("fresh code refused")
		}
		if p := h.loginTOTP("ivy", "ivy's password!", c); p.status != 401 || !strings.Contains(p.body, "used already") {
			t.Fatalf("replay: %d %s", p.status, p.body)
		}
		// After reset-mfa the user logs in with the password alone.
		if code := h.admin("DELETE", "users/ivy/mfa", nil, nil); code != 204 {
			t.Fatal(code)
		}
		_, ch := pkce("t")
		cl := h.tlsClient(nil)
		p := h.get(cl, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
		codeFrom(t, h.submit(cl, p, url.Values{"username": {"ivy"}, "password": {"ivy's password!"}}))
	})
}

// A user who must have MFA and has none enrols on the login page: QR code
// and key, confirmation with a code, recovery codes shown once, then the
// redirect. The next login asks for the code.
func TestMFAEnrolmentAtLogin(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.webClient()
		h.createUser("jack", "jack's password", token.UserSpec{RequireMFA: true})
		_, ch := pkce("e")
		c := h.tlsClient(nil)
		p := h.get(c, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
		p = h.submit(c, p, url.Values{"username": {"jack"}, "password": {"jack's password"}})
		if p.status != 200 || !strings.Contains(p.body, `src="data:image/png;base64,`) {
			t.Fatalf("enrol page: %d %s", p.status, p.body)
		}
		i := strings.Index(p.body, "Key: <code>")
		secret := p.body[i+len("Key: <code>") : i+len("Key: <code>")+32]
		if bad := h.submit(c, p, url.Values{"code": {"000000"}}); bad.status != 401 {
			t.Fatalf("wrong enrol code: %d", bad.status)
		}
		p = h.submit(c, p, url.Values{"code": {h.totpCode(secret, 0)}})
		if p.status != 200 || strings.Count(p.body, "<li>") != token.RecoveryCodes {
			t.Fatalf("recovery codes page: %d %s", p.status, p.body)
		}
		codeFrom(t, h.submit(c, p, url.Values{}))
		if again := h.submit(c, p, url.Values{}); again.status != http.StatusBadRequest || again.location != "" {
			t.Fatalf("replayed finish form: %d %s", again.status, again.location)
		}
		h.clock.Advance(30 * time.Second)
		if p := h.loginTOTP("jack", "jack's password", url.Values{"code": {h.totpCode(secret, 0)}}); p.status != http.StatusSeeOther {
			t.Fatalf("login after enrolment: %d", p.status)
		}
	})
}

// Brute force: after the free attempts a user (existing or not: no
// enumeration) is locked out with exponential backoff, even for the right
// password; a client IP is limited across user names.
func TestLoginThrottling(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.webClient()
		h.createUser("kim", "kim's password!", token.UserSpec{})
		_, ch := pkce("b")
		attempt := func(user, pw string) page {
			c := h.tlsClient(nil)
			p := h.get(c, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
			return h.submit(c, p, url.Values{"username": {user}, "password": {pw}})
		}
		var messages []string
		for _, user := range []string{"kim", "ghost"} {
			for i := 0; i < 6; i++ {
				p := attempt(user, "wrong password")
				if p.status != http.StatusUnauthorized {
					t.Fatalf("%s failure %d: %d", user, i, p.status)
				}
				if i == 0 {
					m := p.body[strings.Index(p.body, `<p class="err"`):]
					messages = append(messages, m[:strings.Index(m, "</p>")])
				}
			}
			p := attempt(user, "kim's password!")
			if p.status != http.StatusTooManyRequests || p.header.Get("Retry-After") != "1" {
				t.Fatalf("%s: want 429 after 6 failures, got %d", user, p.status)
			}
		}
		if messages[0] != messages[1] {
			t.Fatalf("unknown and known users fail differently:\n%s\n%s", messages[0], messages[1])
		}
		h.clock.Advance(time.Second)
		if p := attempt("kim", "wrong again"); p.status != http.StatusUnauthorized {
			t.Fatalf("after the lock: %d", p.status)
		}
		if p := attempt("kim", "kim's password!"); p.status != http.StatusTooManyRequests || p.header.Get("Retry-After") != "2" {
			t.Fatalf("backoff must double: %d %s", p.status, p.header.Get("Retry-After"))
		}
		h.clock.Advance(2 * time.Second)
		codeFrom(t, attempt("kim", "kim's password!"))
		// The success cleared kim's counter.
		if p := attempt("kim", "wrong"); p.status != http.StatusUnauthorized {
			t.Fatalf("after success: %d", p.status)
		}
		// Per IP: 20 free failures across names, then everyone from
		// this address waits.
		h.clock.Advance(2 * time.Hour)
		h.createUser("lee", "lee's password!", token.UserSpec{})
		for i := 0; i < 21; i++ {
			if p := attempt("user"+string(rune('a'+i)), "x"); p.status != http.StatusUnauthorized {
				t.Fatalf("ip failure %d: %d", i, p.status)
			}
		}
		if p := attempt("lee", "lee's password!"); p.status != http.StatusTooManyRequests {
			t.Fatalf("IP limit: %d", p.status)
		}
		types := strings.Join(h.auditTypes(), " ")
		if !strings.Contains(types, "oauth.login.failed") {
			t.Fatal("no audit of failed logins")
		}
	})
}

// Throttling holds across replicas: failures at one server lock the
// user out at another sharing the store.
func TestLoginThrottlingSharedByReplicas(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.webClient()
		h.createUser("quinn", "quinn's password", token.UserSpec{})
		_, ch := pkce("q")
		for i := 0; i < 6; i++ {
			c := h.tlsClient(nil)
			p := h.get(c, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
			if p = h.submit(c, p, url.Values{"username": {"quinn"}, "password": {"wrong"}}); p.status != http.StatusUnauthorized {
				t.Fatalf("failure %d: %d", i, p.status)
			}
		}
		other, err := token.New(token.Config{Issuer: h.issuer, Store: db.OAuth(), KEK: bytes.Repeat([]byte{7}, 32), Now: h.clock.Now, Argon2: testArgon2})
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		other.Handler().ServeHTTP(rec, httptest.NewRequest("GET", h.authorizeURL("web", appCallback, "openid", "s", "", ch), nil))
		m := txRE.FindStringSubmatch(rec.Body.String())
		if rec.Code != 200 || m == nil {
			t.Fatalf("authorize at the other replica: %d", rec.Code)
		}
		req := httptest.NewRequest("POST", h.issuer+"/oauth2/login", strings.NewReader(url.Values{"tx": {m[1]}, "username": {"quinn"}, "password": {"quinn's password"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for _, c := range rec.Result().Cookies() {
			req.AddCookie(c)
		}
		rec = httptest.NewRecorder()
		other.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusTooManyRequests {
			t.Fatalf("the other replica let a locked-out user in: %d", rec.Code)
		}
	})
}

// An enrolment form captured before the user enrolled must not replace
// the second factor the user has since set up: whoever holds only the
// password could otherwise swap in their own TOTP key (and get fresh
// recovery codes) and pass every later MFA check. Enrolment at login is
// for users who have no second factor yet.
func TestStaleEnrolmentCannotReplaceMFA(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.webClient()
		cases := []struct {
			name string
			// enrol enrols the user by another way while the attacker's
			// enrolment form is pending, and returns the user's key.
			enrol func(t *testing.T, user, pw string) string
		}{
			{"user_enrolled_by_admin", func(t *testing.T, user, _ string) string {
				secret, _ := h.enrollTOTP(user)
				return secret
			}},
			{"user_enrolled_at_another_login", func(t *testing.T, user, pw string) string {
				c, p, secret := h.enrolmentPage(user, pw)
				p = h.submit(c, p, url.Values{"code": {h.totpCode(secret, 0)}})
				if p.status != http.StatusOK || strings.Count(p.body, "<li>") != token.RecoveryCodes {
					t.Fatalf("legitimate enrolment: %d %s", p.status, p.body)
				}
				h.clock.Advance(60 * time.Second)
				return secret
			}},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				user, pw := "mia"+strconv.Itoa(i), "mia's password!"
				h.createUser(user, pw, token.UserSpec{RequireMFA: true})
				c, stale, attackerKey := h.enrolmentPage(user, pw)
				userKey := tc.enrol(t, user, pw)

				if got := h.submit(c, stale, url.Values{"code": {h.totpCode(attackerKey, 0)}}); got.status != http.StatusBadRequest || strings.Contains(got.body, "<li>") {
					t.Fatalf("stale enrolment form: status %d, want 400 without recovery codes: %s", got.status, got.body)
				}
				h.clock.Advance(60 * time.Second)
				if p := h.loginTOTP(user, pw, url.Values{"code": {h.totpCode(attackerKey, 0)}}); p.status != http.StatusUnauthorized {
					t.Fatalf("attacker's key after the refused enrolment: %d, want 401", p.status)
				}
				h.clock.Advance(60 * time.Second)
				if p := h.loginTOTP(user, pw, url.Values{"code": {h.totpCode(userKey, 0)}}); p.status != http.StatusSeeOther {
					t.Fatalf("user's own key after the refused enrolment: %d, want 303", p.status)
				}
			})
		}
	})
}

// enrolmentPage logs in with a password for a user who must enrol TOTP and
// returns the browser, the enrolment page and the key it offers.
func (h *harness) enrolmentPage(user, pw string) (*http.Client, page, string) {
	h.t.Helper()
	_, ch := pkce("e")
	c := h.tlsClient(nil)
	p := h.get(c, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
	p = h.submit(c, p, url.Values{"username": {user}, "password": {pw}})
	i := strings.Index(p.body, "Key: <code>")
	if p.status != http.StatusOK || i < 0 {
		h.t.Fatalf("enrolment page: %d %s", p.status, p.body)
	}
	return c, p, p.body[i+len("Key: <code>") : i+len("Key: <code>")+32]
}
