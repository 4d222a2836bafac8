// Package detect turns the mesh's traffic records into sight and
// defence: per-edge baselines of what is normal, detectors that find
// what is not, a risk score per identity, and playbooks that contain an
// identity when its risk crosses a threshold.
//
// The package is pure: it does no I/O and reads no clock of its own (the
// caller passes times in), so the server, the tests and the benchmarks
// drive it the same way. The server (internal/server/detect.go) feeds it
// the records sidecars and gateways report, the token service's and the
// agent API's anomalies, stores what it finds and carries out what the
// playbooks decide.
package detect

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/traffic"
)

// Severity of a finding.
type Severity string

// Severities, lowest first.
const (
	Low      Severity = "low"
	Medium   Severity = "medium"
	High     Severity = "high"
	Critical Severity = "critical"
)

// Severities are every severity, lowest first.
var Severities = []Severity{Low, Medium, High, Critical}

// AtLeast returns the names of the severities at or above s, lowest
// first; none when s is not a severity.
func (s Severity) AtLeast() []string {
	var out []string
	for _, x := range Severities {
		if s.Weight() > 0 && x.Weight() >= s.Weight() {
			out = append(out, string(x))
		}
	}
	return out
}

// Weight is the severity's contribution to an identity's risk.
func (s Severity) Weight() float64 {
	switch s {
	case Critical:
		return 1
	case High:
		return 0.75
	case Medium:
		return 0.5
	case Low:
		return 0.25
	}
	return 0
}

// Detectors.
const (
	DetectorRate         = "rate"               // requests above k× the edge's baseline
	DetectorNewEdge      = "new_edge"           // a destination or operation the identity never called
	DetectorProbing      = "probing"            // bursts of refusals, or of never-seen paths
	DetectorExfiltration = "exfiltration"       // large responses, or personal data in them
	DetectorToken        = "token_anomaly"      // refresh or code reuse, exchange bursts
	DetectorAttestation  = "attestation"        // repeated failed attestations
	DetectorRevoked      = "revoked_credential" // a revoked identity or token still in use
)

// Record is one aggregate of an edge's requests in part of a minute, as a
// reporter saw it: the input of the detectors and the evidence of their
// findings. Decision is allow, deny, unauthenticated or refused.
type Record struct {
	Time        time.Time `json:"time"`
	Reporter    string    `json:"reporter,omitempty"`
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	Method      string    `json:"method,omitempty"`
	Path        string    `json:"path,omitempty"`
	Decision    string    `json:"decision"`
	Reason      string    `json:"reason,omitempty"`
	Status      int       `json:"status,omitempty"`
	Requests    uint64    `json:"requests"`
	RespBytes   uint64    `json:"resp_bytes,omitempty"`
	PIIMatches  uint64    `json:"pii_matches,omitempty"`
}

// Finding is something a detector found about one identity.
type Finding struct {
	ID string `json:"id"`
	// Time is when it was first found, LastSeen when last; Count how
	// many detections it folds (see config.DetectSettings.SuppressFor).
	Time     time.Time `json:"time"`
	LastSeen time.Time `json:"last_seen"`
	Count    int       `json:"count"`
	Detector string    `json:"detector"`
	Severity Severity  `json:"severity"`
	// Identity is who the finding is about: the calling SPIFFE ID, or for
	// the token service and attestation feeds the client or address.
	Identity    string `json:"identity"`
	Destination string `json:"destination,omitempty"`
	Method      string `json:"method,omitempty"`
	Path        string `json:"path,omitempty"`
	Summary     string `json:"summary"`
	// Evidence holds the numbers behind it: observed, expected, threshold.
	Evidence map[string]string `json:"evidence,omitempty"`
	// Records are the records it came from (at most maxEvidence).
	Records []Record `json:"records,omitempty"`
	// FirstRecord is the time of the earliest record behind it: when the
	// behaviour it describes started, as far as the records tell.
	FirstRecord time.Time `json:"first_record,omitzero"`
	IncidentID  string    `json:"incident_id,omitempty"`
	// Reporters are the nodes (sidecars, gateways) whose reports raised
	// it, sorted, at most maxReporters; none when the server observed it
	// itself (the token service, attestation, the agent API). What a
	// node reports about another identity is its word only: see
	// Corroborate.
	Reporters []string `json:"reporters,omitempty"`
	// Delta is how many of Count's detections no earlier copy of the
	// finding returned by the engine (Ingest, Observe) carried: what a
	// store that merges the findings of several engines adds to its
	// count (see Fold). Not part of the finding's JSON.
	Delta int `json:"-"`
}

// maxEvidence bounds a finding's records.
const maxEvidence = 20

// Event is a signal from outside the traffic record: the token service,
// the agent API, the audit log.
type Event struct {
	Time time.Time
	// Kind is one of the Event* constants.
	Kind string
	// Identity is who did it: a SPIFFE ID when known, else an OAuth
	// client ID or an address.
	Identity string
	// Detail describes it (the audit record's details).
	Detail map[string]string
	// Reporter is the node that reported it ("" when the server observed
	// it itself): a decision a sidecar reported is that sidecar's word.
	Reporter string
}

// Kinds of Event.
const (
	EventRefreshReuse      = "refresh_reuse"      // a rotated refresh token presented again
	EventCodeReuse         = "code_reuse"         // an authorization code redeemed twice
	EventTokenExchange     = "token_exchange"     // one RFC 8693 exchange (counted per minute)
	EventAttestFailure     = "attest_failure"     // a refused node attestation
	EventRevokedCredential = "revoked_credential" // a revoked SVID or token presented
	// EventRevokedTokenOf: a revoked token issued to Identity (a mesh
	// workload) was presented, by whoever: its credential is out.
	EventRevokedTokenOf = "revoked_token_of"
)

type edgeKey struct{ src, dst, method, path string }

