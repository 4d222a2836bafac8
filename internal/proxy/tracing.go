package proxy

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
)

// Tracing (Config.Tracer): one span per HTTP request on each listener.
// The inbound span is the server side of the caller's call: its parent is
// the W3C traceparent an mTLS caller sent, and the app gets a traceparent
// naming the inbound span, so its own spans hang under the decision. The
// outbound span is the client side of the app's call, and the upstream
// sidecar gets a traceparent naming it.
//
// Spans carry the security story (who called whom, what was decided by
// which policy and rule, how the caller authenticated) and never a
// credential: no header value, no query string (tokens travel there), no
// claim of a token.

// traceContext is the only context read from and written to requests.
var traceContext = telemetry.Propagator

// Span attribute keys of the sidecar.
const (
	attrSource        = attribute.Key("moatless.source.spiffe_id")
	attrDestination   = attribute.Key("moatless.destination.spiffe_id")
	attrListener      = attribute.Key("moatless.listener")
	attrDecision      = attribute.Key("moatless.decision")
	attrReason        = attribute.Key("moatless.decision.reason")
	attrPolicy        = attribute.Key("moatless.policy")
	attrRule          = attribute.Key("moatless.policy.rule")
	attrPolicyVersion = attribute.Key("moatless.policy.version")
	attrAuditPolicy   = attribute.Key("moatless.policy.audit")
	attrPeerAuthn     = attribute.Key("moatless.authn.peer")
	attrTokenAuthn    = attribute.Key("moatless.authn.token")
)

// startSpan starts a span for r and wraps w to note the status. The
// caller's trace context is the parent when the caller is trusted (a
// verified mTLS peer, or the local app on an outbound listener); from a
// plaintext caller (PERMISSIVE or DISABLE mTLS) the span starts a new
// trace linked to the caller's, so an outsider can neither choose the
// mesh's trace IDs nor force sampling. Only called with a Tracer: with
// tracing off the request path builds no attribute at all.
func (s *Sidecar) startSpan(w http.ResponseWriter, r *http.Request, name string, kind trace.SpanKind, trusted bool, attrs ...attribute.KeyValue) (*http.Request, trace.Span, *telemetry.StatusWriter) {
	ctx, span := s.startSpanOf(r.Context(), r.Header, r.Method, r.URL.Path, name, kind, trusted, attrs...)
	return r.WithContext(ctx), span, &telemetry.StatusWriter{ResponseWriter: w}
}

// startSpanOf is startSpan for a request given by its header, method and
// path (as net/http's URL.Path: decoded): both server paths start their
// spans with it, so that they cannot differ in parent, links, name or
// attributes.
func (s *Sidecar) startSpanOf(ctx context.Context, h http.Header, method, path, name string, kind trace.SpanKind, trusted bool, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	caller := trace.SpanContextFromContext(traceContext.Extract(ctx, propagation.HeaderCarrier(h)))
	opts := []trace.SpanStartOption{trace.WithSpanKind(kind)}
	switch {
	case trusted:
		ctx = trace.ContextWithRemoteSpanContext(ctx, caller)
	case caller.IsValid():
		opts = append(opts, trace.WithNewRoot(), trace.WithLinks(trace.Link{SpanContext: caller}))
	}
	attrs = append(attrs, attribute.String("http.request.method", method), attribute.String("url.path", path))
	return s.cfg.Tracer.Start(ctx, name, append(opts, trace.WithAttributes(attrs...))...)
}

// spanAttrs are the attributes an inbound span starts with.
func (ib *inbound) spanAttrs(info *connInfo) []attribute.KeyValue {
	return []attribute.KeyValue{attrListener.String(ib.name), attrSource.String(info.peer), ib.s.cfg.Risk.Attr(info.peer),
		attrDestination.String(prefixed(info.own)), attribute.String("source.address", info.srcIPStr)}
}

// spanAttrs are the attributes an outbound span starts with.
func (ob *outbound) spanAttrs() []attribute.KeyValue {
	var own string
	if id, err := ob.s.tls.ownID(); err == nil {
		own = id.String()
	}
	return []attribute.KeyValue{attrListener.String(ob.name), attrDestination.String(ob.cfg.ID.String()), attrSource.String(own), ob.s.cfg.Risk.Attr(own)}
}

// traced notes on an inbound span what was decided, and the path as
// normalized and forwarded.
func (r *decidedRequest) traced(span trace.Span, info *connInfo) {
	a := decisionAttrs(r.dec, r.loaded, r.version, info, r.auth)
	if p := decodedPath(r.np.Path()); p != "" {
		a = append(a, attribute.String("url.path", p))
	}
	// One call: the span's attribute list grows once, not twice.
	span.SetAttributes(a...)
}

// prefixed is a principal ("td/ns/x/sa/y") as a SPIFFE ID, "" for none.
func prefixed(principal string) string {
	if principal == "" {
		return ""
	}
	return "spiffe://" + principal
}

// propagate writes the span's context into the headers forwarded, in
// place of whatever trace context the sender put there.
func propagate(ctx context.Context, h http.Header) {
	h.Del("Traceparent")
	h.Del("Tracestate")
	traceContext.Inject(ctx, propagation.HeaderCarrier(h))
}

// decisionAttrs are a decision's span attributes.
func decisionAttrs(dec policy.Decision, loaded bool, version uint64, info *connInfo, auth *policy.Auth) []attribute.KeyValue {
	peer, token := "plaintext", "none"
	if info.peer != "" {
		peer = "mtls"
	}
	switch {
	case dec.Outcome == policy.Unauthenticated:
		token = "invalid"
	case auth != nil:
		token = "valid"
	}
	a := make([]attribute.KeyValue, 0, 9) // with room for traced's url.path
	a = append(a,
		attrDecision.String(dec.Outcome.String()), attrReason.String(string(reasonOf(dec, loaded))),
		attrPolicyVersion.Int64(int64(min(version, 1<<62))), attrPeerAuthn.String(peer), attrTokenAuthn.String(token))
	if dec.Policy != "" {
		a = append(a, attrPolicy.String(dec.Policy), attrRule.Int(dec.Rule))
	}
	if dec.Audit && dec.AuditPolicy != "" {
		a = append(a, attrAuditPolicy.String(dec.AuditPolicy))
	}
	return a
}
