package detect

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/traffic"
)

func TestCorroborate(t *testing.T) {
	const (
		payments = "spiffe://example.org/ns/prod/sa/payments"
		orders   = "spiffe://example.org/ns/prod/sa/orders"
		frontend = "spiffe://example.org/ns/prod/sa/frontend"
	)
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	since := now.Add(-time.Hour)
	by := func(id string, sev Severity, reporters ...string) Finding {
		f := Finding{ID: id, Identity: payments, Severity: sev, LastSeen: now, Destination: orders}
		for _, r := range reporters {
			f.Records = append(f.Records, Record{Reporter: r, Source: payments, Destination: r, Requests: 1})
		}
		return f
	}
	never := func(*Finding) bool { return false }
	for _, tc := range []struct {
		name    string
		fs      []Finding
		need    int
		confirm func(*Finding) bool
		risk    float64
		why     string
	}{
		{"one_node_alone", []Finding{by("a", High, orders)}, 0, never, 0, "uncorroborated: reported only by " + orders + " (1 of the 2"},
		{"one_node_many_findings", []Finding{by("a", High, orders), by("b", Medium, orders), by("c", Medium, orders)}, 0, never, 0, "uncorroborated"},
		{"source_confirms", []Finding{by("a", High, orders)}, 0, func(*Finding) bool { return true }, 0.75, "corroborated: a its own records bear it out"},
		{"two_nodes", []Finding{by("a", High, orders), by("b", Medium, frontend)}, 0, never, 0.85, "corroborated: a 2 nodes reported it"},
		{"two_nodes_one_finding", []Finding{by("a", High, orders, frontend)}, 0, never, 0.75, "corroborated"},
		{"two_nodes_three_needed", []Finding{by("a", High, orders), by("b", Medium, frontend)}, 3, never, 0, "(2 of the 3 nodes needed)"},
		{"one_needed", []Finding{by("a", High, orders)}, 1, never, 0.75, "corroborated"},
		{"server_observed", []Finding{by("a", High)}, 0, never, 0.75, "a observed by the server"},
		{"server_observed_does_not_lift_a_claim", []Finding{by("a", Medium), by("b", High, orders)}, 0, never, 0.5, "corroborated: a observed"},
		{"its_own_node", []Finding{by("a", High, payments)}, 0, never, 0.75, "a reported by its own node"},
		{"reporters_field", []Finding{{ID: "a", Identity: payments, Severity: High, LastSeen: now, Reporters: []string{orders, frontend}}}, 0, never, 0.75, "corroborated"},
		{"aged_out", []Finding{{ID: "a", Identity: payments, Severity: High, LastSeen: since.Add(-time.Second)}}, 0, never, 0, "no finding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Corroborate(payments, tc.fs, since, tc.need, tc.confirm)
			if c.Risk != tc.risk || !strings.Contains(c.Why, tc.why) {
				t.Fatalf("got risk %v, %q; want %v, %q", c.Risk, c.Why, tc.risk, tc.why)
			}
		})
	}
}

// The engine notes who reported what it finds, and Fold keeps the union:
// what Corroborate counts as witnesses.
func TestFindingReporters(t *testing.T) {
	const reports = "spiffe://example.org/ns/prod/sa/reports"
	e := NewEngine(config.DetectSettings{})
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	var got []Finding
	for _, rep := range []string{"spiffe://example.org/ns/prod/sa/orders", "spiffe://example.org/ns/prod/sa/frontend"} {
		got = append(got, e.Ingest(now, []Record{{Time: now, Reporter: rep, Source: reports, Destination: rep, Decision: "deny", Requests: 30}})...)
	}
	if len(got) != 2 || got[0].ID != got[1].ID {
		t.Fatalf("want one probing finding twice, got %+v", got)
	}
	want := []string{"spiffe://example.org/ns/prod/sa/frontend", "spiffe://example.org/ns/prod/sa/orders"}
	if !slices.Equal(got[1].Reporters, want) {
		t.Fatalf("reporters %v, want %v", got[1].Reporters, want)
	}
	stored := got[0]
	stored.Fold(got[1])
	if !slices.Equal(stored.Reporters, want) || !slices.Equal(stored.Witnesses(), want) {
		t.Fatalf("folded reporters %v, witnesses %v", stored.Reporters, stored.Witnesses())
	}
	// A reported decision is its reporter's word; the server's own
	// observation has no reporter.
	fs := e.Observe(now, Event{Kind: EventRevokedCredential, Identity: reports, Reporter: "spiffe://example.org/ns/prod/sa/orders"})
	if len(fs) != 1 || !slices.Equal(fs[0].Reporters, want[1:]) {
		t.Fatalf("reported revoked credential: %+v", fs)
	}
	fs = e.Observe(now, Event{Kind: EventRefreshReuse, Identity: "client-a"})
	if len(fs) != 1 || len(fs[0].Witnesses()) != 0 {
		t.Fatalf("server-observed finding: %+v", fs)
	}
	// The bound.
	var f Finding
	for i := range 2 * maxReporters {
		f.addReporter(string(rune('a' + i)))
	}
	if len(f.Reporters) != maxReporters || !slices.IsSorted(f.Reporters) {
		t.Fatalf("reporters %v", f.Reporters)
	}
}

