package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
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
// net/http answers some heads itself, before any handler runs: a
// Transfer-Encoding other than one "chunked" (501), a head over its limit
// (431), a field name or value it cannot read (400), an Expect other
// than 100-continue (417), a version after HTTP/1.x (505; ownAnswer).
// Those bare answers
// carry none of the role's response headers (the gateway's HSTS, CSP...)
// and leave no access-log line or metric. So that every head the parser
// refuses reaches the handler, the guard holds a head's bytes back from
// net/http until it has read the head whole: a head it frames is then
// passed on as it came; one it refuses is replaced by a stand-in
// (standIn: the request line and Host, or "GET /", no body, Connection:
// close) that net/http reads without complaint, and take tells the
// handler to refuse it. net/http never sees the refused head, nor
// anything after it on the connection.
//
// The guard follows the connection's framing: a head, then the body its
// Content-Length gives. A chunked body it does not follow: that request is
// answered and the connection closed after it, as the fast path hands a
// chunked request to net/http for one request only. A head it cannot read
// whole within limit bytes ends the guarding too; the requests after it
// are refused. A head that may switch protocols (an Upgrade field,
// CONNECT, a version other than HTTP/1.x such as h2c's preface) opens the
// connection: the guard holds nothing back after it, since what follows
// may be a WebSocket's or HTTP/2's frames, which no head ends. If the
// protocol does switch, the guard reads frames as heads and refuses them,
// but net/http's HTTP/1 handler is never called on it again; if it does
// not, the heads after it are still refused by the handler (take), only
// net/http's own bare answers are no longer kept from them.
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
	// open: a head that may switch protocols was read; nothing is held
	// back from net/http any more (see the type's comment).
	open bool
	// drop: a refused head went to net/http as its stand-in; nothing
	// read after it is passed on.
	drop bool
	// parsed is the copy of head the parser reads (it canonicalizes
	// field names in place; net/http gets the head as it came).
	parsed []byte
	// headTimeout bounds reading one held head from its first byte (the
	// server's ReadHeaderTimeout; 0: none). readDeadline is the read
	// deadline net/http set, headBy the held head's (zero: none); the
	// connection's is the earlier of the two.
	headTimeout          time.Duration
	readDeadline, headBy time.Time
	// out[outOff:] is what net/http may read next, of what the guard held
	// back. queue: feed is to queue what it passes on in out (it is read
	// in place otherwise).
	out    []byte
	outOff int
	queue  bool
	req    h1Request
}

// guardFraming wraps an HTTP/1.x connection for net/http's server (limit:
// the longest head, as net/http allows it; headTimeout: its
// ReadHeaderTimeout). A TLS connection stays one to net/http (Request.TLS
// is set from its ConnectionState).
func guardFraming(c net.Conn, limit int, headTimeout time.Duration) net.Conn {
	g := &framingGuard{Conn: c, limit: limit, headTimeout: headTimeout}
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
	for {
		switch {
		case g.refused:
			// net/http's server reads what is left of a refused request's
			// body before it closes; a chunked one may never end.
			g.mu.Unlock()
			return 0, io.EOF
		case g.outOff < len(g.out):
			n := copy(p, g.out[g.outOff:])
			g.outOff += n
			if g.outOff == len(g.out) {
				g.out, g.outOff = g.out[:0], 0
			}
			g.mu.Unlock()
			return n, nil
		}
		// Body bytes, and everything once the guard holds nothing back,
		// go to net/http as they are read; head bytes wait in g.out until
		// the head is whole.
		hold := !g.open && (g.end == 0 || g.drop)
		if hold && g.body >= int64(len(p)) {
			// This read is all body: net/http reads it in place.
			hold = false
		}
		g.mu.Unlock()
		n, err := g.Conn.Read(p)
		g.mu.Lock()
		if n > 0 {
			g.queue = hold
			g.feed(p[:n])
			g.queue = false
			if hold {
				g.timeHead()
			}
		}
		if !hold {
			g.mu.Unlock()
			return n, err
		}
		if err != nil && g.outOff == len(g.out) {
			// The connection ended, or a deadline passed, inside a head:
			// net/http gets the error alone. A head cut short is not
			// answered; after a deadline (net/http's server wakes its
			// background read with one) the head is still held, and the
			// next read goes on with it.
			g.mu.Unlock()
			return 0, err
		}
	}
}

