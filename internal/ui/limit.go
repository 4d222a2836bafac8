package ui

import (
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Login attempt limits: per client address, and for the whole dashboard
// (a spread-out guess of the admin token still meets the global bound).
// The admin token has 256 bits, so guessing is hopeless anyway; the limit
// keeps a flood from turning into an audit-write flood and an argon2 CPU
// flood on the OIDC side.
const (
	loginPerIPEvery  = 6 * time.Second // 10 a minute
	loginPerIPBurst  = 10
	loginGlobalRate  = 2 // a second
	loginGlobalBurst = 20
	maxLimiterKeys   = 10000
)

// loginLimiter bounds login attempts, on the injected clock. Safe for
// concurrent use.
type loginLimiter struct {
	mu     sync.Mutex
	global *rate.Limiter
	perIP  map[string]*rate.Limiter
}

func newLoginLimiter() *loginLimiter {
	return &loginLimiter{global: rate.NewLimiter(loginGlobalRate, loginGlobalBurst), perIP: map[string]*rate.Limiter{}}
}

// allow reports whether one more attempt from ip may run at now, and if
// not, after how long the caller may retry.
func (l *loginLimiter) allow(ip string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.perIP[ip]
	if lim == nil {
		if len(l.perIP) >= maxLimiterKeys {
			// Full buckets say nothing: drop them. If every bucket is in
			// use, refuse new addresses until some refill.
			for k, v := range l.perIP {
				if v.TokensAt(now) >= loginPerIPBurst {
					delete(l.perIP, k)
				}
			}
			if len(l.perIP) >= maxLimiterKeys {
				return false, loginPerIPEvery
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
	if !l.global.AllowN(now, 1) {
		return false, time.Second
	}
	return true, 0
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
