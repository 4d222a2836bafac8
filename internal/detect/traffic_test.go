package detect

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
)

// The tests in this file run the detectors over a generated week of
// per-edge traffic with daily and weekly cycles (busy days and quiet
// nights, slower weekends, Poisson noise, occasional legitimate denials)
// and attacks injected on days 3 to 7, and score each detector's
// precision and recall. docs/benchmarks.md reports the numbers
// (TestDetectorsOnGeneratedWeek -v prints them).

const td = "spiffe://example.org/ns/prod/sa/"

// genOp is one operation of an edge and its normal traffic.
type genOp struct {
	src, dst, method, path string
	perMinute              float64 // mean requests per minute at the daily peak
	bytesPerReq            float64
	denyShare              float64 // share of requests normally denied
}

// attack is one injected attack: the detector that should find it, on
// which identity, and when.
type attack struct {
	detector   string
	identity   string
	start, end time.Time
	found      bool
}

// genWorld builds the mesh's normal traffic: 24 services, 60 edges
// between them (20 under the race detector) with 1 to 4 operations each.
func genWorld(rng *rand.Rand) []genOp {
	var ops []genOp
	edges := 60
	if raceEnabled {
		edges = 20
	}
	svc := func(i int) string { return td + fmt.Sprintf("svc%02d", i) }
	paths := []string{"/api/items/{*}", "/api/items", "/api/orders/{*}", "/api/users/{*}/profile", "/healthz", "/api/search", "/api/reports/{*}", "/v1/data"}
	seen := map[[2]int]bool{}
	for len(seen) < edges {
		a, b := rng.IntN(24), rng.IntN(24)
		if a == b || seen[[2]int{a, b}] {
			continue
		}
		seen[[2]int{a, b}] = true
		n := 1 + rng.IntN(4)
		base := math.Exp(rng.Float64()*math.Log(400)) + 0.5 // 1.5 to 400 per minute, log-uniform
		for k := range n {
			method := "GET"
			if k == 1 {
				method = "POST"
			}
			ops = append(ops, genOp{
				src: svc(a), dst: svc(b), method: method, path: paths[(a+b+k)%len(paths)],
				perMinute: base / float64(k+1), bytesPerReq: 500 + rng.Float64()*40000,
				denyShare: map[bool]float64{true: 0.002, false: 0}[rng.IntN(5) == 0],
			})
		}
	}
	return ops
}

// load is the share of peak traffic at t: a daily cycle (quiet at 03:00,
// peak at 15:00) and weekends at 60%.
func load(t time.Time) float64 {
	h := float64(t.Hour()) + float64(t.Minute())/60
	d := 0.15 + 0.85*(1+math.Sin(2*math.Pi*(h-9)/24))/2
	if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday {
		d *= 0.6
	}
	return d
}

// poisson draws a Poisson count (normal approximation above 50).
func poisson(rng *rand.Rand, lambda float64) uint64 {
	if lambda <= 0 {
		return 0
	}
	if lambda > 50 {
		return uint64(max(0, math.Round(lambda+rng.NormFloat64()*math.Sqrt(lambda))))
	}
	l, k, p := math.Exp(-lambda), 0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return uint64(k)
		}
		k++
	}
}

// week is the generated week: for each minute, the records of every edge,
// with attacks mixed in (attacks nil: normal traffic only).
type week struct {
	start   time.Time
	ops     []genOp
	attacks []*attack
	// extra holds the attack records by minute, and events by minute.
	extra  map[int][]Record
	events map[int][]Event
}

