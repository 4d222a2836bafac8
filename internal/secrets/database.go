package secrets

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"

	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/store"
)

// PluginPostgres is the only database plugin: PostgreSQL through pgx.
const PluginPostgres = "postgresql-database-plugin"

// dbConnection is a database connection's configuration. The whole of it
// is stored sealed (the DSN holds the admin password).
type dbConnection struct {
	Plugin             string   `json:"plugin_name"`
	ConnectionURL      string   `json:"connection_url"`
	Username           string   `json:"username"`
	Password           string   `json:"password"`
	AllowedRoles       []string `json:"allowed_roles"`
	RootRotation       []string `json:"root_rotation_statements,omitempty"`
	MaxOpenConnections int64    `json:"max_open_connections"`
	Generation         int64    `json:"generation"`
	// SkipVerify: written with verify_connection false (stored inverted so
	// that a connection saved before the field existed reads back true,
	// which is what it was written with).
	SkipVerify bool `json:"skip_verify,omitempty"`
}

// dsn fills {{username}} and {{password}} into the connection URL.
func (c *dbConnection) dsn() string {
	return strings.NewReplacer("{{username}}", url.QueryEscape(c.Username), "{{password}}", url.QueryEscape(c.Password)).Replace(c.ConnectionURL)
}

// dbRole is a role that creates database users (database/roles/NAME).
type dbRole struct {
	DBName     string        `json:"db_name"`
	Creation   []string      `json:"creation_statements"`
	Revocation []string      `json:"revocation_statements,omitempty"`
	Renew      []string      `json:"renew_statements,omitempty"`
	Rollback   []string      `json:"rollback_statements,omitempty"`
	DefaultTTL time.Duration `json:"default_ttl"`
	MaxTTL     time.Duration `json:"max_ttl"`
}

// dbLease is what revoking a database lease needs, stored sealed with it.
type dbLease struct {
	DB         string   `json:"db"`
	Role       string   `json:"role"`
	Username   string   `json:"username"`
	Revocation []string `json:"revocation_statements,omitempty"`
	Renew      []string `json:"renew_statements,omitempty"`
	MaxTTL     int64    `json:"max_ttl"`
}

// Default statements, as Vault's PostgreSQL plugin has them.
var (
	defaultRenew      = []string{`ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}'`}
	defaultRevocation = []string{
		`REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM "{{name}}"`,
		`REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public FROM "{{name}}"`,
		`REVOKE USAGE ON SCHEMA public FROM "{{name}}"`,
		`DROP ROLE IF EXISTS "{{name}}"`,
	}
	defaultRootRotation = []string{`ALTER ROLE "{{username}}" WITH PASSWORD '{{password}}'`}
)

// dbPool keeps one *sql.DB per connection name and configuration. A
// pool is reused only for the same DSN and size: the generation starts
// again at 0 when a connection is deleted and configured anew (on another
// replica, which this one's pool never hears of).
type dbPool struct {
	mu  sync.Mutex
	dbs map[string]*pooled
}

type pooled struct {
	gen int64
	dsn string
	max int64
	db  *sql.DB
}

func newDBPool() *dbPool { return &dbPool{dbs: map[string]*pooled{}} }

func (p *dbPool) get(name string, c *dbConnection) (*sql.DB, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	dsn := c.dsn()
	if e := p.dbs[name]; e != nil {
		if e.gen == c.Generation && e.dsn == dsn && e.max == c.MaxOpenConnections {
			return e.db, nil
		}
		e.db.Close()
		delete(p.dbs, name)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("database %s: %s", name, redact(err.Error(), c))
	}
	n := int(c.MaxOpenConnections)
	if n <= 0 {
		n = 4
	}
	db.SetMaxOpenConns(n)
	db.SetConnMaxIdleTime(time.Minute)
	p.dbs[name] = &pooled{gen: c.Generation, dsn: dsn, max: c.MaxOpenConnections, db: db}
	return db, nil
}

func (p *dbPool) drop(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.dbs[name]; e != nil {
		e.db.Close()
		delete(p.dbs, name)
	}
}

func (p *dbPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n, e := range p.dbs {
		e.db.Close()
		delete(p.dbs, n)
	}
}

