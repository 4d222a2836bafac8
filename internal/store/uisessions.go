package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// EndUISession records that the dashboard session id ended (logged out);
// it stays refused until expires, when its cookie no longer opens anyway.
// Ending a session twice changes nothing.
func (s *DB) EndUISession(ctx context.Context, id string, expires time.Time) error {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO ui_ended_sessions (id, expires_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`,
		id, ns(expires)); err != nil {
		return fmt.Errorf("store: end dashboard session: %w", err)
	}
	return nil
}

// UISessionEnded reports whether the dashboard session id was ended, on
// any replica.
func (s *DB) UISessionEnded(ctx context.Context, id string) (bool, error) {
	var one int
	err := s.db.QueryRowContext(ctx, "SELECT 1 FROM ui_ended_sessions WHERE id = $1", id).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("store: read ended dashboard sessions: %w", err)
	}
	return true, nil
}

// PruneUISessions forgets the ended sessions that expired at or before
// now, and returns how many.
func (s *DB) PruneUISessions(ctx context.Context, now time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM ui_ended_sessions WHERE expires_at <= $1", ns(now))
	if err != nil {
		return 0, fmt.Errorf("store: prune ended dashboard sessions: %w", err)
	}
	return res.RowsAffected()
}
