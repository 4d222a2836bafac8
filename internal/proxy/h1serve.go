package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
)

// The HTTP/1.1 fast path serves the common shape of request — HTTP/1.1,
// a Content-Length body of at most fastMaxBody bytes or none, no
// upgrade, no Expect — on one goroutine per client connection: the
// request head is read into the connection's buffer and parsed in place
// (h1parse.go), the one function each listener shares with net/http's
// server decides it (inbound.decide; the outbound's target normalization),
// the request goes out with one write on a pooled upstream connection
// taken for the exchange, and the answer comes back with one write where
// it fits one TLS record. net/http's server and client hand every request
// between goroutines and allocate a request, a header map and a response
// per request; this path allocates the head's copy and its header map.
//
// Everything else — another HTTP version, a chunked body, a larger
// body, Expect, an upgrade the listener carries, CONNECT, HTTP/2 — is
// handed to net/http's server before the fast path has acted on it: the
// bytes read so far are replayed to it, it serves that request exactly as
// it serves any, and the connection closes after the answer, so that
// every request head on a connection meets the fast path's parser and its
// refusals.

// fastMaxBody is the largest request body the fast path reads whole
// before forwarding it (and can resend on a new upstream connection).
const fastMaxBody = 64 << 10

// fastBufSize is the read buffer of a client connection; it grows for
// larger heads and bodies while one is read and shrinks back after.
const fastBufSize = 4 << 10

// fastIOSize is the buffer a request and an answer are composed in and
// read through: one TLS record's worth.
const fastIOSize = 16 << 10

var (
	fastConnBufs = sync.Pool{New: func() any { b := make([]byte, fastBufSize); return &b }}
	fastIOBufs   = sync.Pool{New: func() any { b := make([]byte, fastIOSize); return &b }}
)

// fastConn is one client connection on the fast path.
type fastConn struct {
	nc     net.Conn
	s      *Sidecar
	pooled *[]byte // the pooled buffer buf is, nil when it grew
	buf    []byte
	r, w   int // buf[r:w] is read and not yet consumed
	req    h1Request
	resp   h1Response
	// status and respBytes are the status and response body bytes sent
	// to the client for the request being served (0 when none was), for
	// its traffic record.
	status    int
	respBytes int64
	// lastPost: the previous request was a POST, after which net/http
	// skips a stray CRLF (old clients sent one after the body).
	lastPost bool
	// deadline is the read deadline last set on nc.
	deadline time.Time
	// linger: the connection closes lingering (settle).
	linger   bool
	draining func() bool
	// aborted is set, and up's deadline moved to the past, when the
	// connection's identity or a request's token is revoked mid-request.
	aborted atomic.Bool
	up      atomic.Pointer[appConn]
	// abortFn is abort as a func value, made once per connection rather
	// than once per token-authenticated request.
	abortFn func()
	// jti is the token ID the connection is registered under in the
	// sidecar's live tracker (jtiEntry), "" for none: that of the last
	// request that carried a token with one. See holdToken.
	jti      string
	jtiEntry *tracked
	// piiMax is how many response body bytes of the request being served
	// are kept in pii for the PII scanner (0: the response is not
	// sampled); see Recorder.piiSample.
	piiMax int
	pii    []byte
	// memo is the connection's memo of the sidecar's token verifier (nil
	// until a request needs one, and when the Verifier has none): its
	// requests come one at a time, mostly with the same token.
	memo *authn.Memo
}

// verifier is the token verifier of the connection's requests: its memo
// of the sidecar's Verifier when that offers one (ConnectionVerifier),
// else the Verifier.
func (fc *fastConn) verifier() policy.JWTVerifier {
	if fc.memo != nil {
		return fc.memo
	}
	jv := fc.s.verifier()
	if cv, ok := jv.(ConnectionVerifier); ok {
		fc.memo = cv.Memo()
		return fc.memo
	}
	return jv
}

func newFastConn(s *Sidecar, nc net.Conn, draining func() bool) *fastConn {
	p := fastConnBufs.Get().(*[]byte)
	fc := &fastConn{nc: nc, s: s, pooled: p, buf: *p, draining: draining}
	fc.abortFn = fc.abort
	return fc
}

// abort closes the client connection and fails the upstream exchange in
// flight, if any. Safe for concurrent use.
func (fc *fastConn) abort() {
	fc.aborted.Store(true)
	fc.nc.Close()
	if pc := fc.up.Load(); pc != nil {
		pc.nc.SetDeadline(time.Unix(1, 0))
	}
}

