// Package proxy is the moatless sidecar: one per workload, in front of it
// and behind it.
//
// Inbound, it terminates mutual TLS from other sidecars (TLS 1.3, the peer's
// X509-SVID verified against the trust bundle, never a hostname), applies
// the PeerAuthentication mode of the port (STRICT refuses plaintext,
// PERMISSIVE accepts both on one port by sniffing for a TLS ClientHello,
// DISABLE takes plaintext only), authenticates request JWTs
// (RequestAuthentication), authorizes the request (AuthorizationPolicy) and
// forwards it to the local app with the verified caller in
// x-forwarded-client-cert. Outbound, it listens on loopback (or a unix
// socket) for the app's plaintext calls, admits only the local users
// configured (by default the uid it runs as; see LocalCallers), and
// forwards each call over mutual TLS to an upstream sidecar whose SPIFFE
// ID it verifies, over pooled HTTP/2 connections with TLS session
// resumption.
//
// HTTP/1.1, HTTP/2 (h2c from the app), gRPC (trailers included), WebSocket
// upgrades and raw TCP (L4 policy only) are carried. New SVIDs, bundles and
// policies apply to the next handshake or request without dropping
// connections; a revoked identity (SPIFFE ID, certificate serial or token
// ID) has its live connections closed.
//
// Lifecycle: New(Config) → Serve(ctx) → Close. Policy and revocations are
// pushed in with SetAuthorizer and SetRevocations from whatever drives the
// sidecar (policy files, the server's watch stream).
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/wire"
)

// Authorizer is the compiled policy the sidecar enforces: the part of the
// policy engine's *Set it consumes. Implementations must be safe for
// concurrent use and must not do I/O; a new policy version is a new
// Authorizer swapped in whole.
type Authorizer interface {
	// MTLSMode is the PeerAuthentication mode for a workload port.
	MTLSMode(dst policy.Destination) policy.MTLSMode
	// Evaluate authenticates the request's JWTs with v and authorizes it.
	Evaluate(req *policy.Request, v policy.JWTVerifier) policy.Decision
}

// Protocol is what a port carries.
type Protocol uint8

const (
	// HTTP: HTTP/1.1 or HTTP/2 from the peer, HTTP/1.1 to the app.
	HTTP Protocol = iota
	// HTTP2: as HTTP but HTTP/2 without TLS (h2c) to the app: gRPC servers.
	HTTP2
	// TCP: raw bytes, L4 policy only.
	TCP
)

func (p Protocol) String() string {
	switch p {
	case HTTP2:
		return "http2"
	case TCP:
		return "tcp"
	default:
		return "http"
	}
}

// ParseProtocol reads a protocol name: "http", "http2" (alias "grpc", "h2c")
// or "tcp".
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "", "http", "http1", "http/1.1":
		return HTTP, nil
	case "http2", "h2c", "grpc":
		return HTTP2, nil
	case "tcp":
		return TCP, nil
	}
	return 0, fmt.Errorf("proxy: unknown protocol %q (want http, http2, grpc or tcp)", s)
}

// Inbound is one mTLS listener in front of the app.
type Inbound struct {
	// Name labels metrics and logs; default "inbound-<port>".
	Name string
	// Listen is the address to bind ("0.0.0.0:15006"). Ignored when
	// Listener is set.
	Listen   string
	Listener net.Listener
	// App is where the app listens: "host:port" or "unix:/path".
	App string
	// Protocol of the port.
	Protocol Protocol
	// Port is the destination port policies see (Istio's workload port,
	// for portLevelMtls and destination.port); default: App's port.
	Port int
	// Upgrades lists the protocols a request may switch to (HTTP/1.1
	// Upgrade); nil means DefaultUpgrades, an empty list none. See
	// CheckUpgrades.
	Upgrades []string
}

// DefaultUpgrades are the protocol upgrades an HTTP listener forwards when
// its config names none: WebSocket, as Istio enables it by default.
var DefaultUpgrades = []string{"websocket"}

// CheckUpgrades refuses upgrade protocols a listener cannot carry safely.
// Only "websocket" is accepted (case-insensitive). An upgraded connection
// is a byte stream that per-request policy never sees again: h2c would
// carry any number of HTTP/2 requests past it, and anything else is
// unknown.
func CheckUpgrades(protos []string) error {
	for _, p := range protos {
		if !strings.EqualFold(p, "websocket") {
			return fmt.Errorf("proxy: config: upgrade %q: only websocket can be forwarded (an upgraded connection carries requests policy never sees)", p)
		}
	}
	return nil
}

