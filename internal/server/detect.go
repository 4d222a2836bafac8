package server

// Detect and respond (internal/detect) wired into the control plane: the
// agent API endpoint where sidecars and gateways report their traffic
// records (wire.PathRecords), their storage with retention, the engine
// that learns baselines and raises findings, the feeds from the token
// service and the agent API (through the audit log), and the admin API
// a dashboard reads (edges, decisions, findings, risk).

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// Admin API paths of detect and respond. Listings answer
// {"items": [...], "next": CURSOR} (next absent on the last page).
const (
	PathAdminDetect    = "/v1/admin/detect"
	PathAdminEdges     = PathAdminDetect + "/edges"     // GET ?since=1h&namespace=&source=&destination=&direction=
	PathAdminDecisions = PathAdminDetect + "/decisions" // GET ?identity=&since=&before=&limit=
	PathAdminFindings  = PathAdminDetect + "/findings"  // GET ?identity=&severity=&since=&before=&limit=; /{id}: GET
	PathAdminRisk      = PathAdminDetect + "/risk"      // GET
	PathAdminWorkloads = PathAdminDetect + "/workloads" // GET
	PathAdminTraffic   = PathAdminDetect + "/traffic"   // GET ?since=&namespace=: TrafficSnapshot (what-if, recommend)
	PathAdminWhatIf    = PathAdminDetect + "/what-if"   // POST WhatIfRequest → WhatIfResponse
)

