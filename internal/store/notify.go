package store

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// ChangeChannel is the PostgreSQL notification channel on which every
// change transaction announces its new global version (see BumpVersion).
const ChangeChannel = "moatless_changes"

// ErrNoNotifications is FollowChanges's answer on a SQLite store: one
// server owns an embedded store, so there is no other writer to hear of.
var ErrNoNotifications = errors.New("store: change notifications need PostgreSQL")

// ChangeHandler receives what FollowChanges hears. Every function may be
// nil; all run on FollowChanges's goroutine, one at a time, and must not
// block for long (notifications queue on the connection meanwhile).
type ChangeHandler struct {
	// Connected runs each time the listening connection is (re)established,
	// after LISTEN took effect. Notifications sent while it was down are
	// lost for good, so this is where the caller re-reads the version.
	Connected func()
	// Disconnected runs when the connection failed; FollowChanges retries
	// after a backoff. Until the next Connected, the caller must poll.
	Disconnected func(err error)
	// Changed runs for every notification with the version it carries. A
	// payload that is not a version (never sent by this package) yields 0:
	// something changed, read the version.
	Changed func(version uint64)
}

// FollowOptions tune FollowChanges; the zero value is sensible.
type FollowOptions struct {
	// Ping is how long the connection may stay silent before it is checked
	// with a query, so a PostgreSQL server that vanished without closing
	// the connection (a network partition, a frozen host) is noticed;
	// default 15s.
	Ping time.Duration
	// BackoffBase and BackoffMax bound the wait between reconnects (full
	// jitter over an exponential window); defaults 100ms and 5s.
	BackoffBase, BackoffMax time.Duration
}

// FollowChanges listens on ChangeChannel over a dedicated connection (not
// one of the pool's: LISTEN is per session) until ctx ends, reconnecting
// with backoff when the connection fails. It returns ErrNoNotifications on
// SQLite and ctx's error when ctx ends.
func (s *DB) FollowChanges(ctx context.Context, h ChangeHandler, o FollowOptions) error {
	if s.dialect != Postgres {
		return ErrNoNotifications
	}
	if o.Ping <= 0 {
		o.Ping = 15 * time.Second
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = 100 * time.Millisecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 5 * time.Second
	}
	attempt := 0
	for {
		heard, err := s.listenOnce(ctx, h, o.Ping)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if h.Disconnected != nil {
			h.Disconnected(err)
		}
		if heard {
			attempt = 0
		}
		window := min(o.BackoffBase<<min(attempt, 16), o.BackoffMax)
		attempt++
		t := time.NewTimer(mrand.N(window) + 1)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// listenOnce connects, LISTENs and delivers notifications until the
// connection fails. connected reports whether LISTEN took effect.
func (s *DB) listenOnce(ctx context.Context, h ChangeHandler, ping time.Duration) (connected bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, s.dsn)
	cancel()
	if err != nil {
		return false, fmt.Errorf("store: listen for changes: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+ChangeChannel); err != nil {
		return false, fmt.Errorf("store: listen for changes: %w", err)
	}
	if h.Connected != nil {
		h.Connected()
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, ping)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if h.Changed != nil {
				v, perr := strconv.ParseUint(n.Payload, 10, 63)
				if perr != nil {
					v = 0
				}
				h.Changed(v)
			}
			continue
		case ctx.Err() != nil:
			return true, ctx.Err()
		case !errors.Is(err, context.DeadlineExceeded) && !pgconnTimeout(err):
			return true, fmt.Errorf("store: listen for changes: %w", err)
		}
		// Silent for a whole ping interval: make sure the server is
		// still there (a timed-out wait leaves the connection usable).
		pctx, cancel := context.WithTimeout(ctx, ping)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return true, fmt.Errorf("store: listen for changes: ping: %w", err)
		}
	}
}

// pgconnTimeout reports whether err is pgconn's timeout error, which
// WaitForNotification returns when its context's deadline passed.
func pgconnTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