// release returns the read buffer and drops the connection's token
// registration. The connection must not be read after.
func (fc *fastConn) release() {
	fc.holdToken("", nil)
	if fc.memo != nil {
		fc.memo.Forget()
		fc.memo = nil
	}
	if fc.pooled != nil {
		fastConnBufs.Put(fc.pooled)
		fc.pooled = nil
	}
	fc.buf = nil
}

// fastOutcome is how serving a request leaves the connection.
type fastOutcome uint8

const (
	fastKeep    fastOutcome = iota // read the next request
	fastClose                      // close the connection
	fastHandoff                    // hand the connection, from this request on, to net/http
)

// serve reads and serves requests until the connection is to be closed or
// handed off. handle serves one request fc.req accepted (h1OK).
func (fc *fastConn) serve(handle func(fc *fastConn) fastOutcome) fastOutcome {
	for {
		v, err := fc.readHead()
		if err != nil {
			return fastClose
		}
		switch v {
		case h1Refuse:
			fc.refuse(fc.req.refuse)
			return fastClose
		case h1Handoff:
			return fastHandoff
		}
		switch o := handle(fc); {
		case o != fastKeep:
			return o
		case fc.draining():
			return fastClose
		}
	}
}

// setReadDeadline moves nc's read deadline to t unless it is already
// within a second after t: while requests keep coming, the deadline is
// set about once a second, not once a request.
func (fc *fastConn) setReadDeadline(t time.Time) {
	if d := fc.deadline.Sub(t); d >= 0 && d <= time.Second {
		return
	}
	fc.deadline = t
	fc.nc.SetReadDeadline(t)
}

// readHead reads until fc.buf[fc.r:] starts with a request head the
// parser can judge. Waiting for a request is bounded by IdleTimeout,
// reading a head that has begun by ReadHeaderTimeout, and a head by
// MaxHeaderBytes (431 past it, as net/http).
func (fc *fastConn) readHead() (h1Verdict, error) {
	cfg := &fc.s.cfg
	limit := fc.s.headLimit()
	skipped := false
	for {
		if fc.r == fc.w {
			fc.r, fc.w = 0, 0
			fc.shrink()
			fc.setReadDeadline(time.Now().Add(cfg.IdleTimeout))
			if fc.draining() {
				return 0, net.ErrClosed
			}
		} else {
			if fc.lastPost && !skipped {
				for i := 0; i < 4 && fc.r < fc.w && (fc.buf[fc.r] == '\r' || fc.buf[fc.r] == '\n'); i++ {
					fc.r++
				}
				skipped = fc.r < fc.w
				if !skipped {
					continue
				}
			}
			v := parseRequestHead(fc.buf[fc.r:fc.w], &fc.req)
			if v != h1More {
				return v, nil
			}
			if fc.w-fc.r >= limit {
				fc.req.refuse = http.StatusRequestHeaderFieldsTooLarge
				return h1Refuse, nil
			}
			if t := time.Now().Add(cfg.ReadHeaderTimeout); t.Before(fc.deadline) {
				fc.setReadDeadline(t)
			}
		}
		if err := fc.fill(limit); err != nil {
			return 0, err
		}
	}
}

