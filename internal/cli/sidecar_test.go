package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/testpki"
)

// TestSidecarCheck: "sidecar -check" refuses what a start would refuse in
// the files the config names, and says "config OK" otherwise. Before, the
// revocations file was not read by -check: a malformed one passed the
// check and then stopped the sidecar at start.
func TestSidecarCheck(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "example.org")
	f := ca.WriteFiles(t, dir, "orders", ca.SVID(t, "spiffe://example.org/ns/prod/sa/orders", time.Hour))
	goodPolicy := writeFile(t, dir, "policy.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: prod}\nspec: {action: ALLOW}\n")
	badPolicy := writeFile(t, dir, "bad-policy.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: prod}\nspec: {action: MAYBE}\n")
	goodRev := writeFile(t, dir, "revocations.json", `{"spiffe_ids": ["spiffe://example.org/ns/prod/sa/old"]}`)
	badRev := writeFile(t, dir, "bad-revocations.json", `{"spiffe_ids": ["not a SPIFFE ID"]}`)
	config := func(policy, revocations string) string {
		cfg := fmt.Sprintf("identity:\n  files: {cert: %q, key: %q, bundle: %q}\nnamespace: prod\ninbound:\n  - {listen: \"127.0.0.1:0\", app: \"127.0.0.1:1\"}\npolicy:\n  files: [%q]\n",
			f.Cert, f.Key, f.Bundle, policy)
		if revocations != "" {
			cfg += fmt.Sprintf("  revocations_file: %q\n", revocations)
		}
		return writeFile(t, t.TempDir(), "sidecar.yaml", cfg)
	}
	cases := []struct {
		name string
		cfg  string
		code int
		want string
	}{
		{"ok", config(goodPolicy, goodRev), ExitOK, "config OK"},
		{"ok_revocations_file_not_there_yet", config(goodPolicy, dir+"/none.json"), ExitOK, "config OK"},
		{"bad_policy", config(badPolicy, ""), ExitUsage, "MAYBE"},
		{"bad_revocations", config(goodPolicy, badRev), ExitUsage, "revocations file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, map[string]string{"HOME": dir}, "sidecar", "-config", tc.cfg, "-check")
			if code != tc.code || !strings.Contains(out+stderr, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d containing %q", code, out, stderr, tc.code, tc.want)
			}
		})
	}
}
