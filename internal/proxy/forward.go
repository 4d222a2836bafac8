package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/moatless/moatless/internal/policy"
)

// bufPool holds the copy buffers of every body and byte stream, so steady
// traffic allocates none. Each is bufSize bytes.
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

const bufSize = 32 << 10

// largeBufPool holds the buffers of request bodies larger than bufSize
// that the lean app client keeps whole for a retry (up to leanMaxBody):
// without it, each such request allocated its body anew. Each is
// leanMaxBody bytes.
var largeBufPool = sync.Pool{New: func() any { b := make([]byte, leanMaxBody); return &b }}

// removeHopHeaders strips the hop-by-hop fields from h in place and
// returns the protocol of the Upgrade the message asks for, when it is one
// of allowed (compared case-insensitively by name, a "/version" aside:
// WebSocket); h then says exactly "Connection: Upgrade" and "Upgrade:
// <protocol>", as the next hop is asked, so policy sees what is
// forwarded. Any other upgrade (h2c, which would turn the connection into
// an HTTP/2 tunnel whose requests policy never sees) is stripped with its
// HTTP2-Settings, and the request goes on as a plain one. It runs on a
// message as received, before the sidecar adds anything.
//
// Fields that Connection names are not removed unless they are hop-by-hop
// anyway: they were sent by the peer, policy sees them, and they reach
// the next hop like any other field it sent. Honouring the nominations
// would let a caller delete fields that a proxy in front of the sidecar
// added (X-Forwarded-For, an identity header), and, were they removed
// after the sidecar adds its own, the sidecar's x-forwarded-client-cert
// and token claims. Envoy does not honour them either.
//
// The hop-by-hop fields are those of RFC 9110 section 7.6.1 plus
// HTTP2-Settings (RFC 7540 section 3.2.1, connection-specific); "Te:
// trailers" is kept: gRPC needs it. One pass over the message's own fields
// finds them (a request has a handful), rather than a lookup per name.
func removeHopHeaders(h http.Header, allowed []string) (upgrade string) {
	var conn, up, te []string
	for k, v := range h {
		if !hopHeader(k) {
			continue
		}
		switch k {
		case "Connection":
			conn = v
		case "Upgrade":
			up = v
		case "Te":
			te = v
		}
		delete(h, k)
	}
	upgrade = upgradeOf(conn, up, allowed)
	for _, v := range te {
		if keepTE(v) {
			h["Te"] = []string{"trailers"}
			break
		}
	}
	if upgrade != "" {
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = []string{upgrade}
	}
	return upgrade
}

// hopHeader reports whether a canonical field name is hop-by-hop (see
// removeHopHeaders).
func hopHeader(k string) bool {
	switch k {
	case "Connection", "Upgrade", "Te", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Trailer", "Transfer-Encoding", "Http2-Settings":
		return true
	}
	return false
}

// keepTE reports whether a TE value is the "trailers" that survives
// removeHopHeaders.
func keepTE(v string) bool { return strings.EqualFold(strings.TrimSpace(v), "trailers") }

// upgradeOf is the protocol a message's Connection and Upgrade values ask
// to switch to among allowed, "" for none: removeHopHeaders' answer,
// without changing anything.
func upgradeOf(conn, up, allowed []string) string {
	if len(allowed) == 0 || !httpguts.HeaderValuesContainsToken(conn, "upgrade") {
		return ""
	}
	return pickUpgrade(up, allowed)
}

// pickUpgrade is the first protocol of an Upgrade field (RFC 9110 section
// 7.8: a list in order of preference) that allowed names.
func pickUpgrade(values, allowed []string) string {
	for _, v := range values {
		for p := range strings.SplitSeq(v, ",") {
			p = strings.TrimSpace(p)
			name, _, _ := strings.Cut(p, "/")
			for _, a := range allowed {
				if strings.EqualFold(name, a) {
					return p
				}
			}
		}
	}
	return ""
}

