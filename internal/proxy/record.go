package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatless/moatless/internal/traffic"
	"github.com/moatless/moatless/internal/wire"
)

// Defaults of RecorderConfig.
const (
	DefaultRecordInterval = 5 * time.Second
	DefaultRecordMaxEdges = 5000
	DefaultSampleOneIn    = 100
	DefaultMaxSamples     = 20
	// reportEdges is how many edges one report carries; a window with
	// more is sent as several reports, each well under the agent API's
	// body limit.
	reportEdges = 250
	// maxPendingReports bounds the reports kept while the server is
	// unreachable: a minute of windows at the default interval (more
	// when windows are split).
	maxPendingReports = 12
	// maxNamedOverflow bounds the overflow edges that keep their peer
	// (one per caller inbound, per upstream outbound); past it, requests
	// go to one overflow edge per direction that names no one.
	maxNamedOverflow = 1000
)

// Directions of an Observation.
const (
	DirectionInbound  = "inbound"
	DirectionOutbound = "outbound"
)

// RecorderConfig configures a Recorder. Send is required.
type RecorderConfig struct {
	// Send delivers one window's report to the server (wire.PathRecords),
	// over the connection the process keeps to it; an error keeps the
	// report for the next attempt (at most maxPendingReports are kept;
	// older ones are dropped and counted).
	Send func(ctx context.Context, r *wire.RecordReport) error
	// Component, Namespace, Labels and Ports describe the reporter.
	Component string
	Namespace string
	Labels    map[string]string
	Ports     []int
	// Interval is the window length; default DefaultRecordInterval.
	Interval time.Duration
	// MaxEdges bounds the distinct edges of one window, a quarter of it
	// those of one peer (the caller of inbound requests, the upstream of
	// outbound ones), so that no peer can crowd the others out; requests
	// beyond go to an overflow edge that keeps their peer, decision,
	// reason and status (path traffic.OverflowPeerPath when the peer had
	// its share, traffic.OverflowPath when the table was full; at most
	// maxNamedOverflow of them, then one per direction that names no one,
	// decision "overflow") and are counted.
	// Default DefaultRecordMaxEdges.
	MaxEdges int
	// SampleOneIn is the share of allowed requests whose decision is
	// sampled into the report (every refusal is, up to MaxSamples per
	// window); default DefaultSampleOneIn.
	SampleOneIn int
	// MaxSamples bounds the decisions sampled per window; default
	// DefaultMaxSamples, at most wire.MaxDecisionSamples.
	MaxSamples int
	// PII opts edges in to response body sampling for personal data.
	PII []PIIEdge
	// Registerer receives the recorder's metrics; none when nil.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Now is the clock of windows; default time.Now.
	Now func() time.Time
}

// PIIEdge opts one inbound edge in to PII sampling: the responses this
// workload sends to Source ("*": any caller) are scanned, one in OneIn,
// at most MaxBytes of each, for card numbers, e-mail addresses and
// national IDs (traffic.ScanPII), not counting a value the request
// carried (traffic.ScanPIIEcho). Only counts leave the sidecar.
type PIIEdge struct {
	Source   string
	OneIn    int
	MaxBytes int
}

// Observation is one request (or one refused connection, or one TCP
// stream) as the recorder counts it.
type Observation struct {
	Direction   string // DirectionInbound or DirectionOutbound
	Source      string // SPIFFE ID, "" for plaintext
	Destination string // SPIFFE ID of the upstream (outbound)
	Port        int
	Protocol    string
	Method      string
	// Path is the request path without its query; Observe turns it into
	// a template (traffic.PathTemplate).
	Path      string
	Decision  string
	Reason    string
	Status    int
	ReqBytes  int64
	RespBytes int64
	Latency   time.Duration
	// Token is the issuer of the verified request token, if any.
	Token string
}

type recKey struct {
	dir, src, dst  string
	port           int
	proto, method  string
	path, decision string
	reason, token  string
	status         uint8
}

type recVal struct {
	requests, reqBytes, respBytes, latSum, latMax uint64
	pii                                           *wire.PIISample
}