// upgradesOf is the upgrade list in force for a configured one.
func upgradesOf(protos []string) []string {
	if protos == nil {
		return DefaultUpgrades
	}
	return protos
}

// Outbound is one loopback listener the app calls in plaintext.
type Outbound struct {
	// Name labels metrics and logs; default "outbound-<listen port>", or
	// "outbound-<file name>" for a unix socket.
	Name string
	// Listen must be a loopback address: plaintext never leaves the host.
	// "unix:/abs/path" listens on a unix socket instead (Linux only),
	// whose file mode keeps other users from connecting at all. Either
	// way, Config.OutboundCallers decides who may connect. Ignored when
	// Listener is set; a given Listener is checked the same way.
	Listen   string
	Listener net.Listener
	// SocketMode is the permission bits of a unix socket listener's file;
	// default 0600 when only the sidecar's own uid may connect
	// (OutboundCallers' zero value), 0660 with a SocketGID, 0666
	// otherwise (the peer credential check still refuses uids and gids
	// not admitted).
	SocketMode fs.FileMode
	// SocketGID, when set, is the group of a unix socket listener's file
	// (the sidecar must be a member, or root).
	SocketGID *uint32
	// Upstream is the upstream sidecar's inbound address, "host:port".
	Upstream string
	// ID is the SPIFFE ID the upstream must present. Anything else is
	// refused during the handshake.
	ID spiffeid.ID
	// ServerName is sent as SNI; default none.
	ServerName string
	// Protocol of the port: HTTP (the app may speak HTTP/1.1 or h2c) or TCP.
	// HTTP2 is the same as HTTP on the outbound side.
	Protocol Protocol
	// HTTP1 carries plain requests to the upstream over a pool of
	// HTTP/1.1 TLS connections instead of multiplexing them on HTTP/2:
	// more connections and handshakes, less CPU per request (see
	// docs/benchmarks.md). Streaming bodies, gRPC and upgrades are
	// unaffected. Default false: HTTP/2.
	HTTP1 bool
	// Upgrades lists the protocols a request from the app may switch to;
	// nil means DefaultUpgrades, an empty list none. See CheckUpgrades.
	Upgrades []string
	// Hosts are the names, besides the upstream's host and ServerName,
	// that the app sends as Host ("orders", or "*.example.org" for any
	// name under it); an IP literal and localhost always pass. A request
	// under any other name is refused (403): it is what a web page whose
	// name was rebound to 127.0.0.1 sends. See browserRefusal.
	Hosts []string
}

