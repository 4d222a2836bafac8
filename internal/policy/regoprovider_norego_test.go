//go:build norego

package policy

import (
	"strings"
	"testing"
)

// FuzzParseRegoQueryNoOPA: without OPA's parser a provider's query is
// only checked to be a reference into data on one line; whatever it
// accepts is returned unchanged, starts with data. or data[ and holds no
// control character or space, within the value limit.
func FuzzParseRegoQueryNoOPA(f *testing.F) {
	for _, s := range []string{"data.a.b", `data["a-b"].c`, "data", "data.", "input.x", "data.a b", "data.a\nb", "data.a\x00", "dat.a", "", strings.Repeat("data.", 2000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		got, ok := parseRegoQuery(q)
		if !ok {
			return
		}
		if got != q || len(q) > maxValueLen || !(strings.HasPrefix(q, "data.") || strings.HasPrefix(q, "data[")) || strings.ContainsAny(q, " \x00\r\n\t\x7f") {
			t.Fatalf("accepted %q as %q", q, got)
		}
	})
}