// redact removes the connection's passwords from a driver error (pgx
// errors may quote the DSN): the password field's and any written into
// the connection URL.
func redact(msg string, c *dbConnection) string {
	for _, s := range append([]string{c.Password, url.QueryEscape(c.Password)}, urlPasswords(c.ConnectionURL)...) {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return msg
}

// urlPasswords returns the passwords written into a connection URL
// instead of the {{password}} placeholder (in its userinfo, or a password
// query parameter), as written and unescaped.
func urlPasswords(raw string) []string {
	var out []string
	splitURL(raw, func(p string) string {
		out = append(out, p)
		if u, err := url.PathUnescape(p); err == nil && u != p {
			out = append(out, u)
		}
		return p
	})
	return out
}

// maskedURL is a connection URL as reads show it: a password written into
// it is masked, as Vault masks it (its PRs 4300 and 14744); placeholders
// are shown as they are.
func maskedURL(raw string) string {
	return splitURL(raw, func(string) string { return "*****" })
}

// splitURL rebuilds a postgres:// URL with each password written into it
// (not the {{password}} placeholder) replaced by f's result. The userinfo
// ends at the last '@' before the query: a password may hold '/' or '@'
// unescaped, and masking too much is the safe side.
func splitURL(raw string, f func(password string) string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	pre, query, hasQuery := strings.Cut(rest, "?")
	if at := strings.LastIndexByte(pre, '@'); at >= 0 {
		if user, pw, ok := strings.Cut(pre[:at], ":"); ok && pw != "" && pw != "{{password}}" {
			pre = user + ":" + f(pw) + pre[at:]
		}
	}
	if !hasQuery {
		return scheme + "://" + pre
	}
	query, frag, hasFrag := strings.Cut(query, "#")
	params := strings.Split(query, "&")
	for i, kv := range params {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.EqualFold(k, "password") && v != "" && v != "{{password}}" {
			params[i] = k + "=" + f(v)
		}
	}
	out := scheme + "://" + pre + "?" + strings.Join(params, "&")
	if hasFrag {
		out += "#" + frag
	}
	return out
}

func (s *Service) loadConnection(ctx context.Context, q store.Queryer, name string, lock bool) (*dbConnection, error) {
	o, err := s.db.SecretsObject(ctx, q, kindDBConnection, name, lock)
	if err != nil {
		return nil, err
	}
	plain, err := s.barrier.Open("database/config/"+name, o.Sealed)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	var c dbConnection
	if err := json.Unmarshal(plain, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func (s *Service) saveConnection(ctx context.Context, tx *sql.Tx, name string, c *dbConnection) error {
	plain, err := json.Marshal(c)
	if err != nil {
		return err
	}
	sealed, err := s.barrier.Seal("database/config/"+name, plain)
	clear(plain)
	if err != nil {
		return err
	}
	return s.db.PutSecretsObject(ctx, tx, store.SecretsObject{Kind: kindDBConnection, Name: name, Spec: json.RawMessage(`{}`), Sealed: sealed})
}

func (s *Service) databaseAPI(rq *req, rest string) (*envelope, error) {
	kind, name, _ := strings.Cut(rest, "/")
	if name == "" && rq.op == "list" {
		k := map[string]string{"config": kindDBConnection, "roles": kindDBRole}[kind]
		if k == "" {
			return nil, rq.noRoute()
		}
		if err := rq.need(acl.List); err != nil {
			return nil, err
		}
		names, err := s.db.SecretsObjectNames(rq.ctx, k)
		if err != nil {
			return nil, err
		}
		return listing(names)
	}
	if !acl.ValidName(name) {
		return nil, rq.noRoute()
	}
	rq.details["name"] = name
	switch kind {
	case "config":
		return s.dbConfigAPI(rq, name)
	case "roles":
		return s.dbRoleAPI(rq, name)
	case "creds":
		if rq.op != "read" {
			return nil, errf(http.StatusMethodNotAllowed, "database/creds is GET")
		}
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		return s.dbCreds(rq, name)
	case "rotate-root":
		if rq.op != "update" {
			return nil, errf(http.StatusMethodNotAllowed, "rotate-root is POST")
		}
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		return nil, s.rotateRoot(rq, name)
	case "reset":
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		s.dbs.drop(name)
		rq.audited = false
		return nil, nil
	}
	return nil, rq.noRoute()
}

func (s *Service) dbConfigAPI(rq *req, name string) (*envelope, error) {
	switch rq.op {
	case "read":
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		c, err := s.loadConnection(rq.ctx, s.db.SQL(), name, false)
		if err != nil {
			return nil, err
		}
		// Never a password; the URL as configured (with placeholders),
		// a password written into it masked.
		return data(map[string]any{"plugin_name": c.Plugin, "allowed_roles": c.AllowedRoles, "root_credentials_rotate_statements": c.RootRotation,
			"connection_details": map[string]any{"connection_url": maskedURL(c.ConnectionURL), "username": c.Username, "max_open_connections": c.MaxOpenConnections},
			"password_policy":    "", "verify_connection": !c.SkipVerify}), nil
	case "delete":
		if err := rq.need(acl.Delete); err != nil {
			return nil, err
		}
		s.dbs.drop(name)
		return nil, rq.tx(func(tx *sql.Tx) error { return s.db.DeleteSecretsObject(rq.ctx, tx, kindDBConnection, name) })
	}
	if err := rq.need(acl.Update); err != nil {
		return nil, err
	}
	p := rq.body
	c := &dbConnection{}
	var err error
	c.Plugin = p.str("plugin_name")
	c.ConnectionURL = p.str("connection_url")
	c.Username = p.str("username")
	c.Password = p.str("password")
	c.AllowedRoles = p.strList("allowed_roles")
	c.RootRotation = p.strList("root_rotation_statements")
	c.MaxOpenConnections = p.integer("max_open_connections")
	verify := true
	if p.has("verify_connection") {
		verify = p.boolean("verify_connection")
	}
	c.SkipVerify = !verify
	for _, k := range []string{"max_idle_connections", "max_connection_lifetime", "password_policy", "username_template", "plugin_version"} {
		if p.has(k) {
			return nil, badRequest("%s is not supported", k)
		}
	}
	if err := p.done(); err != nil {
		return nil, err
	}
	if c.Plugin != PluginPostgres {
		return nil, badRequest("plugin_name: only %s is supported", PluginPostgres)
	}
	u, err := url.Parse(strings.NewReplacer("{{username}}", "u", "{{password}}", "p").Replace(c.ConnectionURL))
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, badRequest("connection_url: want postgres://{{username}}:{{password}}@host:port/db?sslmode=...")
	}
	if c.MaxOpenConnections < 0 || c.MaxOpenConnections > 100 {
		return nil, badRequest("max_open_connections: 0 to 100")
	}
	if verify {
		if err := pingDB(rq.ctx, c); err != nil {
			return nil, badRequest("error verifying connection: %s", err)
		}
	}
	return nil, rq.tx(func(tx *sql.Tx) error {
		if old, err := s.loadConnection(rq.ctx, tx, name, true); err == nil {
			c.Generation = old.Generation + 1
		}
		return s.saveConnection(rq.ctx, tx, name, c)
	})
}

func pingDB(ctx context.Context, c *dbConnection) error {
	db, err := sql.Open("pgx", c.dsn())
	if err != nil {
		return errors.New(redact(err.Error(), c))
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		return errors.New(redact(err.Error(), c))
	}
	return nil
}

func (s *Service) dbRoleAPI(rq *req, name string) (*envelope, error) {
	switch rq.op {
	case "read":
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		var r dbRole
		if err := s.getObject(rq, kindDBRole, name, &r); err != nil {
			return nil, err
		}
		return data(map[string]any{"db_name": r.DBName, "creation_statements": r.Creation, "revocation_statements": r.Revocation,
			"renew_statements": r.Renew, "rollback_statements": r.Rollback, "default_ttl": int64(r.DefaultTTL / time.Second),
			"max_ttl": int64(r.MaxTTL / time.Second)}), nil
	case "delete":
		if err := rq.need(acl.Delete); err != nil {
			return nil, err
		}
		return nil, rq.tx(func(tx *sql.Tx) error { return s.db.DeleteSecretsObject(rq.ctx, tx, kindDBRole, name) })
	}
	if err := rq.need(acl.Update); err != nil {
		return nil, err
	}
	p := rq.body
	var r dbRole
	var err error
	r.DBName = p.str("db_name")
	if r.Creation, err = statements(p, "creation_statements"); err != nil {
		return nil, err
	}
	if r.Revocation, err = statements(p, "revocation_statements"); err != nil {
		return nil, err
	}
	if r.Renew, err = statements(p, "renew_statements"); err != nil {
		return nil, err
	}
	if r.Rollback, err = statements(p, "rollback_statements"); err != nil {
		return nil, err
	}
	r.DefaultTTL = p.duration("default_ttl")
	r.MaxTTL = p.duration("max_ttl")
	p.raw("credential_type")
	if err := p.done(); err != nil {
		return nil, err
	}
	if r.DBName == "" || len(r.Creation) == 0 {
		return nil, badRequest("db_name and creation_statements are required")
	}
	if _, err := s.loadConnection(rq.ctx, s.db.SQL(), r.DBName, false); err != nil {
		return nil, badRequest("db_name: no database connection %q", r.DBName)
	}
	if r.MaxTTL > 0 && r.DefaultTTL > r.MaxTTL {
		return nil, badRequest("default_ttl must not exceed max_ttl")
	}
	for _, st := range r.Creation {
		if !strings.Contains(st, "{{name}}") && !strings.Contains(st, "{{username}}") {
			continue
		}
		return nil, rq.tx(func(tx *sql.Tx) error {
			return s.db.PutSecretsObject(rq.ctx, tx, store.SecretsObject{Kind: kindDBRole, Name: name, Spec: jsonSpec(r)})
		})
	}
	return nil, badRequest("creation_statements: none uses {{name}}: the statements must create the generated user")
}

// statements reads a list of SQL statements: a JSON list, or one string
// of ";"-separated statements (Vault accepts both).
func statements(p *params, k string) ([]string, error) {
	raw := p.raw(k)
	if raw == nil {
		return nil, nil
	}
	var l []string
	if json.Unmarshal(raw, &l) != nil {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, badRequest("%s: want a list of statements or one string", k)
		}
		l = []string{s}
	}
	var out []string
	for _, s := range l {
		for _, st := range strings.Split(s, ";") {
			if st = strings.TrimSpace(st); st != "" {
				out = append(out, st)
			}
		}
	}
	if len(out) > 100 {
		return nil, badRequest("%s: at most 100 statements", k)
	}
	return out, nil
}

const pgTime = "2006-01-02 15:04:05-0700"

// render fills a statement. name and password come from safe alphabets
// (generateUsername, generatePassword) and expiration is ours, so the
// substitution cannot inject SQL; the statements themselves are the
// administrator's.
func render(st, name, password string, exp time.Time) string {
	return strings.NewReplacer("{{name}}", name, "{{username}}", name, "{{password}}", password,
		"{{expiration}}", exp.UTC().Format(pgTime)).Replace(st)
}

const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomFrom(alphabet string, n int) string {
	b := make([]byte, n)
	max := big.NewInt(int64(len(alphabet)))
	for i := range b {
		x, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic("secrets: crypto/rand failed: " + err.Error())
		}
		b[i] = alphabet[x.Int64()]
	}
	return string(b)
}