// switchedTo reports whether a 101 answer switches to the protocol asked
// for: an app answering 101 to a request that asked for no upgrade, or
// switching to another protocol, gets no tunnel.
func switchedTo(resp *http.Response, upgrade string) bool {
	if upgrade == "" || !httpguts.HeaderValuesContainsToken(resp.Header["Connection"], "upgrade") {
		return false
	}
	want, _, _ := strings.Cut(upgrade, "/")
	got, _, _ := strings.Cut(strings.TrimSpace(resp.Header.Get("Upgrade")), "/")
	return strings.EqualFold(got, want)
}

// setTarget makes u's request target (URL.RequestURI, which net/http's
// HTTP/1.1 and HTTP/2 clients both write) exactly np.Target(): the path
// policy decided on, then the query. np's path is validly escaped, so
// RawPath is used as given (TestSetTargetRoundTrip checks it).
func setTarget(u *url.URL, np policy.RequestPath) {
	p := np.Path()
	u.Opaque = ""
	u.Path, _ = url.PathUnescape(p)
	u.RawPath = p
	q, ok := np.Query()
	u.RawQuery, u.ForceQuery = q, ok && q == ""
}

// badRequest answers 400 to a request refused before any decision.
func badRequest(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusBadRequest)
	io.WriteString(w, "Bad Request")
}

// undecidable answers 400 to a request whose target or Host policy cannot
// decide (a fragment, a dot segment beside an encoded slash, a malformed
// escape), and on HTTP/1.x closes the connection after it, as the fast
// path does: whatever sent such a head is not a client whose framing the
// sidecar should keep trusting, and both server paths must leave a
// connection in the same state. An HTTP/2 stream's framing is the
// connection's, not the request's: only the stream is refused.
func undecidable(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	badRequest(w)
}

// refuseConnect answers a CONNECT request: an HTTP listener opens no
// tunnels (405, as the method is known but not allowed here).
func refuseConnect(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusMethodNotAllowed)
	io.WriteString(w, "CONNECT is not allowed")
}

// forwarder sends a request on to one fixed destination and streams the
// answer back. It is the lean part of httputil.ReverseProxy the sidecar
// needs: the incoming request is reused rather than cloned, bodies are
// copied through pooled buffers, trailers and upgrades are carried.
type forwarder struct {
	rt       http.RoundTripper
	upgrades []string // protocols requests may switch to (removeHopHeaders)
	scheme   string   // "http" to the app, "https" to an upstream sidecar
	host     string   // URL host; the dialer ignores it where the address is fixed
	name     string
	s        *Sidecar
	errBody  func(err error) string
	// onError, when set, answers a request that could not be forwarded
	// instead of the default 503 (the gateway's 502 with its own body).
	onError func(w http.ResponseWriter, r *http.Request, err error)
}

// forward sends r, whose hop-by-hop fields the caller removed with
// removeHopHeaders, to the destination; upgrade is the protocol
// removeHopHeaders returned ("" for none). onHijack, when non-nil, is called
// with the client connection once a protocol upgrade has taken it over,
// and its return is called when the upgraded stream ends.
//
// It sets ob's Status (the status sent to the client), ReqBytes (the
// request body bytes read from the client: fewer than its Content-Length
// when the answer came first) and RespBytes (the response body bytes
// copied, 0 for an upgraded stream), for the traffic record, whatever
// the end: the client gone or its body over a limit (an error return),
// or the answer's copy aborted midway (the upstream failing: forward then
// panics with http.ErrAbortHandler, and a deferred record still sees what
// was read and sent until then).
//
// It reports early when the answer came before the request body was read
// to its end on HTTP/1.x: the answer said Connection: close, nothing
// reads the client's body any more, and the caller must close the
// connection lingering (LingerHijack), since the client may still be
// sending that body; closing it otherwise (net/http's server stops
// reading, waits 500 ms and closes) makes the kernel answer the unread
// bytes with an RST, which destroys the answer in a client that sends
// its whole body before reading.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, upgrade string, onHijack func(net.Conn) func(), ob *Observation) (early bool) {
	var body *bodyReader
	var respBytes int64
	defer func() {
		if body != nil {
			ob.ReqBytes = body.read.Load()
		}
		ob.RespBytes = respBytes
	}()
	ob.Status, early = f.forwardBody(w, r, upgrade, onHijack, &body, &respBytes)
	return early
}