// Recorder aggregates the traffic a sidecar (or a gateway) sees into
// per-edge records and sends one report per window to the server. The
// request path pays one map update under a mutex (Observe); building and
// sending reports, and scanning sampled bodies for personal data, happen
// on the Run goroutine and one scanner goroutine. Memory is bounded by
// MaxEdges per window and maxPendingReports windows. Safe for concurrent
// use. Lifecycle: NewRecorder → Run(ctx) until ctx ends (a last flush is
// attempted) ; Observe may be called before, during and after Run.
type Recorder struct {
	cfg RecorderConfig

	mu      sync.Mutex
	cur     map[recKey]*recVal
	start   time.Time
	over    uint64
	samples []wire.AuditEvent
	// edges counts cur's ordinary edges (the overflow edges aside),
	// named its overflow edges that name a peer, peers each peer's
	// ordinary edges.
	edges, named int
	peers        map[peerKey]int

	sampleTick atomic.Uint64
	pii        map[string]PIIEdge // by source; "*" for any
	piiTick    atomic.Uint64
	scanq      chan scanJob

	pending []*wire.RecordReport

	metrics recorderMetrics
}

type scanJob struct {
	key  recKey
	body []byte
	req  [][]byte
}

type recorderMetrics struct {
	reports  *prometheus.CounterVec
	edges    prometheus.Counter
	overflow prometheus.Counter
	scanned  prometheus.Counter
	skipped  prometheus.Counter
}

// NewRecorder checks cfg and builds a Recorder; nothing runs until Run.
func NewRecorder(cfg RecorderConfig) (*Recorder, error) {
	if cfg.Send == nil {
		return nil, errors.New("proxy: recorder: Send is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultRecordInterval
	}
	if cfg.MaxEdges <= 0 {
		cfg.MaxEdges = DefaultRecordMaxEdges
	}
	if cfg.SampleOneIn <= 0 {
		cfg.SampleOneIn = DefaultSampleOneIn
	}
	if cfg.MaxSamples <= 0 {
		cfg.MaxSamples = DefaultMaxSamples
	}
	cfg.MaxSamples = min(cfg.MaxSamples, wire.MaxDecisionSamples)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Component == "" {
		cfg.Component = "sidecar"
	}
	r := &Recorder{cfg: cfg, cur: map[recKey]*recVal{}, peers: map[peerKey]int{}, start: cfg.Now()}
	for _, p := range cfg.PII {
		if p.OneIn <= 0 {
			p.OneIn = 1
		}
		if p.MaxBytes <= 0 {
			p.MaxBytes = 64 << 10
		}
		if r.pii == nil {
			r.pii = map[string]PIIEdge{}
		}
		r.pii[p.Source] = p
	}
	if r.pii != nil {
		r.scanq = make(chan scanJob, 16)
	}
	m := &r.metrics
	m.reports = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moatless_sidecar_record_reports_total",
		Help: "Traffic record reports by outcome: sent, failed (kept for a retry), dropped (too many pending).",
	}, []string{"outcome"})
	m.edges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "moatless_sidecar_record_edges_total",
		Help: "Edge records reported to the server.",
	})
	m.overflow = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "moatless_sidecar_record_overflow_requests_total",
		Help: "Requests counted in the overflow edge because the window's record table was full.",
	})
	m.scanned = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "moatless_sidecar_pii_samples_scanned_total",
		Help: "Sampled response bodies scanned for personal data.",
	})
	m.skipped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "moatless_sidecar_pii_samples_skipped_total",
		Help: "Sampled response bodies not scanned because the scanner was busy.",
	})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{m.reports, m.edges, m.overflow, m.scanned, m.skipped} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// Observe counts one observation in the current window. It is the whole