// generateUsername: v-<role>-<random>, at most 63 bytes (PostgreSQL's
// identifier limit), lower-case letters, digits and '-' only.
func generateUsername(role string) string {
	r := strings.Map(func(c rune) rune {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			return c
		}
		if c >= 'A' && c <= 'Z' {
			return c + 32
		}
		return '-'
	}, role)
	if len(r) > 20 {
		r = r[:20]
	}
	return "v-" + r + "-" + randomFrom(alnum, 20)
}

func generatePassword() string {
	return randomFrom(alnum+"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 32)
}

// execAll runs statements in one transaction on the connection.
func execAll(ctx context.Context, db *sql.DB, sts []string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	for _, st := range sts {
		if _, err := tx.ExecContext(ctx, st); err != nil {
			tx.Rollback()
			return err
		}
	}
	return tx.Commit()
}

func (s *Service) dbCreds(rq *req, roleName string) (*envelope, error) {
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	var role dbRole
	if err := s.getObject(rq, kindDBRole, roleName, &role); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, badRequest("unknown role: %s", roleName)
		}
		return nil, err
	}
	conn, err := s.loadConnection(rq.ctx, s.db.SQL(), role.DBName, false)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(conn.AllowedRoles, "*") && !slices.Contains(conn.AllowedRoles, roleName) {
		return nil, badRequest("%q is not an allowed role of database %q", roleName, role.DBName)
	}
	ttl, maxTTL := role.DefaultTTL, role.MaxTTL
	if ttl <= 0 {
		ttl = s.cfg.DefaultLeaseTTL
	}
	if maxTTL <= 0 || maxTTL > s.cfg.MaxLeaseTTL {
		maxTTL = s.cfg.MaxLeaseTTL
	}
	ttl = min(ttl, maxTTL)
	now := s.now()
	exp := now.Add(ttl)
	// A lease never outlives the token that obtained it.
	if rq.tok.stored != nil && rq.tok.stored.ExpiresAt.Before(exp) {
		exp = rq.tok.stored.ExpiresAt
	}
	// A token gone since it authenticated this request (its last use
	// deletes it; a revocation) gets no database user: looked at before
	// the CREATE ROLE, which cannot be taken back but by a DROP ROLE. The
	// lease's transaction checks again, under the token's lock.
	if st := rq.tok.stored; st != nil {
		if _, alive, err := s.db.SecretsTokenChain(rq.ctx, s.db.SQL(), st.Accessor, now, maxTokenDepth); err != nil {
			return nil, err
		} else if !alive {
			return nil, errTokenGoneBeforeLease
		}
	}
	user, pass := generateUsername(roleName), generatePassword()
	db, err := s.dbs.get(role.DBName, conn)
	if err != nil {
		return nil, err
	}
	var sts []string
	for _, st := range role.Creation {
		sts = append(sts, render(st, user, pass, exp))
	}
	if err := execAll(rq.ctx, db, sts); err != nil {
		s.log.Warn("database creds: creation statements failed", "db", role.DBName, "role", roleName, "err", redact(err.Error(), conn))
		return nil, errf(http.StatusInternalServerError, "creating the database user failed: %s", redactPass(err.Error(), pass, conn))
	}
	owner := rq.tok.accessor
	if owner == "" {
		owner = rq.tok.actor()
	}
	rev, ren := role.Revocation, role.Renew
	lease := store.Lease{ID: "database/creds/" + roleName + "/" + newID(12), Path: rq.path, Kind: "database", TokenAccessor: owner, SPIFFEID: rq.tok.revokedWith(), CAAuthority: rq.tok.authority,
		Renewable: true, IssuedAt: now, ExpiresAt: exp, MaxExpires: now.Add(maxTTL)}
	sealed, err := s.barrier.Seal("lease/"+lease.ID, jsonSpec(dbLease{DB: role.DBName, Role: roleName, Username: user, Revocation: rev, Renew: ren}))
	if err != nil {
		return nil, err
	}
	lease.Sealed = sealed
	rq.details["lease_id"] = lease.ID
	rq.details["username"] = user
	rq.details["password_hmac"] = s.hmacValue([]byte(pass))
	if s.testBeforeLeaseWrite != nil {
		s.testBeforeLeaseWrite()
	}
	err = rq.tx(func(tx *sql.Tx) error {
		if st := rq.tok.stored; st != nil {
			if err := s.lockLeaseToken(rq, tx, st.Accessor); err != nil {
				return err
			}
		}
		if s.testLeaseTokenLocked != nil {
			s.testLeaseTokenLocked()
		}
		return s.db.CreateLease(rq.ctx, tx, lease)
	})
	if err != nil {
		// The user exists but no lease records it (its token revoked
		// meanwhile, or the store failing): drop it now.
		s.revokeDBUser(context.WithoutCancel(rq.ctx), dbLease{DB: role.DBName, Username: user, Revocation: rev}, now)
		return nil, err
	}
	s.metrics.leasesIssued.Inc()
	return &envelope{LeaseID: lease.ID, Renewable: true, LeaseDuration: int64(exp.Sub(now) / time.Second),
		Data: map[string]any{"username": user, "password": pass}}, nil
}