// WhatIfRequest replays the recorded traffic through policy files.
type WhatIfRequest struct {
	Files []PolicyFile `json:"files"`
	// Since is a duration back from now ("1h", the default) or an RFC
	// 3339 time; Namespace limits the traffic to one namespace.
	Since     string `json:"since,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// RootNamespace is the namespace whose policies apply mesh-wide
	// (default istio-system), as the sidecars are configured.
	RootNamespace string `json:"root_namespace,omitempty"`
}

// WhatIfResponse is what would change, newly denied edges first.
type WhatIfResponse struct {
	Since        time.Time             `json:"since"`
	Until        time.Time             `json:"until"`
	NewlyDenied  int                   `json:"newly_denied"`
	NewlyAllowed int                   `json:"newly_allowed"`
	Items        []detect.WhatIfResult `json:"items"`
}

// Bounds of a reported record's fields (see validRecords).
const (
	maxRecordID     = 2048 // SPIFFE IDs
	maxRecordPath   = 512  // clipped
	maxRecordMethod = 64   // clipped
	maxRecordToken  = 512  // issuer URL
	maxReportLabels = 64
	// maxRecordCounter bounds every counter of a record (requests,
	// bytes, microseconds of latency, PII): 2^52 is more than a node
	// serves in a report's window of at most 10 minutes (4 PiB, 142
	// years of summed latency), and keeps the stored sums exact
	// (store.EdgeTotals).
	maxRecordCounter = 1 << 52
	// maxRecordAge is how old a report's window may be; older ones
	// (a reporter cut off for a long time) are refused for good.
	maxRecordAge = time.Hour
	// maxRecordSkew is how far in the future a window may end.
	maxRecordSkew = 2 * time.Minute
)

// Page is the shape of every detect listing.
type Page[T any] struct {
	Items []T    `json:"items"`
	Next  string `json:"next,omitempty"`
}

// EdgeSummary is one edge of the service graph over a time range: one
// (source, destination, method, path template, decision, status class)
// with its traffic summed.
type EdgeSummary struct {
	Direction   string    `json:"direction"`
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	Port        int       `json:"port,omitempty"`
	Protocol    string    `json:"protocol"`
	Method      string    `json:"method,omitempty"`
	Path        string    `json:"path,omitempty"`
	Decision    string    `json:"decision"`
	Reason      string    `json:"reason,omitempty"`
	Status      int       `json:"status"`
	Token       string    `json:"token,omitempty"`
	Requests    uint64    `json:"requests"`
	ReqBytes    uint64    `json:"req_bytes"`
	RespBytes   uint64    `json:"resp_bytes"`
	LatencyAvg  float64   `json:"latency_avg_ms"`
	LatencyMax  float64   `json:"latency_max_ms"`
	PIISampled  uint64    `json:"pii_sampled,omitempty"`
	PIIMatches  uint64    `json:"pii_matches,omitempty"`
	FirstMinute time.Time `json:"first_minute"`
	LastMinute  time.Time `json:"last_minute"`
}

// TrafficSnapshot is recorded traffic with the workloads it went to: the
// input of "policy what-if" and "policy recommend".
type TrafficSnapshot struct {
	Since     time.Time        `json:"since"`
	Until     time.Time        `json:"until"`
	Edges     []EdgeSummary    `json:"edges"`
	Workloads []store.Workload `json:"workloads"`
}

// detectState is the server's detection and response.
type detectState struct {
	engine *detect.Engine
	budget *keyedLimiter // reports per node
	// reports remembers the reports taken, so a retried one counts once.
	reports *detect.Reports
	metrics detectMetrics

	mu       sync.Mutex
	lastTick time.Time

	// respMu serializes response: incidents, their steps, block expiry.
	respMu sync.Mutex
	resp   respondState
	alerts *alerter
	// risk publishes the watch stream's risk section (detect_risk.go).
	risk riskPublisher
}

type detectMetrics struct {
	records  *prometheus.CounterVec // outcome
	edges    prometheus.Counter
	findings *prometheus.CounterVec // detector, severity
	// writes counts stored detections by outcome (opened, updated,
	// joined, error): joined shows findings merging across replicas.
	writes  *prometheus.CounterVec
	dropped prometheus.CounterFunc
	// atRisk is set with every recomputation of the risk section, from
	// the stored findings (storedRisks).
	atRisk prometheus.Gauge
	// riskPublishes counts recomputations of the watch stream's risk
	// section by outcome (changed, unchanged, error); riskSent is how many
	// identities the section holds.
	riskPublishes *prometheus.CounterVec
	riskSent      prometheus.Gauge
	// held counts incidents a playbook opened with its containment held
	// because the findings were not corroborated.
	held prometheus.Counter
}

// initDetect builds the engine, teaches it what the store remembers
// (known edges, the traffic of the last week for the baselines), feeds
// it the audit log's events, and mounts the endpoints.
func (s *Server) initDetect(ctx context.Context) error {
	d := &detectState{engine: detect.NewEngine(s.cfg.Detect), budget: newKeyedLimiter(2, 60, 100_000),
		reports: detect.NewReports(maxRecordAge + maxRecordSkew)}
	s.detect = d
	al, err := newAlerter(s, s.cfg.Detect.Alerts, s.cfg.Detect.SuppressFor.Std())
	if err != nil {
		return err
	}
	d.alerts = al
	known, err := s.db.KnownEdges(ctx)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	ke := make([]detect.KnownEdge, len(known))
	for i, k := range known {
		ke[i] = detect.KnownEdge{Source: k.Source, Destination: k.Destination, Method: k.Method, Path: k.Path, FirstSeen: k.FirstSeen}
	}
	d.engine.LoadKnown(ke)
	// The baselines learn from the last 8 days kept (a week of
	// hour-of-week slots and a day to spare), in batches.
	// A row from the future (a reporter's window may start up to
	// maxRecordSkew ahead) is learned at the start time, as Ingest
	// judges it: else the edge's minute would move ahead, and the next
	// minutes' records would be late, counted toward no rate or volume.
	started := s.now()
	since := started.Add(-min(s.cfg.Detect.Retention.Std(), 8*24*time.Hour))
	var batch []detect.Record
	err = s.db.EdgeMinutes(ctx, store.EdgeQuery{Since: since, Direction: "inbound"}, func(r store.EdgeRow) error {
		rec := recordOf(r)
		if rec.Time.After(started) {
			rec.Time = started
		}
		batch = append(batch, rec)
		if len(batch) == 10_000 {
			d.engine.Learn(batch)
			batch = batch[:0]
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("server: rebuild traffic baselines: %w", err)
	}
	d.engine.Learn(batch)

	m := &d.metrics
	m.records = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_detect_record_reports_total",
		Help: "Traffic record reports from sidecars and gateways by outcome: recorded, duplicate (a retry of a report recorded or being recorded: not counted again), rate_limited, refused, error."}, []string{"outcome"})
	m.edges = prometheus.NewCounter(prometheus.CounterOpts{Name: "moatless_detect_edge_records_total",
		Help: "Edge records stored."})
	m.findings = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_detect_findings_total",
		Help: "New findings by detector and severity."}, []string{"detector", "severity"})
	m.writes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_detect_finding_writes_total",
		Help: "Findings stored by outcome: opened (a new finding), updated (detections counted on a stored finding), joined (a finding of this replica merged into one another replica opened), error."}, []string{"outcome"})
	m.dropped = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "moatless_detect_findings_dropped_total",
		Help: "Findings dropped by the bound on new findings per minute (detect.max_findings_per_minute)."},
		func() float64 { return float64(d.engine.Dropped()) })
	m.atRisk = prometheus.NewGauge(prometheus.GaugeOpts{Name: "moatless_detect_identities_at_risk",
		Help: "Identities whose risk score is 0.75 or more."})
	m.riskPublishes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_detect_risk_section_updates_total",
		Help: "Recomputations of the risk scores pushed to sidecars and gateways, by outcome: changed, unchanged, error."}, []string{"outcome"})
	m.riskSent = prometheus.NewGauge(prometheus.GaugeOpts{Name: "moatless_detect_risk_section_identities",
		Help: "Identities whose risk score the watch streams carry (at most 10000)."})
	m.held = prometheus.NewCounter(prometheus.CounterOpts{Name: "moatless_detect_uncorroborated_incidents_total",
		Help: "Incidents a playbook opened with its isolate, block-pair and revoke-certificate steps held: the findings rested on other nodes' word alone (fewer than the trigger's witnesses, not borne out by the identity's own records), or on anomalies alone (no evidence of compromise, and the trigger names no detectors)."})
	s.metrics.reg.MustRegister(m.records, m.edges, m.findings, m.writes, m.dropped, m.atRisk, m.riskPublishes, m.riskSent, m.held, al.sent)
	for table, n := range map[string]func(detect.Untracked) uint64{
		"identities": func(u detect.Untracked) uint64 { return u.Identities },
		"edges":      func(u detect.Untracked) uint64 { return u.Edges },
		"pairs":      func(u detect.Untracked) uint64 { return u.Pairs },
	} {
		s.metrics.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "moatless_detect_untracked_records_total",
			Help:        "Traffic records judged without a state of the detection engine because its table was full (maximum 200000 identities, edges, pairs): no new-edge or probing judgement without the identity's, no rate or volume without the edge's, no volume over the pair's paths without the pair's. Made-up callers reported by nodes can fill them.",
			ConstLabels: prometheus.Labels{"table": table}}, func() float64 { return float64(n(d.engine.Untracked())) }))
	}
	s.audit.OnAppend = s.detectAudit

	if err := s.initRespond(ctx); err != nil {
		return err
	}
	// Findings may have aged out of the risk window while the server was
	// down: the section the streams serve is current from the start.
	if err := s.publishRisk(ctx, s.now()); err != nil {
		return fmt.Errorf("server: risk scores: %w", err)
	}
	mux := s.mux
	mux.HandleFunc("POST "+wire.PathRecords, s.handleRecords)
	mux.Handle("GET "+PathAdminEdges, s.admin(s.listEdges))
	mux.Handle("GET "+PathAdminTraffic, s.admin(s.getTraffic))
	mux.Handle("GET "+PathAdminDecisions, s.admin(s.listDecisions))
	mux.Handle("GET "+PathAdminFindings, s.admin(s.listFindings))
	mux.Handle("GET "+PathAdminFindings+"/{id}", s.admin(s.getFinding))
	mux.Handle("GET "+PathAdminRisk, s.admin(s.listRisk))
	mux.Handle("GET "+PathAdminWorkloads, s.admin(s.listWorkloads))
	mux.Handle("POST "+PathAdminWhatIf, s.adminLimit(maxPolicyBody, s.whatIf))
	return nil
}

func recordOf(r store.EdgeRow) detect.Record {
	return detect.Record{Time: r.Minute, Reporter: r.Reporter, Source: r.Source, Destination: r.Destination, Method: r.Method, Path: r.Path,
		Decision: r.Decision, Reason: r.Reason, Status: r.Status, Requests: r.Requests, RespBytes: r.RespBytes, PIIMatches: r.PIIMatches}
}

// handleRecords stores a reporter's traffic records (wire.PathRecords)
// and hands the inbound ones to the detectors. The caller is
// authenticated like every agent API call (its node SVID): an inbound
// record's destination and an outbound record's source are the caller,
// whatever the body says. The report is validated whole (strict JSON,
// bounds on every field, errors naming edges[i].field; caller-controlled
// text such as paths is escaped and clipped rather than refused). Every
// report, refused ones too, is first charged to the caller's budget (2
// reports a second, 60 at once): over it the caller gets 429, its body
// unread, and retries the report later.
//
// The other end of each record (an inbound record's source) is the
// caller's word only: findings keep who reported them, and playbooks
// contain on corroborated findings only (detect.Corroborate). A report
// with outbound records may be what corroborates the findings of an
// incident held about its reporter, so it rechecks that incident.
func (s *Server) handleRecords(w http.ResponseWriter, r *http.Request) {
	const endpoint = "records"
	d := s.detect
	c, ok := s.authNode(w, r, endpoint)
	if !ok {
		return
	}
	reporter := c.id.String()
	now := s.now()
	// Charged before the body is read: a refused report (up to
	// wire.MaxBodySize of JSON decoded and checked) costs like a
	// recorded one.
	if ok, wait := d.budget.take(reporter, now, 1); !ok {
		d.metrics.records.WithLabelValues("rate_limited").Inc()
		s.metrics.agentRequests.WithLabelValues(endpoint, "rate_limited").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(wait, time.Second).Seconds()))))
		writeErrors(w, http.StatusTooManyRequests, reporter+" sent more traffic reports than its budget allows; retry later")
		return
	}
	var in wire.RecordReport
	if err := decodeJSON(r, wire.MaxBodySize, &in); err != nil {
		d.metrics.records.WithLabelValues("refused").Inc()
		s.agentErr(w, endpoint, err)
		return
	}
	rows, samples, err := validRecords(&in, reporter, now)
	if err != nil {
		d.metrics.records.WithLabelValues("refused").Inc()
		s.agentErr(w, endpoint, err)
		return
	}
	// A report retried after its answer was lost is counted once: twice
	// its requests and bytes would be a rate or volume finding that never
	// happened. One being recorded by another request answers "retry".
	sum := reportDigest(&in)
	switch d.reports.Begin(reporter, sum, now) {
	case detect.ReportTaken:
		d.metrics.records.WithLabelValues("duplicate").Inc()
		s.agentOK(w, endpoint, http.StatusNoContent, nil)
		return
	case detect.ReportInFlight:
		d.metrics.records.WithLabelValues("duplicate").Inc()
		w.Header().Set("Retry-After", "1")
		writeErrors(w, http.StatusConflict, "the same report is being recorded; retry later")
		return
	}
	taken := false
	defer func() { d.reports.Done(reporter, sum, taken, s.now()) }()
	ctx := r.Context()
	if err := s.db.UpsertWorkload(ctx, store.Workload{SPIFFEID: reporter, Component: in.Component, Namespace: in.Namespace,
		Labels: in.Labels, Ports: in.Ports, LastSeen: now}); err != nil {
		d.metrics.records.WithLabelValues("error").Inc()
		s.agentErr(w, endpoint, err)
		return
	}
	// One transaction: a report that failed half-stored would count its
	// edges twice once the reporter retries it.
	if err := s.db.InsertTraffic(ctx, rows, samples); err != nil {
		d.metrics.records.WithLabelValues("error").Inc()
		s.agentErr(w, endpoint, err)
		return
	}
	taken = true
	d.metrics.records.WithLabelValues("recorded").Inc()
	d.metrics.edges.Add(float64(len(rows)))
	// The detectors judge what reached this workload (inbound), and the
	// calls made to the server itself, which reports nothing.
	recs := make([]detect.Record, 0, len(rows))
	for _, row := range rows {
		if row.Direction == "inbound" || row.Destination == s.id.String() {
			rec := recordOf(row)
			rec.Time = in.Start
			recs = append(recs, rec)
		}
	}
	s.findings(context.WithoutCancel(ctx), d.engine.Ingest(now, recs))
	if len(recs) < len(rows) {
		// Its outbound records may corroborate what others reported
		// about it.
		s.recheckReporter(context.WithoutCancel(ctx), reporter)
	}
	if known := d.engine.TakeNewKnown(); len(known) > 0 {
		if err := s.db.AddKnownEdges(ctx, knownRows(known)); err != nil {
			s.log.Warn("record known edges", "err", err)
		}
	}
	s.agentOK(w, endpoint, http.StatusNoContent, nil)
}

// reportDigest identifies a report as decoded (encoding/json writes
// struct fields in order and map keys sorted: one report, one digest,
// however its JSON was spaced).
func reportDigest(in *wire.RecordReport) [32]byte {
	b, err := json.Marshal(in)
	if err != nil {
		// Not reached for a decoded report; a digest of nothing known
		// would merge distinct reports, so make it unique instead.
		var u [32]byte
		rand.Read(u[:])
		return u
	}
	return sha256.Sum256(b)
}

func knownRows(ks []detect.KnownEdge) []store.KnownEdge {
	out := make([]store.KnownEdge, len(ks))
	for i, k := range ks {
		out[i] = store.KnownEdge{Source: k.Source, Destination: k.Destination, Method: k.Method, Path: k.Path, FirstSeen: k.FirstSeen}
	}
	return out
}

// validRecords checks a report and turns it into rows and samples. Values
// the reporter itself chooses (directions, decisions, IDs, counters) are
// refused when they are out of bounds; values the caller of a recorded
// request chose (method, path) are escaped and clipped, so that one
// hostile request cannot get a whole report refused.
func validRecords(in *wire.RecordReport, reporter string, now time.Time) ([]store.EdgeRow, []store.Sample, error) {
	switch in.Component {
	case "sidecar", "gateway":
	default:
		return nil, nil, badf("component %q: want sidecar or gateway", clipReported(in.Component, 64))
	}
	if len(in.Namespace) > 253 || !printable(in.Namespace) {
		return nil, nil, badf("namespace: at most 253 printable bytes")
	}
	if len(in.Labels) > maxReportLabels {
		return nil, nil, badf("labels: at most %d", maxReportLabels)
	}
	for k, v := range in.Labels {
		if k == "" || len(k) > 256 || len(v) > 256 || !printable(k) || !printable(v) {
			return nil, nil, badf("labels: %q: keys and values are 1 to 256 printable bytes", clipReported(k, 64))
		}
	}
	if len(in.Ports) > maxReportLabels {
		return nil, nil, badf("ports: at most %d", maxReportLabels)
	}
	for i, p := range in.Ports {
		if p < 1 || p > 65535 {
			return nil, nil, badf("ports[%d]: %d is not a port", i, p)
		}
	}
	switch {
	case in.Start.IsZero() || in.End.IsZero():
		return nil, nil, badf("start, end: required")
	case in.End.Before(in.Start) || in.End.Sub(in.Start) > 10*time.Minute:
		return nil, nil, badf("start, end: a window of at most 10 minutes, start first")
	case in.End.After(now.Add(maxRecordSkew)):
		return nil, nil, badf("end %s: in the future (check the reporter's clock)", in.End.Format(time.RFC3339))
	case in.Start.Before(now.Add(-maxRecordAge)):
		return nil, nil, badf("start %s: older than %s: dropped", in.Start.Format(time.RFC3339), maxRecordAge)
	}
	if len(in.Edges) > wire.MaxEdgeRecords {
		return nil, nil, badf("edges: at most %d", wire.MaxEdgeRecords)
	}
	if len(in.Samples) > wire.MaxDecisionSamples {
		return nil, nil, badf("samples: at most %d", wire.MaxDecisionSamples)
	}
	minute := in.Start.UTC().Truncate(time.Minute)
	rows := make([]store.EdgeRow, 0, len(in.Edges))
	for i := range in.Edges {
		e := &in.Edges[i]
		field := func(n string) string { return fmt.Sprintf("edges[%d].%s", i, n) }
		row := store.EdgeRow{Minute: minute, Reporter: reporter, Direction: e.Direction, Source: e.Source, Destination: e.Destination,
			Port: e.Port, Protocol: e.Protocol, Method: clipReported(e.Method, maxRecordMethod), Path: clipReported(e.Path, maxRecordPath),
			Decision: e.Decision, Reason: e.Reason, Status: e.Status, Token: e.Token, Requests: e.Requests, ReqBytes: e.ReqBytes,
			RespBytes: e.RespBytes, LatencySum: e.LatencySumMicros, LatencyMax: e.LatencyMaxMicros}
		switch e.Direction {
		case "inbound":
			if e.Destination != "" && e.Destination != reporter {
				return nil, nil, badf("%s: an inbound record's destination is the reporter (%s), not %q", field("destination"), reporter, clipReported(e.Destination, 256))
			}
			row.Destination = reporter
			if err := checkID(e.Source, false); err != nil {
				return nil, nil, badf("%s: %v", field("source"), err)
			}
		case "outbound":
			if e.Source != "" && e.Source != reporter {
				return nil, nil, badf("%s: an outbound record's source is the reporter (%s), not %q", field("source"), reporter, clipReported(e.Source, 256))
			}
			row.Source = reporter
			// The overflow edge (the reporter's table was full) has no
			// destination.
			if err := checkID(e.Destination, e.Decision != "overflow"); err != nil {
				return nil, nil, badf("%s: %v", field("destination"), err)
			}
		default:
			return nil, nil, badf("%s %q: want inbound or outbound", field("direction"), clipReported(e.Direction, 64))
		}
		switch e.Protocol {
		case "http", "http2", "tcp":
		default:
			return nil, nil, badf("%s %q: want http, http2 or tcp", field("protocol"), clipReported(e.Protocol, 64))
		}
		switch e.Decision {
		case "allow", "deny", "unauthenticated", "refused", "overflow":
		default:
			return nil, nil, badf("%s %q: want allow, deny, unauthenticated or refused", field("decision"), clipReported(e.Decision, 64))
		}
		if e.Reason != "" && !reasonCodeRE().MatchString(e.Reason) {
			return nil, nil, badf("%s %q: want a short snake_case code such as deny_rule", field("reason"), clipReported(e.Reason, 64))
		}
		if e.Status < 0 || e.Status > 5 {
			return nil, nil, badf("%s %d: want a status class 0 to 5", field("status"), e.Status)
		}
		if e.Port < 0 || e.Port > 65535 {
			return nil, nil, badf("%s %d: not a port", field("port"), e.Port)
		}
		if len(e.Token) > maxRecordToken || !printable(e.Token) {
			return nil, nil, badf("%s: at most %d printable bytes", field("token"), maxRecordToken)
		}
		if e.Requests == 0 && e.PII == nil {
			return nil, nil, badf("%s: 0: an edge without requests is not reported", field("requests"))
		}
		if p := e.PII; p != nil {
			row.PIISampled = p.Sampled
			row.PIIMatches = detect.SatAdd(detect.SatAdd(p.Cards, p.Emails), p.NationalIDs)
		}
		for _, c := range []struct {
			name string
			v    uint64
		}{{"requests", row.Requests}, {"req_bytes", row.ReqBytes}, {"resp_bytes", row.RespBytes}, {"latency_sum_us", row.LatencySum},
			{"latency_max_us", row.LatencyMax}, {"pii.sampled", row.PIISampled}, {"pii", row.PIIMatches}} {
			if c.v > maxRecordCounter {
				return nil, nil, badf("%s %d: more than a node serves in a report's window (at most %d)", field(c.name), c.v, uint64(maxRecordCounter))
			}
		}
		rows = append(rows, row)
	}
	samples := make([]store.Sample, 0, len(in.Samples))
	for i := range in.Samples {
		ev := in.Samples[i]
		field := func(n string) string { return fmt.Sprintf("samples[%d].%s", i, n) }
		if ev.Time.IsZero() {
			return nil, nil, badf("%s: required", field("time"))
		}
		switch ev.Decision {
		case "allow", "deny", "unauthenticated":
		default:
			return nil, nil, badf("%s %q: want allow, deny or unauthenticated", field("decision"), clipReported(ev.Decision, 64))
		}
		if err := checkID(ev.Source, false); err != nil {
			return nil, nil, badf("%s: %v", field("source"), err)
		}
		if ev.SourceIP != "" && net.ParseIP(ev.SourceIP) == nil {
			return nil, nil, badf("%s: not an IP address", field("source_ip"))
		}
		if ev.ReasonCode != "" && !reasonCodeRE().MatchString(ev.ReasonCode) {
			return nil, nil, badf("%s: want a short snake_case code", field("reason_code"))
		}
		for _, f := range []*string{&ev.Listener, &ev.Destination, &ev.Protocol, &ev.Policy, &ev.AuditPolicy, &ev.RegoQuery, &ev.InputSHA256, &ev.TokenIssuer, &ev.TokenSubject} {
			*f = clipReported(*f, maxReportName)
		}
		ev.Method, ev.Path, ev.Reason = clipReported(ev.Method, maxReportMethod), clipReported(ev.Path, maxReportPath), clipReported(ev.Reason, maxReportReason)
		b, err := json.Marshal(ev)
		if err != nil {
			return nil, nil, badf("%s: %v", field("time"), err)
		}
		samples = append(samples, store.Sample{At: ev.Time, Reporter: reporter, Source: ev.Source, Decision: ev.Decision, Event: b})
	}
	return rows, samples, nil
}

// checkID accepts a SPIFFE ID ("" unless required).
func checkID(id string, required bool) error {
	if id == "" {
		if required {
			return fmt.Errorf("required")
		}
		return nil
	}
	if len(id) > maxRecordID || !utf8.ValidString(id) {
		return fmt.Errorf("not a SPIFFE ID")
	}
	if _, err := spiffeid.FromString(id); err != nil {
		return fmt.Errorf("%q: not a SPIFFE ID: %v", clipReported(id, 256), err)
	}
	return nil
}

// findings stores what the detectors raised or updated and counts the
// new ones. Later layers (playbooks, alerts) take them from here.
//
// Each is merged into the store (mergeFinding): a detection another
// replica already opened a finding for folds into that one, and this
// replica's engine follows it from then on. What follows (risk,
// playbooks, incident links) sees the stored findings, and only the
// replica that opened a finding counts, logs and alerts it.
func (s *Server) findings(ctx context.Context, fs []detect.Finding) {
	if len(fs) == 0 {
		return
	}
	stored := fs[:0]
	for _, f := range fs {
		m, opened, err := s.mergeFinding(ctx, f)
		if err != nil {
			s.detect.engine.Unstored(f)
			s.detect.metrics.writes.WithLabelValues("error").Inc()
			s.log.Error("record finding", "finding", f.ID, "err", err)
			continue
		}
		s.detect.engine.Adopt(f.ID, m)
		stored = append(stored, m)
		switch {
		case opened:
			s.detect.metrics.writes.WithLabelValues("opened").Inc()
		case m.ID != f.ID:
			s.detect.metrics.writes.WithLabelValues("joined").Inc()
		default:
			s.detect.metrics.writes.WithLabelValues("updated").Inc()
		}
		if opened {
			s.detect.metrics.findings.WithLabelValues(m.Detector, string(m.Severity)).Inc()
			s.log.Warn("finding", "id", m.ID, "detector", m.Detector, "severity", m.Severity, "identity", m.Identity,
				"destination", m.Destination, "summary", m.Summary)
			if s.detect.alerts != nil {
				s.detect.alerts.finding(&m)
			}
		}
	}
	s.riskMoved(ctx)
	s.respond(ctx, stored)
}

// mergeFinding stores f, a copy from this replica's engine, merged by its
// key with the open finding of every replica (store.MergeFinding): a new
// finding is inserted; one whose key another finding holds open
// (within SuppressFor of f's last sighting) is folded into it, adding
// the detections f adds since its last copy (detect.Finding.Fold). Only
// f.Delta is ever added, so copies stored out of order, or by several
// replicas, count each detection once; the engine gives back the Delta
// of a copy that could not be stored (Engine.Unstored). It returns the
// finding as stored and whether f opened it.
func (s *Server) mergeFinding(ctx context.Context, f detect.Finding) (detect.Finding, bool, error) {
	var out detect.Finding
	fold := func(stored *store.FindingRow) (store.FindingRow, error) {
		if stored == nil {
			// Its count is the detections this copy adds, not the
			// engine's count: a later copy of the same finding, handled
			// at once with an earlier one, may reach the store first.
			out = f
			out.Count = f.Delta
		} else {
			st, err := findingOf(*stored)
			if err != nil {
				// A body that does not decode (damaged by hand, or a
				// bug) would fail every merge into its key until the
				// claim expired, dropping detections meanwhile. The
				// row's own columns hold what merging needs; the
				// body's summary, evidence and records are lost and
				// the copy's take their place.
				s.log.Warn("stored finding unreadable: rebuilt from its columns", "finding", stored.ID, "err", err)
				st = findingFromColumns(*stored)
				st.Summary = f.Summary
			}
			st.Fold(f)
			out = st
		}
		out.Delta = 0
		body, err := json.Marshal(out)
		if err != nil {
			return store.FindingRow{}, err
		}
		return store.FindingRow{ID: out.ID, At: out.Time, LastAt: out.LastSeen, Detector: out.Detector, Severity: string(out.Severity),
			Identity: out.Identity, Destination: out.Destination, Count: uint64(max(out.Count, 0)), IncidentID: out.IncidentID, Body: body}, nil
	}
	k := f.Key()
	_, opened, err := s.db.MergeFinding(ctx, store.FindingKey(k), f.ID, f.LastSeen, f.LastSeen.Add(-s.detect.engine.Settings().SuppressFor.Std()), fold)
	if err != nil {
		return detect.Finding{}, false, err
	}
	return out, opened, nil
}

// detectAudit reads the audit log's events for the detectors: the token
// service's (refresh or code reuse, exchanges), refused attestations, and
// revoked credentials presented to the agent API or to a sidecar.
func (s *Server) detectAudit(evs []audit.Event) {
	d := s.detect
	if d == nil {
		return
	}
	now := s.now()
	var fs []detect.Finding
	for _, ev := range evs {
		var de detect.Event
		switch {
		case ev.Kind == "oauth.refresh.reused":
			de = detect.Event{Kind: detect.EventRefreshReuse, Identity: ev.Actor}
		case ev.Kind == "oauth.code.reused":
			de = detect.Event{Kind: detect.EventCodeReuse, Identity: ev.Actor}
		case ev.Kind == "oauth.exchange" && ev.Outcome == audit.Success:
			de = detect.Event{Kind: detect.EventTokenExchange, Identity: ev.Actor}
		case ev.Kind == audit.KindAttest && ev.Outcome != audit.Success:
			host, _, err := net.SplitHostPort(ev.Details["remote"])
			if err != nil {
				host = ev.Details["remote"]
			}
			de = detect.Event{Kind: detect.EventAttestFailure, Identity: host}
		case ev.Kind == audit.KindAgentCall && ev.Details["reason"] == "revoked":
			de = detect.Event{Kind: detect.EventRevokedCredential, Identity: ev.Actor}
		case ev.Kind == audit.KindDecisionUnauthenticated && strings.Contains(ev.Details["reason"], "revoked"):
			// Whose token it was, when the token service issued it to
			// a workload of the mesh: the finding names that workload
			// (its stolen token in someone's hands), whoever relayed it.
			if owner := s.revokedTokenOwner(ev.Details); owner != "" {
				fs = append(fs, d.engine.Observe(now, detect.Event{Time: ev.Time, Kind: detect.EventRevokedTokenOf, Identity: owner, Detail: ev.Details, Reporter: ev.Actor})...)
			}
			// A node's report of a revoked token: its word about who
			// presented it. A caller with a SPIFFE ID passed mTLS with its
			// own SVID and may be relaying its users' tokens (Istio's
			// end-user authentication), so the token says nothing about
			// it: two backends refusing one revoked user token that
			// frontend forwarded must not get frontend contained. The
			// record stays in the audit log. A caller without one (the
			// gateway's client, by address) presented the token itself.
			if ev.Details["source"] != "" {
				continue
			}
			de = detect.Event{Kind: detect.EventRevokedCredential, Identity: ev.Subject, Reporter: ev.Actor}
		default:
			continue
		}
		de.Time, de.Detail = ev.Time, ev.Details
		fs = append(fs, d.engine.Observe(now, de)...)
	}
	if len(fs) > 0 {
		// The audit sink calls from its committing goroutine; what the
		// findings set off (storage, playbooks) runs on its own.
		go s.findings(context.Background(), fs)
	}
}

// revokedTokenOwner is the SPIFFE ID a reported revoked token was
// issued to (details token_issuer, token_subject): "" unless this
// server's token service issued it (a foreign issuer's subject can be
// any string, a SPIFFE ID of this mesh included) and its subject is an
// identity of this trust domain.
func (s *Server) revokedTokenOwner(details map[string]string) string {
	iss, sub := details["token_issuer"], details["token_subject"]
	if iss == "" || sub == "" || s.oauth == nil || iss != s.oauth.svc.Issuer() {
		return ""
	}
	id, err := spiffeid.FromString(sub)
	if err != nil || id.TrustDomain() != s.td {
		return ""
	}
	return id.String()
}

// tickDetect runs on every maintenance pass: the engine's minute
// bookkeeping, and once a minute, the retention of traffic records.
func (s *Server) tickDetect(ctx context.Context, now time.Time, prune bool) {
	d := s.detect
	if d == nil {
		return
	}
	d.mu.Lock()
	due := now.Sub(d.lastTick) >= 10*time.Second
	if due {
		d.lastTick = now
	}
	d.mu.Unlock()
	if !due && !prune {
		s.riskPending(ctx)
		return
	}
	d.engine.Tick(now)
	if err := s.publishRisk(ctx, now); err != nil {
		s.log.Warn("publish risk scores", "err", err)
	}
	if known := d.engine.TakeNewKnown(); len(known) > 0 {
		if err := s.db.AddKnownEdges(ctx, knownRows(known)); err != nil {
			s.log.Warn("record known edges", "err", err)
		}
	}
	s.expireBlocks(ctx, now)
	if prune {
		if _, err := s.db.PruneTraffic(ctx, now.Add(-s.cfg.Detect.Retention.Std())); err != nil {
			s.log.Warn("prune traffic records", "err", err)
		}
		if _, err := s.db.PruneOpenFindings(ctx, now.Add(-d.engine.Settings().SuppressFor.Std())); err != nil {
			s.log.Warn("prune open findings", "err", err)
		}
	}
}

// sinceQuery reads ?since= as a duration back from now ("1h", default
// def) or an RFC 3339 time.
func (s *Server) sinceQuery(v string, def time.Duration) (time.Time, error) {
	now := s.now()
	if v == "" {
		return now.Add(-def), nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 || d > 400*24*time.Hour {
			return time.Time{}, badf("since %q: want a positive duration such as 1h", v)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, badf("since %q: want a duration (1h, 24h) or an RFC 3339 time", v)
	}
	return t, nil
}

// cursorQuery reads ?before= (a cursor from "next": Unix nanoseconds) and
// ?limit= (1 to 1000, default def).
func cursorQuery(q map[string][]string, def int) (time.Time, int, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	limit := def
	if v := get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return time.Time{}, 0, badf("limit %q: want 1 to 1000", v)
		}
		limit = n
	}
	var before time.Time
	if v := get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return time.Time{}, 0, badf("before %q: want the next cursor of the previous page", v)
		}
		before = time.Unix(0, n).UTC()
	}
	return before, limit, nil
}

func cursorOf(t time.Time) string { return strconv.FormatInt(t.UnixNano(), 10) }

// pageOf converts the rows of one page with conv; a full page (limit
// rows) gets the cursor of its last row, at, as next.
func pageOf[R, T any](rows []R, limit int, conv func(R) (T, error), at func(R) time.Time) (Page[T], error) {
	p := Page[T]{Items: make([]T, 0, len(rows))}
	for _, r := range rows {
		x, err := conv(r)
		if err != nil {
			return Page[T]{}, err
		}
		p.Items = append(p.Items, x)
	}
	if len(rows) == limit && limit > 0 {
		p.Next = cursorOf(at(rows[len(rows)-1]))
	}
	return p, nil
}

func (s *Server) edgeQuery(c *adminCall, extra ...string) (store.EdgeQuery, error) {
	q, err := c.query(append([]string{"since", "namespace", "source", "destination", "direction"}, extra...)...)
	if err != nil {
		return store.EdgeQuery{}, err
	}
	since, err := s.sinceQuery(q.Get("since"), time.Hour)
	if err != nil {
		return store.EdgeQuery{}, err
	}
	eq := store.EdgeQuery{Since: since, Namespace: q.Get("namespace"), Source: q.Get("source"), Destination: q.Get("destination"), Direction: q.Get("direction")}
	switch eq.Direction {
	case "", "inbound", "outbound":
	default:
		return eq, badf("direction %q: want inbound or outbound", eq.Direction)
	}
	return eq, nil
}

func edgeSummaries(ts []store.EdgeTotal) []EdgeSummary {
	out := make([]EdgeSummary, 0, len(ts))
	for _, t := range ts {
		e := EdgeSummary{Direction: t.Direction, Source: t.Source, Destination: t.Destination, Port: t.Port, Protocol: t.Protocol,
			Method: t.Method, Path: t.Path, Decision: t.Decision, Reason: t.Reason, Status: t.Status, Token: t.Token,
			Requests: t.Requests, ReqBytes: t.ReqBytes, RespBytes: t.RespBytes, LatencyMax: float64(t.LatencyMax) / 1000,
			PIISampled: t.PIISampled, PIIMatches: t.PIIMatches, FirstMinute: t.Minute, LastMinute: t.Last}
		if t.Requests > 0 {
			e.LatencyAvg = float64(t.LatencySum) / float64(t.Requests) / 1000
		}
		out = append(out, e)
	}
	return out
}

// listEdges is the service graph: every edge seen since ?since (1h), with
// its traffic.
func (s *Server) listEdges(c *adminCall) {
	eq, err := s.edgeQuery(c)
	if err != nil {
		c.fail(err)
		return
	}
	ts, err := s.db.EdgeTotals(c.ctx, eq)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, Page[EdgeSummary]{Items: edgeSummaries(ts)})
}

// getTraffic is the recorded inbound traffic and the workloads it reached.
func (s *Server) getTraffic(c *adminCall) {
	eq, err := s.edgeQuery(c)
	if err != nil {
		c.fail(err)
		return
	}
	if eq.Direction == "" {
		eq.Direction = "inbound"
	}
	snap, err := s.trafficSnapshot(c.ctx, eq)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, snap)
}

// trafficSnapshot is the traffic eq selects with every workload known.
func (s *Server) trafficSnapshot(ctx context.Context, eq store.EdgeQuery) (TrafficSnapshot, error) {
	ts, err := s.db.EdgeTotals(ctx, eq)
	if err != nil {
		return TrafficSnapshot{}, err
	}
	ws, err := s.db.Workloads(ctx)
	if err != nil {
		return TrafficSnapshot{}, err
	}
	return TrafficSnapshot{Since: eq.Since.UTC(), Until: s.now().UTC(), Edges: edgeSummaries(ts), Workloads: ws}, nil
}

// Detect is the snapshot in the terms of detect.Recommend and
// detect.WhatIf.
func (snap TrafficSnapshot) Detect() ([]detect.Edge, []detect.Workload) {
	edges := make([]detect.Edge, 0, len(snap.Edges))
	for _, e := range snap.Edges {
		edges = append(edges, detect.Edge{Source: e.Source, Destination: e.Destination, Port: e.Port, Protocol: e.Protocol,
			Method: e.Method, Path: e.Path, Decision: e.Decision, Token: e.Token, Requests: e.Requests})
	}
	ws := make([]detect.Workload, 0, len(snap.Workloads))
	for _, w := range snap.Workloads {
		ws = append(ws, detect.Workload{SPIFFEID: w.SPIFFEID, Namespace: w.Namespace, Labels: w.Labels, Ports: w.Ports})
	}
	return edges, ws
}

// listDecisions lists sampled raw decisions, newest first.
func (s *Server) listDecisions(c *adminCall) {
	q, err := c.query("identity", "since", "before", "limit")
	if err != nil {
		c.fail(err)
		return
	}
	since, err := s.sinceQuery(q.Get("since"), 24*time.Hour)
	if err != nil {
		c.fail(err)
		return
	}
	before, limit, err := cursorQuery(q, 100)
	if err != nil {
		c.fail(err)
		return
	}
	id := q.Get("identity")
	l, err := s.db.Samples(c.ctx, store.SampleQuery{Source: id, Reporter: id, Since: since, Before: before, Limit: limit})
	if err != nil {
		c.fail(err)
		return
	}
	p := Page[store.Sample]{Items: l}
	if len(l) == limit {
		p.Next = cursorOf(l[len(l)-1].At)
	}
	c.reply(http.StatusOK, p)
}

// findingFromColumns is the finding r's columns describe, without its
// body: for a stored finding whose body does not decode.
func findingFromColumns(r store.FindingRow) detect.Finding {
	return detect.Finding{ID: r.ID, Time: r.At, LastSeen: r.LastAt, Count: int(r.Count), Detector: r.Detector,
		Severity: detect.Severity(r.Severity), Identity: r.Identity, Destination: r.Destination, IncidentID: r.IncidentID}
}

func findingOf(r store.FindingRow) (detect.Finding, error) {
	var f detect.Finding
	if err := json.Unmarshal(r.Body, &f); err != nil {
		return f, fmt.Errorf("finding %s: %w", r.ID, err)
	}
	f.LastSeen, f.Count, f.IncidentID = r.LastAt, int(r.Count), r.IncidentID
	return f, nil
}

// listFindings lists findings, newest first; ?severity= keeps those of
// that severity or above.
func (s *Server) listFindings(c *adminCall) {
	q, err := c.query("identity", "severity", "since", "before", "limit")
	if err != nil {
		c.fail(err)
		return
	}
	var sevs []string
	if v := q.Get("severity"); v != "" {
		if sevs = detect.Severity(v).AtLeast(); sevs == nil {
			c.fail(badf("severity %q: want low, medium, high or critical", v))
			return
		}
	}
	since, err := s.sinceQuery(q.Get("since"), 7*24*time.Hour)
	if err != nil {
		c.fail(err)
		return
	}
	before, limit, err := cursorQuery(q, 100)
	if err != nil {
		c.fail(err)
		return
	}
	rows, err := s.db.Findings(c.ctx, store.FindingQuery{Identity: q.Get("identity"), Severities: sevs, Since: since, Before: before, Limit: limit})
	if err != nil {
		c.fail(err)
		return
	}
	p, err := pageOf(rows, limit, findingOf, func(r store.FindingRow) time.Time { return r.At })
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, p)
}

func (s *Server) getFinding(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	r, err := s.db.Finding(c.ctx, c.r.PathValue("id"))
	if err != nil {
		c.fail(err)
		return
	}
	f, err := findingOf(r)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, f)
}

// listRisk lists the identities at risk, highest first, from the stored
// findings of every replica (storedRisks).
func (s *Server) listRisk(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	items, err := s.storedRisks(c.ctx, s.now())
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, Page[detect.IdentityRisk]{Items: items})
}

func (s *Server) listWorkloads(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	ws, err := s.db.Workloads(c.ctx)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, Page[store.Workload]{Items: ws})
}

// whatIf replays the recorded inbound traffic through the policies of the
// request, with the sidecars' decision function (detect.WhatIf). The
// policies are only compiled, never stored or pushed.
func (s *Server) whatIf(c *adminCall) {
	var in WhatIfRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	if len(in.Files) == 0 {
		c.fail(badf("files: at least one policy file"))
		return
	}
	var b policy.Bundle
	for i, f := range in.Files {
		if err := b.Add(f.Name, []byte(f.Content)); err != nil {
			c.fail(badf("files[%d] (%s): %v", i, f.Name, err))
			return
		}
	}
	set, err := b.Compile(policy.Options{RootNamespace: in.RootNamespace})
	if err != nil {
		c.fail(badf("%v", err))
		return
	}
	since, err := s.sinceQuery(in.Since, time.Hour)
	if err != nil {
		c.fail(err)
		return
	}
	snap, err := s.trafficSnapshot(c.ctx, store.EdgeQuery{Since: since, Namespace: in.Namespace, Direction: "inbound"})
	if err != nil {
		c.fail(err)
		return
	}
	edges, ws := snap.Detect()
	out := WhatIfResponse{Since: snap.Since, Until: snap.Until, Items: detect.WhatIf(set, edges, ws)}
	for _, r := range out.Items {
		switch r.Change {
		case detect.ChangeNewlyDenied:
			out.NewlyDenied++
		case detect.ChangeNewlyAllowed:
			out.NewlyAllowed++
		}
	}
	if out.Items == nil {
		out.Items = []detect.WhatIfResult{}
	}
	c.reply(http.StatusOK, out)
}
