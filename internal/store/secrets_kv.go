package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// KVMeta is a KV version 2 secret's metadata.
type KVMeta struct {
	Mount, Path        string
	CurrentVersion     int64
	OldestVersion      int64
	MaxVersions        int64 // 0: the mount's default
	CASRequired        bool
	DeleteVersionAfter time.Duration
	Custom             map[string]string
	CreatedAt          time.Time
	UpdatedAt          time.Time
}

// KVVersion is one version of a KV secret. Value is the sealed data, nil
// when destroyed (or when not asked for).
type KVVersion struct {
	Version      int64
	Value        []byte
	CreatedAt    time.Time
	DeletionTime time.Time
	Destroyed    bool
}

// KVMetadata reads a secret's metadata (locked for update with lock).
func (s *DB) KVMetadata(ctx context.Context, q Queryer, mount, path string, lock bool) (KVMeta, error) {
	m := KVMeta{Mount: mount, Path: path}
	query := `SELECT current_version, oldest_version, max_versions, cas_required, delete_version_after, custom_metadata, created_at, updated_at
		FROM kv_metadata WHERE mount = $1 AND path = $2`
	if lock {
		query += s.forUpdate()
	}
	var cas int
	var dva, created, updated int64
	var custom string
	err := q.QueryRowContext(ctx, query, mount, path).Scan(&m.CurrentVersion, &m.OldestVersion, &m.MaxVersions, &cas, &dva, &custom, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return m, fmt.Errorf("%w: no secret at %s", ErrNotFound, path)
	}
	if err != nil {
		return m, fmt.Errorf("store: read kv metadata: %w", err)
	}
	if err := json.Unmarshal([]byte(custom), &m.Custom); err != nil {
		return m, fmt.Errorf("store: kv custom metadata: %w", err)
	}
	m.CASRequired, m.DeleteVersionAfter, m.CreatedAt, m.UpdatedAt = cas != 0, time.Duration(dva), fromNS(created), fromNS(updated)
	return m, nil
}

// PutKVMetadata creates or replaces a secret's metadata.
func (s *DB) PutKVMetadata(ctx context.Context, q Queryer, m KVMeta) error {
	if m.Custom == nil {
		m.Custom = map[string]string{}
	}
	custom, _ := json.Marshal(m.Custom)
	_, err := q.ExecContext(ctx, `INSERT INTO kv_metadata (mount, path, current_version, oldest_version, max_versions, cas_required,
		delete_version_after, custom_metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (mount, path) DO UPDATE SET current_version = excluded.current_version, oldest_version = excluded.oldest_version,
		max_versions = excluded.max_versions, cas_required = excluded.cas_required, delete_version_after = excluded.delete_version_after,
		custom_metadata = excluded.custom_metadata, updated_at = excluded.updated_at`,
		m.Mount, m.Path, m.CurrentVersion, m.OldestVersion, m.MaxVersions, boolInt(m.CASRequired), int64(m.DeleteVersionAfter),
		string(custom), ns(m.CreatedAt), ns(m.UpdatedAt))
	if err != nil {
		return fmt.Errorf("store: write kv metadata: %w", err)
	}
	return nil
}