// Config configures a Sidecar. Identity and at least one listener are
// required; every other field has a working zero value.
type Config struct {
	// Identity supplies the SVID and bundles; read on every handshake.
	Identity Identity
	// Namespace and Labels describe this workload to policies (selectors,
	// targeting by namespace).
	Namespace string
	Labels    map[string]string

	Inbound  []Inbound
	Outbound []Outbound
	// OutboundCallers are the local users whose processes may use the
	// outbound listeners; the zero value admits only the uid the sidecar
	// runs as. See LocalCallers.
	OutboundCallers LocalCallers

	// Authorizer is the initial policy. Nil means deny everything (and
	// STRICT mTLS) until SetAuthorizer is called: deny by default.
	Authorizer Authorizer
	// Verifier validates request JWTs. Nil refuses (401) any request for
	// which a RequestAuthentication rule exists and a token is presented.
	Verifier policy.JWTVerifier

	// Logger receives operational logs; default slog.Default().
	Logger *slog.Logger
	// DecisionLog receives decision records as structured logs; default
	// Logger. Every deny is logged; allows at AllowSampleRate (0: none,
	// 1: all).
	DecisionLog     *slog.Logger
	AllowSampleRate float64
	// Audit, when set, also receives every deny (join-token mode reports
	// them to the server's audit log).
	Audit AuditSink
	// Recorder, when set, counts every request, refused connection and
	// TCP stream into per-edge traffic records for the server (see
	// Recorder), and samples decisions and, where opted in, response
	// bodies. The caller runs it (Recorder.Run).
	Recorder *Recorder
	// Tracer, when set, traces every HTTP request on every listener
	// (tracing.go): W3C trace context in, a span with the decision, the
	// span's context out to the app or the upstream. Nil: no tracing, and
	// trace headers pass through untouched.
	Tracer trace.Tracer
	// Risk, when set, holds the risk scores the server pushes: every span
	// carries its source identity's (telemetry.AttrSourceRisk, 0 when
	// unknown or when Risk is nil).
	Risk *telemetry.RiskScores
	// Registerer receives the sidecar's Prometheus metrics; default none
	// (a private registry).
	Registerer prometheus.Registerer

	// DenyNamesPolicy puts the deciding policy's name in 403 bodies
	// ("RBAC: access denied by prod/deny-delete"). Off by default: policy
	// names tell a caller how the mesh is configured.
	DenyNamesPolicy bool

	// HandshakeTimeout bounds the first byte plus TLS handshake; default 10s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes idle keep-alive connections; default 5m.
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds reading request headers; default 30s.
	ReadHeaderTimeout time.Duration
	// MaxHeaderBytes bounds request headers; default 64 KiB.
	MaxHeaderBytes int
	// MaxIdleConnsPerApp is the keep-alive pool to the app; default 256.
	MaxIdleConnsPerApp int
	// MaxConnections bounds the open connections of each inbound listener;
	// more are closed on accept and counted. Default 10,000.
	MaxConnections int
	// DrainTimeout is how long Serve lets requests and streams in flight
	// finish after its context ends (see Shutdown); default 5s.
	DrainTimeout time.Duration

	// DisableHTTP1FastPath serves every HTTP/1.1 connection with
	// net/http's server and client, as before the fast path. By default
	// the common shape of HTTP/1.1 request (a Content-Length body of up
	// to 64 KiB or none, no upgrade, no Expect) on an http listener and on
	// an outbound listener with an HTTP/1.1 upstream is read, decided and
	// forwarded on one goroutine per connection by the sidecar's own
	// strict parser, and everything else is handed to net/http's server
	// (see docs/sidecar.md#speed).
	DisableHTTP1FastPath bool

	// KeepStartupPages turns off the release of the executable's pages
	// once the sidecar serves. By default (Linux only), when Serve has its
	// listeners up, the sidecar unmaps from itself (madvise MADV_DONTNEED)
	// the resident pages of the moatless executable's read-only mappings.
	// The one binary carries the server, store, CA and CLI too: the
	// package initializers and the kernel's fault-around (64 KiB per page
	// fault) leave about 17 MB of it resident, most of which a sidecar
	// never runs again. The pages stay in the page cache, shared with the
	// agent and other sidecars; those the request path needs fault back in
	// once, as minor faults. A mapping holding copy-on-write pages is
	// skipped. Done once per process, and once more 10 s later for the
	// code that runs only as traffic starts (first reloads, handshakes,
	// pool dials); a failure is logged at debug level and changes nothing
	// else.
	KeepStartupPages bool

	// Now is the clock for certificate checks and decision records;
	// default time.Now.
	Now func() time.Time
}

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("proxy: sidecar closed")

// Sidecar is a running sidecar. Create it with New, run it with Serve,
// stop it with Close. Its methods are safe for concurrent use.
type Sidecar struct {
	cfg     Config
	log     *slog.Logger
	tls     *tlsIdentity
	policy  atomic.Pointer[policyState]
	revoked atomic.Pointer[revocationSet]
	live    *tracker
	// liveOut tracks the outbound connections to upstreams, by their
	// peer's CA authority only (RecheckTrust).
	liveOut *tracker
	dec     *decisionLogger
	rec     *Recorder // nil: traffic is not recorded
	metrics *metrics
	callers *callerCheck

	inbound  []*inbound
	outbound []*outbound

	mu      sync.Mutex
	serving bool
	closed  bool
	done    chan struct{}
	// accepting is true from when Serve has every listener bound until
	// Shutdown or Close: Ready's "can serve" includes it.
	accepting atomic.Bool

	// lingering is the HTTP/1.x connections closing after an own answer
	// to a request whose body was not read (linger.go).
	lingering LingerSet
}

