package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

// This file is the sidecar's small API for the other parts of the data
// plane (the gateway): they forward with the sidecar's forwarder, reach
// upstream sidecars with its mTLS client and keep policy files in force
// with its FileWatcher, so a fix to any of them applies to both.

// PolicyTarget is what a FileWatcher puts policy and revocation files in
// force in. *Sidecar implements it.
type PolicyTarget interface {
	SetAuthorizerContext(ctx context.Context, version uint64, a Authorizer)
	SetRevocations(r *wire.Revocations) int
	ReloadFailed(what string)
	PolicyVersion() uint64
}

var _ PolicyTarget = (*Sidecar)(nil)

// Revocations is a revocation list for a part that is not a Sidecar: Set
// swaps a new list in atomically; Peer and Token read it; TrackToken
// registers an in-flight request so that revoking its token cuts it off,
// as the sidecar does. The zero value revokes nothing and is ready to use.
type Revocations struct {
	p    atomic.Pointer[revocationSet]
	once sync.Once
	live *tracker // requests, by token ID
	// conns are the live connections of the Upstreams given these
	// Revocations, by their peer's authority (RecheckTrust).
	conns *tracker
}

func (r *Revocations) tracker() *tracker {
	r.init()
	return r.live
}

func (r *Revocations) init() {
	r.once.Do(func() { r.live, r.conns = newTracker(), newTracker() })
}

func (r *Revocations) connTracker() *tracker {
	r.init()
	return r.conns
}

// Set puts w in force (nil: nothing revoked), cancels every tracked
// request whose token it revokes and closes every connection of the
// Upstreams given these Revocations to an upstream it revokes; it returns
// how many. It is SetAs for a part without an identity of its own.
func (r *Revocations) Set(w *wire.Revocations) int { return r.SetAs(w, "") }

// SetAs is Set for a part whose own SPIFFE ID is own (a full
// "spiffe://" ID, "" for none), as a sidecar's SetRevocations: the
// connections to an upstream own is blocked from calling (a blocked pair
// own → upstream) are closed too, and when own itself is revoked every
// connection is (its egress is cut: an upstream that is a SPIFFE peer
// without moatless's list would never close them). The Upstreams refuse
// both at their next handshakes.
func (r *Revocations) SetAs(w *wire.Revocations, own string) int {
	rs := newRevocationSet(w)
	r.p.Store(rs)
	now := time.Now()
	return r.tracker().sweep(rs, "", now, nil) + r.connTracker().sweepOut(rs, own, now, nil)
}

// Peer reports whether a SPIFFE ID or a leaf serial (lower-case hex) is
// revoked.
func (r *Revocations) Peer(id, serial string) bool { return r.load().has(id, normalizeSerial(serial)) }

// HasSerials reports whether any certificate is revoked by serial, so a
// caller that must parse a certificate to learn its serial (ext_authz,
// from the PEM Envoy reports) does so only then.
func (r *Revocations) HasSerials() bool {
	rs := r.load()
	return rs != nil && len(rs.serials) > 0
}

// Token reports whether a token ID is revoked.
func (r *Revocations) Token(jti string) bool { return r.load().hasJTI(jti) }

// IdentityToken reports whether a verified token's claims name a revoked
// workload as its subject, authorized party, client or actor (any level
// of "act"): the tokens of an isolated identity are refused wherever
// they are presented, as a sidecar refuses them.
func (r *Revocations) IdentityToken(claims map[string]any) bool {
	return r.load().revokedIdentityToken(claims)
}

// TrackToken registers cancel, which ends an in-flight request
// authenticated with token jti: Set calls it when jti is revoked, however
// long the request streams. A jti revoked between the request's check and
// this registration is caught here (cancel runs at once). Call done when
// the request ends.
func (r *Revocations) TrackToken(jti string, cancel func()) (done func()) {
	t := r.tracker()
	e := t.add(cancel, jtiKey(jti))
	if r.Token(jti) {
		t.remove(e)
		e.once.Do(cancel)
	}
	return func() { t.remove(e) }
}

// TrackClaims is TrackToken for a request authenticated with a token of
// these verified claims: cancel also runs when a workload the token
// names (its SPIFFE ID the subject, authorized party, client or an
// actor: IdentityToken) is revoked. A token with neither a jti nor a
// workload's SPIFFE ID is not tracked.
func (r *Revocations) TrackClaims(claims map[string]any, cancel func()) (done func()) {
	var keys []liveKey
	jti, _ := claims["jti"].(string)
	if jti != "" {
		keys = append(keys, jtiKey(jti))
	}
	if keys = tokenOwnerKeys(keys, claims); len(keys) == 0 {
		return func() {}
	}
	t := r.tracker()
	e := t.add(cancel, keys...)
	if r.Token(jti) || r.IdentityToken(claims) {
		t.remove(e)
		e.once.Do(cancel)
	}
	return func() { t.remove(e) }
}

