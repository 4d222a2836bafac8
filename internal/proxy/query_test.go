package proxy

import (
	"strings"
	"testing"
)

func TestRemoveQueryParams(t *testing.T) {
	tests := []struct {
		name, in, want string
		removed        bool
	}{
		{"only_param", "_method=DELETE", "", true},
		{"middle_param", "a=1&_method=DELETE&b=2", "a=1&b=2", true},
		{"first_param", "_method=DELETE&b=2", "b=2", true},
		{"last_param", "a=1&_method=DELETE", "a=1", true},
		{"repeated", "_method=A&x=1&_method=B", "x=1", true},
		{"semicolon_separated", "a=1;_method=DELETE;b=2", "a=1;b=2", true},
		{"escaped_name", "%5Fmethod=DELETE&a", "a", true},
		{"plus_is_space", "+method=DELETE", "", true},
		{"php_dot", ".method=DELETE", "", true},
		{"no_value", "_method&a=1", "a=1", true},
		{"kept_bytes_unchanged", "a=%2f&b=x+y&_method=PUT&c=%zz", "a=%2f&b=x+y&c=%zz", true},
		{"similar_names_kept", "method=GET&x_method=1&_methods=2&_Method=3", "method=GET&x_method=1&_methods=2&_Method=3", false},
		{"value_not_name", "a=_method", "a=_method", false},
		{"empty", "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, removed := removeQueryParams(tc.in, isMethodOverrideParam)
			if got != tc.want || removed != tc.removed {
				t.Fatalf("removeQueryParams(%q) = %q, %v; want %q, %v", tc.in, got, removed, tc.want, tc.removed)
			}
		})
	}
}

// FuzzRemoveQueryParams: no parameter drop accepts survives, every other
// non-empty parameter does, byte for byte and in order, and a query with
// nothing to drop comes back unchanged.
func FuzzRemoveQueryParams(f *testing.F) {
	for _, s := range []string{"_method=DELETE", "a=1&_method=X;b", "%5Fmethod&%5fMETHOD", "&&;;", "+method=1&a=%", "_method=%", "a=b=c&_method=="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		out, removed := removeQueryParams(q, isMethodOverrideParam)
		if !removed && out != q {
			t.Fatalf("%q: nothing removed but got %q", q, out)
		}
		var want []string
		for _, seg := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' }) {
			name, _, _ := strings.Cut(seg, "=")
			if !isMethodOverrideParam(decodeQueryName(name)) {
				want = append(want, seg)
			}
		}
		got := strings.FieldsFunc(out, func(r rune) bool { return r == '&' || r == ';' })
		if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
			t.Fatalf("%q -> %q: kept %q, want %q", q, out, got, want)
		}
	})
}