type edgeState struct {
	requests, bytes Baseline
	minutes
	curReq, curByte float64
	curPII          float64
	recs            []Record // records of the current minute (bounded)
}

// minutes is the bookkeeping an edge's and a pair's state share: the
// minute being counted, and the time of the last record.
type minutes struct {
	minute   time.Time
	lastSeen time.Time
}

// count makes t's minute the current one when it is later (roll) and
// notes t as last seen. It reports whether a record of time t counts
// toward the current minute: a late one counts toward no rate.
func (w *minutes) count(t time.Time, roll func(m time.Time)) bool {
	m := minuteOf(t)
	if m.After(w.minute) {
		roll(m)
	}
	w.lastSeen = t
	return !m.Before(w.minute)
}

// roll moves to minute m (later than the current one): the minute
// counted so far goes into the baselines with its values, and every
// empty minute after it (at most a day's worth) with none; update feeds
// them (counted says whether the minute is the one counted). The state
// then empties its counts.
func (w *minutes) roll(m time.Time, update func(t time.Time, counted bool)) {
	update(w.minute, true)
	gap := int(m.Sub(w.minute)/time.Minute) - 1
	for i := 1; i <= min(gap, 1440); i++ {
		update(w.minute.Add(time.Duration(i)*time.Minute), false)
	}
	w.minute = m
}

// idle reports whether the state has had no record for 35 days, the
// longest a weekly baseline waits to be useful again: Tick forgets it.
func (w *minutes) idle(now time.Time) bool { return now.Sub(w.lastSeen) > 35*24*time.Hour }

// pairKey is a caller and a destination: what the volume check sums a
// minute's responses over, whatever paths they came from.
type pairKey struct{ src, dst string }

// pairState is a caller's response bytes from one destination, summed
// over its paths: a caller that splits a pull across many paths (or one
// whose varying segment the template does not recognise) stays under the
// limit on each edge, not on the pair.
type pairState struct {
	bytes Baseline
	minutes
	cur float64
	// paths is the minute's bytes per operation (at most maxPairPaths;
	// the rest under pairOtherPaths), for the finding's evidence.
	paths map[string]float64
	// recs are the minute's largest records (at most maxEvidence).
	recs []Record
}

// maxPairPaths bounds the operations a pair's minute keeps apart for the
// evidence; pairOtherPaths holds the rest.
const (
	maxPairPaths   = 256
	pairOtherPaths = "(other paths)"
)

// close moves the pair to minute m (minutes.roll).
func (ps *pairState) close(m time.Time) {
	ps.roll(m, func(t time.Time, counted bool) {
		ps.bytes.Update(t, pick(counted, ps.cur))
	})
	ps.cur, ps.recs = 0, reuse(ps.recs)
	if len(ps.paths) > 8 {
		ps.paths = nil // a wide minute's buckets are not kept
	} else {
		clear(ps.paths)
	}
}

// add counts r in the pair's current minute; with judge it keeps the
// evidence too.
func (ps *pairState) add(r *Record, judge bool) {
	ps.cur += float64(r.RespBytes)
	if !judge || r.RespBytes == 0 {
		return
	}
	if ps.paths == nil {
		ps.paths = map[string]float64{}
	}
	op := r.Method + " " + r.Path
	if _, ok := ps.paths[op]; !ok && len(ps.paths) >= maxPairPaths {
		op = pairOtherPaths
	}
	ps.paths[op] += float64(r.RespBytes)
	if len(ps.recs) < maxEvidence {
		ps.recs = append(ps.recs, *r)
		return
	}
	small := 0
	for i := range ps.recs {
		if ps.recs[i].RespBytes < ps.recs[small].RespBytes {
			small = i
		}
	}
	if r.RespBytes > ps.recs[small].RespBytes {
		ps.recs[small] = *r
	}
}

// topPaths is the evidence of the pair's minute: how many operations,
// and the top n by bytes ("GET /a 1.2 MiB, GET /b 800 KiB").
func (ps *pairState) topPaths(n int) (int, string) {
	ops := make([]string, 0, len(ps.paths))
	for op := range ps.paths {
		ops = append(ops, op)
	}
	sort.Slice(ops, func(i, j int) bool {
		if ps.paths[ops[i]] != ps.paths[ops[j]] {
			return ps.paths[ops[i]] > ps.paths[ops[j]]
		}
		return ops[i] < ops[j]
	})
	var b []byte
	for i, op := range ops[:min(n, len(ops))] {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, op+" "+fmtBytes(ps.paths[op])...)
	}
	return len(ops), string(b)
}

type identState struct {
	firstSeen time.Time
	minute    time.Time
	denies    uint64
	exchanges int
	denyRecs  []Record
	// newPaths holds the paths never seen for this identity before, with
	// when they were first called, for the last 5 minutes.
	newPaths map[string]time.Time
	newRecs  []Record
	// paths is every (destination, path) the identity has called (at
	// most maxPerIdent).
	paths map[[2]string]struct{}
	dsts  map[string]struct{}
	// edges counts the engine's edge states whose source it is.
	edges int
	// pairs counts the engine's pair states whose source it is (at most
	// maxPerIdent).
	pairs int
}

// Engine holds the baselines and runs the detectors. It is safe for
// concurrent use. Create it with NewEngine.
type Engine struct {
	cfg config.DetectSettings

	mu       sync.Mutex
	edges    map[edgeKey]*edgeState
	pairs    map[pairKey]*pairState
	idents   map[string]*identState
	open     map[Key]*Finding
	byIdent  map[string][]*Finding
	attest   map[string][]time.Time
	newKnown []KnownEdge
	// first is the time of the first record the engine saw (or learned):
	// the start of the mesh-wide learning period.
	first time.Time
	// introduced counts, per reporter, the identities its records made
	// known to the engine (maxIdentsPerReporter).
	introduced map[string]int
	storm      struct {
		minute  time.Time
		n       int
		dropped uint64
	}
	// untracked counts the fresh records a full table left without a
	// state (Untracked).
	untracked Untracked
}