type policyState struct {
	version uint64
	authz   Authorizer
	// headers holds, per inbound listener name, the filter of request
	// headers the app could take for the sidecar's word: XFCC, the headers
	// RequestAuthentication writes for the app (outputPayloadToHeader,
	// outputClaimToHeaders) under any spelling, "_" twins of the token
	// headers it reads. It runs on every inbound request before
	// evaluation, so a caller cannot forge them on a request that carries
	// no token: the app may only trust what the sidecar wrote. A listener
	// missing here uses baseHeaderFilter.
	headers map[string]*headerFilter
	// mode is how the authorizer normalizes paths (policy.NormalizeBase
	// unless it says otherwise): the inbound path is normalized once, in
	// this mode, for matching and forwarding.
	mode policy.PathNormalization
}

// headerSource is an optional capability of an Authorizer (the policy
// engine's *Set has it): the request headers its policies for dst read by
// name, and whether one reads them all. Their "_" twins (every "_" name
// when all) are dropped before evaluation, so that an app folding "_"
// into "-" sees under a policy-read name only what the policy saw, and a
// repeated one reaches the app as the one joined value the policy read.
type headerSource interface {
	RequestHeaders(dst policy.Destination) (names []string, all bool)
}

// pathNormalizer is an optional capability of an Authorizer (the policy
// engine's *Set has it): how paths are normalized before matching.
type pathNormalizer interface {
	PathNormalization() policy.PathNormalization
}

// newPolicyState derives, once per policy version, what every request
// under a needs besides a itself. New and SetAuthorizerContext both build
// the state here, so an initial Config.Authorizer strips output headers
// exactly as a pushed one does.
func (s *Sidecar) newPolicyState(version uint64, a Authorizer) *policyState {
	st := &policyState{version: version, authz: a}
	rs, jwt := a.(JWTRuleSource)
	hs, reads := a.(headerSource)
	if jwt || reads {
		st.headers = map[string]*headerFilter{}
		for _, ib := range s.inbound {
			dst := ib.destination(netip.Addr{})
			var output, twins []string
			if jwt {
				rules := rs.JWTRules(dst)
				output, twins = authn.OutputHeaders(rules), authn.TokenHeaders(rules)
			}
			var all bool
			var read []string
			if reads {
				read, all = hs.RequestHeaders(dst)
				for _, h := range read {
					// A name the policy spells with "_" is its own; only
					// the "_" twins of "-" names are an app's confusion.
					if !strings.Contains(h, "_") {
						twins = append(twins, h)
					}
				}
			}
			f := newHeaderFilter(output, twins)
			f.anyUnderscore, f.join = all, read
			st.headers[ib.name] = f
		}
	}
	if pn, ok := a.(pathNormalizer); ok {
		st.mode = pn.PathNormalization()
	}
	return st
}