// fill reads more of the connection into buf, making room first: the
// unread bytes move to the front, and the buffer grows (up to max bytes)
// when they fill it.
func (fc *fastConn) fill(max int) error {
	if fc.w == len(fc.buf) {
		if fc.r > 0 {
			fc.w = copy(fc.buf, fc.buf[fc.r:fc.w])
			fc.r = 0
		}
		if fc.w == len(fc.buf) {
			if len(fc.buf) >= max {
				return errors.New("proxy: request too large for the buffer")
			}
			nb := make([]byte, min(2*len(fc.buf), max))
			copy(nb, fc.buf[:fc.w])
			if fc.pooled != nil {
				fastConnBufs.Put(fc.pooled)
				fc.pooled = nil
			}
			fc.buf = nb
		}
	}
	n, err := fc.nc.Read(fc.buf[fc.w:])
	fc.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// shrink goes back to a pooled buffer once a larger one is empty.
func (fc *fastConn) shrink() {
	if fc.pooled == nil && fc.r == fc.w {
		fc.pooled = fastConnBufs.Get().(*[]byte)
		fc.buf = *fc.pooled
		fc.r, fc.w = 0, 0
	}
}

// readBody makes buf[fc.r:] hold the head and the body, n bytes.
func (fc *fastConn) readBody(n int) error {
	for fc.w-fc.r < n {
		if err := fc.fill(fc.r + n); err != nil {
			return err
		}
	}
	return nil
}

// consume forgets the request just served (n bytes of head and body).
func (fc *fastConn) consume(n int, method string) {
	fc.r += n
	fc.lastPost = method == http.MethodPost
}

// request is the request head just parsed, copied out of the connection's
// buffer into one immutable string (anything that keeps a part of it — a
// decision record, a Rego result — keeps a valid string), with its
// header map.
type fastRequest struct {
	method, target, host string
	header               http.Header
	body                 []byte // in the connection's buffer: valid until consume
	size                 int    // head and body
}

// request copies the head out and reads the body. ok is false when the
// connection failed.
func (fc *fastConn) request() (fr fastRequest, ok bool) {
	req := &fc.req
	head := string(fc.buf[fc.r : fc.r+req.n])
	fr.method = head[req.method.off:req.method.end]
	fr.target = head[req.target.off:req.target.end]
	fr.host = head[req.host.off:req.host.end]
	if req.absolute != nil && req.absolute.Host != "" {
		fr.host = req.absolute.Host // net/http's Request.Host
	}
	fr.header = newHeader(head, req.fields)
	fr.size = req.n + int(req.length)
	return fr, true
}

// readRequestBody reads the body of the request just parsed into the
// buffer (fr.body), once it is to be forwarded; false when the
// connection failed. The sidecar's own answers (a denial, a refusal) are
// decided from the head and do not wait for it (settle).
func (fc *fastConn) readRequestBody(fr *fastRequest) bool {
	if err := fc.readBody(fr.size); err != nil {
		return false
	}
	fr.body = fc.buf[fc.r+fc.req.n : fc.r+fr.size]
	return true
}

// settle runs before the fast path's own answer to the request just
// parsed, whose body it has not read: a body the client has sent whole
// (in the buffer, or arriving within DrainWait and DrainTime) is read and the
// connection kept unless close; otherwise the answer goes out at once
// and the connection closes lingering after it (fc.linger, see
// DrainUnread). keep reports whether the connection is kept; n is the
// body bytes read.
func (fc *fastConn) settle(fr *fastRequest, close bool) (keep bool, n int64) {
	whole := fc.w-fc.r >= fr.size
	if !whole && !close {
		end := time.Now().Add(DrainTime)
		for !whole {
			fc.nc.SetReadDeadline(drainDeadline(end))
			if fc.fill(fc.r+fr.size) != nil {
				break
			}
			whole = fc.w-fc.r >= fr.size
		}
		fc.nc.SetReadDeadline(fc.deadline)
	}
	fc.linger = !whole
	return whole && !close, int64(min(max(fc.w-fc.r-fc.req.n, 0), fr.size-fc.req.n))
}

// bufferedResponse is the http.ResponseWriter of answers the sidecar
// writes itself on the fast path (refusals, denials, forwarding errors),
// so that both server paths write them with the same functions.
type bufferedResponse struct {
	h      http.Header
	status int
	body   []byte
}

func (r *bufferedResponse) Header() http.Header {
	if r.h == nil {
		r.h = make(http.Header, 4)
	}
	return r.h
}

func (r *bufferedResponse) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (r *bufferedResponse) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	r.body = append(r.body, p...)
	return len(p), nil
}

// respond writes r to the client, as net/http's server would (status line,
// sorted fields, Date, Content-Length, no body for HEAD), closing the
// connection after it when close is set. It reports the outcome.
func (fc *fastConn) respond(r *bufferedResponse, method string, close bool) fastOutcome {
	close = close || fc.draining()
	op := fastIOBufs.Get().(*[]byte)
	defer fastIOBufs.Put(op)
	out := appendStatusLine((*op)[:0], r.status)
	keys := make([]string, 0, len(r.h))
	for k := range r.h {
		if k != "Content-Length" && k != "Connection" && k != "Transfer-Encoding" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range r.h[k] {
			out = appendField(out, k, v)
		}
	}
	if _, ok := r.h["Date"]; !ok {
		out = appendDate(out)
	}
	out = append(out, "Content-Length: "...)
	out = strconv.AppendInt(out, int64(len(r.body)), 10)
	out = append(out, "\r\n"...)
	if close {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "\r\n"...)
	fc.status = r.status
	if method != http.MethodHead {
		out = append(out, r.body...)
		fc.respBytes = int64(len(r.body))
		fc.sample(r.body) // a forwarding error's answer, as net/http's path samples it
	}
	if _, err := fc.nc.Write(out); err != nil || close {
		return fastClose
	}
	return fastKeep
}

// refuse answers a request the parser refused, as net/http's server
// answers one it cannot read, and the connection closes.
func (fc *fastConn) refuse(status int) {
	text := fmt.Sprintf("%d %s", status, http.StatusText(status))
	fc.nc.Write([]byte("HTTP/1.1 " + text + "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" + text))
}

