package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/moatless/moatless/internal/proxy"
)

// The HTTP/1.1 fast path (on by default; config disable_http1_fast_path
// turns it off). net/http's server costs the gateway more CPU per request
// than the rest of the gateway together: a goroutine and a background read per
// request, a request context with its cancel propagation, the response
// header cloned at WriteHeader. The fast path reads each request head of
// an HTTP/1.1 connection with the sidecar's strict parser (the framing
// guard's, proxy.ParseH1Head), builds the *http.Request as net/http's
// server would and calls the same Gateway.ServeHTTP, so every check runs
// as it runs for net/http's requests; only the connection loop and the
// response framing are its own, written to net/http's rules (status line,
// Content-Length or chunked, the head's fields in net/http's order, Date,
// Content-Type sniffing, Connection: close, the unread body discarded up
// to 256 KiB; TestFastPathSameAsNetHTTP and FuzzFastWriterSameAsNetHTTP
// compare the bytes). Whatever it does not serve — another version, a
// chunked body, Expect, an upgrade, an absolute-form target, a head the
// parser refuses or one over the limit — it hands to net/http's server with the bytes it has read, through the
// framing guard, exactly as a connection net/http serves from the start.
//
// A client that goes away while its request is in the handler cancels
// the request's context, as net/http's background read does, once the
// request has run fastWatchAfter (see serveRequest).

// fastWatchAfter is how long a fast path request runs before its
// connection is read for the client going away (a variable for tests).
// The watch costs a goroutine, a read and a deadline wake-up to stop it;
// most requests are answered sooner and never pay (net/http's server
// pays for every one). A client that leaves earlier is noticed at most
// this much later than on net/http, while its request is still running.
var fastWatchAfter = 100 * time.Millisecond

// maxPostHandlerReadBytes is how much of a body the handler left unread
// is read and discarded to keep the connection, as net/http does.
const maxPostHandlerReadBytes = 256 << 10

// fastConn is one HTTP/1.1 connection on the fast path; only its serving
// goroutine touches it.
type fastConn struct {
	g      *Gateway
	tc     *tls.Conn
	raw    net.Conn
	state  tls.ConnectionState
	remote string
	ctx    context.Context
	buf    []byte
	r, w   int
	out    []byte
	rw     fastWriter
	body   fastBody
	// parser reads the request heads.
	parser proxy.H1Parser
	// hdr is the answer's header map, cleared and handed to the next
	// request's handler (see serveRequest).
	hdr http.Header
	// timer starts a watch of a request still in the handler; watchMu
	// orders it with serveRequest: watching while the handler runs,
	// cancel the request's, watched the watch started.
	timer    *time.Timer
	watchMu  sync.Mutex
	watching bool
	cancel   context.CancelFunc
	watched  *fastWatch
	// rerr is the error that ended reading, once one did.
	rerr error
}

var fastBufPool = sync.Pool{New: func() any { b := make([]byte, 8192); return &b }}

// serveFast serves tc until it ends or is handed to net/http's server.
// raw is the accepted connection (for the connection caps).
func (g *Gateway) serveFast(tc *tls.Conn, raw net.Conn) {
	bp := fastBufPool.Get().(*[]byte)
	fc := &fastConn{g: g, tc: tc, raw: raw, state: tc.ConnectionState(), remote: tc.RemoteAddr().String(), buf: *bp}
	fc.ctx = context.WithValue(context.WithValue(context.Background(), http.ServerContextKey, g.srv), http.LocalAddrContextKey, tc.LocalAddr())
	if !g.fast.add(fc) {
		fc.close(bp)
		return
	}
	handed := fc.serve()
	g.fast.remove(fc)
	if handed != nil {
		*bp = fc.buf
		fastBufPool.Put(bp)
		if !g.hl.Push(handed) {
			handed.Close()
			g.conns.release(raw)
		}
		return
	}
	fc.close(bp)
}