func TestPlaybookWitnesses(t *testing.T) {
	const doc = "apiVersion: moatless.io/v1alpha1\nkind: Playbook\nmetadata: {name: c}\nspec:\n  trigger: {risk: 0.75, witnesses: %s}\n  steps: [{action: isolate}]\n"
	for _, tc := range []struct {
		v    string
		want string // error substring; "" parses
	}{{"0", ""}, {"1", ""}, {"10", ""}, {"-1", "spec.trigger.witnesses -1"}, {"11", "spec.trigger.witnesses 11"}, {"two", "witnesses"}} {
		_, err := ParsePlaybooks([]byte(strings.Replace(doc, "%s", tc.v, 1)))
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("witnesses %s: %v, want %q", tc.v, err, tc.want)
		}
	}
}

// Reaches: the corroborated findings alone must meet the trigger, its
// detectors filter included.
func TestCorroborationReaches(t *testing.T) {
	const payments = "spiffe://example.org/ns/prod/sa/payments"
	pb := Playbook{Name: "p", Trigger: Trigger{Risk: 0.75, Detectors: []string{DetectorExfiltration}}}
	for _, tc := range []struct {
		name  string
		c     Corroboration
		ok    bool
		short string
	}{
		{"corroborated_exfiltration", Corroboration{Risk: 0.75, Detectors: []string{DetectorExfiltration}}, true, ""},
		{"risk_short", Corroboration{Risk: 0.5, Detectors: []string{DetectorExfiltration}}, false, "corroborated risk 0.50 < 0.75"},
		{"other_detector", Corroboration{Risk: 0.9, Detectors: []string{DetectorProbing}}, false, "no corroborated finding of exfiltration (corroborated: probing)"},
		{"none", Corroboration{Risk: 0.9}, false, "no corroborated finding of exfiltration (corroborated: none)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.c.Reaches(pb, payments); got != tc.ok {
				t.Fatalf("Reaches = %v, want %v", got, tc.ok)
			}
			if got := tc.c.Short(pb, payments); got != tc.short {
				t.Fatalf("Short = %q, want %q", got, tc.short)
			}
		})
	}
	// Corroborate names the detectors of the corroborated findings only.
	now := time.Now()
	fs := []Finding{
		{ID: "a", Identity: payments, Detector: DetectorProbing, Severity: High, LastSeen: now},
		{ID: "b", Identity: payments, Detector: DetectorExfiltration, Severity: High, LastSeen: now, Reporters: []string{"spiffe://example.org/ns/prod/sa/frontend"}},
	}
	c := Corroborate(payments, fs, now.Add(-time.Hour), 0, nil)
	if !slices.Equal(c.Detectors, []string{DetectorProbing}) || c.Reaches(pb, payments) {
		t.Fatalf("corroboration %+v", c)
	}
}

