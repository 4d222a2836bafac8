package secrets

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/audit"

	"github.com/moatless/moatless/internal/secrets/barrier"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// The hostile review's attacks on the secrets engine, each against the
// service as a caller sees it (ServeHTTP), on SQLite and PostgreSQL.

const testAdminToken = "admin-test"

// testService is an unsealed service on db with a settable clock; the
// admin credential is X-Vault-Token testAdminToken.
type testService struct {
	t     testing.TB
	svc   *Service
	now   time.Time
	audit *recordAudit
	// ctx, when set, is every request's context (a deadline, so that a
	// request that would wait for ever fails instead).
	ctx context.Context
}

// recordAudit keeps the events it is given.
type recordAudit struct {
	mu     sync.Mutex
	events []audit.Event
	// failTx, when set, fails every AppendTx (the audit log unavailable
	// for changes).
	failTx bool
}

func (a *recordAudit) Append(_ context.Context, ev audit.Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, ev)
	return nil
}

func (a *recordAudit) AppendTx(ctx context.Context, _ *sql.Tx, evs ...audit.Event) error {
	a.mu.Lock()
	fail := a.failTx
	a.mu.Unlock()
	if fail {
		return errors.New("audit log unavailable")
	}
	for _, ev := range evs {
		a.Append(ctx, ev)
	}
	return nil
}

func (a *recordAudit) last() audit.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.events[len(a.events)-1]
}

func newTestService(t testing.TB, db *store.DB, opts ...func(*Config)) *testService {
	t.Helper()
	ts := &testService{t: t, now: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), audit: &recordAudit{}}
	c := Config{Store: db, Audit: ts.audit, TrustDomain: "example.org", Logger: slog.New(slog.DiscardHandler),
		Now:   func() time.Time { return ts.now },
		Peer:  func(*http.Request) (*Peer, error) { return nil, nil },
		Admin: func(r *http.Request) (string, bool) { return "admin", r.Header.Get("X-Vault-Token") == testAdminToken }}
	for _, o := range opts {
		o(&c)
	}
	svc, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	k, err := barrier.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.UnsealKey(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	ts.svc = svc
	return ts
}

// replica is a second service on the same store (another server of an
// HA pair), unsealed with the first one's keyring.
func (ts *testService) replica(db *store.DB) *testService {
	ts.t.Helper()
	r := &testService{t: ts.t, now: ts.now}
	svc, err := New(Config{Store: db, Audit: discardAudit{}, TrustDomain: "example.org", Logger: slog.New(slog.DiscardHandler),
		Now:   func() time.Time { return r.now },
		Admin: func(r *http.Request) (string, bool) { return "admin", r.Header.Get("X-Vault-Token") == testAdminToken }})
	if err != nil {
		ts.t.Fatal(err)
	}
	kr, err := ts.svc.barrier.Keyring()
	if err != nil {
		ts.t.Fatal(err)
	}
	svc.barrier.Set(kr)
	r.svc = svc
	return r
}

// call sends a request from 127.0.0.1 (from when given).
func (ts *testService) call(method, path, token string, body any, from ...string) (int, map[string]any) {
	ts.t.Helper()
	var b []byte
	switch v := body.(type) {
	case nil:
	case string:
		b = []byte(v)
	default:
		b, _ = json.Marshal(v)
	}
	r := httptest.NewRequest(method, "/v1/"+path, bytes.NewReader(b))
	if ts.ctx != nil {
		r = r.WithContext(ts.ctx)
	}
	r.RemoteAddr = "127.0.0.1:40000"
	if len(from) > 0 {
		r.RemoteAddr = from[0]
	}
	if token != "" {
		r.Header.Set("X-Vault-Token", token)
	}
	w := httptest.NewRecorder()
	ts.svc.ServeHTTP(w, r)
	var out map[string]any
	json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out
}

// must calls and fails the test unless the status is 2xx.
func (ts *testService) must(method, path, token string, body any) map[string]any {
	ts.t.Helper()
	st, out := ts.call(method, path, token, body)
	if st/100 != 2 {
		ts.t.Fatalf("%s %s: %d %v", method, path, st, out)
	}
	return out
}

// policy writes an HCL policy.
func (ts *testService) policy(name, hcl string) {
	ts.t.Helper()
	ts.must("PUT", "sys/policies/acl/"+name, testAdminToken, map[string]any{"policy": hcl})
}