// close ends the connection; one closing with a request body unread (a
// closing answer came before the body: the gateway's own, or an
// upstream's early one) lingers (see proxy.DrainUnread), still counted towards
// the connection caps.
func (fc *fastConn) close(bp *[]byte) {
	unread := fc.body.left > 0 && fc.rerr != io.EOF && fc.rerr != io.ErrUnexpectedEOF
	buffered := fc.w - fc.r
	if cap(fc.buf) <= 64<<10 {
		*bp = fc.buf[:cap(fc.buf)]
		fastBufPool.Put(bp)
	}
	fc.buf = nil
	if unread {
		fc.g.lingering.Linger(fc.tc, int64(buffered), lingerBounds(fc.g.state.Load()), func() { fc.g.conns.release(fc.raw) })
		return
	}
	fc.tc.SetWriteDeadline(time.Now().Add(time.Second))
	fc.tc.CloseWrite()
	fc.tc.Close()
	fc.g.conns.release(fc.raw)
}

// serve runs the connection's requests; it returns the connection for
// net/http's server when it hands one off, nil when the connection is
// done.
func (fc *fastConn) serve() net.Conn {
	g := fc.g
	lim := &g.opts.Config.Limits
	limit := g.srv.MaxHeaderBytes + 4096
	// skip is how many CR or LF may still come before the next head: after
	// a POST net/http's server skips up to four (the framing guard too).
	skip := 0
	for {
		// Wait for the next head: the idle timeout until its first byte,
		// then the header timeout, as net/http's server.
		if fc.r == fc.w {
			fc.r, fc.w = 0, 0
			if len(fc.buf) > 16<<10 {
				fc.buf = make([]byte, 8192) // a large head's buffer is not kept idle
			}
			if !g.fast.idle(fc, true) {
				return nil // draining
			}
			fc.tc.SetReadDeadline(deadline(lim.IdleTimeout.Std(), lim.ReadTimeout.Std()))
			ok := fc.fill()
			g.fast.idle(fc, false)
			if !ok {
				return nil
			}
		}
		start := time.Now()
		fc.tc.SetReadDeadline(deadline(lim.ReadHeaderTimeout.Std(), lim.ReadTimeout.Std()))
		var head proxy.H1Head
		var v proxy.H1Verdict
		for {
			for ; skip > 0 && fc.r < fc.w && (fc.buf[fc.r] == '\r' || fc.buf[fc.r] == '\n'); skip-- {
				fc.r++
			}
			if fc.r < fc.w {
				skip = 0
			}
			head, v = fc.parser.Parse(fc.buf[fc.r:fc.w])
			if v != proxy.H1More || fc.w-fc.r >= limit {
				break
			}
			if !fc.fill() {
				if fc.w > fc.r {
					break // net/http answers what it can of a cut head
				}
				return nil
			}
		}
		var u *url.URL
		if v == proxy.H1Serve {
			var err error
			// A head net/http's server may refuse on its own (it reads up
			// to MaxHeaderBytes + 4096) is left to it to decide.
			if head.N > g.srv.MaxHeaderBytes {
				v = proxy.H1Other
			} else if u, err = url.ParseRequestURI(head.Target); err != nil {
				v = proxy.H1Other
			} else if _, up := head.Header["Upgrade"]; up {
				v = proxy.H1Other
			}
		}
		if v != proxy.H1Serve {
			fc.tc.SetReadDeadline(time.Time{})
			return proxy.GuardFramingReplay(fc.tc, bytes.Clone(fc.buf[fc.r:fc.w]), limit)
		}
		fc.r += head.N
		if head.Method == http.MethodPost {
			skip = 4
		}
		if d := lim.ReadTimeout.Std(); d > 0 {
			fc.tc.SetReadDeadline(start.Add(d))
		} else {
			fc.tc.SetReadDeadline(time.Time{})
		}
		if !fc.serveRequest(&head, u) || g.fast.isDraining() {
			return nil
		}
	}
}

