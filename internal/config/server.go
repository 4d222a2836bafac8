package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/wire"
)

// Defaults and bounds of the server config.
const (
	DefaultX509SVIDTTL  = time.Hour
	DefaultJWTSVIDTTL   = 5 * time.Minute
	MaxX509SVIDTTLLimit = 30 * 24 * time.Hour
	DefaultJoinTokenTTL = 15 * time.Minute
	DefaultMaxTokenTTL  = 24 * time.Hour
	// DefaultServerCertTTL is the lifetime of the server's own TLS
	// certificate; it is renewed at half life.
	DefaultServerCertTTL = 24 * time.Hour
	// DefaultWatchHeartbeat is how often a server speaks on an idle watch
	// stream. Clients call a stream dead after 3 silent intervals and move
	// to another server, so with the default a client notices a server
	// that vanished without closing its connections within 1.5 s.
	DefaultWatchHeartbeat = 500 * time.Millisecond
	// DefaultEvictNodesAfter is how long after its node SVID expired a
	// node that stopped renewing is evicted.
	DefaultEvictNodesAfter = 24 * time.Hour
	// DefaultPollInterval is the period of the server's maintenance loop,
	// which also reads the store's change version as the fallback for
	// LISTEN/NOTIFY (see Server.PollInterval).
	DefaultPollInterval = time.Second
)