func newWeek(seed uint64, withAttacks bool) *week {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w := &week{start: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), extra: map[int][]Record{}, events: map[int][]Event{}}
	w.ops = genWorld(rng)
	if !withAttacks {
		return w
	}
	// Ten attacks of each kind, at random minutes of days 3 to 7 (after
	// a day of learning and a day for the hour-of-day slots to fill).
	at := func() int { return 2*1440 + rng.IntN(5*1440-30) }
	mark := func(det, id string, m, dur int) {
		w.attacks = append(w.attacks, &attack{detector: det, identity: id, start: w.start.Add(time.Duration(m) * time.Minute),
			end: w.start.Add(time.Duration(m+dur) * time.Minute)})
	}
	attacker := func() string { return td + fmt.Sprintf("svc%02d", rng.IntN(24)) }
	for range 10 {
		// Rate: one busy operation called at 8× its normal rate, and at
		// least 60 times a minute (below Thresholds.MinRate a burst is
		// not judged), for 10 minutes.
		var op genOp
		for op = w.ops[rng.IntN(len(w.ops))]; op.perMinute < 5; op = w.ops[rng.IntN(len(w.ops))] {
		}
		m := at()
		for i := range 10 {
			normal := op.perMinute * load(w.start.Add(time.Duration(m+i)*time.Minute))
			n := poisson(rng, max(7*normal, 60))
			w.extra[m+i] = append(w.extra[m+i], Record{Source: op.src, Destination: op.dst, Method: op.method, Path: op.path, Decision: "allow", Status: 2, Requests: n, RespBytes: uint64(float64(n) * op.bytesPerReq)})
		}
		mark(DetectorRate, op.src, m, 10)

		// Not an attack: a busy hour at twice the usual rate (a sale, a
		// batch job) is below the rate factor and must raise nothing.
		for op = w.ops[rng.IntN(len(w.ops))]; op.perMinute < 20; op = w.ops[rng.IntN(len(w.ops))] {
		}
		m = at()
		for i := range 60 {
			n := poisson(rng, op.perMinute*load(w.start.Add(time.Duration(m+i)*time.Minute)))
			w.extra[m+i] = append(w.extra[m+i], Record{Source: op.src, Destination: op.dst, Method: op.method, Path: op.path, Decision: "allow", Status: 2, Requests: n, RespBytes: uint64(float64(n) * op.bytesPerReq)})
		}

		// New edge: a service calls one it never called, a few times.
		src, dst := attacker(), td+fmt.Sprintf("db%02d", rng.IntN(100))
		m = at()
		w.extra[m] = append(w.extra[m], Record{Source: src, Destination: dst, Method: "GET", Path: "/api/dump", Decision: "allow", Status: 2, Requests: 3, RespBytes: 9000})
		mark(DetectorNewEdge, src, m, 1)

		// Probing: 3 minutes of refused requests to paths nobody calls.
		src, m = attacker(), at()
		for i := range 3 {
			for j := range 25 {
				w.extra[m+i] = append(w.extra[m+i], Record{Source: src, Destination: w.ops[rng.IntN(len(w.ops))].dst, Method: "GET",
					Path: fmt.Sprintf("/admin/%s%d", []string{"backup", "config", "debug", "export", ".env"}[j%5], j), Decision: "deny", Reason: "no_allow_match", Status: 4, Requests: 1 + uint64(j%3)})
			}
		}
		mark(DetectorProbing, src, m, 3)

		// Exfiltration by volume: 150 MB in a minute.
		op = w.ops[rng.IntN(len(w.ops))]
		m = at()
		w.extra[m] = append(w.extra[m], Record{Source: op.src, Destination: op.dst, Method: op.method, Path: op.path, Decision: "allow", Status: 2, Requests: 12, RespBytes: 150 << 20})
		mark(DetectorExfiltration, op.src, m, 1)

		// Exfiltration against the baseline: 40× the usual bytes, below
		// the absolute limit.
		for op = w.ops[rng.IntN(len(w.ops))]; op.perMinute*op.bytesPerReq < 20000; op = w.ops[rng.IntN(len(w.ops))] {
		}
		m = at()
		usual := op.perMinute * load(w.start.Add(time.Duration(m)*time.Minute)) * op.bytesPerReq
		big := uint64(max(40*usual, 30<<20))
		if big < 100<<20 {
			w.extra[m] = append(w.extra[m], Record{Source: op.src, Destination: op.dst, Method: op.method, Path: op.path, Decision: "allow", Status: 2, Requests: 5, RespBytes: big})
			mark(DetectorExfiltration, op.src, m, 1)
		}

		// Personal data in sampled responses.
		op, m = w.ops[rng.IntN(len(w.ops))], at()
		w.extra[m] = append(w.extra[m], Record{Source: op.src, Destination: op.dst, Method: op.method, Path: op.path, Decision: "allow", Status: 2, Requests: 2, RespBytes: 4000, PIIMatches: 60})
		mark(DetectorExfiltration, op.src, m, 1)

		// A revoked identity still trying.
		src, m = attacker(), at()
		w.extra[m] = append(w.extra[m], Record{Source: src, Destination: w.ops[0].dst, Decision: "refused", Reason: "revoked", Requests: 4})
		mark(DetectorRevoked, src, m, 1)

		// Token anomalies: a refresh token replayed; a burst of exchanges.
		m = at()
		client := fmt.Sprintf("client-%d", rng.IntN(1000))
		w.events[m] = append(w.events[m], Event{Kind: EventRefreshReuse, Identity: client})
		mark(DetectorToken, client, m, 1)
		m, src = at(), attacker()
		for range 80 {
			w.events[m] = append(w.events[m], Event{Kind: EventTokenExchange, Identity: src})
		}
		mark(DetectorToken, src, m, 1)

		// Attestation failures from one address.
		m = at()
		addr := fmt.Sprintf("10.0.%d.%d", rng.IntN(255), rng.IntN(255))
		for range 8 {
			w.events[m] = append(w.events[m], Event{Kind: EventAttestFailure, Identity: addr})
		}
		mark(DetectorAttestation, addr, m, 5)
	}
	return w
}

