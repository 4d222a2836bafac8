package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
)

// xfccHeader is Envoy's x-forwarded-client-cert: the only way the app
// learns who called. Any copy arriving from outside is removed before the
// sidecar sets its own, so the app can trust it.
const xfccHeader = "X-Forwarded-Client-Cert"

// inbound is one mTLS listener in front of the app.
type inbound struct {
	s    *Sidecar
	cfg  Inbound
	name string
	port int
	ln   net.Listener

	tlsConf *tls.Config
	httpSrv *http.Server  // nil for TCP
	hl      *chanListener // feeds accepted, authenticated conns to httpSrv
	fwd     *forwarder
	dialApp func(ctx context.Context) (net.Conn, error)

	conns   sync.Map // net.Conn → *connInfo, every live conn
	closed  atomic.Bool
	streams streamGroup  // raw TCP streams and connections in their handshake
	open    atomic.Int64 // connections accepted and not yet closed
}

// connInfo is what the sidecar learned about a connection at accept and
// handshake time; every request on it reads it, none recomputes it.
type connInfo struct {
	peer      string // "spiffe://td/..." or "" for plaintext
	principal string // peer without the scheme, as Istio writes principals
	serial    string
	// certSHA256 is the RFC 8705 thumbprint of the peer's leaf
	// certificate, "" for plaintext: certificate-bound tokens are
	// accepted only on the connection that presented that certificate.
	certSHA256 string
	srcIP      netip.Addr
	srcIPStr   string
	dstIP      netip.Addr
	sni        string
	xfcc       []string // the header value, shared by every request
	// own is this sidecar's SPIFFE ID without the scheme at the
	// handshake: the destination's principal for Rego providers.
	own   string
	entry *tracked
}

type connInfoKey struct{}

func (s *Sidecar) newInbound(c Inbound) (*inbound, error) {
	if c.App == "" {
		return nil, errors.New("proxy: config: inbound needs an app address")
	}
	if c.Listener == nil && c.Listen == "" {
		return nil, errors.New("proxy: config: inbound needs a listen address")
	}
	ib := &inbound{s: s, cfg: c, port: c.Port}
	network, addr := "tcp", c.App
	if p, ok := strings.CutPrefix(c.App, "unix:"); ok {
		network, addr = "unix", p
	} else if _, _, err := net.SplitHostPort(c.App); err != nil {
		return nil, fmt.Errorf("proxy: config: inbound app %q: %w", c.App, err)
	}
	if ib.port == 0 {
		ib.port = portOf(c.App)
	}
	if err := CheckUpgrades(c.Upgrades); err != nil {
		return nil, err
	}
	ib.name = c.Name
	if ib.name == "" {
		ib.name = fmt.Sprintf("inbound-%d", ib.port)
	}
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	ib.dialApp = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, network, addr) }

	if c.Protocol == TCP {
		ib.tlsConf = s.tls.serverConfig(nil)
		return ib, nil
	}
	ib.tlsConf = s.tls.serverConfig([]string{"h2", "http/1.1"})
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return ib.dialApp(ctx) },
		MaxIdleConns:        s.cfg.MaxIdleConnsPerApp,
		MaxIdleConnsPerHost: s.cfg.MaxIdleConnsPerApp,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		Protocols:           new(http.Protocols),
	}
	if c.Protocol == HTTP2 {
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	host := addr
	if network == "unix" {
		host = "app"
	}
	var rt http.RoundTripper = tr
	if c.Protocol == HTTP {
		rt = &appClient{dial: ib.dialApp, fallback: tr, maxIdle: s.cfg.MaxIdleConnsPerApp, idleTimeout: 30 * time.Second, now: time.Now}
	}
	ib.fwd = &forwarder{rt: rt, upgrades: upgradesOf(c.Upgrades), scheme: "http", host: host, name: ib.name, s: s}
	ib.hl = newChanListener()
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	ib.httpSrv = &http.Server{
		Handler:           ib,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		Protocols:         protos,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if v, ok := ib.conns.Load(c); ok {
				return context.WithValue(ctx, connInfoKey{}, v.(*connInfo))
			}
			return ctx
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				ib.connDone(c)
			}
		},
	}
	return ib, nil
}

