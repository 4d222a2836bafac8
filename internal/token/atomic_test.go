package token_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// setAuditDown makes the harness's Audit fail (or work again).
func (h *harness) setAuditDown(down bool) {
	h.mu.Lock()
	h.auditDown = down
	h.mu.Unlock()
}

// A change and its audit record commit together or not at all: while the
// audit log fails, every change is refused with a 500 and leaves nothing
// behind, so the same request succeeds once the log works (a change that
// had stood unrecorded would make it a conflict, a reuse or a no-op).
func TestChangeWithoutRecordIsRolledBack(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		web := h.webClient()
		svc := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		h.createUser("uma", "uma's password!", token.UserSpec{})
		h.enrollTOTP("uma")
		h.createUser("val", "val's password!", token.UserSpec{})
		h.createUser("xia", "xia's password!", token.UserSpec{})
		v, ch := pkce("rb")
		redeem := func(code string) (int, map[string]any) {
			return h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code},
				"redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
		}
		login := func(user string) map[string]any {
			t.Helper()
			status, tk := redeem(h.loginForCode("web", appCallback, "openid", user, user+"'s password!", ch))
			if status != 200 {
				t.Fatalf("redeem: %d %v", status, tk)
			}
			return tk
		}
		session, other := login("val"), login("xia")
		pendingCode := h.loginForCode("web", appCallback, "openid", "val", "val's password!", ch)
		count := func(q string) int {
			t.Helper()
			var n int
			if err := db.SQL().QueryRow(q).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}

		// In this order: a later change may end what an earlier one needs.
		cases := []struct {
			name string
			// do makes the change and returns the HTTP status.
			do func() int
			// unchanged checks that nothing of the refused change is left.
			unchanged func(t *testing.T)
		}{
			{"create_client", func() int {
				return h.admin("POST", "clients", token.ClientRequest{Name: "new", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}}, nil)
			}, func(t *testing.T) {
				if code := h.admin("GET", "clients/new", nil, nil); code != http.StatusNotFound {
					t.Errorf("client created unrecorded: GET %d", code)
				}
			}},
			{"rotate_secret", func() int { return h.admin("POST", "clients/"+svc.Client.ID+"/rotate-secret", nil, nil) }, func(t *testing.T) {
				if n := count("SELECT COUNT(*) FROM oauth_clients WHERE name = 'svc' AND updated_at <> created_at"); n != 0 {
					t.Error("secret rotated unrecorded")
				}
			}},
			{"create_user", func() int {
				return h.admin("POST", "users", token.UserRequest{Name: "wes", Password: "wes's password!"}, nil)
			}, func(t *testing.T) {
				if code := h.admin("GET", "users/wes", nil, nil); code != http.StatusNotFound {
					t.Errorf("user created unrecorded: GET %d", code)
				}
			}},
			{"mfa_start", func() int { return h.admin("POST", "users/val/mfa", nil, nil) }, func(t *testing.T) {
				if n := count("SELECT COUNT(*) FROM oauth_users WHERE name = 'val' AND totp_secret IS NOT NULL"); n != 0 {
					t.Error("pending TOTP key stored unrecorded")
				}
			}},
			{"redeem_code", func() int { s, _ := redeem(pendingCode); return s }, nil},
			{"refresh", func() int {
				s, _ := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {session["refresh_token"].(string)}}, "web", web.Secret)
				return s
			}, nil},
			{"revoke_refresh_token", func() int {
				s, _ := h.post(nil, "/oauth2/revoke", url.Values{"token": {other["refresh_token"].(string)}}, "web", web.Secret)
				return s
			}, func(t *testing.T) {
				if !h.active(other["access_token"].(string)) {
					t.Error("family revoked unrecorded")
				}
			}},
			{"rotate_keys", func() int { return h.admin("POST", "keys/rotate", nil, nil) }, func(t *testing.T) {
				if n := count("SELECT COUNT(*) FROM oauth_signing_keys"); n != 1 {
					t.Errorf("key made unrecorded: %d keys", n)
				}
			}},
			{"mfa_reset", func() int { return h.admin("DELETE", "users/uma/mfa", nil, nil) }, func(t *testing.T) {
				if n := count("SELECT COUNT(*) FROM oauth_users WHERE name = 'uma' AND totp_enabled = 1"); n != 1 {
					t.Error("MFA reset unrecorded")
				}
			}},
			{"password_set", func() int {
				return h.admin("POST", "users/val/password", map[string]string{"password": "val's new password"}, nil)
			}, func(t *testing.T) {
				if !h.active(session["access_token"].(string)) {
					t.Error("sessions ended unrecorded")
				}
			}},
			{"delete_client", func() int { return h.admin("DELETE", "clients/"+svc.Client.ID, nil, nil) }, func(t *testing.T) {
				if code := h.admin("GET", "clients/"+svc.Client.ID, nil, nil); code != http.StatusOK {
					t.Errorf("client deleted unrecorded: GET %d", code)
				}
			}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				before := len(h.auditTypes())
				h.setAuditDown(true)
				code := tc.do()
				h.setAuditDown(false)
				if code != http.StatusInternalServerError {
					t.Errorf("with the audit log down: %d, want 500", code)
				}
				if got := len(h.auditTypes()); got != before {
					t.Fatalf("%d records written while the log was down", got-before)
				}
				if tc.unchanged != nil {
					tc.unchanged(t)
				}
				if code := tc.do(); code >= 300 {
					t.Fatalf("the same request with the audit log back: %d", code)
				}
			})
		}
	})
}

