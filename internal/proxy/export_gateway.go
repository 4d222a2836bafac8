package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"
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
// connection that negotiated h2. headTimeout is the server's
// ReadHeaderTimeout: the guard holds each head back until it is whole, and
// bounds reading it from its first byte itself.
func GuardFraming(c net.Conn, limit int, headTimeout time.Duration) net.Conn {
	return guardFraming(c, limit, headTimeout)
}

// FramingContext is net/http's Server.ConnContext for a server whose
// connections GuardFraming wrapped: it notes the guard for
// FramingVerdict.
func FramingContext(ctx context.Context, c net.Conn) context.Context {
	if rc, ok := c.(replayGuardTLS); ok {
		return context.WithValue(ctx, handoffKey{}, rc.framingGuard)
	}
	return markHandoff(ctx, c)
}

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

// H1Head is an HTTP/1.1 request head of the shape a fast path serves, as
// the sidecar's strict parser (the framing guard's) read it.
type H1Head struct {
	// N is the length of the head, its final empty line included.
	N int
	// Method, Target and Host are the request line's and the Host
	// field's (net/http's Request.Host for an origin-form target).
	Method, Target, Host string
	// Header is the fields as net/http's server reads them (Host
	// removed, Pragma: no-cache also read as Cache-Control).
	Header http.Header
	// ContentLength is the body's length (0 without Content-Length).
	ContentLength int64
	// Close: the client asked to close after the answer.
	Close bool
}

// H1Verdict is what ParseH1Head concluded.
type H1Verdict uint8

const (
	// H1More: no complete head yet (the caller bounds how long it reads).
	H1More H1Verdict = iota
	// H1Serve: an HTTP/1.1 head with an origin-form target, a
	// Content-Length or no body, and no Expect.
	H1Serve
	// H1Other: anything else — another version, a chunked body, Expect,
	// CONNECT, another target form, or a head the parser refuses. Give
	// the connection to net/http's server through GuardFramingReplay,
	// which answers it as it answers every connection.
	H1Other
)

// ParseH1Head reads the request head at the start of b.
func ParseH1Head(b []byte) (H1Head, H1Verdict) {
	var p H1Parser
	return p.Parse(b)
}

// H1Parser is ParseH1Head with its scratch space (where the field lines
// are, read before the Header is built) kept from head to head: one per
// connection saves the slice grown anew for every request.
type H1Parser struct{ req h1Request }

// Parse reads the request head at the start of b, as ParseH1Head does.
// Nothing it returns refers to the scratch space.
func (p *H1Parser) Parse(b []byte) (H1Head, H1Verdict) {
	req := &p.req
	defer func() {
		if cap(req.fields) > 64 {
			req.fields = nil // a head of many fields is not kept
		}
	}()
	switch parseRequestHead(b, req) {
	case h1More:
		return H1Head{}, H1More
	case h1OK:
	default:
		return H1Head{}, H1Other
	}
	if b[req.target.off] != '/' {
		return H1Head{}, H1Other
	}
	head := string(b[:req.n])
	return H1Head{
		N: req.n, Method: head[req.method.off:req.method.end], Target: head[req.target.off:req.target.end],
		Host: head[req.host.off:req.host.end], Header: newHeader(head, req.fields),
		ContentLength: req.length, Close: req.close,
	}, H1Serve
}

// GuardFramingReplay is GuardFraming for a TLS connection a fast path
// read from and leaves to net/http's server: rest, what it read and did
// not serve, is read again first, through the guard. Use FramingContext
// as the server's ConnContext.
func GuardFramingReplay(tc *tls.Conn, rest []byte, limit int) net.Conn {
	return replayGuardTLS{&framingGuard{Conn: &handoffConn{Conn: tc, rest: rest}, limit: limit}, tc}
}

// replayGuardTLS is the guard of a TLS connection whose first bytes are
// replayed (see framingGuardTLS).
type replayGuardTLS struct {
	*framingGuard
	tc *tls.Conn
}

func (c replayGuardTLS) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

func (c replayGuardTLS) CloseWrite() error { return c.tc.CloseWrite() }

// AppendStatusLine appends an HTTP/1.1 status line as net/http's server
// writes it ("HTTP/1.1 299 status code 299" for a code without text),
// for the gateway's fast path.
func AppendStatusLine(b []byte, code int) []byte { return appendStatusLine(b, code) }

// PaddedHeaderValue reports whether a field value of h starts or ends
// with a space or a tab: an HTTP/2 request the sidecar refuses (400) as
// malformed (RFC 9113 §8.2.1), since policy would match the padded value
// while an HTTP/1.1 hop after it strips the padding.
func PaddedHeaderValue(h http.Header) bool { return paddedValue(h) }

// WithRawSyscalls wraps an accepted TCP or unix socket connection so that
// its reads and writes make their system calls without handing the
// goroutine's P to another thread (see rawConn: on Linux, outside the race
// detector); any other connection, or any connection elsewhere, comes
// back as it is. Deadlines, Close and CloseWrite act on the same socket.
func WithRawSyscalls(c net.Conn) net.Conn { return withRawSyscalls(c) }
