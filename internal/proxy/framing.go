package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
)

// framingGuard reads the HTTP/1.x request heads of a connection served by
// net/http's server with the fast path's parser, as net/http reads them,
// so that net/http's path refuses what the fast path refuses.
//
// net/http's server accepts a request with both Content-Length and
// Transfer-Encoding: chunked, deletes the Content-Length (the handler
// cannot tell) and keeps the connection open. RFC 9112 §6.1 lets a server
// refuse such a request and requires it to close the connection after
// answering it either way: a front hop that framed the message by its
// Content-Length has desynchronized from this one, and whatever follows
// on the connection may be a request smuggled past it. The guard refuses
// it (400, connection closed) as the fast path does, and with it every
// other head the fast path's parser refuses (obs-fold, bare LF, duplicate
// Content-Length, a conflicting absolute-form Host...): which server path
// serves a request (the fast path is off, tracing is on, a caller's
// responses are sampled) must not change what is accepted.
//
// The guard follows the connection's framing: a head, then the body its
// Content-Length gives. A chunked body it does not follow: that request is
// answered and the connection closed after it, as the fast path hands a
// chunked request to net/http for one request only. A head it cannot read
// whole within limit bytes ends the guarding too; the requests after it
// are refused. Once a connection switches protocols (an upgrade, h2c) the
// guard reads frames as heads and refuses them, but net/http's HTTP/1
// handler is never called on it again.
//
// Read is called by net/http's reading goroutine; take by the handler of
// each request, in order. mu orders the two.
type framingGuard struct {
	net.Conn
	limit int

	mu sync.Mutex
	// head is the head being read, and what came after it in the same read;
	// spare holds those bytes while they are fed again.
	head, spare []byte
	// body is how many body bytes of the last head are still to come.
	body int64
	// skip is how many CR or LF net/http may still skip before the next
	// head (after a POST, as net/http's server does).
	skip int
	// heads counts the heads read whole, end included.
	heads int
	// end is the number of the last head the guard framed (1-based); 0
	// while it follows the connection.
	end int
	// refuse is the status to refuse head end with; 0 to answer it and
	// then close.
	refuse int
	// taken counts the requests the handler took.
	taken int
	// refused: the handler refused a request; nothing more is read.
	refused bool
	req     h1Request
}

// guardFraming wraps an HTTP/1.x connection for net/http's server (limit:
// the longest head, as net/http allows it). A TLS connection stays one to
// net/http (Request.TLS is set from its ConnectionState).
func guardFraming(c net.Conn, limit int) net.Conn {
	g := &framingGuard{Conn: c, limit: limit}
	if _, ok := c.(*tls.Conn); ok {
		return framingGuardTLS{g}
	}
	return g
}

// framingGuardTLS is a framingGuard of a TLS connection (see
// handoffTLSConn).
type framingGuardTLS struct{ *framingGuard }

func (c framingGuardTLS) ConnectionState() tls.ConnectionState {
	return c.Conn.(*tls.Conn).ConnectionState()
}

func (g *framingGuard) Read(p []byte) (int, error) {
	g.mu.Lock()
	refused := g.refused
	g.mu.Unlock()
	if refused {
		// net/http's server reads what is left of a refused request's
		// body before it closes; a chunked one may never end.
		return 0, io.EOF
	}
	n, err := g.Conn.Read(p)
	if n > 0 {
		g.mu.Lock()
		g.feed(p[:n])
		g.mu.Unlock()
	}
	return n, err
}

// CloseWrite half-closes the connection when it can, as net/http's server
// does a *net.TCPConn or *tls.Conn before closing one after an answer: the
// client reads the answer and then the end, not a reset for the bytes it
// sent after the request (a request refused, or one after which the
// connection closes, may have had others pipelined behind it).
func (g *framingGuard) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// feed follows the connection's framing over the next bytes read.
func (g *framingGuard) feed(b []byte) {
	for len(b) > 0 && g.end == 0 {
		if g.body > 0 {
			k := min(int64(len(b)), g.body)
			g.body -= k
			b = b[k:]
			continue
		}
		if g.skip > 0 && len(g.head) == 0 {
			if b[0] == '\r' || b[0] == '\n' {
				g.skip--
				b = b[1:]
				continue
			}
			g.skip = 0
		}
		// A head ends at an empty line; look for one only where the new
		// bytes may complete it, so that a head read a byte at a time
		// costs no more than one read at once.
		from := max(len(g.head)-3, 0)
		g.head = append(g.head, b...)
		b = nil
		if !bytes.Contains(g.head[from:], []byte("\n\n")) && !bytes.Contains(g.head[from:], []byte("\n\r\n")) {
			if len(g.head) >= g.limit {
				g.heads++
				g.stop(http.StatusRequestHeaderFieldsTooLarge)
			}
			continue
		}
		v := parseRequestHead(g.head, &g.req)
		if v == h1More && len(g.head) < g.limit {
			continue
		}
		g.heads++
		switch {
		case v == h1More:
			g.stop(http.StatusRequestHeaderFieldsTooLarge)
			continue
		case v == h1Refuse:
			g.stop(g.req.refuse)
			continue
		case g.req.chunked:
			g.stop(0)
			continue
		}
		g.body = g.req.length
		if string(g.head[g.req.method.off:g.req.method.end]) == http.MethodPost {
			g.skip = 4
		}
		// What followed the head in this read is body or the next head;
		// b is consumed before spare is written again.
		g.spare = append(g.spare[:0], g.head[g.req.n:]...)
		b = g.spare
		g.head = g.head[:0]
	}
}

// stop ends the guarding at the last head counted: it is refused with
// status, or answered and the connection then closed (status 0).
func (g *framingGuard) stop(status int) {
	g.end, g.refuse = g.heads, status
	g.head, g.spare = nil, nil
}

// take tells the handler of the connection's next request whether to
// refuse it (a status) and whether to close the connection after it.
// After a refusal the connection reads nothing more.
func (g *framingGuard) take() (refuse int, closeAfter bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.taken++
	switch {
	case g.end == 0 && g.taken <= g.heads, g.taken < g.end:
		return 0, false
	case g.taken == g.end:
		refuse, closeAfter = g.refuse, true
	default:
		// A request the guard did not see whole: net/http read a head
		// the parser has not.
		refuse, closeAfter = http.StatusBadRequest, true
	}
	g.refused = refuse != 0
	return refuse, closeAfter
}

// framingListener guards every connection it accepts (guardFraming).
type framingListener struct {
	net.Listener
	limit int
}

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return guardFraming(c, l.limit), nil
}
