package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
)

// Every oauth subcommand parses its flags (a clash would panic) and
// prints help.
func TestOAuthCommandsHelp(t *testing.T) {
	for _, args := range [][]string{
		{"oauth", "client", "create", "-h"}, {"oauth", "client", "list", "-h"}, {"oauth", "client", "show", "-h"},
		{"oauth", "client", "rotate-secret", "-h"}, {"oauth", "client", "delete", "-h"},
		{"oauth", "user", "create", "-h"}, {"oauth", "user", "list", "-h"}, {"oauth", "user", "show", "-h"},
		{"oauth", "user", "delete", "-h"}, {"oauth", "user", "set-password", "-h"}, {"oauth", "user", "mfa-enroll", "-h"},
		{"oauth", "user", "mfa-confirm", "-h"}, {"oauth", "user", "reset-mfa", "-h"},
		{"oauth", "token", "get", "-h"}, {"oauth", "token", "revoke", "-h"}, {"oauth", "token", "introspect", "-h"}, {"oauth", "token", "revoked", "-h"},
		{"oauth", "keys", "-h"}, {"oauth", "keys", "list", "-h"}, {"oauth", "keys", "rotate", "-h"}, {"oauth", "keys", "revoke", "-h"}, {"oauth", "help"},
	} {
		t.Run(strings.Join(args[1:], "_"), func(t *testing.T) {
			if code, _, stderr := runCLI(t, nil, args...); code != ExitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
		})
	}
}