func (ib *inbound) serve() error {
	if ib.httpSrv != nil {
		go ib.httpSrv.Serve(ib.hl)
	}
	var backoff acceptBackoff
	for {
		c, err := ib.ln.Accept()
		if err != nil {
			if ib.closed.Load() || ib.streams.isDraining() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE and friends pass once connections close; giving up
			// would stop the inbound listener for good after one burst.
			if backoff.retry(err) {
				continue
			}
			return fmt.Errorf("proxy: inbound %s: accept: %w", ib.name, err)
		}
		backoff.reset()
		// Past the limit a connection is closed at once, before any TLS
		// work: a flood costs an accept, not a handshake and a goroutine.
		if ib.open.Load() >= int64(ib.s.cfg.MaxConnections) {
			c.Close()
			ib.s.metrics.refused.WithLabelValues(ib.name).Inc()
			continue
		}
		if !ib.streams.add() {
			c.Close()
			return nil
		}
		go func() {
			defer ib.streams.done()
			ib.handle(c)
		}()
	}
}

func (ib *inbound) close() {
	if ib.closed.Swap(true) {
		return
	}
	if ib.ln != nil {
		ib.ln.Close()
	}
	if ib.httpSrv != nil {
		ib.hl.Close()
		ib.httpSrv.Close()
		if c, ok := ib.fwd.rt.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
	ib.conns.Range(func(k, _ any) bool {
		k.(net.Conn).Close()
		return true
	})
}

// destination is the workload as policies see it on this port.
func (ib *inbound) destination(ip netip.Addr) policy.Destination {
	return policy.Destination{Namespace: ib.s.cfg.Namespace, Labels: ib.s.cfg.Labels, IP: ip, Port: ib.port}
}

// handle takes one accepted connection through the PeerAuthentication mode
// and the handshake, registers it for revocation, then serves it.
func (ib *inbound) handle(c net.Conn) {
	s := ib.s
	s.metrics.active.WithLabelValues(ib.name).Inc()
	ib.open.Add(1)
	info := &connInfo{}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		info.srcIP = ap.Addr().Unmap()
		info.srcIPStr = info.srcIP.String()
	}
	if ap, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
		info.dstIP = ap.Addr().Unmap()
	}
	fail := func() {
		c.Close()
		s.metrics.active.WithLabelValues(ib.name).Dec()
		ib.open.Add(-1)
	}
	_ = c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))

	authz, version := s.authorizer()
	mode := policy.ModeStrict // deny by default: no policy, no plaintext
	if authz != nil {
		mode = authz.MTLSMode(ib.destination(info.dstIP))
		if mode == policy.ModeUnset {
			mode = policy.ModePermissive // Istio's mesh-wide default
		}
	}

	// One byte tells a TLS ClientHello (a handshake record, 0x16) from
	// plaintext; it is replayed to whoever reads the connection next.
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		fail()
		return
	}
	pc := &prefixConn{Conn: c, first: first[0], pending: true}
	isTLS := first[0] == 0x16

	var conn net.Conn = pc
	switch {
	case isTLS && mode == policy.ModeDisable:
		ib.connDenied(info, ReasonTLSNotAllowed, "PeerAuthentication DISABLE: TLS not accepted", version)
		fail()
		return
	case !isTLS && mode == policy.ModeStrict:
		reason := "PeerAuthentication STRICT: plaintext refused"
		if authz == nil {
			reason = "no policy loaded: plaintext refused"
		}
		ib.connDenied(info, ReasonMTLSRequired, reason, version)
		fail()
		return
	case isTLS:
		tc := tls.Server(pc, ib.tlsConf)
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			if rp := (*revokedPeerError)(nil); errors.As(err, &rp) {
				s.observe(&Observation{Direction: DirectionInbound, Source: rp.id, Port: ib.port, Protocol: ib.cfg.Protocol.String(), Decision: "refused", Reason: "revoked"})
			}
			s.metrics.handshakeFailures.WithLabelValues(ib.name, handshakeReason(err)).Inc()
			s.log.Debug("inbound handshake failed", "listener", ib.name, "remote", info.srcIPStr, "err", err)
			fail()
			return
		}
		cs := tc.ConnectionState()
		leaf := cs.PeerCertificates[0]
		id, err := x509svid.IDFromCert(leaf)
		if err != nil { // verified in VerifyConnection; cannot happen
			fail()
			return
		}
		info.peer = id.String()
		info.principal = strings.TrimPrefix(info.peer, "spiffe://")
		info.serial = serialHex(leaf)
		info.certSHA256 = policy.CertThumbprint(leaf)
		info.sni = cs.ServerName
		if own, err := s.tls.ownID(); err == nil {
			info.own = strings.TrimPrefix(own.String(), "spiffe://")
			sum := sha256.Sum256(leaf.Raw)
			info.xfcc = []string{"By=" + own.String() + ";Hash=" + hex.EncodeToString(sum[:]) + ";URI=" + info.peer}
		}
		conn = tc
		s.metrics.connections.WithLabelValues(ib.name, "mtls").Inc()
	default:
		s.metrics.connections.WithLabelValues(ib.name, "plaintext").Inc()
	}
	_ = c.SetDeadline(time.Time{})

	ib.conns.Store(conn, info)
	if info.peer != "" {
		info.entry = s.live.add(func() { conn.Close() }, idKey(info.peer), serialKey(info.serial))
		// A revocation may have landed between the handshake's check and
		// the registration; the sweep would have missed this connection.
		rs := s.revoked.Load()
		if rs.has(info.peer, info.serial) {
			ib.connDone(conn)
			conn.Close()
			return
		}
		// A blocked pair is refused before any policy runs; the check
		// comes after the registration, so a block pushed meanwhile is
		// either seen here or sweeps this connection.
		if rs.blockedPair(info.peer, "spiffe://"+info.own, s.cfg.Now()) {
			ib.connDenied(info, ReasonBlocked, "this caller is blocked from calling this workload (incident response)", version)
			ib.connDone(conn)
			conn.Close()
			return
		}
	}
	if ib.closed.Load() {
		ib.connDone(conn)
		conn.Close()
		return
	}
	if ib.cfg.Protocol == TCP {
		ib.serveTCP(conn, info)
		return
	}
	if !ib.hl.push(conn) {
		ib.connDone(conn)
		conn.Close()
	}
}

