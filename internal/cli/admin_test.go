package cli

import (
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"
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