// An anomaly alone alerts: a playbook whose trigger names no detectors
// contains only when a corroborated finding is evidence of compromise
// (see TestOutsidersTrafficContainsNoOne in internal/server for the
// attack: a flash crowd or big downloads through a frontend).
func TestAnomaliesAloneAlert(t *testing.T) {
	const payments = "spiffe://example.org/ns/prod/sa/payments"
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	pb := Playbook{Name: "p", Trigger: Trigger{Risk: 0.75}}
	named := Playbook{Name: "n", Trigger: Trigger{Risk: 0.75, Detectors: []string{DetectorRate}}}
	// own: a finding its own node reported (corroborated), of detector
	// det with these evidence keys.
	own := func(id, det string, sev Severity, keys ...string) Finding {
		f := Finding{ID: id, Identity: payments, Detector: det, Severity: sev, LastSeen: now, Reporters: []string{payments}, Evidence: map[string]string{}}
		for _, k := range keys {
			f.Evidence[k] = "1"
		}
		return f
	}
	for _, tc := range []struct {
		name   string
		fs     []Finding
		ok     bool
		okNamd bool
	}{
		{"rate", []Finding{own("a", DetectorRate, High)}, false, true},
		{"new_edge_and_rate", []Finding{own("a", DetectorRate, High), own("b", DetectorNewEdge, Medium)}, false, true},
		{"new_paths", []Finding{own("a", DetectorProbing, High, "new_paths", "kind")}, false, false},
		{"volume", []Finding{own("a", DetectorExfiltration, High, "bytes_per_minute", "kind")}, false, false},
		{"exchange_burst", []Finding{own("a", DetectorToken, High, "exchanges_per_minute", "kind")}, false, false},
		{"refusals", []Finding{own("a", DetectorProbing, High, "refusals_per_minute")}, true, false},
		{"paths_then_refusals_folded", []Finding{own("a", DetectorProbing, High, "new_paths", "refusals_per_minute")}, true, false},
		{"pii", []Finding{own("a", DetectorExfiltration, High, "pii_matches_per_minute", "bytes_per_minute")}, true, false},
		{"refresh_reuse", []Finding{own("a", DetectorToken, High, "grant", "reuse")}, true, false},
		{"burst_with_reuse_folded", []Finding{own("a", DetectorToken, High, "exchanges_per_minute", "reuse")}, true, false},
		{"revoked", []Finding{own("a", DetectorRevoked, High)}, true, false},
		{"rate_with_refusals", []Finding{own("a", DetectorRate, High), own("b", DetectorProbing, Medium, "refusals_per_minute")}, true, true},
		{"revoked_token_of_it", []Finding{own("a", DetectorRevoked, High, "revoked_token_of")}, false, false},
		{"revoked_token_of_it_presented_by_it", []Finding{own("a", DetectorRevoked, High, "revoked_token_of", "presented")}, true, false},
		{"relayed_refusals", []Finding{own("a", DetectorProbing, High, "relayed_refusals_per_minute")}, false, false},
		{"relayed_refusals_and_rate", []Finding{own("a", DetectorProbing, High, "relayed_refusals_per_minute"), own("b", DetectorRate, Medium)}, false, true},
		{"relayed_refusals_and_revoked", []Finding{own("a", DetectorProbing, High, "relayed_refusals_per_minute"), own("b", DetectorRevoked, Medium)}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Corroborate(payments, tc.fs, now.Add(-time.Hour), 0, nil)
			if got := c.Reaches(pb, payments); got != tc.ok {
				t.Fatalf("Reaches = %v, want %v: %+v", got, tc.ok, c)
			}
			if short := c.Short(pb, payments); tc.ok != (short == "") || (!tc.ok && !strings.Contains(short, "only anomalies corroborated")) {
				t.Fatalf("Short = %q", short)
			}
			if got := c.Reaches(named, payments); got != tc.okNamd {
				t.Fatalf("with detectors [rate]: Reaches = %v, want %v", got, tc.okNamd)
			}
		})
	}
}

// The engine marks a reused token so that an exchange burst folded into
// the same finding leaves it evidence.
func TestTokenReuseStaysEvidence(t *testing.T) {
	e := NewEngine(config.DetectSettings{})
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	fs := e.Observe(now, Event{Time: now, Kind: EventRefreshReuse, Identity: "app", Detail: map[string]string{"grant": "g"}})
	for i := 0; i < e.Settings().Thresholds.ExchangeBurst; i++ {
		fs = append(fs, e.Observe(now, Event{Time: now, Kind: EventTokenExchange, Identity: "app"})...)
	}
	last := fs[len(fs)-1]
	if last.Evidence["kind"] != "exchange_burst" || last.Anomaly() {
		t.Fatalf("reuse then burst: %+v", last)
	}
}

// A relay's refusals (config.DetectSettings.Relays: the edge gateway
// forwarding scanners' paths) raise a probing finding that is relayed:
// an anomaly that meets no trigger's detectors, not even probing. The
// same refusals of any other identity are evidence. See
// TestRelayScannedContainsNoOne in internal/server for the attack.
func TestRelayRefusalsAlert(t *testing.T) {
	const (
		gateway  = "spiffe://example.org/ns/edge/sa/gateway"
		frontend = "spiffe://example.org/ns/prod/sa/frontend"
		orders   = "spiffe://example.org/ns/prod/sa/orders"
	)
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	e := NewEngine(config.DetectSettings{Relays: []string{"spiffe://example.org/ns/edge/*"}})
	probing := Playbook{Name: "p", Trigger: Trigger{Risk: 0.75, Detectors: []string{DetectorProbing}}}
	for _, tc := range []struct {
		caller  string
		relayed bool
	}{{gateway, true}, {frontend, false}} {
		var fs []Finding
		for _, p := range []string{"/.git/config", "/wp-admin"} {
			fs = append(fs, e.Ingest(now, []Record{{Time: now, Reporter: orders, Source: tc.caller, Destination: orders, Method: "GET", Path: p, Decision: "deny", Reason: "no_allow_match", Requests: 60}})...)
		}
		if len(fs) == 0 {
			t.Fatalf("%s: no finding", tc.caller)
		}
		f := fs[len(fs)-1]
		if f.Detector != DetectorProbing || f.Severity != High || f.Relayed() != tc.relayed || f.Anomaly() != tc.relayed {
			t.Fatalf("%s: relayed %v, anomaly %v: %+v", tc.caller, f.Relayed(), f.Anomaly(), f)
		}
		f.Reporters = []string{tc.caller} // as corroborated as it gets
		c := Corroborate(tc.caller, []Finding{f}, now.Add(-time.Hour), 0, nil)
		if c.Risk != 0.75 || c.Reaches(probing, tc.caller) == tc.relayed || c.Reaches(Playbook{Trigger: Trigger{Risk: 0.75}}, tc.caller) == tc.relayed {
			t.Fatalf("%s: %+v", tc.caller, c)
		}
		if tc.relayed && !strings.Contains(c.Short(probing, tc.caller), "relay") {
			t.Fatalf("Short = %q", c.Short(probing, tc.caller))
		}
	}
}

