package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A sidecar's or the gateway's own answer to an HTTP/1.1 request whose
// body nothing has read (a policy denial, a refusal) goes out at once,
// however much of that body is still to come. net/http's server reads up
// to 256 KiB of an unread body before writing an answer's head, so that
// the connection can be kept: a client that withholds its body until it
// has an answer (an SDK streaming from a slow source, or an attacker
// holding a goroutine for the read timeout per request) waited for
// nothing.
//
// Instead only what the client has already sent is read before the
// answer (DrainUnread: DrainWait and DrainBytes at most): a small body
// sent whole, the common denied POST, is read to its end and the
// connection kept. Otherwise the answer says Connection: close and the
// connection is closed after it with a lingering close, as nginx's
// lingering_close (LingerClose): close_notify and FIN first, then what
// the client still sends is read and discarded until it closes too, goes
// quiet for a while, a total time has passed or a byte cap was read
// (LingerBounds; the answer of an upstream that came before the body was
// read closes the same way, see forward).
// Closing at once would drop the unread bytes and make the kernel answer
// them with an RST, which destroys the answer in a client that sends its
// whole body before reading (most simple clients; net/http's server
// waits a fixed 500 ms instead, without reading).
var (
	// DrainWait bounds each read of what is already there of an unread
	// body before an answer, and DrainTime all of them. It is not a wait
	// for the client: a body sent whole is in the socket buffer and
	// reading it costs only CPU (a few hundred microseconds for
	// 256 KiB), so the bounds are a margin for a loaded machine (each
	// read gets its own, as a starved goroutine may sit between setting
	// a deadline and reading). A withheld body delays the answer
	// DrainWait; one that trickles in, DrainTime at most.
	DrainWait = 50 * time.Millisecond
	DrainTime = 250 * time.Millisecond
)

// LingerBounds bound one lingering close: it ends when the client has
// been quiet for Idle, Total after it began, or once MaxBytes were read.
type LingerBounds struct {
	Idle, Total time.Duration
	MaxBytes    int64
}

// SidecarLinger bounds a sidecar's lingering close (a sidecar's config
// has no limits; the gateway's limits.linger_timeout, linger_time and
// linger_bytes default to the same): 2 s idle, 5 s in all (nginx:
// lingering_timeout 5 s, lingering_time 30 s; shorter here, as a client
// still sending 5 s after its answer has long been refused),
// LingerBytes.
var SidecarLinger = LingerBounds{Idle: 2 * time.Second, Total: 5 * time.Second, MaxBytes: LingerBytes}

// LingerEnd is how a lingering close ended, the label of its metric.
type LingerEnd uint8

const (
	// LingerClientClosed: the client closed its end (or reset it).
	LingerClientClosed LingerEnd = iota
	// LingerIdleTimeout: the client was quiet for the idle bound.
	LingerIdleTimeout
	// LingerTimeLimit: the total bound passed with the client still
	// sending.
	LingerTimeLimit
	// LingerByteLimit: the byte cap was read.
	LingerByteLimit
	// LingerShutdown: the server closed it (LingerSet.Close).
	LingerShutdown
	lingerEnds
)

var lingerEndNames = [lingerEnds]string{"client_closed", "idle_timeout", "time_limit", "byte_limit", "shutdown"}

func (e LingerEnd) String() string {
	if e < lingerEnds {
		return lingerEndNames[e]
	}
	return "unknown"
}

// DrainBytes is how much of an unread body is read before an answer to
// keep the connection (net/http's maxPostHandlerReadBytes).
const DrainBytes = 256 << 10

