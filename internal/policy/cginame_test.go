package policy

import "testing"

// TestAppendCGIName: names a CGI, WSGI or PHP app reads as one variable
// fold to the same bytes; others do not.
func TestAppendCGIName(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"X-User", "x_user"}, {"X_USER", "x-user"}, {"x-moatless-id", "X_Moatless_Id"}, {"", ""},
	} {
		if got, want := string(AppendCGIName(nil, tc.a)), string(AppendCGIName(nil, tc.b)); got != want {
			t.Errorf("%q folds to %q, %q to %q", tc.a, got, tc.b, want)
		}
	}
	for _, tc := range []struct{ a, b string }{{"x-user", "x-users"}, {"x-user", "xuser"}} {
		if string(AppendCGIName(nil, tc.a)) == string(AppendCGIName(nil, tc.b)) {
			t.Errorf("%q and %q fold alike", tc.a, tc.b)
		}
	}
	if got := string(AppendCGIName([]byte("p:"), "A_b")); got != "p:a-b" {
		t.Errorf("appended %q", got)
	}
}
