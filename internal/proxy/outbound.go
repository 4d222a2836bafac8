package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
)

// outbound is one loopback listener the app calls in plaintext; requests
// go on over mutual TLS to one upstream sidecar.
type outbound struct {
	s    *Sidecar
	cfg  Outbound
	name string
	ln   net.Listener
	// socketPath is the path of a "unix:" Listen address.
	socketPath string

	tlsConf *tls.Config // TCP: dialed per connection
	tr      idleCloser
	httpSrv *http.Server
	fwd     *forwarder
	// app is the fast path's client of the upstream (nil: the fast path
	// is off); hl then feeds httpSrv the connections it hands off.
	app  *appClient
	hl   *chanListener
	fast fastConns

	upstreamID string // cfg.ID as a string, for records
	// hosts are the names the app may send as Host (outboundHosts).
	hosts []string
	// browserLog paces the log lines of refused browser requests.
	browserLog      refusalLog
	upstreamRevoked atomic.Bool
	// refuseWhy says why calls are refused while upstreamRevoked holds:
	// revoked (the upstream), blocked (this edge), isolated (this
	// workload's own identity is revoked: its egress is cut).
	refuseWhy atomic.Value // string
	conns     sync.Map     // TCP conns, for Close
	closed    atomic.Bool
	streams   streamGroup   // raw TCP streams
	accept    acceptBackoff // the TCP accept loop's pacing
}

func (s *Sidecar) newOutbound(c Outbound) (*outbound, error) {
	if c.Upstream == "" {
		return nil, errors.New("proxy: config: outbound needs an upstream address")
	}
	if _, _, err := net.SplitHostPort(c.Upstream); err != nil {
		return nil, fmt.Errorf("proxy: config: outbound upstream %q: %w", c.Upstream, err)
	}
	if c.ID.IsZero() {
		return nil, fmt.Errorf("proxy: config: outbound to %s needs the upstream's SPIFFE ID", c.Upstream)
	}
	if c.Listener == nil && c.Listen == "" {
		return nil, errors.New("proxy: config: outbound needs a listen address")
	}
	if err := CheckUpgrades(c.Upgrades); err != nil {
		return nil, err
	}
	for _, h := range c.Hosts {
		if err := checkHostPattern(h); err != nil {
			return nil, fmt.Errorf("proxy: config: outbound to %s: hosts: %w", c.Upstream, err)
		}
	}
	ob := &outbound{s: s, cfg: c, name: c.Name, upstreamID: c.ID.String(), hosts: outboundHosts(c)}
	if c.Listener == nil && strings.HasPrefix(c.Listen, unixListenPrefix) {
		p, err := unixSocketPath(c.Listen)
		if err != nil {
			return nil, fmt.Errorf("proxy: config: outbound listen: %w", err)
		}
		ob.socketPath = p
	}
	if ob.name == "" {
		switch {
		case ob.socketPath != "":
			ob.name = "outbound-" + filepath.Base(ob.socketPath)
		case c.Listener != nil && c.Listener.Addr().Network() == "unix":
			ob.name = "outbound-" + filepath.Base(c.Listener.Addr().String())
		default:
			addr := c.Listen
			if c.Listener != nil {
				addr = c.Listener.Addr().String()
			}
			ob.name = fmt.Sprintf("outbound-%d", portOf(addr))
		}
	}
	if c.Protocol == TCP {
		ob.tlsConf = s.tls.clientConfig(c.ID, c.ServerName, nil)
		return ob, nil
	}
	rt, tr := s.tls.upstreamClient(c.ID, c.ServerName, c.Upstream, c.HTTP1, s.cfg.HandshakeTimeout)
	ob.tr = tr
	ob.fwd = &forwarder{rt: rt, upgrades: upgradesOf(c.Upgrades), scheme: "https", host: c.Upstream, name: ob.name, s: s, errBody: ob.errBody}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true) // h2c from the app: gRPC clients
	ob.httpSrv = &http.Server{
		Handler: ob,
		// "OPTIONS *" reaches the handler too (decided as on the fast
		// path), rather than net/http's own answer: the framing guard
		// counts every request the handler takes against the heads it read.
		DisableGeneralOptionsHandler: true,
		ReadHeaderTimeout:            s.cfg.ReadHeaderTimeout,
		IdleTimeout:                  s.cfg.IdleTimeout,
		MaxHeaderBytes:               s.cfg.MaxHeaderBytes,
		Protocols:                    protos,
		HTTP2:                        &http.HTTP2Config{MaxConcurrentStreams: 1000},
		ErrorLog:                     log.New(io.Discard, "", 0),
		ConnContext:                  markHandoff,
		ConnState: func(c net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				if _, handedOff := markHandoff(context.Background(), c).Value(handoffKey{}).(bool); handedOff {
					return // counted by the fast path's accept
				}
				s.metrics.active.WithLabelValues(ob.name).Inc()
				s.metrics.connections.WithLabelValues(ob.name, "plaintext").Inc()
			case http.StateClosed, http.StateHijacked:
				s.metrics.active.WithLabelValues(ob.name).Dec()
			}
		},
	}
	if a, ok := rt.(*appClient); ok && s.fastPathOn() {
		ob.app, ob.hl = a, newChanListener()
	}
	return ob, nil
}