// DrainUnread reads what the client has already sent of body, the unread
// body of w's HTTP/1.x request, DrainBytes at most, each read within
// DrainWait and all within DrainTime (through http.ResponseController's
// read deadline), and reports whether that was the whole body, n the
// bytes read. Call it before the answer's head; when it reports false,
// answer with Connection: close and close lingering (a read that timed
// out leaves the connection unusable: net/http's server cancels it, and
// TLS keeps some timeouts as permanent). A request that waits for 100
// Continue (expect) is not read: reading would ask for the body.
func DrainUnread(w http.ResponseWriter, body io.Reader, expect bool) (whole bool, n int64) {
	if expect {
		return false, 0
	}
	ctl := http.NewResponseController(w)
	bp := lingerBufs.Get().(*[]byte)
	defer lingerBufs.Put(bp)
	end := time.Now().Add(DrainTime)
	for {
		deadline := drainDeadline(end)
		if ctl.SetReadDeadline(deadline) != nil {
			return false, n
		}
		m, err := body.Read((*bp)[:min(int64(len(*bp)), DrainBytes+1-n)])
		n += int64(m)
		if err == nil && n <= DrainBytes {
			continue
		}
		// No deadline until the answer is written: net/http's server
		// starts a read of the next request the moment the body ends,
		// under the connection's deadline, and a timeout of that read
		// would cancel every later request's context on the connection.
		// Hence also the check that the deadline had not passed when it
		// was lifted.
		_ = ctl.SetReadDeadline(time.Time{})
		return err == io.EOF && time.Now().Before(deadline), n
	}
}

// drainDeadline is when the next read of a drain must end: DrainWait
// from now, and not after end.
func drainDeadline(end time.Time) time.Time {
	if d := time.Now().Add(DrainWait); d.Before(end) {
		return d
	}
	return end
}

// LingerHijack takes over the HTTP/1.x connection of w once its answer
// (which said Connection: close) is written, and closes it lingering on
// a goroutine of set within b, so that the handler ends at once. taken,
// when non-nil, is called with the connection when it is taken over, and
// what it returns once the connection is closed.
func LingerHijack(w http.ResponseWriter, set *LingerSet, b LingerBounds, taken func(c net.Conn) func()) {
	ctl := http.NewResponseController(w)
	if ctl.Flush() != nil {
		return
	}
	c, brw, err := ctl.Hijack()
	if err != nil {
		return // net/http closes it
	}
	done := func() {}
	if taken != nil {
		done = taken(c)
	}
	set.Linger(unwrapConn(c), int64(brw.Reader.Buffered()), b, func() {
		c.Close()
		done()
	})
}

// unwrapConn is the connection GuardFraming, GuardFramingReplay or a
// fast path's handoff wrapped (c itself when it is not such a wrapper),
// for a server that has taken c over from net/http's server (Hijack) and
// reads what is left of it raw, to discard it: the guard would read
// those bytes as request heads. What a wrapper still held is dropped.
func unwrapConn(c net.Conn) net.Conn {
	for {
		switch g := c.(type) {
		case replayGuardTLS:
			return g.tc
		case framingGuardTLS:
			c = g.Conn
		case *framingGuard:
			c = g.Conn
		case handoffTLSConn:
			c = g.Conn
		case *handoffConn:
			c = g.Conn
		default:
			return c
		}
	}
}

// LingerClose half-closes c (TLS close_notify, then FIN) and reads and
// discards what the peer still sends until it closes, goes quiet for
// b.Idle, b.Total has passed or b.MaxBytes were read (read counts those
// already read); then closes c and reports how it ended (a read that
// fails otherwise than by a timeout is the client's doing, or the
// server's closing c: the caller tells those apart).
func LingerClose(c net.Conn, read int64, b LingerBounds) LingerEnd {
	return lingerClose(c, read, b.MaxBytes, b.Idle, b.Total)
}

// lingerClose is LingerClose with its bounds given.
func lingerClose(c net.Conn, read, maxBytes int64, idle, total time.Duration) (end LingerEnd) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	if tc, ok := c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
		c = tc.NetConn()
		defer tc.Close()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	last := time.Now().Add(total)
	bp := lingerBufs.Get().(*[]byte)
	defer lingerBufs.Put(bp)
	end = LingerByteLimit
	for read < maxBytes {
		d, idleBound := time.Now().Add(idle), true
		if d.After(last) {
			d, idleBound = last, false
		}
		if c.SetReadDeadline(d) != nil {
			end = LingerClientClosed
			break
		}
		n, err := c.Read(*bp)
		read += int64(n)
		if err != nil {
			var ne net.Error
			switch {
			case !errors.As(err, &ne) || !ne.Timeout():
				end = LingerClientClosed
			case idleBound:
				end = LingerIdleTimeout
			default:
				end = LingerTimeLimit
			}
			break
		}
	}
	c.Close()
	return end
}

var lingerBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// LingerSet is the connections closing lingering, for Close to end them
// at once and wait for their goroutines, and for metrics to count them
// (Lingering, Ended, Collector). The zero value is ready.
type LingerSet struct {
	mu     sync.Mutex
	closed bool
	m      map[net.Conn]struct{}
	wg     sync.WaitGroup
	ended  [lingerEnds]atomic.Uint64
}

// Linger closes c lingering (LingerClose) within b on a goroutine; done
// is called once it is closed. After Close, c is closed at once (and
// counted as ended by shutdown).
func (s *LingerSet) Linger(c net.Conn, read int64, b LingerBounds, done func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		s.ended[LingerShutdown].Add(1)
		done()
		return
	}
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		end := LingerClose(c, read, b)
		s.mu.Lock()
		if s.closed && end == LingerClientClosed {
			end = LingerShutdown // Close closed c under its read
		}
		delete(s.m, c)
		s.ended[end].Add(1)
		s.mu.Unlock()
		done()
	}()
}

// Lingering is how many connections are closing lingering now.
func (s *LingerSet) Lingering() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Ended is how many lingering closes ended as e.
func (s *LingerSet) Ended(e LingerEnd) uint64 {
	if e >= lingerEnds {
		return 0
	}
	return s.ended[e].Load()
}

// Collector exports set as prefix+"_lingering_connections" (a gauge) and
// prefix+"_lingering_closes_total" by how they ended (label end:
// client_closed, idle_timeout, time_limit, byte_limit, shutdown; each
// present from the start), read at scrape time.
func (s *LingerSet) Collector(prefix string) prometheus.Collector {
	return &lingerCollector{s: s,
		now: prometheus.NewDesc(prefix+"_lingering_connections",
			"Connections closing lingering now: answered before their request body was read, the client's bytes read and discarded until it closes or a limit.", nil, nil),
		ended: prometheus.NewDesc(prefix+"_lingering_closes_total",
			"Lingering closes by how they ended: client_closed, idle_timeout, time_limit, byte_limit, shutdown.", []string{"end"}, nil),
	}
}

type lingerCollector struct {
	s          *LingerSet
	now, ended *prometheus.Desc
}

func (c *lingerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.now
	ch <- c.ended
}

func (c *lingerCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.now, prometheus.GaugeValue, float64(c.s.Lingering()))
	for e := range lingerEnds {
		ch <- prometheus.MustNewConstMetric(c.ended, prometheus.CounterValue, float64(c.s.Ended(e)), e.String())
	}
}

// Close closes every lingering connection (its read fails), waits for
// their goroutines and makes later ones close at once. Idempotent.
func (s *LingerSet) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.m {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// LingerBytes is the byte cap of a sidecar connection's lingering
// close (the gateway's default max_body_bytes; a sidecar has no body
// limit of its own), and the gateway's default unless its body limit is
// larger: the cap must exceed what a client still sends after its
// answer, and after a 413 that is more than the body limit by
// definition.
const LingerBytes = 10 << 20

// settle runs before the sidecar writes its own answer (a denial, a
// refusal) to r on net/http's server: on HTTP/1.x a body nothing has
// read is read if the client has sent it whole (DrainUnread), or the
// answer says Connection: close; the returned function, called once the
// answer is written, then closes the connection lingering (taken as for
// LingerHijack). n is how many body bytes were read.
func (s *Sidecar) settle(w http.ResponseWriter, r *http.Request, taken func(c net.Conn) func()) (after func(), n int64) {
	after = func() {}
	if r.ProtoMajor != 1 || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return after, 0
	}
	if !hasCloseToken(w.Header()["Connection"]) {
		whole, n := DrainUnread(w, r.Body, awaitsContinue(r))
		if whole {
			return after, n
		}
	}
	w.Header().Set("Connection", "close")
	return func() { LingerHijack(w, &s.lingering, SidecarLinger, taken) }, n
}

// hasCloseToken reports whether Connection field values name close.
func hasCloseToken(vv []string) bool {
	for _, v := range vv {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "close") {
				return true
			}
		}
	}
	return false
}
