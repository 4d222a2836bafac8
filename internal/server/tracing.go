package server

import (
	"net"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/telemetry"
)

// traced wraps the listener's handler with a server span per request when
// Config.Tracer is set: the parent is the caller's W3C traceparent when
// the caller is a mesh member (a verified client certificate), a link
// otherwise; the name is the route ("POST
// /admin/revocations"), and the attributes are the route, the status,
// the client address and, for an mTLS caller, its SPIFFE ID and risk
// score (the one the watch streams carry; 0 for anyone else). Never the
// path as sent, the query, a header value or a body: admin paths and the
// OAuth endpoints carry token IDs, codes and secrets' names there.
func (s *Server) traced(next http.Handler) http.Handler {
	t := s.tracer
	if t == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attrs := make([]attribute.KeyValue, 2, 4)
		attrs[0], attrs[1] = attribute.String("http.request.method", r.Method), attribute.String("client.address", hostOnly(r.RemoteAddr))
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
		ctx := r.Context()
		caller := trace.SpanContextFromContext(telemetry.Propagator.Extract(ctx, propagation.HeaderCarrier(r.Header)))
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			// verifyConnection checked the chain against our bundle: a
			// mesh member (agent, sidecar, admin certificate), whose
			// trace this request continues.
			ctx = trace.ContextWithRemoteSpanContext(ctx, caller)
			if u := r.TLS.PeerCertificates[0].URIs; len(u) == 1 {
				id := u[0].String()
				attrs = append(attrs, attribute.String("moatless.source.spiffe_id", id), s.riskScores.Attr(id))
			}
		} else if caller.IsValid() {
			// Anyone else (the token service's browsers and clients may
			// be on the internet): a new trace, linked to the caller's,
			// so an outsider can neither pick our trace IDs nor force
			// its requests to be sampled.
			opts = append(opts, trace.WithNewRoot(), trace.WithLinks(trace.Link{SpanContext: caller}))
		}
		if len(attrs) == 2 {
			attrs = append(attrs, telemetry.AttrSourceRisk.Float64(0))
		}
		ctx, span := t.Start(ctx, r.Method, append(opts, trace.WithAttributes(attrs...))...)
		sw := &telemetry.StatusWriter{ResponseWriter: w}
		r = r.WithContext(ctx)
		defer func() {
			// The mux names the route it chose on the request it was given.
			if r.Pattern != "" {
				span.SetName(r.Method + " " + routeOf(r.Pattern))
				span.SetAttributes(attribute.String("http.route", routeOf(r.Pattern)))
			}
			telemetry.EndHTTPSpan(span, sw.Status, false)
		}()
		next.ServeHTTP(sw, r)
	})
}

// routeOf is a mux pattern without its method ("GET /ui/" -> "/ui/").
func routeOf(pattern string) string {
	for i := 0; i < len(pattern); i++ {
		if pattern[i] == '/' {
			return pattern[i:]
		}
	}
	return pattern
}

// hostOnly is an address without its port (semconv's client.address).
func hostOnly(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