// tokenWith creates a token with the named policies.
func (ts *testService) tokenWith(policies ...string) string {
	ts.t.Helper()
	out := ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": policies})
	return authToken(ts.t, out)
}

func authToken(t testing.TB, out map[string]any) string {
	t.Helper()
	auth, _ := out["auth"].(map[string]any)
	tok, _ := auth["client_token"].(string)
	if tok == "" {
		t.Fatalf("no client_token in %v", out)
	}
	return tok
}

func dataOf(out map[string]any) map[string]any {
	d, _ := out["data"].(map[string]any)
	return d
}

// TestBoundCIDRsBindTheToken: token_bound_cidrs ties the token to those
// addresses (Vault's reading: "ties the resulting token to these blocks
// as well"), so a token copied off the host it was issued to is refused
// from anywhere else; and a secret ID cannot widen its role's bindings
// (Vault requires a subset). The token was only checked at login.
func TestBoundCIDRsBindTheToken(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		ts.policy("reader", `path "secret/data/*" { capabilities = ["read"] }`)
		ts.must("PUT", "secret/data/app", testAdminToken, map[string]any{"data": map[string]any{"k": "v"}})
		ts.must("POST", "auth/approle/role/bound", testAdminToken, map[string]any{"token_policies": "reader",
			"token_bound_cidrs": []string{"127.0.0.0/8"}, "secret_id_bound_cidrs": []string{"127.0.0.0/8"}})
		roleID := dataOf(ts.must("GET", "auth/approle/role/bound/role-id", testAdminToken, nil))["role_id"]
		secretID := func(body any) (int, map[string]any) {
			return ts.call("POST", "auth/approle/role/bound/secret-id", testAdminToken, body)
		}
		login := func(sid any) string {
			t.Helper()
			return authToken(t, ts.must("POST", "auth/approle/login", "", map[string]any{"role_id": roleID, "secret_id": sid}))
		}
		_, out := secretID(nil)
		tok := login(dataOf(out)["secret_id"])
		if st, out := ts.call("GET", "secret/data/app", tok, nil); st != 200 {
			t.Fatalf("from the bound address: %d %v", st, out)
		}
		if st, _ := ts.call("GET", "secret/data/app", tok, nil, "192.0.2.7:5555"); st != 403 {
			t.Errorf("the token used from outside its token_bound_cidrs: %d, want 403", st)
		}
		if st, _ := ts.call("GET", "auth/token/lookup-self", tok, nil, "[2001:db8::1]:5555"); st != 403 {
			t.Errorf("the token looked up from outside its token_bound_cidrs: %d, want 403", st)
		}

		for _, tc := range []struct {
			name string
			body map[string]any
		}{
			{"token_cidrs_wider_than_the_role", map[string]any{"token_bound_cidrs": []string{"0.0.0.0/0"}}},
			{"token_cidrs_beside_the_role", map[string]any{"token_bound_cidrs": []string{"192.0.2.0/24"}}},
			{"secret_id_cidrs_wider_than_the_role", map[string]any{"cidr_list": []string{"0.0.0.0/0"}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if st, out := secretID(tc.body); st != 400 {
					t.Fatalf("secret ID widening its role's bindings: %d %v, want 400", st, out)
				}
			})
		}
		// Narrower is allowed, and binds the token to the narrower block.
		_, out = secretID(map[string]any{"token_bound_cidrs": []string{"127.0.0.1/32"}})
		tok = login(dataOf(out)["secret_id"])
		if st, _ := ts.call("GET", "secret/data/app", tok, nil, "127.0.0.2:1"); st != 403 {
			t.Errorf("a token bound to 127.0.0.1/32 used from 127.0.0.2: %d, want 403", st)
		}
		if st, out := ts.call("GET", "auth/token/lookup-self", tok, nil); st != 200 || dataOf(out)["bound_cidrs"] == nil {
			t.Errorf("lookup-self does not show the binding: %d %v", st, out)
		}
	})
}

