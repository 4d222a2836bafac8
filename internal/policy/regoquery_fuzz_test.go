//go:build !norego

package policy

import (
	"strings"
	"testing"
)

// FuzzParseRegoQuery: with OPA's parser, a provider's query is accepted
// only as a ground reference into data below its root, and what comes
// back is canonical: it parses again to itself, starts with data. or
// data[, and is one line.
func FuzzParseRegoQuery(f *testing.F) {
	for _, s := range []string{"data.a.b", `data["a-b"].c`, "data", "data.", "input.x", "data.a[x]", "data.a[0]", `data.a["\n"]`, "data.a b", "data.a.b # c", " data.a ", "data.a\n.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		got, ok := parseRegoQuery(q)
		if !ok {
			return
		}
		if !strings.HasPrefix(got, "data.") && !strings.HasPrefix(got, "data[") || strings.ContainsAny(got, "\r\n") {
			t.Fatalf("%q accepted as %q", q, got)
		}
		again, ok := parseRegoQuery(got)
		if !ok || again != got {
			t.Fatalf("%q accepted as %q, which reads back as %q, %v", q, got, again, ok)
		}
	})
}