// Untracked counts the fresh records the engine judged without one of
// its states because that table was full (maxTracked, every identity's
// share of it): no identity state (no new-edge or probing judgement), no
// edge state (no rate or volume on the edge), no pair state (no volume
// summed over the pair's paths). A caller past its own share of a table
// is not counted here: that is its record_overflow anomaly. Made-up
// callers from several nodes, each within maxIdentsPerReporter, can fill
// the tables: these counts are how the server shows that its detectors
// went partly blind (moatless_detect_untracked_records_total).
type Untracked struct {
	Identities, Edges, Pairs uint64
}

// Untracked returns the counts so far.
func (e *Engine) Untracked() Untracked {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.untracked
}

// KnownEdge is an edge the new-edge detector knows: persisted by the
// caller so that a restart does not forget it.
type KnownEdge struct {
	Source, Destination, Method, Path string
	FirstSeen                         time.Time
}

// maxTracked bounds the edges (and identities, and pairs) an engine
// keeps state for.
var maxTracked = 200_000

// maxPerIdent bounds the edges, and the operations, the engine keeps
// apart for one source identity: one identity calling distinct paths
// cannot fill the engine's tables and leave the next identity's new
// edge without a state (no rate, no volume judged). Past it, the
// identity's further edges to a destination share one state (path
// traffic.OverflowPeerPath), and the overflow is an anomaly about it.
// Edge states past maxTracked (every identity's share of a full table)
// likewise share one per (source, destination), at most maxTracked/4.
var maxPerIdent = 5_000

// maxIdentsPerReporter bounds the identities one node's records may make
// known to the engine. The caller an inbound record names is the node's
// word: without it, one compromised node reporting calls from 200,000
// made-up SPIFFE IDs would fill the engine's table of identities, and
// every identity that appears after (a freshly minted one an attacker
// uses) would go unjudged. Past it, the node's records about callers new
// to the engine are stored but not judged, and the flood is an anomaly
// about the node.
var maxIdentsPerReporter = 20_000

// NewEngine builds an engine with the settings (Complete is applied).
func NewEngine(s config.DetectSettings) *Engine {
	s.Complete()
	return &Engine{
		cfg: s, edges: map[edgeKey]*edgeState{}, pairs: map[pairKey]*pairState{}, idents: map[string]*identState{},
		open: map[Key]*Finding{}, byIdent: map[string][]*Finding{}, attest: map[string][]time.Time{}, introduced: map[string]int{},
	}
}

// Settings returns the settings in force (defaults filled in).
func (e *Engine) Settings() config.DetectSettings { return e.cfg }

// LoadKnown tells the engine the edges it has seen before (from the
// store), with when each was first seen: an identity's first sighting
// starts its learning period.
//
// An identity it makes known counts as introduced (maxIdentsPerReporter)
// by the destination of its earliest known edge, whose node reported it
// (an inbound record's destination is its reporter): a node's budget of
// made-up callers does not start afresh when the server restarts while
// the identities it introduced stay known.
func (e *Engine) LoadKnown(edges []KnownEdge) {
	e.mu.Lock()
	defer e.mu.Unlock()
	made := map[string]KnownEdge{} // identity made known here → its earliest edge
	for _, k := range edges {
		_, had := e.idents[k.Source]
		id := e.ident(k.Source, k.FirstSeen)
		if id == nil {
			continue
		}
		if f, ok := made[k.Source]; ok {
			if k.FirstSeen.Before(f.FirstSeen) {
				made[k.Source] = k
			}
		} else if !had {
			made[k.Source] = k
		}
		if id.firstSeen.IsZero() || k.FirstSeen.Before(id.firstSeen) {
			id.firstSeen = k.FirstSeen
		}
		if e.first.IsZero() || k.FirstSeen.Before(e.first) {
			e.first = k.FirstSeen
		}
		id.dsts[k.Destination] = struct{}{}
		id.paths[[2]string{k.Destination, k.Method + " " + k.Path}] = struct{}{}
	}
	for src, k := range made {
		if k.Destination != src {
			e.introduced[k.Destination]++
		}
	}
}

// TakeNewKnown returns the edges first seen since the last call, for the
// caller to persist.
func (e *Engine) TakeNewKnown() []KnownEdge {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := e.newKnown
	e.newKnown = nil
	return out
}

func (e *Engine) ident(src string, now time.Time) *identState {
	id := e.idents[src]
	if id == nil {
		if len(e.idents) >= maxTracked {
			return nil
		}
		id = &identState{firstSeen: now, paths: map[[2]string]struct{}{}, dsts: map[string]struct{}{}, newPaths: map[string]time.Time{}}
		e.idents[src] = id
	}
	return id
}

// Learn feeds historical records (oldest first) into the baselines and
// the known edges without judging them: how a restarted server rebuilds
// its picture of normal from the store.
func (e *Engine) Learn(recs []Record) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := range recs {
		e.account(&recs[i], false)
	}
	e.newKnown = nil // learned from the store, which has them
}