// TestDeletedTransitKeyIsGoneOnEveryReplica: deleting a transit key is
// how data encrypted under it is shredded. Replica A had the key cached
// at generation 1; replica B deleted it and created a new key of the same
// name, at generation 1 again. A went on decrypting the shredded data and
// encrypting under the deleted key (which B cannot decrypt): its cache
// was keyed by a generation that starts over.
func TestDeletedTransitKeyIsGoneOnEveryReplica(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		a := newTestService(t, db)
		b := a.replica(db)
		pt := map[string]any{"plaintext": "c2hyZWQgbWU="}
		a.must("POST", "transit/keys/pii", testAdminToken, nil)
		old := dataOf(a.must("POST", "transit/encrypt/pii", testAdminToken, pt))["ciphertext"]

		b.must("POST", "transit/keys/pii/config", testAdminToken, map[string]any{"deletion_allowed": true})
		b.must("DELETE", "transit/keys/pii", testAdminToken, nil)
		b.must("POST", "transit/keys/pii", testAdminToken, nil)

		if st, out := a.call("POST", "transit/decrypt/pii", testAdminToken, map[string]any{"ciphertext": old}); st != 400 {
			t.Errorf("replica A decrypted data under the deleted key: %d %v, want 400", st, out)
		}
		ct := dataOf(a.must("POST", "transit/encrypt/pii", testAdminToken, pt))["ciphertext"]
		if st, out := b.call("POST", "transit/decrypt/pii", testAdminToken, map[string]any{"ciphertext": ct}); st != 200 {
			t.Errorf("replica B cannot decrypt what A encrypted after the re-creation: %d %v", st, out)
		}
	})
}

// TestDBPoolFollowsTheConnectionNotItsGeneration: a connection deleted and
// configured anew on another replica starts again at generation 0; this
// replica's pool, opened for the old DSN (another host, the old admin
// password), must not be reused for it.
func TestDBPoolFollowsTheConnectionNotItsGeneration(t *testing.T) {
	p := newDBPool()
	defer p.closeAll()
	old := &dbConnection{ConnectionURL: "postgres://admin:old@127.0.0.1:1/app", MaxOpenConnections: 2}
	renewed := &dbConnection{ConnectionURL: "postgres://admin:new@127.0.0.1:2/app", MaxOpenConnections: 2}
	d1, err := p.get("app", old)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := p.get("app", renewed)
	if err != nil {
		t.Fatal(err)
	}
	if d1 == d2 {
		t.Fatal("the pool of the deleted connection's DSN served its re-creation")
	}
	if d3, _ := p.get("app", renewed); d3 != d2 {
		t.Fatal("an unchanged connection did not reuse its pool")
	}
}

// TestDatabaseConfigReadMasksPasswords: whoever may read
// database/config/NAME (an operator checking allowed_roles) must not learn
// the admin password when it was written into connection_url rather than
// given as password with a {{password}} placeholder. Vault masks it (PRs
// 4300 and 14744, which also covers the percent-encoded form).
func TestDatabaseConfigReadMasksPasswords(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		for _, tc := range []struct {
			name, url, want string
			secrets         []string
		}{
			{"userinfo", "postgres://admin:hunter2hunter2@127.0.0.1:5432/app?sslmode=disable",
				"postgres://admin:*****@127.0.0.1:5432/app?sslmode=disable", []string{"hunter2hunter2"}},
			{"percent_encoded", "postgres://admin:yourStrong%28%21%29Pass@127.0.0.1:5432/app",
				"postgres://admin:*****@127.0.0.1:5432/app", []string{"yourStrong", "(!)"}},
			{"at_sign_in_password", "postgres://admin:p@ss@127.0.0.1/app", "postgres://admin:*****@127.0.0.1/app", []string{"p@ss"}},
			{"query_parameter", "postgresql://127.0.0.1/app?user=admin&password=s3cr3t-query&sslmode=disable",
				"postgresql://127.0.0.1/app?user=admin&password=*****&sslmode=disable", []string{"s3cr3t-query"}},
			{"placeholders_shown", "postgres://{{username}}:{{password}}@127.0.0.1/app",
				"postgres://{{username}}:{{password}}@127.0.0.1/app", nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ts.must("POST", "database/config/"+tc.name, testAdminToken, map[string]any{"plugin_name": PluginPostgres,
					"connection_url": tc.url, "verify_connection": false, "allowed_roles": "*"})
				out := ts.must("GET", "database/config/"+tc.name, testAdminToken, nil)
				details, _ := dataOf(out)["connection_details"].(map[string]any)
				if got := details["connection_url"]; got != tc.want {
					t.Errorf("connection_url read as %q, want %q", got, tc.want)
				}
				// Read back as written, as Vault stores it.
				if v := dataOf(out)["verify_connection"]; v != false {
					t.Errorf("verify_connection written false, read as %v", v)
				}
				b, _ := json.Marshal(out)
				for _, s := range tc.secrets {
					if bytes.Contains(b, []byte(s)) {
						t.Errorf("the read shows %q: %s", s, b)
					}
				}
			})
		}
	})
}