// per-request cost of recording: a path template (no allocation when the
// path has no identifier in it) and one map update.
func (r *Recorder) Observe(o *Observation) {
	k := recKey{
		dir: o.Direction, src: o.Source, dst: o.Destination, port: o.Port, proto: o.Protocol,
		method: o.Method, decision: o.Decision, reason: o.Reason, token: o.Token, status: statusClass(o.Status),
	}
	if o.Path != "" {
		k.path = traffic.PathTemplate(o.Path)
	}
	lat := uint64(max(o.Latency, 0) / time.Microsecond)
	r.mu.Lock()
	v := r.cur[k]
	if v == nil {
		var over bool
		if v, over = r.newEdge(k); over {
			r.over++
		}
	}
	v.requests++
	v.reqBytes += uint64(max(o.ReqBytes, 0))
	v.respBytes += uint64(max(o.RespBytes, 0))
	v.latSum += lat
	v.latMax = max(v.latMax, lat)
	r.mu.Unlock()
}

// peerKey is whom an edge is with: its caller (inbound) or its upstream
// (outbound).
type peerKey struct{ dir, src, dst string }

func peerOf(k recKey) peerKey { return peerKey{k.dir, k.src, k.dst} }

// newEdge returns the value to count k's request in when k has none yet:
// a new edge, or, when the table is full or k's peer has its share of
// it, the overflow edge of that peer (one that names no one past
// maxNamedOverflow of them). An overflow cannot hide who called: the
// caller whose edges overflowed is still reported, and so is the one
// that made the table overflow (traffic.OverflowPeerPath), with what
// was decided about their requests: refusals stay refusals. Called with r.mu
// held. over says it is an overflow edge.
func (r *Recorder) newEdge(k recKey) (v *recVal, over bool) {
	p := peerOf(k)
	share := max(r.cfg.MaxEdges/4, 1)
	if r.edges < r.cfg.MaxEdges && r.peers[p] < share {
		r.edges++
		r.peers[p]++
		v = &recVal{}
		r.cur[k] = v
		return v, false
	}
	path := traffic.OverflowPath
	if r.peers[p] >= share {
		path = traffic.OverflowPeerPath
	}
	ok := recKey{dir: k.dir, src: k.src, dst: k.dst, proto: k.proto, path: path, decision: k.decision, reason: k.reason, token: k.token, status: k.status}
	if v = r.cur[ok]; v != nil {
		return v, true
	}
	if r.named >= maxNamedOverflow {
		ok = recKey{dir: k.dir, path: traffic.OverflowPath, decision: "overflow", proto: k.proto}
		if v = r.cur[ok]; v != nil {
			return v, true
		}
	} else {
		r.named++
	}
	v = &recVal{}
	r.cur[ok] = v
	return v, true
}

// statusClass is the HTTP status class (2 for 2xx), 0 for none.
func statusClass(s int) uint8 {
	if s < 100 || s > 599 {
		return 0
	}
	return uint8(s / 100)
}

// WantSample reports whether the decision of the request being recorded
// should be sampled: every refusal, one allow in SampleOneIn, up to
// MaxSamples per window. The caller then builds the event and passes it
// to AddSample.
func (r *Recorder) WantSample(allowed bool) bool {
	if allowed && r.sampleTick.Add(1)%uint64(r.cfg.SampleOneIn) != 0 {
		return false
	}
	r.mu.Lock()
	ok := len(r.samples) < r.cfg.MaxSamples
	r.mu.Unlock()
	return ok
}

// AddSample adds a sampled decision to the window (dropped when the
// window has its MaxSamples).
func (r *Recorder) AddSample(ev wire.AuditEvent) {
	r.mu.Lock()
	if len(r.samples) < r.cfg.MaxSamples {
		r.samples = append(r.samples, ev)
	}
	r.mu.Unlock()
}

// piiSampler returns a writer wrapper collecting the first bytes of a
// response to source, when that edge is opted in and this response is
// the one in OneIn; nil otherwise (the common case: a nil map read).
func (r *Recorder) piiSampler(w http.ResponseWriter, source string) *piiWriter {
	if max := r.piiSample(source); max > 0 {
		return &piiWriter{ResponseWriter: w, max: max}
	}
	return nil
}

