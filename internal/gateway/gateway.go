// Package gateway is "moatless gateway", the edge of the mesh: the one
// place plaintext HTTP from the internet is accepted, and it assumes every
// request is hostile.
//
// A request goes through one chain of checks, each of which can answer on
// its own (always with the security headers and a request ID): protocol
// and size limits (405, 400, 414, 431, 413), the client address
// (X-Forwarded-For only from trusted_proxies) and the IP rules (403),
// routing by host and longest path prefix (404), header shaping (hop-by-hop
// headers, headers with '_', spoofable identity headers and method
// overrides removed), CORS preflights, rate limits (429), the WAF (403),
// request validation (400), RequestAuthentication and AuthorizationPolicy
// through the same policy decision function as the sidecar (401, 403), an
// optional RFC 8693 token exchange, and finally the sidecar's own
// forwarder over mutual TLS to an upstream sidecar whose SPIFFE ID is
// checked on every handshake (502 when it is the wrong one).
//
// Lifecycle: New(Options) → Serve(ctx) → Shutdown/Close. The configuration
// can be replaced while serving with Reload (a bad one is refused and the
// old one keeps serving); policy and revocations are pushed in with
// SetAuthorizer and SetRevocations, by a proxy.FileWatcher or the server's
// watch stream, exactly as for a sidecar.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/gateway/ratelimit"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/wire"
)

// Options configure a Gateway. Config and Identity are required.
type Options struct {
	// Config is the gateway config, defaults filled and validated
	// (config.LoadGateway does both).
	Config config.Gateway
	// Identity is the gateway's SVID and trust bundle, for the mTLS hop
	// to upstream sidecars.
	Identity proxy.Identity
	// Verifier validates request JWTs (authn's). Nil refuses every token
	// a RequestAuthentication rule looks at.
	Verifier policy.JWTVerifier
	// Logger receives operational logs; default slog.Default().
	Logger *slog.Logger
	// AccessLog receives one JSON line per request (the line log/slog's
	// JSONHandler would write); default stderr. Config.AccessLog=false
	// turns it off.
	AccessLog io.Writer
	// DecisionLog receives every block (and sampled allows); default
	// Logger.
	DecisionLog *slog.Logger
	// Audit, when set, receives every block as an audit record.
	Audit proxy.AuditSink
	// Recorder, when set, counts every request into the traffic record
	// sent to the server (join mode): an outbound edge from the gateway
	// to the route's upstream SPIFFE ID (an inbound one from the
	// internet when the request was stopped before a route was chosen),
	// with its method, path template, decision and block reason, status,
	// bytes and latency.
	Recorder *proxy.Recorder
	// Registerer receives the gateway's metrics; default none.
	Registerer prometheus.Registerer
	// Tracer, when set, traces every request (tracing.go): a new trace
	// per request, linked to the caller's, with the route, the block
	// reason or the decision; its context goes upstream. Nil: no tracing.
	Tracer trace.Tracer
	// Risk, when set, holds the risk scores the server pushes: a span
	// whose request carries a verified token says the risk score of the
	// token's subject (telemetry.AttrSourceRisk; 0 when unknown).
	Risk *telemetry.RiskScores
	// Listener, when set, is used instead of binding Config.Listen.
	Listener net.Listener
	// Now is the clock; default time.Now.
	Now func() time.Time
	// ReadFile reads the files the config names (schemas, secrets,
	// certificates); default a bounded os.ReadFile.
	ReadFile func(path string) ([]byte, error)
}

// ErrClosed is returned by Serve after Close or Shutdown (as net/http's
// Server.Serve returns http.ErrServerClosed).
var ErrClosed = errors.New("gateway: closed")