// timeHead starts the held head's deadline at its first byte, and ends it
// once the head is passed on. net/http bounds reading a head with
// ReadHeaderTimeout from the head's first byte; on a kept-alive
// connection it waits for that byte under IdleTimeout alone, and a held
// head shows it no byte until it is whole: without its own deadline, a
// client sending a head a byte at a time would have IdleTimeout for it
// (slowloris).
func (g *framingGuard) timeHead() {
	switch {
	case g.headTimeout <= 0:
		return
	case len(g.head) > 0 && g.end == 0 && g.headBy.IsZero():
		g.headBy = time.Now().Add(g.headTimeout)
	case (len(g.head) == 0 || g.end != 0) && !g.headBy.IsZero():
		g.headBy = time.Time{}
	default:
		return
	}
	g.Conn.SetReadDeadline(g.deadline())
}

// deadline is the connection's read deadline: net/http's, or the held
// head's if it is earlier.
func (g *framingGuard) deadline() time.Time {
	if !g.headBy.IsZero() && (g.readDeadline.IsZero() || g.headBy.Before(g.readDeadline)) {
		return g.headBy
	}
	return g.readDeadline
}

// SetReadDeadline is net/http's read deadline; the held head's may be
// earlier (timeHead).
func (g *framingGuard) SetReadDeadline(t time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.readDeadline = t
	return g.Conn.SetReadDeadline(g.deadline())
}

func (g *framingGuard) SetDeadline(t time.Time) error {
	if err := g.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return g.SetReadDeadline(t)
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

// feed follows the connection's framing over the next bytes read. It
// queues in g.out, in order, the bytes net/http may read: a body as it
// comes, a head once it is whole (a refused one as its stand-in), and
// everything once the guard holds nothing back.
func (g *framingGuard) feed(b []byte) {
	for len(b) > 0 && g.end == 0 {
		if g.body > 0 {
			k := min(int64(len(b)), g.body)
			g.body -= k
			g.pass(b[:k])
			b = b[k:]
			continue
		}
		if g.skip > 0 && len(g.head) == 0 {
			if b[0] == '\r' || b[0] == '\n' {
				g.skip--
				g.pass(b[:1])
				b = b[1:]
				continue
			}
			g.skip = 0
		}
		if g.open {
			// Nothing held back: net/http reads the head as it comes.
			g.pass(b)
		}
		// A head ends at an empty line; look for one only where the new
		// bytes may complete it, so that a head read a byte at a time
		// costs no more than one read at once.
		from := max(len(g.head)-3, 0)
		g.head = append(g.head, b...)
		b = nil
		end := headEnd(g.head, from)
		if end < 0 && len(g.head) >= g.limit || end > g.limit {
			// Over the limit, whether the head's end came in the same
			// read or not: how the reads split a stream does not change
			// the verdict.
			g.heads++
			g.stop(http.StatusRequestHeaderFieldsTooLarge)
			continue
		}
		if end < 0 {
			continue
		}
		g.parsed = append(g.parsed[:0], g.head...)
		v := parseRequestHead(g.parsed, &g.req)
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
		case v == h1Handoff && !g.open && ownAnswer(g.parsed, &g.req) != 0:
			g.stop(ownAnswer(g.parsed, &g.req))
			continue
		case g.req.chunked:
			if !g.open {
				g.pass(g.head)
			}
			g.stop(0)
			continue
		}
		if g.open {
			// What followed the head was passed on with it, and is fed
			// again below: take it back.
			if g.queue {
				g.out = g.out[:len(g.out)-(len(g.head)-g.req.n)]
			}
		} else {
			g.pass(g.head[:g.req.n])
			g.open = switchesProtocols(g.parsed, &g.req)
		}
		g.body = g.req.length
		if string(g.parsed[g.req.method.off:g.req.method.end]) == http.MethodPost {
			g.skip = 4
		}
		// What followed the head in this read is body or the next head;
		// b is consumed before spare is written again.
		g.spare = append(g.spare[:0], g.head[g.req.n:]...)
		b = g.spare
		g.head = g.head[:0]
	}
	if !g.drop {
		g.pass(b)
	}
}

// pass queues b for net/http when feed is to (g.queue).
func (g *framingGuard) pass(b []byte) {
	if g.queue {
		g.out = append(g.out, b...)
	}
}

// headEnd is where the first empty line of head ends (after its LF),
// looking from offset from on; -1 when head has none there.
func headEnd(head []byte, from int) int {
	e := -1
	if i := bytes.Index(head[from:], []byte("\n\n")); i >= 0 {
		e = from + i + 2
	}
	if i := bytes.Index(head[from:], []byte("\n\r\n")); i >= 0 && (e < 0 || from+i+3 < e) {
		e = from + i + 3
	}
	return e
}