// Ingest adds fresh records (now is the server's time of arrival) and
// returns the findings they raised or updated. A record's time is its
// reporter's clock; one ahead of now is judged at now: a future minute
// would make every record of the current minute late (counted toward
// no rate or volume), so one reporter with a fast clock could blind the
// detectors to what others report about the same callers.
func (e *Engine) Ingest(now time.Time, recs []Record) []Finding {
	if e.cfg.Disabled {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*Finding
	for i := range recs {
		r := &recs[i]
		if r.Time.After(now) {
			c := *r
			c.Time = now
			r = &c
		}
		out = append(out, e.judge(now, r)...)
	}
	return take(out)
}

// take returns copies of fs (each once) for the caller to store, with
// the detections each adds since its last copy taken (Delta), and starts
// counting those afresh. Called with e.mu held.
func take(fs []*Finding) []Finding {
	out := copies(fs)
	for _, f := range fs {
		if f != nil {
			f.Delta = 0
		}
	}
	return out
}

func copies(fs []*Finding) []Finding {
	if len(fs) == 0 {
		return nil
	}
	seen := map[*Finding]bool{}
	out := make([]Finding, 0, len(fs))
	for _, f := range fs {
		if f == nil || seen[f] {
			continue
		}
		seen[f] = true
		c := *f
		c.Records = append([]Record(nil), f.Records...)
		c.Reporters = append([]string(nil), f.Reporters...)
		c.Evidence = make(map[string]string, len(f.Evidence))
		for k, v := range f.Evidence {
			c.Evidence[k] = v
		}
		out = append(out, c)
	}
	return out
}

func minuteOf(t time.Time) time.Time { return t.UTC().Truncate(time.Minute) }

// account adds r to the edge's current minute (closing earlier minutes
// into the baselines) and to the identity's state; with judge it also
// notes what is new. It returns the edge and identity state, whether the
// destination and the operation are new to the identity, whether the
// identity has more edges or operations than the engine keeps apart
// (maxPerIdent), and whether r was left out because its reporter made
// more identities known than it may (maxIdentsPerReporter).
func (e *Engine) account(r *Record, judge bool) (es *edgeState, ps *pairState, id *identState, newDst, newOp, crowded, flooded bool) {
	m := minuteOf(r.Time)
	if e.first.IsZero() || r.Time.Before(e.first) {
		e.first = r.Time
	}
	if id = e.idents[r.Source]; id == nil {
		if r.Reporter != "" && r.Reporter != r.Source && e.introduced[r.Reporter] >= maxIdentsPerReporter {
			return nil, nil, nil, false, false, false, true
		}
		if id = e.ident(r.Source, r.Time); id != nil && r.Reporter != "" && r.Reporter != r.Source {
			e.introduced[r.Reporter]++
		} else if id == nil && judge {
			e.untracked.Identities++
		}
	}
	k := edgeKey{r.Source, r.Destination, r.Method, r.Path}
	es = e.edges[k]
	if es == nil {
		switch {
		case id != nil && id.edges >= maxPerIdent:
			crowded = true
			k = edgeKey{src: r.Source, dst: r.Destination, path: traffic.OverflowPeerPath}
		case len(e.edges) >= maxTracked:
			k = edgeKey{src: r.Source, dst: r.Destination, path: traffic.OverflowPath}
		}
		if es = e.edges[k]; es == nil && len(e.edges) < maxTracked+maxTracked/4 {
			es = &edgeState{minutes: minutes{minute: m}}
			e.edges[k] = es
			if id != nil {
				id.edges++
			}
		}
		if es == nil && judge {
			e.untracked.Edges++
		}
	}
	if id != nil {
		if _, ok := id.dsts[r.Destination]; !ok {
			// Past its bound, a destination the identity is not
			// known to have called is still new (each call to it is,
			// since it is not remembered): an attacker touching
			// maxPerIdent harmless destinations first does not reach
			// the real one unseen. And it is the overflow anomaly.
			newDst = true
			if len(id.dsts) < maxPerIdent {
				id.dsts[r.Destination] = struct{}{}
			} else {
				crowded = true
			}
		}
		op := [2]string{r.Destination, r.Method + " " + r.Path}
		if _, ok := id.paths[op]; !ok {
			// Past its bound, an identity's operations are no longer
			// remembered apart (nor judged new): it was told about
			// when it crossed the bound.
			if len(id.paths) < maxPerIdent {
				newOp = true
				id.paths[op] = struct{}{}
				e.newKnown = append(e.newKnown, KnownEdge{Source: r.Source, Destination: r.Destination, Method: r.Method, Path: r.Path, FirstSeen: r.Time})
			} else {
				crowded = true
			}
		}
	}
	if es != nil && es.count(r.Time, es.close) {
		es.curReq += float64(r.Requests)
		es.curByte += float64(r.RespBytes)
		es.curPII += float64(r.PIIMatches)
		if judge && len(es.recs) < maxEvidence {
			es.recs = append(es.recs, *r)
		}
	}
	// The pair sums the caller's responses from the destination over
	// every path (at most maxTracked pairs, maxPerIdent per caller; past
	// them, the edges alone are judged).
	pk := pairKey{r.Source, r.Destination}
	if ps = e.pairs[pk]; ps == nil && len(e.pairs) < maxTracked && (id == nil || id.pairs < maxPerIdent) {
		ps = &pairState{minutes: minutes{minute: m}}
		e.pairs[pk] = ps
		if id != nil {
			id.pairs++
		}
	} else if ps == nil && judge && len(e.pairs) >= maxTracked {
		e.untracked.Pairs++
	}
	if ps != nil && ps.count(r.Time, ps.close) {
		ps.add(r, judge)
	}
	return es, ps, id, newDst, newOp, crowded, false
}

// close moves the edge to minute m (minutes.roll).
func (es *edgeState) close(m time.Time) {
	es.roll(m, func(t time.Time, counted bool) {
		es.requests.Update(t, pick(counted, es.curReq))
		es.bytes.Update(t, pick(counted, es.curByte))
	})
	es.curReq, es.curByte, es.curPII, es.recs = 0, 0, 0, reuse(es.recs)
}

// pick is v for the minute counted, 0 for an empty one.
func pick(counted bool, v float64) float64 {
	if counted {
		return v
	}
	return 0
}

// reuse empties a minute's evidence for the next minute: a busy minute's
// array (up to maxEvidence records, 4-6 KiB) is dropped, not kept on
// every edge that once had one (BenchmarkEngineMemory, busy).
func reuse(recs []Record) []Record {
	if cap(recs) > 4 {
		return nil
	}
	return recs[:0]
}

// Tick closes the minutes that ended before now on every edge, so quiet
// minutes are learned as quiet, and forgets state that can no longer
// matter. Call it about once a minute.
func (e *Engine) Tick(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	tickStates(e, e.edges, now, func(k edgeKey) string { return k.src }, func(id *identState) *int { return &id.edges })
	tickStates(e, e.pairs, now, func(k pairKey) string { return k.src }, func(id *identState) *int { return &id.pairs })
	for k, f := range e.open {
		if now.Sub(f.LastSeen) > e.cfg.SuppressFor.Std() {
			delete(e.open, k)
		}
	}
	cut := now.Add(-e.cfg.RiskWindow.Std())
	for id, fs := range e.byIdent {
		keep := fs[:0]
		for _, f := range fs {
			if !f.LastSeen.Before(cut) {
				keep = append(keep, f)
			}
		}
		if len(keep) == 0 {
			delete(e.byIdent, id)
		} else {
			e.byIdent[id] = keep
		}
	}
	for a, ts := range e.attest {
		if len(ts) == 0 || now.Sub(ts[len(ts)-1]) > 5*time.Minute {
			delete(e.attest, a)
		}
	}
}

// minuteState is an edge's or a pair's state.
type minuteState interface {
	close(m time.Time)
	window() *minutes
}

func (es *edgeState) window() *minutes { return &es.minutes }
func (ps *pairState) window() *minutes { return &ps.minutes }

// tickStates closes the minutes before now's of every state of states,
// and forgets the idle ones, each uncounted from its source identity's
// count of them (src names it). Called with e.mu held.
func tickStates[K comparable, S minuteState](e *Engine, states map[K]S, now time.Time, src func(K) string, count func(*identState) *int) {
	m := minuteOf(now)
	for k, st := range states {
		w := st.window()
		if m.After(w.minute) {
			st.close(m)
		}
		if w.idle(now) {
			delete(states, k)
			if id := e.idents[src(k)]; id != nil && *count(id) > 0 {
				*count(id)--
			}
		}
	}
}

// judge accounts r and runs the traffic detectors on it.
func (e *Engine) judge(now time.Time, r *Record) []*Finding {
	es, ps, id, newDst, newOp, crowded, flooded := e.account(r, true)
	th := e.cfg.ThresholdsFor(r.Source)
	var out []*Finding
	add := func(f *Finding) {
		if f != nil {
			out = append(out, f)
		}
	}
	// An overflow edge that names no one ("overflow") says nothing of
	// what was decided; one that keeps its peer has its decision.
	refused := r.Decision != "allow" && r.Decision != "overflow"
	if traffic.IsOverflow(r.Path) {
		newOp = false // its requests' operations are not known
	}
	if r.Decision == "refused" && r.Reason == "revoked" && r.Source != "" {
		add(e.raise(now, DetectorRevoked, High, r.Source, r.Destination, fmt.Sprintf("revoked identity %s is still trying to connect to %s", r.Source, orAny(r.Destination)),
			map[string]string{"refused_connections": strconv.FormatUint(r.Requests, 10)}, []Record{*r}))
	}
	if r.Source == "" {
		return out // plaintext callers have no identity to judge
	}
	if flooded {
		// The node named more callers new to the engine than it may:
		// about the node, an anomaly (a shared service with a huge
		// number of callers does it too).
		add(e.raise(now, DetectorProbing, Medium, r.Reporter, "",
			fmt.Sprintf("%s reported calls from more than %d identities new to the server; further ones it names are not judged", r.Reporter, maxIdentsPerReporter),
			map[string]string{"identities_introduced": strconv.Itoa(e.introduced[r.Reporter]), "kind": "caller_flood"}, nil))
		return out
	}
	// A relay (the edge gateway) forwards what its clients ask for:
	// the refusals, the never-seen paths and the record overflows of
	// its requests are theirs. Its probing findings say so (relayed,
	// Finding.Relayed): an anomaly about it, never evidence of its
	// compromise.
	relay := e.cfg.IsRelay(r.Source)
	if crowded || r.Path == traffic.OverflowPeerPath {
		// The caller called more distinct edges than a reporter's
		// window (a quarter of its table) or this engine keeps apart
		// for one caller: a scan, or an attempt to crowd others' new
		// edges out of the record. An anomaly: a caller with a huge
		// REST surface does it too.
		at := "server"
		if !crowded && r.Reporter != "" {
			at = r.Reporter
		}
		summary := fmt.Sprintf("%s called more distinct edges than the traffic record of %s keeps apart for one caller", r.Source, at)
		ev := map[string]string{"overflow_requests": strconv.FormatUint(r.Requests, 10), "overflow_at": at, "kind": "record_overflow"}
		if relay {
			summary = fmt.Sprintf("%s, a relay (detect.relays), forwarded more distinct edges than the traffic record of %s keeps apart for one caller", r.Source, at)
			ev["relayed"] = "record_overflow"
		}
		add(e.raise(now, DetectorProbing, Medium, r.Source, "", summary, ev, []Record{*r}))
	}
	learned := id != nil && now.Sub(id.firstSeen) >= e.cfg.LearningPeriod.Std()
	// An identity that appears after the engine has learned the mesh is
	// new itself: its first calls are new edges, low severity (a
	// deployment, or a minted identity), judged like any other after its
	// own learning period.
	fresh := id != nil && !learned && !e.first.IsZero() && id.firstSeen.Sub(e.first) >= e.cfg.LearningPeriod.Std()
	if es != nil && !refused {
		mean, dev, ok := es.requests.Expected(es.minute)
		if ok {
			thr := max(th.RateFactor*mean, mean+5*dev, th.MinRate)
			if es.curReq > thr {
				sev := Medium
				if es.curReq > 3*thr {
					sev = High
				}
				add(e.raise(now, DetectorRate, sev, r.Source, r.Destination,
					fmt.Sprintf("%s called %s %.0f times in a minute; %.1f expected", r.Source, r.Destination, es.curReq, mean),
					map[string]string{"observed_per_minute": fmtF(es.curReq), "expected_per_minute": fmtF(mean), "threshold": fmtF(thr), "method": r.Method, "path": r.Path}, es.recs))
			}
		}
		volume := true // whether the edge's own volume raised a finding
		switch bmean, bdev, bok := es.bytes.Expected(es.minute); {
		case es.curByte >= float64(th.BytesPerMinute):
			add(e.raise(now, DetectorExfiltration, High, r.Source, r.Destination,
				fmt.Sprintf("%s pulled %s from %s in a minute (limit %s)", r.Source, fmtBytes(es.curByte), r.Destination, fmtBytes(float64(th.BytesPerMinute))),
				map[string]string{"bytes_per_minute": fmtF(es.curByte), "threshold": strconv.FormatInt(th.BytesPerMinute, 10), "kind": "volume"}, es.recs))
		case bok && es.curByte >= float64(th.MinBytes) && es.curByte > th.BytesFactor*bmean && es.curByte > bmean+5*bdev:
			add(e.raise(now, DetectorExfiltration, Medium, r.Source, r.Destination,
				fmt.Sprintf("%s pulled %s from %s in a minute; %s expected", r.Source, fmtBytes(es.curByte), r.Destination, fmtBytes(bmean)),
				map[string]string{"bytes_per_minute": fmtF(es.curByte), "expected_bytes_per_minute": fmtF(bmean), "kind": "volume"}, es.recs))
		default:
			volume = false
		}
		// The same check on the caller's responses from the destination
		// over all its paths this minute: a pull split across many
		// paths. Not when the edge raised it already (the same finding:
		// one detection per record).
		if ps != nil && !volume {
			switch bmean, bdev, bok := ps.bytes.Expected(ps.minute); {
			case ps.cur >= float64(th.BytesPerMinute):
				n, top := ps.topPaths(5)
				add(e.raise(now, DetectorExfiltration, High, r.Source, r.Destination,
					fmt.Sprintf("%s pulled %s from %s in a minute over %d paths (limit %s)", r.Source, fmtBytes(ps.cur), r.Destination, n, fmtBytes(float64(th.BytesPerMinute))),
					map[string]string{"bytes_per_minute": fmtF(ps.cur), "threshold": strconv.FormatInt(th.BytesPerMinute, 10), "kind": "volume", "scope": "destination", "paths": strconv.Itoa(n), "top_paths": top}, ps.recs))
			case bok && ps.cur >= float64(th.MinBytes) && ps.cur > th.BytesFactor*bmean && ps.cur > bmean+5*bdev:
				n, top := ps.topPaths(5)
				add(e.raise(now, DetectorExfiltration, Medium, r.Source, r.Destination,
					fmt.Sprintf("%s pulled %s from %s in a minute over %d paths; %s expected", r.Source, fmtBytes(ps.cur), r.Destination, n, fmtBytes(bmean)),
					map[string]string{"bytes_per_minute": fmtF(ps.cur), "expected_bytes_per_minute": fmtF(bmean), "kind": "volume", "scope": "destination", "paths": strconv.Itoa(n), "top_paths": top}, ps.recs))
			}
		}
		if es.curPII >= float64(th.PIIMatches) {
			add(e.raise(now, DetectorExfiltration, High, r.Source, r.Destination,
				fmt.Sprintf("responses to %s from %s carry personal data: %.0f matches in sampled bodies this minute", r.Source, r.Destination, es.curPII),
				map[string]string{"pii_matches_per_minute": fmtF(es.curPII), "threshold": strconv.Itoa(th.PIIMatches), "kind": "pii"}, es.recs))
		}
	}
	if id == nil {
		return out
	}
	if fresh && newDst && r.Decision != "refused" {
		add(e.raise(now, DetectorNewEdge, Low, r.Source, r.Destination,
			fmt.Sprintf("%s, an identity not seen before, called %s (%s %s, %s)", r.Source, r.Destination, r.Method, r.Path, r.Decision),
			map[string]string{"kind": "new_identity", "method": r.Method, "path": r.Path}, []Record{*r}))
	} else if learned && newDst && r.Decision != "refused" {
		add(e.raise(now, DetectorNewEdge, Medium, r.Source, r.Destination,
			fmt.Sprintf("%s called %s for the first time (%s %s, %s)", r.Source, r.Destination, r.Method, r.Path, r.Decision),
			map[string]string{"kind": "destination", "method": r.Method, "path": r.Path}, []Record{*r}))
	} else if learned && newOp && !refused {
		add(e.raise(now, DetectorNewEdge, Low, r.Source, r.Destination,
			fmt.Sprintf("%s called %s %s on %s for the first time", r.Source, r.Method, r.Path, r.Destination),
			map[string]string{"kind": "operation", "method": r.Method, "path": r.Path}, []Record{*r}))
	}
	// Probing: refusals and never-seen paths, per identity.
	m := minuteOf(r.Time)
	if m.After(id.minute) {
		id.minute, id.denies, id.exchanges, id.denyRecs = m, 0, 0, id.denyRecs[:0]
	}
	// A 401 judges the token the request carried, not the caller: the
	// caller's own identity passed mTLS, and a workload relays its users'
	// tokens (Istio's end-user authentication), so an outsider sending
	// bad tokens through an app must not raise the app's risk. A deny
	// for no_policy says the destination has no policy yet (its sidecar
	// started while the server was out of reach) and refuses every
	// caller alike: that is not the caller probing either.
	if refused && r.Reason != "revoked" && r.Decision != "unauthenticated" && r.Reason != "no_policy" {
		// Saturating: a reporter's count wrapping the sum would hide
		// the refusals other nodes reported this minute.
		id.denies = SatAdd(id.denies, r.Requests)
		if len(id.denyRecs) < maxEvidence {
			id.denyRecs = append(id.denyRecs, *r)
		}
		if id.denies >= uint64(th.DenyBurst) {
			sev := Medium
			if id.denies >= 5*uint64(th.DenyBurst) {
				sev = High
			}
			n := strconv.FormatUint(id.denies, 10)
			summary := fmt.Sprintf("%s was refused %d times in a minute", r.Source, id.denies)
			ev := map[string]string{"refusals_per_minute": n, "threshold": strconv.Itoa(th.DenyBurst), "kind": "refusals"}
			if relay {
				// The paths scanners try on it are refused upstream
				// in its name.
				summary = fmt.Sprintf("%s, a relay (detect.relays), had %d requests it forwarded refused in a minute", r.Source, id.denies)
				ev = map[string]string{"relayed_refusals_per_minute": n, "threshold": strconv.Itoa(th.DenyBurst), "kind": "relayed_refusals", "relayed": "refusals"}
			}
			add(e.raise(now, DetectorProbing, sev, r.Source, "", summary, ev, id.denyRecs))
		}
	}
	if learned && newOp {
		id.newPaths[r.Destination+" "+r.Method+" "+r.Path] = r.Time
		if len(id.newRecs) < maxEvidence {
			id.newRecs = append(id.newRecs, *r)
		}
		for p, t := range id.newPaths {
			if r.Time.Sub(t) > 5*time.Minute {
				delete(id.newPaths, p)
			}
		}
		if len(id.newPaths) >= th.NewPaths {
			summary := fmt.Sprintf("%s called %d paths it never called before within 5 minutes", r.Source, len(id.newPaths))
			ev := map[string]string{"new_paths": strconv.Itoa(len(id.newPaths)), "threshold": strconv.Itoa(th.NewPaths), "kind": "paths"}
			if relay {
				// The paths a scanner tries through it.
				summary = fmt.Sprintf("%s, a relay (detect.relays), forwarded %d paths it never called before within 5 minutes", r.Source, len(id.newPaths))
				ev["relayed"] = "paths"
			}
			add(e.raise(now, DetectorProbing, Medium, r.Source, "", summary, ev, id.newRecs))
		}
	}
	return out
}

// Observe handles an event from the token service, the agent API or the
// audit log, and returns the finding it raised or updated, if any.
func (e *Engine) Observe(now time.Time, ev Event) []Finding {
	if e.cfg.Disabled || ev.Identity == "" {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	th := e.cfg.ThresholdsFor(ev.Identity)
	var f *Finding
	switch ev.Kind {
	case EventRefreshReuse:
		f = e.raise(now, DetectorToken, High, ev.Identity, "", fmt.Sprintf("a rotated refresh token of %s was presented again: the token was stolen or replayed", ev.Identity), withReuse(ev.Detail, "refresh_token"), nil)
	case EventCodeReuse:
		f = e.raise(now, DetectorToken, High, ev.Identity, "", fmt.Sprintf("an authorization code of %s was redeemed twice", ev.Identity), withReuse(ev.Detail, "authorization_code"), nil)
	case EventTokenExchange:
		id := e.ident(ev.Identity, ev.Time)
		if id == nil {
			return nil
		}
		if m := minuteOf(ev.Time); m.After(id.minute) {
			id.minute, id.denies, id.exchanges, id.denyRecs = m, 0, 0, id.denyRecs[:0]
		}
		id.exchanges++
		if id.exchanges >= th.ExchangeBurst {
			f = e.raise(now, DetectorToken, Medium, ev.Identity, "", fmt.Sprintf("%s made %d token exchanges in a minute", ev.Identity, id.exchanges),
				map[string]string{"exchanges_per_minute": strconv.Itoa(id.exchanges), "threshold": strconv.Itoa(th.ExchangeBurst), "kind": "exchange_burst"}, nil)
		}
	case EventAttestFailure:
		key := ev.Identity
		ts := append(e.attest[key], ev.Time)
		for len(ts) > 0 && ev.Time.Sub(ts[0]) > 5*time.Minute {
			ts = ts[1:]
		}
		if len(ts) > 1000 {
			ts = ts[len(ts)-1000:]
		}
		e.attest[key] = ts
		if len(ts) >= th.AttestFailures {
			f = e.raise(now, DetectorAttestation, Medium, ev.Identity, "", fmt.Sprintf("%d failed attestations by %s in 5 minutes", len(ts), ev.Identity),
				map[string]string{"failures": strconv.Itoa(len(ts)), "threshold": strconv.Itoa(th.AttestFailures)}, nil)
		}
	case EventRevokedCredential:
		f = e.raise(now, DetectorRevoked, High, ev.Identity, "", fmt.Sprintf("%s presented a revoked credential", ev.Identity), withMark(ev.Detail, "presented", "credential"), nil)
	case EventRevokedTokenOf:
		by := ev.Detail["source"]
		if by == "" {
			by = orAny(ev.Detail["source_ip"])
		}
		f = e.raise(now, DetectorRevoked, High, ev.Identity, "", fmt.Sprintf("a revoked token issued to %s was presented by %s", ev.Identity, by), withMark(ev.Detail, "revoked_token_of", ev.Identity), nil)
	}
	if f == nil {
		return nil
	}
	f.addReporter(ev.Reporter)
	return take([]*Finding{f})
}

// withReuse is a copy of detail that says what was reused: the mark
// that keeps a token_anomaly finding evidence (Finding.Anomaly) when an
// exchange burst folds into it.
func withReuse(detail map[string]string, what string) map[string]string {
	return withMark(detail, "reuse", what)
}

// withMark is a copy of detail with k set to v.
func withMark(detail map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(detail)+1)
	for dk, dv := range detail {
		out[dk] = dv
	}
	out[k] = v
	return out
}

// raise records a detection: it updates the open finding of the same
// detector, identity and destination, or opens a new one (unless the
// bound of new findings per minute, counted per engine and so per
// replica, is reached).
func (e *Engine) raise(now time.Time, detector string, sev Severity, identity, dst, summary string, ev map[string]string, recs []Record) *Finding {
	k := KeyOf(detector, identity, dst)
	if f := e.open[k]; f != nil && now.Sub(f.LastSeen) <= e.cfg.SuppressFor.Std() {
		f.LastSeen = now
		f.Count++
		f.Delta++
		f.addDestination(dst)
		if sev.Weight() > f.Severity.Weight() {
			f.Severity, f.Summary = sev, summary
		}
		for k, v := range ev {
			f.Evidence[k] = v
		}
		for _, r := range recs {
			f.addReporter(r.Reporter)
			if len(f.Records) >= maxEvidence {
				continue
			}
			f.Records = append(f.Records, r)
		}
		return f
	}
	if m := minuteOf(now); m.After(e.storm.minute) {
		e.storm.minute, e.storm.n = m, 0
	}
	if e.storm.n >= e.cfg.MaxFindingsPerMinute {
		e.storm.dropped++
		return nil
	}
	e.storm.n++
	f := &Finding{ID: newID(), Time: now, LastSeen: now, Count: 1, Delta: 1, Detector: detector, Severity: sev, Identity: identity,
		Destination: dst, Summary: summary, Evidence: map[string]string{}}
	for k, v := range ev {
		f.Evidence[k] = v
	}
	if m, ok := ev["method"]; ok {
		f.Method, f.Path = m, ev["path"]
	}
	f.Records = append(f.Records, recs[:min(len(recs), maxEvidence)]...)
	for _, r := range recs {
		f.addReporter(r.Reporter)
	}
	for _, r := range f.Records {
		if f.FirstRecord.IsZero() || r.Time.Before(f.FirstRecord) {
			f.FirstRecord = r.Time
		}
	}
	e.open[k] = f
	e.byIdent[identity] = append(e.byIdent[identity], f)
	return f
}

// Findings returns copies of the findings about identity that count
// towards its risk at now.
func (e *Engine) Findings(identity string, now time.Time) []Finding {
	e.mu.Lock()
	defer e.mu.Unlock()
	since := now.Add(-e.cfg.RiskWindow.Std())
	var fs []*Finding
	for _, f := range e.byIdent[identity] {
		if !f.LastSeen.Before(since) {
			fs = append(fs, f)
		}
	}
	return copies(fs)
}

// Dropped is how many findings were dropped by MaxFindingsPerMinute.
func (e *Engine) Dropped() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.storm.dropped
}