// forwardBody is forward's work; body is the request body as it is read
// and respBytes the response bytes copied, as they are, for forward to
// count even when this panics.
func (f *forwarder) forwardBody(w http.ResponseWriter, r *http.Request, upgrade string, onHijack func(net.Conn) func(), bodyp **bodyReader, respBytes *int64) (status int, early bool) {
	r.URL.Scheme = f.scheme
	r.URL.Host = f.host
	r.RequestURI = ""
	r.Close = false
	settleExpect(r)
	if r.ContentLength == 0 {
		r.Body = nil
	}
	var body *bodyReader
	if r.ContentLength != 0 && r.Body != nil {
		body = &bodyReader{ReadCloser: r.Body, length: r.ContentLength, sealable: r.ProtoMajor == 1}
		*bodyp = body
		r.Body = body
		if r.ProtoMajor == 1 && upgrade == "" {
			// Let a streaming HTTP/1.1 client (gRPC-web, chunked uploads)
			// read the answer while it is still sending.
			_ = http.NewResponseController(w).EnableFullDuplex()
		}
	}
	resp, err := f.rt.RoundTrip(r)
	if err != nil {
		// The answer to a request that could not be forwarded (the app
		// failed mid-upload) may come before its body was read to the
		// end, as an upstream's early answer may, and ends the same way:
		// on HTTP/1.x Connection: close, then finishEarly, and the
		// caller closes the connection lingering. Before, the 503 said
		// the connection stays, net/http's server closed it over the
		// unread body, and a caller still sending got a reset instead
		// of the answer. It also keeps the handler from returning with
		// a body net/http holds in full duplex (above) unread on a kept
		// connection, which makes net/http's server panic reading the
		// next request (golang/go#68560).
		unread := body != nil && !body.done() && !body.failed() && r.ProtoMajor == 1
		if unread {
			w.Header().Set("Connection", "close")
		}
		if errors.Is(r.Context().Err(), context.Canceled) {
			return 0, false // the client went away; nobody to answer
		}
		switch {
		case f.onError != nil:
			// The gateway's own answers (a body over its limit is a 413).
			f.logFailed(r.Method, r.URL.Path, err)
			f.onError(w, r, err)
		case body != nil && body.failed():
			// The caller's body is malformed (a bad chunk): the request
			// is refused, as one with a malformed head is, and the
			// connection goes with it.
			w.Header().Set("Connection", "close")
			badRequest(w)
			return http.StatusBadRequest, false
		default:
			f.failed(w, r.Method, r.URL.Path, err)
			status = http.StatusServiceUnavailable
		}
		if unread && !body.done() {
			early = finishEarly(http.NewResponseController(w), r, body)
		}
		return status, early
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if !switchedTo(resp, upgrade) {
			resp.Body.Close()
			f.refuseSwitch(w, upgrade, resp.Header.Get("Upgrade"))
			return http.StatusBadGateway, false
		}
		f.upgrade(w, r, resp, onHijack)
		return http.StatusSwitchingProtocols, false
	}
	defer resp.Body.Close()

	removeHopHeaders(resp.Header, nil)
	dst := w.Header()
	for k, vv := range resp.Header {
		dst[k] = vv
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst["Trailer"] = []string{strings.Join(names, ", ")}
	}
	announced := len(resp.Trailer)
	// An answer that comes before the request's body has been read to its
	// end (an upstream refusing an upload from its head, or answering and
	// closing) may be the whole exchange: on HTTP/1.x the connection then
	// closes after it, as Envoy's and nginx's do, since what the client
	// still sends of its body would otherwise be read as the next request
	// (see finishEarly). A full-duplex stream that goes on to send its body
	// whole only costs a new connection.
	if body != nil && !body.done() && r.ProtoMajor == 1 {
		dst["Connection"] = []string{"close"}
	}
	w.WriteHeader(resp.StatusCode)

	rc := http.NewResponseController(w)
	streaming := resp.ContentLength == -1
	if streaming {
		_ = rc.Flush() // gRPC and SSE clients wait for headers
	}
	bp := bufPool.Get().(*[]byte)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			*respBytes += int64(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
			if streaming {
				_ = rc.Flush()
			}
		}
		if rerr != nil {
			if rerr != io.EOF {
				f.s.log.Debug("response body copy ended", "listener", f.name, "err", rerr)
				// Abort so the client sees a reset (HTTP/2 RST_STREAM, a
				// closed HTTP/1.1 connection) rather than a body that ends
				// cleanly but truncated — whether the upstream failed or
				// the request was cut off (its token revoked).
				bufPool.Put(bp)
				panic(http.ErrAbortHandler)
			}
			break
		}
	}
	bufPool.Put(bp)
	if len(resp.Trailer) > 0 {
		for k, vv := range resp.Trailer {
			if announced > 0 {
				dst[k] = vv
			} else {
				dst[http.TrailerPrefix+k] = vv
			}
		}
	}
	if body != nil && !body.done() {
		early = finishEarly(rc, r, body)
	}
	return resp.StatusCode, early
}