// errBody tells the app why its call did not reach the upstream. The app
// is local and trusted with the detail (a wrong upstream identity, for
// one), unlike a remote caller.
func (ob *outbound) errBody(err error) string {
	msg := "upstream connect error or disconnect/reset before headers"
	switch {
	case errors.Is(err, ErrPeerNotAllowed):
		return msg + ": upstream SPIFFE ID is not " + ob.cfg.ID.String()
	case errors.Is(err, ErrPeerRevoked):
		return msg + ": upstream identity revoked"
	case errors.Is(err, ErrPeerUnverified):
		return msg + ": upstream X509-SVID not verified by the trust bundle"
	}
	return msg
}

// serve accepts until the listener closes. Every connection meets the
// local caller check before a byte of it is read: for HTTP in the
// listener's Accept, for TCP in the connection's goroutine, after the
// accept loop has counted a successful accept.
func (ob *outbound) serve() error {
	if ob.app != nil {
		go ob.httpSrv.Serve(ob.hl)
	} else if ob.httpSrv != nil {
		err := ob.httpSrv.Serve(framingListener{&callerListener{Listener: ob.ln, check: ob.s.callers, name: ob.name}, ob.s.headLimit(), ob.s.cfg.ReadHeaderTimeout})
		if ob.closed.Load() || ob.streams.isDraining() || errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("proxy: outbound %s: %w", ob.name, err)
	}
	for {
		c, err := ob.ln.Accept()
		if err != nil {
			if ob.closed.Load() || ob.streams.isDraining() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if ob.accept.retry(err) {
				continue
			}
			return fmt.Errorf("proxy: outbound %s: accept: %w", ob.name, err)
		}
		ob.accept.reset()
		if !ob.streams.add() {
			c.Close()
			return nil
		}
		go func() {
			defer ob.streams.done()
			if !ob.s.callers.admit(c, ob.name) {
				c.Close()
				return
			}
			if ob.app != nil {
				ob.serveFast(withRawSyscalls(c))
				return
			}
			ob.serveTCP(c)
		}()
	}
}

func (ob *outbound) close() {
	if ob.closed.Swap(true) {
		return
	}
	if ob.hl != nil {
		ob.hl.Close()
	}
	if ob.httpSrv != nil {
		ob.httpSrv.Close()
		if c, ok := ob.fwd.rt.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
		ob.tr.CloseIdleConnections()
	}
	if ob.ln != nil {
		ob.ln.Close()
	}
	ob.conns.Range(func(k, _ any) bool {
		k.(net.Conn).Close()
		return true
	})
}

// revoked drops pooled connections to an upstream whose identity was
// revoked, or that this identity (own) is blocked from calling, and cuts
// every call when own itself is revoked; new handshakes with a revoked
// upstream fail verification anyway.
func (ob *outbound) revoked(rs *revocationSet, own string) {
	was := ob.upstreamRevoked.Load()
	why := ""
	switch {
	case own != "" && rs.has(own, ""):
		why = "isolated"
	case rs.has(ob.upstreamID, ""):
		why = "revoked"
	case rs.blockedPair(own, ob.upstreamID, ob.s.cfg.Now()):
		why = "blocked"
	}
	ob.refuseWhy.Store(why)
	now := why != ""
	ob.upstreamRevoked.Store(now)
	if now && !was && ob.tr != nil {
		ob.tr.CloseIdleConnections()
		if a, ok := ob.fwd.rt.(*appClient); ok {
			a.dropIdle()
		}
	}
}