// ownAnswer is the status net/http's server would answer the head b (read
// into req, which the parser hands off) with itself, before any handler
// runs, 0 for none: 505 for a version other than HTTP/1.x (but h2c's
// "PRI * HTTP/2.0" preface), 417 for an Expect without 100-continue. The
// guard refuses them itself, so that the role answers them.
func ownAnswer(b []byte, req *h1Request) int {
	eol := bytes.IndexByte(b, '\n')
	proto := string(bytes.TrimSuffix(b[req.target.end+1:eol], []byte("\r")))
	if major, minor, ok := http.ParseHTTPVersion(proto); ok && major != 1 &&
		!(major == 2 && minor == 0 && string(b[req.method.off:req.method.end]) == "PRI" && string(b[req.target.off:req.target.end]) == "*") {
		return http.StatusHTTPVersionNotSupported
	}
	if req.expect {
		for _, f := range req.fields {
			if isField(b, f, "Expect") {
				// net/http reads the first Expect field only, and
				// 100-continue anywhere in it between spaces, tabs or
				// commas (its hasToken).
				if v := b[f.value.off:f.value.end]; len(v) > 0 && !boundedToken(v, "100-continue") {
					return http.StatusExpectationFailed
				}
				break
			}
		}
	}
	return 0
}

// boundedToken reports whether tok appears in v (ASCII case-insensitively)
// with a space, tab, comma or either end on each side: net/http's
// hasToken, which decides whether a request expects 100-continue.
func boundedToken(v []byte, tok string) bool {
	bound := func(c byte) bool { return c == ' ' || c == ',' || c == '\t' }
	for sp := 0; sp+len(tok) <= len(v); sp++ {
		if sp > 0 && !bound(v[sp-1]) || sp+len(tok) < len(v) && !bound(v[sp+len(tok)]) {
			continue
		}
		if asciiEqualFold(v[sp:sp+len(tok)], tok) {
			return true
		}
	}
	return false
}

// switchesProtocols reports whether the request head b (read into req)
// may switch the connection to another protocol: an Upgrade field,
// CONNECT, or a version other than HTTP/1.0 and HTTP/1.1 (h2c's "PRI *
// HTTP/2.0" preface).
func switchesProtocols(b []byte, req *h1Request) bool {
	if string(b[req.method.off:req.method.end]) == http.MethodConnect {
		return true
	}
	if !req.http11 && !bytes.HasPrefix(b[req.target.end:], []byte(" HTTP/1.0\r\n")) {
		return true
	}
	for _, f := range req.fields {
		if isField(b, f, "Upgrade") {
			return true
		}
	}
	return false
}

// stop ends the guarding at the last head counted: it is refused with
// status, or answered and the connection then closed (status 0).
// A refused head still held back is replaced, for net/http, by its
// stand-in; what followed it is not passed on.
func (g *framingGuard) stop(status int) {
	if status != 0 && !g.open {
		g.pass(standIn(g.head))
		g.drop = true
	}
	g.end, g.refuse = g.heads, status
	g.head, g.spare = nil, nil
}

// standIn is the head net/http reads in place of the refused head b, so
// that the handler runs and refuses it with the role's headers, log line
// and metric: b's request line and Host field when the parser (and so
// net/http) accepts them as they are, else "GET /" and no Host; no other
// field, no body, "Connection: close". b may be cut short (a head over
// the limit) or not a head at all.
func standIn(b []byte) []byte {
	// Only the head: what followed it in the same read is not read.
	if i := bytes.Index(b, []byte("\n\n")); i >= 0 {
		b = b[:i+1]
	}
	if i := bytes.Index(b, []byte("\n\r\n")); i >= 0 {
		b = b[:i+1]
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	var host []byte
	for rest := b[len(line):]; len(rest) > 0; {
		var l []byte
		l, rest, _ = bytes.Cut(rest, []byte("\n"))
		if name, v, ok := bytes.Cut(l, []byte(":")); ok && asciiEqualFold(name, "Host") {
			host = bytes.Trim(bytes.TrimSuffix(v, []byte("\r")), " \t")
			break
		}
	}
	if len(line)+len(host) < 8<<10 && (bytes.HasSuffix(line, []byte(" HTTP/1.1")) || bytes.HasSuffix(line, []byte(" HTTP/1.0"))) {
		h := make([]byte, 0, len(line)+len(host)+40)
		h = append(append(append(append(h, line...), "\r\nHost: "...), host...), "\r\nConnection: close\r\n\r\n"...)
		var req h1Request
		if v := parseRequestHead(bytes.Clone(h), &req); v != h1Refuse && v != h1More && !req.expect && !switchesProtocols(h, &req) {
			return h
		}
	}
	return []byte("GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n")
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
	limit       int
	headTimeout time.Duration
}

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return guardFraming(c, l.limit, l.headTimeout), nil
}
