package policy

import (
	"errors"
	"testing"
)

func TestNormalizeForForward(t *testing.T) {
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
			got, changed, err := NormalizeForForward(tc.path, tc.mode)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidPath) {
					t.Fatalf("err = %v, want ErrInvalidPath", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if changed != (tc.want != "") || got != tc.want {
				t.Fatalf("got (%q, %v), want %q", got, changed, tc.want)
			}
		})
	}
}

func TestNormalizeForForwardUnchangedDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { NormalizeForForward("/api/v1/orders/42?x=1", NormalizeBase) }); n != 0 {
		t.Fatalf("%v allocations for a normal path, want 0", n)
	}
}
