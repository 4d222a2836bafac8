package ca

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestSPIFFEIDParsing pins go-spiffe's parser, which the CA relies on for
// every ID it is given, against SPIFFE-ID.md: the trust domain is
// lower-case [a-z0-9.-_], the path segments [a-zA-Z0-9.-_], no empty, "."
// or ".." segment, no trailing slash, no port, userinfo, query or fragment,
// no percent-encoding, and at most 2048 bytes.
func TestSPIFFEIDParsing(t *testing.T) {
	reject := []struct {
		name string
		id   string
	}{
		{"empty", ""},
		{"no_scheme", "example.org/workload"},
		{"wrong_scheme", "https://example.org/workload"},
		{"uppercase_scheme", "SPIFFE://example.org/workload"},
		{"mixed_case_scheme", "Spiffe://example.org/workload"},
		{"missing_trust_domain", "spiffe:///workload"},
		{"uppercase_trust_domain", "spiffe://Example.org/workload"},
		{"port", "spiffe://example.org:8080/workload"},
		{"userinfo", "spiffe://user@example.org/workload"},
		{"userinfo_with_password", "spiffe://user:pass@example.org/workload"},
		{"query", "spiffe://example.org/workload?x=1"},
		{"fragment", "spiffe://example.org/workload#frag"},
		{"empty_segment", "spiffe://example.org//workload"},
		{"dot_segment", "spiffe://example.org/./workload"},
		{"dot_dot_segment", "spiffe://example.org/ns/../workload"},
		{"trailing_dot_segment", "spiffe://example.org/workload/."},
		{"trailing_slash", "spiffe://example.org/workload/"},
		{"trailing_slash_root", "spiffe://example.org/"},
		{"percent_encoded_path", "spiffe://example.org/work%20load"},
		{"percent_encoded_trust_domain", "spiffe://exa%6Dple.org/workload"},
		{"space_in_path", "spiffe://example.org/work load"},
		{"bad_char_in_path", "spiffe://example.org/work*load"},
		{"bad_char_in_trust_domain", "spiffe://exam!ple.org/workload"},
		{"ip_v6_trust_domain", "spiffe://[::1]/workload"},
		{"scheme_only", "spiffe://"},
		{"no_slashes", "spiffe:example.org/workload"},
	}
	for _, tt := range reject {
		t.Run("reject_"+tt.name, func(t *testing.T) {
			if id, err := spiffeid.FromString(tt.id); err == nil {
				t.Errorf("FromString(%q) = %v, want an error", tt.id, id)
			}
		})
	}
	accept := []struct {
		name string
		id   string
	}{
		{"trust_domain_only", "spiffe://example.org"},
		{"istio_style", "spiffe://example.org/ns/default/sa/web"},
		{"path_chars", "spiffe://example.org/A-z_0.9"},
		{"trust_domain_chars", "spiffe://my-td_1.example.org/w"},
		{"dots_inside_segment", "spiffe://example.org/..a/b..."},
		{"max_length", "spiffe://example.org/" + strings.Repeat("a", 2048-len("spiffe://example.org/"))},
	}
	for _, tt := range accept {
		t.Run("accept_"+tt.name, func(t *testing.T) {
			id, err := spiffeid.FromString(tt.id)
			if err != nil {
				t.Fatalf("FromString(%q): %v", tt.id, err)
			}
			if id.String() != tt.id {
				t.Errorf("round trip %q → %q", tt.id, id.String())
			}
		})
	}
}

// go-spiffe parses IDs of any length, but SPIFFE-ID §2.3 says an issuer
// SHOULD NOT generate one over 2048 bytes (validators need not accept it),
// so the CA refuses them; exactly 2048 bytes is fine.
func TestCARefusesOverlongID(t *testing.T) {
	e := newEnv(t, nil)
	prefix := "spiffe://example.org/"
	tests := []struct {
		name    string
		length  int
		wantErr error
	}{
		{"max_length_accepted", MaxIDLength, nil},
		{"one_over_refused", MaxIDLength + 1, ErrInvalidID},
		{"far_over_refused", 10 * MaxIDLength, ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := spiffeid.RequireFromString(prefix + strings.Repeat("a", tt.length-len(prefix)))
			_, err := e.ca.SignX509SVID(csrFor(t, newP256(t), nil), id, 0)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !isErr(err, tt.wantErr) {
				t.Errorf("SignX509SVID err = %v, want %v", err, tt.wantErr)
			}
			_, _, err = e.ca.SignJWTSVID(id, []string{"a"}, 0)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !isErr(err, tt.wantErr) {
				t.Errorf("SignJWTSVID err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}
