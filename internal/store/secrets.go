package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The secrets service's storage (internal/secrets). Values arrive here
// sealed by the secrets barrier; this file never sees a plaintext secret,
// only hashes of tokens and secret IDs.

// SecretsKeyring returns the sealed keyring and its KDF JSON, or
// ErrNotFound before the secrets service was first unsealed.
func (s *DB) SecretsKeyring(ctx context.Context) (sealed []byte, kdf string, err error) {
	err = s.db.QueryRowContext(ctx, "SELECT sealed, kdf FROM secrets_keyring WHERE id = 1").Scan(&sealed, &kdf)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", ErrNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("store: read secrets keyring: %w", err)
	}
	return sealed, kdf, nil
}

// CreateSecretsKeyring stores the first keyring unless one exists; it
// reports whether it stored it (replicas starting together agree on one).
func (s *DB) CreateSecretsKeyring(ctx context.Context, sealed []byte, kdf string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `INSERT INTO secrets_keyring (id, sealed, kdf, updated_at) VALUES (1, $1, $2, $3)
		ON CONFLICT (id) DO NOTHING`, sealed, kdf, ns(s.now()))
	if err != nil {
		return false, fmt.Errorf("store: create secrets keyring: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// SecretsObject is an engine's configuration object (an AppRole, a transit
// key, a database connection, ...). Spec is JSON; Sealed is the barrier's
// blob of its secret part, if any.
type SecretsObject struct {
	Kind      string
	Name      string
	Lookup    string // unique within Kind when set (an AppRole's role_id)
	Spec      json.RawMessage
	Sealed    []byte
	CreatedAt time.Time
	UpdatedAt time.Time
}

// SecretsObject reads one object; with lock it takes the row lock inside
// a transaction (PostgreSQL) so a read-modify-write is not interleaved.
func (s *DB) SecretsObject(ctx context.Context, q Queryer, kind, name string, lock bool) (SecretsObject, error) {
	query := "SELECT kind, name, lookup, spec, sealed, created_at, updated_at FROM secrets_objects WHERE kind = $1 AND name = $2"
	if lock {
		query += s.forUpdate()
	}
	return scanSecretsObject(q.QueryRowContext(ctx, query, kind, name))
}

// SecretsObjectByLookup finds an object by its lookup key.
func (s *DB) SecretsObjectByLookup(ctx context.Context, kind, lookup string) (SecretsObject, error) {
	return scanSecretsObject(s.db.QueryRowContext(ctx,
		"SELECT kind, name, lookup, spec, sealed, created_at, updated_at FROM secrets_objects WHERE kind = $1 AND lookup = $2", kind, lookup))
}

func scanSecretsObject(r *sql.Row) (SecretsObject, error) {
	var o SecretsObject
	var lookup sql.NullString
	var spec string
	var created, updated int64
	err := r.Scan(&o.Kind, &o.Name, &lookup, &spec, &o.Sealed, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return o, ErrNotFound
	}
	if err != nil {
		return o, fmt.Errorf("store: read secrets object: %w", err)
	}
	o.Lookup, o.Spec, o.CreatedAt, o.UpdatedAt = lookup.String, json.RawMessage(spec), fromNS(created), fromNS(updated)
	return o, nil
}

// PutSecretsObject creates or replaces an object (keeping its creation
// time). A Lookup taken by another object of the kind is ErrConflict.
func (s *DB) PutSecretsObject(ctx context.Context, q Queryer, o SecretsObject) error {
	now := ns(s.now())
	var lookup any
	if o.Lookup != "" {
		lookup = o.Lookup
	}
	_, err := q.ExecContext(ctx, `INSERT INTO secrets_objects (kind, name, lookup, spec, sealed, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $6)
		ON CONFLICT (kind, name) DO UPDATE SET lookup = excluded.lookup, spec = excluded.spec, sealed = excluded.sealed, updated_at = excluded.updated_at`,
		o.Kind, o.Name, lookup, string(o.Spec), o.Sealed, now)
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: %s lookup key in use", ErrConflict, o.Kind)
	}
	if err != nil {
		return fmt.Errorf("store: write %s %s: %w", o.Kind, o.Name, err)
	}
	return nil
}

// DeleteSecretsObject deletes an object; ErrNotFound if absent.
func (s *DB) DeleteSecretsObject(ctx context.Context, q Queryer, kind, name string) error {
	res, err := q.ExecContext(ctx, "DELETE FROM secrets_objects WHERE kind = $1 AND name = $2", kind, name)
	if err != nil {
		return fmt.Errorf("store: delete %s %s: %w", kind, name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s %q", ErrNotFound, kind, name)
	}
	return nil
}

// SecretsObjectNames lists the names of a kind, sorted.
func (s *DB) SecretsObjectNames(ctx context.Context, kind string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT name FROM secrets_objects WHERE kind = $1 ORDER BY name", kind)
	if err != nil {
		return nil, fmt.Errorf("store: list %s: %w", kind, err)
	}
	return scanStrings(rows)
}

// scanStrings reads a one-column result of strings and closes rows.
func scanStrings(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// SecretsToken is a client token of the secrets service, by accessor.
// Only the SHA-256 of the token is stored.
type SecretsToken struct {
	Accessor    string
	Hash        []byte
	Subject     string // who it stands for: spiffe://..., approle:NAME, jwt:ROLE, admin
	DisplayName string
	Policies    []string
	Meta        map[string]string
	TTL         time.Duration
	Renewable   bool
	NumUses     int64 // remaining uses; 0 unlimited
	// BoundCIDRs, when not empty, are the only client addresses the
	// token may be used from.
	BoundCIDRs []string
	CreatedAt  time.Time
	ExpiresAt  time.Time
	MaxExpires time.Time
	// Parent is the accessor of the token that created this one; ""
	// for an orphan. Revoking the parent revokes it.
	Parent string
	// CreatorSPIFFEID is the SPIFFE ID of the workload that created the
	// token, directly over mTLS or through a token of its own (inherited
	// down a tree), "" when none did: revoking that ID ends the token.
	CreatorSPIFFEID string
	// CAAuthority is the ID of the CA authority that signed the SVID the
	// token was obtained with (inherited down a tree), "" for none:
	// revoking that authority ends the token.
	CAAuthority string
}

// CreateSecretsToken stores a new token.
func (s *DB) CreateSecretsToken(ctx context.Context, q Queryer, t SecretsToken) error {
	pol, _ := json.Marshal(t.Policies)
	meta, _ := json.Marshal(t.Meta)
	cidrs := []byte("[]")
	if len(t.BoundCIDRs) > 0 {
		cidrs, _ = json.Marshal(t.BoundCIDRs)
	}
	_, err := q.ExecContext(ctx, `INSERT INTO secrets_tokens (accessor, token_hash, subject, display_name, policies, meta, ttl, renewable,
		num_uses, created_at, expires_at, max_expires_at, bound_cidrs, parent_accessor, creator_spiffe_id, ca_authority) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
		t.Accessor, t.Hash, t.Subject, t.DisplayName, string(pol), string(meta), int64(t.TTL), boolInt(t.Renewable), t.NumUses,
		ns(t.CreatedAt), ns(t.ExpiresAt), ns(t.MaxExpires), string(cidrs), t.Parent, t.CreatorSPIFFEID, t.CAAuthority)
	if err != nil {
		return fmt.Errorf("store: create token: %w", err)
	}
	return nil
}

const tokenCols = "accessor, token_hash, subject, display_name, policies, meta, ttl, renewable, num_uses, created_at, expires_at, max_expires_at, bound_cidrs, parent_accessor, creator_spiffe_id, ca_authority"

// SecretsTokenByHash finds a token by the SHA-256 of its value.
func (s *DB) SecretsTokenByHash(ctx context.Context, hash []byte) (SecretsToken, error) {
	return scanToken(s.db.QueryRowContext(ctx, "SELECT "+tokenCols+" FROM secrets_tokens WHERE token_hash = $1", hash))
}

// SecretsTokenByAccessor finds a token by accessor.
func (s *DB) SecretsTokenByAccessor(ctx context.Context, q Queryer, accessor string) (SecretsToken, error) {
	return scanToken(q.QueryRowContext(ctx, "SELECT "+tokenCols+" FROM secrets_tokens WHERE accessor = $1", accessor))
}

func scanToken(r *sql.Row) (SecretsToken, error) {
	var t SecretsToken
	var pol, meta, cidrs string
	var ttl, renew, created, exp, maxExp int64
	err := r.Scan(&t.Accessor, &t.Hash, &t.Subject, &t.DisplayName, &pol, &meta, &ttl, &renew, &t.NumUses, &created, &exp, &maxExp, &cidrs, &t.Parent, &t.CreatorSPIFFEID, &t.CAAuthority)
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("%w: token", ErrNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("store: read token: %w", err)
	}
	if err := json.Unmarshal([]byte(pol), &t.Policies); err != nil {
		return t, fmt.Errorf("store: token policies: %w", err)
	}
	if err := json.Unmarshal([]byte(meta), &t.Meta); err != nil {
		return t, fmt.Errorf("store: token meta: %w", err)
	}
	if err := json.Unmarshal([]byte(cidrs), &t.BoundCIDRs); err != nil {
		return t, fmt.Errorf("store: token bound CIDRs: %w", err)
	}
	t.TTL, t.Renewable = time.Duration(ttl), renew != 0
	t.CreatedAt, t.ExpiresAt, t.MaxExpires = fromNS(created), fromNS(exp), fromNS(maxExp)
	return t, nil
}

// UseSecretsToken spends one use of a use-limited token: the last use
// deletes it (the request it authorizes still runs, as in Vault) and asks
// for the revocation of the leases it obtained (revoke_requested_at set
// to now: the maintenance pass revokes them, DueLeases), as the end of
// any token does; its children, their parent gone, are revoked by that
// pass too (ExpiredSecretsTokens). A token with NumUses 0 is unlimited
// and untouched. ErrNotFound when it is gone, so concurrent requests can
// never spend more uses than it had.
func (s *DB) UseSecretsToken(ctx context.Context, accessor string, now time.Time) error {
	return s.Tx(ctx, func(tx *sql.Tx) error {
		var uses int64
		err := tx.QueryRowContext(ctx, "SELECT num_uses FROM secrets_tokens WHERE accessor = $1"+s.forUpdate(), accessor).Scan(&uses)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%w: token", ErrNotFound)
		case err != nil:
			return fmt.Errorf("store: use token: %w", err)
		case uses == 0:
			return nil
		case uses == 1:
			if _, err = tx.ExecContext(ctx, "DELETE FROM secrets_tokens WHERE accessor = $1", accessor); err == nil {
				_, err = s.MarkLeasesOfToken(ctx, tx, accessor, now)
			}
		default:
			_, err = tx.ExecContext(ctx, "UPDATE secrets_tokens SET num_uses = num_uses - 1 WHERE accessor = $1", accessor)
		}
		if err != nil {
			return fmt.Errorf("store: use token: %w", err)
		}
		return nil
	})
}

// RenewSecretsToken sets a token's expiry.
func (s *DB) RenewSecretsToken(ctx context.Context, q Queryer, accessor string, expires time.Time) error {
	res, err := q.ExecContext(ctx, "UPDATE secrets_tokens SET expires_at = $1 WHERE accessor = $2", ns(expires), accessor)
	if err != nil {
		return fmt.Errorf("store: renew token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: token", ErrNotFound)
	}
	return nil
}

// DeleteSecretsToken deletes a token; ErrNotFound if absent.
func (s *DB) DeleteSecretsToken(ctx context.Context, q Queryer, accessor string) error {
	res, err := q.ExecContext(ctx, "DELETE FROM secrets_tokens WHERE accessor = $1", accessor)
	if err != nil {
		return fmt.Errorf("store: revoke token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: token", ErrNotFound)
	}
	return nil
}

// ExpiredSecretsTokens lists the accessors of tokens expired at now, and
// of children whose parent is gone (used up), at most limit, for
// revocation with their leases.
func (s *DB) ExpiredSecretsTokens(ctx context.Context, now time.Time, limit int) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT accessor FROM secrets_tokens t WHERE expires_at <= $1
		OR (parent_accessor <> '' AND NOT EXISTS (SELECT 1 FROM secrets_tokens p WHERE p.accessor = t.parent_accessor))
		ORDER BY expires_at LIMIT $2`, ns(now), limit)
	if err != nil {
		return nil, fmt.Errorf("store: expired tokens: %w", err)
	}
	return scanStrings(rows)
}

// SecretsTokensOfAuthority lists at most limit accessors of tokens
// obtained with an SVID of the CA authority id (CAAuthority).
func (s *DB) SecretsTokensOfAuthority(ctx context.Context, id string, limit int) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT accessor FROM secrets_tokens WHERE ca_authority = $1 ORDER BY accessor LIMIT $2", id, limit)
	if err != nil {
		return nil, fmt.Errorf("store: tokens of a CA authority: %w", err)
	}
	return scanStrings(rows)
}

// LockSecretsToken holds the token accessor until tx ends (PostgreSQL:
// FOR UPDATE; SQLite's write transaction serializes writers already),
// so a revocation of it (DeleteSecretsTokenTree) either committed before
// (ErrNotFound) or waits for tx and then finds what tx wrote for the
// token: a child, a lease. alive is SecretsTokenChain's: the token and
// every token above it are there and unexpired at now.
func (s *DB) LockSecretsToken(ctx context.Context, tx *sql.Tx, accessor string, now time.Time, depthLimit int) (alive bool, err error) {
	_, alive, _, err = s.lockSecretsToken(ctx, tx, accessor, now, depthLimit)
	return alive, err
}

func (s *DB) lockSecretsToken(ctx context.Context, tx *sql.Tx, accessor string, now time.Time, depthLimit int) (depth int, alive bool, root string, err error) {
	var a string
	err = tx.QueryRowContext(ctx, "SELECT accessor FROM secrets_tokens WHERE accessor = $1"+s.forUpdate(), accessor).Scan(&a)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, "", fmt.Errorf("%w: token", ErrNotFound)
	}
	if err != nil {
		return 0, false, "", fmt.Errorf("store: lock token: %w", err)
	}
	return s.secretsTokenChain(ctx, tx, accessor, now, depthLimit)
}

// SecretsTokenParent is what LockSecretsTokenParent reads of a token
// about to get a child.
type SecretsTokenParent struct {
	// Depth is how many tokens the chain from the token up to its orphan
	// root holds (at most depthLimit+1).
	Depth int
	// Alive: every token of that chain is there and unexpired.
	Alive bool
	// Children is how many children the token has.
	Children int
	// TreeSize is how many tokens the tree of its orphan root holds, the
	// root included (counted up to treeLimit+1).
	TreeSize int
}

// LockSecretsTokenParent holds the token accessor (a parent about to get
// a child) until tx ends (LockSecretsToken), and reads its chain,
// children and tree. On PostgreSQL it also holds the tree (an advisory
// lock on its root) until tx ends, so the creations of children anywhere
// in one tree count it one after the other: each locking its own parent
// only, two at a tree's bound less one both counted it before the other
// committed, and both went in. An advisory lock, not the root's row: a
// revocation of the root deletes the tree's rows top down (the root
// first, then waiting for the parent) and would deadlock with a creation
// holding the parent and waiting for the root; no revocation takes the
// advisory lock.
func (s *DB) LockSecretsTokenParent(ctx context.Context, tx *sql.Tx, accessor string, now time.Time, depthLimit, treeLimit int) (SecretsTokenParent, error) {
	var p SecretsTokenParent
	var root string
	var err error
	if p.Depth, p.Alive, root, err = s.lockSecretsToken(ctx, tx, accessor, now, depthLimit); err != nil {
		return p, err
	}
	// The root is read again once its tree is locked: a revoke-orphan
	// above the parent meanwhile makes it the child of another root.
	for locked := ""; s.dialect == Postgres && p.Alive && root != locked; {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", tokenTreeLockKey(root)); err != nil {
			return p, fmt.Errorf("store: lock token tree: %w", err)
		}
		locked = root
		if p.Depth, p.Alive, root, err = s.secretsTokenChain(ctx, tx, accessor, now, depthLimit); err != nil {
			return p, err
		}
	}
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM secrets_tokens WHERE parent_accessor = $1", accessor).Scan(&p.Children); err != nil {
		return p, fmt.Errorf("store: count child tokens: %w", err)
	}
	if p.Alive {
		if p.TreeSize, err = secretsTokenTreeSize(ctx, tx, root, depthLimit, treeLimit+1); err != nil {
			return p, err
		}
	}
	return p, nil
}

