// Package server is the Moatless control plane: it wires the CA, the
// registry (entries, join tokens, attested nodes), revocations and the
// audit log to one TLS listener that serves the agent API (internal/wire),
// the admin API (/v1/admin/...), health (/livez, /readyz, /healthz) and
// /metrics.
//
// Lifecycle: New(ctx, Config) opens the store, the KEK, the CA and the
// listener, issues the server's own certificate and writes DIR/bundle.pem;
// nothing runs until Serve(ctx), which serves until ctx ends; Close is
// idempotent and releases everything.
//
// Several servers may share one PostgreSQL store (and one KEK file): every
// change bumps a global version in the store and notifies it with
// PostgreSQL's NOTIFY; each server listens (replica.go), with a poll of the
// version as the fallback, and pushes changes made elsewhere to its own
// watch streams.
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/ui"
	"github.com/moatless/moatless/internal/wire"
)

// Files the server keeps in its data directory.
const (
	AdminTokenFile = "admin-token"
	BundleFile     = "bundle.pem"
)

// adminTokenMetaKey is where the store keeps the SHA-256 of the admin token.
const adminTokenMetaKey = "admin_token_sha256"

// Config configures a Server. Settings is required; every other field has a
// working zero value.
type Config struct {
	// Settings are the parsed and validated server settings.
	Settings config.Server
	// Listener, when set, is used instead of listening on Settings.Listen
	// (tests pass one on 127.0.0.1:0). The server closes it.
	Listener net.Listener
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger receives JSON logs; slog.Default() when nil. Never given a
	// token or key.
	Logger *slog.Logger
	// ExtraHandlers are mounted on the listener next to the built-in
	// routes, keyed by http.ServeMux pattern (the OIDC issuer mounts
	// /.well-known/ and /oauth2/ here). See also Mount.
	ExtraHandlers map[string]http.Handler
	// HeartbeatInterval, when set, overrides Settings.WatchHeartbeat
	// (tests use it).
	HeartbeatInterval time.Duration
	// ResetAdminToken replaces the admin token with a new one written to
	// DIR/admin-token (the old one stops working).
	ResetAdminToken bool
	// SecretsRootKey (32 bytes, raw or base64) or SecretsPassphrase
	// unseals the secrets service at start, instead of the key file
	// (Settings.SecretsKeyFile); see secrets.go.
	SecretsRootKey    []byte
	SecretsPassphrase []byte
	// Tracer, when set, gives every request on the listener a server span
	// (tracing.go); nil: no tracing.
	Tracer trace.Tracer
	// OnRevocations, when set, is called with the revocations in force
	// each time this server reads a new version of them (at start, then
	// on every change, its own or another replica's), before they take
	// effect anywhere else in it. It must be fast and must not keep or
	// change the section it is given. The ext_authz service of
	// "moatless server --ext-authz" refuses what they revoke.
	OnRevocations func(*wire.Revocations)
	// JWTSVIDRate and JWTSVIDBurst bound the JWT-SVIDs one node may have
	// signed on this server: per second sustained, and at once (defaults
	// DefaultJWTSVIDRate and DefaultJWTSVIDBurst). Each is a signature and
	// an fsynced audit record, asked for by whatever local workload calls
	// FetchJWTSVID with audiences the agent has not cached.
	JWTSVIDRate  float64
	JWTSVIDBurst int
	// X509SVIDRate and X509SVIDBurst bound the X509-SVIDs one node may
	// have signed on this server, its own renewals included: per second
	// sustained, and at once (defaults DefaultX509SVIDRate and
	// DefaultX509SVIDBurst). Each is a signature, a stored certificate
	// record and an fsynced audit record; the agent asks for one per
	// entry at start and at half of each SVID's life, in batches of up to
	// 500, so the burst must be at least 500.
	X509SVIDRate  float64
	X509SVIDBurst int
}

// Defaults of Config.JWTSVIDRate and JWTSVIDBurst: far above what a node's
// workloads need (the agent caches each JWT-SVID for half its life per
// audience set), far below what a loop of fresh audiences could ask.
const (
	DefaultJWTSVIDRate  = 100
	DefaultJWTSVIDBurst = 1000
)