// Gateway is a running gateway. Its methods are safe for concurrent use.
type Gateway struct {
	opts     Options
	log      *slog.Logger
	access   *accessLog
	decision *slog.Logger
	now      func() time.Time
	metrics  *metrics
	revoked  proxy.Revocations
	certs    *certReloader

	state  atomic.Pointer[state]
	policy atomic.Pointer[policyState]

	// upstreams are the mTLS clients by (address, SPIFFE ID, SNI,
	// protocol), kept across reloads so pools and sessions survive.
	upMu      sync.Mutex
	upstreams map[upstreamKey]*proxy.Upstream
	// exchange trades tokens for routes with token_exchange_audience;
	// nil without token_exchange.
	exchange *exchanger
	// reloadMu serializes Reload.
	reloadMu sync.Mutex
	// certFailures decides which ReloadCertificate outcomes are logged.
	certFailures telemetry.FailureLog
	// redis are the rate-limit stores by URL, shared by limits and kept
	// across reloads.
	redisMu   sync.Mutex
	redis     map[string]*ratelimit.Redis
	storeErrs storeErrLog

	conns *connCounter
	fast  fastSet
	// lingering is the connections closing after an answer to a request
	// whose body was not read (linger.go).
	lingering proxy.LingerSet
	tlsConf   *tls.Config
	hl        *proxy.ConnListener
	srv       *http.Server
	port      int

	mu      sync.Mutex
	ln      net.Listener
	serving bool
	closed  bool
	// draining: Shutdown has begun; Serve leaves the closing to it.
	draining bool
	done     chan struct{}
	wg       sync.WaitGroup
}

type policyState struct {
	version uint64
	authz   proxy.Authorizer
	// headers removes what a caller may not send (the sidecar's filter
	// in its edge form), including the headers RequestAuthentication
	// writes upstream and the "_" twins of those it reads tokens from.
	headers *proxy.HeaderFilter
	mode    policy.PathNormalization
}

