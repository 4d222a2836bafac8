package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy"
)

// routeTable finds the route of a request: the longest matching path
// prefix among the routes for its host (case-insensitive, port and
// trailing dot ignored) when that host has routes, else among the
// host-less routes. A prefix matches whole
// segments only: "/orders" matches "/orders" and "/orders/42", never
// "/ordersadmin".
type routeTable struct {
	byHost  map[string][]*route
	anyHost []*route
}

func newRouteTable(rs []*route) *routeTable {
	t := &routeTable{byHost: map[string][]*route{}}
	for _, r := range rs {
		if r.host == "" {
			t.anyHost = append(t.anyHost, r)
		} else {
			t.byHost[r.host] = append(t.byHost[r.host], r)
		}
	}
	byLen := func(a, b *route) int { return len(b.prefix) - len(a.prefix) }
	slices.SortStableFunc(t.anyHost, byLen)
	for _, l := range t.byHost {
		slices.SortStableFunc(l, byLen)
	}
	return t
}

func (t *routeTable) lookup(host, path string) *route {
	if rs, ok := t.byHost[host]; ok {
		// A host with routes of its own is served by those alone, as an
		// Envoy virtual host is: a catch-all route never widens it.
		for _, r := range rs {
			if prefixMatch(path, r.prefix) {
				return r
			}
		}
		return nil
	}
	for _, r := range t.anyHost {
		if prefixMatch(path, r.prefix) {
			return r
		}
	}
	return nil
}

func prefixMatch(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || strings.HasSuffix(prefix, "/") || segmentEnd(path[len(prefix)])
}

// segmentEnd reports whether c ends a path segment a route prefix may
// end at: "/", or ";", which starts a segment's path parameters, so that
// "/orders;jsessionid=1/x" is under /orders, as Tomcat, Jetty and Spring
// read it.
func segmentEnd(c byte) bool { return c == '/' || c == ';' }

// lookupFold is lookup with path prefixes compared ignoring ASCII case,
// as an app with case-insensitive routing (Express and ASP.NET Core by
// default, IIS) matches them. A longer prefix that matches only so wins,
// as it would in such an app.
func (t *routeTable) lookupFold(host, path string) *route {
	rs, ok := t.byHost[host]
	if !ok {
		rs = t.anyHost
	}
	for _, r := range rs {
		if prefixMatchFold(path, r.prefix) {
			return r
		}
	}
	return nil
}

// prefixMatchFold is prefixMatch ignoring case. The normalized path is
// ASCII (bytes above 0x7F are percent-encoded), so strings.EqualFold's
// Unicode folding ("\u212a" is "k") cannot apply to it.
func prefixMatchFold(path, prefix string) bool {
	if len(path) < len(prefix) || !strings.EqualFold(path[:len(prefix)], prefix) {
		return false
	}
	return len(path) == len(prefix) || strings.HasSuffix(prefix, "/") || segmentEnd(path[len(prefix)])
}

// canonicalHost is the Host header as routes compare it: lower case,
// without port or trailing dot.
func canonicalHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

type upstreamKey struct {
	addr, id, sni string
	http2         bool
}

// upstream returns the shared mTLS client for k, creating it once.
func (g *Gateway) upstream(k upstreamKey) (*proxy.Upstream, error) {
	g.upMu.Lock()
	defer g.upMu.Unlock()
	if u := g.upstreams[k]; u != nil {
		return u, nil
	}
	id, err := spiffeid.FromString(k.id)
	if err != nil {
		return nil, err
	}
	u, err := proxy.NewUpstream(proxy.UpstreamConfig{
		Identity: g.opts.Identity, Address: k.addr, ID: id, ServerName: k.sni, HTTP2: k.http2,
		HandshakeTimeout: 10 * time.Second, Revocations: &g.revoked, Now: g.now,
	})
	if err != nil {
		return nil, err
	}
	g.upstreams[k] = u
	return u, nil
}

// dropUnused closes the clients no route of st uses any more.
func (g *Gateway) dropUnused(st *state) {
	used := map[upstreamKey]bool{}
	for _, r := range st.routes {
		for _, b := range r.pool.backends {
			used[b.key] = true
		}
	}
	g.upMu.Lock()
	defer g.upMu.Unlock()
	for k, u := range g.upstreams {
		if !used[k] {
			u.CloseIdleConnections()
			delete(g.upstreams, k)
		}
	}
}

// pool is a route's upstream sidecars as one http.RoundTripper: it picks
// a healthy backend (round robin, or the less loaded of two random ones)
// and retries an idempotent request on another backend when the
// connection failed before the request was sent.
type pool struct {
	route    string
	backends []*backend
	least    bool
	retries  int
	rr       atomic.Uint64
	timeout  time.Duration
	metrics  *metrics
	health   *config.GatewayHealthCheck
}

