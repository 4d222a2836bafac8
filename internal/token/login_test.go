package token_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
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

// rendezvousStore is the real store with a rendezvous, once armed, after
// reading a user (User and UserByID): the first n readers each wait until
// all n have read, so every competing enrolment sees the user without
// TOTP, the interleaving a race needs, on every run.
type rendezvousStore struct {
	token.Store
	mu      sync.Mutex
	waiting int
	release chan struct{}
}

func (s *rendezvousStore) arm(n int) {
	s.mu.Lock()
	s.waiting, s.release = n, make(chan struct{})
	s.mu.Unlock()
}

func (s *rendezvousStore) meet(ctx context.Context) {
	s.mu.Lock()
	rel := s.release
	if rel != nil {
		if s.waiting--; s.waiting == 0 {
			close(rel)
			s.release = nil
		}
	}
	s.mu.Unlock()
	if rel != nil {
		select {
		case <-rel:
		case <-ctx.Done():
		}
	}
}

func (s *rendezvousStore) User(ctx context.Context, name string) (*token.User, error) {
	u, err := s.Store.User(ctx, name)
	s.meet(ctx)
	return u, err
}

func (s *rendezvousStore) UserByID(ctx context.Context, id string) (*token.User, error) {
	u, err := s.Store.UserByID(ctx, id)
	s.meet(ctx)
	return u, err
}

// Two enrolments submitted at the same instant both pass the "user has no
// TOTP yet" check; the later write must not replace the earlier factor.
// Whoever holds only the password (and keeps an enrolment form) would
// otherwise race the user's own enrolment and end up with the key, and
// the user with recovery codes that no longer work. Exactly one enrolment
// wins; a login form that loses is refused like a stale form (400,
// oauth.mfa.failed/already_enrolled), an admin confirmation that loses
// gets 409, and the loser changes nothing.
func TestConcurrentEnrolmentsCannotReplaceMFA(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		rs := &rendezvousStore{Store: db.OAuth()}
		h := newHarness(t, db, func(c *token.Config) { c.Store = rs })
		h.webClient()
		type result struct {
			status int
			won    bool // the answer shows recovery codes
			key    string
		}
		// loginForm returns a competing enrolment by a login form.
		loginForm := func(user, pw string) func() result {
			c, p, key := h.enrolmentPage(user, pw)
			tx := txRE.FindStringSubmatch(p.body)[1]
			code := h.totpCode(key, 0)
			return func() result {
				resp, err := c.PostForm(h.issuer+"/oauth2/login", url.Values{"tx": {tx}, "code": {code}})
				if err != nil {
					return result{status: -1}
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				won := strings.Count(string(b), "<li>") == token.RecoveryCodes
				return result{resp.StatusCode, won, key}
			}
		}
		// adminConfirm returns a competing enrolment by an admin.
		adminConfirm := func(user, _ string) func() result {
			var enr token.Enrollment
			if code := h.admin("POST", "users/"+user+"/mfa", nil, &enr); code != http.StatusOK {
				t.Fatalf("start mfa: %d", code)
			}
			code := h.totpCode(enr.Secret, 0)
			return func() result {
				b, _ := json.Marshal(map[string]string{"code": code})
				resp, err := h.http.Post(h.srv.URL+"/v1/admin/oauth/users/"+user+"/mfa/confirm", "application/json", bytes.NewReader(b))
				if err != nil {
					return result{status: -1}
				}
				defer resp.Body.Close()
				var done token.Enrollment
				json.NewDecoder(resp.Body).Decode(&done)
				return result{resp.StatusCode, len(done.RecoveryCodes) == token.RecoveryCodes, enr.Secret}
			}
		}
		cases := []struct {
			name      string
			second    func(user, pw string) func() result
			loserCode int // the second enrolment's status when it loses
		}{
			{"two_login_forms", loginForm, http.StatusBadRequest},
			{"login_form_and_admin_confirm", adminConfirm, http.StatusConflict},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				user, pw := "noa"+strconv.Itoa(i), "noa's password!"
				h.createUser(user, pw, token.UserSpec{RequireMFA: true})
				enrol := []func() result{loginForm(user, pw), tc.second(user, pw)}
				results := make([]result, len(enrol))
				rs.arm(len(enrol))
				var wg sync.WaitGroup
				for j, f := range enrol {
					wg.Add(1)
					go func() { defer wg.Done(); results[j] = f() }()
				}
				wg.Wait()

				winner := -1
				for j, r := range results {
					if r.won && winner >= 0 {
						t.Fatalf("both enrolments enabled TOTP: %+v", results)
					}
					if r.won {
						winner = j
					}
				}
				if winner < 0 || results[winner].status != http.StatusOK {
					t.Fatalf("no enrolment won: %+v", results)
				}
				loser := 1 - winner
				wantLoser := http.StatusBadRequest
				if loser == 1 {
					wantLoser = tc.loserCode
				}
				if results[loser].status != wantLoser {
					t.Fatalf("losing enrolment %d: status %d, want %d", loser, results[loser].status, wantLoser)
				}
				u, err := db.OAuth().User(context.Background(), user)
				if err != nil {
					t.Fatal(err)
				}
				var enrolled, refused int
				h.mu.Lock()
				for _, e := range h.audits {
					switch {
					case e.Subject != u.ID:
					case e.Type == "oauth.mfa.enrolled":
						enrolled++
					case e.Type == "oauth.mfa.failed" && e.Reason == "already_enrolled":
						refused++
					}
				}
				h.mu.Unlock()
				if wantRefused := map[bool]int{true: 1, false: 0}[wantLoser == http.StatusBadRequest]; enrolled != 1 || refused != wantRefused {
					t.Fatalf("audit: %d enrolled, %d already_enrolled refusals; want 1 and %d", enrolled, refused, wantRefused)
				}

				h.clock.Advance(60 * time.Second)
				if p := h.loginTOTP(user, pw, url.Values{"code": {h.totpCode(results[loser].key, 0)}}); p.status != http.StatusUnauthorized {
					t.Fatalf("losing enrolment's key: %d, want 401", p.status)
				}
				h.clock.Advance(60 * time.Second)
				if p := h.loginTOTP(user, pw, url.Values{"code": {h.totpCode(results[winner].key, 0)}}); p.status != http.StatusSeeOther {
					t.Fatalf("winning enrolment's key: %d, want 303", p.status)
				}
			})
		}
	})
}