func appendStatusLine(out []byte, code int) []byte {
	out = append(out, "HTTP/1.1 "...)
	if text := http.StatusText(code); text != "" {
		out = strconv.AppendInt(out, int64(code), 10)
		out = append(out, ' ')
		out = append(out, text...)
	} else {
		out = fmt.Appendf(out, "%03d status code %d", code, code)
	}
	return append(out, "\r\n"...)
}

func appendField(out []byte, name, value string) []byte {
	out = append(out, name...)
	out = append(out, ": "...)
	out = append(out, value...)
	return append(out, "\r\n"...)
}

// dateCache holds the Date field of the current second.
var dateCache atomic.Pointer[struct {
	sec  int64
	line []byte
}]

// appendDate appends "Date: <now>\r\n" (net/http adds one to every
// answer that has none; RFC 9110 §6.6.1 asks a proxy to).
func appendDate(out []byte) []byte {
	now := time.Now()
	d := dateCache.Load()
	if d == nil || d.sec != now.Unix() {
		line := now.UTC().AppendFormat([]byte("Date: "), http.TimeFormat)
		d = &struct {
			sec  int64
			line []byte
		}{now.Unix(), append(line, "\r\n"...)}
		dateCache.Store(d)
	}
	return append(out, d.line...)
}

// hopField is hopHeader for a name in a buffer.
func hopField(name []byte) bool {
	// The string only lives for the comparison.
	return hopHeader(unsafe.String(unsafe.SliceData(name), len(name)))
}

// errClientGone: writing to the client failed; the connection is done.
var errClientGone = errors.New("proxy: client connection failed")

// exchange sends a request to up and relays the answer to the client. The
// request head is written by appendRequestHead from what was decided
// (method, target, host, h), with the body, in one write. A failure
// before the answer's head arrives is retried once on a new connection
// when the pooled one was found dead and the request is replayable (as
// appClient does); otherwise it is answered as the forwarder answers it.
func (fc *fastConn) exchange(f *forwarder, up *appClient, method, target, host string, h http.Header, body []byte, closeAfter bool) fastOutcome {
	op := fastIOBufs.Get().(*[]byte)
	defer fastIOBufs.Put(op)
	out, err := appendRequestHead((*op)[:0], method, target, host, h, int64(len(body)))
	if err != nil {
		return fc.forwardFailed(f, method, target, err, closeAfter)
	}
	out = append(out, body...)
	ip := fastIOBufs.Get().(*[]byte)
	defer fastIOBufs.Put(ip)
	in := *ip
	head := method == http.MethodHead
	var (
		pc *appConn
		n  int
		v  h1Verdict
	)
	for attempt := 0; ; attempt++ {
		var reused bool
		pc, reused, err = up.get(context.Background())
		if err != nil {
			return fc.forwardFailed(f, method, target, err, closeAfter)
		}
		fc.up.Store(pc)
		if fc.aborted.Load() {
			fc.up.Store(nil)
			pc.nc.Close()
			return fastClose
		}
		if _, err = pc.nc.Write(out); err == nil {
			n, v, err = readResponseHead(pc.nc, in, head, &fc.resp)
		}
		if err == nil {
			break
		}
		fc.up.Store(nil)
		pc.nc.Close()
		if fc.aborted.Load() {
			return fastClose
		}
		if !reused || attempt > 0 || n > 0 || !replayable(method, h) {
			return fc.forwardFailed(f, method, target, err, closeAfter)
		}
	}
	var o fastOutcome
	reuse := false
	if v == h1OK && !fc.resp.chunked {
		reuse, err = fc.relay(pc.nc, in, n, out[:0], closeAfter)
		o = fastKeep
		if err != nil || closeAfter {
			o = fastClose
		}
	} else {
		o = fc.relayResponse(f, pc.nc, in[:n], method, closeAfter)
	}
	fc.up.Store(nil)
	if reuse && !fc.aborted.Load() {
		up.put(pc)
	} else {
		pc.nc.Close()
	}
	if fc.aborted.Load() {
		return fastClose
	}
	return o
}

// forwardFailed answers a request whose upstream exchange failed before
// any answer (the forwarder's 503).
func (fc *fastConn) forwardFailed(f *forwarder, method, target string, err error, closeAfter bool) fastOutcome {
	var rw bufferedResponse
	path, _, _ := cutQuery(target)
	f.failed(&rw, method, decodedPath(path), err)
	return fc.respond(&rw, method, closeAfter)
}

func cutQuery(target string) (path, query string, ok bool) {
	for i := 0; i < len(target); i++ {
		if target[i] == '?' {
			return target[:i], target[i+1:], true
		}
	}
	return target, "", false
}