// The record of a change is written in the change's own store
// transaction, as the server does (audit.StoreSink.AppendTx on
// store.TxFrom): a record written and then failed, or a change that fails
// after its record, leaves neither in the store, on SQLite and PostgreSQL.
func TestRecordIsInTheChangeTransaction(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		sink := audit.NewStoreSink(db)
		var (
			mu        sync.Mutex
			failAfter bool // Audit writes its record, then fails
			outside   []string
		)
		h := newHarness(t, db, func(c *token.Config) {
			c.Audit = func(ctx context.Context, e token.AuditEvent) error {
				ev := audit.Event{Kind: e.Type, Actor: "test", Subject: e.Subject, Outcome: e.Outcome}
				tx, ok := store.TxFrom(ctx)
				if !ok {
					mu.Lock()
					outside = append(outside, e.Type)
					mu.Unlock()
					return sink.Append(ctx, ev)
				}
				if err := sink.AppendTx(ctx, tx, ev); err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				if failAfter {
					return errors.New("failed after writing")
				}
				return nil
			}
		})
		count := func(q string, args ...any) int {
			t.Helper()
			var n int
			if err := db.SQL().QueryRow(q, args...).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		records := func() int { return count("SELECT COUNT(*) FROM audit_log") }
		web := h.webClient()
		h.createUser("ann", "ann's password!", token.UserSpec{})
		v, ch := pkce("tx")
		code := h.loginForCode("web", appCallback, "openid", "ann", "ann's password!", ch)
		status, tk := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code},
			"redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
		if status != 200 {
			t.Fatalf("redeem: %d %v", status, tk)
		}
		mu.Lock()
		if len(outside) != 0 {
			t.Errorf("change records written outside the change's transaction: %v", outside)
		}
		mu.Unlock()

		mu.Lock()
		failAfter = true
		mu.Unlock()
		n := records()
		if code := h.admin("POST", "users/ann/password", map[string]string{"password": "ann's new password"}, nil); code != 500 {
			t.Fatalf("password set with a failing record: %d", code)
		}
		status, _ = h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tk["refresh_token"].(string)}}, "web", web.Secret)
		if status != 500 {
			t.Fatalf("refresh with a failing record: %d", status)
		}
		// What is left is the record of the refused token request,
		// written on its own after the rollback.
		mu.Lock()
		refusals := slices.Clone(outside)
		mu.Unlock()
		if got := records(); got != n+len(refusals) || !slices.Equal(refusals, []string{"oauth.token.failed"}) {
			t.Fatalf("%d records after two rolled-back changes, of them written outside a change: %v; want only the refusal's", got-n, refusals)
		}
		n = records()
		if c := count("SELECT COUNT(*) FROM oauth_grants WHERE revoked_at <> 0"); c != 0 {
			t.Fatalf("sessions ended by a rolled-back password change: %d grants", c)
		}
		if c := count("SELECT COUNT(*) FROM oauth_refresh_tokens WHERE used_at <> 0"); c != 0 {
			t.Fatalf("refresh token rotated by a rolled-back refresh")
		}

		mu.Lock()
		failAfter = false
		mu.Unlock()
		status, next := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tk["refresh_token"].(string)}}, "web", web.Secret)
		if status != 200 {
			t.Fatalf("refresh with the record working: %d %v", status, next)
		}
		if got := records(); got != n+1 {
			t.Fatalf("refresh wrote %d records, want 1", got-n)
		}
		if _, err := audit.Verify(context.Background(), db, audit.VerifyOptions{}); err != nil {
			t.Fatalf("audit chain: %v", err)
		}
	})
}

// raceStore is the real store with a hook run once, right after a refresh
// token is read or a code consumed: the moment a password or MFA reset
// used to be able to slip in between a grant's check and its use.
type raceStore struct {
	token.Store
	mu   sync.Mutex
	hook func(ctx context.Context)
}

func (r *raceStore) setHook(hook func(ctx context.Context)) {
	r.mu.Lock()
	r.hook = hook
	r.mu.Unlock()
}