// ServeHTTP forwards one plaintext request from the app to the upstream.
func (ob *outbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !framed(w, r) {
		return
	}
	var o Observation
	if ob.s.rec != nil {
		o = ob.observation(r.Method)
		start := time.Now()
		defer func() {
			o.Latency = time.Since(start)
			ob.s.observe(&o)
		}()
	}
	if ob.upstreamRevoked.Load() {
		var after func()
		after, o.ReqBytes = ob.s.settle(w, r, nil)
		defer after()
		ob.refuseRevoked(w, &o)
		return
	}
	if why := browserRefusal(r.Host, r.Header, ob.hosts); why != "" {
		after, _ := ob.s.settle(w, r, nil)
		defer after()
		ob.refuseBrowser(w, r.Host, r.Header, why, &o)
		return
	}
	if r.Method == http.MethodConnect {
		after, _ := ob.s.settle(w, r, nil)
		defer after()
		refuseConnect(w) // the upstream would refuse it too
		o.Decision, o.Reason, o.Status = "refused", "connect", http.StatusMethodNotAllowed
		return
	}
	// The upstream's policy decides on the target this sidecar forwards:
	// it is normalized here as the inbound side normalizes it, by the same
	// function, so nothing this hop re-encodes can change what is
	// decided; a target the inbound side would refuse is refused here.
	// A method with a lower-case letter is refused as the upstream
	// refuses it (policy.CheckMethod).
	target, ok := originForm(r)
	np, err := policy.NormalizeRequestPath(target, ob.s.policy.Load().mode)
	if !ok || err != nil || policy.CheckMethod(r.Method) != nil {
		after, _ := ob.s.settle(w, r, nil)
		defer after()
		undecidable(w, r)
		o.Decision, o.Reason, o.Status, o.Path = "refused", "bad_request", http.StatusBadRequest, "/{invalid}"
		return
	}
	if np.Changed() || target != r.RequestURI {
		setTarget(r.URL, np)
	}
	o.Path = np.Path()
	upgrade := removeHopHeaders(r.Header, ob.fwd.upgrades)
	if ob.s.cfg.Tracer != nil {
		r2, span, sw := ob.s.startSpan(w, r, "outbound "+ob.name, trace.SpanKindClient, true, ob.spanAttrs()...)
		r, w = r2, sw
		defer func() { telemetry.EndHTTPSpan(span, sw.Status, true) }()
		propagate(r.Context(), r.Header)
	}
	if ob.fwd.forward(w, r, upgrade, nil, &o) {
		LingerHijack(w, &ob.s.lingering, SidecarLinger, nil)
	}
}

// refuseBrowser answers 403 to a request a web browser sent (why is
// browserRefusal's reason), counts it, logs it (paced), and notes it in o
// (nil: not recording).
func (ob *outbound) refuseBrowser(w http.ResponseWriter, host string, h http.Header, why string, o *Observation) {
	ob.s.callers.refused.WithLabelValues(ob.name, why).Inc()
	if ok, unlogged := ob.browserLog.take(ob.s.cfg.Now()); ok {
		attrs := []any{"listener", ob.name, "reason", why, "host", truncate(host, 256),
			"origin", truncate(h.Get("Origin"), 256), "sec_fetch_site", truncate(h.Get("Sec-Fetch-Site"), 64)}
		if unlogged > 0 {
			attrs = append(attrs, "unlogged_before", unlogged)
		}
		ob.s.log.Warn("outbound request refused: sent by a web browser", attrs...)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusForbidden)
	if why == refusedHost {
		io.WriteString(w, "outbound listener: Host is not a name this app calls the upstream by (a guard against DNS rebinding); call it by a loopback address, as localhost, or add the name to the outbound's hosts")
	} else {
		io.WriteString(w, "outbound listener: requests from a web browser (Origin, Sec-Fetch-Site) do not act as this workload")
	}
	if o != nil {
		o.Decision, o.Reason, o.Status = "refused", why, http.StatusForbidden
	}
}

// refusalText tells the app why its call was refused locally.
func refusalText(why string) string {
	switch why {
	case "isolated":
		return "this workload's identity is revoked: its calls are cut off"
	case "blocked":
		return "calls from this workload to the upstream are blocked"
	}
	return "upstream identity revoked"
}

// observation is the traffic record of one call to the upstream, allowed
// until refused, with the request body bytes the sidecar read (see
// inbound.observation).
func (ob *outbound) observation(method string) Observation {
	return Observation{Direction: DirectionOutbound, Destination: ob.upstreamID, Protocol: "http", Method: method,
		Decision: "allow"}
}