// startServer runs a real control plane on 127.0.0.1 for CLI tests and
// returns the environment admin commands need.
func startServer(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	st := config.DefaultServer(func(string) string { return "" })
	st.DataDir, st.TrustDomain, st.Listen = dir, "example.org", "127.0.0.1:0"
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
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	tok, err := os.ReadFile(filepath.Join(dir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"MOATLESS_ADDR": ln.Addr().String(), "MOATLESS_CACERT": filepath.Join(dir, server.BundleFile),
		"MOATLESS_TOKEN": strings.TrimSpace(string(tok)), "HOME": dir,
	}
}

func TestOAuthCommandsAgainstServer(t *testing.T) {
	env := startServer(t)
	dir := env["HOME"]
	run := func(want int, args ...string) string {
		t.Helper()
		code, out, stderr := runCLI(t, env, args...)
		if code != want {
			t.Fatalf("%v: exit %d (want %d): %s %s", args, code, want, out, stderr)
		}
		return out + stderr
	}
	var created struct {
		ID     string `json:"client_id"`
		Secret string `json:"client_secret"`
	}
	out := run(ExitOK, "oauth", "client", "create", "--name", "orders", "--grant", "client_credentials", "--grant", "token-exchange",
		"--scope", "a b", "--audience", "payments", "--exchange-audience", "payments", "-o", "json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID != "orders" || !strings.HasPrefix(created.Secret, "mls_") {
		t.Fatalf("create: %s", out)
	}
	if out := run(ExitOK, "oauth", "client", "list"); !strings.Contains(out, "token-exchange") {
		t.Fatalf("list: %s", out)
	}
	if out := run(ExitOK, "oauth", "client", "show", "orders"); strings.Contains(out, created.Secret) || !strings.Contains(out, "payments") {
		t.Fatalf("show: %s", out)
	}
	// oauth token get: the old secret is refused once rotated, the new one works.
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, []byte(created.Secret+"\n"), 0o600)
	if out := run(ExitOK, "oauth", "token", "get", "--client-id", "orders", "--client-secret-file", secretFile, "--audience", "payments"); strings.Count(out, ".") != 2 {
		t.Fatalf("token get: %q", out)
	}
	if out := run(ExitOK, "oauth", "client", "rotate-secret", "orders", "--grace", "1h"); !strings.Contains(out, "the old one works until") {
		t.Fatalf("rotate with grace: %s", out)
	}
	out = run(ExitOK, "oauth", "client", "rotate-secret", "orders", "-o", "json")
	var rotated struct {
		Secret string `json:"client_secret"`
	}
	if json.Unmarshal([]byte(out), &rotated); rotated.Secret == "" || rotated.Secret == created.Secret {
		t.Fatalf("rotate: %s", out)
	}
	run(ExitDenied, "oauth", "token", "get", "--client-id", "orders", "--client-secret-file", secretFile)
	os.WriteFile(secretFile, []byte(rotated.Secret+"\n"), 0o600)
	if out := run(ExitOK, "oauth", "token", "get", "--client-id", "orders", "--client-secret-file", secretFile, "-o", "json"); !strings.Contains(out, `"token_type": "Bearer"`) {
		t.Fatalf("token get -o json: %s", out)
	}
	run(ExitUsage, "oauth", "token", "get", "--client-id", "orders", "--client-secret-file", secretFile, "--audience", "elsewhere")
	run(ExitUsage, "oauth", "token", "get", "--client-id", "orders")
	// With an X509-SVID issued by the server's CA (here an admin
	// certificate) and no secret.
	run(ExitOK, "ca", "issue-admin", "--out", filepath.Join(dir, "adm"))
	run(ExitOK, "oauth", "client", "create", "--name", "by-svid", "--grant", "client_credentials", "--spiffe-id", "spiffe://example.org/moatless/admin")
	out = run(ExitOK, "oauth", "token", "get", "--cert", filepath.Join(dir, "adm", "admin-cert.pem"), "--key", filepath.Join(dir, "adm", "admin-key.pem"), "-o", "json")
	if !strings.Contains(out, `"access_token"`) {
		t.Fatalf("token get with SVID: %s", out)
	}
	run(ExitUsage, "oauth", "client", "create", "--name", "x")
	if out := run(ExitOK, "oauth", "client", "create", "--name", "spa", "--auth-method", "none", "--grant", "code", "--redirect-uri", "https://spa.example/cb", "--cors-origin", "https://spa.example"); !strings.Contains(out, "cors_origins:") {
		t.Fatalf("spa: %s", out)
	}
	run(ExitUsage, "oauth", "client", "create", "--name", "x", "--grant", "password")
	run(ExitNotFound, "oauth", "client", "show", "nope")
	run(ExitUsage, "oauth", "client", "create", "--name", "orders", "--grant", "client_credentials", "-o", "yaml")

	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("a long enough password\n"), 0o600)
	run(ExitOK, "oauth", "user", "create", "--name", "alice", "--password-file", pw, "--role", "buyer")
	run(ExitUsage, "oauth", "user", "create", "--name", "bob", "--password-file", filepath.Join(dir, "missing"))
	var enr struct {
		Secret string `json:"secret"`
		URI    string `json:"otpauth_uri"`
	}
	qr := filepath.Join(dir, "qr.png")
	out = run(ExitOK, "oauth", "user", "mfa-enroll", "alice", "--qr-file", qr, "-o", "json")
	if err := json.Unmarshal([]byte(out), &enr); err != nil || !strings.HasPrefix(enr.URI, "otpauth://totp/") {
		t.Fatalf("enroll: %s", out)
	}
	if b, err := os.ReadFile(qr); err != nil || !strings.HasPrefix(string(b), "\x89PNG") {
		t.Fatalf("QR file: %v", err)
	}
	run(ExitUsage, "oauth", "user", "mfa-confirm", "alice", "--code", "000000")
	code, _ := totp.GenerateCodeCustom(enr.Secret, time.Now(), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if out := run(ExitOK, "oauth", "user", "mfa-confirm", "alice", "--code", code); strings.Count(out, "\n  ") != 10 {
		t.Fatalf("recovery codes: %s", out)
	}
	if out := run(ExitOK, "oauth", "user", "list"); !strings.Contains(out, "alice") || !strings.Contains(out, " on ") {
		t.Fatalf("user list: %s", out)
	}
	run(ExitOK, "oauth", "user", "reset-mfa", "alice")
	run(ExitOK, "oauth", "user", "set-password", "--name", "alice", "--password-file", pw)

	run(ExitOK, "oauth", "token", "revoke", "--jti", "jti-123")
	if out := run(ExitOK, "oauth", "token", "revoked", "-o", "json"); !strings.Contains(out, "jti-123") {
		t.Fatalf("revoked: %s", out)
	}
	tokFile := filepath.Join(dir, "tok")
	os.WriteFile(tokFile, []byte("not-a-token\n"), 0o600)
	if out := run(ExitOK, "oauth", "token", "introspect", "--file", tokFile); !strings.Contains(out, `"active": false`) {
		t.Fatalf("introspect: %s", out)
	}
	run(ExitUsage, "oauth", "token", "revoke")
	if out := run(ExitOK, "oauth", "keys"); !strings.Contains(out, "signing") {
		t.Fatalf("keys: %s", out)
	}
	out = run(ExitOK, "oauth", "keys", "rotate")
	if !strings.Contains(out, "retired") || !strings.Contains(out, "signing") {
		t.Fatalf("keys rotate: %s", out)
	}
	// The retired (possibly leaked) key is revoked: it leaves the list.
	var retired string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "retired" {
			retired = f[0]
		}
	}
	if out := run(ExitOK, "oauth", "keys", "revoke", retired); retired == "" || strings.Contains(out, retired) || !strings.Contains(out, "signing") {
		t.Fatalf("keys revoke %q: %s", retired, out)
	}
	run(ExitNotFound, "oauth", "keys", "revoke", retired)
	run(ExitUsage, "oauth", "keys", "revoke")
	run(ExitOK, "oauth", "client", "delete", "orders")
	run(ExitNotFound, "oauth", "client", "delete", "orders")
	run(ExitOK, "oauth", "user", "delete", "alice")

	bad := map[string]string{}
	for k, v := range env {
		bad[k] = v
	}
	bad["MOATLESS_TOKEN"] = "mla_wrong"
	if code, _, _ := runCLI(t, bad, "oauth", "client", "list"); code != ExitDenied {
		t.Fatalf("wrong admin token: exit %d", code)
	}
}