// Defaults of Config.X509SVIDRate and X509SVIDBurst: a node with 10,000
// entries gets them all at start, and 50 a second sustains 90,000 entries
// at the default 1 h TTL (renewed at half life); a node looping on the
// signing endpoint is held to 50 certificates and audit records a second
// instead of thousands.
const (
	DefaultX509SVIDRate  = 50
	DefaultX509SVIDBurst = 10_000
)

// signingBudget is a per-node limiter of rate per second and burst at
// once, each taking its default when not positive.
func signingBudget(rate float64, burst int, defRate float64, defBurst int) *keyedLimiter {
	if rate <= 0 {
		rate = defRate
	}
	if burst <= 0 {
		burst = defBurst
	}
	return newKeyedLimiter(rate, float64(burst), 100_000)
}

// Server is the control plane. Create it with New.
type Server struct {
	cfg    config.Server
	tracer trace.Tracer // nil: no tracing
	td     spiffeid.TrustDomain
	id     spiffeid.ID // spiffe://TD/moatless/server
	admins map[string]bool
	now    func() time.Time
	log    *slog.Logger
	// heartbeat is the watch streams' heartbeat interval.
	heartbeat time.Duration
	// refusals bounds audited anonymous refusals (limits.go).
	refusals *failLimiter
	// overBudgetLog paces the log lines of audit reports refused for a
	// node's budget: a node looping over its budget would otherwise write
	// one line per request. Every refusal is counted in the metrics.
	overBudgetLog *failLimiter
	// reports bounds the decision events each node may report (reports.go).
	reports *keyedLimiter
	// jwtSigns bounds the JWT-SVIDs each node may have signed (agentapi.go).
	jwtSigns *keyedLimiter
	// x509Signs bounds the X509-SVIDs each node may have signed, renewals
	// of its own included (agentapi.go).
	x509Signs *keyedLimiter

	db    *store.DB
	ca    *ca.CA
	audit *audit.StoreSink

	adminHash [sha256.Size]byte
	cert      atomic.Pointer[serverCert]
	oauth     *oauthState   // the token service (oauth.go)
	secrets   *secretsState // the secrets service (secrets.go)
	detect    *detectState  // detection and response (detect.go)
	ui        *ui.UI        // the dashboard (ui.go); nil when disabled
	revs      atomic.Pointer[revocationSet]
	onRevs    func(*wire.Revocations)
	// dataFilesMu serializes the read-merge-write of the CA files in the
	// data directory (ca-revoked, ca-sequence).
	dataFilesMu sync.Mutex
	risk        atomic.Pointer[riskCache] // the watch stream's risk section (detect_risk.go)
	// riskScores is the same section by SPIFFE ID, for the spans.
	riskScores telemetry.RiskScores
	hub        hub
	metrics    *metrics
	// credCache remembers certificates already checked against the CA and
	// the svids table (SHA-256 of the DER -> kind); certificates never
	// change, revocation is checked separately on every request.
	credCache   sync.Map
	credCount   atomic.Int64
	policyCache atomic.Pointer[policyCacheEntry]
	policyLoad  sync.Mutex // one load of the policy set at a time (cachedPolicySet)
	opaRego     regoCache  // the OPA API's compiled Rego, per policy version
	authzSet    authzCache // ext_authz's compiled policy set, per policy version
	// entries caches registration entries for the signing path as of one
	// entries-section version (agentapi.go).
	entries atomic.Pointer[entryCache]

	ln      net.Listener
	mux     *http.ServeMux
	httpSrv *http.Server

	mu        sync.Mutex
	serving   bool
	closed    bool
	closeOnce sync.Once
	closeErr  error
	bundleSeq atomic.Uint64
	ready     atomic.Bool

	// listening is true while followChanges hears other replicas'
	// changes (replica.go); refresh wakes refreshLoop.
	listening atomic.Bool
	refresh   chan struct{}
	// bundleSeen is the bundle section version changed() last handled.
	bundleSeen atomic.Uint64
	// epoch is the store's (store.DB.Epoch), announced on watch streams.
	epoch string
	// shared and bundleCache encode the watch sections every stream
	// sends once per version (encode.go).
	shared      sharedJSON
	bundleCache atomic.Pointer[bundleCacheEntry]
	// pub is the bundle publication still to be done (watch.go).
	pub bundlePublication
	// lines and heartbeats hold whole watch lines every stream sends
	// alike (encode.go).
	lines      sharedLines
	heartbeats atomic.Pointer[heartbeatLine]
}