// TestNoExistenceOracle: a caller without a capability on a path gets the
// same answer whether what it names exists or not, as Vault answers 403
// to an unprivileged token for both (it checks the ACL before routing).
// Each pair below differed: mounts, endpoints and AppRoles (and with the
// login, role IDs) could be enumerated by anyone holding any token. (A
// lease is answered "invalid lease" to any token, as Vault's default
// policy lets every token renew and look up: its ID is 96 random bits.)
func TestNoExistenceOracle(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		ts.policy("mine", `path "secret/data/mine/*" { capabilities = ["read"] }`)
		tok := ts.tokenWith("mine")
		ts.must("POST", "sys/mounts/team", testAdminToken, map[string]any{"type": "kv", "options": map[string]string{"version": "2"}})
		ts.must("POST", "auth/approle/role/deploy", testAdminToken, map[string]any{"token_policies": "mine"})
		roleID := dataOf(ts.must("GET", "auth/approle/role/deploy/role-id", testAdminToken, nil))["role_id"]

		for _, tc := range []struct {
			name           string
			method         string
			exists, absent string
			body           any
		}{
			{"kv_mount", "GET", "team/data/x", "nosuchmount/data/x", nil},
			{"kv_mount_other_kind", "GET", "team/nosuchkind/x", "nosuchmount/nosuchkind/x", nil},
			{"approle_role_id", "GET", "auth/approle/role/deploy/role-id", "auth/approle/role/nosuch/role-id", nil},
			{"sys_endpoint", "GET", "sys/mounts", "sys/nosuch", nil},
			{"ui_mount_info", "GET", "sys/internal/ui/mounts/team", "sys/internal/ui/mounts/nosuch", nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				st1, out1 := ts.call(tc.method, tc.exists, tok, tc.body)
				st2, out2 := ts.call(tc.method, tc.absent, tok, tc.body)
				if st1 != 403 || st2 != 403 {
					t.Errorf("%s: %d %v; %s: %d %v; want 403 for both", tc.exists, st1, out1, tc.absent, st2, out2)
				}
			})
		}
		// A mount the caller can use is described to it.
		if st, out := ts.call("GET", "sys/internal/ui/mounts/secret", tok, nil); st != 200 || dataOf(out)["type"] != "kv" {
			t.Errorf("the caller's own mount: %d %v", st, out)
		}
		// The admin still learns that a route does not exist.
		if st, _ := ts.call("GET", "nosuchmount/data/x", testAdminToken, nil); st != 404 {
			t.Errorf("admin on a missing mount: %d, want 404", st)
		}

		t.Run("approle_login_without_secret_id", func(t *testing.T) {
			st1, out1 := ts.call("POST", "auth/approle/login", "", map[string]any{"role_id": roleID})
			st2, out2 := ts.call("POST", "auth/approle/login", "", map[string]any{"role_id": "no-such-role-id"})
			if st1 != st2 || !reflect.DeepEqual(out1["errors"], out2["errors"]) {
				t.Errorf("a known role ID answers %d %v, an unknown one %d %v", st1, out1, st2, out2)
			}
		})
	})
}