// piiSample decides whether the response to source about to be forwarded
// is sampled, on either server path: it returns how many of its first
// body bytes to keep, 0 for none.
func (r *Recorder) piiSample(source string) int {
	if r == nil || r.pii == nil {
		return 0
	}
	p, ok := r.pii[source]
	if !ok {
		if p, ok = r.pii["*"]; !ok {
			return 0
		}
	}
	if r.piiTick.Add(1)%uint64(p.OneIn) != 0 {
		return 0
	}
	return p.MaxBytes
}

// piiScan hands a sampled body (owned by the scanner from then on) to the
// scanner goroutine; a busy scanner skips it (counted): sampling never
// slows a response. req is what the app was sent (its target and the
// first bytes of its body, also owned by the scanner): personal data the
// answer echoes from it is not counted (traffic.ScanPIIEcho), a form
// echo being no disclosure.
func (r *Recorder) piiScan(o *Observation, body []byte, req [][]byte) {
	k := recKey{dir: o.Direction, src: o.Source, dst: o.Destination, port: o.Port, proto: o.Protocol,
		method: o.Method, path: traffic.PathTemplate(o.Path), decision: o.Decision, reason: o.Reason, token: o.Token, status: statusClass(o.Status)}
	select {
	case r.scanq <- scanJob{key: k, body: body, req: req}:
	default:
		r.metrics.skipped.Inc()
	}
}

// scanLoop scans sampled bodies until ctx ends.
func (r *Recorder) scanLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-r.scanq:
			c := traffic.ScanPIIEcho(j.body, j.req)
			r.metrics.scanned.Inc()
			r.mu.Lock()
			v := r.cur[j.key]
			if v == nil {
				v, _ = r.newEdge(j.key)
			}
			if v != nil {
				if v.pii == nil {
					v.pii = &wire.PIISample{}
				}
				v.pii.Sampled++
				v.pii.Bytes += uint64(len(j.body))
				v.pii.Cards += uint64(c.Cards)
				v.pii.Emails += uint64(c.Emails)
				v.pii.NationalIDs += uint64(c.NationalIDs)
			}
			r.mu.Unlock()
		}
	}
}

// piiWriter keeps the first max bytes written through it.
type piiWriter struct {
	http.ResponseWriter
	buf []byte
	max int
}

func (p *piiWriter) Write(b []byte) (int, error) {
	if room := p.max - len(p.buf); room > 0 {
		p.buf = append(p.buf, b[:min(room, len(b))]...)
	}
	return p.ResponseWriter.Write(b)
}

// Unwrap lets http.NewResponseController reach the real writer (flush,
// full duplex, deadlines).
func (p *piiWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

// piiBody keeps the first max bytes of a request body read through it,
// for the PII scan of the answer: what the app was sent.
type piiBody struct {
	io.ReadCloser
	mu  sync.Mutex // the transport may read while the answer is read
	buf []byte
	max int
}

func (p *piiBody) Read(b []byte) (int, error) {
	n, err := p.ReadCloser.Read(b)
	if n > 0 {
		p.mu.Lock()
		if room := p.max - len(p.buf); room > 0 {
			p.buf = append(p.buf, b[:min(room, n)]...)
		}
		p.mu.Unlock()
	}
	return n, err
}

// sent is a copy of what was read so far.
func (p *piiBody) sent() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.buf)
}

// Run sends a report every Interval until ctx ends, then flushes once
// more (bounded by 5 seconds).
func (r *Recorder) Run(ctx context.Context) {
	if r.scanq != nil {
		go r.scanLoop(ctx)
	}
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			r.Flush(fctx)
			cancel()
			return
		case <-t.C:
			r.Flush(ctx)
		}
	}
}