// New checks cfg and builds a Sidecar. It binds nothing: Serve does.
func New(cfg Config) (*Sidecar, error) {
	if cfg.Identity == nil {
		return nil, errors.New("proxy: config: an identity source is required")
	}
	if len(cfg.Inbound) == 0 && len(cfg.Outbound) == 0 {
		return nil, errors.New("proxy: config: no inbound or outbound listener")
	}
	if cfg.AllowSampleRate < 0 || cfg.AllowSampleRate > 1 {
		return nil, fmt.Errorf("proxy: config: allow sample rate %v not in [0, 1]", cfg.AllowSampleRate)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DecisionLog == nil {
		cfg.DecisionLog = cfg.Logger
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 30 * time.Second
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.MaxIdleConnsPerApp <= 0 {
		cfg.MaxIdleConnsPerApp = 256
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 10000
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger, live: newTracker(), liveOut: newTracker(), done: make(chan struct{})}
	s.revoked.Store(&revocationSet{})
	s.tls = &tlsIdentity{src: cfg.Identity, now: cfg.Now, revoked: s.revoked.Load, live: s.liveOut}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if err := m.registerSVIDExpiry(reg, s.tls); err != nil {
		return nil, err
	}
	if err := reg.Register(s.lingering.Collector("moatless_sidecar")); err != nil {
		return nil, err
	}
	// moatless_sidecar_bundle_refusals_total, in join mode.
	if c := BundleRefusalCollector("moatless_sidecar", cfg.Identity); c != nil {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	s.metrics = m
	if s.callers, err = newCallerCheck(cfg.OutboundCallers, cfg.Outbound, reg, cfg.Logger); err != nil {
		return nil, err
	}
	s.rec = cfg.Recorder
	s.dec = &decisionLogger{now: cfg.Now, log: cfg.DecisionLog, sample: cfg.AllowSampleRate, audit: cfg.Audit, rec: cfg.Recorder, m: m}

	names := map[string]bool{}
	for i := range cfg.Inbound {
		ib, err := s.newInbound(cfg.Inbound[i])
		if err != nil {
			return nil, err
		}
		if names[ib.name] {
			return nil, fmt.Errorf("proxy: config: listener name %q used twice", ib.name)
		}
		names[ib.name] = true
		s.inbound = append(s.inbound, ib)
	}
	// After the inbound listeners: the state lists their output headers.
	s.policy.Store(s.newPolicyState(0, cfg.Authorizer))
	for i := range cfg.Outbound {
		ob, err := s.newOutbound(cfg.Outbound[i])
		if err != nil {
			return nil, err
		}
		if names[ob.name] {
			return nil, fmt.Errorf("proxy: config: listener name %q used twice", ob.name)
		}
		names[ob.name] = true
		s.outbound = append(s.outbound, ob)
	}
	return s, nil
}

// Serve binds every listener (or uses the given ones) and serves until ctx
// is done or Close is called. It returns ErrClosed after Close, ctx's error
// when ctx ended, or the first listener error. Serve may be called once.
func (s *Sidecar) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.serving {
		s.mu.Unlock()
		return errors.New("proxy: Serve called twice")
	}
	s.serving = true
	s.mu.Unlock()

	bind := func(given net.Listener, addr string) (net.Listener, error) {
		if given != nil {
			return given, nil
		}
		return net.Listen("tcp", addr)
	}
	tcpOutbound := false
	for _, ob := range s.outbound {
		tcpOutbound = tcpOutbound || !isUnixListen(ob.cfg)
	}
	if err := s.callers.prepare(len(s.outbound) > 0, tcpOutbound); err != nil {
		s.Close()
		return err
	}
	var lns []net.Listener
	fail := func(err error) error {
		for _, l := range lns {
			l.Close()
		}
		s.Close()
		return err
	}
	for _, ib := range s.inbound {
		l, err := bind(ib.cfg.Listener, ib.cfg.Listen)
		if err != nil {
			return fail(fmt.Errorf("proxy: inbound %s: listen: %w", ib.name, err))
		}
		lns = append(lns, l)
	}
	for _, ob := range s.outbound {
		var l net.Listener
		var err error
		if ob.socketPath != "" && ob.cfg.Listener == nil {
			l, err = listenUnixOutbound(ob.socketPath, s.callers.socketMode(ob.cfg), ob.cfg.SocketGID)
		} else {
			l, err = bind(ob.cfg.Listener, ob.cfg.Listen)
		}
		if err != nil {
			return fail(fmt.Errorf("proxy: outbound %s: listen: %w", ob.name, err))
		}
		lns = append(lns, l)
		if ta, ok := l.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
			return fail(fmt.Errorf("proxy: outbound %s: %s is not a loopback address: plaintext must not leave the host", ob.name, l.Addr()))
		}
	}
	// Listeners are published under the lock so Close sees them.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		for _, l := range lns {
			l.Close()
		}
		return ErrClosed
	}
	for i, ib := range s.inbound {
		ib.ln = lns[i]
	}
	for i, ob := range s.outbound {
		ob.ln = lns[len(s.inbound)+i]
	}
	s.accepting.Store(true)
	s.mu.Unlock()

	errc := make(chan error, len(s.inbound)+len(s.outbound))
	// Only failures are sent: a listener closed by Shutdown or Close ends
	// its loop quietly and Serve waits for the drain to finish.
	for _, ib := range s.inbound {
		go func() {
			if err := ib.serve(); err != nil {
				errc <- err
			}
		}()
	}
	for _, ob := range s.outbound {
		go func() {
			if err := ob.serve(); err != nil {
				errc <- err
			}
		}()
	}
	s.log.Info("sidecar serving", "inbound", len(s.inbound), "outbound", len(s.outbound))
	go WatchTrust(ctx, s.done, s.cfg.Identity, func() { s.RecheckTrust() })
	if !s.cfg.KeepStartupPages {
		go releaseStartupPagesOnce(s.log)
	}

	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
		dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
		s.Shutdown(dctx)
		cancel()
	case <-s.done:
		err = ErrClosed
	case err = <-errc:
	}
	s.Close()
	return err
}

