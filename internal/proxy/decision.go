package proxy

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/policy"
)

// Reason is the bounded category of a decision, used as a metric label
// (the free-text policy.Decision.Reason goes only to logs).
type Reason string

const (
	ReasonAllowed       Reason = "allowed"         // a policy (or no applicable ALLOW policy) allowed it
	ReasonDenyRule      Reason = "deny_rule"       // a DENY (or CUSTOM) rule matched
	ReasonNoAllowMatch  Reason = "no_allow_match"  // ALLOW policies apply, none matched
	ReasonInvalidToken  Reason = "invalid_token"   // RequestAuthentication refused a token: 401
	ReasonNoPolicy      Reason = "no_policy"       // no policy version loaded yet: deny by default
	ReasonMTLSRequired  Reason = "mtls_required"   // plaintext under STRICT
	ReasonTLSNotAllowed Reason = "tls_not_allowed" // TLS under DISABLE
	ReasonBlocked       Reason = "blocked"         // the (caller, this workload) pair is blocked (incident response)
)

func reasonOf(d policy.Decision, loaded bool) Reason {
	switch {
	case !loaded:
		return ReasonNoPolicy
	case d.Outcome == policy.Allow:
		return ReasonAllowed
	case d.Outcome == policy.Unauthenticated:
		return ReasonInvalidToken
	case d.Policy != "" && d.Action != "ALLOW":
		return ReasonDenyRule
	default:
		return ReasonNoAllowMatch
	}
}

// DecisionEvent is one logged decision. Path never includes the query
// string: tokens may travel there (RequestAuthentication fromParams).
type DecisionEvent struct {
	Time        time.Time `json:"time"`
	Listener    string    `json:"listener"`
	Source      string    `json:"source"` // SPIFFE ID, "" for plaintext
	SourceIP    string    `json:"source_ip"`
	Destination string    `json:"destination"` // "namespace:port"
	Protocol    string    `json:"protocol"`
	Method      string    `json:"method,omitempty"`
	// RequestID is the caller's x-request-id, when it sent one, so a
	// request can be followed across hops.
	RequestID     string `json:"request_id,omitempty"`
	Path          string `json:"path,omitempty"`
	Decision      string `json:"decision"` // allow, deny, unauthenticated
	Policy        string `json:"policy,omitempty"`
	Rule          int    `json:"rule"`
	Reason        string `json:"reason"`
	ReasonCode    Reason `json:"reason_code"`
	PolicyVersion uint64 `json:"policy_version"`
	// AuditPolicy names the AUDIT policy that matched, if any.
	AuditPolicy string `json:"audit_policy,omitempty"`
	// Custom lists the CUSTOM providers asked (Rego queries), each with
	// its result and the SHA-256 of its input document.
	Custom []CustomDecision `json:"custom,omitempty"`
	// TraceID is the W3C trace ID (32 hex digits) of the request's span
	// when tracing is on and the trace is sampled: the decision's way to
	// its trace.
	TraceID string `json:"trace_id,omitempty"`
	// TokenIssuer and TokenSubject name the request's token whose
	// signature verified, the one that authenticated it or the one
	// refused after verifying (revoked, issued to a revoked identity,
	// another audience: policy.Decision.TokenSubject): whose credential
	// it was, which need not be the caller's. Never the token itself.
	TokenIssuer  string `json:"token_issuer,omitempty"`
	TokenSubject string `json:"token_subject,omitempty"`
}

// MaxTokenName bounds a decision event's TokenIssuer and TokenSubject (a
// trusted issuer may still sign long claims): every denial carries them
// now, into a log line and a queue of events.
const MaxTokenName = 256

// TraceIDOf is the ID of ctx's sampled trace, "" when there is none.
func TraceIDOf(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && sc.IsSampled() {
		return sc.TraceID().String()
	}
	return ""
}

// CustomDecision is one CUSTOM provider's part in a decision.
type CustomDecision struct {
	Provider    string `json:"provider"`
	Query       string `json:"query,omitempty"`
	Result      string `json:"result"` // allow, deny, error, timeout
	InputSHA256 string `json:"input_sha256,omitempty"`
	Error       string `json:"error,omitempty"`
}

func customDecisions(cs []policy.CustomEval) []CustomDecision {
	if len(cs) == 0 {
		return nil
	}
	out := make([]CustomDecision, len(cs))
	for i, c := range cs {
		out[i] = CustomDecision{Provider: c.Provider, Query: c.Query, Result: c.Result, InputSHA256: c.InputSHA256, Error: c.Error}
	}
	return out
}

