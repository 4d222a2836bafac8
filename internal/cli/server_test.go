package cli

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/loopback"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/testpki"
)

// startAdminServer runs an in-process server in a temp data dir and returns the
// environment admin commands need to find it.
func startAdminServer(t *testing.T) (map[string]string, string) {
	t.Helper()
	dir := t.TempDir()
	st := config.DefaultServer(func(string) string { return "" })
	st.DataDir = dir
	st.Listen = "127.0.0.1:0"
	st.Complete()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(context.Background(), server.Config{Settings: st, Listener: ln, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	env := map[string]string{"MOATLESS_DATA_DIR": dir, "MOATLESS_ADDR": ln.Addr().String(), "HOME": dir}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if code, _, _ := runCLI(t, env, "entry", "list"); code == ExitOK {
			return env, dir
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("server not ready")
	return nil, ""
}

func with(env map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// TestAdminCommands drives the admin commands against a real server and
// checks the documented exit codes and outputs.
func TestAdminCommands(t *testing.T) {
	env, dir := startAdminServer(t)
	const parent = "spiffe://moatless.local/agent/node1"

	code, out, errOut := runCLI(t, env, "jointoken", "create", "--spiffe-id", parent)
	if code != ExitOK || !strings.HasPrefix(out, "mlj_") || strings.Count(out, "\n") != 1 {
		t.Fatalf("jointoken create: %d %q %q", code, out, errOut)
	}
	code, out, _ = runCLI(t, env, "entry", "create", "--parent", parent, "--spiffe-id", "spiffe://moatless.local/ns/prod/sa/web",
		"--selector", "unix:uid:1000", "--label", "app=web", "--namespace", "prod", "-o", "json")
	var entry struct {
		ID string `json:"id"`
	}
	if code != ExitOK || json.Unmarshal([]byte(out), &entry) != nil || entry.ID == "" {
		t.Fatalf("entry create: %d %s", code, out)
	}
	policyFile := filepath.Join(dir, "p.yaml")
	os.WriteFile(policyFile, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: STRICT}}\n"), 0o600)
	badPolicy := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badPolicy, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {mtls: {mod: STRICT}}\n"), 0o600)
	adminDir := filepath.Join(dir, "admin")
	// Another server's bundle: a running server whose certificate does not
	// chain to it.
	otherBundle := filepath.Join(dir, "other-bundle.pem")
	os.WriteFile(otherBundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: testpki.NewCA(t, "moatless.local").Cert.Raw}), 0o600)

	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"entry_show", env, []string{"entry", "show", entry.ID}, ExitOK, "spiffe://moatless.local/ns/prod/sa/web"},
		{"entry_show_json_flag_first", env, []string{"entry", "show", "-o", "json", entry.ID}, ExitOK, `"namespace": "prod"`},
		{"entry_list_selector", env, []string{"entry", "list", "--selector", "unix:uid:1000"}, ExitOK, entry.ID},
		{"entry_show_missing", env, []string{"entry", "show", "nope"}, ExitNotFound, "no entry"},
		{"entry_duplicate", env, []string{"entry", "create", "--parent", parent, "--spiffe-id", "spiffe://moatless.local/ns/prod/sa/web", "--selector", "unix:uid:1000"}, ExitUsage, "same SPIFFE ID"},
		{"entry_missing_selector", env, []string{"entry", "create", "--parent", parent, "--spiffe-id", "spiffe://moatless.local/x"}, ExitUsage, "--selector"},
		{"entry_bad_selector", env, []string{"entry", "create", "--parent", parent, "--spiffe-id", "spiffe://moatless.local/x", "--selector", "unix:pid:1"}, ExitUsage, "unknown unix selector kind"},
		{"entry_bad_label", env, []string{"entry", "create", "--parent", parent, "--spiffe-id", "spiffe://moatless.local/x", "--selector", "unix:uid:1", "--label", "novalue"}, ExitUsage, "key=value"},
		{"entry_label_twice", env, []string{"entry", "create", "--parent", parent, "--spiffe-id", "spiffe://moatless.local/x", "--selector", "unix:uid:1", "--label", "a=1", "--label", "a=2"}, ExitUsage, `entry create: --label "a" given twice`},
		{"wrong_token", with(env, "MOATLESS_TOKEN", "mla_wrong"), []string{"entry", "list"}, ExitDenied, "not valid"},
		{"unreachable", with(env, "MOATLESS_ADDR", "127.0.0.1:1"), []string{"entry", "list"}, ExitFailure, "cannot reach"},
		{"wrong_cacert", with(env, "MOATLESS_CACERT", otherBundle), []string{"entry", "list"}, ExitFailure, "does not chain to the given bundle (" + otherBundle + ")"},
		{"wrong_cacert_flag", env, []string{"entry", "list", "--cacert", otherBundle}, ExitFailure, "does not chain to the given bundle (" + otherBundle + ")"},
		{"bad_output", env, []string{"entry", "list", "-o", "xml"}, ExitUsage, "-o must be"},
		{"jointoken_list", env, []string{"jointoken", "list"}, ExitOK, parent},
		{"jointoken_no_id", env, []string{"jointoken", "create"}, ExitUsage, "--spiffe-id is required"},
		{"revoke_unknown_id", env, []string{"revoke", "--spiffe-id", "spiffe://moatless.local/ns/prod/sa/wbe"}, ExitFailure, "nearest known: spiffe://moatless.local/ns/prod/sa/web"},
		{"revoke_unknown_id_json", env, []string{"revoke", "--spiffe-id", "spiffe://moatless.local/ns/prod/sa/wbe", "-o", "json"}, ExitFailure, "--force"},
		{"revoke_known_by_join_token", env, []string{"revoke", "--spiffe-id", parent, "--reason", "node lost"}, ExitOK, "revoked " + parent},
		{"revoke", env, []string{"revoke", "--spiffe-id", "spiffe://moatless.local/ns/prod/sa/bad", "--reason", "test", "--force"}, ExitOK, "revoked"},
		{"revoke_again", env, []string{"revoke", "--spiffe-id", "spiffe://moatless.local/ns/prod/sa/bad"}, ExitUsage, "revoked already"},
		{"revoke_list", env, []string{"revoke", "list", "-o", "json"}, ExitOK, "sa/bad"},
		{"revoke_both", env, []string{"revoke", "--spiffe-id", "spiffe://moatless.local/a", "--serial", "01"}, ExitUsage, "exactly one"},
		{"revoke_lift", env, []string{"revoke", "lift", "--spiffe-id", "spiffe://moatless.local/ns/prod/sa/bad"}, ExitOK, "lifted"},
		{"revoke_lift_again", env, []string{"revoke", "lift", "--spiffe-id", "spiffe://moatless.local/ns/prod/sa/bad"}, ExitNotFound, "not revoked"},
		{"ca_show", env, []string{"ca", "show"}, ExitOK, "active"},
		{"ca_bundle", env, []string{"ca", "bundle"}, ExitOK, "BEGIN CERTIFICATE"},
		{"ca_issue_admin", env, []string{"ca", "issue-admin", "--out", adminDir}, ExitOK, "MOATLESS_CLIENT_CERT"},
		{"ca_issue_admin_not_admin", env, []string{"ca", "issue-admin", "--out", adminDir + "2", "--spiffe-id", "spiffe://moatless.local/me"}, ExitUsage, "admin_ids"},
		{"admin_cert_works", with(env, "MOATLESS_CLIENT_CERT", filepath.Join(adminDir, "admin-cert.pem"), "MOATLESS_CLIENT_KEY", filepath.Join(adminDir, "admin-key.pem")), []string{"entry", "list"}, ExitOK, entry.ID},
		{"agent_list", env, []string{"agent", "list", "-o", "json"}, ExitOK, `"items": []`},
		{"audit_list", env, []string{"audit", "list", "--limit", "5"}, ExitOK, "admin.call"},
		{"audit_verify", env, []string{"audit", "verify", "--data-dir", dir}, ExitOK, "audit log verifies"},
		{"audit_verify_no_store", env, []string{"audit", "verify", "--data-dir", filepath.Join(dir, "none")}, ExitUsage, "no store"},
		{"audit_verify_bad_head", env, []string{"audit", "verify", "--data-dir", dir, "--expect-head", "x"}, ExitUsage, "SEQ:HEX"},
		{"policy_apply", env, []string{"policy", "apply", "-f", policyFile}, ExitOK, "policy version 1 applied"},
		{"policy_apply_again", env, []string{"policy", "apply", "-f", policyFile}, ExitOK, "no change"},
		{"policy_apply_bad", env, []string{"policy", "apply", "-f", badPolicy}, ExitUsage, "line"},
		{"policy_get_yaml", env, []string{"policy", "get", "pa", "default", "-n", "prod", "-o", "yaml"}, ExitOK, "kind: PeerAuthentication"},
		{"policy_get_missing", env, []string{"policy", "get", "pa", "nope"}, ExitNotFound, "no policy"},
		{"policy_history", env, []string{"policy", "history"}, ExitOK, "apply"},
		{"policy_status", env, []string{"policy", "status"}, ExitOK, "policy version 1"},
		{"policy_rollback_missing", env, []string{"policy", "rollback", "9"}, ExitNotFound, "latest is 1"},
		{"policy_delete", env, []string{"policy", "delete", "-f", policyFile}, ExitOK, "policy version 2 applied"},
		{"entry_update", env, []string{"entry", "update", entry.ID, "--label", "app=web2", "--x509-ttl", "30m"}, ExitOK, "Revision       2"},
		{"entry_update_json", env, []string{"entry", "update", entry.ID, "--namespace", "-", "-o", "json"}, ExitOK, `"revision": 3`},
		{"entry_update_nothing", env, []string{"entry", "update", entry.ID}, ExitUsage, "nothing to change"},
		{"entry_update_missing", env, []string{"entry", "update", "nope", "--namespace", "x"}, ExitNotFound, "no entry"},
		{"entry_update_bad", env, []string{"entry", "update", entry.ID, "--x509-ttl", "1s"}, ExitUsage, "x509_ttl"},
		{"entry_update_label_twice", env, []string{"entry", "update", entry.ID, "--label", "app=a", "--label", "app=b"}, ExitUsage, `--label "app" given twice`},
		{"entry_update_bad_label", env, []string{"entry", "update", entry.ID, "--label", "novalue"}, ExitUsage, "entry update: --label \"novalue\": want key=value"},
		{"entry_update_bad_selector", env, []string{"entry", "update", entry.ID, "--selector", "unix:pid:1"}, ExitUsage, "entry update: --selector"},
		{"entry_delete", env, []string{"entry", "delete", entry.ID}, ExitOK, "deleted entry"},
		{"ca_rotate", env, []string{"ca", "rotate"}, ExitOK, "start signing after the publication delay"},
		{"ca_rotate_json", env, []string{"ca", "rotate", "-o", "json"}, ExitOK, `"trust_domain": "moatless.local"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d containing %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
	fi, err := os.Stat(filepath.Join(adminDir, "admin-key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin key mode: %v %v", fi, err)
	}
}

func TestServerCommandRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "server.yaml")
	os.WriteFile(cfg, []byte("listen_address: x\n"), 0o600)
	env := map[string]string{"HOME": dir}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"config_unknown_key", []string{"server", "--config", cfg}, "listen_address"},
		{"bad_trust_domain", []string{"server", "--data-dir", dir, "--trust-domain", "Bad Domain"}, "trust_domain"},
		{"bad_listen", []string{"server", "--data-dir", dir, "--listen", "nope"}, "listen"},
		{"admin_id_elsewhere", []string{"server", "--data-dir", dir, "--admin-id", "spiffe://other.org/admin"}, "admin_ids[0]"},
		{"positional", []string{"server", "extra"}, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, env, tc.args...)
			if code != ExitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, ExitUsage, tc.want)
			}
		})
	}
}

// TestServerCommandRuns starts "moatless server" in-process from a config
// file plus flags (flags win; --data-dir moves the store and KEK the file
// did not name), waits for its files, and stops it with the context: exit 0.
func TestServerCommandRuns(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "server.yaml")
	os.WriteFile(cfg, []byte("trust_domain: example.org\nlisten: 127.0.0.1:1\nlog_level: warn\n"), 0o600)
	data := filepath.Join(dir, "data")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb strings.Builder
	e := &Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &syncWriter{w: &errb}, Getenv: func(k string) string { return map[string]string{"HOME": dir}[k] }}
	done := make(chan int, 1)
	addr, err := loopback.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- e.main(ctx, []string{"server", "--config", cfg, "--data-dir", data, "--listen", addr}) }()
	deadline := time.Now().Add(20 * time.Second)
	adminEnv := map[string]string{"MOATLESS_DATA_DIR": data, "MOATLESS_ADDR": addr, "HOME": dir}
	for {
		if code, _, _ := runCLI(t, adminEnv, "ca", "show", "-o", "json"); code == ExitOK {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("server exited early with %d: %s", code, errb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("server files never appeared")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, f := range []string{"kek", "admin-token"} {
		fi, err := os.Stat(filepath.Join(data, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}
	// The file's trust domain and the flag's listen address are in force.
	if code, out, _ := runCLI(t, adminEnv, "ca", "show", "-o", "json"); code != ExitOK || !strings.Contains(out, `"trust_domain": "example.org"`) {
		t.Fatalf("ca show: %d %s", code, out)
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitOK {
			t.Fatalf("exit %d after cancel: %s", code, errb.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("server did not stop")
	}
	if !strings.Contains(errb.String(), `"msg":"created admin token`) || !strings.Contains(errb.String(), `"path":"`+filepath.Join(data, "admin-token")+`"`) {
		t.Fatalf("first-start notice missing: %s", errb.String())
	}
	tok, _ := os.ReadFile(filepath.Join(data, "admin-token"))
	if strings.Contains(errb.String(), strings.TrimSpace(string(tok))) {
		t.Fatal("the admin token was printed")
	}
}

// syncWriter serializes writes from the server's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
