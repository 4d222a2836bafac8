package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

func TestFileSourceReload(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	dir := t.TempDir()
	first := ca.SVID(t, ordersID, 0)
	f := ca.WriteFiles(t, dir, "w", first)
	src, err := NewFileSource(f.Cert, f.Key, f.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	serialOf := func() string {
		s, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		return serialHex(s.Certificates[0])
	}
	want := serialHex(first.Chain[0])
	if got := serialOf(); got != want {
		t.Fatalf("serial %s, want %s", got, want)
	}
	second := ca.SVID(t, ordersID, 0)
	other := testpki.NewCA(t, "other.org")
	tests := []struct {
		name        string
		prepare     func()
		wantErr     string
		wantChanged bool
		wantSerial  func() string
	}{
		{"unchanged_files_do_nothing", func() {}, "", false, func() string { return want }},
		{"cert_written_before_key_is_refused", func() {
			tmp := ca.WriteFiles(t, t.TempDir(), "n", second)
			copyFile(t, tmp.Cert, f.Cert)
		}, "does not match", false, func() string { return want }},
		{"key_arrives_and_new_svid_applies", func() {
			tmp := ca.WriteFiles(t, t.TempDir(), "n", second)
			copyFile(t, tmp.Key, f.Key)
			want = serialHex(second.Chain[0])
		}, "", true, func() string { return want }},
		{"truncated_cert_keeps_old", func() {
			os.WriteFile(f.Cert, []byte("-----BEGIN CERTIFICATE-----\nMIIB"), 0o600)
		}, "proxy:", false, func() string { return want }},
		{"bundle_of_other_trust_domain_only_still_parses_for_own_td", func() {
			tmp := ca.WriteFiles(t, t.TempDir(), "n", second)
			copyFile(t, tmp.Cert, f.Cert)
			os.WriteFile(f.Bundle, []byte("not pem"), 0o600)
		}, "bundle", false, func() string { return want }},
		{"missing_file_keeps_old", func() {
			os.Remove(f.Bundle)
		}, "no such file", false, func() string { return want }},
		{"valid_again", func() {
			tmp := other.WriteFiles(t, t.TempDir(), "o", other.SVID(t, "spiffe://other.org/ns/x/sa/y", 0))
			copyFile(t, tmp.Cert, f.Cert)
			copyFile(t, tmp.Key, f.Key)
			copyFile(t, tmp.Bundle, f.Bundle)
		}, "", true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.prepare()
			changed, err := src.Reload()
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Reload: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Reload error %v, want %q", err, tc.wantErr)
			}
			if changed != tc.wantChanged {
				t.Fatalf("changed=%v, want %v", changed, tc.wantChanged)
			}
			if tc.wantSerial != nil {
				if got := serialOf(); got != tc.wantSerial() {
					t.Fatalf("serial %s, want %s", got, tc.wantSerial())
				}
			}
		})
	}
	s, _ := src.GetX509SVID()
	if s.ID.String() != "spiffe://other.org/ns/x/sa/y" {
		t.Fatalf("final identity %s", s.ID)
	}
	if _, err := src.GetX509BundleForTrustDomain(ca.TrustDomain); err == nil {
		t.Fatal("bundle for a trust domain the files no longer hold")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// newFileSidecar is a sidecar of prod (orders' SVID) for the FileWatcher
// tests; it serves nothing.
func newFileSidecar(t *testing.T) *Sidecar {
	t.Helper()
	ca := testpki.NewCA(t, "example.org")
	s, err := New(Config{
		Identity:  newStaticIdentity(ca, ca.SVID(t, ordersID, 0)),
		Namespace: "prod",
		Inbound:   []Inbound{{Listen: "127.0.0.1:0", App: "127.0.0.1:8080"}},
		Logger:    discardLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFileWatcherPolicyAndRevocations(t *testing.T) {
	s := newFileSidecar(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.yaml")
	revs := filepath.Join(t.TempDir(), "revocations.json")
	write := func(p, content string) {
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(pol, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: STRICT}}\n")
	w := &FileWatcher{Sidecar: s, PolicyFiles: []string{dir}, RevocationsFile: revs, Logger: discardLogger()}
	ctx := context.Background()
	if err := w.Load(ctx); err != nil {
		t.Fatal(err)
	}
	mode := func() policy.MTLSMode {
		a, _ := s.authorizer()
		return a.MTLSMode(policy.Destination{Namespace: "prod", Port: 8080})
	}
	if s.PolicyVersion() != 1 || mode() != policy.ModeStrict {
		t.Fatalf("version %d mode %v", s.PolicyVersion(), mode())
	}

	tests := []struct {
		name        string
		prepare     func()
		wantErr     bool
		wantVersion uint64
		wantMode    policy.MTLSMode
		wantRevoked bool
	}{
		{"unchanged_is_not_a_new_version", func() {}, false, 1, policy.ModeStrict, false},
		{"half_written_file_seen_once_is_never_applied", func() {
			write(pol, "") // an editor truncated it...
			if err := w.Check(ctx); err != nil {
				t.Fatal(err)
			}
			// ...and finished writing the same content before the next check.
			write(pol, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: STRICT}}\n")
			write(revs, "")
			if err := w.Check(ctx); err != nil {
				t.Fatal(err)
			}
			os.Remove(revs)
		}, false, 1, policy.ModeStrict, false},
		{"changed_policy_is_a_new_version", func() {
			write(pol, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: PERMISSIVE}}\n")
		}, false, 2, policy.ModePermissive, false},
		{"invalid_policy_keeps_version", func() {
			write(pol, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: SOMETIMES}}\n")
		}, true, 2, policy.ModePermissive, false},
		{"revocation_file_applies", func() {
			write(pol, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: PERMISSIVE}}\n")
			b, _ := json.Marshal(wire.Revocations{SPIFFEIDs: []string{frontendID}})
			write(revs, string(b))
		}, false, 2, policy.ModePermissive, true},
		{"bad_revocation_file_keeps_revocations", func() {
			write(revs, `{"spiffe_ids": ["not an id"]}`)
		}, true, 2, policy.ModePermissive, true},
		{"vanished_revocation_file_keeps_revocations", func() {
			os.Remove(revs)
		}, true, 2, policy.ModePermissive, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.prepare()
			// A change applies once two checks read the same content.
			w.Check(ctx)
			err := w.Check(ctx)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Check: %v, want error %v", err, tc.wantErr)
			}
			if s.PolicyVersion() != tc.wantVersion || mode() != tc.wantMode {
				t.Fatalf("version %d mode %v, want %d %v", s.PolicyVersion(), mode(), tc.wantVersion, tc.wantMode)
			}
			if got := s.revoked.Load().has(frontendID, ""); got != tc.wantRevoked {
				t.Fatalf("revoked=%v, want %v", got, tc.wantRevoked)
			}
		})
	}
}