// New checks opts and builds a Gateway. It binds nothing: Serve does.
func New(opts Options) (*Gateway, error) {
	if opts.Identity == nil {
		return nil, errors.New("gateway: an identity source is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DecisionLog == nil {
		opts.DecisionLog = opts.Logger
	}
	if opts.AccessLog == nil {
		opts.AccessLog = os.Stderr
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ReadFile == nil {
		opts.ReadFile = readFileLimited
	}
	if opts.Verifier == nil {
		opts.Verifier = refuseTokens{}
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	g := &Gateway{
		opts: opts, log: opts.Logger, access: &accessLog{w: opts.AccessLog}, decision: opts.DecisionLog,
		now: opts.Now, upstreams: map[upstreamKey]*proxy.Upstream{},
		done: make(chan struct{}),
	}
	g.certs = &certReloader{read: opts.ReadFile, now: opts.Now}
	var err error
	if g.metrics, err = newMetrics(reg, g.certs.notAfter); err != nil {
		return nil, err
	}
	// moatless_gateway_lingering_connections and _lingering_closes_total.
	if err := reg.Register(g.lingering.Collector("moatless_gateway")); err != nil {
		return nil, err
	}
	// moatless_gateway_bundle_refusals_total, in join mode.
	if c := proxy.BundleRefusalCollector("moatless_gateway", opts.Identity); c != nil {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	if opts.Config.AccessLog != nil && !*opts.Config.AccessLog {
		g.access = nil
	}
	_, port, err := net.SplitHostPort(opts.Config.Listen)
	if opts.Listener != nil {
		_, port, err = net.SplitHostPort(opts.Listener.Addr().String())
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: listen: %w", err)
	}
	fmt.Sscan(port, &g.port)
	if err := g.certs.load(opts.Config.TLS.Cert, opts.Config.TLS.Key); err != nil {
		return nil, err
	}
	if te := opts.Config.TokenExchange; te != nil {
		if g.exchange, err = newExchanger(te, opts.Identity, opts.ReadFile, opts.Now); err != nil {
			return nil, err
		}
		g.exchange.revoked = g.revoked.Token
	}
	st, err := g.build(context.Background(), opts.Config, nil)
	if err != nil {
		return nil, err
	}
	g.state.Store(st)
	g.policy.Store(g.newPolicyState(0, nil))
	l := opts.Config.Limits
	g.conns = newConnCounter(l.MaxConns, l.MaxConnsPerIP)
	g.tlsConf = serverTLSConfig(opts.Config.TLS.MinVersion, g.certs.get)
	g.hl = proxy.NewConnListener()
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	g.srv = &http.Server{
		Handler:           g,
		ReadHeaderTimeout: l.ReadHeaderTimeout.Std(),
		ReadTimeout:       l.ReadTimeout.Std(),
		IdleTimeout:       l.IdleTimeout.Std(),
		// The handler answers heads over the configured limit with 431
		// and its security headers; only heads over twice the limit meet
		// net/http's bare 431.
		MaxHeaderBytes: 2 * l.MaxHeaderBytes,
		Protocols:      protos,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:      250,
			MaxDecoderHeaderTableSize: 4096,
			MaxEncoderHeaderTableSize: 4096,
			MaxReadFrameSize:          1 << 16,
		},
		ErrorLog: log.New(io.Discard, "", 0),
		// HTTP/1.x connections are guarded (handshake): every head is
		// also read by the sidecar's strict parser, and the handler asks
		// it first (proxy.FramingVerdict). The handler must then see every
		// request, "OPTIONS *" too, or the verdicts would go to the wrong
		// requests; it refuses that target itself.
		ConnContext:                  proxy.FramingContext,
		DisableGeneralOptionsHandler: true,
		ConnState: func(c net.Conn, st http.ConnState) {
			switch st {
			case http.StateClosed, http.StateHijacked:
				g.conns.release(c)
			}
		},
	}
	return g, nil
}

// newPolicyState derives what every request under a needs.
func (g *Gateway) newPolicyState(version uint64, a proxy.Authorizer) *policyState {
	mode, err := policy.ParsePathNormalization(g.opts.Config.Policy.PathNormalization)
	if err != nil {
		mode = policy.NormalizeMergeSlashes
	}
	ps := &policyState{version: version, authz: a, mode: mode}
	if pn, ok := a.(interface {
		PathNormalization() policy.PathNormalization
	}); ok {
		ps.mode = pn.PathNormalization()
	}
	var output, tokenHeaders, read []string
	if rs, ok := a.(proxy.JWTRuleSource); ok {
		rules := rs.JWTRules(g.destination(netip.Addr{}))
		output, tokenHeaders = authn.OutputHeaders(rules), authn.TokenHeaders(rules)
	}
	// The headers the policies read reach the upstream as the one value
	// the policy decided on, as through a sidecar.
	if hs, ok := a.(interface {
		RequestHeaders(policy.Destination) ([]string, bool)
	}); ok {
		read, _ = hs.RequestHeaders(g.destination(netip.Addr{}))
	}
	ps.headers = proxy.NewEdgeHeaderFilter(output, tokenHeaders, read)
	return ps
}

// destination is the gateway as policies see it.
func (g *Gateway) destination(ip netip.Addr) policy.Destination {
	c := &g.opts.Config
	return policy.Destination{Namespace: c.Namespace, Labels: c.Labels, IP: ip, Port: g.port}
}

// SetAuthorizer puts a policy version in force for every following
// request. Nil denies everything.
func (g *Gateway) SetAuthorizer(version uint64, a proxy.Authorizer) {
	g.SetAuthorizerContext(context.Background(), version, a)
}

// SetAuthorizerContext is SetAuthorizer with a context for fetching the
// key sets of the new RequestAuthentication rules before it applies
// (bounded by 10s), as the sidecar does.
func (g *Gateway) SetAuthorizerContext(ctx context.Context, version uint64, a proxy.Authorizer) {
	if rs, ok := a.(proxy.JWTRuleSource); ok {
		if p, ok := g.opts.Verifier.(proxy.Preparer); ok {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := p.Prepare(pctx, rs.JWTRules(g.destination(netip.Addr{}))); err != nil {
				g.log.Warn("prepare JWT verifier", "policy_version", version, "err", err)
			}
			cancel()
		}
	}
	g.policy.Store(g.newPolicyState(version, a))
	g.metrics.policyVersion.Set(float64(version))
}

// Rego is the compiled Rego modules and data of the policy in force, nil
// without any: what the admin listener's read-only OPA API answers from.
func (g *Gateway) Rego() *policy.Rego {
	if rs, ok := g.policy.Load().authz.(interface{ Rego() *policy.Rego }); ok {
		return rs.Rego()
	}
	return nil
}

// PolicyVersion is the version last passed to SetAuthorizer.
func (g *Gateway) PolicyVersion() uint64 { return g.policy.Load().version }

// SetRevocations replaces the revocation list: upstreams presenting a
// revoked SPIFFE ID or serial are refused at the handshake, tokens with a
// revoked jti are refused (401), and in-flight requests authenticated with
// one are cut off, as are live connections to a revoked upstream, as a
// sidecar does. A blocked pair whose source is the gateway's own SPIFFE
// ID (detect's block-pair of an edge gateway → upstream) refuses and
// closes the gateway's connections to that upstream; the gateway's own
// identity revoked closes and refuses them all. It returns how many were
// cut off.
func (g *Gateway) SetRevocations(r *wire.Revocations) int {
	if tr, ok := g.opts.Verifier.(proxy.TokenRevoker); ok && r != nil {
		tr.SetRevokedTokens(r.TokenIDs)
	}
	own := ""
	if svid, err := g.opts.Identity.GetX509SVID(); err == nil && svid != nil {
		own = svid.ID.String()
	}
	n := g.revoked.SetAs(r, own)
	if n > 0 {
		g.log.Info("cut off requests of revoked tokens and connections to revoked upstreams", "count", n)
	}
	return n
}

// ReloadFailed counts a failed reload of what ("config", "tls",
// "identity", "policy", "revocations").
func (g *Gateway) ReloadFailed(what string) { g.metrics.reloadFailures.WithLabelValues(what).Inc() }

var _ proxy.PolicyTarget = (*Gateway)(nil)

// Ready reports whether the gateway can serve: it has an SVID that is
// not revoked and a policy. The error says what is missing, or that the
// gateway's own identity was revoked (every upstream refuses it: a
// revoked gateway must not look healthy).
func (g *Gateway) Ready() error {
	svid, err := g.opts.Identity.GetX509SVID()
	if err != nil || svid == nil {
		return fmt.Errorf("gateway: no X509-SVID yet: %v", err)
	}
	if len(svid.Certificates) > 0 && g.revoked.Peer(svid.ID.String(), svid.Certificates[0].SerialNumber.Text(16)) {
		return fmt.Errorf("gateway: this gateway's identity %s (certificate serial %s) is revoked: every upstream refuses it", svid.ID, svid.Certificates[0].SerialNumber.Text(16))
	}
	if g.policy.Load().authz == nil {
		return errors.New("gateway: no policy loaded yet")
	}
	return nil
}

// Reload puts a new configuration in force for every following request,
// or refuses it and keeps the one in force. Settings that need a restart
// (listen, admin, identity, policy source, namespace, labels, connection
// limits, timeouts) must not change. Rate-limit counters, WAF engines and
// upstream pools whose definitions did not change are kept.
func (g *Gateway) Reload(ctx context.Context, cfg config.Gateway) error {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := restartOnly(&g.opts.Config, &cfg); err != nil {
		return err
	}
	old := g.state.Load()
	if err := g.certs.load(cfg.TLS.Cert, cfg.TLS.Key); err != nil {
		return err
	}
	st, err := g.build(ctx, cfg, old)
	if err != nil {
		return err
	}
	g.state.Store(st)
	old.stop()
	g.dropUnused(st)
	g.metrics.configReloads.Inc()
	return nil
}

// restartOnly refuses a change to a setting Reload cannot apply.
func restartOnly(a, b *config.Gateway) error {
	var errs []error
	same := func(name string, x, y any) {
		// DeepEqual, not printing: identity holds pointers.
		if !reflect.DeepEqual(x, y) {
			errs = append(errs, fmt.Errorf("gateway: reload: %s changed: restart the gateway to apply it", name))
		}
	}
	same("listen", a.Listen, b.Listen)
	same("admin", a.Admin, b.Admin)
	same("identity", a.Identity, b.Identity)
	same("namespace", a.Namespace, b.Namespace)
	same("labels", a.Labels, b.Labels)
	same("policy", a.Policy, b.Policy)
	same("jwt", a.JWT, b.JWT)
	same("token_exchange", a.TokenExchange, b.TokenExchange)
	same("limits.max_conns", a.Limits.MaxConns, b.Limits.MaxConns)
	same("limits.max_conns_per_ip", a.Limits.MaxConnsPerIP, b.Limits.MaxConnsPerIP)
	same("limits.max_header_bytes", a.Limits.MaxHeaderBytes, b.Limits.MaxHeaderBytes)
	same("limits timeouts", []any{a.Limits.ReadHeaderTimeout, a.Limits.ReadTimeout, a.Limits.IdleTimeout, a.Limits.HandshakeTimeout},
		[]any{b.Limits.ReadHeaderTimeout, b.Limits.ReadTimeout, b.Limits.IdleTimeout, b.Limits.HandshakeTimeout})
	same("tls.min_version", a.TLS.MinVersion, b.TLS.MinVersion)
	same("disable_http1_fast_path", a.DisableHTTP1FastPath, b.DisableHTTP1FastPath)
	return errors.Join(errs...)
}

// ReloadCertificate re-reads the TLS certificate files, for a caller that
// calls it every reload interval; a pair that does not load keeps the last
// good one in force. changed reports a new certificate.
//
// It logs what changed, not every call: a failure once (and a different
// failure once more), not on every tick it lasts, and once when reloads
// work again; likewise, once, a served certificate that expired while its
// files did not change. Every failed call counts in reload_failures_total{what="tls"},
// and tls_certificate_reload_failing is 1 while the files do not load, so
// an alert does not depend on the log.
func (g *Gateway) ReloadCertificate() (changed bool, err error) {
	c := g.state.Load().cfg.TLS
	changed, err = g.certs.reload(c.Cert, c.Key)
	if err != nil {
		g.ReloadFailed("tls")
		g.metrics.certReloadFailing.Set(1)
		if g.certFailures.Failed("tls", err) {
			g.log.Error("TLS certificate reload failed; serving the last good certificate until the files load", "err", err,
				"not_after", g.certs.notAfter().UTC().Format(time.RFC3339))
		}
		return false, err
	}
	g.metrics.certReloadFailing.Set(0)
	// The files may load and still hold the certificate being served after
	// it expired: every client refuses it from then on. Said once, until a
	// new certificate is in force.
	if notAfter := g.certs.notAfter(); !g.now().Before(notAfter) {
		if g.certFailures.Failed("tls-expired", errors.New(notAfter.String())) {
			g.log.Error("the TLS certificate being served has expired; clients refuse it: replace the tls.cert and tls.key files",
				"cert", c.Cert, "not_after", notAfter.UTC().Format(time.RFC3339))
		}
	} else {
		g.certFailures.Worked("tls-expired")
	}
	switch {
	case g.certFailures.Worked("tls"):
		g.log.Info("TLS certificate reload works again", "changed", changed, "not_after", g.certs.notAfter().UTC().Format(time.RFC3339))
	case changed:
		g.log.Info("TLS certificate reloaded", "not_after", g.certs.notAfter().UTC().Format(time.RFC3339))
	}
	return changed, nil
}

// Serve binds the listener (or uses Options.Listener) and serves until ctx
// is done (then drains for Config.DrainTimeout; it returns ctx's error),
// or Shutdown or Close is called (it returns ErrClosed). After a direct
// Shutdown, Serve returns once Shutdown has drained and closed, never
// cutting the requests it lets finish.
func (g *Gateway) Serve(ctx context.Context) error {
	g.mu.Lock()
	if g.closed || g.draining {
		g.mu.Unlock()
		return ErrClosed
	}
	if g.serving {
		g.mu.Unlock()
		return errors.New("gateway: Serve called twice")
	}
	g.serving = true
	ln := g.opts.Listener
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", g.opts.Config.Listen)
		if err != nil {
			g.mu.Unlock()
			return fmt.Errorf("gateway: listen: %w", err)
		}
	}
	g.ln = ln
	g.mu.Unlock()

	go g.srv.Serve(g.hl)
	// A CA authority revoked (removed from the bundle) closes the live
	// upstream connections whose peer chained to it, as in a sidecar, and
	// the connections to the token service whose certificate it signed.
	go proxy.WatchTrust(ctx, g.done, g.opts.Identity, func() {
		if n := g.revoked.RecheckTrust(g.opts.Identity); n > 0 {
			g.log.Warn("closed upstream connections whose peer's CA authority left the trust bundle", "count", n)
		}
		if g.exchange != nil {
			if n := g.exchange.recheckTrust(); n > 0 {
				g.log.Warn("closed token exchange connections whose certificate's CA authority left the trust bundle", "count", n)
			}
		}
	})
	errc := make(chan error, 1)
	go func() { errc <- g.acceptLoop(ln) }()
	g.log.Info("gateway serving", "addr", ln.Addr().String(), "routes", len(g.state.Load().routes))
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
		dctx, cancel := context.WithTimeout(context.Background(), g.opts.Config.DrainTimeout.Std())
		g.Shutdown(dctx)
		cancel()
	case <-g.done:
		err = ErrClosed
	case err = <-errc:
		// The listener closed under the accept loop: by Shutdown, whose
		// drain must not be cut short here (it closes everything when
		// done), or by Close.
		g.mu.Lock()
		stopping := g.draining || g.closed
		g.mu.Unlock()
		if stopping {
			<-g.done
			return ErrClosed
		}
	}
	g.Close()
	return err
}

// Addr is the bound listener address, nil before Serve.
func (g *Gateway) Addr() net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln == nil {
		return nil
	}
	return g.ln.Addr()
}

