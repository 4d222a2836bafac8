package secrets

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestTokensMintedByARevokedIdentityStopWithIt: a token created by a
// token of a SPIFFE ID (its child), or by the SPIFFE ID itself over mTLS,
// stops working the moment that ID is revoked, as the ID's own token
// does; so do the leases it obtained. Only the ID's own token was
// checked against the revocations: a compromised workload with sudo on
// auth/token/create could mint tokens beforehand that kept working after
// `moatless revoke` (their subject is "token:...", and a child's chain
// check asked only whether its parents exist and are unexpired).
func TestTokensMintedByARevokedIdentityStopWithIt(t *testing.T) {
	const web = "spiffe://example.org/ns/prod/sa/web"
	pg := storetest.PostgresPassword(t)
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		var revoked atomic.Bool
		ts := newTestService(t, db, func(c *Config) {
			c.Peer = func(*http.Request) (*Peer, error) {
				return &Peer{SPIFFEID: web, NotAfter: time.Date(2026, 12, 7, 13, 0, 0, 0, time.UTC)}, nil
			}
			c.Revoked = func(id string) bool { return revoked.Load() && id == web }
		})
		ts.must("PUT", "sys/policies/acl/web", testAdminToken, map[string]any{"policy": `
name: web
subjects:
  spiffe_ids: [` + web + `]
paths:
  - path: auth/token/create*
    capabilities: [update, sudo]
`})
		ts.policy("kid", `path "secret/data/*" { capabilities = ["read"] }
path "database/creds/*" { capabilities = ["read"] }
path "auth/token/create" { capabilities = ["update", "sudo"] }`)
		role := ts.dbRole(pg, fmt.Sprintf("idrev%d", db.Dialect()))
		ts.must("POST", "secret/data/x", testAdminToken, map[string]any{"data": map[string]any{"k": "v"}})
		certTok := authToken(t, ts.must("POST", "auth/cert/login", "", nil))
		child := authToken(t, ts.must("POST", "auth/token/create", certTok, map[string]any{"policies": []string{"kid"}}))
		grandchild := authToken(t, ts.must("POST", "auth/token/create", child, map[string]any{"policies": []string{"kid"}}))
		direct := authToken(t, ts.must("POST", "auth/token/create", "", map[string]any{"policies": []string{"kid"}}))
		orphan := authToken(t, ts.must("POST", "auth/token/create-orphan", certTok, map[string]any{"policies": []string{"kid"}}))
		toks := map[string]string{"child": child, "grandchild": grandchild, "created_over_mtls": direct, "orphan_of_the_token": orphan}
		for name, tok := range toks {
			if st, out := ts.call("GET", "secret/data/x", tok, nil); st != 200 {
				t.Fatalf("%s before the revocation: %d %v", name, st, out)
			}
		}
		ts.must("GET", "database/creds/"+role, grandchild, nil)
		revoked.Store(true)
		for name, tok := range toks {
			if st, _ := ts.call("GET", "secret/data/x", tok, nil); st != 403 {
				t.Errorf("%s after its SPIFFE ID was revoked: %d, want 403", name, st)
			}
		}
		// The lease goes at the next maintenance pass, as the leases the
		// identity obtained itself do.
		ts.svc.Tick(t.Context())
		ls, err := db.Leases(t.Context(), "database/creds/"+role+"/", "", 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			t.Errorf("lease %s of the grandchild outlives the revocation of its creator's SPIFFE ID", l.ID)
		}
	})
}

// dbRole configures a database connection to pg's server and a role
// named name creating a login user, and returns the role's name.
func (ts *testService) dbRole(pg *storetest.PasswordServer, name string) string {
	t := ts.t
	t.Helper()
	admin := fmt.Sprintf("%s_admin_%d", name, time.Now().UnixNano())
	if err := pg.Psql(pg.Password, fmt.Sprintf("CREATE ROLE %s LOGIN CREATEROLE PASSWORD '%s-pass'", admin, name)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Psql(pg.Password, "DROP ROLE IF EXISTS "+admin) })
	ts.must("POST", "database/config/"+name, testAdminToken, map[string]any{"plugin_name": PluginPostgres,
		"connection_url": fmt.Sprintf("postgres://{{username}}:{{password}}@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=3", pg.Port),
		"username":       admin, "password": name + "-pass", "allowed_roles": "*"})
	ts.must("POST", "database/roles/"+name, testAdminToken, map[string]any{"db_name": name, "default_ttl": "1h",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`})
	return name
}