// serverID is the SPIFFE ID of the control plane itself.
func serverID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "moatless", "server")
}

// New prepares a server: data directory (0700), store, KEK (created on
// first start), CA, admin token (created on first start), the server's TLS
// certificate, DIR/bundle.pem and the listener. It starts no goroutine.
func New(ctx context.Context, c Config) (*Server, error) {
	st := c.Settings
	st.Complete()
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(st.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s := &Server{cfg: st, td: td, id: serverID(td), now: c.Now, log: c.Logger, tracer: c.Tracer, admins: map[string]bool{}, refresh: make(chan struct{}, 1)}
	if s.now == nil {
		s.now = time.Now
	}
	s.refusals = newFailLimiter(50, 200)
	s.overBudgetLog = newFailLimiter(1, 10)
	s.reports = newKeyedLimiter(st.AuditReportRate, float64(st.AuditReportBurst), 100_000)
	s.jwtSigns = signingBudget(c.JWTSVIDRate, c.JWTSVIDBurst, DefaultJWTSVIDRate, DefaultJWTSVIDBurst)
	s.x509Signs = signingBudget(c.X509SVIDRate, c.X509SVIDBurst, DefaultX509SVIDRate, DefaultX509SVIDBurst)
	s.onRevs = c.OnRevocations
	s.heartbeat = c.HeartbeatInterval
	if s.heartbeat <= 0 {
		s.heartbeat = st.WatchHeartbeat.Std()
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	for _, a := range st.AdminIDs {
		s.admins[a] = true
	}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if err := os.MkdirAll(st.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: data directory: %w", err)
	}
	// Lock: a second server on the same SQLite file is refused, and
	// "moatless store migrate" sees that this store is live.
	s.db, err = store.OpenWith(ctx, st.Store, store.OpenOptions{Lock: true})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.db.Now = s.now
	if s.epoch, err = s.db.Epoch(ctx); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.audit = audit.NewStoreSink(s.db)
	s.audit.Now = s.now
	s.metrics = newMetrics(s)

	if err := s.checkLostCA(ctx); err != nil {
		return nil, err
	}
	kek, err := s.loadKEK(ctx)
	if err != nil {
		return nil, err
	}
	opts := ca.Options{
		TrustDomain: td, State: caState{s.db}, KEK: kek, CATTL: st.CATTL.Std(),
		X509SVIDTTL: st.X509SVIDTTL.Std(), JWTSVIDTTL: st.JWTSVIDTTL.Std(), Now: s.now,
		Logger: s.log.With("component", "ca"),
	}
	if opts.RevokedAuthorities, err = readRevokedAuthorities(st.DataDir); err != nil {
		return nil, err
	}
	tainted, err := readAuthorityIDs(st.DataDir, TaintedAuthoritiesFile)
	if err != nil {
		return nil, err
	}
	if u := st.UpstreamCA; u != nil {
		opts.Upstream, err = ca.LoadUpstream(u.Cert, u.Key, u.Bundle)
		if err != nil {
			return nil, fmt.Errorf("server: upstream CA: %w", err)
		}
	}
	s.ca, err = ca.Open(ctx, opts)
	clear(kek)
	if errors.Is(err, ca.ErrRevokedAuthority) {
		return nil, fmt.Errorf("server: %w; restore a backup taken after the revocation, or, to start with this store anyway, remove the authority's line from %s and revoke it again at once (docs/ca.md, \"Compromised key\")", err, filepath.Join(st.DataDir, RevokedAuthoritiesFile))
	}
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if err := s.raiseRestoredSequence(ctx); err != nil {
		return nil, err
	}
	if err := s.reapplyTaints(ctx, tainted); err != nil {
		return nil, err
	}
	if err := s.initAdminToken(ctx, c.ResetAdminToken); err != nil {
		return nil, err
	}
	if err := s.renewServerCert(ctx); err != nil {
		return nil, err
	}
	if err := s.writeBundleFile(); err != nil {
		return nil, err
	}
	vs, err := s.db.Versions(ctx)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if err := s.reloadRevocations(ctx, vs.Sections[store.SectionRevocations]); err != nil {
		return nil, err
	}
	if err := s.reloadRisk(ctx, vs.Sections[store.SectionRisk]); err != nil {
		return nil, err
	}
	s.entries.Store(&entryCache{version: vs.Sections[store.SectionEntries]})
	s.bundleSeen.Store(vs.Sections[store.SectionBundle])
	s.hub.setVersions(vs)
	if err := s.metrics.refreshCounts(ctx); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}

	s.mux = http.NewServeMux()
	s.routes()
	for pattern, h := range c.ExtraHandlers {
		s.mux.Handle(pattern, h)
	}
	if c.Listener != nil {
		s.ln = c.Listener
	} else {
		s.ln, err = net.Listen("tcp", st.Listen)
		if err != nil {
			return nil, fmt.Errorf("server: listen on %s: %w (is another server running? set --listen)", st.Listen, err)
		}
	}
	if err := s.initOAuth(ctx, st.Issuer); err != nil {
		return nil, err
	}
	if err := s.initSecrets(ctx, c); err != nil {
		return nil, err
	}
	if err := s.initDetect(ctx); err != nil {
		return nil, err
	}
	if err := s.initDashboard(ctx); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// Mount adds a handler to the listener's mux (http.ServeMux pattern). Call
// it before Serve. Handlers mounted here get no authentication from the
// server: they must authenticate their own callers.
func (s *Server) Mount(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Addr is the listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Store is the server's store, for components mounted on it.
func (s *Server) Store() *store.DB { return s.db }

// CA is the server's certificate authority.
func (s *Server) CA() *ca.CA { return s.ca }

// Audit is the server's audit sink.
func (s *Server) Audit() *audit.StoreSink { return s.audit }

// TrustDomain is the server's trust domain.
func (s *Server) TrustDomain() spiffeid.TrustDomain { return s.td }

// Serve serves until ctx ends, then shuts down gracefully (watch streams
// end at once; other requests get up to 5 seconds). It returns nil after a
// clean shutdown. Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving || s.closed {
		s.mu.Unlock()
		return errors.New("server: Serve called twice or after Close")
	}
	s.serving = true
	base, cancel := context.WithCancel(ctx)
	s.httpSrv = &http.Server{
		Handler:           s.traced(s.withDeadlines(s.mux)),
		TLSConfig:         s.tlsConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	s.mu.Unlock()
	defer cancel()

	// The bundle the server starts with is published with its start: a
	// CA step saved but not published before the server stopped (its
	// publication failed, or the process died in between), or taken by
	// ca.Open for the time it was stopped, reaches the agents that
	// resume their watch streams, which are sent only what moved.
	seq, _ := s.ca.Bundle().SequenceNumber()
	start := audit.Event{Kind: audit.KindServerStart, Actor: s.id.String(), Outcome: audit.Success,
		Details: map[string]string{"listen": s.ln.Addr().String(), "trust_domain": s.td.Name(), "bundle_sequence": strconv.FormatUint(seq, 10)}}
	if err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := s.db.BumpVersion(ctx, tx, store.SectionBundle); err != nil {
			return err
		}
		return s.audit.AppendTx(ctx, tx, start)
	}); err != nil {
		return fmt.Errorf("server: audit log unavailable: %w", err)
	}
	s.changed(ctx)
	var wg sync.WaitGroup
	for _, f := range []func(context.Context){s.maintain, s.refreshLoop, s.followChanges, s.detect.alerts.run} {
		wg.Add(1)
		go func() { defer wg.Done(); f(base) }()
	}

	errc := make(chan error, 1)
	go func() { errc <- s.httpSrv.ServeTLS(s.ln, "", "") }()
	s.ready.Store(true)
	s.log.Info("serving", "addr", s.ln.Addr().String(), "trust_domain", s.td.Name(), "store", s.db.Dialect().String())

	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		s.ready.Store(false)
		cancel() // ends watch streams
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err = s.httpSrv.Shutdown(sctx)
		scancel()
		<-errc
	}
	cancel()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close stops serving at once and releases the listener and the store. It