func redactPass(msg, pass string, c *dbConnection) string {
	return strings.ReplaceAll(redact(msg, c), pass, "[redacted]")
}

// revokeDBUser ends the user's sessions and runs the revocation
// statements. The user loses the ability to log in first, so a session
// opened in between is refused as well.
func (s *Service) revokeDBUser(ctx context.Context, l dbLease, now time.Time) error {
	conn, err := s.loadConnection(ctx, s.db.SQL(), l.DB, false)
	if err != nil {
		return fmt.Errorf("database connection %q: %w", l.DB, err)
	}
	db, err := s.dbs.get(l.DB, conn)
	if err != nil {
		return err
	}
	rev := l.Revocation
	if len(rev) == 0 {
		rev = defaultRevocation
	}
	// The role may already be gone (a retry after a partial success).
	var exists bool
	ctx2, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := db.QueryRowContext(ctx2, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", l.Username).Scan(&exists); err != nil {
		return errors.New(redact(err.Error(), conn))
	}
	if !exists {
		return nil
	}
	pre := []string{`ALTER ROLE "{{name}}" NOLOGIN`}
	var sts []string
	for _, st := range append(pre, rev...) {
		sts = append(sts, render(st, l.Username, "", now))
	}
	if err := execAll(ctx, db, sts[:1]); err != nil {
		return errors.New(redact(err.Error(), conn))
	}
	if _, err := db.ExecContext(ctx2, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", l.Username); err != nil {
		return errors.New(redact(err.Error(), conn))
	}
	if err := execAll(ctx, db, sts[1:]); err != nil {
		return errors.New(redact(err.Error(), conn))
	}
	return nil
}