// Flush closes the current window and sends every pending report, oldest
// first; the first failure keeps the rest for the next flush. It returns
// that failure.
func (r *Recorder) Flush(ctx context.Context) error {
	if reps := r.cut(); reps != nil {
		r.pending = append(r.pending, reps...)
		if n := len(r.pending) - maxPendingReports; n > 0 {
			r.metrics.reports.WithLabelValues("dropped").Add(float64(n))
			r.cfg.Logger.Warn("traffic records dropped: the server has not taken them", "reports", n)
			r.pending = append(r.pending[:0], r.pending[n:]...)
		}
	}
	for len(r.pending) > 0 {
		rep := r.pending[0]
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.cfg.Send(sctx, rep)
		cancel()
		if err != nil {
			r.metrics.reports.WithLabelValues("failed").Inc()
			r.cfg.Logger.Debug("traffic record report failed; kept for the next window", "err", err, "pending", len(r.pending))
			return err
		}
		r.metrics.reports.WithLabelValues("sent").Inc()
		r.metrics.edges.Add(float64(len(rep.Edges)))
		r.pending[0] = nil
		r.pending = r.pending[1:]
	}
	return nil
}

// cut ends the current window and returns its reports (one per
// reportEdges edges), nil when nothing happened in it.
func (r *Recorder) cut() []*wire.RecordReport {
	now := r.cfg.Now()
	r.mu.Lock()
	cur, start, over, samples := r.cur, r.start, r.over, r.samples
	r.cur, r.start, r.over, r.samples = make(map[recKey]*recVal, len(cur)), now, 0, nil
	r.edges, r.named, r.peers = 0, 0, make(map[peerKey]int, len(r.peers))
	r.mu.Unlock()
	if len(cur) == 0 && len(samples) == 0 {
		return nil
	}
	r.metrics.overflow.Add(float64(over))
	edges := make([]wire.EdgeRecord, 0, len(cur))
	for k, v := range cur {
		edges = append(edges, wire.EdgeRecord{
			Direction: k.dir, Source: k.src, Destination: k.dst, Port: k.port, Protocol: k.proto,
			Method: k.method, Path: k.path, Decision: k.decision, Reason: k.reason, Status: int(k.status), Token: k.token,
			Requests: v.requests, ReqBytes: v.reqBytes, RespBytes: v.respBytes,
			LatencySumMicros: v.latSum, LatencyMaxMicros: v.latMax, PII: v.pii,
		})
	}
	var out []*wire.RecordReport
	for len(edges) > 0 || len(out) == 0 {
		n := min(len(edges), reportEdges)
		out = append(out, &wire.RecordReport{
			Component: r.cfg.Component, Namespace: r.cfg.Namespace, Labels: r.cfg.Labels, Ports: r.cfg.Ports,
			Start: start.UTC(), End: now.UTC(), Edges: edges[:n:n],
		})
		edges = edges[n:]
	}
	out[0].Samples, out[0].Dropped = samples, over
	return out
}

// wireEvent is the wire form of a decision event, for the audit report
// and the record's samples. The last CUSTOM provider asked is the one
// that decided a denial: its query and input digest go along.
func wireEvent(ev *DecisionEvent) wire.AuditEvent {
	we := wire.AuditEvent{
		Time: ev.Time, Listener: ev.Listener, Source: ev.Source, SourceIP: ev.SourceIP,
		Destination: ev.Destination, Protocol: ev.Protocol, Method: ev.Method, Path: ev.Path,
		Decision: ev.Decision, Policy: ev.Policy, Rule: ev.Rule, Reason: ev.Reason,
		ReasonCode: string(ev.ReasonCode), PolicyVersion: ev.PolicyVersion, AuditPolicy: ev.AuditPolicy,
		TraceID: ev.TraceID, TokenIssuer: ev.TokenIssuer, TokenSubject: ev.TokenSubject,
	}
	if n := len(ev.Custom); n > 0 && ev.Custom[n-1].Query != "" {
		we.RegoQuery, we.InputSHA256 = ev.Custom[n-1].Query, ev.Custom[n-1].InputSHA256
	}
	return we
}

// observe counts o when the sidecar records traffic. Every request path
// of the sidecar (the inbound handler, the outbound handler, TCP streams,
// refused connections, and any faster path added later) ends here.
func (s *Sidecar) observe(o *Observation) {
	if s.rec != nil {
		s.rec.Observe(o)
	}
}