// finishEarly ends a request whose answer is complete before its body
// was read to the end. The transport may still be sending that body,
// blocked reading the client, who may send nothing more until it has the
// answer (curl after Expect: 100-continue, a client that reads while it
// writes): closing the answer's body waits for that sender, and net/http's
// request body holds its lock while it reads, so nothing else can stop it
// but the client or the read timeout. The answer is flushed to the client
// first, then the client's body is cut off with a read deadline in the
// past, which wakes the blocked read: on HTTP/1.x the connection then
// closes after the answer (it said Connection: close, see forward); on
// HTTP/2 the stream ends and net/http resets it with NO_ERROR, asking the
// client to stop sending (RFC 9113 section 8.1), while the connection's
// other streams go on.
//
// On HTTP/1.x the body is then sealed: a read the deadline woke has
// ended, and nothing reads the connection through it any more (the
// transport's later Close included, which net/http's body would make a
// read of up to 256 KiB), so that the caller may take the connection over
// and close it lingering; early reports that it should.
func finishEarly(rc *http.ResponseController, r *http.Request, body *bodyReader) (early bool) {
	_ = rc.Flush()
	if err := rc.SetReadDeadline(time.Unix(1, 0)); err != nil {
		if r.ProtoMajor != 1 {
			// No deadline to set (an HTTP/2 body's Close does not wait
			// for its reader): close the body instead.
			r.Body.Close()
		}
		// An HTTP/1.x writer without deadlines: a read of the body may
		// still be blocked, the connection cannot be taken over.
		return false
	}
	if r.ProtoMajor != 1 {
		return false
	}
	body.seal()
	return true
}

// bodyReader remembers whether reading a request body failed otherwise
// than by its end, whether it was read to its end and how many bytes were
// read; once sealed (finishEarly) it reads and closes nothing.
type bodyReader struct {
	io.ReadCloser
	// length is the body's Content-Length, -1 when unknown (chunked).
	length int64
	read   atomic.Int64
	err    atomic.Bool
	eof    atomic.Bool
	// sealable: an HTTP/1.x body, which finishEarly may seal. mu is then
	// held by a read of ReadCloser (the transport's goroutine), by Close
	// and by seal, which waits for a read in progress; sealed is set
	// under mu. (net/http's HTTP/1.x body serializes its reads and Close
	// the same way; an HTTP/2 body is never sealed, and its Close must
	// not wait for a read: the transport closes it to end one.)
	sealable bool
	mu       sync.Mutex
	sealed   bool
}

// errBodySealed is what a read of a body sealed after an early answer
// returns.
var errBodySealed = errors.New("proxy: request body no longer read: the answer came first")

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.sealable {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.sealed {
			return 0, errBodySealed
		}
	}
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.read.Add(int64(n))
	}
	switch {
	case err == io.EOF:
		b.eof.Store(true)
	case err != nil:
		b.err.Store(true)
	}
	return n, err
}

// Close closes the body unless it was sealed: the connection it reads
// may have been taken over by then.
func (b *bodyReader) Close() error {
	if b.sealable {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.sealed {
			return nil
		}
	}
	return b.ReadCloser.Close()
}

// seal waits for a read in progress to end (the caller woke it with a
// read deadline) and makes every later Read fail and Close do nothing.
// Only a sealable body may be sealed.
func (b *bodyReader) seal() {
	b.mu.Lock()
	b.sealed = true
	b.mu.Unlock()
}

