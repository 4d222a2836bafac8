package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// PolicyRef names a policy object: kind, namespace and name.
type PolicyRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (r PolicyRef) String() string {
	if r.Namespace == "" { // mesh-wide kinds: Rego modules and data
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// PolicyObject is a policy document as stored: its canonical JSON.
type PolicyObject struct {
	PolicyRef
	Raw json.RawMessage `json:"raw"`
}

// PolicyChange is one object's change in a version.
type PolicyChange struct {
	Op string `json:"op"` // create, update, delete
	PolicyRef
}

// PolicyVersion describes one version of the policy set.
type PolicyVersion struct {
	Version   uint64    `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	Actor     string    `json:"actor"`
	Action    string    `json:"action"` // apply, delete, rollback
	// SourceVersion is the version a rollback restored; 0 otherwise.
	SourceVersion uint64         `json:"source_version,omitempty"`
	Changes       []PolicyChange `json:"changes"`
	// Documents is how many objects are in force at this version.
	Documents int `json:"documents"`
}

// PolicyFamily names one versioned policy store: its object and version
// tables, its version counter and the watch section its changes bump.
// The mesh's Istio policies and the secrets service's access policies are
// two families kept by the same code.
type PolicyFamily struct {
	objects, versions, counter string
	section                    Section
}

// The policy families.
var (
	MeshPolicies    = PolicyFamily{"policy_objects", "policy_versions", "policy_version", SectionPolicies}
	SecretsPolicies = PolicyFamily{"secrets_policy_objects", "secrets_policy_versions", "secrets_policy_version", SectionSecretsPolicies}
)

// CurrentPolicyVersion is the latest mesh policy version (0: none yet).
func (s *DB) CurrentPolicyVersion(ctx context.Context, q Queryer) (uint64, error) {
	return s.CurrentPolicyVersionIn(ctx, q, MeshPolicies)
}

// CurrentPolicyVersionIn is the latest version of family f (0: none yet).
func (s *DB) CurrentPolicyVersionIn(ctx context.Context, q Queryer, f PolicyFamily) (uint64, error) {
	var v int64
	if err := q.QueryRowContext(ctx, "SELECT value FROM counters WHERE name = $1", f.counter).Scan(&v); err != nil {
		return 0, fmt.Errorf("store: read policy version: %w", err)
	}
	return uint64(v), nil
}

// PolicySet returns the objects in force at version (0: the current one),
// ordered by kind, namespace and name, with the version they are at.
// ErrNotFound for a version that does not exist.
func (s *DB) PolicySet(ctx context.Context, q Queryer, version uint64) (uint64, []PolicyObject, error) {
	return s.PolicySetIn(ctx, q, MeshPolicies, version)
}

// PolicySetIn is PolicySet for family f.
func (s *DB) PolicySetIn(ctx context.Context, q Queryer, f PolicyFamily, version uint64) (uint64, []PolicyObject, error) {
	cur, err := s.CurrentPolicyVersionIn(ctx, q, f)
	if err != nil {
		return 0, nil, err
	}
	if version == 0 {
		version = cur
	}
	if version > cur {
		return 0, nil, fmt.Errorf("%w: policy version %d (the latest is %d)", ErrNotFound, version, cur)
	}
	rows, err := q.QueryContext(ctx, `SELECT kind, namespace, name, raw FROM `+f.objects+`
		WHERE from_version <= $1 AND (to_version = 0 OR to_version > $1)
		ORDER BY kind, namespace, name`, int64(version))
	if err != nil {
		return 0, nil, fmt.Errorf("store: read policies: %w", err)
	}
	defer rows.Close()
	out := []PolicyObject{}
	for rows.Next() {
		var o PolicyObject
		var raw string
		if err := rows.Scan(&o.Kind, &o.Namespace, &o.Name, &raw); err != nil {
			return 0, nil, fmt.Errorf("store: read policies: %w", err)
		}
		o.Raw = json.RawMessage(raw)
		out = append(out, o)
	}
	return version, out, rows.Err()
}

// PolicyWrite is one change to apply: Raw nil deletes the object.
type PolicyWrite struct {
	PolicyRef
	Raw json.RawMessage
}

// WritePolicies applies writes as one new policy version inside tx: objects
// whose Raw equals what is in force are left alone; the rest are closed
// and/or opened at the new version. It returns the new version's record,
// or ErrNotFound if a delete names an object not in force. When nothing
// changes it returns the current version's number with no Changes and
// writes nothing. The global change version's policies section is bumped,
// so watch streams carry the new set.
func (s *DB) WritePolicies(ctx context.Context, tx *sql.Tx, actor, action string, sourceVersion uint64, writes []PolicyWrite, now time.Time) (PolicyVersion, error) {
	return s.WritePoliciesIn(ctx, tx, MeshPolicies, actor, action, sourceVersion, writes, now)
}

// WritePoliciesIn is WritePolicies for family f.
func (s *DB) WritePoliciesIn(ctx context.Context, tx *sql.Tx, f PolicyFamily, actor, action string, sourceVersion uint64, writes []PolicyWrite, now time.Time) (PolicyVersion, error) {
	pv := PolicyVersion{Actor: actor, Action: action, SourceVersion: sourceVersion, CreatedAt: now.UTC(), Changes: []PolicyChange{}}
	// Take the policy counter's row lock first: concurrent writers of the
	// policy set serialize here, so each sees the other's result.
	if _, err := tx.ExecContext(ctx, "UPDATE counters SET value = value WHERE name = $1", f.counter); err != nil {
		return pv, fmt.Errorf("store: lock policy version: %w", err)
	}
	cur, err := s.CurrentPolicyVersionIn(ctx, tx, f)
	if err != nil {
		return pv, err
	}
	type change struct {
		w      PolicyWrite
		op     string
		exists bool
	}
	var changes []change
	for _, w := range writes {
		var raw string
		err := tx.QueryRowContext(ctx, `SELECT raw FROM `+f.objects+` WHERE kind = $1 AND namespace = $2 AND name = $3 AND to_version = 0`,
			w.Kind, w.Namespace, w.Name).Scan(&raw)
		exists := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return pv, fmt.Errorf("store: read policy: %w", err)
		}
		switch {
		case w.Raw == nil && !exists:
			return pv, fmt.Errorf("%w: %s is not in force", ErrNotFound, w.PolicyRef)
		case w.Raw == nil:
			changes = append(changes, change{w, "delete", true})
		case !exists:
			changes = append(changes, change{w, "create", false})
		case raw != string(w.Raw):
			changes = append(changes, change{w, "update", true})
		}
	}
	if len(changes) == 0 {
		pv.Version = cur
		return pv, nil
	}
	var v int64
	if err := tx.QueryRowContext(ctx, "UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value", f.counter).Scan(&v); err != nil {
		return pv, fmt.Errorf("store: next policy version: %w", err)
	}
	pv.Version = uint64(v)
	for _, c := range changes {
		if c.exists {
			if _, err := tx.ExecContext(ctx, `UPDATE `+f.objects+` SET to_version = $1
				WHERE kind = $2 AND namespace = $3 AND name = $4 AND to_version = 0`, v, c.w.Kind, c.w.Namespace, c.w.Name); err != nil {
				return pv, fmt.Errorf("store: retire policy: %w", err)
			}
		}
		if c.w.Raw != nil {
			if _, err := tx.ExecContext(ctx, `INSERT INTO `+f.objects+` (kind, namespace, name, from_version, to_version, raw)
				VALUES ($1, $2, $3, $4, 0, $5)`, c.w.Kind, c.w.Namespace, c.w.Name, v, string(c.w.Raw)); err != nil {
				return pv, fmt.Errorf("store: write policy: %w", err)
			}
		}
		pv.Changes = append(pv.Changes, PolicyChange{Op: c.op, PolicyRef: c.w.PolicyRef})
	}
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+f.objects+" WHERE to_version = 0").Scan(&pv.Documents); err != nil {
		return pv, fmt.Errorf("store: count policies: %w", err)
	}
	chJSON, err := json.Marshal(pv.Changes)
	if err != nil {
		return pv, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+f.versions+` (version, created_at, actor, action, source_version, changes, documents)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, v, ns(pv.CreatedAt), actor, action, int64(sourceVersion), string(chJSON), pv.Documents); err != nil {
		return pv, fmt.Errorf("store: record policy version: %w", err)
	}
	if _, err := s.BumpVersion(ctx, tx, f.section); err != nil {
		return pv, err
	}
	return pv, nil
}

// PlannedChanges are the changes writes would make to the objects in
// force (by reference): what a dry run reports. Writes equal to what is in
// force are no change.
func PlannedChanges(current map[PolicyRef]PolicyObject, writes []PolicyWrite) []PolicyChange {
	out := []PolicyChange{}
	for _, w := range writes {
		old, exists := current[w.PolicyRef]
		switch {
		case w.Raw == nil:
			out = append(out, PolicyChange{Op: "delete", PolicyRef: w.PolicyRef})
		case !exists:
			out = append(out, PolicyChange{Op: "create", PolicyRef: w.PolicyRef})
		case string(old.Raw) != string(w.Raw):
			out = append(out, PolicyChange{Op: "update", PolicyRef: w.PolicyRef})
		}
	}
	return out
}

// PolicyHistory lists policy versions, newest first, at most limit, older
// than before (0: from the newest).
func (s *DB) PolicyHistory(ctx context.Context, before uint64, limit int) ([]PolicyVersion, error) {
	return s.PolicyHistoryIn(ctx, MeshPolicies, before, limit)
}

// PolicyHistoryIn is PolicyHistory for family f.
func (s *DB) PolicyHistoryIn(ctx context.Context, f PolicyFamily, before uint64, limit int) ([]PolicyVersion, error) {
	q := `SELECT version, created_at, actor, action, source_version, changes, documents FROM ` + f.versions
	args := []any{limit}
	if before > 0 {
		q += " WHERE version < $2"
		args = append(args, int64(before))
	}
	rows, err := s.db.QueryContext(ctx, q+" ORDER BY version DESC LIMIT $1", args...)
	if err != nil {
		return nil, fmt.Errorf("store: read policy history: %w", err)
	}
	defer rows.Close()
	out := []PolicyVersion{}
	for rows.Next() {
		var pv PolicyVersion
		var v, at, src int64
		var ch string
		if err := rows.Scan(&v, &at, &pv.Actor, &pv.Action, &src, &ch, &pv.Documents); err != nil {
			return nil, fmt.Errorf("store: read policy history: %w", err)
		}
		pv.Version, pv.CreatedAt, pv.SourceVersion = uint64(v), fromNS(at), uint64(src)
		if err := json.Unmarshal([]byte(ch), &pv.Changes); err != nil {
			return nil, fmt.Errorf("store: policy version %d: corrupt changes: %w", v, err)
		}
		out = append(out, pv)
	}
	return out, rows.Err()
}

// LockPolicies takes the policy writers' lock inside tx (the policy
// counter's row lock under PostgreSQL; SQLite's write lock is held from
// BEGIN already), so reading the current set, validating a change against
// it and writing it happen without another writer in between.
func (s *DB) LockPolicies(ctx context.Context, tx *sql.Tx) error {
	return s.LockPoliciesIn(ctx, tx, MeshPolicies)
}

// LockPoliciesIn is LockPolicies for family f.
func (s *DB) LockPoliciesIn(ctx context.Context, tx *sql.Tx, f PolicyFamily) error {
	if _, err := tx.ExecContext(ctx, "UPDATE counters SET value = value WHERE name = $1", f.counter); err != nil {
		return fmt.Errorf("store: lock policies: %w", err)
	}
	return nil
}
