package gateway

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/gateway/ratelimit"
	"github.com/moatless/moatless/internal/policy"
)

// limiter is one named rate limit, compiled.
type limiter struct {
	name     string
	kind     string // ip, route, jwt, header
	arg      string // claim or header name
	limit    int64
	window   time.Duration
	store    ratelimit.Store
	failOpen bool
	// sig identifies the definition: a reload keeps the counters of a
	// limit whose sig did not change.
	sig string
}

// afterAuth reports whether the limit keys on the verified token, so it
// runs after RequestAuthentication.
func (l *limiter) afterAuth() bool { return l.kind == "jwt" }

// key is what the request is counted under. A jwt limit on a request
// without that claim counts the client address instead: anonymous
// traffic cannot step around a per-user limit. An IPv6 client is
// counted by its /64 (clientBlock). A header limit on a request that
// carries the header more than once has no key (ok false): the gateway
// would count one value while the app may read another (the last, or
// all joined), so a client could spend a fresh key per request on an
// app that reads its real one.
func (l *limiter) key(r *http.Request, rc *reqCtx, auth *policy.Auth) (key string, ok bool) {
	switch l.kind {
	case "route":
		return l.name + "|route|" + rc.route.name, true
	case "header":
		switch vs := r.Header[l.arg]; {
		case len(vs) > 1 || slices.Contains(rc.repeated, l.arg):
			// Also when the header filter joined the fields of a header
			// the policies read: an app may still read one of them.
			return "", false
		case len(vs) == 1 && vs[0] != "":
			return l.name + "|h|" + truncate(vs[0], 256), true
		}
	case "jwt":
		if auth != nil {
			if v, ok := auth.Claims[l.arg]; ok {
				return l.name + "|jwt|" + truncate(fmt.Sprint(v), 256), true
			}
		}
	}
	return l.name + "|ip|" + addrString(clientBlock(rc.client)), true
}

// clientBlock is the address a per-client limit counts: the address
// itself for IPv4, its /64 for IPv6. One IPv6 host is routinely given a
// whole /64 (SLAAC, privacy addresses, RFC 6177 end sites), so a limit by
// the full address would give a client 2^64 budgets.
func clientBlock(a netip.Addr) netip.Addr {
	if a.Is6() && !a.Is4In6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// limiters compiles the rate limits of cfg, reusing those of old whose
// definition is unchanged and sharing one Redis client per URL.
func (g *Gateway) limiters(cfg *config.Gateway, old *state) (map[string]*limiter, error) {
	out := map[string]*limiter{}
	for _, rl := range cfg.RateLimits {
		sig := fmt.Sprintf("%s|%s|%d|%s|%s", rl.Name, rl.Key, rl.Limit, rl.Window.Std(), rl.Store)
		if old != nil {
			if l := old.limits[rl.Name]; l != nil && l.sig == sig {
				l2 := *l
				l2.failOpen = rl.OnStoreError == "allow"
				out[rl.Name] = &l2
				continue
			}
		}
		l := &limiter{name: rl.Name, limit: rl.Limit, window: rl.Window.Std(), failOpen: rl.OnStoreError == "allow", sig: sig}
		kind, arg, _ := strings.Cut(rl.Key, ":")
		l.kind, l.arg = kind, arg
		if kind == "header" {
			l.arg = http.CanonicalHeaderKey(arg)
		}
		if rl.Store == "memory" {
			l.store = ratelimit.NewMemory(g.now, 0)
		} else {
			s, err := g.redisStore(rl.Store)
			if err != nil {
				return nil, err
			}
			l.store = s
		}
		out[rl.Name] = l
	}
	return out, nil
}

func (g *Gateway) redisStore(url string) (*ratelimit.Redis, error) {
	g.redisMu.Lock()
	defer g.redisMu.Unlock()
	if g.redis == nil {
		g.redis = map[string]*ratelimit.Redis{}
	}
	if r := g.redis[url]; r != nil {
		return r, nil
	}
	r, err := ratelimit.NewRedis(url, "moatless:gateway:rl:")
	if err != nil {
		return nil, err
	}
	g.redis[url] = r
	return r, nil
}

// storeErrLog keeps one log line per limit per 10 s while its store is
// failing.
type storeErrLog struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (s *storeErrLog) due(name string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		s.last = map[string]time.Time{}
	}
	if now.Sub(s.last[name]) < 10*time.Second {
		return false
	}
	s.last[name] = now
	return true
}

// rateLimit takes one request from each of the route's limits of the
// phase (before or after authentication) and answers 429 when one is
// spent. Every answer on a limited route carries RateLimit-Limit,
// -Remaining and -Reset of the tightest limit.
func (g *Gateway) rateLimit(w *respWriter, r *http.Request, rc *reqCtx, auth *policy.Auth, afterAuth bool) bool {
	for _, l := range rc.route.limits {
		if l.afterAuth() != afterAuth {
			continue
		}
		key, ok := l.key(r, rc, auth)
		if !ok {
			g.reject(w, http.StatusBadRequest, reasonBadRequest, "more than one "+l.arg+" header")
			return false
		}
		ctx, cancel := context.WithTimeout(r.Context(), 300*time.Millisecond)
		res, err := l.store.Take(ctx, key, l.limit, l.window)
		cancel()
		if err != nil {
			action := "allow"
			if !l.failOpen {
				action = "deny"
			}
			g.metrics.storeErrors.WithLabelValues(l.name, action).Inc()
			if g.storeErrs.due(l.name, g.now()) {
				g.log.Error("rate-limit store unreachable", "limit", l.name, "action", action, "err", err)
			}
			if l.failOpen {
				continue
			}
			w.Header().Set("Retry-After", "1")
			g.reject(w, http.StatusTooManyRequests, reasonRateLimited, "rate limit store unavailable")
			g.blocked(r, rc, reasonRateLimited, "rate limit "+l.name+": store unreachable, failing closed")
			return false
		}
		h := w.Header()
		if rem, ok := h["Ratelimit-Remaining"]; !ok || remaining(rem) > res.Remaining {
			h.Set("RateLimit-Limit", strconv.FormatInt(res.Limit, 10))
			h.Set("RateLimit-Remaining", strconv.FormatInt(max(res.Remaining, 0), 10))
			h.Set("RateLimit-Reset", strconv.Itoa(int(math.Ceil(res.Reset.Seconds()))))
		}
		if !res.Allowed {
			h.Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(res.RetryAfter.Seconds())))))
			h.Set("RateLimit-Remaining", "0")
			g.reject(w, http.StatusTooManyRequests, reasonRateLimited, "rate limit exceeded")
			g.blocked(r, rc, reasonRateLimited, "rate limit "+l.name)
			return false
		}
	}
	return true
}

func remaining(v []string) int64 {
	if len(v) == 0 {
		return math.MaxInt64
	}
	n, err := strconv.ParseInt(v[0], 10, 64)
	if err != nil {
		return math.MaxInt64
	}
	return n
}