// Server is the "moatless server" config. Every field has a default, so an
// empty file (or none) is a working single-node server. Example:
//
//	data_dir: /var/lib/moatless
//	trust_domain: example.org
//	listen: 0.0.0.0:8443
//	store: postgres://moatless@db/moatless
//	admin_ids: [spiffe://example.org/moatless/admin]
//	server_names: [moatless.example.org]
type Server struct {
	// DataDir holds the SQLite store, kek, admin-token and bundle.pem;
	// default DefaultDataDir.
	DataDir string `json:"data_dir,omitempty"`
	// TrustDomain is the SPIFFE trust domain; default DefaultTrustDomain.
	TrustDomain string `json:"trust_domain,omitempty"`
	// Listen is the one TLS listener (agent API, admin API, health,
	// metrics); default DefaultListen.
	Listen string `json:"listen,omitempty"`
	// Store is the store DSN: "postgres://..." for PostgreSQL, else a
	// SQLite path; default DATA_DIR/moatless.db.
	Store string `json:"store,omitempty"`
	// KEKFile is the 32-byte key-encryption key that seals the CA keys in
	// the store; default DATA_DIR/kek, created on first start. Replicas
	// sharing a PostgreSQL store must share this file.
	KEKFile string `json:"kek_file,omitempty"`
	// AdminIDs are the SPIFFE IDs whose client certificates may call the
	// admin API; default [spiffe://TD/moatless/admin].
	AdminIDs []string `json:"admin_ids,omitempty"`
	// ServerNames are extra DNS names or IPs for the server's certificate,
	// besides the listen host (and localhost/loopback when it listens on
	// loopback or on every interface).
	ServerNames []string `json:"server_names,omitempty"`
	// Issuer is the OAuth 2.0 / OIDC issuer URL of the token service;
	// default https://<listen address> (localhost when listening on every
	// interface). Tokens name it in iss; clients fetch discovery under it.
	Issuer string `json:"issuer,omitempty"`
	// TokenSigningAlg is the token service's signing algorithm: ES256
	// (default), RS256 or EdDSA. A change publishes a key of the new
	// algorithm a day ahead, which then signs.
	TokenSigningAlg string `json:"token_signing_alg,omitempty"`
	// SecretsKeyFile holds the secrets service's root key (32 bytes, raw
	// or base64); default DATA_DIR/secrets-key, created on first start.
	// Replicas sharing a PostgreSQL store must share it.
	SecretsKeyFile string `json:"secrets_key_file,omitempty"`
	// UpstreamCA, when set, signs the CA's intermediates (PEM files).
	UpstreamCA *UpstreamCA `json:"upstream_ca,omitempty"`

	// CATTL is the lifetime of each CA certificate; 0 uses the CA's default.
	CATTL wire.Duration `json:"ca_ttl,omitempty"`
	// X509SVIDTTL and JWTSVIDTTL are the SVID lifetimes of entries that do
	// not set their own; defaults 1h and 5m.
	X509SVIDTTL wire.Duration `json:"x509_svid_ttl,omitempty"`
	JWTSVIDTTL  wire.Duration `json:"jwt_svid_ttl,omitempty"`
	// MaxX509SVIDTTL and MaxJWTSVIDTTL bound what an entry may ask for;
	// defaults 24h and 1h.
	MaxX509SVIDTTL wire.Duration `json:"max_x509_svid_ttl,omitempty"`
	MaxJWTSVIDTTL  wire.Duration `json:"max_jwt_svid_ttl,omitempty"`
	// JoinTokenTTL is the default join token lifetime (15m);
	// MaxJoinTokenTTL the longest one may be created with (24h).
	JoinTokenTTL    wire.Duration `json:"join_token_ttl,omitempty"`
	MaxJoinTokenTTL wire.Duration `json:"max_join_token_ttl,omitempty"`
	// ServerCertTTL is the lifetime of the server's TLS certificate (24h).
	ServerCertTTL wire.Duration `json:"server_cert_ttl,omitempty"`
	// PollInterval is the period of the server's maintenance (CA rotation
	// steps, certificate renewal, pruning) and of its fallback poll for
	// changes other replicas made (1s). On PostgreSQL, replicas hear of
	// each other's changes at once through LISTEN/NOTIFY; while that
	// connection is up the version is polled only every tenth period.
	PollInterval wire.Duration `json:"poll_interval,omitempty"`
	// WatchHeartbeat is the longest the server stays silent on a watch
	// stream (DefaultWatchHeartbeat). It is announced on every stream;
	// clients reconnect, to another replica when they know several, after
	// three silent intervals. Shorter means faster failover when a server
	// disappears without closing its connections, at the cost of one small
	// write per interval per idle connected client (a stream that just
	// carried an update sends no heartbeat until it has been silent this
	// long).
	WatchHeartbeat wire.Duration `json:"watch_heartbeat,omitempty"`
	// EvictNodesAfter is how long a node may go without renewing past its
	// node SVID's expiry before it is evicted: removed from the node list,
	// every certificate issued to it (its own, its workloads') revoked, its
	// registration entries kept. It must attest again with a new join
	// token. Default DefaultEvictNodesAfter.
	EvictNodesAfter wire.Duration `json:"evict_nodes_after,omitempty"`
	// AuditRetention, when set, is how long audit records stay in the
	// store: older ones are moved, hourly, into segment files in
	// AuditArchiveDir whose hash chain still verifies (moatless audit verify
	// --archive DIR). 0 (the default) keeps every record in the store;
	// "moatless audit archive" does the same on demand.
	AuditRetention wire.Duration `json:"audit_retention,omitempty"`
	// AuditArchiveDir receives archived audit segments; required with
	// AuditRetention. With several replicas set it on one of them (or on
	// a shared volume).
	AuditArchiveDir string `json:"audit_archive_dir,omitempty"`
	// LogLevel is debug, info, warn or error; default info.
	LogLevel string `json:"log_level,omitempty"`
	// AuditReportRate is how many decision events per second one node (a
	// sidecar or gateway reporting denies through wire.PathAudit) may add
	// to the audit log, sustained, on each server; AuditReportBurst how
	// many it may add at once. A report that does not fit is refused
	// whole with 429 (the reporter retries it later), so a compromised
	// sidecar cannot flood the audit log. Defaults
	// DefaultAuditReportRate and DefaultAuditReportBurst; the burst is at
	// least wire.MaxAuditEvents, so a full report always fits an idle
	// node's budget.
	AuditReportRate  float64 `json:"audit_report_rate,omitempty"`
	AuditReportBurst int     `json:"audit_report_burst,omitempty"`

	// Detect configures detection and response: traffic record
	// retention, detector thresholds (per service too), alerts. See
	// docs/detect.md.
	Detect DetectSettings `json:"detect,omitzero"`
	// Dashboard configures the web dashboard at /ui.
	Dashboard Dashboard `json:"dashboard,omitzero"`
}