// SetIncident records that the finding with this ID belongs to an
// incident, so later detections folded into it carry the incident.
func (e *Engine) SetIncident(findingID, incidentID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, fs := range e.byIdent {
		for _, f := range fs {
			if f.ID == findingID {
				f.IncidentID = incidentID
			}
		}
	}
}

// Risk is an identity's risk at now, from the findings about it whose
// last detection is within the risk window: the weight of the most
// severe one, plus 0.1 for each further finding, capped at 1.
func (e *Engine) Risk(identity string, now time.Time) float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.risk(identity, now)
}

func (e *Engine) risk(identity string, now time.Time) float64 {
	return RiskOf(e.byIdent[identity], now.Add(-e.cfg.RiskWindow.Std()))
}

// RiskOf is the risk score of findings (those last seen before since do
// not count): the highest severity weight, +0.1 per further finding,
// capped at 1.
func RiskOf(fs []*Finding, since time.Time) float64 {
	top, n := 0.0, 0
	for _, f := range fs {
		if f.LastSeen.Before(since) {
			continue
		}
		n++
		top = max(top, f.Severity.Weight())
	}
	if n == 0 {
		return 0
	}
	return min(1, top+0.1*float64(n-1))
}

// IdentityRisk is one identity's risk and the findings behind it.
type IdentityRisk struct {
	Identity string   `json:"identity"`
	Risk     float64  `json:"risk"`
	Findings []string `json:"findings"`
}

