package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
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
	// app is the fast path's client of the app, nil when the fast path
	// is off for this listener.
	app     *appClient
	fast    fastConns
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
	ib.dialApp = func(ctx context.Context) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return withRawSyscalls(c), nil
	}

	if c.Protocol == TCP {
		ib.tlsConf = s.tls.serverConfig(nil)
		return ib, nil
	}
	ib.tlsConf = s.tls.serverConfig([]string{"h2", "http/1.1"})
	tr := &http.Transport{
		DialContext:            func(ctx context.Context, _, _ string) (net.Conn, error) { return ib.dialApp(ctx) },
		MaxIdleConns:           s.cfg.MaxIdleConnsPerApp,
		MaxIdleConnsPerHost:    s.cfg.MaxIdleConnsPerApp,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: maxResponseHeadBytes,
		DisableCompression:     true,
		Protocols:              new(http.Protocols),
		ExpectContinueTimeout:  expectContinueTimeout,
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
	if a, ok := rt.(*appClient); ok && s.fastPathOn() {
		ib.app = a
	}
	ib.hl = newChanListener()
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	ib.httpSrv = &http.Server{
		Handler: ib,
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
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if v, ok := ib.conns.Load(c); ok {
				ctx = context.WithValue(ctx, connInfoKey{}, v.(*connInfo))
			}
			return markHandoff(ctx, c)
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
	c = withRawSyscalls(c)
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
	var peerChain []*x509.Certificate // verified, of an mTLS peer
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
		peerChain = cs.PeerCertificates
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

	// HTTP/1.1 (by ALPN, or plaintext that may still turn out to be h2c)
	// goes to the fast path when it is on.
	var fc *fastConn
	if tc, ok := conn.(*tls.Conn); ib.app != nil && (!ok || tc.ConnectionState().NegotiatedProtocol != "h2") {
		fc = newFastConn(s, conn, ib.streams.isDraining)
		defer func() {
			if fc.buf != nil { // not served: an early return below
				fc.release()
			}
		}()
	}
	closeConn := func() { conn.Close() }
	if fc != nil {
		// Revocation also fails the exchange with the app in flight.
		closeConn = fc.abort
	}
	ib.conns.Store(conn, info)
	if info.peer != "" {
		auth := s.tls.authorityOf(peerChain)
		info.entry = s.live.addPeer(closeConn, peerChain, auth, idKey(info.peer), serialKey(info.serial))
		// A revocation, or a bundle change that revoked the peer's CA
		// authority, may have landed between the handshake's check and
		// the registration; the sweep or recheck would have missed this
		// connection.
		if !s.tls.stillTrusted(peerChain, auth) {
			s.metrics.revokedClosed.Inc()
			ib.connDone(conn)
			conn.Close()
			return
		}
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
	switch {
	case ib.cfg.Protocol == TCP:
		ib.serveTCP(conn, info)
		return
	case fc != nil:
		ib.serveFast(fc, conn, info)
		return
	}
	// An HTTP/1.x connection (by ALPN, or plaintext that may be h2c) is
	// read by net/http through the fast path's parser (framingGuard).
	if tc, ok := conn.(*tls.Conn); !ok || tc.ConnectionState().NegotiatedProtocol != "h2" {
		gc := guardFraming(conn, s.headLimit(), s.cfg.ReadHeaderTimeout)
		ib.conns.Store(gc, info)
		ib.conns.Delete(conn)
		conn = gc
	}
	if !ib.hl.push(conn) {
		ib.connDone(conn)
		conn.Close()
	}
}

// serveFast serves an HTTP/1.1 connection on the fast path until it ends
// or is handed to net/http's server.
func (ib *inbound) serveFast(fc *fastConn, conn net.Conn, info *connInfo) {
	ib.fast.add(fc)
	o := fc.serve(func(fc *fastConn) fastOutcome { return ib.fastRequest(fc, info, ib.app) })
	ib.fast.remove(fc)
	if o != fastHandoff {
		fc.release()
		if fc.linger {
			ib.s.lingering.Linger(conn, 0, SidecarLinger, func() { ib.connDone(conn) })
			return
		}
		ib.connDone(conn)
		conn.Close()
		return
	}
	hc := fc.handoff()
	ib.conns.Delete(conn)
	ib.conns.Store(hc, info)
	if ib.closed.Load() || !ib.hl.push(hc) {
		ib.connDone(hc)
		hc.Close()
	}
}

// taken keeps a connection net/http's server no longer serves (an
// upgraded stream, a lingering close) registered until it ends.
func (ib *inbound) taken(c net.Conn) func() { return func() { ib.connDone(c) } }

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

// logDecision records a decision with the request's attributes; r, nil
// for a TCP connection, is the request as policy saw it.
func (ib *inbound) logDecision(ctx context.Context, dec policy.Decision, loaded bool, version uint64, info *connInfo, r *decidedRequest) {
	reason := reasonOf(dec, loaded)
	fill := func(ev *DecisionEvent) {
		ev.Listener = ib.name
		ev.Source = info.peer
		ev.SourceIP = info.srcIPStr
		ev.Destination = destString(ib.s.cfg.Namespace, ib.port)
		ev.Protocol = ib.cfg.Protocol.String()
		if r != nil {
			ev.Method = r.method
			ev.Path = decodedPath(r.np.Path())
			ev.RequestID = r.header.Get("X-Request-Id")
		}
		ev.Rule = dec.Rule
		ev.Reason = dec.Reason
		ev.TokenIssuer, ev.TokenSubject = truncate(dec.TokenIssuer, MaxTokenName), truncate(dec.TokenSubject, MaxTokenName)
		ev.PolicyVersion = version
	}
	ib.s.dec.recordCustom(ctx, dec.Outcome, dec.Policy, reason, dec.Custom, fill)
	if dec.Audit {
		ib.s.dec.audited(ctx, dec, fill)
	}
}

// decodedPath is a normalized path percent-decoded, as logs show paths
// (net/http's URL.Path).
func decodedPath(p string) string {
	if d, err := url.PathUnescape(p); err == nil {
		return d
	}
	return p
}

// applyAuth makes the header and query edits RequestAuthentication asked
// for on an allowed request: output headers set, the token removed unless
// forwardOriginalToken (for the gateway, through ApplyAuth).
func applyAuth(r *http.Request, auth *policy.Auth) {
	if q, changed := authEdits(r.Header, r.URL.RawQuery, auth); changed {
		r.URL.RawQuery = q
	}
}

// authEdits makes RequestAuthentication's header edits on h and returns
// query without the token's parameters (the rest as sent), and whether
// that changed it.
func authEdits(h http.Header, query string, auth *policy.Auth) (string, bool) {
	if auth == nil {
		return query, false
	}
	for _, k := range auth.RemoveHeaders {
		// authn's names are canonical, as the header's are: the name
		// found as is is deleted without canonicalizing it again on every
		// request (half of this function's cost with a token); another
		// spelling goes through Del.
		if _, ok := h[k]; ok {
			delete(h, k)
		} else {
			h.Del(k)
		}
	}
	for k, v := range auth.SetHeaders {
		h.Set(k, v)
	}
	if len(auth.RemoveQueryParams) > 0 && query != "" {
		return removeQueryParams(query, func(name string) bool {
			return slices.Contains(auth.RemoveQueryParams, name)
		})
	}
	return query, false
}

var reqPool = sync.Pool{New: func() any { return new(policy.Request) }}

// decidedRequest is one inbound request as policy decided it. Both
// server paths (net/http's and the HTTP/1.1 fast path) fill it with
// decide, answer a refusal with answerDenied, and apply allowed to
// what they forward, so the two cannot differ in what reaches the app.
type decidedRequest struct {
	method string
	// header is the request's header, hop-by-hop and owned fields
	// removed: what policy saw and, with allowed's additions, what the
	// app gets.
	header http.Header
	// upgrade is the protocol switch forwarded ("" for none).
	upgrade string
	// np is the target decided on and forwarded.
	np         policy.RequestPath
	overridden bool // np lost a _method parameter
	dec        policy.Decision
	loaded     bool
	version    uint64
	auth       *policy.Auth
}

// decide runs one request through the inbound path up to the decision:
// hop-by-hop fields are removed from the request as received (so nothing
// the sidecar adds can be named away by the caller's Connection, and only
// an upgrade this listener carries survives), then the headers the
// sidecar writes for the app under any spelling the app could fold into
// the same name (the filter), then the target is normalized as the policy
// set says (Istio's meshConfig.pathNormalization) by the one call that
// gives both the path the engine matches and the target forwarded, a
// _method override dropped from its query, and policy decides on the
// request's own method. ok is false for a target refused outright (a
// fragment, NUL, a malformed escape), a field value padded with
// whitespace (paddedValue), a Host that names no host
// (policy.CheckRequestHost: hosts rules would deny it, but only where a
// policy has them) or a method with a lower-case letter
// (policy.CheckMethod: "delete" is DELETE to Django and Rack): a 400,
// not a decision. h is changed in place.
//
// jv verifies the request's tokens: the sidecar's Verifier, or on the fast
// path the connection's memo of it (fastConn.verifier).
func (ib *inbound) decide(ctx context.Context, st *policyState, info *connInfo, jv policy.JWTVerifier, method, target, host string, h http.Header) (r decidedRequest, ok bool) {
	s := ib.s
	r.method, r.header, r.version = method, h, st.version
	r.upgrade = removeHopHeaders(h, ib.fwd.upgrades)
	st.filter(ib.name).strip(h)
	np, perr := policy.NormalizeRequestPath(target, st.mode)
	if perr != nil || policy.CheckRequestHost(host) != nil || policy.CheckMethod(method) != nil || paddedValue(h) {
		return r, false
	}
	r.np, r.overridden = stripMethodOverride(np)
	req := reqPool.Get().(*policy.Request)
	*req = policy.Request{
		Protocol:       policy.HTTP,
		Source:         policy.Source{Principal: info.principal, IP: info.srcIP, CertSHA256: info.certSHA256},
		RemoteIP:       info.srcIP,
		Destination:    ib.destination(info.dstIP),
		SNI:            info.sni,
		Time:           s.cfg.Now(),
		Method:         method,
		Host:           host,
		Path:           r.np.Target(),
		NormalizedPath: r.np,
		Headers:        h,
	}
	req.Destination.Principal = info.own
	r.dec = policy.Decision{Outcome: policy.Deny, Rule: -1, Reason: "no policy loaded"}
	if r.loaded = st.authz != nil; r.loaded {
		r.dec = st.authz.Evaluate(req, jv)
	}
	r.auth = req.Auth
	if r.auth != nil && s.revoked.Load().revokedIdentityToken(r.auth.Claims) {
		// A token issued to or for a revoked identity is refused on
		// every path, however valid its signature and lifetime.
		// Its signature verified: its claims name whose it is.
		r.dec = policy.Decision{Outcome: policy.Unauthenticated, Rule: -1, Reason: "invalid token: issued to or for a revoked identity"}
	}
	if r.auth != nil && r.dec.TokenIssuer == "" && r.dec.TokenSubject == "" {
		// An Authorizer other than policy's Set may not name the token.
		r.dec.TokenIssuer, r.dec.TokenSubject = r.auth.Token()
	}
	*req = policy.Request{}
	reqPool.Put(req)
	ib.logDecision(ctx, r.dec, r.loaded, r.version, info, &r)
	return r, true
}

// record notes in ob what was decided: the path, the decision, the reason
// of a refusal and the issuer of the token that authenticated it.
func (r *decidedRequest) record(ob *Observation) {
	ob.Path, ob.Decision = r.np.Path(), r.dec.Outcome.String()
	if r.dec.Outcome != policy.Allow {
		ob.Reason = string(reasonOf(r.dec, r.loaded))
	}
	if r.auth != nil {
		ob.Token, _ = r.auth.Claims["iss"].(string)
	}
}

// filter is the header filter of listener name under this policy.
func (st *policyState) filter(name string) *headerFilter {
	if hf := st.headers[name]; hf != nil {
		return hf
	}
	return baseHeaderFilter
}

// answerDenied answers a request policy did not allow (401 for an invalid
// token, 403 or a CUSTOM provider's status otherwise) and returns the
// status it answered; 0 means allowed.
func (ib *inbound) answerDenied(w http.ResponseWriter, r *decidedRequest) int {
	switch r.dec.Outcome {
	case policy.Allow:
		return 0
	case policy.Unauthenticated:
		w.Header().Set("Www-Authenticate", `Bearer error="invalid_token"`)
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, "Jwt verification fails")
		return http.StatusUnauthorized
	}
	body := "RBAC: access denied"
	if ib.s.cfg.DenyNamesPolicy && r.dec.Policy != "" {
		body += " by " + r.dec.Policy
	}
	status := http.StatusForbidden
	if r.dec.Status != 0 { // a CUSTOM provider's choice, 400-599
		status = r.dec.Status
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(status)
	io.WriteString(w, body)
	return status
}

// allowed makes the changes an allowed request gets before it is
// forwarded: RequestAuthentication's header edits, the headers an
// allowing CUSTOM provider asked for (the policy package refused framing
// and identity headers), and the verified caller in
// x-forwarded-client-cert. It returns the query to forward, without the
// token's parameter when RequestAuthentication removes it (the rest as
// sent), and whether that changed it.
func (r *decidedRequest) allowed(info *connInfo) (query string, changed bool) {
	h := r.header
	query, _ = r.np.Query()
	query, changed = authEdits(h, query, r.auth)
	for k, v := range r.dec.Headers {
		h[k] = []string{v}
	}
	if len(r.dec.Headers) > 0 {
		// The provider's word under its name, and under no "_" spelling
		// an app would fold into it: its names are known only now.
		for k := range h {
			if strings.IndexByte(k, '_') >= 0 {
				if _, set := r.dec.Headers[http.CanonicalHeaderKey(foldHeaderName(k))]; set {
					delete(h, k)
				}
			}
		}
	}
	if info.xfcc != nil {
		h[xfccHeader] = info.xfcc
	}
	return query, changed
}

// jti is the ID of the token that authenticated the request, "" for none.
// tokenKeys appends to keys those a request authenticated with a token
// is tracked under: its jti and the workloads it names (tokenOwnerKeys);
// none without a token.
func (r *decidedRequest) tokenKeys(keys []liveKey) []liveKey {
	if r.auth == nil {
		return keys
	}
	if jti := r.jti(); jti != "" {
		keys = append(keys, jtiKey(jti))
	}
	return tokenOwnerKeys(keys, r.auth.Claims)
}

func (r *decidedRequest) jti() string {
	if r.auth == nil {
		return ""
	}
	jti, _ := r.auth.Claims["jti"].(string)
	return jti
}

// observation is the traffic record of one request from info's peer,
// counted by the caller when the request ends on either server path,
// with the request body bytes the sidecar read (not the Content-Length:
// an answer may come before the body was read).
func (ib *inbound) observation(info *connInfo, method string) Observation {
	return Observation{Direction: DirectionInbound, Source: info.peer, Port: ib.port, Protocol: ib.cfg.Protocol.String(),
		Method: method}
}

// ServeHTTP is the inbound request path of net/http's server: strip the
// caller's x-forwarded-client-cert, authenticate and authorize, then
// forward (see decide).
func (ib *inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := ib.s
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil { // not a connection this listener accepted
		http.Error(w, "RBAC: access denied", http.StatusForbidden)
		return
	}
	if !framed(w, r) {
		return
	}
	// The traffic record of this request, counted when it ends (the
	// deferred call runs on every return, and when a body copy aborts).
	var ob Observation
	if s.rec != nil {
		ob = ib.observation(info, r.Method)
		start := time.Now()
		defer func() {
			ob.Latency = time.Since(start)
			s.observe(&ob)
		}()
	}
	// One policy version for the whole request: its strip list, path
	// normalization and decision.
	st := s.policy.Load()
	if r.Method == http.MethodConnect {
		// A tunnel: its bytes would pass no policy.
		after, _ := s.settle(w, r, ib.taken)
		defer after()
		refuseConnect(w)
		ob.Decision, ob.Reason, ob.Status = "deny", "connect", http.StatusMethodNotAllowed
		return
	}
	var span trace.Span
	if s.cfg.Tracer != nil {
		// Before the decision, so that its log and audit event carry the
		// trace ID.
		var sw *telemetry.StatusWriter
		r, span, sw = s.startSpan(w, r, "inbound "+ib.name, trace.SpanKindServer, info.peer != "", ib.spanAttrs(info)...)
		w = sw
		defer func() { telemetry.EndHTTPSpan(span, sw.Status, false) }()
	}
	if r.URL.Opaque != "" {
		after, _ := s.settle(w, r, ib.taken)
		defer after()
		undecidable(w, r)
		ob.Decision, ob.Reason, ob.Status, ob.Path = "deny", "bad_request", http.StatusBadRequest, "/{invalid}"
		return
	}
	d, ok := ib.decide(r.Context(), st, info, s.verifier(), r.Method, r.RequestURI, r.Host, r.Header)
	// Trailer fields of a caller's body are filtered as its header was.
	st.filter(ib.name).guardTrailers(r)
	if !ok {
		after, _ := s.settle(w, r, ib.taken)
		defer after()
		undecidable(w, r)
		ob.Decision, ob.Reason, ob.Status, ob.Path = "deny", "bad_request", http.StatusBadRequest, "/{invalid}"
		return
	}
	if d.np.Changed() || d.overridden {
		setTarget(r.URL, d.np)
	}
	d.record(&ob)
	if span != nil {
		d.traced(span, info)
	}
	if d.dec.Outcome != policy.Allow {
		var after func()
		after, ob.ReqBytes = s.settle(w, r, ib.taken)
		defer after()
		ob.Status = ib.answerDenied(w, &d)
		return
	}
	if q, changed := d.allowed(info); changed {
		r.URL.RawQuery = q
	}
	// A request authenticated with a token is cut off when that token's
	// jti is revoked, or the workload it was issued to or for, however
	// long it streams.
	var buf [4]liveKey
	if keys := d.tokenKeys(buf[:0]); len(keys) > 0 {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		e := s.live.add(cancel, keys...)
		defer s.live.remove(e)
		if rs := s.revoked.Load(); rs.hasJTI(d.jti()) || rs.revokedIdentityToken(d.auth.Claims) {
			cancel()
		}
		r = r.WithContext(ctx)
	}
	if span != nil {
		propagate(r.Context(), r.Header)
	}
	fw := w
	pw := s.rec.piiSampler(w, info.peer)
	var sent *piiBody
	if pw != nil {
		fw = pw
		// What the app is sent, which its answer may echo.
		if r.Body != nil && r.Body != http.NoBody {
			sent = &piiBody{ReadCloser: r.Body, max: pw.max}
			r.Body = sent
		}
	}
	// An upgraded stream outlives the HTTP server's view of the
	// connection; it stays registered for revocation until it ends.
	early := ib.fwd.forward(fw, r, d.upgrade, ib.taken, &ob)
	if pw != nil && len(pw.buf) > 0 {
		req := [][]byte{[]byte(r.URL.RequestURI())}
		if sent != nil {
			req = append(req, sent.sent())
		}
		s.rec.piiScan(&ob, pw.buf, req)
	}
	if early {
		LingerHijack(w, &s.lingering, SidecarLinger, ib.taken)
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