// Dashboard configures the web dashboard served at https://LISTEN/ui.
type Dashboard struct {
	// Disabled turns the dashboard off (/ui answers 404).
	Disabled bool `json:"disabled,omitempty"`
	// OIDCClientID, when set, offers login through the server's own token
	// service with this client: a public client (auth method none) with
	// the authorization_code grant, scope openid and the redirect URI
	// ORIGIN/ui/oidc/callback (ORIGIN: the issuer's scheme and host).
	// Without it only the admin token logs in.
	OIDCClientID string `json:"oidc_client_id,omitempty"`
	// AdminRole is the role a token service user needs to log in;
	// default DefaultDashboardAdminRole.
	AdminRole string `json:"admin_role,omitempty"`
	// SessionTTL is how long a dashboard session lasts from login
	// (default 30m, at most 12h).
	SessionTTL wire.Duration `json:"session_ttl,omitempty"`
	// HSTSMaxAge, when set (whole seconds, 1s to 2 years), sends
	// Strict-Transport-Security: max-age=N with every dashboard answer.
	// Off by default: a browser then refuses plain HTTP to every port of
	// the host name for that long, other services on the host included.
	HSTSMaxAge wire.Duration `json:"hsts_max_age,omitempty"`
}

// MaxHSTSMaxAge bounds dashboard.hsts_max_age: two years, the longest
// max-age browsers' preload lists ask for.
const MaxHSTSMaxAge = 2 * 365 * 24 * time.Hour

// DefaultDashboardAdminRole is the token service role that may use the
// dashboard.
const DefaultDashboardAdminRole = "moatless-admin"

// Defaults of the per-node bound on reported decision events.
const (
	DefaultAuditReportRate  = 50
	DefaultAuditReportBurst = 2000
)

// UpstreamCA names the PEM files of an organisation's CA that signs ours.
type UpstreamCA struct {
	// Cert is the signing certificate (and any intermediates up to, not
	// including, the root).
	Cert string `json:"cert"`
	// Key is the signing key (PKCS#8, SEC 1 or PKCS#1).
	Key string `json:"key"`
	// Bundle holds the upstream root certificates; they become the trust
	// bundle's X.509 authorities.
	Bundle string `json:"bundle"`
}

// DefaultServer returns the config of "moatless server" with no flags:
// every default filled in, data directory from getenv (nil: os.Getenv).
func DefaultServer(getenv func(string) string) Server {
	dir := DefaultDataDir(getenv)
	return Server{
		DataDir:         dir,
		TrustDomain:     DefaultTrustDomain,
		Listen:          DefaultListen,
		X509SVIDTTL:     wire.Duration(DefaultX509SVIDTTL),
		JWTSVIDTTL:      wire.Duration(DefaultJWTSVIDTTL),
		MaxX509SVIDTTL:  wire.Duration(24 * time.Hour),
		MaxJWTSVIDTTL:   wire.Duration(time.Hour),
		JoinTokenTTL:    wire.Duration(DefaultJoinTokenTTL),
		MaxJoinTokenTTL: wire.Duration(DefaultMaxTokenTTL),
		ServerCertTTL:   wire.Duration(DefaultServerCertTTL),
		PollInterval:    wire.Duration(DefaultPollInterval),
		WatchHeartbeat:  wire.Duration(DefaultWatchHeartbeat),
		EvictNodesAfter: wire.Duration(DefaultEvictNodesAfter),
		LogLevel:        "info",

		AuditReportRate:  DefaultAuditReportRate,
		AuditReportBurst: DefaultAuditReportBurst,
	}
}

// ParseServer reads a server config strictly (unknown keys are errors that
// name the key) over DefaultServer, fills the fields derived from others
// (store, kek_file, admin_ids) and validates.
func ParseServer(r io.Reader, getenv func(string) string) (Server, error) {
	c := DefaultServer(getenv)
	if err := Decode(r, &c); err != nil {
		return Server{}, err
	}
	c.Complete()
	if err := c.Validate(); err != nil {
		return Server{}, err
	}
	return c, nil
}