// connDone forgets a closed connection.
func (ib *inbound) connDone(c net.Conn) {
	v, ok := ib.conns.LoadAndDelete(c)
	if !ok {
		return
	}
	ib.s.live.remove(v.(*connInfo).entry)
	ib.s.metrics.active.WithLabelValues(ib.name).Dec()
	ib.open.Add(-1)
}

// connDenied logs and counts a connection refused before any request.
func (ib *inbound) connDenied(info *connInfo, reason Reason, text string, version uint64) {
	ib.s.observe(&Observation{Direction: DirectionInbound, Source: info.peer, Port: ib.port, Protocol: ib.cfg.Protocol.String(), Decision: "refused", Reason: string(reason)})
	ib.s.dec.record(context.Background(), policy.Deny, "", reason, func(ev *DecisionEvent) {
		ev.Listener = ib.name
		ev.Source = info.peer
		ev.SourceIP = info.srcIPStr
		ev.Destination = destString(ib.s.cfg.Namespace, ib.port)
		ev.Protocol = ib.cfg.Protocol.String()
		ev.Reason = text
		ev.PolicyVersion = version
	})
}

func handshakeReason(err error) string {
	switch {
	case errors.Is(err, ErrPeerRevoked):
		return "revoked"
	case errors.Is(err, ErrPeerNotAllowed):
		return "wrong_id"
	case errors.Is(err, ErrPeerUnverified):
		return "unverified"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	var ae tls.AlertError
	if errors.As(err, &ae) {
		return "alert"
	}
	return "other"
}

// serveTCP applies L4 policy to a raw TCP connection and pipes it to the app.
func (ib *inbound) serveTCP(conn net.Conn, info *connInfo) {
	s := ib.s
	defer func() {
		ib.connDone(conn)
		conn.Close()
	}()
	authz, version := s.authorizer()
	req := policy.Request{
		Protocol:    policy.TCP,
		Source:      policy.Source{Principal: info.principal, IP: info.srcIP, CertSHA256: info.certSHA256},
		RemoteIP:    info.srcIP,
		Destination: ib.destination(info.dstIP),
		SNI:         info.sni,
		Time:        s.cfg.Now(),
	}
	req.Destination.Principal = info.own
	dec := policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: "no policy loaded"}
	if authz != nil {
		dec = authz.Evaluate(&req, s.verifier())
	}
	ib.logDecision(context.Background(), dec, authz != nil, version, info, nil)
	ob := Observation{Direction: DirectionInbound, Source: info.peer, Port: ib.port, Protocol: "tcp", Decision: dec.Outcome.String()}
	if dec.Outcome != policy.Allow {
		ob.Reason = string(reasonOf(dec, authz != nil))
		s.observe(&ob)
		return
	}
	start := time.Now()
	defer func() {
		ob.Latency = time.Since(start)
		s.observe(&ob)
	}()
	app, err := ib.dialApp(context.Background())
	if err != nil {
		s.metrics.upstreamErrors.WithLabelValues(ib.name).Inc()
		s.log.Warn("dial app failed", "listener", ib.name, "err", err)
		return
	}
	defer app.Close()
	pipe(app, app, conn, conn)
}

