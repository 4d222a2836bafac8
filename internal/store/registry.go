package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/wire"
)

// Registry errors that callers branch on, besides ErrNotFound/ErrConflict.
var (
	// ErrTokenUnknown: no join token has this hash.
	ErrTokenUnknown = errors.New("store: join token unknown")
	// ErrTokenUsed: the join token was consumed before.
	ErrTokenUsed = errors.New("store: join token already used")
	// ErrTokenExpired: the join token expired unused.
	ErrTokenExpired = errors.New("store: join token expired")
)

// SortSelectors returns the selectors in canonical order (type, then
// value), the order entries are stored and compared in.
func SortSelectors(sel []wire.Selector) []wire.Selector {
	out := slices.Clone(sel)
	slices.SortFunc(out, func(a, b wire.Selector) int {
		if c := strings.Compare(a.Type, b.Type); c != 0 {
			return c
		}
		return strings.Compare(a.Value, b.Value)
	})
	return out
}

// selectorsKey is the uniqueness key of a selector set: the hex SHA-256 of
// its canonical encoding (NUL cannot occur in a validated selector).
func selectorsKey(sorted []wire.Selector) string {
	h := sha256.New()
	for _, s := range sorted {
		h.Write([]byte(s.Type))
		h.Write([]byte{0})
		h.Write([]byte(s.Value))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// encodeEntry puts e's selectors in canonical order and makes nil labels
// empty, in place, and returns what InsertEntry and UpdateEntry store of
// them: the selectors and labels as JSON, and the selectors key that makes
// two entries with the same SPIFFE ID, parent and selector set conflict.
func encodeEntry(e *wire.Entry) (selJSON, labJSON []byte, key string, err error) {
	e.Selectors = SortSelectors(e.Selectors)
	if e.Labels == nil {
		e.Labels = map[string]string{}
	}
	if selJSON, err = json.Marshal(e.Selectors); err != nil {
		return nil, nil, "", fmt.Errorf("store: encode selectors: %w", err)
	}
	if labJSON, err = json.Marshal(e.Labels); err != nil {
		return nil, nil, "", fmt.Errorf("store: encode labels: %w", err)
	}
	return selJSON, labJSON, selectorsKey(e.Selectors), nil
}

// InsertEntry stores a new, already validated entry with e.ID chosen by the
// caller, revision 1 and created-at now, and bumps the entries version of
// its parent. It returns the stored entry. A second entry with the same
// SPIFFE ID, parent and selector set is ErrConflict.
func (s *DB) InsertEntry(ctx context.Context, tx *sql.Tx, e wire.Entry) (wire.Entry, error) {
	e.Revision = 1
	e.CreatedAt = s.now().UTC()
	selJSON, labJSON, key, err := encodeEntry(&e)
	if err != nil {
		return e, err
	}
	var exists string
	err = tx.QueryRowContext(ctx, "SELECT id FROM entries WHERE spiffe_id = $1 AND parent_id = $2 AND selectors_key = $3",
		e.SPIFFEID, e.ParentID, key).Scan(&exists)
	if err == nil {
		return e, fmt.Errorf("%w: entry %s has the same SPIFFE ID, parent and selectors", ErrConflict, exists)
	} else if !errors.Is(err, sql.ErrNoRows) {
		return e, fmt.Errorf("store: insert entry: %w", err)
	}
	v, err := s.BumpVersion(ctx, tx, SectionEntries)
	if err != nil {
		return e, err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO entries (id, spiffe_id, parent_id, selectors, selectors_key, x509_ttl, jwt_ttl,
		namespace, labels, revision, version, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$12)`,
		e.ID, e.SPIFFEID, e.ParentID, string(selJSON), key, int64(e.X509TTL), int64(e.JWTTTL),
		e.Namespace, string(labJSON), int64(e.Revision), int64(v), ns(e.CreatedAt))
	if isUniqueViolation(err) {
		return e, fmt.Errorf("%w: an entry with this id or the same SPIFFE ID, parent and selectors exists", ErrConflict)
	}
	if err != nil {
		return e, fmt.Errorf("store: insert entry: %w", err)
	}
	if err := bumpParents(ctx, tx, v, e.ParentID); err != nil {
		return e, err
	}
	return e, nil
}

// UpdateEntry replaces the entry with e.ID by e (already validated),
// keeping its id and creation time and incrementing its revision. With
// expectRevision > 0 the entry must still be at that revision (optimistic
// concurrency), else ErrConflict. Another entry with the same SPIFFE ID,
// parent and selectors is ErrConflict; a missing entry ErrNotFound. The
// entries versions of the old and the new parent are bumped.
func (s *DB) UpdateEntry(ctx context.Context, tx *sql.Tx, e wire.Entry, expectRevision uint64) (wire.Entry, error) {
	old, err := scanEntry(tx.QueryRowContext(ctx, entryCols+" FROM entries WHERE id = $1"+s.forUpdate(), e.ID))
	if err != nil {
		return e, err
	}
	if expectRevision > 0 && old.Revision != expectRevision {
		return e, fmt.Errorf("%w: entry %s is at revision %d, not %d (changed meanwhile: read it again)", ErrConflict, e.ID, old.Revision, expectRevision)
	}
	e.Revision = old.Revision + 1
	e.CreatedAt = old.CreatedAt
	selJSON, labJSON, key, err := encodeEntry(&e)
	if err != nil {
		return e, err
	}
	var other string
	err = tx.QueryRowContext(ctx, "SELECT id FROM entries WHERE spiffe_id = $1 AND parent_id = $2 AND selectors_key = $3 AND id <> $4",
		e.SPIFFEID, e.ParentID, key, e.ID).Scan(&other)
	if err == nil {
		return e, fmt.Errorf("%w: entry %s has the same SPIFFE ID, parent and selectors", ErrConflict, other)
	} else if !errors.Is(err, sql.ErrNoRows) {
		return e, fmt.Errorf("store: update entry: %w", err)
	}
	v, err := s.BumpVersion(ctx, tx, SectionEntries)
	if err != nil {
		return e, err
	}
	_, err = tx.ExecContext(ctx, `UPDATE entries SET spiffe_id = $1, parent_id = $2, selectors = $3, selectors_key = $4,
		x509_ttl = $5, jwt_ttl = $6, namespace = $7, labels = $8, revision = $9, version = $10, updated_at = $11 WHERE id = $12`,
		e.SPIFFEID, e.ParentID, string(selJSON), key, int64(e.X509TTL), int64(e.JWTTTL), e.Namespace, string(labJSON),
		int64(e.Revision), int64(v), ns(s.now()), e.ID)
	if isUniqueViolation(err) {
		return e, fmt.Errorf("%w: an entry with the same SPIFFE ID, parent and selectors exists", ErrConflict)
	}
	if err != nil {
		return e, fmt.Errorf("store: update entry: %w", err)
	}
	if len(e.Labels) == 0 {
		e.Labels = nil
	}
	parents := []string{e.ParentID}
	if old.ParentID != e.ParentID {
		parents = append(parents, old.ParentID)
	}
	return e, bumpParents(ctx, tx, v, parents...)
}

// DeleteEntry removes the entry with id and returns it; ErrNotFound if
// there is none.
func (s *DB) DeleteEntry(ctx context.Context, tx *sql.Tx, id string) (wire.Entry, error) {
	e, err := scanEntry(tx.QueryRowContext(ctx, entryCols+" FROM entries WHERE id = $1"+s.forUpdate(), id))
	if err != nil {
		return e, err
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM entries WHERE id = $1", id); err != nil {
		return e, fmt.Errorf("store: delete entry: %w", err)
	}
	v, err := s.BumpVersion(ctx, tx, SectionEntries)
	if err != nil {
		return e, err
	}
	return e, bumpParents(ctx, tx, v, e.ParentID)
}

const entryCols = "SELECT id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, namespace, labels, revision, created_at"

type rowScanner interface{ Scan(dest ...any) error }

func scanEntry(r rowScanner) (wire.Entry, error) {
	var (
		e                 wire.Entry
		sel, lab          string
		x509TTL, jwtTTL   int64
		revision, created int64
	)
	err := r.Scan(&e.ID, &e.SPIFFEID, &e.ParentID, &sel, &x509TTL, &jwtTTL, &e.Namespace, &lab, &revision, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return e, ErrNotFound
	}
	if err != nil {
		return e, fmt.Errorf("store: read entry: %w", err)
	}
	if err := json.Unmarshal([]byte(sel), &e.Selectors); err != nil {
		return e, fmt.Errorf("store: entry %s: corrupt selectors: %w", e.ID, err)
	}
	if err := json.Unmarshal([]byte(lab), &e.Labels); err != nil {
		return e, fmt.Errorf("store: entry %s: corrupt labels: %w", e.ID, err)
	}
	if len(e.Labels) == 0 {
		e.Labels = nil
	}
	e.X509TTL, e.JWTTTL = wire.Duration(x509TTL), wire.Duration(jwtTTL)
	e.Revision = uint64(revision)
	e.CreatedAt = fromNS(created)
	return e, nil
}

// Entry returns the entry with id, or ErrNotFound.
func (s *DB) Entry(ctx context.Context, id string) (wire.Entry, error) {
	return scanEntry(s.db.QueryRowContext(ctx, entryCols+" FROM entries WHERE id = $1", id))
}

// EntryFilter narrows ListEntries; zero fields match everything.
type EntryFilter struct {
	SPIFFEID  string
	ParentID  string
	Namespace string
	// Selector, when set, keeps entries that have this selector.
	Selector *wire.Selector
}

// ListEntries returns the entries matching f, ordered by SPIFFE ID then id.
func (s *DB) ListEntries(ctx context.Context, f EntryFilter) ([]wire.Entry, error) {
	q := entryCols + " FROM entries WHERE 1=1"
	var args []any
	add := func(col, v string) {
		if v != "" {
			args = append(args, v)
			q += fmt.Sprintf(" AND %s = $%d", col, len(args))
		}
	}
	add("spiffe_id", f.SPIFFEID)
	add("parent_id", f.ParentID)
	add("namespace", f.Namespace)
	q += " ORDER BY spiffe_id, id"
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: list entries: %w", err)
	}
	defer rows.Close()
	out := []wire.Entry{}
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, err
		}
		if f.Selector != nil && !slices.Contains(e.Selectors, *f.Selector) {
			continue
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// CountEntries returns the number of registration entries.
func (s *DB) CountEntries(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM entries").Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count entries: %w", err)
	}
	return n, nil
}

// JoinToken is a join token as stored: never the token itself, only its
// SHA-256 (which is not returned either).
type JoinToken struct {
	ID        string    `json:"id"`
	SPIFFEID  string    `json:"spiffe_id"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// UsedAt is when an agent consumed the token; zero while unused.
	UsedAt time.Time `json:"used_at,omitzero"`
	// Replace: the attestation with this token revokes every node SVID
	// issued for SPIFFEID before (SupersedeNodeSVIDs).
	Replace bool `json:"replace,omitempty"`
}

// InsertJoinToken stores a new token by its SHA-256 hash.
func (s *DB) InsertJoinToken(ctx context.Context, tx *sql.Tx, t JoinToken, hash [sha256.Size]byte) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO join_tokens (id, token_hash, spiffe_id, created_at, expires_at, used_at, replace_node)
		VALUES ($1, $2, $3, $4, $5, 0, $6)`, t.ID, hash[:], t.SPIFFEID, ns(t.CreatedAt), ns(t.ExpiresAt), boolInt(t.Replace))
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: join token id or hash collision", ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: insert join token: %w", err)
	}
	return nil
}

// ConsumeJoinToken marks the unused, unexpired token with this hash as used
// at now and returns it, in one statement: two agents racing with the same
// token cannot both succeed, on either engine. Otherwise it says why with
// ErrTokenUnknown, ErrTokenUsed or ErrTokenExpired and changes nothing.
//
// The lookup compares SHA-256 digests by index, never the token itself, so
// its timing reveals nothing an attacker can use to guess a token.
func (s *DB) ConsumeJoinToken(ctx context.Context, tx *sql.Tx, hash [sha256.Size]byte, now time.Time) (JoinToken, error) {
	var t JoinToken
	var created, expires, replace int64
	err := tx.QueryRowContext(ctx, `UPDATE join_tokens SET used_at = $1
		WHERE token_hash = $2 AND used_at = 0 AND expires_at > $1
		RETURNING id, spiffe_id, created_at, expires_at, replace_node`, ns(now), hash[:]).Scan(&t.ID, &t.SPIFFEID, &created, &expires, &replace)
	if err == nil {
		t.CreatedAt, t.ExpiresAt, t.UsedAt, t.Replace = fromNS(created), fromNS(expires), now.UTC(), replace != 0
		return t, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("store: consume join token: %w", err)
	}
	var used int64
	err = tx.QueryRowContext(ctx, "SELECT id, spiffe_id, expires_at, used_at FROM join_tokens WHERE token_hash = $1", hash[:]).
		Scan(&t.ID, &t.SPIFFEID, &expires, &used)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return JoinToken{}, ErrTokenUnknown
	case err != nil:
		return t, fmt.Errorf("store: consume join token: %w", err)
	case used != 0:
		t.UsedAt, t.ExpiresAt = fromNS(used), fromNS(expires)
		return t, ErrTokenUsed
	default:
		t.ExpiresAt = fromNS(expires)
		return t, ErrTokenExpired
	}
}

// JoinTokens lists tokens, newest first. With includeSpent false, used and
// expired tokens are left out.
func (s *DB) JoinTokens(ctx context.Context, includeSpent bool, now time.Time) ([]JoinToken, error) {
	q := "SELECT id, spiffe_id, created_at, expires_at, used_at, replace_node FROM join_tokens"
	var args []any
	if !includeSpent {
		q += " WHERE used_at = 0 AND expires_at > $1"
		args = append(args, ns(now))
	}
	rows, err := s.db.QueryContext(ctx, q+" ORDER BY created_at DESC, id", args...)
	if err != nil {
		return nil, fmt.Errorf("store: list join tokens: %w", err)
	}
	defer rows.Close()
	out := []JoinToken{}
	for rows.Next() {
		var t JoinToken
		var c, x, u, r int64
		if err := rows.Scan(&t.ID, &t.SPIFFEID, &c, &x, &u, &r); err != nil {
			return nil, fmt.Errorf("store: list join tokens: %w", err)
		}
		t.CreatedAt, t.ExpiresAt, t.UsedAt, t.Replace = fromNS(c), fromNS(x), fromNS(u), r != 0
		out = append(out, t)
	}
	return out, rows.Err()
}

// DeleteJoinToken removes the token with id (used or not); ErrNotFound if
// there is none.
func (s *DB) DeleteJoinToken(ctx context.Context, tx *sql.Tx, id string) (JoinToken, error) {
	var t JoinToken
	var c, x, u int64
	err := tx.QueryRowContext(ctx, "DELETE FROM join_tokens WHERE id = $1 RETURNING id, spiffe_id, created_at, expires_at, used_at", id).
		Scan(&t.ID, &t.SPIFFEID, &c, &x, &u)
	if errors.Is(err, sql.ErrNoRows) {
		return t, ErrNotFound
	}
	if err != nil {
		return t, fmt.Errorf("store: delete join token: %w", err)
	}
	t.CreatedAt, t.ExpiresAt, t.UsedAt = fromNS(c), fromNS(x), fromNS(u)
	return t, nil
}

// PruneJoinTokens deletes tokens that expired before before.
func (s *DB) PruneJoinTokens(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM join_tokens WHERE expires_at < $1", ns(before))
	if err != nil {
		return 0, fmt.Errorf("store: prune join tokens: %w", err)
	}
	return res.RowsAffected()
}

// Node is an attested agent and what it last acknowledged.
type Node struct {
	SPIFFEID      string    `json:"spiffe_id"`
	TokenID       string    `json:"join_token_id"`
	AttestedAt    time.Time `json:"attested_at"`
	Serial        string    `json:"serial"`
	NotAfter      time.Time `json:"svid_expires_at"`
	Component     string    `json:"component,omitempty"`
	AckedVersion  uint64    `json:"acked_version"`
	PolicyVersion uint64    `json:"policy_version"`
	LastAck       time.Time `json:"last_ack,omitzero"`
	LastSeen      time.Time `json:"last_seen"`
	RemoteAddr    string    `json:"remote_addr,omitempty"`
}

// UpsertAttestedNode records a (re-)attested node with its first SVID; a
// node attesting again with a new token keeps nothing of its past acks.
func (s *DB) UpsertAttestedNode(ctx context.Context, tx *sql.Tx, n Node) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO nodes (spiffe_id, token_id, attested_at, serial, not_after, component,
		acked_version, policy_version, last_ack, last_seen, remote_addr) VALUES ($1,$2,$3,$4,$5,'',0,0,0,$3,$6)
		ON CONFLICT (spiffe_id) DO UPDATE SET token_id = excluded.token_id, attested_at = excluded.attested_at,
		serial = excluded.serial, not_after = excluded.not_after, component = '', acked_version = 0,
		policy_version = 0, last_ack = 0, last_seen = excluded.last_seen, remote_addr = excluded.remote_addr`,
		n.SPIFFEID, n.TokenID, ns(n.AttestedAt), n.Serial, ns(n.NotAfter), n.RemoteAddr)
	if err != nil {
		return fmt.Errorf("store: record node: %w", err)
	}
	return nil
}

// SetNodeSVID records a renewed node SVID.
func (s *DB) SetNodeSVID(ctx context.Context, tx *sql.Tx, id, serial string, notAfter, now time.Time) error {
	res, err := tx.ExecContext(ctx, "UPDATE nodes SET serial = $1, not_after = $2, last_seen = $3 WHERE spiffe_id = $4",
		serial, ns(notAfter), ns(now), id)
	if err != nil {
		return fmt.Errorf("store: record node SVID: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// RecordAck stores what a node acknowledged. Versions never go backwards:
// a late, reordered ack does not undo a newer one.
func (s *DB) RecordAck(ctx context.Context, id, component string, version, policyVersion uint64, now time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE nodes SET component = $1,
		acked_version = CASE WHEN acked_version > $2 THEN acked_version ELSE $2 END,
		policy_version = CASE WHEN $3 = 0 OR policy_version > $3 THEN policy_version ELSE $3 END,
		last_ack = $4, last_seen = $4 WHERE spiffe_id = $5`, component, int64(version), int64(policyVersion), ns(now), id)
	if err != nil {
		return fmt.Errorf("store: record ack: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// TouchNode records that the node was heard from at now.
func (s *DB) TouchNode(ctx context.Context, id string, now time.Time) error {
	_, err := s.db.ExecContext(ctx, "UPDATE nodes SET last_seen = $1 WHERE spiffe_id = $2 AND last_seen < $1", ns(now), id)
	if err != nil {
		return fmt.Errorf("store: touch node: %w", err)
	}
	return nil
}

const nodeCols = `SELECT spiffe_id, token_id, attested_at, serial, not_after, component, acked_version, policy_version,
	last_ack, last_seen, remote_addr FROM nodes`

func scanNode(r rowScanner) (Node, error) {
	var n Node
	var att, na, la, ls, av, pv int64
	err := r.Scan(&n.SPIFFEID, &n.TokenID, &att, &n.Serial, &na, &n.Component, &av, &pv, &la, &ls, &n.RemoteAddr)
	if errors.Is(err, sql.ErrNoRows) {
		return n, ErrNotFound
	}
	if err != nil {
		return n, fmt.Errorf("store: read node: %w", err)
	}
	n.AttestedAt, n.NotAfter, n.LastAck, n.LastSeen = fromNS(att), fromNS(na), fromNS(la), fromNS(ls)
	n.AckedVersion, n.PolicyVersion = uint64(av), uint64(pv)
	return n, nil
}

// Node returns the attested node with this SPIFFE ID, or ErrNotFound.
func (s *DB) Node(ctx context.Context, id string) (Node, error) {
	return scanNode(s.db.QueryRowContext(ctx, nodeCols+" WHERE spiffe_id = $1", id))
}

// Nodes lists attested nodes by SPIFFE ID.
func (s *DB) Nodes(ctx context.Context) ([]Node, error) {
	return s.queryNodes(ctx, " ORDER BY spiffe_id")
}

// queryNodes lists the nodes that the rest of a SELECT (where, order,
// limit) picks; never nil.
func (s *DB) queryNodes(ctx context.Context, rest string, args ...any) ([]Node, error) {
	rows, err := s.db.QueryContext(ctx, nodeCols+rest, args...)
	if err != nil {
		return nil, fmt.Errorf("store: list nodes: %w", err)
	}
	defer rows.Close()
	out := []Node{}
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// SVID kinds recorded in the issued-certificates table.
const (
	SVIDKindNode     = "node"
	SVIDKindWorkload = "workload"
	SVIDKindServer   = "server"
	SVIDKindAdmin    = "admin"
)

// IssuedSVID is a certificate the server issued, kept until it expires.
type IssuedSVID struct {
	Serial   string    `json:"serial"`
	SPIFFEID string    `json:"spiffe_id"`
	Kind     string    `json:"kind"`
	EntryID  string    `json:"entry_id,omitempty"`
	IssuedTo string    `json:"issued_to,omitempty"`
	NotAfter time.Time `json:"not_after"`
	IssuedAt time.Time `json:"issued_at"`
}

// InsertSVIDs records issued certificates.
func (s *DB) InsertSVIDs(ctx context.Context, q Queryer, svids ...IssuedSVID) error {
	const chunk = 100
	for start := 0; start < len(svids); start += chunk {
		part := svids[start:min(start+chunk, len(svids))]
		args := make([]any, 0, len(part)*7)
		for _, v := range part {
			args = append(args, v.Serial, v.SPIFFEID, v.Kind, v.EntryID, v.IssuedTo, ns(v.NotAfter), ns(v.IssuedAt))
		}
		stmt := insertValues("INSERT INTO svids (serial, spiffe_id, kind, entry_id, issued_to, not_after, issued_at)", len(part), 7)
		if _, err := q.ExecContext(ctx, stmt, args...); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("%w: a serial was issued twice", ErrConflict)
			}
			return fmt.Errorf("store: record SVIDs: %w", err)
		}
	}
	return nil
}

// SVID returns the issued certificate with this serial, or ErrNotFound
// (never issued here, or pruned after expiry).
func (s *DB) SVID(ctx context.Context, serial string) (IssuedSVID, error) {
	var v IssuedSVID
	var na, ia int64
	err := s.db.QueryRowContext(ctx, "SELECT serial, spiffe_id, kind, entry_id, issued_to, not_after, issued_at FROM svids WHERE serial = $1", serial).
		Scan(&v.Serial, &v.SPIFFEID, &v.Kind, &v.EntryID, &v.IssuedTo, &na, &ia)
	if errors.Is(err, sql.ErrNoRows) {
		return v, ErrNotFound
	}
	if err != nil {
		return v, fmt.Errorf("store: read SVID: %w", err)
	}
	v.NotAfter, v.IssuedAt = fromNS(na), fromNS(ia)
	return v, nil
}

// PruneSVIDs forgets certificates that expired before before.
func (s *DB) PruneSVIDs(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM svids WHERE not_after < $1", ns(before))
	if err != nil {
		return 0, fmt.Errorf("store: prune SVIDs: %w", err)
	}
	return res.RowsAffected()
}

// CountNodes returns the number of attested nodes.
func (s *DB) CountNodes(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM nodes").Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count nodes: %w", err)
	}
	return n, nil
}

// SVIDs returns up to limit certificates the server issued that have not
// expired at now, soonest expiry first, and how many there are in all.
func (s *DB) SVIDs(ctx context.Context, now time.Time, limit int) ([]IssuedSVID, int, error) {
	var total int
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM svids WHERE not_after > $1", ns(now)).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("store: count SVIDs: %w", err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT serial, spiffe_id, kind, entry_id, issued_to, not_after, issued_at FROM svids
		WHERE not_after > $1 ORDER BY not_after, serial LIMIT $2`, ns(now), limit)
	if err != nil {
		return nil, 0, fmt.Errorf("store: list SVIDs: %w", err)
	}
	defer rows.Close()
	out := []IssuedSVID{}
	for rows.Next() {
		var v IssuedSVID
		var na, ia int64
		if err := rows.Scan(&v.Serial, &v.SPIFFEID, &v.Kind, &v.EntryID, &v.IssuedTo, &na, &ia); err != nil {
			return nil, 0, fmt.Errorf("store: list SVIDs: %w", err)
		}
		v.NotAfter, v.IssuedAt = fromNS(na), fromNS(ia)
		out = append(out, v)
	}
	return out, total, rows.Err()
}