// tokenTreeLockKey is the PostgreSQL advisory lock key of the token tree
// rooted at root: 64 bits of a SHA-256 of a name no other lock uses.
func tokenTreeLockKey(root string) int64 {
	h := sha256.Sum256([]byte("moatless secrets token tree\x00" + root))
	return int64(binary.BigEndian.Uint64(h[:8]))
}

// secretsTokenTreeSize counts the tokens of root's tree (root, its
// children, theirs, ... at most depthLimit+1 levels), stopping at limit:
// the cost of a count is bounded by the bound it checks.
func secretsTokenTreeSize(ctx context.Context, q Queryer, root string, depthLimit, limit int) (int, error) {
	var n int
	err := q.QueryRowContext(ctx, `WITH RECURSIVE tree(accessor, n) AS (
			SELECT accessor, 1 FROM secrets_tokens WHERE accessor = $1
			UNION ALL
			SELECT t.accessor, tree.n + 1 FROM secrets_tokens t JOIN tree ON t.parent_accessor = tree.accessor WHERE tree.n <= $2
		) SELECT COUNT(*) FROM (SELECT 1 FROM tree LIMIT $3) x`, root, depthLimit, limit).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("store: count token tree: %w", err)
	}
	return n, nil
}

// SecretsTokenChain walks from the token accessor up through its parents
// (at most limit+1 tokens) in one query. depth counts the tokens found;
// alive is true when the chain ends at an orphan within limit+1 tokens
// and each of them is unexpired at now.
func (s *DB) SecretsTokenChain(ctx context.Context, q Queryer, accessor string, now time.Time, limit int) (depth int, alive bool, err error) {
	depth, alive, _, err = s.secretsTokenChain(ctx, q, accessor, now, limit)
	return depth, alive, err
}

