package server_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/wire"
)

var pgSeq atomic.Int64

// pgApp prepares a database on the password-authenticating PostgreSQL
// with a table and an admin role for Moatless that owns it.
type pgApp struct {
	pg          *storetest.PasswordServer
	db, admin   string
	adminPass   string
	connURL     string
	connBadPort string
}

func newPGApp(t *testing.T) *pgApp {
	pg := storetest.PostgresPassword(t)
	n := pgSeq.Add(1)
	a := &pgApp{pg: pg, db: fmt.Sprintf("app%d", n), admin: fmt.Sprintf("moatless_admin%d", n), adminPass: "admin-initial-pass"}
	for _, st := range []string{
		"CREATE DATABASE " + a.db,
		fmt.Sprintf("CREATE ROLE %s LOGIN CREATEROLE PASSWORD '%s'", a.admin, a.adminPass),
		"GRANT pg_signal_backend TO " + a.admin,
	} {
		if err := pg.Psql(pg.Password, st); err != nil {
			t.Fatal(err)
		}
	}
	su, err := sql.Open("pgx", pg.DSN(pg.Superuser, pg.Password, a.db))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close()
	for _, st := range []string{
		"CREATE TABLE orders (id int PRIMARY KEY, total int)",
		"INSERT INTO orders VALUES (1, 100), (2, 250)",
		"ALTER TABLE orders OWNER TO " + a.admin,
		"GRANT ALL ON SCHEMA public TO " + a.admin,
	} {
		if _, err := su.Exec(st); err != nil {
			t.Fatalf("%s: %v", st, err)
		}
	}
	a.connURL = fmt.Sprintf("postgres://{{username}}:{{password}}@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=3", pg.Port, a.db)
	a.connBadPort = fmt.Sprintf("postgres://{{username}}:{{password}}@127.0.0.1:1/%s?sslmode=disable&connect_timeout=1", a.db)
	return a
}

// login tries to log in as user and read orders.
func (a *pgApp) login(user, pass string) error {
	db, err := sql.Open("pgx", a.pg.DSN(user, pass, a.db))
	if err != nil {
		return err
	}
	defer db.Close()
	var n int
	return db.QueryRow("SELECT count(*) FROM orders").Scan(&n)
}