// InsertKVVersion stores a new version.
func (s *DB) InsertKVVersion(ctx context.Context, q Queryer, mount, path string, v KVVersion) error {
	_, err := q.ExecContext(ctx, `INSERT INTO kv_versions (mount, path, version, value, created_at, deletion_time, destroyed)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, mount, path, v.Version, v.Value, ns(v.CreatedAt), ns(v.DeletionTime), boolInt(v.Destroyed))
	if err != nil {
		return fmt.Errorf("store: write kv version: %w", err)
	}
	return nil
}

// KVVersions lists a secret's stored versions, oldest first; values are
// included only with values.
func (s *DB) KVVersions(ctx context.Context, q Queryer, mount, path string, values bool) ([]KVVersion, error) {
	col := "NULL"
	if values {
		col = "value"
	}
	rows, err := q.QueryContext(ctx, `SELECT version, `+col+`, created_at, deletion_time, destroyed FROM kv_versions
		WHERE mount = $1 AND path = $2 ORDER BY version`, mount, path)
	if err != nil {
		return nil, fmt.Errorf("store: read kv versions: %w", err)
	}
	defer rows.Close()
	var out []KVVersion
	for rows.Next() {
		var v KVVersion
		var created, del int64
		var destroyed int
		if err := rows.Scan(&v.Version, &v.Value, &created, &del, &destroyed); err != nil {
			return nil, fmt.Errorf("store: read kv versions: %w", err)
		}
		v.CreatedAt, v.DeletionTime, v.Destroyed = fromNS(created), fromNS(del), destroyed != 0
		out = append(out, v)
	}
	return out, rows.Err()
}

// KVVersionOf reads one version with its sealed value.
func (s *DB) KVVersionOf(ctx context.Context, q Queryer, mount, path string, version int64) (KVVersion, error) {
	v := KVVersion{Version: version}
	var created, del int64
	var destroyed int
	err := q.QueryRowContext(ctx, `SELECT value, created_at, deletion_time, destroyed FROM kv_versions
		WHERE mount = $1 AND path = $2 AND version = $3`, mount, path, version).Scan(&v.Value, &created, &del, &destroyed)
	if errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("%w: version %d of %s", ErrNotFound, version, path)
	}
	if err != nil {
		return v, fmt.Errorf("store: read kv version: %w", err)
	}
	v.CreatedAt, v.DeletionTime, v.Destroyed = fromNS(created), fromNS(del), destroyed != 0
	return v, nil
}

// SetKVDeletion sets (or clears, with a zero time) the deletion time of
// the listed versions that are not destroyed.
func (s *DB) SetKVDeletion(ctx context.Context, q Queryer, mount, path string, versions []int64, at time.Time) error {
	for _, v := range versions {
		if _, err := q.ExecContext(ctx, `UPDATE kv_versions SET deletion_time = $1 WHERE mount = $2 AND path = $3 AND version = $4 AND destroyed = 0`,
			ns(at), mount, path, v); err != nil {
			return fmt.Errorf("store: delete kv version: %w", err)
		}
	}
	return nil
}

// DestroyKVVersions erases the sealed values of the listed versions (the
// rows stay, marked destroyed, as in Vault).
func (s *DB) DestroyKVVersions(ctx context.Context, q Queryer, mount, path string, versions []int64) error {
	for _, v := range versions {
		if _, err := q.ExecContext(ctx, `UPDATE kv_versions SET value = NULL, destroyed = 1 WHERE mount = $1 AND path = $2 AND version = $3`,
			mount, path, v); err != nil {
			return fmt.Errorf("store: destroy kv version: %w", err)
		}
	}
	return nil
}

// TrimKVVersions deletes the versions below oldest.
func (s *DB) TrimKVVersions(ctx context.Context, q Queryer, mount, path string, oldest int64) error {
	if _, err := q.ExecContext(ctx, `DELETE FROM kv_versions WHERE mount = $1 AND path = $2 AND version < $3`, mount, path, oldest); err != nil {
		return fmt.Errorf("store: trim kv versions: %w", err)
	}
	return nil
}

// DeleteKVSecret erases a secret: metadata and every version.
func (s *DB) DeleteKVSecret(ctx context.Context, q Queryer, mount, path string) error {
	if _, err := q.ExecContext(ctx, `DELETE FROM kv_versions WHERE mount = $1 AND path = $2`, mount, path); err != nil {
		return fmt.Errorf("store: delete kv secret: %w", err)
	}
	res, err := q.ExecContext(ctx, `DELETE FROM kv_metadata WHERE mount = $1 AND path = $2`, mount, path)
	if err != nil {
		return fmt.Errorf("store: delete kv secret: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: no secret at %s", ErrNotFound, path)
	}
	return nil
}

// KVList lists the keys directly under prefix ("" or ending in "/"): a
// secret's name, or a folder's name with a trailing "/", sorted, at most
// limit entries.
func (s *DB) KVList(ctx context.Context, mount, prefix string, limit int) ([]string, error) {
	// A range scan on the primary key: path >= prefix AND path < prefix+0xFF...
	rows, err := s.db.QueryContext(ctx, `SELECT path FROM kv_metadata WHERE mount = $1 AND path >= $2 AND path < $3 ORDER BY path`,
		mount, prefix, prefix+"\U0010FFFF")
	if err != nil {
		return nil, fmt.Errorf("store: list kv: %w", err)
	}
	defer rows.Close()
	out := []string{}
	seen := map[string]bool{}
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		rest := strings.TrimPrefix(p, prefix)
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[:i+1]
		}
		if rest == "" || seen[rest] {
			continue
		}
		seen[rest] = true
		out = append(out, rest)
		if len(out) >= limit {
			break
		}
	}
	return out, rows.Err()
}

// CompactFreed makes erased data leave the store's files where the engine
// allows: SQLite (run with secure_delete, which zeroes freed content)
// checkpoints its write-ahead log into the main file and truncates it, so
// the old pages holding destroyed values are overwritten. PostgreSQL keeps
// dead row versions until VACUUM; the values there are sealed.
func (s *DB) CompactFreed(ctx context.Context) error {
	if s.dialect != SQLite {
		return nil
	}
	_, err := s.db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
	return err
}

// Lease is a dynamic secret handed out with a lifetime.
type Lease struct {
	ID            string
	Path          string // the path it was read from: database/creds/ROLE
	Kind          string // "database"
	TokenAccessor string
	SPIFFEID      string // the identity behind the lease; "" for AppRole and admin tokens
	// CAAuthority is the CA authority of the SVID behind the lease (the
	// token's CAAuthority, or the mTLS identity's issuer); "" for none.
	CAAuthority string
	Sealed      []byte // what revocation needs, sealed
	Renewable   bool
	IssuedAt    time.Time
	ExpiresAt   time.Time
	MaxExpires  time.Time
	// RevokeRequestedAt is set once revocation was asked for (or the lease
	// expired and revocation began); the lease stays until revocation
	// succeeds.
	RevokeRequestedAt time.Time
	Attempts          int64
	NextAttemptAt     time.Time
	LastError         string
}

const leaseCols = "id, path, kind, token_accessor, spiffe_id, sealed, renewable, issued_at, expires_at, max_expires_at, revoke_requested_at, attempts, next_attempt_at, last_error, ca_authority"

func scanLease(r interface{ Scan(...any) error }) (Lease, error) {
	var l Lease
	var renew int
	var iss, exp, maxExp, req, next int64
	err := r.Scan(&l.ID, &l.Path, &l.Kind, &l.TokenAccessor, &l.SPIFFEID, &l.Sealed, &renew, &iss, &exp, &maxExp, &req, &l.Attempts, &next, &l.LastError, &l.CAAuthority)
	if errors.Is(err, sql.ErrNoRows) {
		return l, fmt.Errorf("%w: lease", ErrNotFound)
	}
	if err != nil {
		return l, fmt.Errorf("store: read lease: %w", err)
	}
	l.Renewable = renew != 0
	l.IssuedAt, l.ExpiresAt, l.MaxExpires, l.RevokeRequestedAt, l.NextAttemptAt = fromNS(iss), fromNS(exp), fromNS(maxExp), fromNS(req), fromNS(next)
	return l, nil
}

// CreateLease stores a lease.
func (s *DB) CreateLease(ctx context.Context, q Queryer, l Lease) error {
	_, err := q.ExecContext(ctx, `INSERT INTO secrets_leases (`+leaseCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
		l.ID, l.Path, l.Kind, l.TokenAccessor, l.SPIFFEID, l.Sealed, boolInt(l.Renewable), ns(l.IssuedAt), ns(l.ExpiresAt), ns(l.MaxExpires),
		ns(l.RevokeRequestedAt), l.Attempts, ns(l.NextAttemptAt), l.LastError, l.CAAuthority)
	if err != nil {
		return fmt.Errorf("store: create lease: %w", err)
	}
	return nil
}

// LeaseByID reads a lease (locked with lock).
func (s *DB) LeaseByID(ctx context.Context, q Queryer, id string, lock bool) (Lease, error) {
	query := "SELECT " + leaseCols + " FROM secrets_leases WHERE id = $1"
	if lock {
		query += s.forUpdate()
	}
	return scanLease(q.QueryRowContext(ctx, query, id))
}

// RenewLease sets a lease's expiry.
func (s *DB) RenewLease(ctx context.Context, q Queryer, id string, expires time.Time) error {
	_, err := q.ExecContext(ctx, "UPDATE secrets_leases SET expires_at = $1 WHERE id = $2 AND revoke_requested_at = 0", ns(expires), id)
	if err != nil {
		return fmt.Errorf("store: renew lease: %w", err)
	}
	return nil
}

// Leases lists leases whose id starts with prefix, or that belong to the
// token with accessor when prefix is "" and accessor is not.
func (s *DB) Leases(ctx context.Context, prefix, accessor string, limit int) ([]Lease, error) {
	if accessor != "" {
		return s.TokenLeases(ctx, s.db, accessor, limit)
	}
	rows, err := s.db.QueryContext(ctx, "SELECT "+leaseCols+" FROM secrets_leases WHERE id >= $1 AND id < $2 ORDER BY id LIMIT $3",
		prefix, prefix+"\U0010FFFF", limit)
	return scanLeases(rows, err)
}

// TokenLeases lists the leases of the token with accessor, read through
// q (a revocation's transaction, after it deleted the token).
func (s *DB) TokenLeases(ctx context.Context, q Queryer, accessor string, limit int) ([]Lease, error) {
	rows, err := q.QueryContext(ctx, "SELECT "+leaseCols+" FROM secrets_leases WHERE token_accessor = $1 ORDER BY id LIMIT $2", accessor, limit)
	return scanLeases(rows, err)
}

func scanLeases(rows *sql.Rows, err error) ([]Lease, error) {
	if err != nil {
		return nil, fmt.Errorf("store: list leases: %w", err)
	}
	defer rows.Close()
	out := []Lease{}
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// LeaseSPIFFEIDs lists the SPIFFE IDs that hold leases not yet being
// revoked.
func (s *DB) LeaseSPIFFEIDs(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT DISTINCT spiffe_id FROM secrets_leases WHERE spiffe_id != '' AND revoke_requested_at = 0")
	if err != nil {
		return nil, fmt.Errorf("store: lease identities: %w", err)
	}
	return scanStrings(rows)
}

// MarkLeasesOfToken asks for the revocation of every lease the token
// accessor obtained (keeping the time it was first asked for of a lease
// asked for already), however many, and returns how many it holds.
func (s *DB) MarkLeasesOfToken(ctx context.Context, q Queryer, accessor string, now time.Time) (int64, error) {
	res, err := q.ExecContext(ctx, `UPDATE secrets_leases SET revoke_requested_at = CASE WHEN revoke_requested_at = 0 THEN $1 ELSE revoke_requested_at END
		WHERE token_accessor = $2`, ns(now), accessor)
	if err != nil {
		return 0, fmt.Errorf("store: revoke leases of a token: %w", err)
	}
	return res.RowsAffected()
}

// MarkLeasesOfAuthority asks for the revocation of every lease obtained
// with an SVID of the CA authority id (CAAuthority).
func (s *DB) MarkLeasesOfAuthority(ctx context.Context, q Queryer, id string, now time.Time) (int64, error) {
	res, err := q.ExecContext(ctx, "UPDATE secrets_leases SET revoke_requested_at = $1 WHERE ca_authority = $2 AND revoke_requested_at = 0", ns(now), id)
	if err != nil {
		return 0, fmt.Errorf("store: revoke leases of CA authority %s: %w", id, err)
	}
	return res.RowsAffected()
}

// MarkLeasesOfSPIFFEID asks for the revocation of every lease of id.
func (s *DB) MarkLeasesOfSPIFFEID(ctx context.Context, q Queryer, id string, now time.Time) (int64, error) {
	res, err := q.ExecContext(ctx, "UPDATE secrets_leases SET revoke_requested_at = $1 WHERE spiffe_id = $2 AND revoke_requested_at = 0", ns(now), id)
	if err != nil {
		return 0, fmt.Errorf("store: revoke leases of %s: %w", id, err)
	}
	return res.RowsAffected()
}

// DueLeases lists leases that must be revoked at now: expired, or whose
// revocation was asked for, and whose next attempt is due.
func (s *DB) DueLeases(ctx context.Context, now time.Time, limit int) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+leaseCols+` FROM secrets_leases
		WHERE (expires_at <= $1 OR revoke_requested_at > 0) AND next_attempt_at <= $1 ORDER BY expires_at LIMIT $2`, ns(now), limit)
	if err != nil {
		return nil, fmt.Errorf("store: due leases: %w", err)
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// MarkLeaseRevoking records that revocation of a lease was asked for at now.
func (s *DB) MarkLeaseRevoking(ctx context.Context, q Queryer, id string, now time.Time) error {
	_, err := q.ExecContext(ctx, "UPDATE secrets_leases SET revoke_requested_at = $1 WHERE id = $2 AND revoke_requested_at = 0", ns(now), id)
	if err != nil {
		return fmt.Errorf("store: revoke lease: %w", err)
	}
	return nil
}

// LeaseRevokeFailed records a failed revocation attempt and when to retry.
func (s *DB) LeaseRevokeFailed(ctx context.Context, id string, attempts int64, next time.Time, msg string) error {
	_, err := s.db.ExecContext(ctx, "UPDATE secrets_leases SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4",
		attempts, ns(next), msg, id)
	if err != nil {
		return fmt.Errorf("store: record lease failure: %w", err)
	}
	return nil
}

// DeleteLease removes a revoked lease; ErrNotFound when it is gone already
// (another replica revoked it first).
func (s *DB) DeleteLease(ctx context.Context, q Queryer, id string) error {
	res, err := q.ExecContext(ctx, "DELETE FROM secrets_leases WHERE id = $1", id)
	if err != nil {
		return fmt.Errorf("store: delete lease: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: lease %s", ErrNotFound, id)
	}
	return nil
}
