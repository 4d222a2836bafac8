package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/token"
)

// OAuth is the token service's storage (token.Store) on this database.
// Get it with DB.OAuth.
type OAuth struct {
	db *DB
	// The client lookups run on every token request; preparing them once
	// saves SQLite re-parsing the statement each time (measured: a tenth
	// of the server's CPU per token).
	prepOnce       sync.Once
	byID, bySPIFFE *sql.Stmt
	prepErr        error
}

// oauthByDB keeps one OAuth (and its prepared statements) per DB.
var oauthByDB sync.Map // *DB → *OAuth

// OAuth returns the token.Store of this database: the same value on every
// call, so its prepared statements are made once.
func (s *DB) OAuth() *OAuth {
	if o, ok := oauthByDB.Load(s); ok {
		return o.(*OAuth)
	}
	o, _ := oauthByDB.LoadOrStore(s, &OAuth{db: s})
	return o.(*OAuth)
}

func (o *OAuth) prepare(ctx context.Context) error {
	o.prepOnce.Do(func() {
		if o.byID, o.prepErr = o.db.db.PrepareContext(ctx, "SELECT "+clientCols+" FROM oauth_clients WHERE id = $1"); o.prepErr != nil {
			return
		}
		o.bySPIFFE, o.prepErr = o.db.db.PrepareContext(ctx, "SELECT "+clientCols+" FROM oauth_clients WHERE spiffe_id = $1")
	})
	return o.prepErr
}

var _ token.Store = (*OAuth)(nil)

// q is where a statement runs: the transaction ctx carries (Atomically,
// WithTx), else the database. Under SQLite a statement outside the
// transaction would wait for the write lock the transaction holds.
func (o *OAuth) q(ctx context.Context) querier {
	if tx, ok := TxFrom(ctx); ok {
		return tx
	}
	return o.db.db
}

// tx runs fn in the transaction ctx carries, else in a new one.
func (o *OAuth) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	if tx, ok := TxFrom(ctx); ok {
		return fn(tx)
	}
	return o.db.Tx(ctx, fn)
}

// Atomically runs fn in one transaction: every method of o that fn calls
// with the context it is given runs in it, and so does the server's audit
// record of the change (it appends through audit.StoreSink.AppendTx on
// TxFrom(ctx)); it commits when fn returns nil and rolls everything back
// otherwise. Called inside another Atomically it joins that transaction.
// Under SQLite the transaction holds the database write lock throughout;
// under PostgreSQL (READ COMMITTED) the row locks its statements take are
// held until the end, which is what makes LockGrant's check hold.
func (o *OAuth) Atomically(ctx context.Context, fn func(ctx context.Context) error) error {
	if _, ok := TxFrom(ctx); ok {
		return fn(ctx)
	}
	return o.tx(ctx, func(tx *sql.Tx) error { return fn(WithTx(ctx, tx)) })
}

// kindError wraps both this package's sentinel and the token package's,
// so callers of either can branch with errors.Is.
type kindError struct {
	msg  string
	errs []error
}

func (e *kindError) Error() string   { return e.msg }
func (e *kindError) Unwrap() []error { return e.errs }

func oauthNotFound(what string) error {
	return &kindError{"store: oauth " + what + " not found", []error{ErrNotFound, token.ErrNotFound}}
}

func oauthConflict(what string) error {
	return &kindError{"store: oauth " + what, []error{ErrConflict, token.ErrConflict}}
}

func oauthReused(what string) error {
	return &kindError{"store: oauth " + what + " used before", []error{ErrConflict, token.ErrReused}}
}