// normalEvents are the legitimate token exchanges and the odd failed
// attestation a normal minute has.
func (w *week) normalEvents(rng *rand.Rand, m int, t time.Time) []Event {
	var evs []Event
	for i := range 3 {
		for range poisson(rng, 10*load(t)) {
			evs = append(evs, Event{Kind: EventTokenExchange, Identity: td + fmt.Sprintf("svc%02d", i)})
		}
	}
	if rng.IntN(500) == 0 {
		evs = append(evs, Event{Kind: EventAttestFailure, Identity: "10.1.1.1"})
	}
	return evs
}

// run feeds the week to an engine minute by minute (each minute's
// records as three partial reports, as sidecars send them every few
// seconds) and returns the findings.
func (w *week) run(t testing.TB, e *Engine, seed uint64) []Finding {
	rng := rand.New(rand.NewPCG(seed, 7))
	var found []Finding
	byID := map[string]int{}
	keep := func(fs []Finding) {
		for _, f := range fs {
			if i, ok := byID[f.ID]; ok {
				found[i] = f
				continue
			}
			byID[f.ID] = len(found)
			found = append(found, f)
		}
	}
	for m := range 7 * 1440 {
		t0 := w.start.Add(time.Duration(m) * time.Minute)
		lf := load(t0)
		for part := range 3 {
			ts := t0.Add(time.Duration(part*20) * time.Second)
			recs := make([]Record, 0, len(w.ops))
			for _, op := range w.ops {
				n := poisson(rng, op.perMinute*lf/3)
				if n == 0 {
					continue
				}
				denied := uint64(math.Round(float64(n) * op.denyShare))
				if rng.Float64() < float64(n)*op.denyShare-float64(denied) {
					denied++
				}
				bytes := uint64(float64(n-denied) * op.bytesPerReq * (0.8 + 0.4*rng.Float64()))
				recs = append(recs, Record{Time: ts, Source: op.src, Destination: op.dst, Method: op.method, Path: op.path, Decision: "allow", Status: 2, Requests: n - denied, RespBytes: bytes})
				if denied > 0 {
					recs = append(recs, Record{Time: ts, Source: op.src, Destination: op.dst, Method: op.method, Path: op.path, Decision: "deny", Reason: "no_allow_match", Status: 4, Requests: denied})
				}
			}
			if part == 1 {
				for _, r := range w.extra[m] {
					r.Time = ts
					recs = append(recs, r)
				}
			}
			keep(e.Ingest(ts.Add(2*time.Second), recs))
		}
		for _, ev := range append(w.normalEvents(rng, m, t0), w.events[m]...) {
			ev.Time = t0.Add(30 * time.Second)
			keep(e.Observe(ev.Time, ev))
		}
		e.Tick(t0.Add(time.Minute))
	}
	return found
}