// AuditSink receives every deny, and every request an AUDIT policy
// matched, in addition to the decision log. It must not block:
// implementations queue and drop (counting) when full.
type AuditSink interface {
	Record(ctx context.Context, ev DecisionEvent)
}

// decisionLogger writes decisions as structured logs and counts them.
type decisionLogger struct {
	now    func() time.Time
	log    *slog.Logger
	sample float64
	audit  AuditSink
	rec    *Recorder // nil: no decision samples
	m      *metrics
}

// sampled reports whether an allow should be logged.
func (d *decisionLogger) sampled() bool {
	switch {
	case d.sample <= 0:
		return false
	case d.sample >= 1:
		return true
	}
	return rand.Float64() < d.sample
}

// record counts the decision and, for denies and sampled allows, builds
// and writes the event. fill is only called when the event is written, so
// unsampled allows cost one counter increment.
func (d *decisionLogger) record(ctx context.Context, outcome policy.Outcome, pol string, reason Reason, fill func(*DecisionEvent)) {
	d.recordCustom(ctx, outcome, pol, reason, nil, fill)
}

// recordCustom is record for a decision in which CUSTOM providers were
// asked: each is counted by provider and result, and the decision is
// logged whatever the allow sample rate, with the providers' queries,
// results and input digests.
func (d *decisionLogger) recordCustom(ctx context.Context, outcome policy.Outcome, pol string, reason Reason, custom []policy.CustomEval, fill func(*DecisionEvent)) {
	d.m.decision(outcome, pol, reason)
	for _, c := range custom {
		d.m.custom.WithLabelValues(c.Provider, c.Result).Inc()
		if c.Result == "error" || c.Result == "timeout" {
			d.log.LogAttrs(ctx, slog.LevelError, "CUSTOM provider failed; the request is denied",
				slog.String("provider", c.Provider), slog.String("query", c.Query),
				slog.String("result", c.Result), slog.String("error", c.Error), slog.String("input_sha256", c.InputSHA256))
		}
	}
	// A decision is logged when it is not a plain allow, or when the
	// allow sample rate picks it; it is sampled into the traffic record
	// on the recorder's own terms.
	logged := outcome != policy.Allow || len(custom) > 0 || d.sampled()
	sampled := d.rec != nil && d.rec.WantSample(outcome == policy.Allow)
	if !logged && !sampled {
		return
	}
	ev := DecisionEvent{Time: d.now(), Decision: outcome.String(), Policy: pol, Rule: -1, ReasonCode: reason, Custom: customDecisions(custom),
		TraceID: TraceIDOf(ctx)}
	fill(&ev)
	if sampled {
		d.rec.AddSample(wireEvent(&ev))
	}
	if !logged {
		return
	}
	level := slog.LevelInfo
	if outcome != policy.Allow {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("listener", ev.Listener),
		slog.String("source", ev.Source),
		slog.String("source_ip", ev.SourceIP),
		slog.String("destination", ev.Destination),
		slog.String("protocol", ev.Protocol),
		slog.String("method", ev.Method),
		slog.String("path", ev.Path),
		slog.String("request_id", ev.RequestID),
		slog.String("decision", ev.Decision),
		slog.String("policy", ev.Policy),
		slog.Int("rule", ev.Rule),
		slog.String("reason", ev.Reason),
		slog.String("reason_code", string(ev.ReasonCode)),
		slog.Uint64("policy_version", ev.PolicyVersion),
	}
	if len(ev.Custom) > 0 {
		attrs = append(attrs, slog.Any("custom", ev.Custom))
	}
	if ev.TraceID != "" {
		attrs = append(attrs, slog.String("trace_id", ev.TraceID))
	}
	if ev.TokenSubject != "" || ev.TokenIssuer != "" {
		attrs = append(attrs, slog.String("token_issuer", ev.TokenIssuer), slog.String("token_subject", ev.TokenSubject))
	}
	d.log.LogAttrs(ctx, level, "decision", attrs...)
	if outcome != policy.Allow && d.audit != nil {
		d.audit.Record(ctx, ev)
	}
}