func (r *raceStore) fire(ctx context.Context) {
	r.mu.Lock()
	hook := r.hook
	r.hook = nil
	r.mu.Unlock()
	if hook != nil {
		hook(ctx)
	}
}

func (r *raceStore) RefreshToken(ctx context.Context, hash []byte) (*token.RefreshToken, error) {
	rt, err := r.Store.RefreshToken(ctx, hash)
	r.fire(ctx)
	return rt, err
}

func (r *raceStore) ConsumeCode(ctx context.Context, hash []byte, want token.CodeRedemption, at time.Time) (*token.AuthCode, error) {
	ac, err := r.Store.ConsumeCode(ctx, hash, want, at)
	r.fire(ctx)
	return ac, err
}

// A refresh or a code redemption racing a password or MFA reset cannot
// keep the login alive. "forced": the reset runs the moment the refresh
// token was read (or the code consumed); outside a transaction nothing
// holds it back, so the test lets it finish first (the interleaving that
// used to hand out an access token nobody revoked, or report the reset as
// refresh token theft); inside the grant's transaction it waits for the
// commit and must revoke what the transaction issued. "free": both start
// together, several times, and land as they may. Either way, once both
// are done every token of the login is dead, every access token ID went
// to OnRevoke, and no reuse (theft) was reported.
func TestRefreshRacingResetEndsTheFamily(t *testing.T) {
	resets := []struct {
		name, method, path, body string
	}{
		{"password_set", "POST", "users/kim/password", `{"password": "kim's new password"}`},
		{"mfa_reset", "DELETE", "users/kim/mfa", ""},
	}
	for _, mode := range []string{"forced", "free"} {
		for _, grant := range []string{"refresh_token", "authorization_code"} {
			for _, reset := range resets {
				if mode == "free" && reset.name != "password_set" {
					continue // the same store path as password_set; keep the suite quick
				}
				t.Run(mode+"/"+grant+"/"+reset.name, func(t *testing.T) {
					storetest.Each(t, func(t *testing.T, db *store.DB) {
						rs := &raceStore{}
						h := newHarness(t, db, func(c *token.Config) { rs.Store = c.Store; c.Store = rs })
						web := h.webClient()
						rounds := 1
						if mode == "free" {
							rounds = 4
						}
						for i := range rounds {
							user := fmt.Sprintf("kim%d", i)
							raceReset(t, h, rs, web, user, mode == "forced", grant, reset.method, strings.Replace(reset.path, "kim", user, 1), reset.body)
						}
					})
				})
			}
		}
	}
}

// raceReset runs one race of TestRefreshRacingResetEndsTheFamily for a
// new user.
func raceReset(t *testing.T, h *harness, rs *raceStore, web *token.ClientAnswer, user string, forced bool, grant, method, path, resetBody string) {
	t.Helper()
	userID := h.createUser(user, "kim's password!", token.UserSpec{}).ID
	v, ch := pkce("race")
	redeem := func(code string) (int, map[string]any) {
		return h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code},
			"redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
	}
	code := h.loginForCode("web", appCallback, "openid", user, "kim's password!", ch)
	var first map[string]any
	if grant == "refresh_token" {
		var status int
		if status, first = redeem(code); status != 200 {
			t.Fatalf("redeem: %d %v", status, first)
		}
	}

	resetDone := make(chan int, 1)
	runReset := func() {
		req, _ := http.NewRequest(method, h.srv.URL+"/v1/admin/oauth/"+path, strings.NewReader(resetBody))
		resp, err := h.http.Do(req)
		if err != nil {
			resetDone <- 0
			return
		}
		resp.Body.Close()
		resetDone <- resp.StatusCode
	}
	if forced {
		rs.setHook(func(ctx context.Context) {
			go runReset()
			if _, inTx := store.TxFrom(ctx); !inTx {
				// Nothing holds the reset back: let it finish.
				status := <-resetDone
				resetDone <- status
			}
		})
	} else {
		go runReset()
	}
	var status int
	var got map[string]any
	if grant == "refresh_token" {
		status, got = h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {first["refresh_token"].(string)}}, "web", web.Secret)
	} else {
		status, got = redeem(code)
	}
	if st := <-resetDone; st != http.StatusNoContent {
		t.Fatalf("reset: %d", st)
	}
	if status != 200 && (status != 400 || got["error"] != "invalid_grant") {
		t.Fatalf("%s racing the reset: %d %v", grant, status, got)
	}

	var access, refresh []string
	for _, tk := range []map[string]any{first, got} {
		if a, ok := tk["access_token"].(string); ok {
			access = append(access, a)
		}
		if r, ok := tk["refresh_token"].(string); ok {
			refresh = append(refresh, r)
		}
	}
	for i, a := range access {
		if h.active(a) {
			t.Errorf("access token %d is active after the reset", i)
		}
		if !h.wasRevoked(claims(t, a)["jti"].(string)) {
			t.Errorf("access token %d was not pushed to OnRevoke", i)
		}
	}
	for i, r := range refresh {
		if h.active(r) {
			t.Errorf("refresh token %d is active after the reset", i)
		}
		if status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {r}}, "web", web.Secret); status != 400 {
			t.Errorf("refresh token %d after the reset: %d %v", i, status, body)
		}
	}
	// A token of a login that was ended is refused as such, not as theft:
	// nothing here was used twice.
	h.mu.Lock()
	defer h.mu.Unlock()
	ended := false
	for _, e := range h.audits {
		if e.Subject != "" && e.Subject != userID {
			continue
		}
		switch e.Type {
		case "oauth.refresh.reused", "oauth.code.reused":
			t.Errorf("the reset was reported as theft (%s)", e.Type)
		case "oauth.user.sessions_revoked":
			ended = true
		}
	}
	if !ended {
		t.Error("no sessions_revoked record")
	}
}