// TestBodyAttacks: bodies built to cost the server more than they cost the
// sender, and to be read one way here and another elsewhere. The login
// endpoints parse a body before anyone is authenticated: 2 MiB of tiny
// members decoded into a map at once (40 MB per request, OpenBao's
// CVE-2025-59043, Vault's JSON limits), and the refusal named every one of
// them (1.4 MB) in the answer and in the fsynced audit record. A repeated
// member was silently the last one (Go's reading; others read the first).
func TestBodyAttacks(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		ts.must("POST", "transit/keys/k", testAdminToken, nil)
		members := func(open, item, close string, n int) string {
			var b strings.Builder
			b.WriteString(open)
			for i := 0; i < n && b.Len() < MaxBody-64; i++ {
				if i > 0 {
					b.WriteString(",")
				}
				b.WriteString(strings.ReplaceAll(item, "N", fmt.Sprintf("%x", i)))
			}
			b.WriteString(close)
			return b.String()
		}
		t.Run("many_members_before_authentication", func(t *testing.T) {
			body := members("{", `"N":0`, "}", 1<<30)
			var m1, m2 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m1)
			st, out := ts.call("POST", "auth/approle/login", "", body)
			runtime.ReadMemStats(&m2)
			b, _ := json.Marshal(out)
			if st != 400 || len(b) > 2048 {
				t.Errorf("answer %d of %d bytes, want 400 and a short message", st, len(b))
			}
			if e := ts.audit.last().Details["error"]; len(e) > 1100 {
				t.Errorf("the audit record's error is %d bytes", len(e))
			}
			if a := m2.TotalAlloc - m1.TotalAlloc; a > 16<<20 {
				t.Errorf("one %d-byte body allocated %d MB", len(body), a>>20)
			}
		})
		t.Run("many_batch_items", func(t *testing.T) {
			body := members(`{"batch_input":[`, `{}`, "]}", 1<<30)
			if st, out := ts.call("POST", "transit/encrypt/k", testAdminToken, body); st != 400 || !strings.Contains(fmt.Sprint(out), "at most") {
				t.Errorf("%d %v", st, out)
			}
		})
		for _, tc := range []struct{ name, path, body string }{
			{"duplicate_member_login", "auth/approle/login", `{"role_id":"a","secret_id":"x","secret_id":"y"}`},
			{"duplicate_member_token_create", "auth/token/create", `{"policies":["reader"],"policies":["admin"]}`},
			{"duplicate_member_in_batch_item", "transit/encrypt/k", `{"batch_input":[{"plaintext":"aGk=","plaintext":"aG8="}]}`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if st, out := ts.call("POST", tc.path, testAdminToken, tc.body); st != 400 || !strings.Contains(fmt.Sprint(out), "more than once") {
					t.Errorf("%d %v, want 400 naming the repeated member", st, out)
				}
			})
		}
	})
}

// TestListIsCheckedWithTrailingSlash: Vault checks a list against the path
// with a trailing "/" (http/logical.go), so Vault policies grant listing
// with "secret/metadata/app/" or "secret/metadata/app/*", and deny it with
// "secret/metadata/app/". Here the "/" was trimmed before the check: such
// a deny never matched, and a broader grant listed the denied keys.
func TestListIsCheckedWithTrailingSlash(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		for _, p := range []string{"hr/salaries", "team/a", "other/b"} {
			ts.must("POST", "secret/data/"+p, testAdminToken, map[string]any{"data": map[string]any{"v": 1}})
		}
		ts.policy("browse", `
path "secret/metadata/*" { capabilities = ["list"] }
path "secret/metadata/hr/" { capabilities = ["deny"] }`)
		ts.policy("team", `path "secret/metadata/team/*" { capabilities = ["list"] }`)
		ts.policy("other", `path "secret/metadata/other" { capabilities = ["list"] }`)
		browse, team, other := ts.tokenWith("browse"), ts.tokenWith("team"), ts.tokenWith("other")
		for _, tc := range []struct {
			name, token, path string
			want              int
		}{
			{"deny_on_the_listed_folder", browse, "secret/metadata/hr", 403},
			{"deny_with_the_slash_given", browse, "secret/metadata/hr/", 403},
			{"grant_elsewhere_still_lists", browse, "secret/metadata/team", 200},
			{"glob_under_the_folder_lists_it", team, "secret/metadata/team", 200},
			{"path_without_slash_is_not_the_folder", other, "secret/metadata/other", 403},
		} {
			t.Run(tc.name, func(t *testing.T) {
				for _, m := range []string{"LIST", "GET?list=true"} {
					method, q, _ := strings.Cut(m, "?")
					if st, out := ts.call(method, tc.path+"?"+q, tc.token, nil); st != tc.want {
						t.Errorf("%s %s: %d %v, want %d", method, tc.path, st, out, tc.want)
					}
				}
			})
		}
	})
}

