package cli

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/wire"
)

// TestListOutputShape: every list command's -o json is one object with
// "items" (an array, never null) and, where it pages, "next"; every text
// column is a field of the items, named alike (upper case, spaces for
// underscores); every time is RFC 3339.
func TestListOutputShape(t *testing.T) {
	env := startServer(t)
	dir := env["HOME"]
	mustRun := func(args ...string) string { t.Helper(); return mustCLI(t, env, args...) }
	mustRun("entry", "create", "--parent", "spiffe://example.org/node/n1", "--spiffe-id", "spiffe://example.org/ns/prod/sa/orders", "--selector", "unix:uid:1000")
	attestNode(t, env, strings.TrimSpace(mustRun("jointoken", "create", "--spiffe-id", "spiffe://example.org/node/n1")))
	mustRun("jointoken", "create", "--spiffe-id", "spiffe://example.org/node/n2")
	mustRun("revoke", "--spiffe-id", "spiffe://example.org/ns/prod/sa/orders", "--reason", "test")
	mustRun("oauth", "client", "create", "--name", "orders", "--grant", "client_credentials", "--scope", "a")
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("correct horse battery staple\n"), 0o600)
	mustRun("oauth", "user", "create", "--name", "alice", "--password-file", pw)
	pol := filepath.Join(dir, "p.yaml")
	os.WriteFile(pol, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: STRICT}}\n"), 0o600)
	mustRun("policy", "apply", "-f", pol)

	rfc3339 := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$`)
	timeLike := regexp.MustCompile(`^\d{4}-\d\d-\d\d[T ]`)
	tests := []struct {
		name  string
		args  []string
		pages bool
		// optional are fields JSON omits when empty (the text shows "-"
		// or nothing).
		optional []string
	}{
		{"entry_list", []string{"entry", "list"}, false, []string{"namespace"}},
		{"jointoken_list", []string{"jointoken", "list", "--all"}, false, []string{"used_at"}},
		{"revoke_list", []string{"revoke", "list"}, false, []string{"until"}},
		{"agent_list", []string{"agent", "list"}, false, []string{"component"}},
		{"audit_list", []string{"audit", "list", "--limit", "2"}, true, nil},
		{"policy_history", []string{"policy", "history"}, false, nil},
		{"oauth_client_list", []string{"oauth", "client", "list"}, false, []string{"spiffe_id"}},
		{"oauth_user_list", []string{"oauth", "user", "list"}, false, []string{"roles", "tenant"}},
		{"oauth_keys_list", []string{"oauth", "keys", "list"}, false, nil},
		{"oauth_token_revoked", []string{"oauth", "token", "revoked"}, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw := mustRun(append(tc.args, "-o", "json")...)
			var page map[string]json.RawMessage
			if err := json.Unmarshal([]byte(raw), &page); err != nil {
				t.Fatalf("not an object: %v\n%s", err, raw)
			}
			var items []map[string]any
			if string(page["items"]) == "null" || json.Unmarshal(page["items"], &items) != nil || items == nil {
				t.Fatalf(`"items" is not an array: %s`, raw)
			}
			for k := range page {
				if k != "items" && k != "next" {
					t.Fatalf("unexpected key %q: %s", k, raw)
				}
			}
			if _, ok := page["next"]; ok != tc.pages {
				t.Fatalf(`"next" present=%v, want %v: %s`, ok, tc.pages, raw)
			}
			keys := map[string]bool{}
			for _, k := range tc.optional {
				keys[k] = true
			}
			for _, it := range items {
				for k, v := range it {
					keys[k] = true
					if s, ok := v.(string); ok && timeLike.MatchString(s) && !rfc3339.MatchString(s) {
						t.Errorf("%s: %q is not RFC 3339", k, s)
					}
				}
			}
			text := mustRun(tc.args...)
			header := strings.Fields(strings.SplitN(text, "\n", 2)[0])
			if len(items) == 0 {
				if tc.name == "agent_list" {
					t.Fatal("no node attested: the agent list header goes unchecked")
				}
				return // an empty list may print a sentence instead of a table
			}
			for _, col := range splitColumns(strings.SplitN(text, "\n", 2)[0]) {
				if !keys[col] {
					t.Errorf("text column %q is no field of the JSON items %v (header %q)", col, keys, header)
				}
			}
			for _, line := range strings.Split(text, "\n")[1:] {
				for _, f := range strings.Fields(line) {
					if timeLike.MatchString(f) {
						if _, err := time.Parse(time.RFC3339, f); err != nil {
							t.Errorf("text time %q is not RFC 3339", f)
						}
					}
				}
			}
		})
	}
}

// attestNode attests a node with a join token, as an agent's first start
// does, so that lists of nodes have a row.
func attestNode(t *testing.T, env map[string]string, token string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(env["MOATLESS_CACERT"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	body, _ := json.Marshal(wire.AttestRequest{JoinToken: token, CSR: csr})
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Post("https://"+env["MOATLESS_ADDR"]+wire.PathAttest, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("attest: %d %s", resp.StatusCode, b)
	}
}

// TestPolicyStatusColumns: "policy status" is not a list (-o json is one
// object), but its node tables follow the list rule: every column is a
// field of the JSON nodes, named alike.
func TestPolicyStatusColumns(t *testing.T) {
	env := startServer(t)
	mustRun := func(args ...string) string { t.Helper(); return mustCLI(t, env, args...) }
	attestNode(t, env, strings.TrimSpace(mustRun("jointoken", "create", "--spiffe-id", "spiffe://example.org/node/n1")))
	var st struct {
		Nodes, NotEnforcing []map[string]any
	}
	raw := mustRun("policy", "status", "-o", "json")
	var page map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &page); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(page["nodes"], &st.Nodes)
	json.Unmarshal(page["not_enforcing"], &st.NotEnforcing)
	keys := map[string]bool{"component": true, "last_ack": true} // omitted until the node acks
	for _, n := range append(st.Nodes, st.NotEnforcing...) {
		for k := range n {
			keys[k] = true
		}
	}
	if len(keys) < 2 {
		t.Fatalf("no node in the status: %s", raw)
	}
	var tables int
	for _, line := range strings.Split(mustRun("policy", "status"), "\n") {
		if !strings.HasPrefix(line, "SPIFFE ID") {
			continue
		}
		tables++
		for _, col := range splitColumns(line) {
			if !keys[col] {
				t.Errorf("text column %q is no field of the JSON nodes %v", col, keys)
			}
		}
	}
	if tables == 0 {
		t.Fatal("policy status printed no node table")
	}
}

// splitColumns reads a tabwriter header (columns separated by two or more
// spaces) as JSON field names.
func splitColumns(header string) []string {
	var out []string
	for _, c := range regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(header), -1) {
		out = append(out, strings.ToLower(strings.ReplaceAll(c, " ", "_")))
	}
	return out
}

// TestHelpMatchesTheBinary: the command list names what each command
// does: "policy" lists its subcommands and no "watch" (there is none);
// "demo" starts no agent. A bad flag is one line naming -h; -h prints the
// usage on stdout with exit 0.
func TestHelpMatchesTheBinary(t *testing.T) {
	_, help, _ := runCLI(t, nil, "help")
	line := func(cmd string) string {
		for _, l := range strings.Split(help, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == cmd {
				return l
			}
		}
		t.Fatalf("no %q in help:\n%s", cmd, help)
		return ""
	}
	for _, c := range policyCommands {
		if !strings.Contains(line("policy"), c.name) {
			t.Errorf("policy summary does not name %q: %s", c.name, line("policy"))
		}
	}
	if strings.Contains(line("policy"), "watch") {
		t.Errorf("policy summary names watch: %s", line("policy"))
	}
	if l := line("demo"); strings.Contains(l, "an agent") {
		t.Errorf("demo summary claims an agent: %s", l)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"unknown_flag_one_line", []string{"entry", "list", "--bogus"}, ExitUsage, "",
			"moatless: entry list: flag provided but not defined: -bogus (run \"moatless entry list -h\" for its flags)\n"},
		{"unknown_flag_long_running_command", []string{"server", "--nope"}, ExitUsage, "",
			"moatless: server: flag provided but not defined: -nope (run \"moatless server -h\" for its flags)\n"},
		{"bad_flag_value", []string{"audit", "list", "--limit", "x"}, ExitUsage, "",
			"moatless: audit list: invalid value \"x\" for flag -limit: parse error (run \"moatless audit list -h\" for its flags)\n"},
		{"help_on_stdout", []string{"demo", "-h"}, ExitOK, "Usage: moatless demo", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, nil, tc.args...)
			if code != tc.wantCode || stderr != tc.wantStderr || !strings.HasPrefix(out, tc.wantStdout) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout %q..., stderr %q", code, out, stderr, tc.wantCode, tc.wantStdout, tc.wantStderr)
			}
		})
	}
}