func (r *raceStore) User(ctx context.Context, name string) (*token.User, error) {
	u, err := r.Store.User(ctx, name)
	r.fire(ctx)
	return u, err
}

// A password or MFA reset (or a deletion) ends the logins in progress
// too, not only the sessions they opened: a login whose password was
// checked before the reset cannot finish after it, whether it waits at the
// TOTP or the enrolment step, or the reset lands between the password
// check and the code in the same request. Nothing is left of the refused
// login: no code, no grant, no TOTP key enabled.
func TestResetEndsLoginsInProgress(t *testing.T) {
	resets := []struct {
		name, method, path, body string
	}{
		{"password_set", "POST", "users/%s/password", `{"password": "a brand new password"}`},
		{"mfa_reset", "DELETE", "users/%s/mfa", ""},
		{"user_deleted", "DELETE", "users/%s", ""},
	}
	steps := []string{"totp", "enroll", "password"}
	for _, step := range steps {
		for _, reset := range resets {
			t.Run(step+"/"+reset.name, func(t *testing.T) {
				storetest.Each(t, func(t *testing.T, db *store.DB) {
					rs := &raceStore{}
					h := newHarness(t, db, func(c *token.Config) { rs.Store = c.Store; c.Store = rs })
					h.webClient()
					const user, pw = "lea", "lea's password!"
					doReset := func() {
						req, _ := http.NewRequest(reset.method, h.srv.URL+"/v1/admin/oauth/"+fmt.Sprintf(reset.path, user), strings.NewReader(reset.body))
						resp, err := h.http.Do(req)
						if err != nil {
							t.Error(err)
							return
						}
						resp.Body.Close()
						if resp.StatusCode != http.StatusNoContent {
							t.Errorf("reset: %d", resp.StatusCode)
						}
					}
					var secret string
					switch step {
					case "totp":
						h.createUser(user, pw, token.UserSpec{})
						secret, _ = h.enrollTOTP(user)
					case "enroll":
						h.createUser(user, pw, token.UserSpec{RequireMFA: true})
					case "password":
						h.createUser(user, pw, token.UserSpec{})
						// Right after the login read the user (and its
						// password hash): outside any transaction.
						rs.setHook(func(context.Context) { doReset() })
					}
					_, ch := pkce("lp")
					c := h.tlsClient(nil)
					p := h.get(c, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
					p = h.submit(c, p, url.Values{"username": {user}, "password": {pw}})
					switch step {
					case "totp":
						doReset()
						p = h.submit(c, p, url.Values{"code": {h.totpCode(secret, 0)}})
					case "enroll":
						i := strings.Index(p.body, "Key: <code>")
						if i < 0 {
							t.Fatalf("enrol page: %d %s", p.status, p.body)
						}
						secret = p.body[i+len("Key: <code>") : i+len("Key: <code>")+32]
						doReset()
						p = h.submit(c, p, url.Values{"code": {h.totpCode(secret, 0)}})
					}
					if p.location != "" || p.status < 400 {
						t.Fatalf("login across the reset: %d, location %q", p.status, p.location)
					}
					var n int
					if err := db.SQL().QueryRow("SELECT COUNT(*) FROM oauth_grants").Scan(&n); err != nil || n != 0 {
						t.Fatalf("grants after the refused login: %d (%v)", n, err)
					}
					if err := db.SQL().QueryRow("SELECT COUNT(*) FROM oauth_users WHERE totp_enabled = 1").Scan(&n); err != nil || n != 0 && step == "enroll" {
						t.Fatalf("the refused enrolment enabled TOTP (%v)", err)
					}
				})
			})
		}
	}
}
