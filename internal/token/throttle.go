package token

import (
	"sync"
	"time"
)

// Login throttling. Every failed login counts against the user name
// (whether or not the user exists, so lockouts reveal nothing) and the
// client IP. After the free attempts each further failure doubles the
// wait, up to maxLockout. A success clears the user's counter. Counters
// forget after throttleIdle without failures.
const (
	userFreeFailures = 5
	ipFreeFailures   = 20
	baseLockout      = time.Second
	maxLockout       = 15 * time.Minute
	throttleIdle     = time.Hour
	maxThrottleKeys  = 100_000
)

type thrEntry struct {
	failures    int
	lockedUntil time.Time
	last        time.Time
}

// throttle keeps failure counters in memory. Keys are hashed by the
// caller; the map is bounded.
type throttle struct {
	mu    sync.Mutex
	users map[string]*thrEntry
	ips   map[string]*thrEntry
}

func newThrottle() *throttle {
	return &throttle{users: map[string]*thrEntry{}, ips: map[string]*thrEntry{}}
}

// wait returns how long the user or IP must still wait, 0 if neither is
// locked.
func (t *throttle) wait(user, ip string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var d time.Duration
	for _, e := range []*thrEntry{t.users[user], t.ips[ip]} {
		if e != nil && now.Before(e.lockedUntil) {
			d = max(d, e.lockedUntil.Sub(now))
		}
	}
	return d
}

func (t *throttle) fail(user, ip string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	bump(t.users, user, userFreeFailures, now)
	bump(t.ips, ip, ipFreeFailures, now)
}

func bump(m map[string]*thrEntry, k string, free int, now time.Time) {
	e := m[k]
	if e != nil && now.Sub(e.last) > throttleIdle {
		e = nil
	}
	if e == nil {
		if len(m) >= maxThrottleKeys {
			pruneMap(m, now)
			if len(m) >= maxThrottleKeys {
				for victim, ve := range m { // evict one unlocked entry
					if !now.Before(ve.lockedUntil) {
						delete(m, victim)
						break
					}
				}
			}
		}
		e = &thrEntry{}
		m[k] = e
	}
	e.failures++
	e.last = now
	if over := e.failures - free; over > 0 {
		d := maxLockout
		if over < 20 {
			d = min(baseLockout<<(over-1), maxLockout)
		}
		e.lockedUntil = now.Add(d)
	}
}

func (t *throttle) success(user string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.users, user)
}

func (t *throttle) prune(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pruneMap(t.users, now)
	pruneMap(t.ips, now)
}

func pruneMap(m map[string]*thrEntry, now time.Time) {
	for k, e := range m {
		if now.Sub(e.last) > throttleIdle && !now.Before(e.lockedUntil) {
			delete(m, k)
		}
	}
}