func oerr(op string, err error) error { return fmt.Errorf("store: oauth %s: %w", op, err) }

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func fromUnix(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(v, 0).UTC()
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func jsonList(v []string) string {
	if len(v) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func parseList(s string) ([]string, error) {
	var v []string
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return nil, err
	}
	return v, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// rowsOne reports whether exactly one row changed.
func rowsOne(res sql.Result) (bool, error) {
	n, err := res.RowsAffected()
	return n == 1, err
}

// ---- clients

func (o *OAuth) CreateClient(ctx context.Context, c *token.Client) error {
	spec, err := json.Marshal(c.ClientSpec)
	if err != nil {
		return oerr("create client", err)
	}
	res, err := o.q(ctx).ExecContext(ctx, `INSERT INTO oauth_clients (id, name, spiffe_id, secret_hash, spec, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
		c.ID, c.Name, nullString(c.SPIFFEID), c.SecretHash, string(spec), unix(c.CreatedAt), unix(c.UpdatedAt))
	if err != nil {
		return oerr("create client", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("create client", err)
	} else if !ok {
		return oauthConflict("client: the ID, name or SPIFFE ID is taken")
	}
	return nil
}

const clientCols = `id, name, secret_hash, spec, created_at, updated_at, previous_secret_hash, previous_secret_until`

func scanClient(row interface{ Scan(...any) error }) (*token.Client, error) {
	var (
		c             token.Client
		spec          string
		created, u, p int64
	)
	if err := row.Scan(&c.ID, &c.Name, &c.SecretHash, &spec, &created, &u, &c.PreviousSecretHash, &p); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(spec), &c.ClientSpec); err != nil {
		return nil, fmt.Errorf("client %s: bad spec: %w", c.ID, err)
	}
	c.CreatedAt, c.UpdatedAt, c.PreviousSecretUntil = fromUnix(created), fromUnix(u), fromUnix(p)
	return &c, nil
}

func (o *OAuth) clientWhere(ctx context.Context, bySPIFFE bool, arg any) (*token.Client, error) {
	if err := o.prepare(context.WithoutCancel(ctx)); err != nil {
		return nil, oerr("prepare client lookup", err)
	}
	st := o.byID
	if bySPIFFE {
		st = o.bySPIFFE
	}
	if tx, ok := TxFrom(ctx); ok {
		st = tx.StmtContext(ctx, st)
		defer st.Close()
	}
	c, err := scanClient(st.QueryRowContext(ctx, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, oauthNotFound("client")
	}
	if err != nil {
		return nil, oerr("get client", err)
	}
	return c, nil
}

func (o *OAuth) Client(ctx context.Context, id string) (*token.Client, error) {
	return o.clientWhere(ctx, false, id)
}

func (o *OAuth) ClientBySPIFFEID(ctx context.Context, spiffeID string) (*token.Client, error) {
	return o.clientWhere(ctx, true, spiffeID)
}

func (o *OAuth) Clients(ctx context.Context) ([]*token.Client, error) {
	rows, err := o.q(ctx).QueryContext(ctx, "SELECT "+clientCols+" FROM oauth_clients ORDER BY name")
	if err != nil {
		return nil, oerr("list clients", err)
	}
	defer rows.Close()
	var out []*token.Client
	for rows.Next() {
		c, err := scanClient(rows)
		if err != nil {
			return nil, oerr("list clients", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, oerr("list clients", err)
	}
	return out, nil
}

func (o *OAuth) SetClientSecret(ctx context.Context, id string, hash []byte, previousUntil, at time.Time) error {
	// The previous hash is the current one (same statement, so two
	// concurrent rotations cannot lose it).
	res, err := o.q(ctx).ExecContext(ctx, `UPDATE oauth_clients SET previous_secret_hash = CASE WHEN $1 > 0 THEN secret_hash ELSE NULL END,
		previous_secret_until = $1, secret_hash = $2, updated_at = $3 WHERE id = $4`, unix(previousUntil), hash, unix(at), id)
	if err != nil {
		return oerr("set client secret", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("set client secret", err)
	} else if !ok {
		return oauthNotFound("client")
	}
	return nil
}

func (o *OAuth) DeleteClient(ctx context.Context, id string) error {
	res, err := o.q(ctx).ExecContext(ctx, "DELETE FROM oauth_clients WHERE id = $1", id)
	if err != nil {
		return oerr("delete client", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("delete client", err)
	} else if !ok {
		return oauthNotFound("client")
	}
	return nil
}

// ---- users

func (o *OAuth) CreateUser(ctx context.Context, u *token.User) error {
	spec, err := json.Marshal(u.UserSpec)
	if err != nil {
		return oerr("create user", err)
	}
	res, err := o.q(ctx).ExecContext(ctx, `INSERT INTO oauth_users (id, name, password_hash, totp_secret, totp_enabled, totp_last_step, spec, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
		u.ID, u.Name, u.PasswordHash, u.TOTPSecret, boolInt(u.TOTPEnabled), u.TOTPLastStep, string(spec), unix(u.CreatedAt), unix(u.UpdatedAt))
	if err != nil {
		return oerr("create user", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("create user", err)
	} else if !ok {
		return oauthConflict("user: the name is taken")
	}
	return nil
}

const userCols = `id, name, password_hash, totp_secret, totp_enabled, totp_last_step, spec, created_at, updated_at, sessions_epoch`

func scanUser(row interface{ Scan(...any) error }) (*token.User, error) {
	var (
		u          token.User
		enabled    int
		spec       string
		created, m int64
	)
	if err := row.Scan(&u.ID, &u.Name, &u.PasswordHash, &u.TOTPSecret, &enabled, &u.TOTPLastStep, &spec, &created, &m, &u.SessionsEpoch); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(spec), &u.UserSpec); err != nil {
		return nil, fmt.Errorf("user %s: bad spec: %w", u.ID, err)
	}
	u.TOTPEnabled = enabled != 0
	u.CreatedAt, u.UpdatedAt = fromUnix(created), fromUnix(m)
	return &u, nil
}

func (o *OAuth) userWhere(ctx context.Context, where string, arg any) (*token.User, error) {
	u, err := scanUser(o.q(ctx).QueryRowContext(ctx, "SELECT "+userCols+" FROM oauth_users WHERE "+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, oauthNotFound("user")
	}
	if err != nil {
		return nil, oerr("get user", err)
	}
	return u, nil
}

func (o *OAuth) User(ctx context.Context, name string) (*token.User, error) {
	return o.userWhere(ctx, "name = $1", name)
}

func (o *OAuth) UserByID(ctx context.Context, id string) (*token.User, error) {
	return o.userWhere(ctx, "id = $1", id)
}

// LockUser reads the user with a row lock (PostgreSQL: FOR UPDATE) held
// until the transaction ctx carries ends; under SQLite that transaction
// holds the write lock already. RevokeUserGrants updates the user's row
// first, so it and a login finishing under LockUser take turns.
func (o *OAuth) LockUser(ctx context.Context, id string) (*token.User, error) {
	if _, ok := TxFrom(ctx); !ok {
		return nil, oerr("lock user", errors.New("not inside Atomically"))
	}
	where := "id = $1"
	if o.db.dialect == Postgres {
		where += " FOR UPDATE"
	}
	return o.userWhere(ctx, where, id)
}

func (o *OAuth) Users(ctx context.Context) ([]*token.User, error) {
	rows, err := o.q(ctx).QueryContext(ctx, "SELECT "+userCols+" FROM oauth_users ORDER BY name")
	if err != nil {
		return nil, oerr("list users", err)
	}
	defer rows.Close()
	var out []*token.User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, oerr("list users", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, oerr("list users", err)
	}
	return out, nil
}

// UpdateUser writes the password hash and spec only. The TOTP columns
// are never written from a user read earlier: a password change racing an
// MFA enrolment would otherwise switch the new TOTP off again (and a reset
// would resurrect an old key). StartTOTP, EnableTOTP, UseTOTPStep and
// ResetTOTP change them, each in one conditional statement.
func (o *OAuth) UpdateUser(ctx context.Context, u *token.User) error {
	spec, err := json.Marshal(u.UserSpec)
	if err != nil {
		return oerr("update user", err)
	}
	res, err := o.q(ctx).ExecContext(ctx, `UPDATE oauth_users SET password_hash = $1, spec = $2, updated_at = $3 WHERE id = $4`,
		u.PasswordHash, string(spec), unix(u.UpdatedAt), u.ID)
	if err != nil {
		return oerr("update user", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("update user", err)
	} else if !ok {
		return oauthNotFound("user")
	}
	return nil
}

// StartTOTP stores a new pending (not enabled) TOTP key, but only while
// the user's TOTP is not enabled, in one conditional statement: an
// enrolment started as another one completes cannot overwrite the key just
// enabled. ErrTOTPEnabled when it is enabled (nothing changed).
func (o *OAuth) StartTOTP(ctx context.Context, userID string, sealed []byte, at time.Time) error {
	res, err := o.q(ctx).ExecContext(ctx, `UPDATE oauth_users SET totp_secret = $1, totp_enabled = 0, totp_last_step = 0, updated_at = $2
		WHERE id = $3 AND totp_enabled = 0`, sealed, unix(at), userID)
	if err != nil {
		return oerr("start totp", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("start totp", err)
	} else if !ok {
		var one int
		err := o.q(ctx).QueryRowContext(ctx, "SELECT 1 FROM oauth_users WHERE id = $1", userID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return oauthNotFound("user")
		}
		if err != nil {
			return oerr("start totp", err)
		}
		return &kindError{"store: oauth user has TOTP enabled already", []error{ErrConflict, token.ErrTOTPEnabled}}
	}
	return nil
}

// ResetTOTP turns the user's TOTP off, forgets the key and deletes the
// recovery codes, in one transaction. ErrNotFound for an unknown user.
func (o *OAuth) ResetTOTP(ctx context.Context, userID string, at time.Time) error {
	return o.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE oauth_users SET totp_secret = NULL, totp_enabled = 0, totp_last_step = 0, updated_at = $1 WHERE id = $2`,
			unix(at), userID)
		if err != nil {
			return oerr("reset totp", err)
		}
		if ok, err := rowsOne(res); err != nil {
			return oerr("reset totp", err)
		} else if !ok {
			return oauthNotFound("user")
		}
		return setRecoveryCodes(ctx, tx, userID, nil)
	})
}

func (o *OAuth) DeleteUser(ctx context.Context, name string) error {
	return o.tx(ctx, func(tx *sql.Tx) error {
		var id string
		err := tx.QueryRowContext(ctx, "SELECT id FROM oauth_users WHERE name = $1", name).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return oauthNotFound("user")
		}
		if err != nil {
			return oerr("delete user", err)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM oauth_recovery_codes WHERE user_id = $1", id); err != nil {
			return oerr("delete user", err)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM oauth_users WHERE id = $1", id); err != nil {
			return oerr("delete user", err)
		}
		return nil
	})
}

func (o *OAuth) UseTOTPStep(ctx context.Context, userID string, step int64) error {
	res, err := o.q(ctx).ExecContext(ctx, "UPDATE oauth_users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1", step, userID)
	if err != nil {
		return oerr("use totp step", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("use totp step", err)
	} else if !ok {
		return oauthConflict("totp code used before")
	}
	return nil
}

// EnableTOTP is one conditional UPDATE, and that condition is the check
// callers rely on: under SQLite the transaction holds the database write
// lock; under PostgreSQL (READ COMMITTED) a concurrent UPDATE of the row
// waits for the first to commit, re-evaluates "totp_enabled = 0" against
// the committed row and matches nothing. Either way exactly one of several
// concurrent enrolments changes the row, and only the winner replaces the
// recovery codes.
func (o *OAuth) EnableTOTP(ctx context.Context, userID string, sealed []byte, step int64, recoveryHashes [][]byte, at time.Time) error {
	return o.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE oauth_users SET totp_secret = $1, totp_enabled = 1, totp_last_step = $2, updated_at = $3
			WHERE id = $4 AND totp_enabled = 0`, sealed, step, unix(at), userID)
		if err != nil {
			return oerr("enable totp", err)
		}
		if ok, err := rowsOne(res); err != nil {
			return oerr("enable totp", err)
		} else if !ok {
			var one int
			err := tx.QueryRowContext(ctx, "SELECT 1 FROM oauth_users WHERE id = $1", userID).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return oauthNotFound("user")
			}
			if err != nil {
				return oerr("enable totp", err)
			}
			return &kindError{"store: oauth user has TOTP enabled already", []error{ErrConflict, token.ErrTOTPEnabled}}
		}
		return setRecoveryCodes(ctx, tx, userID, recoveryHashes)
	})
}

func (o *OAuth) SetRecoveryCodes(ctx context.Context, userID string, hashes [][]byte) error {
	return o.tx(ctx, func(tx *sql.Tx) error { return setRecoveryCodes(ctx, tx, userID, hashes) })
}

func setRecoveryCodes(ctx context.Context, tx *sql.Tx, userID string, hashes [][]byte) error {
	if _, err := tx.ExecContext(ctx, "DELETE FROM oauth_recovery_codes WHERE user_id = $1", userID); err != nil {
		return oerr("set recovery codes", err)
	}
	for _, h := range hashes {
		if _, err := tx.ExecContext(ctx, "INSERT INTO oauth_recovery_codes (user_id, code_hash) VALUES ($1, $2)", userID, h); err != nil {
			return oerr("set recovery codes", err)
		}
	}
	return nil
}

func (o *OAuth) UseRecoveryCode(ctx context.Context, userID string, hash []byte) error {
	res, err := o.q(ctx).ExecContext(ctx, "DELETE FROM oauth_recovery_codes WHERE user_id = $1 AND code_hash = $2", userID, hash)
	if err != nil {
		return oerr("use recovery code", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("use recovery code", err)
	} else if !ok {
		return oauthNotFound("recovery code")
	}
	return nil
}

func (o *OAuth) RecoveryCodesLeft(ctx context.Context, userID string) (int, error) {
	var n int
	if err := o.q(ctx).QueryRowContext(ctx, "SELECT COUNT(*) FROM oauth_recovery_codes WHERE user_id = $1", userID).Scan(&n); err != nil {
		return 0, oerr("count recovery codes", err)
	}
	return n, nil
}

// ---- signing keys

func (o *OAuth) SigningKeys(ctx context.Context) ([]*token.SigningKey, error) {
	rows, err := o.q(ctx).QueryContext(ctx, `SELECT kid, alg, sealed, public_jwk, created_at, activate_at, retire_at, expire_at
		FROM oauth_signing_keys ORDER BY activate_at, kid`)
	if err != nil {
		return nil, oerr("list signing keys", err)
	}
	defer rows.Close()
	var out []*token.SigningKey
	for rows.Next() {
		var (
			k          token.SigningKey
			c, a, r, e int64
		)
		if err := rows.Scan(&k.KID, &k.Alg, &k.Sealed, &k.Public, &c, &a, &r, &e); err != nil {
			return nil, oerr("list signing keys", err)
		}
		k.CreatedAt, k.ActivateAt, k.RetireAt, k.ExpireAt = fromUnix(c), fromUnix(a), fromUnix(r), fromUnix(e)
		out = append(out, &k)
	}
	if err := rows.Err(); err != nil {
		return nil, oerr("list signing keys", err)
	}
	return out, nil
}

func (o *OAuth) AddSigningKey(ctx context.Context, k *token.SigningKey) error {
	res, err := o.q(ctx).ExecContext(ctx, `INSERT INTO oauth_signing_keys (kid, alg, sealed, public_jwk, created_at, activate_at, retire_at, expire_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
		k.KID, k.Alg, k.Sealed, k.Public, unix(k.CreatedAt), unix(k.ActivateAt), unix(k.RetireAt), unix(k.ExpireAt))
	if err != nil {
		return oerr("add signing key", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("add signing key", err)
	} else if !ok {
		return oauthConflict("signing key id taken")
	}
	return nil
}

func (o *OAuth) RetireSigningKeys(ctx context.Context, at, expireBy time.Time) error {
	if _, err := o.q(ctx).ExecContext(ctx, `UPDATE oauth_signing_keys SET retire_at = $1,
		expire_at = CASE WHEN expire_at > $2 THEN $2 ELSE expire_at END
		WHERE activate_at <= $1 AND retire_at > $1`, unix(at), unix(expireBy)); err != nil {
		return oerr("retire signing keys", err)
	}
	return nil
}

func (o *OAuth) RevokeSigningKey(ctx context.Context, kid string) error {
	res, err := o.q(ctx).ExecContext(ctx, "DELETE FROM oauth_signing_keys WHERE kid = $1", kid)
	if err != nil {
		return oerr("revoke signing key", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("revoke signing key", err)
	} else if !ok {
		return oauthNotFound("signing key")
	}
	return nil
}

func (o *OAuth) DeleteSigningKeys(ctx context.Context, before time.Time) (int, error) {
	res, err := o.q(ctx).ExecContext(ctx, "DELETE FROM oauth_signing_keys WHERE expire_at < $1", unix(before))
	if err != nil {
		return 0, oerr("delete signing keys", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// ---- grants

func (o *OAuth) AddGrant(ctx context.Context, g *token.Grant) error {
	_, err := o.q(ctx).ExecContext(ctx, `INSERT INTO oauth_grants (id, client_id, user_id, scope, auth_time, amr, created_at, expires_at, revoked_at, audiences)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		g.ID, g.ClientID, g.UserID, jsonList(g.Scope), unix(g.AuthTime), jsonList(g.AMR), unix(g.CreatedAt), unix(g.ExpiresAt), unix(g.RevokedAt), jsonList(g.Audiences))
	if err != nil {
		return oerr("add grant", err)
	}
	return nil
}

func (o *OAuth) Grant(ctx context.Context, id string) (*token.Grant, error) {
	return o.grant(ctx, id, "")
}

// LockGrant reads the grant with a row lock (PostgreSQL: FOR UPDATE)
// held until the transaction ctx carries ends; under SQLite that
// transaction holds the database write lock already. RevokeGrant and
// RevokeUserGrants update the grant row before anything else of it, so
// they wait for this transaction, and everything it added to the grant
// (refresh tokens, token IDs) is visible to their later statements.
func (o *OAuth) LockGrant(ctx context.Context, id string) (*token.Grant, error) {
	if _, ok := TxFrom(ctx); !ok {
		return nil, oerr("lock grant", errors.New("not inside Atomically"))
	}
	suffix := ""
	if o.db.dialect == Postgres {
		suffix = " FOR UPDATE"
	}
	return o.grant(ctx, id, suffix)
}

func (o *OAuth) grant(ctx context.Context, id, suffix string) (*token.Grant, error) {
	var (
		g                 token.Grant
		scope, amr, auds  string
		at, c, exp, revok int64
	)
	err := o.q(ctx).QueryRowContext(ctx, `SELECT id, client_id, user_id, scope, auth_time, amr, created_at, expires_at, revoked_at, audiences
		FROM oauth_grants WHERE id = $1`+suffix, id).Scan(&g.ID, &g.ClientID, &g.UserID, &scope, &at, &amr, &c, &exp, &revok, &auds)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, oauthNotFound("grant")
	}
	if err != nil {
		return nil, oerr("get grant", err)
	}
	if g.Scope, err = parseList(scope); err != nil {
		return nil, oerr("get grant", err)
	}
	if g.AMR, err = parseList(amr); err != nil {
		return nil, oerr("get grant", err)
	}
	if g.Audiences, err = parseList(auds); err != nil {
		return nil, oerr("get grant", err)
	}
	g.AuthTime, g.CreatedAt, g.ExpiresAt, g.RevokedAt = fromUnix(at), fromUnix(c), fromUnix(exp), fromUnix(revok)
	return &g, nil
}

func (o *OAuth) RecordTokenID(ctx context.Context, grantID, jti string, exp time.Time) error {
	if _, err := o.q(ctx).ExecContext(ctx, "INSERT INTO oauth_grant_tokens (jti, grant_id, expires_at) VALUES ($1, $2, $3)", jti, grantID, unix(exp)); err != nil {
		return oerr("record token id", err)
	}
	return nil
}

func (o *OAuth) TokenGrant(ctx context.Context, jti string) (string, error) {
	var g string
	err := o.q(ctx).QueryRowContext(ctx, "SELECT grant_id FROM oauth_grant_tokens WHERE jti = $1", jti).Scan(&g)
	if errors.Is(err, sql.ErrNoRows) {
		return "", oauthNotFound("token id")
	}
	if err != nil {
		return "", oerr("token grant", err)
	}
	return g, nil
}

func (o *OAuth) RevokeGrant(ctx context.Context, grantID string, at time.Time) ([]token.RevokedToken, error) {
	var out []token.RevokedToken
	err := o.tx(ctx, func(tx *sql.Tx) error {
		out = nil
		if _, err := tx.ExecContext(ctx, "UPDATE oauth_grants SET revoked_at = $1 WHERE id = $2 AND revoked_at = 0", unix(at), grantID); err != nil {
			return oerr("revoke grant", err)
		}
		if _, err := tx.ExecContext(ctx, "UPDATE oauth_refresh_tokens SET revoked_at = $1 WHERE grant_id = $2 AND revoked_at = 0", unix(at), grantID); err != nil {
			return oerr("revoke grant", err)
		}
		rows, err := tx.QueryContext(ctx, "SELECT jti, expires_at FROM oauth_grant_tokens WHERE grant_id = $1 AND expires_at > $2", grantID, unix(at))
		if err != nil {
			return oerr("revoke grant", err)
		}
		var toks []token.RevokedToken
		for rows.Next() {
			var (
				jti string
				exp int64
			)
			if err := rows.Scan(&jti, &exp); err != nil {
				rows.Close()
				return oerr("revoke grant", err)
			}
			toks = append(toks, token.RevokedToken{JTI: jti, ExpiresAt: fromUnix(exp)})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return oerr("revoke grant", err)
		}
		for _, t := range toks {
			res, err := tx.ExecContext(ctx, "INSERT INTO oauth_revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
				t.JTI, unix(t.ExpiresAt), unix(at))
			if err != nil {
				return oerr("revoke grant", err)
			}
			if ok, _ := rowsOne(res); ok {
				out = append(out, t)
			}
		}
		return bumpIfRevoked(ctx, o.db, tx, len(out))
	})
	return out, err
}

// bumpIfRevoked moves the revocations section's version inside tx when n
// token IDs were newly listed (see RevokeTokenID).
func bumpIfRevoked(ctx context.Context, db *DB, tx *sql.Tx, n int) error {
	if n == 0 {
		return nil
	}
	_, err := db.BumpVersion(ctx, tx, SectionRevocations)
	return err
}

// RevokeUserGrants ends every session of the user in one transaction:
// their unrevoked grants and refresh tokens are marked revoked, their
// unredeemed authorization codes are deleted (a code issued a moment
// before cannot start a new session), and the unexpired access token IDs
// recorded under any of their grants go on the revoked list. It returns
// how many grants it revoked and the token IDs it newly listed.
func (o *OAuth) RevokeUserGrants(ctx context.Context, userID string, at time.Time) (int, []token.RevokedToken, error) {
	var (
		grants int
		out    []token.RevokedToken
	)
	err := o.tx(ctx, func(tx *sql.Tx) error {
		// The user first: the order in which a login (LockUser) locks
		// rows. Moving the epoch makes every login in progress stale
		// (token: finishLogin).
		if _, err := tx.ExecContext(ctx, "UPDATE oauth_users SET sessions_epoch = sessions_epoch + 1 WHERE id = $1", userID); err != nil {
			return oerr("revoke user grants", err)
		}
		var err error
		grants, out, err = o.revokeGrantsOf(ctx, tx, "user_id", userID, at)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	return grants, out, nil
}

// RevokeClientGrants ends every session a client was given, in one
// transaction, as RevokeUserGrants does for a user: the client's
// unredeemed codes, its grants and their refresh tokens, and the
// unexpired access token IDs recorded under them. It returns how many
// grants it revoked and the token IDs it newly listed.
func (o *OAuth) RevokeClientGrants(ctx context.Context, clientID string, at time.Time) (int, []token.RevokedToken, error) {
	var (
		grants int
		out    []token.RevokedToken
	)
	err := o.tx(ctx, func(tx *sql.Tx) error {
		var err error
		grants, out, err = o.revokeGrantsOf(ctx, tx, "client_id", clientID, at)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	return grants, out, nil
}

// revokeGrantsOf revokes the grants whose column (user_id or client_id)
// is id, in tx: codes, then grants, then refresh tokens, the order in
// which a redemption (code, then LockGrant) and a refresh (LockGrant,
// then its refresh token) lock rows, so none of them deadlocks with this
// under PostgreSQL.
func (o *OAuth) revokeGrantsOf(ctx context.Context, tx *sql.Tx, column, id string, at time.Time) (int, []token.RevokedToken, error) {
	what, ok := map[string]string{"user_id": "revoke user grants", "client_id": "revoke client grants"}[column]
	if !ok {
		return 0, nil, fmt.Errorf("store: revoke grants by %q", column)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM oauth_codes WHERE "+column+" = $1 AND used_at = 0", id); err != nil {
		return 0, nil, oerr(what, err)
	}
	res, err := tx.ExecContext(ctx, "UPDATE oauth_grants SET revoked_at = $1 WHERE "+column+" = $2 AND revoked_at = 0", unix(at), id)
	if err != nil {
		return 0, nil, oerr(what, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, nil, oerr(what, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE oauth_refresh_tokens SET revoked_at = $1
		WHERE revoked_at = 0 AND grant_id IN (SELECT id FROM oauth_grants WHERE `+column+` = $2)`, unix(at), id); err != nil {
		return 0, nil, oerr(what, err)
	}
	// Tokens of grants revoked earlier are listed already; ON CONFLICT
	// leaves them out of what RETURNING reports as new.
	rows, err := tx.QueryContext(ctx, `INSERT INTO oauth_revoked_tokens (jti, expires_at, revoked_at)
		SELECT t.jti, t.expires_at, $1 FROM oauth_grant_tokens t JOIN oauth_grants g ON g.id = t.grant_id
		WHERE g.`+column+` = $2 AND t.expires_at > $1
		ON CONFLICT DO NOTHING RETURNING jti, expires_at`, unix(at), id)
	if err != nil {
		return 0, nil, oerr(what, err)
	}
	defer rows.Close()
	var out []token.RevokedToken
	for rows.Next() {
		var (
			jti string
			exp int64
		)
		if err := rows.Scan(&jti, &exp); err != nil {
			return 0, nil, oerr(what, err)
		}
		out = append(out, token.RevokedToken{JTI: jti, ExpiresAt: fromUnix(exp)})
	}
	if err := rows.Err(); err != nil {
		return 0, nil, oerr(what, err)
	}
	if err := rows.Close(); err != nil {
		return 0, nil, oerr(what, err)
	}
	return int(n), out, bumpIfRevoked(ctx, o.db, tx, len(out))
}

// ---- authorization codes

func (o *OAuth) AddCode(ctx context.Context, c *token.AuthCode) error {
	_, err := o.q(ctx).ExecContext(ctx, `INSERT INTO oauth_codes (code_hash, grant_id, client_id, user_id, redirect_uri, scope, nonce, challenge,
		auth_time, amr, audiences, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0)`,
		c.Hash, c.GrantID, c.ClientID, c.UserID, c.RedirectURI, jsonList(c.Scope), c.Nonce, c.Challenge,
		unix(c.AuthTime), jsonList(c.AMR), jsonList(c.RequestedAuds), unix(c.CreatedAt), unix(c.ExpiresAt))
	if err != nil {
		return oerr("add code", err)
	}
	return nil
}

func (o *OAuth) ConsumeCode(ctx context.Context, hash []byte, want token.CodeRedemption, at time.Time) (*token.AuthCode, error) {
	// The checks are part of the one statement that consumes the code:
	// a presentation that does not match changes nothing.
	res, err := o.q(ctx).ExecContext(ctx, `UPDATE oauth_codes SET used_at = $1
		WHERE code_hash = $2 AND used_at = 0 AND client_id = $3 AND redirect_uri = $4 AND challenge = $5`,
		unix(at), hash, want.ClientID, want.RedirectURI, want.Challenge)
	if err != nil {
		return nil, oerr("consume code", err)
	}
	fresh, err := rowsOne(res)
	if err != nil {
		return nil, oerr("consume code", err)
	}
	var (
		c                    token.AuthCode
		scope, amr, auds     string
		authAt, cr, exp, use int64
	)
	err = o.q(ctx).QueryRowContext(ctx, `SELECT code_hash, grant_id, client_id, user_id, redirect_uri, scope, nonce, challenge,
		auth_time, amr, audiences, created_at, expires_at, used_at FROM oauth_codes WHERE code_hash = $1`, hash).
		Scan(&c.Hash, &c.GrantID, &c.ClientID, &c.UserID, &c.RedirectURI, &scope, &c.Nonce, &c.Challenge, &authAt, &amr, &auds, &cr, &exp, &use)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, oauthNotFound("code")
	}
	if err != nil {
		return nil, oerr("consume code", err)
	}
	for _, p := range []struct {
		s   string
		dst *[]string
	}{{scope, &c.Scope}, {amr, &c.AMR}, {auds, &c.RequestedAuds}} {
		if *p.dst, err = parseList(p.s); err != nil {
			return nil, oerr("consume code", err)
		}
	}
	c.AuthTime, c.CreatedAt, c.ExpiresAt, c.UsedAt = fromUnix(authAt), fromUnix(cr), fromUnix(exp), fromUnix(use)
	switch {
	case fresh:
		return &c, nil
	case c.ClientID != want.ClientID || c.RedirectURI != want.RedirectURI || c.Challenge != want.Challenge:
		return &c, &kindError{"store: oauth authorization code presented with another client, redirect URI or verifier", []error{token.ErrMismatch}}
	default:
		// It matches, so the update missed it because it was used (by
		// an earlier or a concurrent redemption): reuse.
		return &c, oauthReused("authorization code")
	}
}

// ---- refresh tokens

func (o *OAuth) AddRefreshToken(ctx context.Context, t *token.RefreshToken) error {
	_, err := o.q(ctx).ExecContext(ctx, `INSERT INTO oauth_refresh_tokens (token_hash, grant_id, client_id, created_at, expires_at, used_at, revoked_at)
		VALUES ($1, $2, $3, $4, $5, 0, 0)`, t.Hash, t.GrantID, t.ClientID, unix(t.CreatedAt), unix(t.ExpiresAt))
	if err != nil {
		return oerr("add refresh token", err)
	}
	return nil
}

func (o *OAuth) RefreshToken(ctx context.Context, hash []byte) (*token.RefreshToken, error) {
	var (
		t                 token.RefreshToken
		c, e, used, revok int64
	)
	err := o.q(ctx).QueryRowContext(ctx, `SELECT token_hash, grant_id, client_id, created_at, expires_at, used_at, revoked_at
		FROM oauth_refresh_tokens WHERE token_hash = $1`, hash).Scan(&t.Hash, &t.GrantID, &t.ClientID, &c, &e, &used, &revok)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, oauthNotFound("refresh token")
	}
	if err != nil {
		return nil, oerr("get refresh token", err)
	}
	t.CreatedAt, t.ExpiresAt, t.UsedAt, t.RevokedAt = fromUnix(c), fromUnix(e), fromUnix(used), fromUnix(revok)
	return &t, nil
}

func (o *OAuth) RotateRefreshToken(ctx context.Context, oldHash []byte, next *token.RefreshToken, at time.Time) error {
	return o.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE oauth_refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at = 0 AND revoked_at = 0", unix(at), oldHash)
		if err != nil {
			return oerr("rotate refresh token", err)
		}
		if ok, err := rowsOne(res); err != nil {
			return oerr("rotate refresh token", err)
		} else if !ok {
			return oauthReused("refresh token")
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO oauth_refresh_tokens (token_hash, grant_id, client_id, created_at, expires_at, used_at, revoked_at)
			VALUES ($1, $2, $3, $4, $5, 0, 0)`, next.Hash, next.GrantID, next.ClientID, unix(next.CreatedAt), unix(next.ExpiresAt)); err != nil {
			return oerr("rotate refresh token", err)
		}
		return nil
	})
}

// ---- revoked access tokens and assertion replay

// RevokeTokenID lists jti as revoked, and with it every token exchanged
// from it, transitively (see RecordExchange), and when any of them was
// not listed yet moves the revocations section's version in the same
// transaction: a revocation that committed is on every watch stream,
// even if the server that wrote it dies before it could announce it.
//
// Each token of the tree is locked (its oauth_token_links row) before
// its children are read, the row an exchange from it locks before it
// checks that it is not revoked: an exchange either committed before
// (and its token is read here as a child) or waits and then finds its
// subject token revoked. The tree is walked top down, an exchange locks
// one row, so the two cannot deadlock.
func (o *OAuth) RevokeTokenID(ctx context.Context, jti string, exp, at time.Time) ([]token.RevokedToken, error) {
	var out []token.RevokedToken
	err := o.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if out, err = o.revokeTokenTree(ctx, tx, jti, exp, at, nil); err != nil {
			return err
		}
		return bumpIfRevoked(ctx, o.db, tx, len(out))
	})
	return out, err
}

// revokeTokenTree lists jti and every unexpired token exchanged from it,
// transitively, as revoked in tx, appending the newly listed ones to out.
func (o *OAuth) revokeTokenTree(ctx context.Context, tx *sql.Tx, jti string, exp, at time.Time, out []token.RevokedToken) ([]token.RevokedToken, error) {
	if err := lockTokenLink(ctx, tx, jti, exp); err != nil {
		return out, oerr("revoke token id", err)
	}
	frontier := []token.RevokedToken{{JTI: jti, ExpiresAt: exp}}
	for len(frontier) > 0 {
		t := frontier[0]
		frontier = frontier[1:]
		res, err := tx.ExecContext(ctx, "INSERT INTO oauth_revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
			t.JTI, unix(t.ExpiresAt), unix(at))
		if err != nil {
			return out, oerr("revoke token id", err)
		}
		if fresh, err := rowsOne(res); err != nil {
			return out, oerr("revoke token id", err)
		} else if fresh {
			out = append(out, t)
		}
		kids, err := o.tokenChildren(ctx, tx, t.JTI, at)
		if err != nil {
			return out, oerr("revoke token id", err)
		}
		frontier = append(frontier, kids...)
	}
	return out, nil
}

// lockTokenLink makes sure jti has an oauth_token_links row and holds it
// until tx ends (an upsert that changes nothing takes the row lock under
// PostgreSQL, waiting for a concurrent insert of the same key; SQLite's
// transaction holds the write lock already).
func lockTokenLink(ctx context.Context, tx *sql.Tx, jti string, exp time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO oauth_token_links (jti, parent_jti, expires_at) VALUES ($1, '', $2)
		ON CONFLICT (jti) DO UPDATE SET expires_at = oauth_token_links.expires_at`, jti, unix(exp))
	return err
}

// tokenChildren returns the unexpired tokens exchanged from jti, their
// rows locked (PostgreSQL: FOR UPDATE) until tx ends.
func (o *OAuth) tokenChildren(ctx context.Context, tx *sql.Tx, jti string, at time.Time) ([]token.RevokedToken, error) {
	rows, err := tx.QueryContext(ctx, "SELECT jti, expires_at FROM oauth_token_links WHERE parent_jti = $1 AND expires_at > $2 ORDER BY jti"+o.db.forUpdate(), jti, unix(at))
	if err != nil {
		return nil, err
	}
	return scanRevokedTokens(rows)
}

// scanRevokedTokens reads rows of (jti, expires_at) and closes them.
func scanRevokedTokens(rows *sql.Rows) ([]token.RevokedToken, error) {
	defer rows.Close()
	var out []token.RevokedToken
	for rows.Next() {
		var (
			t   token.RevokedToken
			exp int64
		)
		if err := rows.Scan(&t.JTI, &exp); err != nil {
			return nil, err
		}
		t.ExpiresAt = fromUnix(exp)
		out = append(out, t)
	}
	return out, rows.Err()
}

// RecordExchange records that the token jti was exchanged from parent,
// so that revoking parent revokes it (RevokeTokenID). It locks the row of
// the tree's root and then parent's (top down, as a revocation locks),
// then checks that parent is not revoked (ErrRevoked) and that the tree
// holds fewer than limit exchanged tokens (ErrTooManyExchanges); on
// either nothing is recorded. Inside Atomically with the exchange.
func (o *OAuth) RecordExchange(ctx context.Context, parent string, parentExp time.Time, jti string, exp time.Time, limit int) error {
	return o.tx(ctx, func(tx *sql.Tx) error {
		// A row's root never changes once written: read before locking.
		var root string
		err := tx.QueryRowContext(ctx, "SELECT root_jti FROM oauth_token_links WHERE jti = $1", parent).Scan(&root)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return oerr("record exchange", err)
		}
		if root == "" {
			root = parent
		}
		if root != parent {
			// Held until tx ends: exchanges anywhere in one tree are
			// counted one at a time.
			if err := lockTokenLink(ctx, tx, root, parentExp); err != nil {
				return oerr("record exchange", err)
			}
		}
		if err := lockTokenLink(ctx, tx, parent, parentExp); err != nil {
			return oerr("record exchange", err)
		}
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM oauth_revoked_tokens WHERE jti = $1", parent).Scan(&n); err != nil {
			return oerr("record exchange", err)
		}
		if n > 0 {
			return &kindError{"store: oauth subject token revoked", []error{ErrConflict, token.ErrRevoked}}
		}
		// Every token of the tree expires with its root at the latest (an
		// exchanged token lives no longer than its subject token), so
		// the expired rows Prune has not reached yet count too.
		if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM oauth_token_links WHERE root_jti = $1", root).Scan(&n); err != nil {
			return oerr("record exchange", err)
		}
		if n >= limit {
			return &kindError{fmt.Sprintf("store: %d tokens exchanged from the subject token's tree already", n), []error{ErrConflict, token.ErrTooManyExchanges}}
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO oauth_token_links (jti, parent_jti, expires_at, root_jti) VALUES ($1, $2, $3, $4)",
			jti, parent, unix(exp), root); err != nil {
			return oerr("record exchange", err)
		}
		return nil
	})
}

func (o *OAuth) RecordTokenAuthorities(ctx context.Context, jti string, exp time.Time, authorities []string) error {
	return o.tx(ctx, func(tx *sql.Tx) error {
		for _, a := range authorities {
			if _, err := tx.ExecContext(ctx, "INSERT INTO oauth_token_authorities (authority, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
				a, jti, unix(exp)); err != nil {
				return oerr("record token authorities", err)
			}
		}
		return nil
	})
}

func (o *OAuth) RevokeAuthorityTokens(ctx context.Context, authorities []string, at time.Time) ([]token.RevokedToken, error) {
	var out []token.RevokedToken
	for _, a := range authorities {
		// One transaction an authority: one version bump (one reload of
		// the revoked list on every replica) for all its tokens.
		var got []token.RevokedToken
		err := o.tx(ctx, func(tx *sql.Tx) error {
			got = nil
			rows, err := tx.QueryContext(ctx, `SELECT a.jti, a.expires_at FROM oauth_token_authorities a
				WHERE a.authority = $1 AND a.expires_at > $2
				AND NOT EXISTS (SELECT 1 FROM oauth_revoked_tokens r WHERE r.jti = a.jti) ORDER BY a.jti`, a, unix(at))
			if err != nil {
				return oerr("revoke authority tokens", err)
			}
			toks, err := scanRevokedTokens(rows)
			if err != nil {
				return oerr("revoke authority tokens", err)
			}
			for _, t := range toks {
				if got, err = o.revokeTokenTree(ctx, tx, t.JTI, t.ExpiresAt, at, got); err != nil {
					return err
				}
				// Its revocation is recorded: the next sweep need not
				// read it again (only rows it read: one recorded since
				// is the next sweep's).
				if _, err := tx.ExecContext(ctx, "DELETE FROM oauth_token_authorities WHERE authority = $1 AND jti = $2", a, t.JTI); err != nil {
					return oerr("revoke authority tokens", err)
				}
			}
			return bumpIfRevoked(ctx, o.db, tx, len(got))
		})
		if err != nil {
			return out, err
		}
		out = append(out, got...)
	}
	return out, nil
}

func (o *OAuth) TokenIDRevoked(ctx context.Context, jti string) (bool, error) {
	var n int
	if err := o.q(ctx).QueryRowContext(ctx, "SELECT COUNT(*) FROM oauth_revoked_tokens WHERE jti = $1", jti).Scan(&n); err != nil {
		return false, oerr("check revoked token id", err)
	}
	return n > 0, nil
}

func (o *OAuth) RevokedTokenIDs(ctx context.Context, now time.Time) ([]token.RevokedToken, error) {
	rows, err := o.q(ctx).QueryContext(ctx, "SELECT jti, expires_at FROM oauth_revoked_tokens WHERE expires_at > $1 ORDER BY jti", unix(now))
	if err != nil {
		return nil, oerr("list revoked token ids", err)
	}
	out, err := scanRevokedTokens(rows)
	if err != nil {
		return nil, oerr("list revoked token ids", err)
	}
	return out, nil
}

func (o *OAuth) UseAssertionJTI(ctx context.Context, clientID, jti string, exp time.Time) error {
	res, err := o.q(ctx).ExecContext(ctx, "INSERT INTO oauth_assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
		clientID, jti, unix(exp))
	if err != nil {
		return oerr("use assertion jti", err)
	}
	if ok, err := rowsOne(res); err != nil {
		return oerr("use assertion jti", err)
	} else if !ok {
		return oauthConflict("client assertion jti used before")
	}
	return nil
}

// ---- login throttling

func (o *OAuth) RecordLoginFailure(ctx context.Context, key string, at, forgetBefore time.Time) (int, error) {
	var n int
	err := o.q(ctx).QueryRowContext(ctx, `INSERT INTO oauth_login_throttle (key, failures, last_failure, locked_until) VALUES ($1, 1, $2, 0)
		ON CONFLICT (key) DO UPDATE SET
			failures = CASE WHEN oauth_login_throttle.last_failure < $3 THEN 1 ELSE oauth_login_throttle.failures + 1 END,
			last_failure = $2
		RETURNING failures`, key, unix(at), unix(forgetBefore)).Scan(&n)
	if err != nil {
		return 0, oerr("record login failure", err)
	}
	return n, nil
}

func (o *OAuth) LockLogin(ctx context.Context, key string, until time.Time) error {
	if _, err := o.q(ctx).ExecContext(ctx, "UPDATE oauth_login_throttle SET locked_until = $1 WHERE key = $2 AND locked_until < $1", unix(until), key); err != nil {
		return oerr("lock login", err)
	}
	return nil
}

func (o *OAuth) LoginLockedUntil(ctx context.Context, keys []string) (time.Time, error) {
	var latest int64
	for _, k := range keys {
		var v int64
		err := o.q(ctx).QueryRowContext(ctx, "SELECT locked_until FROM oauth_login_throttle WHERE key = $1", k).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return time.Time{}, oerr("login lock", err)
		}
		latest = max(latest, v)
	}
	return fromUnix(latest), nil
}

func (o *OAuth) ClearLoginFailures(ctx context.Context, key string) error {
	if _, err := o.q(ctx).ExecContext(ctx, "DELETE FROM oauth_login_throttle WHERE key = $1", key); err != nil {
		return oerr("clear login failures", err)
	}
	return nil
}

func (o *OAuth) Prune(ctx context.Context, now time.Time) error {
	n := unix(now)
	if _, err := o.q(ctx).ExecContext(ctx, "DELETE FROM oauth_login_throttle WHERE last_failure < $1 AND locked_until < $2", n-3600, n); err != nil {
		return oerr("prune", err)
	}
	for _, q := range []string{
		"DELETE FROM oauth_codes WHERE expires_at < $1",
		"DELETE FROM oauth_refresh_tokens WHERE expires_at < $1",
		"DELETE FROM oauth_grant_tokens WHERE expires_at < $1",
		"DELETE FROM oauth_token_links WHERE expires_at < $1",
		"DELETE FROM oauth_token_authorities WHERE expires_at < $1",
		"DELETE FROM oauth_grants WHERE expires_at < $1",
		"DELETE FROM oauth_revoked_tokens WHERE expires_at < $1",
		"DELETE FROM oauth_assertion_jtis WHERE expires_at < $1",
	} {
		if _, err := o.q(ctx).ExecContext(ctx, q, n); err != nil {
			return oerr("prune", err)
		}
	}
	return nil
}
