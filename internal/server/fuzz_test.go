package server

import (
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/wire"
)

func fuzzServer() *Server {
	st := config.DefaultServer(func(string) string { return "" })
	st.DataDir, st.TrustDomain = "/nonexistent", "example.org"
	st.Complete()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	return &Server{cfg: st, td: td, id: serverID(td), admins: map[string]bool{"spiffe://example.org/moatless/admin": true}}
}

// FuzzEntryRequest feeds arbitrary bodies through the admin API's strict
// decoder and entry validation: no panic, and whatever is accepted obeys
// the registration rules.
func FuzzEntryRequest(f *testing.F) {
	f.Add(`{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/agent/a","selectors":[{"type":"unix","value":"uid:1"}],"labels":{"app":"x"},"namespace":"prod","x509_ttl":"1h"}`)
	f.Add(`{"spiffe_id":"spiffe://example.org/moatless/admin","parent_id":"spiffe://example.org/a","selectors":[]}`)
	f.Add(`{"spiffe_id":"spiffe://example.org/Moatless/admin","parent_id":"spiffe://example.org/a","selectors":[{"type":"unix","value":"uid:1"}]}`)
	f.Add(`{"x509_ttl":3600,"jwt_ttl":"5m"}`)
	f.Add(`[]`)
	s := fuzzServer()
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest("POST", PathAdminEntries, strings.NewReader(body))
		var in EntryRequest
		if err := decodeJSON(r, MaxAdminBody, &in); err != nil {
			if _, ok := err.(*badRequest); !ok {
				t.Fatalf("decode error is not a badRequest: %v", err)
			}
			return
		}
		e, err := s.validateEntry(in)
		if err != nil {
			if _, ok := err.(*badRequest); !ok {
				t.Fatalf("validation error is not a badRequest: %v", err)
			}
			return
		}
		id, err := spiffeid.FromString(e.SPIFFEID)
		if seg, _, _ := strings.Cut(strings.TrimPrefix(id.Path(), "/"), "/"); err != nil || id.TrustDomain() != s.td || strings.EqualFold(seg, "moatless") {
			t.Fatalf("accepted SPIFFE ID %q", e.SPIFFEID)
		}
		if len(e.Selectors) == 0 || len(e.Selectors) > maxSelectors {
			t.Fatalf("accepted %d selectors", len(e.Selectors))
		}
		for _, sel := range e.Selectors {
			if _, err := ParseSelector(sel.String()); err != nil {
				t.Fatalf("accepted selector %q does not re-parse: %v", sel.String(), err)
			}
		}
	})
}

// FuzzParseSelector: accepted selectors round-trip through String.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"unix:uid:1000", "unix:path:/usr/bin/x", "unix:sha256:" + strings.Repeat("a", 64), "unix:user:www-data", "k8s:ns:x", "unix:uid:01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			return
		}
		if sel.String() != s {
			t.Fatalf("ParseSelector(%q).String() = %q", s, sel.String())
		}
	})
}

// FuzzNormalizeSerial: accepted serials are canonical and idempotent.
func FuzzNormalizeSerial(f *testing.F) {
	for _, s := range []string{"01", "0xAB:CD", "deadbeef", "0", "-1", strings.Repeat("f", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := normalizeSerial(s)
		if err != nil {
			return
		}
		if n == "" || n[0] == '0' || strings.ToLower(n) != n {
			t.Fatalf("normalizeSerial(%q) = %q, not canonical", s, n)
		}
		if again, err := normalizeSerial(n); err != nil || again != n {
			t.Fatalf("normalizeSerial not idempotent on %q: %q %v", n, again, err)
		}
	})
}

// FuzzAuditReport feeds arbitrary bodies through the agent API's strict
// decoder and the validation of reported decisions: no panic; an accepted
// event carries no control character in any stored value, no value over
// its bound, and a kind and outcome from the decision.
func FuzzAuditReport(f *testing.F) {
	f.Add(`{"events":[{"time":"2026-01-02T03:04:05Z","listener":"in","source":"spiffe://example.org/a","source_ip":"10.0.0.1","destination":"prod:80","protocol":"http","method":"GET","path":"/x","decision":"deny","policy":"prod/p","rule":0,"reason":"r","reason_code":"deny_rule","policy_version":1}]}`)
	f.Add(`{"events":[{"time":"2026-01-02T03:04:05Z","listener":"in","destination":"prod:80","protocol":"tcp","decision":"allow","audit_policy":"prod/a","rule":-1,"reason":"","reason_code":"allowed","policy_version":0,"path":"/\u001b[2J\n\u00ff"}]}`)
	f.Add(`{"events":[{"decision":"unauthenticated"}],"actor":"x"}`)
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest("POST", wire.PathAudit, strings.NewReader(body))
		var in wire.AuditReport
		if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
			if _, ok := err.(*badRequest); !ok {
				t.Fatalf("decode error is not a badRequest: %v", err)
			}
			return
		}
		for i := range in.Events {
			ev, err := reportedEvent(i, &in.Events[i])
			if err != nil {
				if _, ok := err.(*badRequest); !ok {
					t.Fatalf("validation error is not a badRequest: %v", err)
				}
				continue
			}
			if ev.Actor != "" || !strings.HasPrefix(ev.Kind, "decision.") || (ev.Outcome != audit.Denied && ev.Outcome != audit.Success) {
				t.Fatalf("accepted event: %+v", ev)
			}
			for k, v := range ev.Details {
				if !printable(v) || !utf8.ValidString(v) || len(v) > maxReportPath {
					t.Fatalf("accepted detail %s=%q", k, v)
				}
			}
		}
	})
}
