package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// appClient is the lean HTTP/1.1 client of the hop to the local app. The
// standard transport spends two goroutines per connection and three
// hand-offs per request; this one writes the request and reads the answer
// on the caller's goroutine over a LIFO pool of keep-alive connections,
// parsing the common answer itself and any other with net/http's own
// ReadResponse (readResponse: the same *http.Response either way). It
// takes the common case — no upgrade, no trailers, a request body of
// known length up to leanMaxBody, no 100 Continue expected — and hands
// everything else to fallback, the standard transport, so streaming,
// upgrades and the wait for 100 Continue keep their full semantics.
//
// A pooled connection the app has closed is noticed before reuse (a
// non-blocking peek, for connections idle longer than peekAfter); a
// request that still meets a dead reused connection
// is retried once on a new one only when it is idempotent, as
// net/http.Transport does.
type appClient struct {
	dial        func(ctx context.Context) (net.Conn, error)
	fallback    http.RoundTripper
	maxIdle     int
	idleTimeout time.Duration
	now         func() time.Time

	mu     sync.Mutex
	idle   []*appConn
	closed bool
}

type appConn struct {
	nc        net.Conn
	hl        headLimit // under br: bounds each answer's head
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	// parsed and head are readResponse's, reused from answer to answer.
	parsed h1Response
	head   []byte
	// expire unblocks any read or write on nc at once (an expired
	// deadline); made once per connection, it is what a request's
	// cancellation runs (see exchange).
	expire func()
}

// answered reports whether the app sent any byte of an answer to the
// request being exchanged on pc: the head bound has been drawn on.
func (pc *appConn) answered() bool {
	return pc.hl.left >= 0 && pc.hl.left < maxResponseHeadBytes
}

// peekAfter is how long a connection must have been idle before get
// checks that the app has not closed it.
const peekAfter = 100 * time.Millisecond

// leanMaxBody is the largest request body the lean path buffers (to retry
// it); larger or unknown-length bodies stream through the fallback.
const leanMaxBody = 64 << 10

var errBadHeader = errors.New("proxy: invalid header for the app")

func (a *appClient) RoundTrip(req *http.Request) (*http.Response, error) {
	if !a.lean(req) {
		return a.fallback.RoundTrip(req)
	}
	var body []byte
	if req.ContentLength > 0 {
		// The body is kept only until the request is written (and
		// written again on a retry), all within this call: a pooled
		// buffer, not a new kilobyte or more of garbage per request.
		// ReadFull fills all of it or the request fails, so nothing of
		// an earlier request's body is ever sent.
		pool := &bufPool
		if req.ContentLength > bufSize {
			pool = &largeBufPool // lean() has bounded it by leanMaxBody
		}
		bp := pool.Get().(*[]byte)
		defer pool.Put(bp)
		body = (*bp)[:req.ContentLength]
		if _, err := io.ReadFull(req.Body, body); err != nil {
			req.Body.Close()
			return nil, fmt.Errorf("proxy: read request body: %w", err)
		}
		req.Body.Close()
	}
	for attempt := 0; ; attempt++ {
		pc, reused, err := a.get(req.Context())
		if err != nil {
			return nil, err
		}
		resp, err := a.exchange(pc, req, body)
		if err == nil {
			return resp, nil
		}
		pc.nc.Close()
		// Retried only when the app sent nothing of an answer (as
		// net/http.Transport and the fast path do): one that sent a
		// broken or oversized answer has seen the request.
		if !reused || attempt > 0 || pc.answered() || !replayable(req.Method, req.Header) || req.Context().Err() != nil || errors.Is(err, errBadHeader) {
			return nil, err
		}
	}
}

// lean reports whether req fits the lean path.
func (a *appClient) lean(req *http.Request) bool {
	if req.ContentLength < 0 || req.ContentLength > leanMaxBody || len(req.Trailer) > 0 {
		return false
	}
	if req.ContentLength > 0 && req.Body == nil {
		return false
	}
	if req.ContentLength > 0 && expectsContinue(req.Header) {
		// The lean path reads the whole body before it writes: the
		// client would be asked for it (100 Continue) before the app
		// said whether it wants it.
		return false
	}
	_, up := req.Header["Upgrade"]
	return !up && req.Method != http.MethodConnect
}

// replayable reports whether a request may be sent again after its
// connection failed, as net/http.Transport decides: an idempotent method,
// or an idempotency key.
func replayable(method string, h http.Header) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := h["Idempotency-Key"]
	_, k2 := h["X-Idempotency-Key"]
	return k1 || k2
}

// get pops the most recently used live connection or dials a new one.
func (a *appClient) get(ctx context.Context) (*appConn, bool, error) {
	now := a.now()
	a.mu.Lock()
	for len(a.idle) > 0 {
		pc := a.idle[len(a.idle)-1]
		a.idle = a.idle[:len(a.idle)-1]
		a.mu.Unlock()
		idle := now.Sub(pc.idleSince)
		// A connection back in the pool for under peekAfter is not peeked:
		// apps close idle keep-alive connections after seconds, not
		// milliseconds, and under load the peek is a syscall per request.
		if idle < a.idleTimeout && (idle < peekAfter || connAlive(pc.nc)) {
			return pc, true, nil
		}
		pc.nc.Close()
		a.mu.Lock()
	}
	a.mu.Unlock()
	nc, err := a.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	pc := &appConn{nc: nc, hl: headLimit{r: nc, left: -1}, bw: bufio.NewWriterSize(nc, 4096)}
	pc.br = bufio.NewReaderSize(&pc.hl, 4096)
	pc.expire = func() { pc.nc.SetDeadline(time.Unix(1, 0)) }
	return pc, false, nil
}