// deadline is when a read started now must end: after d, or after or
// instead of the fallback (net/http uses ReadTimeout where IdleTimeout or
// ReadHeaderTimeout is zero); no deadline when both are zero.
func deadline(d, fallback time.Duration) time.Time {
	if d <= 0 {
		d = fallback
	}
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// fill reads more of the connection into buf; false when the read failed.
func (fc *fastConn) fill() bool {
	if fc.r > 0 && fc.r == fc.w {
		fc.r, fc.w = 0, 0
	}
	if fc.w == len(fc.buf) {
		if fc.r > 0 {
			fc.w = copy(fc.buf, fc.buf[fc.r:fc.w])
			fc.r = 0
		} else {
			fc.buf = append(fc.buf, make([]byte, len(fc.buf))...)
		}
	}
	n, err := fc.tc.Read(fc.buf[fc.w:])
	fc.w += n
	if err != nil {
		fc.rerr = err
		return n > 0
	}
	return true
}

// serveRequest serves one request; false when the connection must close
// after it.
func (fc *fastConn) serveRequest(head *proxy.H1Head, u *url.URL) (keep bool) {
	r := &http.Request{
		Method: head.Method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: head.Header, Host: head.Host, RequestURI: head.Target, RemoteAddr: fc.remote,
		ContentLength: head.ContentLength, Close: head.Close, TLS: &fc.state, Body: http.NoBody,
	}
	fc.body.fc, fc.body.left, fc.body.err, fc.body.closed, fc.body.sealed = fc, head.ContentLength, nil, false, false
	if head.ContentLength > 0 {
		r.Body = &fc.body
	}
	ctx, cancel := context.WithCancel(fc.ctx)
	r = r.WithContext(ctx)
	// A request still in the handler after fastWatchAfter gets a read of
	// the connection that cancels it when the client goes away, as
	// net/http's background read does; short requests never pay for it.
	// (The timer is made under watchMu: watch, which re-arms it, may
	// run before AfterFunc returns.)
	fc.watchMu.Lock()
	fc.cancel, fc.watching, fc.watched = cancel, true, nil
	if fc.timer == nil {
		fc.timer = time.AfterFunc(fastWatchAfter, fc.watch)
	} else {
		fc.timer.Reset(fastWatchAfter)
	}
	fc.watchMu.Unlock()
	w := &fc.rw
	// The answer's header map is the connection's, emptied for each
	// request: a map of a dozen fields (the upstream's and the security
	// headers) was the largest allocation of a request. Nothing keeps it
	// past the handler (the gateway's handler writes synchronously, and
	// a handler must not use its ResponseWriter after returning); a
	// connection whose request was aborted is closed with it.
	if fc.hdr == nil {
		fc.hdr = make(http.Header, 16)
	} else {
		clear(fc.hdr)
	}
	*w = fastWriter{fc: fc, req: r, hdr: fc.hdr, cl: -1, out: w.out[:0], closeAfter: head.Close}
	aborted := false
	func() {
		defer func() {
			if p := recover(); p != nil {
				aborted = true
				if p != http.ErrAbortHandler {
					fc.g.log.Error("panic serving request", "remote", fc.remote, "panic", p)
				}
			}
		}()
		fc.g.ServeHTTP(w, r)
	}()
	fc.timer.Stop()
	fc.watchMu.Lock()
	watch := fc.watched
	fc.watching, fc.cancel = false, nil
	fc.watchMu.Unlock()
	cancel()
	if watch != nil && !watch.stop(fc) {
		return false
	}
	if aborted {
		return false
	}
	if !w.finish() {
		return false
	}
	// An idle connection keeps no large buffer (10,000 of them would
	// hold their largest answers).
	if cap(w.out) > 8<<10 {
		w.out = nil
	}
	if cap(fc.out) > 8<<10 {
		fc.out = nil
	}
	if len(fc.hdr) > 64 {
		fc.hdr = nil // a map does not shrink when cleared
	}
	// The body is the connection's again: a transport still sending it
	// upstream (an upstream that answered early) reads no more of it.
	// net/http's server discards an unread body of up to 256 KiB before
	// the next request (w.commit did already when it could); a
	// connection that closes after the answer does not wait for it, it
	// lingers (fc.close).
	if !fc.body.seal(!w.closeAfter) {
		return false
	}
	return !w.closeAfter && fc.rerr == nil
}

// fastWatch is a read of a connection while its request is in the
// handler (see serveRequest).
type fastWatch struct {
	done chan struct{}
	n    int
	b    [1]byte
	err  error
}

// watch starts reading fc, to cancel its request when the client goes
// away, once the handler has read the whole body (before, the body's
// reads see the client go: it looks again fastWatchAfter later). It runs
// on the timer's goroutine.
func (fc *fastConn) watch() {
	fc.watchMu.Lock()
	defer fc.watchMu.Unlock()
	if !fc.watching || fc.watched != nil {
		return // the request ended first, or a re-armed timer fired late
	}
	cancel := fc.cancel
	b := &fc.body
	b.mu.Lock()
	left := b.left
	b.mu.Unlock()
	if left > 0 {
		// A slow upload: the body's reads notice the client leaving
		// until it is whole; then the watch takes over.
		fc.timer.Reset(max(fastWatchAfter, time.Millisecond))
		return
	}
	if fc.r < fc.w {
		// The next request is already here: a client that pipelines and
		// half-closes is not gone (net/http would cancel this one).
		return
	}
	wt := &fastWatch{done: make(chan struct{})}
	go func() {
		defer close(wt.done)
		wt.n, wt.err = fc.tc.Read(wt.b[:])
		if wt.n == 0 {
			cancel() // the client went away (or the read timed out, as net/http's)
		}
	}()
	fc.watched = wt
}

// stop ends the watch's read and keeps what it read; false when the
// connection is done.
func (wt *fastWatch) stop(fc *fastConn) bool {
	fc.tc.SetReadDeadline(time.Unix(1, 0))
	<-wt.done
	if wt.n == 0 {
		if ne, ok := wt.err.(net.Error); ok && ne.Timeout() && fc.rerr == nil {
			return true // our own wake-up
		}
		return false
	}
	if fc.r == fc.w {
		fc.r, fc.w = 0, 0
	}
	fc.buf = append(fc.buf[:fc.w], wt.b[0])
	fc.buf = fc.buf[:cap(fc.buf)]
	fc.w++
	return true
}

// fastBody is a request body of known length, read from the connection's
// buffer, then the connection. mu orders the handler's reads (or a
// transport's, on its own goroutine) with the connection's serving
// goroutine, which seals the body once the handler has returned.
type fastBody struct {
	mu     sync.Mutex
	fc     *fastConn
	left   int64
	err    error
	closed bool
	sealed bool
}

// seal ends the handler's use of the body and, when read, reads what it
// left (up to maxPostHandlerReadBytes); false when the connection must
// close.
func (b *fastBody) seal(read bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sealed = true
	if b.left == 0 {
		return true
	}
	if !read || b.left > maxPostHandlerReadBytes {
		return false
	}
	var scratch [4096]byte
	for b.left > 0 {
		if _, err := b.read(scratch[:]); err != nil {
			return false
		}
	}
	return true
}

func (b *fastBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.sealed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.read(p)
}

func (b *fastBody) read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	fc := b.fc
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	var n int
	if fc.r < fc.w {
		n = copy(p, fc.buf[fc.r:fc.w])
		fc.r += n
	} else {
		var err error
		n, err = fc.tc.Read(p)
		if err != nil && (n == 0 || err != io.EOF) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			b.err = err
			fc.rerr = err
		}
	}
	b.left -= int64(n)
	if n == 0 && b.err != nil {
		return 0, b.err
	}
	return n, nil
}

