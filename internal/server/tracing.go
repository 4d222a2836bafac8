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
// Config.Tracer is set: the parent is the caller's W3C traceparent (a
// sidecar's, an agent's, a CLI's), the name is the route ("POST
// /admin/revocations"), and the attributes are the route, the status,
// the client address and, for an mTLS caller, its SPIFFE ID. Never the
// path as sent, the query, a header value or a body: admin paths and the
// OAuth endpoints carry token IDs, codes and secrets' names there.
func (s *Server) traced(next http.Handler) http.Handler {
	t := s.tracer
	if t == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := telemetry.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		attrs := []attribute.KeyValue{attribute.String("http.request.method", r.Method), attribute.String("client.address", hostOnly(r.RemoteAddr))}
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && len(r.TLS.PeerCertificates[0].URIs) == 1 {
			// The handshake verified the chain; the ID is the caller's
			// claim as the CA issued it (handlers still authorize it).
			attrs = append(attrs, attribute.String("moatless.source.spiffe_id", r.TLS.PeerCertificates[0].URIs[0].String()))
		}
		ctx, span := t.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
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
