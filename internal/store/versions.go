package store

import (
	"context"
	"database/sql"
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
func (s *DB) BumpVersion(ctx context.Context, tx *sql.Tx, sections ...Section) (uint64, error) {
	var v int64
	if err := tx.QueryRowContext(ctx, "UPDATE counters SET value = value + 1 WHERE name = 'version' RETURNING value").Scan(&v); err != nil {
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