// TestExpiredTokenStaysExpired: an expired token is revoked, with its
// leases, by the next maintenance pass; until then it is only a row.
// renew-accessor renewed it (to its max TTL) and brought it back to life.
func TestExpiredTokenStaysExpired(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		out := ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"ttl": "1m", "explicit_max_ttl": "24h"})
		tok := authToken(t, out)
		acc := out["auth"].(map[string]any)["accessor"]
		ts.now = ts.now.Add(2 * time.Minute) // expired; no Tick yet
		if st, out := ts.call("POST", "auth/token/renew-accessor", testAdminToken, map[string]any{"accessor": acc, "increment": "1h"}); st != 400 {
			t.Errorf("renew-accessor of an expired token: %d %v, want 400", st, out)
		}
		if st, _ := ts.call("GET", "auth/token/lookup-self", tok, nil); st != 403 {
			t.Errorf("the expired token works again: %d", st)
		}
	})
}

// TestRotateRootFailureKeepsTheAdminPassword: rotate-root sets a new
// password in PostgreSQL inside the transaction that stores it with its
// audit record. When that transaction failed afterwards (here the audit
// log), PostgreSQL had a password no one knew: every later creds,
// revocation and rotate-root failed until a superuser stepped in.
func TestRotateRootFailureKeepsTheAdminPassword(t *testing.T) {
	pg := storetest.PostgresPassword(t)
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		admin := fmt.Sprintf("rot_admin_%d", time.Now().UnixNano())
		if err := pg.Psql(pg.Password, fmt.Sprintf("CREATE ROLE %s LOGIN CREATEROLE PASSWORD 'rot-initial-pass'", admin)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pg.Psql(pg.Password, "DROP ROLE IF EXISTS "+admin) })
		ts.must("POST", "database/config/rot", testAdminToken, map[string]any{"plugin_name": PluginPostgres,
			"connection_url": fmt.Sprintf("postgres://{{username}}:{{password}}@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=3", pg.Port),
			"username":       admin, "password": "rot-initial-pass", "allowed_roles": "*"})
		ts.audit.mu.Lock()
		ts.audit.failTx = true
		ts.audit.mu.Unlock()
		if st, out := ts.call("POST", "database/rotate-root/rot", testAdminToken, nil); st != 500 {
			t.Fatalf("rotate-root with the audit log down: %d %v, want 500", st, out)
		}
		ts.audit.mu.Lock()
		ts.audit.failTx = false
		ts.audit.mu.Unlock()
		if st, out := ts.call("POST", "database/rotate-root/rot", testAdminToken, nil); st != 204 {
			t.Fatalf("the stored admin password no longer works: rotate-root %d %v", st, out)
		}
	})
}