// A relay's other probing detections are its clients' too: a scanner
// trying ten never-seen paths through the gateway within 5 minutes
// (fewer refusals than the burst, or none: an upstream that allows the
// gateway any path answers 404), or so many distinct paths that the
// upstream's record overflows for the gateway, raised a probing
// finding that was not relayed, so a trigger naming probing contained
// the mesh's front door on the internet's say-so. Every probing
// detection about a relay from its records is now relayed; the same
// records about any other identity are not, and a relay's own reports
// (a caller flood) stay its own. Fails on the parent (new_paths and
// record_overflow of the gateway reach the probing trigger).
func TestRelayProbingAlerts(t *testing.T) {
	const (
		gateway  = "spiffe://example.org/ns/edge/sa/gateway"
		frontend = "spiffe://example.org/ns/prod/sa/frontend"
		orders   = "spiffe://example.org/ns/prod/sa/orders"
	)
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	probing := Playbook{Name: "p", Trigger: Trigger{Risk: 0.5, Detectors: []string{DetectorProbing}}}
	rec := func(caller, path, decision string, n uint64) Record {
		r := Record{Time: now, Reporter: orders, Source: caller, Destination: orders, Method: "GET", Path: path, Decision: decision, Requests: n}
		if decision == "deny" {
			r.Reason = "no_allow_match"
		}
		return r
	}
	for _, tc := range []struct {
		name string
		recs func(caller string) []Record
		kind string
	}{
		{"new_paths_allowed", func(caller string) []Record {
			var rs []Record
			for i := range 10 {
				rs = append(rs, rec(caller, fmt.Sprintf("/scan/%c", 'a'+i), "allow", 1))
			}
			return rs
		}, "paths"},
		{"new_paths_refused_under_the_burst", func(caller string) []Record {
			var rs []Record
			for i := range 10 {
				rs = append(rs, rec(caller, fmt.Sprintf("/scan/%c", 'a'+i), "deny", 1))
			}
			return rs
		}, "paths"},
		{"record_overflow", func(caller string) []Record {
			r := rec(caller, traffic.OverflowPeerPath, "allow", 500)
			r.Method = ""
			return []Record{r}
		}, "record_overflow"},
	} {
		for _, caller := range []string{gateway, frontend} {
			relayed := caller == gateway
			t.Run(tc.name+"/"+caller[strings.LastIndex(caller, "/")+1:], func(t *testing.T) {
				e := NewEngine(config.DetectSettings{LearningPeriod: 1, Relays: []string{"spiffe://example.org/ns/edge/*"}})
				learned := rec(caller, "/", "allow", 1)
				learned.Time = now.Add(-time.Hour)
				e.Ingest(learned.Time, []Record{learned})
				var f *Finding
				for _, x := range e.Ingest(now, tc.recs(caller)) {
					if x.Identity == caller && x.Detector == DetectorProbing {
						f = &x
					}
				}
				if f == nil || f.Evidence["kind"] != tc.kind {
					t.Fatalf("want a probing finding of kind %s", tc.kind)
				}
				if f.Relayed() != relayed || !f.Anomaly() {
					t.Fatalf("relayed %v, anomaly %v, want relayed %v: %+v", f.Relayed(), f.Anomaly(), relayed, f)
				}
				f.Reporters = []string{caller} // as corroborated as it gets
				c := Corroborate(caller, []Finding{*f}, now.Add(-time.Hour), 0, nil)
				if c.Reaches(probing, caller) == relayed {
					t.Fatalf("a trigger naming probing reached %v, want %v: %+v", !relayed, !relayed, c)
				}
			})
		}
	}
	// A relay's own word (the callers its node reports) is its own.
	f := Finding{Detector: DetectorProbing, Evidence: map[string]string{"relayed": "paths", "new_paths": "10", "identities_introduced": "20000", "kind": "caller_flood"}}
	if f.Relayed() {
		t.Fatalf("a caller flood folded into a relay's probing finding is relayed: %+v", f)
	}
}