// put returns a connection to the pool, closing it if the pool is full or
// closed.
func (a *appClient) put(pc *appConn) {
	pc.idleSince = a.now()
	a.mu.Lock()
	if a.closed || len(a.idle) >= a.maxIdle {
		a.mu.Unlock()
		pc.nc.Close()
		return
	}
	a.idle = append(a.idle, pc)
	a.mu.Unlock()
}

// dropIdle closes the idle connections and keeps the pool open.
func (a *appClient) dropIdle() {
	a.mu.Lock()
	idle := a.idle
	a.idle = nil
	a.mu.Unlock()
	for _, pc := range idle {
		pc.nc.Close()
	}
}

// CloseIdleConnections closes the pool; later connections are closed when
// returned.
func (a *appClient) CloseIdleConnections() {
	a.mu.Lock()
	idle := a.idle
	a.idle = nil
	a.closed = true
	a.mu.Unlock()
	for _, pc := range idle {
		pc.nc.Close()
	}
	if c, ok := a.fallback.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// exchange writes req on pc and reads the answer's head. The body, when
// read to its end, returns pc to the pool.
func (a *appClient) exchange(pc *appConn, req *http.Request, body []byte) (*http.Response, error) {
	ctx := req.Context()
	// Cancelling the request (client gone, token revoked) unblocks any
	// read or write on the connection at once. A context that can never
	// be cancelled registers nothing (AfterFunc costs several
	// allocations a request). stop reports, as AfterFunc's does, that
	// expire has not run: a connection whose expire ran (or is running)
	// is closed, never pooled, so the expired deadline and the shared
	// expire never reach another request.
	stop := notCancellable
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, pc.expire)
	}
	if err := writeRequest(pc.bw, req, body); err != nil {
		stop()
		return nil, err
	}
	var resp *http.Response
	pc.hl.left = maxResponseHeadBytes // for the heads; lifted for the body
	for {
		var err error
		resp, err = readResponse(pc.br, req, &pc.parsed, &pc.head)
		if err != nil {
			stop()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		resp.Body.Close() // 1xx: informational, the real answer follows
	}
	pc.hl.left = -1
	reuse := !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols
	if resp.Body == http.NoBody {
		if stop() && reuse {
			a.put(pc)
		} else {
			pc.nc.Close()
		}
		return resp, nil
	}
	resp.Body = &appBody{rc: resp.Body, a: a, pc: pc, stop: stop, reuse: reuse}
	return resp, nil
}

// writeRequest writes the request head and body with one flush.
func writeRequest(bw *bufio.Writer, req *http.Request, body []byte) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	b := bufPool.Get().(*[]byte)
	defer bufPool.Put(b)
	head, err := appendRequestHead((*b)[:0], req.Method, req.URL.RequestURI(), host, req.Header, int64(len(body)))
	if err != nil {
		return err
	}
	bw.Write(head)
	bw.Write(body)
	return bw.Flush()
}

// appendRequestHead appends an HTTP/1.1 request head to dst: the request
// line, Host, h's fields, and the framing of a body of length bytes (-1:
// chunked). Header names and values are checked as net/http.Transport
// checks them: a value a policy put in (a JWT claim) must not smuggle a
// second header or request. Headers go out sorted by name, as net/http
// writes them: an app that folds two names into one sees the same winner
// every time. h's Host, Content-Length and Transfer-Encoding are not
// written; the framing is.
func appendRequestHead(dst []byte, method, target, host string, h http.Header, length int64) ([]byte, error) {
	if !httpguts.ValidHostHeader(host) {
		return dst, fmt.Errorf("%w: host %q", errBadHeader, host)
	}
	dst = append(dst, method...)
	dst = append(dst, ' ')
	dst = append(dst, target...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, host...)
	dst = append(dst, "\r\n"...)
	var keyBuf [32]string
	keys := keyBuf[:0]
	for k := range h {
		if k != "Host" && k != "Content-Length" && k != "Transfer-Encoding" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !httpguts.ValidHeaderFieldName(k) {
			return dst, fmt.Errorf("%w: name %q", errBadHeader, k)
		}
		for _, v := range h[k] {
			if !validFieldString(v) {
				return dst, fmt.Errorf("%w: value of %s", errBadHeader, k)
			}
			dst = append(dst, k...)
			dst = append(dst, ": "...)
			dst = append(dst, v...)
			dst = append(dst, "\r\n"...)
		}
	}
	switch {
	case length < 0:
		dst = append(dst, "Transfer-Encoding: chunked\r\n"...)
	case length > 0 || methodWantsLength(method):
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, length, 10)
		dst = append(dst, "\r\n"...)
	}
	return append(dst, "\r\n"...), nil
}

func methodWantsLength(m string) bool {
	return m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch
}

// notCancellable is exchange's stop for a context that is never done.
func notCancellable() bool { return true }

// appBody gives the connection back once the body has been read to its
// end; closing it early closes the connection (its remaining bytes would
// corrupt the next answer).
type appBody struct {
	rc    io.ReadCloser
	a     *appClient
	pc    *appConn
	stop  func() bool
	reuse bool
	done  bool
}

func (b *appBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *appBody) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

func (b *appBody) finish(complete bool) {
	b.done = true
	if b.stop() && complete && b.reuse {
		b.a.put(b.pc)
		return
	}
	b.pc.nc.Close()
}
