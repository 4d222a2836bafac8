package server

// How a server hears of changes other replicas made to a shared
// PostgreSQL store. Every change transaction notifies on
// store.ChangeChannel with its new global version (store.BumpVersion);
// followChanges listens on a dedicated connection and wakes refreshLoop,
// which re-reads the versions and wakes the watch streams (changed). The
// maintenance loop's version poll stays as the fallback: every tick while
// the listening connection is down, every fallbackPollEvery ticks while it
// is up (a notification is never lost on a live connection, but a poll
// costs one row read and guards against the unforeseen).

import (
	"context"
	"errors"

	"github.com/moatless/moatless/internal/store"
)

// fallbackPollEvery is how many maintenance ticks pass between version
// polls while change notifications flow.
const fallbackPollEvery = 10

// kickRefresh asks refreshLoop to re-read the store's versions. It never
// blocks: a kick already pending covers this one.
func (s *Server) kickRefresh() {
	select {
	case s.refresh <- struct{}{}:
	default:
	}
}

// refreshLoop runs changed() once per burst of kicks until ctx ends: a
// hundred notifications arriving together cost one or two store reads,
// not a hundred.
func (s *Server) refreshLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.refresh:
			s.changed(ctx)
		}
	}
}

// followChanges listens for other replicas' changes until ctx ends. On
// SQLite it returns at once: the embedded store has a single server.
func (s *Server) followChanges(ctx context.Context) {
	err := s.db.FollowChanges(ctx, store.ChangeHandler{
		Connected: func() {
			if !s.listening.Swap(true) {
				s.log.Info("listening for changes made by other replicas")
			}
			s.metrics.feedEvents.WithLabelValues("reconnect").Inc()
			// Changes committed while the connection was down were
			// announced to nobody: catch up now.
			s.kickRefresh()
		},
		Disconnected: func(err error) {
			s.listening.Store(false)
			s.log.Warn("lost the change notification connection; polling every poll_interval until it is back", "err", err)
		},
		Changed: func(v uint64) {
			s.metrics.feedEvents.WithLabelValues("notification").Inc()
			if v == 0 || v > s.hub.current() {
				s.kickRefresh()
			}
		},
	}, store.FollowOptions{})
	if err != nil && !errors.Is(err, store.ErrNoNotifications) && ctx.Err() == nil {
		s.log.Error("change notifications stopped", "err", err)
	}
}

// pollDue reports whether the maintenance tick numbered tick should read
// the store's version.
func (s *Server) pollDue(tick uint64) bool {
	return !s.listening.Load() || tick%fallbackPollEvery == 0
}