// secretsTokenChain is SecretsTokenChain; it also returns the accessor
// of the chain's top token (its orphan root when alive).
func (s *DB) secretsTokenChain(ctx context.Context, q Queryer, accessor string, now time.Time, limit int) (depth int, alive bool, root string, err error) {
	rows, err := q.QueryContext(ctx, `WITH RECURSIVE chain(accessor, parent_accessor, expires_at, n) AS (
			SELECT accessor, parent_accessor, expires_at, 1 FROM secrets_tokens WHERE accessor = $1
			UNION ALL
			SELECT t.accessor, t.parent_accessor, t.expires_at, c.n + 1 FROM secrets_tokens t JOIN chain c ON t.accessor = c.parent_accessor WHERE c.n <= $2
		) SELECT accessor, parent_accessor, expires_at, n FROM chain ORDER BY n`, accessor, limit)
	if err != nil {
		return 0, false, "", fmt.Errorf("store: token chain: %w", err)
	}
	defer rows.Close()
	alive = true
	top := "-"
	for rows.Next() {
		var (
			acc, parent string
			exp         int64
			n           int
		)
		if err := rows.Scan(&acc, &parent, &exp, &n); err != nil {
			return 0, false, "", fmt.Errorf("store: token chain: %w", err)
		}
		depth, top, root = n, parent, acc
		alive = alive && fromNS(exp).After(now)
	}
	if err := rows.Err(); err != nil {
		return 0, false, "", fmt.Errorf("store: token chain: %w", err)
	}
	return depth, alive && top == "", root, nil
}