// Risks lists every identity with a risk above zero, highest first, from
// the findings this engine holds.
func (e *Engine) Risks(now time.Time) []IdentityRisk {
	e.mu.Lock()
	defer e.mu.Unlock()
	return RisksOf(e.byIdent, now.Add(-e.cfg.RiskWindow.Std()))
}

// RisksOf is the risk of every identity of byIdent (its findings, in the
// order their IDs are listed) whose risk at since is above zero, with the
// IDs of the findings that count: highest risk first, ties by identity.
func RisksOf(byIdent map[string][]*Finding, since time.Time) []IdentityRisk {
	out := []IdentityRisk{}
	for id, fs := range byIdent {
		r := RiskOf(fs, since)
		if r <= 0 {
			continue
		}
		ir := IdentityRisk{Identity: id, Risk: r}
		for _, f := range fs {
			if !f.LastSeen.Before(since) {
				ir.Findings = append(ir.Findings, f.ID)
			}
		}
		out = append(out, ir)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Risk != out[j].Risk {
			return out[i].Risk > out[j].Risk
		}
		return out[i].Identity < out[j].Identity
	})
	return out
}

// newID is a random finding or incident ID: 16 hex digits.
func newID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b[:])
}

// NewID returns a fresh random ID for findings and incidents.
func NewID() string { return newID() }

// SatAdd is a+b, at most the largest uint64: counters a node reports are
// summed without wrapping (a wrapped sum would hide what others reported).
func SatAdd(a, b uint64) uint64 {
	if a+b < a {
		return ^uint64(0)
	}
	return a + b
}

func fmtF(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

func fmtBytes(v float64) string {
	switch {
	case v >= 1<<30:
		return fmt.Sprintf("%.1f GiB", v/(1<<30))
	case v >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%.0f B", v)
}

func orAny(s string) string {
	if s == "" {
		return "the mesh"
	}
	return s
}