func (b *bodyReader) failed() bool { return b.err.Load() }

// done reports whether the body was read to its end: its EOF, or as
// many bytes as its Content-Length says (a client that reads exactly
// that many, as the lean app client does, never asks for the EOF).
func (b *bodyReader) done() bool {
	return b.eof.Load() || b.length >= 0 && b.read.Load() >= b.length
}

// failed answers a request that could not be forwarded (err) and counts
// and logs it; path is the decoded path, never the query.
func (f *forwarder) failed(w http.ResponseWriter, method, path string, err error) {
	f.logFailed(method, path, err)
	body := "upstream connect error or disconnect/reset before headers"
	if f.errBody != nil {
		body = f.errBody(err)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, body)
}

// logFailed counts and logs a request that could not be forwarded.
func (f *forwarder) logFailed(method, path string, err error) {
	f.s.metrics.upstreamErrors.WithLabelValues(f.name).Inc()
	// url.Error would print the request URL, query included, and a
	// query can carry a token (RequestAuthentication fromParams).
	logErr := err
	var ue *url.Error
	if errors.As(err, &ue) {
		logErr = ue.Err
	}
	f.s.log.Warn("forward failed", "listener", f.name, "method", method, "path", path, "err", logErr)
}

// refuseSwitch answers 502 to a 101 that switches to another protocol
// than asked ("" when none was).
func (f *forwarder) refuseSwitch(w http.ResponseWriter, asked, answered string) {
	f.s.log.Warn("protocol switch refused", "listener", f.name, "asked", asked, "answered", answered)
	http.Error(w, "upstream switched protocols unasked", http.StatusBadGateway)
}

// upgrade completes a protocol switch (WebSocket): the 101 goes to the
// client, then bytes are piped both ways until either side closes.
func (f *forwarder) upgrade(w http.ResponseWriter, r *http.Request, resp *http.Response, onHijack func(net.Conn) func()) {
	back, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		http.Error(w, "upgrade failed", http.StatusBadGateway)
		return
	}
	defer back.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 from the client: no connection to take over.
		http.Error(w, "protocol upgrade needs HTTP/1.1", http.StatusBadGateway)
		return
	}
	done := func() {}
	if onHijack != nil {
		done = onHijack(conn)
	}
	defer done()
	defer conn.Close()
	// The request's context ending ends the stream: it is how a request
	// is cut off when the token that authenticated it is revoked (the
	// sidecar's and the gateway's trackers cancel it), and a hijacked
	// connection no longer hears of it otherwise. Once hijacked, nothing
	// else cancels it before the handler returns (no timeout is set on
	// an upgrade).
	stop := context.AfterFunc(r.Context(), func() {
		conn.Close()
		back.Close()
	})
	defer stop()
	resp.Header.Del("Keep-Alive")
	// Status line and headers only: the body is the upgraded stream.
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	if err := resp.Header.Write(brw); err != nil {
		return
	}
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	var client io.Reader = conn
	if n := brw.Reader.Buffered(); n > 0 {
		client = io.MultiReader(io.LimitReader(brw.Reader, int64(n)), conn)
	}
	pipe(conn, client, back, back)
}

// pipe copies a→b and b→a until both directions end, half-closing each
// side's write direction when its source ends so protocols with a final
// message after EOF work. ar/br are the read sides (which may replay
// buffered bytes), aw/bw the conns themselves.
func pipe(aw io.Writer, ar io.Reader, bw io.Writer, br io.Reader) {
	done := make(chan struct{}, 1)
	go func() {
		copyBuf(bw, ar)
		closeWrite(bw)
		done <- struct{}{}
	}()
	copyBuf(aw, br)
	closeWrite(aw)
	<-done
}

// copyBuf copies through a pooled buffer, hiding ReaderFrom/WriterTo so the
// pool's buffer is the one used.
func copyBuf(dst io.Writer, src io.Reader) {
	bp := bufPool.Get().(*[]byte)
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	bufPool.Put(bp)
}

func closeWrite(w io.Writer) {
	switch c := w.(type) {
	case interface{ CloseWrite() error }:
		_ = c.CloseWrite()
	case io.Closer:
		_ = c.Close()
	}
}
