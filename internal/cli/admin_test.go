package cli

import (
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/testpki"
)

// TestServerTrustBundleErrors: the admin commands and "oauth token get"
// read the server's trust bundle the same way, and a bundle that cannot
// verify anything is a usage error naming the file, before any request.
func TestServerTrustBundleErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := writeFile(t, dir, "not-pem.pem", "hello\n")
	badCert := writeFile(t, dir, "bad-cert.pem", "-----BEGIN CERTIFICATE-----\n"+base64.StdEncoding.EncodeToString([]byte("not DER"))+"\n-----END CERTIFICATE-----\n")
	missing := filepath.Join(dir, "missing.pem")
	commands := [][]string{
		{"entry", "list", "--token", "t"},
		{"oauth", "token", "get", "--client-id", "c", "--client-secret-file", writeFile(t, dir, "secret", "s\n")},
	}
	cases := []struct {
		name, bundle, want string
	}{
		{"missing_file", missing, "read trust bundle: open " + missing},
		{"no_certificate", notPEM, "trust bundle " + notPEM + " holds no PEM certificate"},
		{"malformed_certificate", badCert, "trust bundle " + badCert + ": x509: "},
	}
	for _, cmd := range commands {
		for _, tc := range cases {
			t.Run(cmd[0]+"_"+cmd[1]+"_"+tc.name, func(t *testing.T) {
				args := append(append([]string(nil), cmd...), "--addr", "127.0.0.1:1", "--cacert", tc.bundle)
				code, _, stderr := runCLI(t, map[string]string{"HOME": dir}, args...)
				if code != ExitUsage || !strings.Contains(stderr, tc.want) {
					t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, ExitUsage, tc.want)
				}
			})
		}
	}
}

// TestPagedListingBounds: audit list and policy history check --limit and
// --before the same way, before any credential is read or request sent
// (no server runs here).
func TestPagedListingBounds(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"audit_limit_zero", []string{"audit", "list", "--limit", "0"}, "audit list: --limit must be 1 to 1000"},
		{"audit_limit_above_1000", []string{"audit", "list", "--limit", "1001"}, "audit list: --limit must be 1 to 1000"},
		{"audit_before_above_int64", []string{"audit", "list", "--before", "9223372036854775808"}, "audit list: --before 9223372036854775808 is not a sequence number"},
		{"history_limit_above_1000", []string{"policy", "history", "--limit", "1001"}, "policy history: --limit must be 1 to 1000"},
		{"history_before_above_int64", []string{"policy", "history", "--before", "9223372036854775808"}, "policy history: --before 9223372036854775808 is not a policy version"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, map[string]string{"HOME": t.TempDir()}, tc.args...)
			if code != ExitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, stderr, ExitUsage, tc.want)
			}
		})
	}
}

// TestTokenFilesAreBounded: the admin token and a join token are read
// from files with the same size bound as a token on standard input, and
// an oversized one is a usage error naming the file.
func TestTokenFilesAreBounded(t *testing.T) {
	dir := t.TempDir()
	big := writeFile(t, dir, "big-token", strings.Repeat("t", tokenLimit+1))
	ca := testpki.NewCA(t, "example.org")
	files := ca.WriteFiles(t, dir, "x", ca.SVID(t, "spiffe://example.org/x", time.Hour))
	bundle := files.Bundle
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"admin_token_file", []string{"entry", "list", "--addr", "127.0.0.1:1", "--token-file", big, "--cacert", bundle}, "read admin token: " + big + " is larger than"},
		{"agent_join_token_file", []string{"agent", "--join-token-file", big, "--trust-bundle", bundle, "--server", "127.0.0.1:1", "--health-listen", "off", "--socket", filepath.Join(dir, "s.sock"), "--data-dir", dir}, "agent: read join token: " + big + " is larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, map[string]string{"HOME": dir}, tc.args...)
			if code != ExitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, stderr, ExitUsage, tc.want)
			}
		})
	}
}