// DeleteSecretsTokenTree deletes the token accessor and, unless
// orphanChildren, every token under it; with orphanChildren its children
// become orphans instead (Vault's revoke-orphan). The token goes first:
// a child being created under it (LockSecretsTokenParent) committed
// before, and is found here, or finds its parent gone. It returns the
// accessors deleted, accessor first; ErrNotFound if accessor is absent.
func (s *DB) DeleteSecretsTokenTree(ctx context.Context, tx *sql.Tx, accessor string, orphanChildren bool) ([]string, error) {
	if err := s.DeleteSecretsToken(ctx, tx, accessor); err != nil {
		return nil, err
	}
	if orphanChildren {
		if _, err := tx.ExecContext(ctx, "UPDATE secrets_tokens SET parent_accessor = '' WHERE parent_accessor = $1", accessor); err != nil {
			return nil, fmt.Errorf("store: orphan child tokens: %w", err)
		}
		return []string{accessor}, nil
	}
	out := []string{accessor}
	for i := 0; i < len(out); i++ {
		rows, err := tx.QueryContext(ctx, "DELETE FROM secrets_tokens WHERE parent_accessor = $1 RETURNING accessor", out[i])
		if err != nil {
			return nil, fmt.Errorf("store: revoke child tokens: %w", err)
		}
		kids, err := scanStrings(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, kids...)
	}
	return out, nil
}