// Shutdown drains the sidecar: listeners stop accepting, idle connections
// close, HTTP/2 peers get GOAWAY, and requests and TCP streams in flight
// may finish until ctx ends; then everything is closed. It returns ctx's
// error if the drain was cut short.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.accepting.Store(false)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	for _, ib := range s.inbound {
		ib.streams.drain()
		ib.fast.wake()
		if ib.ln != nil {
			ib.ln.Close()
		}
	}
	for _, ob := range s.outbound {
		ob.streams.drain()
		ob.fast.wake()
		if ob.ln != nil && (ob.httpSrv == nil || ob.app != nil) {
			ob.ln.Close()
		}
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, ib := range s.inbound {
		if ib.httpSrv != nil {
			wg.Add(1)
			go func() { defer wg.Done(); ib.httpSrv.Shutdown(ctx) }()
		}
		wg.Add(1)
		go func() { defer wg.Done(); ib.streams.wait(ctx) }()
	}
	for _, ob := range s.outbound {
		if ob.httpSrv != nil {
			wg.Add(1)
			go func() { defer wg.Done(); ob.httpSrv.Shutdown(ctx) }()
		}
		wg.Add(1)
		go func() { defer wg.Done(); ob.streams.wait(ctx) }()
	}
	wg.Wait()
	err := ctx.Err()
	s.Close()
	return err
}

// Close stops every listener and closes every connection. It is idempotent.
func (s *Sidecar) Close() error {
	s.accepting.Store(false)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	for _, ib := range s.inbound {
		ib.close()
	}
	for _, ob := range s.outbound {
		ob.close()
	}
	s.mu.Unlock()
	s.lingering.Close()
	return nil
}

// Addrs returns the bound address of each listener by name, once Serve has
// bound them (nil entries before).
func (s *Sidecar) Addrs() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]net.Addr)
	for _, ib := range s.inbound {
		if ib.ln != nil {
			out[ib.name] = ib.ln.Addr()
		}
	}
	for _, ob := range s.outbound {
		if ob.ln != nil {
			out[ob.name] = ob.ln.Addr()
		}
	}
	return out
}

// SetAuthorizer puts a new policy version in force for every following
// decision. Connections already open stay open; their next request is
// decided by the new policy. Nil denies everything.
func (s *Sidecar) SetAuthorizer(version uint64, a Authorizer) {
	s.SetAuthorizerContext(context.Background(), version, a)
}