func TestParseRevocations(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"empty_is_nothing_revoked", "  \n", false},
		{"ids_serials_and_tokens", `{"spiffe_ids": ["spiffe://td/ns/a/sa/b"], "serials": [{"serial": "0A1b", "expires_at": "2030-01-01T00:00:00Z"}], "token_ids": [{"jti": "x"}]}`, false},
		{"unknown_field", `{"spiffe_id": ["spiffe://td/x"]}`, true},
		{"trailing_data", `{} {}`, true},
		{"not_a_spiffe_id", `{"spiffe_ids": ["https://td/x"]}`, true},
		{"serial_not_hex", `{"serials": [{"serial": "xyz"}]}`, true},
		{"empty_jti", `{"token_ids": [{"jti": ""}]}`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRevocations([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
		})
	}
	rs := newRevocationSet(&wire.Revocations{Serials: []wire.RevokedSerial{{Serial: "000A1B"}}})
	if !rs.has("", "a1b") {
		t.Fatal("serial not normalized")
	}
}

// FuzzParseRevocations: never panics; what parses indexes without panic
// and every listed ID is then revoked.
func FuzzParseRevocations(f *testing.F) {
	f.Add([]byte(`{"spiffe_ids": ["spiffe://td/ns/a/sa/b"], "serials": [{"serial": "0a"}], "token_ids": [{"jti": "j"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRevocations(b)
		if err != nil {
			return
		}
		rs := newRevocationSet(r)
		for _, id := range r.SPIFFEIDs {
			if !rs.has(id, "") {
				t.Fatalf("%q parsed but not revoked", id)
			}
		}
		for _, s := range r.Serials {
			if !rs.has("", normalizeSerial(s.Serial)) {
				t.Fatalf("serial %q parsed but not revoked", s.Serial)
			}
		}
	})
}

func TestFileSourceRefusesExpiredCertificate(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	dir := t.TempDir()
	good := ca.SVID(t, ordersID, 0)
	f := ca.WriteFiles(t, dir, "w", good)
	src, err := NewFileSource(f.Cert, f.Key, f.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-3 * time.Hour)
	ca.Now = func() time.Time { return past }
	expired := ca.SVID(t, ordersID, time.Hour) // expired two hours ago
	ca.Now = nil
	tmp := ca.WriteFiles(t, t.TempDir(), "x", expired)
	copyFile(t, tmp.Cert, f.Cert)
	copyFile(t, tmp.Key, f.Key)
	if _, err := src.Reload(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Reload of an expired certificate: %v", err)
	}
	s, _ := src.GetX509SVID()
	if serialHex(s.Certificates[0]) != serialHex(good.Chain[0]) {
		t.Fatal("expired certificate replaced the valid one")
	}
	if _, err := NewFileSource(f.Cert, f.Key, f.Bundle); err == nil {
		t.Fatal("started on an expired certificate")
	}
}

func TestSVIDExpiryMetric(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	svid := ca.SVID(t, ordersID, 0)
	reg := prometheus.NewRegistry()
	if _, err := New(Config{
		Identity: newStaticIdentity(ca, svid), Namespace: "prod",
		Inbound:    []Inbound{{Listen: "127.0.0.1:0", App: "127.0.0.1:8080"}},
		Registerer: reg, Logger: discardLogger(),
	}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "moatless_sidecar_svid_expiry_timestamp_seconds" {
			if got := int64(mf.GetMetric()[0].GetGauge().GetValue()); got != svid.Chain[0].NotAfter.Unix() {
				t.Fatalf("expiry %d, want %d", got, svid.Chain[0].NotAfter.Unix())
			}
			return
		}
	}
	t.Fatal("no SVID expiry metric")
}

// TestFileWatcherLogsAFailureOncePerChange: a policy file that stays
// broken is logged when it breaks, not on every check; a different broken
// content and a repair followed by the same breakage are logged again.
func TestFileWatcherLogsAFailureOncePerChange(t *testing.T) {
	s := newFileSidecar(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.yaml")
	doc := func(mode string) string {
		return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: " + mode + "}}\n"
	}
	if err := os.WriteFile(pol, []byte(doc("STRICT")), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	w := &FileWatcher{Sidecar: s, PolicyFiles: []string{dir}, Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	ctx := context.Background()
	if err := w.Load(ctx); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		content   string
		checks    int
		wantLines int
	}{
		{"broken_file_logged_once_over_many_checks", doc("SOMETIMES"), 10, 1},
		{"other_broken_content_logged_again", doc("NEVER"), 10, 1},
		{"repaired_file_logs_no_failure", doc("PERMISSIVE"), 5, 0},
		{"same_breakage_after_repair_logged_again", doc("NEVER"), 5, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(pol, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			logs.Reset()
			for range tc.checks {
				w.Check(ctx)
			}
			if got := strings.Count(logs.String(), "reload failed"); got != tc.wantLines {
				t.Fatalf("%d failure lines, want %d:\n%s", got, tc.wantLines, logs.String())
			}
		})
	}
}