// rotateRoot sets a new random password for the connection's admin user,
// so only Moatless knows it. PostgreSQL takes it under the connection's
// row lock, in the transaction that stores it with its audit record; if
// that transaction fails afterwards (the audit log unavailable, the
// store), the old password is set back, or nobody would know the admin
// password any more. If setting the old one fails too, the answer says so.
func (s *Service) rotateRoot(rq *req, name string) error {
	var changed *dbConnection // set once PostgreSQL has the new password
	var old string
	err := rq.tx(func(tx *sql.Tx) error {
		c, err := s.loadConnection(rq.ctx, tx, name, true)
		if err != nil {
			return err
		}
		if c.Username == "" || !strings.Contains(c.ConnectionURL, "{{password}}") {
			return badRequest("rotate-root needs username, password and a connection_url with {{username}} and {{password}}")
		}
		pass := generatePassword()
		db, err := s.dbs.get(name, c)
		if err != nil {
			return err
		}
		if err := execAll(rq.ctx, db, rootStatements(c, pass)); err != nil {
			return errf(http.StatusInternalServerError, "rotate-root failed (the old password is still in force): %s", redactPass(err.Error(), pass, c))
		}
		old = c.Password
		c.Password = pass
		c.Generation++
		s.dbs.drop(name)
		changed = c
		return s.saveConnection(rq.ctx, tx, name, c)
	})
	if err == nil || changed == nil {
		return err
	}
	if rerr := restoreRoot(context.WithoutCancel(rq.ctx), changed, old); rerr != nil {
		msg := redactPass(rerr.Error(), old, changed)
		s.log.Error("rotate-root: PostgreSQL took the new admin password but it was not stored, and setting the old one back failed",
			"db", name, "err", msg, "cause", err)
		return errf(http.StatusInternalServerError, "rotate-root failed after PostgreSQL took the new password, and setting the old one back failed (%s): "+
			"set the admin password by hand and write database/config/%s again", msg, name)
	}
	return err
}

// rootStatements are the connection's root rotation statements for pass.
func rootStatements(c *dbConnection, pass string) []string {
	sts := c.RootRotation
	if len(sts) == 0 {
		sts = defaultRootRotation
	}
	var out []string
	for _, st := range sts {
		out = append(out, strings.NewReplacer("{{username}}", c.Username, "{{name}}", c.Username, "{{password}}", pass).Replace(st))
	}
	return out
}

// restoreRoot logs in with the password PostgreSQL has now (c's) and sets
// old again, on a connection of its own (the pool is keyed by the stored
// configuration, which still has old).
func restoreRoot(ctx context.Context, c *dbConnection, old string) error {
	db, err := sql.Open("pgx", c.dsn())
	if err != nil {
		return err
	}
	defer db.Close()
	return execAll(ctx, db, rootStatements(c, old))
}
