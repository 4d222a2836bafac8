package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/testpki"
)

// TestNodeRestartKeepsRevokedAuthorityUntrusted: the configured trust
// bundle (--trust-bundle, copied while authorities a and b were both in
// force) still holds a after `moatless ca revoke a`. A node restarted from
// its data directory must not trust a for the server again: a server
// certificate from a (whoever holds the revoked key) is refused on the
// first connection after the restart, one from b is accepted. A damaged
// list of revoked authorities fails safe (only the saved bundle's
// authorities are trusted) and is rewritten; with no saved bundle to fall
// back on, attestation stops with what to do.
func TestNodeRestartKeepsRevokedAuthorityUntrusted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
	}{
		{"intact", nil},
		{"damaged", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, revokedFile), []byte(`{"revoked_x509_authorities":["zz"]}`), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, revokedFile), []byte(`{"revoked_x509_auth`), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"oversized", func(t *testing.T, dir string) {
			big := `{"revoked_x509_authorities":["` + strings.Repeat("ab", maxRevokedFileSize) + `"]}`
			if err := os.WriteFile(filepath.Join(dir, revokedFile), []byte(big), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t)
			f.tokens["t"] = nodeID
			a, b := f.ca, testpki.NewCA(t, "example.org")
			f.authorities = []*testpki.CA{a, b}
			f.clientCAs = []*testpki.CA{b}
			f.issuer.Store(b) // the node SVID chains to b, which stays
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cfg := f.nodeConfig(t, "t", dir)
			cfg.TrustBundle = []*x509.Certificate{a.Cert, b.Cert}

			n1, err := NewNode(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := n1.Attest(ctx); err != nil {
				t.Fatal(err)
			}
			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- n1.Run(rctx) }()
			waitApplied(ctx, t, f, n1)
			f.push(func() { f.authorities = []*testpki.CA{b} }) // ca revoke a
			waitApplied(ctx, t, f, n1)
			rcancel()
			<-done
			n1.Close()
			if tc.damage != nil {
				tc.damage(t, dir)
			}

			// The server's certificate is still from a: the revoked
			// key's holder answers the restarted node.
			cfg.JoinToken = ""
			n2, err := NewNode(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer n2.Close()
			if err := n2.Attest(ctx); err != nil {
				t.Fatal(err)
			}
			var cve *tls.CertificateVerificationError
			if err := n2.Renew(ctx); !errors.As(err, &cve) {
				t.Fatalf("after a restart, a server certificate from the revoked authority: %v, want a TLS certificate verification error", err)
			}
			raw, err := os.ReadFile(filepath.Join(dir, revokedFile))
			if err != nil {
				t.Fatal(err)
			}
			if skis, err := parseRevoked(raw); err != nil || len(skis) != 1 || skis[0] != hex.EncodeToString(a.Cert.SubjectKeyId) {
				t.Fatalf("%s after the restart: %v (%v), want a alone", revokedFile, skis, err)
			}
			c := b.ServerCert(t, fakeServerID, "127.0.0.1", fakeServerName)
			f.cert.Store(&c)
			if err := n2.Renew(ctx); err != nil {
				t.Fatalf("a server certificate from the remaining authority: %v", err)
			}
		})
	}
}

// TestNodeDamagedRevokedListWithoutBundle: a damaged list of revoked
// authorities and no saved bundle to fall back on: attestation fails,
// naming the file, rather than trusting the whole configured bundle.
func TestNodeDamagedRevokedListWithoutBundle(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, revokedFile), []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(f.nodeConfig(t, "t", dir))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	err = n.Attest(context.Background())
	if err == nil || !strings.Contains(err.Error(), revokedFile) {
		t.Fatalf("Attest: %v, want an error naming %s", err, revokedFile)
	}
	f.mu.Lock()
	_, unused := f.tokens["t"]
	f.mu.Unlock()
	if !unused {
		t.Fatal("the join token was spent")
	}
}

func TestParseRevoked(t *testing.T) {
	ski := strings.Repeat("ab", 20)
	for _, tc := range []struct {
		name string
		raw  string
		ok   bool
	}{
		{"one", `{"revoked_x509_authorities":["` + ski + `"]}`, true},
		{"empty_list", `{"revoked_x509_authorities":[]}`, true},
		{"missing_list", `{}`, false},
		{"null_list", `{"revoked_x509_authorities":null}`, false},
		{"unknown_field", `{"revoked_x509_authorities":[],"x":1}`, false},
		{"trailing_data", `{"revoked_x509_authorities":[]} {}`, false},
		{"upper_case", `{"revoked_x509_authorities":["` + strings.ToUpper(ski) + `"]}`, false},
		{"not_hex", `{"revoked_x509_authorities":["zz"]}`, false},
		{"odd_hex", `{"revoked_x509_authorities":["abc"]}`, false},
		{"empty_ski", `{"revoked_x509_authorities":[""]}`, false},
		{"long_ski", `{"revoked_x509_authorities":["` + strings.Repeat("ab", maxSKIHexLen) + `"]}`, false},
		{"too_many", `{"revoked_x509_authorities":[` + strings.Repeat(`"ab",`, maxRevokedAuthorities) + `"ab"]}`, false},
		{"not_json", `revoked`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseRevoked([]byte(tc.raw))
			if (err == nil) != tc.ok {
				t.Fatalf("parseRevoked: %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// FuzzParseRevoked: parseRevoked never panics, and what it accepts is
// within its bounds.
func FuzzParseRevoked(f *testing.F) {
	f.Add([]byte(`{"revoked_x509_authorities":["abcd"]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		skis, err := parseRevoked(raw)
		if err != nil {
			return
		}
		if len(skis) > maxRevokedAuthorities {
			t.Fatalf("%d authorities accepted", len(skis))
		}
		for _, s := range skis {
			if s == "" || len(s) > maxSKIHexLen || s != strings.ToLower(s) {
				t.Fatalf("accepted %q", s)
			}
		}
	})
}
