package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServerLogIsJSONFromStartToStop: the server's log is JSON on every
// line, from the first start's admin-token notice (plain text before) to
// a line on SIGTERM and one on the clean stop (none before).
func TestServerLogIsJSONFromStartToStop(t *testing.T) {
	dataDir := t.TempDir()
	addr := freeAddr(t)
	p := start(t, "server", nil, "server", "--data-dir", dataDir, "--trust-domain", trustDomain, "--listen", addr)
	waitFor(t, 30*time.Second, "the server's bundle", func() bool {
		if p.exited() {
			t.Fatalf("server exited:\n%s", p.out.String())
		}
		_, err := os.Stat(filepath.Join(dataDir, "bundle.pem"))
		return err == nil && strings.Contains(p.out.String(), `"msg":"serving"`)
	})
	p.stop(t)
	if code := p.exitCode(t, time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, p.out.String())
	}
	byMsg := map[string]map[string]any{}
	var order []string
	for _, l := range strings.Split(strings.TrimSpace(p.out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		msg, _ := m["msg"].(string)
		byMsg[msg] = m
		order = append(order, msg)
	}
	var token map[string]any
	for msg, m := range byMsg {
		if strings.HasPrefix(msg, "created admin token") {
			token = m
		}
	}
	tokenPath := filepath.Join(dataDir, "admin-token")
	env, _ := token["env"].(map[string]any)
	if token == nil || token["path"] != tokenPath || env["MOATLESS_CACERT"] != filepath.Join(dataDir, "bundle.pem") ||
		env["MOATLESS_TOKEN"] != "$(cat "+tokenPath+")" {
		t.Fatalf("admin token line %v", token)
	}
	b, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(p.out.String(), strings.TrimSpace(string(b))) {
		t.Fatal("the admin token itself is in the log")
	}
	if n := len(order); n < 2 || order[n-2] != "shutting down" || order[n-1] != "stopped" {
		t.Fatalf("last lines %q, want shutting down, stopped", order)
	}
	if c := byMsg["shutting down"]["cause"]; c != "terminated signal received" {
		t.Fatalf("cause %v", c)
	}
}