// logDecision records a decision with the request's attributes.
func (ib *inbound) logDecision(ctx context.Context, dec policy.Decision, loaded bool, version uint64, info *connInfo, r *http.Request) {
	reason := reasonOf(dec, loaded)
	fill := func(ev *DecisionEvent) {
		ev.Listener = ib.name
		ev.Source = info.peer
		ev.SourceIP = info.srcIPStr
		ev.Destination = destString(ib.s.cfg.Namespace, ib.port)
		ev.Protocol = ib.cfg.Protocol.String()
		if r != nil {
			ev.Method = r.Method
			ev.Path = r.URL.Path
			ev.RequestID = r.Header.Get("X-Request-Id")
		}
		ev.Rule = dec.Rule
		ev.Reason = dec.Reason
		ev.PolicyVersion = version
	}
	ib.s.dec.recordCustom(ctx, dec.Outcome, dec.Policy, reason, dec.Custom, fill)
	if dec.Audit {
		ib.s.dec.audited(ctx, dec, fill)
	}
}

// applyAuth makes the header and query edits RequestAuthentication asked
// for on an allowed request: output headers set, the token removed unless
// forwardOriginalToken.
func applyAuth(r *http.Request, auth *policy.Auth) {
	if auth == nil {
		return
	}
	h := r.Header
	for _, k := range auth.RemoveHeaders {
		h.Del(k)
	}
	for k, v := range auth.SetHeaders {
		h.Set(k, v)
	}
	if len(auth.RemoveQueryParams) > 0 && r.URL.RawQuery != "" {
		// The token's parameter goes; the rest stays as sent.
		r.URL.RawQuery, _ = removeQueryParams(r.URL.RawQuery, func(name string) bool {
			return slices.Contains(auth.RemoveQueryParams, name)
		})
	}
}

var reqPool = sync.Pool{New: func() any { return new(policy.Request) }}

