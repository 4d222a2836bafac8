package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeRequestPath(t *testing.T) {
	tests := []struct {
		name, path string
		mode       PathNormalization
		want       string // "" when unchanged
		wantErr    bool
	}{
		{"normal_path_unchanged", "/api/orders/42", NormalizeBase, "", false},
		{"query_kept_out_of_comparison", "/api/orders?x=1", NormalizeBase, "", false},
		{"dot_dot_resolved", "/api/../admin", NormalizeBase, "/admin", false},
		{"unreserved_escape_decoded", "/%61dmin", NormalizeBase, "/admin", false},
		{"backslash_turned", "/a\\b", NormalizeBase, "/a/b", false},
		{"double_slash_kept_in_base", "/a//b", NormalizeBase, "", false},
		{"double_slash_merged", "/a//b?q", NormalizeMergeSlashes, "/a/b", false},
		{"encoded_slash_kept", "/a%2fb", NormalizeBase, "/a%2Fb", false},
		{"encoded_slash_decoded", "/a%2Fb", NormalizeDecodeAndMergeSlashes, "/a/b", false},
		{"nul_refused", "/a%00", NormalizeBase, "", true},
		{"relative_refused", "a/b", NormalizeBase, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			np, err := NormalizeRequestPath(tc.path, tc.mode)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidPath) {
					t.Fatalf("err = %v, want ErrInvalidPath", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Unchanged, Path is the target without its query.
			want := tc.want
			if want == "" {
				want, _, _ = strings.Cut(tc.path, "?")
			}
			if np.Changed() != (tc.want != "") || np.Path() != want || np.Mode() != tc.mode {
				t.Fatalf("got (%q, %v, %v), want %q", np.Path(), np.Changed(), np.Mode(), tc.want)
			}
		})
	}
}

func TestNormalizeRequestPathUnchangedDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { NormalizeRequestPath("/api/v1/orders/42?x=1", NormalizeBase) }); n != 0 {
		t.Fatalf("%v allocations for a normal path, want 0", n)
	}
}

// A path normalized ahead (as the sidecar does for forwarding) is matched
// as is when its mode is the Set's; in any other mode, or not set, the
// engine normalizes Request.Path itself, so a mismatched mode cannot
// weaken matching.
func TestDecideMatchesNormalizedPathOfSetMode(t *testing.T) {
	s := mustSet(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`, Options{PathNormalization: NormalizeMergeSlashes})
	const raw = "//admin?x=1"
	tests := []struct {
		name string
		mode PathNormalization
		set  bool
		want Outcome
	}{
		{"not_set_engine_normalizes", 0, false, Deny},
		{"set_mode_matched_as_is", NormalizeMergeSlashes, true, Deny},
		{"other_mode_ignored", NormalizeBase, true, Deny},
		{"none_mode_ignored", NormalizeNone, true, Deny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := &Request{Protocol: HTTP, Source: Source{Principal: "td/ns/prod/sa/a"}, Destination: Destination{Namespace: "prod"}, Method: "GET", Path: raw}
			if tc.set {
				np, err := NormalizeRequestPath(raw, tc.mode)
				if err != nil {
					t.Fatal(err)
				}
				req.NormalizedPath = np
			}
			if d := s.Decide(req); d.Outcome != tc.want {
				t.Fatalf("Decide = %+v, want %v", d, tc.want)
			}
		})
	}
	// The engine matches the handed-over path, not Path: a proxy forwards
	// what was matched.
	np, err := NormalizeRequestPath("/public", NormalizeMergeSlashes)
	if err != nil {
		t.Fatal(err)
	}
	req := &Request{Protocol: HTTP, Source: Source{Principal: "td/ns/prod/sa/a"}, Destination: Destination{Namespace: "prod"}, Method: "GET", Path: "/admin", NormalizedPath: np}
	if d := s.Decide(req); d.Outcome != Allow {
		t.Fatalf("Decide = %+v, want allow (the normalized path is matched)", d)
	}
}