type backend struct {
	addr     string
	key      upstreamKey
	up       *proxy.Upstream
	healthy  atomic.Bool
	inflight atomic.Int64
}

// errNoUpstream: every backend was tried (or none is left to try).
var errNoUpstream = errors.New("gateway: no upstream available")

func (p *pool) RoundTrip(r *http.Request) (*http.Response, error) {
	tried := make([]bool, len(p.backends))
	var lastErr error
	for attempt := 0; attempt <= p.retries; attempt++ {
		b := p.pick(tried)
		if b == nil {
			break
		}
		tried[slices.Index(p.backends, b)] = true
		if attempt > 0 {
			if r.GetBody != nil {
				body, err := r.GetBody()
				if err != nil {
					return nil, lastErr
				}
				r.Body = body
			}
			p.metrics.retries.WithLabelValues(p.route).Inc()
		}
		// The transport dials the URL's host when a request leaves the
		// lean path (streaming bodies, upgrades): it must be this backend.
		r.URL.Host = b.addr
		b.inflight.Add(1)
		resp, err := b.up.RoundTrip(r)
		b.inflight.Add(-1)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		if !retryable(r, err) {
			return nil, err
		}
	}
	if lastErr == nil {
		lastErr = errNoUpstream
	}
	return nil, lastErr
}

// pick returns the next backend not yet tried: healthy ones first; when
// none is healthy, any (a health check can be wrong; refusing outright
// would turn a flapping check into an outage).
func (p *pool) pick(tried []bool) *backend {
	var cands []*backend
	for _, healthyOnly := range []bool{true, false} {
		for i, b := range p.backends {
			if !tried[i] && (!healthyOnly || b.healthy.Load()) {
				cands = append(cands, b)
			}
		}
		if len(cands) > 0 {
			break
		}
	}
	switch {
	case len(cands) == 0:
		return nil
	case len(cands) == 1:
		return cands[0]
	case p.least:
		a, b := cands[rand.IntN(len(cands))], cands[rand.IntN(len(cands))]
		if b.inflight.Load() < a.inflight.Load() {
			return b
		}
		return a
	}
	return cands[int(p.rr.Add(1)-1)%len(cands)]
}

// retryable reports whether a failed request may go to another backend:
// the connection failed before anything was sent (dial refused or timed
// out, TLS handshake or upstream identity refused) and the request is
// idempotent with a body that can be sent again.
func retryable(r *http.Request, err error) bool {
	if r.Context().Err() != nil {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
	default:
		return false
	}
	if r.Body != nil && r.Body != http.NoBody && r.GetBody == nil {
		return false
	}
	if _, up := r.Header["Upgrade"]; up {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, proxy.ErrPeerNotAllowed) || errors.Is(err, proxy.ErrPeerUnverified) || errors.Is(err, proxy.ErrPeerRevoked)
}

// checkHealth probes every backend once; run every interval by the
// route's health loop.
func (p *pool) checkHealth(ctx context.Context) {
	var wg sync.WaitGroup
	for _, b := range p.backends {
		wg.Go(func() {
			ok := p.probe(ctx, b)
			if was := b.healthy.Swap(ok); was != ok {
				p.metrics.upstreamHealthy.WithLabelValues(p.route, b.addr).Set(boolf(ok))
			}
		})
	}
	wg.Wait()
}

func (p *pool) probe(ctx context.Context, b *backend) bool {
	ctx, cancel := context.WithTimeout(ctx, p.health.Timeout.Std())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+b.addr+p.health.Path, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "moatless-gateway-health")
	resp, err := b.up.RoundTrip(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode < 500
}

// healthLoop checks every interval until ctx ends.
func (p *pool) healthLoop(ctx context.Context) {
	p.checkHealth(ctx)
	t := time.NewTicker(p.health.Interval.Std())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.checkHealth(ctx)
		}
	}
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// newPool builds the pool of a route from shared upstream clients.
func (g *Gateway) newPool(rc *config.GatewayRoute) (*pool, error) {
	p := &pool{route: rc.Name, least: rc.LoadBalancing == "least_requests", retries: rc.Retries, timeout: rc.Timeout.Std(), metrics: g.metrics, health: rc.HealthCheck}
	for _, addr := range rc.Upstreams {
		k := upstreamKey{addr: addr, id: rc.SPIFFEID, sni: rc.ServerName, http2: rc.UpstreamHTTP2}
		u, err := g.upstream(k)
		if err != nil {
			return nil, fmt.Errorf("gateway: route %s: upstream %s: %w", rc.Name, addr, err)
		}
		b := &backend{addr: addr, key: k, up: u}
		b.healthy.Store(true)
		g.metrics.upstreamHealthy.WithLabelValues(rc.Name, addr).Set(1)
		p.backends = append(p.backends, b)
	}
	return p, nil
}