// is safe to call more than once and concurrently with Serve.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		hs := s.httpSrv
		s.mu.Unlock()
		var errs []error
		if hs != nil {
			errs = append(errs, ignoreClosed(hs.Close()))
		} else if s.ln != nil {
			errs = append(errs, ignoreClosed(s.ln.Close()))
		}
		if s.secrets != nil {
			s.secrets.svc.Close()
		}
		if s.db != nil {
			errs = append(errs, s.db.Close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// caState adapts the store to the CA's StateStore.
type caState struct{ db *store.DB }

func (c caState) LoadCAState(ctx context.Context) ([]byte, error) {
	b, err := c.db.LoadCAState(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ca.ErrNoState
	}
	return b, err
}

func (c caState) SaveCAState(ctx context.Context, b []byte) error { return c.db.SaveCAState(ctx, b) }

// SwapCAState makes saves compare-and-swap (ca.StateSwapper), so replicas
// sharing a store never overwrite each other's CA step.
func (c caState) SwapCAState(ctx context.Context, old, sealed []byte) error {
	err := c.db.SwapCAState(ctx, old, sealed)
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: %w", ca.ErrStateConflict, err)
	}
	return err
}

// checkLostCA refuses to make a new CA in a data directory that served
// one: the store holds no CA state, yet DIR/bundle.pem, written once a CA
// exists, is there. That is a store that lost what it held (an SQLite file
// copied without its -wal file, another or an emptied database), and a new
// CA would silently cut off every agent and sidecar that trusts the old one.
func (s *Server) checkLostCA(ctx context.Context) error {
	if _, err := s.db.LoadCAState(ctx); !errors.Is(err, store.ErrNotFound) {
		return nil // a CA to open, or an error ca.Open reports
	}
	bundle := filepath.Join(s.cfg.DataDir, BundleFile)
	_, err := os.Lstat(bundle)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Not "no such file": the directory cannot be read (permissions,
		// an I/O error). Whether a CA lived here is unknown, and a new
		// CA, once saved, would stay after the directory came back.
		return fmt.Errorf("server: the store holds no CA, and whether this data directory served one cannot be checked (%w): "+
			"fix access to %s before starting; no new CA is made while it is unreadable", err, s.cfg.DataDir)
	}
	return fmt.Errorf("server: the store holds no CA, but %s exists: this data directory served a CA the store has lost "+
		"(an SQLite store copied without its -wal file, or another database). Restore the store from a backup "+
		"(moatless store backup and restore, docs/operations.md); to start a new CA on purpose, remove %s first: "+
		"every agent and sidecar then needs the new bundle", bundle, bundle)
}

// loadKEK reads the key-encryption key, creating it (0600) on first start.
// It refuses to create a new KEK when the store already holds CA state: a
// fresh key could never unseal it, and the operator must find the old one.
func (s *Server) loadKEK(ctx context.Context) ([]byte, error) {
	path := s.cfg.KEKFile
	b, err := readSecretFile(path, ca.KEKSize*2+2)
	if err == nil {
		if len(b) != ca.KEKSize {
			return nil, fmt.Errorf("server: key-encryption key %s: want exactly %d bytes, found %d", path, ca.KEKSize, len(b))
		}
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("server: key-encryption key: %w", err)
	}
	if _, err := s.db.LoadCAState(ctx); err == nil {
		return nil, fmt.Errorf("server: the store holds CA keys sealed with a key-encryption key, but %s does not exist: "+
			"restore that file or pass --kek-file (replicas must share it)", path)
	}
	kek := make([]byte, ca.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		return nil, fmt.Errorf("server: generate key-encryption key: %w", err)
	}
	if err := writeFileAtomic(path, kek, 0o600, true); err != nil {
		return nil, fmt.Errorf("server: write key-encryption key: %w", err)
	}
	s.log.Info("created key-encryption key", "path", path)
	return kek, nil
}

// readSecretFile reads a small file, refusing files readable by group or
// others (a key or token must be private) and files over limit bytes. The
// one exception is a Kubernetes Secret volume (secretFromReadOnlyMount).
func readSecretFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 && !secretFromReadOnlyMount(f, fi) {
		return nil, fmt.Errorf("%s is accessible by group or others (mode %04o): chmod 600 it", path, fi.Mode().Perm())
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return io.ReadAll(io.LimitReader(f, limit))
}

// writeFileAtomic writes b to path through a temporary file in the same
// directory, fsynced and renamed over path, so readers see the old or the
// new content, never a mix, even after a crash. With exclusive it fails if
// path exists.
func writeFileAtomic(path string, b []byte, mode os.FileMode, exclusive bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if exclusive {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s exists", path)
		}
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// newAdminToken returns a fresh random admin token.
func newAdminToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "mla_" + base64.RawURLEncoding.EncodeToString(b), nil
}

// initAdminToken loads the admin token's hash from the store, or on first
// start (or with reset) creates a token, writes it once to
// DIR/admin-token (0600) and keeps only its SHA-256. Where the token went,
// and the environment admin commands elsewhere need, is one JSON log line
// like every other (a plain-text notice would break a JSON log); the token
// itself is never logged.
func (s *Server) initAdminToken(ctx context.Context, reset bool) error {
	path := filepath.Join(s.cfg.DataDir, AdminTokenFile)
	if !reset {
		v, err := s.db.Meta(ctx, adminTokenMetaKey)
		if err == nil {
			h, err := hex.DecodeString(v)
			if err != nil || len(h) != sha256.Size {
				return fmt.Errorf("server: stored admin token hash is corrupt; restart with --reset-admin-token")
			}
			copy(s.adminHash[:], h)
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("server: %w", err)
		}
	}
	tok, err := newAdminToken()
	if err != nil {
		return fmt.Errorf("server: generate admin token: %w", err)
	}
	sum := sha256.Sum256([]byte(tok))
	if reset {
		if err := s.db.SetMeta(ctx, s.db.SQL(), adminTokenMetaKey, hex.EncodeToString(sum[:])); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	} else {
		won, err := s.db.SetMetaIfAbsent(ctx, s.db.SQL(), adminTokenMetaKey, hex.EncodeToString(sum[:]))
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		if !won { // another replica created it first: use theirs
			return s.initAdminToken(ctx, false)
		}
	}
	s.adminHash = sum
	if err := writeFileAtomic(path, []byte(tok+"\n"), 0o600, false); err != nil {
		return fmt.Errorf("server: write admin token: %w", err)
	}
	// WARN, so that it survives log_level: warn: a new admin credential
	// exists, and this line is the only pointer to it.
	s.log.Warn("created admin token; admin commands on this machine find it, elsewhere set env",
		"path", path, "mode", "0600",
		slog.Group("env",
			"MOATLESS_ADDR", clientAddr(s.cfg.Listen),
			"MOATLESS_CACERT", filepath.Join(s.cfg.DataDir, BundleFile),
			"MOATLESS_TOKEN", fmt.Sprintf("$(cat %s)", path)))
	return nil
}

// clientAddr is the address clients on this machine use for a listen
// address: an unspecified host (all interfaces) becomes localhost, which
// the server certificate carries.
func clientAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return net.JoinHostPort("localhost", port)
	}
	return listen
}

// checkAdminToken compares a presented token with the stored hash in
// constant time.
func (s *Server) checkAdminToken(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], s.adminHash[:]) == 1
}

// writeBundleFile rewrites DIR/bundle.pem with the current X.509
// authorities, atomically, and brings ca-sequence, ca-revoked and
// ca-tainted up to date, all from one CA snapshot.
func (s *Server) writeBundleFile() error {
	b, status := s.ca.View()
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := writeFileAtomic(filepath.Join(s.cfg.DataDir, BundleFile), out, 0o644, false); err != nil {
		return fmt.Errorf("server: write trust bundle: %w", err)
	}
	seq, _ := b.SequenceNumber()
	s.bundleSeq.Store(seq)
	if err := s.writeBundleSequence(seq); err != nil {
		return err
	}
	if err := s.writeRevokedAuthorities(); err != nil {
		return err
	}
	return s.writeTaintedAuthorities(status)
}

// remoteHost is the caller's address for logs and audit.
func remoteHost(r *http.Request) string {
	return strings.TrimSpace(r.RemoteAddr)
}