// SecretID is an AppRole secret ID as stored: its hash, never its value.
type SecretID struct {
	Hash      []byte
	Accessor  string
	Role      string
	Spec      json.RawMessage // metadata, CIDR list, num_uses, ttl
	UsesLeft  int64           // 0: unlimited
	CreatedAt time.Time
	ExpiresAt time.Time // zero: never
}

// CreateSecretID stores a secret ID.
func (s *DB) CreateSecretID(ctx context.Context, q Queryer, x SecretID) error {
	_, err := q.ExecContext(ctx, `INSERT INTO secrets_secret_ids (id_hash, accessor, role, spec, uses_left, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, x.Hash, x.Accessor, x.Role, string(x.Spec), x.UsesLeft, ns(x.CreatedAt), ns(x.ExpiresAt))
	if err != nil {
		return fmt.Errorf("store: create secret id: %w", err)
	}
	return nil
}

const secretIDCols = "id_hash, accessor, role, spec, uses_left, created_at, expires_at"

func scanSecretID(r interface{ Scan(...any) error }) (SecretID, error) {
	var x SecretID
	var spec string
	var created, exp int64
	err := r.Scan(&x.Hash, &x.Accessor, &x.Role, &spec, &x.UsesLeft, &created, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return x, fmt.Errorf("%w: secret id", ErrNotFound)
	}
	if err != nil {
		return x, fmt.Errorf("store: read secret id: %w", err)
	}
	x.Spec, x.CreatedAt, x.ExpiresAt = json.RawMessage(spec), fromNS(created), fromNS(exp)
	return x, nil
}

// SecretIDByAccessor reads a secret ID by accessor.
func (s *DB) SecretIDByAccessor(ctx context.Context, role, accessor string) (SecretID, error) {
	return scanSecretID(s.db.QueryRowContext(ctx, "SELECT "+secretIDCols+" FROM secrets_secret_ids WHERE role = $1 AND accessor = $2", role, accessor))
}

// SecretIDAccessors lists a role's secret ID accessors.
func (s *DB) SecretIDAccessors(ctx context.Context, role string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT accessor FROM secrets_secret_ids WHERE role = $1 ORDER BY accessor", role)
	if err != nil {
		return nil, fmt.Errorf("store: list secret ids: %w", err)
	}
	return scanStrings(rows)
}

// ConsumeSecretID looks a secret ID up by hash inside tx, locked, and
// spends one use: the last use deletes it, so a use-limited secret ID can
// never be used more often than allowed, even by concurrent logins. An
// expired one is deleted and reported ErrNotFound.
func (s *DB) ConsumeSecretID(ctx context.Context, tx *sql.Tx, hash []byte, now time.Time) (SecretID, error) {
	x, err := scanSecretID(tx.QueryRowContext(ctx, "SELECT "+secretIDCols+" FROM secrets_secret_ids WHERE id_hash = $1"+s.forUpdate(), hash))
	if err != nil {
		return x, err
	}
	if !x.ExpiresAt.IsZero() && !now.Before(x.ExpiresAt) {
		tx.ExecContext(ctx, "DELETE FROM secrets_secret_ids WHERE id_hash = $1", hash)
		return x, fmt.Errorf("%w: secret id", ErrNotFound)
	}
	switch {
	case x.UsesLeft == 1:
		_, err = tx.ExecContext(ctx, "DELETE FROM secrets_secret_ids WHERE id_hash = $1", hash)
	case x.UsesLeft > 1:
		_, err = tx.ExecContext(ctx, "UPDATE secrets_secret_ids SET uses_left = uses_left - 1 WHERE id_hash = $1", hash)
	}
	if err != nil {
		return x, fmt.Errorf("store: spend secret id: %w", err)
	}
	return x, nil
}

// DeleteSecretIDs deletes a role's secret IDs: the one with accessor, or
// all when accessor is "". ErrNotFound when a named one is absent.
func (s *DB) DeleteSecretIDs(ctx context.Context, q Queryer, role, accessor string) error {
	if accessor == "" {
		_, err := q.ExecContext(ctx, "DELETE FROM secrets_secret_ids WHERE role = $1", role)
		return err
	}
	res, err := q.ExecContext(ctx, "DELETE FROM secrets_secret_ids WHERE role = $1 AND accessor = $2", role, accessor)
	if err != nil {
		return fmt.Errorf("store: delete secret id: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: secret id accessor", ErrNotFound)
	}
	return nil
}

// PruneSecrets drops expired secret IDs. Expired tokens are revoked by
// the service (with their leases), not pruned here.
func (s *DB) PruneSecrets(ctx context.Context, now time.Time) error {
	_, err := s.db.ExecContext(ctx, "DELETE FROM secrets_secret_ids WHERE expires_at > 0 AND expires_at <= $1", ns(now))
	if err != nil {
		return fmt.Errorf("store: prune secret ids: %w", err)
	}
	return nil
}
