package proxy

import (
	"bytes"
	"net/url"
	"strconv"
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
		// PHP drops leading spaces from a name, ends it at a NUL, and
		// names an array by what comes before a closed "[": each of these
		// is $_GET['_method'] to Symfony and Laravel.
		{"php_leading_spaces", "a=1&+_method=DELETE&b=2", "a=1&b=2", true},
		{"php_leading_escaped_spaces_and_dot", "%20%20.method=DELETE", "", true},
		{"php_nul_ends_name", "_method%00x=DELETE&a", "a", true},
		{"php_array", "_method[]=DELETE&a", "a", true},
		{"php_array_with_index", "+.method[x]=DELETE", "", true},
		{"php_unclosed_bracket_kept", "_method[=DELETE", "_method[=DELETE", false},
		{"php_space_inside_kept", "_met+hod=DELETE", "_met+hod=DELETE", false},
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

// phpGETName reads one raw query parameter name as PHP builds $_GET
// (php_default_treat_data, then php_register_variable_ex), step by step
// as the C code does: a second reading, not phpParamName's.
func phpGETName(raw string) string {
	var b []byte
	for i := 0; i < len(raw); i++ { // php_url_decode
		switch {
		case raw[i] == '+':
			b = append(b, ' ')
		case raw[i] == '%' && i+2 < len(raw) && isHexDigit(raw[i+1]) && isHexDigit(raw[i+2]):
			v, _ := strconv.ParseUint(raw[i+1:i+3], 16, 8)
			b = append(b, byte(v))
			i += 2
		default:
			b = append(b, raw[i])
		}
	}
	if i := bytes.IndexByte(b, 0); i >= 0 { // a C string
		b = b[:i]
	}
	for len(b) > 0 && b[0] == ' ' {
		b = b[1:]
	}
	for i, c := range b {
		if c == ' ' || c == '.' {
			b[i] = '_'
		} else if c == '[' {
			if bytes.IndexByte(b[i+1:], ']') >= 0 {
				return string(b[:i])
			}
			return "" // "[" unclosed: becomes "_", and the name is not _method
		}
	}
	return string(b)
}

// FuzzRemoveQueryParams: no parameter drop accepts survives, every other
// non-empty parameter does, byte for byte and in order, and a query with
// nothing to drop comes back unchanged; and after the method overrides are
// removed, neither Go's url.ParseQuery nor PHP's $_GET (phpGETName) finds
// a _method parameter in what is left.
func FuzzRemoveQueryParams(f *testing.F) {
	for _, s := range []string{"_method=DELETE", "a=1&_method=X;b", "%5Fmethod&%5fMETHOD", "&&;;", "+method=1&a=%", "_method=%", "a=b=c&_method==",
		"+_method=DELETE", "%20.method[x]=1", "_method%00=1", "_method[=1", "%5F%6D%65%74%68%6F%64=PUT"} {
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
		for _, seg := range got {
			name, _, _ := strings.Cut(seg, "=")
			if phpGETName(name) == "_method" {
				t.Fatalf("%q -> %q: PHP reads %q as _method", q, out, name)
			}
		}
		if v, err := url.ParseQuery(out); err == nil && v.Has("_method") {
			t.Fatalf("%q -> %q: net/url reads a _method", q, out)
		}
	})
}