// Shutdown stops accepting, lets requests in flight finish until ctx ends,
// then closes everything, like net/http's Server.Shutdown: a connection
// idle between requests closes at once, a busy one after its answer
// (with Connection: close). It returns ctx's error if requests were still
// in flight when ctx ended (they are then cut). Serve, if running,
// returns ErrClosed after Shutdown is done. Safe to call more than once
// and beside Close.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.draining = true
	// Both servers drain from before the listener closes: a client that
	// sees the listener closed must get Connection: close on the answer
	// in flight (marked only in drain and srv.Shutdown, which run below,
	// an answer written in between went out keep-alive: TestShutdownDrains
	// failed about 1 run in 50 on the fast path, 1 in 300 on net/http's).
	// Fast path connections drain as net/http's do: the idle ones close
	// now, the busy ones after their answer. SetKeepAlivesEnabled(false)
	// also closes net/http's idle connections, as its Shutdown does.
	g.fast.beginDrain()
	g.srv.SetKeepAlivesEnabled(false)
	if g.ln != nil {
		g.ln.Close()
	}
	g.mu.Unlock()
	fastDone := make(chan error, 1)
	go func() { fastDone <- g.fast.drain(ctx) }()
	err := g.srv.Shutdown(ctx)
	if ferr := <-fastDone; err == nil {
		err = ferr
	}
	g.Close()
	return err
}

// Close stops the listener and closes every connection. Idempotent.
func (g *Gateway) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	close(g.done)
	if g.ln != nil {
		g.ln.Close()
	}
	g.mu.Unlock()
	g.hl.Close()
	g.srv.Close()
	g.fast.closeAll()
	g.lingering.Close()
	if st := g.state.Load(); st != nil {
		st.stop()
	}
	g.upMu.Lock()
	for _, u := range g.upstreams {
		u.CloseIdleConnections()
	}
	g.upMu.Unlock()
	g.redisMu.Lock()
	for _, r := range g.redis {
		r.Close()
	}
	g.redisMu.Unlock()
	g.wg.Wait()
	return nil
}

// refuseTokens is the verifier without one: a token nobody can check is
// not trusted.
type refuseTokens struct{}

func (refuseTokens) Verify(rules []*securityv1beta1.JWTRule, _ *policy.Request) (*policy.Auth, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	return nil, errors.New("gateway: no JWT verifier configured")
}

// maxConfigFile bounds a file the config names (schema, secret, PEM).
const maxConfigFile = 4 << 20

func readFileLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxConfigFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxConfigFile)
	}
	return b, nil
}