func (a *pgApp) roleExists(t *testing.T, user string) bool {
	t.Helper()
	db, err := sql.Open("pgx", a.pg.DSN(a.pg.Superuser, a.pg.Password, a.db))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ok bool
	if err := db.QueryRow("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", user).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// waitGone polls until the role is dropped (the server's maintenance
// loop revokes in the background).
func (a *pgApp) waitGone(t *testing.T, user string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for a.roleExists(t, user) {
		if time.Now().After(deadline) {
			t.Fatalf("role %s still exists", user)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := e.client(nil).Get("https://" + e.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestVaultClientDatabaseCreds: dynamic PostgreSQL users through the
// official Vault client, against a real PostgreSQL with password logins.
func TestVaultClientDatabaseCreds(t *testing.T) {
	a := newPGApp(t)
	dir := t.TempDir()
	e := start(t, dir)
	admin := e.vaultClient(t, e.token, nil)

	if _, err := admin.Logical().Write("database/config/appdb", map[string]any{
		"plugin_name": "postgresql-database-plugin", "connection_url": a.connURL,
		"username": a.admin, "password": a.adminPass, "allowed_roles": "reader"}); err != nil {
		t.Fatalf("config: %v", err)
	}
	cfg, err := admin.Logical().Read("database/config/appdb")
	if err != nil || strings.Contains(fmt.Sprint(cfg.Data), a.adminPass) {
		t.Fatalf("config read shows the password or failed: %v %v", cfg, err)
	}
	if _, err := admin.Logical().Write("database/roles/reader", map[string]any{
		"db_name": "appdb",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
			GRANT SELECT ON orders TO "{{name}}";`,
		"default_ttl": "1h", "max_ttl": "2h"}); err != nil {
		t.Fatalf("role: %v", err)
	}
	if err := admin.Sys().PutPolicy("dbapp", `path "database/creds/reader" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.Auth().Token().Create(&vault.TokenCreateRequest{Policies: []string{"dbapp"}, TTL: "3h"})
	if err != nil {
		t.Fatalf("token create: %v", err)
	}
	app := e.vaultClient(t, tok.Auth.ClientToken, nil)

	creds := func() (*vault.Secret, string, string) {
		t.Helper()
		s, err := app.Logical().Read("database/creds/reader")
		if err != nil {
			t.Fatalf("creds: %v", err)
		}
		if s.LeaseID == "" || !s.Renewable || s.LeaseDuration != 3600 {
			t.Fatalf("lease: id %q renewable %v duration %d", s.LeaseID, s.Renewable, s.LeaseDuration)
		}
		return s, s.Data["username"].(string), s.Data["password"].(string)
	}

	// A leased user logs in and reads what it was granted, renews, and is
	// gone after revoke.
	s1, u1, p1 := creds()
	if err := a.login(u1, p1); err != nil {
		t.Fatalf("leased user cannot log in: %v", err)
	}
	if err := a.login(u1, p1+"x"); err == nil {
		t.Fatal("wrong password accepted")
	}
	r, err := app.Sys().Renew(s1.LeaseID, 1800)
	if err != nil || r.LeaseDuration != 1800 || r.LeaseID != s1.LeaseID {
		t.Fatalf("renew: %+v %v", r, err)
	}
	if err := app.Sys().Revoke(s1.LeaseID); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if a.roleExists(t, u1) || a.login(u1, p1) == nil {
		t.Fatal("revoked user still exists or logs in")
	}
	if _, err := app.Sys().Renew(s1.LeaseID, 60); respCode(err) != http.StatusBadRequest {
		t.Fatalf("renew of a revoked lease: %v", err)
	}

	// Expiry: the maintenance loop drops the user once the lease ends.
	_, u2, p2 := creds()
	if err := a.login(u2, p2); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(61 * time.Minute)
	a.waitGone(t, u2)
	if a.login(u2, p2) == nil {
		t.Fatal("expired user logs in")
	}

	// A failed revocation (PostgreSQL unreachable) is counted, kept and
	// retried with backoff until it succeeds.
	s3, u3, _ := creds()
	if _, err := admin.Logical().Write("database/config/appdb", map[string]any{
		"plugin_name": "postgresql-database-plugin", "connection_url": a.connBadPort, "verify_connection": false,
		"username": a.admin, "password": a.adminPass, "allowed_roles": "reader"}); err != nil {
		t.Fatalf("config to an unreachable port: %v", err)
	}
	failures := e.metric(t, `moatless_secrets_lease_revocations_total{outcome="failure"}`)
	if err := admin.Sys().Revoke(s3.LeaseID); respCode(err) != http.StatusInternalServerError {
		t.Fatalf("revoke against an unreachable database: %v", err)
	}
	if got := e.metric(t, `moatless_secrets_lease_revocations_total{outcome="failure"}`); got <= failures {
		t.Fatalf("failure not counted: %v -> %v", failures, got)
	}
	look, err := admin.Logical().Write("sys/leases/lookup", map[string]any{"lease_id": s3.LeaseID})
	if err != nil || look.Data["revocation_attempts"] == nil {
		t.Fatalf("lookup of a failing lease: %+v %v", look, err)
	}
	if !a.roleExists(t, u3) {
		t.Fatal("role dropped although the database was unreachable")
	}
	if _, err := admin.Logical().Write("database/config/appdb", map[string]any{
		"plugin_name": "postgresql-database-plugin", "connection_url": a.connURL,
		"username": a.admin, "password": a.adminPass, "allowed_roles": "reader"}); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Minute) // past the first backoff
	a.waitGone(t, u3)

	// A restart during the lease: the lease expires while the server is
	// down; the next server revokes it at start.
	_, u4, p4 := creds()
	e.stop()
	expireLeases(t, filepath.Join(dir, "moatless.db"))
	e2 := start(t, dir)
	a.waitGone(t, u4)
	if a.login(u4, p4) == nil {
		t.Fatal("user whose lease expired during the restart logs in")
	}

	// rotate-root: afterwards only Moatless knows the admin password, and
	// it still creates users.
	admin2 := e2.vaultClient(t, e2.token, nil)
	if _, err := admin2.Logical().Write("database/rotate-root/appdb", nil); err != nil {
		t.Fatalf("rotate-root: %v", err)
	}
	if err := a.login(a.admin, a.adminPass); err == nil {
		t.Fatal("the old admin password still works after rotate-root")
	}
	s5, err := admin2.Logical().Read("database/creds/reader")
	if err != nil {
		t.Fatalf("creds after rotate-root: %v", err)
	}
	if err := a.login(s5.Data["username"].(string), s5.Data["password"].(string)); err != nil {
		t.Fatal(err)
	}
	if err := admin2.Sys().RevokePrefix("database/creds/reader"); err != nil {
		t.Fatalf("revoke-prefix: %v", err)
	}
	if a.roleExists(t, s5.Data["username"].(string)) {
		t.Fatal("revoke-prefix left the user")
	}
}

// expireLeases moves every lease's expiry into the past in a stopped
// server's store, as if its time had run out while the server was down.
func expireLeases(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(context.Background(), "UPDATE secrets_leases SET expires_at = 1"); err != nil {
		t.Fatal(err)
	}
}

// TestDatabaseLeasesOfRevokedIdentity: a workload that obtained database
// users with its SVID loses them when its SPIFFE ID is revoked, not when
// the leases run out, and not at the maintenance loop's next pass either:
// with the next pass a minute away, the revocation itself drops them.
func TestDatabaseLeasesOfRevokedIdentity(t *testing.T) {
	a := newPGApp(t)
	e := start(t, "", func(c *config.Server) { c.PollInterval = wire.Duration(time.Minute) })
	admin := e.vaultClient(t, e.token, nil)
	if _, err := admin.Logical().Write("database/config/appdb", map[string]any{
		"plugin_name": "postgresql-database-plugin", "connection_url": a.connURL,
		"username": a.admin, "password": a.adminPass, "allowed_roles": "reader"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Logical().Write("database/roles/reader", map[string]any{"db_name": "appdb", "default_ttl": "1h",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}'; GRANT SELECT ON orders TO "{{name}}";`}); err != nil {
		t.Fatal(err)
	}
	w := e.attest("spiffe://example.org/ns/prod/sa/reporting")
	pol := "name: reporting\nsubjects: {spiffe_ids: [spiffe://example.org/ns/prod/sa/reporting]}\npaths: [{path: database/creds/reader, capabilities: [read]}]\n"
	e.vreq(e.client(nil), "POST", "/v1/sys/policies/apply", e.token, map[string]any{"files": []map[string]string{{"content": pol}}})
	st, out := e.vreq(w.http, "GET", "/v1/database/creds/reader", "", nil)
	if st != 200 {
		t.Fatalf("creds by SVID: %d %v", st, out)
	}
	user, pass := dataOf(out)["username"].(string), dataOf(out)["password"].(string)
	if err := a.login(user, pass); err != nil {
		t.Fatal(err)
	}
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: "spiffe://example.org/ns/prod/sa/reporting"}, nil)
	a.waitGone(t, user)
	if a.login(user, pass) == nil {
		t.Fatal("the revoked identity's database user still logs in")
	}
}