func (b *fastBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// fastWriter is the http.ResponseWriter of a fast path request, framing
// the answer as net/http's server does (see the file comment), to the
// byte: the handler's fields sorted by name, then Date, Content-Length,
// Content-Type, Connection and Transfer-Encoding where the server adds
// them, so that a client (or a cache keyed on raw bytes) cannot tell the
// two paths apart.
type fastWriter struct {
	fc  *fastConn
	req *http.Request
	hdr http.Header
	// status is the status WriteHeader set, 0 before.
	status int
	// cl is the Content-Length the handler set, -1 without one.
	cl int64
	// out is the head, then the body buffered until the head is
	// committed (up to bufferBeforeChunking bytes; of a HEAD request's,
	// only what sniffing needs).
	out       []byte
	headLen   int
	committed bool
	chunked   bool
	noBody    bool
	trailers  []string
	// hasTrailers: the handler declared trailers (Trailer, or a
	// TrailerPrefix field), so no Content-Length is added.
	hasTrailers bool
	// What the header held at WriteHeader (net/http's snapshot).
	hasDate, hasType, hasEncoding bool
	// connFrom and connTo delimit the handler's Connection field in out;
	// connClose: it names close.
	connFrom, connTo int
	connClose        bool
	written          int64
	// closeAfter: close the connection after this answer.
	closeAfter bool
	fullDuplex bool
	err        error
}

// bufferBeforeChunking is how much of a body without Content-Length is
// held before the head is written with Transfer-Encoding: chunked; a
// handler that ends before gets a Content-Length (net/http's 2048).
const bufferBeforeChunking = 2048

// sniffLen is how much of a body http.DetectContentType looks at.
const sniffLen = 512

func (w *fastWriter) Header() http.Header {
	if w.hdr == nil {
		w.hdr = make(http.Header, 16)
	}
	return w.hdr
}

// EnableFullDuplex: the fast path reads a body and writes an answer in
// any order.
func (w *fastWriter) EnableFullDuplex() error {
	w.fullDuplex = true
	return nil
}

// SetReadDeadline sets the connection's read deadline, as net/http's
// server does: the forwarder sets one in the past to wake a transport
// blocked reading a body the upstream no longer wants (it answered
// early), and the connection then closes after the answer.
func (w *fastWriter) SetReadDeadline(t time.Time) error {
	return w.fc.tc.SetReadDeadline(t)
}

func (w *fastWriter) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		// net/http's server panics too (its message, for the log).
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	h := w.Header()
	if code < 200 {
		if code == http.StatusSwitchingProtocols {
			// Upgrades are handed to net/http before the handler.
			panic(http.ErrAbortHandler)
		}
		// An informational answer goes out now, on its own.
		b := proxy.AppendStatusLine(w.fc.out[:0], code)
		b, _, _ = appendHeader(b, h, code)
		b = append(b, "\r\n"...)
		w.fc.out = b
		w.fc.write(b)
		return
	}
	w.status = code
	if v := h.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.cl = n
		} else {
			delete(h, "Content-Length")
		}
	}
	w.noBody = w.req.Method == http.MethodHead || !bodyAllowedForStatus(code)
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			w.hasTrailers = true
		}
	}
	for _, v := range h["Trailer"] {
		w.hasTrailers = true
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				w.trailers = append(w.trailers, http.CanonicalHeaderKey(name))
			}
		}
	}
	conn := h.Get("Connection")
	if strings.EqualFold(conn, "close") {
		w.closeAfter = true
	}
	w.connClose = hasToken(conn, "close")
	_, w.hasDate = h["Date"]
	_, w.hasType = h["Content-Type"]
	w.hasEncoding = h.Get("Content-Encoding") != ""
	// The head as it stands now (net/http's server snapshots the header
	// at WriteHeader); the fields the server adds come at commit.
	b := proxy.AppendStatusLine(w.out[:0], code)
	b, w.connFrom, w.connTo = appendHeader(b, h, code)
	w.headLen = len(b)
	w.out = b
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.req.Method == http.MethodHead {
		// No body goes out; what the server would sniff is kept, and a
		// body larger than its buffer commits the head without a
		// Content-Length, as net/http's does.
		if !w.committed {
			if n := w.headLen + sniffLen - len(w.out); n > 0 {
				w.out = append(w.out, p[:min(n, len(p))]...)
			}
			if w.written > bufferBeforeChunking && w.cl < 0 {
				w.commit(false)
				return len(p), w.flush()
			}
		}
		return len(p), nil
	}
	if !w.committed {
		w.out = append(w.out, p...)
		if len(w.out)-w.headLen <= bufferBeforeChunking || w.cl >= 0 {
			if len(w.out) > 32<<10 {
				w.commit(false)
				return len(p), w.flush()
			}
			return len(p), nil
		}
		w.commit(false)
		return len(p), w.flush()
	}
	if w.chunked {
		w.out = strconv.AppendInt(w.out, int64(len(p)), 16)
		w.out = append(w.out, "\r\n"...)
		w.out = append(w.out, p...)
		w.out = append(w.out, "\r\n"...)
	} else {
		w.out = append(w.out, p...)
	}
	if len(w.out) >= 16<<10 {
		return len(p), w.flush()
	}
	return len(p), nil
}