// TestUseLimitsHoldUnderConcurrency: a secret ID with num_uses 1 and a
// token with num_uses 1, spent by 16 concurrent requests, admit one
// each: the use is spent under a row lock (PostgreSQL) or an immediate
// transaction (SQLite) in the transaction that acts on it.
func TestUseLimitsHoldUnderConcurrency(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		ts.policy("reader", `path "secret/data/*" { capabilities = ["read"] }`)
		ts.must("POST", "auth/approle/role/once", testAdminToken, map[string]any{"token_policies": "reader", "token_num_uses": 1})
		roleID := dataOf(ts.must("GET", "auth/approle/role/once/role-id", testAdminToken, nil))["role_id"]
		sid := dataOf(ts.must("POST", "auth/approle/role/once/secret-id", testAdminToken, map[string]any{"num_uses": 1}))["secret_id"]
		race := func(fn func() int) (ok int) {
			var wg sync.WaitGroup
			var mu sync.Mutex
			for range 16 {
				wg.Go(func() {
					if fn() == 200 {
						mu.Lock()
						ok++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			return ok
		}
		var tok string
		var tokMu sync.Mutex
		logins := race(func() int {
			st, out := ts.call("POST", "auth/approle/login", "", map[string]any{"role_id": roleID, "secret_id": sid})
			if st == 200 {
				tokMu.Lock()
				tok = authToken(t, out)
				tokMu.Unlock()
			}
			return st
		})
		if logins != 1 {
			t.Fatalf("a one-use secret ID logged in %d times", logins)
		}
		if uses := race(func() int { st, _ := ts.call("GET", "auth/token/lookup-self", tok, nil); return st }); uses != 1 {
			t.Fatalf("a one-use token served %d requests", uses)
		}
	})
}

// TestJWTRoleBoundCIDRsBindTheToken: a JWT role's token_bound_cidrs bind
// the token it issues as an AppRole's do (the JWT-SVID is a bearer
// credential too: a token from it copied elsewhere must not work there).
func TestJWTRoleBoundCIDRsBindTheToken(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	bundle := jwtbundle.New(td)
	if err := bundle.AddJWTAuthority("k1", key.Public()); err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: "spiffe://example.org/ns/prod/sa/web", Audience: jwt.Audience{"moatless-secrets"},
		Expiry: jwt.NewNumericDate(time.Now().Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(time.Now())}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db, func(c *Config) { c.JWTBundles = bundle })
		ts.now = time.Now() // the JWT-SVID is checked against the real clock
		ts.policy("reader", `path "secret/data/*" { capabilities = ["read"] }`)
		ts.must("POST", "secret/data/app", testAdminToken, map[string]any{"data": map[string]any{"k": "v"}})
		ts.must("POST", "auth/jwt/role/web", testAdminToken, map[string]any{"bound_audiences": "moatless-secrets",
			"bound_subjects": "spiffe://example.org/ns/prod/sa/web", "token_policies": "reader", "token_bound_cidrs": "127.0.0.0/8"})
		tok := authToken(t, ts.must("POST", "auth/jwt/login", "", map[string]any{"role": "web", "jwt": svid}))
		if st, out := ts.call("GET", "secret/data/app", tok, nil); st != 200 {
			t.Fatalf("from the bound address: %d %v", st, out)
		}
		if st, _ := ts.call("GET", "secret/data/app", tok, nil, "192.0.2.7:5555"); st != 403 {
			t.Errorf("the JWT login's token used from outside its token_bound_cidrs: %d, want 403", st)
		}
		if st, _ := ts.call("POST", "auth/jwt/login", "", map[string]any{"role": "web", "jwt": svid}, "192.0.2.7:5555"); st != 400 {
			t.Errorf("JWT login from outside token_bound_cidrs: %d, want 400", st)
		}
	})
}

// TestConcurrentLoginsKeepThePool: 48 AppRole logins at once with one
// secret ID (a fleet of pods starting with the same credential) and 48
// cert logins all succeed. Each login's transaction holds a connection
// (and, for AppRole, the secret ID's row lock); it read the token's
// policies through a second connection from the store's pool (16 on
// PostgreSQL), so once every connection was held by a login waiting for
// another, none moved again: every request of the server that needs the
// store waited with them. Fails on the parent on PostgreSQL: the logins
// end only at their deadline (TestUseLimitsHoldUnderConcurrency hung the
// same way in one CI run).
func TestConcurrentLoginsKeepThePool(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db, func(c *Config) {
			c.Peer = func(*http.Request) (*Peer, error) {
				return &Peer{SPIFFEID: "spiffe://example.org/ns/prod/sa/web", NotAfter: time.Date(2026, 12, 7, 13, 0, 0, 0, time.UTC)}, nil
			}
		})
		ts.policy("reader", `path "secret/data/*" { capabilities = ["read"] }`)
		ts.must("POST", "auth/approle/role/fleet", testAdminToken, map[string]any{"token_policies": "reader"})
		roleID := dataOf(ts.must("GET", "auth/approle/role/fleet/role-id", testAdminToken, nil))["role_id"]
		sid := dataOf(ts.must("POST", "auth/approle/role/fleet/secret-id", testAdminToken, nil))["secret_id"]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ts.ctx = ctx
		for _, login := range []struct {
			path string
			body map[string]any
		}{
			{"auth/approle/login", map[string]any{"role_id": roleID, "secret_id": sid}},
			{"auth/cert/login", nil},
		} {
			var wg sync.WaitGroup
			codes := make([]int, 48)
			for i := range codes {
				wg.Go(func() { codes[i], _ = ts.call("POST", login.path, "", login.body) })
			}
			wg.Wait()
			for i, c := range codes {
				if c != 200 {
					t.Fatalf("%s: login %d of %d answered %d (the pool ran dry: every login waited for another's connection)", login.path, i, len(codes), c)
				}
			}
		}
	})
}