// score matches findings to attacks: a finding is a true positive when an
// attack of its detector on its identity was under way (or had ended at
// most 5 minutes before).
func score(attacks []*attack, found []Finding) map[string]*[4]int { // detector → tp, fp, attacks, detected
	out := map[string]*[4]int{}
	get := func(d string) *[4]int {
		if out[d] == nil {
			out[d] = &[4]int{}
		}
		return out[d]
	}
	for _, f := range found {
		hit := false
		for _, a := range attacks {
			// A finding open during the attack covers it: a second burst
			// while the first one's finding is open counts on that one.
			// A probe of services the identity never called is a new
			// edge too.
			same := a.detector == f.Detector || a.detector == DetectorProbing && f.Detector == DetectorNewEdge
			if same && a.identity == f.Identity && !f.LastSeen.Before(a.start) && f.Time.Before(a.end.Add(5*time.Minute)) {
				a.found, hit = true, true
			}
		}
		if hit {
			get(f.Detector)[0]++
		} else {
			get(f.Detector)[1]++
		}
	}
	for _, a := range attacks {
		s := get(a.detector)
		s[2]++
		if a.found {
			s[3]++
		}
	}
	return out
}

func TestDetectorsOnGeneratedWeek(t *testing.T) {
	if testing.Short() {
		t.Skip("a week of traffic")
	}
	w := newWeek(42, true)
	e := NewEngine(config.DetectSettings{})
	found := w.run(t, e, 42)
	sc := score(w.attacks, found)
	names := make([]string, 0, len(sc))
	for d := range sc {
		names = append(names, d)
	}
	sort.Strings(names)
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "%-20s %9s %9s %8s %8s\n", "detector", "precision", "recall", "attacks", "findings")
	for _, d := range names {
		s := sc[d]
		prec, rec := 1.0, 1.0
		if s[0]+s[1] > 0 {
			prec = float64(s[0]) / float64(s[0]+s[1])
		}
		if s[2] > 0 {
			rec = float64(s[3]) / float64(s[2])
		}
		fmt.Fprintf(&tbl, "%-20s %9.2f %9.2f %8d %8d\n", d, prec, rec, s[2], s[0]+s[1])
		if s[2] > 0 && rec < 0.9 {
			t.Errorf("%s: recall %.2f, want at least 0.9", d, rec)
		}
		if prec < 0.8 {
			t.Errorf("%s: precision %.2f, want at least 0.8", d, prec)
		}
	}
	t.Logf("a week of generated traffic (%d operations), %d injected attacks:\n%s", len(w.ops), len(w.attacks), tbl.String())
	if testing.Verbose() {
		for _, a := range w.attacks {
			if !a.found {
				t.Logf("missed: %s on %s at %s", a.detector, a.identity, a.start.Format(time.RFC3339))
			}
		}
	}
}

func TestNoFindingStormOnNormalTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("a week of traffic")
	}
	w := newWeek(7, false)
	e := NewEngine(config.DetectSettings{})
	found := w.run(t, e, 7)
	// A week of normal traffic may raise a handful of findings (a
	// Poisson tail now and then), never a storm.
	if len(found) > 7 {
		for _, f := range found {
			t.Logf("%s %s %s %s", f.Time.Format(time.RFC3339), f.Detector, f.Severity, f.Summary)
		}
		t.Fatalf("%d findings on a week of normal traffic, want at most one a day", len(found))
	}
	t.Logf("%d findings on a week of normal traffic", len(found))
	for _, r := range e.Risks(w.start.Add(7 * 24 * time.Hour)) {
		if r.Risk >= 0.75 {
			t.Errorf("normal identity %s at risk %.2f", r.Identity, r.Risk)
		}
	}
}