// audited records a request an AUDIT policy matched: always logged, and
// sent to the audit sink whatever the outcome.
func (d *decisionLogger) audited(ctx context.Context, dec policy.Decision, fill func(*DecisionEvent)) {
	ev := DecisionEvent{Time: d.now(), Decision: dec.Outcome.String(), Policy: dec.Policy, Rule: -1, ReasonCode: reasonOf(dec, true),
		TraceID: TraceIDOf(ctx)}
	fill(&ev)
	ev.AuditPolicy = dec.AuditPolicy
	d.log.LogAttrs(ctx, slog.LevelInfo, "audit",
		slog.String("listener", ev.Listener),
		slog.String("source", ev.Source),
		slog.String("destination", ev.Destination),
		slog.String("method", ev.Method),
		slog.String("path", ev.Path),
		slog.String("decision", ev.Decision),
		slog.String("audit_policy", ev.AuditPolicy),
	)
	if d.audit != nil && dec.Outcome == policy.Allow { // denies were sent by record
		d.audit.Record(ctx, ev)
	}
}

// metrics are the sidecar's Prometheus series. Labels are bounded: listener
// names come from config, policy names from the policy set, reasons from
// the Reason constants; no peer IDs or paths.
type metrics struct {
	decisions         *prometheus.CounterVec
	handshakeFailures *prometheus.CounterVec
	connections       *prometheus.CounterVec
	active            *prometheus.GaugeVec
	upstreamErrors    *prometheus.CounterVec
	revokedClosed     prometheus.Counter
	refused           *prometheus.CounterVec
	policyVersion     prometheus.Gauge
	reloadFailures    *prometheus.CounterVec
	custom            *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_sidecar_decisions_total",
			Help: "Authorization decisions by outcome, deciding policy (namespace/name, empty when none) and reason.",
		}, []string{"decision", "policy", "reason"}),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_sidecar_handshake_failures_total",
			Help: "Failed inbound and outbound TLS handshakes by listener and reason.",
		}, []string{"listener", "reason"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_sidecar_connections_total",
			Help: "Accepted connections by listener and transport (mtls, plaintext).",
		}, []string{"listener", "transport"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "moatless_sidecar_active_connections",
			Help: "Open connections by listener.",
		}, []string{"listener"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_sidecar_upstream_errors_total",
			Help: "Requests or connections that could not be forwarded, by listener.",
		}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_sidecar_connections_refused_total",
			Help: "Inbound connections closed on accept because the listener was at its connection limit.",
		}, []string{"listener"}),
		revokedClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moatless_sidecar_revoked_connections_closed_total",
			Help: "Live connections and requests closed because their identity or token was revoked.",
		}),
		policyVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "moatless_sidecar_policy_version",
			Help: "Policy version in force.",
		}),
		reloadFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_sidecar_reload_failures_total",
			Help: "Failed reloads of identity, policy or revocation files; the previous ones stay in force.",
		}, []string{"what"}),
		custom: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_sidecar_custom_decisions_total",
			Help: "CUSTOM provider (Rego) evaluations by provider and result: allow, deny, error or timeout (the last two deny).",
		}, []string{"provider", "result"}),
	}
	return m.register(reg)
}

// registerSVIDExpiry exports the expiry of the SVID in force, for alerts
// ("rotation stopped"). It reads the identity at scrape time.
func (m *metrics) registerSVIDExpiry(reg prometheus.Registerer, t *tlsIdentity) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "moatless_sidecar_svid_expiry_timestamp_seconds",
		Help: "When the sidecar's X509-SVID in force expires (Unix seconds); 0 without one.",
	}, func() float64 {
		c, err := t.certificate()
		if err != nil || c.Leaf == nil {
			return 0
		}
		return float64(c.Leaf.NotAfter.Unix())
	}))
}

func (m *metrics) register(reg prometheus.Registerer) (*metrics, error) {
	for _, c := range []prometheus.Collector{m.decisions, m.handshakeFailures, m.connections, m.active, m.upstreamErrors, m.refused, m.revokedClosed, m.policyVersion, m.reloadFailures, m.custom} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) decision(o policy.Outcome, pol string, r Reason) {
	m.decisions.WithLabelValues(o.String(), pol, string(r)).Inc()
}

// ReloadFailed counts a failed reload of what ("identity", "policy",
// "revocations"). Drivers that reload files call it.
func (s *Sidecar) ReloadFailed(what string) { s.metrics.reloadFailures.WithLabelValues(what).Inc() }

func destString(ns string, port int) string { return ns + ":" + strconv.Itoa(port) }
