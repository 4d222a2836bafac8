package workload

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/attest"
	"github.com/moatless/moatless/internal/telemetry"
)

// Tracing (Config.Tracer): one server span per unary call, and per answer
// a stream sends (the first, and each rotation or bundle change after
// it), or per stream ending in an error. A stream re-checked with nothing
// new to send makes no span. Spans carry what a security team needs to
// follow an identity being handed out: the caller's process (pid, uid),
// the attestation result and how many selectors it yielded, the SPIFFE
// IDs served or validated with the highest risk score among them
// (Config.Risk), the gRPC status. Never a key, an SVID, a
// token, a claim or the text of a token validation error (it may quote
// the token); selectors are counted, not listed.
//
// A workload is a local process, not a mesh peer: a traceparent it sends
// in its metadata never parents our span (it could pick our trace IDs or
// force sampling). The span starts a new trace linked to the caller's.

// Span attribute keys of the Workload API.
const (
	attrRPCSystem   = attribute.Key("rpc.system")
	attrRPCService  = attribute.Key("rpc.service")
	attrRPCMethod   = attribute.Key("rpc.method")
	attrRPCStatus   = attribute.Key("rpc.grpc.status_code")
	attrCallerPID   = attribute.Key("moatless.workload.caller.pid")
	attrCallerUID   = attribute.Key("moatless.workload.caller.uid")
	attrAttestation = attribute.Key("moatless.workload.attestation")
	attrSelectors   = attribute.Key("moatless.workload.selectors")
	attrSPIFFEIDs   = attribute.Key("moatless.workload.spiffe_ids")
	attrStreamIndex = attribute.Key("moatless.workload.stream.update")
	attrAudiences   = attribute.Key("moatless.workload.jwt.audiences")
	attrJWTValid    = attribute.Key("moatless.workload.jwt.valid")
	attrTrustDomain = attribute.Key("moatless.workload.trust_domain")
	attrRisk        = attribute.Key("moatless.workload.risk_score")
)

// serviceName is the Workload API's gRPC service (workload.proto has no
// package).
const serviceName = "SpiffeWorkloadAPI"

// call collects one span's timing and attributes; the span is made at
// end. A nil *call (tracing off) does nothing, so the call paths cost
// nothing more without a Tracer.
type call struct {
	tr     trace.Tracer
	risk   *telemetry.RiskScores
	method string
	start  time.Time
	link   trace.SpanContext
	attrs  []attribute.KeyValue
}

// startCall begins the span of a call (update is the stream answer's
// index, -1 for a unary call); nil without a Tracer.
func (s *Server) startCall(ctx context.Context, method string, update int) *call {
	if s.cfg.Tracer == nil {
		return nil
	}
	c := &call{tr: s.cfg.Tracer, risk: s.cfg.Risk, method: method, start: time.Now(), attrs: make([]attribute.KeyValue, 0, 12)}
	c.attrs = append(c.attrs, attrRPCSystem.String("grpc"), attrRPCService.String(serviceName), attrRPCMethod.String(method))
	if update >= 0 {
		c.attrs = append(c.attrs, attrStreamIndex.Int(update))
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		c.link = trace.SpanContextFromContext(telemetry.Propagator.Extract(ctx, metadataCarrier(md)))
	}
	return c
}

// next is the call for the stream's next answer, linked as c is.
func (c *call) next(update int) *call {
	if c == nil {
		return nil
	}
	n := &call{tr: c.tr, risk: c.risk, method: c.method, start: time.Now(), link: c.link, attrs: make([]attribute.KeyValue, 0, 12)}
	n.attrs = append(n.attrs, c.attrs[:3]...) // rpc.system, rpc.service, rpc.method
	n.attrs = append(n.attrs, attrStreamIndex.Int(update))
	return n
}

func (c *call) set(kv ...attribute.KeyValue) {
	if c != nil {
		c.attrs = append(c.attrs, kv...)
	}
}

// attested records the caller's process and its attestation: err nil and
// the number of selectors, or the failure (PermissionDenied; a call
// refused before attestation, without the security header say, records
// none).
func (c *call) attested(p attest.Peer, selectors int, err error) {
	if c == nil {
		return
	}
	if p.PID != 0 {
		c.attrs = append(c.attrs, attrCallerPID.Int(int(p.PID)), attrCallerUID.Int64(int64(p.UID)))
	}
	if err != nil {
		if status.Code(err) == grpccodes.PermissionDenied {
			c.attrs = append(c.attrs, attrAttestation.String("failure"))
		}
		return
	}
	c.attrs = append(c.attrs, attrAttestation.String("success"), attrSelectors.Int(selectors))
}

// served records the SPIFFE IDs an answer carries.
func (c *call) served(ids []*Identity) {
	if c == nil {
		return
	}
	l := make([]string, len(ids))
	for i, id := range ids {
		l[i] = id.SPIFFEID.String()
	}
	c.named(l...)
}

// named records SPIFFE IDs a call served or validated, and the highest
// risk score among them (0 when the server holds none against them).
func (c *call) named(ids ...string) {
	if c == nil {
		return
	}
	risk := 0.0
	for _, id := range ids {
		risk = max(risk, c.risk.Score(id))
	}
	c.attrs = append(c.attrs, attrSPIFFEIDs.StringSlice(ids), attrRisk.Float64(risk))
}

// end makes the span, with err's gRPC status (its code only: a message
// may quote what the caller sent).
func (c *call) end(err error) {
	if c == nil {
		return
	}
	code := status.Code(err)
	c.attrs = append(c.attrs, attrRPCStatus.Int(int(code)))
	opts := []trace.SpanStartOption{trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(c.start),
		trace.WithAttributes(c.attrs...)}
	if c.link.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: c.link, Attributes: []attribute.KeyValue{attribute.String("moatless.link", "caller")}}))
	}
	_, span := c.tr.Start(context.Background(), serviceName+"/"+c.method, opts...)
	if err != nil {
		span.SetStatus(otelcodes.Error, code.String())
	}
	span.End()
}

// metadataCarrier reads W3C trace context from gRPC metadata.
type metadataCarrier metadata.MD

func (m metadataCarrier) Get(key string) string {
	if v := metadata.MD(m).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (m metadataCarrier) Set(string, string) {}

func (m metadataCarrier) Keys() []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

var _ propagation.TextMapCarrier = metadataCarrier{}