// sample keeps the first bytes of the response body relayed, when the
// response is sampled for PII (as piiWriter does on net/http's path).
func (fc *fastConn) sample(b []byte) {
	if room := fc.piiMax - len(fc.pii); room > 0 && len(b) > 0 {
		fc.pii = append(fc.pii, b[:min(room, len(b))]...)
	}
}

// readResponseHead reads from nc into in until it holds a response head
// parseResponseHead can judge (h1Handoff also when the head outgrows
// in). n is how much was read.
func readResponseHead(nc net.Conn, in []byte, head bool, resp *h1Response) (n int, v h1Verdict, err error) {
	for {
		m, rerr := nc.Read(in[n:])
		n += m
		if n > 0 {
			if v = parseResponseHead(in[:n], head, resp); v != h1More {
				return n, v, nil
			}
			if n == len(in) {
				return n, h1Handoff, nil
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				rerr = io.ErrUnexpectedEOF
			}
			return n, v, rerr
		}
	}
}

// relay writes the answer parsed into fc.resp (a Content-Length body, or
// none) to the client: its head without hop-by-hop fields, with Date,
// then the body, in one write when both fit in out. in[:n] is what was
// read from the upstream so far. reuse reports that the upstream
// connection is left at the end of the answer with nothing more read; err
// that the client or the upstream failed mid-answer.
func (fc *fastConn) relay(up net.Conn, in []byte, n int, out []byte, closeAfter bool) (reuse bool, err error) {
	resp := &fc.resp
	closeAfter = closeAfter || fc.draining()
	out = appendStatusLine(out, resp.status)
	for _, f := range resp.fields {
		name := in[f.name.off:f.name.end]
		value := in[f.value.off:f.value.end]
		if hopField(name) {
			if string(name) != "Te" || !keepTE(string(value)) {
				continue
			}
		}
		if resp.status == http.StatusNoContent && string(name) == "Content-Length" {
			continue
		}
		out = append(out, name...)
		out = append(out, ": "...)
		out = append(out, value...)
		out = append(out, "\r\n"...)
	}
	if !resp.hasDate {
		out = appendDate(out)
	}
	if closeAfter {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "\r\n"...)
	body := in[resp.n:n]
	reuse = !resp.close
	if int64(len(body)) > resp.length {
		body = body[:resp.length] // the upstream sent more than its answer
		reuse = false
	}
	left := resp.length - int64(len(body))
	fc.status, fc.respBytes = resp.status, resp.length
	fc.sample(body)
	for {
		c := copy(out[len(out):cap(out)], body)
		out, body = out[:len(out)+c], body[c:]
		if len(body) > 0 || left == 0 {
			if _, werr := fc.nc.Write(out); werr != nil {
				return false, errClientGone
			}
			out = out[:0]
			if len(body) > 0 {
				continue
			}
			return reuse, nil
		}
		m, rerr := up.Read(in[:min(int64(len(in)), left)])
		body, left = in[:m], left-int64(m)
		fc.sample(body)
		if m == 0 && rerr != nil {
			// Cut short: the client must see a broken answer, not a
			// shorter one.
			fc.respBytes = resp.length - left
			return false, rerr
		}
	}
}