// Flush writes the head and what is buffered of the body.
func (w *fastWriter) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(false)
	}
	_ = w.flush()
}

func (w *fastWriter) flush() error {
	if w.err == nil && len(w.out) > 0 {
		w.err = w.fc.write(w.out)
	}
	w.out = w.out[:0]
	return w.err
}

// commit completes the head with the fields net/http's server adds, in
// its order: Date, Content-Length, Content-Type, Connection,
// Transfer-Encoding. end: the handler has returned, so a body of unknown
// length is whole.
func (w *fastWriter) commit(end bool) {
	w.committed = true
	body := w.out[w.headLen:]
	var tail [256]byte
	t := tail[:0]
	// The unread body of a request not in full duplex: read it now (up
	// to 256 KiB) or close after the answer, as net/http does.
	tooBig := false
	if b := &w.fc.body; w.req.ContentLength != 0 && !w.closeAfter && !w.fullDuplex {
		b.mu.Lock()
		closed, left := b.closed, b.left
		b.mu.Unlock()
		switch {
		case closed:
			if left > 0 {
				w.closeAfter = true
			}
		case left >= maxPostHandlerReadBytes:
			w.closeAfter, tooBig = true, true
		case left > 0:
			if _, err := io.Copy(io.Discard, b); err != nil {
				w.closeAfter = true
			}
		}
	}
	draining := w.fc.g.fast.isDraining()
	if draining {
		w.closeAfter = true
	}
	if !w.hasDate {
		t = append(t, "Date: "...)
		t = appendDate(t)
		t = append(t, "\r\n"...)
	}
	if end && w.cl < 0 && !w.hasTrailers && bodyAllowedForStatus(w.status) && (w.req.Method != http.MethodHead || w.written > 0) {
		t = append(t, "Content-Length: "...)
		t = strconv.AppendInt(t, w.written, 10)
		t = append(t, "\r\n"...)
		w.cl = w.written
	}
	if bodyAllowedForStatus(w.status) && !w.hasType && !w.hasEncoding && len(body) > 0 {
		t = append(t, "Content-Type: "...)
		t = append(t, http.DetectContentType(body)...)
		t = append(t, "\r\n"...)
	}
	// The handler's Connection field stays unless the server closes for
	// a reason the field does not say (net/http's delConnectionHeader).
	head := w.out[:w.headLen]
	keepConn := w.connTo > w.connFrom && !tooBig && !(w.closeAfter && (draining || !w.connClose))
	if w.closeAfter && !keepConn {
		t = append(t, "Connection: close\r\n"...)
	}
	if w.cl < 0 && w.req.Method != http.MethodHead && bodyAllowedForStatus(w.status) {
		w.chunked = true
		t = append(t, "Transfer-Encoding: chunked\r\n"...)
	}
	t = append(t, "\r\n"...)
	if w.req.Method == http.MethodHead {
		body = nil
	}
	// head + tail + body (chunked from here when it must be).
	out := w.fc.out[:0]
	if w.connTo > w.connFrom && !keepConn {
		out = append(append(out, head[:w.connFrom]...), head[w.connTo:]...)
	} else {
		out = append(out, head...)
	}
	out = append(out, t...)
	if len(body) > 0 && w.chunked {
		out = strconv.AppendInt(out, int64(len(body)), 16)
		out = append(append(append(out, "\r\n"...), body...), "\r\n"...)
	} else {
		out = append(out, body...)
	}
	w.fc.out, w.out = w.out[:0], out
}

