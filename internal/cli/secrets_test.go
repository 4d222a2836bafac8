package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSecretsCommands drives "moatless secrets" against a real server: KV
// in text and JSON, transit round trip, policies with history and
// rollback, leases errors, and the documented exit codes.
func TestSecretsCommands(t *testing.T) {
	env, dir := startAdminServer(t)
	run := func(args ...string) (int, string, string) {
		t.Helper()
		return runCLI(t, env, append([]string{"secrets"}, args...)...)
	}
	must := func(args ...string) string {
		t.Helper()
		code, out, errOut := run(args...)
		if code != ExitOK {
			t.Fatalf("secrets %v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	pw := filepath.Join(dir, "pw.txt")
	os.WriteFile(pw, []byte("from-a-file"), 0o600)

	if out := must("kv", "put", "orders/db", "user=orders", "password=@"+pw); !strings.Contains(out, "version 1 of orders/db") {
		t.Fatalf("put: %q", out)
	}
	must("kv", "put", "orders/db", "user=orders", "password=second", "--cas", "1")
	if code, _, errOut := run("kv", "put", "orders/db", "user=x", "--cas", "1"); code != ExitUsage || !strings.Contains(errOut, "check-and-set") {
		t.Fatalf("cas conflict: %d %s", code, errOut)
	}
	if out := must("kv", "get", "orders/db", "--field", "password"); out != "second\n" {
		t.Fatalf("get --field: %q", out)
	}
	if out := must("kv", "get", "orders/db", "--version", "1", "--field", "password"); out != "from-a-file\n" {
		t.Fatalf("get --version 1: %q", out)
	}
	var kv struct {
		Data struct {
			Data     map[string]string `json:"data"`
			Metadata struct {
				Version int `json:"version"`
			} `json:"metadata"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(must("kv", "get", "orders/db", "-o", "json")), &kv); err != nil || kv.Data.Data["user"] != "orders" || kv.Data.Metadata.Version != 2 {
		t.Fatalf("get -o json: %+v %v", kv, err)
	}
	must("kv", "patch", "orders/db", "password=third")
	if out := must("kv", "list", "orders"); out != "db\n" {
		t.Fatalf("list: %q", out)
	}
	must("kv", "delete", "orders/db")
	must("kv", "undelete", "orders/db", "--versions", "3")
	must("kv", "destroy", "orders/db", "--versions", "1")
	if out := must("kv", "metadata", "get", "orders/db"); !regexp.MustCompile(`current_version\s+3\n`).MatchString(out) || !strings.Contains(out, `"destroyed":true`) {
		t.Fatalf("metadata get: %q", out)
	}
	if code, _, _ := run("kv", "get", "nothing/here"); code != ExitNotFound {
		t.Fatalf("missing secret: exit %d", code)
	}
	if code, _, _ := run("kv", "put", "x", "novalue"); code != ExitUsage {
		t.Fatalf("bad pair: exit %d", code)
	}

	must("transit", "create", "cards")
	ct := strings.TrimSpace(must("transit", "encrypt", "cards", "4111 1111 1111 1111"))
	if !strings.HasPrefix(ct, "vault:v1:") {
		t.Fatalf("encrypt: %q", ct)
	}
	must("transit", "rotate", "cards")
	ct2 := strings.TrimSpace(must("transit", "rewrap", "cards", ct))
	if !strings.HasPrefix(ct2, "vault:v2:") {
		t.Fatalf("rewrap: %q", ct2)
	}
	if out := must("transit", "decrypt", "cards", ct2); out != "4111 1111 1111 1111\n" {
		t.Fatalf("decrypt: %q", out)
	}
	if code, _, _ := run("transit", "decrypt", "cards", "vault:v2:AAAA"); code != ExitUsage {
		t.Fatalf("tampered: exit %d", code)
	}

	hcl := filepath.Join(dir, "orders.hcl")
	os.WriteFile(hcl, []byte(`path "secret/data/orders/*" { capabilities = ["read"] }`), 0o600)
	if code, _, errOut := run("policy", "apply", "-f", hcl); code != ExitUsage || !strings.Contains(errOut, "name") {
		t.Fatalf("HCL without --name: %d %s", code, errOut)
	}
	must("policy", "apply", "-f", hcl, "--name", "orders")
	yml := filepath.Join(dir, "p.yaml")
	os.WriteFile(yml, []byte("name: orders\nsubjects: {approles: [orders]}\npaths: [{path: secret/data/orders/*, capabilities: [read, list]}]\n---\nname: ops\npaths: [{path: sys/*, capabilities: [read]}]\n"), 0o600)
	if out := must("policy", "apply", "-f", yml); !strings.Contains(out, "secrets policy version 2") {
		t.Fatalf("apply: %q", out)
	}
	if out := must("policy", "get", "orders"); !strings.Contains(out, `"approles":["orders"]`) || !strings.Contains(out, `"list"`) {
		t.Fatalf("get: %q", out)
	}
	if out := must("policy", "rollback", "1"); !strings.Contains(out, "version 3") {
		t.Fatalf("rollback: %q", out)
	}
	if out := must("policy", "list"); out != "orders\n" {
		t.Fatalf("list after rollback: %q", out)
	}
	if out := must("policy", "history"); !strings.Contains(out, "rollback to 1") {
		t.Fatalf("history: %q", out)
	}

	if code, _, _ := run("lease", "lookup", "database/creds/x/nope"); code != ExitUsage {
		t.Fatalf("unknown lease: exit %d", code)
	}
	if out := must("status"); !regexp.MustCompile(`sealed\s+false\n`).MatchString(out) {
		t.Fatalf("status: %q", out)
	}
	must("write", "auth/approle/role/orders", "token_policies=orders")
	if out := must("read", "auth/approle/role/orders/role-id"); !strings.Contains(out, "role_id") {
		t.Fatalf("read role-id: %q", out)
	}
	// A client token from the admin: denied outside its policy (exit 4).
	var tok struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	json.Unmarshal([]byte(must("write", "auth/token/create", "policies=orders", "-o", "json")), &tok)
	code, _, _ := runCLI(t, with(env, "MOATLESS_TOKEN", tok.Auth.ClientToken), "secrets", "kv", "put", "orders/db", "a=b")
	if code != ExitDenied {
		t.Fatalf("write outside the policy: exit %d", code)
	}
}
