package ui

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzListQuery: the findings and incidents pages' filter never panics,
// accepts only bounded identities, listed choices and positive cursors,
// and what it accepts survives the round trip through the refresh URL.
func FuzzListQuery(f *testing.F) {
	for _, s := range []string{
		"", "identity=spiffe%3A%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Ffrontend", "severity=high", "severity=extreme",
		"before=1765000000000000000", "before=-1", "before=0", "before=9223372036854775808", "identity=%20%20",
		"severity=high&severity=low", "identity=" + strings.Repeat("a", 2049), "identity=%3Cscript%3E&severity=critical",
	} {
		f.Add(s)
	}
	choices := severityNames()
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		l, err := parseListQuery(p, "severity", choices)
		if err != nil {
			return
		}
		if len(l.Identity) > maxIDParam || (l.Choice != "" && !contains(choices, l.Choice)) || (!l.Before.IsZero() && l.Before.UnixNano() <= 0) {
			t.Fatalf("accepted %q as %+v", raw, l)
		}
		back, err := url.ParseQuery(strings.TrimPrefix(l.query("severity"), "?"))
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseListQuery(back, "severity", choices)
		if err != nil || again.Identity != l.Identity || again.Choice != l.Choice {
			t.Fatalf("round trip of %+v: %+v, %v", l, again, err)
		}
	})
}