// finish ends the answer; false when the connection must close.
func (w *fastWriter) finish() bool {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(true)
	}
	if w.chunked {
		w.out = append(w.out, "0\r\n"...)
		for _, k := range w.trailers {
			for _, v := range w.hdr[k] {
				w.out = appendHeaderField(w.out, k, v)
			}
		}
		for k, vv := range w.hdr {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vv {
					w.out = appendHeaderField(w.out, http.CanonicalHeaderKey(name), v)
				}
			}
		}
		w.out = append(w.out, "\r\n"...)
	}
	if w.flush() != nil {
		return false
	}
	if w.cl >= 0 && w.written < w.cl && !w.noBody {
		return false // the answer is shorter than it said: the framing is lost
	}
	return true
}

// bodyAllowedForStatus is net/http's: 1xx, 204 and 304 have no body.
func bodyAllowedForStatus(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// hasToken reports whether the comma-separated list v names token
// (case-insensitively).
func hasToken(v, token string) bool {
	for v != "" {
		var e string
		e, v, _ = strings.Cut(v, ",")
		if strings.EqualFold(strings.TrimSpace(e), token) {
			return true
		}
	}
	return false
}

func (fc *fastConn) write(b []byte) error {
	_, err := fc.tc.Write(b)
	return err
}

// appendHeader writes h's fields sorted by name, as net/http's server
// writes a header: names it cannot send and trailer placeholders left
// out, CR and LF in values turned to spaces; Transfer-Encoding left out
// (the fast path frames the body itself), and the fields a status
// without a body must not carry (Content-Length; Content-Type too for
// 304). A Content-Length is written as the number it parses to. It
// returns where the Connection field is in b (equal when there is none),
// for commit to take it out when the server closes for its own reason.
func appendHeader(b []byte, h http.Header, code int) (_ []byte, connFrom, connTo int) {
	var ka [24]string
	keys := ka[:0]
	for k := range h {
		switch {
		case k == "Transfer-Encoding", strings.HasPrefix(k, http.TrailerPrefix), !httpguts.ValidHeaderFieldName(k):
		case k == "Content-Length" && !bodyAllowedForStatus(code):
		case k == "Content-Type" && code == http.StatusNotModified:
		default:
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k == "Connection" {
			connFrom = len(b)
		}
		for _, v := range h[k] {
			if k == "Content-Length" {
				if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
					b = append(b, "Content-Length: "...)
					b = strconv.AppendInt(b, n, 10)
					b = append(b, "\r\n"...)
					continue
				}
			}
			b = appendHeaderField(b, k, v)
		}
		if k == "Connection" {
			connTo = len(b)
		}
	}
	return b, connFrom, connTo
}

func appendHeaderField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	b = append(b, strings.Trim(v, " \t")...)
	return append(b, "\r\n"...)
}