// relayResponse relays an answer the fast parser left to
// net/http.ReadResponse (informational answers first, a chunked or
// close-delimited body, unusual fields): read by net/http, written back
// as net/http's server writes a forwarded answer (hop-by-hop fields
// removed, a body of unknown length chunked, trailers carried). in is
// what was read from up so far. The upstream connection is not reused.
func (fc *fastConn) relayResponse(f *forwarder, up net.Conn, in []byte, method string, closeAfter bool) fastOutcome {
	hl := &headLimit{r: io.MultiReader(bytes.NewReader(in), up), left: maxResponseHeadBytes}
	br := bufio.NewReader(hl)
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return fc.forwardFailed(f, method, "", err, closeAfter)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		resp.Body.Close() // 1xx: informational, the real answer follows
	}
	hl.left = -1
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The fast path forwards no upgrade: every switch is unasked.
		var rw bufferedResponse
		f.refuseSwitch(&rw, "", resp.Header.Get("Upgrade"))
		return fc.respond(&rw, method, closeAfter)
	}
	closeAfter = closeAfter || fc.draining()
	fc.status = resp.StatusCode
	removeHopHeaders(resp.Header, nil)
	noBody := method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	chunked := !noBody && resp.ContentLength < 0
	op := fastIOBufs.Get().(*[]byte)
	defer fastIOBufs.Put(op)
	out := appendStatusLine((*op)[:0], resp.StatusCode)
	keys := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if chunked && k == "Content-Length" {
			continue
		}
		for _, v := range resp.Header[k] {
			out = appendField(out, k, v)
		}
	}
	if _, ok := resp.Header["Date"]; !ok {
		out = appendDate(out)
	}
	if chunked {
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
		if len(resp.Trailer) > 0 {
			names := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				names = append(names, k)
			}
			slices.Sort(names)
			for _, k := range names {
				out = appendField(out, "Trailer", k)
			}
		}
	}
	if closeAfter {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "\r\n"...)
	if noBody {
		if _, err := fc.nc.Write(out); err != nil {
			return fastClose
		}
		if closeAfter {
			return fastClose
		}
		return fastKeep
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		m, rerr := resp.Body.Read(buf)
		fc.respBytes += int64(m)
		fc.sample(buf[:m])
		if m > 0 {
			if chunked {
				out = strconv.AppendInt(out, int64(m), 16)
				out = append(out, "\r\n"...)
				out = append(out, buf[:m]...)
				out = append(out, "\r\n"...)
			} else {
				out = append(out, buf[:m]...)
			}
		}
		if rerr == io.EOF && chunked {
			out = append(out, "0\r\n"...)
			for k, vv := range resp.Trailer {
				for _, v := range vv {
					out = appendField(out, k, v)
				}
			}
			out = append(out, "\r\n"...)
		}
		// Flushed on every read: a streamed answer (server-sent events)
		// reaches the client as it comes.
		if len(out) > 0 {
			if _, err := fc.nc.Write(out); err != nil {
				return fastClose
			}
			out = out[:0]
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			f.s.log.Debug("response body copy ended", "listener", f.name, "err", rerr)
			return fastClose
		}
	}
	if closeAfter {
		return fastClose
	}
	return fastKeep
}

// handoffConn replays, to net/http's server, the bytes the fast path read
// from a connection and did not serve.
type handoffConn struct {
	net.Conn
	rest []byte
}

func (c *handoffConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// handoffTLSConn is a handoffConn of a TLS connection. net/http looks for
// ConnectionState on a connection that is not a *tls.Conn and then
// treats it as TLS (Request.TLS set, no h2c), as it did the *tls.Conn.
type handoffTLSConn struct{ *handoffConn }

func (c handoffTLSConn) ConnectionState() tls.ConnectionState {
	return c.Conn.(*tls.Conn).ConnectionState()
}

// handoff releases fc's buffer and returns the connection for net/http's
// server, replaying what fc read and did not serve.
func (fc *fastConn) handoff() net.Conn {
	hc := &handoffConn{Conn: fc.nc, rest: bytes.Clone(fc.buf[fc.r:fc.w])}
	fc.release()
	fc.nc.SetReadDeadline(time.Time{})
	if _, ok := fc.nc.(*tls.Conn); ok {
		return handoffTLSConn{hc}
	}
	return hc
}

type handoffKey struct{}

// markHandoff is net/http's ConnContext for listeners that take handed
// off or guarded connections: it notes which, for framed.
func markHandoff(ctx context.Context, c net.Conn) context.Context {
	switch c := c.(type) {
	case *handoffConn, handoffTLSConn:
		return context.WithValue(ctx, handoffKey{}, true)
	case *framingGuard:
		return context.WithValue(ctx, handoffKey{}, c)
	case framingGuardTLS:
		return context.WithValue(ctx, handoffKey{}, c.framingGuard)
	}
	return ctx
}

// framed runs first for every request net/http's server hands the
// sidecar. On an HTTP/1.x connection the fast path handed off, it makes
// the server close the connection once it has answered: the next request
// on it meets the fast path's parser again, on a new connection. On a
// guarded one (framingGuard) it refuses, as the fast path does, a request
// whose head the fast path's parser refuses (400, or 431, and the
// connection closed), and closes the connection after a request whose
// body the guard did not follow. It reports whether to serve r; when
// false, r has been answered.
func framed(w http.ResponseWriter, r *http.Request) bool {
	if r.ProtoMajor != 1 {
		return true
	}
	switch v := r.Context().Value(handoffKey{}).(type) {
	case bool:
		w.Header().Set("Connection", "close")
	case *framingGuard:
		status, closeAfter := v.take()
		if closeAfter {
			w.Header().Set("Connection", "close")
		}
		if status != 0 {
			http.Error(w, fmt.Sprintf("%d %s", status, http.StatusText(status)), status)
			return false
		}
	}
	return true
}

// fastConns are the fast path connections of one listener, for Shutdown
// to wake the idle ones.
type fastConns struct {
	mu sync.Mutex
	m  map[*fastConn]struct{}
}

func (s *fastConns) add(fc *fastConn) {
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[*fastConn]struct{})
	}
	s.m[fc] = struct{}{}
	s.mu.Unlock()
}

