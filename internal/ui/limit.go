package ui

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Login attempt limits, per client address: an IPv4 address, or an IPv6
// address's /64 (one host's subnet: its addresses cost it nothing). There
// is no overall limit on attempts: it would let anyone who holds enough
// addresses lock the admin out. The admin token has 256 bits, so
// guessing is hopeless anyway; what a flood from many addresses costs is
// the audit record of each refusal, and those are bounded overall
// (deniedBudget).
const (
	loginPerIPEvery = 6 * time.Second // 10 a minute
	loginPerIPBurst = 10
	maxLimiterKeys  = 10000
)

// Bound of the audit records of refused logins, for the whole dashboard.
const (
	deniedAuditRate  = 2 // a second
	deniedAuditBurst = 20
)

// loginLimiter bounds login attempts per address, on the injected clock.
// Safe for concurrent use.
type loginLimiter struct {
	mu    sync.Mutex
	perIP map[string]*rate.Limiter
}

func newLoginLimiter() *loginLimiter {
	return &loginLimiter{perIP: map[string]*rate.Limiter{}}
}

// allow reports whether one more attempt from ip may run at now, and if
// not, after how long the caller may retry.
func (l *loginLimiter) allow(ip string, now time.Time) (bool, time.Duration) {
	ip = limitKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.perIP[ip]
	if lim == nil {
		if len(l.perIP) >= maxLimiterKeys {
			// Full buckets say nothing: drop them. If every bucket is in
			// use (that many addresses failing at once), drop one anyway
			// rather than refuse the newcomer, who may be the admin: its
			// address gets one burst more, and what a flood costs, the
			// refusals' audit records, is bounded overall.
			for k, v := range l.perIP {
				if v.TokensAt(now) >= loginPerIPBurst {
					delete(l.perIP, k)
				}
			}
			for k := range l.perIP {
				if len(l.perIP) < maxLimiterKeys {
					break
				}
				delete(l.perIP, k)
			}
		}
		lim = rate.NewLimiter(rate.Every(loginPerIPEvery), loginPerIPBurst)
		l.perIP[ip] = lim
	}
	if !lim.AllowN(now, 1) {
		r := lim.ReserveN(now, 1)
		d := r.DelayFrom(now)
		r.CancelAt(now)
		return false, max(d, time.Second)
	}
	return true, 0
}

// limitKey is the address a limit counts: an IPv6 address's /64, any
// other address as it is.
func limitKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is6() || a.Is4In6() {
		return ip
	}
	p, err := a.Prefix(64)
	if err != nil {
		return ip
	}
	return p.String()
}

// budget bounds audit records of one kind overall and counts those it
// refused since the last it allowed, for that one to say. Safe for
// concurrent use.
type budget struct {
	mu      sync.Mutex
	lim     *rate.Limiter
	dropped int
}

func newBudget(perSecond float64, burst int) *budget {
	return &budget{lim: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// take reports whether one more record may be written at now, and how
// many were refused before it (when it may) or are refused now, this one
// included (when not).
func (b *budget) take(now time.Time) (bool, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.lim.AllowN(now, 1) {
		b.dropped++
		return false, b.dropped
	}
	n := b.dropped
	b.dropped = 0
	return true, n
}

// clientIP is the caller's address without the port. The dashboard is
// served directly by the server's TLS listener, so RemoteAddr is the peer;
// forwarded-for headers are never believed.
func clientIP(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}