// RecheckTrust closes every connection of the Upstreams given these
// Revocations whose peer's chain no longer verifies against src's trust
// bundle (its CA authority was revoked), as Sidecar.RecheckTrust does,
// and returns how many.
func (r *Revocations) RecheckTrust(src Identity) int {
	return r.connTracker().recheck(src, time.Now(), nil)
}

// Tracked is the number of in-flight requests registered by TrackToken.
func (r *Revocations) Tracked() int { return r.tracker().len() }

func (r *Revocations) load() *revocationSet {
	if r == nil {
		return nil
	}
	return r.p.Load()
}

// UpstreamConfig configures an Upstream.
type UpstreamConfig struct {
	// Identity is this workload's SVID and trust bundle, read on every
	// handshake. Required.
	Identity Identity
	// Address is the upstream sidecar's "host:port". Required.
	Address string
	// ID is the SPIFFE ID the upstream must present; anything else fails
	// the handshake with ErrPeerNotAllowed. Required.
	ID spiffeid.ID
	// ServerName is sent as SNI; default none.
	ServerName string
	// HTTP2 multiplexes plain requests on HTTP/2 connections instead of a
	// pool of HTTP/1.1 connections (see Outbound.HTTP1). Default false.
	HTTP2 bool
	// HandshakeTimeout bounds a TLS handshake; default 10s.
	HandshakeTimeout time.Duration
	// Revocations, when set, refuses an upstream whose SPIFFE ID or
	// serial it lists.
	Revocations *Revocations
	// Now is the clock for certificate checks; default time.Now.
	Now func() time.Time
}

// Upstream is the sidecar's outbound mTLS client to one upstream sidecar,
// as an http.RoundTripper: every handshake verifies the upstream's
// X509-SVID against the trust bundle and its SPIFFE ID against
// UpstreamConfig.ID. Safe for concurrent use.
type Upstream struct {
	rt http.RoundTripper
	tr idleCloser
}