func (s *fastConns) remove(fc *fastConn) {
	s.mu.Lock()
	delete(s.m, fc)
	s.mu.Unlock()
}

// wake interrupts every connection's read: one waiting for a request sees
// the listener draining and closes; one serving a request finishes it
// (its reads are of its own upstream connection) and closes.
func (s *fastConns) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for fc := range s.m {
		fc.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// begin takes up the request just parsed: it reads the body and says
// whether the fast path serves the request. When ok is false, o is the
// outcome to return: a handoff to net/http's server for a body over
// fastMaxBody or an upgrade the listener carries (upgrades: a WebSocket,
// which that server takes over), a close when the connection failed.
func (fc *fastConn) begin(upgrades []string) (fr fastRequest, o fastOutcome, ok bool) {
	if fc.req.length > fastMaxBody {
		return fr, fastHandoff, false
	}
	if fr, ok = fc.request(); !ok {
		return fr, fastClose, false
	}
	if upgradeOf(fr.header["Connection"], fr.header["Upgrade"], upgrades) != "" {
		return fr, fastHandoff, false
	}
	return fr, fastKeep, true
}

// startRecord starts the traffic record o of the request being served,
// kept as ServeHTTP keeps it so that detection sees every request,
// whichever path served it. rec is nil when the sidecar records no
// traffic; end (deferred by the caller) counts the record with the
// status, response bytes and latency of the answer sent.
func (fc *fastConn) startRecord(o Observation) (rec *Observation, end func()) {
	fc.status, fc.respBytes = 0, 0
	if fc.s.rec == nil {
		return nil, func() {}
	}
	rec = &o
	start := time.Now()
	return rec, func() {
		rec.Status, rec.RespBytes, rec.Latency = fc.status, fc.respBytes, time.Since(start)
		fc.s.observe(rec)
	}
}

// fastRequest serves one inbound request on the fast path (see decide).
func (ib *inbound) fastRequest(fc *fastConn, info *connInfo, app *appClient) fastOutcome {
	s := ib.s
	fr, o, ok := fc.begin(ib.fwd.upgrades)
	if !ok {
		return o
	}
	h := fr.header
	defer fc.consume(fr.size, fr.method)
	ob, done := fc.startRecord(ib.observation(info, fr.method))
	defer done()
	closeAfter := fc.req.close
	st := s.policy.Load()
	ctx := context.Background()
	var span trace.Span
	if s.cfg.Tracer != nil {
		// As on net/http's path: started before the decision, so that
		// its log and audit event carry the trace ID; ended with the
		// status the client got.
		ctx, span = s.startSpanOf(ctx, h, fr.method, fc.requestPath(fr.target), "inbound "+ib.name, trace.SpanKindServer, info.peer != "", ib.spanAttrs(info)...)
		defer func() { telemetry.EndHTTPSpan(span, fc.status, false) }()
	}
	d, ok := ib.decide(ctx, st, info, fc.verifier(), fr.method, fr.target, fr.host, h)
	var rw bufferedResponse
	if !ok {
		if ob != nil {
			ob.Decision, ob.Reason, ob.Path = "deny", "bad_request", "/{invalid}"
		}
		badRequest(&rw)
		fc.settle(&fr, true)
		return fc.respond(&rw, fr.method, true)
	}
	if ob != nil {
		d.record(ob)
	}
	if span != nil {
		d.traced(span, info)
	}
	if ib.answerDenied(&rw, &d) != 0 {
		keep, n := fc.settle(&fr, closeAfter)
		if ob != nil {
			ob.ReqBytes = n
		}
		return fc.respond(&rw, fr.method, !keep)
	}
	if !fc.readRequestBody(&fr) {
		return fastClose
	}
	if ob != nil {
		ob.ReqBytes = int64(len(fr.body))
	}
	target := d.np.Target()
	if q, changed := d.allowed(info); changed {
		target = d.np.Path()
		if q != "" {
			target += "?" + q
		}
	}
	// A request authenticated with a token is cut off when that token's
	// jti is revoked, or the workload it was issued to or for, the
	// connection with it.
	if jti := d.jti(); fc.holdToken(jti, &d) {
		if rs := s.revoked.Load(); rs.hasJTI(jti) || rs.revokedIdentityToken(d.auth.Claims) {
			fc.abort()
		}
	}
	if span != nil {
		propagate(ctx, h)
	}
	if fc.piiMax = s.rec.piiSample(info.peer); fc.piiMax == 0 {
		return fc.exchange(ib.fwd, app, fr.method, target, fr.host, h, fr.body, closeAfter)
	}
	fc.pii = nil
	// What the app was sent, which its answer may echo (a copy: the
	// body is the connection's buffer).
	sent := [][]byte{[]byte(target), bytes.Clone(fr.body[:min(len(fr.body), fc.piiMax)])}
	o = fc.exchange(ib.fwd, app, fr.method, target, fr.host, h, fr.body, closeAfter)
	if len(fc.pii) > 0 {
		// The record's key as the deferred end will count it.
		ob.Status = fc.status
		s.rec.piiScan(ob, fc.pii, sent)
	}
	fc.piiMax, fc.pii = 0, nil
	return o
}

// requestPath is the path of the request just parsed, target its
// target, as net/http's URL.Path has it (decoded; the absolute form's
// path), for a span's url.path before the decision.
func (fc *fastConn) requestPath(target string) string {
	if u := fc.req.absolute; u != nil {
		return u.Path
	}
	path, _, _ := cutQuery(target)
	return decodedPath(path)
}

// holdToken registers the connection in the sidecar's live tracker under
// jti (none for "") and the workloads d's token names (tokenOwnerKeys),
// so that revoking that token ID or one of those identities aborts the
// exchange in flight and closes the connection, and reports whether jti
// is set. A token without a jti is not held.
// The registration is the connection's, not the request's: it stays while
// the requests on the connection carry the same token — a client sends
// its token with every request, and registering each one cost three
// allocations and the tracker's lock twice — and is replaced when a
// request carries another (or none), and dropped by release. Until then a
// revocation of jti also closes the connection between requests. The
// caller checks the revocation list after this call: a revocation
// published before the registration swept without it.
func (fc *fastConn) holdToken(jti string, d *decidedRequest) bool {
	if jti != fc.jti {
		fc.s.live.remove(fc.jtiEntry)
		fc.jti, fc.jtiEntry = jti, nil
		if jti != "" {
			var buf [4]liveKey
			fc.jtiEntry = fc.s.live.add(fc.abortFn, d.tokenKeys(buf[:0])...)
		}
	}
	return jti != ""
}

// fastRequest serves one outbound request on the fast path: the target
// normalized as the upstream will decide on it (as ServeHTTP does), then
// forwarded.
func (ob *outbound) fastRequest(fc *fastConn, up *appClient) fastOutcome {
	req := &fc.req
	fr, o, ok := fc.begin(ob.fwd.upgrades)
	if !ok {
		return o
	}
	h := fr.header
	defer fc.consume(fr.size, fr.method)
	rec, done := fc.startRecord(ob.observation(fr.method))
	defer done()
	var rw bufferedResponse
	if ob.upstreamRevoked.Load() {
		ob.refuseRevoked(&rw, rec)
		keep, n := fc.settle(&fr, req.close)
		if rec != nil {
			rec.ReqBytes = n
		}
		return fc.respond(&rw, fr.method, !keep)
	}
	if why := browserRefusal(fr.host, h, ob.hosts); why != "" {
		ob.refuseBrowser(&rw, fr.host, h, why, rec)
		keep, n := fc.settle(&fr, req.close)
		if rec != nil {
			rec.ReqBytes = n
		}
		return fc.respond(&rw, fr.method, !keep)
	}
	u := req.absolute
	if u == nil {
		u = &url.URL{}
	}
	target, ok := originFormOf(fr.target, u)
	np, err := policy.NormalizeRequestPath(target, ob.s.policy.Load().mode)
	if !ok || err != nil || policy.CheckMethod(fr.method) != nil {
		if rec != nil {
			rec.Decision, rec.Reason, rec.Path = "refused", "bad_request", "/{invalid}"
		}
		badRequest(&rw)
		fc.settle(&fr, true)
		return fc.respond(&rw, fr.method, true)
	}
	if rec != nil {
		rec.Path = np.Path()
	}
	removeHopHeaders(h, ob.fwd.upgrades)
	if ob.s.cfg.Tracer != nil {
		ctx, span := ob.s.startSpanOf(context.Background(), h, fr.method, decodedPath(np.Path()), "outbound "+ob.name, trace.SpanKindClient, true, ob.spanAttrs()...)
		defer func() { telemetry.EndHTTPSpan(span, fc.status, true) }()
		propagate(ctx, h)
	}
	if !fc.readRequestBody(&fr) {
		return fastClose
	}
	if rec != nil {
		rec.ReqBytes = int64(len(fr.body))
	}
	return fc.exchange(ob.fwd, up, fr.method, np.Target(), fr.host, h, fr.body, req.close)
}
