package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/proxy"
)

// The gateway's own answer to an HTTP/1.1 request whose body nothing has
// read (a denial, a 401, a 429, a WAF block, a CORS preflight) goes out
// at once, however much of that body is still to come. net/http's server
// (and the fast path, which copied it) read up to 256 KiB of an unread
// body before writing an answer's head, so that the connection could be
// kept: a client that withholds its body until it has an answer (an SDK
// streaming from a slow source, or an attacker holding a goroutine for
// the 60 s read timeout per request) waited for nothing.
//
// Now the gateway reads, before the answer, only what the client has
// already sent (drainWait at most, drainBytes of body at most): a small
// body sent whole, the common denied POST, is read to its end and the
// connection kept. Otherwise the answer says Connection: close and the
// connection is closed after it with a lingering close, as nginx's
// lingering_close: close_notify and FIN first, then what the client
// still sends is read and discarded until it closes too, goes quiet for
// lingerIdle, lingerTime has passed or max_body_bytes were read. Closing
// at once would drop the unread bytes and make the kernel answer them
// with an RST, which destroys the answer in a client that sends its whole
// body before reading (most simple clients; net/http waits a fixed
// 500 ms instead, rstAvoidanceDelay, without reading). A lingering
// connection still counts towards the connection caps.
var (
	// drainWait bounds reading what is already there of an unread body
	// before an answer. It is not a wait for the client: a body sent
	// whole is in the socket buffer, and reading it costs only CPU (a
	// few hundred microseconds for 256 KiB), so the bound is only a
	// margin for a loaded machine. A withheld body delays the answer
	// this much.
	drainWait = 20 * time.Millisecond
	// lingerTime and lingerIdle bound a lingering close (nginx:
	// lingering_time 30 s, lingering_timeout 5 s; shorter here, as every
	// client of the gateway is a stranger: a client still sending after
	// 5 s of a denied upload gets its connection reset).
	lingerTime = 5 * time.Second
	lingerIdle = 2 * time.Second
)

// drainBytes is how much of an unread body is read before an answer to
// keep the connection (net/http's maxPostHandlerReadBytes).
const drainBytes = maxPostHandlerReadBytes

// settle runs before the gateway writes its own answer to rc's request
// (the answers the upstream writes are the forwarder's to settle): on
// HTTP/1.x, a body nothing has read is read now if the client has sent
// it whole (drain) and the connection kept; otherwise the answer says
// Connection: close and the connection lingers after it (see the
// comment above drainWait).
func (w *respWriter) settle() {
	rc := w.rc
	r := rc.req
	if r == nil || r.ProtoMajor != 1 || rc.forwarded || rc.bodyDone || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return
	}
	h := w.Header()
	if !hasToken(h.Get("Connection"), "close") && w.drain() {
		return
	}
	h.Set("Connection", "close")
	rc.linger = true
}

// drain reads what the client has already sent of rc's unread body,
// drainBytes at most and for drainWait at most; true when that was the
// whole body. A request that waits for 100 Continue is not read: reading
// would ask for the body.
func (w *respWriter) drain() bool {
	rc := w.rc
	if len(rc.req.Header["Expect"]) > 0 {
		return false
	}
	var body io.Reader = rc.req.Body
	if rc.reqBody.ReadCloser != nil {
		body = &rc.reqBody // the route's size limit and the byte count
	}
	ctl := http.NewResponseController(w.ResponseWriter)
	deadline := time.Now().Add(drainWait)
	if ctl.SetReadDeadline(deadline) != nil {
		return false
	}
	_, err := io.CopyN(io.Discard, body, drainBytes+1)
	// No deadline until the answer is written: net/http's server starts
	// a read of the next request the moment the body ends, under the
	// connection's deadline, and a timeout of that read would cancel
	// every later request's context on the connection. Hence also the
	// check that the deadline had not passed when it was lifted.
	_ = ctl.SetReadDeadline(time.Time{})
	if err != io.EOF || !time.Now().Before(deadline) {
		return false
	}
	rc.bodyDone = true
	return true
}

// lingerHijacked takes over a net/http connection whose answer settle
// set to close, once the answer is written, and closes it lingering on
// its own goroutine, so that the request's handler ends (and its access
// log line is written) at once.
func (g *Gateway) lingerHijacked(w *respWriter) {
	ctl := http.NewResponseController(w.ResponseWriter)
	if ctl.Flush() != nil {
		return
	}
	c, brw, err := ctl.Hijack()
	if err != nil {
		return // net/http closes it
	}
	// net/http reported the connection gone when it was taken over: it is
	// counted again for as long as it lingers.
	release := g.conns.track(c)
	buffered := brw.Reader.Buffered()
	g.linger(proxy.GuardedConn(c), buffered, func() {
		c.Close()
		release()
	})
}

// linger closes c after the answer written on it, lingering (see the
// comment above drainWait) on a goroutine Close waits for; buffered is
// how many bytes of what the client sent were already read and are
// dropped. done is called once c is closed.
func (g *Gateway) linger(c net.Conn, buffered int, done func()) {
	if !g.lingering.add(c) {
		c.Close()
		done()
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		lingerClose(c, int64(buffered), g.opts.Config.Limits.MaxBodyBytes)
		g.lingering.remove(c)
		done()
	}()
}

// lingerClose half-closes c (TLS close_notify, then FIN) and reads and
// discards what the peer still sends until it closes, goes quiet for
// lingerIdle, lingerTime has passed, or maxBytes were read (read counts
// those already read); then closes c.
func lingerClose(c net.Conn, read, maxBytes int64) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	if tc, ok := c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
		if cw, ok := tc.NetConn().(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	} else if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	end := time.Now().Add(lingerTime)
	bp := lingerBufPool.Get().(*[]byte)
	defer lingerBufPool.Put(bp)
	for read < maxBytes {
		d := time.Now().Add(lingerIdle)
		if d.After(end) {
			d = end
		}
		if c.SetReadDeadline(d) != nil {
			break
		}
		n, err := c.Read(*bp)
		read += int64(n)
		if err != nil {
			break
		}
	}
	c.Close()
}

var lingerBufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// lingerSet is the connections closing lingering, for Close to end them
// at once (their reads fail).
type lingerSet struct {
	mu     sync.Mutex
	closed bool
	m      map[net.Conn]struct{}
}

// add registers c; false when the gateway is closed and c is to close
// without lingering.
func (s *lingerSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	return true
}

func (s *lingerSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

// closeAll closes every lingering connection (its read fails) and
// refuses new ones.
func (s *lingerSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.m {
		c.Close()
	}
	s.mu.Unlock()
}
