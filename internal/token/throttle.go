package token

import (
	"context"
	"time"
)

// Login throttling. Every failed login counts against the user name
// (whether or not the user exists, so lockouts reveal nothing) and the
// client address. After the free attempts each further failure doubles
// the wait, up to maxLockout. A completed login clears the user's
// counter. A counter forgets after throttleIdle without failures. The
// counters live in the store, so they hold across replicas and restarts;
// keys are HMACs of the name or address.
const (
	userFreeFailures = 5
	ipFreeFailures   = 20
	baseLockout      = time.Second
	maxLockout       = 15 * time.Minute
	throttleIdle     = time.Hour
)

// lockout is the wait after failures failures with free free ones.
func lockout(failures, free int) time.Duration {
	over := failures - free
	switch {
	case over <= 0:
		return 0
	case over >= 20:
		return maxLockout
	}
	return min(baseLockout<<(over-1), maxLockout)
}

// loginWait returns how long the user or address must still wait.
func (s *Service) loginWait(ctx context.Context, userKey, ipKey string) (time.Duration, error) {
	until, err := s.cfg.Store.LoginLockedUntil(ctx, []string{userKey, ipKey})
	if err != nil {
		return 0, err
	}
	if d := until.Sub(s.now()); d > 0 {
		return d, nil
	}
	return 0, nil
}

// loginFailed counts a failure against both keys and locks them as due.
func (s *Service) loginFailed(ctx context.Context, userKey, ipKey string) error {
	now := s.now()
	for _, k := range []struct {
		key  string
		free int
	}{{userKey, userFreeFailures}, {ipKey, ipFreeFailures}} {
		n, err := s.cfg.Store.RecordLoginFailure(ctx, k.key, now, now.Add(-throttleIdle))
		if err != nil {
			return err
		}
		if d := lockout(n, k.free); d > 0 {
			if err := s.cfg.Store.LockLogin(ctx, k.key, now.Add(d)); err != nil {
				return err
			}
		}
	}
	return nil
}
