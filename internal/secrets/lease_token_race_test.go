package secrets

import (
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestLeaseNeverOutlivesItsRevokedToken: a lease (a real PostgreSQL user)
// obtained by a token while that token, or a token above it, is being
// revoked is revoked with it or refused, as Vault's revocation of a
// token's leases guarantees. The revocation listed the token's leases,
// then deleted the token: a lease written in between (or by a request
// that had authenticated before the delete and wrote its lease after)
// was left behind, a live database user until its TTL, its token gone;
// so was the lease obtained with a use-limited token's last use. The
// interleavings are forced with the service's test hooks.
func TestLeaseNeverOutlivesItsRevokedToken(t *testing.T) {
	pg := storetest.PostgresPassword(t)
	n := 0
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		admin := fmt.Sprintf("race_admin_%d", time.Now().UnixNano())
		if err := pg.Psql(pg.Password, fmt.Sprintf("CREATE ROLE %s LOGIN CREATEROLE PASSWORD 'race-admin-pass'", admin)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pg.Psql(pg.Password, "DROP ROLE IF EXISTS "+admin) })
		adminDB, err := sql.Open("pgx", pg.DSN(admin, "race-admin-pass", "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { adminDB.Close() })
		ts.must("POST", "database/config/race", testAdminToken, map[string]any{"plugin_name": PluginPostgres,
			"connection_url": fmt.Sprintf("postgres://{{username}}:{{password}}@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=3", pg.Port),
			"username":       admin, "password": "race-admin-pass", "allowed_roles": "*"})
		ts.policy("racer", `path "auth/token/create*" { capabilities = ["update", "sudo"] }
path "database/creds/*" { capabilities = ["read"] }`)

		for _, tc := range []struct {
			name string
			// revoke revokes the token child (or its parent) at the end.
			revoke func(parent, child, childAcc string)
			// hook: "delete" obtains the lease between the revocation's
			// reading of the token's leases and its deletion of the token;
			// "write" revokes the token after the lease's database user is
			// created, before the lease is written; "tx" revokes the token
			// concurrently while the lease's transaction is open, just
			// before the lease is written (on PostgreSQL once the
			// revocation waits for a lock, or for 5 seconds).
			hook string
			// uses is the child's num_uses.
			uses int
		}{
			// Its last use deletes a use-limited token before the request
			// it authorizes runs: that request obtains no lease (Vault
			// refuses a lease on a token's last use, hashicorp/vault#737).
			{"last_use", func(_, _, _ string) {}, "", 1},
			{"self_revoked_during_lease_tx", func(_, c, _ string) { ts.call("POST", "auth/token/revoke-self", c, nil) }, "tx", 0},
			{"parent_revoked_during_lease_tx", func(p, _, _ string) { ts.call("POST", "auth/token/revoke-self", p, nil) }, "tx", 0},
			{"self_revoked_while_obtaining", func(_, c, _ string) { ts.must("POST", "auth/token/revoke-self", c, nil) }, "delete", 0},
			{"parent_revoked_while_obtaining", func(p, _, _ string) { ts.must("POST", "auth/token/revoke-self", p, nil) }, "delete", 0},
			{"revoked_before_lease_write", func(_, _, a string) {
				ts.must("POST", "auth/token/revoke-accessor", testAdminToken, map[string]any{"accessor": a})
			}, "write", 0},
			{"parent_revoked_before_lease_write", func(p, _, _ string) {
				ts.must("POST", "auth/token/revoke", testAdminToken, map[string]any{"token": p})
			}, "write", 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				n++
				role := fmt.Sprintf("race%d", n)
				ts.must("POST", "database/roles/"+role, testAdminToken, map[string]any{"db_name": "race", "default_ttl": "1h",
					"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`})
				out := ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": []string{"racer"}})
				parent := authToken(t, out)
				out = ts.must("POST", "auth/token/create", parent, map[string]any{"policies": []string{"racer"}, "num_uses": tc.uses})
				child, childAcc := authToken(t, out), out["auth"].(map[string]any)["accessor"].(string)

				st, got := 0, map[string]any(nil)
				switch tc.hook {
				case "":
					st, got = ts.call("GET", "database/creds/"+role, child, nil)
				case "delete":
					ts.svc.testBeforeTokenDelete = func() {
						ts.svc.testBeforeTokenDelete = nil
						st, got = ts.call("GET", "database/creds/"+role, child, nil)
					}
					tc.revoke(parent, child, childAcc)
				case "write":
					ts.svc.testBeforeLeaseWrite = func() {
						ts.svc.testBeforeLeaseWrite = nil
						tc.revoke(parent, child, childAcc)
					}
					st, got = ts.call("GET", "database/creds/"+role, child, nil)
				case "tx":
					done := make(chan struct{})
					ts.svc.testLeaseTokenLocked = func() {
						ts.svc.testLeaseTokenLocked = nil
						go func() {
							defer close(done)
							tc.revoke(parent, child, childAcc)
						}()
						if db.Dialect() == store.Postgres {
							waitForLockWait(t, db)
						}
					}
					st, got = ts.call("GET", "database/creds/"+role, child, nil)
					<-done
				}
				ts.svc.testBeforeTokenDelete, ts.svc.testBeforeLeaseWrite, ts.svc.testLeaseTokenLocked = nil, nil, nil
				if st == 0 {
					t.Fatal("the hook did not run")
				}
				t.Logf("database/creds during the revocation: %d %v", st, got)

				if st, _ := ts.call("GET", "auth/token/lookup-self", child, nil); st == 200 {
					t.Fatalf("the token still works after its revocation: lookup-self %d", st)
				}
				ls, err := db.Leases(t.Context(), "database/creds/"+role+"/", "", 10)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range ls {
					t.Errorf("lease %s outlives its token (revocation requested at %v)", l.ID, l.RevokeRequestedAt)
				}
				var users []string
				rows, err := adminDB.QueryContext(t.Context(), "SELECT rolname FROM pg_roles WHERE rolname LIKE $1", "v-"+role+"-%")
				if err != nil {
					t.Fatal(err)
				}
				for rows.Next() {
					var u string
					rows.Scan(&u)
					users = append(users, u)
				}
				rows.Close()
				if len(users) > 0 {
					t.Errorf("database user %v outlives its token", users)
				}
			})
		}
	})
}

// waitForLockWait returns once a session of db's database waits for a
// lock, or after 5 seconds (when nothing blocks: the code under test
// takes no lock).
func waitForLockWait(t *testing.T, db *store.DB) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for {
		var n int
		if err := db.SQL().QueryRowContext(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Error(err)
			return
		}
		if n > 0 {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Log("no session waits for a lock")
			return
		}
	}
}
