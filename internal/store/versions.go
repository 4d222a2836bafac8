package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
)

// Section names a part of the watch stream. Each has its own version: the
// global version at which it last changed.
type Section string

// The sections of the watch stream. New sections (token revocations,
// secrets, ...) are new constants; nothing else in the store changes.
const (
	SectionBundle      Section = "bundle"
	SectionEntries     Section = "entries"
	SectionRevocations Section = "revocations"
	SectionPolicies    Section = "policies"
	// SectionRisk changes with the risk scores the watch stream carries
	// (PutRiskSection).
	SectionRisk Section = "risk"
	// SectionSecretsPolicies changes with the secrets service's access
	// policies; no watch stream carries it, replicas reload on it.
	SectionSecretsPolicies Section = "secrets_policies"
)

// BumpVersion increments the global change version inside tx and records
// it as the new version of each named section. It returns the new version.
//
// The increment is an UPDATE of one row, which PostgreSQL locks until the
// transaction ends: concurrent writers therefore commit in version order, so
// a reader that saw version v can never later see a commit with a version
// below v. Call it after the change's own statements and before appending
// the audit record, in every change transaction (one lock order for all).
//
// Under PostgreSQL the same statement queues a notification on
// ChangeChannel carrying the new version; PostgreSQL delivers it to every
// listening replica when (and only if) the transaction commits, in commit
// order, so each replica hears of each change the moment it is durable
// (FollowChanges) instead of at its next poll.
func (s *DB) BumpVersion(ctx context.Context, tx *sql.Tx, sections ...Section) (uint64, error) {
	var v int64
	q := "UPDATE counters SET value = value + 1 WHERE name = 'version' RETURNING value"
	if s.dialect == Postgres {
		// One round trip for the increment and the notification.
		q = `WITH v AS (UPDATE counters SET value = value + 1 WHERE name = 'version' RETURNING value)
			SELECT value FROM v, LATERAL (SELECT pg_notify('` + ChangeChannel + `', value::text)) n`
	}
	if err := tx.QueryRowContext(ctx, q).Scan(&v); err != nil {
		return 0, fmt.Errorf("store: bump version: %w", err)
	}
	for _, sec := range sections {
		if _, err := tx.ExecContext(ctx, `INSERT INTO section_versions (section, version) VALUES ($1, $2)
			ON CONFLICT (section) DO UPDATE SET version = excluded.version`, string(sec), v); err != nil {
			return 0, fmt.Errorf("store: bump version of %s: %w", sec, err)
		}
	}
	return uint64(v), nil
}

// bumpParents records version v as the entries version of each parent. v
// must be the version BumpVersion(SectionEntries) returned in the same
// transaction (see ParentVersion).
func bumpParents(ctx context.Context, tx *sql.Tx, v uint64, parents ...string) error {
	for _, p := range parents {
		if _, err := tx.ExecContext(ctx, `INSERT INTO parent_versions (parent_id, version) VALUES ($1, $2)
			ON CONFLICT (parent_id) DO UPDATE SET version = excluded.version`, p, int64(v)); err != nil {
			return fmt.Errorf("store: bump entries version of %s: %w", p, err)
		}
	}
	return nil
}

// Versions is a snapshot of the global version and each section's version.
// A section that never changed has version 0.
type Versions struct {
	Global   uint64
	Sections map[Section]uint64
}

// Versions reads the global and section versions.
func (s *DB) Versions(ctx context.Context) (Versions, error) {
	vs := Versions{Sections: map[Section]uint64{}}
	var g int64
	if err := s.db.QueryRowContext(ctx, "SELECT value FROM counters WHERE name = 'version'").Scan(&g); err != nil {
		return vs, fmt.Errorf("store: read version: %w", err)
	}
	vs.Global = uint64(g)
	rows, err := s.db.QueryContext(ctx, "SELECT section, version FROM section_versions")
	if err != nil {
		return vs, fmt.Errorf("store: read section versions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var sec string
		var v int64
		if err := rows.Scan(&sec, &v); err != nil {
			return vs, fmt.Errorf("store: read section versions: %w", err)
		}
		vs.Sections[Section(sec)] = uint64(v)
	}
	return vs, rows.Err()
}

// GlobalVersion reads the global change version alone (cheap: one row).
func (s *DB) GlobalVersion(ctx context.Context) (uint64, error) {
	var g int64
	if err := s.db.QueryRowContext(ctx, "SELECT value FROM counters WHERE name = 'version'").Scan(&g); err != nil {
		return 0, fmt.Errorf("store: read version: %w", err)
	}
	return uint64(g), nil
}

// ParentVersion is the global version at which the entries parented by
// parent last changed; 0 if they never did. It is never above the version
// of SectionEntries: every change that bumps a parent bumps the section in
// the same transaction, to the same version (watch streams rely on this to
// skip the query when the section has not moved).
func (s *DB) ParentVersion(ctx context.Context, parent string) (uint64, error) {
	var v int64
	err := s.db.QueryRowContext(ctx, "SELECT version FROM parent_versions WHERE parent_id = $1", parent).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: read entries version: %w", err)
	}
	return uint64(v), nil
}

// epochMetaKey is where the store keeps its epoch.
const epochMetaKey = "store_epoch"

// Epoch identifies the store's history of versions: watch clients resume
// from a version only within the epoch they saw it in. It is created at
// the first Open and survives restarts and "moatless store migrate" (the
// same history in another engine); restoring a backup gives the store a
// new one (NewEpoch), since versions after the backup's may repeat with
// other content.
func (s *DB) Epoch(ctx context.Context) (string, error) {
	return s.Meta(ctx, epochMetaKey)
}

// NewEpoch gives the store a fresh epoch through q: every watch client
// gets a complete snapshot on its next connection.
func (s *DB) NewEpoch(ctx context.Context, q Queryer) error {
	return s.SetMeta(ctx, q, epochMetaKey, newEpoch())
}

// ensureEpoch creates the epoch of a store that has none.
func (s *DB) ensureEpoch(ctx context.Context) error {
	_, err := s.SetMetaIfAbsent(ctx, s.db, epochMetaKey, newEpoch())
	return err
}

func newEpoch() string {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}
