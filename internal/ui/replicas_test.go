package ui_test

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store/storetest"
)

// startReplicas starts two servers on one PostgreSQL store sharing the
// key-encryption key (so the dashboard's session key) and the admin token.
func startReplicas(t *testing.T) (a, b *env) {
	t.Helper()
	dsn := storetest.PostgresDSN(t)
	kek := filepath.Join(t.TempDir(), "kek")
	opt := func(c *config.Server) { c.Store, c.KEKFile = dsn, kek }
	a = startServer(t, opt)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, server.AdminTokenFile), []byte(a.token), 0o600); err != nil {
		t.Fatal(err)
	}
	b = startServer(t, opt, func(c *config.Server) { c.DataDir = dir })
	return a, b
}

// TestLogoutOnEveryReplica: a session logged out on one replica is over
// on the other at once, even for a copy of its cookie taken before.
func TestLogoutOnEveryReplica(t *testing.T) {
	a, b := startReplicas(t)
	c := a.client()
	csrf := a.login(t, c)
	// The cookie jar holds cookies per host, not per port: the session
	// cookie a set goes to b as well.
	if resp, _ := b.get(c, "/ui/nodes"); resp.StatusCode != http.StatusOK {
		t.Fatalf("the session on b before the logout: %d", resp.StatusCode)
	}
	u, _ := url.Parse(a.base)
	stolen := c.Jar.Cookies(u)
	if resp, _ := a.form(c, "/ui/logout", url.Values{"csrf_token": {csrf}}, map[string]string{"Origin": a.base}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout on a: %d", resp.StatusCode)
	}
	c.Jar.SetCookies(u, stolen)
	for name, e := range map[string]*env{"a": a, "b": b} {
		resp, _ := e.get(c, "/ui/nodes")
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
			t.Errorf("a page on %s after the logout: %d %s", name, resp.StatusCode, resp.Header.Get("Location"))
		}
		resp, _ = e.form(c, "/ui/revocations/revoke", url.Values{"spiffe_id": {"spiffe://example.org/x"}, "csrf_token": {csrf}}, map[string]string{"Origin": e.base})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("an action on %s after the logout: %d", name, resp.StatusCode)
		}
	}
}

// TestSessionStoreUnavailable: a logout that cannot be stored says so and
// changes nothing (the session goes on; the user can try again) instead of
// ending the session on this replica only; and when the ended sessions
// cannot be read at all, the dashboard refuses the session rather than
// trusting it.
func TestSessionStoreUnavailable(t *testing.T) {
	e := startServer(t)
	c := e.client()
	csrf := e.login(t, c)
	db := e.srv.Store().SQL()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TRIGGER no_ended_sessions BEFORE INSERT ON ui_ended_sessions BEGIN SELECT RAISE(ABORT, 'refused'); END`); err != nil {
		t.Fatal(err)
	}
	resp, body := e.form(c, "/ui/logout", url.Values{"csrf_token": {csrf}}, map[string]string{"Origin": e.base})
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "could not end the session") {
		t.Fatalf("logout that cannot be stored: %d\n%s", resp.StatusCode, body)
	}
	if resp, _ := e.get(c, "/ui/nodes"); resp.StatusCode != http.StatusOK {
		t.Fatalf("the session after a failed logout: %d", resp.StatusCode)
	}
	if _, err := db.ExecContext(ctx, `DROP TRIGGER no_ended_sessions`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `ALTER TABLE ui_ended_sessions RENAME TO ui_ended_sessions_gone`); err != nil {
		t.Fatal(err)
	}
	resp, _ = e.get(c, "/ui/nodes")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
		t.Fatalf("a page when the ended sessions cannot be read: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}
