package gateway

import (
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
)

// Tracing (Options.Tracer). The gateway is where the internet's requests
// come in, so a traceparent from outside is not trusted as a parent: an
// attacker could pick trace IDs to collide with ours or force sampling of
// everything it sends. Each request starts a new trace; the caller's
// context, when it sent a valid one, is kept as a span link, so a
// browser's or a partner's trace can still be joined to ours. The span's
// own context is what the upstream sidecar receives.

// startSpan starts the request's span, a new root linked to the caller's
// context. Only called with a Tracer.
func (g *Gateway) startSpan(r *http.Request, rc *reqCtx) *http.Request {
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer), trace.WithNewRoot(),
		trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path),
			attribute.String("moatless.listener", "gateway"), attribute.String("moatless.request_id", rc.id), telemetry.AttrSourceRisk.Float64(0))}
	if sc := trace.SpanContextFromContext(telemetry.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("moatless.link", "caller")}}))
	}
	ctx, span := g.opts.Tracer.Start(r.Context(), "gateway", opts...)
	rc.span = span
	return r.WithContext(ctx)
}

// traceDecision puts the policy decision on the span, with the risk
// score risk holds for the subject of the request's verified token (a
// JWT-SVID's subject is the caller's SPIFFE ID; any other subject has
// none, and the span keeps 0).
func (rc *reqCtx) traceDecision(dec policy.Decision, loaded bool, auth *policy.Auth, risk *telemetry.RiskScores) {
	if rc.span == nil {
		return
	}
	if auth != nil {
		if sub, _ := auth.Claims["sub"].(string); sub != "" {
			rc.span.SetAttributes(risk.Attr(sub))
		}
	}
	rc.span.SetAttributes(attribute.String("moatless.decision", dec.Outcome.String()), attribute.String("moatless.decision.reason", reasonCode(dec, loaded)))
	if dec.Policy != "" {
		rc.span.SetAttributes(attribute.String("moatless.policy", dec.Policy), attribute.Int("moatless.policy.rule", dec.Rule))
	}
	token := "none"
	switch {
	case dec.Outcome == policy.Unauthenticated:
		token = "invalid"
	case rc.identity != "":
		token = "valid"
	}
	rc.span.SetAttributes(attribute.String("moatless.authn.token", token))
}

// endSpan finishes the request's span with what the access log says.
func (rc *reqCtx) endSpan(status int) {
	if rc.span == nil {
		return
	}
	attrs := []attribute.KeyValue{attribute.String("client.address", addrString(rc.client))}
	if rc.route != nil {
		attrs = append(attrs, attribute.String("http.route", rc.route.name))
		rc.span.SetName("gateway " + rc.route.name)
	}
	if rc.reason != "" {
		attrs = append(attrs, attribute.String("moatless.block_reason", rc.reason))
	}
	if rc.identity != "" {
		attrs = append(attrs, attribute.String("moatless.source.principal", rc.identity))
	}
	rc.span.SetAttributes(attrs...)
	telemetry.EndHTTPSpan(rc.span, status, false)
}

// propagate hands the upstream the span's context in place of whatever
// the caller sent.
func propagate(r *http.Request) {
	h := r.Header
	h.Del("Traceparent")
	h.Del("Tracestate")
	telemetry.Propagator.Inject(r.Context(), propagation.HeaderCarrier(h))
}