// LoadServer is ParseServer for a file; errors name the file.
func LoadServer(path string, getenv func(string) string) (Server, error) {
	c := DefaultServer(getenv)
	if err := DecodeFile(path, &c); err != nil {
		return Server{}, err
	}
	c.Complete()
	if err := c.Validate(); err != nil {
		return Server{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Complete fills the fields whose defaults derive from others: Store and
// KEKFile from DataDir, AdminIDs from TrustDomain, and zero durations from
// DefaultServer. Call it after applying flags, before Validate.
func (c *Server) Complete() {
	d := DefaultServer(nil)
	if c.Store == "" && c.DataDir != "" {
		c.Store = filepath.Join(c.DataDir, "moatless.db")
	}
	if c.KEKFile == "" && c.DataDir != "" {
		c.KEKFile = filepath.Join(c.DataDir, "kek")
	}
	if len(c.AdminIDs) == 0 && c.TrustDomain != "" {
		c.AdminIDs = []string{"spiffe://" + c.TrustDomain + "/moatless/admin"}
	}
	for _, p := range []struct{ v, def *wire.Duration }{
		{&c.X509SVIDTTL, &d.X509SVIDTTL}, {&c.JWTSVIDTTL, &d.JWTSVIDTTL},
		{&c.MaxX509SVIDTTL, &d.MaxX509SVIDTTL}, {&c.MaxJWTSVIDTTL, &d.MaxJWTSVIDTTL},
		{&c.JoinTokenTTL, &d.JoinTokenTTL}, {&c.MaxJoinTokenTTL, &d.MaxJoinTokenTTL},
		{&c.ServerCertTTL, &d.ServerCertTTL}, {&c.PollInterval, &d.PollInterval},
		{&c.WatchHeartbeat, &d.WatchHeartbeat}, {&c.EvictNodesAfter, &d.EvictNodesAfter},
	} {
		if *p.v == 0 {
			*p.v = *p.def
		}
	}
	if c.LogLevel == "" {
		c.LogLevel = d.LogLevel
	}
	if c.AuditReportRate == 0 {
		c.AuditReportRate = d.AuditReportRate
	}
	if c.AuditReportBurst == 0 {
		c.AuditReportBurst = d.AuditReportBurst
	}
	c.Detect.Complete()
	if c.Dashboard.AdminRole == "" {
		c.Dashboard.AdminRole = DefaultDashboardAdminRole
	}
	if c.Dashboard.SessionTTL == 0 {
		c.Dashboard.SessionTTL = wire.Duration(30 * time.Minute)
	}
}

// Validate checks every field; the error names the first bad one.
func (c *Server) Validate() error {
	if err := c.Detect.Validate("config: detect"); err != nil {
		return err
	}
	if c.DataDir == "" {
		return errors.New("config: data_dir: must be set")
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return fmt.Errorf("config: trust_domain %q: %w", c.TrustDomain, err)
	}
	if strings.Contains(c.TrustDomain, ":") || strings.Contains(c.TrustDomain, "/") {
		return fmt.Errorf("config: trust_domain %q: a bare name like example.org, not an ID or URL", c.TrustDomain)
	}
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("config: listen %q: want host:port: %v", c.Listen, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil || port == "" {
		return fmt.Errorf("config: listen %q: bad port", c.Listen)
	}
	if strings.ContainsAny(host, "/ ") {
		return fmt.Errorf("config: listen %q: bad host", c.Listen)
	}
	if c.Store == "" {
		return errors.New("config: store: must be set")
	}
	if c.KEKFile == "" {
		return errors.New("config: kek_file: must be set")
	}
	if len(c.AdminIDs) == 0 {
		return errors.New("config: admin_ids: at least one is needed")
	}
	for i, s := range c.AdminIDs {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return fmt.Errorf("config: admin_ids[%d] %q: %w", i, s, err)
		}
		if id.TrustDomain() != td {
			return fmt.Errorf("config: admin_ids[%d] %q: not in trust domain %s", i, s, td)
		}
		if id.Path() == "" {
			return fmt.Errorf("config: admin_ids[%d] %q: the bare trust domain ID cannot be an admin", i, s)
		}
	}
	for i, n := range c.ServerNames {
		if _, err := netip.ParseAddr(n); err == nil {
			continue
		}
		if !validDNSName(n) {
			return fmt.Errorf("config: server_names[%d] %q: not a DNS name or IP address", i, n)
		}
	}
	if u := c.UpstreamCA; u != nil && (u.Cert == "" || u.Key == "" || u.Bundle == "") {
		return errors.New("config: upstream_ca: cert, key and bundle are all required")
	}
	checks := []struct {
		name     string
		v        wire.Duration
		min, max time.Duration
	}{
		{"max_x509_svid_ttl", c.MaxX509SVIDTTL, time.Second, MaxX509SVIDTTLLimit},
		{"max_jwt_svid_ttl", c.MaxJWTSVIDTTL, time.Second, 24 * time.Hour},
		{"max_join_token_ttl", c.MaxJoinTokenTTL, time.Second, 30 * 24 * time.Hour},
		{"x509_svid_ttl", c.X509SVIDTTL, time.Second, c.MaxX509SVIDTTL.Std()},
		{"jwt_svid_ttl", c.JWTSVIDTTL, time.Second, c.MaxJWTSVIDTTL.Std()},
		{"join_token_ttl", c.JoinTokenTTL, time.Second, c.MaxJoinTokenTTL.Std()},
		{"server_cert_ttl", c.ServerCertTTL, time.Minute, 30 * 24 * time.Hour},
		{"poll_interval", c.PollInterval, 10 * time.Millisecond, time.Minute},
		{"watch_heartbeat", c.WatchHeartbeat, 50 * time.Millisecond, wire.HeartbeatInterval},
		{"evict_nodes_after", c.EvictNodesAfter, time.Minute, 366 * 24 * time.Hour},
	}
	for _, ck := range checks {
		if d := ck.v.Std(); d < ck.min || d > ck.max {
			return fmt.Errorf("config: %s %s: must be between %s and %s", ck.name, d, ck.min, ck.max)
		}
	}
	if c.AuditRetention != 0 {
		if d := c.AuditRetention.Std(); d < time.Hour || d > 100*366*24*time.Hour {
			return fmt.Errorf("config: audit_retention %s: must be at least 1h (or 0 to keep every record)", d)
		}
		if c.AuditArchiveDir == "" {
			return errors.New("config: audit_archive_dir: required with audit_retention (records leave the store only for files)")
		}
	}
	if d := c.Dashboard.SessionTTL.Std(); d < time.Minute || d > 12*time.Hour {
		return fmt.Errorf("config: dashboard.session_ttl %s: must be between 1m and 12h", d)
	}
	if d := c.Dashboard.HSTSMaxAge.Std(); d != 0 && (d < time.Second || d > MaxHSTSMaxAge || d%time.Second != 0) {
		return fmt.Errorf("config: dashboard.hsts_max_age %s: want whole seconds from 1s to 17520h, two years (0 or unset: no HSTS)", d)
	}
	if len(c.Dashboard.OIDCClientID) > 128 || len(c.Dashboard.AdminRole) > 128 {
		return errors.New("config: dashboard: oidc_client_id and admin_role are at most 128 characters")
	}
	if c.CATTL < 0 {
		return fmt.Errorf("config: ca_ttl %s: must not be negative", c.CATTL.Std())
	}
	// The CA rotates its key at 5/6 of its life, so it must outlive six of
	// the longest default SVIDs (the CA refuses to open otherwise; saying
	// so here names the config field).
	if longest := max(c.X509SVIDTTL, c.JWTSVIDTTL); c.CATTL > 0 && c.CATTL < 6*longest {
		return fmt.Errorf("config: ca_ttl %s: must be at least 6 times the longest default SVID TTL (%s): raise ca_ttl or lower x509_svid_ttl/jwt_svid_ttl", c.CATTL.Std(), longest.Std())
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if !(c.AuditReportRate > 0 && c.AuditReportRate <= 100_000) { // also refuses NaN
		return fmt.Errorf("config: audit_report_rate %v: must be above 0 and at most 100000 events per second", c.AuditReportRate)
	}
	if c.AuditReportBurst < wire.MaxAuditEvents || c.AuditReportBurst > 1_000_000 {
		return fmt.Errorf("config: audit_report_burst %d: must be between %d (one full report) and 1000000", c.AuditReportBurst, wire.MaxAuditEvents)
	}
	return nil
}

// validDNSName accepts a host name of LDH labels, optionally with one
// leading "*." wildcard label.
func validDNSName(n string) bool {
	n = strings.TrimPrefix(n, "*.")
	if n == "" || len(n) > 253 {
		return false
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