// NewUpstream checks c and builds the client. It dials nothing.
func NewUpstream(c UpstreamConfig) (*Upstream, error) {
	if c.Identity == nil {
		return nil, errors.New("proxy: upstream: an identity source is required")
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return nil, fmt.Errorf("proxy: upstream %q: %w", c.Address, err)
	}
	if c.ID.IsZero() {
		return nil, fmt.Errorf("proxy: upstream %s needs the upstream's SPIFFE ID", c.Address)
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	t := &tlsIdentity{src: c.Identity, now: c.Now, revoked: c.Revocations.load}
	if c.Revocations != nil {
		t.live = c.Revocations.connTracker()
	}
	rt, tr := t.upstreamClient(c.ID, c.ServerName, c.Address, !c.HTTP2, c.HandshakeTimeout)
	return &Upstream{rt: rt, tr: tr}, nil
}

// RoundTrip sends one request to the upstream.
func (u *Upstream) RoundTrip(r *http.Request) (*http.Response, error) { return u.rt.RoundTrip(r) }

// CloseIdleConnections closes the pooled connections; the client stays
// usable.
func (u *Upstream) CloseIdleConnections() {
	if a, ok := u.rt.(*appClient); ok {
		a.dropIdle()
	}
	u.tr.CloseIdleConnections()
}

// ForwarderConfig configures a Forwarder.
type ForwarderConfig struct {
	// Name labels logs.
	Name string
	// Transport sends the request (an *Upstream, or a balancer over
	// several). Required.
	Transport http.RoundTripper
	// Scheme and Host are the URL the request is given before Transport
	// sees it; default "https" and "upstream".
	Scheme, Host string
	// Logger receives forwarding failures; default slog.Default().
	Logger *slog.Logger
	// OnError answers a request that could not be forwarded; default a
	// 503 with Envoy's text.
	OnError func(w http.ResponseWriter, r *http.Request, err error)
}

// Forwarder is the sidecar's forwarding hop: bodies streamed through pooled
// buffers, trailers, gRPC and WebSocket upgrades carried, a failed
// response body turned into a reset rather than a clean truncation.
type Forwarder struct{ f *forwarder }

// NewForwarder builds a Forwarder.
func NewForwarder(c ForwarderConfig) (*Forwarder, error) {
	if c.Transport == nil {
		return nil, errors.New("proxy: forwarder needs a transport")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Scheme == "" {
		c.Scheme = "https"
	}
	if c.Host == "" {
		c.Host = "upstream"
	}
	// The forwarder reports through a sidecar's logger and upstream error
	// counter; this one has nothing else and registers its counter
	// nowhere (the caller counts its own errors in OnError).
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		return nil, err
	}
	s := &Sidecar{log: c.Logger, metrics: m}
	return &Forwarder{f: &forwarder{rt: c.Transport, scheme: c.Scheme, host: c.Host, name: c.Name, s: s, onError: c.OnError}}, nil
}

// Forward sends r on and streams the answer to w. r's hop-by-hop headers
// must have been removed with RemoveHopHeaders first, which returned
// upgrade ("" for none). onHijack, when non-nil, is called with the
// client connection once an upgrade has taken it over, and its result
// when the upgraded stream ends. reqBytes, when non-nil, is set to the
// request body bytes it read from the client (fewer than the
// Content-Length when the answer came first), for the traffic record,
// also when the forward is aborted (Forward then panics with
// http.ErrAbortHandler; a deferred record sees the bytes). It reports
// early when the answer came before the body was read to its end on
// HTTP/1.x: the answer said Connection: close and the caller must close
// the connection lingering (LingerHijack; the client may still be
// sending).
func (f *Forwarder) Forward(w http.ResponseWriter, r *http.Request, upgrade string, onHijack func(net.Conn) func(), reqBytes *int64) (early bool) {
	var ob Observation
	if reqBytes != nil {
		defer func() { *reqBytes = ob.ReqBytes }()
	}
	return f.f.forward(w, r, upgrade, onHijack, &ob)
}

// RemoveHopHeaders removes the hop-by-hop headers of RFC 9110 section
// 7.6.1 from h, as the sidecar does, and returns the protocol of an
// Upgrade the request asks for when allowed names it (see CheckUpgrades;
// h then says exactly "Connection: Upgrade" and the protocol). Fields
// Connection nominates are not removed. A part that adds headers of its
// own calls it first, on the request as received.
func RemoveHopHeaders(h http.Header, allowed []string) (upgrade string) {
	return removeHopHeaders(h, allowed)
}

// HeaderFilter removes the request headers a caller may not send: the
// sidecar's own filter (see headers.go) for another part of the data
// plane. Safe for concurrent use.
type HeaderFilter struct{ f *headerFilter }

// NewEdgeHeaderFilter is the filter of the edge, for a RequestAuthentication
// that writes output headers and reads tokens from tokenHeaders: what the
// sidecar drops (x-forwarded-client-cert, x-moatless-*, method and path
// overrides, the output headers, under every spelling) and, since nothing
// in front of the edge is trusted, the forwarding family (X-Forwarded-*,
// Forwarded, X-Real-IP and kin), X-Request-Id, x-envoy-* and x-istio-*,
// and every name holding "_". The repeated fields of a header in join
// (canonical names: the ones the policies read, policy.Set.RequestHeaders)
// become one, their values joined with "," as the policy read them: an
// app reading the first of "X-Debug: 1" and "X-Debug: 0" would otherwise
// act on a value no DENY rule on "1" saw.
func NewEdgeHeaderFilter(output, tokenHeaders, join []string) *HeaderFilter {
	f := buildHeaderFilter(output, tokenHeaders, true)
	f.join = join
	return &HeaderFilter{f: f}
}

// Strip deletes the refused headers from h in place.
func (f *HeaderFilter) Strip(h http.Header) { f.f.strip(h) }

// GuardTrailers applies the filter to r's trailer fields, declared and
// undeclared, as the sidecar does.
func (f *HeaderFilter) GuardTrailers(r *http.Request) { f.f.guardTrailers(r) }

// StripMethodOverride removes _method query parameters (Symfony, Laravel,
// Express's method-override) from np, returning np re-normalized and
// whether it removed any.
func StripMethodOverride(np policy.RequestPath) (policy.RequestPath, bool) {
	return stripMethodOverride(np)
}

// SetTarget makes u's request target exactly np.Target(), the path and
// query policy decided on, as the sidecar forwards it.
func SetTarget(u *url.URL, np policy.RequestPath) { setTarget(u, np) }

// RemoveQueryParams returns q (a raw query) without the parameters whose
// decoded name drop accepts (see removeQueryParams), and whether any went.
func RemoveQueryParams(q string, drop func(name string) bool) (string, bool) {
	return removeQueryParams(q, drop)
}

// ConnListener hands connections accepted and handshaken elsewhere to an
// http.Server (which sees a *tls.Conn and so negotiates HTTP/2 by ALPN).
type ConnListener = chanListener

// NewConnListener returns an open ConnListener.
func NewConnListener() *ConnListener { return newChanListener() }

// Push hands c to the server; false once the listener is closed (the
// caller then closes c).
func (l *chanListener) Push(c net.Conn) bool { return l.push(c) }

// AcceptBackoff paces an accept loop through temporary errors (EMFILE and
// friends), as the sidecar's listeners do. The zero value is ready; one
// accept loop uses it.
type AcceptBackoff struct{ b acceptBackoff }

// Retry reports whether err is temporary and, if so, waits first.
func (a *AcceptBackoff) Retry(err error) bool { return a.b.retry(err) }

// Reset starts the next run of errors at the shortest delay.
func (a *AcceptBackoff) Reset() { a.b.reset() }

// ApplyAuth makes the header and query edits RequestAuthentication asked
// for on an allowed request (output headers set, the token removed unless
// forwardOriginalToken), as the sidecar does before forwarding.
func ApplyAuth(r *http.Request, auth *policy.Auth) { applyAuth(r, auth) }
