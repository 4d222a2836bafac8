package server

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
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

// FuzzWatchQuery: whatever query string a node sends to the watch stream,
// the parser answers a badRequest or a since and epoch that hold to the
// rules (a bounded lower-case hex epoch, a version that fits int64).
func FuzzWatchQuery(f *testing.F) {
	f.Add("since=12&epoch=0123456789abcdef0123456789abcdef")
	f.Add("since=0")
	f.Add("epoch=ab&since=1&since=2")
	f.Add("since=9223372036854775808")
	f.Add("from=1;since=2")
	f.Add("since=%31&epoch=%41")
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		since, hasSince, epoch, err := watchQuery(q)
		if err != nil {
			if _, ok := err.(*badRequest); !ok {
				t.Fatalf("error is not a badRequest: %v", err)
			}
			return
		}
		if since > 1<<63-1 || (!hasSince && since != 0) || len(epoch) > wire.MaxEpochLength || strings.Trim(epoch, "0123456789abcdef") != "" {
			t.Fatalf("accepted %q: since %d (%v) epoch %q", raw, since, hasSince, epoch)
		}
	})
}

// TestEncodeUpdateMatchesWire: the watch stream's own encoder (shared
// sections spliced in) yields, for every field of wire.Update, what
// json.Marshal does: a client decoding either gets the same update.
func TestEncodeUpdateMatchesWire(t *testing.T) {
	s := fuzzServer()
	entries := []wire.Entry{{ID: "e1", SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/a",
		Selectors: []wire.Selector{{Type: "unix", Value: "uid:1"}}, Labels: map[string]string{"a": "<b>"}, Revision: 2}}
	for _, u := range []wire.Update{
		{Version: 7, Heartbeat: true},
		{Version: 8},
		{Version: 9, Epoch: "abcd", Resumed: true, HeartbeatInterval: wire.Duration(500 * time.Millisecond),
			Bundle:      &wire.Bundle{TrustDomain: "example.org", X509Authorities: [][]byte{{1, 2, 3}}, SequenceNumber: 4},
			Entries:     &entries,
			Revocations: &wire.Revocations{SPIFFEIDs: []string{"spiffe://example.org/x"}, TokenIDs: []wire.RevokedTokenID{{JTI: "j"}}},
			Policies:    &wire.PolicySet{Version: 3, Documents: []json.RawMessage{json.RawMessage(`{"kind":"AuthorizationPolicy","x":"<&>"}`)}},
			Risk:        &wire.RiskScores{Scores: []wire.RiskScore{{SPIFFEID: "spiffe://example.org/x", Score: 0.85}}}},
		{Version: 10, Entries: &[]wire.Entry{}},
		{Version: 11, Risk: &wire.RiskScores{Scores: []wire.RiskScore{}}},
	} {
		got, err := s.encodeUpdate(u)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 || got[len(got)-1] != '\n' || bytes.Count(got, []byte("\n")) != 1 {
			t.Fatalf("not one NDJSON line: %q", got)
		}
		want, _ := json.Marshal(u)
		var a, b any
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("%q: %v", got, err)
		}
		json.Unmarshal(want, &b)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("encodeUpdate:\n%s\njson.Marshal:\n%s", got, want)
		}
		// Again, from the cache.
		if again, _ := s.encodeUpdate(u); !bytes.Equal(again, got) {
			t.Fatalf("second encoding differs:\n%s\n%s", again, got)
		}
	}
	// Every field of wire.Update is covered above: a field added later
	// must be added to the cases (and, if shared, to encodeUpdate).
	if n := reflect.TypeFor[wire.Update]().NumField(); n != 10 {
		t.Fatalf("wire.Update has %d fields; extend this test and encodeUpdate", n)
	}
}
