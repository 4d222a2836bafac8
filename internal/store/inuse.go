package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// ErrInUse: a server is using the store.
var ErrInUse = errors.New("store: a moatless server is using this store")

// serverApplicationName is the PostgreSQL application_name of a server's
// sessions (unless its DSN sets one), by which InUse recognizes a live
// replica.
const serverApplicationName = "moatless-server"

// lockSuffix names the lock file next to a SQLite database that a server
// holds (flock) while it has the store open.
const lockSuffix = ".lock"

// sqlitePath is the file of a SQLite DSN (see Open).
func sqlitePath(dsn string) string {
	return strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite:"), "file:")
}

// IsPostgres reports whether dsn names a PostgreSQL store.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// withApplicationName sets application_name (and the server sessions'
// idle-in-transaction timeout) in a PostgreSQL URL DSN
// unless it has one.
func withApplicationName(dsn, name string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("store: postgres DSN: %w", err)
	}
	q := u.Query()
	if q.Get("application_name") == "" {
		q.Set("application_name", name)
	}
	// A replica that hangs (a stopped process, a frozen host) inside a
	// transaction keeps its row locks — the audit chain's head among
	// them — and every audited write of every replica waits on it. The
	// server's transactions never wait between statements for anything
	// but their own CPU, so PostgreSQL ends one idle for this long and
	// its locks go (pgx sends unknown keys as run-time parameters).
	if q.Get("idle_in_transaction_session_timeout") == "" {
		q.Set("idle_in_transaction_session_timeout", serverIdleInTxTimeout)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// serverIdleInTxTimeout is how long a server's PostgreSQL session may
// sit idle inside a transaction before PostgreSQL ends it.
const serverIdleInTxTimeout = "3s"

// InUse reports, with an error wrapping ErrInUse that says who, whether a
// server is using the store named by dsn: for SQLite, whether a server
// holds the database's lock file (held from Open to Close; a killed
// server's lock is released by the kernel); for PostgreSQL, whether a
// session of a server (application_name moatless-server) is connected to
// the database. Tools that need a store to stand still, such as "moatless
// store migrate", call it first. nil means nobody was found; other errors
// are I/O.
func InUse(ctx context.Context, dsn string) error {
	if !IsPostgres(dsn) {
		path := sqlitePath(dsn)
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		release, err := lockFile(path+lockSuffix, false)
		if err != nil {
			return err
		}
		release()
		return nil
	}
	db, err := OpenWith(ctx, dsn, OpenOptions{ReadOnly: true, SkipSchemaCheck: true})
	if err != nil {
		return err
	}
	defer db.Close()
	var n int
	var addrs string
	err = db.db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(string_agg(COALESCE(host(client_addr), 'local'), ', '), '')
		FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()`,
		serverApplicationName).Scan(&n, &addrs)
	if err != nil {
		return fmt.Errorf("store: list sessions: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("%w: %d server sessions are connected (from %s); stop every replica first", ErrInUse, n, addrs)
	}
	return nil
}