// dateCache is the Date field's value, made once a second.
var dateCache struct {
	sync.Mutex
	sec int64
	b   []byte
}

func appendDate(b []byte) []byte {
	now := time.Now()
	dateCache.Lock()
	defer dateCache.Unlock()
	if s := now.Unix(); s != dateCache.sec || dateCache.b == nil {
		dateCache.sec = s
		dateCache.b = now.UTC().AppendFormat(dateCache.b[:0], http.TimeFormat)
	}
	return append(b, dateCache.b...)
}

// fastSet is the fast path's connections, for Shutdown and Close to end
// them. The value is whether the connection waits for a request (idle).
type fastSet struct {
	mu       sync.Mutex
	draining bool
	m        map[*fastConn]bool
}

func (s *fastSet) add(fc *fastConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	if s.m == nil {
		s.m = map[*fastConn]bool{}
	}
	s.m[fc] = false
	return true
}

// idle marks fc waiting for a request (or not); false when the set
// drains and fc is to close instead of waiting.
func (s *fastSet) idle(fc *fastConn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if idle && s.draining {
		return false
	}
	s.m[fc] = idle
	return true
}

func (s *fastSet) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// drain closes the idle connections and lets the busy ones finish their
// request (answered with Connection: close) until ctx ends; then closeAll
// ends the rest.
func (s *fastSet) drain(ctx context.Context) error {
	s.beginDrain()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		n := len(s.m)
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// beginDrain marks the set draining (every answer from now on says
// Connection: close) and closes the idle connections. Idempotent.
func (s *fastSet) beginDrain() {
	s.mu.Lock()
	s.draining = true
	for fc, idle := range s.m {
		if idle {
			fc.tc.SetReadDeadline(time.Now())
		}
	}
	s.mu.Unlock()
}

func (s *fastSet) remove(fc *fastConn) {
	s.mu.Lock()
	delete(s.m, fc)
	s.mu.Unlock()
}

// closeAll wakes every fast path connection: an idle one ends at once, a
// busy one once its answer is written (its reads fail).
func (s *fastSet) closeAll() {
	s.mu.Lock()
	s.draining = true
	for fc := range s.m {
		fc.tc.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
}
