package proxy

import (
	"context"
	"net"
	"net/http"
)

// This file exports the sidecar's HTTP/1.x framing guard for the gateway,
// so that both edges refuse the same request heads with the same parser.

// GuardFraming wraps an HTTP/1.x connection that net/http's server is to
// read (limit: the longest head it allows, MaxHeaderBytes + 4096) so that
// every request head on it is also read by the sidecar's strict parser
// (see framingGuard): a request with both Content-Length and
// Transfer-Encoding, obs-fold, a bare LF, a duplicate Content-Length...
// is then refused (FramingVerdict) and the connection closed, where
// net/http alone would serve it and keep the connection. A TLS
// connection stays one to net/http (Request.TLS is set). Do not wrap a
// connection that negotiated h2.
func GuardFraming(c net.Conn, limit int) net.Conn { return guardFraming(c, limit) }

// FramingContext is net/http's Server.ConnContext for a server whose
// connections GuardFraming wrapped: it notes the guard for
// FramingVerdict.
func FramingContext(ctx context.Context, c net.Conn) context.Context { return markHandoff(ctx, c) }

// FramingVerdict is what the guard of r's connection says about r; call
// it once per request, first, for every HTTP/1.x request in the order
// they come (net/http's server calls handlers in order on one
// connection). status is the status to refuse r with (400, 431), 0 to
// serve it; closeAfter: the connection must close after the answer (set
// "Connection: close"). A request on a connection without a guard (HTTP/2,
// a server without FramingContext) gets 0, false.
func FramingVerdict(r *http.Request) (status int, closeAfter bool) {
	if r.ProtoMajor != 1 {
		return 0, false
	}
	switch v := r.Context().Value(handoffKey{}).(type) {
	case bool:
		return 0, v
	case *framingGuard:
		return v.take()
	}
	return 0, false
}
