package ui_test

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
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