// ServeHTTP is the inbound request path: strip the caller's
// x-forwarded-client-cert, authenticate and authorize, then forward.
func (ib *inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := ib.s
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil { // not a connection this listener accepted
		http.Error(w, "RBAC: access denied", http.StatusForbidden)
		return
	}
	// The traffic record of this request, counted when it ends (the
	// deferred call runs on every return, and when a body copy aborts).
	var ob Observation
	if s.rec != nil {
		ob = Observation{Direction: DirectionInbound, Source: info.peer, Port: ib.port, Protocol: ib.cfg.Protocol.String(), Method: r.Method}
		if r.ContentLength > 0 {
			ob.ReqBytes = r.ContentLength
		}
		start := time.Now()
		defer func() {
			ob.Latency = time.Since(start)
			s.observe(&ob)
		}()
	}
	// One policy version for the whole request: its strip list, path
	// normalization and decision.
	st := s.policy.Load()
	authz, version := st.authz, st.version
	if r.Method == http.MethodConnect {
		// A tunnel: its bytes would pass no policy.
		refuseConnect(w)
		ob.Decision, ob.Reason, ob.Status = "deny", "connect", http.StatusMethodNotAllowed
		return
	}
	h := r.Header
	// Hop-by-hop fields go first, from the request as received: nothing
	// the sidecar adds below can be named away by the caller's Connection,
	// and only an upgrade this listener carries survives.
	upgrade := removeHopHeaders(h, ib.fwd.upgrades)
	var span trace.Span
	if s.cfg.Tracer != nil {
		var sw *telemetry.StatusWriter
		r, span, sw = s.startSpan(w, r, "inbound "+ib.name, trace.SpanKindServer, info.peer != "", attrListener.String(ib.name),
			attrSource.String(info.peer), attrDestination.String(prefixed(info.own)), attribute.String("source.address", info.srcIPStr))
		w = sw
		defer func() { telemetry.EndHTTPSpan(span, sw.Status, false) }()
	}
	// Headers the sidecar writes for the app are its alone: a caller's
	// copy, under any spelling the app could fold into the same name, is
	// dropped whether or not it sends a token, from the header and from
	// the trailer.
	hf := st.headers[ib.name]
	if hf == nil {
		hf = baseHeaderFilter
	}
	hf.strip(h)
	hf.guardTrailers(r)

	// The app is served the target policy decided on: one call normalizes
	// it as the policy set says (Istio's meshConfig.pathNormalization)
	// and gives both the path the engine matches (NormalizedPath) and the
	// target forwarded, so the two cannot differ. A target refused
	// outright (a fragment, NUL, malformed escape) is a 400, not a policy
	// decision.
	np, perr := policy.NormalizeRequestPath(r.RequestURI, st.mode)
	if perr != nil || r.URL.Opaque != "" || policy.CheckRequestHost(r.Host) != nil {
		// A Host that names no host is refused here too: hosts rules
		// would deny it anyway, but only where a policy has them.
		badRequest(w)
		ob.Decision, ob.Reason, ob.Status, ob.Path = "deny", "bad_request", http.StatusBadRequest, "/{invalid}"
		return
	}
	// Policy decides on r.Method: a _method override in the query is
	// dropped before it does (override headers went with the filter).
	np, overridden := stripMethodOverride(np)
	if np.Changed() || overridden {
		setTarget(r.URL, np)
	}
	req := reqPool.Get().(*policy.Request)
	*req = policy.Request{
		Protocol:       policy.HTTP,
		Source:         policy.Source{Principal: info.principal, IP: info.srcIP, CertSHA256: info.certSHA256},
		RemoteIP:       info.srcIP,
		Destination:    ib.destination(info.dstIP),
		SNI:            info.sni,
		Time:           s.cfg.Now(),
		Method:         r.Method,
		Host:           r.Host,
		Path:           np.Target(),
		NormalizedPath: np,
		Headers:        h,
	}
	req.Destination.Principal = info.own
	dec := policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: "no policy loaded"}
	if authz != nil {
		dec = authz.Evaluate(req, s.verifier())
	}
	auth := req.Auth
	if auth != nil && s.revoked.Load().revokedIdentityToken(auth.Claims) {
		dec = policy.Decision{Outcome: policy.Unauthenticated, Rule: -1, Reason: "invalid token: issued to or for a revoked identity"}
	}
	*req = policy.Request{}
	reqPool.Put(req)
	ib.logDecision(r.Context(), dec, authz != nil, version, info, r)
	if s.rec != nil {
		ob.Path, ob.Decision = np.Path(), dec.Outcome.String()
		if dec.Outcome != policy.Allow {
			ob.Reason = string(reasonOf(dec, authz != nil))
		}
		if auth != nil {
			ob.Token, _ = auth.Claims["iss"].(string)
		}
	}
	if span != nil {
		span.SetAttributes(decisionAttrs(dec, authz != nil, version, info, auth)...)
		if r.URL.Path != "" {
			span.SetAttributes(attribute.String("url.path", r.URL.Path)) // as normalized and forwarded
		}
	}

	switch dec.Outcome {
	case policy.Allow:
	case policy.Unauthenticated:
		w.Header().Set("Www-Authenticate", `Bearer error="invalid_token"`)
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, "Jwt verification fails")
		ob.Status = http.StatusUnauthorized
		return
	default:
		body := "RBAC: access denied"
		if s.cfg.DenyNamesPolicy && dec.Policy != "" {
			body += " by " + dec.Policy
		}
		status := http.StatusForbidden
		if dec.Status != 0 { // a CUSTOM provider's choice, 400-599
			status = dec.Status
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(status)
		io.WriteString(w, body)
		ob.Status = status
		return
	}

	if auth != nil {
		applyAuth(r, auth)
		// A request authenticated with a token is cut off when that
		// token's jti is revoked, however long it streams.
		if jti, _ := auth.Claims["jti"].(string); jti != "" {
			ctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			e := s.live.add(cancel, jtiKey(jti))
			defer s.live.remove(e)
			if s.revoked.Load().hasJTI(jti) {
				cancel()
			}
			r = r.WithContext(ctx)
		}
	}
	// Headers an allowing CUSTOM provider asked for replace the caller's
	// (the policy package refused framing and identity headers).
	for k, v := range dec.Headers {
		h[k] = []string{v}
	}
	if info.xfcc != nil {
		h[xfccHeader] = info.xfcc
	}
	if span != nil {
		propagate(r.Context(), h)
	}
	fw := w
	pw := s.rec.piiSampler(w, info.peer)
	if pw != nil {
		fw = pw
	}
	ob.Status, ob.RespBytes = ib.fwd.forward(fw, r, upgrade, func(c net.Conn) func() {
		// The upgraded stream outlives the HTTP server's view of the
		// connection; keep it registered for revocation until it ends.
		return func() { ib.connDone(c) }
	})
	if pw != nil && len(pw.buf) > 0 {
		s.rec.piiScan(&ob, pw)
	}
}

// chanListener hands connections the sidecar accepted and authenticated
// to an http.Server.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// prefixConn replays the byte read to sniff the protocol.
type prefixConn struct {
	net.Conn
	first   byte
	pending bool
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if c.pending && len(p) > 0 {
		p[0] = c.first
		c.pending = false
		return 1, nil
	}
	return c.Conn.Read(p)
}