// SetAuthorizerContext is SetAuthorizer with a context for preparing the
// JWT verifier: when a implements JWTRuleSource and the Verifier
// implements Preparer, the verifier is given the rules of every inbound
// port (fetching remote key sets, bounded by ctx and 10s) before the new
// policy takes effect, so the first request under it finds the keys. A
// failed preparation is logged; the policy still applies and tokens the
// verifier cannot check are refused (401), never accepted.
func (s *Sidecar) SetAuthorizerContext(ctx context.Context, version uint64, a Authorizer) {
	if rs, ok := a.(JWTRuleSource); ok {
		if p, ok := s.cfg.Verifier.(Preparer); ok {
			var rules []*securityv1beta1.JWTRule
			seen := map[*securityv1beta1.JWTRule]bool{}
			for _, ib := range s.inbound {
				for _, r := range rs.JWTRules(ib.destination(netip.Addr{})) {
					if !seen[r] {
						seen[r] = true
						rules = append(rules, r)
					}
				}
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := p.Prepare(pctx, rules); err != nil {
				s.log.Warn("prepare JWT verifier", "policy_version", version, "err", err)
			}
			cancel()
		}
	}
	s.policy.Store(s.newPolicyState(version, a))
	s.metrics.policyVersion.Set(float64(version))
	s.warnRegoUnavailable(version, a)
}

// JWTRuleSource is an optional capability of an Authorizer (the policy
// engine's *Set has it): the RequestAuthentication rules for a workload.
type JWTRuleSource interface {
	JWTRules(dst policy.Destination) []*securityv1beta1.JWTRule
}

// Preparer is an optional capability of a Verifier (authn's has it): load
// the key sets of rules ahead of requests.
type Preparer interface {
	Prepare(ctx context.Context, rules []*securityv1beta1.JWTRule) error
}

// PolicyVersion is the version last passed to SetAuthorizer (0 before).
func (s *Sidecar) PolicyVersion() uint64 { return s.policy.Load().version }

// SetRevocations replaces the revocation list. New handshakes with a
// revoked SPIFFE ID or serial fail; live connections authenticated with
// one, inbound or outbound (to a revoked upstream), and in-flight
// requests authenticated with a revoked token ID, are closed. Blocked
// pairs (detect's block-pair) work the same way for one edge: a peer
// blocked from calling this sidecar's identity has its connections
// refused and closed, and calls from this identity to a blocked upstream
// are refused and its live connections to it closed. When this sidecar's own identity is revoked (isolated),
// its outbound listeners refuse every call and its live outbound
// connections are closed: its egress is cut.
// It returns how many were closed. If the Verifier implements TokenRevoker,
// it gets the token IDs too.
func (s *Sidecar) SetRevocations(r *wire.Revocations) int {
	rs := newRevocationSet(r)
	s.revoked.Store(rs)
	if tr, ok := s.cfg.Verifier.(TokenRevoker); ok && r != nil {
		tr.SetRevokedTokens(r.TokenIDs)
	}
	own := ""
	if id, err := s.tls.ownID(); err == nil {
		own = id.String()
	}
	count := func(n int) { s.metrics.revokedClosed.Add(float64(n)) }
	n := s.live.sweep(rs, own, s.cfg.Now(), count) + s.liveOut.sweepOut(rs, own, s.cfg.Now(), count)
	if n > 0 {
		s.log.Info("closed connections of revoked identities", "count", n)
	}
	for _, ob := range s.outbound {
		ob.revoked(rs, own)
	}
	return n
}

// ConnectionVerifier is an optional capability of a Verifier (authn's
// has it): a verifier for the requests of one HTTP/1.1 connection, served
// one at a time, that remembers the token it accepted last and serves the
// next request carrying the same bytes without hashing them again, every
// per-request check (expiry, keys, revocation, binding) still run. The
// fast path makes one per connection on its first request, and Forgets
// it when the connection ends.
type ConnectionVerifier interface {
	Memo() *authn.Memo
}

// TokenRevoker is an optional capability of a Verifier: it refuses tokens
// whose jti is listed.
type TokenRevoker interface {
	SetRevokedTokens([]wire.RevokedTokenID)
}

// fastPathOn reports whether HTTP/1.1 connections may be served on the
// fast path: it is not disabled. Tracing and PII sampling run on both
// server paths.
func (s *Sidecar) fastPathOn() bool {
	return !s.cfg.DisableHTTP1FastPath
}

// headLimit is the longest request head either server path reads:
// MaxHeaderBytes and net/http's allowance of 4 KiB over it.
func (s *Sidecar) headLimit() int { return s.cfg.MaxHeaderBytes + 4096 }

// Ready reports whether the sidecar can serve: its listeners accept
// (Serve has bound them and no drain has begun: a readiness probe must
// not send traffic to a port that refuses it), it has an SVID that is not
// revoked and, when it has inbound listeners, a policy. The error says
// what is missing, or when and why the sidecar's own identity was revoked
// (every peer refuses it: a revoked sidecar must not look healthy).
func (s *Sidecar) Ready() error {
	if !s.accepting.Load() {
		return errors.New("proxy: listeners not accepting")
	}
	cert, err := s.tls.certificate()
	if err != nil {
		return err
	}
	if err := s.ownRevocation(cert); err != nil {
		return err
	}
	if a, _ := s.authorizer(); a == nil && len(s.inbound) > 0 {
		return errors.New("proxy: no policy loaded yet")
	}
	return nil
}

// LiveConnections is the number of inbound connections (and token-bound
// requests) tracked for revocation.
func (s *Sidecar) LiveConnections() int { return s.live.len() }

// verifier is the configured JWT verifier, or one that refuses every token
// when none is configured: a token nobody can check is not trusted.
func (s *Sidecar) verifier() policy.JWTVerifier {
	if s.cfg.Verifier != nil {
		return s.cfg.Verifier
	}
	return refuseTokens{}
}

type refuseTokens struct{}

func (refuseTokens) Verify(rules []*securityv1beta1.JWTRule, req *policy.Request) (*policy.Auth, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	return nil, errors.New("proxy: no JWT verifier configured")
}

func (s *Sidecar) authorizer() (Authorizer, uint64) {
	p := s.policy.Load()
	return p.authz, p.version
}

// portOf returns the port number of "host:port", 0 if none.
func portOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return 0
	}
	return n
}