// refuseRevoked answers a call refused while upstreamRevoked holds (the
// upstream revoked, this edge blocked, or this workload isolated), on
// either server path, and notes the refusal in o (nil: not recording).
func (ob *outbound) refuseRevoked(w http.ResponseWriter, o *Observation) {
	why, _ := ob.refuseWhy.Load().(string)
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, "upstream connect error or disconnect/reset before headers: "+refusalText(why))
	if o != nil {
		o.Decision, o.Reason, o.Status = "refused", why, http.StatusServiceUnavailable
	}
}

// originForm is r's request target in origin form ("/path?query"). An app
// using the listener as an HTTP proxy sends the absolute form
// ("http://orders/path"), whose scheme and authority are dropped: the
// upstream is fixed. ok is false for a target with a fragment, anywhere,
// and for the authority and asterisk forms.
func originForm(r *http.Request) (string, bool) { return originFormOf(r.RequestURI, r.URL) }

// originFormOf is originForm of a request target t that net/http parsed
// as u.
func originFormOf(t string, u *url.URL) (string, bool) {
	if strings.IndexByte(t, '#') >= 0 || u.Opaque != "" {
		return "", false
	}
	if t == "" || t[0] == '/' {
		return t, true
	}
	if u.Scheme == "" || u.Host == "" {
		return "", false
	}
	_, rest, ok := strings.Cut(t, "://")
	if !ok {
		return "", false
	}
	switch i := strings.IndexAny(rest, "/?"); {
	case i < 0:
		return "/", true
	case rest[i] == '?':
		return "/" + rest[i:], true
	default:
		return rest[i:], true
	}
}

// serveFast serves an admitted HTTP connection from the app on the fast
// path until it ends or is handed to net/http's server.
func (ob *outbound) serveFast(c net.Conn) {
	s := ob.s
	s.metrics.active.WithLabelValues(ob.name).Inc()
	s.metrics.connections.WithLabelValues(ob.name, "plaintext").Inc()
	ob.conns.Store(c, struct{}{})
	fc := newFastConn(s, c, ob.streams.isDraining)
	ob.fast.add(fc)
	o := fastClose
	if !ob.closed.Load() {
		o = fc.serve(func(fc *fastConn) fastOutcome { return ob.fastRequest(fc, ob.app) })
	}
	ob.fast.remove(fc)
	ob.conns.Delete(c)
	if o == fastHandoff {
		hc := fc.handoff()
		if !ob.closed.Load() && ob.hl.push(hc) {
			return // net/http's server counts the end of it
		}
		c.Close()
	} else {
		fc.release()
		if fc.linger {
			s.lingering.Linger(c, 0, SidecarLinger, func() {})
		} else {
			c.Close()
		}
	}
	s.metrics.active.WithLabelValues(ob.name).Dec()
}

// serveTCP pipes one plaintext connection from the app to the upstream.
func (ob *outbound) serveTCP(c net.Conn) {
	s := ob.s
	s.metrics.active.WithLabelValues(ob.name).Inc()
	s.metrics.connections.WithLabelValues(ob.name, "plaintext").Inc()
	ob.conns.Store(c, struct{}{})
	defer func() {
		ob.conns.Delete(c)
		c.Close()
		s.metrics.active.WithLabelValues(ob.name).Dec()
	}()
	if ob.closed.Load() {
		return
	}
	if ob.upstreamRevoked.Load() {
		why, _ := ob.refuseWhy.Load().(string)
		s.observe(&Observation{Direction: DirectionOutbound, Destination: ob.upstreamID, Protocol: "tcp", Decision: "refused", Reason: why})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	up, err := s.tls.dialTracked(ctx, &net.Dialer{KeepAlive: 30 * time.Second}, ob.cfg.Upstream, ob.tlsConf)
	cancel()
	if err != nil {
		s.metrics.upstreamErrors.WithLabelValues(ob.name).Inc()
		s.metrics.handshakeFailures.WithLabelValues(ob.name, handshakeReason(err)).Inc()
		s.log.Warn("outbound dial failed", "listener", ob.name, "upstream", ob.cfg.Upstream, "err", err)
		s.observe(&Observation{Direction: DirectionOutbound, Destination: ob.upstreamID, Protocol: "tcp", Decision: "refused", Reason: handshakeReason(err)})
		return
	}
	start := time.Now()
	defer func() {
		s.observe(&Observation{Direction: DirectionOutbound, Destination: ob.upstreamID, Protocol: "tcp", Decision: "allow", Latency: time.Since(start)})
	}()
	ob.conns.Store(up, struct{}{})
	defer func() {
		ob.conns.Delete(up)
		up.Close()
	}()
	pipe(up, up, c, c)
}
