package secrets

import (
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestUsedUpTokensLeasesAreRevoked: when a use-limited token's last use
// ends it, the leases it obtained with its earlier uses are revoked, as
// for any other end of a token (Vault revokes a token whose uses run out,
// and with it its leases). The last use deleted the token's row alone:
// its database users lived on until their own TTL, with no token left to
// revoke them by.
func TestUsedUpTokensLeasesAreRevoked(t *testing.T) {
	pg := storetest.PostgresPassword(t)
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		role := ts.dbRole(pg, fmt.Sprintf("lastuse%d", db.Dialect()))
		ts.policy("creds", `path "database/creds/*" { capabilities = ["read"] }
path "auth/token/create" { capabilities = ["update", "sudo"] }`)
		tok := authToken(t, ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": []string{"creds"}, "num_uses": 3}))
		out := ts.must("GET", "database/creds/"+role, tok, nil)
		user, _ := dataOf(out)["username"].(string)
		child := authToken(t, ts.must("POST", "auth/token/create", tok, map[string]any{"policies": []string{"creds"}}))
		ts.must("GET", "database/creds/"+role, child, nil)
		ts.must("GET", "auth/token/lookup-self", tok, nil) // the last use
		if st, _ := ts.call("GET", "auth/token/lookup-self", tok, nil); st != 403 {
			t.Fatalf("a used-up token: %d", st)
		}
		ts.svc.Tick(t.Context())
		ls, err := db.Leases(t.Context(), "database/creds/"+role+"/", "", 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			t.Errorf("lease %s (token %s) outlives its used-up token", l.ID, l.TokenAccessor)
		}
		adminDB, err := sql.Open("pgx", pg.DSN(pg.Superuser, pg.Password, "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer adminDB.Close()
		var n int
		if err := adminDB.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", user).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("database user %s outlives its used-up token", user)
		}
	})
}

// TestNoDatabaseUserForAGoneToken: a request whose token is gone by the
// time it would create the database user (its own use was the token's
// last, or the token was revoked since it authenticated the request)
// creates none. The user was created first and the token checked only
// when the lease was written: the lease was refused and the user dropped
// again, a CREATE ROLE and a DROP ROLE on the database for a token that
// could have none.
func TestNoDatabaseUserForAGoneToken(t *testing.T) {
	pg := storetest.PostgresPassword(t)
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		role := ts.dbRole(pg, fmt.Sprintf("gone%d", db.Dialect()))
		ts.policy("creds", `path "database/creds/*" { capabilities = ["read"] }`)
		created := false
		ts.svc.testBeforeLeaseWrite = func() { created = true }
		defer func() { ts.svc.testBeforeLeaseWrite = nil }()
		tok := authToken(t, ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": []string{"creds"}, "num_uses": 1}))
		if st, out := ts.call("GET", "database/creds/"+role, tok, nil); st != 403 {
			t.Fatalf("creds on a token's last use: %d %v", st, out)
		}
		if created {
			t.Error("a database user was created for a token's last use")
		}
	})
}

// TestTokenRevocationReachesEveryLease: revoking a token asks for the
// revocation of every lease it holds, however many: those past the ones
// revoked at once (tokenLeasesAtOnce) are revoked by the maintenance
// pass. The revocation marked only the first 10,000 (a token may obtain
// any number of leases): the rest were left as they were, live until
// their TTL.
func TestTokenRevocationReachesEveryLease(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ts := newTestService(t, db)
		defer func(n int) { tokenLeasesAtOnce = n }(tokenLeasesAtOnce)
		tokenLeasesAtOnce = 2
		out := ts.must("POST", "auth/token/create", testAdminToken, map[string]any{"policies": []string{"default"}})
		acc := out["auth"].(map[string]any)["accessor"].(string)
		for i := range 3 {
			l := store.Lease{ID: fmt.Sprintf("database/creds/many/%d", i), Path: "database/creds/many", Kind: "database", TokenAccessor: acc,
				Sealed: []byte("not sealed: its revocation fails and is retried"), IssuedAt: ts.now, ExpiresAt: ts.now.Add(time.Hour), MaxExpires: ts.now.Add(time.Hour)}
			if err := db.CreateLease(t.Context(), db.SQL(), l); err != nil {
				t.Fatal(err)
			}
		}
		ts.must("POST", "auth/token/revoke-accessor", testAdminToken, map[string]any{"accessor": acc})
		ls, err := db.Leases(t.Context(), "database/creds/many/", "", 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if l.RevokeRequestedAt.IsZero() {
				t.Errorf("lease %s of the revoked token is not being revoked", l.ID)
			}
		}
	})
}
